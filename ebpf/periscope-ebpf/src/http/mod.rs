//! HTTP capture from socket and syscall hooks: any language, no code change.
//!
//! Reads and writes on TCP connections (`read`, `recvfrom`, `readv`, `recvmsg`, `write`,
//! `sendto`, `writev`, `sendmsg`, `sendfile`) each send one ring-buffer record with the leading
//! bytes (all of a transfer below `CAPTURE`, the first `CAPTURE_OF_LARGE` of a larger one,
//! copied into a per-CPU scratch buffer) and the last `TAIL` bytes; connections are announced,
//! duplicated and ended by bare records, and a process exit is reported so user space drops
//! what that process had in flight. Parsing and matching happen in user space.
//!
//! Four ways to see them, chosen by user space at run time (best first):
//! - socket tracepoints (`sock_send_length`/`sock_recv_length`, Linux 6.5+, x86_64): programs
//!   run only on socket sends and receives, after them, and read the syscall's fd and buffer
//!   from the task's saved registers. (process, fd) pairs are bound to sockets as they do I/O;
//!   `inet_sock_set_state` tells each connection's side and its end (`socket.rs`).
//! - fentry (5.15+ kernels with BTF trampolines but no socket tracepoints): the same work at the
//!   return of `tcp_sendmsg`/`tcp_recvmsg`/`tcp_sendpage` (`fentry.rs`).
//! - raw syscall tracepoints (`raw_syscalls:sys_enter`/`sys_exit`, x86_64): two programs for
//!   all syscalls, dispatching on a syscall-number -> op table user space fills. `accept`/
//!   `accept4` and `connect` mark (process, fd) pairs as connections in an LRU map, `dup*` and
//!   `fcntl` follow copies, `close` forgets them. Arguments are read from `struct pt_regs` at
//!   offsets BTF gives, so entry keeps no per-syscall map entry: only a write's entry time is
//!   stamped, in an array slot per thread (it starts a client's request and ends a server's
//!   response; a read's record carries its exit time: only when a read returned matters).
//!   Compat (32-bit) syscalls, whose numbers differ, are recognised by their code segment and
//!   ignored.
//! - per-syscall tracepoints (`syscalls:sys_enter_*`/`sys_exit_*`), the last fallback, as the
//!   raw ones but with an entry and exit program per syscall; they share one record layout
//!   (`struct syscall_trace_enter`/`_exit`) whose argument and return-value offsets user space
//!   reads from the format files.
//!
//! One file per concern: `syscalls.rs`, `raw_syscalls.rs`, `socket.rs` and `fentry.rs` hold
//! each mechanism's programs; `regs.rs` reads a syscall from saved registers, `connection.rs`
//! and `process.rs` follow connections and processes, `h2.rs` walks HTTP/2 connections' frames,
//! `tls.rs` the OpenSSL probes
//! (`tls_socket.rs`: which socket each OpenSSL call is on), `gotls.rs` Go's `crypto/tls`, and
//! `record.rs` builds and sends every record. This file: what they all share (the watched
//! connections, a transfer's buffer, the benchmark's cost stages).

mod connection;
mod fentry;
mod gotls;
mod h2;
mod process;
mod raw_syscalls;
mod record;
mod regs;
mod socket;
mod syscalls;
mod tls;
mod tls_socket;

use self::tls_socket::{HTTP_TLS_LAST_READ, note_tls_fd};
use crate::shared::{global, skipped};
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::generated::bpf_probe_read_user as probe_read_user_raw,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap},
};
use periscope_common::{
    SKIP_TGIDS,
    http::{HttpPending, KIND_READ, KIND_WRITE, ROLE_TLS, conn_key},
};

pub(super) const AF_INET6: u16 = 10;

pub(super) const AF_INET: u16 = 2;

/// Periscope's own process and other Periscope processes: never captured (`shared::skipped`).
#[unsafe(no_mangle)]
pub(super) static HTTP_SKIP_TGIDS: [u32; SKIP_TGIDS] = [0; SKIP_TGIDS];

/// Where the socket-tracepoint programs stop, for `bench/http_cost.py` only (0: nowhere, the
/// product). The benchmark removes the steps of the hot path one at a time from the end and
/// reads each step's cost as the difference in run time. A load-time constant: the verifier
/// removes the branches it makes dead, so the product runs none of these checks.
#[unsafe(no_mangle)]
pub(super) static HTTP_COST_STAGE: u32 = 0;

/// The steps of the hot path, in the order the programs take them ([`HTTP_COST_STAGE`]).
pub(super) mod stage {
    /// The task, its registers and the syscall's number and arguments.
    pub const REGISTERS: u32 = 1;
    /// The socket's identity and the (process, fd) -> socket lookup.
    pub const SOCKET: u32 = 2;
    /// The watched-connection lookup and the buffer arguments (iovecs read for vectors).
    pub const WATCHED: u32 = 3;
    /// The clock, the per-CPU record and its header.
    pub const HEADER: u32 = 4;
    /// The copy of the leading bytes from user memory (`record::copy_leading`).
    pub const COPY: u32 = 5;
    /// TLS recognition and the copy of the message's last bytes.
    pub const TAIL: u32 = 6;
    /// Not a stop: every step runs, but the transfers that carry requests (a server's reads, a
    /// client's writes) send no record. What one record per exchange could save at most.
    pub const NO_REQUEST_RECORD: u32 = 7;
}

/// Whether the benchmark stops the programs after `step`.
#[inline(always)]
pub(super) fn stop_after(step: u32) -> bool {
    global(&HTTP_COST_STAGE) == step
}

/// TCP connections being watched: (tgid, fd) -> role. LRU: a connection whose close was never
/// seen (Periscope started later, fd passed to another process) ages out instead of leaking.
#[map]
pub(super) static HTTP_CONNS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// The syscall each thread is in, from entry to exit (only on watched connections, plus every
/// accept/connect). A plain hash (LRU updates cost more on this hot path); an entry of a thread
/// killed inside a syscall is swept by user space.
#[map]
pub(super) static HTTP_PENDING: HashMap<u32, HttpPending> = HashMap::with_max_entries(16384, 0);

/// (tgid, tid) of the current task, or None for Periscope itself.
#[inline(always)]
pub(super) fn current() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if skipped(&HTTP_SKIP_TGIDS, tgid) {
        return None;
    }
    Some((tgid, id as u32))
}

/// How a syscall names its buffer.
#[derive(Clone, Copy)]
pub(super) enum Buffer {
    /// (fd, buf, len): read, write, recvfrom, sendto.
    Plain,
    /// (fd, iov, iovcnt): readv, writev.
    Vector,
    /// (fd, msghdr, flags): recvmsg, sendmsg.
    Message,
    /// sendfile: no user buffer, only a count.
    None,
}

/// A read/write `(fd, buffer args)` of thread `tid`, when `fd` is a watched plaintext
/// connection: what its record needs (the caller sets the start time). Notes TLS connections'
/// fds for the OpenSSL probes.
#[inline(always)]
pub(super) fn watched_io(
    tgid: u32,
    tid: u32,
    kind: u8,
    buffer: Buffer,
    args: [u64; 3],
) -> Option<HttpPending> {
    let fd = args[0] as u32;
    // SAFETY: the value is copied out at once.
    let role = (unsafe { HTTP_CONNS.get(conn_key(tgid, fd)) }).copied()?;
    if role & ROLE_TLS != 0 {
        // Inside an OpenSSL call this is its connection's fd.
        note_tls_fd(tid, fd);
        if kind == KIND_READ {
            let _ = HTTP_TLS_LAST_READ.insert(tid, fd, BPF_ANY as u64);
        }
        return None;
    }
    let mut pending = HttpPending {
        fd,
        kind,
        role,
        ..Default::default()
    };
    match buffer {
        Buffer::Plain => {
            pending.buf = args[1];
            pending.buf_len = args[2];
        }
        Buffer::Vector => vector(&mut pending, args[1], args[2], kind == KIND_WRITE),
        Buffer::Message => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
            let msg = args[1];
            let iov = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.unwrap_or(0);
            let iovlen = unsafe { bpf_probe_read_user((msg + 24) as *const u64) }.unwrap_or(0);
            vector(&mut pending, iov, iovlen, kind == KIND_WRITE);
        }
        Buffer::None => {}
    }
    Some(pending)
}

/// First iovec (the captured bytes) and, for writes, the last one (the tail): one read of user
/// memory for a vector of one or two buffers (a head and a body, as nginx and Node write them),
/// two for a longer one.
#[inline(always)]
pub(super) fn vector(pending: &mut HttpPending, iov: u64, iovcnt: u64, write: bool) {
    if iov == 0 || iovcnt == 0 {
        return;
    }
    pending.iov = iov;
    pending.iov_count = iovcnt;
    // `buf, buf_len, last_buf, last_len` are laid out as `struct iovec[2]` (base at 0, len at 8).
    const {
        assert!(
            core::mem::offset_of!(HttpPending, last_len)
                == core::mem::offset_of!(HttpPending, buf) + 24
        )
    };
    let both = write && iovcnt == 2;
    let dst = core::ptr::addr_of_mut!(pending.buf).cast::<core::ffi::c_void>();
    // SAFETY: `dst` is the 32 bytes from `buf` to `last_len` (above); a failed read zeroes them.
    let rc = unsafe {
        probe_read_user_raw(
            dst,
            if both { 32 } else { 16 },
            iov as *const core::ffi::c_void,
        )
    };
    if rc != 0 || !write || both {
        return;
    }
    if iovcnt == 1 {
        pending.last_buf = pending.buf;
        pending.last_len = pending.buf_len;
        return;
    }
    let last = iov + 16 * ((iovcnt - 1) & 1023);
    if let Ok(last) = unsafe { bpf_probe_read_user(last as *const [u64; 2]) } {
        pending.last_buf = last[0];
        pending.last_len = last[1];
    }
}

/// The syscall `tid` entered, removed from the map (it is over).
#[inline(always)]
pub(super) fn take_pending(tid: u32) -> Option<HttpPending> {
    // SAFETY: the value is copied out before the entry is removed.
    let pending = (unsafe { HTTP_PENDING.get(tid) }).copied()?;
    let _ = HTTP_PENDING.remove(tid);
    Some(pending)
}
