//! The Prometheus endpoint: `GET /metrics` reads the kernel maps at scrape time and answers in
//! the OpenMetrics text format (prometheus-client's encoder); `GET /healthz` answers `ok`.
//! Nothing else is served.

use std::{convert::Infallible, fmt, sync::Arc};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    model::metrics::{Metric, Points, sanitize},
    telemetry::Telemetry,
};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders one scrape.
pub fn render(telemetry: &Arc<Telemetry>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(telemetry.clone())));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    text
}

struct SnapshotCollector(Arc<Telemetry>);

impl fmt::Debug for SnapshotCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotCollector")
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode_target_info(&mut encoder, &self.0)?;
        let snapshot = self.0.snapshot();
        // Metrics of several processes share a name: one family each, in first-seen order.
        let mut families: Vec<(&str, Vec<&Metric>)> = Vec::new();
        for metric in &snapshot {
            match families.iter_mut().find(|(name, _)| *name == metric.name) {
                Some((_, group)) => group.push(metric),
                None => families.push((metric.name, vec![metric])),
            }
        }
        for (_, group) in families {
            encode_family(&mut encoder, &group)?;
        }
        Ok(())
    }
}

/// Resource attributes as `target_info`, per the OTel Prometheus compatibility spec.
fn encode_target_info(encoder: &mut DescriptorEncoder, telemetry: &Telemetry) -> fmt::Result {
    let labels: Vec<(String, String)> = telemetry
        .resource
        .attributes
        .iter()
        .map(|(k, v)| (sanitize(k), v.clone()))
        .collect();
    let mut metric =
        encoder.encode_descriptor("target_info", "Target metadata", None, MetricType::Gauge)?;
    metric.encode_family(&labels)?.encode_gauge(&1i64)
}

fn prometheus_unit(unit: &str) -> Option<Unit> {
    match unit {
        "s" => Some(Unit::Seconds),
        "By" => Some(Unit::Bytes),
        _ => None,
    }
}

/// Resource attributes of an observed process that become labels (the rest stay in OTLP):
/// enough to tell services and their instances apart.
const RESOURCE_LABELS: [&str; 2] = ["service.name", "service.instance.id"];

fn labels_of(metric: &Metric, attributes: &[(&'static str, String)]) -> Vec<(String, String)> {
    let resource = metric.resource.iter().flat_map(|r| {
        r.attributes
            .iter()
            .filter(|(k, _)| RESOURCE_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (sanitize(k), v.clone()))
    });
    resource
        .chain(attributes.iter().map(|(k, v)| (sanitize(k), v.clone())))
        .collect()
}

/// One family: the points of every metric in `group` (same name, several resources).
fn encode_family(encoder: &mut DescriptorEncoder, group: &[&Metric]) -> fmt::Result {
    let first = group[0];
    let name = first.prometheus_name();
    let unit = prometheus_unit(first.unit);
    let kind = match first.points {
        Points::Histogram(..) => MetricType::Histogram,
        Points::Counter(_) => MetricType::Counter,
        Points::Gauge(_) => MetricType::Gauge,
    };
    let mut family = encoder.encode_descriptor(&name, first.description, unit.as_ref(), kind)?;
    for metric in group {
        match &metric.points {
            Points::Histogram(value_unit, points) => {
                for (attributes, histogram) in points {
                    let buckets = prometheus_buckets(&histogram.explicit_buckets(*value_unit));
                    family
                        .encode_family(&labels_of(metric, attributes))?
                        .encode_histogram::<NoLabelSet>(
                            histogram.sum_in(*value_unit),
                            histogram.count(),
                            &buckets,
                            None,
                        )?;
                }
            }
            Points::Counter(points) => {
                for (attributes, value) in points {
                    family
                        .encode_family(&labels_of(metric, attributes))?
                        .encode_counter::<NoLabelSet, f64, f64>(value, None)?;
                }
            }
            Points::Gauge(points) => {
                for (attributes, value) in points {
                    family
                        .encode_family(&labels_of(metric, attributes))?
                        .encode_gauge(value)?;
                }
            }
        }
    }
    Ok(())
}

/// prometheus-client writes `le="+Inf"` for an upper bound of `f64::MAX`.
fn prometheus_buckets(buckets: &[(f64, u64)]) -> Vec<(f64, u64)> {
    buckets
        .iter()
        .map(|(bound, count)| {
            let bound = if bound.is_infinite() {
                f64::MAX
            } else {
                *bound
            };
            (bound, *count)
        })
        .collect()
}

/// Binds the endpoint, so that a bad or busy address fails at start, not at the first scrape.
/// Binds the endpoint before the runtime starts (the daemon drops its capabilities before
/// that); the listener is non-blocking, ready for `TcpListener::from_std`.
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
    let respond = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert("content-type", value);
        }
        Ok(response)
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let text = tokio::task::spawn_blocking(move || render(&telemetry))
                .await
                .unwrap_or_default();
            respond(StatusCode::OK, CONTENT_TYPE, text)
        }
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: Periscope serves /metrics and /healthz\n".into(),
        ),
    }
}
