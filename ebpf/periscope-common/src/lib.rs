//! Types and arithmetic shared by the eBPF programs and the `periscope` user space.
//!
//! Everything here is `no_std` and `#[repr(C)]`: the kernel side writes these structs into BPF
//! maps and user space reads the same bytes back. The `user` feature adds `aya::Pod` impls.
//! The histogram bucket layout lives here too, so the function the kernel uses to pick a bucket
//! is the very function the property tests check.
#![no_std]

pub mod block;
pub mod counters;
pub mod exec;
pub mod hist;
pub mod http;
pub mod profile;
pub mod sched;
pub mod syscall;
pub mod tcp;
pub mod uprobe;
pub mod usdt;

/// One histogram series as the kernel keeps it: the count of each bucket slot (see
/// [`hist::slot_of`]) and the sum of the recorded values. Maps hold it per CPU, so recording is
/// one map lookup and two increments, and reading costs O(buckets), never O(events).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    pub sum: u64,
    pub buckets: [u64; hist::NUM_SLOTS as usize],
}

impl Hist {
    pub const ZERO: Self = Self {
        sum: 0,
        buckets: [0; hist::NUM_SLOTS as usize],
    };

    /// Records one value.
    #[inline(always)]
    pub fn record(&mut self, value: u64) {
        if let Some(bucket) = self.buckets.get_mut(hist::slot_of(value) as usize) {
            *bucket += 1;
        }
        self.sum = self.sum.wrapping_add(value);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] structs of integers with explicit padding fields.
    unsafe impl aya::Pod for super::Hist {}
    unsafe impl aya::Pod for super::block::BlockHists {}
    unsafe impl aya::Pod for super::block::BlockRequest {}
    unsafe impl aya::Pod for super::block::BlockStart {}
    unsafe impl aya::Pod for super::block::BlockRqStart {}
    unsafe impl aya::Pod for super::http::HttpPending {}
    unsafe impl aya::Pod for super::http::TlsPending {}
    unsafe impl aya::Pod for super::tcp::TcpSock {}
    unsafe impl aya::Pod for super::tcp::TcpEvent {}
    unsafe impl aya::Pod for super::tcp::TcpPeerKey {}
    unsafe impl aya::Pod for super::uprobe::UprobeFilter {}
    unsafe impl aya::Pod for super::usdt::UsdtSpec {}
    unsafe impl aya::Pod for super::syscall::SyscallKey {}
    unsafe impl aya::Pod for super::profile::ProfileKey {}
    unsafe impl aya::Pod for super::profile::OffCpuTime {}
    unsafe impl aya::Pod for super::profile::OffCpuStart {}
}

/// How many processes a family can be told not to measure (`*_SKIP_TGIDS`): Periscope itself
/// and up to three other Periscope processes (the daemon beside a `periscope triage`).
pub const SKIP_TGIDS: usize = 4;
