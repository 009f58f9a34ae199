//! CPU and off-CPU profiles, aggregated in the kernel.
//!
//! On-CPU: `profile_cpu` runs on a perf event per CPU (the CPU clock at a frequency user space
//! chooses) and counts one sample per (process, thread name, user stack, kernel stack) in
//! `PROFILE_CPU_SAMPLES`; the stacks themselves live once each in `PROFILE_STACKS`. User space
//! reads O(distinct stacks), never O(samples).
//!
//! Off-CPU: on `sched_switch` the task switched out while blocked (not preempted: a preempted
//! task waits in the run queue, which the `sched` family measures) is stamped with the time and
//! its stacks at that moment (it is still the current task there, so its stacks are the ones
//! it blocked in); `sched_wakeup` ends the block, so run-queue wait is left out, and adds the
//! blocked time to `PROFILE_OFFCPU` under those stacks when it reaches the minimum. A thread
//! switched back in while still stamped was woken without `sched_wakeup` reaching the program
//! (it happens: see `PROFILE_WAKEUP_UNSEEN`); its block ends at the switch-in instead.
//!
//! Processes: the first time a process is sampled (or blocks), `PROFILE_PROCESSES` tells user
//! space, which reads its memory maps at once (and again at its second new stack on-CPU, or
//! second block off-CPU, when the loader is done): a process that exits within the second
//! before its stacks are read would leave no maps to name its user frames from. `PROFILE_SEEN`
//! keeps it to two records per process; an exec or exit of a process announced is told too (its
//! maps are new, or gone), so user space knows when the maps it read can go.
//!
//! Counts live in per-CPU maps: a program adds to its own CPU's value without a lock (this
//! target has no atomic read-modify-write), and user space sums the CPUs when it reads. Every
//! hash map is preallocated: a perf-event program runs in NMI context, where allocating is
//! refused.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, perf_event, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuHashMap, RingBuf, StackTrace},
    programs::{
        PerfEventContext, RawTracePointContext, TracePointContext, tracing::StackIdContext,
    },
};
use periscope_common::{
    SKIP_TGIDS, counters,
    profile::{EXIT_STATES, OffCpuStart, OffCpuTime, ProcessEvent, ProfileKey, process_event},
    sched::TASK_REPORT_MASK,
};

use crate::shared::{count, global, skipped};

/// Periscope itself and other Periscope processes: never profiled.
#[unsafe(no_mangle)]
static PROFILE_SKIP_TGIDS: [u32; SKIP_TGIDS] = [0; SKIP_TGIDS];
/// The one process to profile (`--pid`), or 0 for every process.
#[unsafe(no_mangle)]
static PROFILE_TGID: u32 = 0;
/// Blocks shorter than this many microseconds are not counted off-CPU.
#[unsafe(no_mangle)]
static PROFILE_OFFCPU_MIN_US: u32 = 1;
/// `sched_switch.prev_state` and `sched_wakeup.pid`, from this kernel's format files.
#[unsafe(no_mangle)]
static PROFILE_SWITCH_PREV_STATE: u32 = 32;
#[unsafe(no_mangle)]
static PROFILE_WAKEUP_PID: u32 = 24;
/// `sched_switch.next_pid`, from this kernel's format file.
#[unsafe(no_mangle)]
static PROFILE_SWITCH_NEXT_PID: u32 = 56;

/// Every stack seen, by id. User space sizes it (and to 1 entry when profiling is off).
#[map]
static PROFILE_STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// On-CPU samples per (process, stacks).
#[map]
static PROFILE_CPU_SAMPLES: PerCpuHashMap<ProfileKey, u64> =
    PerCpuHashMap::with_max_entries(16384, 0);

/// Blocked time per (process, stacks at switch-out).
#[map]
static PROFILE_OFFCPU: PerCpuHashMap<ProfileKey, OffCpuTime> =
    PerCpuHashMap::with_max_entries(16384, 0);

/// Threads blocked right now, by thread id.
#[map]
static PROFILE_OFFCPU_START: HashMap<u32, OffCpuStart> = HashMap::with_max_entries(32768, 0);

/// Processes announced in `PROFILE_PROCESSES` and not exited or exec'd since, and how many
/// times they were. LRU: a process
/// evicted is announced again when next sampled, which costs user space one more read of its
/// maps, nothing else.
#[map]
static PROFILE_SEEN: LruHashMap<u32, u32> = LruHashMap::with_max_entries(8192, 0);
/// How many times a process is announced (see [`announce`]).
const ANNOUNCEMENTS: u32 = 2;

/// Process events ([`ProcessEvent`]) for user space. User space sizes it.
#[map]
static PROFILE_PROCESSES: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Whether the current process is one to profile.
#[inline(always)]
fn selected(tgid: u32) -> bool {
    let only = global(&PROFILE_TGID);
    !skipped(&PROFILE_SKIP_TGIDS, tgid) && (only == 0 || only == tgid)
}

/// A stack id, or the helper's error. -EEXIST (bucket taken by another stack) and -ENOMEM
/// (map full) mean a stack was lost and are counted; -EFAULT (no stack of that kind here, such
/// as the kernel stack of a sample taken in user mode) is normal.
#[inline(always)]
fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> i32 {
    match ctx.get_stackid(&PROFILE_STACKS, flags) {
        Ok(id) => id as i32,
        Err(e) => {
            if e == -17 || e == -12 {
                count(counters::PROFILE_STACK_LOST);
            }
            e
        }
    }
}

/// The key of the current task's stacks.
#[inline(always)]
fn current_key<C: StackIdContext>(ctx: &C, tgid: u32) -> ProfileKey {
    key_of(
        tgid,
        stack_id(ctx, BPF_F_USER_STACK as u64),
        stack_id(ctx, 0),
    )
}

#[inline(always)]
fn key_of(tgid: u32, user_stack: i32, kernel_stack: i32) -> ProfileKey {
    ProfileKey {
        tgid,
        user_stack,
        kernel_stack,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// What `bpf_get_stackid` answers for the kernel stack of a sample taken in user mode (there
/// is none): -EFAULT.
const NO_KERNEL_STACK: i32 = -14;

/// Whether the perf event's sample interrupted user mode: the privilege level of the
/// interrupted code segment (x86_64 `user_mode()`: `cs & 3 == 3`). Its kernel stack is then
/// empty, and asking the helper for it costs about as much as a user stack here.
#[inline(always)]
fn sampled_in_user_mode(ctx: &PerfEventContext) -> bool {
    // SAFETY: a read of the context's `regs.cs`, which the verifier turns into a read of the
    // interrupted registers.
    let cs = unsafe { core::ptr::read_volatile(&(*ctx.ctx).regs.cs) };
    cs & 3 == 3
}

/// Where [`add`] put the value.
#[derive(PartialEq, Eq)]
enum Added {
    /// To a key already there.
    Existing,
    /// To a key this call created.
    New,
    /// Nowhere: the map is full.
    Full,
}

/// Adds to this CPU's value of `key`, creating it from `zero` first.
#[inline(always)]
fn add<V>(
    map: &PerCpuHashMap<ProfileKey, V>,
    key: &ProfileKey,
    zero: &V,
    add: impl Fn(*mut V),
) -> Added {
    if let Some(value) = map.get_ptr_mut(key) {
        add(value);
        return Added::Existing;
    }
    // EEXIST (a program interrupting this one created it first) is fine: look it up again.
    let created = map.insert(key, zero, BPF_NOEXIST as u64).is_ok();
    match map.get_ptr_mut(key) {
        Some(value) => {
            add(value);
            if created { Added::New } else { Added::Existing }
        }
        None => Added::Full,
    }
}

/// Tells user space about `tgid` at its first two new stacks on-CPU (or blocks off-CPU): the
/// first often comes right after an exec, while the loader is still mapping the libraries, so
/// the maps are read once more at the next.
#[inline(always)]
fn announce(tgid: u32) {
    match PROFILE_SEEN.get_ptr_mut(tgid) {
        // SAFETY: the entry's value; a race with another CPU costs one more read, no more.
        Some(times) => unsafe {
            if *times >= ANNOUNCEMENTS {
                return;
            }
            *times += 1;
        },
        None => {
            // EEXIST: a program on another CPU announced it first.
            if PROFILE_SEEN.insert(tgid, 1, BPF_NOEXIST as u64).is_err() {
                return;
            }
        }
    }
    let event = ProcessEvent {
        tgid,
        kind: process_event::SEEN,
    };
    if PROFILE_PROCESSES.output::<ProcessEvent>(&event, 0).is_err() {
        count(counters::PROFILE_PROCESS_LOST);
        // Not announced after all: the next sample tries again.
        let _ = PROFILE_SEEN.remove(tgid);
    }
}

/// Tells user space that the program of an announced process `tgid` is gone (the process
/// exited, or exec'd another program), and announces it again when next sampled.
#[inline(always)]
fn forget(tgid: u32) {
    if PROFILE_SEEN.remove(tgid).is_err() {
        return;
    }
    let event = ProcessEvent {
        tgid,
        kind: process_event::EXITED,
    };
    if PROFILE_PROCESSES.output::<ProcessEvent>(&event, 0).is_err() {
        count(counters::PROFILE_PROCESS_LOST);
    }
}

/// `raw_tp/sched_process_exec`: the process runs a new program, with new maps.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn profile_process_exec(ctx: RawTracePointContext) -> i32 {
    let _ = ctx.as_ptr();
    forget((bpf_get_current_pid_tgid() >> 32) as u32);
    0
}

/// `raw_tp/sched_process_exit`, in the exiting thread: the thread-group leader leaving is the
/// process gone.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn profile_process_exit(ctx: RawTracePointContext) -> i32 {
    let _ = ctx.as_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tgid == tid {
        forget(tgid);
    }
    0
}

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // tid 0 is the idle task: a CPU doing nothing is not a stack to show.
    if tid == 0 || !selected(tgid) {
        return 0;
    }
    let kernel_stack = if sampled_in_user_mode(&ctx) {
        NO_KERNEL_STACK
    } else {
        stack_id(&ctx, 0)
    };
    let key = key_of(tgid, stack_id(&ctx, BPF_F_USER_STACK as u64), kernel_stack);
    // SAFETY: this CPU's value of a per-CPU map; programs do not migrate while running.
    match add(&PROFILE_CPU_SAMPLES, &key, &0, |n| unsafe { *n += 1 }) {
        Added::Existing => {}
        // A process's first sample is always a new key, and so is a sample in code it mapped
        // since (a library the loader mapped after the first sample): announcing at new keys
        // only keeps the announcements' map lookup off nearly every sample.
        Added::New => announce(tgid),
        Added::Full => count(counters::PROFILE_SAMPLE_MAP_FULL),
    }
    0
}

/// `sched:sched_switch`: stamps the task switched out when it blocks, and ends the block of
/// the task switched in if its wakeup was not seen.
#[tracepoint]
pub fn profile_sched_switch(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this kernel's format file for sched_switch.
    if let Ok(next) = unsafe { ctx.read_at::<u32>(global(&PROFILE_SWITCH_NEXT_PID) as usize) }
        && end_block(next)
    {
        // The kernel woke it without running `profile_sched_wakeup`: seen about once in a few
        // hundred hrtimer wakeups here, by bpftrace on the same tracepoint too.
        count(counters::PROFILE_WAKEUP_UNSEEN);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tid == 0 || !selected(tgid) {
        return 0;
    }
    // SAFETY: the offset comes from this kernel's format file for sched_switch.
    let Ok(state) = (unsafe { ctx.read_at::<u64>(global(&PROFILE_SWITCH_PREV_STATE) as usize) })
    else {
        return 0;
    };
    // Still runnable (preempted): it waits for a CPU, it is not blocked. Exiting: nothing
    // wakes it again.
    if state & TASK_REPORT_MASK == 0 || state & EXIT_STATES != 0 {
        return 0;
    }
    announce(tgid);
    let start = OffCpuStart {
        since_ns: unsafe { bpf_ktime_get_ns() },
        key: current_key(&ctx, tgid),
    };
    if PROFILE_OFFCPU_START.insert(tid, start, 0).is_err() {
        count(counters::PROFILE_START_MAP_FULL);
    }
    0
}

/// `sched:sched_wakeup`: the blocked task becomes runnable; its block ends here.
#[tracepoint]
pub fn profile_sched_wakeup(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this kernel's format file for sched_wakeup.
    if let Ok(tid) = unsafe { ctx.read_at::<u32>(global(&PROFILE_WAKEUP_PID) as usize) } {
        end_block(tid);
    }
    0
}

/// Ends the block of thread `tid`, if it is blocked: adds its length to the stacks it blocked
/// in. `true` when it was; whoever removes the stamp counts the block, so it is counted once.
#[inline(always)]
fn end_block(tid: u32) -> bool {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { PROFILE_OFFCPU_START.get(tid) }).copied() else {
        return false;
    };
    if PROFILE_OFFCPU_START.remove(tid).is_err() {
        return false;
    }
    let blocked = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.since_ns);
    if blocked < u64::from(global(&PROFILE_OFFCPU_MIN_US)) * 1000 {
        return true;
    }
    let zero = OffCpuTime::default();
    let added = add(&PROFILE_OFFCPU, &start.key, &zero, |time| {
        // SAFETY: this CPU's value of a per-CPU map; programs do not migrate while running.
        unsafe {
            (*time).total_ns += blocked;
            (*time).count += 1;
        }
    });
    if added == Added::Full {
        count(counters::PROFILE_SAMPLE_MAP_FULL);
    }
    true
}
