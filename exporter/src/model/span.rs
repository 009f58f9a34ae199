//! Spans as the model carries them: finished, with the resource of the process they belong to,
//! queued (bounded) from the family that made them to the span exporter.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use opentelemetry::trace::SpanKind;
use tokio::sync::mpsc;

use crate::model::resource::ProcessResource;

/// The trace a span belongs to and its parent, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRef {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
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
