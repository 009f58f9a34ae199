//! Self-telemetry counters kept by the eBPF programs in one per-CPU array (`COUNTERS`).

/// A block completion whose issue was never seen (Periscope started mid-request, or the
/// in-flight map evicted it).
pub const BLOCK_UNMATCHED: u32 = 0;
/// A new (device, op) series could not be created: the histogram map is full.
pub const BLOCK_HIST_FULL: u32 = 1;
/// The in-flight block request map was full.
pub const BLOCK_START_FULL: u32 = 2;
/// A new run-queue series could not be created: the histogram map is full.
pub const SCHED_HIST_FULL: u32 = 3;
/// The run-queue start map was full.
pub const SCHED_START_FULL: u32 = 4;
/// An HTTP capture event was dropped: the ring buffer was full (user space fell behind).
pub const HTTP_EVENTS_LOST: u32 = 5;
/// The map of syscalls in flight on tracked connections was full.
pub const HTTP_PENDING_FULL: u32 = 6;
/// A TCP connection event was dropped: the ring buffer was full.
pub const TCP_EVENTS_LOST: u32 = 7;
/// A new (process, port, peer) retransmit/reset series could not be created: the map is full
/// (the event is counted in the overflow series instead).
pub const TCP_PEERS_FULL: u32 = 8;
/// A new (function, process) series could not be created: the uprobe histogram map is full.
pub const UPROBE_HIST_FULL: u32 = 9;
/// The map of user-function calls in flight was full.
pub const UPROBE_START_FULL: u32 = 10;
/// A (process, syscall, bucket) or sum entry could not be created: the latency map is full.
pub const SYSCALL_LATENCY_FULL: u32 = 11;
/// A (process, syscall, errno) entry could not be created: the error map is full.
pub const SYSCALL_ERRORS_FULL: u32 = 12;
/// The map of threads inside a syscall was full.
pub const SYSCALL_START_FULL: u32 = 13;
/// A stack could not be stored: the stack-trace map was full or its bucket held another
/// stack (the sample is kept without that stack).
pub const PROFILE_STACK_LOST: u32 = 14;
/// A (process, stacks) entry could not be created: the sample or off-CPU map is full.
pub const PROFILE_SAMPLE_MAP_FULL: u32 = 15;
/// The map of threads blocked off-CPU was full.
pub const PROFILE_START_MAP_FULL: u32 = 16;
/// A new (USDT probe, process) count could not be created: the count map is full.
pub const USDT_COUNT_FULL: u32 = 17;
/// A new (USDT probe, process) argument histogram could not be created: the map is full.
pub const USDT_HIST_FULL: u32 = 18;
/// A new (USDT pair, process) latency histogram could not be created: the map is full.
pub const USDT_LATENCY_FULL: u32 = 19;
/// A process event of the profile was dropped: the ring buffer was full (user space fell
/// behind), so that process's memory maps are read only when its stacks are named.
pub const PROFILE_PROCESS_LOST: u32 = 20;
/// Off-CPU: a blocked thread was switched back in without its wakeup having been seen (the
/// kernel did not run the wakeup program): its block ended there, run-queue wait included.
pub const PROFILE_WAKEUP_UNSEEN: u32 = 21;
/// Number of counters.
pub const COUNT: u32 = 22;

/// (probe, what) of each counter, as exported.
pub const NAMES: [(&str, &str); COUNT as usize] = [
    ("block", "unmatched_completion"),
    ("block", "histogram_map_full"),
    ("block", "inflight_map_full"),
    ("sched", "histogram_map_full"),
    ("sched", "start_map_full"),
    ("http", "events_lost"),
    ("http", "pending_map_full"),
    ("tcp", "events_lost"),
    ("tcp", "peer_map_full"),
    ("uprobe", "histogram_map_full"),
    ("uprobe", "start_map_full"),
    ("syscall", "latency_map_full"),
    ("syscall", "error_map_full"),
    ("syscall", "start_map_full"),
    ("profile", "stack_lost"),
    ("profile", "sample_map_full"),
    ("profile", "start_map_full"),
    ("usdt", "count_map_full"),
    ("usdt", "histogram_map_full"),
    ("usdt", "latency_map_full"),
    ("profile", "process_events_lost"),
    ("profile", "wakeup_unseen"),
];
