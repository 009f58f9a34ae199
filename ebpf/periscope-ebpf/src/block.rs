//! Block IO latency and size, from `block:block_rq_issue` to `block:block_rq_complete`.
//!
//! Issue remembers (time, bytes, op) per in-flight request keyed by (device, sector); completion
//! looks it up and records the latency and the size in per-CPU histograms keyed by (device, op).
//! Tracepoint field offsets come from the tracefs format files via load-time globals.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use periscope_common::{
    block::{BlockHists, BlockRequest, BlockStart, RECORD_WINDOW, op_from_rwbs},
    counters,
    hist::ns_to_units,
};

use crate::shared::{bytes_at, count, global, series};

// Where the fields are, set by user space from the format files: each program reads one
// RECORD_WINDOW-byte window of its record starting at *_BASE (one helper call instead of one
// per field), and the fields sit at the given offsets inside that window.
#[unsafe(no_mangle)]
static BLOCK_ISSUE_BASE: u32 = 8;
#[unsafe(no_mangle)]
static BLOCK_ISSUE_DEV: u32 = 0;
#[unsafe(no_mangle)]
static BLOCK_ISSUE_SECTOR: u32 = 8;
#[unsafe(no_mangle)]
static BLOCK_ISSUE_BYTES: u32 = 20;
#[unsafe(no_mangle)]
static BLOCK_ISSUE_RWBS: u32 = 26;
#[unsafe(no_mangle)]
static BLOCK_COMPLETE_BASE: u32 = 8;
#[unsafe(no_mangle)]
static BLOCK_COMPLETE_DEV: u32 = 0;
#[unsafe(no_mangle)]
static BLOCK_COMPLETE_SECTOR: u32 = 8;

/// Requests issued and not yet completed. A plain hash (an LRU insert costs about twice as
/// much); entries whose completion was lost are swept by user space (`probes::sweep`).
#[map]
static BLOCK_INFLIGHT: HashMap<BlockRequest, BlockStart> = HashMap::with_max_entries(16384, 0);

/// Latency and size histograms per (device, op) series. Values are allocated when a series
/// first appears, not preallocated, since each is ~10 KiB per CPU.
#[map]
static BLOCK_HISTS: PerCpuHashMap<u64, BlockHists> =
    PerCpuHashMap::with_max_entries(256, BPF_F_NO_PREALLOC);

/// The all-zero value new series start from.
#[map]
static BLOCK_ZERO: PerCpuArray<BlockHists> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    let _ = try_block_rq_issue(&ctx);
    0
}

fn try_block_rq_issue(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets come from this kernel's format file for this tracepoint.
    let record: [u8; RECORD_WINDOW] = unsafe { ctx.read_at(global(&BLOCK_ISSUE_BASE) as usize)? };
    let (Some(dev), Some(sector), Some(bytes), Some(rwbs)) = (
        bytes_at(&record, global(&BLOCK_ISSUE_DEV)).map(u32::from_ne_bytes),
        bytes_at(&record, global(&BLOCK_ISSUE_SECTOR)).map(u64::from_ne_bytes),
        bytes_at(&record, global(&BLOCK_ISSUE_BYTES)).map(u32::from_ne_bytes),
        bytes_at::<2>(&record, global(&BLOCK_ISSUE_RWBS)),
    ) else {
        return Ok(());
    };
    let request = BlockRequest {
        dev,
        _pad: 0,
        sector,
    };
    let start = BlockStart {
        issued_ns: unsafe { bpf_ktime_get_ns() },
        bytes,
        op: op_from_rwbs(rwbs),
    };
    if BLOCK_INFLIGHT
        .insert(request, start, BPF_ANY as u64)
        .is_err()
    {
        count(counters::BLOCK_START_FULL);
    }
    Ok(())
}

#[tracepoint]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    let _ = try_block_rq_complete(&ctx);
    0
}

fn try_block_rq_complete(ctx: &TracePointContext) -> Result<(), i32> {
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: offsets come from this kernel's format file for this tracepoint.
    let record: [u8; RECORD_WINDOW] =
        unsafe { ctx.read_at(global(&BLOCK_COMPLETE_BASE) as usize)? };
    let (Some(dev), Some(sector)) = (
        bytes_at(&record, global(&BLOCK_COMPLETE_DEV)).map(u32::from_ne_bytes),
        bytes_at(&record, global(&BLOCK_COMPLETE_SECTOR)).map(u64::from_ne_bytes),
    ) else {
        return Ok(());
    };
    let request = BlockRequest {
        dev,
        _pad: 0,
        sector,
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { BLOCK_INFLIGHT.get(request) }).copied() else {
        count(counters::BLOCK_UNMATCHED);
        return Ok(());
    };
    let _ = BLOCK_INFLIGHT.remove(request);
    let key = periscope_common::block::series(dev, start.op);
    if let Some(hists) = series(&BLOCK_HISTS, &key, &BLOCK_ZERO, counters::BLOCK_HIST_FULL) {
        // SAFETY: this CPU's value of a per-CPU map; programs do not migrate while running.
        let hists = unsafe { &mut *hists };
        hists
            .latency
            .record(ns_to_units(now.saturating_sub(start.issued_ns)));
        hists.size.record(start.bytes as u64);
    }
    Ok(())
}
