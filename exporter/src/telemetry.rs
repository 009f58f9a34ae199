//! The aggregation point between probes and exporters: one snapshot of every metric, read from
//! the kernel maps at the moment it is asked for (a scrape or an OTLP export), plus Periscope's
//! own telemetry (`periscope.*`).

use crate::model::names;
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use crate::{
    families::Probes,
    model::metrics::{Metric, Points, Resource},
};

/// Export outcomes, counted by the OTLP exporter.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
}

pub struct Telemetry {
    probes: Mutex<Probes>,
    pub resource: Resource,
    /// The classic bucket layout of each histogram metric (both exporters use it).
    pub layouts: crate::model::layout::Layouts,
    /// Start of the cumulative counts: when the maps were created.
    pub start_time: SystemTime,
    pub export: ExportStats,
    /// Span export outcomes (HTTP spans).
    pub spans: std::sync::Arc<crate::model::span::SpanStats>,
    /// The continuous profiler, when `probes.profile` is on (pprof endpoint, OTLP profiles).
    pub profiler: Option<crate::families::profile::continuous::Profiler>,
    /// What became of the continuous profile's windows.
    pub profiles: std::sync::Arc<crate::families::profile::continuous::ProfileStats>,
}

impl Telemetry {
    pub fn new(probes: Probes, resource: Resource, layouts: crate::model::layout::Layouts) -> Self {
        Self {
            probes: Mutex::new(probes),
            resource,
            layouts,
            start_time: SystemTime::now(),
            export: ExportStats::default(),
            spans: Default::default(),
            profiler: None,
            profiles: Default::default(),
        }
    }

    /// Gives back the probes (for a clean detach at shutdown).
    pub fn into_probes(self) -> Probes {
        self.probes.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Every family's long-running tasks (see `Family::tasks`).
    pub fn family_tasks(
        &self,
        ctx: &crate::families::TaskContext<'_>,
    ) -> anyhow::Result<Vec<crate::families::Task>> {
        self.probes().tasks(ctx)
    }

    /// Which families rescan, and how often (see `Family::rescan`).
    pub fn rescans(&self) -> Vec<(&'static str, std::time::Duration)> {
        self.probes().rescans()
    }

    /// Picks up processes started since the last rescan of `family`.
    pub fn rescan(&self, family: &str) {
        self.probes().rescan(family);
    }

    /// Removes stale start-time entries from the kernel maps (see `families::STALE_AFTER`).
    pub fn sweep(&self) {
        self.probes().sweep();
    }

    fn probes(&self) -> std::sync::MutexGuard<'_, Probes> {
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything, cumulative since start.
    pub fn snapshot(&self) -> Vec<Metric> {
        let mut probes = self.probes();
        let mut out = Vec::new();
        probes.collect(&mut out);
        self.self_telemetry(&probes, &mut out);
        out
    }

    fn self_telemetry(&self, probes: &Probes, out: &mut Vec<Metric>) {
        let attached = probes
            .statuses
            .iter()
            .filter(|s| s.enabled)
            .map(|s| {
                let mechanism = s.mechanism.map(|m| m.name()).unwrap_or("none");
                let attrs = vec![
                    ("probe", s.family.to_string()),
                    ("mechanism", mechanism.to_string()),
                ];
                (attrs, if s.attached() { 1.0 } else { 0.0 })
            })
            .collect();
        out.push(Metric {
            name: names::PERISCOPE_PROBE_ATTACHED,
            description: "1 when the probe family is attached (with the mechanism used), 0 when it could not attach.",
            unit: "1",
            points: Points::Gauge(attached),
            resource: None,
        });
        let errors = probes
            .counters()
            .into_iter()
            .map(|(probe, kind, n)| {
                (
                    vec![("probe", probe.to_string()), ("kind", kind.to_string())],
                    n as f64,
                )
            })
            .collect();
        out.push(Metric {
            name: names::PERISCOPE_PROBE_ERRORS,
            description: "Events the eBPF programs could not account for: unmatched completions, full maps.",
            unit: "1",
            points: Points::Counter(errors),
            resource: None,
        });
        let misses = probes
            .recursion_misses()
            .into_iter()
            .map(|(p, n)| (vec![("program", p)], n as f64))
            .collect();
        out.push(Metric {
            name: names::PERISCOPE_BPF_PROGRAM_RECURSION_MISSES,
            description: "Runs of each eBPF program the kernel skipped because another BPF program was running on that CPU (those events are lost).",
            unit: "1",
            points: Points::Counter(misses),
            resource: None,
        });
        if bpf_stats_enabled() {
            let stats = probes.program_stats();
            let run_time = stats
                .iter()
                .map(|(p, t, _)| (vec![("program", p.clone())], t.as_secs_f64()))
                .collect();
            let run_count = stats
                .iter()
                .map(|(p, _, n)| (vec![("program", p.clone())], *n as f64))
                .collect();
            out.push(Metric {
                name: names::PERISCOPE_BPF_PROGRAM_RUN_TIME,
                description: "Time spent in each eBPF program (kernel.bpf_stats_enabled=1).",
                unit: "s",
                points: Points::Counter(run_time),
                resource: None,
            });
            out.push(Metric {
                name: names::PERISCOPE_BPF_PROGRAM_RUN_COUNT,
                description: "Runs of each eBPF program (kernel.bpf_stats_enabled=1).",
                unit: "1",
                points: Points::Counter(run_count),
                resource: None,
            });
        }
        let export = [
            ("success", &self.export.succeeded),
            ("failure", &self.export.failed),
            ("retry", &self.export.retried),
        ]
        .into_iter()
        .map(|(outcome, n)| {
            (
                vec![
                    ("exporter", "otlp".to_string()),
                    ("outcome", outcome.to_string()),
                ],
                n.load(Ordering::Relaxed) as f64,
            )
        })
        .collect();
        let spans = by_outcome(&[
            ("exported", &self.spans.exported),
            ("dropped_queue_full", &self.spans.dropped_queue_full),
            ("dropped_export_failed", &self.spans.dropped_export_failed),
        ]);
        out.push(Metric {
            name: names::PERISCOPE_EXPORT_SPANS,
            description: "HTTP spans by outcome: exported, or dropped because the queue was full or the collector failed past the retry window.",
            unit: "1",
            points: Points::Counter(spans),
            resource: None,
        });
        if self.profiler.is_some() {
            self.profile_stats(out);
        }
        if let Some(pods) = crate::process::kubernetes::watched() {
            pod_watch_stats(pods, out);
        }
        out.push(Metric {
            name: names::PERISCOPE_EXPORT_REQUESTS,
            description: "OTLP export requests by outcome (a failure drops nothing: counts are cumulative).",
            unit: "1",
            points: Points::Counter(export),
            resource: None,
        });
    }
}

impl Telemetry {
    fn profile_stats(&self, out: &mut Vec<Metric>) {
        let stats = &self.profiles;
        let windows = by_outcome(&[
            ("exported", &stats.exported),
            ("dropped_export_failed", &stats.export_failed),
            ("empty", &stats.empty),
        ]);
        out.push(Metric {
            name: names::PERISCOPE_EXPORT_PROFILES,
            description: "Continuous profile windows by outcome (a failed window is lost: profiles are not cumulative).",
            unit: "1",
            points: Points::Counter(windows),
            resource: None,
        });
        out.push(Metric {
            name: names::PERISCOPE_PROFILE_MAPS_EMPTIED,
            description: "Times the profile's kernel maps were emptied because they were three-quarters full.",
            unit: "1",
            points: Points::Counter(vec![(
                Vec::new(),
                stats.maps_emptied.load(Ordering::Relaxed) as f64,
            )]),
            resource: None,
        });
        out.push(Metric {
            name: names::PERISCOPE_PROFILE_STACKS_ADDRESSED,
            description: "Stacks exported with addresses instead of function names because naming them ran past its time budget (they are named in later windows).",
            unit: "1",
            points: Points::Counter(vec![(
                Vec::new(),
                stats.stacks_addressed.load(Ordering::Relaxed) as f64,
            )]),
            resource: None,
        });
    }
}

/// The pod watch of `kubernetes.enabled`: what it holds, and how often it failed.
fn pod_watch_stats(pods: &crate::process::kubernetes::Pods, out: &mut Vec<Metric>) {
    out.push(Metric {
        name: names::PERISCOPE_KUBERNETES_PODS,
        description: "Pods of this node whose names the daemon holds (kubernetes.enabled).",
        unit: "1",
        points: Points::Gauge(vec![(Vec::new(), pods.len() as f64)]),
        resource: None,
    });
    out.push(Metric {
        name: names::PERISCOPE_KUBERNETES_WATCH_ERRORS,
        description: "Failed lists and watches of this node's pods (each retried with backoff), and a client that could not be made.",
        unit: "1",
        points: Points::Counter(vec![(Vec::new(), pods.errors() as f64)]),
        resource: None,
    });
}

/// Counter points, one per `outcome`.
fn by_outcome(counters: &[(&str, &AtomicU64)]) -> Vec<(Vec<(&'static str, String)>, f64)> {
    counters
        .iter()
        .map(|(outcome, n)| {
            (
                vec![("outcome", outcome.to_string())],
                n.load(Ordering::Relaxed) as f64,
            )
        })
        .collect()
}

/// `kernel.bpf_stats_enabled`: the kernel keeps per-program run time and count only when on.
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}
