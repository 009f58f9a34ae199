//! The workloads of the kernel matrix (tests/kernels/), one binary with one role per
//! subcommand, std only, so that it runs in a minimal initramfs beside busybox. Each role does
//! an exact number of things and says how many it did; the VM's init compares that with what
//! Periscope counted.
//!
//! usage:
//!   kernel-workload serve PORT               HTTP/1.1 server (200 for every request), forever
//!   kernel-workload get PORT N               N GETs to 127.0.0.1:PORT, a new connection each
//!   kernel-workload tcp PORT N               N TCP connections to a listener of its own on PORT
//!   kernel-workload read DEVICE N            N direct 4 KiB reads of DEVICE at distinct offsets
//!   kernel-workload spin THREADS MILLIS      THREADS busy threads for MILLIS (run-queue waits)

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::OpenOptionsExt,
    time::{Duration, Instant},
};

const BLOCK: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["serve", port] => serve(parse(port)),
        ["get", port, n] => get(parse(port), parse(n)),
        ["tcp", port, n] => connect(parse(port), parse(n)),
        ["read", device, n] => read(device, parse(n)),
        ["spin", threads, millis] => spin(parse(threads), parse(millis)),
        _ => {
            eprintln!(
                "usage: kernel-workload serve PORT | get PORT N | tcp PORT N | read DEVICE N | spin THREADS MILLIS"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("kernel-workload {}: {e}", args.join(" "));
        std::process::exit(1);
    }
}

fn parse<T: std::str::FromStr>(word: &str) -> T {
    word.parse().unwrap_or_else(|_| {
        eprintln!("kernel-workload: {word:?} is not a number");
        std::process::exit(2)
    })
}

/// Answers every request with 200 until killed, one request per connection.
fn serve(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("serve: listening on {port}");
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let _ = answer(stream);
        });
    }
    Ok(())
}

/// Reads one request (line and headers) and answers it, then closes: the client reads the
/// response to its end.
fn answer(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && !line.trim_end().is_empty() {
        line.clear();
    }
    writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
}

/// N requests one after the other, each on its own connection, each checked for a 200.
fn get(port: u16, n: u32) -> std::io::Result<()> {
    let mut ok = 0;
    for i in 0..n {
        let mut stream = connect_retrying(port)?;
        write!(
            stream,
            "GET /items/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if response.starts_with("HTTP/1.1 200 ") {
            ok += 1;
        }
    }
    println!("get: {ok} of {n} answered 200");
    if ok == n {
        Ok(())
    } else {
        Err(std::io::Error::other("not every request answered 200"))
    }
}

/// The server may still be starting: a refused connect is retried for a few seconds.
fn connect_retrying(port: u16) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// N connections to a listener of this process, each sending one byte that the listener reads
/// before both sides close.
fn connect(port: u16, n: u32) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let acceptor = std::thread::spawn(move || -> std::io::Result<u32> {
        let mut accepted = 0;
        for _ in 0..n {
            let (mut stream, _) = listener.accept()?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte)?;
            accepted += 1;
        }
        Ok(accepted)
    });
    for _ in 0..n {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.write_all(b"x")?;
        // Wait for the listener's close so that every connection ends before the next starts.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest)?;
    }
    let accepted = acceptor
        .join()
        .map_err(|_| std::io::Error::other("acceptor panicked"))??;
    println!("tcp: {n} connected, {accepted} accepted");
    Ok(())
}

/// Direct (O_DIRECT) reads, so that each is one block request: no page cache, no readahead.
fn read(device: &str, n: u32) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)?;
    let mut buffer = AlignedBlock([0; BLOCK]);
    for i in 0..n {
        read_at(&file, &mut buffer.0, i as u64 * BLOCK as u64)?;
    }
    println!("read: {n} reads of {BLOCK} bytes from {device}");
    Ok(())
}

#[repr(align(4096))]
struct AlignedBlock([u8; BLOCK]);

fn read_at(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let read = file.read_at(buffer, offset)?;
    if read == buffer.len() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "short read at {offset}: {read}"
        )))
    }
}

/// More runnable threads than CPUs: each waits in the run queue while the others run.
fn spin(threads: u32, millis: u64) -> std::io::Result<()> {
    let until = Instant::now() + Duration::from_millis(millis);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    for handle in handles {
        let _ = handle.join();
    }
    println!("spin: {threads} threads for {millis} ms");
    Ok(())
}
