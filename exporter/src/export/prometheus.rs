//! The Prometheus endpoint: `GET /metrics` reads the kernel maps at scrape time and answers in
//! the format the scraper asks for: the OpenMetrics text format by default (classic histograms
//! with the fixed layouts of `layout.rs`, exemplars on HTTP duration buckets), or the protobuf
//! exposition format when the scraper negotiates it (`Accept:
//! application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
//! encoding=delimited`, as Prometheus does with native histograms enabled): native histograms
//! at schema 4 with the classic buckets alongside. `GET /healthz` answers `ok`. Nothing else is
//! served.

use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    export::{openmetrics, protobuf},
    telemetry::Telemetry,
};

/// Renders one scrape in the OpenMetrics text format.
pub fn render(telemetry: &Arc<Telemetry>) -> String {
    openmetrics::render(telemetry, &telemetry.snapshot())
}

/// Renders one scrape in the delimited protobuf format.
pub fn render_protobuf(telemetry: &Arc<Telemetry>) -> Vec<u8> {
    protobuf::render(telemetry, &telemetry.snapshot())
}

/// The scrape formats the endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Protobuf,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }

    /// The format an `Accept` header prefers: protobuf when it names the delimited
    /// `io.prometheus.client.MetricFamily` with a weight at least that of every text type,
    /// OpenMetrics text otherwise (and when there is no header).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::OpenMetrics;
        };
        let mut protobuf_q: f64 = 0.0;
        let mut text_q: f64 = 0.0;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0;
            let (mut proto, mut delimited) = (false, false);
            for param in parts {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.parse().unwrap_or(0.0),
                    "proto" => proto = value == "io.prometheus.client.MetricFamily",
                    "encoding" => delimited = value == "delimited",
                    _ => {}
                }
            }
            if media == "application/vnd.google.protobuf" {
                if proto && delimited {
                    protobuf_q = protobuf_q.max(q);
                }
            } else {
                text_q = text_q.max(q);
            }
        }
        if protobuf_q > 0.0 && protobuf_q >= text_q {
            Self::Protobuf
        } else {
            Self::OpenMetrics
        }
    }
}

/// Binds the endpoint before the runtime starts (the daemon drops its capabilities before
/// that), so that a bad or busy address fails at start, not at the first scrape; the listener
/// is non-blocking, ready for `TcpListener::from_std`.
pub fn bind_std(listen: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {listen} for the Prometheus endpoint: {e} \
             (set prometheus.listen or PERISCOPE_PROMETHEUS_LISTEN; empty disables it)"
        )
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a scrape connection failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, telemetry.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "scrape connection ended with an error");
            }
        });
    }
}

async fn handle(
    request: Request<hyper::body::Incoming>,
    telemetry: Arc<Telemetry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let respond = |status: StatusCode, content_type: &str, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert("content-type", value);
        }
        Ok(response)
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let body = tokio::task::spawn_blocking(move || match format {
                Format::OpenMetrics => Bytes::from(render(&telemetry)),
                Format::Protobuf => Bytes::from(render_protobuf(&telemetry)),
            })
            .await
            .unwrap_or_default();
            respond(StatusCode::OK, format.content_type(), body)
        }
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", Bytes::from("ok\n")),
        (&Method::GET, PPROF_PATH) => {
            let Some(profiler) = telemetry.profiler.clone() else {
                return respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    Bytes::from("profiles are off: set probes.profile.enabled: true\n"),
                );
            };
            match pprof_seconds(request.uri().query()) {
                Ok(seconds) => {
                    let body = pprof_over(profiler, seconds).await;
                    respond(StatusCode::OK, "application/octet-stream", body)
                }
                Err(message) => {
                    respond(StatusCode::BAD_REQUEST, "text/plain", Bytes::from(message))
                }
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from(format!(
                "not found: Periscope serves /metrics, /healthz and {PPROF_PATH}\n"
            )),
        ),
    }
}

/// Go's pprof path, where pull-based profilers (Parca, Pyroscope, `go tool pprof URL`) look.
const PPROF_PATH: &str = "/debug/pprof/profile";
/// The longest profile one request may ask for.
const PPROF_MAX_SECONDS: u64 = 300;

/// `?seconds=N` as Go's handler takes it: 30 when absent, 1 to 300.
fn pprof_seconds(query: Option<&str>) -> Result<u64, String> {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("seconds="));
    let Some(value) = value else {
        return Ok(30);
    };
    match value.parse::<u64>() {
        Ok(n) if (1..=PPROF_MAX_SECONDS).contains(&n) => Ok(n),
        _ => Err(format!(
            "seconds={value}: must be a whole number from 1 to {PPROF_MAX_SECONDS}\n"
        )),
    }
}

/// What the kernel counts over the next `seconds`, named, as gzip-compressed pprof.
async fn pprof_over(
    profiler: crate::families::profile::continuous::Profiler,
    seconds: u64,
) -> Bytes {
    let start = std::time::SystemTime::now();
    let Some(before) = profiler.snapshot().await else {
        return Bytes::new();
    };
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    let Some(window) = profiler.since(before, start).await else {
        return Bytes::new();
    };
    tokio::task::spawn_blocking(move || {
        let profile = crate::export::profile_formats::pprof_profile(
            &window.all_stacks(),
            window.kind,
            window.duration().as_nanos() as i64,
        );
        let mut body = Vec::new();
        let _ = crate::export::profile_formats::write_pprof(&profile, &mut body);
        Bytes::from(body)
    })
    .await
    .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        export::exposition::{labels_of, target_infos},
        model::metrics::{Metric, Points, Resource},
        model::resource::ProcessResource,
    };

    /// A metric of one observed process (pid, pod uid), or of the agent (`None`).
    pub(crate) fn process_metric(process: Option<(u32, &str)>) -> Metric {
        let resource = process.map(|(pid, pod)| {
            Arc::new(ProcessResource {
                service_name: "api".into(),
                attributes: vec![
                    ("service.name".into(), "api".into()),
                    ("service.instance.id".into(), format!("node-1:{pid}")),
                    ("k8s.pod.uid".into(), pod.into()),
                ],
            })
        });
        Metric {
            name: crate::model::names::HTTP_SERVER_REQUEST_DURATION,
            description: "d",
            unit: "s",
            points: Points::Counter(vec![]),
            resource,
        }
    }

    #[test]
    fn one_target_info_per_distinct_process_resource_after_the_agents() {
        let agent = Resource {
            attributes: vec![("service.name".into(), "periscope".into())],
        };
        let a = process_metric(Some((10, "pod-a")));
        let same_attributes_other_arc = process_metric(Some((10, "pod-a")));
        let b = process_metric(Some((11, "pod-b")));
        let kernel = process_metric(None);
        let snapshot = [a.clone(), kernel, same_attributes_other_arc, b, a];
        let infos = target_infos(&agent, &snapshot);
        assert_eq!(infos.len(), 3, "{infos:?}");
        assert_eq!(
            infos[0],
            [("service_name".to_string(), "periscope".to_string())]
        );
        let label = |i: usize, k: &str| {
            infos[i]
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(label(1, "service_instance_id"), Some("node-1:10"));
        assert_eq!(label(1, "k8s_pod_uid"), Some("pod-a"));
        assert_eq!(label(2, "service_instance_id"), Some("node-1:11"));
        assert_eq!(label(2, "k8s_pod_uid"), Some("pod-b"));
        // The series of a process carry the join key with the same value.
        let series = labels_of(&snapshot[4], &[]);
        assert!(series.contains(&("service_instance_id".into(), "node-1:10".into())));
    }

    #[test]
    fn protobuf_only_when_the_scraper_asks_for_it_first() {
        // Prometheus 2.42 with --enable-feature=native-histograms (captured from a real one).
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(native)), Format::Protobuf);
        // Prometheus 2.42 without it.
        let classic = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(classic)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::OpenMetrics);
        // Text-format protobuf, or another message, is not what we serve.
        let text_proto =
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text";
        assert_eq!(Format::negotiate(Some(text_proto)), Format::OpenMetrics);
        // Text preferred over protobuf.
        let prefer_text = "text/plain;q=0.9,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5";
        assert_eq!(Format::negotiate(Some(prefer_text)), Format::OpenMetrics);
    }
}
