//! USDT probes from config, against a C program built here with `<sys/sdt.h>`
//! (`workloads/usdt_target.c`, linked to `workloads/usdt_lib.c`) and started after Periscope:
//! a two-argument probe fired a known number of times (exact count, exact argument sum), a
//! probe guarded by its semaphore (fires only because Periscope enabled it), a probe in a
//! shared library, and bpftrace's counts of the same run; bad entries fail alone, by name.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use periscope_e2e::{
    daemon::Daemon, exclusive, periscope_bin, periscope_check, scrape::Scrape, target::Target,
    wait_for,
};

const CALLS: &str = "process_usdt_calls_total";
const TICKS: u64 = 137;
const PAIRS: u64 = 5;
const SLEEP_MS: u64 = 10;

/// The target and its library, built into `dir`.
struct Built {
    target: PathBuf,
    library: PathBuf,
}

fn build(dir: &Path) -> Built {
    let workloads = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workloads");
    let library = dir.join("libusdtlib.so");
    let target = dir.join("usdt-target");
    let cc = |args: &[&std::ffi::OsStr]| {
        let status = Command::new("cc")
            .args(args)
            .status()
            .expect("run cc (make setup installs gcc and systemtap-sdt-dev)");
        assert!(
            status.success(),
            "cc {args:?} failed (is systemtap-sdt-dev installed?)"
        );
    };
    cc(&[
        "-O1".as_ref(),
        "-g".as_ref(),
        "-shared".as_ref(),
        "-fPIC".as_ref(),
        "-o".as_ref(),
        library.as_os_str(),
        workloads.join("usdt_lib.c").as_os_str(),
    ]);
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let libdir = format!("-L{}", dir.display());
    cc(&[
        "-O1".as_ref(),
        "-g".as_ref(),
        "-o".as_ref(),
        target.as_os_str(),
        workloads.join("usdt_target.c").as_os_str(),
        libdir.as_ref(),
        "-lusdtlib".as_ref(),
        rpath.as_ref(),
    ]);
    Built { target, library }
}

/// What the target reports it did.
struct Report {
    guarded: u64,
    pairs_ns: Vec<u64>,
}

fn start_target(binary: &Path) -> Target {
    let args = [TICKS, PAIRS, SLEEP_MS].map(|n| n.to_string());
    Target::start(binary, &args)
}

/// Fires every probe and returns what the program measured.
fn run(target: &mut Target) -> Report {
    target.go();
    let mut report = Report {
        guarded: u64::MAX,
        pairs_ns: Vec::new(),
    };
    for line in target.report() {
        if let Some(n) = line.strip_prefix("guarded ") {
            report.guarded = n.parse().unwrap();
        } else if let Some(ns) = line.strip_prefix("pair ") {
            report.pairs_ns.push(ns.parse().unwrap());
        }
    }
    report
}

fn entry(path: &Path, provider: &str, name: &str, extra: &str) -> String {
    format!(
        "      - path: {}\n        provider: {provider}\n        name: {name}\n{extra}",
        path.display()
    )
}

fn usdt_config(entries: &[String]) -> String {
    format!(
        "probes:\n  block:\n    enabled: false\n  http:\n    enabled: false\n  usdt:\n    probes:\n{}",
        entries.concat()
    )
}

/// bpftrace counting the same probes, started before the target; its maps are printed when
/// it is interrupted.
struct Bpftrace {
    child: Child,
}

impl Bpftrace {
    fn start(built: &Built) -> Option<Self> {
        Command::new("bpftrace").arg("--version").output().ok()?;
        let t = built.target.display();
        let l = built.library.display();
        // BEGIN runs once every probe is attached: its line is the signal to start the target
        // ("Attaching N probes..." comes before the attach).
        let program = format!(
            "BEGIN {{ printf(\"ready\\n\"); }} \
             usdt:{t}:periscope_test:tick {{ @tick = count(); }} \
             usdt:{t}:periscope_test:guarded {{ @guarded = count(); }} \
             usdt:{t}:periscope_test:req_start {{ @req_start = count(); }} \
             usdt:{l}:periscope_lib:hit {{ @hit = count(); }}"
        );
        let mut child = Command::new("bpftrace")
            .args(["-e", &program])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim() != "ready" {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!("bpftrace exited before its BEGIN probe");
            }
        }
        child.stdout = Some(stdout.into_inner());
        Some(Self { child })
    }

    /// Interrupts it and returns its `@name: N` counts.
    fn counts(self) -> Vec<(String, u64)> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (name, n) = l.strip_prefix('@')?.split_once(": ")?;
                Some((name.to_string(), n.trim().parse().ok()?))
            })
            .collect()
    }
}

fn calls(scrape: &Scrape, target: &Target, provider: &str, name: &str) -> Option<f64> {
    scrape.value(
        CALLS,
        &[
            ("service_instance_id", &target.instance()),
            ("usdt_provider", provider),
            ("usdt_name", name),
        ],
    )
}

#[test]
fn usdt_counts_arguments_and_semaphores_are_exact_and_match_bpftrace() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path());
    let config = usdt_config(&[
        entry(&built.target, "periscope_test", "tick", "        arg: 1\n"),
        entry(&built.target, "periscope_test", "guarded", ""),
        entry(
            &built.target,
            "periscope_test",
            "req_start",
            "        done: req_done\n",
        ),
        entry(&built.library, "periscope_lib", "hit", ""),
        entry(&built.target, "periscope_test", "no_such_probe", ""),
        entry(Path::new("/bin/true"), "periscope_test", "tick", ""),
    ]);
    let daemon = Daemon::start(&config, &[]);
    let bpftrace = Bpftrace::start(&built);
    // Started after Periscope (and bpftrace): the uprobes are on the files, not on processes.
    let mut target = start_target(&built.target);
    let report = run(&mut target);
    let scrape = wait_for("usdt counts", Duration::from_secs(10), || {
        let scrape = daemon.scrape();
        calls(&scrape, &target, "periscope_lib", "hit").map(|_| scrape)
    });

    // Every firing counted, the guarded probe included: Periscope's attach set its semaphore.
    assert_eq!(report.guarded, TICKS, "the semaphore was not enabled");
    assert_eq!(report.pairs_ns.len() as u64, PAIRS);
    let expected = [
        ("periscope_test", "tick", TICKS),
        ("periscope_test", "guarded", TICKS),
        ("periscope_test", "req_start", PAIRS),
        ("periscope_lib", "hit", TICKS),
    ];
    for (provider, name, n) in expected {
        assert_eq!(
            calls(&scrape, &target, provider, name),
            Some(n as f64),
            "{provider}:{name}"
        );
    }

    // Argument 1 of tick is i * 10 for i = 1..=TICKS: the count and the sum are exact.
    let labels = [
        ("service_instance_id", target.instance()),
        ("usdt_name", "tick".to_string()),
        ("usdt_argument", "1".to_string()),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let count = scrape.value("process_usdt_argument_count", &labels);
    let sum = scrape.value("process_usdt_argument_sum", &labels);
    assert_eq!(count, Some(TICKS as f64));
    assert_eq!(sum, Some((10 * TICKS * (TICKS + 1) / 2) as f64));

    // Start to done, matched per thread: as many pairs as the program ran, and a mean within
    // 10% of the one it measured around the same two probes.
    let labels = [
        ("service_instance_id", target.instance()),
        ("usdt_name", "req_start".to_string()),
        ("usdt_done", "req_done".to_string()),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let count = scrape.value("process_usdt_duration_seconds_count", &labels);
    let sum = scrape.value("process_usdt_duration_seconds_sum", &labels);
    assert_eq!(count, Some(PAIRS as f64));
    let ours = sum.unwrap() / PAIRS as f64;
    let measured = report.pairs_ns.iter().sum::<u64>() as f64 / 1e9 / PAIRS as f64;
    eprintln!("mean pair latency: periscope {ours:.6} s, the program {measured:.6} s");
    assert!(
        (ours - measured).abs() <= 0.1 * measured,
        "mean pair latency: periscope {ours} s, the program {measured} s"
    );

    // The bad entries failed alone, each named with its reason.
    let log = daemon.log_so_far();
    assert!(
        log.contains("no probe periscope_test:no_such_probe in"),
        "{log}"
    );
    assert!(
        log.contains("/bin/true: has no .note.stapsdt section"),
        "{log}"
    );
    let attached = |name: &str, path: &Path| {
        scrape.value(
            "periscope_usdt_attached",
            &[
                ("usdt_name", name),
                ("code_file_path", &path.display().to_string()),
            ],
        )
    };
    assert_eq!(attached("tick", &built.target), Some(1.0));
    assert_eq!(attached("no_such_probe", &built.target), Some(0.0));
    assert_eq!(attached("tick", Path::new("/bin/true")), Some(0.0));

    // bpftrace saw the same run.
    if let Some(bpftrace) = bpftrace {
        let counts = bpftrace.counts();
        for (name, n) in [
            ("tick", TICKS),
            ("guarded", TICKS),
            ("req_start", PAIRS),
            ("hit", TICKS),
        ] {
            assert!(
                counts.contains(&(name.to_string(), n)),
                "bpftrace @{name}: {counts:?}"
            );
        }
    } else {
        eprintln!("bpftrace is not installed: its comparison is skipped");
    }
    drop(target);
    check_lists_every_entry(&config);
}

/// `periscope check` prints each entry: its address count and semaphore, or why not.
fn check_lists_every_entry(config: &str) {
    let report = periscope_check(config);
    assert!(
        report.contains("USDT probes (probes.usdt.probes)"),
        "{report}"
    );
    let line = |what: &str| {
        report
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line for {what}: {report}"))
            .to_string()
    };
    let tick = line("[0] periscope_test:tick");
    assert!(tick.contains("1 address, semaphore 0x"), "{tick}");
    assert!(
        line("[3] periscope_lib:hit").contains("semaphore none"),
        "{report}"
    );
    assert!(
        line("[4] periscope_test:no_such_probe").contains("no probe periscope_test:no_such_probe"),
        "{report}"
    );
    assert!(
        line("[5] periscope_test:tick").contains("has no .note.stapsdt section"),
        "{report}"
    );
}

#[test]
fn usdt_list_prints_what_bpftrace_lists() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path());
    let out = Command::new(periscope_bin())
        .args(["usdt", "list"])
        .arg(&built.target)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let mut ours: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    ours.sort();
    let t = built.target.display();
    assert_eq!(
        ours,
        ["guarded", "req_done", "req_start", "tick"]
            .map(|n| format!("usdt:{t}:periscope_test:{n}"))
    );
    let tick = text.lines().find(|l| l.contains(":tick ")).unwrap();
    assert!(tick.contains("args -4@%"), "{tick}");
    assert!(tick.contains("semaphore 0x"), "{tick}");
    if let Ok(listed) = Command::new("bpftrace")
        .args(["-l", &format!("usdt:{t}:*")])
        .output()
    {
        let mut theirs: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        theirs.sort();
        assert_eq!(ours, theirs);
    }
    // A file without notes: a clear error naming it.
    let out = Command::new(periscope_bin())
        .args(["usdt", "list", "/bin/true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/bin/true: has no .note.stapsdt section"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
