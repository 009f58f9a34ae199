//! What the user-probe families (`uprobe`, `usdt`) share. Both attach to configured entries in
//! user-space files, each entry succeeding or failing alone (logged, shown by `periscope
//! check`, exported as its family's `periscope.<family>.attached` gauge), and both keep their
//! series in kernel maps keyed by (entry, process), each series exported with its process's
//! resource and deleted a while after the process is gone.

use std::{
    collections::HashMap,
    hash::Hash,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, Pod,
    maps::{Array, MapData, PerCpuHashMap},
    programs::UProbe,
};
// Both families lay series keys out alike (the tests hold them to it): uprobe's split reads both.
use periscope_common::uprobe::split_series_key;

use super::{
    CheckLines, Family, KernelSupport, LoadSettings, Mechanism, Plan, ProbeError, ProbeStatus,
    Started, none_attached,
};
use crate::{
    model::{
        histogram::read_series,
        metrics::{Attributes, Metric},
    },
    process::ProcessCache,
};

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

/// The plan of a user-probe family: off when disabled or with no entries (rather than a
/// failure), else uprobes where the kernel allows them.
pub fn plan(
    family: &str,
    configured: bool,
    settings: LoadSettings,
    kernel: &KernelSupport,
) -> Plan {
    if !configured {
        return Plan::disabled(settings);
    }
    Plan::single(
        settings,
        kernel
            .allows(Mechanism::Uprobe)
            .map(|()| Mechanism::Uprobe)
            .map_err(|why| ProbeError::Mechanism(format!("{family}: {why}"))),
    )
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

/// The uprobe program `name` of the object.
pub fn uprobe_program<'a>(
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

/// An attach error of a uprobe or USDT probe, with the fix when it is the usual one: the
/// kernel's uprobe PMU (what `perf_event_open` uses) requires CAP_SYS_ADMIN; CAP_BPF and CAP_PERFMON are not enough.
pub fn attach_error(e: &anyhow::Error) -> String {
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

/// Loads the uprobe program `name` into the kernel.
pub fn load_uprobe<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut UProbe, ProbeError> {
    let program = uprobe_program(ebpf, name)?;
    program.load().map_err(|source| ProbeError::Program {
        program: name,
        source,
    })?;
    Ok(program)
}

/// The per-entry array `name` (filters, specs), left in the object for the programs.
pub fn entry_array<'a, T: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut MapData, T>, ProbeError> {
    let map_error = |reason: String| ProbeError::Map { map: name, reason };
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| map_error("missing from the eBPF object".into()))?;
    Array::try_from(map).map_err(|e| map_error(e.to_string()))
}

/// One configured entry of a user-probe family: what became of it.
pub trait Entry: Clone + Send + 'static {
    const FAMILY: &'static str;
    /// What one entry is, in messages: `function`, `probe`.
    const NOUN: &'static str;

    /// Its place in the configured list, and why it is not attached (`None`: it is).
    fn outcome(&self) -> (usize, Option<&String>);

    /// The family's `periscope.<family>.attached` gauge, and its description.
    const ATTACHED: &'static str;
    const ATTACHED_DESCRIPTION: &'static str;

    /// Whether it is attached.
    fn attached(&self) -> bool {
        self.outcome().1.is_none()
    }

    /// What names it on the attached gauge.
    fn attributes(&self) -> Attributes;

    /// The family's `periscope.<family>.attached` gauge: 1 per entry attached, 0 per entry not.
    fn gauge(entries: &[Self]) -> Metric {
        let points = entries
            .iter()
            .map(|e| (e.attributes(), if e.attached() { 1.0 } else { 0.0 }))
            .collect();
        Metric {
            name: Self::ATTACHED,
            description: Self::ATTACHED_DESCRIPTION,
            unit: "1",
            points: crate::model::metrics::Points::Gauge(points),
            resource: None,
        }
    }

    /// One `periscope check` line per entry: where it attached, or why it could not.
    fn check_lines(entries: &[Self]) -> CheckLines;

    /// Logs where it attached, or why it did not.
    fn log(&self);
}

/// Attaches every configured entry it can with `attach_all` (which fails as a whole only when
/// the programs or their per-entry maps are unusable; it may return what keeps the entries
/// attached, such as perf links), then builds the family with `build` (which takes its maps).
/// Without the family (nothing attached, or no maps), the entries still report what became
/// of each.
pub fn start<E: Entry, L, F: Family + 'static>(
    ebpf: &mut Ebpf,
    plan: Plan,
    programs: &[&'static str],
    attach_all: impl FnOnce(&mut Ebpf) -> Result<(Vec<E>, L), ProbeError>,
    build: impl FnOnce(&mut Ebpf, Vec<E>, L) -> Result<F, ProbeError>,
) -> Started {
    let mut status = ProbeStatus {
        family: E::FAMILY,
        enabled: plan.enabled,
        mechanism: None,
        error: None,
        programs: Vec::new(),
        refused: Vec::new(),
    };
    if !plan.enabled {
        return Started {
            family: None,
            status,
        };
    }
    let attached = plan
        .mechanism
        .and_then(|mechanism| Ok((mechanism, attach_all(ebpf)?)));
    let (mechanism, (entries, links)) = match attached {
        Ok(attached) => attached,
        Err(e) => return not_started(status, e.to_string(), Vec::<E>::new()),
    };
    entries.iter().for_each(E::log);
    if entries.iter().all(|e| e.outcome().1.is_some()) {
        let why = none_attached(E::FAMILY, E::NOUN, entries.iter().map(E::outcome));
        return not_started(status, why, entries);
    }
    match build(ebpf, entries.clone(), links) {
        Ok(family) => {
            status.mechanism = Some(mechanism);
            status.programs = programs.to_vec();
            Started {
                family: Some(Box::new(family)),
                status,
            }
        }
        Err(e) => not_started(status, e.to_string(), entries),
    }
}

/// A family that did not start: its error and, when it has entries, their statuses alone.
fn not_started<E: Entry>(mut status: ProbeStatus, error: String, entries: Vec<E>) -> Started {
    status.error = Some(error);
    let family = match entries.is_empty() {
        true => None,
        false => Some(Box::new(Unattached { entries }) as Box<dyn Family>),
    };
    Started { family, status }
}

/// The configured entries when none could be attached: only their statuses.
struct Unattached<E> {
    entries: Vec<E>,
}

impl<E: Entry> Family for Unattached<E> {
    fn collect(&mut self, out: &mut Vec<Metric>) {
        out.push(E::gauge(&self.entries));
    }

    fn check_lines(&self) -> Option<CheckLines> {
        Some(E::check_lines(&self.entries))
    }
}

/// The series of `map` grouped per process and `G` (a unit, or nothing), each group's points
/// sorted: `point` gives a series' group and attributes from its entry (`None`: not an entry
/// any more). A map that cannot be read is logged as `what` and gives nothing.
pub fn per_process<V: Pod, T, G: Eq + Hash>(
    family: &str,
    what: &str,
    map: &PerCpuHashMap<MapData, u64, V>,
    value: impl FnMut(&[V]) -> T,
    mut point: impl FnMut(u32) -> Option<(G, Attributes)>,
) -> HashMap<(u32, G), Vec<(Attributes, T)>> {
    let series = match read_series(map, value) {
        Ok(series) => series,
        Err(e) => {
            tracing::warn!(probe = family, error = %e, "reading {what} failed");
            return HashMap::new();
        }
    };
    let mut grouped: HashMap<(u32, G), Vec<(Attributes, T)>> = HashMap::new();
    for (key, value) in series {
        let (entry, tgid) = split_series_key(key);
        if let Some((group, attributes)) = point(entry) {
            grouped
                .entry((tgid, group))
                .or_default()
                .push((attributes, value));
        }
    }
    for points in grouped.values_mut() {
        points.sort_by(|a, b| a.0.cmp(&b.0));
    }
    grouped
}

/// The processes the series `keys` belong to, each once.
pub fn series_processes(keys: impl Iterator<Item = u64>) -> Vec<u32> {
    let mut tgids: Vec<u32> = keys.map(|key| split_series_key(key).1).collect();
    tgids.sort_unstable();
    tgids.dedup();
    tgids
}

/// Forgets the processes gone (or replaced under their pid) for more than the series TTL and
/// returns them, after taking in those of `tgids` not seen yet (`comm_hint` names one that is
/// already gone).
pub fn expire_processes(
    processes: &mut ProcessCache,
    tgids: &[u32],
    comm_hint: impl Fn(u32) -> String,
) -> Vec<u32> {
    for &tgid in tgids {
        processes.resource(tgid, || comm_hint(tgid));
    }
    let now = std::time::Instant::now();
    processes.mark_gone(now);
    let expired = processes.expire(now);
    expired.into_iter().map(|(tgid, _)| tgid).collect()
}

/// Deletes the series of the `expired` processes from `map`.
pub fn delete_series<V: Pod>(map: &mut PerCpuHashMap<MapData, u64, V>, expired: &[u32]) {
    let keys: Vec<u64> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| expired.contains(&split_series_key(*key).1))
        .collect();
    for key in keys {
        let _ = map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_common::{uprobe, usdt};

    #[test]
    fn both_families_key_series_by_entry_then_process() {
        let keys = [
            usdt::series_key(3, 4242),
            uprobe::series_key(1, 4242),
            uprobe::series_key(0, 7),
        ];
        assert_eq!(split_series_key(keys[0]), (3, 4242));
        assert_eq!(series_processes(keys.into_iter()), [7, 4242]);
    }
}
