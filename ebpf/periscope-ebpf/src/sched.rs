//! Run-queue latency: the time a task waits runnable before it gets a CPU, as runqlat measures
//! it. `sched_wakeup`/`sched_wakeup_new` and a preempted `sched_switch` (prev task still
//! runnable) stamp the task; switching it in records the wait.
//!
//! Two variants, chosen by user space at run time: raw tracepoints (preferred; they get the
//! `task_struct`s and read `pid` at its BTF offset, and `sched_switch`'s `preempt` and
//! `prev_state` arguments) and tracepoints (fields from the format files).
//!
//! Optionally split by cgroup: the cgroup of a task is the one it last ran in (recorded when it
//! is switched out, or from its parent at fork), because a classic tracepoint cannot see the
//! cgroup of the task being switched in. Distinct cgroups are capped by a map's size; the rest
//! go to one "other" series.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_probe_read_kernel,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use periscope_common::{
    Hist, counters,
    hist::ns_to_units,
    sched::{ALL_TASKS, OTHER_CGROUPS, TASK_DEAD, TASK_REPORT, TASK_REPORT_MASK},
};

use crate::shared::{count, global, preallocated_hists, series};

#[unsafe(no_mangle)]
static SCHED_WAKEUP_PID: u32 = 24;
#[unsafe(no_mangle)]
static SCHED_SWITCH_PREV_PID: u32 = 24;
#[unsafe(no_mangle)]
static SCHED_SWITCH_PREV_STATE: u32 = 32;
#[unsafe(no_mangle)]
static SCHED_SWITCH_NEXT_PID: u32 = 56;
/// `task_struct.pid`, from BTF (raw tracepoints).
#[unsafe(no_mangle)]
static SCHED_TASK_PID: u32 = 0;
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

/// [`SCHED_RUNQ_LATENCY`], preallocated, for kernels before 6.1 (`PREALLOCATED_HISTS`); user
/// space sizes the one not in use to 1 entry.
#[map]
static SCHED_RUNQ_LATENCY_PREALLOC: PerCpuHashMap<u64, Hist> =
    PerCpuHashMap::with_max_entries(1, 0);

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
        on_new_task(pid);
    }
    0
}

#[inline(always)]
fn on_new_task(pid: u32) {
    if global(&SCHED_BY_CGROUP) != 0 {
        // A new task starts in its parent's cgroup, and the parent is running now.
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        let _ = SCHED_TASK_CGROUP.insert(pid, cgroup, BPF_ANY as u64);
    }
    mark_runnable(pid);
}

/// The pid of a `task_struct` (the thread id), or 0 when it cannot be read.
#[inline(always)]
fn task_pid(task: u64) -> u32 {
    // SAFETY: bpf_probe_read_kernel checks the address; the offset comes from this kernel's BTF.
    unsafe { bpf_probe_read_kernel((task + global(&SCHED_TASK_PID) as u64) as *const u32) }
        .unwrap_or(0)
}

/// `raw_tp/sched_wakeup(struct task_struct *p)`.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    mark_runnable(task_pid(ctx.arg(0)));
    0
}

/// `raw_tp/sched_wakeup_new(struct task_struct *p)`.
#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new_raw(ctx: RawTracePointContext) -> i32 {
    let pid = task_pid(ctx.arg(0));
    if pid != 0 {
        on_new_task(pid);
    }
    0
}

/// `raw_tp/sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)` (the fourth argument exists since Linux 5.18; user space checks).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    // As the tracepoint reports it: preempted, or in no reportable sleep state (and not
    // exiting: the tracepoint reports a dying task by its exit state).
    let runnable = preempt & 0xff != 0 || prev_state & (TASK_REPORT | TASK_DEAD) == 0;
    switched(task_pid(ctx.arg(1)), runnable, task_pid(ctx.arg(2)));
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
    switched(prev_pid, prev_state & TASK_REPORT_MASK == 0, next_pid);
    Ok(())
}

/// A context switch from `prev_pid` (still runnable or not) to `next_pid`: stamps the one,
/// records the wait of the other.
#[inline(always)]
fn switched(prev_pid: u32, prev_runnable: bool, next_pid: u32) {
    let by_cgroup = global(&SCHED_BY_CGROUP) != 0;
    if by_cgroup && prev_pid != 0 {
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        let _ = SCHED_TASK_CGROUP.insert(prev_pid, cgroup, BPF_ANY as u64);
    }
    // Preempted but still runnable: it waits in the run queue from now on.
    if prev_runnable {
        mark_runnable(prev_pid);
    }
    if next_pid == 0 {
        return;
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(since) = (unsafe { SCHED_RUNNABLE_SINCE.get(next_pid) }).copied() else {
        return;
    };
    let _ = SCHED_RUNNABLE_SINCE.remove(next_pid);
    let now = unsafe { bpf_ktime_get_ns() };
    let key = if by_cgroup {
        cgroup_series(next_pid)
    } else {
        ALL_TASKS
    };
    let latency = if preallocated_hists() {
        &SCHED_RUNQ_LATENCY_PREALLOC
    } else {
        &SCHED_RUNQ_LATENCY
    };
    if let Some(hist) = series(latency, &key, &SCHED_ZERO, counters::SCHED_HIST_FULL) {
        // SAFETY: this CPU's value of a per-CPU map; programs do not migrate while running.
        unsafe { (*hist).record(ns_to_units(now.saturating_sub(since))) };
    }
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
