//! Syscall latency and errors per process, as `syscount -L` measures them: `raw_syscalls:sys_enter`
//! stamps the thread, `raw_syscalls:sys_exit` records the time since then under (process,
//! syscall number) and counts a failing return by errno.
//!
//! Aggregation is sparse (see `periscope_common::syscall`): one per-CPU map entry per non-empty
//! bucket of each (process, syscall) series, so a series costs a few entries instead of a full
//! 642-slot histogram. With a process selection, user space keeps the selected processes in
//! `SYSCALL_SELECTED`, and any other process costs one map lookup per syscall entry and one
//! (empty) start-map lookup per exit.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::TracePointContext,
};
use periscope_common::{
    SKIP_TGIDS, counters,
    hist::{ns_to_units, slot_of},
    syscall::{SUM_SLOT, SyscallKey, errno_of},
};

use crate::shared::{count, global, skipped};

/// Offsets of `id` (the syscall number) in `sys_exit`, and of `ret`.
#[unsafe(no_mangle)]
static SYSCALL_EXIT_ID: u32 = 8;
#[unsafe(no_mangle)]
static SYSCALL_EXIT_RET: u32 = 16;
/// Periscope's own process and other Periscope processes: never measured (its scrapes would
/// measure themselves; see `shared::skipped`).
#[unsafe(no_mangle)]
static SYSCALL_SKIP_TGIDS: [u32; SKIP_TGIDS] = [0; SKIP_TGIDS];
/// 1 when only the processes in `SYSCALL_SELECTED` are measured.
#[unsafe(no_mangle)]
static SYSCALL_SELECTIVE: u32 = 0;

/// Selected processes (tgid), maintained by user space from /proc.
#[map]
static SYSCALL_SELECTED: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// When each thread inside a syscall entered it, by thread id. A plain hash: the exit removes
/// the entry; threads that never return (exit, exit_group, a non-leader execve) are swept by
/// user space once the thread is gone.
#[map]
static SYSCALL_START: HashMap<u32, u64> = HashMap::with_max_entries(32768, 0);

/// Calls per (process, syscall, bucket slot), and the latency sum per (process, syscall) under
/// `SUM_SLOT`, in 2^-30 s units. Size set by user space.
#[map]
static SYSCALL_LATENCY: PerCpuHashMap<SyscallKey, u64> =
    PerCpuHashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Failed calls per (process, syscall, errno).
#[map]
static SYSCALL_ERRORS: PerCpuHashMap<SyscallKey, u64> =
    PerCpuHashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);

/// Whether syscalls of process `tgid` are measured.
#[inline(always)]
fn measured(tgid: u32) -> bool {
    if skipped(&SYSCALL_SKIP_TGIDS, tgid) {
        return false;
    }
    global(&SYSCALL_SELECTIVE) == 0 || unsafe { SYSCALL_SELECTED.get(tgid) }.is_some()
}

#[tracepoint]
pub fn syscall_enter(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !measured((id >> 32) as u32) {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if SYSCALL_START
        .insert(id as u32, now, BPF_ANY as u64)
        .is_err()
    {
        count(counters::SYSCALL_START_FULL);
    }
    0
}

#[tracepoint]
pub fn syscall_exit(ctx: TracePointContext) -> u32 {
    let _ = try_syscall_exit(&ctx);
    0
}

fn try_syscall_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { SYSCALL_START.get(tid) }).copied() else {
        return Ok(());
    };
    let _ = SYSCALL_START.remove(tid);
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: offsets come from this kernel's format file for raw_syscalls:sys_exit.
    let (nr, ret) = unsafe {
        (
            ctx.read_at::<i64>(global(&SYSCALL_EXIT_ID) as usize)?,
            ctx.read_at::<i64>(global(&SYSCALL_EXIT_RET) as usize)?,
        )
    };
    // -1: not a syscall (the exit path of an interrupted or skipped one), as syscount skips it.
    if nr < 0 {
        return Ok(());
    }
    let units = ns_to_units(now.saturating_sub(start));
    let nr = nr as u64;
    let bucket = SyscallKey::new(tgid, nr, slot_of(units) as u16);
    add(&SYSCALL_LATENCY, &bucket, 1, counters::SYSCALL_LATENCY_FULL);
    let sum = SyscallKey::new(tgid, nr, SUM_SLOT);
    add(
        &SYSCALL_LATENCY,
        &sum,
        units,
        counters::SYSCALL_LATENCY_FULL,
    );
    if let Some(errno) = errno_of(ret) {
        let key = SyscallKey::new(tgid, nr, errno);
        add(&SYSCALL_ERRORS, &key, 1, counters::SYSCALL_ERRORS_FULL);
    }
    Ok(())
}

/// Adds `value` to this CPU's value of `key`, creating the entry when absent; counts
/// `full_counter` when the map is full.
#[inline(always)]
fn add(map: &PerCpuHashMap<SyscallKey, u64>, key: &SyscallKey, value: u64, full_counter: u32) {
    if let Some(slot) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a per-CPU map; programs do not migrate while running.
        unsafe { *slot += value };
        return;
    }
    // A new entry holds `value` on this CPU and zero on the others.
    if map.insert(key, value, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // EEXIST: an interrupting program created it first.
    match map.get_ptr_mut(key) {
        Some(slot) => unsafe { *slot += value },
        None => count(full_counter),
    }
}
