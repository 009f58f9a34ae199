//! USDT probes (`probes.usdt`): one uprobe program attached at every configured probe address
//! of `.note.stapsdt`, told apart by the attach cookie (an index into `USDT_SPECS`), as
//! bpftrace's `usdt:/usr/bin/app:provider:name { @[pid] = count(); }` plus `hist(arg1)`.
//!
//! Per firing it adds one to the (entry, process) count and, for entries that histogram an
//! argument, reads that argument where the note's spec says (a register of `pt_regs`, a
//! constant, or user memory at a register plus a displacement) and records it. Latency entries
//! stamp the thread at their start probe and record the time to their done probe, as
//! `usdt:...:query__start { @s[tid] = nsecs; } usdt:...:query__done { ... }`.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
};
use periscope_common::{
    Hist, counters,
    hist::ns_to_units,
    usdt::{UsdtArg, UsdtSpec, arg_kind, mode, narrow, series_key, stamp_key},
};

use crate::shared::{count, series};

/// Per attached address (indexed by its cookie): its entry, what to record, its argument.
#[map]
static USDT_SPECS: Array<UsdtSpec> = Array::with_max_entries(1, 0);

/// Firings per (entry, process). Its size is `probes.usdt.max_series`.
#[map]
static USDT_COUNTS: PerCpuHashMap<u64, u64> =
    PerCpuHashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Argument values per (entry, process), for entries with `arg`. Sized like the counts.
#[map]
static USDT_ARGS: PerCpuHashMap<u64, Hist> =
    PerCpuHashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Start stamps of latency entries, by (entry, thread). An LRU: a start whose done never comes
/// (a thread that exited between them) is evicted rather than filling the map.
#[map]
static USDT_START: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Start-to-done latency, in 2^-30 s units, per (entry, process). Sized like the counts.
#[map]
static USDT_LATENCY: PerCpuHashMap<u64, Hist> =
    PerCpuHashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// The all-zero value new series start from.
#[map]
static USDT_ZERO: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// The argument's value as the spec says, narrowed to its width (sign-extended when signed).
#[inline(always)]
fn read_arg(ctx: &ProbeContext, arg: &UsdtArg) -> Option<u64> {
    let raw = match arg.kind {
        arg_kind::CONST => arg.value as u64,
        arg_kind::REG | arg_kind::MEM => {
            // SAFETY: bpf_probe_read_kernel checks the address; the register index is bounded.
            let slot = (ctx.regs as *const u64).wrapping_add((arg.reg as usize) & 31);
            let reg = unsafe { bpf_probe_read_kernel(slot) }.ok()?;
            if arg.kind == arg_kind::REG {
                reg
            } else {
                let at = reg.wrapping_add(arg.value as u64);
                // SAFETY: bpf_probe_read_user checks the address; read only the spec's width.
                unsafe {
                    match arg.size {
                        1 => bpf_probe_read_user(at as *const u8).ok()? as u64,
                        2 => bpf_probe_read_user(at as *const u16).ok()? as u64,
                        4 => bpf_probe_read_user(at as *const u32).ok()? as u64,
                        _ => bpf_probe_read_user(at as *const u64).ok()?,
                    }
                }
            }
        }
        _ => return None,
    };
    Some(narrow(raw, arg.size, arg.signed != 0))
}

#[uprobe]
pub fn usdt_probe(ctx: ProbeContext) -> u32 {
    // SAFETY: a helper taking the program's context; every attach sets a cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(spec) = USDT_SPECS.get(cookie) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let key = series_key(spec.entry, tgid);
    if spec.mode == mode::DONE {
        done(spec.entry, pid_tgid as u32, key);
        return 0;
    }
    if spec.mode == mode::START {
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = USDT_START.insert(stamp_key(spec.entry, pid_tgid as u32), now, 0);
    }
    match USDT_COUNTS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a per-CPU map; programs do not migrate while running.
        Some(n) => unsafe { *n += 1 },
        None => {
            if USDT_COUNTS.insert(key, 1, 0).is_err() {
                count(counters::USDT_COUNT_FULL);
            }
        }
    }
    if spec.mode == mode::ARG
        && let Some(value) = read_arg(&ctx, &spec.arg)
        && let Some(hist) = series(&USDT_ARGS, &key, &USDT_ZERO, counters::USDT_HIST_FULL)
    {
        // Negative values of signed arguments count as 0: the histogram holds magnitudes.
        let value = if spec.arg.signed != 0 && (value as i64) < 0 {
            0
        } else {
            value
        };
        // SAFETY: this CPU's value of a per-CPU map.
        unsafe { (*hist).record(value) };
    }
    0
}

/// The done probe of a latency entry: the time since the thread's start stamp, if any.
#[inline(always)]
fn done(entry: u32, tid: u32, key: u64) {
    let stamp = stamp_key(entry, tid);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { USDT_START.get(stamp) }).copied() else {
        return;
    };
    let _ = USDT_START.remove(stamp);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(hist) = series(&USDT_LATENCY, &key, &USDT_ZERO, counters::USDT_LATENCY_FULL) {
        // SAFETY: this CPU's value of a per-CPU map.
        unsafe { (*hist).record(ns_to_units(now.saturating_sub(start))) };
    }
}
