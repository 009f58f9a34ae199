//! HTTP/2 frames out of a connection's transfers. A connection is HTTP/2 from the transfer whose
//! first bytes are the client preface (a client writes it, a server reads it; in plaintext, or
//! through the TLS probes), or, on a server, its SETTINGS frame written before it (ALPN told the
//! server the protocol), or, on a connection established before Periscope started, a HEADERS
//! frame opening a stream (its next request or response). From then on each of its transfers
//! is walked frame by frame, and what user space needs is copied: every frame header, and
//! every payload but DATA's (and those too large to be header blocks). So a response's body
//! costs nothing to copy however large, many streams multiplexed in one write are all seen, and
//! a frame cut by a transfer's end goes on in the next: each direction's place (the rest of a
//! payload, a partial header) is kept between transfers in [`HTTP_H2_WALKS`].
//!
//! The walk is a run of small steps whose state lives in map memory, not in registers: up to
//! [`H2_LOOP_STEPS`] through `bpf_loop` on the programs that need Linux 5.15+ (socket
//! tracepoints, fentry), else [`H2_STEPS`] unrolled calls, which the verifier checks in time
//! linear in their number because it sees the same state at the top of each whatever path led
//! there. (As a plain loop, the states of its iterations differ by the counter, the verifier's
//! heuristics drop them, and the paths through the steps multiply past its limit.)

use super::HTTP_CONNS;
use super::record::output;
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_EXIST},
    helpers::bpf_probe_read_user,
    helpers::generated::{bpf_loop, bpf_probe_read_user as probe_read_user_raw},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use periscope_common::http::{
    H2_CAPTURE, H2_CHUNK, H2_FRAME_HEADER, H2_PREFACE_LEN, H2_STEPS, H2Direction, H2Walk,
    HttpPending, IO_H2, IO_H2_CUT, IO_H2_MIDWAY, IO_H2_PREFACE, IO_H2_SETTINGS, IO_RECORD_SIZE,
    IoRecord, KIND_WRITE, ROLE_H2, ROLE_SERVER, TLS_FD, conn_key, h2_payload_elided,
};

/// Repeats its tokens twice.
macro_rules! twice {
    ($($body:tt)*) => {
        $($body)*
        $($body)*
    };
}

/// Each HTTP/2 connection's place in its two directions, by [`walk_key`]: its socket's address,
/// or (process, fd), the fd with `TLS_FD` for TLS plaintext. LRU: a connection whose close was
/// not seen ages out.
#[map]
pub(super) static HTTP_H2_WALKS: LruHashMap<u64, H2Walk> = LruHashMap::with_max_entries(16384, 0);

/// Descriptors duplicated from an HTTP/2 connection's (by `dup`/`fcntl`, on the syscall
/// programs, whose walks are keyed by (process, fd)): the key of the walk they share.
#[map]
static HTTP_H2_ALIASES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Where a walk is inside the transfer it walks, kept in map memory (see the module's doc).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Cursor {
    /// The current buffer: where its unwalked bytes start, and how many there are.
    base: u64,
    base_left: u64,
    /// The next iovec to take (vectored transfers).
    next_iov: u64,
    /// Bytes of the transfer not walked yet.
    left: u64,
    /// Bytes of frames in the record being built.
    out: u64,
    /// How the walk ended: [`WALKING`], [`DONE`] or [`CUT`].
    state: u64,
    /// The transfer's iovec array and count (0: one buffer, the first `base`).
    iov: u64,
    iov_count: u64,
}

/// [`Cursor::state`]s.
const WALKING: u64 = 0;
const DONE: u64 = 1;
const CUT: u64 = 2;

/// An HTTP/2 record being built: the walk's cursor, then the record as it is sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct H2Event {
    cursor: Cursor,
    /// The walked direction's place, copied in for the walk and back after it (the steps then
    /// need no other pointer than this record's: a `bpf_loop` callback gets none).
    dir: H2Direction,
    record: IoRecord,
    /// At most [`H2_CAPTURE`] bytes of frames (a step that starts below it may pass it by up to
    /// a header and a chunk: room for that, and for the verifier's bounds).
    data: [u8; H2_CAPTURE + 2 * H2_CHUNK],
}

#[map]
static HTTP_H2_SCRATCH: PerCpuArray<H2Event> = PerCpuArray::with_max_entries(1, 0);

/// The client preface, as the three words it is compared by.
const PREFACE: [u64; 3] = [
    u64::from_ne_bytes(*b"PRI * HT"),
    u64::from_ne_bytes(*b"TP/2.0\r\n"),
    u64::from_ne_bytes(*b"\r\nSM\r\n\r\n"),
];

/// How a transfer whose first `captured` bytes are `data`, of kind `kind` on a connection of
/// side `side`, opens HTTP/2: [`IO_H2_PREFACE`] (the client preface), [`IO_H2_SETTINGS`] (a
/// server's SETTINGS frame, which a server that learned the protocol from TLS's ALPN writes
/// before it reads the preface), [`IO_H2_MIDWAY`] (a connection established before Periscope
/// started, side 0, whose transfer starts with a HEADERS frame), or 0 (it does not).
#[inline(always)]
pub(super) fn opener(data: &[u8], captured: u32, kind: u8, side: u8) -> u8 {
    if captured >= H2_PREFACE_LEN as u32 && starts_with_preface(data) {
        return IO_H2_PREFACE;
    }
    if kind == KIND_WRITE && side == ROLE_SERVER && captured >= 9 && server_settings(data) {
        return IO_H2_SETTINGS;
    }
    if side == 0 && captured >= 9 && client_stream_headers(data) {
        return IO_H2_MIDWAY;
    }
    0
}

fn starts_with_preface(data: &[u8]) -> bool {
    data.len() >= 24
        && word(data, 0) == PREFACE[0]
        && word(data, 8) == PREFACE[1]
        && word(data, 16) == PREFACE[2]
}

/// A SETTINGS frame (not an acknowledgement) of whole settings, at most 16 of them, on stream 0:
/// what an HTTP/1 response (`HTTP/1.`) or TLS record never starts with.
fn server_settings(data: &[u8]) -> bool {
    if data.len() < 9 {
        return false;
    }
    let len = u32::from_be_bytes([0, data[0], data[1], data[2]]);
    len.is_multiple_of(6) && len <= 96 && data[3] == 4 && data[4] == 0 && data[5..9] == [0; 4]
}

/// A HEADERS frame of at most 16 KiB (the default largest frame) on a client-initiated (odd)
/// stream, with no flag HEADERS does not define: a request's or its response's head, the
/// first thing either side of an idle HTTP/2 connection sends for a new stream. An HTTP/1
/// message (ASCII: its first byte would make the length over 4 MiB) or a TLS record (22, 23)
/// never starts that way; of random bytes, about one start in 10^8 would.
fn client_stream_headers(data: &[u8]) -> bool {
    if data.len() < 9 {
        return false;
    }
    let len = u32::from_be_bytes([0, data[0], data[1], data[2]]);
    let stream = u32::from_be_bytes([data[5], data[6], data[7], data[8]]);
    // END_STREAM 0x1, END_HEADERS 0x4, PADDED 0x8, PRIORITY 0x20; reserved bit clear.
    (1..=16384).contains(&len) && data[3] == 1 && data[4] & !0x2d == 0 && stream & 0x8000_0001 == 1
}

#[inline(always)]
fn word(data: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&data[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// The transfer `pending` (of `transferred` bytes), whose record is `record`, opens HTTP/2 on
/// the connection whose walk is keyed `key` ([`walk_key`]) as `opener` says ([`opener`]): starts the connection's walk, with the
/// client preface to skip in the direction it goes (this transfer's, or, after a server's
/// SETTINGS, the one it will be read from), and walks the rest. (The caller marks the
/// connection map value, when there is one, with `ROLE_H2` first, so that its later transfers
/// are walked.)
#[inline(always)]
pub(super) fn start<const LOOP: bool>(
    record: &IoRecord,
    pending: &HttpPending,
    key: u64,
    transferred: u64,
    opener: u8,
) {
    let mut walk = H2Walk::default();
    // The preface is skipped like an elided payload (joined midway, it went by long ago).
    let skip_preface = H2Direction {
        remaining: H2_PREFACE_LEN as u32,
        ..Default::default()
    };
    if opener != IO_H2_MIDWAY {
        if (pending.kind == KIND_WRITE) == (opener == IO_H2_PREFACE) {
            walk.sent = skip_preface;
        } else {
            walk.received = skip_preface;
        }
    }
    if HTTP_H2_WALKS.insert(key, walk, BPF_ANY as u64).is_ok() {
        walk_transfer::<LOOP>(record, pending, key, transferred, opener);
    }
}

/// A connection's walks are over (it closed): `plain` and `tls` say which it may have.
#[inline(always)]
pub(super) fn forget(tgid: u32, fd: u32, plain: bool, tls: bool) {
    if plain {
        let _ = HTTP_H2_WALKS.remove(conn_key(tgid, fd));
        let _ = HTTP_H2_ALIASES.remove(conn_key(tgid, fd));
    }
    if tls {
        let _ = HTTP_H2_WALKS.remove(conn_key(tgid, fd | TLS_FD));
    }
}

/// Walks a transfer of the HTTP/2 connection whose walk is keyed `key` ([`walk_key`]), sending
/// its frames. False when the connection has no walk (its state aged out): the caller captures
/// the transfer as a plain one.
#[inline(always)]
pub(super) fn walk<const LOOP: bool>(
    record: &IoRecord,
    pending: &HttpPending,
    key: u64,
    transferred: u64,
) -> bool {
    walk_transfer::<LOOP>(record, pending, key, transferred, 0)
}

/// What a connection's walk is keyed by: its socket's address where the programs know it (the
/// socket and fentry programs: every descriptor of a socket, a `dup` or Rust's `try_clone`
/// reading on one and writing on the other, shares one walk), else (`sock` 0) the (process,
/// fd) pair, `fd` carrying `TLS_FD` for TLS plaintext. (A kernel address never looks like a
/// pair: those are below 2^54.)
#[inline(always)]
pub(super) fn walk_key(sock: u64, tgid: u32, fd: u32) -> u64 {
    if sock != 0 { sock } else { conn_key(tgid, fd) }
}

/// The descriptor keyed `key` is a copy of the one keyed `original`: it walks that one's frames.
#[inline(always)]
pub(super) fn alias(key: u64, original: u64) {
    let _ = HTTP_H2_ALIASES.insert(key, original, BPF_ANY as u64);
}

/// Socket `sk` closed: its walk, if it had one, is over.
#[inline(always)]
pub(super) fn forget_socket(sk: u64) {
    let _ = HTTP_H2_WALKS.remove(sk);
}

/// Walks `transferred` bytes of `pending`'s buffers on the connection whose walk is at `key`,
/// sending records like `record` (its head, times and length) flagged [`IO_H2`] and `flags`.
/// `LOOP`: with `bpf_loop` (Linux 5.17+: the socket-tracepoint and fentry programs), up to
/// [`H2_LOOP_STEPS`] steps; else [`H2_STEPS`], unrolled (a program that merely contains a
/// `bpf_loop` callback does not load on older kernels).
#[inline(always)]
fn walk_transfer<const LOOP: bool>(
    record: &IoRecord,
    pending: &HttpPending,
    key: u64,
    transferred: u64,
    flags: u8,
) -> bool {
    let (walk, key) = match HTTP_H2_WALKS.get_ptr_mut(key) {
        Some(walk) => (walk, key),
        None => {
            let Some(original) = (unsafe { HTTP_H2_ALIASES.get(key) }).copied() else {
                return false;
            };
            let Some(walk) = HTTP_H2_WALKS.get_ptr_mut(original) else {
                return false;
            };
            (walk, original)
        }
    };
    let Some(event) = HTTP_H2_SCRATCH.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a map value (its entry may be removed meanwhile; the memory stays valid for the
    // program's run) and this CPU's scratch record, used by one program at a time.
    let (walk, event) = unsafe { (&mut *walk, &mut *event) };
    let dir = if pending.kind == KIND_WRITE {
        &mut walk.sent
    } else {
        &mut walk.received
    };
    event.record = *record;
    event.record.flags |= IO_H2 | flags;
    event.record.captured = 0;
    event.record.tail_len = 0;
    event.dir = *dir;
    let cursor = &mut event.cursor;
    set(&mut cursor.left, transferred);
    set(&mut cursor.out, 0);
    set(&mut cursor.next_iov, 0);
    set(&mut cursor.iov, pending.iov);
    set(&mut cursor.iov_count, pending.iov_count);
    if pending.iov != 0 {
        set(&mut cursor.base, 0);
        set(&mut cursor.base_left, 0);
    } else {
        set(&mut cursor.base, pending.buf);
        set(&mut cursor.base_left, pending.buf_len.min(transferred));
    }
    set(&mut cursor.state, WALKING);
    if LOOP {
        // SAFETY: a callback of the helper's signature; no context (it finds the scratch
        // record itself).
        unsafe {
            bpf_loop(
                H2_LOOP_STEPS,
                loop_step as *mut core::ffi::c_void,
                core::ptr::null_mut(),
                0,
            )
        };
    } else {
        // H2_STEPS steps, unrolled (see the module's doc).
        'walk: {
            twice! { twice! { twice! { twice! { twice! { twice! {
                if !step(event) {
                    break 'walk;
                }
            } } } } } }
        }
    }
    *dir = event.dir;
    // Out of steps with bytes left is a cut too.
    let cut = get(&event.cursor.state) != DONE;
    if cut {
        // Its place is lost: later transfers are captured plainly, from which user space
        // finds frames again as best it can.
        event.record.flags |= IO_H2_CUT;
        let _ = HTTP_H2_WALKS.remove(key);
        let fd_key = conn_key(record.head.tgid, pending.fd);
        if let Some(role) = unsafe { HTTP_CONNS.get(fd_key) }.copied()
            && role & ROLE_H2 != 0
        {
            let _ = HTTP_CONNS.insert(fd_key, role & !ROLE_H2, BPF_EXIST as u64);
        }
    }
    if get(&event.cursor.out) != 0
        || event.record.flags & (IO_H2_PREFACE | IO_H2_SETTINGS | IO_H2_CUT) != 0
    {
        let _ = flush(event);
    }
    true
}

const _: () = assert!(H2_STEPS == 64, "the walk is unrolled 2^6 times");

/// Steps of a walk with `bpf_loop`.
const H2_LOOP_STEPS: u32 = 2048;

/// `bpf_loop`'s callback: one step of the walk this CPU's scratch record holds; 1 stops the loop.
#[inline(never)]
extern "C" fn loop_step(_index: u64, _context: *mut core::ffi::c_void) -> i64 {
    let Some(event) = HTTP_H2_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch record, which the walking program set up.
    if step(unsafe { &mut *event }) { 0 } else { 1 }
}

/// One step of a walk: takes the next buffer if the current one is done, reads (the rest of)
/// a frame header if one is due, and skips or copies a run of payload. False when the walk of
/// this transfer is over ([`Cursor::state`] says how). A function of its own (a BPF-to-BPF
/// call): unrolled, its 64 inlined copies would not fit the 16-bit jump offsets of one program.
#[inline(never)]
fn step(event: &mut H2Event) -> bool {
    let left = get(&event.cursor.left);
    if left == 0 {
        return end(event, DONE);
    }
    // A step adds at most a header and a chunk: the record is sent here, before, if they
    // might not fit (one place that sends keeps the step's paths few for the verifier).
    if get(&event.cursor.out) > (H2_CAPTURE - H2_CHUNK - H2_FRAME_HEADER) as u64 && !flush(event) {
        return end(event, CUT);
    }
    if get(&event.cursor.base_left) == 0 && !next_buffer(event, left) {
        return end(event, CUT);
    }
    if get(&event.dir.remaining) == 0 {
        // A frame header, or the rest of one a transfer ended inside.
        if !read_header(event) {
            return end(event, CUT);
        }
        if get(&event.dir.header_len) != 0 {
            // The buffer ended inside it.
            return true;
        }
    }
    let remaining = get(&event.dir.remaining) as u64;
    let base_left = get(&event.cursor.base_left);
    if remaining == 0 || base_left == 0 {
        return true;
    }
    let mut take = remaining.min(base_left);
    if get(&event.dir.keep) != 0 {
        take = take.min(H2_CHUNK as u64);
        if !copy_out(event, get(&event.cursor.base), take) {
            return end(event, CUT);
        }
    }
    set(&mut event.dir.remaining, (remaining - take) as u32);
    advance(event, take);
    true
}

/// Reads what the current buffer holds of the next frame header; when that completes it,
/// copies it into the record and starts the frame's payload. False when it could not.
#[inline(always)]
fn read_header(event: &mut H2Event) -> bool {
    let have = get(&event.dir.header_len) as u64 & 15;
    if have >= H2_FRAME_HEADER as u64 {
        return false;
    }
    let take = masked(
        (H2_FRAME_HEADER as u64 - have).min(get(&event.cursor.base_left)),
        15,
    );
    // SAFETY: have + take <= 9 (checked above), inside the header's 32 bytes.
    let rc = unsafe {
        probe_read_user_raw(
            event.dir.header.as_mut_ptr().add(have as usize).cast(),
            take as u32,
            get(&event.cursor.base) as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return false;
    }
    advance(event, take);
    let have = have + take;
    if have < H2_FRAME_HEADER as u64 {
        set(&mut event.dir.header_len, have as u8);
        return true;
    }
    set(&mut event.dir.header_len, 0);
    // Read in place: the step's stack is what is left of its caller's 512 bytes.
    let h = &event.dir.header;
    let len = u32::from_be_bytes([0, get(&h[0]), get(&h[1]), get(&h[2])]);
    let kind = get(&h[3]);
    if !copy_header(event) {
        return false;
    }
    set(&mut event.dir.remaining, len);
    set(&mut event.dir.keep, !h2_payload_elided(kind, len) as u8);
    true
}

/// Takes the transfer's next buffer: its next iovec (a transfer of one buffer has no other:
/// it was longer than the buffer said, and the walk is lost). False when there is none.
#[inline(always)]
fn next_buffer(event: &mut H2Event, left: u64) -> bool {
    let index = get(&event.cursor.next_iov);
    let vector = get(&event.cursor.iov);
    if vector == 0 || index >= get(&event.cursor.iov_count) || index >= 1024 {
        return false;
    }
    // struct iovec: base at 0, len at 8.
    let Ok(iov) = (unsafe { bpf_probe_read_user((vector + 16 * index) as *const [u64; 2]) }) else {
        return false;
    };
    set(&mut event.cursor.next_iov, index + 1);
    set(&mut event.cursor.base, iov[0]);
    set(&mut event.cursor.base_left, iov[1].min(left));
    true
}

/// Ends the walk of this transfer (`how`: [`DONE`] or [`CUT`]); false, for [`step`].
#[inline(always)]
fn end(event: &mut H2Event, how: u64) -> bool {
    set(&mut event.cursor.state, how);
    false
}

/// Moves the cursor `n` bytes on in the current buffer.
#[inline(always)]
fn advance(event: &mut H2Event, n: u64) {
    let c = &mut event.cursor;
    let (base, base_left, left) = (get(&c.base), get(&c.base_left), get(&c.left));
    set(&mut c.base, base + n);
    set(&mut c.base_left, base_left - n);
    set(&mut c.left, left - n);
}

/// Copies `n` (<= [`H2_CHUNK`]) payload bytes from user memory at `src` into the record.
#[inline(always)]
fn copy_out(event: &mut H2Event, src: u64, n: u64) -> bool {
    let out = get(&event.cursor.out) & (H2_CAPTURE as u64 - 1);
    let n = masked(n, 2 * H2_CHUNK as u64 - 1);
    // SAFETY: out < H2_CAPTURE and n < 2 * H2_CHUNK: inside `data`.
    let rc = unsafe {
        probe_read_user_raw(
            event.data.as_mut_ptr().add(out as usize).cast(),
            n as u32,
            src as *const core::ffi::c_void,
        )
    };
    set(&mut event.cursor.out, out + n);
    rc == 0
}

/// Copies the frame header just read into the record.
#[inline(always)]
fn copy_header(event: &mut H2Event) -> bool {
    let out = get(&event.cursor.out) & (H2_CAPTURE as u64 - 1);
    let dst = &mut event.data[out as usize..];
    if dst.len() < H2_FRAME_HEADER {
        return false;
    }
    dst[..H2_FRAME_HEADER].copy_from_slice(&event.dir.header[..H2_FRAME_HEADER]);
    set(&mut event.cursor.out, out + H2_FRAME_HEADER as u64);
    true
}

/// Sends the record built so far, and starts the next one of the same transfer; false when
/// the ring buffer was full (counted).
#[inline(always)]
fn flush(event: &mut H2Event) -> bool {
    let out = get(&event.cursor.out) & (H2_CAPTURE as u64 * 2 - 1);
    let n = if out > H2_CAPTURE as u64 {
        H2_CAPTURE as u64
    } else {
        out
    };
    event.record.captured = n as u16;
    // SAFETY: IO_RECORD_SIZE + n <= the record and its data.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (&event.record as *const IoRecord).cast::<u8>(),
            IO_RECORD_SIZE + n as usize,
        )
    };
    let sent = output(bytes);
    // The opening flags belong to the transfer's first record only.
    event.record.flags &= !(IO_H2_PREFACE | IO_H2_SETTINGS);
    set(&mut event.cursor.out, 0);
    sent
}

/// `value & mask`, with the mask kept: the compiler would drop it where it knows the value
/// fits, but older verifiers (5.10, 6.1) cannot bound a helper's size argument without it.
#[inline(always)]
fn masked(value: u64, mask: u64) -> u64 {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&value) & mask }
}

/// A load the compiler keeps in place (see the module's doc: loop state stays in memory).
#[inline(always)]
fn get<T: Copy>(at: &T) -> T {
    // SAFETY: a read of a valid reference.
    unsafe { core::ptr::read_volatile(at) }
}

#[inline(always)]
fn set<T: Copy>(at: &mut T, value: T) {
    // SAFETY: a write through a valid reference.
    unsafe { core::ptr::write_volatile(at, value) }
}
