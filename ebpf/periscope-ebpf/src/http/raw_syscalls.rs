//! Raw tracepoints: one program on every syscall entry and one on every exit, instead of a
//! tracepoint pair per syscall. The exit reads the arguments back from the saved registers (the
//! kernel does not change them), so no entry state is kept, except a write's entry time in a
//! slot of a plain array indexed by thread id (no hash update on the hot path).

use super::connection::{
    F_DUPFD, F_DUPFD_CLOEXEC, accepted, closing, connect_addr, connected, duplicated,
};
use super::record::send_io;
use super::regs::{HTTP_REGS_NR, io_shape, op_of, regs_args};
use super::{HTTP_CONNS, current, watched_io};
use crate::shared::global;
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use periscope_common::http::{
    HttpPending, KIND_CONNECT, KIND_WRITE, ROLE_CLIENT, WRITE_STAMPS, conn_key, op, stamp_start,
    write_stamp,
};

/// Entry stamps of writes (`write_stamp`), by the low bits of the thread id.
#[map]
pub(super) static HTTP_WRITE_STAMPS: Array<u64> = Array::with_max_entries(WRITE_STAMPS, 0);

/// `raw_tp/sys_enter(struct pt_regs *regs, long id)`: stamps writes, handles `close`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn http_sys_enter_raw(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    let op = op_of(id);
    if op != op::CLOSE && !op::is_write(op) {
        return 0;
    }
    let Some((tgid, tid)) = current() else {
        return 0;
    };
    if op == op::CLOSE {
        if let Some(args) = regs_args(ctx.arg(0)) {
            closing(tgid, tid, args[0] as u32);
        }
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = HTTP_WRITE_STAMPS.get_ptr_mut(tid & (WRITE_STAMPS - 1)) {
        // SAFETY: an 8-byte array slot; one aligned store.
        unsafe { *slot = write_stamp(tid, now) };
    }
    0
}

/// `raw_tp/sys_exit(struct pt_regs *regs, long ret)`: everything the tracepoint exits do.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn http_sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let Ok(nr) =
        (unsafe { bpf_probe_read_kernel((regs + global(&HTTP_REGS_NR) as u64) as *const u64) })
    else {
        return 0;
    };
    let op = op_of(nr);
    let rc: i64 = ctx.arg(1);
    if !op::exit_matters(op, rc) {
        return 0;
    }
    let Some((tgid, tid)) = current() else {
        return 0;
    };
    let Some(args) = regs_args(regs) else {
        return 0;
    };
    match op {
        op::ACCEPT => {
            let now = unsafe { bpf_ktime_get_ns() };
            accepted(tgid, tid, args[0], rc as u32, now);
        }
        op::CONNECT => {
            if let Some(addr) = connect_addr(args[1]) {
                let now = unsafe { bpf_ktime_get_ns() };
                let pending = HttpPending {
                    start_ns: now,
                    fd: args[0] as u32,
                    kind: KIND_CONNECT,
                    role: ROLE_CLIENT,
                    addr,
                    ..Default::default()
                };
                connected(tgid, tid, &pending, now);
            }
        }
        op::DUP | op::FCNTL => {
            if op == op::FCNTL && args[1] != F_DUPFD && args[1] != F_DUPFD_CLOEXEC {
                return 0;
            }
            let oldfd = args[0] as u32;
            if let Some(role) = (unsafe { HTTP_CONNS.get(conn_key(tgid, oldfd)) }).copied() {
                duplicated(tgid, tid, oldfd, role, rc);
            }
        }
        _ => io_exit_raw(tgid, tid, op, args, rc),
    }
    0
}

/// A read or write returned `rc`: its record, when it was on a watched connection (the clock
/// is read only then: most reads and writes of a node are on files and pipes).
#[inline(always)]
pub(super) fn io_exit_raw(tgid: u32, tid: u32, op: u8, args: [u64; 3], rc: i64) {
    let Some((kind, buffer)) = io_shape(op) else {
        return;
    };
    let Some(mut pending) = watched_io(tgid, tid, kind, buffer, args) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    pending.start_ns = if kind == KIND_WRITE {
        HTTP_WRITE_STAMPS
            .get(tid & (WRITE_STAMPS - 1))
            .and_then(|stamp| stamp_start(*stamp, tid, now))
            .unwrap_or(now)
    } else {
        now
    };
    send_io::<false>(tgid, tid, &pending, 0, rc as u64, now);
}
