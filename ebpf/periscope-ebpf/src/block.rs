//! Block IO latency and size, from `block_rq_issue` to `block_rq_complete`, in two variants
//! user space chooses between at run time:
//!
//! - raw tracepoints (preferred): issue reads the `struct request` it is handed (fields at
//!   offsets from the kernel's BTF) and remembers (time, bytes, op, device) keyed by the request
//!   pointer; completion only looks that pointer up, reading nothing.
//! - tracepoints: issue remembers (time, bytes, op) keyed by (device, sector) from the record
//!   (offsets from the tracefs format files); completion reads (device, sector) back.
//!
//! Both record the latency and the size in the same per-CPU histograms keyed by (device, op).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use periscope_common::{
    block::{
        BlockHists, BlockRequest, BlockRqStart, BlockStart, RECORD_WINDOW, mkdev,
        op_from_cmd_flags, op_from_rwbs,
    },
    counters,
    hist::ns_to_units,
};

use crate::shared::{bytes_at, count, global, preallocated_hists, series};

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
#[unsafe(no_mangle)]
static BLOCK_COMPLETE_RWBS: u32 = 26;

// Raw tracepoints: where the fields of `struct request` are (one window read at *_BASE), and
// `request_queue.disk` and `gendisk.major` (with `first_minor` right after it), from BTF.
#[unsafe(no_mangle)]
static BLOCK_RQ_BASE: u32 = 0;
#[unsafe(no_mangle)]
static BLOCK_RQ_Q: u32 = 0;
#[unsafe(no_mangle)]
static BLOCK_RQ_CMD_FLAGS: u32 = 24;
#[unsafe(no_mangle)]
static BLOCK_RQ_DATA_LEN: u32 = 44;
#[unsafe(no_mangle)]
static BLOCK_QUEUE_DISK: u32 = 0;
#[unsafe(no_mangle)]
static BLOCK_DISK_MAJOR: u32 = 0;

/// Raw-tracepoint requests in flight, keyed by their `struct request` address.
#[map]
static BLOCK_INFLIGHT_RQ: HashMap<u64, BlockRqStart> = HashMap::with_max_entries(16384, 0);

/// Requests issued and not yet completed. A plain hash (an LRU insert costs about twice as
/// much); entries whose completion was lost are swept by user space (`probes::sweep`).
#[map]
static BLOCK_INFLIGHT: HashMap<BlockRequest, BlockStart> = HashMap::with_max_entries(16384, 0);

/// Latency and size histograms per (device, op) series. Values are allocated when a series
/// first appears, not preallocated, since each is ~10 KiB per CPU.
#[map]
static BLOCK_HISTS: PerCpuHashMap<u64, BlockHists> =
    PerCpuHashMap::with_max_entries(256, BPF_F_NO_PREALLOC);

/// [`BLOCK_HISTS`], preallocated, for kernels before 6.1 (`PREALLOCATED_HISTS`); user space
/// sizes the one not in use to 1 entry.
#[map]
static BLOCK_HISTS_PREALLOC: PerCpuHashMap<u64, BlockHists> = PerCpuHashMap::with_max_entries(1, 0);

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
        op: op_from_rwbs(rwbs),
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
    let (Some(dev), Some(sector), Some(rwbs)) = (
        bytes_at(&record, global(&BLOCK_COMPLETE_DEV)).map(u32::from_ne_bytes),
        bytes_at(&record, global(&BLOCK_COMPLETE_SECTOR)).map(u64::from_ne_bytes),
        bytes_at::<2>(&record, global(&BLOCK_COMPLETE_RWBS)),
    ) else {
        return Ok(());
    };
    let request = BlockRequest {
        dev,
        op: op_from_rwbs(rwbs),
        sector,
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { BLOCK_INFLIGHT.get(request) }).copied() else {
        count(counters::BLOCK_UNMATCHED);
        return Ok(());
    };
    let _ = BLOCK_INFLIGHT.remove(request);
    record_completion(
        dev,
        start.op,
        now.saturating_sub(start.issued_ns),
        start.bytes,
    );
    Ok(())
}

/// `raw_tp/block_rq_issue(struct request *rq)`.
#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn block_rq_issue_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_block_rq_issue_raw(&ctx);
    0
}

fn try_block_rq_issue_raw(ctx: &RawTracePointContext) -> Result<(), i64> {
    let rq: u64 = ctx.arg(0);
    // SAFETY: bpf_probe_read_kernel checks every address; offsets come from this kernel's BTF.
    let fields: [u8; RECORD_WINDOW] = unsafe {
        bpf_probe_read_kernel((rq + global(&BLOCK_RQ_BASE) as u64) as *const [u8; RECORD_WINDOW])
    }?;
    let (Some(queue), Some(cmd_flags), Some(bytes)) = (
        bytes_at(&fields, global(&BLOCK_RQ_Q)).map(u64::from_ne_bytes),
        bytes_at(&fields, global(&BLOCK_RQ_CMD_FLAGS)).map(u32::from_ne_bytes),
        bytes_at(&fields, global(&BLOCK_RQ_DATA_LEN)).map(u32::from_ne_bytes),
    ) else {
        return Ok(());
    };
    let disk: u64 =
        unsafe { bpf_probe_read_kernel((queue + global(&BLOCK_QUEUE_DISK) as u64) as *const u64) }?;
    // As the tracepoints report it: the whole disk's dev_t, 0 for a queue without a disk.
    let dev = if disk == 0 {
        0
    } else {
        let [major, first_minor]: [u32; 2] = unsafe {
            bpf_probe_read_kernel((disk + global(&BLOCK_DISK_MAJOR) as u64) as *const [u32; 2])
        }?;
        mkdev(major, first_minor)
    };
    let start = BlockRqStart {
        issued_ns: unsafe { bpf_ktime_get_ns() },
        bytes,
        op: op_from_cmd_flags(cmd_flags),
        dev,
        _pad: 0,
    };
    if BLOCK_INFLIGHT_RQ.insert(rq, start, BPF_ANY as u64).is_err() {
        count(counters::BLOCK_START_FULL);
    }
    Ok(())
}

/// `raw_tp/block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`.
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete_raw(ctx: RawTracePointContext) -> i32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let rq: u64 = ctx.arg(0);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { BLOCK_INFLIGHT_RQ.get(rq) }).copied() else {
        count(counters::BLOCK_UNMATCHED);
        return 0;
    };
    let _ = BLOCK_INFLIGHT_RQ.remove(rq);
    record_completion(
        start.dev,
        start.op,
        now.saturating_sub(start.issued_ns),
        start.bytes,
    );
    0
}

/// Adds one completed request to its (device, op) histograms.
#[inline(always)]
fn record_completion(dev: u32, op: u32, latency_ns: u64, bytes: u32) {
    let key = periscope_common::block::series(dev, op);
    let map = if preallocated_hists() {
        &BLOCK_HISTS_PREALLOC
    } else {
        &BLOCK_HISTS
    };
    if let Some(hists) = series(map, &key, &BLOCK_ZERO, counters::BLOCK_HIST_FULL) {
        // SAFETY: this CPU's value of a per-CPU map; programs do not migrate while running.
        let hists = unsafe { &mut *hists };
        hists.latency.record(ns_to_units(latency_ns));
        hists.size.record(bytes as u64);
    }
}
