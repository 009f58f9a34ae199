//! Block IO: in-flight request records and the series id of the latency and size histograms.

/// Bytes of a tracepoint record the block programs read in one go; the fields they need must lie
/// within this window (user space checks, from the format files).
pub const RECORD_WINDOW: usize = 64;

/// Identity of an in-flight request as the `block:block_rq_issue` and `block:block_rq_complete`
/// tracepoints both report it: device, operation and starting sector. The operation keeps two
/// requests at one sector apart (a fresh device's first write and the probe read udev makes of
/// the same sector): keyed by sector alone, the write's completion took the read's start and
/// was counted as a read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    pub dev: u32,
    /// `OP_*`, from `rwbs`.
    pub op: u32,
    pub sector: u64,
}

/// Both block histograms of one (device, op) series, updated with a single map lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHists {
    /// Issue-to-completion latency in 2^-30 s units.
    pub latency: crate::Hist,
    /// Request size in bytes.
    pub size: crate::Hist,
}

impl BlockHists {
    pub const ZERO: Self = Self {
        latency: crate::Hist::ZERO,
        size: crate::Hist::ZERO,
    };
}

/// What the issue tracepoint remembers until completion.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStart {
    pub issued_ns: u64,
    pub bytes: u32,
    pub op: u32,
}

/// What the raw-tracepoint issue program remembers, keyed by the `struct request` pointer (the
/// device comes with it: completion reads nothing from the request).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRqStart {
    pub issued_ns: u64,
    pub bytes: u32,
    pub op: u32,
    pub dev: u32,
    pub _pad: u32,
}

pub const OP_READ: u32 = 0;
pub const OP_WRITE: u32 = 1;
pub const OP_FLUSH: u32 = 2;
pub const OP_DISCARD: u32 = 3;
pub const OP_OTHER: u32 = 4;

/// Operation names as exported in `block.io.operation`.
pub const fn op_name(op: u32) -> &'static str {
    match op {
        OP_READ => "read",
        OP_WRITE => "write",
        OP_FLUSH => "flush",
        OP_DISCARD => "discard",
        _ => "other",
    }
}

/// The operation of a request from the tracepoint's `rwbs` string (see the kernel's
/// `blk_fill_rwbs`): an optional leading `F` (preflush) then the op letter.
#[inline(always)]
pub fn op_from_rwbs(rwbs: [u8; 2]) -> u32 {
    let letter = if rwbs[0] == b'F' && matches!(rwbs[1], b'W' | b'R' | b'D' | b'F' | b'N') {
        rwbs[1]
    } else {
        rwbs[0]
    };
    match letter {
        b'R' => OP_READ,
        b'W' => OP_WRITE,
        b'F' => OP_FLUSH,
        b'D' => OP_DISCARD,
        _ => OP_OTHER,
    }
}

/// The operation of a request from its `cmd_flags` (`enum req_op` in the low 8 bits), named as
/// the tracepoints' `rwbs` names it (`blk_fill_rwbs`: secure erase is a discard).
#[inline(always)]
pub const fn op_from_cmd_flags(cmd_flags: u32) -> u32 {
    match cmd_flags & 0xff {
        0 => OP_READ,
        1 => OP_WRITE,
        2 => OP_FLUSH,
        3 | 5 => OP_DISCARD,
        _ => OP_OTHER,
    }
}

/// A kernel `dev_t` from a gendisk's major and first minor (`MKDEV`).
#[inline(always)]
pub const fn mkdev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// Histogram series id of a (device, op) pair.
#[inline(always)]
pub const fn series(dev: u32, op: u32) -> u64 {
    ((dev as u64) << 8) | (op as u64 & 0xff)
}

/// Inverse of [`series`].
pub const fn split_series(series: u64) -> (u32, u32) {
    ((series >> 8) as u32, (series & 0xff) as u32)
}

/// Kernel `dev_t` to (major, minor): 12 bits of major above 20 bits of minor.
pub const fn dev_major_minor(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rwbs_letters() {
        assert_eq!(op_from_rwbs(*b"RA"), OP_READ);
        assert_eq!(op_from_rwbs(*b"WS"), OP_WRITE);
        assert_eq!(op_from_rwbs(*b"FW"), OP_WRITE); // preflush + write
        assert_eq!(op_from_rwbs(*b"WF"), OP_WRITE); // write + FUA
        assert_eq!(op_from_rwbs(*b"FF"), OP_FLUSH);
        assert_eq!(op_from_rwbs(*b"F\0"), OP_FLUSH);
        assert_eq!(op_from_rwbs(*b"DS"), OP_DISCARD);
        assert_eq!(op_from_rwbs(*b"N\0"), OP_OTHER);
    }

    #[test]
    fn cmd_flags_ops() {
        assert_eq!(op_from_cmd_flags(0), OP_READ);
        assert_eq!(op_from_cmd_flags(1 | (1 << 11)), OP_WRITE); // write + sync flag
        assert_eq!(op_from_cmd_flags(2), OP_FLUSH);
        assert_eq!(op_from_cmd_flags(3), OP_DISCARD);
        assert_eq!(op_from_cmd_flags(5), OP_DISCARD);
        assert_eq!(op_from_cmd_flags(9), OP_OTHER); // write zeroes: rwbs 'N'
        assert_eq!(dev_major_minor(mkdev(7, 3)), (7, 3));
    }

    #[test]
    fn series_round_trip() {
        let dev = (259 << 20) | 3;
        assert_eq!(split_series(series(dev, OP_FLUSH)), (dev, OP_FLUSH));
        assert_eq!(dev_major_minor(dev), (259, 3));
    }
}
