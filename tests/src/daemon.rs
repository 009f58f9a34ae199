//! A `periscope run` child process with its own config and Prometheus port.

use std::{
    io::Read,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use crate::{free_port, periscope_bin, scrape::Scrape, wait_for};

pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    /// Everything the daemon logged so far. A thread drains its stderr as it comes: a pipe
    /// left unread fills up (64 KiB) and then blocks the daemon's next log line.
    log: Arc<Mutex<String>>,
    drain: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon with `config` (YAML; the Prometheus listen address is added) and extra
    /// environment, and waits until its endpoint answers.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("periscope.yaml");
        let config = format!("prometheus:\n  listen: 127.0.0.1:{port}\n{config}");
        std::fs::write(&path, config).expect("write config");
        let mut command = Command::new(periscope_bin());
        command
            .args(["run", "--config"])
            .arg(&path)
            .env("PERISCOPE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn periscope");
        let log = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr pipe");
        let sink = log.clone();
        let drain = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        let mut daemon = Self {
            child: Some(child),
            port,
            log,
            drain: Some(drain),
            _dir: dir,
        };
        wait_for("periscope /healthz", Duration::from_secs(30), || {
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let stderr = daemon.stderr();
                panic!("periscope exited early with {status}: {stderr}");
            }
            http_get(port, "/healthz").ok()
        });
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// A protobuf scrape: histograms in the kernel's own buckets (native, lossless), so tests
    /// can compare exact counts per 4.4%-wide bucket.
    pub fn scrape(&self) -> Scrape {
        let body = http_get_bytes(self.port, "/metrics", Some(PROTOBUF)).expect("scrape /metrics");
        Scrape::from_protobuf(&body).expect("a delimited io.prometheus.client.MetricFamily stream")
    }

    /// A text scrape, as a scraper that does not negotiate protobuf gets it: classic histograms
    /// with the fixed layouts.
    pub fn scrape_text(&self) -> Scrape {
        Scrape::parse(&self.scrape_text_raw())
    }

    /// The OpenMetrics text itself.
    pub fn scrape_text_raw(&self) -> String {
        http_get(self.port, "/metrics").expect("scrape /metrics")
    }

    /// Everything logged until the daemon closed its stderr (it exited).
    fn stderr(&mut self) -> String {
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        self.log.lock().unwrap().clone()
    }

    /// What the daemon logged so far, while it runs.
    pub fn log_so_far(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit status and everything it logged.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait periscope");
        (status, self.stderr())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// The `Accept` header Prometheus sends when it scrapes native histograms.
pub const PROTOBUF: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

/// A minimal HTTP/1.0 GET against 127.0.0.1:port: the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let body = http_get_bytes(port, path, None)?;
    String::from_utf8(body).map_err(std::io::Error::other)
}

/// The same, with an optional `Accept` header, and the body as bytes.
pub fn http_get_bytes(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\n{accept}\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&response[..end]);
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!("unexpected answer: {head}")));
    }
    Ok(response[end + 4..].to_vec())
}
