//! Syscall latency and errors per process: the user-space half of
//! `ebpf/periscope-ebpf/src/syscall.rs` (tracepoints `raw_syscalls:sys_enter`/`sys_exit`),
//! exported as `kernel.syscall.duration` (histogram per `syscall.name`) and
//! `kernel.syscall.errors` (counter per `syscall.name` and `error.type`), each attributed to
//! the owning process's resource like the HTTP metrics.
//!
//! The kernel keeps one entry per non-empty (process, syscall, bucket); collecting reads them in
//! O(entries) and rebuilds the histograms. Processes that exited are folded into user space and
//! their kernel entries deleted, so the kernel maps only hold live processes; their series stay
//! exported for [`EXITED_SERIES_TTL`] so cumulative counts never go backwards before then.
//!
//! With a selection, a /proc rescan every `rescan_interval` puts matching processes into the
//! kernel's allow-map: a process started after Periscope is measured from the first rescan that
//! sees it, so its first syscalls (up to one interval) are not measured.

pub mod config;

use crate::model::names;
use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
};
use periscope_common::syscall::{OTHER_NR, SUM_SLOT, SyscallKey};

pub use self::config::SyscallConfig;
use super::{
    Family, KernelSupport, LoadSettings, Mechanism, Plan, ProbeStatus, Registration, Started,
    start_family, take_hash_map, take_per_cpu_map, tracepoint_plan,
};
use crate::{
    kernel::tracefs::Tracefs,
    model::histogram::{Histogram, ValueUnit},
    model::metrics::{Metric, Points},
    process::EXITED_SERIES_TTL,
    process::Selector,
    process::{ProcessCache, ProcessInfo, ProcessResource, select},
};

const FAMILY: &str = "syscall";
const IMPLEMENTED: &[Mechanism] = &[Mechanism::Tracepoint];
const PROGRAMS: &[(&str, &str, &str)] = &[
    ("syscall_enter", "raw_syscalls", "sys_enter"),
    ("syscall_exit", "raw_syscalls", "sys_exit"),
];

pub fn plan(config: &SyscallConfig, kernel: &KernelSupport, tracefs: Option<&Tracefs>) -> Plan {
    let selective = !config.select.is_empty();
    let mut settings = LoadSettings {
        globals: vec![("SYSCALL_SELECTIVE", u32::from(selective))],
        max_entries: vec![
            (
                "SYSCALL_SELECTED",
                if selective { config.max_processes } else { 1 },
            ),
            ("SYSCALL_START", config.max_threads),
            ("SYSCALL_LATENCY", config.max_latency_entries),
            ("SYSCALL_ERRORS", config.max_error_entries),
        ],
    };
    if !config.enabled {
        // Keep the unused maps tiny.
        for (_, size) in &mut settings.max_entries {
            *size = 1;
        }
        return Plan::disabled(settings);
    }
    tracepoint_plan(
        FAMILY,
        IMPLEMENTED,
        config.mechanism,
        kernel,
        tracefs,
        settings,
        |tracefs| {
            let exit = tracefs.format("raw_syscalls", "sys_exit")?;
            Ok(vec![
                ("SYSCALL_EXIT_ID", exit.offset("id", 8)?),
                ("SYSCALL_EXIT_RET", exit.offset("ret", 8)?),
            ])
        },
    )
}

/// What one process's syscalls added up to.
#[derive(Debug, Default, Clone)]
struct ProcessSeries {
    /// Latency histogram per syscall number.
    latency: BTreeMap<u16, Histogram>,
    /// Failed calls per (syscall number, errno).
    errors: BTreeMap<(u16, u16), u64>,
}

/// A process seen in /proc: its resource, and whether the selectors pick it.
struct Identified {
    resource: Arc<ProcessResource>,
    selected: bool,
}

/// An exited process's last counts, exported until `at + EXITED_SERIES_TTL`.
struct Exited {
    resource: Arc<ProcessResource>,
    series: ProcessSeries,
    at: Instant,
}

pub const REGISTRATION: Registration = Registration {
    name: FAMILY,
    plan: |config, kernel, tracefs| plan(&config.syscall, kernel, tracefs),
    start: |ebpf, plan, config| Started::from(start(ebpf, plan, &config.syscall)),
};

pub struct Syscall {
    latency: PerCpuHashMap<MapData, SyscallKey, u64>,
    errors: PerCpuHashMap<MapData, SyscallKey, u64>,
    start: aya::maps::HashMap<MapData, u32, u64>,
    /// The kernel allow-map, when a selection is configured.
    selected: Option<aya::maps::HashMap<MapData, u32, u8>>,
    select: Vec<Selector>,
    /// Processes seen in /proc. One found gone by a rescan is marked exited but keeps its
    /// resource until the next collect folds its counts (they may still be in the kernel
    /// maps), or [`EXITED_SERIES_TTL`] when no collect comes.
    processes: ProcessCache,
    exited: Vec<Exited>,
    /// Selected processes that did not fit in the allow-map (logged once each).
    not_fitting: HashSet<u32>,
    rescan_interval: std::time::Duration,
}

pub fn start(
    ebpf: &mut Ebpf,
    plan: Plan,
    config: &SyscallConfig,
) -> (Option<Syscall>, ProbeStatus) {
    let (mut syscall, status) = start_family(ebpf, FAMILY, plan, PROGRAMS, |ebpf| {
        Ok(Syscall {
            latency: take_per_cpu_map(ebpf, "SYSCALL_LATENCY")?,
            errors: take_per_cpu_map(ebpf, "SYSCALL_ERRORS")?,
            start: take_hash_map(ebpf, "SYSCALL_START")?,
            selected: if config.select.is_empty() {
                None
            } else {
                Some(take_hash_map(ebpf, "SYSCALL_SELECTED")?)
            },
            select: config.select.clone(),
            processes: ProcessCache::new(),
            exited: Vec::new(),
            not_fitting: HashSet::new(),
            rescan_interval: config.rescan_interval,
        })
    });
    // Processes running now are selected before the daemon reports itself ready.
    if let Some(s) = &mut syscall {
        s.rescan_processes();
    }
    (syscall, status)
}

/// Process ids in /proc right now.
fn live_processes() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn process_alive(tgid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tgid}")).exists()
}

impl Family for Syscall {
    fn collect(&mut self, out: &mut Vec<Metric>) {
        self.collect_series(out);
    }

    fn sweep(&mut self) -> u64 {
        self.sweep_entries()
    }

    fn rescan_every(&self) -> Option<std::time::Duration> {
        Some(self.rescan_interval)
    }

    fn rescan(&mut self, _ebpf: &mut Ebpf) {
        self.rescan_processes();
    }
}

impl Syscall {
    /// Learns processes started since the last rescan (resource, selection) and, with a
    /// selection, updates the kernel allow-map. O(processes) directory reads, plus /proc reads
    /// for new processes only.
    pub fn rescan_processes(&mut self) {
        let live = live_processes();
        let gone: Vec<u32> = self
            .processes
            .live_pids()
            .filter(|pid| !live.contains(pid))
            .collect();
        let now = Instant::now();
        for pid in gone {
            if let Some(map) = &mut self.selected {
                let _ = map.remove(&pid);
            }
            self.not_fitting.remove(&pid);
            self.processes.mark_exited(pid, now);
        }
        self.processes.expire(now);
        for pid in live {
            if pid == std::process::id() || self.processes.live(pid).is_some() {
                continue;
            }
            let identified = self.identify(pid);
            if identified.selected
                && let Some(map) = &mut self.selected
                && let Err(e) = map.insert(pid, 1, 0)
                && self.not_fitting.insert(pid)
            {
                tracing::warn!(probe = FAMILY, pid, error = %e,
                    "selected process not measured: probes.syscall.max_processes reached");
            }
            self.processes.insert(pid, identified.resource);
        }
    }

    /// Reads a process's resource from /proc and whether the selectors pick it.
    fn identify(&self, pid: u32) -> Identified {
        let host = self.processes.host();
        let info = ProcessInfo::read(pid, "unknown_service", host, None);
        let Some(selector) = select(&self.select, &info, None) else {
            return Identified {
                resource: info.resource.clone(),
                selected: false,
            };
        };
        let resource = match selector.and_then(|s| s.service_name.as_deref()) {
            Some(name) => ProcessInfo::read(pid, &info.comm, host, Some(name)).resource,
            None => info.resource.clone(),
        };
        Identified {
            resource,
            selected: true,
        }
    }

    /// Removes start stamps of threads that no longer exist (they left in a syscall that never
    /// returns: exit, exit_group, execve from a non-leader thread). A thread blocked in a
    /// syscall for hours keeps its stamp. Returns how many were removed.
    fn sweep_entries(&mut self) -> u64 {
        let dead: Vec<u32> = self
            .start
            .keys()
            .filter_map(Result::ok)
            .filter(|tid| !process_alive(*tid))
            .collect();
        dead.iter().filter(|t| self.start.remove(t).is_ok()).count() as u64
    }

    /// Everything the kernel holds, per process: O(entries x CPUs).
    fn read_kernel(&self) -> BTreeMap<u32, ProcessSeries> {
        let mut out: BTreeMap<u32, ProcessSeries> = BTreeMap::new();
        for (key, per_cpu) in self.latency.iter().filter_map(Result::ok) {
            let total: u64 = per_cpu.iter().fold(0, |a, v| a.wrapping_add(*v));
            let h = out
                .entry(key.tgid)
                .or_default()
                .latency
                .entry(key.nr)
                .or_default();
            if key.slot == SUM_SLOT {
                h.sum = h.sum.wrapping_add(total);
            } else if total > 0 {
                *h.counts.entry(u32::from(key.slot)).or_default() += total;
            }
        }
        for (key, per_cpu) in self.errors.iter().filter_map(Result::ok) {
            let total: u64 = per_cpu.iter().sum();
            *out.entry(key.tgid)
                .or_default()
                .errors
                .entry((key.nr, key.slot))
                .or_default() += total;
        }
        out
    }

    /// Moves the counts of processes that exited into user space and deletes their kernel
    /// entries (no event can come for them any more); returns the live processes' series.
    fn fold_exited(&mut self) -> Vec<(Arc<ProcessResource>, ProcessSeries)> {
        let mut live = Vec::new();
        for (tgid, series) in self.read_kernel() {
            if process_alive(tgid) {
                let resource = self.resource_of(tgid);
                live.push((resource, series));
                continue;
            }
            // Its counts are final: it leaves the cache and its resource goes with them.
            let resource = match self.processes.forget(tgid) {
                Some(resource) => resource,
                None => self.identify(tgid).resource,
            };
            self.delete_kernel_entries(tgid, &series);
            self.exited.push(Exited {
                resource,
                series,
                at: Instant::now(),
            });
        }
        // Processes that exited with nothing left in the kernel are forgotten too.
        self.processes.forget_exited();
        live
    }

    fn delete_kernel_entries(&mut self, tgid: u32, series: &ProcessSeries) {
        for (nr, h) in &series.latency {
            let slots = h.counts.keys().map(|s| *s as u16).chain([SUM_SLOT]);
            for slot in slots {
                let _ = self.latency.remove(&SyscallKey {
                    tgid,
                    nr: *nr,
                    slot,
                });
            }
        }
        for (nr, errno) in series.errors.keys() {
            let _ = self.errors.remove(&SyscallKey {
                tgid,
                nr: *nr,
                slot: *errno,
            });
        }
    }

    /// The resource of a live process seen in the kernel maps: known from a rescan, else read
    /// now (one found gone by a rescan is another process now that its pid lives).
    fn resource_of(&mut self, tgid: u32) -> Arc<ProcessResource> {
        if let Some(resource) = self.processes.live(tgid) {
            return resource;
        }
        let resource = self.identify(tgid).resource;
        self.processes.insert(tgid, resource.clone());
        resource
    }

    fn collect_series(&mut self, out: &mut Vec<Metric>) {
        let live = self.fold_exited();
        let now = Instant::now();
        self.exited
            .retain(|e| now.duration_since(e.at) <= *EXITED_SERIES_TTL);
        let exited = self.exited.iter().map(|e| (e.resource.clone(), &e.series));
        for (resource, series) in live.iter().map(|(r, s)| (r.clone(), s)).chain(exited) {
            push_process_metrics(out, resource, series);
        }
    }
}

fn push_process_metrics(
    out: &mut Vec<Metric>,
    resource: Arc<ProcessResource>,
    series: &ProcessSeries,
) {
    let latency = series
        .latency
        .iter()
        .filter(|(_, h)| h.count() > 0)
        .map(|(nr, h)| (vec![("syscall.name", syscall_name(*nr))], h.clone()))
        .collect();
    let mut duration = Metric::histogram(
        names::KERNEL_SYSCALL_DURATION,
        "Time from syscall entry to exit, per syscall, for the process of the resource.",
        ValueUnit::Seconds,
        latency,
    );
    duration.resource = Some(resource.clone());
    out.push(duration);
    if series.errors.is_empty() {
        return;
    }
    let errors = series
        .errors
        .iter()
        .map(|((nr, errno), n)| {
            let attributes = vec![
                ("syscall.name", syscall_name(*nr)),
                ("error.type", errno_name(*errno)),
            ];
            (attributes, *n as f64)
        })
        .collect();
    out.push(Metric {
        name: names::KERNEL_SYSCALL_ERRORS,
        description: "Syscalls that returned an error, per syscall and errno.",
        unit: "1",
        points: Points::Counter(errors),
        resource: Some(resource),
    });
}

/// The name of syscall `nr` on this machine's architecture (`read`, `futex`), or `syscall_NR`
/// for numbers the table does not know.
pub fn syscall_name(nr: u16) -> String {
    if nr == OTHER_NR {
        return "other".to_string();
    }
    syscalls::Sysno::new(nr as usize)
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

/// The symbolic name of an errno (`EBADF`). Kernel-internal restart codes can be seen at the
/// tracepoint (the kernel restarts or translates them before user space sees them).
pub fn errno_name(errno: u16) -> String {
    if let Some(name) = syscalls::Errno::new(i32::from(errno)).name() {
        return name.to_string();
    }
    match errno {
        512 => "ERESTARTSYS",
        513 => "ERESTARTNOINTR",
        514 => "ERESTARTNOHAND",
        515 => "ENOIOCTLCMD",
        516 => "ERESTART_RESTARTBLOCK",
        _ => return format!("errno_{errno}"),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_this_architecture_table() {
        assert_eq!(syscall_name(syscalls::Sysno::read as u16), "read");
        assert_eq!(syscall_name(syscalls::Sysno::futex as u16), "futex");
        assert_eq!(syscall_name(OTHER_NR), "other");
        assert_eq!(syscall_name(60000), "syscall_60000");
        assert_eq!(errno_name(9), "EBADF");
        assert_eq!(errno_name(110), "ETIMEDOUT");
        assert_eq!(errno_name(512), "ERESTARTSYS");
        assert_eq!(errno_name(4000), "errno_4000");
    }
}
