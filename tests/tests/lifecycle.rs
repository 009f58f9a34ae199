//! The daemon's life: configuration errors exactly as a user sees them, clean stops (SIGTERM,
//! --duration) that leave no program loaded, a probe family that cannot attach while the others
//! run, and tracefs missing.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use periscope_e2e::{daemon::Daemon, free_port, periscope_bin};

fn periscope(args: &[&str], config: Option<&str>) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("periscope.yaml");
    let mut command = Command::new(periscope_bin());
    command.args(args);
    if let Some(text) = config {
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(&path);
    }
    let out = command.output().expect("run periscope");
    (out, path.display().to_string())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_errors_name_key_line_and_column() {
    let cases = [
        (
            "prometheus:\n  listen: 127.0.0.1:0\n  lisen: x\n",
            "prometheus: unknown field `lisen`, expected `listen` at line 3 column 3",
        ),
        (
            "probes:\n  block:\n    enabled: maybe\n",
            "probes.block.enabled: invalid type: string \"maybe\", expected a boolean at line 3 column 14",
        ),
        (
            "otlp:\n  timeout: 5 furlongs\n",
            "otlp.timeout: invalid duration \"5 furlongs\" (unknown time unit \"furlongs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write it like 10s, 500ms or 1m at line 2 column 12",
        ),
    ];
    for (config, message) in cases {
        let (out, path) = periscope(&["run"], Some(config));
        assert_eq!(out.status.code(), Some(1), "{config}");
        assert_eq!(
            stderr(&out),
            format!("periscope: invalid config {path}: {message}\n")
        );
    }
    let (out, _) = periscope(&["run", "--config", "/nonexistent/periscope.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "periscope: cannot read config file /nonexistent/periscope.yaml: No such file or directory (os error 2)\n"
    );
}

#[test]
fn empty_config_runs_and_duration_stops_cleanly() {
    let port = free_port();
    let start = Instant::now();
    let out = Command::new(periscope_bin())
        .args(["run", "--duration", "2s", "--config", "/dev/null"])
        .env("PERISCOPE_PROMETHEUS_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .expect("run periscope");
    assert!(out.status.success(), "{}", stderr(&out));
    // --duration must end the run (a hang would never return): 2 s of run, then a detach of a
    // few seconds. The bound is generous on purpose: it is not a speed claim.
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert!(stderr(&out).contains("--duration elapsed"));
}

/// Program ids the process holds open, from /proc/PID/fdinfo.
fn program_ids(pid: u32) -> Vec<u32> {
    periscope_e2e::bpf_object_ids(pid, "prog_id:")
}

#[test]
fn sigterm_flushes_and_detaches_every_program() {
    // Every family on, the uprobe family with one function (uprobe_entry + uprobe_return).
    let config = format!(
        "probes:\n  uprobe:\n    functions:\n      - path: {}\n        symbol: process_order\n",
        env!("CARGO_BIN_EXE_function-target")
    );
    let daemon = Daemon::start(&config, &[]);
    let ids = program_ids(daemon.pid());
    assert_eq!(
        ids.len(),
        27,
        "block (2), sched (3), http (4 socket tracepoint programs, 2 on fork and exec, 7 for HTTPS through OpenSSL, 3 through Go's crypto/tls), tcp (4) and uprobe (2) programs loaded (syscall is off by default): {ids:?}"
    );
    // The kernel's count of skipped runs is exported for every loaded program.
    let misses = daemon
        .scrape()
        .samples
        .iter()
        .filter(|s| s.name == "periscope_bpf_program_recursion_misses_total")
        .count();
    assert_eq!(misses, ids.len(), "one recursion_misses series per program");
    let (status, log) = daemon.stop();
    assert!(status.success(), "exit 0 on SIGTERM: {log}");
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
    // The kernel frees a program after an RCU grace period, so a moment after exit at most.
    let loaded = |id: &u32| {
        Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .expect("bpftool")
            .status
            .success()
    };
    let started = Instant::now();
    let mut left: Vec<u32> = ids;
    // Polled, not timed: the loop ends as soon as they are gone; 30 s only bounds a leak.
    while !left.is_empty() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        left.retain(loaded);
    }
    assert!(
        left.is_empty(),
        "programs still loaded 30 s after exit: {left:?}"
    );
}

#[test]
fn a_probe_that_cannot_attach_degrades_alone() {
    // Socket tracepoints are an HTTP mechanism, not a block one: block must fail, sched must
    // run, and both must say so.
    let config = "probes:\n  block:\n    mechanism: socket_tracepoint\n";
    let daemon = Daemon::start(config, &[]);
    let scrape = daemon.scrape();
    assert_eq!(
        scrape.value(
            "periscope_probe_attached",
            &[("probe", "block"), ("mechanism", "none")]
        ),
        Some(0.0)
    );
    assert_eq!(
        scrape.value(
            "periscope_probe_attached",
            &[("probe", "sched"), ("mechanism", "raw_tracepoint")]
        ),
        Some(1.0)
    );
    let (_, log) = daemon.stop();
    assert!(
        log.contains(
            "mechanism socket_tracepoint is configured but this family implements only raw_tracepoint, tracepoint"
        ),
        "{log}"
    );

    // The daemon runs without block, but `check` fails: block is on by default and attached by
    // no mechanism, and its last line says so.
    let (out, _) = periscope(&["check"], Some(config));
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("FAIL  block"), "{report}");
    assert!(report.contains("ok    sched"), "{report}");
    assert_eq!(
        report.lines().last(),
        Some(
            "Result: FAILED: block enabled by default but cannot attach by any mechanism here \
             (see FAIL above)."
        ),
        "{report}"
    );
}

#[test]
fn check_fails_when_nothing_can_attach() {
    let config = "probes:\n  block:\n    mechanism: socket_tracepoint\n  sched:\n    \
                  mechanism: socket_tracepoint\n  http:\n    enabled: false\n  tcp:\n    \
                  mechanism: raw_tracepoint\n  syscall:\n    mechanism: socket_tracepoint\n";
    let (out, _) = periscope(&["check"], Some(config));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no probe family can attach"));
}

/// Runs `command` (a shell command line) in a private mount namespace where tracefs is not
/// mounted; the rest of the machine keeps its tracefs.
fn without_tracefs(command: &str) -> (Output, String) {
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; \
         test ! -e /sys/kernel/tracing/events || exit 99; {command}"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, report)
}

/// Without tracefs, Periscope mounts it itself; without CAP_SYS_ADMIN it cannot, and says how
/// to fix it.
#[test]
fn tracefs_missing_is_mounted_or_explained() {
    let check = format!("{} check", periscope_bin().display());
    let (out, report) = without_tracefs(&check);
    assert!(out.status.success(), "{report}{}", stderr(&out));
    assert!(
        report.contains("ok    tracefs                      /sys/kernel/tracing"),
        "{report}"
    );
    assert!(report.contains("ok    block"), "{report}");

    // Without CAP_SYS_ADMIN it cannot mount it: the tracepoint families say how to fix that,
    // and block, sched and http still run, on raw tracepoints (which need no tracefs). tcp,
    // on by default, attaches by no mechanism: `check` fails and its last line says so.
    let (out, report) =
        without_tracefs(&format!("exec capsh --drop=cap_sys_admin -- -c '{check}'"));
    assert!(
        report.contains("mount it yourself with `mount -t tracefs tracefs /sys/kernel/tracing`"),
        "{report}"
    );
    assert!(report.contains("FAIL  tcp"), "{report}");
    for (family, mechanism) in [
        ("block", "raw_tracepoint"),
        ("sched", "raw_tracepoint"),
        ("http", "socket_tracepoint"),
    ] {
        assert!(
            report.contains(&format!("ok    {family:<28} attached with {mechanism}")),
            "{report}"
        );
    }
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(
        report.lines().last(),
        Some(
            "Result: FAILED: tcp enabled by default but cannot attach by any mechanism here \
             (see FAIL above)."
        ),
        "{report}"
    );
}

/// With `kernel.bpf_stats_enabled=1`, per-program run time and count are exported.
#[test]
fn bpf_program_stats_are_exported_when_enabled() {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(SYSCTL).unwrap();
    std::fs::write(SYSCTL, "1").unwrap();
    let daemon = Daemon::start("", &[]);
    std::thread::sleep(Duration::from_millis(500));
    let scrape = daemon.scrape();
    std::fs::write(SYSCTL, before.trim()).unwrap();
    let runs = scrape.value(
        "periscope_bpf_program_run_count_total",
        &[("program", "sched_switch_raw")],
    );
    let time = scrape.value(
        "periscope_bpf_program_run_time_seconds_total",
        &[("program", "sched_switch_raw")],
    );
    assert!(runs.is_some_and(|n| n > 0.0), "sched_switch ran: {runs:?}");
    assert!(time.is_some_and(|t| t > 0.0), "and took time: {time:?}");
}

/// The capabilities docs/deploy.md's Privileges table documents.
const DOCUMENTED: &[&str] = &[
    "cap_bpf",
    "cap_perfmon",
    "cap_sys_admin",
    "cap_dac_read_search",
    "cap_sys_ptrace",
];

/// `periscope ARGS` under capsh with only `keep` left in the bounding set (so root's exec gets
/// no other capability).
fn under_capsh(keep: &[&str], args: &str) -> Command {
    let mut command = Command::new("capsh");
    command
        .arg(periscope_e2e::capsh_drop_all_but(keep))
        .args(["--", "-c"])
        .arg(format!("exec {} {args}", periscope_bin().display()));
    command
}

/// The capability sets (CapEff, CapPrm, CapBnd) of every thread of `pid`, as bit masks.
fn thread_capabilities(pid: u32) -> Vec<[u64; 3]> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap_or(u64::MAX)
        };
        out.push([field("CapEff:"), field("CapPrm:"), field("CapBnd:")]);
    }
    out
}

const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;

#[test]
fn after_attaching_every_thread_keeps_only_what_the_daemon_still_uses() {
    // Without HTTPS nothing attaches later: only the /proc readers remain.
    let daemon = Daemon::start("probes:\n  http:\n    tls: false\n", &[]);
    let proc_only = CAP_DAC_READ_SEARCH | CAP_SYS_PTRACE;
    for sets in thread_capabilities(daemon.pid()) {
        assert_eq!(sets, [proc_only; 3], "CapEff, CapPrm, CapBnd of a thread");
    }
    // Still working without CAP_BPF: every scrape reads the kernel maps through the fds the
    // daemon holds, and run-queue waits keep being counted.
    let waits = |d: &Daemon| {
        d.scrape()
            .histogram("kernel_sched_runqueue_latency_seconds", &[])
            .count
    };
    let before = waits(&daemon);
    std::thread::sleep(Duration::from_millis(500));
    let after = waits(&daemon);
    assert!(
        after > before,
        "run-queue waits counted after the drop: {before} -> {after}"
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("capabilities reduced"), "{log}");

    // With HTTPS (the default) new processes get uprobes: eBPF and uprobe rights stay.
    let daemon = Daemon::start("", &[]);
    let with_attach = proc_only | CAP_BPF | CAP_PERFMON | CAP_SYS_ADMIN;
    for sets in thread_capabilities(daemon.pid()) {
        assert_eq!(sets, [with_attach; 3], "CapEff, CapPrm, CapBnd of a thread");
    }
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn runs_with_only_the_documented_capabilities() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("periscope.yaml");
    std::fs::write(&path, format!("prometheus:\n  listen: 127.0.0.1:{port}\n")).unwrap();
    let mut child = under_capsh(DOCUMENTED, &format!("run --config {}", path.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("capsh");
    let started = Instant::now();
    let metrics = loop {
        if let Ok(body) = periscope_e2e::daemon::http_get(port, "/metrics") {
            break body;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("exited with {status}: {}", stderr(&out));
        }
        // A bound on a startup that never serves (a hang), not a speed claim.
        assert!(started.elapsed() < Duration::from_secs(60), "never served");
        std::thread::sleep(Duration::from_millis(100));
    };
    let scrape = periscope_e2e::scrape::Scrape::parse(&metrics);
    // Every family of the default config attaches (syscall is off by default, uprobe has no
    // functions; HTTPS needs CAP_SYS_ADMIN, which is documented and kept).
    for probe in ["block", "sched", "http", "tcp"] {
        assert_eq!(
            scrape.value("periscope_probe_attached", &[("probe", probe)]),
            Some(1.0),
            "{probe} attached with the documented capabilities"
        );
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn without_cap_bpf_it_refuses_to_start_naming_what_is_missing() {
    let keep: Vec<&str> = DOCUMENTED
        .iter()
        .copied()
        .filter(|c| *c != "cap_bpf")
        .collect();
    let out = under_capsh(&keep, "run --duration 5s")
        .output()
        .expect("capsh");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "periscope: missing capabilities: CAP_BPF. Periscope needs CAP_BPF and CAP_PERFMON \
             to load and attach its eBPF programs"
        ),
        "{err}"
    );
}

/// The status line of `METHOD PATH` sent to 127.0.0.1:port (HTTP/1.0, no body).
fn status_of(port: u16, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

/// The README's promise: the endpoint serves `GET /metrics` and `GET /healthz`, and anything
/// else is a 404 (other paths, other methods on those paths).
#[test]
fn the_endpoint_serves_metrics_and_healthz_and_404_otherwise() {
    let daemon = Daemon::start(
        "probes:\n  http:\n    enabled: false\n  tcp:\n    enabled: false\n  sched:\n    enabled: false\n",
        &[],
    );
    let port = daemon.port;
    for (method, path, status) in [
        ("GET", "/metrics", "200"),
        ("GET", "/healthz", "200"),
        ("GET", "/", "404"),
        ("GET", "/metrics/extra", "404"),
        ("GET", "/unknown", "404"),
        ("POST", "/metrics", "404"),
        ("DELETE", "/healthz", "404"),
    ] {
        let line = status_of(port, method, path);
        assert!(
            line.starts_with("HTTP/1.") && line.split_whitespace().nth(1) == Some(status),
            "{method} {path}: {line:?}, expected {status}"
        );
    }
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}
