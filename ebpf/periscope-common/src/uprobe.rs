//! User-function latency (uprobes): the keys both sides agree on.
//!
//! A uprobe's cookie is the index of its entry in `probes.uprobe.functions`, so one loaded
//! program serves every configured function; kernel keys carry that index in their high half.

/// Key of a call in flight: the function entry and the calling thread.
#[inline(always)]
pub const fn call_key(entry: u32, tid: u32) -> u64 {
    ((entry as u64) << 32) | tid as u64
}

/// Key of a latency series: the function entry and the calling process (tgid).
#[inline(always)]
pub const fn series_key(entry: u32, tgid: u32) -> u64 {
    ((entry as u64) << 32) | tgid as u64
}

/// `(entry, tgid)` of a series key.
#[inline(always)]
pub const fn split_series_key(key: u64) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

/// Bytes of a process-name filter: the kernel's `TASK_COMM_LEN` (15 bytes and a NUL).
pub const COMM_LEN: usize = 16;

/// Per-entry filter, indexed by entry: a name to compare with the calling thread's comm (all
/// zero: any thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UprobeFilter {
    pub comm: [u8; COMM_LEN],
}

impl UprobeFilter {
    /// The filter for `name` (truncated to 15 bytes, as the kernel truncates comm).
    pub fn named(name: &str) -> Self {
        let mut comm = [0u8; COMM_LEN];
        let bytes = name.as_bytes();
        let n = bytes.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&bytes[..n]);
        Self { comm }
    }

    pub fn is_any(&self) -> bool {
        self.comm[0] == 0
    }
}
