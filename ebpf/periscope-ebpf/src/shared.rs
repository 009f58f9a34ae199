//! Helpers every probe family uses: per-series histogram values and self-telemetry counters.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP},
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap},
};

/// Self-telemetry counters, indexed by `periscope_common::counters`.
#[map]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(periscope_common::counters::COUNT, 0);

/// 1 on kernels before 6.1, set by user space: their tracing programs must use preallocated
/// hash maps (allocating at run time, in a program on `sched_switch` or in an interrupt, can
/// deadlock there: 5.10 warns, and hung here under emulation), so the histogram maps have a
/// preallocated twin that the programs use instead.
#[unsafe(no_mangle)]
pub static PREALLOCATED_HISTS: u32 = 0;

/// Whether the preallocated twins of the histogram maps are the ones in use.
#[inline(always)]
pub fn preallocated_hists() -> bool {
    global(&PREALLOCATED_HISTS) != 0
}

/// Adds one to a self-telemetry counter.
#[inline(always)]
pub fn count(counter: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot; BPF programs do not migrate while running.
        unsafe { *slot += 1 };
    }
}

/// This CPU's value of `key` in a per-CPU histogram map, created from the all-zero `template`
/// (a map value too: histogram values are far larger than the 512-byte BPF stack) when absent.
/// `None` only when the map is full; `full_counter` then counts it.
#[inline(always)]
pub fn series<K, V>(
    map: &PerCpuHashMap<K, V>,
    key: &K,
    template: &PerCpuArray<V>,
    full_counter: u32,
) -> Option<*mut V> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(value);
    }
    let zero = template.get(0)?;
    // EEXIST (an interrupting program created it first) is fine: look it up again.
    let _ = map.insert(key, zero, BPF_NOEXIST as u64);
    let value = map.get_ptr_mut(key);
    if value.is_none() {
        count(full_counter);
    }
    value
}

/// The ring-buffer flags of a record: a forced wakeup when the family's reader is parked
/// (user space sets its `*_READER_PARKED` flag while records are few, and then sleeps until a
/// record wakes it), else `busy` (the family's batching choice).
#[inline(always)]
pub fn ring_flags(parked: &Array<u32>, busy: u64) -> u64 {
    match parked.get(0) {
        Some(flag) if *flag != 0 => BPF_RB_FORCE_WAKEUP as u64,
        _ => busy,
    }
}

/// Whether `tgid` is one of the processes a family must not measure (`*_SKIP_TGIDS`, set at load
/// time: Periscope itself first, then other Periscope processes, such as the daemon while
/// `periscope triage` runs beside it; unused slots are 0, which no process has).
#[inline(always)]
pub fn skipped(list: &[u32; periscope_common::SKIP_TGIDS], tgid: u32) -> bool {
    global(list).contains(&tgid)
}

/// Reads a load-time constant set by user space with `EbpfLoader::override_global`. The volatile
/// read stops the compiler from folding the placeholder value into the code.
#[inline(always)]
pub fn global<T: Copy>(value: &T) -> T {
    // SAFETY: reading a static.
    unsafe { core::ptr::read_volatile(value) }
}

/// `N` bytes at `offset` of a record window read with one `bpf_probe_read_kernel`; `None` when
/// they do not fit (user space checks that they do before loading).
#[inline(always)]
pub fn bytes_at<const N: usize>(window: &[u8], offset: u32) -> Option<[u8; N]> {
    let start = offset as usize;
    window.get(start..start.checked_add(N)?)?.try_into().ok()
}
