//! Helpers every probe family uses: histogram recording and self-telemetry counters.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use periscope_common::{
    HistKey,
    hist::{SUM_SLOT, slot_of},
};

/// Self-telemetry counters, indexed by `periscope_common::counters`.
#[map]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(periscope_common::counters::COUNT, 0);

/// Adds one to a self-telemetry counter.
#[inline(always)]
pub fn count(counter: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot; BPF programs do not migrate while running.
        unsafe { *slot += 1 };
    }
}

/// Adds `by` to the per-CPU cell `key`, creating it when absent. Fails only when the map is full.
#[inline(always)]
fn bump(map: &PerCpuHashMap<HistKey, u64>, key: &HistKey, by: u64) -> Result<(), ()> {
    if let Some(cell) = map.get_ptr_mut(key) {
        // SAFETY: per-CPU cell of this CPU.
        unsafe { *cell += by };
        return Ok(());
    }
    if map.insert(key, by, BPF_NOEXIST as u64).is_ok() {
        return Ok(());
    }
    // Lost a race with an interrupting program that created the cell: add to it.
    match map.get_ptr_mut(key) {
        Some(cell) => {
            unsafe { *cell += by };
            Ok(())
        }
        None => Err(()),
    }
}

/// Records one `value` in `series` of a histogram map: its bucket count and the series' sum.
/// On a full map, increments the `full_counter` self-telemetry counter instead.
#[inline(always)]
pub fn record(map: &PerCpuHashMap<HistKey, u64>, series: u64, value: u64, full_counter: u32) {
    let bucket = HistKey::new(series, slot_of(value));
    if bump(map, &bucket, 1).is_err() || bump(map, &HistKey::new(series, SUM_SLOT), value).is_err()
    {
        count(full_counter);
    }
}

/// Reads a load-time constant set by user space with `EbpfLoader::set_global`. The volatile
/// read stops the compiler from folding the placeholder value into the code.
#[inline(always)]
pub fn global<T: Copy>(value: &T) -> T {
    // SAFETY: reading a static.
    unsafe { core::ptr::read_volatile(value) }
}
