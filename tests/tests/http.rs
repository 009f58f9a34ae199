//! HTTP RED metrics and spans from real servers and clients: Python http.server, Node.js http,
//! nginx and a Rust server; Python, Node.js, curl and wrk clients. Every count is compared
//! exactly with what the clients themselves sent, per (method, route, status), server side and
//! client side; every server span is no longer than the client-measured request.

use std::time::Duration;

use periscope_e2e::{
    daemon::Daemon,
    exclusive, free_port,
    grpc::{self, Runtime},
    http::{
        CLIENT, Counts, HTTP_ONLY, SERVER, STATIC_FILES, Sent, Server, assert_counts,
        client_counts, curl, expected_route, node_client, node_client_with, periscope_counts, plan,
        python_chunked_client, python_client, wget,
    },
    otlp_receiver::OtlpReceiver,
};

/// POSTs with `Expect: 100-continue` (one curl process each).
fn expect_continue(port: u16, n: usize) -> Vec<Sent> {
    (0..n)
        .map(|_| {
            let out = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["-H", "Expect: 100-continue", "--data", "payload"])
                .arg(format!("http://127.0.0.1:{port}/items"))
                .output()
                .expect("curl");
            let status: u16 = String::from_utf8_lossy(&out.stdout)
                .parse()
                .expect("status");
            assert_eq!(status, 201);
            Sent {
                method: "POST".into(),
                path: "/items".into(),
                status,
                seconds: f64::NAN,
            }
        })
        .collect()
}

/// One curl process, one keep-alive connection: per round, a POST /items whose body is sent
/// chunked (`-H 'Transfer-Encoding: chunked'`), then a GET /users/<i>.
fn curl_chunked(port: u16, rounds: usize) -> Vec<Sent> {
    let mut command = std::process::Command::new("curl");
    let mut expected = Vec::new();
    for i in 0..rounds {
        for (method, path) in [
            ("POST", "/items".to_string()),
            ("GET", format!("/users/{i}")),
        ] {
            if !expected.is_empty() {
                command.arg("--next");
            }
            command.args(["-s", "-o", "/dev/null", "-w", "%{http_code}\\n"]);
            if method == "POST" {
                command.args(["-H", "Transfer-Encoding: chunked", "--data", "payload"]);
            }
            command.arg(format!("http://127.0.0.1:{port}{path}"));
            expected.push((method, path));
        }
    }
    let out = command.output().expect("curl");
    let statuses: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.parse().expect("status"))
        .collect();
    assert_eq!(statuses.len(), expected.len(), "curl: {out:?}");
    expected
        .into_iter()
        .zip(statuses)
        .map(|((method, path), status)| Sent {
            method: method.into(),
            path,
            status,
            seconds: f64::NAN,
        })
        .collect()
}

/// `GET /users/{i}` for each `i`, answered 200 (what the scripted Python clients below send).
fn user_gets(ids: impl IntoIterator<Item = usize>) -> Vec<Sent> {
    ids.into_iter()
        .map(|i| Sent {
            method: "GET".into(),
            path: format!("/users/{i}"),
            status: 200,
            seconds: f64::NAN,
        })
        .collect()
}

/// Runs a Python client script to its end (it asserts what it received itself); its output.
fn run_python(script: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a Python client script that prints `METHOD PATH STATUS` per request it made: what it sent.
fn python_lines(script: &str) -> Vec<Sent> {
    run_python(script)
        .lines()
        .map(|line| {
            let mut words = line.split(' ');
            let (method, path) = (words.next().unwrap(), words.next().unwrap());
            Sent {
                method: method.into(),
                path: path.into(),
                status: words.next().unwrap().parse().expect("status"),
                seconds: f64::NAN,
            }
        })
        .collect()
}

/// The Rust server (`try_clone`: it reads through one descriptor of each connection and writes
/// through another) under Python keep-alive and Node clients, counted exactly.
fn rust_server_counts_exactly(daemon: &Daemon) {
    let server = Server::rust(env!("CARGO_BIN_EXE_rust-http-server"), free_port());
    let mut sent = python_client(server.port, true, &plan(6));
    sent.extend(node_client(server.port, false, &plan(4)));
    check(daemon, server.port, &sent, true);
}

fn check(daemon: &Daemon, port: u16, sent: &[Sent], client_side: bool) {
    let expected = client_counts(sent);
    assert_eq!(sent.len(), expected.values().sum::<u64>() as usize);
    assert_counts(daemon, SERVER, port, &expected);
    if client_side {
        assert_counts(daemon, CLIENT, port, &expected);
    }
}

#[test]
fn python_server_with_python_and_curl_clients_keepalive_on_and_off() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    for keepalive in [true, false] {
        let server = Server::python(free_port(), keepalive, None, "py-api");
        let mut sent = python_client(server.port, keepalive, &plan(5));
        sent.extend(curl(server.port, keepalive, &plan(3)));
        if keepalive {
            // Expect: 100-continue: the server's interim "100 Continue" is not a response.
            sent.extend(expect_continue(server.port, 3));
        }
        check(&daemon, server.port, &sent, true);
    }
}

#[test]
fn node_server_with_node_client_keepalive_on_and_off() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    for keepalive in [true, false] {
        let server = Server::node(free_port(), keepalive);
        let mut sent = node_client(server.port, keepalive, &plan(8));
        // Chunked responses written in pieces, 5 ms apart.
        let stream = vec![("GET".to_string(), "/stream".to_string()); 4];
        sent.extend(python_client(server.port, keepalive, &stream));
        check(&daemon, server.port, &sent, true);
    }
}

#[test]
fn nginx_with_curl_node_and_python_clients() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let server = Server::nginx(free_port());
    let mut sent = curl(server.port, false, &plan(3));
    sent.extend(curl(server.port, true, &plan(4)));
    sent.extend(node_client(server.port, true, &plan(5)));
    sent.extend(python_client(server.port, false, &plan(5)));
    check(&daemon, server.port, &sent, true);
}

/// nginx with `sendfile on`: a response's head leaves in a `writev`, its body in `sendfile`
/// calls that have no user buffer (a record with a byte count only), several for the file
/// larger than the socket's send buffer. Each response ends at its `Content-Length` on both
/// sides, and the next request on the connection starts a new exchange.
#[test]
fn nginx_sendfile_responses_are_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let server = Server::nginx_sendfile(free_port());
    let mut plan = Vec::new();
    for _ in 0..3 {
        for (name, _) in STATIC_FILES {
            plan.push(("GET".to_string(), format!("/files/{name}")));
        }
        plan.push(("GET".to_string(), "/files/missing.txt".to_string()));
    }
    let mut sent = curl(server.port, true, &plan);
    sent.extend(python_client(server.port, true, &plan));
    sent.extend(node_client(server.port, true, &plan));
    let ok = sent.iter().filter(|s| s.status == 200).count();
    assert_eq!(ok, 3 * 3 * STATIC_FILES.len(), "clients got {sent:?}");
    check(&daemon, server.port, &sent, true);
}

/// HTTP/2 without TLS (h2c, prior knowledge) against nginx: nghttp multiplexes GETs of several
/// routes on one connection, then POSTs on another, and curl makes one request per
/// connection. Every stream is an exchange on both sides, with `network.protocol.version="2"`.
#[test]
fn http2_cleartext_streams_are_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let server = Server::nginx_h2c(free_port());
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", server.port);
    let gets: Vec<String> = (0..6)
        // Distinct paths: nghttp requests a repeated one once.
        .flat_map(|i| {
            let name = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"][i];
            [
                format!("/users/{}", 100 + i),
                format!("/fail/{name}"),
                format!("/missing/{name}"),
            ]
        })
        .collect();
    let mut sent = nghttp(&gets.iter().map(|p| url(p)).collect::<Vec<_>>(), None);
    let payload = tempfile::NamedTempFile::new().expect("payload file");
    std::fs::write(payload.path(), "payload").expect("write payload");
    let posts: Vec<String> = (0..3)
        .map(|i| url(&format!("/users/{}", 300 + i)))
        .collect();
    sent.extend(nghttp(&posts, Some(payload.path())));
    for path in ["/users/7", "/missing/page", "/fail"] {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(url(path))
            .output()
            .expect("curl");
        sent.push(Sent {
            method: "GET".into(),
            path: path.into(),
            status: String::from_utf8_lossy(&out.stdout)
                .parse()
                .expect("status"),
            seconds: f64::NAN,
        });
    }
    assert_eq!(sent.len(), 18 + 3 + 3, "{sent:?}");
    // nghttp writes 18 requests' frames in one write, and nginx writes its frames with
    // `writev`, a buffer per frame or more: the kernel walks both, frame by frame.
    assert_counts(&daemon, CLIENT, server.port, &client_counts(&sent));
    assert_counts(&daemon, SERVER, server.port, &client_counts(&sent));
    let scrape = daemon.scrape();
    let versions: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.labels.get("server_port") == Some(&server.port.to_string()))
        .filter(|s| s.name.ends_with("request_duration_seconds_count"))
        .map(|s| s.labels.get("network_protocol_version").cloned())
        .collect();
    assert!(!versions.is_empty());
    assert!(
        versions.iter().all(|v| v.as_deref() == Some("2")),
        "{versions:?}"
    );
}

/// h2load against nginx h2c: 2 clients, each one connection with 16 streams in flight, cycling
/// through four URIs of four statuses (200, 201, 404, 500), so that many streams' frames share a
/// write on both sides. The expectation is what h2load reported: its summary says every request
/// was done, and its per-request log gives each status's count, which is its URI's count since
/// each URI has a status of its own. Periscope counts exactly that on both sides, as HTTP/2, and
/// nothing the capture made of the traffic is invalid, unmatched or dropped.
#[test]
fn h2load_streams_of_mixed_statuses_are_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let server = Server::nginx_h2c(free_port());
    // (path, the status nginx answers it with), each status once.
    let uris = [
        ("/users/42", 200),
        ("/items", 201),
        ("/missing/page", 404),
        ("/fail", 500),
    ];
    let (n, clients): (u64, u64) = (600, 2);
    // h2load gives each client n / clients requests and each client cycles through the URIs in
    // order: n a multiple of clients x URIs is the same count for every URI.
    assert_eq!(n % (clients * uris.len() as u64), 0);
    let log = tempfile::NamedTempFile::new().expect("h2load log file");
    let out = std::process::Command::new("h2load")
        .args(["-n", &n.to_string(), "-c", &clients.to_string(), "-m", "16"])
        .arg(format!("--log-file={}", log.path().display()))
        .args(
            uris.iter()
                .map(|(path, _)| format!("http://127.0.0.1:{}{path}", server.port)),
        )
        .output()
        .expect("h2load (make test installs nghttp2-client)");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load: {summary}");
    assert!(summary.contains("Application protocol: h2c"), "{summary}");
    // "requests: 600 total, 600 started, 600 done, 300 succeeded, 300 failed, 0 errored, 0 timeout"
    let requests = h2load_line(&summary, "requests:");
    assert_eq!(requests["total"], n, "{summary}");
    assert_eq!(requests["started"], n, "{summary}");
    assert_eq!(requests["done"], n, "{summary}");
    assert_eq!(requests["errored"], 0, "{summary}");
    assert_eq!(requests["timeout"], 0, "{summary}");
    // "status codes: 300 2xx, 0 3xx, 150 4xx, 150 5xx"
    let classes = h2load_line(&summary, "status codes:");
    // The log: a line per request, "start (us since the epoch)\tstatus\tduration (us)".
    let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
    for line in std::fs::read_to_string(log.path())
        .expect("read h2load log")
        .lines()
    {
        let status = line.split('\t').nth(1).and_then(|s| s.parse().ok());
        *by_status
            .entry(status.unwrap_or_else(|| panic!("h2load log line {line:?}")))
            .or_default() += 1;
    }
    for class in ["2xx", "3xx", "4xx", "5xx"] {
        let logged: u64 = by_status
            .iter()
            .filter(|(status, _)| format!("{}xx", *status / 100) == class)
            .map(|(_, count)| count)
            .sum();
        assert_eq!(
            logged, classes[class],
            "{class}: log {by_status:?}, summary {summary}"
        );
    }
    let per_uri = n / uris.len() as u64;
    let expected: Counts = uris
        .iter()
        .map(|&(path, status)| {
            assert_eq!(
                by_status.get(&status),
                Some(&per_uri),
                "{path}: log {by_status:?}"
            );
            (
                ("GET".to_string(), expected_route(path), status.to_string()),
                per_uri,
            )
        })
        .collect();
    assert_eq!(total(&expected), n, "{by_status:?}");
    assert_counts(&daemon, CLIENT, server.port, &expected);
    assert_counts(&daemon, SERVER, server.port, &expected);
    let scrape = daemon.scrape();
    let versions: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.labels.get("server_port") == Some(&server.port.to_string()))
        .filter(|s| s.name.ends_with("request_duration_seconds_count"))
        .map(|s| s.labels.get("network_protocol_version").cloned())
        .collect();
    assert_eq!(versions.len(), 2 * uris.len(), "{versions:?}");
    assert!(
        versions.iter().all(|v| v.as_deref() == Some("2")),
        "{versions:?}"
    );
    // The daemon watches only this traffic (and its own scrapes, plain HTTP/1 exchanges): any
    // other outcome is a stream of it lost or misread.
    let outcomes = messages(&scrape);
    let lost: Vec<_> = outcomes
        .iter()
        .filter(|(outcome, _)| outcome != "exchange")
        .collect();
    assert!(lost.is_empty(), "{outcomes:?}");
    let exchanges = outcomes
        .iter()
        .find(|(outcome, _)| outcome == "exchange")
        .map_or(0, |(_, count)| *count);
    assert!(exchanges >= 2 * n, "{outcomes:?}");
}

/// The `name: N word, N word, ...` line of h2load's summary starting with `name`, as word -> N.
fn h2load_line(summary: &str, name: &str) -> std::collections::BTreeMap<String, u64> {
    let line = summary
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name:?} in h2load's summary: {summary}"));
    line.split(',')
        .map(|field| {
            let (count, word) = field
                .trim()
                .split_once(' ')
                .unwrap_or_else(|| panic!("{name:?} field {field:?}"));
            (
                word.to_string(),
                count
                    .parse()
                    .unwrap_or_else(|_| panic!("{name:?} field {field:?}")),
            )
        })
        .collect()
}

/// HTTP/2 streams make spans as HTTP/1 requests do: nginx h2c answering curl, a request with a
/// `traceparent` makes a server span of that trace, child of its parent, and the client's
/// stream a client span; both say `network.protocol.version` 2.
#[test]
fn http2_streams_make_spans_and_follow_traceparent() {
    let _guard = exclusive();
    let (receiver, _daemon) = daemon_with_spans();
    let server = Server::nginx_h2c(free_port());
    curl_traced(server.port, &["--http2-prior-knowledge"]);
    let served = traced_span(&receiver, 2);
    assert_eq!(hex(&served.span.trace_id), TRACE_ID);
    assert_eq!(hex(&served.span.parent_span_id), PARENT_SPAN_ID);
    let called = traced_span(&receiver, 3);
    assert!(
        called.span.parent_span_id.is_empty(),
        "no parent for a client stream"
    );
    for s in [&served, &called] {
        let version = s
            .span
            .attributes
            .iter()
            .find(|a| a.key == "network.protocol.version")
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{v:?}"));
        assert!(
            version.as_deref().is_some_and(|v| v.contains("\"2\"")),
            "{version:?}"
        );
    }
}

/// gRPC calls make spans per the RPC conventions: Python `grpcio` calls sending a
/// `traceparent` in their metadata (the `mixed` mode: unary and server-streaming, OK,
/// NOT_FOUND and INTERNAL) make one server span each in that trace, child of its parent, and
/// one client span each without a parent; named `{rpc.service}/{rpc.method}`, with
/// `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code` (the status the client
/// got), `server.port`, `server.address` (client), and `error.type` where the call failed for
/// that side.
#[test]
fn grpc_calls_make_spans_and_follow_traceparent() {
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let _guard = exclusive();
    let (receiver, _daemon) = daemon_with_spans();
    let server = grpc::server(free_port());
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let run = grpc::client_traced(server.port, "mixed", &traceparent);
    let total: u64 = run.calls.values().sum();
    assert_eq!(total, 10, "{run:?}");
    let ours = || -> Vec<_> {
        receiver
            .spans()
            .into_iter()
            .filter(|s| {
                let port =
                    s.span.attributes.iter().any(|kv| {
                        kv.key == "server.port" && int_of(kv) == Some(server.port.into())
                    });
                port && string_of(&s.span, "rpc.system").as_deref() == Some("grpc")
            })
            .collect()
    };
    periscope_e2e::wait_for("a span per call per side", Duration::from_secs(20), || {
        (ours().len() >= 2 * total as usize).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let spans = ours();
    assert_eq!(
        spans.len(),
        2 * total as usize,
        "one span per call per side"
    );
    for (kind, failed) in [(2, &["2", "4", "12", "13", "14", "15"][..]), (3, &[][..])] {
        let side: Vec<_> = spans.iter().filter(|s| s.span.kind == kind).collect();
        let mut counts = grpc::RpcCounts::new();
        for s in &side {
            let span = &s.span;
            let text = |key| string_of(span, key).unwrap_or_default();
            let status = span
                .attributes
                .iter()
                .find(|kv| kv.key == "rpc.grpc.status_code")
                .and_then(int_of)
                .expect("rpc.grpc.status_code, an integer");
            assert_eq!(
                span.name,
                format!("{}/{}", text("rpc.service"), text("rpc.method"))
            );
            *counts
                .entry((text("rpc.service"), text("rpc.method"), status.to_string()))
                .or_default() += 1;
            // A server fails on the server-error codes only, a client on any but OK.
            let error = if kind == 2 {
                failed.contains(&status.to_string().as_str())
            } else {
                status != 0
            };
            assert_eq!(string_of(span, "error.type").is_some(), error, "{span:?}");
            let code = span.status.as_ref().map_or(0, |s| s.code);
            assert_eq!(code == StatusCode::Error as i32, error, "{span:?}");
            if kind == 2 {
                assert_eq!(hex(&span.trace_id), TRACE_ID, "{span:?}");
                assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID, "{span:?}");
                assert_eq!(string_of(span, "server.address"), None);
            } else {
                assert!(
                    span.parent_span_id.is_empty(),
                    "no parent for a client call"
                );
                assert_eq!(
                    string_of(span, "server.address").as_deref(),
                    Some("127.0.0.1")
                );
            }
        }
        assert_eq!(counts, run.calls, "kind {kind}");
    }
}

/// gRPC over h2c between real Python `grpcio` peers (generic handlers): unary and
/// server-streaming calls ending OK, NOT_FOUND and INTERNAL one after another, then 100 unary
/// calls in flight at once on one connection. Each call is one RPC on both sides, per (service,
/// method, status) exactly as the client counted them, and none is an HTTP request.
#[test]
fn grpc_calls_are_counted_per_method_and_status_on_both_sides() {
    grpc_calls_are_counted(Runtime::Python, Runtime::Python);
}

/// [`grpc_calls_are_counted_per_method_and_status_on_both_sides`] between Node.js
/// `@grpc/grpc-js` peers (raw method definitions): another HTTP/2 stack on both sides (Node's
/// nghttp2 sessions, its own framing of trailers-only errors and of streamed replies).
#[test]
fn grpc_node_client_to_node_server_is_counted_exactly() {
    grpc_calls_are_counted(Runtime::Node, Runtime::Node);
}

/// The Node.js client calling the Python server.
#[test]
fn grpc_node_client_to_python_server_is_counted_exactly() {
    grpc_calls_are_counted(Runtime::Node, Runtime::Python);
}

/// The Python client calling the Node.js server.
#[test]
fn grpc_python_client_to_node_server_is_counted_exactly() {
    grpc_calls_are_counted(Runtime::Python, Runtime::Node);
}

/// `client` calling `server` in both modes (`mixed`, `concurrent`): the client's counts per
/// (service, method, status) are Periscope's exactly, server side and client side.
fn grpc_calls_are_counted(client: Runtime, server: Runtime) {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    for mode in ["mixed", "concurrent"] {
        let peer = server.server(free_port());
        let run = client.client(peer.port, mode);
        let total: u64 = run.calls.values().sum();
        if mode == "mixed" {
            assert_eq!(total, 10, "{run:?}");
            assert_eq!(run.messages, 12, "three replies per streaming call");
        } else {
            assert_eq!(total, 100, "{run:?}");
            // 100 calls held 200 ms each: in flight together, not one after another.
            assert!(run.elapsed_s < 5.0, "{run:?}");
        }
        let mode = format!("{client:?} client -> {server:?} server, {mode}");
        assert_eq!(run.connections, 1, "{mode}: one connection");
        for metric in [grpc::SERVER, grpc::CLIENT] {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let got = grpc::periscope_counts(&daemon.scrape(), metric, peer.port);
                if got == run.calls {
                    std::thread::sleep(Duration::from_millis(300));
                    let later = grpc::periscope_counts(&daemon.scrape(), metric, peer.port);
                    assert_eq!(later, run.calls, "{mode}: {metric} changed after matching");
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let client_side =
                        grpc::periscope_counts(&daemon.scrape(), grpc::CLIENT, peer.port);
                    panic!(
                        "{mode}: {metric} on port {}:\n periscope: {got:?}\n client:    {:?}\n \
                         (client side: {client_side:?}; HTTP capture: {:?})",
                        peer.port,
                        run.calls,
                        messages(&daemon.scrape())
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let scrape = daemon.scrape();
        for metric in [SERVER, CLIENT] {
            let http = periscope_counts(&scrape, metric, peer.port);
            assert!(
                http.is_empty(),
                "{mode}: gRPC calls counted as HTTP: {http:?}"
            );
        }
    }
}

/// A gRPC connection opened, and used, before Periscope started: its HPACK tables hold entries
/// Periscope never saw (SayHello's `:path`, `content-type`, statuses sent before). Every later
/// call is counted on both sides, exactly; what could not be decoded is unknown (`_OTHER`
/// method, no status), never a wrong name or status; a method first called after the start
/// (ListFeatures) is named, since its `:path` enters the table in view.
#[test]
fn grpc_calls_on_a_connection_opened_before_start_are_counted() {
    let _guard = exclusive();
    let peer = grpc::server(free_port());
    let mut daemon = None;
    let run = grpc::midway_client(peer.port, || {
        daemon = Some(Daemon::start(HTTP_ONLY, &[]));
    });
    let daemon = daemon.expect("started between the calls");
    assert_eq!(
        run.connections, 1,
        "one connection, opened before the start"
    );
    let total: u64 = run.calls.values().sum();
    assert_eq!(total, 10, "{run:?}");
    let listed: u64 = run
        .calls
        .iter()
        .filter(|((_, method, _), _)| method == "ListFeatures")
        .map(|(_, n)| n)
        .sum();
    for metric in [grpc::SERVER, grpc::CLIENT] {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let got = loop {
            let got = grpc::periscope_counts(&daemon.scrape(), metric, peer.port);
            if got.values().sum::<u64>() >= total || std::time::Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(300));
                break grpc::periscope_counts(&daemon.scrape(), metric, peer.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let context = format!(
            "{metric}:\n periscope: {got:?}\n client:    {:?}\n (HTTP capture: {:?})",
            run.calls,
            messages(&daemon.scrape())
        );
        assert_eq!(got.values().sum::<u64>(), total, "every call: {context}");
        for ((service, method, status), n) in &got {
            // Named only as the client saw it; unknown parts are `_OTHER` or no status.
            if method == "_OTHER" {
                assert_eq!(service, "_OTHER", "{context}");
                continue;
            }
            let seen: u64 = run
                .calls
                .iter()
                .filter(|((s, m, st), _)| {
                    s == service && m == method && (status.is_empty() || st == status)
                })
                .map(|(_, n)| n)
                .sum();
            assert!(*n <= seen, "{service}/{method} {status:?} x{n}: {context}");
        }
        let named: u64 = got
            .iter()
            .filter(|((_, method, _), _)| method == "ListFeatures")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            named, listed,
            "a method first called after the start is named: {context}"
        );
    }
    let scrape = daemon.scrape();
    for metric in [SERVER, CLIENT] {
        let http = periscope_counts(&scrape, metric, peer.port);
        assert!(http.is_empty(), "gRPC calls counted as HTTP: {http:?}");
    }
    let partial = scrape
        .samples
        .iter()
        .find(|s| {
            s.name == "periscope_http_messages_total"
                && s.labels.get("outcome").map(String::as_str) == Some("exchange_partial")
        })
        .map_or(0.0, |s| s.value);
    let unnamed: u64 = [grpc::SERVER, grpc::CLIENT]
        .iter()
        .flat_map(|metric| grpc::periscope_counts(&scrape, metric, peer.port))
        .filter(|((_, method, _), _)| method == "_OTHER")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        partial, unnamed as f64,
        "the calls left unnamed are counted as partial"
    );
}

/// `periscope_http_messages_total` by outcome (what the HTTP capture made of the traffic).
fn messages(scrape: &periscope_e2e::scrape::Scrape) -> Vec<(String, u64)> {
    scrape
        .samples
        .iter()
        .filter(|s| s.name == "periscope_http_messages_total" && s.value > 0.0)
        .map(|s| (s.labels["outcome"].clone(), s.value as u64))
        .collect()
}

/// `nghttp -n -s` (statistics on) with every URL on one connection, POSTing `data` when given:
/// what each stream got, from its statistics table (`id responseEnd requestStart process code
/// size request path`).
fn nghttp(urls: &[String], data: Option<&std::path::Path>) -> Vec<Sent> {
    let mut c = std::process::Command::new("nghttp");
    c.args(["-n", "-s"]);
    if let Some(data) = data {
        c.arg("-d").arg(data);
    }
    let out = c
        .args(urls)
        .output()
        .expect("nghttp (make test installs nghttp2-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let method = if data.is_some() { "POST" } else { "GET" };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, _, _, _, code, _, path] = fields.as_slice() else {
                return None;
            };
            Some(Sent {
                method: method.into(),
                path: path.to_string(),
                status: code.parse().ok()?,
                seconds: f64::NAN,
            })
        })
        .collect()
}

/// Asserts which mechanism the HTTP family attached with.
fn assert_mechanism(daemon: &Daemon, expected: &str) {
    assert_eq!(
        daemon.scrape().value(
            "periscope_probe_attached",
            &[("probe", "http"), ("mechanism", expected)]
        ),
        Some(1.0),
        "http attached with {expected}"
    );
}

/// The fallback for kernels or architectures without the raw syscall programs: one tracepoint
/// per syscall, arguments from the format files, every watched entry kept until its exit. Same
/// servers, same exact counts.
#[test]
fn tracepoint_mechanism_counts_the_same_requests_exactly() {
    let _guard = exclusive();
    let config = format!("{HTTP_ONLY}  http:\n    mechanism: tracepoint\n");
    let daemon = Daemon::start(&config, &[]);
    assert_mechanism(&daemon, "tracepoint");
    for keepalive in [true, false] {
        let server = Server::python(free_port(), keepalive, None, "py-api");
        let mut sent = python_client(server.port, keepalive, &plan(5));
        sent.extend(curl(server.port, keepalive, &plan(3)));
        if keepalive {
            sent.extend(expect_continue(server.port, 2));
        }
        check(&daemon, server.port, &sent, true);
    }
    let server = Server::nginx(free_port());
    let sent = node_client(server.port, true, &plan(5));
    check(&daemon, server.port, &sent, true);
}

/// A server blocked in `recv` on a keep-alive connection across the sweeps of stale syscall
/// entries (every second here) still has its next request counted on the tracepoint mechanism:
/// a read's entry must carry a time, or the sweeper takes it for one of a thread killed inside
/// the syscall and deletes it (a regression of a change that stopped timing reads' entries).
#[test]
fn tracepoint_mechanism_keeps_reads_blocked_across_sweeps() {
    let _guard = exclusive();
    let config = format!("{HTTP_ONLY}  http:\n    mechanism: tracepoint\n");
    let daemon = Daemon::start(&config, &[("PERISCOPE_EXITED_SERIES_TTL", "1s")]);
    assert_mechanism(&daemon, "tracepoint");
    let server = Server::python(free_port(), true, None, "py-idle");
    // One keep-alive connection: a request, 3 s of silence (the server thread waits in recv
    // through about three sweeps), another request.
    let script = format!(
        "import http.client, time\n\
         c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=10)\n\
         for i, pause in ((1, 3), (2, 0)):\n\
         \x20   c.request('GET', f'/users/{{i}}')\n\
         \x20   assert c.getresponse().read() == b'ok\\n'\n\
         \x20   time.sleep(pause)\n",
        port = server.port
    );
    run_python(&script);
    check(&daemon, server.port, &user_gets([1, 2]), true);
}

/// The default on Linux 6.5+: socket tracepoints. The Rust server reads through a `try_clone`
/// of each connection's descriptor and writes through the original: two descriptors, one
/// socket, one connection.
#[test]
fn rust_server_with_python_and_node_clients() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    assert_mechanism(&daemon, "socket_tracepoint");
    rust_server_counts_exactly(&daemon);
}

/// The fallback where socket tracepoints are missing (before Linux 6.5), on x86_64: two raw
/// syscall tracepoints for every syscall, connections learned from accept/connect/dup/close.
/// Same servers, same exact counts.
#[test]
fn raw_tracepoint_mechanism_counts_the_same_requests_exactly() {
    let _guard = exclusive();
    let config = format!("{HTTP_ONLY}  http:\n    mechanism: raw_tracepoint\n");
    let daemon = Daemon::start(&config, &[]);
    assert_mechanism(&daemon, "raw_tracepoint");
    rust_server_counts_exactly(&daemon);
    for keepalive in [true, false] {
        let server = Server::python(free_port(), keepalive, None, "py-raw");
        let mut sent = python_client(server.port, keepalive, &plan(5));
        sent.extend(curl(server.port, keepalive, &plan(3)));
        check(&daemon, server.port, &sent, true);
    }
}

/// Request bodies sent chunked (no Content-Length) on keep-alive connections, each followed by
/// more requests on the same connection: Node `http` with `req.write()`, Node `fetch` with a
/// streamed body, Python `http.client` with `encode_chunked=True`, and curl with
/// `-H 'Transfer-Encoding: chunked'`, against the Node server. Exact on both sides: the end of
/// a chunked request is where the next request can start.
#[test]
fn chunked_request_bodies_are_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let server = Server::node(free_port(), true);
    let mut sent = node_client_with(server.port, true, "chunked", &plan(3));
    sent.extend(node_client_with(server.port, true, "fetch", &plan(3)));
    sent.extend(python_chunked_client(server.port, &plan(3)));
    sent.extend(curl_chunked(server.port, 3));
    check(&daemon, server.port, &sent, true);
}

/// Heads longer than the 512 bytes the kernel copies: an 8 KiB cookie, and a request line of
/// 700 bytes (its target cut where the capture ends), each followed by ordinary requests on the
/// same keep-alive connection, against the Python and Node servers. Exact on both sides.
#[test]
fn request_heads_longer_than_the_capture_are_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    for server in [
        Server::python(free_port(), true, None, "py-long"),
        Server::node(free_port(), true),
    ] {
        let script = format!(
            "import http.client\n\
             c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=10)\n\
             def get(path, **headers):\n\
             \x20   c.request('GET', path, headers=headers)\n\
             \x20   r = c.getresponse(); r.read()\n\
             \x20   assert r.status == 200, r.status\n\
             for i in range(4):\n\
             \x20   get(f'/users/{{i}}', Cookie='a=' + 'x' * 8192)\n\
             \x20   get(f'/users/{{i}}')\n\
             get('/users/' + '9' * 700)\n\
             get('/users/5')\n",
            port = server.port
        );
        run_python(&script);
        check(&daemon, server.port, &user_gets(0..10), true);
    }
}

/// Responses without a body whatever their headers say: `HEAD` (with a `Content-Length`), `204`
/// and `304`, each followed by a response with a body. Pipelined (four requests in one write,
/// the four responses read back to back), so that only the framing rules tell where each
/// response ends; then one at a time from `http.client`. Exact on both sides.
#[test]
fn head_204_and_304_responses_end_at_their_head_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let server = Server::python(free_port(), true, None, "py-nobody");
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         for i in range(3):\n\
         \x20   s.sendall(''.join(f'{{m}} {{p}} HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n' for m, p in\n\
         \x20       [('HEAD', f'/users/{{i}}'), ('GET', '/empty'), ('GET', '/cached'), ('GET', f'/users/{{i}}')]).encode())\n\
         \x20   data = b''\n\
         \x20   while data.count(b'HTTP/1.1 ') < 4 or not data.endswith(b'ok\\n'):\n\
         \x20       chunk = s.recv(65536)\n\
         \x20       assert chunk, data\n\
         \x20       data += chunk\n\
         \x20   codes = [line.split(b' ')[1] for line in data.split(b'\\r\\n') if line.startswith(b'HTTP/1.1 ')]\n\
         \x20   assert codes == [b'200', b'204', b'304', b'200'], data\n\
         s.close()\n",
        port = server.port
    );
    run_python(&script);
    let mut plan = Vec::new();
    for i in 0..3 {
        for (method, path) in [
            ("HEAD", format!("/users/{i}")),
            ("GET", "/empty".to_string()),
            ("GET", "/cached".to_string()),
            ("GET", format!("/users/{i}")),
        ] {
            plan.push((method.to_string(), path));
        }
    }
    let mut sent = python_client(server.port, true, &plan);
    let statuses: Vec<u16> = sent.iter().map(|s| s.status).collect();
    assert_eq!(statuses[..4], [200, 204, 304, 200], "the server's answers");
    // The pipelined rounds sent the same requests and got the same answers.
    sent.extend(sent.clone());
    check(&daemon, server.port, &sent, true);
}

/// Requests pipelined on one connection past the first 512 bytes of a read, and their responses
/// read back past it: 18 requests of about 110 bytes in one write (the plan's statuses: 200,
/// 201, 404, 500), their responses read through one buffered reader, against the Python, Node
/// and nginx servers. Every request is counted under its own route and status on both sides:
/// none lost past the capture, none paired with another's response.
#[test]
fn pipelined_messages_past_the_first_512_bytes_are_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let plan = plan(3);
    for server in [
        Server::python(free_port(), true, None, "py-pipelined"),
        Server::node(free_port(), true),
        Server::nginx(free_port()),
    ] {
        let requests: Vec<String> = plan
            .iter()
            .map(|(method, path)| format!("('{method}', '{path}')"))
            .collect();
        let script = format!(
            "import socket\n\
             plan = [{requests}]\n\
             s = socket.create_connection(('127.0.0.1', {port}))\n\
             pad = 'p' * 48\n\
             s.sendall(''.join(f'{{m}} {{p}} HTTP/1.1\\r\\nHost: a\\r\\nX-Pad: {{pad}}\\r\\n'\n\
             \x20   f'Content-Length: 0\\r\\n\\r\\n' for m, p in plan).encode())\n\
             f = s.makefile('rb')\n\
             for m, p in plan:\n\
             \x20   status = int(f.readline().split()[1])\n\
             \x20   length = 0\n\
             \x20   while (line := f.readline()) not in (b'\\r\\n', b''):\n\
             \x20       name, _, value = line.partition(b':')\n\
             \x20       if name.lower() == b'content-length':\n\
             \x20           length = int(value)\n\
             \x20   f.read(length)\n\
             \x20   print(m, p, status)\n\
             s.close()\n",
            requests = requests.join(", "),
            port = server.port
        );
        let sent = python_lines(&script);
        assert_eq!(sent.len(), plan.len(), "every pipelined request answered");
        check(&daemon, server.port, &sent, true);
    }
}

/// Chunked request bodies whose end comes in pieces: the terminator `0\r\n` and its final CRLF
/// in two writes, and a body with a trailer field written in three, each followed by a GET on
/// the same keep-alive connection, 50 ms between writes so that the server reads them apart.
/// Against the Node server (answers after the body's end) and nginx (answers at the head and
/// drains the body afterwards, so the body's end arrives after the response). Exact on both
/// sides: no request swallowed by a body that did not end, none invented from its bytes.
#[test]
fn chunked_bodies_ending_across_writes_and_with_trailers_are_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    for server in [Server::node(free_port(), true), Server::nginx(free_port())] {
        let script = format!(
            "import socket, time\n\
             s = socket.create_connection(('127.0.0.1', {port}))\n\
             f = s.makefile('rb')\n\
             def response():\n\
             \x20   status = int(f.readline().split()[1])\n\
             \x20   length, chunked = 0, False\n\
             \x20   while (line := f.readline()) not in (b'\\r\\n', b''):\n\
             \x20       name, _, value = line.partition(b':')\n\
             \x20       if name.lower() == b'content-length':\n\
             \x20           length = int(value)\n\
             \x20       if name.lower() == b'transfer-encoding':\n\
             \x20           chunked = b'chunked' in value.lower()\n\
             \x20   while chunked:\n\
             \x20       size = int(f.readline().split(b';')[0], 16)\n\
             \x20       if size == 0:\n\
             \x20           while f.readline() not in (b'\\r\\n', b''):\n\
             \x20               pass\n\
             \x20           break\n\
             \x20       f.read(size + 2)\n\
             \x20   f.read(length)\n\
             \x20   return status\n\
             def post(pieces):\n\
             \x20   s.sendall(b'POST /items HTTP/1.1\\r\\nHost: a\\r\\nTransfer-Encoding: chunked\\r\\n'\n\
             \x20             b'Trailer: X-Checksum\\r\\n\\r\\n')\n\
             \x20   for piece in pieces:\n\
             \x20       time.sleep(0.05)\n\
             \x20       s.sendall(piece)\n\
             \x20   print('POST /items', response())\n\
             def get(path):\n\
             \x20   s.sendall(f'GET {{path}} HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n'.encode())\n\
             \x20   print('GET', path, response())\n\
             for i in range(3):\n\
             \x20   post([b'5\\r\\nhello\\r\\n0\\r\\n', b'\\r\\n'])\n\
             \x20   get(f'/users/{{i}}')\n\
             \x20   post([b'5\\r\\nhello\\r\\n', b'0\\r\\nX-Checksum: 1\\r\\n', b'\\r\\n'])\n\
             \x20   get('/fail')\n\
             s.close()\n",
            port = server.port
        );
        let sent = python_lines(&script);
        assert_eq!(sent.len(), 12, "every request answered: {sent:?}");
        check(&daemon, server.port, &sent, true);
    }
}

/// Clients that half-close (`shutdown(SHUT_WR)` after the request, then read the response to
/// its end, as HTTP/1.0 tools may): the half-close is not the end of the connection, nor is the
/// server's FIN arriving before the client reads (its socket is closed in the kernel by then,
/// its local port released). Every other client half-closes only after the server has answered
/// and closed: its socket then goes from CLOSE_WAIT to LAST_ACK with both directions shut, as
/// a `close` would, but with the response still unread (a race of the first kind under load,
/// made certain here). Both sides counted exactly, on the default mechanism.
#[test]
fn half_closing_clients_are_counted_on_both_sides() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    assert_mechanism(&daemon, "socket_tracepoint");
    let server = Server::python(free_port(), false, None, "py-half");
    let script = format!(
        "import socket, time\n\
         for i in range(4):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port}))\n\
         \x20   s.sendall(f'GET /users/{{i}} HTTP/1.0\\r\\nHost: a\\r\\n\\r\\n'.encode())\n\
         \x20   if i % 2 == 0:\n\
         \x20       s.shutdown(socket.SHUT_WR)\n\
         \x20   time.sleep(0.2)\n\
         \x20   if i % 2 == 1:\n\
         \x20       s.shutdown(socket.SHUT_WR)\n\
         \x20   data = b''\n\
         \x20   while chunk := s.recv(65536):\n\
         \x20       data += chunk\n\
         \x20   assert b' 200 ' in data.split(b'\\r\\n')[0], data\n\
         \x20   s.close()\n",
        port = server.port
    );
    run_python(&script);
    check(&daemon, server.port, &user_gets(0..4), true);
}

/// A keep-alive connection opened before Periscope started: no accept or establishment was
/// seen, so its sides come from its first bytes (a request read is a server's, a request
/// written a client's). Its requests from then on are counted exactly, both sides.
#[test]
fn a_connection_opened_before_periscope_started_is_counted_from_then_on() {
    let _guard = exclusive();
    let server = Server::python(free_port(), true, None, "py-early");
    let script = format!(
        "import http.client, sys\n\
         c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=10)\n\
         c.request('GET', '/users/0')\n\
         assert c.getresponse().read() == b'ok\\n'\n\
         print('connected', flush=True)\n\
         sys.stdin.readline()\n\
         for i in range(1, 5):\n\
         \x20   c.request('GET', f'/users/{{i}}')\n\
         \x20   assert c.getresponse().read() == b'ok\\n'\n",
        port = server.port
    );
    let mut client = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("client output");
    assert_eq!(line.trim(), "connected");
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let followed = |seen: &str| {
        daemon
            .scrape()
            .value(
                "periscope_http_connections_followed_total",
                &[("seen", seen)],
            )
            .expect("periscope_http_connections_followed_total")
    };
    let mid_stream = followed("mid_stream");
    std::io::Write::write_all(client.stdin.as_mut().expect("stdin"), b"go\n").expect("stdin");
    let status = client.wait().expect("client");
    assert!(status.success(), "client failed");
    check(&daemon, server.port, &user_gets(1..5), true);
    // Both ends of the connection were found in the middle, and say so.
    assert_eq!(followed("mid_stream") - mid_stream, 2.0);
}

/// Whether `counts` hold exactly `n` requests in total.
fn total(counts: &Counts) -> u64 {
    counts.values().sum()
}

#[test]
fn wrk_against_nginx_and_rust_counts_what_wrk_completed() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let nginx = Server::nginx(free_port());
    let rust = Server::rust(env!("CARGO_BIN_EXE_rust-http-server"), free_port());
    for port in [nginx.port, rust.port] {
        let out = std::process::Command::new("wrk")
            .args([
                "-t1",
                "-c4",
                "-d2s",
                &format!("http://127.0.0.1:{port}/users/7"),
            ])
            .output()
            .expect("wrk");
        let text = String::from_utf8_lossy(&out.stdout);
        let completed = wrk_completed(&text);
        assert!(completed > 100, "wrk completed only {completed}:\n{text}");
        // wrk counts responses it read before its deadline; requests it had in flight when it
        // stopped (at most one per connection) were served but not counted by wrk.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let (server, client) = loop {
            let scrape = daemon.scrape();
            let server = total(&periscope_counts(&scrape, SERVER, port));
            let client = total(&periscope_counts(&scrape, CLIENT, port));
            if (server >= completed && client >= completed) || std::time::Instant::now() > deadline
            {
                break (server, client);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            (completed..=completed + 4).contains(&server),
            "server side on {port}: periscope {server}, wrk {completed}"
        );
        assert!(
            (completed..=completed + 4).contains(&client),
            "client side (wrk) on {port}: periscope {client}, wrk {completed}"
        );
    }
}

#[test]
fn server_spans_fit_inside_client_timings_and_follow_traceparent() {
    let _guard = exclusive();
    let (receiver, _daemon) = daemon_with_spans();
    // Python server and client, then Node.js server and client.
    let python = Server::python(free_port(), true, None, "span-api");
    let sent = python_client(python.port, true, &plan(5));
    server_spans_within_client_times(&receiver, "span-api", &sent);
    let node = Server::node(free_port(), true);
    let sent = node_client(node.port, true, &plan(5));
    server_spans_within_client_times(&receiver, "node", &sent);

    // An incoming traceparent makes the server span a child of that trace.
    curl_traced(python.port, &[]);
    let traced = traced_span(&receiver, 2);
    assert_eq!(hex(&traced.span.trace_id), TRACE_ID);
    assert_eq!(hex(&traced.span.parent_span_id), PARENT_SPAN_ID);
}

/// A daemon capturing HTTP only, sending spans over OTLP/gRPC to a receiver of its own.
fn daemon_with_spans() -> (OtlpReceiver, Daemon) {
    let receiver = OtlpReceiver::start();
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let daemon = Daemon::start(
        HTTP_ONLY,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    (receiver, daemon)
}

/// The trace and parent span of the `traceparent` [`curl_traced`] sends.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// curl (with `args`) GETs `/users/traced` on `port` with a `traceparent` of [`TRACE_ID`].
fn curl_traced(port: u16, args: &[&str]) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null"])
        .args(args)
        .arg("-H")
        .arg(format!("traceparent: 00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
        .arg(format!("http://127.0.0.1:{port}/users/traced"))
        .output()
        .expect("curl");
    assert!(out.status.success());
}

/// The span of `kind` (2 server, 3 client) for `/users/traced`, once the receiver has it.
fn traced_span(receiver: &OtlpReceiver, kind: i32) -> periscope_e2e::otlp_receiver::ReceivedSpan {
    periscope_e2e::wait_for("the traced span", Duration::from_secs(20), || {
        receiver
            .spans()
            .into_iter()
            .find(|s| s.span.kind == kind && path_of(&s.span) == "/users/traced")
    })
}

/// The attributes, not only (method, route, status), on both sides: `error.type` on a server's
/// 5xx and a client's 4xx and 5xx only, `network.protocol.version`, `server.port`, and
/// `server.address` on the client; span names `{method} {route}` (server) and `{method}`
/// (client); `url.path` without its query string, whose values reach no output (the privacy
/// promise: the metrics, the spans and their attributes are all searched for them).
#[test]
fn attributes_follow_the_http_semantic_conventions() {
    let _guard = exclusive();
    let (receiver, daemon) = daemon_with_spans();
    let server = Server::python(free_port(), true, None, "attr-api");
    let plan: Vec<(String, String)> = [
        "/users/7?token=secret-7",
        "/missing/page?token=secret-8",
        "/fail?token=secret-9",
    ]
    .iter()
    .map(|path| ("GET".to_string(), path.to_string()))
    .collect();
    let sent = python_client(server.port, true, &plan);
    check(&daemon, server.port, &sent, true);

    let port = server.port.to_string();
    let scrape = daemon.scrape();
    let labels = |metric: &str, status: &str| {
        let series: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.name == format!("{metric}_count")
                    && s.labels.get("server_port") == Some(&port)
                    && s.labels
                        .get("http_response_status_code")
                        .map(String::as_str)
                        == Some(status)
            })
            .collect();
        assert_eq!(series.len(), 1, "{metric} {status}: {series:?}");
        series[0].labels.clone()
    };
    for (metric, status, error) in [
        (SERVER, "200", None),
        (SERVER, "404", None),
        (SERVER, "500", Some("500")),
        (CLIENT, "200", None),
        (CLIENT, "404", Some("404")),
        (CLIENT, "500", Some("500")),
    ] {
        let labels = labels(metric, status);
        let label = |k: &str| labels.get(k).map(String::as_str);
        assert_eq!(label("error_type"), error, "{metric} {status}");
        assert_eq!(label("network_protocol_version"), Some("1.1"));
        let address = (metric == CLIENT).then_some("127.0.0.1");
        assert_eq!(label("server_address"), address, "{metric} {status}");
    }
    assert!(
        !daemon.scrape_text_raw().contains("secret-"),
        "a query value in the metrics"
    );

    let spans = periscope_e2e::wait_for("six spans", Duration::from_secs(20), || {
        let ours: Vec<_> = receiver
            .spans()
            .into_iter()
            .filter(|s| {
                s.span
                    .attributes
                    .iter()
                    .any(|kv| kv.key == "server.port" && int_of(kv) == Some(server.port.into()))
            })
            .collect();
        (ours.len() >= 6).then_some(ours)
    });
    assert_eq!(spans.len(), 6, "one span per request per side");
    let mut names: Vec<(i32, String, String)> = spans
        .iter()
        .map(|s| (s.span.kind, s.span.name.clone(), path_of(&s.span)))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (2, "GET /fail", "/fail"),
            (2, "GET /missing/page", "/missing/page"),
            (2, "GET /users/{id}", "/users/7"),
            (3, "GET", "/fail"),
            (3, "GET", "/missing/page"),
            (3, "GET", "/users/7"),
        ]
        .map(|(kind, name, path)| (kind, name.to_string(), path.to_string()))
    );
    for s in &spans {
        assert!(
            !format!("{:?}", s.span).contains("secret-"),
            "a query value in a span: {:?}",
            s.span
        );
    }
}

fn int_of(kv: &opentelemetry_proto::tonic::common::v1::KeyValue) -> Option<i64> {
    match kv.value.as_ref()?.value.as_ref()? {
        opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(v) => Some(*v),
        _ => None,
    }
}

/// The string attribute `key` of a span.
fn string_of(s: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v) => {
                Some(v.clone())
            }
            _ => None,
        }
    })
}

fn path_of(s: &opentelemetry_proto::tonic::trace::v1::Span) -> String {
    string_of(s, "url.path").unwrap_or_default()
}

/// One SERVER span per request of `service`; each request (identified by its unique
/// /users/<n> path) took the server no longer than its client measured; 5xx is ERROR.
fn server_spans_within_client_times(receiver: &OtlpReceiver, service: &str, sent: &[Sent]) {
    let spans = periscope_e2e::wait_for("server spans", Duration::from_secs(20), || {
        let spans: Vec<_> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.service_name == service && s.span.kind == 2)
            .collect();
        (spans.len() >= sent.len()).then_some(spans)
    });
    assert_eq!(spans.len(), sent.len(), "one SERVER span per request");
    for s in sent.iter().filter(|s| s.path.starts_with("/users/")) {
        let span = spans
            .iter()
            .find(|sp| path_of(&sp.span) == s.path && sp.span.name.starts_with(&s.method))
            .unwrap_or_else(|| panic!("no server span for {} {}", s.method, s.path));
        let server_s = (span.span.end_time_unix_nano - span.span.start_time_unix_nano) as f64 / 1e9;
        assert!(
            server_s <= s.seconds,
            "{service} {} {}: server span {server_s}s longer than the client's {}s",
            s.method,
            s.path,
            s.seconds
        );
        assert!(
            span.span.parent_span_id.is_empty(),
            "no traceparent: a root span"
        );
    }
    let failed = spans
        .iter()
        .find(|s| path_of(&s.span) == "/fail")
        .expect("span of a 500");
    assert_eq!(
        failed.span.status.as_ref().map(|s| s.code),
        Some(2),
        "5xx is ERROR"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn client_call_made_while_serving_is_a_child_of_the_server_span() {
    let _guard = exclusive();
    let receiver = OtlpReceiver::start();
    // Spans over OTLP/HTTP here (the other span test uses gRPC).
    let endpoint = format!("http://127.0.0.1:{}", receiver.http_port);
    let daemon = Daemon::start(
        HTTP_ONLY,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    let downstream = Server::node(free_port(), true);
    let front = Server::python(free_port(), true, Some(downstream.port), "front");
    let sent = python_client(front.port, true, &[("GET".into(), "/chain".into())]);
    assert_eq!(sent[0].status, 200);
    let (server, client) = periscope_e2e::wait_for("chain spans", Duration::from_secs(20), || {
        let spans = receiver.spans();
        let server = spans
            .iter()
            .find(|s| s.service_name == "front" && s.span.kind == 2)?
            .clone();
        let client = spans
            .iter()
            .find(|s| s.service_name == "front" && s.span.kind == 3)?
            .clone();
        Some((server, client))
    });
    assert_eq!(client.span.trace_id, server.span.trace_id);
    assert_eq!(client.span.parent_span_id, server.span.span_id);
    assert!(client.span.start_time_unix_nano >= server.span.start_time_unix_nano);
    assert!(client.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    drop(daemon);
}

#[test]
fn garbage_and_truncated_traffic_is_counted_and_real_requests_stay_exact() {
    use std::io::{Read, Write};
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let server = Server::rust(env!("CARGO_BIN_EXE_rust-http-server"), free_port());
    let hostile: Vec<Vec<u8>> = vec![
        (0..=255u8).cycle().take(4096).collect(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        b"GET /trunc".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec(),
        // Not a method token ('@'): NOTAMETHOD would be a method (`_OTHER`).
        b"NOT@METHOD / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    let send = |port: u16, bytes: &[u8]| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = s.read(&mut [0; 1024]);
    };
    for bytes in &hostile {
        send(server.port, bytes);
    }
    // A request line of 100,000 bytes, to a server of its own: whether it is answered (and so
    // counted, its target cut where the capture ends) depends on how far that server reads
    // before the client's 300 ms are up; what matters is that the daemon stays within bounds.
    let huge = Server::rust(env!("CARGO_BIN_EXE_rust-http-server"), free_port());
    send(
        huge.port,
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100_000)).as_bytes(),
    );
    let sent = python_client(server.port, true, &plan(4));
    check(&daemon, server.port, &sent, true);
    let scrape = daemon.scrape();
    let invalid = scrape
        .value("periscope_http_messages_total", &[("outcome", "invalid")])
        .unwrap_or(0.0);
    assert!(invalid >= 2.0, "garbage counted as invalid: {invalid}");
    let (status, _) = daemon.stop();
    assert!(status.success(), "daemon survived hostile bytes");
}

/// wrk's request count from its summary ("12345 requests in 2.00s, ...").
fn wrk_completed(text: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .map(|(n, _)| n.trim().parse().ok())
        })
        .flatten()
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"))
}

#[test]
fn a_full_ring_buffer_loses_requests_counted_never_mismatched() {
    let _guard = exclusive();
    // A ring buffer of one page overflows at once under wrk.
    let config = format!("{HTTP_ONLY}  http:\n    ring_buffer_size: 4096\n");
    let daemon = Daemon::start(&config, &[]);
    let server = Server::nginx(free_port());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mix.lua");
    std::fs::write(
        &script,
        "local paths = {\"/users/1\", \"/fail\", \"/missing\"}\nlocal i = 0\n\
         request = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % 3) + 1])\nend\n",
    )
    .unwrap();
    let out = std::process::Command::new("wrk")
        .args(["-t1", "-c8", "-d2s", "-s"])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}/", server.port))
        .output()
        .expect("wrk");
    let completed = wrk_completed(&String::from_utf8_lossy(&out.stdout));
    std::thread::sleep(Duration::from_secs(2));
    let scrape = daemon.scrape();
    let lost = scrape
        .value(
            "periscope_probe_errors_total",
            &[("probe", "http"), ("kind", "events_lost")],
        )
        .unwrap_or(0.0);
    assert!(
        lost > 0.0,
        "the one-page ring buffer should have overflowed"
    );
    let counts = periscope_counts(&scrape, SERVER, server.port);
    let allowed = [
        ("/users/{id}", "200"),
        ("/fail", "500"),
        ("/missing", "404"),
    ];
    for ((method, route, status), n) in &counts {
        assert_eq!(method, "GET");
        assert!(
            allowed.contains(&(route.as_str(), status.as_str())),
            "{n} requests paired with the wrong response: {route} -> {status} ({counts:?})"
        );
    }
    let exported = total(&counts);
    assert!(
        exported > 0 && exported <= completed + 8,
        "{exported} vs {completed}"
    );
    let dropped = scrape
        .value(
            "periscope_http_messages_total",
            &[("outcome", "dropped_events_lost")],
        )
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "requests lost to the overflow are counted");
}

#[test]
fn a_server_that_exits_mid_request_drops_it_counted_and_leaks_nothing() {
    use std::io::{Read, Write};
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let port = free_port();
    let script = format!(
        "import os, socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen()\n\
         c, _ = s.accept(); c.recv(4096); os._exit(0)\n"
    );
    let mut server = std::process::Command::new("python3")
        .args(["-c", &script])
        .spawn()
        .expect("python3");
    let mut client = periscope_e2e::wait_for("listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    client
        .write_all(b"GET /users/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let _ = client.read(&mut [0; 64]);
    drop(client);
    server.wait().unwrap();
    let dropped = |scrape: &periscope_e2e::scrape::Scrape, outcome: &str| {
        scrape
            .value("periscope_http_messages_total", &[("outcome", outcome)])
            .unwrap_or(0.0)
    };
    // Exactly one each: the server's request (its process exited) and the client's (its
    // connection closed).
    periscope_e2e::wait_for("dropped requests", Duration::from_secs(10), || {
        let s = daemon.scrape();
        (dropped(&s, "dropped_process_exit") == 1.0
            && dropped(&s, "dropped_connection_closed") == 1.0)
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let scrape = daemon.scrape();
    assert_eq!(dropped(&scrape, "dropped_process_exit"), 1.0);
    assert_eq!(dropped(&scrape, "dropped_connection_closed"), 1.0);
    assert!(periscope_counts(&scrape, SERVER, port).is_empty());
    assert!(periscope_counts(&scrape, CLIENT, port).is_empty());
    // Both ends are forgotten: the only connection left is this scrape's own.
    let open = scrape
        .value("periscope_http_connections", &[])
        .expect("periscope_http_connections");
    assert!(open <= 1.0, "connections still followed: {open}");
}

#[test]
fn selectors_pick_processes_by_port_and_name_their_service() {
    let _guard = exclusive();
    let chosen = free_port();
    let config = format!(
        "{HTTP_ONLY}  http:\n    select:\n      - port: {chosen}\n        service_name: chosen-api\n"
    );
    let daemon = Daemon::start(&config, &[]);
    let picked = Server::python(chosen, true, None, "ignored-name");
    let other = Server::python(free_port(), true, None, "other");
    let sent = python_client(picked.port, true, &plan(3));
    let _ = python_client(other.port, true, &plan(3));
    check(&daemon, picked.port, &sent, true);
    let scrape = daemon.scrape();
    assert!(periscope_counts(&scrape, SERVER, other.port).is_empty());
    assert!(periscope_counts(&scrape, CLIENT, other.port).is_empty());
    let services: std::collections::BTreeSet<_> = scrape
        .samples
        .iter()
        .filter(|s| s.name == format!("{SERVER}_count"))
        .filter_map(|s| s.labels.get("service_name").cloned())
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        vec!["chosen-api".to_string()]
    );
    // Periscope's own /metrics endpoint is never observed.
    assert!(periscope_counts(&scrape, SERVER, daemon.port).is_empty());
}

#[test]
fn selecting_only_the_server_under_wrk_load_counts_it_exactly() {
    let _guard = exclusive();
    let config = format!("{HTTP_ONLY}  http:\n    select:\n      - process_name: nginx\n");
    let daemon = Daemon::start(&config, &[]);
    let server = Server::nginx(free_port());
    let out = std::process::Command::new("wrk")
        .args(["-t1", "-c4", "-d2s"])
        .arg(format!("http://127.0.0.1:{}/users/7", server.port))
        .output()
        .expect("wrk");
    let completed = wrk_completed(&String::from_utf8_lossy(&out.stdout));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let served = loop {
        let served = total(&periscope_counts(&daemon.scrape(), SERVER, server.port));
        if served >= completed || std::time::Instant::now() > deadline {
            break served;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        (completed..=completed + 4).contains(&served),
        "nginx served {served} per Periscope, wrk completed {completed}"
    );
    // wrk itself was not selected: its connections were dropped from the kernel map at once.
    assert!(periscope_counts(&daemon.scrape(), CLIENT, server.port).is_empty());
}

#[test]
fn route_patterns_and_the_per_service_cap_bound_http_route() {
    let _guard = exclusive();
    let config = format!(
        "{HTTP_ONLY}  http:\n    routes: [\"/shop/{{sku}}/reviews\"]\n    max_routes_per_service: 3\n"
    );
    let daemon = Daemon::start(&config, &[]);
    let server = Server::rust(env!("CARGO_BIN_EXE_rust-http-server"), free_port());
    let mut requests: Vec<(String, String)> = vec![
        ("GET".into(), "/shop/blue-shoe/reviews".into()),
        ("GET".into(), "/shop/red-hat/reviews".into()),
        ("GET".into(), "/users/42".into()),
    ];
    // Distinct literal paths: two fit under the cap of 3 with /users/{id}, the rest collapse.
    for name in ["alpha", "beta", "gamma", "delta"] {
        requests.push(("GET".into(), format!("/docs/{name}")));
    }
    let sent = python_client(server.port, true, &requests);
    assert_eq!(sent.len(), requests.len());
    let expected: Counts = [
        ("/shop/{sku}/reviews", "404", 2),
        ("/users/{id}", "200", 1),
        ("/docs/alpha", "404", 1),
        ("/docs/beta", "404", 1),
        ("/docs/*", "404", 2),
    ]
    .into_iter()
    .map(|(route, status, n)| {
        (
            ("GET".to_string(), route.to_string(), status.to_string()),
            n,
        )
    })
    .collect();
    assert_counts(&daemon, SERVER, server.port, &expected);
}

/// `http.request.method` as Periscope reports it: the nine OTel methods, `_OTHER` for the rest.
fn otel_counts(sent: &[Sent]) -> Counts {
    let known = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    let mut counts = Counts::new();
    for ((method, route, status), n) in client_counts(sent) {
        let method = if known.contains(&method.as_str()) {
            method
        } else {
            "_OTHER".to_string()
        };
        *counts.entry((method, route, status)).or_default() += n;
    }
    counts
}

/// Methods outside the nine OTel names (a cache PURGE, WebDAV's PROPFIND and MKCOL) are
/// requests like any other, counted as `_OTHER`; one first on a keep-alive connection does not
/// make Periscope give up the connection: the GETs after it are counted too. Python, nginx and
/// the Rust server, each under a keep-alive Python client and curl, exact on both sides.
#[test]
fn unknown_methods_count_as_other_and_the_connection_goes_on() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let mut requests: Vec<(String, String)> = vec![("PURGE".into(), "/users/1".into())];
    requests.extend((0..11).map(|i| ("GET".to_string(), format!("/users/{}", 10 + i))));
    requests.push(("PROPFIND".into(), "/users/2".into()));
    requests.push(("MKCOL".into(), "/users/3".into()));
    requests.push(("GET".into(), "/users/4".into()));
    let python = Server::python(free_port(), true, None, "py-methods");
    let nginx = Server::nginx(free_port());
    let rust = Server::rust(env!("CARGO_BIN_EXE_rust-http-server"), free_port());
    for port in [python.port, nginx.port, rust.port] {
        let mut sent = python_client(port, true, &requests);
        let purges = vec![("PURGE".to_string(), "/users/5".to_string()); 2];
        sent.extend(curl(port, true, &purges));
        assert!(sent.iter().all(|s| s.status == 200), "{sent:?}");
        let expected = otel_counts(&sent);
        assert_eq!(expected.values().sum::<u64>(), 17);
        assert_eq!(
            expected.get(&("_OTHER".into(), "/users/{id}".into(), "200".into())),
            Some(&5)
        );
        assert_counts(&daemon, SERVER, port, &expected);
        assert_counts(&daemon, CLIENT, port, &expected);
    }
}

/// Processes that exit right after an exchange: busybox `httpd` forks a child per connection
/// that writes its 404 (no length: the close ends it) and exits, and `wget` exits as soon as it
/// has read a 404's head. An exchange whose response status was seen is counted, on both sides:
/// every 404 as exactly as every 200, none `dropped_process_exit`.
#[test]
fn exchanges_of_processes_that_exit_after_the_status_are_counted() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let server = Server::busybox(free_port());
    let dropped_before = daemon
        .scrape()
        .value(
            "periscope_http_messages_total",
            &[("outcome", "dropped_process_exit")],
        )
        .unwrap_or(0.0);
    let mut sent = wget(server.port, "/missing/page", 7);
    sent.extend(wget(server.port, "/index.html", 3));
    let misses = vec![("GET".to_string(), "/missing/page".to_string()); 7];
    sent.extend(curl(server.port, false, &misses));
    let statuses: Vec<u16> = sent.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 404).count(),
        14,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    check(&daemon, server.port, &sent, true);
    let dropped = daemon
        .scrape()
        .value(
            "periscope_http_messages_total",
            &[("outcome", "dropped_process_exit")],
        )
        .unwrap_or(0.0);
    assert_eq!(dropped, dropped_before, "no exchange of theirs dropped");
}

/// A fork-per-connection server (busybox `httpd`: a child per connection, forked without exec,
/// that answers and exits) is one service instance: every series of its requests carries the
/// server's own `service.instance.id` (and resource: `process.pid`), not one per child.
#[test]
fn a_forking_servers_children_belong_to_its_service_instance() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let server = Server::busybox(free_port());
    let mut sent = wget(server.port, "/missing/page", 4);
    let pages = vec![("GET".to_string(), "/index.html".to_string()); 8];
    sent.extend(curl(server.port, false, &pages));
    check(&daemon, server.port, &sent, true);
    let scrape = daemon.scrape();
    let port = server.port.to_string();
    let label_values = |label: &str| -> std::collections::BTreeSet<String> {
        scrape
            .samples
            .iter()
            .filter(|s| s.name == format!("{SERVER}_count"))
            .filter(|s| s.labels.get("server_port") == Some(&port))
            .map(|s| s.labels.get(label).cloned().unwrap_or_default())
            .collect()
    };
    let instances = label_values("service_instance_id");
    assert_eq!(instances.len(), 1, "one instance: {instances:?}");
    let instance = instances.first().expect("one");
    assert!(
        instance.ends_with(&format!(":{}", server.pid())),
        "the server's own instance ({}), not a child's: {instance}",
        server.pid()
    );
    // Its resource, on target_info, is the server process's own.
    let resource = scrape
        .samples
        .iter()
        .find(|s| s.name == "target_info" && s.labels.get("service_instance_id") == Some(instance))
        .expect("target_info of the instance");
    assert_eq!(
        resource.labels.get("process_pid"),
        Some(&server.pid().to_string())
    );
}

/// A WebSocket upgrade: the request answered `101 Switching Protocols` is one exchange (status
/// 101) on both sides, and the frames that follow both ways (binary, some carrying text that
/// looks like HTTP) are not parsed as HTTP: no invalid bytes, no unmatched responses, no drops.
#[test]
fn a_websocket_upgrade_is_one_exchange_and_its_frames_are_not_http() {
    let _guard = exclusive();
    let daemon = Daemon::start(HTTP_ONLY, &[]);
    let port = free_port();
    // A WebSocket echo server: the handshake, then each frame back (unmasked), until close.
    let server_script = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen()\n\
         while True:\n\
         \x20   c, _ = s.accept()\n\
         \x20   head = b''\n\
         \x20   while b'\\r\\n\\r\\n' not in head:\n\
         \x20       chunk = c.recv(4096)\n\
         \x20       if not chunk: break\n\
         \x20       head += chunk\n\
         \x20   if not head: c.close(); continue\n\
         \x20   c.sendall(b'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n'\n\
         \x20             b'Connection: Upgrade\\r\\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\\r\\n\\r\\n')\n\
         \x20   while True:\n\
         \x20       hdr = c.recv(2)\n\
         \x20       if len(hdr) < 2: break\n\
         \x20       n = hdr[1] & 0x7f\n\
         \x20       mask = c.recv(4)\n\
         \x20       data = bytes(b ^ mask[i % 4] for i, b in enumerate(c.recv(n)))\n\
         \x20       c.sendall(bytes([hdr[0], n]) + data)\n\
         \x20       if hdr[0] & 0x0f == 8: break\n\
         \x20   c.close()\n"
    );
    let _server = Server::spawn(
        {
            let mut c = std::process::Command::new("python3");
            c.args(["-c", &server_script]);
            c
        },
        port,
        None,
    );
    let outcome = |outcome: &str| {
        daemon
            .scrape()
            .value("periscope_http_messages_total", &[("outcome", outcome)])
            .unwrap_or(0.0)
    };
    let noise = ["invalid", "unmatched_response", "dropped_connection_closed"];
    let before: Vec<f64> = noise.iter().map(|o| outcome(o)).collect();
    let client_script = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'GET /ws HTTP/1.1\\r\\nHost: a\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n'\n\
         \x20         b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n')\n\
         head = b''\n\
         while b'\\r\\n\\r\\n' not in head:\n\
         \x20   head += s.recv(4096)\n\
         assert head.startswith(b'HTTP/1.1 101 '), head\n\
         for i, text in enumerate([b'hello', b'GET / HTTP/1.1', b'HTTP/1.1 200 OK', b'\\x00\\xff' * 20, b'bye']):\n\
         \x20   op = 0x88 if i == 4 else (0x81 if i < 3 else 0x82)\n\
         \x20   mask = bytes([1, 2, 3, 4])\n\
         \x20   s.sendall(bytes([op, 0x80 | len(text)]) + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(text)))\n\
         \x20   echo = b''\n\
         \x20   while len(echo) < 2 + len(text):\n\
         \x20       echo += s.recv(4096)\n\
         \x20   assert echo[2:] == text, echo\n\
         s.close()\n"
    );
    run_python(&client_script);
    let sent = vec![Sent {
        method: "GET".into(),
        path: "/ws".into(),
        status: 101,
        seconds: f64::NAN,
    }];
    check(&daemon, port, &sent, true);
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<f64> = noise.iter().map(|o| outcome(o)).collect();
    assert_eq!(after, before, "{noise:?}: the frames were taken for HTTP");
}
