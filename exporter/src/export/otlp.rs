//! OTLP metrics export over gRPC or HTTP/protobuf, built on the official protobuf types
//! (opentelemetry-proto): the OTel SDK cannot take histograms that were aggregated in the
//! kernel, and replaying events into it would cost O(events).
//!
//! Explicit-bucket histograms carry the metric's fixed layout (`layout.rs`): the same
//! `explicit_bounds` on every data point, so a collector or backend can add them up. Exponential
//! histograms carry the kernel's scale-4 buckets, lossless. HTTP duration points carry
//! exemplars of sampled spans.
//!
//! Temporality is cumulative, so a failed export loses nothing: the next one carries every count.
//! Retryable failures (gRPC UNAVAILABLE and friends, RESOURCE_EXHAUSTED with RetryInfo, HTTP
//! 429/502/503/504, connection errors) are retried with exponential backoff and jitter,
//! honouring Retry-After and RetryInfo, until the next export is due; then the newer snapshot replaces the old one, so memory stays bounded.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
        profiles::v1development::{
            ExportProfilesServiceRequest, profiles_service_client::ProfilesServiceClient,
        },
        trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Exemplar as OtlpExemplar, ExponentialHistogram,
        ExponentialHistogramDataPoint, Gauge, Histogram as OtlpHistogram, HistogramDataPoint,
        Metric as OtlpMetric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar,
        exponential_histogram_data_point::Buckets, metric, number_data_point,
    },
    resource::v1::Resource as OtlpResource,
};
use prost::Message;
use rand::Rng;
use tokio::sync::watch;

use crate::{
    config::{HistogramAggregation, OtlpConfig, OtlpProtocol, Temporality},
    export::delta::{Baseline, Deltas},
    model::histogram::{Exemplar, ValueUnit},
    model::layout::Layouts,
    model::metrics::{Metric, Points, Resource},
    telemetry::Telemetry,
};

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
    }
}

/// A process's resource, as OTLP carries it.
pub(crate) fn process_resource(resource: &crate::process::ProcessResource) -> OtlpResource {
    OtlpResource {
        attributes: resource
            .attributes
            .iter()
            .map(|(k, v)| string_attr(k, v))
            .collect(),
        ..Default::default()
    }
}

/// The instrumentation scope `name` at Periscope's version.
pub(crate) fn scope(name: &str) -> InstrumentationScope {
    InstrumentationScope {
        name: name.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

fn attrs(attributes: &[(&'static str, String)]) -> Vec<KeyValue> {
    attributes.iter().map(|(k, v)| string_attr(k, v)).collect()
}

fn exemplars(exemplars: &[Exemplar], unit: ValueUnit) -> Vec<OtlpExemplar> {
    exemplars
        .iter()
        .map(|e| OtlpExemplar {
            time_unix_nano: e.time_unix_ns,
            span_id: e.span_id.to_vec(),
            trace_id: e.trace_id.to_vec(),
            value: Some(exemplar::Value::AsDouble(e.value as f64 * unit.scale())),
            ..Default::default()
        })
        .collect()
}

/// Builds the export request for one snapshot.
/// Points of counters and histograms run from `start` (the daemon's start when cumulative, the
/// last accepted export when delta) to `now`.
pub fn build_request(
    resource: &Resource,
    layouts: &Layouts,
    metrics: &[Metric],
    start: SystemTime,
    now: SystemTime,
    aggregation: HistogramAggregation,
    temporality: Temporality,
) -> ExportMetricsServiceRequest {
    let (start, now) = (unix_nanos(start), unix_nanos(now));
    let cumulative = match temporality {
        Temporality::Cumulative => AggregationTemporality::Cumulative,
        Temporality::Delta => AggregationTemporality::Delta,
    } as i32;
    let converted: Vec<OtlpMetric> = metrics
        .iter()
        .map(|m| {
            let data = match &m.points {
                Points::Histogram(unit, points) => match aggregation {
                    HistogramAggregation::ExplicitBucketHistogram => {
                        metric::Data::Histogram(OtlpHistogram {
                            aggregation_temporality: cumulative,
                            data_points: points
                                .iter()
                                .map(|(a, h)| {
                                    let layout = layouts.of(m.name);
                                    HistogramDataPoint {
                                        attributes: attrs(a),
                                        start_time_unix_nano: start,
                                        time_unix_nano: now,
                                        count: h.count(),
                                        sum: Some(h.sum_in(*unit)),
                                        bucket_counts: h.classic(layout, *unit).counts,
                                        explicit_bounds: layout.bounds().to_vec(),
                                        exemplars: exemplars(&h.exemplars, *unit),
                                        ..Default::default()
                                    }
                                })
                                .collect(),
                        })
                    }
                    HistogramAggregation::Base2ExponentialBucketHistogram => {
                        metric::Data::ExponentialHistogram(ExponentialHistogram {
                            aggregation_temporality: cumulative,
                            data_points: points
                                .iter()
                                .map(|(a, h)| {
                                    let e = h.exponential(*unit);
                                    ExponentialHistogramDataPoint {
                                        attributes: attrs(a),
                                        start_time_unix_nano: start,
                                        time_unix_nano: now,
                                        count: h.count(),
                                        sum: Some(h.sum_in(*unit)),
                                        scale: e.scale,
                                        zero_count: e.zero_count,
                                        positive: Some(Buckets {
                                            offset: e.offset,
                                            bucket_counts: e.counts,
                                        }),
                                        exemplars: exemplars(&h.exemplars, *unit),
                                        ..Default::default()
                                    }
                                })
                                .collect(),
                        })
                    }
                },
                Points::Counter(points) => metric::Data::Sum(Sum {
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                    data_points: number_points(points, start, now),
                }),
                Points::Gauge(points) => metric::Data::Gauge(Gauge {
                    data_points: number_points(points, start, now),
                }),
            };
            OtlpMetric {
                name: m.name.to_string(),
                description: m.description.to_string(),
                unit: m.unit.to_string(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    // One ResourceMetrics per resource: the agent's own, then each observed process's.
    let mut groups: Vec<(Vec<KeyValue>, Vec<OtlpMetric>)> = Vec::new();
    let mut index: std::collections::HashMap<*const crate::process::ProcessResource, usize> =
        std::collections::HashMap::new();
    let own: Vec<KeyValue> = resource
        .attributes
        .iter()
        .map(|(k, v)| string_attr(k, v))
        .collect();
    groups.push((own, Vec::new()));
    for (m, otlp) in metrics.iter().zip(converted) {
        let slot = match &m.resource {
            None => 0,
            Some(r) => *index.entry(Arc::as_ptr(r)).or_insert_with(|| {
                let attrs = r
                    .attributes
                    .iter()
                    .map(|(k, v)| string_attr(k, v))
                    .collect();
                groups.push((attrs, Vec::new()));
                groups.len() - 1
            }),
        };
        groups[slot].1.push(otlp);
    }
    ExportMetricsServiceRequest {
        resource_metrics: groups
            .into_iter()
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|(attributes, metrics)| ResourceMetrics {
                resource: Some(OtlpResource {
                    attributes,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope("periscope")),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn number_points(
    points: &[(Vec<(&'static str, String)>, f64)],
    start: u64,
    now: u64,
) -> Vec<NumberDataPoint> {
    points
        .iter()
        .map(|(a, v)| NumberDataPoint {
            attributes: attrs(a),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsDouble(*v)),
            ..Default::default()
        })
        .collect()
}

/// Why one send failed, and whether (and when) to try again.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    pub retryable: bool,
    pub retry_after: Option<Duration>,
}

enum Transport {
    Grpc(tonic::transport::Channel),
    Http {
        client: reqwest::Client,
        /// Endpoint without the `/v1/<signal>` path.
        base: String,
    },
}

/// One OTLP destination, shared by the metrics and the traces exporters.
#[derive(Clone)]
pub struct OtlpClient {
    transport: std::sync::Arc<Transport>,
    headers: std::collections::BTreeMap<String, String>,
    pub endpoint: String,
}

/// A PEM file of the TLS settings, read at start so a wrong path fails loudly.
fn read_pem(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("OTLP TLS {what} {}: {e}", path.display()))
}

/// The client's certificate and key (mutual TLS), when both are configured.
fn client_identity(config: &OtlpConfig) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    match (&config.client_certificate, &config.client_key) {
        (Some(cert), Some(key)) => Ok(Some((
            read_pem("client certificate", cert)?,
            read_pem("client key", key)?,
        ))),
        (None, None) => Ok(None),
        _ => anyhow::bail!(
            "OTLP mutual TLS needs both a client certificate and a client key \
             (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)"
        ),
    }
}

/// gRPC over TLS: the system's roots, plus the configured CA, plus a client identity.
fn grpc_tls(config: &OtlpConfig) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &config.certificate {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read_pem(
            "CA certificate",
            ca,
        )?));
    }
    if let Some((cert, key)) = client_identity(config)? {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// HTTP over TLS (for `https://` endpoints): the same roots and identity.
fn http_tls(
    mut builder: reqwest::ClientBuilder,
    config: &OtlpConfig,
) -> anyhow::Result<reqwest::ClientBuilder> {
    if let Some(ca) = &config.certificate {
        let pem = read_pem("CA certificate", ca)?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("OTLP TLS CA certificate {}: {e}", ca.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((mut cert, key)) = client_identity(config)? {
        cert.extend_from_slice(&key);
        builder = builder.identity(
            reqwest::Identity::from_pem(&cert)
                .map_err(|e| anyhow::anyhow!("OTLP TLS client identity: {e}"))?,
        );
    }
    Ok(builder)
}

pub struct OtlpExporter {
    client: OtlpClient,
    config: OtlpConfig,
    endpoint: String,
    /// What the collector has accepted (delta temporality only).
    baseline: Baseline,
}

impl OtlpClient {
    pub fn new(config: &OtlpConfig) -> anyhow::Result<Self> {
        let endpoint = config
            .endpoint
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no OTLP endpoint configured"))?;
        let transport = match config.protocol {
            OtlpProtocol::Grpc => {
                let mut channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .map_err(|e| anyhow::anyhow!("invalid OTLP gRPC endpoint {endpoint:?}: {e}"))?
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout);
                if endpoint.starts_with("https://") {
                    channel = channel
                        .tls_config(grpc_tls(config)?)
                        .map_err(|e| anyhow::anyhow!("OTLP gRPC TLS for {endpoint}: {e}"))?;
                }
                let channel = channel.connect_lazy();
                Transport::Grpc(channel)
            }
            OtlpProtocol::HttpProtobuf => {
                let base = endpoint.trim_end_matches('/');
                let base = base
                    .strip_suffix("/v1/metrics")
                    .or_else(|| base.strip_suffix("/v1/traces"))
                    .or_else(|| base.strip_suffix("/v1development/profiles"))
                    .unwrap_or(base)
                    .to_string();
                let client = http_tls(reqwest::Client::builder().timeout(config.timeout), config)?
                    .build()
                    .map_err(|e| anyhow::anyhow!("building the OTLP HTTP client: {e}"))?;
                Transport::Http { client, base }
            }
        };
        Ok(Self {
            transport: std::sync::Arc::new(transport),
            headers: config.headers.clone(),
            endpoint,
        })
    }

    fn grpc_request<M>(&self, message: M) -> tonic::Request<M> {
        let mut req = tonic::Request::new(message);
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                k.parse::<tonic::metadata::MetadataKey<_>>(),
                v.parse::<tonic::metadata::MetadataValue<_>>(),
            ) {
                req.metadata_mut().insert(k, v);
            }
        }
        req
    }

    /// Sends one request of any signal: to its gRPC service, or POSTed as protobuf to its
    /// HTTP path. A partial success is logged and never retried, per the OTLP specification.
    pub async fn send<S: Signal>(&self, request: &S) -> Result<(), SendError> {
        match &*self.transport {
            Transport::Grpc(channel) => {
                let request = self.grpc_request(request.clone());
                match S::export(channel.clone(), request).await {
                    Ok(rejected) => {
                        warn_rejected(S::ITEMS, rejected);
                        Ok(())
                    }
                    Err(status) => Err(grpc_error(&status)),
                }
            }
            Transport::Http { client, base } => {
                let url = format!("{base}{}", S::HTTP_PATH);
                self.post(client, &url, request.encode_to_vec()).await
            }
        }
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        let mut builder = client
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(body);
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        match builder.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                Err(SendError {
                    message: format!("HTTP {status}"),
                    retryable: matches!(status, 429 | 502 | 503 | 504),
                    retry_after,
                })
            }
            Err(e) => Err(SendError {
                message: format!("request failed: {e}"),
                retryable: true,
                retry_after: None,
            }),
        }
    }
}

/// A partial success: what the collector rejected, and its message.
pub struct Rejected {
    pub count: i64,
    pub message: String,
}

/// What tells one OTLP signal's send from another's: the request, the gRPC service that takes
/// it, the HTTP path, and what its partial success counts.
pub trait Signal: Message + Clone + Send + Sync + 'static {
    /// What a partial success rejects, in its warning: `data points`, `spans`, `profiles`.
    const ITEMS: &'static str;
    /// The path under the endpoint that takes it over HTTP.
    const HTTP_PATH: &'static str;

    /// The service's `Export` call; its partial success, if it had one.
    fn export(
        channel: tonic::transport::Channel,
        request: tonic::Request<Self>,
    ) -> impl Future<Output = Result<Option<Rejected>, tonic::Status>> + Send;
}

/// The [`Signal`] of one OTLP service: its request, its gRPC client, its HTTP path, what its
/// partial success rejects and the field that counts them.
macro_rules! signal {
    ($request:ty, $client:ident, $path:literal, $items:literal, $rejected:ident) => {
        impl Signal for $request {
            const ITEMS: &'static str = $items;
            const HTTP_PATH: &'static str = $path;

            async fn export(
                channel: tonic::transport::Channel,
                request: tonic::Request<Self>,
            ) -> Result<Option<Rejected>, tonic::Status> {
                let response = $client::new(channel).export(request).await?;
                Ok(response.into_inner().partial_success.map(|p| Rejected {
                    count: p.$rejected,
                    message: p.error_message,
                }))
            }
        }
    };
}

signal!(
    ExportMetricsServiceRequest,
    MetricsServiceClient,
    "/v1/metrics",
    "data points",
    rejected_data_points
);
signal!(
    ExportTraceServiceRequest,
    TraceServiceClient,
    "/v1/traces",
    "spans",
    rejected_spans
);
// Profiles (`v1development`): the HTTP path collectors with profiles support serve.
signal!(
    ExportProfilesServiceRequest,
    ProfilesServiceClient,
    "/v1development/profiles",
    "profiles",
    rejected_profiles
);

/// Warns of a partial success that rejected anything.
fn warn_rejected(items: &str, rejected: Option<Rejected>) {
    if let Some(rejected) = rejected.filter(|r| r.count > 0) {
        tracing::warn!(
            rejected = rejected.count,
            message = %rejected.message,
            "collector rejected some {items}"
        );
    }
}

impl OtlpExporter {
    pub fn new(config: &OtlpConfig) -> anyhow::Result<Self> {
        let client = OtlpClient::new(config)?;
        Ok(Self {
            endpoint: client.endpoint.clone(),
            client,
            config: config.clone(),
            baseline: Baseline::default(),
        })
    }

    /// Sends `request`, retrying retryable failures with backoff until `deadline`.
    async fn send_with_retry(
        &mut self,
        request: &ExportMetricsServiceRequest,
        deadline: Instant,
        telemetry: &Telemetry,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.client.send(request).await {
                Ok(()) => {
                    telemetry.export.succeeded.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    let jitter = rand::rng().random_range(0.5..1.5);
                    let wait = e.retry_after.unwrap_or(backoff.mul_f64(jitter));
                    if !e.retryable || Instant::now() + wait >= deadline || *shutdown.borrow() {
                        telemetry.export.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            error = %e.message,
                            retryable = e.retryable,
                            "OTLP export failed; the next export carries the same cumulative counts"
                        );
                        return false;
                    }
                    telemetry.export.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e.message, wait_ms = wait.as_millis() as u64, "retrying OTLP export");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Exports every `interval` until shutdown, then once more (the final flush).
    pub async fn run(mut self, telemetry: Arc<Telemetry>, mut shutdown: watch::Receiver<bool>) {
        let interval = self.config.interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // `wait_for` looks at the current value: a stop already seen by a retry's backoff
            // below (which marks it seen) still ends the loop, with the final flush.
            let stop_now = tokio::select! {
                _ = ticker.tick() => false,
                _ = shutdown.wait_for(|stop| *stop) => true,
            };
            let last = stop_now || *shutdown.borrow();
            let request = self.snapshot_request(&telemetry).await;
            let deadline = if last {
                Instant::now() + self.config.timeout
            } else {
                Instant::now() + interval
            };
            // The final flush retries until its deadline regardless of the (already sent)
            // shutdown signal; the sender is kept alive so the backoff sleeps really wait.
            let (_keep_open, mut no_shutdown) = watch::channel(false);
            let stop = if last {
                &mut no_shutdown
            } else {
                &mut shutdown
            };
            let accepted = self
                .send_with_retry(&request.0, deadline, &telemetry, stop)
                .await;
            if let (true, Some(deltas)) = (accepted, request.1) {
                self.baseline.accept(deltas);
            }
            if last {
                tracing::info!(endpoint = %self.endpoint, "final OTLP export done");
                return;
            }
        }
    }

    /// The export request for a snapshot taken now; in delta mode also the deltas, whose
    /// values become the baseline if the collector accepts them.
    async fn snapshot_request(
        &self,
        telemetry: &Arc<Telemetry>,
    ) -> (ExportMetricsServiceRequest, Option<Deltas>) {
        let t = telemetry.clone();
        let metrics = tokio::task::spawn_blocking(move || t.snapshot())
            .await
            .unwrap_or_default();
        let now = SystemTime::now();
        let aggregation = self.config.histogram_aggregation;
        let resource = &telemetry.resource;
        match self.config.temporality {
            Temporality::Cumulative => (
                build_request(
                    resource,
                    &telemetry.layouts,
                    &metrics,
                    telemetry.start_time,
                    now,
                    aggregation,
                    Temporality::Cumulative,
                ),
                None,
            ),
            Temporality::Delta => {
                let deltas = self.baseline.deltas(&metrics, telemetry.start_time, now);
                let request = build_request(
                    resource,
                    &telemetry.layouts,
                    &deltas.metrics,
                    deltas.start,
                    now,
                    aggregation,
                    Temporality::Delta,
                );
                (request, Some(deltas))
            }
        }
    }
}

/// A failed gRPC export, classified per the OTLP specification: the listed codes are
/// retryable, `RESOURCE_EXHAUSTED` only when the server sent `RetryInfo` (it says when it
/// will have capacity again), and a `RetryInfo` delay replaces the backoff.
pub(crate) fn grpc_error(status: &tonic::Status) -> SendError {
    use tonic::Code;
    use tonic_types::StatusExt;
    let retry_after = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_after.is_some(),
        _ => false,
    };
    SendError {
        message: format!("gRPC {:?}: {}", status.code(), status.message()),
        retryable,
        retry_after,
    }
}

/// An HTTP `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110, 10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn grpc_codes_are_classified_per_the_otlp_spec() {
        use tonic::{Code, Status};
        use tonic_types::{ErrorDetails, StatusExt};
        assert!(grpc_error(&Status::unavailable("down")).retryable);
        assert!(!grpc_error(&Status::invalid_argument("bad")).retryable);
        assert!(!grpc_error(&Status::permission_denied("no")).retryable);
        // RESOURCE_EXHAUSTED without RetryInfo: the server will not recover, do not retry.
        assert!(!grpc_error(&Status::resource_exhausted("full")).retryable);
        let with_info = Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        let e = grpc_error(&with_info);
        assert!(e.retryable);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
    }
}
