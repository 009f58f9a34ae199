//! HTTPS through OpenSSL: real Python (libssl's SSL_read_ex/SSL_write_ex) and Node.js (OpenSSL
//! linked into the node executable) servers, Python and curl (SSL_read/SSL_write) clients over
//! TLS with a certificate the test makes; request counts compared exactly with what the clients
//! got, as for plaintext. And Go's own TLS: a `net/http` server built here by the Debian Go
//! toolchain, with and without symbols and DWARF, driven by curl over HTTP/1.1 keep-alive, and
//! a Go `net/http` client against it.

use std::{process::Command, time::Duration};

use periscope_e2e::{
    daemon::Daemon,
    exclusive, free_port,
    http::{
        CLIENT, Counts, HTTP_ONLY, SERVER, assert_counts, expected_route, periscope_counts,
        workload,
    },
    scrape::Scrape,
};
use periscope_e2e::{periscope_check, wait_for};

/// A self-signed certificate and key in a temporary directory.
fn certificate() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem").display().to_string();
    let key = dir.path().join("key.pem").display().to_string();
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout", &key, "-out", &cert])
        .output()
        .expect("openssl (make test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, cert, key)
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(program: &str, script: &str, port: u16, cert: &str, key: &str) -> Server {
    let child = Command::new(program)
        .arg(workload(script))
        .args([&port.to_string(), cert, key])
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    wait_for("HTTPS server listening", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Server(child)
}

/// 12 GETs: 10 to /users/<n> and 2 to /missing/page.
fn paths() -> Vec<String> {
    (0..12)
        .map(|i| {
            if i % 6 == 5 {
                "/missing/page".to_string()
            } else {
                format!("/users/{}", 100 + i)
            }
        })
        .collect()
}

fn expected(paths: &[String]) -> Counts {
    let mut counts = Counts::new();
    for p in paths {
        let status = if p.contains("missing") { "404" } else { "200" };
        *counts
            .entry(("GET".into(), expected_route(p), status.into()))
            .or_default() += 1;
    }
    counts
}

/// Python client: one keep-alive connection for all the paths; the statuses it got.
fn python_client(port: u16, paths: &[String]) -> Vec<u16> {
    let mut args = vec![port.to_string()];
    args.extend_from_slice(paths);
    python_json_lines("https_client.py", &args)
        .iter()
        .map(|v| v["status"].as_u64().expect("status") as u16)
        .collect()
}

/// Runs a Python workload with `args` and reads the JSON object it prints per line.
fn python_json_lines(script: &str, args: &[String]) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(workload(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// curl: one process per request (a new TLS connection each); the statuses it got.
fn curl(port: u16, paths: &[String]) -> Vec<u16> {
    paths
        .iter()
        .map(|p| {
            let out = Command::new("curl")
                .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("https://127.0.0.1:{port}{p}"))
                .output()
                .expect("curl");
            String::from_utf8_lossy(&out.stdout)
                .parse()
                .expect("status")
        })
        .collect()
}

fn counts_of(statuses: &[u16], paths: &[String]) -> Counts {
    let mut counts = Counts::new();
    for (status, p) in statuses.iter().zip(paths) {
        *counts
            .entry(("GET".into(), expected_route(p), status.to_string()))
            .or_default() += 1;
    }
    counts
}

/// The server's request counts, whatever their `server.port` (see `check_server`).
fn server_counts(scrape: &Scrape, pid: u32) -> Counts {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let instance = format!("{}:{pid}", host.trim());
    let mut counts = Counts::new();
    for s in scrape.samples.iter().filter(|s| {
        s.name == format!("{SERVER}_count")
            && s.labels.get("service_instance_id") == Some(&instance)
    }) {
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

/// Both clients against one server: the server counts every request once, each client its own.
/// With `port_always_known`, every server request also carries `server.port` (an OpenSSL that
/// does its own socket IO shows its fd; one fed from memory, like Node's, may not on a
/// connection's first call).
fn check_server(daemon: &Daemon, server: &Server, port: u16, port_always_known: bool) {
    let paths = paths();
    let by_python = python_client(port, &paths);
    let by_curl = curl(port, &paths);
    assert_eq!(counts_of(&by_python, &paths), expected(&paths));
    assert_eq!(counts_of(&by_curl, &paths), expected(&paths));
    let mut both = expected(&paths);
    for n in both.values_mut() {
        *n *= 2;
    }
    // A client's service name is its executable's (`python3.11`), or its comm (`python3`) when
    // it exited before the daemon read /proc (docs/metrics.md): the short Python client
    // sometimes does, and its requests are then counted under that name.
    let client = |scrape: &Scrape, services: &[&str]| -> Counts {
        let only: Scrape = Scrape {
            samples: scrape
                .samples
                .iter()
                .filter(|s| {
                    s.labels
                        .get("service_name")
                        .is_some_and(|name| services.contains(&name.as_str()))
                })
                .cloned()
                .collect(),
            ..Scrape::default()
        };
        periscope_counts(&only, CLIENT, port)
    };
    const PYTHON: &[&str] = &["python3.11", "python3"];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let scrape = loop {
        let s = daemon.scrape();
        let done = server_counts(&s, server.0.id()) == both
            && client(&s, PYTHON) == expected(&paths)
            && client(&s, &["curl"]) == expected(&paths);
        if done || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let messages = messages(&scrape);
    assert_eq!(
        server_counts(&scrape, server.0.id()),
        both,
        "server; {messages:?}"
    );
    if port_always_known {
        assert_eq!(periscope_counts(&scrape, SERVER, port), both, "server.port");
    }
    // Every client series, whatever its service and port: what a miscount was counted as.
    let clients: Vec<String> = scrape
        .samples
        .iter()
        .filter(|s| s.name == format!("{CLIENT}_count"))
        .map(|s| format!("{:?} = {}", s.labels, s.value))
        .collect();
    assert_eq!(
        client(&scrape, PYTHON),
        expected(&paths),
        "python client; messages {messages:?}; client series {clients:#?}"
    );
    assert_eq!(client(&scrape, &["curl"]), expected(&paths), "curl clients");
}

/// What the HTTP capture made of the traffic (`periscope.http.messages` outcomes seen), for
/// failure messages.
fn messages(scrape: &Scrape) -> Vec<String> {
    scrape
        .samples
        .iter()
        .filter(|s| s.name == "periscope_http_messages_total" && s.value > 0.0)
        .map(|s| format!("{:?}={}", s.labels.get("outcome"), s.value))
        .collect()
}

fn tls_files(daemon: &Daemon) -> Vec<String> {
    daemon
        .scrape()
        .samples
        .iter()
        .filter(|s| s.name == "periscope_http_tls_files" && s.value == 1.0)
        .filter_map(|s| s.labels.get("file_path").cloned())
        .collect()
}

#[test]
fn python_https_server_and_clients() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let files = tls_files(&daemon);
    assert!(
        files.iter().any(|f| f.contains("libssl.so")),
        "the host libssl is probed from the start: {files:?}"
    );
    let (_dir, cert, key) = certificate();
    let port = free_port();
    let server = start_server("python3", "https_server.py", port, &cert, &key);
    check_server(&daemon, &server, port, true);
}

#[test]
fn node_https_server_with_its_own_openssl() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let (_dir, cert, key) = certificate();
    let port = free_port();
    let server = start_server("node", "https_server.js", port, &cert, &key);
    // Node links OpenSSL into its executable: it is probed once a scan sees the new process.
    let node = std::fs::canonicalize(
        String::from_utf8(Command::new("which").arg("node").output().unwrap().stdout)
            .unwrap()
            .trim(),
    )
    .unwrap()
    .display()
    .to_string();
    wait_for(
        "the node executable probed",
        Duration::from_secs(15),
        || tls_files(&daemon).contains(&node).then_some(()),
    );
    check_server(&daemon, &server, port, false);
}

/// POSTs with chunked bodies over TLS: from curl, between GETs on one keep-alive connection
/// (`--next` between requests), and pipelined, each POST and the GET after it in one write (so
/// the body's last chunk and the next request arrive in one read). The plaintext's chunked
/// framing is followed as on a plaintext connection: each POST ends at its last chunk, and the
/// GET after it is an exchange of its own.
#[test]
fn chunked_posts_over_tls_are_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let (_dir, cert, key) = certificate();
    let port = free_port();
    let server = start_server("python3", "https_server.py", port, &cert, &key);
    let mut expected = Counts::new();
    for (method, path, status) in curl_chunked_posts(port).into_iter().chain(pipelined(port)) {
        *expected
            .entry((method, expected_route(&path), status))
            .or_default() += 1;
    }
    let want = |method: &str, route: &str, status: &str| {
        expected
            .get(&(method.into(), route.into(), status.into()))
            .copied()
    };
    assert_eq!(want("POST", "/items", "201"), Some(4 + 4), "{expected:?}");
    assert_eq!(
        want("GET", "/users/{id}", "200"),
        Some(4 + 4),
        "{expected:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = daemon.scrape();
        let server_side = server_counts(&scrape, server.0.id());
        let client_side = periscope_counts(&scrape, CLIENT, port);
        if server_side == expected && client_side == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server {server_side:?}, client {client_side:?}, want {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing more arrives late (a double count).
    std::thread::sleep(Duration::from_millis(300));
    let scrape = daemon.scrape();
    assert_eq!(server_counts(&scrape, server.0.id()), expected);
    assert_eq!(periscope_counts(&scrape, CLIENT, port), expected);
}

/// One curl process, one TLS connection: 4 rounds of GET, a chunked POST and a 404 GET.
/// (method, path, status) of each request.
fn curl_chunked_posts(port: u16) -> Vec<(String, String, String)> {
    let plan: Vec<(&str, String)> = (0..4)
        .flat_map(|i| {
            [
                ("GET", format!("/users/{}", 100 + i)),
                ("POST", "/items".to_string()),
                ("GET", "/missing/page".to_string()),
            ]
        })
        .collect();
    let mut curl = Command::new("curl");
    curl.arg("-s");
    for (i, (method, path)) in plan.iter().enumerate() {
        if i > 0 {
            curl.arg("--next");
        }
        // `--next` resets per-request options: -k and the output go with each.
        curl.args([
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\\n",
        ]);
        if *method == "POST" {
            curl.args(["-H", "Transfer-Encoding: chunked", "--data", "payload"]);
        }
        curl.arg(format!("https://127.0.0.1:{port}{path}"));
    }
    let out = curl.output().expect("curl");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), plan.len(), "curl printed {lines:?}");
    let connects: u32 = lines
        .iter()
        .filter_map(|l| l.split(' ').nth(1)?.parse::<u32>().ok())
        .sum();
    assert_eq!(connects, 1, "one connection for every request: {lines:?}");
    plan.iter()
        .zip(&lines)
        .map(|((method, path), line)| {
            let status = line.split(' ').next().unwrap_or_default();
            (method.to_string(), path.clone(), status.to_string())
        })
        .collect()
}

/// `https_pipelined.py`: 4 rounds of a chunked POST and a GET in one write.
fn pipelined(port: u16) -> Vec<(String, String, String)> {
    python_json_lines("https_pipelined.py", &[port.to_string(), "4".into()])
        .iter()
        .map(|v| {
            let text = |k: &str| v[k].as_str().expect("text").to_string();
            (text("method"), text("path"), v["status"].to_string())
        })
        .collect()
}

/// Builds `tests/workloads/<name>` into `dir` with the Debian Go toolchain: standard library
/// only, nothing fetched (`GOPROXY=off`), its caches in `dir`.
fn build_go(dir: &std::path::Path, name: &str, ldflags: &str) -> String {
    let out = dir.join(name);
    let build = Command::new("go")
        .args(["build", &format!("-ldflags={ldflags}"), "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(workload(name))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .output()
        .expect("go (bash .ci/setup.sh installs golang-go)");
    assert!(
        build.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    out.display().to_string()
}

/// One curl process, one keep-alive HTTP/1.1 connection: the GETs, then (`--next`, same
/// connection) POSTs of a body to /echo. The (method, path, status) of each, as curl got them.
fn curl_keepalive(port: u16, gets: &[String], posts: usize) -> Vec<(String, String, u16)> {
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    let mut args: Vec<String> = ["-sk", "--http1.1", "-w", "%{http_code} %{num_connects}\\n"]
        .map(String::from)
        .to_vec();
    for p in gets {
        args.extend(["-o".into(), "/dev/null".into(), url(p)]);
    }
    for _ in 0..posts {
        args.extend(
            [
                "--next",
                "-sk",
                "--http1.1",
                "-w",
                "%{http_code} %{num_connects}\\n",
            ]
            .map(String::from),
        );
        args.extend(["-o", "/dev/null", "--data-binary", "a body of some bytes"].map(String::from));
        args.push(url("/echo"));
    }
    let out = Command::new("curl").args(&args).output().expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<(u16, u32)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (code, connects) = l.split_once(' ').expect("code connects");
            (
                code.parse().expect("status"),
                connects.parse().expect("connects"),
            )
        })
        .collect();
    assert_eq!(lines.len(), gets.len() + posts, "{lines:?}");
    assert_eq!(
        lines.iter().map(|l| l.1).sum::<u32>(),
        1,
        "every request on the first connection (keep-alive): {lines:?}"
    );
    let requests = gets
        .iter()
        .map(|p| ("GET".to_string(), p.clone()))
        .chain((0..posts).map(|_| ("POST".to_string(), "/echo".to_string())));
    requests
        .zip(lines)
        .map(|((method, path), (status, _))| (method, path, status))
        .collect()
}

/// A Go `net/http` HTTPS server (Go's crypto/tls, no OpenSSL) counted on the server side exactly:
/// 200s (one of them a 100 KB chunked body), 404s, 500s and POSTs with a body, over HTTP/1.1
/// keep-alive connections from curl.
fn go_server_counted_exactly(ldflags: &str, found_in: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = build_go(dir.path(), "go_https_server", ldflags);
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let (_cert_dir, cert, key) = certificate();
    let port = free_port();
    let server = start_server_binary(&binary, port, &cert, &key);
    wait_for_go_probes(&daemon, &binary);
    let gets = go_paths();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.extend(curl_keepalive(port, &gets, 2));
    }
    let mut expected = Counts::new();
    for (method, path, status) in &got {
        *expected
            .entry((method.clone(), expected_route(path), status.to_string()))
            .or_default() += 1;
    }
    let by_status = |status: &str| {
        expected
            .iter()
            .filter(|(k, _)| k.2 == status)
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    assert_eq!(
        [
            by_status("200"),
            by_status("404"),
            by_status("500"),
            by_status("201")
        ],
        [18, 9, 9, 6],
        "what the server answered: {expected:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let scrape = loop {
        let s = daemon.scrape();
        if server_counts(&s, server.0.id()) == expected || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let messages = messages(&scrape);
    assert_eq!(
        server_counts(&scrape, server.0.id()),
        expected,
        "Go server; messages {messages:?}"
    );
    assert_eq!(
        periscope_counts(&scrape, SERVER, port),
        expected,
        "server.port: the fd read from the *tls.Conn is the connection's"
    );
    // `periscope check` names the executable, its Go version and where its symbols came from.
    let check = periscope_check(HTTP_ONLY);
    let line = check
        .lines()
        .find(|l| l.contains("Go crypto/tls") && l.contains(&binary))
        .unwrap_or_else(|| panic!("no Go line for {binary} in:\n{check}"));
    assert!(
        line.trim_start().starts_with("ok") && line.contains("go1.") && line.contains(found_in),
        "{line}"
    );
}

fn start_server_binary(binary: &str, port: u16, cert: &str, key: &str) -> Server {
    start_server_binary_with(binary, &[&port.to_string(), cert, key], port)
}

fn start_server_binary_with(binary: &str, args: &[&str], port: u16) -> Server {
    let child = Command::new(binary)
        .args(args)
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e}"));
    wait_for("Go HTTPS server listening", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Server(child)
}

#[test]
fn go_https_server_with_symbols_and_dwarf() {
    go_server_counted_exactly("", "from .symtab, offsets DWARF");
}

#[test]
fn go_https_server_stripped() {
    go_server_counted_exactly("-s -w", "from .gopclntab, offsets known for go1.");
}

/// A Go `net/http` client against the Go server, both on Go's crypto/tls: both sides exact. The
/// client's reads park its goroutines (the transport reads on a goroutine of its own), which
/// resume on whatever thread: calls are matched by goroutine, not thread.
#[test]
fn go_https_client_and_server() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let server_binary = build_go(dir.path(), "go_https_server", "");
    let client_binary = build_go(dir.path(), "go_https_client", "-s -w");
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let (_cert_dir, cert, key) = certificate();
    let port = free_port();
    let server = start_server_binary(&server_binary, port, &cert, &key);
    let mut paths: Vec<String> = Vec::new();
    for i in 0..5 {
        paths.extend([
            format!("/users/{}", 200 + i),
            "/missing/page".into(),
            "/fail".into(),
            "/big".into(),
            "POST /echo".into(),
        ]);
    }
    let mut client = Command::new(&client_binary)
        .arg(port.to_string())
        .args(&paths)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("go client");
    wait_for(
        "both Go executables probed",
        Duration::from_secs(15),
        || {
            let files = tls_files(&daemon);
            (files.contains(&server_binary) && files.contains(&client_binary)).then_some(())
        },
    );
    client
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("start the client");
    let out = client.wait_with_output().expect("go client");
    assert!(out.status.success());
    let mut expected = Counts::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split(' ');
        let (method, path, status) = (
            fields.next().unwrap().to_string(),
            fields.next().unwrap(),
            fields.next().unwrap().to_string(),
        );
        *expected
            .entry((method, expected_route(path), status))
            .or_default() += 1;
    }
    assert_eq!(expected.values().sum::<u64>(), 25, "{expected:?}");
    let client_counts = |scrape: &Scrape| {
        let only = Scrape {
            samples: scrape
                .samples
                .iter()
                .filter(|s| {
                    s.labels.get("service_name").map(String::as_str) == Some("go_https_client")
                })
                .cloned()
                .collect(),
            ..Scrape::default()
        };
        periscope_counts(&only, CLIENT, port)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let scrape = loop {
        let s = daemon.scrape();
        let done = server_counts(&s, server.0.id()) == expected && client_counts(&s) == expected;
        if done || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let messages = messages(&scrape);
    assert_eq!(
        server_counts(&scrape, server.0.id()),
        expected,
        "Go server; messages {messages:?}"
    );
    assert_eq!(
        client_counts(&scrape),
        expected,
        "Go client; messages {messages:?}"
    );
}

/// HTTP/2 over OpenSSL: nginx (TLS, ALPN `h2`) and one curl fetching every path in parallel
/// (`-Z`), so that its streams are multiplexed on one connection. The kernel sees the client
/// preface in the plaintext the OpenSSL probes capture, and walks the frames from there:
/// counted exactly on both sides.
#[test]
fn http2_over_openssl_is_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let (_dir, cert, key) = certificate();
    let port = free_port();
    let _server = periscope_e2e::http::Server::nginx_h2_tls(port, &cert, &key);
    let mut paths = paths();
    paths.extend(["/fail".to_string(), "/fail/again".to_string()]);
    let got = curl_http2_parallel(port, &paths);
    assert_counts(&daemon, SERVER, port, &got);
    assert_counts(&daemon, CLIENT, port, &got);
}

/// One curl fetching every path over HTTP/2 in parallel (`-Z`), so that its streams are
/// multiplexed on one TLS connection: what it got, per (method, route, status).
fn curl_http2_parallel(port: u16, paths: &[String]) -> Counts {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "--http2", "-Z", "--parallel-max", "20"])
        .args(["-w", "%{http_code} %{http_version} %{url_effective}\n"]);
    for p in paths {
        curl.args(["-o", "/dev/null"])
            .arg(format!("https://127.0.0.1:{port}{p}"));
    }
    let out = curl.output().expect("curl");
    let mut got = Counts::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split_whitespace();
        let (status, version, url) = (fields.next(), fields.next(), fields.next());
        assert_eq!(version, Some("2"), "curl spoke HTTP/2: {line}");
        let path = url
            .and_then(|u| u.split_once(&port.to_string()))
            .map(|(_, p)| p);
        let route = expected_route(path.expect("path"));
        *got.entry(("GET".into(), route, status.expect("status").into()))
            .or_default() += 1;
    }
    assert_eq!(got.values().sum::<u64>(), paths.len() as u64, "{out:?}");
    got
}

/// HTTP/2 over Go's own crypto/tls: the Go `net/http` server offering `h2` (it writes its
/// SETTINGS before it reads the client preface), one curl fetching 200s (one of them a 100 KB
/// body in many DATA frames), 404s and 500s in parallel on one connection: the server side is
/// exact, through the Go probes and the kernel's frame walk.
#[test]
fn go_https_server_serves_http2_counted_exactly() {
    let _guard = exclusive();
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = build_go(dir.path(), "go_https_server", "");
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let (_cert_dir, cert, key) = certificate();
    let port = free_port();
    let _server = start_server_binary_with(&binary, &[&port.to_string(), &cert, &key, "h2"], port);
    wait_for_go_probes(&daemon, &binary);
    let got = curl_http2_parallel(port, &go_paths());
    assert_counts(&daemon, SERVER, port, &got);
}

/// Waits until the daemon has probed the Go executable `binary`.
fn wait_for_go_probes(daemon: &Daemon, binary: &str) {
    wait_for("the Go executable probed", Duration::from_secs(15), || {
        tls_files(daemon)
            .contains(&binary.to_string())
            .then_some(())
    });
}

/// 12 GETs to the Go test server: 200s (/users/<n>, and /big with a 100 KB body), 404s, 500s.
fn go_paths() -> Vec<String> {
    (0..12)
        .map(|i| match i % 4 {
            0 => format!("/users/{}", 100 + i),
            1 => "/missing/page".to_string(),
            2 => "/big".to_string(),
            _ => "/fail".to_string(),
        })
        .collect()
}
