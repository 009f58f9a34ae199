//! CPU and off-CPU profiles: the user-space half of `ebpf/periscope-ebpf/src/profile.rs`.
//!
//! On-CPU, `profile_cpu` is attached to a CPU-clock perf event on every online CPU, sampling at
//! the configured frequency; off-CPU, `profile_sched_switch` and `profile_sched_wakeup` are
//! attached to their tracepoints; with either, `profile_process_exec` and `profile_process_exit`
//! (raw tracepoints) follow the processes announced to [`process_maps`]. Either way the kernel
//! aggregates per (process, thread name, user stack, kernel stack), and [`ProfileReader`] reads
//! O(distinct stacks). Profiles are not
//! metrics: the family attaches through the registry (so its maps are sized, and tiny when it
//! is off) and whoever asked for it takes the reader ([`super::Probes::take_profile`]).

pub mod collect;
pub mod config;
pub mod continuous;
pub mod process_maps;
pub mod symbolize;

use std::{cell::Cell, sync::Arc, time::Instant};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use periscope_common::profile::{OffCpuStart, OffCpuTime, ProfileKey};

pub use self::config::ProfileConfig;
use self::process_maps::{ProcessMaps, Watcher};
use super::{
    KernelSupport, LoadSettings, Mechanism, Plan, ProbeError, Registration, Started,
    start_family_with, tracepoint_plan,
};
use crate::kernel::{
    mechanism::MechanismChoice,
    programs::{attach_raw_tracepoints, attach_tracepoints},
    tracefs::Tracefs,
};

const FAMILY: &str = "profile";
const CPU_PROGRAM: &str = "profile_cpu";
const OFFCPU_PROGRAMS: &[(&str, &str, &str)] = &[
    ("profile_sched_switch", "sched", "sched_switch"),
    ("profile_sched_wakeup", "sched", "sched_wakeup"),
];
/// Raw tracepoints (no tracefs needed) that follow the processes announced.
const PROCESS_PROGRAMS: &[(&str, &str)] = &[
    ("profile_process_exec", "sched_process_exec"),
    ("profile_process_exit", "sched_process_exit"),
];
const MAPS: [&str; 5] = [
    "PROFILE_STACKS",
    "PROFILE_CPU_SAMPLES",
    "PROFILE_OFFCPU",
    "PROFILE_OFFCPU_START",
    "PROFILE_SEEN",
];
/// The process events' ring buffer: a page when profiling is off (its least size).
const PROCESS_EVENTS: &str = "PROFILE_PROCESSES";
/// Threads that can be blocked at once and still be timed.
const MAX_BLOCKED_THREADS: u32 = 32768;

pub fn plan(config: &ProfileConfig, kernel: &KernelSupport, tracefs: Option<&Tracefs>) -> Plan {
    let mut settings = LoadSettings::default();
    if !config.enabled {
        // Nothing is profiled: the maps (a stack-trace map costs ~1 KiB per entry) stay tiny.
        settings.max_entries.extend(MAPS.map(|m| (m, 1)));
        settings.max_entries.push((PROCESS_EVENTS, 4096));
        return Plan::disabled(settings);
    }
    let (samples, offcpu, blocked) = if config.off_cpu {
        (1, config.max_stacks, MAX_BLOCKED_THREADS)
    } else {
        (config.max_stacks, 1, 1)
    };
    settings.max_entries.extend([
        ("PROFILE_STACKS", config.max_stacks),
        ("PROFILE_CPU_SAMPLES", samples),
        ("PROFILE_OFFCPU", offcpu),
        ("PROFILE_OFFCPU_START", blocked),
    ]);
    settings.globals.extend([
        ("PROFILE_TGID", config.tgid.unwrap_or(0)),
        ("PROFILE_OFFCPU_MIN_US", config.min_block_us),
    ]);
    if config.off_cpu {
        return tracepoint_plan(
            FAMILY,
            &[Mechanism::Tracepoint],
            MechanismChoice::Auto,
            kernel,
            tracefs,
            settings,
            offcpu_offsets,
        );
    }
    let mechanism = kernel
        .allows(Mechanism::PerfEvent)
        .map(|()| Mechanism::PerfEvent)
        .map_err(|why| ProbeError::Mechanism(format!("{FAMILY}: {why}")));
    Plan::single(settings, mechanism)
}

fn offcpu_offsets(tracefs: &Tracefs) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let switch = tracefs.format("sched", "sched_switch")?;
    let wakeup = tracefs.format("sched", "sched_wakeup")?;
    Ok(vec![
        ("PROFILE_SWITCH_PREV_STATE", switch.offset("prev_state", 8)?),
        ("PROFILE_WAKEUP_PID", wakeup.offset("pid", 4)?),
        ("PROFILE_SWITCH_NEXT_PID", switch.offset("next_pid", 4)?),
    ])
}

pub const REGISTRATION: Registration = Registration {
    name: FAMILY,
    plan: |config, kernel, tracefs| plan(&config.profile, kernel, tracefs),
    start: |ebpf, plan, config| {
        let (_, status) = start(ebpf, plan, &config.profile);
        Started {
            family: None,
            status,
        }
    },
};

/// Attaches the programs the plan's mechanism needs; the maps stay in the object for
/// [`ProfileReader::take`].
pub fn start(
    ebpf: &mut Ebpf,
    plan: Plan,
    config: &ProfileConfig,
) -> (Option<()>, super::ProbeStatus) {
    let frequency = config.frequency;
    let attach = |ebpf: &mut Ebpf, mechanism: Mechanism| {
        let mut programs = if mechanism == Mechanism::Tracepoint {
            attach_tracepoints(ebpf, OFFCPU_PROGRAMS)?;
            OFFCPU_PROGRAMS.iter().map(|p| p.0).collect()
        } else {
            attach_perf_events(ebpf, frequency)?;
            vec![CPU_PROGRAM]
        };
        // Without them the maps read for a process are kept until the cap pushes them out, and
        // an exec'd process is named from its maps as they are when its stacks are named.
        match attach_raw_tracepoints(ebpf, PROCESS_PROGRAMS) {
            Ok(()) => programs.extend(PROCESS_PROGRAMS.iter().map(|p| p.0)),
            Err(e) => {
                tracing::warn!(probe = FAMILY, error = %e, "process exec and exit not followed")
            }
        }
        Ok(programs)
    };
    start_family_with(ebpf, FAMILY, plan, attach, |_| Ok(()))
}

/// `profile_cpu` on a CPU-clock event of every online CPU, `frequency` times a second.
fn attach_perf_events(ebpf: &mut Ebpf, frequency: u64) -> Result<(), ProbeError> {
    let program = CPU_PROGRAM;
    let cpus = aya::util::online_cpus().map_err(|(what, e)| {
        ProbeError::Mechanism(format!("{FAMILY}: reading {what} failed: {e}"))
    })?;
    let perf: &mut PerfEvent = ebpf
        .program_mut(program)
        .ok_or_else(|| ProbeError::missing_program(program))?
        .try_into()
        .map_err(|source| ProbeError::Program { program, source })?;
    perf.load()
        .map_err(|source| ProbeError::Program { program, source })?;
    for cpu in cpus {
        perf.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(frequency),
            false,
        )
        .map_err(|source| ProbeError::Program { program, source })?;
    }
    Ok(())
}

/// One aggregated stack as the kernel has it: who, the two stack ids, and the value (samples
/// on-CPU, nanoseconds blocked off-CPU) with how many events make it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackCount {
    pub key: ProfileKey,
    pub value: u64,
    pub events: u64,
}

/// The profile's kernel maps, and the memory maps of the processes they count.
pub struct ProfileReader {
    stacks: StackTraceMap<MapData>,
    samples: PerCpuHashMap<MapData, ProfileKey, u64>,
    offcpu: PerCpuHashMap<MapData, ProfileKey, OffCpuTime>,
    /// Threads blocked right now, with the stack ids they blocked in.
    blocked: aya::maps::HashMap<MapData, u32, OffCpuStart>,
    processes: Arc<ProcessMaps>,
    _watcher: Watcher,
    /// When [`ProfileReader::counts`] last read the kernel's counts.
    counted_at: Cell<Instant>,
}

impl ProfileReader {
    /// Takes the maps and starts reading the processes the kernel announces.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let map_error = |map: &'static str| {
            move |e: aya::maps::MapError| ProbeError::Map {
                map,
                reason: e.to_string(),
            }
        };
        let mut take = |map: &'static str| ebpf.take_map(map).ok_or(ProbeError::missing_map(map));
        let stacks = StackTraceMap::try_from(take("PROFILE_STACKS")?)
            .map_err(map_error("PROFILE_STACKS"))?;
        let events = RingBuf::try_from(take(PROCESS_EVENTS)?).map_err(map_error(PROCESS_EVENTS))?;
        let processes = Arc::new(ProcessMaps::default());
        let watcher =
            process_maps::watch(events, processes.clone()).map_err(|e| ProbeError::Map {
                map: PROCESS_EVENTS,
                reason: format!("starting its reader thread failed: {e}"),
            })?;
        Ok(Self {
            stacks,
            samples: super::take_per_cpu_map(ebpf, "PROFILE_CPU_SAMPLES")?,
            offcpu: super::take_per_cpu_map(ebpf, "PROFILE_OFFCPU")?,
            blocked: crate::kernel::maps::take_hash_map(ebpf, "PROFILE_OFFCPU_START")?,
            processes,
            _watcher: watcher,
            counted_at: Cell::new(Instant::now()),
        })
    }

    /// The memory maps read of the processes announced.
    pub fn processes(&self) -> &ProcessMaps {
        &self.processes
    }

    /// When the kernel's counts were last read.
    pub fn counted_at(&self) -> Instant {
        self.counted_at.get()
    }

    /// Every stack counted so far, on-CPU and off-CPU alike (only one of them is attached),
    /// the CPUs summed.
    pub fn counts(&self) -> Vec<StackCount> {
        self.counted_at.set(Instant::now());
        let on_cpu = self.samples.iter().flatten().map(|(key, per_cpu)| {
            let n = per_cpu.iter().sum();
            StackCount {
                key,
                value: n,
                events: n,
            }
        });
        let off_cpu = self
            .offcpu
            .iter()
            .flatten()
            .map(|(key, per_cpu)| StackCount {
                key,
                value: per_cpu.iter().map(|t| t.total_ns).sum(),
                events: per_cpu.iter().map(|t| t.count).sum(),
            });
        on_cpu.chain(off_cpu).collect()
    }

    /// Empties the count maps, then the stack-trace map: a long-running daemon does when they
    /// fill up, since a full map keeps no new stack. Counts the kernel adds to a key between
    /// the last read and its removal are lost, and so are the blocks in progress: their
    /// threads hold stack ids that, once the stack map is emptied, may come back naming
    /// another stack (a wrong stack is worse than a block not counted).
    pub fn clear(&mut self) {
        let threads: Vec<u32> = self.blocked.keys().flatten().collect();
        for tid in &threads {
            let _ = self.blocked.remove(tid);
        }
        let on_cpu: Vec<ProfileKey> = self.samples.keys().flatten().collect();
        for key in &on_cpu {
            let _ = self.samples.remove(key);
        }
        let off_cpu: Vec<ProfileKey> = self.offcpu.keys().flatten().collect();
        for key in &off_cpu {
            let _ = self.offcpu.remove(key);
        }
        let ids: Vec<u32> = self.stacks.stack_ids().flatten().collect();
        for id in &ids {
            let _ = self.stacks.remove(id);
        }
    }

    /// The instruction pointers of a stack, innermost first; empty for a negative id (no stack
    /// of that kind) or a stack no longer in the map.
    pub fn stack(&self, id: i32) -> Vec<u64> {
        let Ok(id) = u32::try_from(id) else {
            return Vec::new();
        };
        self.stacks
            .get(&id, 0)
            .map(|trace| trace.frames().iter().map(|f| f.ip).collect())
            .unwrap_or_default()
    }
}
