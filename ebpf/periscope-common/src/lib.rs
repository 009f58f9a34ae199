//! Types and arithmetic shared by the eBPF programs and the `periscope` user space.
//!
//! Everything here is `no_std` and `#[repr(C)]`: the kernel side writes these structs into BPF
//! maps and user space reads the same bytes back. The `user` feature adds `aya::Pod` impls.
//! The histogram bucket layout lives here too, so the function the kernel uses to pick a bucket
//! is the very function the property tests check.
#![no_std]

pub mod block;
pub mod counters;
pub mod hist;
pub mod sched;

/// Key of every in-kernel histogram map: one entry per (series, bucket slot).
///
/// `series` is family-specific (block: device and op; sched: cgroup id or 0). `slot` is a bucket
/// index from [`hist::slot_of`], or [`hist::SUM_SLOT`] for the running sum of recorded values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    pub series: u64,
    pub slot: u32,
    pub _pad: u32,
}

impl HistKey {
    #[inline(always)]
    pub const fn new(series: u64, slot: u32) -> Self {
        Self {
            series,
            slot,
            _pad: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] structs of integers with explicit padding fields.
    unsafe impl aya::Pod for super::HistKey {}
    unsafe impl aya::Pod for super::block::BlockRequest {}
    unsafe impl aya::Pod for super::block::BlockStart {}
}
