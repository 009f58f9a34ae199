//! Go's own TLS (`crypto/tls`, not OpenSSL): uprobes on `crypto/tls.(*Conn).Read` and
//! `crypto/tls.(*Conn).Write` send the plaintext as read/write records of the connection's fd,
//! flagged `IO_TLS_PLAINTEXT`, exactly as the OpenSSL probes do (`tls.rs`), so the socket
//! programs and user space treat both alike.
//!
//! Go moves goroutine stacks, so there are no uretprobes (they rewrite the return address on
//! the stack): user space attaches [`http_go_tls_return`] at every `RET` instruction of `Read`
//! instead. Go's register ABI (amd64, Go 1.17+): at entry the receiver `*tls.Conn` is in RAX and
//! `b []byte` in RBX (pointer) and RCX (length); at a `RET`, the result `n` is in RAX. The
//! goroutine (`g`) is in R14: a call that blocks parks its goroutine, which may resume on
//! another thread, so reads in flight are keyed by (tgid, goroutine).
//!
//! A write is sent at its entry, all of `b` (Go's `Write` writes it all or fails): Go reads and
//! writes a connection on different goroutines, and the response to a client's request can be
//! read, and its record sent, before the writing goroutine reaches a `RET`; user space would
//! then see the response before the request. The entry probes sit past the prologue's stack
//! check, so a call that grows its stack (and restarts the function) is seen once.
//!
//! The fd: `tls.Conn.conn` is a `net.Conn` interface (itab, data) whose data is a
//! `*net.TCPConn`, whose `conn.fd` is a `*netFD`, whose `pfd poll.FD` has `Sysfd` after its
//! 16-byte `fdMutex`. The offsets are load-time constants (user space refuses a binary whose
//! DWARF says otherwise; see `exporter/src/families/http/gotls.rs`).

use super::record::send_plaintext;
use super::{HTTP_CONNS, current};
use crate::shared::{count, global};
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use periscope_common::{
    counters,
    http::{GoTlsKey, GoTlsPending, HttpPending, KIND_READ, KIND_WRITE, ROLE_MASK, conn_key},
};

/// Offset of the `net.Conn` interface's data word in `crypto/tls.Conn` (`conn` + 8).
#[unsafe(no_mangle)]
pub(super) static HTTP_GO_CONN_DATA: u32 = 8;
/// Offset of `fd *netFD` in `net.TCPConn` (its embedded `net.conn`).
#[unsafe(no_mangle)]
pub(super) static HTTP_GO_CONN_FD: u32 = 0;
/// Offset of `pfd.Sysfd` in `net.netFD` (`pfd` + `poll.FD.Sysfd`).
#[unsafe(no_mangle)]
pub(super) static HTTP_GO_FD_SYSFD: u32 = 16;

/// `struct pt_regs` on x86_64, in 8-byte slots: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx.
const R14: usize = 1;
const RBX: usize = 5;
const RAX: usize = 10;
const RCX: usize = 11;

/// Go TLS reads in flight, by (tgid, goroutine). LRU: a call whose `RET` is never
/// seen (the process exited inside it) ages out. Every idle keep-alive connection keeps one
/// `Read` waiting here: user space sizes it as the connections followed
/// (`probes.http.max_connections`); past that the oldest waits are evicted and their data lost.
#[map]
static HTTP_GO_TLS_PENDING: LruHashMap<GoTlsKey, GoTlsPending> =
    LruHashMap::with_max_entries(16384, 0);

/// A register of the probed instruction's context.
#[inline(always)]
fn reg(ctx: &ProbeContext, slot: usize) -> u64 {
    // SAFETY: a load from the program's own context (struct pt_regs), at a constant offset
    // inside it.
    unsafe { *(ctx.regs as *const u64).add(slot) }
}

#[inline(always)]
fn go_enter(ctx: &ProbeContext, kind: u8) -> u32 {
    let Some((tgid, _)) = current() else { return 0 };
    let key = GoTlsKey {
        tgid,
        _pad: 0,
        goroutine: reg(ctx, R14),
    };
    let pending = GoTlsPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        conn: reg(ctx, RAX),
        buf: reg(ctx, RBX),
        buf_len: reg(ctx, RCX),
        kind,
        _pad: [0; 7],
    };
    if HTTP_GO_TLS_PENDING
        .insert(key, pending, BPF_ANY as u64)
        .is_err()
    {
        count(counters::HTTP_PENDING_FULL);
    }
    0
}

/// Entry of `crypto/tls.(*Conn).Read(b []byte) (int, error)`: noted until one of its `RET`s.
#[uprobe]
pub fn http_go_tls_read(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, KIND_READ)
}

/// Entry of `crypto/tls.(*Conn).Write(b []byte) (int, error)`: sends all of `b` at once.
#[uprobe]
pub fn http_go_tls_write(ctx: ProbeContext) -> u32 {
    let Some((tgid, _)) = current() else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let len = reg(&ctx, RCX);
    if len == 0 || len > i64::MAX as u64 {
        return 0;
    }
    send(
        tgid,
        &GoTlsPending {
            start_ns: now,
            conn: reg(&ctx, RAX),
            buf: reg(&ctx, RBX),
            buf_len: len,
            kind: KIND_WRITE,
            _pad: [0; 7],
        },
        len,
        now,
    );
    0
}

/// The socket fd under a `*tls.Conn` (see the module's doc), or `None` when a pointer on the
/// way does not read.
#[inline(always)]
fn go_sysfd(conn: u64) -> Option<u32> {
    // SAFETY: bpf_probe_read_user checks every address.
    let net_conn =
        unsafe { bpf_probe_read_user((conn + global(&HTTP_GO_CONN_DATA) as u64) as *const u64) }
            .ok()?;
    if net_conn == 0 {
        return None;
    }
    let net_fd =
        unsafe { bpf_probe_read_user((net_conn + global(&HTTP_GO_CONN_FD) as u64) as *const u64) }
            .ok()?;
    if net_fd == 0 {
        return None;
    }
    let sysfd =
        unsafe { bpf_probe_read_user((net_fd + global(&HTTP_GO_FD_SYSFD) as u64) as *const i64) }
            .ok()?;
    // A closed netFD has Sysfd -1; anything past 2^31 is not a descriptor (and would collide
    // with the TLS_FD bit user space keys plaintext by).
    if !(0..0x8000_0000).contains(&sysfd) {
        return None;
    }
    Some(sysfd as u32)
}

/// A `RET` of `Read`: sends the plaintext (`n` bytes of `b`, RAX) as a read record of the
/// connection's fd.
#[uprobe]
pub fn http_go_tls_return(ctx: ProbeContext) -> u32 {
    let Some((tgid, _)) = current() else {
        return 0;
    };
    let key = GoTlsKey {
        tgid,
        _pad: 0,
        goroutine: reg(&ctx, R14),
    };
    // SAFETY: copied out before the entry is removed.
    let Some(pending) = (unsafe { HTTP_GO_TLS_PENDING.get(key) }).copied() else {
        return 0;
    };
    let _ = HTTP_GO_TLS_PENDING.remove(key);
    let n = reg(&ctx, RAX) as i64;
    if n <= 0 || n as u64 > pending.buf_len {
        return 0;
    }
    send(tgid, &pending, n as u64, unsafe { bpf_ktime_get_ns() });
    0
}

/// Sends `transferred` bytes of `pending`'s buffer as a record of its connection, ended at `now`.
#[inline(always)]
fn send(tgid: u32, pending: &GoTlsPending, transferred: u64, now: u64) {
    let Some(fd) = go_sysfd(pending.conn) else {
        return;
    };
    // The fd is exact (read from the connection itself), unlike an OpenSSL call's: a socket that
    // is not followed (not TCP, or given up by user space: not HTTP/1) sends nothing.
    let Some(role) = (unsafe { HTTP_CONNS.get(conn_key(tgid, fd)) }).copied() else {
        return;
    };
    let role = role & ROLE_MASK;
    let io = HttpPending {
        start_ns: pending.start_ns,
        buf: pending.buf,
        buf_len: transferred,
        fd,
        kind: if pending.kind == KIND_WRITE {
            KIND_WRITE
        } else {
            KIND_READ
        },
        role,
        ..Default::default()
    };
    // Thread 0 (no user thread has it): Go moves goroutines between threads, and its HTTP
    // client writes a request from another goroutine than the handler that made it, so the
    // thread says nothing of which request a call belongs to. User space then gives these
    // requests no thread-based span parent, rather than a wrong one.
    send_plaintext(tgid, 0, &io, transferred, now);
}
