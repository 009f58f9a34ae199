//! A real OTLP metrics receiver built from the official protobuf definitions
//! (opentelemetry-proto): a tonic gRPC `MetricsService` and an HTTP/protobuf `/v1/metrics`
//! endpoint. It records every request it accepts, and can be told to refuse requests.

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
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_server::{MetricsService, MetricsServiceServer},
};
use prost::Message;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Shared {
    requests: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
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
