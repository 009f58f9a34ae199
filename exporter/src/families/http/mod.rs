//! HTTP RED metrics and spans from the kernel's capture of socket I/O (see
//! `ebpf/periscope-ebpf/src/http/`): [`attach`] plans and attaches the programs and drains the
//! ring buffer into the [`tracker`]; [`tls`] adds OpenSSL's plaintext and [`gotls`] Go's
//! `crypto/tls` (uprobes).

pub mod aggregate;
pub mod attach;
pub mod config;
pub mod connection;
pub mod gotls;
pub mod grpc;
pub mod h2;
pub mod http2;
pub mod parse;
pub mod record;
pub mod route;
pub mod span;
pub mod tls;
pub mod tracker;

use crate::model::names;
use std::sync::{Arc, Mutex};

use aya::{Ebpf, maps::MapData};
use periscope_common::http::HttpPending;

pub use self::{
    config::HttpConfig,
    tracker::{HttpState, Tracker},
};
use super::{Family, Registration, Started, Task, TaskContext, sweep_stale};
use crate::model::metrics::{Metric, Points};

pub const REGISTRATION: Registration = Registration {
    name: "http",
    plan: |config, kernel, tracefs| attach::plan(&config.http, kernel, tracefs),
    start: |ebpf, plan, config| {
        let (capture, mut status) = attach::start(ebpf, plan);
        let family = capture.map(|capture| {
            let tls = if config.http.tls {
                tls::start(ebpf, &mut status)
            } else {
                None
            };
            Box::new(HttpFamily {
                state: attach::state(&config.http),
                pending: capture.pending.clone(),
                capture: Some(capture),
                tls,
            }) as Box<dyn Family>
        });
        Started { family, status }
    },
};

/// How often processes started since the last scan are checked for OpenSSL and Go TLS.
const TLS_SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

struct HttpFamily {
    /// The capture's maps, until [`Family::tasks`] hands them to the capture loop.
    capture: Option<attach::Http>,
    /// What the capture loop aggregated (shared with it).
    state: Arc<Mutex<HttpState>>,
    /// Syscalls in flight (swept like the other start-time maps).
    pending: Arc<Mutex<aya::maps::HashMap<MapData, u32, HttpPending>>>,
    /// The OpenSSL probes (HTTPS), when on.
    tls: Option<tls::Tls>,
}

impl Family for HttpFamily {
    fn collect(&mut self, out: &mut Vec<Metric>) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .collect(out);
        if let Some(tls) = &self.tls {
            out.push(Metric {
                name: names::PERISCOPE_HTTP_TLS_FILES,
                description: "Files whose TLS plaintext is captured: libssl or executables with OpenSSL linked in (SSL_read/SSL_write), and Go executables (crypto/tls).",
                unit: "1",
                points: Points::Gauge(
                    tls.attached
                        .iter()
                        .chain(tls.go_attached.iter().map(|(path, _)| path))
                        .map(|path| (vec![("file.path", tls::shown(path))], 1.0))
                        .collect(),
                ),
                resource: None,
            });
        }
    }

    fn sweep(&mut self) -> u64 {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        sweep_stale(&mut map, |p| p.start_ns)
    }

    fn rescan_every(&self) -> Option<std::time::Duration> {
        self.tls.as_ref().map(|_| TLS_SCAN_EVERY)
    }

    fn rescan(&mut self, ebpf: &mut Ebpf) {
        if let Some(tls) = &mut self.tls {
            tls.scan(ebpf);
        }
    }

    fn attaches_later(&self) -> bool {
        self.tls.is_some()
    }

    fn check_lines(&self) -> Option<super::CheckLines> {
        self.tls.as_ref().map(tls::Tls::check_lines)
    }

    fn tasks(&mut self, ctx: &TaskContext<'_>) -> anyhow::Result<Vec<Task>> {
        let Some(capture) = self.capture.take() else {
            return Ok(Vec::new());
        };
        let tracker = Tracker::new(
            ctx.config.http.clone(),
            self.state.clone(),
            ctx.spans.clone(),
        )?;
        Ok(vec![Box::pin(attach::run(
            capture,
            tracker,
            ctx.stopped.clone(),
        ))])
    }
}
