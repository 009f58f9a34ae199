//! HTTP capture from tracepoints: any language, no code change, no kprobes needed.
//!
//! Reads and writes on TCP connections (`read`, `recvfrom`, `readv`, `recvmsg`, `write`,
//! `sendto`, `writev`, `sendmsg`, `sendfile`) each send one ring-buffer record with the leading
//! bytes (at most `CAPTURE`, copied into a per-CPU scratch buffer) and the last `TAIL` bytes;
//! connections are announced, duplicated and ended by bare records, and a process exit is
//! reported so user space drops what that process had in flight. Parsing and matching happen
//! in user space.
//!
//! Three ways to see them, chosen by user space at run time (best first):
//! - socket tracepoints (`sock_send_length`/`sock_recv_length`, Linux 6.5+, x86_64): programs
//!   run only on socket sends and receives, after them, and read the syscall's fd and buffer
//!   from the task's saved registers. (process, fd) pairs are bound to sockets as they do I/O;
//!   `inet_sock_set_state` tells each connection's side and its end. See "Socket tracepoints".
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

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_EXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_probe_read_user as probe_read_user_raw, bpf_task_pt_regs,
        },
    },
    macros::{fexit, map, raw_tracepoint, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{
        FExitContext, ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext,
    },
};
use periscope_common::{
    SKIP_TGIDS, counters,
    http::{
        CAPTURE, CLOSE_SOCKET, ConnectAddr, HEADER_SIZE, HttpEvent, HttpEventHeader, HttpPending,
        KIND_ACCEPT, KIND_CLOSE, KIND_CONNECT, KIND_DUP, KIND_EXIT, KIND_OPEN, KIND_READ,
        KIND_WRITE, REGS_WINDOW, ROLE_CLIENT, ROLE_LOST, ROLE_MASK, ROLE_SERVER, ROLE_TLS,
        SYSCALL_OPS, SockId, SockOpen, TAIL, TLS_FD, TlsPending, WRITE_STAMPS, conn_key,
        crosses_wakeup_step, op, stamp_start, write_stamp,
    },
};

use crate::{
    shared::{bytes_at, count, global, ring_flags, skipped},
    sock::{SK_DADDR, SK_FAMILY, SK_PORTPAIR, SK_V6_DADDR},
};

/// Offset of the first syscall argument in a `sys_enter_*` record.
#[unsafe(no_mangle)]
static HTTP_ARGS_OFFSET: u32 = 16;
/// Offset of the return value in a `sys_exit_*` record.
#[unsafe(no_mangle)]
static HTTP_RET_OFFSET: u32 = 16;
/// Periscope's own process and other Periscope processes: never captured (`shared::skipped`).
#[unsafe(no_mangle)]
static HTTP_SKIP_TGIDS: [u32; SKIP_TGIDS] = [0; SKIP_TGIDS];
/// Offset of `tgid` in `struct task_struct`, from BTF (0: unknown, forks are not followed).
#[unsafe(no_mangle)]
static HTTP_TASK_TGID: u32 = 0;
/// Records wake user space up only when the bytes a CPU sent cross a multiple of this (user
/// space also drains on a short timer; see [`crosses_wakeup_step`]). A wakeup on every record
/// once the unread bytes passed a threshold, as before, cost ~10% of the exit program's time
/// under wrk: the buffer stays above any threshold between drains, and each wakeup is an IPI
/// (on a VM, a trap to the hypervisor).
#[unsafe(no_mangle)]
static HTTP_WAKEUP_BYTES: u32 = 65536;

/// Where the socket-tracepoint programs stop, for `bench/http_cost.py` only (0: nowhere, the
/// product). The benchmark removes the steps of the hot path one at a time from the end and
/// reads each step's cost as the difference in run time. A load-time constant: the verifier
/// removes the branches it makes dead, so the product runs none of these checks.
#[unsafe(no_mangle)]
static HTTP_COST_STAGE: u32 = 0;

/// The steps of the hot path, in the order the programs take them ([`HTTP_COST_STAGE`]).
mod stage {
    /// The task, its registers and the syscall's number and arguments.
    pub const REGISTERS: u32 = 1;
    /// The socket's identity and the (process, fd) -> socket lookup.
    pub const SOCKET: u32 = 2;
    /// The watched-connection lookup and the buffer arguments (iovecs read for vectors).
    pub const WATCHED: u32 = 3;
    /// The clock, the per-CPU record and its header.
    pub const HEADER: u32 = 4;
    /// The copy of up to `CAPTURE` leading bytes from user memory.
    pub const COPY: u32 = 5;
    /// TLS recognition and the copy of the message's last bytes.
    pub const TAIL: u32 = 6;
}

/// Whether the benchmark stops the programs after `step`.
#[inline(always)]
fn stop_after(step: u32) -> bool {
    global(&HTTP_COST_STAGE) == step
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// The kind of a pending `SSL_do_handshake` (never sent).
const KIND_HANDSHAKE: u8 = 0;
/// Length of a task's comm.
const COMM: usize = 16;

/// TCP connections being watched: (tgid, fd) -> role. LRU: a connection whose close was never
/// seen (Periscope started later, fd passed to another process) ages out instead of leaking.
#[map]
static HTTP_CONNS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// The syscall each thread is in, from entry to exit (only on watched connections, plus every
/// accept/connect). A plain hash (LRU updates cost more on this hot path); an entry of a thread
/// killed inside a syscall is swept by user space.
#[map]
static HTTP_PENDING: HashMap<u32, HttpPending> = HashMap::with_max_entries(16384, 0);

/// OpenSSL reads and writes in flight, by thread id (uprobe to uretprobe).
#[map]
static HTTP_TLS_PENDING: HashMap<u32, TlsPending> = HashMap::with_max_entries(16384, 0);

/// The socket fd of each `SSL *` seen doing a syscall, so that later calls served from
/// OpenSSL's buffer (no syscall) still name their connection.
#[map]
static HTTP_TLS_FDS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// The last TLS-looking socket each thread read (by thread id). Runtimes that feed OpenSSL
/// from memory (Node.js reads the socket itself, then calls `SSL_read` on what it read) make
/// no syscall inside OpenSSL calls: their connection is the socket the thread just read.
#[map]
static HTTP_TLS_LAST_READ: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Processes forked without exec since: child tgid -> the tgid that forked it (a copy of whose
/// program the child runs). User space reads it when it first meets a process, so that a
/// fork-per-connection server's children belong to the server's service instance. Deleted at
/// exec, not at exit (the children of such servers are often gone before their records are
/// read); LRU: the entries are read within seconds of the fork, or never.
#[map]
static HTTP_FORKED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Where records are built before they go to the ring buffer (too big for the BPF stack).
#[map]
static HTTP_SCRATCH: PerCpuArray<HttpEvent> = PerCpuArray::with_max_entries(1, 0);

/// Records to user space; its size is set at load time.
#[map]
static HTTP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// 1 while user space sleeps until the next record (see `shared::ring_flags`).
#[map]
static HTTP_READER_PARKED: Array<u32> = Array::with_max_entries(1, 0);

/// Bytes of records each CPU has sent (wakeups: [`crosses_wakeup_step`]).
#[map]
static HTTP_SENT_BYTES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn arg(ctx: &TracePointContext, index: u32) -> u64 {
    let offset = global(&HTTP_ARGS_OFFSET) + 8 * index;
    // SAFETY: syscall arguments are 8-byte fields at this offset of every sys_enter record.
    unsafe { ctx.read_at::<u64>(offset as usize) }.unwrap_or(0)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: the return value is an 8-byte field at this offset of every sys_exit record.
    unsafe { ctx.read_at::<i64>(global(&HTTP_RET_OFFSET) as usize) }.unwrap_or(-1)
}

/// (tgid, tid) of the current task, or None for Periscope itself.
#[inline(always)]
fn current() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if skipped(&HTTP_SKIP_TGIDS, tgid) {
        return None;
    }
    Some((tgid, id as u32))
}

/// How a syscall names its buffer.
#[derive(Clone, Copy)]
enum Buffer {
    /// (fd, buf, len): read, write, recvfrom, sendto.
    Plain,
    /// (fd, iov, iovcnt): readv, writev.
    Vector,
    /// (fd, msghdr, flags): recvmsg, sendmsg.
    Message,
    /// sendfile: no user buffer, only a count.
    None,
}

/// Records the entry of a read/write on a watched connection. The clock is read once the fd is
/// known to be watched (it costs 40-80 ns on a VM). A read's record carries its exit time, as on
/// raw tracepoints (only when a read returned matters), but its entry is still stamped: the
/// sweeper removes entries older than a minute as those of threads killed inside a syscall.
#[inline(always)]
fn enter_io(ctx: &TracePointContext, kind: u8, buffer: Buffer) {
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

/// A read/write `(fd, buffer args)` of thread `tid`, when `fd` is a watched plaintext
/// connection: what its record needs (the caller sets the start time). Notes TLS connections'
/// fds for the OpenSSL probes.
#[inline(always)]
fn watched_io(
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

/// First iovec (the captured bytes) and, for writes, the last one (the tail).
#[inline(always)]
fn vector(pending: &mut HttpPending, iov: u64, iovcnt: u64, write: bool) {
    if iov == 0 || iovcnt == 0 {
        return;
    }
    // struct iovec: base at 0, len at 8.
    if let Ok(first) = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) } {
        pending.buf = first[0];
        pending.buf_len = first[1];
    }
    if write {
        let last = iov + 16 * ((iovcnt - 1) & 1023);
        if let Ok(last) = unsafe { bpf_probe_read_user(last as *const [u64; 2]) } {
            pending.last_buf = last[0];
            pending.last_len = last[1];
        }
    }
}

/// The syscall `tid` entered, removed from the map (it is over).
#[inline(always)]
fn take_pending(tid: u32) -> Option<HttpPending> {
    // SAFETY: the value is copied out before the entry is removed.
    let pending = (unsafe { HTTP_PENDING.get(tid) }).copied()?;
    let _ = HTTP_PENDING.remove(tid);
    Some(pending)
}

/// This CPU's scratch record. Only programs of a process's own context use it (syscalls,
/// socket sends and receives, uprobes), and these do not interrupt one another on a CPU; the
/// socket-state program, which also runs in softirqs, builds its records on the stack.
#[inline(always)]
fn scratch() -> Option<&'static mut HttpEvent> {
    let event = HTTP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value; programs do not migrate while running, and one program uses it
    // at a time on a CPU (see above).
    Some(unsafe { &mut *event })
}

/// Sends the record of a finished read/write (tracepoints: its entry was recorded).
#[inline(always)]
fn exit_io(ctx: &TracePointContext) {
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
    send_io(tgid, tid, &pending, rc as u64, now);
}

/// Sends the record of a read/write on a watched connection that moved `transferred` (> 0)
/// bytes, returning at `now` (callers check the result with [`op::exit_matters`]).
#[inline(always)]
fn send_io(tgid: u32, tid: u32, pending: &HttpPending, transferred: u64, now: u64) {
    let Some(event) = scratch() else {
        return;
    };
    fill_header(event, pending, tgid, tid, transferred, now);
    if stop_after(stage::HEADER) {
        return;
    }
    let mut want = transferred;
    if pending.buf_len < want {
        want = pending.buf_len;
    }
    let captured = copy_leading(event, pending.buf, want);
    if stop_after(stage::COPY) {
        return;
    }
    let mut role = pending.role;
    // A TLS handshake record (22, version 3.x): from now on this connection's bytes are
    // encrypted; stop capturing them (the OpenSSL probes send the plaintext). Flagged here, on
    // this very connection, rather than by user space later, when the fd may name another.
    let tls = captured >= 2 && matches!(event.data[0], 22 | 23) && event.data[1] == 3;
    if tls && event.data[0] == 22 {
        role |= ROLE_TLS;
    }
    if tls {
        // Inside an OpenSSL call this is its connection's fd, before user space has even seen
        // that the connection is TLS. Only TLS bytes need the lookup: plaintext skips it.
        note_tls_fd(tid, pending.fd);
    }
    // The socket a runtime feeding OpenSSL from memory is about to decrypt (see HTTP_TLS_LAST_READ).
    if pending.kind == KIND_READ && captured > 0 && matches!(event.data[0], 22 | 23) {
        let _ = HTTP_TLS_LAST_READ.insert(tid, pending.fd, BPF_ANY as u64);
    }
    copy_tail(event, pending, transferred, captured);
    if stop_after(stage::TAIL) {
        return;
    }
    let sent = submit(event, captured);
    // Remember a loss on the connection until one of its records gets through.
    let role = if sent {
        role & !ROLE_LOST
    } else {
        role | ROLE_LOST
    };
    if role != pending.role {
        let _ = HTTP_CONNS.insert(conn_key(tgid, pending.fd), role, BPF_EXIST as u64);
    }
}

#[inline(always)]
fn fill_header(
    event: &mut HttpEvent,
    pending: &HttpPending,
    tgid: u32,
    tid: u32,
    len: u64,
    end_ns: u64,
) {
    let h = &mut event.header;
    h.start_ns = pending.start_ns;
    h.end_ns = end_ns;
    h.len = len;
    h.tgid = tgid;
    h.tid = tid;
    h.fd = pending.fd;
    h.kind = pending.kind;
    h.role = pending.role;
    h.captured = 0;
    h.tail_len = 0;
}

/// Copies up to CAPTURE bytes from `src`; returns how many.
#[inline(always)]
fn copy_leading(event: &mut HttpEvent, src: u64, want: u64) -> u32 {
    if src == 0 || want == 0 {
        return 0;
    }
    let n = if want > CAPTURE as u64 {
        CAPTURE as u32
    } else {
        want as u32
    };
    // SAFETY: n <= CAPTURE, the size of the destination.
    let rc = unsafe {
        probe_read_user_raw(
            event.data.as_mut_ptr().cast(),
            n,
            src as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return 0;
    }
    event.header.captured = n as u16;
    n
}

/// The last TAIL bytes, when they were not among the captured ones.
#[inline(always)]
fn copy_tail(event: &mut HttpEvent, pending: &HttpPending, transferred: u64, captured: u32) {
    if transferred <= captured as u64 {
        return;
    }
    let (buf, end) = if pending.last_buf != 0 {
        (pending.last_buf, pending.last_len)
    } else if transferred <= pending.buf_len {
        (pending.buf, transferred)
    } else {
        return;
    };
    if buf == 0 || end < TAIL as u64 {
        return;
    }
    if let Ok(tail) = unsafe { bpf_probe_read_user((buf + end - TAIL as u64) as *const [u8; TAIL]) }
    {
        event.header.tail = tail;
        event.header.tail_len = TAIL as u8;
    }
}

/// Sends the record; false when the ring buffer was full (counted).
#[inline(always)]
fn submit(event: &HttpEvent, captured: u32) -> bool {
    let mut n = captured as usize;
    if n > CAPTURE {
        n = CAPTURE;
    }
    // SAFETY: HEADER_SIZE + n <= size_of::<HttpEvent>().
    let bytes = unsafe {
        core::slice::from_raw_parts((event as *const HttpEvent).cast::<u8>(), HEADER_SIZE + n)
    };
    output(bytes)
}

/// Puts a record in the ring buffer, waking the reader once per step of this CPU's bytes;
/// false when the buffer was full (counted).
#[inline(always)]
fn output(bytes: &[u8]) -> bool {
    let size = bytes.len() as u64;
    let flags = match HTTP_SENT_BYTES.get_ptr_mut(0) {
        Some(sent) => {
            // SAFETY: this CPU's counter; a program runs to its end on one CPU.
            let before = unsafe { *sent };
            unsafe { *sent = before + size };
            wakeup_flag(before, size, global(&HTTP_WAKEUP_BYTES) as u64)
        }
        None => BPF_RB_NO_WAKEUP,
    };
    let flags = ring_flags(&HTTP_READER_PARKED, flags as u64);
    if HTTP_EVENTS.output::<[u8]>(bytes, flags).is_err() {
        count(counters::HTTP_EVENTS_LOST);
        return false;
    }
    true
}

/// The ring-buffer flag of a record: a wakeup only when it crosses a step
/// ([`crosses_wakeup_step`]).
#[inline(always)]
fn wakeup_flag(sent: u64, size: u64, step: u64) -> u32 {
    if crosses_wakeup_step(sent, size, step) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// A record without payload (dup, close, exit, open's header) of something that happened at
/// `now`. Built on the stack, not in the per-CPU scratch record: the socket-state program runs
/// in softirqs too, which may interrupt a program filling that record on the same CPU.
#[inline(always)]
fn send_bare(kind: u8, role: u8, tgid: u32, tid: u32, fd: u32, len: u64, now: u64) {
    let header = HttpEventHeader {
        start_ns: now,
        end_ns: now,
        len,
        tgid,
        tid,
        fd,
        kind,
        role,
        ..Default::default()
    };
    // SAFETY: HttpEventHeader is plain integers.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (&header as *const HttpEventHeader).cast::<u8>(),
            HEADER_SIZE,
        )
    };
    output(bytes);
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
        accepted(
            tgid,
            tid,
            pending.listen_fd,
            fd as u32,
            pending.start_ns,
            now,
        );
    }
    0
}

/// An `accept` on `listen_fd` (entered at `start_ns`) returned `fd` at `now` (callers check it
/// with [`op::exit_matters`]): watch it, and tell user space.
#[inline(always)]
fn accepted(tgid: u32, tid: u32, listen_fd: u64, fd: u32, start_ns: u64, now: u64) {
    let _ = HTTP_CONNS.insert(conn_key(tgid, fd), ROLE_SERVER, BPF_ANY as u64);
    let Some(event) = scratch() else {
        return;
    };
    let accepted = HttpPending {
        start_ns,
        fd,
        kind: KIND_ACCEPT,
        role: ROLE_SERVER,
        ..Default::default()
    };
    fill_header(event, &accepted, tgid, tid, listen_fd, now);
    submit_with_comm(event, &());
}

/// Sends `event` with `fixed` (plain bytes) as its data, then the process name (for processes
/// gone before user space reads /proc).
#[inline(always)]
fn submit_with_comm<T: Copy>(event: &mut HttpEvent, fixed: &T) {
    let size = core::mem::size_of::<T>();
    if size + COMM > CAPTURE {
        return;
    }
    // SAFETY: T is plain bytes, and size + COMM <= CAPTURE (checked above; constant per T).
    unsafe {
        core::ptr::copy_nonoverlapping(
            (fixed as *const T).cast::<u8>(),
            event.data.as_mut_ptr(),
            size,
        )
    };
    let comm = bpf_get_current_comm().unwrap_or_default();
    event.data[size..size + COMM].copy_from_slice(&comm);
    event.header.captured = (size + COMM) as u16;
    submit(event, (size + COMM) as u32);
}

/// The peer a `connect` names: sockaddr_in / sockaddr_in6 (family at 0, port in network order
/// at 2, IPv4 at 4, IPv6 at 8); `None` for other families.
#[inline(always)]
fn connect_addr(sockaddr: u64) -> Option<ConnectAddr> {
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

/// A `connect` (`pending`: its fd, peer and start) succeeded or is under way at `now` (callers
/// check its result with [`op::exit_matters`]): watch the socket and tell user space the peer.
#[inline(always)]
fn connected(tgid: u32, tid: u32, pending: &HttpPending, now: u64) {
    let _ = HTTP_CONNS.insert(conn_key(tgid, pending.fd), ROLE_CLIENT, BPF_ANY as u64);
    let Some(event) = scratch() else {
        return;
    };
    fill_header(event, pending, tgid, tid, 0, now);
    submit_with_comm(event, &pending.addr);
}

/// Records a descriptor duplication of a watched connection (Rust's `try_clone`, shells...).
#[inline(always)]
fn enter_dup(oldfd: u32) {
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

const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

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

/// A watched connection's `oldfd` (of `role`) was duplicated as `newfd`: watch that one too.
#[inline(always)]
fn duplicated(tgid: u32, tid: u32, oldfd: u32, role: u8, newfd: i64) {
    if newfd < 0 || newfd as u32 == oldfd {
        return;
    }
    let newfd = newfd as u32;
    let key = conn_key(tgid, newfd);
    let now = unsafe { bpf_ktime_get_ns() };
    // dup2/dup3 onto a watched connection closes that one first.
    if let Some(replaced) = (unsafe { HTTP_CONNS.get(key) }).copied() {
        send_bare(KIND_CLOSE, replaced, tgid, tid, newfd, 0, now);
    }
    let _ = HTTP_CONNS.insert(key, role, BPF_ANY as u64);
    send_bare(KIND_DUP, role, tgid, tid, newfd, oldfd as u64, now);
}

#[tracepoint]
pub fn http_enter_close(ctx: TracePointContext) -> u32 {
    if let Some((tgid, tid)) = current() {
        closing(tgid, tid, arg(&ctx, 0) as u32);
    }
    0
}

/// `close(fd)` entered: forget the connection (before the number can name another socket).
#[inline(always)]
fn closing(tgid: u32, tid: u32, fd: u32) {
    let key = conn_key(tgid, fd);
    let Some(role) = (unsafe { HTTP_CONNS.get(key) }).copied() else {
        return;
    };
    let _ = HTTP_CONNS.remove(key);
    let now = unsafe { bpf_ktime_get_ns() };
    send_bare(KIND_CLOSE, role, tgid, tid, fd, 0, now);
}

/// `sched:sched_process_exit`: the thread-group leader leaving means the process is gone.
#[tracepoint]
pub fn http_process_exit(ctx: TracePointContext) -> u32 {
    let _ = ctx.as_ptr();
    process_exit();
    0
}

/// `raw_tp/sched_process_exit(struct task_struct *p)`: as [`http_process_exit`].
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn http_process_exit_raw(ctx: RawTracePointContext) -> i32 {
    let _ = ctx.as_ptr();
    process_exit();
    0
}

/// `raw_tp/sched_process_fork(struct task_struct *parent, struct task_struct *child)`, in the
/// forking task: a new process (not a thread: its tgid is its own) runs a copy of the forker.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn http_process_fork_raw(ctx: RawTracePointContext) -> i32 {
    let offset = global(&HTTP_TASK_TGID);
    if offset == 0 {
        return 0;
    }
    let child: u64 = ctx.arg(1);
    // SAFETY: bpf_probe_read_kernel checks the address; the offset comes from this kernel's BTF.
    let Ok(child_tgid) = (unsafe { bpf_probe_read_kernel((child + offset as u64) as *const u32) })
    else {
        return 0;
    };
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if child_tgid != parent_tgid {
        let _ = HTTP_FORKED.insert(child_tgid, parent_tgid, 0);
    }
    0
}

/// `raw_tp/sched_process_exec`: the process runs a program of its own now.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn http_process_exec_raw(ctx: RawTracePointContext) -> i32 {
    let _ = ctx.as_ptr();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = HTTP_FORKED.remove(tgid);
    0
}

#[inline(always)]
fn process_exit() {
    let Some((tgid, tid)) = current() else {
        return;
    };
    if tgid != tid {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    send_bare(KIND_EXIT, 0, tgid, tid, 0, 0, now);
}

// Raw tracepoints: one program on every syscall entry and one on every exit, instead of a
// tracepoint pair per syscall. The exit reads the arguments back from the saved registers (the
// kernel does not change them), so no entry state is kept, except a write's entry time in a
// slot of a plain array indexed by thread id (no hash update on the hot path).

/// Offsets in `struct pt_regs` (from BTF): the syscall number (`orig_ax`), the window read, and
/// inside it the first three arguments and the code segment.
#[unsafe(no_mangle)]
static HTTP_REGS_BASE: u32 = 0;
#[unsafe(no_mangle)]
static HTTP_REGS_NR: u32 = 0;
#[unsafe(no_mangle)]
static HTTP_REGS_ARG0: u32 = 0;
#[unsafe(no_mangle)]
static HTTP_REGS_ARG1: u32 = 0;
#[unsafe(no_mangle)]
static HTTP_REGS_ARG2: u32 = 0;
#[unsafe(no_mangle)]
static HTTP_REGS_CS: u32 = 0;
/// The syscall number inside the window (the raw exit reads it alone first, at `HTTP_REGS_NR`,
/// to leave other syscalls at once).
#[unsafe(no_mangle)]
static HTTP_REGS_WINDOW_NR: u32 = 0;
/// The code segment of 64-bit user code (x86_64 `__USER_CS`): a 32-bit process's syscalls
/// have other numbers, and are left alone.
#[unsafe(no_mangle)]
static HTTP_USER_CS: u32 = 0x33;

/// Syscall number -> `op::*`, filled by user space for its architecture.
#[map]
static HTTP_SYSCALL_OPS: Array<u8> = Array::with_max_entries(SYSCALL_OPS, 0);

/// Entry stamps of writes (`write_stamp`), by the low bits of the thread id.
#[map]
static HTTP_WRITE_STAMPS: Array<u64> = Array::with_max_entries(WRITE_STAMPS, 0);

#[inline(always)]
fn op_of(nr: u64) -> u8 {
    if nr >= SYSCALL_OPS as u64 {
        return op::NONE;
    }
    HTTP_SYSCALL_OPS.get(nr as u32).copied().unwrap_or(op::NONE)
}

/// The first three arguments of the syscall whose registers are at `regs`, or `None` for a
/// 32-bit (compat) syscall.
#[inline(always)]
fn regs_args(regs: u64) -> Option<[u64; 3]> {
    regs_syscall(regs).map(|(_, args)| args)
}

/// The number and first three arguments of the syscall whose registers are at `regs`, read at
/// once, or `None` for a 32-bit (compat) syscall.
#[inline(always)]
fn regs_syscall(regs: u64) -> Option<(u64, [u64; 3])> {
    // SAFETY: bpf_probe_read_kernel checks the address; the offsets come from this kernel's BTF.
    let window: [u8; REGS_WINDOW] = unsafe {
        bpf_probe_read_kernel((regs + global(&HTTP_REGS_BASE) as u64) as *const [u8; REGS_WINDOW])
    }
    .ok()?;
    let reg = |offset| bytes_at::<8>(&window, offset).map(u64::from_ne_bytes);
    if reg(global(&HTTP_REGS_CS))? != global(&HTTP_USER_CS) as u64 {
        return None;
    }
    Some((
        reg(global(&HTTP_REGS_WINDOW_NR))?,
        [
            reg(global(&HTTP_REGS_ARG0))?,
            reg(global(&HTTP_REGS_ARG1))?,
            reg(global(&HTTP_REGS_ARG2))?,
        ],
    ))
}

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
            accepted(tgid, tid, args[0], rc as u32, now, now);
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
fn io_exit_raw(tgid: u32, tid: u32, op: u8, args: [u64; 3], rc: i64) {
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
    send_io(tgid, tid, &pending, rc as u64, now);
}

/// The record kind and buffer shape of a read or write syscall's `op`.
#[inline(always)]
fn io_shape(op: u8) -> Option<(u8, Buffer)> {
    Some(match op {
        op::READ => (KIND_READ, Buffer::Plain),
        op::READV => (KIND_READ, Buffer::Vector),
        op::RECVMSG => (KIND_READ, Buffer::Message),
        op::WRITE => (KIND_WRITE, Buffer::Plain),
        op::WRITEV => (KIND_WRITE, Buffer::Vector),
        op::SENDMSG => (KIND_WRITE, Buffer::Message),
        op::SENDFILE => (KIND_WRITE, Buffer::None),
        _ => return None,
    })
}

// Socket tracepoints (Linux 6.5+): `sock_send_length`/`sock_recv_length` fire once per send or
// receive on a socket, after it, in the task that made it. Nothing runs on any other syscall,
// and no syscall of any process takes the traced slow path. The syscall's arguments (fd,
// buffer) are read from the task's saved registers. A (process, fd) pair is bound to the socket
// it names; the first I/O of a new socket on a pair announces it ([`KIND_OPEN`], with the side
// `inet_sock_set_state` saw it established as) and ends what the pair named before. A write's
// record carries its exit time as its start (there is no entry hook).

/// Offset of `sock.sk_protocol` (the port pair, family and peer addresses are `crate::sock`'s,
/// read in place here: the programs' stack is near its limit).
#[unsafe(no_mangle)]
static HTTP_SK_PROTOCOL: u32 = 0;
/// Offset of `sock.sk_shutdown`.
#[unsafe(no_mangle)]
static HTTP_SK_SHUTDOWN: u32 = 0;
/// Offsets of `sock.sk_socket` and `socket.file`: a kernel socket (NFS, CIFS, iSCSI, sending
/// inside a process's write to a file) has no file.
#[unsafe(no_mangle)]
static HTTP_SK_SOCKET: u32 = 0;
#[unsafe(no_mangle)]
static HTTP_SOCKET_FILE: u32 = 0;

/// The socket each (process, fd) pair that did socket I/O names. A pair whose socket is known
/// but has no entry in HTTP_CONNS is not watched (not TCP, or given up on by user space).
#[map]
static HTTP_FD_SOCKS: LruHashMap<u64, SockId> = LruHashMap::with_max_entries(65536, 0);

/// The (process, fd) pair that first did I/O on each socket, by socket address (closes, dups).
#[map]
static HTTP_SOCK_FDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// The side of each TCP connection established since Periscope started, by socket address.
#[map]
static HTTP_SOCK_ROLES: LruHashMap<u64, SockId> = LruHashMap::with_max_entries(65536, 0);

const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: u64 = 2;
const TCP_ESTABLISHED: u64 = 1;
const TCP_SYN_SENT: u64 = 2;
const TCP_SYN_RECV: u64 = 3;
const TCP_FIN_WAIT1: u64 = 4;
const TCP_CLOSE: u64 = 7;
const TCP_CLOSE_WAIT: u64 = 8;
const TCP_LAST_ACK: u64 = 9;
/// `sk_shutdown` when both directions are shut.
const SHUTDOWN_MASK: u8 = 3;

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
fn sock_recv(sk: u64, ret: i32, flags: u64) {
    if flags & MSG_PEEK == 0 {
        sock_io(sk, ret, KIND_READ);
    }
}

// The `fentry` mechanism, for kernels without the socket tracepoints (before 6.5) that have BTF
// trampolines and `bpf_task_pt_regs` (5.15+): the same work as the socket tracepoint programs,
// at the return of the TCP functions every send and receive of a TCP socket goes through. The
// functions are the kernel's own, not an ABI: user space attaches each program only where this
// kernel's BTF has the function with the parameters the program expects.

/// `fexit/tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size) -> int`.
#[fexit(function = "tcp_sendmsg")]
pub fn http_tcp_sendmsg(ctx: FExitContext) -> i32 {
    sock_io(ctx.arg(0), ctx.arg::<u64>(3) as i32, KIND_WRITE);
    0
}

/// `fexit/tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)
/// -> int`: how `sendfile` reaches a TCP socket before 6.5.
#[fexit(function = "tcp_sendpage")]
pub fn http_tcp_sendpage(ctx: FExitContext) -> i32 {
    sock_io(ctx.arg(0), ctx.arg::<u64>(5) as i32, KIND_WRITE);
    0
}

/// `fexit/tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags) -> int`
/// (the latest kernels: `addr_len` dropped).
#[fexit(function = "tcp_recvmsg")]
pub fn http_tcp_recvmsg_no_addr_len(ctx: FExitContext) -> i32 {
    sock_recv(ctx.arg(0), ctx.arg::<u64>(4) as i32, ctx.arg(3));
    0
}

/// `fexit/tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags,
/// int *addr_len) -> int` (5.19 and later).
#[fexit(function = "tcp_recvmsg")]
pub fn http_tcp_recvmsg(ctx: FExitContext) -> i32 {
    sock_recv(ctx.arg(0), ctx.arg::<u64>(5) as i32, ctx.arg(3));
    0
}

/// `fexit/tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int nonblock,
/// int flags, int *addr_len) -> int` (before 5.19).
#[fexit(function = "tcp_recvmsg")]
pub fn http_tcp_recvmsg_nonblock(ctx: FExitContext) -> i32 {
    sock_recv(ctx.arg(0), ctx.arg::<u64>(6) as i32, ctx.arg(4));
    0
}

/// A send or receive of `rc` bytes on socket `sk`: its record, when it was a read or write
/// syscall of a process on a watched connection.
#[inline(always)]
fn sock_io(sk: u64, rc: i32, kind: u8) {
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
    let Some((nr, args)) = regs_syscall(regs) else {
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
    send_io(tgid, tid, &pending, rc as u64, now);
}

/// The identity of socket `sk`.
#[inline(always)]
fn sock_id(sk: u64) -> Option<SockId> {
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
fn new_socket(tgid: u32, tid: u32, fd: u32, sock: &SockId) -> bool {
    let key = conn_key(tgid, fd);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(role) = unsafe { HTTP_CONNS.get(key) }.copied() {
        let _ = HTTP_CONNS.remove(key);
        send_bare(KIND_CLOSE, role, tgid, tid, fd, 0, now);
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
        send_bare(KIND_DUP, role, tgid, tid, fd, first as u32 as u64, now);
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
fn tcp_peer(sock: &SockId) -> Option<SockOpen> {
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

/// Announces a new connection on (`tgid`, `fd`): its peer, local port and the process name.
#[inline(always)]
fn send_open(tgid: u32, tid: u32, fd: u32, role: u8, open: &SockOpen, now: u64) {
    let Some(event) = scratch() else {
        return;
    };
    let pending = HttpPending {
        start_ns: now,
        fd,
        kind: KIND_OPEN,
        role,
        ..Default::default()
    };
    fill_header(event, &pending, tgid, tid, 0, now);
    submit_with_comm(event, open);
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
fn closed_by_process(sk: u64, old: u64, new: u64) -> bool {
    let closing = match new {
        TCP_FIN_WAIT1 | TCP_LAST_ACK => true,
        // Closed with bytes unread: reset at once.
        TCP_CLOSE if old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT => true,
        _ => new == old,
    };
    // `close` and `shutdown(SHUT_RDWR)` shut both ways before the change; a half-close only
    // the sending side (a reset sets both only after it).
    closing
        && unsafe { bpf_probe_read_kernel((sk + global(&HTTP_SK_SHUTDOWN) as u64) as *const u8) }
            .is_ok_and(|shutdown| shutdown == SHUTDOWN_MASK)
}

/// Socket `sk` is closing (`gone`: closed): the pair that first used it, if it still names it,
/// is over, with every other descriptor of the socket.
#[inline(always)]
fn sock_closed(sk: u64, gone: bool) {
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
        send_bare(
            KIND_CLOSE,
            role,
            (key >> 32) as u32,
            0,
            key as u32,
            CLOSE_SOCKET,
            now,
        );
    }
}

/// A syscall on a TLS connection made inside an OpenSSL call: that call's connection.
#[inline(always)]
fn note_tls_fd(tid: u32, fd: u32) {
    if let Some(pending) = HTTP_TLS_PENDING.get_ptr_mut(tid) {
        // SAFETY: this thread's own entry.
        unsafe { (*pending).fd = fd };
    }
}

/// Entry of `SSL_read(ssl, buf, num)`/`SSL_write(ssl, buf, num)` and their `_ex` forms (whose
/// fourth argument receives the byte count).
#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, kind: u8, ex: bool) -> u32 {
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
fn tls_fd(pending: &TlsPending, tid: u32) -> Option<u32> {
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
    let Some(event) = scratch() else {
        return 0;
    };
    let io = HttpPending {
        start_ns: pending.start_ns,
        buf: pending.buf,
        buf_len: transferred,
        fd: fd | TLS_FD,
        kind: pending.kind,
        role: role | ROLE_TLS,
        ..Default::default()
    };
    fill_header(event, &io, tgid, tid, transferred, unsafe {
        bpf_ktime_get_ns()
    });
    let captured = copy_leading(event, io.buf, transferred);
    copy_tail(event, &io, transferred, captured);
    submit(event, captured);
    0
}
