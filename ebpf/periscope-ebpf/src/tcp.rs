//! TCP connections from `sock:inet_sock_set_state` (what tcplife, tcpconnect and tcpaccept
//! see), retransmits from `tcp:tcp_retransmit_skb` (tcpretrans) and resets from
//! `tcp:tcp_send_reset`/`tcp:tcp_receive_reset`.
//!
//! A socket is followed from `connect` (SYN_SENT, in the caller's context, so the process is
//! known) or from the end of an inbound handshake (SYN_RECV to ESTABLISHED, in softirq: the
//! process is not known there, user space attributes it to the listener) until CLOSE. Opens,
//! closes and failed connects go to user space as one record each; retransmits and resets are
//! counted here per (process, local port, peer).
//!
//! Byte counts come from `tcp_sock.bytes_acked`/`bytes_received` at close, at offsets user space
//! reads from the kernel's BTF (no hot-path hook on sends and receives).
//!
//! The `fentry` mechanism does the same work from a BPF trampoline on `tcp_set_state` (state
//! changes) and the raw `tcp_retransmit_skb` tracepoint, reading the socket at offsets from BTF
//! (`crate::sock`) instead of a record the kernel assembles for every tracepoint hit. Resets
//! stay on their tracepoints beside them.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{fentry, map, raw_tracepoint, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntryContext, RawTracePointContext, TracePointContext},
};
use periscope_common::{
    counters,
    tcp::{
        AF_INET, AF_INET6, DIRECTION_INBOUND, DIRECTION_OUTBOUND, EVENT_CLOSE,
        EVENT_CONNECT_FAILED, EVENT_OPEN, FIELD_ABSENT, IPPROTO_TCP, PEER_KINDS,
        PEER_RESET_RECEIVED, PEER_RESET_SENT, PEER_RETRANSMIT, SOCKADDR_SIZE, TCP_CLOSE,
        TCP_ESTABLISHED, TCP_SYN_RECV, TCP_SYN_SENT, TcpEvent, TcpPeerKey, TcpSock, array_peer,
        fins_of, payload_bytes, sockaddr_peer,
    },
};

use crate::{
    shared::{count, global, ring_flags},
    sock,
};

// Field offsets, set at load time from the format files (these defaults are 6.x's).
#[unsafe(no_mangle)]
static TCP_STATE_SKADDR: u32 = 8;
#[unsafe(no_mangle)]
static TCP_STATE_OLDSTATE: u32 = 16;
#[unsafe(no_mangle)]
static TCP_STATE_NEWSTATE: u32 = 20;
#[unsafe(no_mangle)]
static TCP_STATE_SPORT: u32 = 24;
#[unsafe(no_mangle)]
static TCP_STATE_DPORT: u32 = 26;
#[unsafe(no_mangle)]
static TCP_STATE_FAMILY: u32 = 28;
#[unsafe(no_mangle)]
static TCP_STATE_PROTOCOL: u32 = 30;
#[unsafe(no_mangle)]
static TCP_STATE_DADDR: u32 = 36;
#[unsafe(no_mangle)]
static TCP_STATE_DADDR_V6: u32 = 56;
// The three peer-counting tracepoints, each with one of two layouts (user space checks which
// from its format file): separate address fields (`sport`, `family` since 5.11, `daddr` 4 bytes,
// `daddr_v6` 16 bytes), or `sockaddr` buffers (`saddr`/`daddr`, 28 bytes: tcp_send_reset
// since 6.10). FIELD_ABSENT marks the fields of the other layout (and a missing `family`).
#[unsafe(no_mangle)]
static TCP_RETRANSMIT_SKADDR: u32 = 16;
#[unsafe(no_mangle)]
static TCP_RETRANSMIT_SPORT: u32 = 28;
#[unsafe(no_mangle)]
static TCP_RETRANSMIT_FAMILY: u32 = 32;
#[unsafe(no_mangle)]
static TCP_RETRANSMIT_DADDR: u32 = 38;
#[unsafe(no_mangle)]
static TCP_RETRANSMIT_DADDR_V6: u32 = 58;
#[unsafe(no_mangle)]
static TCP_RETRANSMIT_SADDR_SOCKADDR: u32 = FIELD_ABSENT;
#[unsafe(no_mangle)]
static TCP_RETRANSMIT_DADDR_SOCKADDR: u32 = FIELD_ABSENT;
#[unsafe(no_mangle)]
static TCP_RECV_RESET_SKADDR: u32 = 8;
#[unsafe(no_mangle)]
static TCP_RECV_RESET_SPORT: u32 = 16;
#[unsafe(no_mangle)]
static TCP_RECV_RESET_FAMILY: u32 = 20;
#[unsafe(no_mangle)]
static TCP_RECV_RESET_DADDR: u32 = 26;
#[unsafe(no_mangle)]
static TCP_RECV_RESET_DADDR_V6: u32 = 46;
#[unsafe(no_mangle)]
static TCP_RECV_RESET_SADDR_SOCKADDR: u32 = FIELD_ABSENT;
#[unsafe(no_mangle)]
static TCP_RECV_RESET_DADDR_SOCKADDR: u32 = FIELD_ABSENT;
#[unsafe(no_mangle)]
static TCP_SEND_RESET_SKADDR: u32 = 16;
#[unsafe(no_mangle)]
static TCP_SEND_RESET_SPORT: u32 = FIELD_ABSENT;
#[unsafe(no_mangle)]
static TCP_SEND_RESET_FAMILY: u32 = FIELD_ABSENT;
#[unsafe(no_mangle)]
static TCP_SEND_RESET_DADDR: u32 = FIELD_ABSENT;
#[unsafe(no_mangle)]
static TCP_SEND_RESET_DADDR_V6: u32 = FIELD_ABSENT;
#[unsafe(no_mangle)]
static TCP_SEND_RESET_SADDR_SOCKADDR: u32 = 32;
#[unsafe(no_mangle)]
static TCP_SEND_RESET_DADDR_SOCKADDR: u32 = 60;
/// Offsets of `bytes_acked` and `bytes_received` in `struct tcp_sock`, from BTF; 0: unknown.
#[unsafe(no_mangle)]
static TCP_BYTES_ACKED_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TCP_BYTES_RECEIVED_OFFSET: u32 = 0;

/// Sockets followed from their first state change to CLOSE. LRU: a socket whose CLOSE was
/// never seen cannot pin an entry.
#[map]
static TCP_SOCKS: LruHashMap<u64, TcpSock> = LruHashMap::with_max_entries(65536, 0);

/// Connection events to user space; its size is set at load time. Records wake user space only
/// when it is parked (`TCP_READER_PARKED`, after a quiet spell): otherwise it drains on a short
/// timer, and a wakeup per connection would cost more.
#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// 1 while user space sleeps until the next record (see `shared::ring_flags`).
#[map]
static TCP_READER_PARKED: Array<u32> = Array::with_max_entries(1, 0);

/// Retransmits and resets per (process, local port, peer, kind); its size (set at load) caps
/// the distinct keys.
#[map]
static TCP_PEERS: PerCpuHashMap<TcpPeerKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Retransmits and resets that found [`TCP_PEERS`] full, per kind.
#[map]
static TCP_PEERS_OVERFLOW: PerCpuArray<u64> = PerCpuArray::with_max_entries(PEER_KINDS, 0);

#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: &u32) -> Option<T> {
    // SAFETY: offsets come from this kernel's format file for the tracepoint.
    unsafe { ctx.read_at::<T>(global(offset) as usize) }.ok()
}

/// The remote address: 4 bytes at `v4` or 16 at `v6`, by family.
#[inline(always)]
fn remote_addr(ctx: &TracePointContext, family: u16, v4: &u32, v6: &u32) -> [u8; 16] {
    let mut addr = [0u8; 16];
    if family == AF_INET {
        if let Some(a) = field::<[u8; 4]>(ctx, v4) {
            addr[..4].copy_from_slice(&a);
        }
    } else if family == AF_INET6
        && let Some(a) = field::<[u8; 16]>(ctx, v6)
    {
        addr = a;
    }
    addr
}

/// A connection's endpoints as an event reports them: `(family, local port, remote port,
/// remote address)`, ports in host order. Read only when an event is sent.
trait Endpoints {
    fn endpoints(&self) -> (u16, u16, u16, [u8; 16]);
}

/// From a `sock:inet_sock_set_state` record.
struct StateRecord<'a>(&'a TracePointContext);

impl Endpoints for StateRecord<'_> {
    #[inline(always)]
    fn endpoints(&self) -> (u16, u16, u16, [u8; 16]) {
        let ctx = self.0;
        let family = field::<u16>(ctx, &TCP_STATE_FAMILY).unwrap_or(0);
        (
            family,
            field::<u16>(ctx, &TCP_STATE_SPORT).unwrap_or(0),
            field::<u16>(ctx, &TCP_STATE_DPORT).unwrap_or(0),
            remote_addr(ctx, family, &TCP_STATE_DADDR, &TCP_STATE_DADDR_V6),
        )
    }
}

/// From the socket itself (the `fentry` programs).
struct Socket(u64);

impl Endpoints for Socket {
    #[inline(always)]
    fn endpoints(&self) -> (u16, u16, u16, [u8; 16]) {
        let family = sock::family(self.0).unwrap_or(0);
        let (local, remote) = sock::ports(self.0);
        let mut addr = [0u8; 16];
        let _ = sock::peer_addr(self.0, family, &mut addr);
        (family, local, remote, addr)
    }
}

#[tracepoint]
pub fn tcp_state(ctx: TracePointContext) -> u32 {
    if field::<u16>(&ctx, &TCP_STATE_PROTOCOL) == Some(IPPROTO_TCP)
        && let (Some(sk), Some(old), Some(new)) = (
            field::<u64>(&ctx, &TCP_STATE_SKADDR),
            field::<i32>(&ctx, &TCP_STATE_OLDSTATE),
            field::<i32>(&ctx, &TCP_STATE_NEWSTATE),
        )
    {
        let _ = state_change(&StateRecord(&ctx), sk, old, new);
    }
    0
}

/// `fentry/tcp_set_state(struct sock *sk, int state)`: every TCP state change this family acts
/// on, before it is made (the socket still holds the old state). The two it does not see,
/// LISTEN and a new child socket's SYN_RECV, are set by `inet_sk_set_state`.
#[fentry(function = "tcp_set_state")]
pub fn tcp_state_fentry(ctx: FEntryContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let new = ctx.arg::<u64>(1) as i32;
    if let Some(old) = sock::state(sk) {
        let _ = state_change(&Socket(sk), sk, i32::from(old), new);
    }
    0
}

/// A TCP socket `sk` going from state `old` to `new`.
#[inline(always)]
fn state_change(at: &impl Endpoints, sk: u64, old: i32, new: i32) -> Option<()> {
    let fins = fins_of(old, new);
    if fins != 0
        && let Some(sock) = TCP_SOCKS.get_ptr_mut(sk)
    {
        // SAFETY: a live map value; state changes of one socket happen under its lock.
        unsafe { (*sock).fins |= fins };
    }
    match new {
        TCP_SYN_SENT => {
            // `connect` runs in the caller's context: the process is known here.
            let sock = TcpSock {
                start_ns: unsafe { bpf_ktime_get_ns() },
                tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
                direction: DIRECTION_OUTBOUND,
                established: 0,
                fins: 0,
                _pad: 0,
                comm: bpf_get_current_comm().unwrap_or_default(),
            };
            let _ = TCP_SOCKS.insert(sk, sock, 0);
        }
        TCP_ESTABLISHED if old == TCP_SYN_RECV => {
            let sock = TcpSock {
                start_ns: unsafe { bpf_ktime_get_ns() },
                direction: DIRECTION_INBOUND,
                established: 1,
                ..TcpSock::default()
            };
            let _ = TCP_SOCKS.insert(sk, sock, 0);
            emit(at, EVENT_OPEN, sk, &sock, (0, 0));
        }
        TCP_ESTABLISHED if old == TCP_SYN_SENT => {
            let sock = TCP_SOCKS.get_ptr_mut(sk)?;
            // SAFETY: a live map value; only this socket's state changes touch it, under its lock.
            unsafe { (*sock).established = 1 };
            emit(at, EVENT_OPEN, sk, unsafe { &*sock }, (0, 0));
        }
        TCP_CLOSE => {
            // SAFETY: copied out before the entry is removed.
            let sock = unsafe { *TCP_SOCKS.get(sk)? };
            let _ = TCP_SOCKS.remove(sk);
            if sock.established != 0 {
                let (acked, received) = byte_counts(sk);
                let outbound = sock.direction == DIRECTION_OUTBOUND;
                let bytes = payload_bytes(acked, received, outbound, sock.fins | fins);
                emit(at, EVENT_CLOSE, sk, &sock, bytes);
            } else if sock.direction == DIRECTION_OUTBOUND {
                emit(at, EVENT_CONNECT_FAILED, sk, &sock, (0, 0));
            }
        }
        _ => {}
    }
    Some(())
}

/// (`bytes_acked`, `bytes_received`) of a closing socket, when BTF gave the offsets.
#[inline(always)]
fn byte_counts(sk: u64) -> (u64, u64) {
    let read = |offset: u32| -> u64 {
        if offset == 0 {
            return 0;
        }
        // SAFETY: bpf_probe_read_kernel checks the address; `sk` is a live tcp_sock here.
        unsafe { bpf_probe_read_kernel((sk + offset as u64) as *const u64) }.unwrap_or(0)
    };
    (
        read(global(&TCP_BYTES_ACKED_OFFSET)),
        read(global(&TCP_BYTES_RECEIVED_OFFSET)),
    )
}

#[inline(always)]
fn emit(at: &impl Endpoints, kind: u8, sk: u64, sock: &TcpSock, bytes: (u64, u64)) {
    let (family, local_port, remote_port, remote_addr) = at.endpoints();
    let event = TcpEvent {
        sk,
        start_ns: sock.start_ns,
        end_ns: unsafe { bpf_ktime_get_ns() },
        bytes_sent: bytes.0,
        bytes_received: bytes.1,
        tgid: sock.tgid,
        kind,
        direction: sock.direction,
        family,
        local_port,
        remote_port,
        _pad: [0; 4],
        remote_addr,
        comm: sock.comm,
    };
    if TCP_EVENTS
        .output::<TcpEvent>(
            &event,
            ring_flags(&TCP_READER_PARKED, BPF_RB_NO_WAKEUP as u64),
        )
        .is_err()
    {
        count(counters::TCP_EVENTS_LOST);
    }
}

/// Where one peer-counting tracepoint keeps its fields on this kernel.
struct PeerFields {
    skaddr: &'static u32,
    sport: &'static u32,
    family: &'static u32,
    daddr: &'static u32,
    daddr_v6: &'static u32,
    saddr_sockaddr: &'static u32,
    daddr_sockaddr: &'static u32,
}

static RETRANSMIT: PeerFields = PeerFields {
    skaddr: &TCP_RETRANSMIT_SKADDR,
    sport: &TCP_RETRANSMIT_SPORT,
    family: &TCP_RETRANSMIT_FAMILY,
    daddr: &TCP_RETRANSMIT_DADDR,
    daddr_v6: &TCP_RETRANSMIT_DADDR_V6,
    saddr_sockaddr: &TCP_RETRANSMIT_SADDR_SOCKADDR,
    daddr_sockaddr: &TCP_RETRANSMIT_DADDR_SOCKADDR,
};

static RECEIVE_RESET: PeerFields = PeerFields {
    skaddr: &TCP_RECV_RESET_SKADDR,
    sport: &TCP_RECV_RESET_SPORT,
    family: &TCP_RECV_RESET_FAMILY,
    daddr: &TCP_RECV_RESET_DADDR,
    daddr_v6: &TCP_RECV_RESET_DADDR_V6,
    saddr_sockaddr: &TCP_RECV_RESET_SADDR_SOCKADDR,
    daddr_sockaddr: &TCP_RECV_RESET_DADDR_SOCKADDR,
};

static SEND_RESET: PeerFields = PeerFields {
    skaddr: &TCP_SEND_RESET_SKADDR,
    sport: &TCP_SEND_RESET_SPORT,
    family: &TCP_SEND_RESET_FAMILY,
    daddr: &TCP_SEND_RESET_DADDR,
    daddr_v6: &TCP_SEND_RESET_DADDR_V6,
    saddr_sockaddr: &TCP_SEND_RESET_SADDR_SOCKADDR,
    daddr_sockaddr: &TCP_SEND_RESET_DADDR_SOCKADDR,
};

#[tracepoint]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    count_peer_of(&ctx, &RETRANSMIT, PEER_RETRANSMIT);
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    count_peer_of(&ctx, &RECEIVE_RESET, PEER_RESET_RECEIVED);
    0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    count_peer_of(&ctx, &SEND_RESET, PEER_RESET_SENT);
    0
}

/// The raw `tcp_retransmit_skb` tracepoint (`sk`, `skb`): where `tcp:tcp_retransmit_skb` fires,
/// without the record the kernel assembles for it. Beside the `fentry` program: the function
/// that fires it, `__tcp_retransmit_skb`, is inlined into its caller on Debian's 6.1 (an
/// `fexit` there saw no SYN retransmit), and a raw tracepoint is as cheap.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_raw(ctx: RawTracePointContext) -> i32 {
    count_socket_peer(ctx.arg(0), PEER_RETRANSMIT);
    0
}

/// Counts one event of kind `kind` on socket `sk`, its endpoints read from the socket.
#[inline(always)]
fn count_socket_peer(sk: u64, kind: u8) {
    let (family, local_port, _, remote_addr) = Socket(sk).endpoints();
    count_peer(&TcpPeerKey {
        tgid: owner(sk),
        local_port,
        family,
        kind,
        has_socket: 1,
        _pad: [0; 6],
        remote_addr,
    });
}

/// Counts one retransmit or reset of the record's socket and peer, whichever layout this
/// kernel's tracepoint has.
#[inline(always)]
fn count_peer_of(ctx: &TracePointContext, fields: &PeerFields, kind: u8) {
    // A reset can be sent for no socket at all (a SYN to a closed port): sk is then 0.
    let sk = field::<u64>(ctx, fields.skaddr).unwrap_or(0);
    let (local_port, family, remote_addr) = if global(fields.daddr_sockaddr) != FIELD_ABSENT {
        let (Some(local), Some(remote)) = (
            field::<[u8; SOCKADDR_SIZE]>(ctx, fields.saddr_sockaddr),
            field::<[u8; SOCKADDR_SIZE]>(ctx, fields.daddr_sockaddr),
        ) else {
            return;
        };
        let (_, local_port, _) = sockaddr_peer(&local);
        let (family, _, remote_addr) = sockaddr_peer(&remote);
        (local_port, family, remote_addr)
    } else {
        let family = if global(fields.family) == FIELD_ABSENT {
            None
        } else {
            field::<u16>(ctx, fields.family)
        };
        let v4 = field::<[u8; 4]>(ctx, fields.daddr).unwrap_or_default();
        let v6 = field::<[u8; 16]>(ctx, fields.daddr_v6).unwrap_or_default();
        let (family, remote_addr) = array_peer(family, v4, v6);
        (
            field::<u16>(ctx, fields.sport).unwrap_or(0),
            family,
            remote_addr,
        )
    };
    let key = TcpPeerKey {
        tgid: owner(sk),
        local_port,
        family,
        kind,
        has_socket: u8::from(sk != 0),
        _pad: [0; 6],
        remote_addr,
    };
    count_peer(&key);
}

/// The process that opened a followed outbound socket; 0 when unknown (inbound, not followed).
#[inline(always)]
fn owner(sk: u64) -> u32 {
    if sk == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    unsafe { TCP_SOCKS.get(sk) }.map_or(0, |s| s.tgid)
}

#[inline(always)]
fn count_peer(key: &TcpPeerKey) {
    if let Some(n) = TCP_PEERS.get_ptr_mut(key) {
        // SAFETY: this CPU's value; programs do not migrate while running.
        unsafe { *n += 1 };
        return;
    }
    if TCP_PEERS.insert(key, 1, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // EEXIST: an interrupting program created it first.
    if let Some(n) = TCP_PEERS.get_ptr_mut(key) {
        unsafe { *n += 1 };
        return;
    }
    count(counters::TCP_PEERS_FULL);
    if let Some(n) = TCP_PEERS_OVERFLOW.get_ptr_mut(key.kind as u32) {
        unsafe { *n += 1 };
    }
}
