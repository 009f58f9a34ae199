//! User-function latency: one uprobe program and one uretprobe program attached to every
//! configured function (`probes.uprobe.functions`), told apart by the attach cookie (the entry's
//! index), as bpftrace's `uprobe:/usr/local/bin/myapp:process_order { @start[tid] = nsecs; }`
//! plus its uretprobe, without writing BPF.
//!
//! Entry stamps the start per (entry, thread); return records the duration into the per-CPU
//! histogram of (entry, process). A recursive call overwrites its caller's stamp, so only the
//! innermost call of a recursion is timed (the outer returns find no stamp and are skipped).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use periscope_common::{
    Hist, counters,
    hist::ns_to_units,
    uprobe::{COMM_LEN, UprobeFilter, call_key, series_key},
};

use crate::shared::{count, series};

/// When each call in flight started, by (entry, thread). A plain hash (cheaper than an LRU);
/// stamps of calls that never return (a thread that exited inside the function, a longjmp) are
/// swept by user space. Its size is `probes.uprobe.max_in_flight`.
#[map]
static UPROBE_START: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// Function latency, in 2^-30 s units, per (entry, process). Its size is
/// `probes.uprobe.max_series`; series of exited processes are deleted by user space.
#[map]
static UPROBE_LATENCY: PerCpuHashMap<u64, Hist> =
    PerCpuHashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Per entry: the thread name its calls must come from (all zero: any). Sized to the entries.
#[map]
static UPROBE_FILTER: Array<UprobeFilter> = Array::with_max_entries(1, 0);

/// Name (comm) of each process with a series, written when its first series is created: user
/// space names a process that exited before it could read /proc with it. Sized like the series.
#[map]
static UPROBE_COMM: LruHashMap<u32, [u8; COMM_LEN]> = LruHashMap::with_max_entries(4096, 0);

/// The all-zero value new series start from.
#[map]
static UPROBE_ZERO: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// The configured entry this uprobe was attached for.
#[inline(always)]
fn entry_of<C: EbpfContext>(ctx: &C) -> u32 {
    // SAFETY: a helper taking the program's context; every attach sets a cookie.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) as u32 }
}

/// Whether the calling thread passes the entry's process-name filter.
#[inline(always)]
fn selected(entry: u32) -> bool {
    let Some(filter) = UPROBE_FILTER.get(entry) else {
        return false;
    };
    if filter.is_any() {
        return true;
    }
    bpf_get_current_comm().is_ok_and(|comm| same_name(&comm, &filter.comm))
}

/// Compares up to the filter's NUL: bytes after a comm's NUL are not guaranteed to be zero.
#[inline(always)]
fn same_name(comm: &[u8; COMM_LEN], name: &[u8; COMM_LEN]) -> bool {
    for i in 0..COMM_LEN {
        if comm[i] != name[i] {
            return false;
        }
        if name[i] == 0 {
            return true;
        }
    }
    true
}

#[uprobe]
pub fn uprobe_entry(ctx: ProbeContext) -> u32 {
    let entry = entry_of(&ctx);
    if !selected(entry) {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    if UPROBE_START
        .insert(call_key(entry, tid), now, BPF_ANY as u64)
        .is_err()
    {
        count(counters::UPROBE_START_FULL);
    }
    0
}

#[uretprobe]
pub fn uprobe_return(ctx: RetProbeContext) -> u32 {
    let entry = entry_of(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = call_key(entry, pid_tgid as u32);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { UPROBE_START.get(key) }).copied() else {
        return 0;
    };
    let _ = UPROBE_START.remove(key);
    let now = unsafe { bpf_ktime_get_ns() };
    let tgid = (pid_tgid >> 32) as u32;
    let series_id = series_key(entry, tgid);
    // Only the first call of a (function, process) pays for this.
    if UPROBE_LATENCY.get_ptr_mut(series_id).is_none()
        && let Ok(comm) = bpf_get_current_comm()
    {
        let _ = UPROBE_COMM.insert(tgid, comm, BPF_ANY as u64);
    }
    if let Some(hist) = series(
        &UPROBE_LATENCY,
        &series_id,
        &UPROBE_ZERO,
        counters::UPROBE_HIST_FULL,
    ) {
        // SAFETY: this CPU's value of a per-CPU map; programs do not migrate while running.
        unsafe { (*hist).record(ns_to_units(now.saturating_sub(start))) };
    }
    0
}
