//! Syscall latency and errors of a workload whose syscalls are known exactly
//! (`src/bin/syscall-workload.rs`), selected by process name, compared with libbpf-tools
//! `syscount -L -p PID` over the same run.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use periscope_e2e::{
    daemon::Daemon,
    exclusive,
    reference::{RefTool, parse_syscount},
    scrape::Scrape,
    wait_for,
};

const DURATION: &str = "kernel_syscall_duration_seconds";
const ERRORS: &str = "kernel_syscall_errors_total";
const WORKLOAD: &str = env!("CARGO_BIN_EXE_syscall-workload");

const READS: u64 = 5000;
const WAITS: u64 = 20;
const WAIT_MS: u64 = 50;
const BAD_READS: u64 = 100;

/// Only the syscall family, so that no other family's programs run during the test.
fn config(select: &str) -> String {
    format!(
        "probes:\n  block:\n    enabled: false\n  sched:\n    enabled: false\n  http:\n    \
         enabled: false\n  tcp:\n    enabled: false\n  syscall:\n    enabled: true\n    \
         rescan_interval: 200ms\n{select}"
    )
}

/// `service.instance.id` Periscope gives process `pid`.
fn instance(pid: u32) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    format!("{}:{pid}", host.trim())
}

struct Workload {
    child: Child,
    go: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Workload {
    fn spawn() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        let child = Command::new(WORKLOAD)
            .arg(&go)
            .args([READS, WAITS, WAIT_MS, BAD_READS].map(|n| n.to_string()))
            .spawn()
            .expect("spawn syscall-workload");
        Self {
            child,
            go,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until Periscope measures the workload (its polling loop's sleeps show up), and
    /// returns that scrape.
    fn wait_until_measured(&self, daemon: &Daemon) -> Scrape {
        let id = instance(self.pid());
        wait_for(
            "the workload's first measured syscalls",
            Duration::from_secs(20),
            || {
                let scrape = daemon.scrape();
                let sleeps = scrape.value(
                    &format!("{DURATION}_count"),
                    &[
                        ("service_instance_id", &id),
                        ("syscall_name", "clock_nanosleep"),
                    ],
                );
                sleeps.filter(|n| *n > 0.0).map(|_| scrape)
            },
        )
    }

    /// Lets it run, and waits for it to exit.
    fn run_to_exit(mut self) {
        std::fs::write(&self.go, b"").unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "workload failed: {status}");
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "workload hangs");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn selected_process_counts_are_exact_and_agree_with_syscount() {
    let _machine = exclusive();
    let daemon = Daemon::start(
        &config("    select:\n      - process_name: syscall-workload\n"),
        &[],
    );
    let workload = Workload::spawn();
    let pid = workload.pid();
    let _ = workload.wait_until_measured(&daemon);
    let syscount = RefTool::start("syscount", &["-L", "-p", &pid.to_string(), "-T", "100"]);
    workload.run_to_exit();
    let theirs = parse_syscount(&syscount.stop());

    // The workload has exited: its counts were folded into user space at this scrape.
    let scrape = daemon.scrape();
    let id = instance(pid);
    let ours = |name: &str| {
        scrape.histogram(
            DURATION,
            &[("service_instance_id", &id), ("syscall_name", name)],
        )
    };
    let (read, futex) = (ours("read"), ours("futex"));
    let ebadf = scrape.value(
        ERRORS,
        &[
            ("service_instance_id", &id),
            ("syscall_name", "read"),
            ("error_type", "EBADF"),
        ],
    );
    println!(
        "periscope: read {} calls, futex {} calls {:.6}s (p50 {:.6}s), EBADF {ebadf:?}\nsyscount: {theirs:?}",
        read.count,
        futex.count,
        futex.sum,
        futex.quantile(0.5)
    );

    // Exact counts of what the workload did.
    assert_eq!(
        read.count,
        (READS + BAD_READS) as f64,
        "every read, failed ones included"
    );
    assert_eq!(ebadf, Some(BAD_READS as f64), "failed reads by errno");
    assert!(
        futex.count >= WAITS as f64,
        "one futex wait per timed wait: {}",
        futex.count
    );
    // Each timed wait lasts 50 ms and a little more (timer slack, wakeup latency): at least
    // WAITS calls lie in (50 ms, 55 ms], and the median is within 10% of 50 ms.
    let near_50ms: f64 = futex
        .bucket_counts()
        .iter()
        .filter(|(lower, upper, _)| *lower >= 0.050 / 1.045 && *upper <= 0.055)
        .map(|b| b.2)
        .sum();
    assert!(
        near_50ms >= WAITS as f64,
        "{near_50ms} futex waits near 50 ms: {futex:?}"
    );
    let p50 = futex.quantile(0.5);
    assert!((p50 - 0.050).abs() / 0.050 <= 0.10, "futex p50 {p50}");

    // The same as syscount saw. Counts: exact (both attached before the workload started).
    // Total futex latency: within 1%. Both time the same enter->exit interval from the same
    // tracepoints; they differ only by where each program reads the clock (microseconds per
    // call, so well under 0.1% of 20 x 50 ms), while one wait missed or added would be 5%.
    let (their_reads, _) = theirs["read"];
    assert_eq!(read.count, their_reads as f64, "read count vs syscount");
    let (their_futex, their_futex_time) = theirs["futex"];
    assert_eq!(futex.count, their_futex as f64, "futex count vs syscount");
    let relative = (futex.sum - their_futex_time).abs() / their_futex_time;
    assert!(
        relative <= 0.01,
        "futex total {:.6}s vs syscount {their_futex_time:.6}s ({:.3}%)",
        futex.sum,
        relative * 100.0
    );

    assert_eq!(
        scrape.value(
            "periscope_probe_attached",
            &[("probe", "syscall"), ("mechanism", "tracepoint")]
        ),
        Some(1.0)
    );
    for kind in ["latency_map_full", "error_map_full", "start_map_full"] {
        let n = scrape.value(
            "periscope_probe_errors_total",
            &[("probe", "syscall"), ("kind", kind)],
        );
        assert_eq!(n, Some(0.0), "{kind}");
    }

    // Only the selected process is measured.
    let others: Vec<&String> = scrape
        .samples
        .iter()
        .filter(|s| s.name.starts_with(DURATION))
        .filter_map(|s| s.labels.get("service_instance_id"))
        .filter(|i| **i != id)
        .collect();
    assert!(
        others.is_empty(),
        "unselected processes measured: {others:?}"
    );

    // Folded counts are kept and the kernel's entries deleted: nothing counted twice.
    let again = daemon.scrape();
    let read_again = again.histogram(
        DURATION,
        &[("service_instance_id", &id), ("syscall_name", "read")],
    );
    assert_eq!(
        read_again.count, read.count,
        "exited process's counts are stable"
    );
}

/// Without a selection every process is measured, except Periscope itself.
#[test]
fn without_selection_every_process_but_periscope_is_measured() {
    let _machine = exclusive();
    let daemon = Daemon::start(&config(""), &[]);
    let workload = Workload::spawn();
    let pid = workload.pid();
    let before = workload.wait_until_measured(&daemon);
    workload.run_to_exit();
    let scrape = daemon.scrape();
    // Measured from exec on (the dynamic loader's reads come before `main`), so count what
    // happened since the workload was seen waiting.
    let id = instance(pid);
    let labels = [
        ("service_instance_id", id.as_str()),
        ("syscall_name", "read"),
    ];
    let read = scrape
        .histogram(DURATION, &labels)
        .since(&before.histogram(DURATION, &labels));
    assert_eq!(read.count, (READS + BAD_READS) as f64);
    let own = instance(daemon.pid());
    assert!(
        scrape
            .value(
                &format!("{DURATION}_count"),
                &[("service_instance_id", &own)]
            )
            .is_none(),
        "Periscope measured itself"
    );
}

/// A latency map too small for the workload's series: what does not fit is counted.
#[test]
fn a_full_latency_map_is_counted() {
    let _machine = exclusive();
    let daemon = Daemon::start(
        &config(
            "    max_latency_entries: 16\n    select:\n      - process_name: syscall-workload\n",
        ),
        &[],
    );
    let workload = Workload::spawn();
    let _ = workload.wait_until_measured(&daemon);
    workload.run_to_exit();
    let full = daemon.scrape().value(
        "periscope_probe_errors_total",
        &[("probe", "syscall"), ("kind", "latency_map_full")],
    );
    assert!(full.is_some_and(|n| n > 0.0), "latency_map_full: {full:?}");
}
