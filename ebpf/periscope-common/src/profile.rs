//! CPU and off-CPU profiles: the keys and values the `profile` programs aggregate into, per
//! process, user stack and kernel stack. Stack ids index the programs' stack-trace map; a
//! negative id is the helper's error (no user stack in a kernel thread, no kernel stack when
//! the sample hit user mode).

/// One aggregated stack: a process, its thread's name, and its two stack ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProfileKey {
    /// The process (thread group) id.
    pub tgid: u32,
    /// `bpf_get_stackid(.., BPF_F_USER_STACK)`, or the negative error.
    pub user_stack: i32,
    /// `bpf_get_stackid(.., 0)`, or the negative error.
    pub kernel_stack: i32,
    /// Explicit padding: hash keys are compared byte for byte.
    pub _pad: u32,
    /// The thread's name (`comm`), NUL-padded.
    pub comm: [u8; 16],
}

impl ProfileKey {
    pub const ZERO: Self = Self {
        tgid: 0,
        user_stack: -1,
        kernel_stack: -1,
        _pad: 0,
        comm: [0; 16],
    };
}

/// Time blocked off-CPU for one stack: the sum, and how many blocks it is the sum of.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuTime {
    pub total_ns: u64,
    pub count: u64,
}

/// A thread switched out while blocked: when, and the stacks it blocked in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffCpuStart {
    pub since_ns: u64,
    pub key: ProfileKey,
}

/// What `PROFILE_PROCESSES` tells user space about a process.
pub mod process_event {
    /// First sampled (or first blocked) since Periscope started or since its last exec: read
    /// its memory maps now, while it lives.
    pub const SEEN: u32 = 1;
    /// The program of a process announced as seen is gone (it exited, or exec'd another): the
    /// maps read are needed only until its stacks are named.
    pub const EXITED: u32 = 2;
}

/// One record of `PROFILE_PROCESSES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    pub tgid: u32,
    /// [`process_event::SEEN`] or [`process_event::EXITED`].
    pub kind: u32,
}

/// `prev_state` bits (`TASK_REPORT` order) of a task's last switch-out as it exits (dead,
/// zombie): no wakeup follows, so it is not a block.
pub const EXIT_STATES: u64 = 0x10 | 0x20;
