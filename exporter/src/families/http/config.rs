//! `probes.http`: HTTP RED metrics and spans.

use serde::Deserialize;

use crate::{kernel::mechanism::MechanismChoice, process::Selector};

/// HTTP RED metrics and spans from syscall capture.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    pub mechanism: MechanismChoice,
    /// Which processes to instrument; empty: every process that speaks HTTP.
    pub select: Vec<Selector>,
    /// Route patterns such as `/users/{id}` or `/static/*`, tried before the heuristic.
    pub routes: Vec<String>,
    /// Distinct routes per service before paths collapse to `/first/*`.
    pub max_routes_per_service: usize,
    /// Distinct metric series (all services); beyond it, `otel.metric.overflow=true`.
    pub max_series: usize,
    /// Connections tracked in the kernel at once (LRU beyond it).
    pub max_connections: u32,
    /// Kernel-to-user ring buffer size in bytes (a power of two, at least 4096).
    pub ring_buffer_size: u32,
    /// HTTPS: probe OpenSSL's SSL_read/SSL_write in every file that exports them.
    pub tls: bool,
    /// Export one span per request (when OTLP is on).
    pub spans: bool,
    /// Spans buffered for export; beyond it they are dropped and counted.
    pub span_queue: usize,
    /// Sampler (OTEL_TRACES_SAMPLER): parentbased_always_on, always_on, always_off,
    /// traceidratio, parentbased_traceidratio, parentbased_always_off.
    pub sampler: String,
    /// Sampler argument (OTEL_TRACES_SAMPLER_ARG), the ratio for *traceidratio.
    pub sampler_arg: Option<f64>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mechanism: MechanismChoice::Auto,
            select: Vec::new(),
            routes: Vec::new(),
            max_routes_per_service: 100,
            max_series: 10_000,
            max_connections: 65_536,
            ring_buffer_size: 4 << 20,
            tls: true,
            spans: true,
            span_queue: 8192,
            sampler: "parentbased_always_on".to_string(),
            sampler_arg: None,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        crate::families::settings::check_ring_buffer("probes.http", self.ring_buffer_size)?;
        if self.max_connections == 0 || self.max_series == 0 || self.span_queue == 0 {
            return Err(
                "probes.http: max_connections, max_series and span_queue must be at least 1".into(),
            );
        }
        if let Err(e) = super::route::Routes::new(&self.routes, 1) {
            return Err(format!("probes.http.routes: {e}"));
        }
        if let Err(e) = super::span::Sampling::parse(&self.sampler, self.sampler_arg) {
            return Err(format!("probes.http.sampler: {e}"));
        }
        Selector::validate_all("probes.http", &self.select)
    }
}
