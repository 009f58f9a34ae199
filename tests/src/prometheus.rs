//! A real Prometheus server (the Debian `prometheus` package) scraping one target every second,
//! with its own data directory and port, and its HTTP API: instant queries and exemplar queries.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{daemon::http_get, free_port, wait_for};

pub struct Prometheus {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// One series of a query answer: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub value: f64,
}

/// One exemplar of `query_exemplars`.
#[derive(Debug, Clone)]
pub struct QueriedExemplar {
    pub series: serde_json::Map<String, serde_json::Value>,
    pub trace_id: String,
    pub span_id: String,
    pub value: f64,
    pub timestamp: f64,
}

impl Prometheus {
    /// Starts `prometheus` scraping `127.0.0.1:target` every second, with the given
    /// `--enable-feature` flags, and waits until it is ready.
    pub fn start(target: u16, features: &[&str]) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: periscope\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let mut command = Command::new("prometheus");
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for feature in features {
            command.arg(format!("--enable-feature={feature}"));
        }
        let child = command
            .spawn()
            .expect("spawn prometheus (apt package prometheus)");
        let prometheus = Self {
            child,
            port,
            _dir: dir,
        };
        wait_for("prometheus ready", Duration::from_secs(30), || {
            http_get(port, "/-/ready").ok()
        });
        prometheus
    }

    fn api(&self, path_and_query: &str) -> serde_json::Value {
        let body = http_get(self.port, path_and_query)
            .unwrap_or_else(|e| panic!("prometheus {path_and_query}: {e}"));
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
        assert_eq!(answer["status"], "success", "{path_and_query}: {body}");
        answer["data"].clone()
    }

    /// An instant query at the current time.
    pub fn query(&self, expr: &str) -> Vec<Sample> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|series| Sample {
                labels: series["metric"].as_object().cloned().unwrap_or_default(),
                value: series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// The one value of a query that must answer exactly one series.
    pub fn scalar(&self, expr: &str) -> f64 {
        let samples = self.query(expr);
        assert_eq!(samples.len(), 1, "{expr}: {samples:?}");
        samples[0].value
    }

    /// Exemplars of the series `expr` selects, over the last `window`.
    pub fn query_exemplars(&self, expr: &str, window: Duration) -> Vec<QueriedExemplar> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let data = self.api(&format!(
            "/api/v1/query_exemplars?query={}&start={:.3}&end={:.3}",
            encode(expr),
            now - window.as_secs_f64(),
            now + 1.0
        ));
        let mut out = Vec::new();
        for series in data.as_array().into_iter().flatten() {
            let labels = series["seriesLabels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for e in series["exemplars"].as_array().into_iter().flatten() {
                let label = |k: &str| e["labels"][k].as_str().unwrap_or("").to_string();
                out.push(QueriedExemplar {
                    series: labels.clone(),
                    trace_id: label("trace_id"),
                    span_id: label("span_id"),
                    value: e["value"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN),
                    timestamp: e["timestamp"].as_f64().unwrap_or(f64::NAN),
                });
            }
        }
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter (everything but unreserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
