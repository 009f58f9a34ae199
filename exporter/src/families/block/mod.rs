//! Block IO latency and request size per device and operation: the user-space half of
//! `ebpf/periscope-ebpf/src/block.rs` (`block_rq_issue` and `block_rq_complete`, as raw
//! tracepoints where the kernel has them and BTF says where the fields of `struct request` are,
//! else as tracepoints), exported as `kernel.block.io.duration` and `kernel.block.io.size`.

pub mod config;

use crate::model::names;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
};
use periscope_common::block::{
    BlockHists, BlockRequest, BlockRqStart, BlockStart, RECORD_WINDOW, dev_major_minor, op_name,
    split_series,
};

pub use self::config::BlockConfig;
use super::{
    Family, KernelSupport, LoadSettings, Plan, ProbeError, ProbeStatus, Registration, Started,
    raw_or_tracepoint_plan, start_raw_or_tracepoints, sweep_stale, take_hash_map,
    take_histogram_map,
};
use crate::{
    kernel::tracefs::Tracefs,
    model::histogram::{Histogram, ValueUnit, read_series},
    model::metrics::{Attributes, Metric},
};

const FAMILY: &str = "block";
const PROGRAMS: &[(&str, &str, &str)] = &[
    ("block_rq_issue", "block", "block_rq_issue"),
    ("block_rq_complete", "block", "block_rq_complete"),
];
const RAW_PROGRAMS: &[(&str, &str)] = &[
    ("block_rq_issue_raw", "block_rq_issue"),
    ("block_rq_complete_raw", "block_rq_complete"),
];

/// Series (device, op) in the kernel; on kernels before 6.1, where the map is preallocated
/// (10 KiB per series per CPU), a quarter of that: 16 devices.
const SERIES: u32 = 256;
const SERIES_PREALLOCATED: u32 = 64;

pub fn plan(config: &BlockConfig, kernel: &KernelSupport, tracefs: Option<&Tracefs>) -> Plan {
    let mut settings = LoadSettings::default();
    let series = if super::needs_preallocated_maps() {
        SERIES_PREALLOCATED
    } else {
        SERIES
    };
    super::histogram_map(&mut settings, "BLOCK_HISTS", "BLOCK_HISTS_PREALLOC", series);
    if !config.enabled {
        return Plan::disabled(settings);
    }
    raw_or_tracepoint_plan(
        FAMILY,
        config.mechanism,
        kernel,
        tracefs,
        settings,
        || raw_tracepoint_offsets(kernel),
        tracepoint_offsets,
    )
}

/// Where the raw tracepoint programs find what they read, from this kernel's BTF:
/// `struct request`'s `q`, `cmd_flags` and `__data_len` (one window), `request_queue.disk`, and
/// `gendisk.major` (followed by `first_minor`, read together).
fn raw_tracepoint_offsets(kernel: &KernelSupport) -> Result<Vec<(&'static str, u32)>, String> {
    let btf = kernel.btf()?;
    let major = btf.offset("gendisk", "major")?;
    if btf.offset("gendisk", "first_minor")? != major + 4 {
        return Err("gendisk.first_minor does not follow gendisk.major".into());
    }
    let mut globals = window_globals(
        "struct request",
        "BLOCK_RQ_BASE",
        &[
            ("BLOCK_RQ_Q", btf.offset("request", "q")?, 8),
            ("BLOCK_RQ_CMD_FLAGS", btf.offset("request", "cmd_flags")?, 4),
            ("BLOCK_RQ_DATA_LEN", btf.offset("request", "__data_len")?, 4),
        ],
    )
    .map_err(|e| e.to_string())?;
    globals.push(("BLOCK_QUEUE_DISK", btf.offset("request_queue", "disk")?));
    globals.push(("BLOCK_DISK_MAJOR", major));
    Ok(globals)
}

/// Where the needed fields of this kernel's block tracepoints are, for the programs' globals:
/// the start of the window each program reads, and each field's offset inside it.
fn tracepoint_offsets(tracefs: &Tracefs) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let issue = tracefs.format("block", "block_rq_issue")?;
    let complete = tracefs.format("block", "block_rq_complete")?;
    let mut globals = window_globals(
        "block:block_rq_issue",
        "BLOCK_ISSUE_BASE",
        &[
            ("BLOCK_ISSUE_DEV", issue.offset("dev", 4)?, 4),
            ("BLOCK_ISSUE_SECTOR", issue.offset("sector", 8)?, 8),
            ("BLOCK_ISSUE_BYTES", issue.offset("bytes", 4)?, 4),
            ("BLOCK_ISSUE_RWBS", issue.offset("rwbs", 0)?, 2),
        ],
    )?;
    globals.extend(window_globals(
        "block:block_rq_complete",
        "BLOCK_COMPLETE_BASE",
        &[
            ("BLOCK_COMPLETE_DEV", complete.offset("dev", 4)?, 4),
            ("BLOCK_COMPLETE_SECTOR", complete.offset("sector", 8)?, 8),
            ("BLOCK_COMPLETE_RWBS", complete.offset("rwbs", 0)?, 2),
        ],
    )?);
    Ok(globals)
}

/// Globals for reading `fields` `(global, offset, size)` out of one window of
/// [`RECORD_WINDOW`] bytes: the base global, then each field's offset relative to it.
fn window_globals(
    tracepoint: &str,
    base_global: &'static str,
    fields: &[(&'static str, u32, u32)],
) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let base = fields.iter().map(|f| f.1).min().unwrap_or(0);
    let end = fields.iter().map(|f| f.1 + f.2).max().unwrap_or(0);
    if (end - base) as usize > RECORD_WINDOW {
        return Err(ProbeError::Mechanism(format!(
            "{tracepoint}: the fields Periscope needs span {} bytes, more than the {RECORD_WINDOW} it reads",
            end - base
        )));
    }
    let mut globals = vec![(base_global, base)];
    globals.extend(
        fields
            .iter()
            .map(|(name, offset, _)| (*name, offset - base)),
    );
    Ok(globals)
}

pub const REGISTRATION: Registration = Registration {
    name: FAMILY,
    plan: |config, kernel, tracefs| plan(&config.block, kernel, tracefs),
    start: |ebpf, plan, _| Started::from(start(ebpf, plan)),
};

pub struct Block {
    hists: PerCpuHashMap<MapData, u64, BlockHists>,
    inflight: aya::maps::HashMap<MapData, BlockRequest, BlockStart>,
    inflight_rq: aya::maps::HashMap<MapData, u64, BlockRqStart>,
}

/// The histogram map the programs use on this kernel.
fn hists_map() -> &'static str {
    if super::needs_preallocated_maps() {
        "BLOCK_HISTS_PREALLOC"
    } else {
        "BLOCK_HISTS"
    }
}

pub fn start(ebpf: &mut Ebpf, plan: Plan) -> (Option<Block>, ProbeStatus) {
    start_raw_or_tracepoints(
        ebpf,
        FAMILY,
        plan,
        &[(super::Mechanism::RawTracepoint, RAW_PROGRAMS)],
        PROGRAMS,
        |ebpf| {
            Ok(Block {
                hists: take_histogram_map(ebpf, hists_map())?,
                inflight: take_hash_map(ebpf, "BLOCK_INFLIGHT")?,
                inflight_rq: take_hash_map(ebpf, "BLOCK_INFLIGHT_RQ")?,
            })
        },
    )
}

impl Family for Block {
    /// Drops in-flight records whose completion never came (the unused mechanism's map is
    /// empty).
    fn sweep(&mut self) -> u64 {
        sweep_stale(&mut self.inflight, |start| start.issued_ns)
            + sweep_stale(&mut self.inflight_rq, |start| start.issued_ns)
    }

    fn collect(&mut self, out: &mut Vec<Metric>) {
        let series = match read_series(&self.hists, |per_cpu: &[BlockHists]| {
            (
                Histogram::from_kernel(per_cpu.iter().map(|h| &h.latency)),
                Histogram::from_kernel(per_cpu.iter().map(|h| &h.size)),
            )
        }) {
            Ok(series) => series,
            Err(e) => {
                tracing::warn!(probe = FAMILY, error = %e, "reading block histograms failed");
                return;
            }
        };
        let mut latency = Vec::with_capacity(series.len());
        let mut size = Vec::with_capacity(series.len());
        for (id, (l, s)) in series {
            let attributes = device_attributes(id);
            latency.push((attributes.clone(), l));
            size.push((attributes, s));
        }
        latency.sort_by(|a, b| a.0.cmp(&b.0));
        size.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(Metric::histogram(
            names::KERNEL_BLOCK_IO_DURATION,
            "Block IO latency from issue to the device until completion, per device and operation.",
            ValueUnit::Seconds,
            latency,
        ));
        out.push(Metric::histogram(
            names::KERNEL_BLOCK_IO_SIZE,
            "Block IO request size, per device and operation.",
            ValueUnit::Bytes,
            size,
        ));
    }
}

fn device_attributes(series: u64) -> Attributes {
    let (dev, op) = split_series(series);
    let (major, minor) = dev_major_minor(dev);
    vec![
        ("system.device", device_name(major, minor)),
        ("block.device.major_minor", format!("{major}:{minor}")),
        ("block.io.operation", op_name(op).to_string()),
    ]
}

/// `vda`, `loop3`, `nvme0n1p1`: the name sysfs gives the device, or `major:minor` when it is
/// gone (a loop device detached since).
pub fn device_name(major: u32, minor: u32) -> String {
    std::fs::read_link(format!("/sys/dev/block/{major}:{minor}"))
        .ok()
        .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_placed_in_one_window() {
        let globals =
            window_globals("t", "BASE", &[("A", 8, 4), ("B", 16, 8), ("C", 34, 2)]).unwrap();
        assert_eq!(globals, vec![("BASE", 8), ("A", 0), ("B", 8), ("C", 26)]);
    }

    #[test]
    fn fields_too_far_apart_are_refused() {
        let err = window_globals("block:x", "BASE", &[("A", 8, 4), ("B", 100, 8)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "block:x: the fields Periscope needs span 100 bytes, more than the 64 it reads"
        );
    }
}
