//! A syscall's number and arguments read from the task's saved registers (offsets from BTF),
//! and the read/write syscalls' buffer shapes: shared by the raw-syscall, socket-tracepoint and
//! fentry mechanisms.

use super::Buffer;
use crate::shared::{bytes_at, global};
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::map, maps::Array};
use periscope_common::http::{KIND_READ, KIND_WRITE, REGS_WINDOW, SYSCALL_OPS, op};

/// Offsets in `struct pt_regs` (from BTF): the syscall number (`orig_ax`), the window read, and
/// inside it the first three arguments and the code segment.
#[unsafe(no_mangle)]
pub(super) static HTTP_REGS_BASE: u32 = 0;
#[unsafe(no_mangle)]
pub(super) static HTTP_REGS_NR: u32 = 0;
#[unsafe(no_mangle)]
pub(super) static HTTP_REGS_ARG0: u32 = 0;
#[unsafe(no_mangle)]
pub(super) static HTTP_REGS_ARG1: u32 = 0;
#[unsafe(no_mangle)]
pub(super) static HTTP_REGS_ARG2: u32 = 0;
#[unsafe(no_mangle)]
pub(super) static HTTP_REGS_CS: u32 = 0;
/// The syscall number inside the window (the raw exit reads it alone first, at `HTTP_REGS_NR`,
/// to leave other syscalls at once).
#[unsafe(no_mangle)]
pub(super) static HTTP_REGS_WINDOW_NR: u32 = 0;
/// The code segment of 64-bit user code (x86_64 `__USER_CS`): a 32-bit process's syscalls
/// have other numbers, and are left alone.
#[unsafe(no_mangle)]
pub(super) static HTTP_USER_CS: u32 = 0x33;

/// Syscall number -> `op::*`, filled by user space for its architecture.
#[map]
pub(super) static HTTP_SYSCALL_OPS: Array<u8> = Array::with_max_entries(SYSCALL_OPS, 0);

#[inline(always)]
pub(super) fn op_of(nr: u64) -> u8 {
    if nr >= SYSCALL_OPS as u64 {
        return op::NONE;
    }
    HTTP_SYSCALL_OPS.get(nr as u32).copied().unwrap_or(op::NONE)
}

/// The first three arguments of the syscall whose registers are at `regs`, or `None` for a
/// 32-bit (compat) syscall.
#[inline(always)]
pub(super) fn regs_args(regs: u64) -> Option<[u64; 3]> {
    regs_syscall(regs).map(|(_, args)| args)
}

/// The number and first three arguments of the syscall whose registers are at `regs`, read at
/// once, or `None` for a 32-bit (compat) syscall.
#[inline(always)]
pub(super) fn regs_syscall(regs: u64) -> Option<(u64, [u64; 3])> {
    // SAFETY: bpf_probe_read_kernel checks the address; the offsets come from this kernel's BTF.
    let window: [u8; REGS_WINDOW] = unsafe {
        bpf_probe_read_kernel((regs + global(&HTTP_REGS_BASE) as u64) as *const [u8; REGS_WINDOW])
    }
    .ok()?;
    let reg = |offset| bytes_at::<8>(&window, offset).map(u64::from_ne_bytes);
    if reg(global(&HTTP_REGS_CS))? != global(&HTTP_USER_CS) as u64 {
        return None;
    }
    Some((
        reg(global(&HTTP_REGS_WINDOW_NR))?,
        [
            reg(global(&HTTP_REGS_ARG0))?,
            reg(global(&HTTP_REGS_ARG1))?,
            reg(global(&HTTP_REGS_ARG2))?,
        ],
    ))
}

/// The record kind and buffer shape of a read or write syscall's `op`.
#[inline(always)]
pub(super) fn io_shape(op: u8) -> Option<(u8, Buffer)> {
    Some(match op {
        op::READ => (KIND_READ, Buffer::Plain),
        op::READV => (KIND_READ, Buffer::Vector),
        op::RECVMSG => (KIND_READ, Buffer::Message),
        op::WRITE => (KIND_WRITE, Buffer::Plain),
        op::WRITEV => (KIND_WRITE, Buffer::Vector),
        op::SENDMSG => (KIND_WRITE, Buffer::Message),
        op::SENDFILE => (KIND_WRITE, Buffer::None),
        _ => return None,
    })
}
