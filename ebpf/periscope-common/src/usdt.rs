//! USDT probes (`.note.stapsdt`): the argument spec and keys both sides agree on.
//!
//! Each attached probe address gets a cookie: its index in `USDT_SPECS`, whose value says which
//! configured entry it belongs to, what to record, and where the argument lives (decoded by user
//! space from the note's `-4@%edi`-style spec). Kernel series keys carry the entry index in their
//! high half and the process (tgid) in the low half.

/// Argument kinds of [`UsdtArg::kind`].
pub mod arg_kind {
    /// No argument is read.
    pub const NONE: u8 = 0;
    /// A constant (`-4@$5`): the value is [`super::UsdtArg::value`].
    pub const CONST: u8 = 1;
    /// A register (`-4@%edi`): the `u64` at byte [`super::UsdtArg::reg`] * 8 of `pt_regs`.
    pub const REG: u8 = 2;
    /// Memory at a register plus a displacement (`8@-8(%rbp)`), read from user memory.
    pub const MEM: u8 = 3;
}

/// What an attached probe records ([`UsdtSpec::mode`]).
pub mod mode {
    /// One more firing of the probe.
    pub const COUNT: u32 = 0;
    /// One more firing, and the argument into the entry's histogram.
    pub const ARG: u32 = 1;
    /// One more firing, and a start stamp for the calling thread (latency entries).
    pub const START: u32 = 2;
    /// The end of the thread's pair: the time since its stamp into the entry's histogram.
    pub const DONE: u32 = 3;
}

/// Where one argument lives, as the note's spec says.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtArg {
    /// One of [`arg_kind`].
    pub kind: u8,
    /// Width in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// 1 when the spec's size is negative (a signed value).
    pub signed: u8,
    /// The register, as its index in `pt_regs` in 8-byte words (x86-64 layout).
    pub reg: u8,
    pub _pad: [u8; 4],
    /// The constant ([`arg_kind::CONST`]) or the displacement ([`arg_kind::MEM`]).
    pub value: i64,
}

/// Per attached probe address (indexed by its cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtSpec {
    /// The entry of `probes.usdt` this address belongs to.
    pub entry: u32,
    /// One of [`mode`].
    pub mode: u32,
    /// The argument recorded in [`mode::ARG`].
    pub arg: UsdtArg,
}

/// The low `size` bytes of `raw`, sign-extended when `signed` (then to be read as `i64`).
#[inline(always)]
pub const fn narrow(raw: u64, size: u8, signed: bool) -> u64 {
    let bits = match size {
        1 => 8,
        2 => 16,
        4 => 32,
        _ => return raw,
    };
    let shift = 64 - bits;
    if signed {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    }
}

/// Key of a series: the entry and the process (tgid).
#[inline(always)]
pub const fn series_key(entry: u32, tgid: u32) -> u64 {
    ((entry as u64) << 32) | tgid as u64
}

/// Key of a start stamp: the entry and the calling thread.
#[inline(always)]
pub const fn stamp_key(entry: u32, tid: u32) -> u64 {
    ((entry as u64) << 32) | tid as u64
}

/// `(entry, tgid)` of a series key.
#[inline(always)]
pub const fn split_series_key(key: u64) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_keeps_the_width_and_the_sign_the_spec_gives() {
        assert_eq!(narrow(0xffff_ffff_0000_0005, 4, false), 5);
        assert_eq!(narrow(0x0000_0000_ffff_fffe, 4, true) as i64, -2);
        assert_eq!(narrow(0x1ff, 1, false), 0xff);
        assert_eq!(narrow(0x1ff, 1, true) as i64, -1);
        assert_eq!(narrow(u64::MAX, 8, false), u64::MAX);
    }
}
