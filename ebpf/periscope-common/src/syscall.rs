//! Syscall latency and errors: the sparse keys the kernel aggregates into.
//!
//! A full [`crate::Hist`] (642 slots) per (process, syscall) would cost kilobytes per series per
//! CPU; most series fill a handful of buckets. So the kernel keeps one map entry per non-empty
//! bucket, keyed by (process, syscall, bucket slot), plus one entry per (process, syscall) for
//! the sum, and one per (process, syscall, errno) for errors. User space reads them in
//! O(entries) and rebuilds the histograms.

/// One entry of the syscall maps: 8 bytes, so that the key costs no more than a u64.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    /// Process (thread group) id.
    pub tgid: u32,
    /// Syscall number; [`OTHER_NR`] for numbers that do not fit.
    pub nr: u16,
    /// Latency map: a bucket slot (`hist::slot_of`) or [`SUM_SLOT`]. Error map: the errno.
    pub slot: u16,
}

/// The `slot` of the entry holding the sum of latencies (in 2^-30 s units) of a series.
pub const SUM_SLOT: u16 = u16::MAX;
/// Syscall numbers above u16 (x32 calls carry bit 30) share this number.
pub const OTHER_NR: u16 = u16::MAX;
/// Return values in `[-MAX_ERRNO, -1]` are errors (the kernel's `IS_ERR_VALUE`).
pub const MAX_ERRNO: i64 = 4095;

// The slot must fit in the key's u16 and never collide with the sum entry.
const _: () = assert!(crate::hist::NUM_SLOTS < SUM_SLOT as u32);

impl SyscallKey {
    /// The key of `nr` for `tgid`, with syscall numbers beyond u16 folded into [`OTHER_NR`].
    #[inline(always)]
    pub fn new(tgid: u32, nr: u64, slot: u16) -> Self {
        let nr = if nr < OTHER_NR as u64 {
            nr as u16
        } else {
            OTHER_NR
        };
        Self { tgid, nr, slot }
    }
}

/// The errno of a syscall return value, or `None` when the call succeeded.
#[inline(always)]
pub fn errno_of(ret: i64) -> Option<u16> {
    if (-MAX_ERRNO..0).contains(&ret) {
        Some((-ret) as u16)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_the_last_page_of_negative_values() {
        assert_eq!(errno_of(0), None);
        assert_eq!(errno_of(5000), None);
        assert_eq!(errno_of(-9), Some(9));
        assert_eq!(errno_of(-4095), Some(4095));
        assert_eq!(errno_of(-4096), None, "a negative offset, not an error");
    }

    #[test]
    fn big_syscall_numbers_share_one_key() {
        assert_eq!(SyscallKey::new(1, 0x4000_0000, 3).nr, OTHER_NR);
        assert_eq!(SyscallKey::new(1, 202, 3).nr, 202);
        assert_eq!(core::mem::size_of::<SyscallKey>(), 8);
    }
}
