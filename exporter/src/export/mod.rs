//! Exporters: the Prometheus endpoint (read at scrape time; OpenMetrics text or protobuf) and
//! the OTLP push exporter.

pub mod delta;
pub mod exposition;
pub mod openmetrics;
pub mod otlp;
pub mod profile_formats;
pub mod profiles;
pub mod prometheus;
pub mod protobuf;
pub mod spans;
