//! A small Rust HTTP/1.1 server (std only, one thread per connection, keep-alive) with the routes
//! the HTTP tests use. usage: rust-http-server PORT
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
};

fn status_for(method: &str, path: &str) -> (u16, &'static str) {
    if path.starts_with("/users/") {
        (200, "OK")
    } else if path == "/items" && method == "POST" {
        (201, "Created")
    } else if path.starts_with("/fail") {
        (500, "Internal Server Error")
    } else {
        (404, "Not Found")
    }
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let (method, path) = (
            method.to_string(),
            target.split('?').next().unwrap_or("/").to_string(),
        );
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        let (status, reason) = status_for(&method, &path);
        write!(
            writer,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 3\r\n{}\r\nok\n",
            if close { "Connection: close\r\n" } else { "" }
        )?;
        if close {
            return Ok(());
        }
    }
}

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: rust-http-server PORT");
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}
