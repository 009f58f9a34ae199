//! Span export over OTLP: batches of [`SpanRecord`]s from the span queue, grouped per process
//! resource, sent with the OTLP client's retries. The spans are built as OTLP protobuf: the SDK
//! ties one resource to a tracer provider, while Periscope reports for every process on the node,
//! each its own resource, and the spans' start and end times come from the kernel after the fact.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use opentelemetry::trace::SpanKind;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue as OtlpKeyValue, any_value},
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status},
};
use rand::Rng;
use tokio::sync::mpsc;

use super::otlp::{OtlpClient, process_resource, scope, string_attr};
use crate::model::{
    resource::ProcessResource,
    span::{SpanRecord, SpanStats},
};

fn int_attr(key: &str, value: i64) -> OtlpKeyValue {
    OtlpKeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}

/// One span as OTLP protobuf.
fn to_proto(record: &SpanRecord) -> Span {
    let mut attributes: Vec<OtlpKeyValue> = record
        .attributes
        .iter()
        .map(|(k, v)| string_attr(k, v))
        .collect();
    attributes.extend(record.int_attributes.iter().map(|(k, v)| int_attr(k, *v)));
    Span {
        trace_id: record.ids.trace_id.to_vec(),
        span_id: record.ids.span_id.to_vec(),
        parent_span_id: record
            .parent_span_id
            .map(|p| p.to_vec())
            .unwrap_or_default(),
        flags: 0x100 | u32::from(record.ids.sampled), // remote-ness known, sampled flag
        name: record.name.clone(),
        kind: match record.kind {
            SpanKind::Server => span::SpanKind::Server as i32,
            SpanKind::Client => span::SpanKind::Client as i32,
            _ => span::SpanKind::Internal as i32,
        },
        start_time_unix_nano: record.start_unix_ns,
        end_time_unix_nano: record.end_unix_ns,
        attributes,
        status: Some(Status {
            code: if record.error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
            ..Default::default()
        }),
        ..Default::default()
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
            .push(to_proto(s));
    }
    ExportTraceServiceRequest {
        resource_spans: by_resource
            .into_values()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(process_resource(&resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope(SCOPE)),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// The instrumentation scope of HTTP spans.
const SCOPE: &str = "periscope.http";

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
            match client.send(&request).await {
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
