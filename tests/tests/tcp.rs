//! TCP connections, lifetimes, bytes, leaks, resets and retransmits, driven by real Python
//! clients and servers inside a network namespace each test creates; compared with what the
//! workload itself counted and measured, and (retransmits) with bpftrace on the same run.

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use periscope_e2e::{
    daemon::Daemon, exclusive, free_port, http::workload, netns::NetNs, scrape::Scrape, wait_for,
};
use serde_json::Value;

const ONLY_TCP: &str = "probes:\n  block:\n    enabled: false\n  sched:\n    enabled: false\n  http:\n    enabled: false\n  syscall:\n    enabled: false\n";

const OPENED: &str = "kernel_tcp_connections_total";
const DURATION: &str = "kernel_tcp_connection_duration_seconds";
const SENT: &str = "kernel_tcp_connection_sent_bytes";
const RECEIVED: &str = "kernel_tcp_connection_received_bytes";

/// A `tcp.py` process whose JSON lines are read as they come.
struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Workload {
    fn start(ns: &NetNs, args: &[&str]) -> Self {
        let mut child = ns
            .command("python3")
            .arg(workload("tcp.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tcp.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// `ip netns exec` execs the program: the child's pid is python's.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn next(&self, timeout: Duration) -> Value {
        let line = self
            .lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("tcp.py said nothing within {timeout:?}: {e}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to tcp.py");
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server(ns: &NetNs, port: u16, reply_bytes: usize) -> Workload {
    let server = Workload::start(ns, &["server", &port.to_string(), &reply_bytes.to_string()]);
    server.next(Duration::from_secs(20));
    server
}

/// `service.instance.id` of a process, as Periscope labels its series.
fn instance(pid: u32) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    format!("{}:{pid}", host.trim())
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.value(name, labels).unwrap_or(0.0)
}

/// Opens minus closes of one process in one direction.
fn open_gap(scrape: &Scrape, pid: u32, direction: &str) -> f64 {
    let who = instance(pid);
    let labels = [
        ("service_instance_id", who.as_str()),
        ("direction", direction),
    ];
    value(scrape, OPENED, &labels) - scrape.histogram(DURATION, &labels).count
}

#[test]
fn connections_lifetimes_and_bytes_match_what_the_client_measured() {
    let daemon = Daemon::start(ONLY_TCP, &[]);
    let ns = NetNs::new("conns", 65536);
    let port = free_port();
    let (n, hold_ms, request, reply) = (40usize, 50u64, 300usize, 20_000usize);
    let server = server(&ns, port, reply);
    let client = Workload::start(
        &ns,
        &[
            "client",
            &port.to_string(),
            &n.to_string(),
            &hold_ms.to_string(),
            &request.to_string(),
        ],
    );
    let measured = client.next(Duration::from_secs(60));
    let connections = measured["connections"].as_array().expect("connections");
    assert_eq!(connections.len(), n);
    let total = |key: &str| -> f64 { connections.iter().map(|c| c[key].as_f64().unwrap()).sum() };
    assert_eq!(total("sent"), (n * request) as f64);
    assert_eq!(total("received"), (n * reply) as f64, "{measured}");

    let (client_id, server_id) = (instance(client.pid()), instance(server.pid()));
    let outbound = [
        ("service_instance_id", client_id.as_str()),
        ("direction", "outbound"),
        ("server_port", &*port.to_string()),
    ];
    let port_label = port.to_string();
    let inbound = [
        ("service_instance_id", server_id.as_str()),
        ("direction", "inbound"),
        ("server_port", port_label.as_str()),
    ];
    // Closes are reported when the kernel gets there (the server's FIN follows the client's
    // close), so wait for the last one rather than sleeping.
    let scrape = wait_for("every close counted", Duration::from_secs(15), || {
        let s = daemon.scrape();
        (s.histogram(DURATION, &outbound).count as usize == n
            && s.histogram(DURATION, &inbound).count as usize == n)
            .then_some(s)
    });
    assert_eq!(value(&scrape, OPENED, &outbound), n as f64);
    assert_eq!(value(&scrape, OPENED, &inbound), n as f64);
    // Payload bytes, exactly what the client sent and received (and the server the reverse).
    assert_eq!(scrape.histogram(SENT, &outbound).sum, total("sent"));
    assert_eq!(scrape.histogram(RECEIVED, &outbound).sum, total("received"));
    assert_eq!(scrape.histogram(SENT, &inbound).sum, total("received"));
    assert_eq!(scrape.histogram(RECEIVED, &inbound).sum, total("sent"));

    // Lifetimes: the client timed connect() to close(); the kernel from SYN_SENT to CLOSE.
    let mut seconds: Vec<f64> = connections
        .iter()
        .map(|c| c["seconds"].as_f64().unwrap())
        .collect();
    seconds.sort_by(f64::total_cmp);
    let client_median = seconds[n / 2];
    let kernel_median = scrape.histogram(DURATION, &outbound).quantile(0.5);
    let error = (kernel_median - client_median).abs() / client_median;
    assert!(
        error < 0.10,
        "median lifetime: periscope {kernel_median:.4}s, client {client_median:.4}s"
    );
    println!(
        "{n} connections: median lifetime periscope {:.2} ms, client {:.2} ms",
        kernel_median * 1e3,
        client_median * 1e3
    );
}

#[test]
fn a_leaking_client_shows_a_growing_open_minus_closed_gap() {
    let daemon = Daemon::start(ONLY_TCP, &[]);
    let ns = NetNs::new("leak", 65536);
    let port = free_port();
    let server = server(&ns, port, 10);
    let mut leak = Workload::start(&ns, &["leak", &port.to_string()]);
    let mut gaps = Vec::new();
    for round in 1..=3 {
        leak.send("open 10");
        assert_eq!(leak.next(Duration::from_secs(20))["opened"], 10 * round);
        let expected = 10.0 * round as f64;
        let scrape = wait_for("the leak's opens counted", Duration::from_secs(10), || {
            let s = daemon.scrape();
            (open_gap(&s, leak.pid(), "outbound") == expected
                && open_gap(&s, server.pid(), "inbound") == expected)
                .then_some(s)
        });
        gaps.push(open_gap(&scrape, leak.pid(), "outbound"));
    }
    assert_eq!(gaps, [10.0, 20.0, 30.0]);
}

#[test]
fn refused_connects_count_resets_both_ways() {
    let daemon = Daemon::start(ONLY_TCP, &[]);
    let ns = NetNs::new("reset", 65536);
    let closed = free_port();
    let client = Workload::start(&ns, &["refused", &closed.to_string(), "7"]);
    assert_eq!(client.next(Duration::from_secs(20))["refused"], 7);
    let who = instance(client.pid());
    let closed_label = closed.to_string();
    let scrape = wait_for("failures counted", Duration::from_secs(10), || {
        let s = daemon.scrape();
        let failures = value(
            &s,
            "kernel_tcp_connect_failures_total",
            &[
                ("service_instance_id", &who),
                ("server_port", &closed_label),
            ],
        );
        (failures == 7.0).then_some(s)
    });
    let resets = |labels: &[(&str, &str)]| value(&scrape, "kernel_tcp_resets_total", labels);
    assert_eq!(
        resets(&[
            ("service_instance_id", &who),
            ("network_io_direction", "receive")
        ]),
        7.0
    );
    assert_eq!(
        resets(&[
            ("network_local_port", &closed_label),
            ("network_io_direction", "transmit")
        ]),
        7.0
    );
    assert_eq!(
        value(
            &scrape,
            OPENED,
            &[("service_instance_id", &who), ("direction", "outbound")]
        ),
        0.0,
        "a refused connect is not a connection"
    );
}

/// `bpftrace -e PROGRAM`, stopped with SIGINT; its printed maps as text.
struct Bpftrace(Child);

impl Bpftrace {
    fn start(program: &str) -> Self {
        let mut child = Command::new("bpftrace")
            .args(["-e", program])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bpftrace (make test installs it)");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        while stdout.read_line(&mut line).expect("bpftrace output") > 0 {
            if line.starts_with("Attaching") {
                break;
            }
            line.clear();
        }
        child.stdout = Some(stdout.into_inner());
        Self(child)
    }

    /// SIGINT until it exits (once, in a local run of `.ci/run`, bpftrace stayed in its event
    /// loop after one SIGINT and the test hung), then its output.
    fn stop(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_secs(2) {
                if self.0.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.0.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.0.kill();
                panic!("bpftrace did not exit within 30 s of SIGINT");
            }
        }
        let mut out = String::new();
        if let Some(mut s) = self.0.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let _ = self.0.wait();
        out
    }
}

#[test]
fn forced_loss_retransmits_agree_with_bpftrace() {
    // Retransmit timers fire in softirq: keep other tests' programs off the CPUs meanwhile.
    let _machine = exclusive();
    let daemon = Daemon::start(ONLY_TCP, &[]);
    let ns = NetNs::new("loss", 1500);
    let port = free_port();
    ns.drop_from_port(port, 10);
    let server = server(&ns, port, 2 << 20);
    let bpftrace = Bpftrace::start(&format!(
        "tracepoint:tcp:tcp_retransmit_skb /args->sport == {port} || args->dport == {port}/ {{ @retransmits = count(); }}"
    ));
    let client = Workload::start(&ns, &["client", &port.to_string(), "8", "0", "100"]);
    let measured = client.next(Duration::from_secs(120));
    let received: f64 = measured["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["received"].as_f64().unwrap())
        .sum();
    assert_eq!(received, (8 * (2 << 20)) as f64, "the transfer completed");
    std::thread::sleep(Duration::from_millis(500));
    let reference = bpftrace.stop();
    let expected: f64 = reference
        .lines()
        .find_map(|l| l.strip_prefix("@retransmits: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in bpftrace output: {reference:?}"));

    let scrape = daemon.scrape();
    let client_id = instance(client.pid());
    let port_label = port.to_string();
    // The server's side (local port = the port) and the client's (its own process).
    let counted: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.name == "kernel_tcp_retransmits_total")
        .filter(|s| {
            s.labels.get("network_local_port") == Some(&port_label)
                || s.labels.get("service_instance_id") == Some(&client_id)
        })
        .map(|s| s.value)
        .sum();
    let server_side = value(
        &scrape,
        "kernel_tcp_retransmits_total",
        &[
            ("network_local_port", &port_label),
            ("service_instance_id", &instance(server.pid())),
            ("network_peer_address", "127.0.0.1"),
        ],
    );
    println!("retransmits: periscope {counted} (server side {server_side}), bpftrace {expected}");
    assert!(
        expected >= 10.0,
        "10% loss must force retransmits: {expected}"
    );
    assert!(
        (counted - expected).abs() <= 0.05 * expected,
        "periscope {counted} vs bpftrace {expected}"
    );
    assert!(server_side > 0.0, "attributed to the listening server");
}
