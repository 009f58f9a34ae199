//! A real OTLP receiver built from the official protobuf definitions (opentelemetry-proto): tonic
//! gRPC `MetricsService` and `TraceService`, and HTTP/protobuf `/v1/metrics` and `/v1/traces`
//! endpoints. It records every request it accepts, and can be told to refuse metrics requests.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
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
    trace::v1::Span,
};
use prost::Message;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Shared {
    requests: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    /// Requests still to refuse (UNAVAILABLE / HTTP 503).
    refuse: Arc<AtomicU32>,
}

impl Shared {
    fn take_refusal(&self) -> bool {
        self.refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[tonic::async_trait]
impl MetricsService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if self.take_refusal() {
            return Err(tonic::Status::unavailable("test receiver refusing"));
        }
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A received span with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub span: Span,
}

pub struct OtlpReceiver {
    pub grpc_port: u16,
    pub http_port: u16,
    shared: Shared,
    _runtime: tokio::runtime::Runtime,
}

impl OtlpReceiver {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Shared::default();
        let (grpc_port, http_port) = runtime.block_on(async {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let ports = (
                grpc.local_addr().unwrap().port(),
                http.local_addr().unwrap().port(),
            );
            let service = MetricsServiceServer::new(shared.clone());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .add_service(TraceServiceServer::new(shared.clone()))
                    .serve_with_incoming(TcpListenerStream::new(grpc)),
            );
            tokio::spawn(serve_http(http, shared.clone()));
            ports
        });
        Self {
            grpc_port,
            http_port,
            shared,
            _runtime: runtime,
        }
    }

    pub fn requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let traces = self.shared.traces.lock().unwrap();
        let mut out = Vec::new();
        for request in traces.iter() {
            for rs in &request.resource_spans {
                let service_name = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            s,
                        ) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(ReceivedSpan {
                            service_name: service_name.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Refuse the next `n` requests as temporarily unavailable.
    pub fn refuse_next(&self, n: u32) {
        self.shared.refuse.store(n, Ordering::SeqCst);
    }
}

async fn serve_http(listener: tokio::net::TcpListener, shared: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move {
                    if request.uri().path() == "/v1/traces" {
                        let body = request.into_body().collect().await.map(|b| b.to_bytes());
                        let mut response = Response::new(Full::new(Bytes::new()));
                        match body
                            .ok()
                            .and_then(|b| ExportTraceServiceRequest::decode(b).ok())
                        {
                            Some(decoded) => shared.traces.lock().unwrap().push(decoded),
                            None => *response.status_mut() = hyper::StatusCode::BAD_REQUEST,
                        }
                        return Ok::<_, Infallible>(response);
                    }
                    let refuse = request.uri().path() != "/v1/metrics" || shared.take_refusal();
                    let body = request.into_body().collect().await.map(|b| b.to_bytes());
                    let mut response = Response::new(Full::new(Bytes::new()));
                    match body
                        .ok()
                        .and_then(|b| ExportMetricsServiceRequest::decode(b).ok())
                    {
                        Some(decoded) if !refuse => shared.requests.lock().unwrap().push(decoded),
                        _ => *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE,
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
