//! Run-queue latency: the user-space half of `ebpf/periscope-ebpf/src/sched.rs`
//! (`sched_wakeup`, `sched_wakeup_new`, `sched_switch`, as raw tracepoints where the kernel has
//! them, else as tracepoints), exported as `kernel.sched.runqueue.latency`, optionally per cgroup
//! with a cap on distinct cgroups.

pub mod config;

use crate::model::names;
use std::{collections::HashMap, path::PathBuf};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
};
use periscope_common::{
    Hist,
    sched::{ALL_TASKS, OTHER_CGROUPS},
};

pub use self::config::SchedConfig;
use super::{
    Family, KernelSupport, LoadSettings, Plan, ProbeError, ProbeStatus, Registration, Started,
    raw_or_tracepoint_plan, start_raw_or_tracepoints, sweep_stale, take_hash_map,
    take_histogram_map,
};
use crate::{
    kernel::tracefs::Tracefs,
    model::histogram::{Histogram, ValueUnit, read_series},
    model::metrics::{Attributes, Metric},
};

const FAMILY: &str = "sched";
const PROGRAMS: &[(&str, &str, &str)] = &[
    ("sched_wakeup", "sched", "sched_wakeup"),
    ("sched_wakeup_new", "sched", "sched_wakeup_new"),
    ("sched_switch", "sched", "sched_switch"),
];
const RAW_PROGRAMS: &[(&str, &str)] = &[
    ("sched_wakeup_raw", "sched_wakeup"),
    ("sched_wakeup_new_raw", "sched_wakeup_new"),
    ("sched_switch_raw", "sched_switch"),
];

pub fn plan(config: &SchedConfig, kernel: &KernelSupport, tracefs: Option<&Tracefs>) -> Plan {
    let mut settings = LoadSettings::default();
    if config.by_cgroup {
        settings
            .max_entries
            .push(("SCHED_CGROUPS", config.max_cgroups));
    } else {
        // Keep the per-cgroup maps tiny when they are not used.
        settings.max_entries.push(("SCHED_TASK_CGROUP", 1));
        settings.max_entries.push(("SCHED_CGROUPS", 1));
    }
    // One series per cgroup with its own, plus "other"; else the one of all tasks.
    let series = if config.by_cgroup {
        config.max_cgroups.saturating_add(2)
    } else {
        2
    };
    super::histogram_map(
        &mut settings,
        "SCHED_RUNQ_LATENCY",
        "SCHED_RUNQ_LATENCY_PREALLOC",
        series,
    );
    if !config.enabled {
        return Plan::disabled(settings);
    }
    settings
        .globals
        .push(("SCHED_BY_CGROUP", u32::from(config.by_cgroup)));
    raw_or_tracepoint_plan(
        FAMILY,
        config.mechanism,
        kernel,
        tracefs,
        settings,
        || raw_tracepoint_offsets(kernel),
        tracepoint_offsets,
    )
}

/// `task_struct.pid` from BTF; and the kernel must pass `prev_state` to `sched_switch` (5.18+).
fn raw_tracepoint_offsets(kernel: &KernelSupport) -> Result<Vec<(&'static str, u32)>, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if !super::release_at_least(release.trim(), (5, 18)) {
        return Err(format!(
            "kernel {} passes no prev_state to raw sched_switch (needs 5.18)",
            release.trim()
        ));
    }
    let btf = kernel.btf()?;
    Ok(vec![("SCHED_TASK_PID", btf.offset("task_struct", "pid")?)])
}

fn tracepoint_offsets(tracefs: &Tracefs) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let wakeup = tracefs.format("sched", "sched_wakeup")?;
    let wakeup_new = tracefs.format("sched", "sched_wakeup_new")?;
    let switch = tracefs.format("sched", "sched_switch")?;
    let pid = wakeup.offset("pid", 4)?;
    if wakeup_new.offset("pid", 4)? != pid {
        return Err(ProbeError::Mechanism(
            "sched_wakeup and sched_wakeup_new disagree on the pid offset".into(),
        ));
    }
    Ok(vec![
        ("SCHED_WAKEUP_PID", pid),
        ("SCHED_SWITCH_PREV_PID", switch.offset("prev_pid", 4)?),
        ("SCHED_SWITCH_PREV_STATE", switch.offset("prev_state", 8)?),
        ("SCHED_SWITCH_NEXT_PID", switch.offset("next_pid", 4)?),
    ])
}

pub const REGISTRATION: Registration = Registration {
    name: FAMILY,
    plan: |config, kernel, tracefs| plan(&config.sched, kernel, tracefs),
    start: |ebpf, plan, config| Started::from(start(ebpf, plan, config.sched.by_cgroup)),
};

pub struct Sched {
    latency: PerCpuHashMap<MapData, u64, Hist>,
    runnable: aya::maps::HashMap<MapData, u32, u64>,
    by_cgroup: bool,
}

pub fn start(ebpf: &mut Ebpf, plan: Plan, by_cgroup: bool) -> (Option<Sched>, ProbeStatus) {
    start_raw_or_tracepoints(
        ebpf,
        FAMILY,
        plan,
        &[(super::Mechanism::RawTracepoint, RAW_PROGRAMS)],
        PROGRAMS,
        |ebpf| {
            Ok(Sched {
                latency: take_histogram_map(
                    ebpf,
                    if super::needs_preallocated_maps() {
                        "SCHED_RUNQ_LATENCY_PREALLOC"
                    } else {
                        "SCHED_RUNQ_LATENCY"
                    },
                )?,
                runnable: take_hash_map(ebpf, "SCHED_RUNNABLE_SINCE")?,
                by_cgroup,
            })
        },
    )
}

impl Family for Sched {
    /// Drops "runnable since" stamps of tasks never seen switching in.
    fn sweep(&mut self) -> u64 {
        sweep_stale(&mut self.runnable, |since| *since)
    }

    fn collect(&mut self, out: &mut Vec<Metric>) {
        let series = match read_series(&self.latency, |per_cpu: &[Hist]| {
            Histogram::from_kernel(per_cpu)
        }) {
            Ok(series) => series,
            Err(e) => {
                tracing::warn!(probe = FAMILY, error = %e, "reading run-queue histogram failed");
                return;
            }
        };
        let points = if self.by_cgroup {
            with_cgroup_attributes(series)
        } else {
            series
                .into_iter()
                .filter(|(s, _)| *s == ALL_TASKS)
                .map(|(_, h)| (Vec::new(), h))
                .collect()
        };
        out.push(Metric::histogram(
            names::KERNEL_SCHED_RUNQUEUE_LATENCY,
            "Time runnable tasks waited in a run queue before running (wakeup or preemption to switch-in).",
            ValueUnit::Seconds,
            points,
        ));
    }
}

fn with_cgroup_attributes(series: Vec<(u64, Histogram)>) -> Vec<(Attributes, Histogram)> {
    let paths = cgroup_paths();
    let mut points: Vec<(Attributes, Histogram)> = series
        .into_iter()
        .map(|(id, histogram)| {
            let path = match id {
                OTHER_CGROUPS => "other".to_string(),
                id => paths
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("id:{id}")),
            };
            // The container and pod of the cgroup, as point attributes of its series.
            let identity = crate::process::cgroup::parse(&path).attributes();
            let mut attributes = vec![("cgroup.path", path)];
            attributes.extend(identity);
            (attributes, histogram)
        })
        .collect();
    points.sort_by(|a, b| a.0.cmp(&b.0));
    points
}

/// cgroup v2 id (the directory's inode number) to path, walking the unified hierarchy.
fn cgroup_paths() -> HashMap<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists());
    let mut out = HashMap::new();
    let Some(root) = root else { return out };
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = std::fs::metadata(&dir) {
            let rel = dir
                .strip_prefix(&root)
                .unwrap_or(&dir)
                .display()
                .to_string();
            out.insert(meta.ino(), format!("/{rel}"));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}
