//! Harness for Periscope's end-to-end tests. Every test loads the real eBPF programs (by running
//! the real `periscope` binary), drives a real workload it owns (its own loop device, its own
//! ports and child processes) and compares with what the workload itself or a reference tool
//! (libbpf-tools) measured. Tests need root, tracefs and the tools `make test` installs.

pub mod daemon;
pub mod http;
pub mod loopdev;
pub mod netns;
pub mod otlp_receiver;
pub mod reference;
pub mod scrape;

use std::{
    net::TcpListener,
    path::PathBuf,
    time::{Duration, Instant},
};

/// The `periscope` binary under test: `$PERISCOPE_BIN`, or the workspace's debug build
/// (`make test` builds it first).
pub fn periscope_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PERISCOPE_BIN") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/debug/periscope");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p periscope` first (make test does)",
        path.display()
    );
    path
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serialises the tests of one test binary that count kernel events. Counts are exact only when
/// a test's events are not lost to another test's programs: the kernel skips a tracepoint
/// program that fires while another one runs on the same CPU (e.g. a completion in softirq
/// nested in another test's issue program), and run-queue latency is machine-wide.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static MACHINE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}
