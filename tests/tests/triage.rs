//! `periscope triage` driven through a real terminal (a private tmux server: send-keys to type
//! the command, capture-pane to read the screen) during three workloads the test owns: O_DIRECT
//! writes on its own loop device, more busy threads than CPUs, and TCP transfers through an
//! nftables drop rule in its own network namespace. Each time the verdict must name the right
//! layer, and the numbers must agree with a `periscope run` daemon scraped at the start and the
//! end of the same window. Then `--json` is validated against `exporter/triage.schema.json`
//! (PyPI jsonschema, installed by .ci/setup.sh), Ctrl-C mid-run must print the summary so far
//! and exit 0, and output that is not a terminal must carry no escape sequence.

use std::{
    io::Read,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use periscope_e2e::{
    busy, daemon::Daemon, exclusive, free_port, http::workload, loopdev::LoopDevice, netns::NetNs,
    periscope_bin, scrape::Scrape, wait_for,
};

/// The daemon the triage numbers are compared with: every default family (block, sched, tcp,
/// http), so it sees what triage sees.
const DAEMON: &str = "";

/// A tmux server of the test's own (its own socket), with one 200x60 pane running a plain bash.
struct Terminal {
    socket: String,
    _conf: tempfile::NamedTempFile,
}

impl Terminal {
    fn new(tag: &str) -> Self {
        let socket = format!("periscope-triage-{tag}-{}", std::process::id());
        let conf = tempfile::NamedTempFile::new().expect("tmux conf");
        std::fs::write(
            conf.path(),
            "set -g history-limit 50000\nset -g status off\n",
        )
        .expect("write tmux conf");
        let t = Self {
            socket,
            _conf: conf,
        };
        let _ = t.tmux(&["kill-server"]);
        let conf = t._conf.path().to_str().expect("utf-8").to_string();
        let out = Command::new("tmux")
            .args(["-L", &t.socket, "-f", &conf])
            .args(["new-session", "-d", "-s", "main", "-x", "200", "-y", "60"])
            .arg("bash --norc --noprofile")
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux (make test installs it)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `line` and Enter.
    fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-t", "main", "-l", line]);
        self.tmux(&["send-keys", "-t", "main", "Enter"]);
    }

    /// What the pane shows now (the alternate screen while triage draws its live view).
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "main"])
    }

    /// The normal screen with its whole scrollback, wrapped lines joined.
    fn history(&self) -> String {
        self.tmux(&[
            "capture-pane",
            "-p",
            "-J",
            "-S",
            "-",
            "-E",
            "-",
            "-t",
            "main",
        ])
    }

    /// Starts `periscope triage ARGS` at the prompt and waits until its live screen says it is
    /// collecting (the first snapshot is taken by then).
    fn start_triage(&self, args: &str) {
        self.type_line(&format!(
            "{} triage {args}; echo TRIAGE-EXIT=$?",
            periscope_bin().display()
        ));
        wait_for(
            "the live screen of periscope triage",
            Duration::from_secs(60),
            || {
                let screen = self.screen();
                screen
                    .contains("periscope triage: collecting [")
                    .then_some(())
                    .or_else(|| {
                        let history = self.history();
                        assert!(
                            exit_code(&history).is_none(),
                            "triage ended before collecting:\n{history}"
                        );
                        None
                    })
            },
        );
    }

    /// Waits for the final summary (the live screen is gone and a verdict is shown): the daemon
    /// is scraped right then, before triage detaches its programs (a detach wakes many kernel
    /// threads: short run-queue waits that are not in triage's window).
    fn wait_summary(&self, timeout: Duration) {
        wait_for("the summary of periscope triage", timeout, || {
            let history = self.history();
            (!history.contains("periscope triage: collecting [")
                && history.lines().any(|l| l.starts_with("verdict: ")))
            .then_some(())
        })
    }

    /// Waits for the command to end; its exit code and what it printed (from its summary on).
    fn wait_triage(&self, timeout: Duration) -> (i32, String) {
        wait_for("periscope triage to end", timeout, || {
            let history = self.history();
            let code = exit_code(&history)?;
            let start = history
                .find("collected")
                .and_then(|i| history[..i].rfind("periscope triage: "))
                .unwrap_or_else(|| panic!("no summary in:\n{history}"));
            Some((code, history[start..].to_string()))
        })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The code printed by `echo TRIAGE-EXIT=$?` (the typed command itself shows `$?`).
fn exit_code(history: &str) -> Option<i32> {
    history.lines().find_map(|l| {
        l.trim()
            .strip_prefix("TRIAGE-EXIT=")
            .and_then(|v| v.parse().ok())
    })
}

/// The number before `suffix` on the first line (not the verdict) starting with `prefix`.
fn number_on(output: &str, prefix: &str, suffix: &str) -> f64 {
    let line = output
        .lines()
        .filter(|l| !l.starts_with("verdict: "))
        .find(|l| l.starts_with(prefix) && l.contains(suffix))
        .unwrap_or_else(|| panic!("no line `{prefix}...{suffix}` in:\n{output}"));
    let before = &line[..line.find(suffix).unwrap()];
    before
        .rsplit(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before `{suffix}` in `{line}`"))
}

fn verdict(output: &str) -> String {
    output
        .lines()
        .find(|l| l.starts_with("verdict: "))
        .unwrap_or_else(|| panic!("no verdict in:\n{output}"))
        .to_string()
}

fn sum(scrape: &Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn within(ours: f64, theirs: f64, relative: f64, absolute: f64) -> bool {
    (ours - theirs).abs() <= (relative * theirs).max(absolute)
}

#[test]
fn verdict_names_disk_then_cpu_then_network_and_agrees_with_the_daemon() {
    let _machine = exclusive();
    let disk = LoopDevice::create(256);
    // Let the partition scan of the new device finish before anything counts.
    std::thread::sleep(Duration::from_millis(500));
    let daemon = Daemon::start(DAEMON, &[]);

    // Disk: 5 s of 4 KiB O_DIRECT random writes, 32 in flight, on the test's own device.
    let term = Terminal::new("disk");
    term.start_triage("--duration 8s");
    let before = daemon.scrape();
    let fio = Command::new("fio")
        .args(["--name=triage", "--direct=1", "--rw=randwrite", "--bs=4k"])
        .args([
            "--ioengine=libaio",
            "--iodepth=32",
            "--time_based",
            "--runtime=5",
        ])
        .args(["--size=64M", "--output=/dev/null"])
        .arg(format!("--filename={}", disk.path.display()))
        .status()
        .expect("fio (make test installs it)");
    assert!(fio.success(), "fio failed");
    term.wait_summary(Duration::from_secs(30));
    let after = daemon.scrape();
    let (code, out) = term.wait_triage(Duration::from_secs(30));
    println!("{out}");
    assert_eq!(code, 0, "triage exit code");
    let labels = [("system_device", disk.name.as_str())];
    let theirs = after
        .histogram("kernel_block_io_duration_seconds", &labels)
        .since(&before.histogram("kernel_block_io_duration_seconds", &labels))
        .count;
    let ours = number_on(&out, &format!("{} (", disk.name), " IOs (");
    println!("disk {}: triage {ours} IOs, daemon {theirs}", disk.name);
    assert!(theirs > 1000.0, "fio did IO: {theirs}");
    assert_eq!(ours, theirs, "block completions on the test's device");
    let v = verdict(&out);
    assert!(
        v.starts_with("verdict: disk stands out: ") && v.contains(&disk.name),
        "{v}"
    );
    assert!(
        out.contains("     usecs               : count     distribution"),
        "bcc-style histogram:\n{out}"
    );
    drop(term);

    // CPU: four busy threads per CPU for 5 s.
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let term = Terminal::new("cpu");
    term.start_triage("--duration 8s");
    let before = daemon.scrape();
    busy(cpus * 4, Duration::from_secs(5));
    term.wait_summary(Duration::from_secs(30));
    let after = daemon.scrape();
    let (code, out) = term.wait_triage(Duration::from_secs(30));
    println!("{out}");
    assert_eq!(code, 0, "triage exit code");
    let theirs = after
        .histogram("kernel_sched_runqueue_latency_seconds", &[])
        .since(&before.histogram("kernel_sched_runqueue_latency_seconds", &[]));
    let waits = number_on(&out, "", " waits, ");
    let waited = number_on(&out, "", " s waited in all");
    // Waits of a millisecond or more (the busy threads'), from triage's log2 rows.
    let cpu_section = &out[out.find("== CPU").unwrap()..out.find("== Disk").unwrap()];
    let long_waits: f64 = cpu_section
        .lines()
        .filter_map(|l| {
            let (range, rest) = l.split_once(" : ")?;
            let low: u64 = range.split("->").next()?.trim().parse().ok()?;
            let count: f64 = rest.split_whitespace().next()?.parse().ok()?;
            (low >= 1024).then_some(count)
        })
        .sum();
    let their_long = theirs.count - theirs.cumulative_at(0.001024);
    println!(
        "run queue: triage {waits} waits ({long_waits} >= 1 ms) {waited} s, daemon {} waits ({their_long} >= 1 ms) {:.2} s",
        theirs.count, theirs.sum
    );
    let v = verdict(&out);
    assert!(v.starts_with("verdict: CPU stands out: "), "{v}");
    // The two windows differ by the time a scrape and the start/end of the command take.
    assert!(within(waits, theirs.count, 0.25, 100.0), "waits");
    assert!(within(long_waits, their_long, 0.15, 20.0), "waits >= 1 ms");
    assert!(within(waited, theirs.sum, 0.25, 0.5), "time waited");
    drop(term);

    // Network: 20% of the server's data packets dropped on arrival (SYN-ACKs spared), 4
    // transfers of 512 KiB (2 to 5 s here: a retransmission lost again doubles its timeout), all
    // inside a 15 s window.
    let ns = NetNs::new("triage", 1500);
    let port = free_port();
    ns.drop_from_port(port, 20);
    let mut server = ns
        .command("python3")
        .arg(workload("tcp.py"))
        .args(["server", &port.to_string(), &(512 << 10).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tcp.py server");
    let mut line = [0u8; 1];
    server
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut line)
        .expect("server listening");
    let term = Terminal::new("net");
    term.start_triage("--duration 15s");
    let before = daemon.scrape();
    let started = Instant::now();
    let client = ns
        .command("python3")
        .arg(workload("tcp.py"))
        .args(["client", &port.to_string(), "4", "0", "100"])
        .stdout(Stdio::null())
        .status()
        .expect("tcp.py client");
    let transfer = started.elapsed();
    term.wait_summary(Duration::from_secs(60));
    let after = daemon.scrape();
    let (code, out) = term.wait_triage(Duration::from_secs(60));
    let _ = server.kill();
    let _ = server.wait();
    println!("{out}");
    assert!(client.success(), "the transfers completed");
    assert_eq!(code, 0, "triage exit code");
    let theirs =
        sum(&after, "kernel_tcp_retransmits_total") - sum(&before, "kernel_tcp_retransmits_total");
    let ours = number_on(&out, "", " retransmits (");
    println!("retransmits: triage {ours}, daemon {theirs} (transfer took {transfer:?})");
    assert!(
        transfer < Duration::from_secs(14),
        "the transfers must end inside the window: {transfer:?}"
    );
    assert!(theirs >= 10.0, "20% loss forces retransmits: {theirs}");
    assert!(within(ours, theirs, 0.1, 3.0), "retransmits");
    let v = verdict(&out);
    assert!(v.starts_with("verdict: network stands out: "), "{v}");
}

/// The JSON document of `triage --json`, checked by jsonschema against the documented schema.
fn validate(json: &std::path::Path) -> serde_json::Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let schema = root.join("exporter/triage.schema.json");
    let out = Command::new("python3")
        .env("PYTHONPATH", root.join("target/triage-python"))
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator.check_schema(schema)\n\
             jsonschema.Draft202012Validator(schema).validate(json.load(open(sys.argv[2])))\n\
             print('valid')",
        ])
        .arg(&schema)
        .arg(json)
        .output()
        .expect("python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("valid"),
        "schema validation failed (make test installs jsonschema into target/triage-python): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(json).expect("read json")).expect("parse json")
}

#[test]
fn json_validates_ctrl_c_prints_the_summary_so_far_and_logs_stay_plain() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().expect("tempdir");

    // --json: stdout is the document; the live screen stays on the terminal (stderr).
    let json = dir.path().join("triage.json");
    let term = Terminal::new("json");
    term.start_triage(&format!("--duration 5s --json > {}", json.display()));
    let started = Instant::now();
    // An exec storm of a command name of the test's own: 30 runs of a copy of true(1).
    let storm = dir.path().join("pscope-exec");
    std::fs::copy("/bin/true", &storm).expect("copy true");
    for _ in 0..30 {
        assert!(Command::new(&storm).status().expect("exec").success());
    }
    wait_for("triage --json to end", Duration::from_secs(30), || {
        exit_code(&term.history())
    });
    assert_eq!(exit_code(&term.history()), Some(0));
    let doc = validate(&json);
    println!(
        "--json ended {:?} after collecting; verdict: {}",
        started.elapsed(),
        doc["verdict"]["summary"]
    );
    assert_eq!(doc["interrupted"], false);
    let elapsed = doc["elapsed_seconds"].as_f64().unwrap();
    assert!((4.5..7.0).contains(&elapsed), "elapsed {elapsed}");
    assert!(doc["runqueue"]["latency"]["count"].as_u64().unwrap() > 0);
    let execs = doc["exec"]["top"].as_array().expect("exec.top");
    let ours = execs
        .iter()
        .find(|e| e["comm"] == "pscope-exec")
        .unwrap_or_else(|| panic!("the exec storm is in the top commands: {execs:?}"));
    assert_eq!(ours["count"], 30, "every exec counted once");
    assert!(doc["exec"]["total"].as_u64().unwrap() >= 30);
    drop(term);

    // Ctrl-C after 2 s of a 60 s run: the summary so far, exit 0.
    let term = Terminal::new("sigint");
    term.start_triage("--duration 60s");
    std::thread::sleep(Duration::from_secs(2));
    let sent = Instant::now();
    term.tmux(&["send-keys", "-t", "main", "C-c"]);
    let (code, out) = term.wait_triage(Duration::from_secs(15));
    println!("{out}");
    assert_eq!(code, 0, "exit code after Ctrl-C");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "Ctrl-C ends it promptly"
    );
    assert!(
        out.contains("interrupted: the summary so far (requested 60 s)"),
        "{out}"
    );
    let collected = number_on(&out, "periscope triage: ", " s collected");
    assert!((1.0..10.0).contains(&collected), "collected {collected} s");
    verdict(&out);
    assert!(
        out.contains("== CPU: run-queue latency (sched) =="),
        "{out}"
    );
    drop(term);

    // Not a terminal: progress as plain lines (no escape, no carriage return), summary on stdout.
    let out = Command::new(periscope_bin())
        .args(["triage", "--duration", "3s"])
        .stdin(Stdio::null())
        .output()
        .expect("periscope triage");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("periscope triage: collecting for 3s"),
        "{stderr}"
    );
    for (name, text) in [("stderr", &stderr), ("stdout", &stdout)] {
        assert!(
            !text.contains('\x1b') && !text.contains('\r'),
            "{name} holds escapes: {text:?}"
        );
    }
    verdict(&stdout);
}

#[test]
fn with_only_cap_bpf_and_cap_perfmon_it_runs_and_says_what_it_cannot_show() {
    let _machine = exclusive();
    // tracefs is mounted by make test's setup: mounting it would need CAP_SYS_ADMIN.
    let out = Command::new("capsh")
        .arg(periscope_e2e::capsh_drop_all_but(&[
            "cap_bpf",
            "cap_perfmon",
        ]))
        .args(["--", "-c"])
        .arg(format!(
            "exec {} triage --duration 3s --json",
            periscope_bin().display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("capsh (make test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("triage.json");
    std::fs::write(&json, &out.stdout).expect("write json");
    let doc = validate(&json);
    for section in ["runqueue", "disks", "tcp", "syscalls", "http", "exec"] {
        assert!(!doc[section].is_null(), "{section} is shown: {doc}");
    }
    let unavailable = doc["unavailable"].as_array().expect("unavailable");
    println!("not shown: {unavailable:?}");
    assert!(
        unavailable
            .iter()
            .any(|u| u["what"].as_str().unwrap().starts_with("HTTPS")
                && u["why"].as_str().unwrap().contains("CAP_SYS_ADMIN")),
        "HTTPS is reported missing for want of CAP_SYS_ADMIN: {unavailable:?}"
    );
}
