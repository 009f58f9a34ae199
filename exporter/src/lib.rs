//! Periscope's user space: probe loading and attach ([`probes`]), HTTP capture ([`http`]),
//! aggregation ([`telemetry`], [`histogram`]) and export ([`export`]). The `periscope` binary
//! (`src/main.rs`) is the CLI over it; the fuzz targets (`fuzz/`) drive the HTTP parser through
//! it.

pub mod check;
pub mod config;
pub mod export;
pub mod histogram;
pub mod http;
pub mod metrics;
pub mod privileges;
pub mod probes;
pub mod tcp;
pub mod telemetry;
pub mod tracefs;
pub mod triage;
