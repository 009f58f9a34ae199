//! Collection for `periscope triage`: the daemon's probe families, started the same way
//! (`Probes::start` on the embedded default config, syscall family on), plus the exec counter;
//! periodic cumulative snapshots; and the window, each snapshot minus the first one.

use crate::model::names;
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    config::{Config, Selector},
    families::{
        ProbeStatus, Probes, TaskContext,
        exec::{Exec, ExecCounts},
    },
    kernel::tracefs::Tracefs,
    model::histogram::Histogram,
    model::metrics::{Attributes, Metric, Points},
    process::ProcessResource,
    telemetry::Telemetry,
};

/// Which processes the per-process sections (syscalls, TCP, HTTP) look at.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Scope {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub container: Option<String>,
    /// Other Periscope processes (the daemon): left out like triage itself, whatever the scope.
    #[serde(skip)]
    pub skip: Vec<u32>,
}

impl Scope {
    pub fn is_all(&self) -> bool {
        self.pid.is_none() && self.comm.is_none() && self.container.is_none()
    }

    /// In words, for the report header.
    pub fn describe(&self) -> String {
        if let Some(pid) = self.pid {
            return format!("process {pid}");
        }
        if let Some(comm) = &self.comm {
            return format!("processes named {comm}");
        }
        if let Some(id) = &self.container {
            return format!("container {id}");
        }
        "all processes but periscope".into()
    }

    /// Whether a process resource is in scope (always, without a selection, but for Periscope's
    /// own processes: their kernel-side exclusion covers the HTTP and syscall families, this
    /// covers the others).
    pub fn matches(&self, resource: Option<&ProcessResource>) -> bool {
        let attr = |name: &str| {
            resource?
                .attributes
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let pid = attr("process.pid").and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p == std::process::id() || self.skip.contains(&p)) {
            return false;
        }
        if self.is_all() {
            return true;
        }
        let Some(resource) = resource else {
            return false;
        };
        if let Some(pid) = self.pid {
            return attr("process.pid") == Some(pid.to_string().as_str());
        }
        if let Some(comm) = &self.comm {
            let exe = attr("process.executable.name").unwrap_or_default();
            // The kernel's comm is at most 15 bytes: a longer executable name starts with it.
            return exe == comm
                || resource.service_name == *comm
                || (comm.len() == 15 && exe.starts_with(comm.as_str()));
        }
        if let Some(id) = &self.container {
            return attr("container.id").is_some_and(|c| c.starts_with(id.as_str()));
        }
        true
    }

    /// The kernel-side selection of the syscall family: a pid is selected through its comm
    /// (selectors have no pid), and the other processes of that name are filtered out here.
    fn syscall_selectors(&self) -> Vec<Selector> {
        let comm = match (self.pid, &self.comm) {
            (Some(pid), _) => std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|c| c.trim().to_string()),
            (None, comm) => comm.clone(),
        };
        if let Some(comm) = comm {
            return vec![Selector {
                process_name: Some(comm),
                ..Selector::default()
            }];
        }
        if let Some(id) = &self.container {
            return vec![Selector {
                container_id: Some(id.clone()),
                ..Selector::default()
            }];
        }
        Vec::new()
    }
}

/// Something triage cannot show, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unavailable {
    pub what: String,
    pub why: String,
}

/// One series of a snapshot, by (metric, process, attributes).
type Key = (&'static str, String, Attributes);

#[derive(Debug, Clone)]
pub enum Value {
    Histogram(Histogram),
    Count(f64),
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: &'static str,
    pub resource: Option<Arc<ProcessResource>>,
    pub attributes: Attributes,
    pub value: Value,
}

impl Series {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A cumulative snapshot.
pub struct Snapshot {
    pub at: Instant,
    series: HashMap<Key, Series>,
    exec: ExecCounts,
    /// TCP segments (sent, retransmitted), per network namespace (inode).
    segments: HashMap<u64, (u64, u64)>,
}

/// What happened between the first snapshot and a later one.
pub struct Window {
    pub elapsed: Duration,
    pub series: Vec<Series>,
    pub exec: Option<ExecCounts>,
    /// TCP segments (sent, retransmitted) in the window, over every network namespace that has
    /// a process (`/proc/PID/net/snmp`: `OutSegs`, `RetransSegs`).
    pub segments: Option<(u64, u64)>,
    /// The same per network namespace, (sent, retransmitted).
    pub segments_per_namespace: Vec<(u64, u64)>,
}

pub struct Session {
    pub telemetry: Arc<Telemetry>,
    exec: Option<Exec>,
    pub statuses: Vec<ProbeStatus>,
    pub unavailable: Vec<Unavailable>,
    pub scope: Scope,
    baseline: Snapshot,
    namespaces: std::sync::Mutex<NetnsCache>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn has_cap(cap: caps::Capability) -> bool {
    caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false)
}

/// The configuration triage runs the families with: the embedded default, no endpoint, no
/// export, no uprobes, the syscall family on for the scope.
pub fn config(scope: &Scope) -> anyhow::Result<Config> {
    let mut config = Config::load(None)?;
    config.prometheus.listen = String::new();
    config.otlp.endpoint = None;
    config.probes.http.spans = false;
    config.probes.uprobe.functions.clear();
    config.probes.syscall.enabled = true;
    config.probes.syscall.select = scope.syscall_selectors();
    config.probes.skip_pids = scope.skip.clone();
    Ok(config)
}

impl Session {
    /// Attaches everything that can attach here and takes the first snapshot.
    pub fn start(mut scope: Scope) -> anyhow::Result<Self> {
        scope.skip = other_periscopes();
        let config = config(&scope)?;
        let mut unavailable = Vec::new();
        let tracefs = match Tracefs::locate_or_mount() {
            Ok(t) => Some(t),
            Err(e) => {
                unavailable.push(Unavailable {
                    what: "every tracepoint family".into(),
                    why: e.to_string(),
                });
                None
            }
        };
        let mut probes = Probes::start(&config.probes, tracefs.as_ref())?;
        let (exec, _) = probes.start_exec(tracefs.as_ref());
        let statuses = probes.statuses.clone();
        for status in statuses.iter().filter(|s| s.enabled && !s.attached()) {
            unavailable.push(Unavailable {
                what: section_of(status.family).into(),
                why: status.error.clone().unwrap_or_default(),
            });
        }
        let http_attached = statuses.iter().any(|s| s.family == "http" && s.attached());
        let tls_files = {
            let mut out = Vec::new();
            probes.collect(&mut out);
            out.iter().any(|m| {
                m.name == names::PERISCOPE_HTTP_TLS_FILES
                    && matches!(&m.points, Points::Gauge(p) if !p.is_empty())
            })
        };
        if http_attached && !tls_files {
            let why = if has_cap(caps::Capability::CAP_SYS_ADMIN) {
                "no OpenSSL library (libssl) found to attach to, or its uprobes failed".into()
            } else {
                "the OpenSSL uprobes need CAP_SYS_ADMIN (the kernel's uprobe PMU refuses \
                 without it): HTTPS requests are not counted, plaintext HTTP is"
                    .to_string()
            };
            unavailable.push(Unavailable {
                what: "HTTPS (HTTP over OpenSSL)".into(),
                why,
            });
        }
        if !statuses.iter().any(|s| s.attached()) {
            anyhow::bail!(
                "no probe family could attach: {}",
                unavailable
                    .iter()
                    .map(|u| format!("{}: {}", u.what, u.why))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        let telemetry = Arc::new(Telemetry::new(
            probes,
            config.service.resource(),
            config.histograms.layouts(),
        ));
        let (stop, stopped) = watch::channel(false);
        let ctx = TaskContext {
            config: &config.probes,
            stopped: stopped.clone(),
            spans: None,
        };
        let mut tasks: Vec<_> = telemetry
            .family_tasks(&ctx)?
            .into_iter()
            .map(tokio::spawn)
            .collect();
        drop(ctx);
        {
            let telemetry = telemetry.clone();
            let mut stopped = stopped.clone();
            let every = config.probes.syscall.rescan_interval;
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {
                            let t = telemetry.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                for (family, _) in t.rescans() {
                                    t.rescan(family);
                                }
                            })
                            .await;
                        }
                        _ = stopped.changed() => return,
                    }
                }
            }));
        }
        let mut namespaces = NetnsCache::default();
        let baseline = take(&telemetry, exec.as_ref(), &mut namespaces);
        Ok(Self {
            namespaces: std::sync::Mutex::new(namespaces),
            telemetry,
            exec,
            statuses,
            unavailable,
            scope,
            baseline,
            stop,
            tasks,
        })
    }

    pub fn attached(&self, family: &str) -> bool {
        self.statuses
            .iter()
            .any(|s| s.family == family && s.attached())
    }

    pub fn started(&self) -> Instant {
        self.baseline.at
    }

    /// A snapshot now, minus the first one.
    pub fn window(&self) -> Window {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let now = take(&self.telemetry, self.exec.as_ref(), &mut namespaces);
        drop(namespaces);
        let base = &self.baseline;
        let series = now
            .series
            .into_iter()
            .filter_map(|(key, mut s)| {
                let before = base.series.get(&key);
                s.value = match (s.value, before.map(|b| &b.value)) {
                    (Value::Histogram(h), Some(Value::Histogram(b))) => {
                        Value::Histogram(minus(&h, b))
                    }
                    // A counter that went backwards restarted: all of it is new.
                    (Value::Count(n), Some(Value::Count(b))) => {
                        Value::Count(if n < *b { n } else { n - b })
                    }
                    (v, _) => v,
                };
                let empty = match &s.value {
                    Value::Histogram(h) => h.count() == 0,
                    Value::Count(n) => *n == 0.0,
                };
                (!empty).then_some(s)
            })
            .collect();
        let exec = self.exec.as_ref().map(|_| {
            let mut by_comm = BTreeMap::new();
            for (comm, n) in &now.exec.by_comm {
                let d = n.saturating_sub(base.exec.by_comm.get(comm).copied().unwrap_or(0));
                if d > 0 {
                    by_comm.insert(comm.clone(), d);
                }
            }
            ExecCounts {
                total: now.exec.total.saturating_sub(base.exec.total),
                by_comm,
            }
        });
        let segments_per_namespace: Vec<(u64, u64)> = now
            .segments
            .iter()
            .map(|(ns, (s, r))| {
                let (s0, r0) = base.segments.get(ns).copied().unwrap_or((0, 0));
                (s.saturating_sub(s0), r.saturating_sub(r0))
            })
            .collect();
        let segments = (!segments_per_namespace.is_empty()).then(|| {
            segments_per_namespace
                .iter()
                .fold((0, 0), |(sent, again), (s, r)| (sent + s, again + r))
        });
        Window {
            elapsed: now.at.duration_since(base.at),
            series,
            exec,
            segments,
            segments_per_namespace,
        }
    }

    /// Stops the background loops and detaches every program.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        drop(self.exec);
        if let Ok(t) = Arc::try_unwrap(self.telemetry) {
            drop(t.into_probes());
        }
    }
}

/// Other running Periscope processes (the daemon, another triage), by the name of their
/// executable or their comm: what they do is Periscope's work, not the node's.
fn other_periscopes() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            exe.as_deref()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n == "periscope")
                || comm.trim_end() == "periscope"
        })
        .collect()
}

/// The report section a probe family feeds.
pub fn section_of(family: &str) -> &'static str {
    match family {
        "block" => "disk: block IO latency (block family)",
        "sched" => "CPU: run-queue latency (sched family)",
        "tcp" => "network: TCP retransmits and resets (tcp family)",
        "syscall" => "syscalls: top syscalls by latency (syscall family)",
        "http" => "HTTP RED per service (http family)",
        "exec" => "new processes (exec counter, sched:sched_process_exec)",
        "uprobe" => "user functions (uprobe family)",
        _ => "a probe family",
    }
}

fn take(telemetry: &Telemetry, exec: Option<&Exec>, namespaces: &mut NetnsCache) -> Snapshot {
    // Reading every map takes a moment: the snapshot is dated by its start.
    let at = Instant::now();
    let metrics = telemetry.snapshot();
    let exec = exec.map(Exec::read).unwrap_or_default();
    let segments = namespaces.tcp_segments();
    Snapshot {
        at,
        series: flatten(metrics),
        exec,
        segments,
    }
}

/// The metrics triage reads, one entry per series.
const WANTED: &[&str] = &[
    names::KERNEL_BLOCK_IO_DURATION,
    names::KERNEL_SCHED_RUNQUEUE_LATENCY,
    names::KERNEL_TCP_RETRANSMITS,
    names::KERNEL_TCP_RESETS,
    names::KERNEL_SYSCALL_DURATION,
    names::KERNEL_SYSCALL_ERRORS,
    names::HTTP_SERVER_REQUEST_DURATION,
    names::HTTP_CLIENT_REQUEST_DURATION,
];

fn flatten(metrics: Vec<Metric>) -> HashMap<Key, Series> {
    let mut out = HashMap::new();
    for metric in metrics.into_iter().filter(|m| WANTED.contains(&m.name)) {
        let instance = metric
            .resource
            .as_ref()
            .and_then(|r| {
                r.attributes
                    .iter()
                    .find(|(k, _)| k == "service.instance.id")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_default();
        let points: Vec<(Attributes, Value)> = match metric.points {
            Points::Histogram(_, points) => points
                .into_iter()
                .map(|(a, h)| (a, Value::Histogram(h)))
                .collect(),
            Points::Counter(points) | Points::Gauge(points) => points
                .into_iter()
                .map(|(a, n)| (a, Value::Count(n)))
                .collect(),
        };
        for (attributes, value) in points {
            out.insert(
                (metric.name, instance.clone(), attributes.clone()),
                Series {
                    name: metric.name,
                    resource: metric.resource.clone(),
                    attributes,
                    value,
                },
            );
        }
    }
    out
}

/// `now - before`, slot by slot. A series that went backwards (its process exited and the pid
/// came back with a new one, whose series has the same identity) restarted during the window:
/// all of `now` is new, as a counter reset in Prometheus.
pub fn minus(now: &Histogram, before: &Histogram) -> Histogram {
    let reset = now.sum < before.sum
        || before
            .counts
            .iter()
            .any(|(slot, n)| now.counts.get(slot).copied().unwrap_or(0) < *n);
    if reset {
        return now.clone();
    }
    let counts = now
        .counts
        .iter()
        .filter_map(|(slot, n)| {
            let d = n.saturating_sub(before.counts.get(slot).copied().unwrap_or(0));
            (d > 0).then_some((*slot, d))
        })
        .collect();
    Histogram {
        counts,
        sum: now.sum.wrapping_sub(before.sum),
        exemplars: Vec::new(),
    }
}

/// The network namespace of each process seen so far, so that a snapshot looks up only the
/// processes started since the last one (one `stat` each) instead of every process.
#[derive(Default)]
pub struct NetnsCache {
    namespace_of: HashMap<u32, u64>,
}

impl NetnsCache {
    /// `Tcp: OutSegs` and `RetransSegs` of every network namespace that holds a process (one
    /// `/proc/PID/net/snmp` per namespace), so that the retransmit share covers containers too.
    fn tcp_segments(&mut self) -> HashMap<u64, (u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return HashMap::new();
        };
        let live: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        let mut still = HashMap::with_capacity(live.len());
        for pid in live {
            let ns = match self.namespace_of.get(&pid) {
                Some(ns) => *ns,
                None => match std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                    Ok(meta) => meta.ino(),
                    Err(_) => continue,
                },
            };
            still.insert(pid, ns);
        }
        self.namespace_of = still;
        // One process per namespace is read; another is tried if that one just exited.
        let mut out = HashMap::new();
        for (pid, ns) in &self.namespace_of {
            if out.contains_key(ns) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")) else {
                continue;
            };
            if let (Some(sent), Some(again)) = (
                snmp_value(&text, "Tcp:", "OutSegs"),
                snmp_value(&text, "Tcp:", "RetransSegs"),
            ) {
                out.insert(*ns, (sent, again));
            }
        }
        out
    }
}

/// A value of `/proc/net/snmp`: a header line and a value line share the `prefix`.
fn snmp_value(text: &str, prefix: &str, field: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|f| f == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_fields_by_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin OutSegs RetransSegs\nTcp: 1 200 12345 7\n";
        assert_eq!(snmp_value(text, "Tcp:", "OutSegs"), Some(12345));
        assert_eq!(snmp_value(text, "Tcp:", "RetransSegs"), Some(7));
        assert_eq!(snmp_value(text, "Udp:", "OutSegs"), None);
    }

    #[test]
    fn window_histograms_subtract_slot_by_slot() {
        let mut a = Histogram::default();
        a.counts.insert(5, 10);
        a.counts.insert(9, 3);
        a.sum = 100;
        let mut b = Histogram::default();
        b.counts.insert(5, 4);
        b.sum = 40;
        let d = minus(&a, &b);
        assert_eq!(d.counts, BTreeMap::from([(5, 6), (9, 3)]));
        assert_eq!(d.sum, 60);
        // A series that restarted (fewer counts, smaller sum) is new in the window, never a
        // wrapped-around difference.
        let mut restarted = Histogram::default();
        restarted.counts.insert(7, 1);
        restarted.sum = 5;
        assert_eq!(minus(&restarted, &a), restarted);
    }

    #[test]
    fn scope_matches_resources() {
        let r = ProcessResource {
            service_name: "fio".into(),
            attributes: vec![
                ("process.pid".into(), "42".into()),
                ("process.executable.name".into(), "fio".into()),
                ("container.id".into(), "abcdef".into()),
            ],
        };
        assert!(Scope::default().matches(None));
        let pid = Scope {
            pid: Some(42),
            ..Scope::default()
        };
        assert!(pid.matches(Some(&r)));
        assert!(!pid.matches(None));
        let other = Scope {
            pid: Some(43),
            ..Scope::default()
        };
        assert!(!other.matches(Some(&r)));
        let container = Scope {
            container: Some("abc".into()),
            ..Scope::default()
        };
        assert!(container.matches(Some(&r)));
        let comm = Scope {
            comm: Some("fio".into()),
            ..Scope::default()
        };
        assert!(comm.matches(Some(&r)));
        // Other Periscope processes are out of every scope, the widest too.
        let daemon = Scope {
            skip: vec![42],
            ..Scope::default()
        };
        assert!(!daemon.matches(Some(&r)));
        assert!(daemon.matches(None), "a series without a process stays");
    }
}
