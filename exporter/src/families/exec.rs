//! Process executions per command name: the user-space half of `ebpf/periscope-ebpf/src/exec.rs`
//! (tracepoint `sched:sched_process_exec`). Attached only by `periscope triage` (the daemon
//! does not export it), after [`Probes::start`], from the same loaded object.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use periscope_common::exec::{COMM_LEN, TOTAL};

use super::{
    LoadSettings, Mechanism, ProbeError, ProbeStatus, Probes, start_family, tracepoint_plan,
};
use crate::kernel::{mechanism::MechanismChoice, tracefs::Tracefs};

const FAMILY: &str = "exec";
const IMPLEMENTED: &[Mechanism] = &[Mechanism::Tracepoint];
const PROGRAMS: &[(&str, &str, &str)] = &[("sched_process_exec", "sched", "sched_process_exec")];

/// The exec counters in the kernel.
pub struct Exec {
    counts: PerCpuHashMap<MapData, [u8; COMM_LEN], u64>,
    total: PerCpuArray<MapData, u64>,
}

/// Cumulative execs since the program was attached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecCounts {
    pub total: u64,
    pub by_comm: BTreeMap<String, u64>,
}

impl Probes {
    /// Attaches the exec counter (`sched:sched_process_exec`) and records its status with the
    /// others. `None` (with the reason in the status) when it cannot attach.
    pub fn start_exec(&mut self, tracefs: Option<&Tracefs>) -> (Option<Exec>, ProbeStatus) {
        let plan = tracepoint_plan(
            FAMILY,
            IMPLEMENTED,
            MechanismChoice::Auto,
            &self.kernel,
            tracefs,
            LoadSettings::default(),
            |tracefs| {
                // Checks the tracepoint exists on this kernel (its fields are not read).
                tracefs.format("sched", "sched_process_exec")?;
                Ok(Vec::new())
            },
        );
        let (exec, status) = start_family(&mut self.ebpf, FAMILY, plan, PROGRAMS, |ebpf| {
            let counts = ebpf
                .take_map("EXEC_COUNTS")
                .ok_or_else(|| ProbeError::missing_map("EXEC_COUNTS"))?;
            let total = ebpf
                .take_map("EXEC_TOTAL")
                .ok_or_else(|| ProbeError::missing_map("EXEC_TOTAL"))?;
            Ok(Exec {
                counts: PerCpuHashMap::try_from(counts).map_err(|e| ProbeError::Map {
                    map: "EXEC_COUNTS",
                    reason: e.to_string(),
                })?,
                total: PerCpuArray::try_from(total).map_err(|e| ProbeError::Map {
                    map: "EXEC_TOTAL",
                    reason: e.to_string(),
                })?,
            })
        });
        self.statuses.push(status.clone());
        (exec, status)
    }
}

impl Exec {
    /// Reads the counts: O(distinct commands x CPUs).
    pub fn read(&self) -> ExecCounts {
        let total = self
            .total
            .get(&TOTAL, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        let mut by_comm = BTreeMap::new();
        for (comm, per_cpu) in self.counts.iter().filter_map(Result::ok) {
            let n: u64 = per_cpu.iter().sum();
            let end = comm.iter().position(|b| *b == 0).unwrap_or(COMM_LEN);
            let name = String::from_utf8_lossy(&comm[..end]).into_owned();
            *by_comm.entry(name).or_default() += n;
        }
        ExecCounts { total, by_comm }
    }
}
