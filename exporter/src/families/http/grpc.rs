//! gRPC calls: an HTTP/2 stream whose request is `content-type: application/grpc*` is one RPC,
//! exported per the OTel RPC semantic conventions (`rpc.server.call.duration`,
//! `rpc.client.call.duration`) instead of as an HTTP request.
//!
//! - `rpc.service` and `rpc.method` come from `:path` (`/package.Service/Method`), bounded per
//!   observed service like `http.route`: beyond `probes.http.max_routes_per_service` distinct
//!   (service, method) pairs a new method is `_OTHER` (its service kept while the service names
//!   seen stay under the same bound), then both are `_OTHER`.
//! - `rpc.grpc.status_code` is the trailers' `grpc-status` (or a trailers-only response's).
//!   Without one, a stream reset by RST_STREAM, refused by GOAWAY, or answered with an HTTP
//!   error status has the status gRPC itself gives it (its HTTP/2 protocol's mapping). Any other
//!   call whose status is not known (its trailers were not captured or not decoded) is counted
//!   without `rpc.grpc.status_code` and without `error.type`, never under a guessed code.
//! - `error.type` is the status name when the call failed for its side (the gRPC conventions:
//!   a server fails on UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and
//!   DATA_LOSS; a client on any status but OK).
//!
//! Streaming RPCs are one call each: the decoder gives one exchange per stream.
//!
//! With spans on, each sampled call is one span (the tracker's `record_call`), named
//! `{rpc.service}/{rpc.method}`, SERVER or CLIENT by the connection's side, with the attributes
//! above (`rpc.grpc.status_code` and `server.port` as integers) and the histogram bucket's
//! exemplar linking to it. A server call's parent is its request's `traceparent` metadata; a
//! client call has none, as an HTTP/2 client stream.

use foldhash::{HashMap, HashMapExt, HashSet};

use super::{
    connection::Role,
    h2::{self, End, Value},
};
use crate::model::metrics::Attributes;

/// One gRPC call as the tracker gets it from the HTTP/2 decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `:path`: `/package.Service/Method`.
    pub path: String,
    /// `:authority`, when known (a client's `server.address`).
    pub authority: Option<String>,
    /// The gRPC status code, when known (see the module docs).
    pub status: Option<u32>,
    /// The request's `traceparent` metadata, when known (a server call's span parent).
    pub traceparent: Option<String>,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Whether a decoded stream is a gRPC call: `content-type: application/grpc*` when that is
/// known. On a connection joined midway the content type is often a reference into the
/// unknown table: a stream whose response ended with trailers (which gRPC always sends and
/// plain HTTP/2 servers hardly ever do), or any stream of a connection that already carried a
/// call (`calls_seen`), is then taken for one.
pub fn is_call(e: &h2::Exchange, calls_seen: bool) -> bool {
    match e.grpc() {
        Value::Known(grpc) => grpc,
        Value::Unknown | Value::Absent => e.trailers.is_some() || calls_seen,
    }
}

/// A gRPC stream as a call. A `:path` that could not be decoded (a connection joined midway)
/// is empty: the call counts as `_OTHER`/`_OTHER`; one the block did not have is a malformed
/// stream, dropped.
pub fn call(e: &h2::Exchange) -> Option<Call> {
    Some(Call {
        path: e.target().known_or_empty()?.to_string(),
        authority: e.authority().known().map(str::to_string),
        status: status(e),
        traceparent: e.traceparent().known().map(str::to_string),
        start_ns: e.start_ns,
        end_ns: e.end_ns,
    })
}

pub const OK: u32 = 0;
const CANCELLED: u32 = 1;
const UNKNOWN: u32 = 2;
const PERMISSION_DENIED: u32 = 7;
const RESOURCE_EXHAUSTED: u32 = 8;
const UNIMPLEMENTED: u32 = 12;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;
const UNAUTHENTICATED: u32 = 16;

/// The call's status: `grpc-status` when the server sent one; else what a gRPC library makes
/// of how the stream ended (RST_STREAM's code, a GOAWAY that refused it, an HTTP error status);
/// else unknown.
fn status(e: &h2::Exchange) -> Option<u32> {
    let sent = e.grpc_status();
    if let Value::Known(code) = sent {
        return Some(code);
    }
    match e.end {
        End::Reset { code, .. } => from_reset(code),
        End::GoAway { .. } => Some(UNAVAILABLE),
        End::Stream | End::Closed => match (sent, e.status()) {
            // No grpc-status for sure, and an HTTP status that is not 200: gRPC's mapping.
            (Value::Absent, Value::Known(http)) if http != 200 => from_http(http),
            _ => None,
        },
    }
}

/// gRPC over HTTP/2's mapping of RST_STREAM codes (PROTOCOL-HTTP2.md, "Errors"); codes it does
/// not map stay unknown.
fn from_reset(code: u32) -> Option<u32> {
    match code {
        // NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT,
        // FRAME_SIZE_ERROR, COMPRESSION_ERROR, CONNECT_ERROR
        0x0..=0x4 | 0x6 | 0x9 | 0xa => Some(INTERNAL),
        0x7 => Some(UNAVAILABLE),        // REFUSED_STREAM
        0x8 => Some(CANCELLED),          // CANCEL
        0xb => Some(RESOURCE_EXHAUSTED), // ENHANCE_YOUR_CALM
        0xc => Some(PERMISSION_DENIED),  // INADEQUATE_SECURITY
        _ => None,
    }
}

/// gRPC's mapping of an HTTP status received without `grpc-status`
/// (http-grpc-status-mapping.md).
fn from_http(status: u16) -> Option<u32> {
    Some(match status {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502..=504 => UNAVAILABLE,
        // 1xx never ends a stream; anything else is UNKNOWN.
        _ => UNKNOWN,
    })
}

/// The status codes' names (`error.type`), by code.
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `error.type` of a call with `status` on `role`'s side, when it failed.
pub fn error_type(role: Role, status: Option<u32>) -> Option<String> {
    let code = status?;
    let failed = match role {
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
        Role::Server => matches!(code, 2 | 4 | 12..=15),
        Role::Client => code != OK,
    };
    failed.then(|| {
        NAMES
            .get(code as usize)
            .map_or_else(|| code.to_string(), |name| (*name).to_string())
    })
}

/// The attributes of one call's series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallAttributes {
    pub service: String,
    pub method: String,
    /// `None`: not known (the attribute is left out).
    pub status: Option<u32>,
    pub error: Option<String>,
    pub port: Option<u16>,
    /// `server.address`, for clients.
    pub address: Option<String>,
}

impl CallAttributes {
    /// The OTel attributes, sorted by key.
    pub fn to_attributes(&self) -> Attributes {
        let mut out = vec![
            ("rpc.method", self.method.clone()),
            ("rpc.service", self.service.clone()),
            ("rpc.system", "grpc".to_string()),
        ];
        if let Some(status) = self.status {
            out.push(("rpc.grpc.status_code", status.to_string()));
        }
        if let Some(error) = &self.error {
            out.push(("error.type", error.clone()));
        }
        if let Some(port) = self.port {
            out.push(("server.port", port.to_string()));
        }
        if let Some(address) = &self.address {
            out.push(("server.address", address.clone()));
        }
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

/// Names beyond the cap, and those of a path that is not `/Service/Method`.
pub const OTHER: &str = "_OTHER";

/// Longest `:path` named as it is; a longer one is `_OTHER` (as routes are cut, a hostile
/// client cannot make Periscope hold long names).
const MAX_PATH: usize = 512;

/// `rpc.service` and `rpc.method` with a per-service cap (the observed process's service, as
/// for routes).
#[derive(Debug)]
pub struct Methods {
    max_per_service: usize,
    seen: HashMap<String, Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    methods: HashSet<(String, String)>,
    services: HashSet<String>,
}

impl Methods {
    pub fn new(max_per_service: usize) -> Self {
        Self {
            max_per_service: max_per_service.max(1),
            seen: HashMap::new(),
        }
    }

    /// (`rpc.service`, `rpc.method`) of a call to `path` served or made by `service`.
    pub fn name(&mut self, service: &str, path: &str) -> (String, String) {
        let Some((rpc_service, method)) = split(path) else {
            return (OTHER.to_string(), OTHER.to_string());
        };
        let pair = (rpc_service.to_string(), method.to_string());
        if let Some(seen) = self.seen.get(service)
            && seen.methods.contains(&pair)
        {
            return pair;
        }
        let seen = self.seen.entry(service.to_string()).or_default();
        if seen.methods.len() < self.max_per_service {
            seen.services.insert(pair.0.clone());
            seen.methods.insert(pair.clone());
            return pair;
        }
        // Over the cap: the method goes; the service stays while the services are bounded too.
        if seen.services.contains(rpc_service) || seen.services.len() < self.max_per_service {
            seen.services.insert(pair.0.clone());
            (pair.0, OTHER.to_string())
        } else {
            (OTHER.to_string(), OTHER.to_string())
        }
    }
}

/// `/Service/Method` (gRPC's `Path`), each part non-empty.
fn split(path: &str) -> Option<(&str, &str)> {
    if path.len() > MAX_PATH {
        return None;
    }
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{
        families::http::{
            config::HttpConfig,
            h2::{self, Connection, Side, Start, Transfer},
            record::build,
            tracker::{HttpState, Tracker},
        },
        model::{metrics::Points, names, span::SpanQueue},
    };
    use opentelemetry::trace::SpanKind;
    use periscope_common::http::{
        ConnectAddr, IO_H2, IO_H2_PREFACE, ROLE_CLIENT, ROLE_SERVER, SockOpen,
    };

    /// Python `grpcio` 1.85 server and client on one connection (see `h2/tests.rs`):
    /// SayHello OK, SayHello NOT_FOUND (trailers-only), ListFeatures (server streaming, three
    /// messages) OK, Fail INTERNAL, SayHello OK.
    const GRPC: &str = include_str!("h2/testdata/grpc_python.txt");

    /// The recording's chunks: (sent by the client, bytes).
    fn chunks() -> Vec<(bool, Vec<u8>)> {
        GRPC.lines()
            .filter_map(|line| {
                let (tag, hex) = line.split_once(' ')?;
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect();
                Some((tag == "c", bytes))
            })
            .collect()
    }

    fn decoded() -> Vec<h2::Exchange> {
        let mut c = Connection::new(Start::Beginning);
        let mut out = Vec::new();
        for (i, (client, bytes)) in chunks().iter().enumerate() {
            let side = if *client { Side::Client } else { Side::Server };
            let transfer = Transfer {
                time_ns: (i as u64 + 1) * 1_000_000,
                len: bytes.len() as u64,
                captured: bytes,
            };
            c.on_transfer(side, transfer, &mut out);
        }
        c.on_close(100_000_000, &mut out);
        out.into_iter()
            .filter_map(|o| match o {
                h2::Outcome::Exchange(e) => Some(*e),
                _ => None,
            })
            .collect()
    }

    /// Calls per (rpc.service, rpc.method, rpc.grpc.status_code, error.type) in the collected
    /// metric `name`.
    fn counts(
        metrics: &[crate::model::metrics::Metric],
        name: &str,
    ) -> Vec<((String, String, String, String), u64)> {
        let mut out: std::collections::BTreeMap<_, u64> = Default::default();
        for m in metrics.iter().filter(|m| m.name == name) {
            let Points::Histogram(_, points) = &m.points else {
                panic!("{name} is not a histogram")
            };
            for (attributes, h) in points {
                let get = |key: &str| {
                    attributes
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map_or(String::new(), |(_, v)| v.clone())
                };
                assert_eq!(get("rpc.system"), "grpc");
                let key = (
                    get("rpc.service"),
                    get("rpc.method"),
                    get("rpc.grpc.status_code"),
                    get("error.type"),
                );
                *out.entry(key).or_default() += h.count();
            }
        }
        out.into_iter().collect()
    }

    fn row(
        method: &str,
        status: &str,
        error: &str,
        n: u64,
    ) -> ((String, String, String, String), u64) {
        (
            (
                "demo.Greeter".into(),
                method.into(),
                status.into(),
                error.into(),
            ),
            n,
        )
    }

    #[test]
    fn the_recorded_connection_is_five_calls_with_their_statuses() {
        let calls: Vec<(String, Option<u32>)> = decoded()
            .iter()
            .filter(|e| is_call(e, false))
            .map(|e| {
                let c = call(e).expect("named");
                (c.path, c.status)
            })
            .collect();
        assert_eq!(
            calls,
            [
                ("/demo.Greeter/SayHello", Some(0)),
                ("/demo.Greeter/SayHello", Some(5)),
                ("/demo.Greeter/ListFeatures", Some(0)),
                ("/demo.Greeter/Fail", Some(13)),
                ("/demo.Greeter/SayHello", Some(0)),
            ]
            .map(|(p, s)| (p.to_string(), s))
        );
    }

    /// The recording as kernel records through the tracker on `role`'s side (spans to `spans`
    /// when given): the metrics collected after the connection closed.
    fn track(role: Role, spans: Option<SpanQueue>) -> Vec<crate::model::metrics::Metric> {
        let side = match role {
            Role::Server => ROLE_SERVER,
            Role::Client => ROLE_CLIENT,
        };
        let config = HttpConfig::default();
        let state = Arc::new(Mutex::new(HttpState::new(config.max_series)));
        let mut tracker = Tracker::new(config, state.clone(), spans).expect("tracker");
        let open = SockOpen {
            peer: ConnectAddr {
                family: 2,
                port: 50051,
                addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..Default::default()
            },
            local_port: 50051,
            ..Default::default()
        };
        tracker.handle(&build::open(side, 5, open));
        // What the kernel sends: the walked frames, the client's first record flagged
        // with the preface it went past.
        let sides: Vec<_> = chunks()
            .into_iter()
            .map(|(from_client, bytes)| {
                let side = if from_client {
                    Side::Client
                } else {
                    Side::Server
                };
                (side, bytes)
            })
            .collect();
        let mut preface = IO_H2_PREFACE;
        for (from, bytes, _) in h2::testenc::walked(&sides) {
            // A server reads what the client sent; a client writes it.
            let read = (from == Side::Client) == (role == Role::Server);
            let flags = IO_H2 | if from == Side::Client { preface } else { 0 };
            if from == Side::Client {
                preface = 0;
            }
            let record = build::with_io(build::io(read, 5, &bytes), |r| r.flags = flags);
            tracker.handle(&record);
        }
        tracker.handle(&build::close(side, 5, true));
        let mut out = Vec::new();
        state.lock().unwrap().collect(&mut out);
        out
    }

    /// The recording through the tracker (HTTP/2 detection, the decoder, this mapping, the
    /// aggregation), on each side: exact counts per (service, method, status), in the RPC
    /// metric and none in the HTTP one.
    #[test]
    fn the_recorded_calls_are_counted_per_method_and_status_on_both_sides() {
        for (role, metric) in [
            (Role::Server, names::RPC_SERVER_CALL_DURATION),
            (Role::Client, names::RPC_CLIENT_CALL_DURATION),
        ] {
            let out = track(role, None);
            let error = |name: &'static str| if role == Role::Client { name } else { "" };
            assert_eq!(
                counts(&out, metric),
                vec![
                    row("Fail", "13", "INTERNAL", 1),
                    row("ListFeatures", "0", "", 1),
                    row("SayHello", "0", "", 2),
                    row("SayHello", "5", error("NOT_FOUND"), 1),
                ],
                "{role:?}"
            );
            assert!(
                !out.iter()
                    .any(|m| m.name == names::HTTP_SERVER_REQUEST_DURATION
                        || m.name == names::HTTP_CLIENT_REQUEST_DURATION),
                "gRPC calls are not HTTP requests"
            );
            let attributes = out
                .iter()
                .find(|m| m.name == metric)
                .and_then(|m| match &m.points {
                    Points::Histogram(_, p) => Some(p[0].0.clone()),
                    _ => None,
                })
                .expect("a point");
            assert!(attributes.contains(&("server.port", "50051".to_string())));
            if role == Role::Client {
                assert!(attributes.iter().any(|(k, _)| *k == "server.address"));
            }
        }
    }

    /// With spans on, each recorded call is one span of its side's kind, named and attributed
    /// per the RPC conventions, and the histogram's exemplars link to them.
    #[test]
    fn the_recorded_calls_make_one_span_each_on_both_sides() {
        for (role, kind, metric) in [
            (
                Role::Server,
                SpanKind::Server,
                names::RPC_SERVER_CALL_DURATION,
            ),
            (
                Role::Client,
                SpanKind::Client,
                names::RPC_CLIENT_CALL_DURATION,
            ),
        ] {
            let (queue, mut rx) = SpanQueue::new(16, Default::default());
            let out = track(role, Some(queue));
            let mut spans = Vec::new();
            while let Ok(span) = rx.try_recv() {
                spans.push(span);
            }
            let summary: Vec<_> = spans
                .iter()
                .map(|s| {
                    let int = |key: &str| {
                        s.int_attributes
                            .iter()
                            .find(|(k, _)| *k == key)
                            .map(|(_, v)| *v)
                    };
                    let text = |key: &str| {
                        s.attributes
                            .iter()
                            .find(|(k, _)| *k == key)
                            .map(|(_, v)| v.as_str())
                    };
                    assert_eq!(s.kind, kind);
                    assert_eq!(s.parent_span_id, None, "no traceparent in the recording");
                    assert_eq!(text("rpc.system"), Some("grpc"));
                    assert_eq!(text("rpc.service"), Some("demo.Greeter"));
                    assert_eq!(int("server.port"), Some(50051));
                    assert_eq!(text("server.port"), None, "an integer only");
                    assert_eq!(text("rpc.grpc.status_code"), None, "an integer only");
                    assert_eq!(text("server.address").is_some(), role == Role::Client);
                    assert!(s.end_unix_ns >= s.start_unix_ns);
                    (
                        s.name.clone(),
                        int("rpc.grpc.status_code"),
                        text("error.type").map(str::to_string),
                        s.error,
                    )
                })
                .collect();
            let client = role == Role::Client;
            let not_found = client.then(|| "NOT_FOUND".to_string());
            assert_eq!(
                summary,
                vec![
                    ("demo.Greeter/SayHello".into(), Some(0), None, false),
                    ("demo.Greeter/SayHello".into(), Some(5), not_found, client),
                    ("demo.Greeter/ListFeatures".into(), Some(0), None, false),
                    (
                        "demo.Greeter/Fail".into(),
                        Some(13),
                        Some("INTERNAL".into()),
                        true
                    ),
                    ("demo.Greeter/SayHello".into(), Some(0), None, false),
                ],
                "{role:?}"
            );
            // Each series keeps exemplars (the latest per power of two of duration).
            let series: Vec<_> = out
                .iter()
                .filter(|m| m.name == metric)
                .flat_map(|m| match &m.points {
                    Points::Histogram(_, p) => p.iter().map(|(_, h)| h.exemplars.clone()),
                    _ => panic!("{metric} is not a histogram"),
                })
                .collect();
            assert_eq!(series.len(), 4, "{role:?}");
            assert!(!series.iter().any(Vec::is_empty), "every series has one");
            for e in series.iter().flatten() {
                assert!(
                    spans
                        .iter()
                        .any(|s| s.ids.span_id == e.span_id && s.ids.trace_id == e.trace_id),
                    "an exemplar links to its call's span"
                );
            }
        }
    }

    #[test]
    fn a_call_keeps_its_request_traceparent() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut request = GRPC_REQUEST.to_vec();
        request.push(("traceparent", parent));
        let c = call(&exchange(&request, None, End::Stream)).expect("named");
        assert_eq!(c.traceparent.as_deref(), Some(parent));
        assert_eq!(
            call(&exchange(GRPC_REQUEST, None, End::Stream))
                .unwrap()
                .traceparent,
            None
        );
    }

    fn exchange(
        request: &[(&str, &str)],
        response: Option<&[(&str, &str)]>,
        end: End,
    ) -> h2::Exchange {
        let headers = |fields: &[(&str, &str)]| {
            let mut h = h2::Headers::default();
            for (name, value) in fields {
                h.add(h2::hpack::Field {
                    name: Some(name.as_bytes()),
                    value: Some(value.as_bytes()),
                });
            }
            h
        };
        h2::Exchange {
            stream_id: 1,
            request: headers(request),
            response: response.map(headers),
            trailers: None,
            start_ns: 10,
            end_ns: 20,
            end,
        }
    }

    const GRPC_REQUEST: &[(&str, &str)] = &[
        (":method", "POST"),
        (":path", "/a.B/C"),
        ("content-type", "application/grpc+proto"),
    ];

    #[test]
    fn a_status_not_sent_is_the_grpc_mapping_or_unknown() {
        let head = Some(&[(":status", "200"), ("content-type", "application/grpc")][..]);
        let status_of =
            |response, end| call(&exchange(GRPC_REQUEST, response, end)).unwrap().status;
        // The client cancelled: CANCELLED on both sides.
        let cancel = End::Reset {
            by: Side::Client,
            code: 8,
        };
        assert_eq!(status_of(None, cancel), Some(1));
        assert_eq!(
            status_of(
                head,
                End::Reset {
                    by: Side::Server,
                    code: 7
                }
            ),
            Some(14)
        );
        assert_eq!(status_of(None, End::GoAway { code: 0 }), Some(14));
        // A proxy's 503 without grpc-status.
        assert_eq!(
            status_of(Some(&[(":status", "503")]), End::Stream),
            Some(14)
        );
        assert_eq!(
            status_of(Some(&[(":status", "404")]), End::Stream),
            Some(12)
        );
        // Ended without trailers, or with a response head that could not be decoded: unknown.
        assert_eq!(status_of(head, End::Closed), None);
        assert_eq!(status_of(None, End::Closed), None);
        let mut undecoded = exchange(GRPC_REQUEST, None, End::Stream);
        undecoded.response = Some(h2::Headers::undecoded());
        assert_eq!(call(&undecoded).unwrap().status, None);
        // Unknown status: no status attribute, no error.type.
        let unknown = CallAttributes {
            service: "a.B".into(),
            method: "C".into(),
            status: None,
            error: error_type(Role::Client, None),
            port: None,
            address: None,
        };
        assert_eq!(
            unknown.to_attributes(),
            vec![
                ("rpc.method", "C".to_string()),
                ("rpc.service", "a.B".to_string()),
                ("rpc.system", "grpc".to_string()),
            ]
        );
    }

    #[test]
    fn only_grpc_content_types_are_calls() {
        assert!(is_call(&exchange(GRPC_REQUEST, None, End::Stream), false));
        let plain = [
            (":method", "GET"),
            (":path", "/a"),
            ("content-type", "text/html"),
        ];
        assert!(!is_call(&exchange(&plain, None, End::Stream), true));
        let mut unknown = exchange(&[], None, End::Stream);
        unknown.request = h2::Headers::undecoded();
        assert!(
            !is_call(&unknown, false),
            "not known to be gRPC: stays HTTP"
        );
    }

    #[test]
    fn errors_are_per_side() {
        assert_eq!(error_type(Role::Server, Some(5)), None);
        assert_eq!(
            error_type(Role::Client, Some(5)).as_deref(),
            Some("NOT_FOUND")
        );
        assert_eq!(
            error_type(Role::Server, Some(13)).as_deref(),
            Some("INTERNAL")
        );
        assert_eq!(
            error_type(Role::Server, Some(4)).as_deref(),
            Some("DEADLINE_EXCEEDED")
        );
        assert_eq!(error_type(Role::Server, Some(0)), None);
        assert_eq!(error_type(Role::Client, Some(0)), None);
        assert_eq!(error_type(Role::Client, Some(99)).as_deref(), Some("99"));
    }

    #[test]
    fn methods_are_bounded_per_service_like_routes() {
        let mut m = Methods::new(2);
        let name = |m: &mut Methods, s: &str, p: &str| {
            let (a, b) = m.name(s, p);
            format!("{a} {b}")
        };
        assert_eq!(name(&mut m, "s", "/a.S/One"), "a.S One");
        assert_eq!(name(&mut m, "s", "/a.S/Two"), "a.S Two");
        assert_eq!(name(&mut m, "s", "/a.S/Three"), "a.S _OTHER");
        // Services are bounded too: a second one keeps its name, a third does not.
        assert_eq!(name(&mut m, "s", "/a.T/One"), "a.T _OTHER");
        assert_eq!(name(&mut m, "s", "/a.U/One"), "_OTHER _OTHER");
        assert_eq!(name(&mut m, "s", "/a.S/One"), "a.S One", "known pairs stay");
        assert_eq!(name(&mut m, "t", "/a.T/One"), "a.T One", "another budget");
        for bad in [
            "",
            "/",
            "/a.S",
            "/a.S/",
            "//M",
            "/a/b/c",
            &format!("/a/{}", "x".repeat(600)),
        ] {
            assert_eq!(name(&mut m, "u", bad), "_OTHER _OTHER", "{bad:?}");
        }
        // However many methods a hostile client calls, a service holds a bounded set of names.
        let mut m = Methods::new(3);
        let distinct: HashSet<(String, String)> = (0..1000)
            .map(|i| m.name("s", &format!("/svc{}.S/M{i}", i % 7)))
            .collect();
        assert!(distinct.len() <= 3 + 3 + 1, "{}", distinct.len());
    }
}
