//! Process executions (`sched:sched_process_exec`), counted per command name: what `execsnoop`
//! lists one line at a time, kept as counts in the kernel (exec storms show as a high count).

/// Length of a task's `comm` (the key of the per-command counts), as the kernel keeps it.
pub const COMM_LEN: usize = 16;

/// Distinct command names counted at once (an LRU map: the least recently seen are evicted, so
/// the total, kept apart, is always exact).
pub const MAX_COMMS: u32 = 1024;

/// Index of the machine-wide exec count in `EXEC_TOTAL`.
pub const TOTAL: u32 = 0;
