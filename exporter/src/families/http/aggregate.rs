//! HTTP RED metrics: one duration histogram per (process, side, method, route, status, ...),
//! with the same 4.4%-wide exponential buckets the kernel histograms use; and gRPC calls
//! (see [`super::grpc`]) the same way in the RPC metrics, per (process, side, service, method,
//! status, ...). The number of series (HTTP and RPC together) is capped; beyond the cap new
//! series are counted in one overflow series per metric marked `otel.metric.overflow=true`, as
//! the OTel SDK specification prescribes.
//!
//! Each series keeps exemplars of its sampled spans: the latest per power of two of duration,
//! so the slow buckets keep a link to a slow trace however many fast requests follow.

use crate::model::names;
use std::{hash::Hash, sync::Arc, time::Instant};

use foldhash::{HashMap, HashMapExt};
use periscope_common::hist::{index_of_slot, ns_to_units, slot_of};

use super::{connection::Role, grpc::CallAttributes};
use crate::{
    model::histogram::{Exemplar, Histogram, ValueUnit},
    model::metrics::{self, Attributes, Metric},
    model::resource::ProcessResource,
};

pub use crate::process::EXITED_SERIES_TTL;

/// A series' process, by identity.
use crate::model::resource::ResourceId as ResourceKey;

/// The points of one metric.
type Points = Vec<(Attributes, Histogram)>;

/// The attributes of one request's series, typed: a request whose series exists already is
/// counted without building (allocating, sorting, then freeing) its attribute strings, which
/// was most of the tracker's cost per request. [`RequestAttributes::to_attributes`] makes the
/// exported form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestAttributes {
    /// A known method or `_OTHER` (see `normalize_method`).
    pub method: &'static str,
    pub status: u16,
    pub route: String,
    /// `network.protocol.version`: "1.0" or "1.1".
    pub version: &'static str,
    /// `error.type` (the status) is set: 5xx for servers, >= 400 for clients.
    pub error: bool,
    pub port: Option<u16>,
    /// `server.address`, for clients.
    pub address: Option<String>,
}

/// [`RequestAttributes`] borrowed: what an exchange is counted under. Its series is found
/// without allocating; the owned form is made only for a new series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey<'a> {
    pub method: &'static str,
    pub status: u16,
    pub route: &'a str,
    pub version: &'static str,
    pub error: bool,
    pub port: Option<u16>,
    pub address: Option<&'a str>,
}

impl RequestAttributes {
    /// The borrowed form (hashed and compared as the series key).
    pub fn as_key(&self) -> RequestKey<'_> {
        RequestKey {
            method: self.method,
            status: self.status,
            route: &self.route,
            version: self.version,
            error: self.error,
            port: self.port,
            address: self.address.as_deref(),
        }
    }

    /// The OTel attributes, sorted by key.
    pub fn to_attributes(&self) -> Attributes {
        self.as_key().to_attributes()
    }
}

impl RequestKey<'_> {
    pub fn to_owned(&self) -> RequestAttributes {
        RequestAttributes {
            method: self.method,
            status: self.status,
            route: self.route.to_string(),
            version: self.version,
            error: self.error,
            port: self.port,
            address: self.address.map(str::to_string),
        }
    }

    /// The OTel attributes, sorted by key.
    pub fn to_attributes(&self) -> Attributes {
        let mut out = vec![
            ("http.request.method", self.method.to_string()),
            ("http.response.status_code", self.status.to_string()),
        ];
        // Empty: not known (an HTTP/2 path that could not be decoded); left out, as OTel asks.
        if !self.route.is_empty() {
            out.push(("http.route", self.route.to_string()));
        }
        out.push(("network.protocol.version", self.version.to_string()));
        if self.error {
            out.push(("error.type", self.status.to_string()));
        }
        if let Some(port) = self.port {
            out.push(("server.port", port.to_string()));
        }
        if let Some(address) = self.address {
            out.push(("server.address", address.to_string()));
        }
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

/// Which metric a series belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// `http.{server,client}.request.duration`
    Http,
    /// `rpc.{server,client}.call.duration`
    Rpc,
}

/// A series' attributes, typed.
#[derive(Clone, Debug)]
enum Series {
    Http(RequestAttributes),
    Rpc(CallAttributes),
}

impl Series {
    fn to_attributes(&self) -> Attributes {
        match self {
            Self::Http(request) => request.to_attributes(),
            Self::Rpc(call) => call.to_attributes(),
        }
    }

    fn view(&self) -> SeriesView<'_> {
        match self {
            Self::Http(request) => SeriesView::Http(request.as_key()),
            Self::Rpc(call) => SeriesView::Rpc(call),
        }
    }
}

/// A series' attributes, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SeriesView<'a> {
    Http(RequestKey<'a>),
    Rpc(&'a CallAttributes),
}

impl SeriesView<'_> {
    fn kind(&self) -> Kind {
        match self {
            Self::Http(_) => Kind::Http,
            Self::Rpc(_) => Kind::Rpc,
        }
    }

    fn to_owned(self) -> Series {
        match self {
            Self::Http(request) => Series::Http(request.to_owned()),
            Self::Rpc(call) => Series::Rpc(call.clone()),
        }
    }
}

#[derive(Clone, Debug)]
struct SeriesKey {
    /// `None`: the overflow series.
    resource: Option<ResourceKey>,
    role: Role,
    kind: Kind,
    /// `None`: the overflow series.
    series: Option<Series>,
}

/// A [`SeriesKey`] borrowed: hashed and compared the same, so that a series is found without
/// making its key (cloning the resource, allocating the route).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct KeyView<'a> {
    /// The resource's identity (its address), as [`ResourceKey`] hashes and compares it.
    resource: Option<*const ProcessResource>,
    role: Role,
    kind: Kind,
    series: Option<SeriesView<'a>>,
}

impl SeriesKey {
    fn view(&self) -> KeyView<'_> {
        KeyView {
            resource: self.resource.as_ref().map(|r| Arc::as_ptr(&r.0)),
            role: self.role,
            kind: self.kind,
            series: self.series.as_ref().map(Series::view),
        }
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for SeriesKey {}

impl Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.view().hash(state);
    }
}

impl hashbrown::Equivalent<SeriesKey> for KeyView<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        *self == key.view()
    }
}

const OVERFLOW: (&str, &str) = ("otel.metric.overflow", "true");

#[derive(Debug)]
pub struct HttpMetrics {
    series: hashbrown::HashMap<SeriesKey, Histogram, foldhash::fast::RandomState>,
    max_series: usize,
    exited: HashMap<ResourceKey, Instant>,
}

impl HttpMetrics {
    pub fn new(max_series: usize) -> Self {
        Self {
            series: hashbrown::HashMap::default(),
            max_series,
            exited: HashMap::new(),
        }
    }

    /// One HTTP exchange (its exemplar: its span, when sampled).
    pub fn record(
        &mut self,
        resource: &Arc<ProcessResource>,
        role: Role,
        request: RequestKey<'_>,
        duration_ns: u64,
        exemplar: Option<Exemplar>,
    ) {
        self.add(
            resource,
            role,
            SeriesView::Http(request),
            duration_ns,
            exemplar,
        );
    }

    /// One gRPC call (its exemplar: its span, when sampled).
    pub fn record_call(
        &mut self,
        resource: &Arc<ProcessResource>,
        role: Role,
        call: CallAttributes,
        duration_ns: u64,
        exemplar: Option<Exemplar>,
    ) {
        self.add(
            resource,
            role,
            SeriesView::Rpc(&call),
            duration_ns,
            exemplar,
        );
    }

    /// Counts a value in its series, found by the borrowed key: the owned key (the resource's
    /// `Arc`, the attribute strings) is made only for a series seen for the first time.
    fn add(
        &mut self,
        resource: &Arc<ProcessResource>,
        role: Role,
        series: SeriesView<'_>,
        duration_ns: u64,
        exemplar: Option<Exemplar>,
    ) {
        let kind = series.kind();
        let view = KeyView {
            resource: Some(Arc::as_ptr(resource)),
            role,
            kind,
            series: Some(series),
        };
        let h = if let Some(h) = self.series.get_mut(&view) {
            h
        } else {
            let key = if self.series.len() < self.max_series {
                SeriesKey {
                    resource: Some(ResourceKey(resource.clone())),
                    role,
                    kind,
                    series: Some(series.to_owned()),
                }
            } else {
                SeriesKey {
                    resource: None,
                    role,
                    kind,
                    series: None,
                }
            };
            self.series.entry(key).or_default()
        };
        let units = ns_to_units(duration_ns);
        *h.counts.entry(slot_of(units)).or_default() += 1;
        h.sum = h.sum.wrapping_add(units);
        if let Some(exemplar) = exemplar {
            keep_exemplar(&mut h.exemplars, exemplar);
        }
    }

    /// Marks a process as gone; its series go after [`EXITED_SERIES_TTL`].
    pub fn process_exited(&mut self, resource: &Arc<ProcessResource>) {
        self.exited
            .insert(ResourceKey(resource.clone()), Instant::now());
    }

    /// Removes series of processes that exited more than the TTL ago.
    pub fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<ResourceKey> = self
            .exited
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > *EXITED_SERIES_TTL)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.exited.remove(&key);
            self.series.retain(|s, _| s.resource.as_ref() != Some(&key));
        }
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// One metric per (process, side, HTTP or RPC), cumulative.
    pub fn collect(&self, out: &mut Vec<Metric>) {
        let mut grouped: HashMap<(Option<ResourceKey>, Role, Kind), Points> = HashMap::new();
        for (key, h) in &self.series {
            grouped
                .entry((key.resource.clone(), key.role, key.kind))
                .or_default()
                .push((
                    key.series.as_ref().map_or_else(
                        || vec![(OVERFLOW.0, OVERFLOW.1.to_string())],
                        Series::to_attributes,
                    ),
                    h.clone(),
                ));
        }
        for ((resource, role, kind), mut points) in grouped {
            points.sort_by(|a, b| a.0.cmp(&b.0));
            let (name, description) = match (kind, role) {
                (Kind::Http, Role::Server) => (
                    names::HTTP_SERVER_REQUEST_DURATION,
                    "Duration of HTTP server requests, measured from the kernel.",
                ),
                (Kind::Http, Role::Client) => (
                    names::HTTP_CLIENT_REQUEST_DURATION,
                    "Duration of HTTP client requests, measured from the kernel.",
                ),
                (Kind::Rpc, Role::Server) => (
                    names::RPC_SERVER_CALL_DURATION,
                    "Duration of gRPC server calls, measured from the kernel.",
                ),
                (Kind::Rpc, Role::Client) => (
                    names::RPC_CLIENT_CALL_DURATION,
                    "Duration of gRPC client calls, measured from the kernel.",
                ),
            };
            out.push(Metric {
                name,
                description,
                unit: "s",
                points: metrics::Points::Histogram(ValueUnit::Seconds, points),
                resource: resource.map(|r| r.0),
            });
        }
    }
}

/// Kernel buckets per exemplar band: 16 is one power of two, 2x in duration.
const SLOTS_PER_EXEMPLAR: i32 = periscope_common::hist::SUBBUCKETS as i32;

/// Keeps `new` as the latest exemplar of its power-of-two band (at most ~40 bands, in
/// practice a handful per series): every classic bucket wider than 2x, whatever the layout,
/// finds a recent exemplar of its own values.
fn keep_exemplar(kept: &mut Vec<Exemplar>, new: Exemplar) {
    let band = |e: &Exemplar| index_of_slot(slot_of(e.value)).div_euclid(SLOTS_PER_EXEMPLAR);
    match kept.iter_mut().find(|e| band(e) == band(&new)) {
        Some(old) => *old = new,
        None => kept.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str) -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            service_name: name.into(),
            attributes: vec![("service.name".into(), name.into())],
        })
    }

    fn get(route: &str) -> RequestAttributes {
        RequestAttributes {
            method: "GET",
            status: 200,
            route: route.into(),
            version: "1.1",
            error: false,
            port: Some(8080),
            address: None,
        }
    }

    #[test]
    fn attributes_are_the_semantic_conventions_sorted() {
        let mut client_error = get("/users/{id}");
        client_error.status = 404;
        client_error.error = true;
        client_error.address = Some("api.example".into());
        let owned = |pairs: &[(&'static str, &str)]| -> Attributes {
            pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
        };
        assert_eq!(
            client_error.to_attributes(),
            owned(&[
                ("error.type", "404"),
                ("http.request.method", "GET"),
                ("http.response.status_code", "404"),
                ("http.route", "/users/{id}"),
                ("network.protocol.version", "1.1"),
                ("server.address", "api.example"),
                ("server.port", "8080"),
            ])
        );
        let mut anonymous = get("/");
        anonymous.port = None;
        assert_eq!(anonymous.to_attributes().len(), 4);
        // A path that could not be decoded: no `http.route` at all, rather than a made-up one.
        let unknown = get("");
        assert!(
            !unknown
                .to_attributes()
                .iter()
                .any(|(k, _)| *k == "http.route")
        );
    }

    #[test]
    fn overflow_beyond_the_cap() {
        let mut m = HttpMetrics::new(2);
        let r = resource("a");
        for route in ["/1", "/2", "/3", "/4", "/1"] {
            m.record(&r, Role::Server, get(route).as_key(), 1_000_000, None);
        }
        let mut out = Vec::new();
        m.collect(&mut out);
        let total: u64 = out
            .iter()
            .flat_map(|m| match &m.points {
                metrics::Points::Histogram(_, p) => {
                    p.iter().map(|(_, h)| h.count()).collect::<Vec<_>>()
                }
                _ => vec![],
            })
            .sum();
        assert_eq!(total, 5);
        let overflow = out.iter().find(|m| m.resource.is_none()).unwrap();
        match &overflow.points {
            metrics::Points::Histogram(_, p) => {
                assert_eq!(p[0].0, vec![("otel.metric.overflow", "true".to_string())]);
                assert_eq!(p[0].1.count(), 2);
            }
            _ => panic!(),
        }
    }

    fn call(method: &str) -> CallAttributes {
        CallAttributes {
            service: "demo.Greeter".into(),
            method: method.into(),
            status: Some(0),
            error: None,
            port: Some(50051),
            address: None,
        }
    }

    /// The cap is shared by HTTP and RPC series; each metric keeps its own overflow series.
    #[test]
    fn rpc_calls_are_their_own_metric_under_the_same_cap() {
        let mut m = HttpMetrics::new(2);
        let r = resource("a");
        m.record(&r, Role::Server, get("/1").as_key(), 1_000_000, None);
        m.record_call(&r, Role::Server, call("SayHello"), 2_000_000, None);
        m.record_call(&r, Role::Server, call("SayHello"), 2_000_000, None);
        m.record_call(&r, Role::Server, call("Other"), 2_000_000, None);
        m.record(&r, Role::Server, get("/2").as_key(), 1_000_000, None);
        let mut out = Vec::new();
        m.collect(&mut out);
        type Summary = (&'static str, bool, Vec<(Attributes, u64)>);
        let mut got: Vec<Summary> = out
            .iter()
            .map(|m| {
                let metrics::Points::Histogram(_, points) = &m.points else {
                    panic!()
                };
                let points = points.iter().map(|(a, h)| (a.clone(), h.count())).collect();
                (m.name, m.resource.is_some(), points)
            })
            .collect();
        got.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let overflow = vec![(vec![("otel.metric.overflow", "true".to_string())], 1)];
        assert_eq!(
            got,
            vec![
                (names::HTTP_SERVER_REQUEST_DURATION, false, overflow.clone()),
                (
                    names::HTTP_SERVER_REQUEST_DURATION,
                    true,
                    vec![(get("/1").to_attributes(), 1)]
                ),
                (names::RPC_SERVER_CALL_DURATION, false, overflow),
                (
                    names::RPC_SERVER_CALL_DURATION,
                    true,
                    vec![(call("SayHello").to_attributes(), 2)]
                ),
            ]
        );
    }

    #[test]
    fn exemplars_keep_the_latest_per_power_of_two() {
        let mut m = HttpMetrics::new(10);
        let r = resource("a");
        let exemplar = |n: u8, ms: u64| Exemplar {
            trace_id: [n; 16],
            span_id: [n; 8],
            value: ns_to_units(ms * 1_000_000),
            time_unix_ns: u64::from(n),
        };
        for (n, ms) in [(1, 40), (2, 1), (3, 1), (4, 45), (5, 3)] {
            m.record(
                &r,
                Role::Server,
                get("/x").as_key(),
                ms * 1_000_000,
                Some(exemplar(n, ms)),
            );
        }
        m.record(&r, Role::Server, get("/x").as_key(), 42_000_000, None);
        let mut out = Vec::new();
        m.collect(&mut out);
        let metrics::Points::Histogram(_, points) = &out[0].points else {
            panic!()
        };
        let mut kept: Vec<u8> = points[0]
            .1
            .exemplars
            .iter()
            .map(|e| e.trace_id[0])
            .collect();
        kept.sort_unstable();
        // 40 and 45 ms share (2^-5, 2^-4] s: the later one stays; 1 ms and 3 ms bands differ.
        assert_eq!(kept, vec![3, 4, 5]);
        assert_eq!(points[0].1.count(), 6);
    }
}
