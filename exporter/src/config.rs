//! Configuration: `periscope.yaml` (every key optional, unknown keys rejected with their line and
//! column) overlaid with the standard OpenTelemetry environment variables and `PERISCOPE_*`
//! overrides. Environment beats file. The default file is embedded in the binary.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::families::settings::duration;
pub use crate::{
    families::{
        ProbesConfig,
        block::BlockConfig,
        http::HttpConfig,
        sched::SchedConfig,
        syscall::SyscallConfig,
        tcp::TcpConfig,
        uprobe::{FunctionConfig, MAX_FUNCTIONS, UprobeConfig},
    },
    kernel::mechanism::MechanismChoice,
    process::{Selector, kubernetes::KubernetesConfig},
};

/// The default configuration, embedded so that `periscope run` works with no file at all.
pub const DEFAULT_YAML: &str = include_str!("../../config/periscope.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid environment variable {name}={value:?}: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub service: ServiceConfig,
    pub prometheus: PrometheusConfig,
    pub otlp: OtlpConfig,
    pub probes: ProbesConfig,
    pub histograms: HistogramsConfig,
    /// Pod names from the API server (off by default).
    pub kubernetes: KubernetesConfig,
    /// Log filter in `tracing` EnvFilter syntax (`info`, `periscope=debug`, ...).
    pub log: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// `service.name` of the node agent's own resource. Default: `periscope`.
    pub name: Option<String>,
    /// Extra resource attributes added to everything exported.
    pub resource_attributes: BTreeMap<String, String>,
}

impl ServiceConfig {
    /// The node agent's own resource with this section applied.
    pub fn resource(&self) -> crate::model::resource::Resource {
        crate::model::resource::Resource::detect(self.name.as_deref(), &self.resource_attributes)
    }
}

/// Histogram export: the classic bucket layout of each histogram metric.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistogramsConfig {
    /// Upper bounds of the classic buckets (Prometheus `le`, OTLP `explicit_bounds`) per
    /// histogram metric, by OTel name; metrics not listed keep their default layout. Checked
    /// while read: positive, strictly ascending, at most `layout::MAX_BOUNDS`.
    pub buckets: BTreeMap<crate::model::layout::MetricName, crate::model::layout::Bounds>,
}

impl HistogramsConfig {
    pub fn layouts(&self) -> crate::model::layout::Layouts {
        crate::model::layout::Layouts::new(&self.buckets)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// host:port of the `/metrics` endpoint; empty disables it.
    pub listen: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
}

/// How histograms are sent over OTLP (the OTel SDK's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistogramAggregation {
    /// Explicit buckets with the metric's fixed layout (`histograms.buckets`), the same bounds
    /// on every data point: what every collector exporter and Prometheus version aggregates.
    ExplicitBucketHistogram,
    /// Base-2 exponential histogram at the kernel's scale (4): lossless and compact.
    Base2ExponentialBucketHistogram,
}

impl HistogramAggregation {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "explicit_bucket_histogram" => Some(Self::ExplicitBucketHistogram),
            "base2_exponential_bucket_histogram" => Some(Self::Base2ExponentialBucketHistogram),
            _ => None,
        }
    }
}

/// OTLP aggregation temporality of counters and histograms (the Prometheus endpoint is always
/// cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Temporality {
    /// Counts since the daemon started: a failed export loses nothing.
    #[default]
    Cumulative,
    /// Counts since the last accepted export (a failed export's counts go into the next one).
    Delta,
}

impl Temporality {
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: `lowmemory` means delta for
    /// counters and histograms, which is all Periscope sends with a temporality.
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cumulative" => Some(Self::Cumulative),
            "delta" | "lowmemory" => Some(Self::Delta),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Collector endpoint; OTLP export is on when this is set. gRPC: `http://host:4317`;
    /// http/protobuf: `http://host:4318` (`/v1/metrics` is appended).
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// Extra request headers (gRPC metadata), e.g. an API key.
    pub headers: BTreeMap<String, String>,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    pub histogram_aggregation: HistogramAggregation,
    pub temporality: Temporality,
    /// PEM file of the CA(s) that sign the collector's certificate, for `https://` endpoints
    /// (added to the system's roots).
    pub certificate: Option<PathBuf>,
    /// PEM client certificate and key, for collectors that require mutual TLS.
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            headers: BTreeMap::new(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            histogram_aggregation: HistogramAggregation::ExplicitBucketHistogram,
            temporality: Temporality::Cumulative,
            certificate: None,
            client_certificate: None,
            client_key: None,
        }
    }
}

impl Config {
    /// Parses YAML text. An empty document (or one with only comments) is the default config.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parsed: Option<Config> =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        let config = parsed.unwrap_or_default();
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads the file at `path`, or the embedded default when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::from_yaml(DEFAULT_YAML, "(embedded default)"),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                    path: path.display().to_string(),
                    error,
                })?;
                Self::from_yaml(&text, &path.display().to_string())
            }
        }
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Parse {
            origin: origin.to_string(),
            message,
        };
        if self.otlp.interval.is_zero() {
            return Err(invalid("otlp.interval: must be greater than zero".into()));
        }
        self.probes.validate().map_err(invalid)?;
        Ok(())
    }

    /// Overlays environment variables (standard OTEL_* and PERISCOPE_*). `env` is a lookup so
    /// that tests need not touch the process environment.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = env("PERISCOPE_PROMETHEUS_LISTEN") {
            self.prometheus.listen = v.trim().to_string();
        }
        if let Some(v) = get("PERISCOPE_LOG") {
            self.log = Some(v);
        }
        if let Some(v) = get("PERISCOPE_KUBERNETES_ENABLED") {
            self.kubernetes.enabled = v.trim().parse().map_err(|_| ConfigError::Env {
                name: "PERISCOPE_KUBERNETES_ENABLED",
                value: v.clone(),
                reason: "expected true or false".into(),
            })?;
        }
        let node = crate::model::resource::NODE_NAME_ENV;
        // Blank counts as unset, as `node_name()` reads it.
        if self.kubernetes.enabled && get(node).is_none_or(|n| n.trim().is_empty()) {
            return Err(ConfigError::Env {
                name: node,
                value: String::new(),
                reason: "kubernetes.enabled watches the pods of this node only, and this \
                         variable names it: set it from the downward API (spec.nodeName)"
                    .into(),
            });
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER") {
            self.probes.http.sampler = v.trim().to_string();
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER_ARG") {
            let ratio = v.trim().parse::<f64>().map_err(|e| ConfigError::Env {
                name: "OTEL_TRACES_SAMPLER_ARG",
                value: v.clone(),
                reason: e.to_string(),
            })?;
            self.probes.http.sampler_arg = Some(ratio);
        }
        if let Err(reason) = crate::families::http::span::Sampling::parse(
            &self.probes.http.sampler,
            self.probes.http.sampler_arg,
        ) {
            return Err(ConfigError::Env {
                name: "OTEL_TRACES_SAMPLER",
                value: self.probes.http.sampler.clone(),
                reason,
            });
        }
        if let Some(v) = get("OTEL_SERVICE_NAME") {
            self.service.name = Some(v);
        }
        if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES") {
            let attrs = parse_key_values(&v).map_err(|reason| ConfigError::Env {
                name: "OTEL_RESOURCE_ATTRIBUTES",
                value: v.clone(),
                reason,
            })?;
            self.service.resource_attributes.extend(attrs);
        }
        for name in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ] {
            if let Some(v) = get(name) {
                self.otlp.endpoint = Some(v.trim().to_string());
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            if let Some(v) = get(name) {
                self.otlp.protocol =
                    OtlpProtocol::parse(v.trim()).ok_or_else(|| ConfigError::Env {
                        name,
                        value: v.clone(),
                        reason: "expected grpc or http/protobuf (http/json is not supported)"
                            .into(),
                    })?;
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        ] {
            if let Some(v) = get(name) {
                let headers = parse_key_values(&v).map_err(|reason| ConfigError::Env {
                    name,
                    value: "(redacted)".into(),
                    reason,
                })?;
                self.otlp.headers.extend(headers);
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        ] {
            if let Some(v) = get(name) {
                self.otlp.timeout = parse_millis(name, &v)?;
            }
        }
        let files: [(&[&'static str; 2], &mut Option<PathBuf>); 3] = [
            (
                &[
                    "OTEL_EXPORTER_OTLP_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
                ],
                &mut self.otlp.certificate,
            ),
            (
                &[
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                ],
                &mut self.otlp.client_certificate,
            ),
            (
                &[
                    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
                ],
                &mut self.otlp.client_key,
            ),
        ];
        for (names, slot) in files {
            for name in names {
                if let Some(v) = get(name) {
                    *slot = Some(PathBuf::from(v.trim()));
                }
            }
        }
        if let Some(v) = get("OTEL_METRIC_EXPORT_INTERVAL") {
            self.otlp.interval = parse_millis("OTEL_METRIC_EXPORT_INTERVAL", &v)?;
        }
        let name = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION";
        if let Some(v) = get(name) {
            self.otlp.histogram_aggregation =
                HistogramAggregation::parse(v.trim()).ok_or_else(|| ConfigError::Env {
                    name,
                    value: v.clone(),
                    reason:
                        "expected explicit_bucket_histogram or base2_exponential_bucket_histogram"
                            .into(),
                })?;
        }
        let name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
        if let Some(v) = get(name) {
            self.otlp.temporality =
                Temporality::parse(v.trim()).ok_or_else(|| ConfigError::Env {
                    name,
                    value: v.clone(),
                    reason: "expected cumulative, delta or lowmemory".into(),
                })?;
        }
        Ok(())
    }
}

/// Milliseconds, as the OTel specification writes timeouts and intervals in the environment.
fn parse_millis(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(ConfigError::Env {
            name,
            value: value.to_string(),
            reason: "expected a positive whole number of milliseconds".into(),
        }),
    }
}

/// `key1=value1,key2=value2` with percent-encoded values (W3C Baggage style), as
/// OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS are written.
fn parse_key_values(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{item:?} has an empty key"));
        }
        out.insert(key.to_string(), percent_decode(value.trim()));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, String> {
        Config::from_yaml(yaml, "test.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# only a comment\n").unwrap(), Config::default());
    }

    #[test]
    fn embedded_default_parses_to_the_defaults() {
        assert_eq!(parse(DEFAULT_YAML).unwrap(), Config::default());
    }

    #[test]
    fn full_example_parses() {
        let text = include_str!("../../config/examples/full.yaml");
        let config = parse(text).unwrap();
        assert_eq!(
            config.otlp.endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(config.otlp.interval, Duration::from_secs(15));
        assert_eq!(
            config.otlp.histogram_aggregation,
            HistogramAggregation::Base2ExponentialBucketHistogram
        );
        assert_eq!(config.otlp.temporality, Temporality::Delta);
        assert!(config.kubernetes.enabled);
        assert!(config.probes.sched.by_cgroup);
        assert_eq!(config.probes.sched.max_cgroups, 64);
        assert_eq!(config.probes.block.mechanism, MechanismChoice::Tracepoint);
        let syscall = &config.probes.syscall;
        assert_eq!(syscall.select[0].process_name.as_deref(), Some("postgres"));
        assert_eq!(syscall.rescan_interval, Duration::from_secs(5));
        assert_eq!(syscall.max_latency_entries, 32_768);
        let profile = &config.probes.profile;
        assert!(profile.enabled && !profile.off_cpu);
        assert_eq!((profile.frequency, profile.min_block_us), (19, 1000));
        let uprobe = &config.probes.uprobe;
        assert_eq!((uprobe.max_in_flight, uprobe.max_series), (8192, 2048));
        assert_eq!(
            uprobe.functions[0],
            FunctionConfig {
                path: "/usr/local/bin/myapp".into(),
                symbol: "process_order".into(),
                pid: None,
                process: Some("myapp".into()),
            }
        );
        assert_eq!(uprobe.functions[1].pid, Some(4242));
        let layouts = config.histograms.layouts();
        assert_eq!(layouts.of("http.server.request.duration").bounds()[5], 0.3);
    }

    #[test]
    fn syscall_selectors_take_no_port() {
        let err = parse("probes:\n  syscall:\n    select:\n      - port: 80\n").unwrap_err();
        assert_eq!(
            err,
            "invalid config test.yaml: probes.syscall.select[0].port: syscalls are selected by process, not port"
        );
        let err = parse("probes:\n  syscall:\n    max_threads: 0\n").unwrap_err();
        assert!(err.contains("max_threads must be at least 1"), "{err}");
    }

    #[test]
    fn uprobe_entries_are_checked() {
        let err = parse(
            "probes:\n  uprobe:\n    functions:\n      - path: /bin/app\n        symbol: f\n        tid: 3\n",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "invalid config test.yaml: probes.uprobe.functions[0]: unknown field `tid`, expected one of `path`, `symbol`, `pid`, `process` at line 6 column 9"
        );
        let err =
            parse("probes:\n  uprobe:\n    functions:\n      - path: /bin/app\n").unwrap_err();
        assert_eq!(
            err,
            "invalid config test.yaml: probes.uprobe.functions[0]: path and symbol are required"
        );
        let err = parse(
            "probes:\n  uprobe:\n    functions:\n      - {path: /bin/a, symbol: f, process: a-very-long-name-x}\n",
        )
        .unwrap_err();
        assert!(err.contains("must be 1 to 15 bytes"), "{err}");
    }

    #[test]
    fn usdt_entries_are_checked_and_named() {
        let config = parse(
            "probes:\n  usdt:\n    probes:\n      - {path: /bin/app, provider: app, name: query__start, done: query__done}\n      - {path: /bin/app, provider: app, name: tick, arg: 1, unit: By}\n",
        )
        .unwrap();
        let probes = &config.probes.usdt.probes;
        assert_eq!(probes[0].done.as_deref(), Some("query__done"));
        assert_eq!(
            (probes[1].arg, probes[1].unit.as_deref()),
            (Some(1), Some("By"))
        );
        let err = parse(
            "probes:\n  usdt:\n    probes:\n      - {path: /bin/app, provider: app, name: tick, semaphore: 1}\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with(
                "invalid config test.yaml: probes.usdt.probes[0]: unknown field `semaphore`"
            ),
            "{err}"
        );
        let err = parse("probes:\n  usdt:\n    probes:\n      - {path: /bin/app, name: tick}\n")
            .unwrap_err();
        assert_eq!(
            err,
            "invalid config test.yaml: probes.usdt.probes[0]: path, provider and name are required"
        );
        let err = parse(
            "probes:\n  usdt:\n    probes:\n      - {path: /bin/app, provider: a, name: b, arg: 0, done: c}\n",
        )
        .unwrap_err();
        assert!(
            err.contains("probes.usdt.probes[0]: arg and done cannot be combined"),
            "{err}"
        );
        let err = parse(
            "probes:\n  usdt:\n    probes:\n      - {path: /bin/app, provider: a, name: b, arg: 12}\n",
        )
        .unwrap_err();
        assert!(
            err.contains("probes.usdt.probes[0].arg: 12 is past the last argument"),
            "{err}"
        );
    }

    #[test]
    fn bucket_layouts_are_read_and_checked_where_they_are_written() {
        let config =
            parse("histograms:\n  buckets:\n    kernel.block.io.duration: [0.001, 0.01, 0.1]\n")
                .unwrap();
        let layouts = config.histograms.layouts();
        assert_eq!(
            layouts.of("kernel.block.io.duration").bounds(),
            &[0.001, 0.01, 0.1]
        );
        assert_eq!(
            layouts.of("http.server.request.duration").bounds(),
            &crate::model::layout::HTTP_DURATION_BOUNDS,
            "unlisted metrics keep their default"
        );
        let err = parse("histograms:\n  buckets:\n    kernel.block.io.duration: [0.01, 0.001]\n")
            .unwrap_err();
        assert_eq!(
            err,
            "invalid config test.yaml: histograms.buckets.kernel.block.io.duration: bounds must be strictly ascending: 0.01 is followed by 0.001 at line 3 column 31"
        );
        let err = parse("histograms:\n  buckets:\n    kernel.sched.runqueue.latency: [-1, 2]\n")
            .unwrap_err();
        assert!(err.contains("histograms.buckets.kernel.sched.runqueue.latency: bound -1 is not a positive finite number"), "{err}");
        assert!(err.contains("at line 3 column"), "{err}");
        let many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
        let err = parse(&format!(
            "histograms:\n  buckets:\n    process.function.duration: [{}]\n",
            many.join(", ")
        ))
        .unwrap_err();
        assert!(err.contains("101 bounds, at most 100"), "{err}");
        assert!(err.contains("at line 3 column"), "{err}");
        let err = parse("histograms:\n  buckets:\n    kernel.block.io.latency: [1]\n").unwrap_err();
        assert!(
            err.contains("unknown histogram metric \"kernel.block.io.latency\""),
            "{err}"
        );
        assert!(err.contains("at line 3 column 5"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_line_and_column() {
        let err = parse("probes:\n  block:\n    enabled: true\n    sampling: 3\n").unwrap_err();
        assert_eq!(
            err,
            "invalid config test.yaml: probes.block: unknown field `sampling`, expected `enabled` or `mechanism` at line 4 column 5"
        );
    }

    #[test]
    fn a_mechanism_nothing_implements_is_refused_with_its_line() {
        let err = parse("probes:\n  tcp:\n    mechanism: kprobe\n").unwrap_err();
        assert!(
            err.starts_with(
                "invalid config test.yaml: probes.tcp.mechanism: unknown variant `kprobe`"
            ) && err.ends_with("at line 3 column 16"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = parse("probes:\n  sched:\n    max_cgroups: many\n").unwrap_err();
        assert_eq!(
            err,
            "invalid config test.yaml: probes.sched.max_cgroups: invalid type: string \"many\", expected u32 at line 3 column 18"
        );
    }

    #[test]
    fn bad_duration_says_how_to_write_one() {
        let err = parse("otlp:\n  interval: 10 parsecs\n").unwrap_err();
        assert_eq!(
            err,
            "invalid config test.yaml: otlp.interval: invalid duration \"10 parsecs\" (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write it like 10s, 500ms or 1m at line 2 column 13"
        );
    }

    #[test]
    fn environment_beats_file() {
        let mut config = parse("otlp:\n  endpoint: http://file:4317\n").unwrap();
        let env = BTreeMap::from([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret, x=1"),
            ("OTEL_SERVICE_NAME", "node-a"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "2500"),
            ("PERISCOPE_PROMETHEUS_LISTEN", ""),
        ]);
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(config.otlp.endpoint.as_deref(), Some("http://env:4318"));
        assert_eq!(config.otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.otlp.headers["api-key"], "s=cret");
        assert_eq!(config.otlp.headers["x"], "1");
        assert_eq!(config.service.name.as_deref(), Some("node-a"));
        assert_eq!(
            config.service.resource_attributes["deployment.environment"],
            "prod"
        );
        assert_eq!(config.otlp.interval, Duration::from_millis(2500));
        assert_eq!(config.prometheus.listen, "", "empty disables the endpoint");
    }

    #[test]
    fn kubernetes_enrichment_needs_the_node_name() {
        let mut config = parse("kubernetes:\n  enabled: true\n").unwrap();
        let err = config.apply_env(|_| None).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid environment variable K8S_NODE_NAME"),
            "{err}"
        );
        let blank = BTreeMap::from([("K8S_NODE_NAME", "  ")]);
        assert!(
            config
                .apply_env(|k| blank.get(k).map(|v| v.to_string()))
                .is_err(),
            "blank is unset: the watch would not start"
        );
        let env = BTreeMap::from([("K8S_NODE_NAME", "node-1")]);
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        let mut config = Config::default();
        let env = BTreeMap::from([
            ("PERISCOPE_KUBERNETES_ENABLED", "true"),
            ("K8S_NODE_NAME", "node-1"),
        ]);
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert!(config.kubernetes.enabled);
        let err = config
            .apply_env(|k| (k == "PERISCOPE_KUBERNETES_ENABLED").then(|| "yes".into()))
            .unwrap_err();
        assert!(err.to_string().contains("expected true or false"), "{err}");
        let err = parse("kubernetes:\n  enable: true\n").unwrap_err();
        assert!(err.contains("unknown field `enable`"), "{err}");
    }

    #[test]
    fn tls_files_come_from_file_and_environment_signal_specific_last() {
        let mut config =
            parse("otlp:\n  certificate: /file/ca.pem\n  client_key: /file/client.key\n").unwrap();
        let env = BTreeMap::from([
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/env/ca.pem"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
                "/env/metrics-ca.pem",
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", " /env/client.pem "),
        ]);
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        assert_eq!(
            path(&config.otlp.certificate).as_deref(),
            Some("/env/metrics-ca.pem")
        );
        assert_eq!(
            path(&config.otlp.client_certificate).as_deref(),
            Some("/env/client.pem")
        );
        assert_eq!(
            path(&config.otlp.client_key).as_deref(),
            Some("/file/client.key")
        );
    }

    #[test]
    fn temporality_preference_from_the_environment() {
        for (value, expected) in [
            ("delta", Temporality::Delta),
            ("LowMemory", Temporality::Delta),
            ("cumulative", Temporality::Cumulative),
        ] {
            let mut config = Config::default();
            config
                .apply_env(|k| {
                    (k == "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
                        .then(|| value.to_string())
                })
                .unwrap();
            assert_eq!(config.otlp.temporality, expected, "{value}");
        }
        let err = Config::default()
            .apply_env(|k| {
                (k == "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
                    .then(|| "sometimes".to_string())
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid environment variable OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=\"sometimes\": expected cumulative, delta or lowmemory"
        );
    }

    #[test]
    fn bad_environment_values_are_named() {
        let mut config = Config::default();
        let err = config
            .apply_env(|k| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".to_string()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid environment variable OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\": expected grpc or http/protobuf (http/json is not supported)"
        );
    }
}
