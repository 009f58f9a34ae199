//! Periscope's user space: probe loading and attach ([`probes`]), HTTP capture ([`http`]),
//! aggregation ([`telemetry`], [`histogram`]) and export ([`export`]). The `periscope` binary
//! (`src/main.rs`) is the CLI over it; the fuzz targets (`fuzz/`) drive the HTTP parser through
//! it.

pub mod check;
pub mod config;
pub mod export;
pub mod families;
pub mod kernel;
pub mod model;
pub mod process;
pub mod profile;
pub mod telemetry;
pub mod triage;
