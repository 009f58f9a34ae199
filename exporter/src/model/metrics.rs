//! The one data model between probes and exporters: a snapshot of metrics, each with its OTel
//! name, unit and points. Probes produce it by reading kernel maps; the Prometheus and OTLP
//! exporters consume it. Snapshots are cumulative since the daemon started.

use super::histogram::{Histogram, ValueUnit};
pub use super::resource::Resource;

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
    pub resource: Option<std::sync::Arc<super::resource::ProcessResource>>,
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
