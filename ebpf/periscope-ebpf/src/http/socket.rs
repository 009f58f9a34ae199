//! Socket tracepoints (Linux 6.5+): `sock_send_length`/`sock_recv_length` fire once per send or
//! receive on a socket, after it, in the task that made it. Nothing runs on any other syscall,
//! and no syscall of any process takes the traced slow path. The syscall's arguments (fd,
//! buffer) are read from the task's saved registers. A (process, fd) pair is bound to the socket
//! it names; the first I/O of a new socket on a pair announces it ([`KIND_OPEN`], with the side
//! `inet_sock_set_state` saw it established as) and ends what the pair named before. A write's
//! record carries its exit time as its start (there is no entry hook).

use super::h2;
use super::record::{send_close, send_dup, send_io, send_open};
use super::regs::{io_shape, op_of, task_regs_syscall};
use super::{AF_INET, AF_INET6, HTTP_CONNS, current, stage, stop_after, watched_io};
use crate::shared::global;
use crate::sock::{SK_DADDR, SK_FAMILY, SK_PORTPAIR, SK_V6_DADDR};
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};
use periscope_common::http::{
    ConnectAddr, KIND_READ, KIND_WRITE, ROLE_CLIENT, ROLE_SERVER, SockId, SockOpen, conn_key,
};

/// Offset of `sock.sk_protocol` (the port pair, family and peer addresses are `crate::sock`'s,
/// read in place here: the programs' stack is near its limit).
#[unsafe(no_mangle)]
pub(super) static HTTP_SK_PROTOCOL: u32 = 0;
/// Offset of `sock.sk_shutdown`.
#[unsafe(no_mangle)]
pub(super) static HTTP_SK_SHUTDOWN: u32 = 0;
/// Offset of `sock.sk_receive_queue.qlen`: the segments received and not read yet.
#[unsafe(no_mangle)]
pub(super) static HTTP_SK_RCV_QLEN: u32 = 0;
/// Offsets of `sock.sk_socket` and `socket.file`: a kernel socket (NFS, CIFS, iSCSI, sending
/// inside a process's write to a file) has no file.
#[unsafe(no_mangle)]
pub(super) static HTTP_SK_SOCKET: u32 = 0;
#[unsafe(no_mangle)]
pub(super) static HTTP_SOCKET_FILE: u32 = 0;

/// The socket each (process, fd) pair that did socket I/O names. A pair whose socket is known
/// but has no entry in HTTP_CONNS is not watched (not TCP, or given up on by user space).
#[map]
pub(super) static HTTP_FD_SOCKS: LruHashMap<u64, SockId> = LruHashMap::with_max_entries(65536, 0);

/// The (process, fd) pair that first did I/O on each socket, by socket address (closes, dups).
#[map]
pub(super) static HTTP_SOCK_FDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// The side of each TCP connection established since Periscope started, by socket address.
#[map]
pub(super) static HTTP_SOCK_ROLES: LruHashMap<u64, SockId> = LruHashMap::with_max_entries(65536, 0);

pub(super) const IPPROTO_TCP: u16 = 6;
pub(super) const MSG_PEEK: u64 = 2;
pub(super) const TCP_ESTABLISHED: u64 = 1;
pub(super) const TCP_SYN_SENT: u64 = 2;
pub(super) const TCP_SYN_RECV: u64 = 3;
pub(super) const TCP_FIN_WAIT1: u64 = 4;
pub(super) const TCP_CLOSE: u64 = 7;
pub(super) const TCP_CLOSE_WAIT: u64 = 8;
pub(super) const TCP_LAST_ACK: u64 = 9;
/// `sk_shutdown` when both directions are shut.
pub(super) const SHUTDOWN_MASK: u8 = 3;

/// `raw_tp/sock_send_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn http_sock_send(ctx: RawTracePointContext) -> i32 {
    sock_io(ctx.arg(0), ctx.arg::<u64>(1) as i32, KIND_WRITE);
    0
}

/// `raw_tp/sock_recv_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn http_sock_recv(ctx: RawTracePointContext) -> i32 {
    sock_recv(ctx.arg(0), ctx.arg::<u64>(1) as i32, ctx.arg(2));
    0
}

/// A receive of `ret` bytes with `flags`: a peek leaves the bytes for the read that follows.
#[inline(always)]
pub(super) fn sock_recv(sk: u64, ret: i32, flags: u64) {
    if flags & MSG_PEEK == 0 {
        sock_io(sk, ret, KIND_READ);
    }
}

/// A send or receive of `rc` bytes on socket `sk`: its record, when it was a read or write
/// syscall of a process on a watched connection.
#[inline(always)]
pub(super) fn sock_io(sk: u64, rc: i32, kind: u8) {
    if rc <= 0 {
        return;
    }
    let Some((tgid, tid)) = current() else {
        return;
    };
    // SAFETY: helpers on the current task; a kernel thread has no user registers, and its
    // syscall number reads as something that is not ours.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return;
    }
    let Some((nr, args)) = task_regs_syscall(regs) else {
        return;
    };
    // Only the syscall's own transfer: not a send made inside another syscall.
    let Some((op_kind, buffer)) = io_shape(op_of(nr)) else {
        return;
    };
    if op_kind != kind || stop_after(stage::REGISTERS) {
        return;
    }
    let Some(sock) = sock_id(sk) else {
        return;
    };
    let fd = args[0] as u32;
    let key = conn_key(tgid, fd);
    let known = unsafe { HTTP_FD_SOCKS.get(key) }.is_some_and(|s| s.same(&sock));
    if stop_after(stage::SOCKET) {
        return;
    }
    if !known && !new_socket(tgid, tid, fd, &sock) {
        return;
    }
    let Some(mut pending) = watched_io(tgid, tid, kind, buffer, args) else {
        return;
    };
    if stop_after(stage::WATCHED) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    pending.start_ns = now;
    // Linux 6.5+ (socket tracepoints) or 5.15+ (fentry: bpf_loop from 5.17; older kernels
    // fall back to the raw tracepoints).
    send_io::<true>(tgid, tid, &pending, sock.sk, rc as u64, now);
}

/// The identity of socket `sk`.
#[inline(always)]
pub(super) fn sock_id(sk: u64) -> Option<SockId> {
    let ports =
        unsafe { bpf_probe_read_kernel((sk + global(&SK_PORTPAIR) as u64) as *const u32) }.ok()?;
    Some(SockId {
        sk,
        ports,
        ..Default::default()
    })
}

/// A socket not seen before on the pair (`tgid`, `fd`): ends what the pair named, and binds the
/// pair to it, as a duplicate of a descriptor already watched, a new TCP connection (announced
/// to user space), or, for any other socket, unwatched. Whether it is watched now.
#[inline(always)]
pub(super) fn new_socket(tgid: u32, tid: u32, fd: u32, sock: &SockId) -> bool {
    let key = conn_key(tgid, fd);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(role) = unsafe { HTTP_CONNS.get(key) }.copied() {
        let _ = HTTP_CONNS.remove(key);
        send_close(role, tgid, tid, fd, false, now);
    }
    let _ = HTTP_FD_SOCKS.insert(key, *sock, BPF_ANY as u64);
    if let Some(first) = unsafe { HTTP_SOCK_FDS.get(sock.sk) }.copied()
        && first != key
        && (first >> 32) as u32 == tgid
        && unsafe { HTTP_FD_SOCKS.get(first) }.is_some_and(|s| s.same(sock))
    {
        // Another descriptor of this process for the same socket (`dup`, Rust's `try_clone`).
        let Some(role) = unsafe { HTTP_CONNS.get(first) }.copied() else {
            return false;
        };
        let _ = HTTP_CONNS.insert(key, role, BPF_ANY as u64);
        send_dup(role, tgid, tid, fd, first as u32, now);
        return true;
    }
    let Some(open) = tcp_peer(sock) else {
        return false;
    };
    let role = match unsafe { HTTP_SOCK_ROLES.get(sock.sk) } {
        Some(established) if established.same(sock) => established.role,
        _ => 0,
    };
    let _ = HTTP_SOCK_FDS.insert(sock.sk, key, BPF_ANY as u64);
    let _ = HTTP_CONNS.insert(key, role, BPF_ANY as u64);
    send_open(tgid, tid, fd, role, &open, now);
    true
}

/// The peer and local port of a process's TCP socket over IPv4 or IPv6; `None` for any other
/// socket.
#[inline(always)]
pub(super) fn tcp_peer(sock: &SockId) -> Option<SockOpen> {
    let sk = sock.sk;
    let socket =
        unsafe { bpf_probe_read_kernel((sk + global(&HTTP_SK_SOCKET) as u64) as *const u64) }
            .ok()?;
    let file =
        unsafe { bpf_probe_read_kernel((socket + global(&HTTP_SOCKET_FILE) as u64) as *const u64) }
            .ok()?;
    if file == 0 {
        return None;
    }
    let protocol =
        unsafe { bpf_probe_read_kernel((sk + global(&HTTP_SK_PROTOCOL) as u64) as *const u16) }
            .ok()?;
    let family =
        unsafe { bpf_probe_read_kernel((sk + global(&SK_FAMILY) as u64) as *const u16) }.ok()?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let mut open = SockOpen {
        peer: ConnectAddr {
            family,
            port: sock.peer_port(),
            ..Default::default()
        },
        local_port: sock.local_port(),
        ..Default::default()
    };
    match family {
        AF_INET => {
            let addr =
                unsafe { bpf_probe_read_kernel((sk + global(&SK_DADDR) as u64) as *const [u8; 4]) }
                    .ok()?;
            open.peer.addr[..4].copy_from_slice(&addr);
        }
        AF_INET6 => {
            open.peer.addr = unsafe {
                bpf_probe_read_kernel((sk + global(&SK_V6_DADDR) as u64) as *const [u8; 16])
            }
            .ok()?;
        }
        _ => return None,
    }
    Some(open)
}

/// `raw_tp/inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`: learns the
/// side of each new connection, and ends a watched one when its process closes it (see
/// [`closed_by_process`]). Runs in softirqs too (a reset, the last ACK): nothing here
/// depends on the current task.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn http_sock_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    match new {
        TCP_ESTABLISHED => {
            let role = match old {
                TCP_SYN_SENT => ROLE_CLIENT,
                TCP_SYN_RECV => ROLE_SERVER,
                _ => return 0,
            };
            if let Some(mut sock) = sock_id(sk) {
                sock.role = role;
                let _ = HTTP_SOCK_ROLES.insert(sk, sock, BPF_ANY as u64);
            }
        }
        _ => {
            if new == TCP_CLOSE {
                let _ = HTTP_SOCK_ROLES.remove(sk);
            }
            if closed_by_process(sk, old, new) {
                sock_closed(sk, new == TCP_CLOSE);
            }
        }
    }
    0
}

/// Whether a state change is the socket's process closing it (`close`, `shutdown(SHUT_RDWR)`,
/// its exit), so that the connection is over. Not a half-close (`shutdown(SHUT_WR)`: the
/// response is still to be read), a reset or the peer's FIN (what arrived can still be read):
/// those leave the connection to its process's later `close`, which `tcp_close_state` shows as
/// a change to the same state, or to the next socket on its descriptor.
#[inline(always)]
pub(super) fn closed_by_process(sk: u64, old: u64, new: u64) -> bool {
    let closing = match new {
        TCP_FIN_WAIT1 | TCP_LAST_ACK => true,
        // Closed with bytes unread: reset at once.
        TCP_CLOSE if old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT => true,
        _ => new == old,
    };
    // `close` and `shutdown(SHUT_RDWR)` shut both ways before the change; a half-close only
    // the sending side (a reset sets both only after it). But a half-close after the peer's
    // FIN (CLOSE_WAIT -> LAST_ACK) has both shut too: what tells it from a close is that
    // `close` empties the receive queue before the change, while a half-closing client may
    // still have the whole response to read.
    closing && shut_both_ways(sk) && nothing_to_read(sk)
}

#[inline(always)]
fn shut_both_ways(sk: u64) -> bool {
    unsafe { bpf_probe_read_kernel((sk + global(&HTTP_SK_SHUTDOWN) as u64) as *const u8) }
        .is_ok_and(|shutdown| shutdown == SHUTDOWN_MASK)
}

/// Whether the socket's receive queue is empty (or its length unknown: offset 0).
#[inline(always)]
fn nothing_to_read(sk: u64) -> bool {
    let offset = global(&HTTP_SK_RCV_QLEN);
    offset == 0
        || unsafe { bpf_probe_read_kernel((sk + offset as u64) as *const u32) }
            .is_ok_and(|queued| queued == 0)
}

/// Socket `sk` is closing (`gone`: closed): the pair that first used it, if it still names it,
/// is over, with every other descriptor of the socket.
#[inline(always)]
pub(super) fn sock_closed(sk: u64, gone: bool) {
    h2::forget_socket(sk);
    let Some(key) = unsafe { HTTP_SOCK_FDS.get(sk) }.copied() else {
        return;
    };
    let Some(sock) = sock_id(sk) else {
        return;
    };
    let names_it = unsafe { HTTP_FD_SOCKS.get(key) }.is_some_and(|s| s.same(&sock));
    // A closed socket's entry is stale whatever its pair names now.
    if names_it || gone {
        let _ = HTTP_SOCK_FDS.remove(sk);
    }
    if !names_it {
        return;
    }
    let _ = HTTP_FD_SOCKS.remove(key);
    if let Some(role) = unsafe { HTTP_CONNS.get(key) }.copied() {
        let _ = HTTP_CONNS.remove(key);
        let now = unsafe { bpf_ktime_get_ns() };
        send_close(role, (key >> 32) as u32, 0, key as u32, true, now);
    }
}
