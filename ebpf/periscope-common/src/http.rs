//! HTTP capture: what the syscall programs send to user space through the ring buffer.
//!
//! The kernel side does not parse HTTP. It tracks which (process, fd) pairs are TCP connections
//! (from `accept`/`connect`), and for reads and writes on them sends one event per syscall: the
//! timestamps, the byte count, and at most [`CAPTURE`] leading bytes (enough for a request or
//! status line and the headers that matter), plus the last [`TAIL`] bytes so a chunked body's
//! terminator is seen without copying the body. User space parses and matches.

/// Leading bytes copied per read/write. A power of two: the copy length is masked by it.
pub const CAPTURE: usize = 512;
/// Trailing bytes copied per read/write (the `0\r\n\r\n` of a chunked body).
pub const TAIL: usize = 8;

/// An accepted connection: `fd` is the new socket, `len` the listening fd.
pub const KIND_ACCEPT: u8 = 1;
/// A connected socket: `data` holds [`ConnectAddr`].
pub const KIND_CONNECT: u8 = 2;
/// Bytes received on a tracked connection.
pub const KIND_READ: u8 = 3;
/// Bytes sent on a tracked connection.
pub const KIND_WRITE: u8 = 4;
/// A tracked connection's fd was closed.
pub const KIND_CLOSE: u8 = 5;
/// A process (thread-group leader) exited.
pub const KIND_EXIT: u8 = 6;
/// A tracked connection's fd was duplicated (`dup`, `dup2`, `dup3`, `fcntl(F_DUPFD*)`): `fd` is
/// the new descriptor, `len` the original.
pub const KIND_DUP: u8 = 7;

/// The tracked side of a connection (value of the connection map).
pub const ROLE_SERVER: u8 = 1;
pub const ROLE_CLIENT: u8 = 2;
/// Set on a connection's role when one of its records was lost (ring buffer full), and carried
/// by its next record: user space then restarts that conversation instead of mismatching it.
pub const ROLE_LOST: u8 = 0x80;
/// On a connection's role: its bytes are TLS. The kernel stops capturing its (encrypted)
/// syscalls and only notes the fd for the OpenSSL probes, whose records carry this flag too.
pub const ROLE_TLS: u8 = 0x40;
/// The role bits without the flags.
pub const ROLE_MASK: u8 = 0x3f;
/// Set on the `fd` of records from the OpenSSL probes: plaintext of the connection on that fd
/// (or, when its fd is unknown, of the `SSL *` whose low bits are the rest), kept apart from
/// the connection's encrypted bytes.
pub const TLS_FD: u32 = 0x8000_0000;

/// An OpenSSL read or write in flight, by thread id (uprobe to uretprobe).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsPending {
    pub start_ns: u64,
    /// The `SSL *`.
    pub ssl: u64,
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the byte count is written; 0 for `SSL_read`/`SSL_write`.
    pub count_ptr: u64,
    /// The socket the call read or wrote, when a syscall on a TLS connection showed it.
    pub fd: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// Fixed part of every ring-buffer record; `captured` bytes of data follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpEventHeader {
    /// CLOCK_MONOTONIC at syscall entry.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC at syscall exit.
    pub end_ns: u64,
    /// Bytes transferred (the syscall's return value); the listening fd for [`KIND_ACCEPT`].
    pub len: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub kind: u8,
    pub role: u8,
    /// Leading bytes that follow the header (<= [`CAPTURE`]).
    pub captured: u16,
    /// The last `tail_len` bytes transferred, when they lie beyond the captured ones.
    pub tail: [u8; TAIL],
    pub tail_len: u8,
    pub _pad: [u8; 7],
}

/// A record as the kernel builds it in its per-CPU scratch buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HttpEvent {
    pub header: HttpEventHeader,
    pub data: [u8; CAPTURE],
}

pub const HEADER_SIZE: usize = core::mem::size_of::<HttpEventHeader>();

/// The peer of a `connect`, in the data of a [`KIND_CONNECT`] event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectAddr {
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
}

/// A syscall in flight on a tracked connection, by thread id (entry to exit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpPending {
    pub start_ns: u64,
    /// First buffer (or first iovec's buffer) and its length.
    pub buf: u64,
    pub buf_len: u64,
    /// Last buffer of a vectored write and its length (for the tail).
    pub last_buf: u64,
    pub last_len: u64,
    /// Listening fd (accept).
    pub listen_fd: u64,
    pub addr: ConnectAddr,
    pub fd: u32,
    pub kind: u8,
    pub role: u8,
    pub _pad: [u8; 2],
}

/// The connection map's key: (process, fd).
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}
