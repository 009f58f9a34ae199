//! HTTP workloads for the end-to-end tests: real servers (Python, Node.js, nginx, Rust) and real
//! clients (Python, Node.js, curl, wrk) as child processes on ports the test owns, and what the
//! clients themselves counted and timed.

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{daemon::Daemon, scrape::Scrape, wait_for};

pub fn workload(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(name)
}

/// The routes of [`Server::nginx`]: what [`plan`] asks for, with its statuses.
const NGINX_ROUTES: &str = r#"location /users/ { return 200 "ok\n"; }
    location = /items { return 201 "ok\n"; }
    location /fail { return 500 "ok\n"; }
    location / { return 404 "ok\n"; }"#;

/// The files [`Server::nginx_sendfile`] serves under `/files/`, by name and size: one smaller
/// than a capture, one a few segments long, one larger than a socket's send buffer.
pub const STATIC_FILES: [(&str, usize); 3] = [
    ("small.txt", 3),
    ("medium.bin", 20_000),
    ("large.bin", 3_000_000),
];

/// A server child process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Runs `command` (a server that will listen on `port`) and waits until it accepts.
    pub fn spawn(mut command: Command, port: u16, dir: Option<tempfile::TempDir>) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        wait_for("server listening", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// `python3 server.py PORT keepalive|close [DOWNSTREAM]`, with OTEL_SERVICE_NAME set.
    pub fn python(port: u16, keepalive: bool, downstream: Option<u16>, service: &str) -> Self {
        Self::spawn(
            Self::python_command(port, keepalive, downstream, service),
            port,
            None,
        )
    }

    /// The command [`Server::python`] runs, for a test that changes it before the spawn.
    pub fn python_command(
        port: u16,
        keepalive: bool,
        downstream: Option<u16>,
        service: &str,
    ) -> Command {
        let mut c = Command::new("python3");
        c.arg(workload("server.py"))
            .arg(port.to_string())
            .arg(if keepalive { "keepalive" } else { "close" })
            .env("OTEL_SERVICE_NAME", service);
        if let Some(d) = downstream {
            c.arg(d.to_string());
        }
        c
    }

    pub fn node(port: u16, keepalive: bool) -> Self {
        let mut c = Command::new("node");
        c.arg(workload("server.js"))
            .arg(port.to_string())
            .arg(if keepalive { "keepalive" } else { "close" });
        Self::spawn(c, port, None)
    }

    /// `binary`: the test's `env!("CARGO_BIN_EXE_rust-http-server")`.
    pub fn rust(binary: &str, port: u16) -> Self {
        let mut c = Command::new(binary);
        c.arg(port.to_string());
        Self::spawn(c, port, None)
    }

    /// nginx in the foreground with its own prefix, config and port.
    pub fn nginx(port: u16) -> Self {
        Self::nginx_with(port, "", NGINX_ROUTES, |_| {})
    }

    /// [`Server::nginx`] speaking HTTP/2 without TLS (h2c, prior knowledge only).
    pub fn nginx_h2c(port: u16) -> Self {
        Self::nginx_with(port, " http2", NGINX_ROUTES, |_| {})
    }

    /// [`Server::nginx`] speaking HTTP/2 over TLS (ALPN `h2`) with `cert` and `key`.
    pub fn nginx_h2_tls(port: u16, cert: &str, key: &str) -> Self {
        let server =
            format!("ssl_certificate {cert};\n    ssl_certificate_key {key};\n    {NGINX_ROUTES}");
        Self::nginx_with(port, " ssl http2", &server, |_| {})
    }

    /// nginx serving the files of [`STATIC_FILES`] under `/files/` with `sendfile on`: each
    /// response's head leaves in a `writev`, its body in `sendfile` calls (no user buffer), several
    /// for a file larger than the socket's send buffer.
    pub fn nginx_sendfile(port: u16) -> Self {
        Self::nginx_with(port, "", "sendfile on;\n    root {dir}/www;", |dir| {
            let files = dir.join("www/files");
            std::fs::create_dir_all(&files).expect("create www/files");
            for (name, size) in STATIC_FILES {
                std::fs::write(files.join(name), vec![b'x'; size]).expect("write static file");
            }
        })
    }

    /// nginx with `server` as its server block's body (after `listen` with `listen_options`;
    /// `{dir}` is replaced by its prefix), once `prepare` has filled the prefix.
    fn nginx_with(
        port: u16,
        listen_options: &str,
        server: &str,
        prepare: impl FnOnce(&std::path::Path),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        let server = server.replace("{dir}", &dir.path().display().to_string());
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir};
  proxy_temp_path {dir};
  fastcgi_temp_path {dir};
  uwsgi_temp_path {dir};
  scgi_temp_path {dir};
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port}{listen_options};
    {server}
  }}
}}
"#,
                dir = dir.path().display()
            ),
        )
        .expect("write nginx.conf");
        let mut c = Command::new("nginx");
        c.arg("-c").arg(&conf).arg("-p").arg(dir.path());
        Self::spawn(c, port, Some(dir))
    }

    /// `busybox httpd` in the foreground serving `/index.html` (200, with a length; anything
    /// else is a 404 without one, ended by the close): one child process forked per connection,
    /// which answers and exits.
    pub fn busybox(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("index.html"), "ok\n").expect("write index.html");
        let mut c = Command::new("busybox");
        c.args(["httpd", "-f", "-p"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-h")
            .arg(dir.path());
        Self::spawn(c, port, Some(dir))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mix of methods, routes and statuses: per round, GET/PUT/DELETE /users/<n> (200),
/// POST /items (201), GET /missing/page (404) and GET /fail (500).
pub fn plan(rounds: usize) -> Vec<(String, String)> {
    let mut plan = Vec::new();
    for i in 0..rounds {
        plan.push(("GET".into(), format!("/users/{}", 1000 + i)));
        plan.push(("POST".into(), "/items".into()));
        plan.push(("GET".into(), "/missing/page?q=1".into()));
        plan.push(("GET".into(), "/fail".into()));
        plan.push(("PUT".into(), format!("/users/{}", 5000 + i)));
        plan.push(("DELETE".into(), format!("/users/{}", 9000 + i)));
    }
    plan
}

/// The route Periscope should report for a plan path.
pub fn expected_route(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    if path.starts_with("/users/") {
        "/users/{id}".into()
    } else {
        path.into()
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub seconds: f64,
}

/// (method, route, status) -> count.
pub type Counts = BTreeMap<(String, String, String), u64>;

pub fn client_counts(sent: &[Sent]) -> Counts {
    let mut counts = Counts::new();
    for s in sent {
        *counts
            .entry((
                s.method.clone(),
                expected_route(&s.path),
                s.status.to_string(),
            ))
            .or_default() += 1;
    }
    counts
}

fn parse_results(json: &[u8]) -> Vec<Sent> {
    let value: serde_json::Value = serde_json::from_slice(json).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}): {}",
            String::from_utf8_lossy(json)
        )
    });
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|r| Sent {
            method: r["method"].as_str().unwrap().to_string(),
            path: r["path"].as_str().unwrap().to_string(),
            status: r["status"].as_u64().unwrap() as u16,
            seconds: r["seconds"].as_f64().unwrap(),
        })
        .collect()
}

fn run_plan_client(mut command: Command, plan: &[(String, String)]) -> Vec<Sent> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let plan_json = serde_json::to_vec(plan).unwrap();
    child.stdin.take().unwrap().write_all(&plan_json).unwrap();
    let out = child.wait_with_output().expect("client");
    assert!(
        out.status.success(),
        "client {command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_results(&out.stdout)
}

pub fn python_client(port: u16, keepalive: bool, plan: &[(String, String)]) -> Vec<Sent> {
    let mut c = Command::new("python3");
    c.arg(workload("client.py"))
        .arg(port.to_string())
        .arg(if keepalive { "keepalive" } else { "close" });
    run_plan_client(c, plan)
}

pub fn node_client(port: u16, keepalive: bool, plan: &[(String, String)]) -> Vec<Sent> {
    node_client_with(port, keepalive, "length", plan)
}

/// How a client sends request bodies: `length` (Content-Length), `chunked` (Transfer-Encoding:
/// chunked; Node: `req.write()` without a length), or for Node, `fetch` (a streamed body).
pub fn node_client_with(
    port: u16,
    keepalive: bool,
    bodies: &str,
    plan: &[(String, String)],
) -> Vec<Sent> {
    let mut c = Command::new("node");
    c.arg(workload("client.js"))
        .arg(port.to_string())
        .arg(if keepalive { "keepalive" } else { "close" })
        .arg(bodies);
    run_plan_client(c, plan)
}

/// The Python client with `http.client`'s `encode_chunked=True` bodies, on one keep-alive
/// connection.
pub fn python_chunked_client(port: u16, plan: &[(String, String)]) -> Vec<Sent> {
    let mut c = Command::new("python3");
    c.arg(workload("client.py"))
        .arg(port.to_string())
        .args(["keepalive", "chunked"]);
    run_plan_client(c, plan)
}

/// curl: one process per request (no keep-alive), or one process for the whole plan's GETs and
/// one per other method (curl reuses its connection between URLs of one invocation).
pub fn curl(port: u16, keepalive: bool, plan: &[(String, String)]) -> Vec<Sent> {
    let mut sent = Vec::new();
    let run = |method: &str, paths: &[&str]| -> Vec<Sent> {
        let mut c = Command::new("curl");
        c.args(["-s", "-X", method]);
        if method == "POST" || method == "PUT" {
            c.args(["--data", "payload"]);
        }
        c.args(["-w", "%{http_code} %{time_total}\\n"]);
        for p in paths {
            c.args(["-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{port}{p}"));
        }
        let out = c.output().expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .zip(paths)
            .map(|(line, path)| {
                let (code, secs) = line.split_once(' ').expect("curl -w output");
                Sent {
                    method: method.to_string(),
                    path: path.to_string(),
                    status: code.parse().expect("status"),
                    seconds: secs.parse().expect("time"),
                }
            })
            .collect()
    };
    if keepalive {
        let mut by_method: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (m, p) in plan {
            by_method.entry(m).or_default().push(p);
        }
        for (m, paths) in by_method {
            sent.extend(run(m, &paths));
        }
    } else {
        for (m, p) in plan {
            sent.extend(run(m, &[p]));
        }
    }
    sent
}

/// `wget` GETs of `path`, one process each; wget exits as soon as it has read a 404's head.
pub fn wget(port: u16, path: &str, n: usize) -> Vec<Sent> {
    (0..n)
        .map(|_| {
            let out = Command::new("wget")
                .args(["-q", "-S", "-O", "/dev/null"])
                .arg(format!("http://127.0.0.1:{port}{path}"))
                .output()
                .expect("wget");
            // -S prints the response head on stderr: "  HTTP/1.1 404 Not Found".
            let head = String::from_utf8_lossy(&out.stderr);
            let status = head
                .split_whitespace()
                .skip_while(|w| !w.starts_with("HTTP/1."))
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status from wget: {head}"));
            Sent {
                method: "GET".into(),
                path: path.into(),
                status,
                seconds: f64::NAN,
            }
        })
        .collect()
}

/// Periscope's request counts per (method, route, status) for one server port.
pub fn periscope_counts(scrape: &Scrape, metric: &str, port: u16) -> Counts {
    let mut counts = Counts::new();
    let port = port.to_string();
    for s in &scrape.samples {
        if s.name != format!("{metric}_count") || s.labels.get("server_port") != Some(&port) {
            continue;
        }
        let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        *counts
            .entry((
                label("http_request_method"),
                label("http_route"),
                label("http_response_status_code"),
            ))
            .or_default() += s.value as u64;
    }
    counts
}

pub const SERVER: &str = "http_server_request_duration_seconds";
pub const CLIENT: &str = "http_client_request_duration_seconds";

/// HTTP-only daemon config (the kernel families off, so that nothing else competes).
pub const HTTP_ONLY: &str = "probes:\n  block:\n    enabled: false\n  sched:\n    enabled: false\n  syscall:\n    enabled: false\n  tcp:\n    enabled: false\n";

/// Waits until Periscope's counts for `port` equal `expected` (events are processed
/// asynchronously), then checks that they stay so a while longer: a request counted twice,
/// late, would otherwise pass.
pub fn assert_counts(daemon: &Daemon, metric: &str, port: u16, expected: &Counts) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = periscope_counts(&daemon.scrape(), metric, port);
        if &got == expected {
            std::thread::sleep(Duration::from_millis(300));
            let later = periscope_counts(&daemon.scrape(), metric, port);
            assert_eq!(
                &later, expected,
                "{metric} on port {port} changed after matching"
            );
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("{metric} on port {port}:\n periscope: {got:?}\n client:    {expected:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
