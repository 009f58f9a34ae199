//! OpenSSL: uprobes on `SSL_read`/`SSL_write` (and `_ex`), `SSL_do_handshake` and `SSL_free`
//! send the plaintext of TLS connections as read/write records of the connection's fd,
//! flagged `IO_TLS_PLAINTEXT`; the syscall mechanisms note which fd each `SSL *` uses.

use super::record::send_plaintext;
use super::tls_socket::{HTTP_TLS_LAST_READ, HTTP_TLS_PENDING};
use super::{HTTP_CONNS, current};
use crate::shared::count;
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use periscope_common::{
    counters,
    http::{HttpPending, KIND_READ, KIND_WRITE, ROLE_MASK, TLS_FD, TlsPending, conn_key},
};

/// The kind of a pending `SSL_do_handshake` (never sent).
pub(super) const KIND_HANDSHAKE: u8 = 0;

/// The socket fd of each `SSL *` seen doing a syscall, so that later calls served from
/// OpenSSL's buffer (no syscall) still name their connection.
#[map]
pub(super) static HTTP_TLS_FDS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// Entry of `SSL_read(ssl, buf, num)`/`SSL_write(ssl, buf, num)` and their `_ex` forms (whose
/// fourth argument receives the byte count).
#[inline(always)]
pub(super) fn ssl_enter(ctx: &ProbeContext, kind: u8, ex: bool) -> u32 {
    let Some((_, tid)) = current() else { return 0 };
    let pending = TlsPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        ssl: ctx.arg(0).unwrap_or(0),
        buf: ctx.arg(1).unwrap_or(0),
        count_ptr: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        fd: u32::MAX,
        kind,
        _pad: [0; 3],
    };
    if HTTP_TLS_PENDING
        .insert(tid, pending, BPF_ANY as u64)
        .is_err()
    {
        count(counters::HTTP_PENDING_FULL);
    }
    0
}

/// `SSL_do_handshake(ssl)`: no data, but its syscalls tell the connection's fd before any read
/// or write (whose first call may be served from OpenSSL's buffer without a syscall).
#[uprobe]
pub fn http_ssl_handshake(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_HANDSHAKE, false)
}

/// `SSL_free(ssl)`: the `SSL *` is gone, and its address may be reused by the next connection's
/// (a remembered fd would then name the wrong socket).
#[uprobe]
pub fn http_ssl_free(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let _ = HTTP_TLS_FDS.remove(ssl);
    }
    0
}

#[uprobe]
pub fn http_ssl_read(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_READ, false)
}

#[uprobe]
pub fn http_ssl_read_ex(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_READ, true)
}

#[uprobe]
pub fn http_ssl_write(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_WRITE, false)
}

#[uprobe]
pub fn http_ssl_write_ex(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_WRITE, true)
}

/// The socket of an OpenSSL call's connection: the one a syscall inside the call used, else
/// the one known for its `SSL *`, else (a read or handshake fed from memory) the TLS socket the
/// thread read last. What is found is remembered for the `SSL *`.
#[inline(always)]
pub(super) fn tls_fd(pending: &TlsPending, tid: u32) -> Option<u32> {
    let fd = if pending.fd != u32::MAX {
        pending.fd
    } else if let Some(fd) = unsafe { HTTP_TLS_FDS.get(pending.ssl) } {
        return Some(*fd);
    } else if pending.kind != KIND_WRITE {
        *unsafe { HTTP_TLS_LAST_READ.get(tid) }?
    } else {
        return None;
    };
    let _ = HTTP_TLS_FDS.insert(pending.ssl, fd, BPF_ANY as u64);
    Some(fd)
}

/// Return of any of the four: sends the plaintext as a read or write record of the connection.
#[uretprobe]
pub fn http_ssl_return(ctx: RetProbeContext) -> u32 {
    let Some((tgid, tid)) = current() else {
        return 0;
    };
    // SAFETY: copied out before the entry is removed.
    let Some(pending) = (unsafe { HTTP_TLS_PENDING.get(tid) }).copied() else {
        return 0;
    };
    let _ = HTTP_TLS_PENDING.remove(tid);
    if pending.kind == KIND_HANDSHAKE {
        let _ = tls_fd(&pending, tid);
        return 0;
    }
    // The functions return int: only the low 32 bits of the register are defined.
    let rc = ctx.ret::<u64>() as u32 as i32;
    let transferred = if pending.count_ptr != 0 {
        if rc != 1 {
            return 0;
        }
        unsafe { bpf_probe_read_user(pending.count_ptr as *const u64) }.unwrap_or(0)
    } else if rc > 0 {
        rc as u64
    } else {
        return 0;
    };
    if transferred == 0 {
        return 0;
    }
    let fd = tls_fd(&pending, tid).unwrap_or(pending.ssl as u32 & !TLS_FD);
    let role = (unsafe { HTTP_CONNS.get(conn_key(tgid, fd)) })
        .copied()
        .unwrap_or(0)
        & ROLE_MASK;
    let io = HttpPending {
        start_ns: pending.start_ns,
        buf: pending.buf,
        buf_len: transferred,
        fd,
        kind: pending.kind,
        role,
        ..Default::default()
    };
    send_plaintext(tgid, tid, &io, transferred, unsafe { bpf_ktime_get_ns() });
    0
}
