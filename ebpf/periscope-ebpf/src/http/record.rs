//! Records to user space: the per-CPU scratch record, the copies of a transfer's leading and
//! last bytes, and the ring buffer with its wakeup policy. Every mechanism sends through here.

use super::h2;
use super::tls_socket::{HTTP_TLS_LAST_READ, note_tls_fd};
use super::{HTTP_CONNS, stage, stop_after};
use crate::shared::{count, global, ring_flags};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_EXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_probe_read_user as probe_read_user_raw,
    helpers::{bpf_get_current_comm, bpf_probe_read_user},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use periscope_common::{
    counters,
    http::{
        AcceptRecord, CAPTURE, CAPTURE_OF_LARGE, COMM, CloseRecord, ConnectAddr, ConnectRecord,
        DupRecord, ExitRecord, HttpPending, IO_LOST, IO_RECORD_SIZE, IO_TLS_PLAINTEXT, IoEvent,
        KIND_ACCEPT, KIND_CLOSE, KIND_CONNECT, KIND_DUP, KIND_EXIT, KIND_OPEN, KIND_READ,
        OpenRecord, ROLE_CLIENT, ROLE_H2, ROLE_LOST, ROLE_MASK, ROLE_SERVER, ROLE_TLS, RecordHead,
        SockOpen, TAIL, TLS_FD, conn_key, crosses_wakeup_step,
    },
};

/// Records wake user space up only when the bytes a CPU sent cross a multiple of this (user
/// space also drains on a short timer; see [`crosses_wakeup_step`]). A wakeup on every record
/// once the unread bytes passed a threshold, as before, cost ~10% of the exit program's time
/// under wrk: the buffer stays above any threshold between drains, and each wakeup is an IPI
/// (on a VM, a trap to the hypervisor).
#[unsafe(no_mangle)]
pub(super) static HTTP_WAKEUP_BYTES: u32 = 65536;

/// Where records are built before they go to the ring buffer (too big for the BPF stack).
#[map]
pub(super) static HTTP_SCRATCH: PerCpuArray<IoEvent> = PerCpuArray::with_max_entries(1, 0);

/// Records to user space; its size is set at load time.
#[map]
pub(super) static HTTP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// 1 while user space sleeps until the next record (see `shared::ring_flags`).
#[map]
pub(super) static HTTP_READER_PARKED: Array<u32> = Array::with_max_entries(1, 0);

/// Bytes of records each CPU has sent (wakeups: [`crosses_wakeup_step`]).
#[map]
pub(super) static HTTP_SENT_BYTES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch record. Only programs of a process's own context use it (syscalls,
/// socket sends and receives, uprobes), and these do not interrupt one another on a CPU; the
/// socket-state program, which also runs in softirqs, builds its records on the stack.
#[inline(always)]
pub(super) fn scratch() -> Option<&'static mut IoEvent> {
    let event = HTTP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value; programs do not migrate while running, and one program uses it
    // at a time on a CPU (see above).
    Some(unsafe { &mut *event })
}

/// Sends the record of a read/write on a watched connection that moved `transferred` (> 0)
/// bytes, returning at `now` (callers check the result with [`op::exit_matters`]); `sock`: the
/// socket's address where the program knows it, else 0 (it keys an HTTP/2 walk).
#[inline(always)]
pub(super) fn send_io<const LOOP: bool>(
    tgid: u32,
    tid: u32,
    pending: &HttpPending,
    sock: u64,
    transferred: u64,
    now: u64,
) {
    let Some(event) = scratch() else {
        return;
    };
    let walk_key = h2::walk_key(sock, tgid, pending.fd);
    start_io(event, pending, tgid, tid, transferred, now);
    if stop_after(stage::HEADER) {
        return;
    }
    if pending.role & ROLE_H2 != 0
        && h2::walk::<LOOP>(&event.record, pending, walk_key, transferred)
    {
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
    let opener = h2::opener(
        &event.data,
        captured,
        pending.kind,
        pending.role & ROLE_MASK,
    );
    if opener != 0 {
        // HTTP/2 from here on (a lost record before is of no matter: this is its beginning).
        let role = (pending.role & !ROLE_LOST) | ROLE_H2;
        let _ = HTTP_CONNS.insert(conn_key(tgid, pending.fd), role, BPF_EXIST as u64);
        h2::start::<LOOP>(&event.record, pending, walk_key, transferred, opener);
        return;
    }
    // Not (or no longer: its walk aged out) HTTP/2.
    let mut role = pending.role & !ROLE_H2;
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
    if stop_after(stage::TAIL)
        || (stop_after(stage::NO_REQUEST_RECORD) && carries_requests(pending))
    {
        return;
    }
    let sent = submit_io(event, captured);
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

/// Whether a transfer is in the requests' direction: a server's read, a client's write.
#[inline(always)]
fn carries_requests(pending: &HttpPending) -> bool {
    let side = pending.role & ROLE_MASK;
    side != 0 && (pending.kind == KIND_READ) == (side == ROLE_SERVER)
}

/// Sends the plaintext a TLS library read or wrote (`io`: its buffer and socket) as a transfer
/// record of `transferred` bytes flagged [`IO_TLS_PLAINTEXT`], ended at `now`: the OpenSSL and
/// Go probes' one way out. Their HTTP/2 walks are unrolled: the probes load on every kernel,
/// and a program holding a `bpf_loop` callback does not before 5.17.
#[inline(always)]
pub(super) fn send_plaintext(tgid: u32, tid: u32, io: &HttpPending, transferred: u64, now: u64) {
    let Some(event) = scratch() else {
        return;
    };
    start_io(event, io, tgid, tid, transferred, now);
    event.record.flags = IO_TLS_PLAINTEXT;
    // Plaintext has no connection map value to say it is HTTP/2: its walk is looked up.
    let key = h2::walk_key(0, tgid, io.fd | TLS_FD);
    if h2::walk::<false>(&event.record, io, key, transferred) {
        return;
    }
    let captured = copy_leading(event, io.buf, transferred);
    let opener = h2::opener(&event.data, captured, io.kind, io.role & ROLE_MASK);
    if opener != 0 {
        h2::start::<false>(&event.record, io, key, transferred, opener);
        return;
    }
    copy_tail(event, io, transferred, captured);
    submit_io(event, captured);
}

/// Starts `event` as the record of a transfer of `len` bytes that returned at `end_ns`.
#[inline(always)]
pub(super) fn start_io(
    event: &mut IoEvent,
    pending: &HttpPending,
    tgid: u32,
    tid: u32,
    len: u64,
    end_ns: u64,
) {
    let r = &mut event.record;
    r.head = head(pending.kind, pending.role, tgid, tid, pending.fd, end_ns);
    r.start_ns = pending.start_ns;
    r.len = len;
    r.flags = if pending.role & ROLE_LOST != 0 {
        IO_LOST
    } else {
        0
    };
    r.captured = 0;
    r.tail_len = 0;
}

/// The head of a record of `kind` about (`tgid`, `fd`), whose connection map value is `role`.
#[inline(always)]
fn head(kind: u8, role: u8, tgid: u32, tid: u32, fd: u32, now: u64) -> RecordHead {
    RecordHead {
        kind,
        side: role & ROLE_MASK,
        tgid,
        tid,
        fd,
        time_ns: now,
        ..Default::default()
    }
}

/// Copies the leading bytes of `want` from `src`: all of them below CAPTURE, else the first
/// CAPTURE_OF_LARGE; returns how many.
#[inline(always)]
pub(super) fn copy_leading(event: &mut IoEvent, src: u64, want: u64) -> u32 {
    if src == 0 || want == 0 {
        return 0;
    }
    let n = if want >= CAPTURE as u64 {
        CAPTURE_OF_LARGE as u64
    } else {
        want
    };
    // `& (CAPTURE - 1)` changes nothing (n < CAPTURE, a power of two) but is what older
    // verifiers (5.10, 6.1) take as the copy's bound; the volatile read keeps the compiler from
    // dropping it after the comparison above.
    // SAFETY: a read of a local.
    let n = (unsafe { core::ptr::read_volatile(&n) } & (CAPTURE as u64 - 1)) as u32;
    // SAFETY: n < CAPTURE, the size of the destination.
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
    event.record.captured = n as u16;
    n
}

/// The last TAIL bytes, when they were not among the captured ones.
#[inline(always)]
pub(super) fn copy_tail(
    event: &mut IoEvent,
    pending: &HttpPending,
    transferred: u64,
    captured: u32,
) {
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
    if buf == 0 || end == 0 {
        return;
    }
    if end < TAIL as u64 {
        // A last iovec shorter than the tail (`0\r\n\r\n` on its own: Node's `writev`, nginx's
        // chunk filter) is the transfer's last bytes all the same. `& (TAIL - 1)` is the
        // verifier's proof that the copy fits (end < TAIL, a power of two); the volatile read
        // keeps the compiler from dropping it as redundant after the comparison above.
        // SAFETY: a read of a local.
        let n = (unsafe { core::ptr::read_volatile(&end) } & (TAIL as u64 - 1)) as u32;
        // SAFETY: n < TAIL, the size of the destination.
        let rc = unsafe {
            probe_read_user_raw(
                event.record.tail.as_mut_ptr().cast(),
                n,
                buf as *const core::ffi::c_void,
            )
        };
        if rc == 0 {
            event.record.tail_len = n as u8;
        }
        return;
    }
    if let Ok(tail) = unsafe { bpf_probe_read_user((buf + end - TAIL as u64) as *const [u8; TAIL]) }
    {
        event.record.tail = tail;
        event.record.tail_len = TAIL as u8;
    }
}

/// Sends a transfer's record with its `captured` bytes; false when the ring buffer was full
/// (counted).
#[inline(always)]
pub(super) fn submit_io(event: &IoEvent, captured: u32) -> bool {
    let mut n = captured as usize;
    if n > CAPTURE {
        n = CAPTURE;
    }
    // SAFETY: IO_RECORD_SIZE + n <= size_of::<IoEvent>().
    let bytes = unsafe {
        core::slice::from_raw_parts((event as *const IoEvent).cast::<u8>(), IO_RECORD_SIZE + n)
    };
    output(bytes)
}

/// Puts a record in the ring buffer, waking the reader once per step of this CPU's bytes;
/// false when the buffer was full (counted).
#[inline(always)]
pub(super) fn output(bytes: &[u8]) -> bool {
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
pub(super) fn wakeup_flag(sent: u64, size: u64, step: u64) -> u32 {
    if crosses_wakeup_step(sent, size, step) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

// The records of connections and processes. Those without a process name are built on the
// stack, not in the per-CPU scratch record: the socket-state program, which sends closes, runs
// in softirqs too, and may interrupt a program filling that record on the same CPU.

/// Sends one fixed-size record; false when the ring buffer was full (counted).
#[inline(always)]
fn send_record<T: Copy>(record: &T) -> bool {
    // SAFETY: the record structs are `repr(C)` integers and byte arrays without padding.
    let bytes = unsafe {
        core::slice::from_raw_parts((record as *const T).cast::<u8>(), core::mem::size_of::<T>())
    };
    output(bytes)
}

/// The current process's name (for processes gone before user space reads /proc).
#[inline(always)]
fn comm() -> [u8; COMM] {
    bpf_get_current_comm().unwrap_or_default()
}

/// This CPU's scratch record, as a fixed-size record `T` (`T` fits: checked at build time). For
/// the records with a process name: too big for the stack of the programs that send them, all
/// of which run in a process's context (see [`scratch`]).
#[inline(always)]
fn scratch_as<T: Copy>() -> Option<&'static mut T> {
    const { assert!(core::mem::size_of::<T>() <= core::mem::size_of::<IoEvent>()) };
    let event = scratch()?;
    // SAFETY: T is plain integers and byte arrays, no larger than the scratch record (above),
    // whose alignment (8) suits it.
    Some(unsafe { &mut *(event as *mut IoEvent).cast::<T>() })
}

/// `fd` of (`tgid`) was accepted on `listen_fd` at `now`.
#[inline(always)]
pub(super) fn send_accept(tgid: u32, tid: u32, fd: u32, listen_fd: u32, now: u64) {
    let Some(r) = scratch_as::<AcceptRecord>() else {
        return;
    };
    r.head = head(KIND_ACCEPT, ROLE_SERVER, tgid, tid, fd, now);
    r.listen_fd = listen_fd;
    r._pad = 0;
    r.comm = comm();
    send_record(r);
}

/// `fd` of (`tgid`) connected to `peer` at `now`.
#[inline(always)]
pub(super) fn send_connect(tgid: u32, tid: u32, fd: u32, peer: &ConnectAddr, now: u64) {
    let Some(r) = scratch_as::<ConnectRecord>() else {
        return;
    };
    r.head = head(KIND_CONNECT, ROLE_CLIENT, tgid, tid, fd, now);
    r.peer = *peer;
    r.comm = comm();
    send_record(r);
}

/// A new socket on (`tgid`, `fd`), of side `role` (0: not known), with its peer and local port.
#[inline(always)]
pub(super) fn send_open(tgid: u32, tid: u32, fd: u32, role: u8, open: &SockOpen, now: u64) {
    let Some(r) = scratch_as::<OpenRecord>() else {
        return;
    };
    r.head = head(KIND_OPEN, role, tgid, tid, fd, now);
    r.open = *open;
    r.comm = comm();
    send_record(r);
}

/// `fd` of (`tgid`), a copy of `original_fd`, is watched too.
#[inline(always)]
pub(super) fn send_dup(role: u8, tgid: u32, tid: u32, fd: u32, original_fd: u32, now: u64) {
    send_record(&DupRecord {
        head: head(KIND_DUP, role, tgid, tid, fd, now),
        original_fd,
        _pad: 0,
    });
}

/// (`tgid`, `fd`) closed; `whole_socket`: the socket itself, with every descriptor of it.
#[inline(always)]
pub(super) fn send_close(role: u8, tgid: u32, tid: u32, fd: u32, whole_socket: bool, now: u64) {
    h2::forget(tgid, fd, role & ROLE_H2 != 0, role & ROLE_TLS != 0);
    send_record(&CloseRecord {
        head: head(KIND_CLOSE, role, tgid, tid, fd, now),
        whole_socket: whole_socket as u8,
        _pad: [0; 7],
    });
}

/// Process `tgid` exited.
#[inline(always)]
pub(super) fn send_exit(tgid: u32, tid: u32, now: u64) {
    send_record(&ExitRecord {
        head: head(KIND_EXIT, 0, tgid, tid, 0, now),
    });
}
