//! Histograms that stay right when series are aggregated. A real two-route Python service
//! (90% of requests answered at once, 10% after a uniform 10-50 ms sleep) is observed by
//! Periscope while two real Prometheus servers scrape it every second: one classic (text), one
//! with native histograms (protobuf), both with exemplar storage. The quantiles of
//! `sum by (le)` over both routes are compared with the exact quantiles of the server's own
//! timings; every series of every histogram metric must show the same `le` set at successive
//! scrapes, every OTLP data point of a metric the same `explicit_bounds`; Prometheus's
//! exemplars must be the spans the OTLP receiver got for the same slow requests.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest, common::v1::any_value::Value,
    metrics::v1::metric::Data, trace::v1::span::SpanKind,
};
use periscope_e2e::{
    daemon::Daemon,
    exclusive, free_port,
    http::workload,
    otlp_receiver::{OtlpReceiver, ReceivedSpan},
    periscope_bin,
    prometheus::Prometheus,
    wait_for,
};

/// The OTel semantic-convention bounds: Periscope's default layout for HTTP durations.
const HTTP_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Ratio of the kernel's bucket edges, 2^(1/16): the most re-binning moves a value up.
const KERNEL_BUCKET_RATIO: f64 = 1.044_273_782_427_413_8;
const REQUESTS: usize = 1000;
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.95, 0.99];
const SERVICE: &str = "two-routes";
const RESPONSE_LEN: usize =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n".len();

/// The server (two_routes.py), killed on drop unless stopped for its timings.
struct TwoRoutes {
    child: std::process::Child,
    port: u16,
    timings: tempfile::NamedTempFile,
}

impl TwoRoutes {
    fn start() -> Self {
        let port = free_port();
        let timings = tempfile::NamedTempFile::new().expect("tempfile");
        let child = Command::new("python3")
            .arg(workload("two_routes.py"))
            .arg(port.to_string())
            .arg(timings.path())
            .env("OTEL_SERVICE_NAME", SERVICE)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        wait_for("two_routes.py listening", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self {
            child,
            port,
            timings,
        }
    }

    /// SIGTERM; the server writes its timings: path -> seconds.
    fn stop(mut self) -> HashMap<String, f64> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait two_routes.py");
        assert!(status.success(), "two_routes.py: {status}");
        let text = std::fs::read_to_string(self.timings.path()).expect("timings");
        serde_json::from_str(&text).expect("timings JSON")
    }
}

impl Drop for TwoRoutes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` GETs on one keep-alive connection, each `/slow/{i}` with probability 1/10 (a fixed
/// xorshift sequence) and `/fast/{i}` otherwise; then one `/once/0` on its own connection.
fn drive(port: u16, n: usize) -> Vec<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut paths = Vec::with_capacity(n + 1);
    for i in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let route = if state.is_multiple_of(10) {
            "slow"
        } else {
            "fast"
        };
        paths.push(format!("/{route}/{i}"));
    }
    for path in &paths {
        get(&mut stream, path);
    }
    let mut once = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    get(&mut once, "/once/0");
    paths.push("/once/0".into());
    paths
}

/// One request in one write (several small writes would wait on Nagle and delayed ACKs).
fn get(stream: &mut TcpStream, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = [0u8; RESPONSE_LEN];
    stream.read_exact(&mut response).expect("response");
    assert!(response.starts_with(b"HTTP/1.1 200"), "{path}");
}

/// PromQL's `histogram_quantile` over classic buckets (`bounds` finite ascending, `cumulative`
/// one longer for `+Inf`), computed here as Prometheus 2.42 does.
fn histogram_quantile(q: f64, bounds: &[f64], cumulative: &[f64]) -> f64 {
    let total = cumulative[cumulative.len() - 1];
    let rank = q * total;
    let b = cumulative[..cumulative.len() - 1].partition_point(|c| *c < rank);
    if b == bounds.len() {
        return bounds[bounds.len() - 1];
    }
    let (start, below) = if b == 0 {
        (0.0, 0.0)
    } else {
        (bounds[b - 1], cumulative[b - 1])
    };
    start + (bounds[b] - start) * ((rank - below) / (cumulative[b] - below))
}

/// Cumulative counts of `values` at each bound (and `+Inf`).
fn cumulative_at(values: &[f64], bounds: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut out: Vec<f64> = bounds
        .map(|b| values.iter().filter(|v| **v <= b).count() as f64)
        .collect();
    out.push(values.len() as f64);
    out
}

/// The exact q-quantile: the ceil(q n)-th smallest value.
fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn string_attribute(span: &ReceivedSpan, key: &str) -> Option<String> {
    span.span
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

/// Server spans of the service, by `url.path`: (trace id, span id, duration in seconds).
fn server_spans(receiver: &OtlpReceiver) -> HashMap<String, (String, String, f64)> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    receiver
        .spans()
        .into_iter()
        .filter(|s| s.service_name == SERVICE && s.span.kind == SpanKind::Server as i32)
        .filter_map(|s| {
            let path = string_attribute(&s, "url.path")?;
            let seconds = (s.span.end_time_unix_nano - s.span.start_time_unix_nano) as f64 * 1e-9;
            Some((path, (hex(&s.span.trace_id), hex(&s.span.span_id), seconds)))
        })
        .collect()
}

/// Every `le` set of every histogram series in a text scrape: metric -> series -> bounds.
fn le_sets(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once("_bucket{") else {
            continue;
        };
        let labels = rest.split("} ").next().unwrap_or("");
        let Some((series, le)) = labels.rsplit_once("le=\"") else {
            panic!("a bucket without le: {line}");
        };
        out.entry(name.to_string())
            .or_default()
            .entry(series.to_string())
            .or_default()
            .push(le.trim_end_matches('"').to_string());
    }
    out
}

/// Every `explicit_bounds` seen per histogram metric over all OTLP exports.
fn otlp_bounds(requests: &[ExportMetricsServiceRequest]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for metric in requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
    {
        if let Some(Data::Histogram(h)) = &metric.data {
            for point in &h.data_points {
                assert_eq!(
                    point.bucket_counts.len(),
                    point.explicit_bounds.len() + 1,
                    "{}: a count per bound and one for +Inf",
                    metric.name
                );
                out.entry(metric.name.clone())
                    .or_default()
                    .insert(format!("{:?}", point.explicit_bounds));
            }
        }
    }
    out
}

/// (trace id, span id) of every exemplar on the data points of `metric`, over all exports.
fn otlp_exemplars(requests: &[ExportMetricsServiceRequest], metric: &str) -> Vec<(String, String)> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name == metric)
        .filter_map(|m| match &m.data {
            Some(Data::Histogram(h)) => Some(h),
            _ => None,
        })
        .flat_map(|h| &h.data_points)
        .flat_map(|p| &p.exemplars)
        .map(|e| (hex(&e.trace_id), hex(&e.span_id)))
        .collect()
}

#[test]
fn two_routes_aggregate_right_in_classic_native_otlp_and_exemplars() {
    let _machine = exclusive();
    let receiver = OtlpReceiver::start();
    let server = TwoRoutes::start();
    let config = format!(
        "otlp:\n  interval: 1s\nprobes:\n  http:\n    select:\n      - port: {}\n    \
         routes: ['/fast/{{id}}', '/slow/{{id}}', '/once/{{id}}']\n",
        server.port
    );
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let daemon = Daemon::start(&config, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    let classic = Prometheus::start(daemon.port, &["exemplar-storage"]);
    let native = Prometheus::start(daemon.port, &["native-histograms", "exemplar-storage"]);

    let paths = drive(server.port, REQUESTS);
    let sel = format!("service_name=\"{SERVICE}\",http_route=~\"/fast/.*|/slow/.*\"");
    let metric = "http_server_request_duration_seconds";
    wait_for(
        "Periscope counts every request",
        Duration::from_secs(30),
        || {
            let scrape = daemon.scrape_text();
            let n = scrape.value(&format!("{metric}_count"), &[("service_name", SERVICE)])?;
            (n as usize == paths.len()).then_some(())
        },
    );
    wait_for(
        "both Prometheus servers scraped every request",
        Duration::from_secs(30),
        || {
            let text = classic.query(&format!("sum({metric}_count{{{sel}}})"));
            let native_count = native.query(&format!("histogram_count(sum({metric}{{{sel}}}))"));
            let done = |s: &[periscope_e2e::prometheus::Sample]| {
                s.first().is_some_and(|s| s.value as usize == REQUESTS)
            };
            (done(&text) && done(&native_count)).then_some(())
        },
    );
    let timings = server.stop();
    let spans = wait_for("a server span per request", Duration::from_secs(30), || {
        let spans = server_spans(&receiver);
        paths.iter().all(|p| spans.contains_key(p)).then_some(spans)
    });

    // The measurement itself: Periscope's duration (read exit to write entry) is the server's
    // own (inside that window) plus the interpreter steps around its clock reads.
    let mut extra: f64 = 0.0;
    for path in &paths {
        let handler = timings[path];
        let kernel = spans[path].2;
        assert!(
            kernel >= handler - 1e-6,
            "{path}: kernel {kernel} < server {handler}"
        );
        extra = extra.max(kernel - handler);
    }
    assert!(
        extra < 0.002,
        "kernel and server timings differ by {extra} s"
    );
    // Both routes, without the single /once request.
    let routes: Vec<&String> = paths.iter().filter(|p| !p.starts_with("/once/")).collect();
    let handler: Vec<f64> = routes.iter().map(|p| timings[p.as_str()]).collect();
    let kernel: Vec<f64> = routes.iter().map(|p| spans[p.as_str()].2).collect();

    // Classic (text scrape, `sum by (le)` over both routes): between the quantile of exact
    // counts at the bounds and that of exact counts one kernel bucket lower (re-binning moves a
    // value up by at most 4.4%), the lower one also allowing the measured kernel-server gap.
    let low = cumulative_at(&handler, HTTP_BOUNDS.iter().copied());
    let high = cumulative_at(
        &handler,
        HTTP_BOUNDS.iter().map(|b| b / KERNEL_BUCKET_RATIO - extra),
    );
    eprintln!("largest kernel - server gap: {:.1} us", extra * 1e6);
    eprintln!("q     exact(server)  exact(kernel)  classic  [allowed]            native");
    for q in QUANTILES {
        let got = classic.scalar(&format!(
            "histogram_quantile({q}, sum by (le) ({metric}_bucket{{{sel}}}))"
        ));
        let (from, to) = (
            histogram_quantile(q, &HTTP_BOUNDS, &low),
            histogram_quantile(q, &HTTP_BOUNDS, &high),
        );
        let got_native = native.scalar(&format!("histogram_quantile({q}, sum({metric}{{{sel}}}))"));
        let exact = exact_quantile(&handler, q);
        let exact_kernel = exact_quantile(&kernel, q);
        eprintln!(
            "p{:<4} {:.6}  {:.6}  {:.6} [{:.6}, {:.6}]  {:.6}",
            q * 100.0,
            exact,
            exact_kernel,
            got,
            from,
            to,
            got_native
        );
        assert!(
            from * (1.0 - 1e-9) <= got && got <= to * (1.0 + 1e-9),
            "classic p{}: {got} outside [{from}, {to}] (exact {exact})",
            q * 100.0
        );
        // Native: within 5% of the exact quantile of what the kernel measured, and so within
        // 5% of the server's own once the measured gap is allowed for.
        assert!(
            (got_native / exact_kernel - 1.0).abs() <= 0.05,
            "native p{}: {got_native} vs exact {exact_kernel} (kernel)",
            q * 100.0
        );
        assert!(
            got_native >= exact * 0.95 && got_native <= (exact + extra) * 1.05,
            "native p{}: {got_native} vs exact {exact} (server, gap {extra})",
            q * 100.0
        );
    }
    // The native server ingested native histograms (no classic `_bucket` series), the classic
    // one classic buckets.
    assert!(
        native
            .query(&format!("{metric}_bucket{{{sel}}}"))
            .is_empty()
    );
    assert!(
        !classic
            .query(&format!("{metric}_bucket{{{sel}}}"))
            .is_empty()
    );

    // Exemplars: what Prometheus stored for the slow route are spans the receiver got for
    // slow requests, with their durations.
    let exemplars = classic.query_exemplars(
        &format!("{metric}_bucket{{service_name=\"{SERVICE}\",http_route=\"/slow/{{id}}\"}}"),
        Duration::from_secs(300),
    );
    assert!(!exemplars.is_empty(), "no exemplars for the slow route");
    let by_trace: HashMap<&str, (&String, &(String, String, f64))> = spans
        .iter()
        .map(|(path, s)| (s.0.as_str(), (path, s)))
        .collect();
    for e in &exemplars {
        let (path, (_, span_id, seconds)) = by_trace
            .get(e.trace_id.as_str())
            .unwrap_or_else(|| panic!("exemplar trace {} is no span received", e.trace_id));
        assert!(path.starts_with("/slow/"), "{path}");
        assert_eq!(&e.span_id, span_id, "{path}");
        assert!(
            (e.value - seconds).abs() < 1e-6,
            "{path}: {} vs {seconds}",
            e.value
        );
    }
    eprintln!(
        "{} exemplars on /slow/{{id}}, each a received slow span",
        exemplars.len()
    );
    // The same from the protobuf scrape (exemplars on the classic buckets of the message; the
    // native series carries them).
    let native_exemplars = native.query_exemplars(
        &format!("{metric}{{service_name=\"{SERVICE}\",http_route=\"/slow/{{id}}\"}}"),
        Duration::from_secs(300),
    );
    assert!(
        !native_exemplars.is_empty(),
        "no exemplars from the protobuf scrape"
    );
    for e in &native_exemplars {
        let (path, span) = by_trace
            .get(e.trace_id.as_str())
            .unwrap_or_else(|| panic!("exemplar trace {} is no span received", e.trace_id));
        assert!(path.starts_with("/slow/") && e.span_id == span.1, "{path}");
    }

    // Every series of every histogram metric has the same `le` set at three successive
    // scrapes; the HTTP ones (including /once, with one observation) the semantic-convention
    // layout.
    let expected_http: Vec<String> = HTTP_BOUNDS
        .iter()
        .map(|b| format!("{b:?}"))
        .chain(["+Inf".into()])
        .collect();
    let mut first: Option<BTreeMap<String, Vec<String>>> = None;
    for scrape in 0..3 {
        if scrape > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let sets = le_sets(&daemon.scrape_text_raw());
        let http = &sets[metric];
        assert!(
            http.keys().any(|series| series.contains("/once/{id}")),
            "the single-observation series is there: {:?}",
            http.keys()
        );
        let mut per_metric = BTreeMap::new();
        for (name, series) in &sets {
            let distinct: BTreeSet<&Vec<String>> = series.values().collect();
            assert_eq!(
                distinct.len(),
                1,
                "{name}: le sets differ between series: {distinct:?}"
            );
            let les = series.values().next().cloned().unwrap_or_default();
            if name.starts_with("http_") {
                assert_eq!(les, expected_http, "{name}");
            }
            per_metric.insert(name.clone(), les);
        }
        match &first {
            None => first = Some(per_metric),
            Some(before) => {
                for (name, les) in &per_metric {
                    if let Some(earlier) = before.get(name) {
                        assert_eq!(les, earlier, "{name}: le set changed between scrapes");
                    }
                }
            }
        }
    }

    // OTLP: one `explicit_bounds` per metric over every data point of every export; the HTTP
    // points' exemplars are received spans.
    let requests = receiver.requests();
    let otlp_exemplars = otlp_exemplars(&requests, "http.server.request.duration");
    assert!(!otlp_exemplars.is_empty(), "no exemplars on OTLP points");
    for (trace_id, span_id) in &otlp_exemplars {
        let (path, span) = by_trace
            .get(trace_id.as_str())
            .unwrap_or_else(|| panic!("OTLP exemplar trace {trace_id} is no span received"));
        assert_eq!(&span.1, span_id, "{path}");
    }
    let bounds = otlp_bounds(&requests);
    for (name, sets) in &bounds {
        assert_eq!(sets.len(), 1, "{name}: several explicit_bounds: {sets:?}");
    }
    assert_eq!(
        bounds["http.server.request.duration"]
            .iter()
            .next()
            .map(String::as_str),
        Some(format!("{:?}", HTTP_BOUNDS.to_vec()).as_str())
    );
    drop(daemon);
}

#[test]
fn a_bad_layout_is_refused_with_its_key_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, expected) in [
        (
            "histograms:\n  buckets:\n    kernel.block.io.duration: [0.01, 0.001]\n",
            "histograms.buckets.kernel.block.io.duration: bounds must be strictly ascending: 0.01 is followed by 0.001 at line 3 column 31",
        ),
        (
            "histograms:\n  buckets:\n    http.server.request.duration: [-0.5, 1]\n",
            "histograms.buckets.http.server.request.duration: bound -0.5 is not a positive finite number (+Inf is implied) at line 3 column 35",
        ),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(periscope_bin())
            .args(["run", "--duration", "1s", "--config"])
            .arg(&path)
            .output()
            .expect("periscope");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml}");
        assert!(stderr.contains(expected), "{yaml}\n{stderr}");
    }
    let many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let path = dir.path().join("many.yaml");
    std::fs::write(
        &path,
        format!(
            "histograms:\n  buckets:\n    kernel.block.io.size: [{}]\n",
            many.join(", ")
        ),
    )
    .unwrap();
    let out = Command::new(periscope_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("periscope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("histograms.buckets.kernel.block.io.size: 101 bounds, at most 100"),
        "{stderr}"
    );
}
