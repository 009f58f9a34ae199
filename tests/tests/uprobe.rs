//! User-function latency from configured uprobes, against a test binary that times its own calls
//! (`function-target`): the count is exact, the latency agrees with what the caller measured,
//! bad entries fail alone with clear errors, and the process-name and pid filters exclude other
//! processes running the very same binary.

use std::process::Command;

use periscope_e2e::{
    daemon::Daemon, exclusive, periscope_bin, periscope_check, scrape::Scrape, target::Target,
};

const DURATION: &str = "process_function_duration_seconds";
const TARGET: &str = env!("CARGO_BIN_EXE_function-target");
const CALLS: usize = 50;
const SLEEP_MS: u64 = 20;

/// Starts `function-target` (or a link to it, whose name becomes the process name).
fn start_target(program: &std::path::Path) -> Target {
    Target::start(program, &[CALLS.to_string(), SLEEP_MS.to_string()])
}

/// Waits for every call and returns the durations the target measured itself, in seconds.
fn durations(target: &mut Target) -> Vec<f64> {
    let calls = target.report().into_iter();
    calls
        .map(|line| line.strip_prefix("call ").unwrap().parse::<f64>().unwrap() / 1e9)
        .collect()
}

fn function_config(entries: &[String]) -> String {
    format!(
        "probes:\n  block:\n    enabled: false\n  http:\n    enabled: false\n  uprobe:\n    functions:\n{}",
        entries.concat()
    )
}

fn entry(path: &str, symbol: &str, extra: &str) -> String {
    format!("      - path: {path}\n        symbol: {symbol}\n{extra}")
}

fn count_of(scrape: &Scrape, target: &Target) -> Option<f64> {
    scrape.value(
        &format!("{DURATION}_count"),
        &[
            ("service_instance_id", &target.instance()),
            ("code_function_name", "process_order"),
            ("code_file_path", TARGET),
        ],
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The same binary under another name (a symlink: the kernel names a process after the file
/// name it was executed by).
fn renamed_target(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let link = dir.path().join("other-name");
    std::os::unix::fs::symlink(TARGET, &link).unwrap();
    link
}

#[test]
fn function_latency_is_exact_and_agrees_with_the_caller() {
    let _machine = exclusive();
    let config = function_config(&[
        entry(
            TARGET,
            "process_order",
            "        process: function-target\n",
        ),
        entry("/nonexistent/myapp", "process_order", ""),
        entry(TARGET, "no_such_function", ""),
    ]);
    let daemon = Daemon::start(&config, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut ours = start_target(std::path::Path::new(TARGET));
    let mut other = start_target(&renamed_target(&dir));
    ours.go();
    other.go();
    let mut measured = durations(&mut ours);
    assert_eq!(durations(&mut other).len(), CALLS);
    let scrape = daemon.scrape();

    // Exact count for the selected process; nothing for the one running under another name.
    assert_eq!(measured.len(), CALLS);
    assert_eq!(count_of(&scrape, &ours), Some(CALLS as f64));
    assert_eq!(
        count_of(&scrape, &other),
        None,
        "process filter excludes other-name"
    );

    // Latency within 10% of what the caller measured (mean and median).
    let h = scrape.histogram(
        DURATION,
        &[
            ("service_instance_id", &ours.instance()),
            ("code_function_name", "process_order"),
        ],
    );
    let their_mean = measured.iter().sum::<f64>() / measured.len() as f64;
    let their_median = median(&mut measured);
    let (our_mean, our_median) = (h.sum / h.count, h.quantile(0.5));
    println!(
        "caller: mean {their_mean:.6}s median {their_median:.6}s; periscope: mean {our_mean:.6}s p50 {our_median:.6}s"
    );
    assert!(
        (our_mean / their_mean - 1.0).abs() < 0.10,
        "mean {our_mean} vs {their_mean}"
    );
    assert!(
        (our_median / their_median - 1.0).abs() < 0.10,
        "median {our_median} vs {their_median}"
    );
    assert!(
        our_mean >= SLEEP_MS as f64 / 1e3,
        "the function sleeps {SLEEP_MS} ms"
    );

    // The resource is the observed process.
    let service = scrape
        .samples
        .iter()
        .find(|s| s.name == format!("{DURATION}_count"))
        .and_then(|s| s.labels.get("service_name").cloned());
    assert_eq!(service.as_deref(), Some("function-target"));

    // Each entry's status: the good one attached, the bad ones not, the family and sched up.
    let attached = |path: &str, symbol: &str| {
        scrape.value(
            "periscope_uprobe_attached",
            &[("code_file_path", path), ("code_function_name", symbol)],
        )
    };
    assert_eq!(attached(TARGET, "process_order"), Some(1.0));
    assert_eq!(attached("/nonexistent/myapp", "process_order"), Some(0.0));
    assert_eq!(attached(TARGET, "no_such_function"), Some(0.0));
    for probe in ["uprobe", "sched"] {
        assert_eq!(
            scrape.value("periscope_probe_attached", &[("probe", probe)]),
            Some(1.0),
            "{probe}"
        );
    }
    let (_, log) = daemon.stop();
    assert!(
        log.contains("binary /nonexistent/myapp cannot be opened: No such file or directory"),
        "{log}"
    );
    assert!(
        log.contains(&format!("symbol no_such_function not found in {TARGET}")),
        "{log}"
    );
    check_lists_every_entry(&config);
}

/// `periscope check` prints each entry: its file offset, or why it cannot attach.
fn check_lists_every_entry(config: &str) {
    let report = periscope_check(config);
    assert!(
        report.contains("ok    uprobe                       attached with uprobe"),
        "{report}"
    );
    let lines: Vec<&str> = report.lines().collect();
    let line = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in {report}"))
            .to_string()
    };
    assert!(
        line("ok    [0] process_order").contains(&format!("{TARGET}: address 0x")),
        "{report}"
    );
    assert!(line("ok    [0] process_order").contains("file offset 0x"));
    assert!(
        line("FAIL  [1] process_order")
            .contains("/nonexistent/myapp: binary /nonexistent/myapp cannot be opened"),
        "{report}"
    );
    assert!(
        line("FAIL  [2] no_such_function").contains("symbol no_such_function not found"),
        "{report}"
    );
}

/// `pid` attaches for one process only: another process of the same binary and name is not
/// counted.
#[test]
fn pid_filter_times_only_that_process() {
    let _machine = exclusive();
    let mut chosen = start_target(std::path::Path::new(TARGET));
    let mut other = start_target(std::path::Path::new(TARGET));
    let config = function_config(&[entry(
        TARGET,
        "process_order",
        &format!("        pid: {}\n", chosen.pid),
    )]);
    let daemon = Daemon::start(&config, &[]);
    chosen.go();
    other.go();
    assert_eq!(durations(&mut chosen).len(), CALLS);
    assert_eq!(durations(&mut other).len(), CALLS);
    // Exited before the first scrape: the name comes from what the kernel recorded.
    assert!(chosen.finish().success());
    let scrape = daemon.scrape();
    let instance = chosen.instance();
    assert_eq!(count_of(&scrape, &chosen), Some(CALLS as f64));
    assert_eq!(count_of(&scrape, &other), None);
    assert_eq!(
        scrape.value(
            &format!("{DURATION}_count"),
            &[
                ("service_instance_id", &instance),
                ("service_name", "function-target")
            ]
        ),
        Some(CALLS as f64),
        "an exited process keeps its name"
    );
}

/// Every entry failing leaves the family failed (with each reason) while the others run.
#[test]
fn no_function_attached_fails_the_family_alone() {
    let config = function_config(&[entry("/nonexistent/myapp", "process_order", "")]);
    let daemon = Daemon::start(&config, &[]);
    let scrape = daemon.scrape();
    assert_eq!(
        scrape.value(
            "periscope_probe_attached",
            &[("probe", "uprobe"), ("mechanism", "none")]
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
        log.contains("uprobe: no configured function could be attached ([0] binary /nonexistent/myapp cannot be opened"),
        "{log}"
    );
}

/// Without CAP_SYS_ADMIN the kernel refuses to create uprobes (CAP_BPF and CAP_PERFMON are not
/// enough): the entry says so, and the tracepoint families still attach.
#[test]
fn without_cap_sys_admin_uprobes_say_why() {
    let config = function_config(&[entry(TARGET, "process_order", "")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("periscope.yaml");
    std::fs::write(&path, config).unwrap();
    let check = format!(
        "{} check --config {}",
        periscope_bin().display(),
        path.display()
    );
    let out = Command::new("capsh")
        .args(["--drop=cap_sys_admin", "--", "-c", &check])
        .output()
        .expect("capsh");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("ok    sched"), "{report}");
    assert!(report.contains("FAIL  uprobe"), "{report}");
    assert!(
        report.contains("(attaching uprobes needs CAP_SYS_ADMIN)"),
        "{report}"
    );
}
