//! Scheduler run-queue latency: series ids.

/// Series id of run-queue latency when it is not split by cgroup.
pub const ALL_TASKS: u64 = 0;
/// Series id for tasks whose cgroup is beyond the configured cap of distinct cgroups.
pub const OTHER_CGROUPS: u64 = u64::MAX;

/// `prev_state` of `sched:sched_switch` holds the task state in its low byte (TASK_REPORT bits)
/// and a preemption flag above it; the task stays runnable iff the low byte is zero.
pub const TASK_REPORT_MASK: u64 = 0xff;

/// The reportable sleep states of a raw task state (`TASK_REPORT`: interruptible,
/// uninterruptible, stopped, traced, dead, zombie, parked): a task switched out in none of them
/// is still runnable.
pub const TASK_REPORT: u64 = 0x7f;

/// `TASK_DEAD`: the raw state of a task's last switch-out, as it exits. Not in `TASK_REPORT`
/// (the tracepoint reports the exit state instead), and not runnable: marking it so would leave
/// a run-queue stamp behind for every process that exits.
pub const TASK_DEAD: u64 = 0x80;
