//! Exporters: the Prometheus endpoint (read at scrape time) and the OTLP push exporter.

pub mod delta;
pub mod otlp;
pub mod prometheus;
pub mod spans;
