//! Per-syscall tracepoints (`syscalls:sys_enter_*`/`sys_exit_*`), the last fallback: an entry
//! and an exit program per syscall, sharing one record layout (`struct syscall_trace_enter`/
//! `_exit`) whose argument and return-value offsets user space reads from the format files.

use super::connection::{
    F_DUPFD, F_DUPFD_CLOEXEC, accepted, closing, connect_addr, connected, duplicated,
};
use super::record::send_io;
use super::{Buffer, HTTP_CONNS, HTTP_PENDING, current, take_pending, watched_io};
use crate::shared::{count, global};
use aya_ebpf::{
    bindings::BPF_ANY, helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext,
};
use periscope_common::{
    counters,
    http::{
        HttpPending, KIND_ACCEPT, KIND_CONNECT, KIND_DUP, KIND_READ, KIND_WRITE, ROLE_CLIENT,
        ROLE_SERVER, conn_key, op,
    },
};

/// Offset of the return value in a `sys_exit_*` record.
#[unsafe(no_mangle)]
pub(super) static HTTP_RET_OFFSET: u32 = 16;

/// Offset of the first syscall argument in a `sys_enter_*` record.
#[unsafe(no_mangle)]
pub(super) static HTTP_ARGS_OFFSET: u32 = 16;

#[inline(always)]
pub(super) fn arg(ctx: &TracePointContext, index: u32) -> u64 {
    let offset = global(&HTTP_ARGS_OFFSET) + 8 * index;
    // SAFETY: syscall arguments are 8-byte fields at this offset of every sys_enter record.
    unsafe { ctx.read_at::<u64>(offset as usize) }.unwrap_or(0)
}

#[inline(always)]
pub(super) fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: the return value is an 8-byte field at this offset of every sys_exit record.
    unsafe { ctx.read_at::<i64>(global(&HTTP_RET_OFFSET) as usize) }.unwrap_or(-1)
}

/// Records the entry of a read/write on a watched connection. The clock is read once the fd is
/// known to be watched (it costs 40-80 ns on a VM). A read's record carries its exit time, as on
/// raw tracepoints (only when a read returned matters), but its entry is still stamped: the
/// sweeper removes entries older than a minute as those of threads killed inside a syscall.
#[inline(always)]
pub(super) fn enter_io(ctx: &TracePointContext, kind: u8, buffer: Buffer) {
    let Some((tgid, tid)) = current() else { return };
    let args = [arg(ctx, 0), arg(ctx, 1), arg(ctx, 2)];
    let Some(mut pending) = watched_io(tgid, tid, kind, buffer, args) else {
        return;
    };
    pending.start_ns = unsafe { bpf_ktime_get_ns() };
    if HTTP_PENDING.insert(tid, pending, BPF_ANY as u64).is_err() {
        count(counters::HTTP_PENDING_FULL);
    }
}

/// Sends the record of a finished read/write (tracepoints: its entry was recorded).
#[inline(always)]
pub(super) fn exit_io(ctx: &TracePointContext) {
    let Some((tgid, tid)) = current() else { return };
    let Some(mut pending) = take_pending(tid) else {
        return;
    };
    let rc = ret(ctx);
    if !op::exit_matters(op::READ, rc) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if pending.kind == KIND_READ {
        pending.start_ns = now;
    }
    send_io::<false>(tgid, tid, &pending, 0, rc as u64, now);
}

macro_rules! io_programs {
    ($($name:ident => $kind:expr, $buffer:expr;)*) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            enter_io(&ctx, $kind, $buffer);
            0
        }
    )*};
}

io_programs! {
    http_enter_read => KIND_READ, Buffer::Plain;
    http_enter_readv => KIND_READ, Buffer::Vector;
    http_enter_recvmsg => KIND_READ, Buffer::Message;
    http_enter_write => KIND_WRITE, Buffer::Plain;
    http_enter_writev => KIND_WRITE, Buffer::Vector;
    http_enter_sendmsg => KIND_WRITE, Buffer::Message;
    http_enter_sendfile => KIND_WRITE, Buffer::None;
}

/// Every read/write syscall's exit.
#[tracepoint]
pub fn http_exit_io(ctx: TracePointContext) -> u32 {
    exit_io(&ctx);
    0
}

#[tracepoint]
pub fn http_enter_accept(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = current() else { return 0 };
    let pending = HttpPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        listen_fd: arg(&ctx, 0),
        kind: KIND_ACCEPT,
        role: ROLE_SERVER,
        ..Default::default()
    };
    if HTTP_PENDING.insert(tid, pending, BPF_ANY as u64).is_err() {
        count(counters::HTTP_PENDING_FULL);
    }
    0
}

#[tracepoint]
pub fn http_exit_accept(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current() else {
        return 0;
    };
    let Some(pending) = take_pending(tid) else {
        return 0;
    };
    let fd = ret(&ctx);
    if pending.kind == KIND_ACCEPT && op::exit_matters(op::ACCEPT, fd) {
        let now = unsafe { bpf_ktime_get_ns() };
        accepted(tgid, tid, pending.listen_fd, fd as u32, now);
    }
    0
}

#[tracepoint]
pub fn http_enter_connect(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = current() else { return 0 };
    let Some(addr) = connect_addr(arg(&ctx, 1)) else {
        return 0;
    };
    let pending = HttpPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        fd: arg(&ctx, 0) as u32,
        kind: KIND_CONNECT,
        role: ROLE_CLIENT,
        addr,
        ..Default::default()
    };
    if HTTP_PENDING.insert(tid, pending, BPF_ANY as u64).is_err() {
        count(counters::HTTP_PENDING_FULL);
    }
    0
}

#[tracepoint]
pub fn http_exit_connect(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current() else {
        return 0;
    };
    let Some(pending) = take_pending(tid) else {
        return 0;
    };
    let rc = ret(&ctx);
    if pending.kind == KIND_CONNECT && op::exit_matters(op::CONNECT, rc) {
        let now = unsafe { bpf_ktime_get_ns() };
        connected(tgid, tid, &pending, now);
    }
    0
}

/// Records a descriptor duplication of a watched connection (Rust's `try_clone`, shells...).
#[inline(always)]
pub(super) fn enter_dup(oldfd: u32) {
    let Some((tgid, tid)) = current() else { return };
    let Some(role) = (unsafe { HTTP_CONNS.get(conn_key(tgid, oldfd)) }).copied() else {
        return;
    };
    let pending = HttpPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        fd: oldfd,
        kind: KIND_DUP,
        role,
        ..Default::default()
    };
    if HTTP_PENDING.insert(tid, pending, BPF_ANY as u64).is_err() {
        count(counters::HTTP_PENDING_FULL);
    }
}

#[tracepoint]
pub fn http_enter_dup(ctx: TracePointContext) -> u32 {
    enter_dup(arg(&ctx, 0) as u32);
    0
}

#[tracepoint]
pub fn http_enter_fcntl(ctx: TracePointContext) -> u32 {
    let cmd = arg(&ctx, 1);
    if cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC {
        enter_dup(arg(&ctx, 0) as u32);
    }
    0
}

#[tracepoint]
pub fn http_exit_dup(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current() else {
        return 0;
    };
    let Some(pending) = take_pending(tid) else {
        return 0;
    };
    if pending.kind == KIND_DUP {
        duplicated(tgid, tid, pending.fd, pending.role, ret(&ctx));
    }
    0
}

#[tracepoint]
pub fn http_enter_close(ctx: TracePointContext) -> u32 {
    if let Some((tgid, tid)) = current() {
        closing(tgid, tid, arg(&ctx, 0) as u32);
    }
    0
}
