//! Request spans: one SERVER span per served request, one CLIENT span per outgoing request,
//! exported over OTLP.
//!
//! Sampling and `traceparent` parsing are the OTel SDK's (`opentelemetry_sdk::trace::Sampler`,
//! `TraceContextPropagator`). The spans themselves are built as OTLP protobuf: the SDK ties one
//! resource to a tracer provider, while Periscope reports for every process on the node, each
//! its own resource, and the spans' start and end times come from the kernel after the fact.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{
        SamplingDecision, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
        TraceState,
    },
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue as OtlpKeyValue, any_value},
    resource::v1::Resource as OtlpResource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::Sampler, trace::ShouldSample};
use rand::Rng;
use tokio::sync::mpsc;

use crate::export::otlp::{OtlpClient, string_attr};

use super::process::ProcessResource;

/// The configured sampler.
#[derive(Debug, Clone)]
pub struct Sampling(Sampler);

impl Sampling {
    /// Names and argument as in OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    pub fn parse(name: &str, arg: Option<f64>) -> Result<Self, String> {
        let ratio = || {
            let r = arg.unwrap_or(1.0);
            if (0.0..=1.0).contains(&r) {
                Ok(r)
            } else {
                Err(format!("sampler ratio {r} is not between 0 and 1"))
            }
        };
        let sampler = match name {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
            }
            other => {
                return Err(format!(
                    "unknown sampler {other:?}: expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ));
            }
        };
        Ok(Self(sampler))
    }

    fn sampled(&self, parent: Option<&Context>, trace_id: TraceId, kind: SpanKind) -> bool {
        let result = self.0.should_sample(parent, trace_id, "", &kind, &[], &[]);
        result.decision == SamplingDecision::RecordAndSample
    }
}

/// The trace a span belongs to and its parent, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRef {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The remote parent in a `traceparent` header, when it is valid W3C trace context.
pub fn parse_traceparent(value: &str) -> Option<TraceRef> {
    let cx = TraceContextPropagator::new().extract(&OneHeader(value));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceRef {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    })
}

/// Ids and the sampling decision for a new span under `parent` (remote or local).
pub fn new_span(sampling: &Sampling, parent: Option<TraceRef>, kind: SpanKind) -> TraceRef {
    let mut rng = rand::rng();
    let span_id: [u8; 8] = loop {
        let id: [u8; 8] = rng.random();
        if id != [0; 8] {
            break id;
        }
    };
    let trace_id = match parent {
        Some(p) => p.trace_id,
        None => loop {
            let id: [u8; 16] = rng.random();
            if id != [0; 16] {
                break id;
            }
        },
    };
    let parent_cx = parent.map(|p| {
        let flags = if p.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(p.trace_id),
            SpanId::from_bytes(p.span_id),
            flags,
            true,
            TraceState::default(),
        ))
    });
    let sampled = sampling.sampled(parent_cx.as_ref(), TraceId::from_bytes(trace_id), kind);
    TraceRef {
        trace_id,
        span_id,
        sampled,
    }
}

/// A finished span, ready to export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub resource: Arc<ProcessResource>,
    pub ids: TraceRef,
    pub parent_span_id: Option<[u8; 8]>,
    pub kind: SpanKind,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, String)>,
    pub int_attributes: Vec<(&'static str, i64)>,
    pub error: bool,
}

fn int_attr(key: &str, value: i64) -> OtlpKeyValue {
    OtlpKeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}

impl SpanRecord {
    fn to_proto(&self) -> Span {
        let mut attributes: Vec<OtlpKeyValue> = self
            .attributes
            .iter()
            .map(|(k, v)| string_attr(k, v))
            .collect();
        attributes.extend(self.int_attributes.iter().map(|(k, v)| int_attr(k, *v)));
        Span {
            trace_id: self.ids.trace_id.to_vec(),
            span_id: self.ids.span_id.to_vec(),
            parent_span_id: self.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 0x100 | u32::from(self.ids.sampled), // remote-ness known, sampled flag
            name: self.name.clone(),
            kind: match self.kind {
                SpanKind::Server => span::SpanKind::Server as i32,
                SpanKind::Client => span::SpanKind::Client as i32,
                _ => span::SpanKind::Internal as i32,
            },
            start_time_unix_nano: self.start_unix_ns,
            end_time_unix_nano: self.end_unix_ns,
            attributes,
            status: Some(Status {
                code: if self.error {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Groups spans per process resource into one request.
pub fn build_request(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    let mut by_resource: HashMap<*const ProcessResource, (Arc<ProcessResource>, Vec<Span>)> =
        HashMap::new();
    for s in spans {
        by_resource
            .entry(Arc::as_ptr(&s.resource))
            .or_insert_with(|| (s.resource.clone(), Vec::new()))
            .1
            .push(s.to_proto());
    }
    ExportTraceServiceRequest {
        resource_spans: by_resource
            .into_values()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(OtlpResource {
                    attributes: resource
                        .attributes
                        .iter()
                        .map(|(k, v)| string_attr(k, v))
                        .collect(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "periscope.http".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Span export counters (`periscope.export.spans`).
#[derive(Debug, Default)]
pub struct SpanStats {
    pub exported: AtomicU64,
    /// Dropped because the queue was full (the exporter fell behind).
    pub dropped_queue_full: AtomicU64,
    /// Dropped because the collector failed past the retry window.
    pub dropped_export_failed: AtomicU64,
}

/// The bounded queue from the HTTP tracker to the span exporter.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<SpanRecord>,
    stats: Arc<SpanStats>,
}

impl SpanQueue {
    pub fn new(capacity: usize, stats: Arc<SpanStats>) -> (Self, mpsc::Receiver<SpanRecord>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx, stats }, rx)
    }

    /// Queues a span; when full the span is dropped and counted, never blocking the capture.
    pub fn push(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

const BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Exports queued spans in batches until every sender is gone (the capture loop stopped),
/// then flushes what is left.
pub async fn export(
    client: OtlpClient,
    mut rx: mpsc::Receiver<SpanRecord>,
    stats: Arc<SpanStats>,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let closed = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n == 0,
            _ = tokio::time::sleep(BATCH_DELAY), if !batch.is_empty() => false,
        };
        if batch.len() >= BATCH || (!batch.is_empty() && (closed || rx.is_empty())) {
            send_batch(&client, &mut batch, &stats, timeout).await;
        }
        if closed {
            return;
        }
    }
}

async fn send_batch(
    client: &OtlpClient,
    batch: &mut Vec<SpanRecord>,
    stats: &SpanStats,
    timeout: Duration,
) {
    for chunk in batch.chunks(BATCH) {
        let request = build_request(chunk);
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(200);
        loop {
            match client.send_traces(&request).await {
                Ok(()) => {
                    stats
                        .exported
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    let wait = e
                        .retry_after
                        .unwrap_or(backoff.mul_f64(rand::rng().random_range(0.5..1.5)));
                    if !e.retryable || Instant::now() + wait >= deadline {
                        stats
                            .dropped_export_failed
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        tracing::warn!(error = %e.message, spans = chunk.len(), "span export failed; spans dropped");
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_sampling() {
        let p =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(p.trace_id[0], 0x0a);
        assert_eq!(p.span_id[7], 0x31);
        assert!(p.sampled);
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
        let on = Sampling::parse("parentbased_always_on", None).unwrap();
        let child = new_span(&on, Some(p), SpanKind::Server);
        assert_eq!(child.trace_id, p.trace_id);
        assert!(child.sampled);
        let unsampled =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!new_span(&on, Some(unsampled), SpanKind::Server).sampled);
        let off = Sampling::parse("always_off", None).unwrap();
        assert!(!new_span(&off, None, SpanKind::Server).sampled);
        assert!(Sampling::parse("traceidratio", Some(2.0)).is_err());
        assert!(Sampling::parse("nope", None).is_err());
    }
}
