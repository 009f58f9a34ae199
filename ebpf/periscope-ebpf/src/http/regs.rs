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

/// 1 when this kernel's `struct pt_regs` has x86_64's ptrace layout ([`ptrace`]), so that the
/// registers `bpf_task_pt_regs` points at are loaded in place (user space compares BTF's
/// offsets with the layout before setting it). Else they are read with `bpf_probe_read_kernel`
/// at BTF's offsets, a helper call that cost about a quarter of the socket programs' time.
#[unsafe(no_mangle)]
pub(super) static HTTP_REGS_IN_PLACE: u32 = 0;

/// x86_64's `struct pt_regs` (the ptrace ABI, `struct user_regs_struct`), in 8-byte words.
mod ptrace {
    pub const DX: usize = 12;
    pub const SI: usize = 13;
    pub const DI: usize = 14;
    pub const ORIG_AX: usize = 15;
    pub const CS: usize = 17;
}

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

/// [`regs_syscall`] for `regs` from `bpf_task_pt_regs`, which the verifier knows as a
/// `struct pt_regs` (BTF): with [`HTTP_REGS_IN_PLACE`], plain loads (which the verifier turns into
/// fault-checked ones) instead of a helper call.
#[inline(always)]
pub(super) fn task_regs_syscall(regs: u64) -> Option<(u64, [u64; 3])> {
    if global(&HTTP_REGS_IN_PLACE) == 0 {
        return regs_syscall(regs);
    }
    let regs = regs as *const u64;
    // SAFETY: a kernel pointer to `struct pt_regs`, whose layout user space checked; the
    // verifier checks each load against BTF and makes a faulting one read 0.
    let reg = |word: usize| unsafe { regs.add(word).read_volatile() };
    if reg(ptrace::CS) != global(&HTTP_USER_CS) as u64 {
        return None;
    }
    Some((
        reg(ptrace::ORIG_AX),
        [reg(ptrace::DI), reg(ptrace::SI), reg(ptrace::DX)],
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
