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
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::Arc,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
};
use periscope_common::{
    Hist,
    usdt::{UsdtSpec, mode},
};

pub use self::config::{MAX_ADDRESSES, ProbeConfig, UsdtConfig};
use self::note::UsdtProbe;
use super::{
    CheckLine, CheckLines, Family, KernelSupport, LoadSettings, Plan, ProbeError, Registration,
    Started, take_histogram_map, take_per_cpu_map,
    user_probe::{self, Entry as _, entry_array, load_uprobe},
};
use crate::{
    model::histogram::{Histogram, ValueUnit},
    model::metrics::{self, Attributes, Metric},
    model::names,
    process::{ProcessCache, ProcessResource},
};

const FAMILY: &str = "usdt";
const PROGRAM: &str = "usdt_probe";
/// The name of a process gone before /proc was read (/proc/PID/comm names a live one).
const UNKNOWN: &str = "unknown";

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
    let configured = config.enabled && !config.probes.is_empty();
    user_probe::plan(FAMILY, configured, settings, kernel)
}

pub const REGISTRATION: Registration = Registration {
    name: FAMILY,
    plan: |config, kernel, _| plan(&config.usdt, kernel),
    start: |ebpf, plan, config| start(ebpf, plan, &config.usdt),
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

/// The probes of `path` (resolved as `probes.uprobe` resolves paths), or why there are none.
pub fn list(path: &str) -> Result<(PathBuf, Vec<UsdtProbe>), String> {
    let file = user_probe::resolve_path(path)?;
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

/// Attaches every configured probe it can (each fails alone), then takes the maps.
pub fn start(ebpf: &mut Ebpf, plan: Plan, config: &UsdtConfig) -> Started {
    user_probe::start(
        ebpf,
        plan,
        &[PROGRAM],
        |ebpf| attach_all(ebpf, &config.probes),
        |ebpf, entries, links| {
            Ok(Usdt {
                counts: take_per_cpu_map(ebpf, "USDT_COUNTS")?,
                args: take_histogram_map(ebpf, "USDT_ARGS")?,
                latency: take_histogram_map(ebpf, "USDT_LATENCY")?,
                entries,
                _links: links,
                processes: ProcessCache::new(),
            })
        },
    )
}

/// Loads the program and attaches every entry it can, writing one `USDT_SPECS` slot per
/// address. Fails only when the program or the spec map is unusable; entries fail alone.
fn attach_all(
    ebpf: &mut Ebpf,
    probes: &[ProbeConfig],
) -> Result<(Vec<EntryStatus>, Vec<perf::Link>), ProbeError> {
    let program = load_uprobe(ebpf, PROGRAM)?;
    let program_fd: OwnedFd = program
        .fd()
        .and_then(|fd| Ok(fd.as_fd().try_clone_to_owned()?))
        .map_err(|source| ProbeError::Program {
            program: PROGRAM,
            source,
        })?;
    let mut specs = entry_array::<UsdtSpec>(ebpf, "USDT_SPECS")?;
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
                    .map_err(|e| {
                        let error = user_probe::attach_error(&anyhow::Error::from(e));
                        format!("at {:#x}: {error}", site.address)
                    })?;
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

impl user_probe::Entry for EntryStatus {
    const FAMILY: &'static str = FAMILY;
    const NOUN: &'static str = "probe";
    /// 1 per probe attached at all its addresses, 0 otherwise.
    const ATTACHED: &'static str = names::PERISCOPE_USDT_ATTACHED;
    const ATTACHED_DESCRIPTION: &'static str = "1 per configured USDT probe attached at all its addresses, 0 when its file or probe could not be resolved or attached.";

    fn outcome(&self) -> (usize, Option<&String>) {
        (self.index, self.outcome.as_ref().err())
    }

    fn attributes(&self) -> Attributes {
        vec![
            ("usdt.provider", self.provider.clone()),
            ("usdt.name", self.name.clone()),
            ("code.file.path", self.path.clone()),
        ]
    }

    /// One `periscope check` line per entry: its addresses and semaphore, or why it cannot
    /// attach.
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

    fn log(&self) {
        match &self.outcome {
            Ok(r) => tracing::info!(
                probe = FAMILY,
                entry = self.index,
                usdt = %format_args!("{}:{}", self.provider, self.name),
                file = %r.file.display(),
                addresses = r.sites.len(),
                "usdt probe attached"
            ),
            Err(error) => tracing::warn!(
                probe = FAMILY,
                entry = self.index,
                usdt = %format_args!("{}:{}", self.provider, self.name),
                path = %self.path,
                %error,
                "usdt probe not attached"
            ),
        }
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
        self.collect_histograms(HistogramKind::Argument, out);
        self.collect_histograms(HistogramKind::Duration, out);
        out.push(user_probe::Entry::gauge(&self.entries));
    }

    fn check_lines(&self) -> Option<CheckLines> {
        Some(user_probe::Entry::check_lines(&self.entries))
    }

    /// Deletes the series of processes gone for more than
    /// [`crate::process::EXITED_SERIES_TTL`], so the maps do not fill up with the dead. Start
    /// stamps live in an LRU: none are stale to count.
    fn sweep(&mut self) -> u64 {
        let keys = self.counts.keys().chain(self.args.keys());
        let keys = keys.chain(self.latency.keys()).filter_map(Result::ok);
        let tgids = user_probe::series_processes(keys);
        let expired = user_probe::expire_processes(&mut self.processes, &tgids, |_| UNKNOWN.into());
        user_probe::delete_series(&mut self.counts, &expired);
        user_probe::delete_series(&mut self.args, &expired);
        user_probe::delete_series(&mut self.latency, &expired);
        0
    }
}

impl Usdt {
    /// The resource of `tgid`, read from /proc the first time it is seen.
    fn resource(&mut self, tgid: u32) -> Arc<ProcessResource> {
        self.processes.resource(tgid, || UNKNOWN.into())
    }

    /// `process.usdt.calls`: firings per (probe, process), one metric per process.
    fn collect_counts(&mut self, out: &mut Vec<Metric>) {
        let entries = &self.entries;
        let by_process = user_probe::per_process(
            FAMILY,
            "usdt counts",
            &self.counts,
            |per_cpu: &[u64]| per_cpu.iter().copied().fold(0u64, u64::wrapping_add) as f64,
            |entry| Some(((), entries.get(entry as usize)?.attributes())),
        );
        for ((tgid, ()), points) in by_process {
            out.push(Metric {
                name: names::PROCESS_USDT_CALLS,
                description: "Firings of configured USDT probes.",
                unit: "1",
                points: metrics::Points::Counter(points),
                resource: Some(self.resource(tgid)),
            });
        }
    }

    /// One `kind` histogram metric per (process, unit), one point per entry.
    fn collect_histograms(&mut self, kind: HistogramKind, out: &mut Vec<Metric>) {
        let map = match kind {
            HistogramKind::Argument => &self.args,
            HistogramKind::Duration => &self.latency,
        };
        let entries = &self.entries;
        let by_process = user_probe::per_process(
            FAMILY,
            kind.what(),
            map,
            |per_cpu: &[Hist]| Histogram::from_kernel(per_cpu),
            |entry| {
                let status = entries.get(entry as usize)?;
                let (unit, attribute) = kind.unit_and_attribute(status);
                let mut attributes = status.attributes();
                attributes.push(attribute);
                Some((unit, attributes))
            },
        );
        for ((tgid, unit), points) in by_process {
            let mut metric = kind.metric(unit, points);
            metric.resource = Some(self.resource(tgid));
            out.push(metric);
        }
    }
}

/// The two histograms of USDT entries.
#[derive(Clone, Copy)]
enum HistogramKind {
    /// `process.usdt.argument`: the configured argument's values per (probe, process).
    Argument,
    /// `process.usdt.duration`: start-to-done latency per (entry, process).
    Duration,
}

impl HistogramKind {
    /// What reading its map is, in a warning.
    fn what(self) -> &'static str {
        match self {
            Self::Argument => "usdt arguments",
            Self::Duration => "usdt latency",
        }
    }

    /// The unit of an entry's points, and the attribute they carry besides the entry's own.
    fn unit_and_attribute(self, status: &EntryStatus) -> (&'static str, (&'static str, String)) {
        match self {
            Self::Argument => {
                let arg = status.arg.unwrap_or(0).to_string();
                (status.unit, ("usdt.argument", arg))
            }
            Self::Duration => {
                let done = status.done.clone().unwrap_or_default();
                ("s", ("usdt.done", done))
            }
        }
    }

    /// One process's metric (its resource is set by the caller).
    fn metric(self, unit: &'static str, points: Vec<(Attributes, Histogram)>) -> Metric {
        let (name, description, value_unit) = match self {
            Self::Argument => (
                names::PROCESS_USDT_ARGUMENT,
                "Values of the configured argument of USDT probes.",
                ValueUnit::Bytes,
            ),
            Self::Duration => (
                names::PROCESS_USDT_DURATION,
                "Time from a configured USDT start probe to its done probe, per thread.",
                ValueUnit::Seconds,
            ),
        };
        Metric {
            name,
            description,
            unit,
            points: metrics::Points::Histogram(value_unit, points),
            resource: None,
        }
    }
}
