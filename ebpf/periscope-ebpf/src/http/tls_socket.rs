//! Which socket each OpenSSL call is on: the OpenSSL probes keep their calls in flight here,
//! and the socket and syscall programs, which see the call's syscalls, note the fd in them (or,
//! for runtimes that feed OpenSSL from memory, the TLS socket the thread read last). Apart from
//! both, so that the record path (which notes) and the probes (which send records) do not
//! depend on each other.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
};
use periscope_common::http::TlsPending;

/// OpenSSL reads and writes in flight, by thread id (uprobe to uretprobe).
#[map]
pub(super) static HTTP_TLS_PENDING: HashMap<u32, TlsPending> = HashMap::with_max_entries(16384, 0);

/// The last TLS-looking socket each thread read (by thread id). Runtimes that feed OpenSSL
/// from memory (Node.js reads the socket itself, then calls `SSL_read` on what it read) make
/// no syscall inside OpenSSL calls: their connection is the socket the thread just read.
#[map]
pub(super) static HTTP_TLS_LAST_READ: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// A syscall on a TLS connection made inside an OpenSSL call: that call's connection.
#[inline(always)]
pub(super) fn note_tls_fd(tid: u32, fd: u32) {
    if let Some(pending) = HTTP_TLS_PENDING.get_ptr_mut(tid) {
        // SAFETY: this thread's own entry.
        unsafe { (*pending).fd = fd };
    }
}
