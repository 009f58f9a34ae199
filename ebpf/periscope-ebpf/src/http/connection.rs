//! A connection's life as the syscall mechanisms see it: `accept` and `connect` start watching
//! a (process, fd) pair, `dup*`/`fcntl` copies follow it, `close` ends it; each is told to user
//! space. (The socket-tracepoint and fentry mechanisms learn the same from sockets: `socket.rs`.)

use super::h2;
use super::record::{send_accept, send_close, send_connect, send_dup};
use super::{AF_INET, AF_INET6, HTTP_CONNS};
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
};
use periscope_common::http::{
    ConnectAddr, HttpPending, ROLE_CLIENT, ROLE_H2, ROLE_SERVER, conn_key,
};

/// An `accept` on `listen_fd` returned `fd` at `now` (callers check it with
/// [`op::exit_matters`]): watch it, and tell user space.
#[inline(always)]
pub(super) fn accepted(tgid: u32, tid: u32, listen_fd: u64, fd: u32, now: u64) {
    let _ = HTTP_CONNS.insert(conn_key(tgid, fd), ROLE_SERVER, BPF_ANY as u64);
    send_accept(tgid, tid, fd, listen_fd as u32, now);
}

/// The peer a `connect` names: sockaddr_in / sockaddr_in6 (family at 0, port in network order
/// at 2, IPv4 at 4, IPv6 at 8); `None` for other families.
#[inline(always)]
pub(super) fn connect_addr(sockaddr: u64) -> Option<ConnectAddr> {
    let head = unsafe { bpf_probe_read_user(sockaddr as *const [u8; 8]) }.ok()?;
    let family = u16::from_le_bytes([head[0], head[1]]);
    let mut addr = ConnectAddr {
        family,
        port: u16::from_be_bytes([head[2], head[3]]),
        ..Default::default()
    };
    match family {
        AF_INET => addr.addr[..4].copy_from_slice(&head[4..8]),
        AF_INET6 => {
            addr.addr = unsafe { bpf_probe_read_user((sockaddr + 8) as *const [u8; 16]) }.ok()?
        }
        _ => return None,
    }
    Some(addr)
}

/// A `connect` (`pending`: its fd, peer and start) succeeded or is under way at `now` (callers
/// check its result with [`op::exit_matters`]): watch the socket and tell user space the peer.
#[inline(always)]
pub(super) fn connected(tgid: u32, tid: u32, pending: &HttpPending, now: u64) {
    let _ = HTTP_CONNS.insert(conn_key(tgid, pending.fd), ROLE_CLIENT, BPF_ANY as u64);
    send_connect(tgid, tid, pending.fd, &pending.addr, now);
}

pub(super) const F_DUPFD: u64 = 0;
pub(super) const F_DUPFD_CLOEXEC: u64 = 1030;

/// A watched connection's `oldfd` (of `role`) was duplicated as `newfd`: watch that one too.
#[inline(always)]
pub(super) fn duplicated(tgid: u32, tid: u32, oldfd: u32, role: u8, newfd: i64) {
    if newfd < 0 || newfd as u32 == oldfd {
        return;
    }
    let newfd = newfd as u32;
    let key = conn_key(tgid, newfd);
    let now = unsafe { bpf_ktime_get_ns() };
    // dup2/dup3 onto a watched connection closes that one first.
    if let Some(replaced) = (unsafe { HTTP_CONNS.get(key) }).copied() {
        send_close(replaced, tgid, tid, newfd, false, now);
    }
    let _ = HTTP_CONNS.insert(key, role, BPF_ANY as u64);
    if role & ROLE_H2 != 0 {
        // Both descriptors walk the one connection's frames (a server may read on one and
        // write on the other).
        h2::alias(key, conn_key(tgid, oldfd));
    }
    send_dup(role, tgid, tid, newfd, oldfd, now);
}

/// `close(fd)` entered: forget the connection (before the number can name another socket).
#[inline(always)]
pub(super) fn closing(tgid: u32, tid: u32, fd: u32) {
    let key = conn_key(tgid, fd);
    let Some(role) = (unsafe { HTTP_CONNS.get(key) }).copied() else {
        return;
    };
    let _ = HTTP_CONNS.remove(key);
    let now = unsafe { bpf_ktime_get_ns() };
    send_close(role, tgid, tid, fd, false, now);
}
