//! Run-queue latency: the time a task waits runnable before it gets a CPU, as runqlat measures
//! it. `sched:sched_wakeup`/`sched_wakeup_new` and a preempted `sched:sched_switch` (prev task
//! still runnable) stamp the task; switching it in records the wait.
//!
//! Optionally split by cgroup: the cgroup of a task is the one it last ran in (recorded when it
//! is switched out, or from its parent at fork), because a classic tracepoint cannot see the
//! cgroup of the task being switched in. Distinct cgroups are capped by a map's size; the rest
//! go to one "other" series.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use periscope_common::{
    Hist, counters,
    hist::ns_to_units,
    sched::{ALL_TASKS, OTHER_CGROUPS, TASK_REPORT_MASK},
};

use crate::shared::{count, global, series};

#[unsafe(no_mangle)]
static SCHED_WAKEUP_PID: u32 = 24;
#[unsafe(no_mangle)]
static SCHED_SWITCH_PREV_PID: u32 = 24;
#[unsafe(no_mangle)]
static SCHED_SWITCH_PREV_STATE: u32 = 32;
#[unsafe(no_mangle)]
static SCHED_SWITCH_NEXT_PID: u32 = 56;
/// 1 when run-queue latency is split by cgroup.
#[unsafe(no_mangle)]
static SCHED_BY_CGROUP: u32 = 0;

/// When each runnable task started waiting, by thread id. A plain hash (an LRU insert costs
/// about twice as much); stale entries are swept by user space (`probes::sweep`).
#[map]
static SCHED_RUNNABLE_SINCE: HashMap<u32, u64> = HashMap::with_max_entries(32768, 0);

/// Last known cgroup of each thread (only with SCHED_BY_CGROUP).
#[map]
static SCHED_TASK_CGROUP: LruHashMap<u32, u64> =
    LruHashMap::with_max_entries(32768, BPF_F_NO_COMMON_LRU);

/// Cgroups that have their own series; its size (set at load) is the cap.
#[map]
static SCHED_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(256, 0);

/// Run-queue latency, in 2^-30 s units, per series (all tasks, or per cgroup). User space sets
/// its size to the cgroup cap + 1 ("other"), or 1 (all tasks); values are allocated per series.
#[map]
static SCHED_RUNQ_LATENCY: PerCpuHashMap<u64, Hist> =
    PerCpuHashMap::with_max_entries(258, BPF_F_NO_PREALLOC);

/// The all-zero value new series start from.
#[map]
static SCHED_ZERO: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn mark_runnable(pid: u32) {
    if pid == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if SCHED_RUNNABLE_SINCE
        .insert(pid, now, BPF_ANY as u64)
        .is_err()
    {
        count(counters::SCHED_START_FULL);
    }
}

#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    if let Ok(pid) = unsafe { ctx.read_at::<u32>(global(&SCHED_WAKEUP_PID) as usize) } {
        mark_runnable(pid);
    }
    0
}

#[tracepoint]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    if let Ok(pid) = unsafe { ctx.read_at::<u32>(global(&SCHED_WAKEUP_PID) as usize) } {
        if global(&SCHED_BY_CGROUP) != 0 {
            // A new task starts in its parent's cgroup, and the parent is running now.
            let cgroup = unsafe { bpf_get_current_cgroup_id() };
            let _ = SCHED_TASK_CGROUP.insert(pid, cgroup, BPF_ANY as u64);
        }
        mark_runnable(pid);
    }
    0
}

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let _ = try_sched_switch(&ctx);
    0
}

fn try_sched_switch(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets come from this kernel's format file for sched_switch.
    let (prev_pid, prev_state, next_pid) = unsafe {
        (
            ctx.read_at::<u32>(global(&SCHED_SWITCH_PREV_PID) as usize)?,
            ctx.read_at::<u64>(global(&SCHED_SWITCH_PREV_STATE) as usize)?,
            ctx.read_at::<u32>(global(&SCHED_SWITCH_NEXT_PID) as usize)?,
        )
    };
    let by_cgroup = global(&SCHED_BY_CGROUP) != 0;
    if by_cgroup && prev_pid != 0 {
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        let _ = SCHED_TASK_CGROUP.insert(prev_pid, cgroup, BPF_ANY as u64);
    }
    // Preempted but still runnable: it waits in the run queue from now on.
    if prev_state & TASK_REPORT_MASK == 0 {
        mark_runnable(prev_pid);
    }
    if next_pid == 0 {
        return Ok(());
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(since) = (unsafe { SCHED_RUNNABLE_SINCE.get(next_pid) }).copied() else {
        return Ok(());
    };
    let _ = SCHED_RUNNABLE_SINCE.remove(next_pid);
    let now = unsafe { bpf_ktime_get_ns() };
    let key = if by_cgroup {
        cgroup_series(next_pid)
    } else {
        ALL_TASKS
    };
    if let Some(hist) = series(
        &SCHED_RUNQ_LATENCY,
        &key,
        &SCHED_ZERO,
        counters::SCHED_HIST_FULL,
    ) {
        // SAFETY: this CPU's value of a per-CPU map; programs do not migrate while running.
        unsafe { (*hist).record(ns_to_units(now.saturating_sub(since))) };
    }
    Ok(())
}

/// The series of a task's cgroup, or the "other" series once the cap of cgroups is reached.
#[inline(always)]
fn cgroup_series(pid: u32) -> u64 {
    let Some(cgroup) = (unsafe { SCHED_TASK_CGROUP.get(pid) }).copied() else {
        return OTHER_CGROUPS;
    };
    if unsafe { SCHED_CGROUPS.get(cgroup) }.is_some()
        || SCHED_CGROUPS.insert(cgroup, 1, BPF_NOEXIST as u64).is_ok()
    {
        return cgroup;
    }
    // Lost a race creating it, or the map is full.
    if unsafe { SCHED_CGROUPS.get(cgroup) }.is_some() {
        cgroup
    } else {
        OTHER_CGROUPS
    }
}
