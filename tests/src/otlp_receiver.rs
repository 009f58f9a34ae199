//! A real OTLP receiver built from the official protobuf definitions (opentelemetry-proto): tonic
//! gRPC `MetricsService`, `TraceService` and `ProfilesService` (v1development), and
//! HTTP/protobuf `/v1/metrics` and `/v1/traces` endpoints. It records every request it accepts, can be told to refuse metrics requests
//! (UNAVAILABLE / 503, HTTP 429 with Retry-After, RESOURCE_EXHAUSTED with RetryInfo), can listen
//! on ports chosen beforehand (a collector that comes up late or restarts), and can serve gRPC
//! over TLS.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
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
        profiles::v1development::{
            ExportProfilesServiceRequest, ExportProfilesServiceResponse,
            profiles_service_server::{ProfilesService, ProfilesServiceServer},
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
    profiles: Arc<Mutex<Vec<ExportProfilesServiceRequest>>>,
    /// Requests still to refuse, and how.
    refuse: Arc<AtomicU32>,
    refusal: Arc<Mutex<Refusal>>,
    /// Metrics requests refused so far.
    refused: Arc<AtomicU64>,
}

/// How the receiver refuses a metrics request.
#[derive(Clone, Copy, Debug, Default)]
pub enum Refusal {
    /// gRPC UNAVAILABLE, HTTP 503.
    #[default]
    Unavailable,
    /// HTTP 429 with `Retry-After: N`; gRPC RESOURCE_EXHAUSTED with RetryInfo of N seconds.
    Throttled { retry_after_secs: u64 },
}

impl Shared {
    fn take_refusal(&self) -> Option<Refusal> {
        let take = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        take.then(|| {
            self.refused.fetch_add(1, Ordering::SeqCst);
            *self.refusal.lock().unwrap()
        })
    }
}

#[tonic::async_trait]
impl MetricsService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        match self.take_refusal() {
            None => {}
            Some(Refusal::Unavailable) => {
                return Err(tonic::Status::unavailable("test receiver refusing"));
            }
            Some(Refusal::Throttled { retry_after_secs }) => {
                use tonic_types::{ErrorDetails, StatusExt};
                return Err(tonic::Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    "test receiver throttling",
                    ErrorDetails::with_retry_info(Some(Duration::from_secs(retry_after_secs))),
                ));
            }
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

#[tonic::async_trait]
impl ProfilesService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportProfilesServiceRequest>,
    ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
        self.profiles.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(
            ExportProfilesServiceResponse::default(),
        ))
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
    runtime: tokio::runtime::Runtime,
}

/// TLS material for a receiver: the server's certificate chain and key (PEM).
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl OtlpReceiver {
    /// A receiver on two fresh ports.
    pub fn start() -> Self {
        Self::start_on(0, 0, None)
    }

    /// A receiver on the given ports (0: any free port); with `tls`, gRPC is served over TLS.
    pub fn start_on(grpc_port: u16, http_port: u16, tls: Option<ServerTls>) -> Self {
        Self::start_with(grpc_port, http_port, tls, Shared::default())
    }

    /// The same receiver (same ports, same recorded requests) brought back after `stop`.
    pub fn restart(self) -> Self {
        let (grpc, http, shared) = (self.grpc_port, self.http_port, self.shared.clone());
        self.stop();
        Self::start_with(grpc, http, None, shared)
    }

    /// Closes the listeners and every connection, like a collector going down.
    pub fn stop(self) {
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }

    fn start_with(grpc_port: u16, http_port: u16, tls: Option<ServerTls>, shared: Shared) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (grpc_port, http_port) = runtime.block_on(async {
            let grpc = bind(grpc_port).await;
            let http = bind(http_port).await;
            let ports = (
                grpc.local_addr().unwrap().port(),
                http.local_addr().unwrap().port(),
            );
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                let identity = tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem);
                server = server
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                    .expect("receiver TLS config");
            }
            tokio::spawn(
                server
                    .add_service(MetricsServiceServer::new(shared.clone()))
                    .add_service(TraceServiceServer::new(shared.clone()))
                    .add_service(ProfilesServiceServer::new(shared.clone()))
                    .serve_with_incoming(TcpListenerStream::new(grpc)),
            );
            tokio::spawn(serve_http(http, shared.clone()));
            ports
        });
        Self {
            grpc_port,
            http_port,
            shared,
            runtime,
        }
    }

    /// Every profiles request received so far (gRPC `ProfilesService`).
    pub fn profiles(&self) -> Vec<ExportProfilesServiceRequest> {
        self.shared.profiles.lock().unwrap().clone()
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
        self.refuse_next_with(n, Refusal::Unavailable);
    }

    /// Refuse the next `n` metrics requests the way `refusal` says.
    pub fn refuse_next_with(&self, n: u32, refusal: Refusal) {
        *self.shared.refusal.lock().unwrap() = refusal;
        self.shared.refuse.store(n, Ordering::SeqCst);
    }

    /// Metrics requests refused so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

/// Binds 127.0.0.1:`port`, retrying briefly: a port just closed by `stop` may linger.
async fn bind(port: u16) -> tokio::net::TcpListener {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
        }
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
                    let mut response = Response::new(Full::new(Bytes::new()));
                    if request.uri().path() != "/v1/metrics" {
                        *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                        return Ok(response);
                    }
                    let refusal = shared.take_refusal();
                    let body = request.into_body().collect().await.map(|b| b.to_bytes());
                    let decoded = body
                        .ok()
                        .and_then(|b| ExportMetricsServiceRequest::decode(b).ok());
                    match (decoded, refusal) {
                        (None, _) => *response.status_mut() = hyper::StatusCode::BAD_REQUEST,
                        (Some(decoded), None) => shared.requests.lock().unwrap().push(decoded),
                        (Some(_), Some(Refusal::Unavailable)) => {
                            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE
                        }
                        (Some(_), Some(Refusal::Throttled { retry_after_secs })) => {
                            *response.status_mut() = hyper::StatusCode::TOO_MANY_REQUESTS;
                            response.headers_mut().insert(
                                "retry-after",
                                hyper::header::HeaderValue::from(retry_after_secs),
                            );
                        }
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
