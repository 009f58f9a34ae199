//! HTTP capture: what the kernel programs send to user space through the ring buffer.
//!
//! The kernel side does not parse HTTP. It tracks which (process, fd) pairs are TCP connections
//! (from the sockets they do I/O on, or from `accept`/`connect`), and for reads and writes on
//! them sends one [`IoRecord`] per transfer: the timestamps, the byte count, and its leading
//! bytes (all of a transfer below [`CAPTURE`], the first [`CAPTURE_OF_LARGE`] of a larger one:
//! every head of a pipelined read, the head of a body's first transfer), plus the last [`TAIL`]
//! bytes so a chunked body's terminator is seen without copying the body. Connections opening,
//! duplicated and closing and processes exiting have records of their own. Every record starts
//! with a [`RecordHead`]; one struct per kind, no field whose meaning changes with the kind.
//! User space parses and matches.

/// Leading bytes copied of a read/write smaller than this: all of it. A copy is priced per
/// call more than per byte (a helper call costs about 100 ns here whatever it copies), so a
/// transfer this small is taken whole: pipelined requests and responses past the first few
/// hundred bytes of a read, heads with long cookies, and no second copy for its last bytes.
pub const CAPTURE: usize = 4096;
/// Leading bytes copied of a larger transfer (a body's bulk, where the bytes beyond the head are
/// not read): the copy of every transfer of a download stays this size, with the last [`TAIL`]
/// bytes beside it.
pub const CAPTURE_OF_LARGE: usize = 512;
/// Trailing bytes copied per read/write, at most (the `0\r\n\r\n` of a chunked body); fewer when
/// a vectored write's last buffer is shorter.
pub const TAIL: usize = 8;

// Record kinds: the first byte of every record ([`RecordHead::kind`]), each with its own
// struct below, decoded in one place in user space.

/// [`AcceptRecord`]: a server accepted a connection.
pub const KIND_ACCEPT: u8 = 1;
/// [`ConnectRecord`]: a client connected a socket.
pub const KIND_CONNECT: u8 = 2;
/// [`IoRecord`]: bytes received on a watched connection.
pub const KIND_READ: u8 = 3;
/// [`IoRecord`]: bytes sent on a watched connection.
pub const KIND_WRITE: u8 = 4;
/// [`CloseRecord`]: a watched connection's descriptor, or its socket, closed.
pub const KIND_CLOSE: u8 = 5;
/// [`ExitRecord`]: a process (its thread-group leader) exited.
pub const KIND_EXIT: u8 = 6;
/// [`DupRecord`]: a watched connection's descriptor was duplicated (`dup`, `dup2`, `dup3`,
/// `fcntl(F_DUPFD*)`, or a second descriptor of one socket seen by the socket programs).
pub const KIND_DUP: u8 = 7;
/// [`OpenRecord`]: socket programs: the first send or receive of a socket on a (process, fd)
/// pair. Whatever the pair named before is over.
pub const KIND_OPEN: u8 = 8;

/// The side of a connection ([`RecordHead::side`], and the low bits of the kernel's
/// connection map values); 0 when unknown (established before Periscope started).
pub const ROLE_SERVER: u8 = 1;
pub const ROLE_CLIENT: u8 = 2;
/// Kernel-internal, on a connection map value: one of the connection's records was lost (ring
/// buffer full); its next [`IoRecord`] carries [`IO_LOST`], and the flag is cleared.
pub const ROLE_LOST: u8 = 0x80;
/// Kernel-internal, on a connection map value: its bytes are TLS. The kernel stops capturing
/// its (encrypted) syscalls and only notes the fd for the OpenSSL probes.
pub const ROLE_TLS: u8 = 0x40;
/// Kernel-internal, on a connection map value: the connection speaks HTTP/2 (its client preface
/// went through it); its transfers are walked frame by frame ([`H2Walk`]).
pub const ROLE_H2: u8 = 0x20;
/// The side bits of a connection map value, without the flags.
pub const ROLE_MASK: u8 = 0x1f;

/// [`IoRecord::flags`]: a record of this connection was lost before this one: user space
/// restarts the conversation instead of mismatching it.
pub const IO_LOST: u8 = 1;
/// [`IoRecord::flags`]: the plaintext of a TLS connection, from the OpenSSL probes. Its `fd`
/// is the connection's, or, when that is unknown, the low bits of the `SSL *`.
pub const IO_TLS_PLAINTEXT: u8 = 2;
/// [`IoRecord::flags`]: the captured bytes are HTTP/2 frames, walked by the kernel: each frame's
/// 9-byte header, followed by its payload unless [`h2_payload_elided`] (DATA, or too large).
/// Frames run on across a connection's records in each direction (a header or payload may be
/// cut by a record's end and go on in the next); a transfer that only carries elided payload
/// sends no record.
pub const IO_H2: u8 = 4;
/// [`IoRecord::flags`] with [`IO_H2`]: the client preface was the transfer's first 24 bytes (not
/// among the captured ones): the connection's HTTP/2 starts here.
pub const IO_H2_PREFACE: u8 = 8;
/// [`IoRecord::flags`] with [`IO_H2`]: a server's SETTINGS frame was the transfer's first bytes,
/// written before the client preface was read (the server learned the protocol from TLS's
/// ALPN): the connection's HTTP/2 starts here, and the preface will be skipped when read.
pub const IO_H2_SETTINGS: u8 = 32;
/// [`IoRecord::flags`] with [`IO_H2`]: the walk lost its place in this transfer (more frames
/// than [`H2_STEPS`] allows, bytes it could not read): the frames before are good, and the
/// connection's later transfers are captured as plain ones.
pub const IO_H2_CUT: u8 = 16;
/// [`IoRecord::flags`] with [`IO_H2`]: on a connection whose start was not seen (established
/// before Periscope started: its side is unknown), the transfer's first bytes were a HEADERS
/// frame opening a client stream: the connection's HTTP/2 is followed from here, its HPACK
/// tables unknown.
pub const IO_H2_MIDWAY: u8 = 64;
/// User space keys a TLS connection's plaintext apart from its encrypted bytes by this bit on
/// the fd (no descriptor number reaches it).
pub const TLS_FD: u32 = 0x8000_0000;

/// The first bytes of every record: what it is, and whose descriptor it is about.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHead {
    /// One of the `KIND_*` constants.
    pub kind: u8,
    /// [`ROLE_SERVER`], [`ROLE_CLIENT`] or 0 (not known).
    pub side: u8,
    pub _pad: [u8; 2],
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// CLOCK_MONOTONIC when it happened (a transfer: when it returned).
    pub time_ns: u64,
}

/// A read or write on a watched connection ([`KIND_READ`], [`KIND_WRITE`]); `captured`
/// leading bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoRecord {
    pub head: RecordHead,
    /// CLOCK_MONOTONIC at syscall entry where a mechanism sees it (writes on syscall
    /// tracepoints, OpenSSL calls); else the transfer's end, like `head.time_ns` (only when a
    /// read returned matters).
    pub start_ns: u64,
    /// Bytes transferred.
    pub len: u64,
    /// [`IO_LOST`], [`IO_TLS_PLAINTEXT`].
    pub flags: u8,
    /// The last `tail_len` bytes transferred are in `tail`, when they lie beyond the captured
    /// ones.
    pub tail_len: u8,
    /// Leading bytes that follow the record (<= [`CAPTURE`]).
    pub captured: u16,
    pub _pad: [u8; 4],
    pub tail: [u8; TAIL],
}

/// An accepted connection ([`KIND_ACCEPT`]): `head.fd` is the new socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptRecord {
    pub head: RecordHead,
    pub listen_fd: u32,
    pub _pad: u32,
    /// The process name, for processes gone before user space reads /proc.
    pub comm: [u8; COMM],
}

/// A connected socket ([`KIND_CONNECT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectRecord {
    pub head: RecordHead,
    pub peer: ConnectAddr,
    pub comm: [u8; COMM],
}

/// A socket's first transfer on a (process, fd) pair ([`KIND_OPEN`]); `head.side` is the side
/// learned when the connection was established (0 when that was before Periscope started).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenRecord {
    pub head: RecordHead,
    pub open: SockOpen,
    pub comm: [u8; COMM],
}

/// A duplicated descriptor ([`KIND_DUP`]): `head.fd` is the new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DupRecord {
    pub head: RecordHead,
    pub original_fd: u32,
    pub _pad: u32,
}

/// A closed descriptor ([`KIND_CLOSE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseRecord {
    pub head: RecordHead,
    /// 1 when the socket itself closed (socket programs): every descriptor of it is over, not
    /// only `head.fd`.
    pub whole_socket: u8,
    pub _pad: [u8; 7],
}

/// A process exit ([`KIND_EXIT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    pub head: RecordHead,
}

/// Length of a task's comm.
pub const COMM: usize = 16;

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

/// A Go `crypto/tls.(*Conn).Read` or `Write` in flight, from its entry to one of its `RET`s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoTlsPending {
    pub start_ns: u64,
    /// The `*tls.Conn` (the receiver, in RAX at entry).
    pub conn: u64,
    /// `b`'s data pointer (RBX at entry) and length (RCX).
    pub buf: u64,
    pub buf_len: u64,
    pub kind: u8,
    pub _pad: [u8; 7],
}

/// What a [`GoTlsPending`] is keyed by: a call that blocks parks its goroutine, which may resume
/// on another thread, so the key is the goroutine (the `g` pointer, R14 in Go's register ABI),
/// not the thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTlsKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goroutine: u64,
}

/// The length of an HTTP/2 frame header, and of the client preface.
pub const H2_FRAME_HEADER: usize = 9;
pub const H2_PREFACE_LEN: u64 = 24;
/// The HTTP/2 frame type DATA.
pub const H2_DATA: u8 = 0;
/// Frames whose payload is longer than this are sent without it (the largest header block
/// the user-space decoder takes is this size too).
pub const H2_MAX_KEPT: u32 = 16384;
/// Bytes of frames per HTTP/2 record (a power of two); a walk that fills it sends it and goes on.
pub const H2_CAPTURE: usize = 4096;
/// Bytes of a payload copied per step of the walk (a power of two).
pub const H2_CHUNK: usize = 512;
/// Steps of the walk per transfer. A step takes the next iovec when the current one is done,
/// reads a frame header when one is due, and skips or copies what the buffer holds of its
/// payload (copies at most [`H2_CHUNK`]): a frame inside one buffer takes one step, a frame
/// whose header and payload are iovecs of their own two. A transfer that needs more is cut
/// ([`IO_H2_CUT`]).
pub const H2_STEPS: u32 = 64;

/// Whether a frame's payload is left out of an HTTP/2 record: DATA (the body), and payloads
/// over [`H2_MAX_KEPT`].
#[inline(always)]
pub const fn h2_payload_elided(kind: u8, len: u32) -> bool {
    kind == H2_DATA || len > H2_MAX_KEPT
}

/// Where one direction of an HTTP/2 connection is, between its transfers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct H2Direction {
    /// Payload bytes of the current frame still to come.
    pub remaining: u32,
    /// Whether they are copied (else skipped).
    pub keep: u8,
    /// Bytes of the next frame header already seen (a transfer ended inside it).
    pub header_len: u8,
    pub _pad: [u8; 2],
    /// Those bytes (32 rather than 9: the verifier bounds a copy's offset and length apart).
    pub header: [u8; 32],
}

/// An HTTP/2 connection's walk: one [`H2Direction`] per direction, by the record kind of its
/// transfers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct H2Walk {
    pub sent: H2Direction,
    pub received: H2Direction,
}

/// A transfer's record as the kernel builds it in its per-CPU scratch buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoEvent {
    pub record: IoRecord,
    pub data: [u8; CAPTURE],
}

/// Size of [`IoRecord`]: where the captured bytes start.
pub const IO_RECORD_SIZE: usize = core::mem::size_of::<IoRecord>();

/// The peer of a connection ([`ConnectRecord`], [`SockOpen`]).
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

/// A socket's peer and local port ([`OpenRecord`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOpen {
    /// The peer.
    pub peer: ConnectAddr,
    /// The local port (host byte order).
    pub local_port: u16,
    pub _pad: [u8; 6],
}

/// A socket as the socket-tracepoint programs know it: its kernel address and its port pair
/// (the slab hands a freed socket's address to the next one at once; the ports differ), and
/// in the map of established connections, its side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockId {
    pub sk: u64,
    /// `skc_portpair`: the peer port (network order) and the local port.
    pub ports: u32,
    pub role: u8,
    pub _pad: [u8; 3],
}

/// The peer-port and local-port halves of [`SockId::ports`] (little-endian: the peer port's two
/// bytes come first in `skc_portpair`).
pub const PEER_PORT: u32 = 0x0000_ffff;
pub const LOCAL_PORT: u32 = 0xffff_0000;

impl SockId {
    /// Whether `now`, read from a socket now, is the socket remembered as `self` (the side is
    /// not part of the identity). Once a socket is closed (a reset, the peer's FIN after a
    /// half-close) its ephemeral local port is released and reads 0, while its process may
    /// still read what arrived: the peer port then tells it.
    #[inline(always)]
    pub const fn same(&self, now: &SockId) -> bool {
        self.sk == now.sk
            && (self.ports == now.ports
                || (now.ports & LOCAL_PORT == 0 && self.ports & PEER_PORT == now.ports & PEER_PORT))
    }

    /// The peer port, in host byte order.
    #[inline(always)]
    pub const fn peer_port(&self) -> u16 {
        u16::from_be((self.ports & PEER_PORT) as u16)
    }

    /// The local port (the kernel keeps it in host byte order).
    #[inline(always)]
    pub const fn local_port(&self) -> u16 {
        (self.ports >> 16) as u16
    }
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
    /// A vectored transfer's iovec array and count (0: one buffer, `buf`).
    pub iov: u64,
    pub iov_count: u64,
}

/// What a syscall is to the raw tracepoint programs (`raw_syscalls:sys_enter`/`sys_exit` see
/// every syscall; user space fills the syscall-number -> op table for its architecture).
pub mod op {
    /// Not one of ours.
    pub const NONE: u8 = 0;
    /// `(fd, buf, len)` reads: read, recvfrom.
    pub const READ: u8 = 1;
    /// `(fd, iov, iovcnt)`: readv.
    pub const READV: u8 = 2;
    /// `(fd, msghdr, flags)`: recvmsg.
    pub const RECVMSG: u8 = 3;
    /// `(fd, buf, len)` writes: write, sendto.
    pub const WRITE: u8 = 4;
    pub const WRITEV: u8 = 5;
    pub const SENDMSG: u8 = 6;
    /// sendfile: a count, no user buffer.
    pub const SENDFILE: u8 = 7;
    /// accept, accept4: `(listen_fd, ...)`, returning the new fd.
    pub const ACCEPT: u8 = 8;
    /// connect: `(fd, sockaddr, len)`.
    pub const CONNECT: u8 = 9;
    /// close: `(fd)`, seen at entry (at exit the number may already name a new socket).
    pub const CLOSE: u8 = 10;
    /// dup, dup2, dup3: `(oldfd, ...)`, returning the new fd.
    pub const DUP: u8 = 11;
    /// fcntl: `(fd, cmd, ...)`, a duplication for F_DUPFD/F_DUPFD_CLOEXEC.
    pub const FCNTL: u8 = 12;

    /// Whether the entry time of `op` matters (a write's start is a client request's start and
    /// a server response's end).
    #[inline(always)]
    pub const fn is_write(op: u8) -> bool {
        matches!(op, WRITE | WRITEV | SENDMSG | SENDFILE)
    }

    /// Whether the exit of `op` returning `rc` can change anything: a read or write that moved
    /// bytes, an accept or duplication that made a descriptor, a connect that succeeded or is
    /// in progress. Checked first on every syscall exit, before any register is read: most
    /// exits of busy servers are `EAGAIN` reads and syscalls that are not ours.
    #[inline(always)]
    pub const fn exit_matters(op: u8, rc: i64) -> bool {
        match op {
            READ | READV | RECVMSG | WRITE | WRITEV | SENDMSG | SENDFILE => rc > 0,
            ACCEPT | DUP | FCNTL => rc >= 0,
            CONNECT => rc == 0 || rc == -super::EINPROGRESS,
            _ => false,
        }
    }
}

/// `EINPROGRESS`: a non-blocking connect under way.
pub const EINPROGRESS: i64 = 115;

/// Size of the syscall-number -> op table (x86_64 numbers are below 512).
pub const SYSCALL_OPS: u32 = 512;
/// Slots of the write-entry stamp table, indexed by the low bits of the thread id.
pub const WRITE_STAMPS: u32 = 4096;
/// Bits of a stamp holding the entry time (ns, modulo 2^54 = 208 days); the 10 bits above hold
/// the thread id's bits beyond the slot index (thread ids are below 2^22).
pub const STAMP_TIME_BITS: u32 = 54;
/// Bytes of `struct pt_regs` the raw syscall programs read at once (the arguments, the syscall
/// number and the code segment, wherever BTF says they are inside it).
pub const REGS_WINDOW: usize = 64;

/// A write's entry stamp for thread `tid`: one u64, so that two threads sharing a slot never
/// leave a torn (thread, time) pair.
#[inline(always)]
pub const fn write_stamp(tid: u32, now_ns: u64) -> u64 {
    ((tid as u64 >> 12) << STAMP_TIME_BITS) | (now_ns & ((1 << STAMP_TIME_BITS) - 1))
}

/// The entry time a stamp holds for `tid`, seen at its exit at `now_ns`; `None` when the slot
/// holds another thread's stamp.
#[inline(always)]
pub const fn stamp_start(stamp: u64, tid: u32, now_ns: u64) -> Option<u64> {
    if stamp >> STAMP_TIME_BITS != tid as u64 >> 12 || stamp == 0 {
        return None;
    }
    let mask = (1u64 << STAMP_TIME_BITS) - 1;
    Some(now_ns - (now_ns.wrapping_sub(stamp) & mask))
}

/// Whether a record of `size` bytes, sent by a CPU that had sent `sent` bytes before it, should
/// wake user space: when it takes that CPU's count across a multiple of `step`. So the reader
/// is woken once per `step` bytes a CPU sends, however many records that is (a wakeup is an
/// IPI and a scheduler wakeup, dearer than a record; a timer drains what is below a step). A
/// per-CPU count rather than the buffer's unread bytes: asking the ring buffer reads the
/// position the reader writes after every record, a cache line the CPUs fight over.
#[inline(always)]
pub const fn crosses_wakeup_step(sent: u64, size: u64, step: u64) -> bool {
    step != 0 && (sent + size) / step > sent / step
}

/// The connection map's key: (process, fd).
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip_for_its_own_thread() {
        let start = 5_000_000_123_u64;
        let tid = 4_194_303; // the largest pid_max allows: all 22 bits set
        let stamp = write_stamp(tid, start);
        assert_eq!(stamp_start(stamp, tid, start + 42_000), Some(start));
        assert_eq!(stamp_start(stamp, tid, start), Some(start));
    }

    #[test]
    fn stamp_of_another_thread_in_the_slot_is_refused() {
        let stamp = write_stamp(4096 + 7, 1_000);
        // Same slot (low 12 bits 7), another thread: no start rather than a wrong one.
        assert_eq!(stamp_start(stamp, 7, 2_000), None);
        assert_eq!(stamp_start(stamp, 2 * 4096 + 7, 2_000), None);
        assert_eq!(stamp_start(0, 7, 2_000), None, "an empty slot");
    }

    #[test]
    fn stamp_survives_the_time_field_wrapping() {
        let wrap = 1u64 << STAMP_TIME_BITS;
        let start = 3 * wrap - 10; // just before the 54-bit field wraps
        let stamp = write_stamp(9, start);
        assert_eq!(stamp_start(stamp, 9, 3 * wrap + 25), Some(start));
    }

    #[test]
    fn wakeups_once_per_step_not_once_per_record() {
        let step = 512 * 1024;
        let record = 600;
        let mut sent = 0;
        let mut wakeups = 0;
        // Four steps' worth of records from one CPU.
        while sent < 4 * step {
            wakeups += u64::from(crosses_wakeup_step(sent, record, step));
            sent += record;
        }
        assert_eq!(wakeups, 4);
        assert!(
            !crosses_wakeup_step(0, record, step),
            "small batches: the timer drains them"
        );
        assert!(crosses_wakeup_step(step - 1, 1, step));
        assert!(
            !crosses_wakeup_step(step, 1, step),
            "just past a step: already woken"
        );
        assert!(!crosses_wakeup_step(10, record, 0), "no step: never");
    }

    #[test]
    fn a_socket_is_itself_after_its_local_port_is_released() {
        let remembered = SockId {
            sk: 0xffff_8880_0000_1000,
            ports: (40000u32 << 16) | u32::from(8080u16.to_be()),
            ..Default::default()
        };
        let released = SockId {
            ports: remembered.ports & PEER_PORT,
            ..remembered
        };
        assert_eq!(remembered.peer_port(), 8080);
        assert_eq!(remembered.local_port(), 40000);
        assert!(remembered.same(&remembered));
        assert!(remembered.same(&released), "closed: local port reads 0");
        let reused = SockId {
            ports: (40001u32 << 16) | (remembered.ports & PEER_PORT),
            ..remembered
        };
        assert!(
            !remembered.same(&reused),
            "the address reused by another socket"
        );
        let elsewhere = SockId {
            sk: remembered.sk + 0x800,
            ..remembered
        };
        assert!(!remembered.same(&elsewhere));
    }

    #[test]
    fn only_writes_need_their_entry_time() {
        for write in [op::WRITE, op::WRITEV, op::SENDMSG, op::SENDFILE] {
            assert!(op::is_write(write));
        }
        for other in [
            op::NONE,
            op::READ,
            op::READV,
            op::RECVMSG,
            op::ACCEPT,
            op::CLOSE,
        ] {
            assert!(!op::is_write(other));
        }
    }

    #[test]
    fn only_exits_that_made_or_moved_something_are_looked_at() {
        const EAGAIN: i64 = -11;
        for io in [op::READ, op::RECVMSG, op::WRITEV, op::SENDFILE] {
            assert!(op::exit_matters(io, 1));
            assert!(!op::exit_matters(io, 0), "EOF moves nothing");
            assert!(!op::exit_matters(io, EAGAIN));
        }
        assert!(op::exit_matters(op::ACCEPT, 0), "fd 0 is a descriptor");
        assert!(!op::exit_matters(op::ACCEPT, EAGAIN));
        assert!(op::exit_matters(op::DUP, 7));
        assert!(op::exit_matters(op::CONNECT, 0));
        assert!(op::exit_matters(op::CONNECT, -EINPROGRESS));
        assert!(!op::exit_matters(op::CONNECT, -111), "ECONNREFUSED");
        assert!(!op::exit_matters(op::CLOSE, 0), "close is handled at entry");
        assert!(!op::exit_matters(op::NONE, 5));
    }
}
