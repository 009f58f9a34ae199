//! Harness for Periscope's end-to-end tests. Every test loads the real eBPF programs (by running
//! the real `periscope` binary), drives a real workload it owns (its own loop device, its own
//! ports and child processes) and compares with what the workload itself or a reference tool
//! (libbpf-tools) measured. Tests need root, tracefs and the tools `make test` installs.

pub mod cgroup;
pub mod daemon;
pub mod grpc;
pub mod http;
pub mod loopdev;
pub mod netns;
pub mod otlp_receiver;
pub mod prometheus;
pub mod reference;
pub mod scrape;
pub mod target;

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

/// `periscope check` on `config` (written to a temporary file): its report, once it exited 0.
pub fn periscope_check(config: &str) -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("periscope.yaml");
    std::fs::write(&path, config).expect("write the config");
    let out = std::process::Command::new(periscope_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run periscope check");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    report
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

/// `threads` threads spinning for `how_long`: CPU contention of a known size.
pub fn busy(threads: usize, how_long: Duration) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    std::thread::sleep(how_long);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
}

/// Ids of the BPF objects a process holds open, from the `field` lines (`prog_id:`, `map_id:`)
/// of its /proc/PID/fdinfo, sorted and unique.
pub fn bpf_object_ids(pid: u32, field: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix(field))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Every capability Linux defines, as capsh names them.
pub const ALL_CAPS: &[&str] = &[
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// capsh's `--drop=` argument that leaves only `keep` in the bounding set (so a root exec gets
/// no other capability).
pub fn capsh_drop_all_but(keep: &[&str]) -> String {
    let drop: Vec<&str> = ALL_CAPS
        .iter()
        .copied()
        .filter(|c| !keep.contains(c))
        .collect();
    format!("--drop={}", drop.join(","))
}
