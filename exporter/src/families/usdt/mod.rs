//! USDT probes (`probes.usdt`): the user-space half of `ebpf/periscope-ebpf/src/usdt.rs`. Reads
//! the static tracepoints runtimes and databases ship in `.note.stapsdt` ([`note`]), attaches the
//! one `usdt_probe` program at every address of each configured probe with the semaphore
//! enabled through the kernel's uprobe reference counter ([`perf`]), and exports
//! `process.usdt.calls` (and `process.usdt.argument` for entries with `arg`) per (probe,
//! process), with the process as the resource.
//!
//! Each entry succeeds or fails alone: a missing file, a file without notes or an unknown
//! provider/name is logged, shown by `periscope check` and exported as
//! `periscope.usdt.attached = 0`; the others keep running.

pub mod config;
pub mod note;
pub mod perf;

use std::{
    collections::HashMap,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuHashMap},
    programs::UProbe,
};
use periscope_common::{
    Hist,
    usdt::{UsdtSpec, mode, split_series_key},
};

pub use self::config::{MAX_ADDRESSES, ProbeConfig, UsdtConfig};
use self::note::UsdtProbe;
use super::{
    CheckLine, CheckLines, Family, KernelSupport, LoadSettings, Mechanism, Plan, ProbeError,
    ProbeStatus, Registration, Started, take_histogram_map, take_per_cpu_map,
};
use crate::{
    model::histogram::{Histogram, ValueUnit, read_series},
    model::metrics::{self, Attributes, Metric},
    model::names,
    process::{ProcessCache, ProcessResource},
};

const FAMILY: &str = "usdt";
const PROGRAM: &str = "usdt_probe";

pub fn plan(config: &UsdtConfig, kernel: &KernelSupport) -> Plan {
    let settings = LoadSettings {
        globals: Vec::new(),
        max_entries: vec![
            ("USDT_SPECS", MAX_ADDRESSES),
            ("USDT_COUNTS", config.max_series),
            ("USDT_ARGS", config.max_series),
            ("USDT_LATENCY", config.max_series),
        ],
    };
    if !config.enabled || config.probes.is_empty() {
        return Plan::disabled(settings);
    }
    Plan::single(
        settings,
        kernel
            .allows(Mechanism::Uprobe)
            .map(|()| Mechanism::Uprobe)
            .map_err(|why| ProbeError::Mechanism(format!("{FAMILY}: {why}"))),
    )
}

pub const REGISTRATION: Registration = Registration {
    name: FAMILY,
    plan: |config, kernel, _| plan(&config.usdt, kernel),
    start: |ebpf, plan, config| {
        let (usdt, status, entries) = start(ebpf, plan, &config.usdt);
        let family: Option<Box<dyn Family>> = match usdt {
            Some(usdt) => Some(Box::new(usdt)),
            None if !entries.is_empty() => Some(Box::new(Unattached { entries })),
            None => None,
        };
        Started { family, status }
    },
};

/// A configured probe resolved in its file: every address it has there.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub file: PathBuf,
    pub sites: Vec<UsdtProbe>,
    /// The addresses of the done probe, for entries with `done`.
    pub done_sites: Vec<UsdtProbe>,
}

/// What became of one entry of `probes.usdt.probes`.
#[derive(Debug, Clone)]
pub struct EntryStatus {
    pub index: usize,
    pub path: String,
    pub provider: String,
    pub name: String,
    pub arg: Option<u8>,
    pub done: Option<String>,
    pub unit: &'static str,
    pub outcome: Result<Resolved, String>,
}

impl EntryStatus {
    pub fn attached(&self) -> bool {
        self.outcome.is_ok()
    }

    fn attributes(&self) -> Attributes {
        vec![
            ("usdt.provider", self.provider.clone()),
            ("usdt.name", self.name.clone()),
            ("code.file.path", self.path.clone()),
        ]
    }
}

/// The probes of `path` (resolved as `probes.uprobe` resolves paths), or why there are none.
pub fn list(path: &str) -> Result<(PathBuf, Vec<UsdtProbe>), String> {
    let file = super::uprobe::resolve_path(path)?;
    let data = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let probes = note::probes(&file.display().to_string(), &data).map_err(|e| e.to_string())?;
    Ok((file, probes))
}

/// The addresses of `provider:name` in `probes`; the error names what the file does ship.
fn sites_of(
    file: &std::path::Path,
    probes: &[UsdtProbe],
    provider: &str,
    name: &str,
) -> Result<Vec<UsdtProbe>, String> {
    let total = probes.len();
    let sites: Vec<UsdtProbe> = probes
        .iter()
        .filter(|p| p.provider == provider && p.name == name)
        .cloned()
        .collect();
    if sites.is_empty() {
        let mut shipped: Vec<String> = probes
            .iter()
            .map(|p| format!("{}:{}", p.provider, p.name))
            .collect();
        shipped.sort();
        shipped.dedup();
        return Err(format!(
            "no probe {provider}:{name} in {} ({total} probes: {})",
            file.display(),
            shipped.join(", ")
        ));
    }
    Ok(sites)
}

/// Every address of the entry's probe (and of its done probe) in its file.
pub fn resolve(entry: &ProbeConfig) -> Result<Resolved, String> {
    let (file, probes) = list(&entry.path)?;
    let sites = sites_of(&file, &probes, &entry.provider, &entry.name)?;
    let done_sites = match &entry.done {
        Some(done) => sites_of(&file, &probes, &entry.provider, done)?,
        None => Vec::new(),
    };
    if let Some(arg) = entry.arg {
        for site in &sites {
            let args = site.args.as_ref().map_err(|why| {
                format!(
                    "{}:{} at {:#x}: {why}",
                    entry.provider, entry.name, site.address
                )
            })?;
            if args.len() <= arg as usize {
                return Err(format!(
                    "{}:{} at {:#x} has {} arguments ({:?}): no arg {arg}",
                    entry.provider,
                    entry.name,
                    site.address,
                    args.len(),
                    site.args_text
                ));
            }
        }
    }
    Ok(Resolved {
        file,
        sites,
        done_sites,
    })
}

/// Attaches every configured probe it can. Returns the family (when at least one probe is
/// attached), its status, and what became of each entry.
pub fn start(
    ebpf: &mut Ebpf,
    plan: Plan,
    config: &UsdtConfig,
) -> (Option<Usdt>, ProbeStatus, Vec<EntryStatus>) {
    let mut status = ProbeStatus {
        family: FAMILY,
        enabled: plan.enabled,
        mechanism: None,
        error: None,
        programs: Vec::new(),
        refused: Vec::new(),
    };
    if !plan.enabled {
        return (None, status, Vec::new());
    }
    let started = plan
        .mechanism
        .and_then(|mechanism| Ok((mechanism, attach_all(ebpf, &config.probes)?)));
    let (mechanism, entries, links) = match started {
        Ok((mechanism, (entries, links))) => (mechanism, entries, links),
        Err(e) => {
            status.error = Some(e.to_string());
            return (None, status, Vec::new());
        }
    };
    log_entries(&entries);
    if !entries.iter().any(EntryStatus::attached) {
        status.error = Some(super::none_attached(
            FAMILY,
            "probe",
            entries.iter().map(|e| (e.index, e.outcome.as_ref().err())),
        ));
        return (None, status, entries);
    }
    let maps = take_per_cpu_map(ebpf, "USDT_COUNTS").and_then(|counts| {
        Ok((
            counts,
            take_histogram_map(ebpf, "USDT_ARGS")?,
            take_histogram_map(ebpf, "USDT_LATENCY")?,
        ))
    });
    let (counts, args, latency) = match maps {
        Ok(maps) => maps,
        Err(e) => {
            status.error = Some(e.to_string());
            return (None, status, entries);
        }
    };
    status.mechanism = Some(mechanism);
    status.programs = vec![PROGRAM];
    let usdt = Usdt {
        counts,
        args,
        latency,
        entries: entries.clone(),
        _links: links,
        processes: ProcessCache::new(),
    };
    (Some(usdt), status, entries)
}

fn log_entries(entries: &[EntryStatus]) {
    for entry in entries {
        match &entry.outcome {
            Ok(r) => tracing::info!(
                probe = FAMILY,
                entry = entry.index,
                usdt = %format_args!("{}:{}", entry.provider, entry.name),
                file = %r.file.display(),
                addresses = r.sites.len(),
                "usdt probe attached"
            ),
            Err(error) => tracing::warn!(
                probe = FAMILY,
                entry = entry.index,
                usdt = %format_args!("{}:{}", entry.provider, entry.name),
                path = %entry.path,
                %error,
                "usdt probe not attached"
            ),
        }
    }
}

/// Loads the program and attaches every entry it can, writing one `USDT_SPECS` slot per
/// address. Fails only when the program or the spec map is unusable; entries fail alone.
fn attach_all(
    ebpf: &mut Ebpf,
    probes: &[ProbeConfig],
) -> Result<(Vec<EntryStatus>, Vec<perf::Link>), ProbeError> {
    let program: &mut UProbe = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| ProbeError::missing_program(PROGRAM))?
        .try_into()
        .map_err(|source| ProbeError::Program {
            program: PROGRAM,
            source,
        })?;
    program.load().map_err(|source| ProbeError::Program {
        program: PROGRAM,
        source,
    })?;
    let program_fd: OwnedFd = program
        .fd()
        .and_then(|fd| Ok(fd.as_fd().try_clone_to_owned()?))
        .map_err(|source| ProbeError::Program {
            program: PROGRAM,
            source,
        })?;
    let map_error = |reason: String| ProbeError::Map {
        map: "USDT_SPECS",
        reason,
    };
    let map = ebpf
        .map_mut("USDT_SPECS")
        .ok_or_else(|| map_error("missing from the eBPF object".into()))?;
    let mut specs: Array<&mut MapData, UsdtSpec> =
        Array::try_from(map).map_err(|e| map_error(e.to_string()))?;
    let mut links = Vec::new();
    let mut next_cookie = 0u32;
    let entries = probes
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let outcome = resolve(entry).and_then(|resolved| {
                let mut attached = Vec::new();
                let start_mode = if entry.done.is_some() {
                    mode::START
                } else if entry.arg.is_some() {
                    mode::ARG
                } else {
                    mode::COUNT
                };
                let sites = resolved.sites.iter().map(|site| (site, start_mode));
                let done_sites = resolved.done_sites.iter().map(|site| (site, mode::DONE));
                for (site, what) in sites.chain(done_sites) {
                    if next_cookie >= MAX_ADDRESSES {
                        return Err(format!(
                            "more than {MAX_ADDRESSES} probe addresses configured in all"
                        ));
                    }
                    let spec = UsdtSpec {
                        entry: index as u32,
                        mode: what,
                        arg: entry
                            .arg
                            .and_then(|n| site.args.as_ref().ok()?.get(n as usize).copied())
                            .unwrap_or_default(),
                    };
                    specs
                        .set(next_cookie, spec, 0)
                        .map_err(|e| format!("USDT_SPECS: {e}"))?;
                    let link = perf::attach(
                        &program_fd,
                        &resolved.file,
                        site.offset,
                        site.semaphore_offset.unwrap_or(0),
                        entry.pid,
                        next_cookie.into(),
                    )
                    .map_err(|e| format!("attach at {:#x} failed: {e}", site.address))?;
                    attached.push(link);
                    next_cookie += 1;
                }
                // All addresses or none: a partial attach would undercount.
                links.extend(attached);
                Ok(resolved)
            });
            EntryStatus {
                index,
                path: entry.path.clone(),
                provider: entry.provider.clone(),
                name: entry.name.clone(),
                arg: entry.arg,
                done: entry.done.clone(),
                unit: unit_of(entry),
                outcome,
            }
        })
        .collect();
    Ok((entries, links))
}

/// The configured unit as the `'static` string metrics carry (one per entry, once).
fn unit_of(entry: &ProbeConfig) -> &'static str {
    match entry.unit.as_deref() {
        None | Some("1") => "1",
        Some("By") => "By",
        Some("s") => "s",
        Some(other) => Box::leak(other.to_string().into_boxed_str()),
    }
}

/// The configured probes when none could be attached: only their statuses.
struct Unattached {
    entries: Vec<EntryStatus>,
}

impl Family for Unattached {
    fn collect(&mut self, out: &mut Vec<Metric>) {
        out.push(entry_gauge(&self.entries));
    }

    fn check_lines(&self) -> Option<CheckLines> {
        Some(check_lines(&self.entries))
    }
}

/// One `periscope check` line per entry: its addresses and semaphore, or why it cannot attach.
fn check_lines(entries: &[EntryStatus]) -> CheckLines {
    let lines = entries
        .iter()
        .map(|entry| {
            let what = format!("[{}] {}:{}", entry.index, entry.provider, entry.name);
            match &entry.outcome {
                Ok(r) => {
                    let semaphores: Vec<String> = r
                        .sites
                        .iter()
                        .filter(|s| s.semaphore != 0)
                        .map(|s| format!("{:#x}", s.semaphore))
                        .collect();
                    CheckLine {
                        ok: true,
                        what,
                        detail: format!(
                            "{}: {} address{}, semaphore {}",
                            r.file.display(),
                            r.sites.len(),
                            if r.sites.len() == 1 { "" } else { "es" },
                            if semaphores.is_empty() {
                                "none".to_string()
                            } else {
                                semaphores.join(",")
                            }
                        ),
                    }
                }
                Err(why) => CheckLine {
                    ok: false,
                    what,
                    detail: why.clone(),
                },
            }
        })
        .collect();
    CheckLines {
        title: "USDT probes (probes.usdt.probes)",
        lines,
    }
}

/// `periscope.usdt.attached`: 1 per probe attached at all its addresses, 0 otherwise.
fn entry_gauge(entries: &[EntryStatus]) -> Metric {
    let points = entries
        .iter()
        .map(|e| (e.attributes(), if e.attached() { 1.0 } else { 0.0 }))
        .collect();
    Metric {
        name: names::PERISCOPE_USDT_ATTACHED,
        description: "1 per configured USDT probe attached at all its addresses, 0 when its file or probe could not be resolved or attached.",
        unit: "1",
        points: metrics::Points::Gauge(points),
        resource: None,
    }
}

pub struct Usdt {
    counts: PerCpuHashMap<MapData, u64, u64>,
    args: PerCpuHashMap<MapData, u64, Hist>,
    latency: PerCpuHashMap<MapData, u64, Hist>,
    pub entries: Vec<EntryStatus>,
    /// The attached perf events: closing them detaches.
    _links: Vec<perf::Link>,
    processes: ProcessCache,
}

impl Family for Usdt {
    fn collect(&mut self, out: &mut Vec<Metric>) {
        self.collect_counts(out);
        self.collect_args(out);
        self.collect_latency(out);
        out.push(entry_gauge(&self.entries));
    }

    fn check_lines(&self) -> Option<CheckLines> {
        Some(check_lines(&self.entries))
    }

    /// Deletes the series of processes gone for more than
    /// [`crate::process::EXITED_SERIES_TTL`], so the maps do not fill up with the dead. Start
    /// stamps live in an LRU: none are stale to count.
    fn sweep(&mut self) -> u64 {
        let mut tgids: Vec<u32> = self
            .counts
            .keys()
            .chain(self.args.keys())
            .chain(self.latency.keys())
            .filter_map(Result::ok)
            .map(|k| split_series_key(k).1)
            .collect();
        tgids.sort_unstable();
        tgids.dedup();
        for tgid in tgids {
            self.resource(tgid);
        }
        let now = Instant::now();
        self.processes.mark_gone(now);
        for (tgid, _) in self.processes.expire(now) {
            let gone = |k: &u64| split_series_key(*k).1 == tgid;
            let keys: Vec<u64> = self
                .counts
                .keys()
                .filter_map(Result::ok)
                .filter(gone)
                .collect();
            for key in keys {
                let _ = self.counts.remove(&key);
            }
            for map in [&mut self.args, &mut self.latency] {
                let keys: Vec<u64> = map.keys().filter_map(Result::ok).filter(gone).collect();
                for key in keys {
                    let _ = map.remove(&key);
                }
            }
        }
        0
    }
}

impl Usdt {
    /// The resource of `tgid`, read from /proc the first time it is seen.
    fn resource(&mut self, tgid: u32) -> Arc<ProcessResource> {
        // /proc/PID/comm is read for a live process anyway: the hint names a gone one.
        self.processes.resource(tgid, || "unknown".into())
    }

    /// `process.usdt.calls`: firings per (probe, process), one metric per process.
    fn collect_counts(&mut self, out: &mut Vec<Metric>) {
        let series = match read_series(&self.counts, |per_cpu: &[u64]| {
            per_cpu.iter().copied().fold(0u64, u64::wrapping_add)
        }) {
            Ok(series) => series,
            Err(e) => {
                tracing::warn!(probe = FAMILY, error = %e, "reading usdt counts failed");
                return;
            }
        };
        let mut by_process: HashMap<u32, Vec<(Attributes, f64)>> = HashMap::new();
        for (key, n) in series {
            let (entry, tgid) = split_series_key(key);
            if let Some(status) = self.entries.get(entry as usize) {
                by_process
                    .entry(tgid)
                    .or_default()
                    .push((status.attributes(), n as f64));
            }
        }
        for (tgid, mut points) in by_process {
            points.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(Metric {
                name: names::PROCESS_USDT_CALLS,
                description: "Firings of configured USDT probes.",
                unit: "1",
                points: metrics::Points::Counter(points),
                resource: Some(self.resource(tgid)),
            });
        }
    }

    /// `process.usdt.duration`: start-to-done latency per (entry, process), one metric per
    /// process.
    fn collect_latency(&mut self, out: &mut Vec<Metric>) {
        let series = match read_series(&self.latency, |per_cpu: &[Hist]| {
            Histogram::from_kernel(per_cpu)
        }) {
            Ok(series) => series,
            Err(e) => {
                tracing::warn!(probe = FAMILY, error = %e, "reading usdt latency failed");
                return;
            }
        };
        let mut by_process: HashMap<u32, Vec<(Attributes, Histogram)>> = HashMap::new();
        for (key, histogram) in series {
            let (entry, tgid) = split_series_key(key);
            let Some(status) = self.entries.get(entry as usize) else {
                continue;
            };
            let mut attributes = status.attributes();
            attributes.push(("usdt.done", status.done.clone().unwrap_or_default()));
            by_process
                .entry(tgid)
                .or_default()
                .push((attributes, histogram));
        }
        for (tgid, mut points) in by_process {
            points.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(Metric {
                name: names::PROCESS_USDT_DURATION,
                description: "Time from a configured USDT start probe to its done probe, per thread.",
                unit: "s",
                points: metrics::Points::Histogram(ValueUnit::Seconds, points),
                resource: Some(self.resource(tgid)),
            });
        }
    }

    /// `process.usdt.argument`: the configured argument's values per (probe, process), one
    /// metric per (process, unit).
    fn collect_args(&mut self, out: &mut Vec<Metric>) {
        let series = match read_series(&self.args, |per_cpu: &[Hist]| {
            Histogram::from_kernel(per_cpu)
        }) {
            Ok(series) => series,
            Err(e) => {
                tracing::warn!(probe = FAMILY, error = %e, "reading usdt arguments failed");
                return;
            }
        };
        let mut by_process: HashMap<(u32, &'static str), Vec<(Attributes, Histogram)>> =
            HashMap::new();
        for (key, histogram) in series {
            let (entry, tgid) = split_series_key(key);
            let Some(status) = self.entries.get(entry as usize) else {
                continue;
            };
            let mut attributes = status.attributes();
            attributes.push(("usdt.argument", status.arg.unwrap_or(0).to_string()));
            by_process
                .entry((tgid, status.unit))
                .or_default()
                .push((attributes, histogram));
        }
        for ((tgid, unit), mut points) in by_process {
            points.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(Metric {
                name: names::PROCESS_USDT_ARGUMENT,
                description: "Values of the configured argument of USDT probes.",
                unit,
                points: metrics::Points::Histogram(ValueUnit::Bytes, points),
                resource: Some(self.resource(tgid)),
            });
        }
    }
}
