//! The one data model between probes and exporters: a snapshot of metrics, each with its OTel
//! name, unit and points. Probes produce it by reading kernel maps; the Prometheus and OTLP
//! exporters consume it. Snapshots are cumulative since the daemon started.

use crate::histogram::{Histogram, ValueUnit};

/// Attributes of one point, in a stable order.
pub type Attributes = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
pub enum Points {
    Histogram(ValueUnit, Vec<(Attributes, Histogram)>),
    /// Monotonic cumulative sum.
    Counter(Vec<(Attributes, f64)>),
    Gauge(Vec<(Attributes, f64)>),
}

#[derive(Debug, Clone)]
pub struct Metric {
    /// OTel name, e.g. `kernel.block.io.duration`.
    pub name: &'static str,
    pub description: &'static str,
    /// UCUM unit: `s`, `By` or `1`.
    pub unit: &'static str,
    pub points: Points,
    /// The observed process these points describe (HTTP metrics), or `None` for the node
    /// agent's own resource (kernel and self metrics).
    pub resource: Option<std::sync::Arc<crate::http::process::ProcessResource>>,
}

impl Metric {
    pub fn histogram(
        name: &'static str,
        description: &'static str,
        unit: ValueUnit,
        points: Vec<(Attributes, Histogram)>,
    ) -> Self {
        Self {
            name,
            description,
            unit: match unit {
                ValueUnit::Seconds => "s",
                ValueUnit::Bytes => "By",
            },
            points: Points::Histogram(unit, points),
            resource: None,
        }
    }

    /// The Prometheus base name (without unit or `_total` suffix): dots become underscores.
    pub fn prometheus_name(&self) -> String {
        sanitize(self.name)
    }
}

/// Prometheus metric and label names allow `[a-zA-Z0-9_:]` only.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The node agent's own resource: `service.name`, `host.name`, and configured attributes.
#[derive(Debug, Clone)]
pub struct Resource {
    pub attributes: Vec<(String, String)>,
}

impl Resource {
    pub fn detect(config: &crate::config::ServiceConfig) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let mut attributes: Vec<(String, String)> = vec![
            (
                "service.name".into(),
                config.name.clone().unwrap_or_else(|| "periscope".into()),
            ),
            ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
            ("service.instance.id".into(), host.clone()),
            ("host.name".into(), host),
            ("telemetry.sdk.name".into(), "periscope".into()),
            ("telemetry.sdk.language".into(), "rust".into()),
        ];
        for (k, v) in &config.resource_attributes {
            attributes.retain(|(existing, _)| existing != k);
            attributes.push((k.clone(), v.clone()));
        }
        Self { attributes }
    }
}
