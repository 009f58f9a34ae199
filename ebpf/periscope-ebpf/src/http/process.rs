//! Processes: an exit ends what the process had in flight; a fork without exec makes the child
//! its forker's service instance (`HTTP_FORKED`).

use super::current;
use super::record::send_exit;
use crate::shared::global;
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::LruHashMap,
    programs::{RawTracePointContext, TracePointContext},
};

/// Offset of `tgid` in `struct task_struct`, from BTF (0: unknown, forks are not followed).
#[unsafe(no_mangle)]
pub(super) static HTTP_TASK_TGID: u32 = 0;

/// Processes forked without exec since: child tgid -> the tgid that forked it (a copy of whose
/// program the child runs). User space reads it when it first meets a process, so that a
/// fork-per-connection server's children belong to the server's service instance. Deleted at
/// exec, not at exit (the children of such servers are often gone before their records are
/// read); LRU: the entries are read within seconds of the fork, or never.
#[map]
pub(super) static HTTP_FORKED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// `sched:sched_process_exit`: the thread-group leader leaving means the process is gone.
#[tracepoint]
pub fn http_process_exit(ctx: TracePointContext) -> u32 {
    let _ = ctx.as_ptr();
    process_exit();
    0
}

/// `raw_tp/sched_process_exit(struct task_struct *p)`: as [`http_process_exit`].
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn http_process_exit_raw(ctx: RawTracePointContext) -> i32 {
    let _ = ctx.as_ptr();
    process_exit();
    0
}

/// `raw_tp/sched_process_fork(struct task_struct *parent, struct task_struct *child)`, in the
/// forking task: a new process (not a thread: its tgid is its own) runs a copy of the forker.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn http_process_fork_raw(ctx: RawTracePointContext) -> i32 {
    let offset = global(&HTTP_TASK_TGID);
    if offset == 0 {
        return 0;
    }
    let child: u64 = ctx.arg(1);
    // SAFETY: bpf_probe_read_kernel checks the address; the offset comes from this kernel's BTF.
    let Ok(child_tgid) = (unsafe { bpf_probe_read_kernel((child + offset as u64) as *const u32) })
    else {
        return 0;
    };
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if child_tgid != parent_tgid {
        let _ = HTTP_FORKED.insert(child_tgid, parent_tgid, 0);
    }
    0
}

/// `raw_tp/sched_process_exec`: the process runs a program of its own now.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn http_process_exec_raw(ctx: RawTracePointContext) -> i32 {
    let _ = ctx.as_ptr();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = HTTP_FORKED.remove(tgid);
    0
}

#[inline(always)]
pub(super) fn process_exit() {
    let Some((tgid, tid)) = current() else {
        return;
    };
    if tgid != tid {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    send_exit(tgid, tid, now);
}
