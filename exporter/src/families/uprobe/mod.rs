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
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
};
use object::{Object, ObjectSymbol};
use periscope_common::{
    Hist,
    uprobe::{COMM_LEN, UprobeFilter},
};

pub use self::config::{FunctionConfig, MAX_FUNCTIONS, UprobeConfig};
use super::{
    CheckLine, CheckLines, Family, KernelSupport, LoadSettings, Plan, ProbeError, Registration,
    Started, sweep_stale, take_hash_map, take_histogram_map,
    user_probe::{self, entry_array, load_uprobe, resolve_path, uprobe_program},
};
use crate::{
    model::histogram::{Histogram, ValueUnit},
    model::metrics::{self, Attributes, Metric},
    process::{ProcessCache, ProcessResource},
};

const FAMILY: &str = "uprobe";
const ENTRY_PROGRAM: &str = "uprobe_entry";
const RETURN_PROGRAM: &str = "uprobe_return";

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
    let configured = config.enabled && !config.functions.is_empty();
    user_probe::plan(FAMILY, configured, settings, kernel)
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
    start: |ebpf, plan, config| start(ebpf, plan, &config.uprobe),
};

impl Family for Uprobe {
    fn collect(&mut self, out: &mut Vec<Metric>) {
        self.collect_series(out);
        out.push(user_probe::Entry::gauge(&self.entries));
    }

    fn sweep(&mut self) -> u64 {
        self.sweep_entries()
    }

    fn check_lines(&self) -> Option<CheckLines> {
        Some(user_probe::Entry::check_lines(&self.entries))
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

impl user_probe::Entry for EntryStatus {
    const FAMILY: &'static str = FAMILY;
    const NOUN: &'static str = "function";
    /// 1 per function attached, 0 per function that is not.
    const ATTACHED: &'static str = names::PERISCOPE_UPROBE_ATTACHED;
    const ATTACHED_DESCRIPTION: &'static str = "1 per configured function whose uprobes are attached, 0 when its binary or symbol could not be resolved or attached.";

    fn outcome(&self) -> (usize, Option<&String>) {
        (self.index, self.outcome.as_ref().err())
    }

    fn attributes(&self) -> Attributes {
        vec![
            ("code.function.name", self.symbol.clone()),
            ("code.file.path", self.path.clone()),
        ]
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

    fn log(&self) {
        match &self.outcome {
            Ok(r) => tracing::info!(
                probe = FAMILY,
                entry = self.index,
                symbol = %self.symbol,
                file = %r.file.display(),
                offset = format_args!("{:#x}", r.offset),
                "function attached"
            ),
            Err(error) => tracing::warn!(
                probe = FAMILY,
                entry = self.index,
                symbol = %self.symbol,
                path = %self.path,
                %error,
                "function not attached"
            ),
        }
    }
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

/// Attaches every configured function it can (each fails alone), then takes the maps.
pub fn start(ebpf: &mut Ebpf, plan: Plan, config: &UprobeConfig) -> Started {
    user_probe::start(
        ebpf,
        plan,
        &[ENTRY_PROGRAM, RETURN_PROGRAM],
        |ebpf| Ok((attach_all(ebpf, &config.functions)?, ())),
        |ebpf, entries, ()| {
            Ok(Uprobe {
                latency: take_histogram_map(ebpf, "UPROBE_LATENCY")?,
                start: take_hash_map(ebpf, "UPROBE_START")?,
                comms: take_hash_map(ebpf, "UPROBE_COMM")?,
                entries,
                processes: ProcessCache::new(),
            })
        },
    )
}

/// Loads both programs, writes the per-entry filters, and attaches every entry it can.
/// Fails only when the programs or the filter map are unusable; entries fail alone.
fn attach_all(
    ebpf: &mut Ebpf,
    functions: &[FunctionConfig],
) -> Result<Vec<EntryStatus>, ProbeError> {
    for name in [ENTRY_PROGRAM, RETURN_PROGRAM] {
        load_uprobe(ebpf, name)?;
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
    let mut filters = entry_array::<UprobeFilter>(ebpf, "UPROBE_FILTER")?;
    for (i, function) in functions.iter().enumerate() {
        let filter = function
            .process
            .as_deref()
            .map(UprobeFilter::named)
            .unwrap_or_default();
        filters
            .set(i as u32, filter, 0)
            .map_err(|e| ProbeError::Map {
                map: "UPROBE_FILTER",
                reason: e.to_string(),
            })?;
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
    let describe =
        |e: aya::programs::ProgramError| user_probe::attach_error(&anyhow::Error::from(e));
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

impl Uprobe {
    /// Drops stamps of calls that never returned, and the series of processes that exited more
    /// than [`crate::process::EXITED_SERIES_TTL`] ago (kernel keys included, so the map does
    /// not fill up).
    fn sweep_entries(&mut self) -> u64 {
        let swept = sweep_stale(&mut self.start, |since| *since);
        let tgids = user_probe::series_processes(self.latency.keys().filter_map(Result::ok));
        let comms = &self.comms;
        let expired = user_probe::expire_processes(&mut self.processes, &tgids, |tgid| {
            kernel_comm(comms, tgid)
        });
        user_probe::delete_series(&mut self.latency, &expired);
        for tgid in expired {
            let _ = self.comms.remove(&tgid);
        }
        swept
    }

    /// The resource of `tgid`, read from /proc the first time it is seen.
    fn track(&mut self, tgid: u32) -> Arc<ProcessResource> {
        let comms = &self.comms;
        self.processes.resource(tgid, || kernel_comm(comms, tgid))
    }

    /// One `process.function.duration` metric per process, one point per function.
    fn collect_series(&mut self, out: &mut Vec<Metric>) {
        let entries = &self.entries;
        let by_process = user_probe::per_process(
            FAMILY,
            "function latency",
            &self.latency,
            |per_cpu: &[Hist]| Histogram::from_kernel(per_cpu),
            |entry| {
                let status = entries.get(entry as usize)?;
                let attributes = vec![
                    ("code.function.name", status.symbol.clone()),
                    ("code.file.path", status.path.clone()),
                ];
                Some(((), attributes))
            },
        );
        for ((tgid, ()), points) in by_process {
            out.push(Metric {
                name: names::PROCESS_FUNCTION_DURATION,
                description: "Duration of calls to configured user-space functions (uprobe to uretprobe).",
                unit: "s",
                points: metrics::Points::Histogram(ValueUnit::Seconds, points),
                resource: Some(self.track(tgid)),
            });
        }
    }
}

/// The name the kernel recorded for `tgid`: it stands in for a process gone before it was
/// first seen.
fn kernel_comm(comms: &aya::maps::HashMap<MapData, u32, [u8; COMM_LEN]>, tgid: u32) -> String {
    comms
        .get(&tgid, 0)
        .map(|c| String::from_utf8_lossy(c.split(|b| *b == 0).next().unwrap_or(&[])).into_owned())
        .unwrap_or_else(|_| "unknown".into())
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
