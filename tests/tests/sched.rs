//! Run-queue latency under CPU contention from a known number of busy threads, compared with
//! libbpf-tools `runqlat` over the same window.

use std::time::Duration;

use periscope_e2e::{
    busy,
    daemon::Daemon,
    exclusive,
    reference::{RefTool, median_slot, parse_log2_histograms},
};

const RUNQ: &str = "kernel_sched_runqueue_latency_seconds";

const ONLY_SCHED: &str = "probes:\n  block:\n    enabled: false\n  http:\n    enabled: false\n  syscall:\n    enabled: false\n  tcp:\n    enabled: false\n";

/// The default: raw tracepoints (`task_struct` pids at their BTF offset).
#[test]
fn contention_raises_runqueue_latency_and_agrees_with_runqlat() {
    contention_agrees_with_runqlat("auto", "raw_tracepoint");
}

/// The fallback: tracepoints, fields from the format files.
#[test]
fn tracepoint_mechanism_agrees_with_runqlat_too() {
    contention_agrees_with_runqlat("tracepoint", "tracepoint");
}

fn contention_agrees_with_runqlat(mechanism: &str, expected_mechanism: &str) {
    let _machine = exclusive();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let daemon = Daemon::start(
        &format!("{ONLY_SCHED}  sched:\n    mechanism: {mechanism}\n"),
        &[],
    );
    assert_eq!(
        daemon.scrape().value(
            "periscope_probe_attached",
            &[("probe", "sched"), ("mechanism", expected_mechanism)]
        ),
        Some(1.0),
        "sched attached with {expected_mechanism}"
    );

    let window = Duration::from_secs(3);
    let a = daemon.scrape();
    std::thread::sleep(window);
    let b = daemon.scrape();
    let idle = b.histogram(RUNQ, &[]).since(&a.histogram(RUNQ, &[]));

    let runqlat = RefTool::start("runqlat", &[]);
    let c = daemon.scrape();
    busy(cpus * 2, window);
    let d = daemon.scrape();
    let reference = runqlat.stop();
    let busy = d.histogram(RUNQ, &[]).since(&c.histogram(RUNQ, &[]));

    let theirs = parse_log2_histograms(&reference)
        .remove("")
        .expect("runqlat histogram");
    let their_count: u64 = theirs.values().sum();
    let ours = busy.log2_usec_slots();
    println!(
        "idle: {} waits, p50 {:.6}s; busy: {} waits, p50 {:.6}s",
        idle.count,
        idle.quantile(0.5),
        busy.count,
        busy.quantile(0.5)
    );
    println!("periscope log2 slots {ours:?}\nrunqlat log2 slots {theirs:?}");

    // Contention shows: more waits, and longer ones.
    assert!(
        busy.count > idle.count,
        "busy {} vs idle {}",
        busy.count,
        idle.count
    );
    assert!(
        busy.quantile(0.5) > 4.0 * idle.quantile(0.5),
        "median wait must grow under contention"
    );

    // Agreement with runqlat: count within 10%, median within one log2 slot.
    let relative = (busy.count - their_count as f64).abs() / their_count as f64;
    assert!(
        relative <= 0.10,
        "counts differ by {:.1}% ({} vs {their_count})",
        relative * 100.0,
        busy.count
    );
    let theirs_f: std::collections::BTreeMap<u32, f64> =
        theirs.iter().map(|(k, v)| (*k, *v as f64)).collect();
    let (our_median, their_median) = (median_slot(&ours).unwrap(), median_slot(&theirs_f).unwrap());
    assert!(
        our_median.abs_diff(their_median) <= 1,
        "median slots {our_median} vs {their_median}"
    );
}

/// With `by_cgroup`, waits of tasks in a cgroup of the test's own land in that cgroup's series.
#[test]
fn runqueue_latency_split_by_cgroup() {
    let _machine = exclusive();
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|p| std::path::Path::new(p).join("cgroup.procs").exists())
        .expect("a cgroup v2 hierarchy");
    let name = format!("periscope-test-{}", std::process::id());
    let dir = std::path::Path::new(root).join(&name);
    std::fs::create_dir(&dir).expect("create test cgroup");
    let daemon = Daemon::start(
        "probes:\n  block:\n    enabled: false\n  http:\n    enabled: false\n  syscall:\n    enabled: false\n  tcp:\n    enabled: false\n  sched:\n    by_cgroup: true\n    max_cgroups: 64\n",
        &[],
    );
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    // The shell moves itself into the cgroup, then becomes the busy workload.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec stress-ng --cpu {} --timeout 3s --quiet",
        dir.display(),
        cpus * 2
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("stress-ng");
    assert!(status.success());
    let scrape = daemon.scrape();
    let path = format!("/{name}");
    let ours = scrape.histogram(RUNQ, &[("cgroup_path", &path)]);
    println!(
        "{path}: {} waits, p50 {:.6}s",
        ours.count,
        ours.quantile(0.5)
    );
    assert!(
        ours.count > 100.0,
        "busy cgroup has its own series with waits: {}",
        ours.count
    );
    assert!(
        ours.quantile(0.5) > 0.0005,
        "its median wait reflects the contention"
    );
    drop(daemon);
    let _ = std::fs::remove_dir(&dir);
}
