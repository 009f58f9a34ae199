//! Process executions: `sched:sched_process_exec` fires once per successful `execve`, after the
//! new program's name is set, so the current `comm` is the command that just started. Counted
//! per command name in an LRU per-CPU map (an exec storm of one command is one hot entry) plus
//! one exact machine-wide total. Nothing is streamed.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_comm,
    macros::{map, tracepoint},
    maps::{LruPerCpuHashMap, PerCpuArray},
    programs::TracePointContext,
};
use periscope_common::exec::{COMM_LEN, MAX_COMMS, TOTAL};

/// Execs per command name (`comm`, NUL-padded).
#[map]
static EXEC_COUNTS: LruPerCpuHashMap<[u8; COMM_LEN], u64> =
    LruPerCpuHashMap::with_max_entries(MAX_COMMS, 0);

/// Every exec, whatever its command (exact even when the per-command map evicts).
#[map]
static EXEC_TOTAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    if let Some(total) = EXEC_TOTAL.get_ptr_mut(TOTAL) {
        // SAFETY: this CPU's slot; programs do not migrate while running.
        unsafe { *total += 1 };
    }
    let Ok(comm) = bpf_get_current_comm() else {
        return 0;
    };
    if EXEC_COUNTS.get_ptr_mut(comm).is_none() {
        // EEXIST (an interrupting program created it first) is fine: look it up again.
        let _ = EXEC_COUNTS.insert(comm, 0u64, BPF_NOEXIST as u64);
    }
    if let Some(count) = EXEC_COUNTS.get_ptr_mut(comm) {
        // SAFETY: this CPU's value of a per-CPU map.
        unsafe { *count += 1 };
    }
    0
}
