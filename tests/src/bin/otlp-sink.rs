//! A counting OTLP/gRPC receiver for the export-throughput benchmark (bench/export.py): a tonic
//! `MetricsService` and `TraceService` from the official protobuf definitions
//! (opentelemetry-proto) that decode every request, count what it holds and keep nothing, so a
//! long run does not grow in memory.
//!
//! usage: otlp-sink [PORT]   (0 or nothing: any free port on 127.0.0.1)
//! Prints `{"grpc_port": N}` once listening; then, for every line read on stdin, one JSON line
//! of the counters so far: requests, data points, spans and encoded bytes per signal, and the
//! sink's monotonic clock in seconds.

use std::{
    io::BufRead,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    metrics::v1::metric::Data,
};
use prost::Message;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Default)]
struct Counters {
    metric_requests: AtomicU64,
    metric_bytes: AtomicU64,
    data_points: AtomicU64,
    trace_requests: AtomicU64,
    trace_bytes: AtomicU64,
    spans: AtomicU64,
}

#[derive(Clone, Default)]
struct Sink(Arc<Counters>);

fn points(data: &Option<Data>) -> u64 {
    (match data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }) as u64
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let n: u64 = request
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| points(&m.data))
            .sum();
        let c = &self.0;
        c.metric_requests.fetch_add(1, Ordering::Relaxed);
        c.metric_bytes
            .fetch_add(request.encoded_len() as u64, Ordering::Relaxed);
        c.data_points.fetch_add(n, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let n: u64 = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len() as u64)
            .sum();
        let c = &self.0;
        c.trace_requests.fetch_add(1, Ordering::Relaxed);
        c.trace_bytes
            .fetch_add(request.encoded_len() as u64, Ordering::Relaxed);
        c.spans.fetch_add(n, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse().expect("usage: otlp-sink [PORT]"))
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sink = Sink::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
    let port = listener.local_addr().expect("local address").port();
    {
        let sink = sink.clone();
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(sink.clone()))
                .add_service(TraceServiceServer::new(sink))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
        });
    }
    println!("{{\"grpc_port\": {port}}}");
    let start = Instant::now();
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let c = &sink.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        println!(
            "{{\"t\": {:.6}, \"metric_requests\": {}, \"metric_bytes\": {}, \"data_points\": {}, \
             \"trace_requests\": {}, \"trace_bytes\": {}, \"spans\": {}}}",
            start.elapsed().as_secs_f64(),
            get(&c.metric_requests),
            get(&c.metric_bytes),
            get(&c.data_points),
            get(&c.trace_requests),
            get(&c.trace_bytes),
            get(&c.spans),
        );
    }
}
