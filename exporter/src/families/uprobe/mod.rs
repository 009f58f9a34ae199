//! User-function latency: the user-space half of `ebpf/periscope-ebpf/src/uprobe.rs`. Resolves
//! each configured `(path, symbol)` to a file offset, attaches the one uprobe and the one
//! uretprobe program there with the entry's index as cookie, and exports
//! `process.function.duration` per (function, process) with the process as the resource.
//!
//! Each entry succeeds or fails alone: a missing binary or symbol is logged, shown by
//! `periscope check` and exported as `periscope.uprobe.attached = 0`; the others keep running.

pub mod config;

use crate::model::names;
use std::{
    collections::HashMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuHashMap},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use object::{Object, ObjectSymbol};
use periscope_common::{
    Hist,
    uprobe::{COMM_LEN, UprobeFilter, split_series_key},
};

pub use self::config::{FunctionConfig, MAX_FUNCTIONS, UprobeConfig};
use super::{
    CheckLine, CheckLines, Family, KernelSupport, LoadSettings, Mechanism, Plan, ProbeError,
    ProbeStatus, Registration, Started, sweep_stale, take_hash_map, take_histogram_map,
};
use crate::{
    model::histogram::{Histogram, ValueUnit, read_series},
    model::metrics::{self, Attributes, Metric},
    process::{ProcessCache, ProcessResource},
};

const FAMILY: &str = "uprobe";
const ENTRY_PROGRAM: &str = "uprobe_entry";
const RETURN_PROGRAM: &str = "uprobe_return";

/// Where a bare library name (`libc.so.6`) is looked for, in order (Debian multiarch first).
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

pub fn plan(config: &UprobeConfig, kernel: &KernelSupport) -> Plan {
    let settings = LoadSettings {
        globals: Vec::new(),
        max_entries: vec![
            ("UPROBE_START", config.max_in_flight),
            ("UPROBE_LATENCY", config.max_series),
            ("UPROBE_COMM", config.max_series),
            ("UPROBE_FILTER", config.functions.len().max(1) as u32),
        ],
    };
    // Nothing to time: the family stays off rather than reporting a failure.
    if !config.enabled || config.functions.is_empty() {
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

/// A configured function resolved to the place a uprobe attaches: the file and the offset of
/// the symbol in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub file: PathBuf,
    /// The symbol's virtual address in the ELF file.
    pub address: u64,
    /// Its offset in the file: what the kernel attaches to.
    pub offset: u64,
}

pub const REGISTRATION: Registration = Registration {
    name: FAMILY,
    plan: |config, kernel, _| plan(&config.uprobe, kernel),
    start: |ebpf, plan, config| {
        let (uprobe, status, entries) = start(ebpf, plan, &config.uprobe);
        let family: Option<Box<dyn Family>> = match uprobe {
            Some(uprobe) => Some(Box::new(uprobe)),
            // Nothing attached: still report what became of each entry.
            None if !entries.is_empty() => Some(Box::new(Unattached { entries })),
            None => None,
        };
        Started { family, status }
    },
};

impl Family for Uprobe {
    fn collect(&mut self, out: &mut Vec<Metric>) {
        self.collect_series(out);
        out.push(Uprobe::entry_gauge(&self.entries));
    }

    fn sweep(&mut self) -> u64 {
        self.sweep_entries()
    }

    fn check_lines(&self) -> Option<CheckLines> {
        Some(check_lines(&self.entries))
    }
}

/// The configured functions when none could be attached: only their statuses.
struct Unattached {
    entries: Vec<EntryStatus>,
}

impl Family for Unattached {
    fn collect(&mut self, out: &mut Vec<Metric>) {
        out.push(Uprobe::entry_gauge(&self.entries));
    }

    fn check_lines(&self) -> Option<CheckLines> {
        Some(check_lines(&self.entries))
    }
}

/// One `periscope check` line per entry: where it attached, or why it could not.
fn check_lines(entries: &[EntryStatus]) -> CheckLines {
    let lines = entries
        .iter()
        .map(|entry| {
            let what = format!("[{}] {}", entry.index, entry.symbol);
            match &entry.outcome {
                Ok(r) => CheckLine {
                    ok: true,
                    what,
                    detail: format!(
                        "{}: address {:#x}, file offset {:#x}",
                        r.file.display(),
                        r.address,
                        r.offset
                    ),
                },
                Err(why) => CheckLine {
                    ok: false,
                    what,
                    detail: format!("{}: {why}", entry.path),
                },
            }
        })
        .collect();
    CheckLines {
        title: "Functions (probes.uprobe.functions)",
        lines,
    }
}

/// What became of one entry of `probes.uprobe.functions`.
#[derive(Debug, Clone)]
pub struct EntryStatus {
    pub index: usize,
    pub path: String,
    pub symbol: String,
    pub outcome: Result<Resolved, String>,
}

impl EntryStatus {
    pub fn attached(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// `path` as given when it names a file (absolute or relative), else a library file name looked
/// up in [`LIBRARY_DIRS`].
pub fn resolve_path(path: &str) -> Result<PathBuf, String> {
    if path.contains('/') {
        let p = PathBuf::from(path);
        return match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(p),
            Ok(_) => Err(format!("{path} is not a regular file")),
            Err(e) => Err(format!("binary {path} cannot be opened: {e}")),
        };
    }
    LIBRARY_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(path))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "library {path} not found in {} (give an absolute path)",
                LIBRARY_DIRS.join(", ")
            )
        })
}

/// Finds `symbol` in the ELF symbol table (.symtab) or the dynamic one (.dynsym) of `file` and
/// turns its address into a file offset (address - section address + section file offset).
pub fn resolve_symbol(file: &Path, symbol: &str) -> Result<Resolved, String> {
    let data = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let elf = object::File::parse(&*data)
        .map_err(|e| format!("{} is not an ELF object: {e}", file.display()))?;
    let found = elf
        .symbols()
        .chain(elf.dynamic_symbols())
        .find(|s| s.is_definition() && s.name() == Ok(symbol));
    let Some(sym) = found else {
        let count = elf.symbols().count() + elf.dynamic_symbols().count();
        return Err(if count == 0 {
            format!(
                "symbol {symbol} not found: {} has no symbol table (stripped)",
                file.display()
            )
        } else {
            format!(
                "symbol {symbol} not found in {} ({count} symbols in .symtab/.dynsym; \
                 inlined, renamed or mangled? list them with `nm {}`)",
                file.display(),
                file.display()
            )
        });
    };
    let offset = crate::kernel::elf::file_offset(&elf, &sym).ok_or_else(|| {
        format!(
            "symbol {symbol} in {}: no section with file data holds its address",
            file.display()
        )
    })?;
    Ok(Resolved {
        file: file.to_path_buf(),
        address: sym.address(),
        offset,
    })
}

fn resolve(function: &FunctionConfig) -> Result<Resolved, String> {
    let file = resolve_path(&function.path)?;
    resolve_symbol(&file, &function.symbol)
}

pub struct Uprobe {
    latency: PerCpuHashMap<MapData, u64, Hist>,
    start: aya::maps::HashMap<MapData, u64, u64>,
    /// Process names the kernel recorded (LRU), for processes gone before /proc was read.
    comms: aya::maps::HashMap<MapData, u32, [u8; COMM_LEN]>,
    pub entries: Vec<EntryStatus>,
    processes: ProcessCache,
}

/// Attaches every configured function it can. Returns the family (when at least one function
/// is attached), its status, and what became of each entry.
pub fn start(
    ebpf: &mut Ebpf,
    plan: Plan,
    config: &UprobeConfig,
) -> (Option<Uprobe>, ProbeStatus, Vec<EntryStatus>) {
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
        .and_then(|mechanism| Ok((mechanism, attach_all(ebpf, &config.functions)?)));
    let (mechanism, entries) = match started {
        Ok(started) => started,
        Err(e) => {
            status.error = Some(e.to_string());
            return (None, status, Vec::new());
        }
    };
    log_entries(&entries);
    if !entries.iter().any(EntryStatus::attached) {
        status.error = Some(super::none_attached(
            FAMILY,
            "function",
            entries.iter().map(|e| (e.index, e.outcome.as_ref().err())),
        ));
        return (None, status, entries);
    }
    let maps = take_histogram_map(ebpf, "UPROBE_LATENCY").and_then(|latency| {
        Ok((
            latency,
            take_hash_map(ebpf, "UPROBE_START")?,
            take_hash_map(ebpf, "UPROBE_COMM")?,
        ))
    });
    let (latency, start, comms) = match maps {
        Ok(maps) => maps,
        Err(e) => {
            status.error = Some(e.to_string());
            return (None, status, entries);
        }
    };
    status.mechanism = Some(mechanism);
    status.programs = vec![ENTRY_PROGRAM, RETURN_PROGRAM];
    let uprobe = Uprobe {
        latency,
        start,
        comms,
        entries: entries.clone(),
        processes: ProcessCache::new(),
    };
    (Some(uprobe), status, entries)
}

fn log_entries(entries: &[EntryStatus]) {
    for entry in entries {
        match &entry.outcome {
            Ok(r) => tracing::info!(
                probe = FAMILY,
                entry = entry.index,
                symbol = %entry.symbol,
                file = %r.file.display(),
                offset = format_args!("{:#x}", r.offset),
                "function attached"
            ),
            Err(error) => tracing::warn!(
                probe = FAMILY,
                entry = entry.index,
                symbol = %entry.symbol,
                path = %entry.path,
                %error,
                "function not attached"
            ),
        }
    }
}

fn uprobe_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut UProbe, ProbeError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::missing_program(name))?;
    program.try_into().map_err(|source| ProbeError::Program {
        program: name,
        source,
    })
}

/// Loads both programs, writes the per-entry filters, and attaches every entry it can.
/// Fails only when the programs or the filter map are unusable; entries fail alone.
fn attach_all(
    ebpf: &mut Ebpf,
    functions: &[FunctionConfig],
) -> Result<Vec<EntryStatus>, ProbeError> {
    for name in [ENTRY_PROGRAM, RETURN_PROGRAM] {
        uprobe_program(ebpf, name)?
            .load()
            .map_err(|source| ProbeError::Program {
                program: name,
                source,
            })?;
    }
    write_filters(ebpf, functions)?;
    Ok(functions
        .iter()
        .enumerate()
        .map(|(index, function)| EntryStatus {
            index,
            path: function.path.clone(),
            symbol: function.symbol.clone(),
            outcome: resolve(function).and_then(|r| attach_entry(ebpf, index, function, r)),
        })
        .collect())
}

fn write_filters(ebpf: &mut Ebpf, functions: &[FunctionConfig]) -> Result<(), ProbeError> {
    let map_error = |reason: String| ProbeError::Map {
        map: "UPROBE_FILTER",
        reason,
    };
    let map = ebpf
        .map_mut("UPROBE_FILTER")
        .ok_or_else(|| map_error("missing from the eBPF object".into()))?;
    let mut filters: Array<&mut MapData, UprobeFilter> =
        Array::try_from(map).map_err(|e| map_error(e.to_string()))?;
    for (i, function) in functions.iter().enumerate() {
        let filter = function
            .process
            .as_deref()
            .map(UprobeFilter::named)
            .unwrap_or_default();
        filters
            .set(i as u32, filter, 0)
            .map_err(|e| map_error(e.to_string()))?;
    }
    Ok(())
}

/// Attaches the entry and return programs at `resolved` with cookie `index`; both or neither.
fn attach_entry(
    ebpf: &mut Ebpf,
    index: usize,
    function: &FunctionConfig,
    resolved: Resolved,
) -> Result<Resolved, String> {
    let scope = match function.pid.and_then(NonZeroU32::new) {
        Some(pid) => UProbeScope::OneProcess(pid),
        None => UProbeScope::AllProcesses,
    };
    let point = || UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(resolved.offset),
        cookie: Some(index as u64),
    };
    let describe = |e: aya::programs::ProgramError| attach_error(&anyhow::Error::from(e));
    let entry = uprobe_program(ebpf, ENTRY_PROGRAM).map_err(|e| e.to_string())?;
    let entry_link = entry
        .attach(point(), &resolved.file, scope)
        .map_err(describe)?;
    let ret = uprobe_program(ebpf, RETURN_PROGRAM).map_err(|e| e.to_string())?;
    if let Err(e) = ret.attach(point(), &resolved.file, scope) {
        if let Ok(entry) = uprobe_program(ebpf, ENTRY_PROGRAM) {
            let _ = entry.detach(entry_link);
        }
        return Err(describe(e));
    }
    Ok(resolved)
}

/// The attach error, with the fix when it is the usual one: the kernel's uprobe PMU (what
/// `perf_event_open` uses) requires CAP_SYS_ADMIN; CAP_BPF and CAP_PERFMON are not enough.
fn attach_error(e: &anyhow::Error) -> String {
    let text = format!("attach failed: {e:#}");
    let denied = e
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| matches!(io.raw_os_error(), Some(libc::EACCES | libc::EPERM)));
    if denied || text.contains("Permission denied") {
        format!("{text} (attaching uprobes needs CAP_SYS_ADMIN)")
    } else {
        text
    }
}

impl Uprobe {
    /// Drops stamps of calls that never returned, and the series of processes that exited more
    /// than [`crate::process::EXITED_SERIES_TTL`] ago (kernel keys included, so the map does
    /// not fill up).
    fn sweep_entries(&mut self) -> u64 {
        let swept = sweep_stale(&mut self.start, |since| *since);
        let tgids = self.series_tgids();
        let expired = self.expire(&tgids);
        let keys: Vec<u64> = self
            .latency
            .keys()
            .filter_map(Result::ok)
            .filter(|k| expired.contains(&split_series_key(*k).1))
            .collect();
        for key in keys {
            let _ = self.latency.remove(&key);
        }
        for tgid in expired {
            let _ = self.comms.remove(&tgid);
        }
        swept
    }

    fn series_tgids(&self) -> Vec<u32> {
        let mut tgids: Vec<u32> = self
            .latency
            .keys()
            .filter_map(Result::ok)
            .map(|k| split_series_key(k).1)
            .collect();
        tgids.sort_unstable();
        tgids.dedup();
        tgids
    }

    /// Marks processes gone (or replaced under their pid) and returns those past the TTL.
    fn expire(&mut self, tgids: &[u32]) -> Vec<u32> {
        for &tgid in tgids {
            self.track(tgid);
        }
        let now = Instant::now();
        self.processes.mark_gone(now);
        let expired = self.processes.expire(now);
        expired.into_iter().map(|(tgid, _)| tgid).collect()
    }

    /// The resource of `tgid`, read from /proc the first time it is seen.
    fn track(&mut self, tgid: u32) -> Arc<ProcessResource> {
        // Gone before it was first seen: the name the kernel recorded stands in for it.
        let comms = &self.comms;
        let comm = || {
            comms
                .get(&tgid, 0)
                .map(|c| {
                    String::from_utf8_lossy(c.split(|b| *b == 0).next().unwrap_or(&[])).into_owned()
                })
                .unwrap_or_else(|_| "unknown".into())
        };
        self.processes.resource(tgid, comm)
    }

    /// One `process.function.duration` metric per process, one point per function.
    fn collect_series(&mut self, out: &mut Vec<Metric>) {
        let series = match read_series(&self.latency, |per_cpu: &[Hist]| {
            Histogram::from_kernel(per_cpu)
        }) {
            Ok(series) => series,
            Err(e) => {
                tracing::warn!(probe = FAMILY, error = %e, "reading function latency failed");
                return;
            }
        };
        let mut by_process: HashMap<u32, Vec<(Attributes, Histogram)>> = HashMap::new();
        for (key, histogram) in series {
            let (entry, tgid) = split_series_key(key);
            let Some(status) = self.entries.get(entry as usize) else {
                continue;
            };
            let attributes = vec![
                ("code.function.name", status.symbol.clone()),
                ("code.file.path", status.path.clone()),
            ];
            by_process
                .entry(tgid)
                .or_default()
                .push((attributes, histogram));
        }
        for (tgid, mut points) in by_process {
            points.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(Metric {
                name: names::PROCESS_FUNCTION_DURATION,
                description: "Duration of calls to configured user-space functions (uprobe to uretprobe).",
                unit: "s",
                points: metrics::Points::Histogram(ValueUnit::Seconds, points),
                resource: Some(self.track(tgid)),
            });
        }
    }

    /// `periscope.uprobe.attached`: 1 per function attached, 0 per function that is not.
    pub fn entry_gauge(entries: &[EntryStatus]) -> Metric {
        let points = entries
            .iter()
            .map(|e| {
                (
                    vec![
                        ("code.function.name", e.symbol.clone()),
                        ("code.file.path", e.path.clone()),
                    ],
                    if e.attached() { 1.0 } else { 0.0 },
                )
            })
            .collect();
        Metric {
            name: names::PERISCOPE_UPROBE_ATTACHED,
            description: "1 per configured function whose uprobes are attached, 0 when its binary or symbol could not be resolved or attached.",
            unit: "1",
            points: metrics::Points::Gauge(points),
            resource: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_a_libc_symbol_by_library_name() {
        let file = resolve_path("libc.so.6").expect("libc.so.6 in a standard directory");
        let r = resolve_symbol(&file, "malloc").expect("malloc is in libc's .dynsym");
        assert!(r.offset > 0 && r.offset <= r.address, "{r:?}");
    }

    #[test]
    fn missing_binary_and_symbol_say_what_is_missing() {
        let err = resolve_path("/nonexistent/app").unwrap_err();
        assert_eq!(
            err,
            "binary /nonexistent/app cannot be opened: No such file or directory (os error 2)"
        );
        let file = resolve_path("libc.so.6").unwrap();
        let err = resolve_symbol(&file, "no_such_function_xyz").unwrap_err();
        assert!(
            err.starts_with("symbol no_such_function_xyz not found in"),
            "{err}"
        );
        assert!(
            resolve_path("libnope.so.9")
                .unwrap_err()
                .starts_with("library libnope.so.9 not found")
        );
    }
}
