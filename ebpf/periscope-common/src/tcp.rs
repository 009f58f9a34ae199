//! TCP connections, retransmits and resets: what the `sock`/`tcp` tracepoint programs share
//! with user space.
//!
//! Connection opens and closes go to user space as [`TcpEvent`] records (one per connection
//! event, so each can be attributed to its process); retransmits and resets, which can come in
//! storms, are counted in the kernel per [`TcpPeerKey`].

/// A connection reached ESTABLISHED.
pub const EVENT_OPEN: u8 = 1;
/// An established connection reached CLOSE: duration and byte counts are final.
pub const EVENT_CLOSE: u8 = 2;
/// An outbound connect failed (SYN_SENT to CLOSE: refused, timed out, unreachable).
pub const EVENT_CONNECT_FAILED: u8 = 3;

/// Accepted from a listening socket.
pub const DIRECTION_INBOUND: u8 = 1;
/// Opened by `connect`.
pub const DIRECTION_OUTBOUND: u8 = 2;

/// What a [`TcpPeerKey`] counts.
pub const PEER_RETRANSMIT: u8 = 0;
pub const PEER_RESET_SENT: u8 = 1;
pub const PEER_RESET_RECEIVED: u8 = 2;
/// Number of peer counter kinds.
pub const PEER_KINDS: u32 = 3;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_FIN_WAIT2: i32 = 5;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_CLOSE_WAIT: i32 = 8;
pub const TCP_LAST_ACK: i32 = 9;
pub const TCP_CLOSING: i32 = 11;

/// The peer's FIN arrived: `bytes_received` counts it as one byte.
pub const FIN_RECEIVED: u8 = 1;
/// Our FIN was acknowledged: `bytes_acked` counts it as one byte.
pub const FIN_ACKED: u8 = 2;

/// Which FIN a state change `old -> new` proves (see `tcp_rcv_state_process`): entering
/// CLOSE_WAIT or CLOSING means the peer's FIN arrived; FIN_WAIT1 to FIN_WAIT2 means ours was
/// acknowledged. The state a socket leaves for CLOSE tells the same on its own (LAST_ACK,
/// FIN_WAIT2 and CLOSING: both FINs, ours acknowledged; CLOSE_WAIT: theirs), so the counts stay
/// right even when an earlier state change was missed (the kernel skips a tracepoint program
/// that fires while another BPF program runs on the CPU).
#[inline(always)]
pub const fn fins_of(old: i32, new: i32) -> u8 {
    match (old, new) {
        (TCP_LAST_ACK | TCP_FIN_WAIT2 | TCP_CLOSING, TCP_CLOSE) => FIN_RECEIVED | FIN_ACKED,
        (TCP_CLOSE_WAIT, TCP_CLOSE) | (_, TCP_CLOSE_WAIT) | (_, TCP_CLOSING) => FIN_RECEIVED,
        (TCP_FIN_WAIT1, TCP_FIN_WAIT2) => FIN_ACKED,
        _ => 0,
    }
}

/// Payload bytes (sent, received) from `tcp_sock.bytes_acked` and `bytes_received`, which count
/// sequence space: the SYN of an active open and each FIN take one.
#[inline(always)]
pub const fn payload_bytes(acked: u64, received: u64, outbound: bool, fins: u8) -> (u64, u64) {
    let syn = outbound as u64;
    let fin_acked = (fins & FIN_ACKED != 0) as u64;
    let fin_received = (fins & FIN_RECEIVED != 0) as u64;
    (
        acked.saturating_sub(syn + fin_acked),
        received.saturating_sub(fin_received),
    )
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// A connection the kernel side follows, by socket address, from its first state change to
/// CLOSE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpSock {
    /// CLOCK_MONOTONIC when it started: `connect` (SYN_SENT) or the accept-side handshake's end.
    pub start_ns: u64,
    /// The process that called `connect`; 0 for inbound connections, whose handshake ends in
    /// softirq context (user space attributes them to the listening process).
    pub tgid: u32,
    pub direction: u8,
    /// 1 once ESTABLISHED was reached (a close before it is a failed connect).
    pub established: u8,
    /// [`FIN_RECEIVED`] and [`FIN_ACKED`], from the state changes seen.
    pub fins: u8,
    pub _pad: u8,
    pub comm: [u8; 16],
}

/// One connection event, sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEvent {
    /// The socket's kernel address (identity while it lives).
    pub sk: u64,
    pub start_ns: u64,
    /// CLOCK_MONOTONIC of this event.
    pub end_ns: u64,
    /// Payload bytes sent and acknowledged, and received (`tcp_sock.bytes_acked` and
    /// `bytes_received`, read at close when BTF gave their offsets; else 0).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub tgid: u32,
    pub kind: u8,
    pub direction: u8,
    pub family: u16,
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: [u8; 4],
    /// IPv4 in the first 4 bytes, or IPv6.
    pub remote_addr: [u8; 16],
    /// The connecting task's comm (outbound), for processes gone before user space looks.
    pub comm: [u8; 16],
}

/// Key of the retransmit and reset counters: owner, local port, peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpPeerKey {
    /// Owning process when known (outbound connections), else 0.
    pub tgid: u32,
    /// Host byte order.
    pub local_port: u16,
    pub family: u16,
    pub kind: u8,
    /// 0 for a reset sent for no socket (a segment to a closed port), else 1.
    pub has_socket: u8,
    pub _pad: [u8; 6],
    pub remote_addr: [u8; 16],
}

/// A load-time field offset for a field this kernel's tracepoint does not have.
pub const FIELD_ABSENT: u32 = u32::MAX;

/// Size of the `saddr`/`daddr` fields of `tcp:tcp_send_reset` since Linux 6.10: a
/// `struct sockaddr_in6`-sized buffer holding a `sockaddr_in` or a `sockaddr_in6`.
pub const SOCKADDR_SIZE: usize = 28;

/// The peer of a tracepoint record with separate IPv4 (`daddr`, 4 bytes) and IPv6 (`daddr_v6`,
/// 16 bytes) address fields: `(family, address)`, IPv4 in the first 4 bytes. `family` is the
/// record's own field where the kernel has one (5.11+ for `tcp_retransmit_skb` and the resets);
/// without it, the kernel stored an IPv4 peer as a v4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn array_peer(family: Option<u16>, v4: [u8; 4], v6: [u8; 16]) -> (u16, [u8; 16]) {
    let family = family.unwrap_or(if is_v4_mapped(&v6) { AF_INET } else { AF_INET6 });
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&v4);
    } else if family == AF_INET6 {
        addr = v6;
    }
    (family, addr)
}

#[inline(always)]
fn is_v4_mapped(v6: &[u8; 16]) -> bool {
    v6[..10].iter().all(|b| *b == 0) && v6[10] == 0xff && v6[11] == 0xff
}

/// `(family, port in host order, address)` of a `sockaddr_in` or `sockaddr_in6` as a
/// tracepoint stores it in [`SOCKADDR_SIZE`] bytes (family in host order, port in network order).
#[inline(always)]
pub fn sockaddr_peer(raw: &[u8; SOCKADDR_SIZE]) -> (u16, u16, [u8; 16]) {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&raw[4..8]);
    } else if family == AF_INET6 {
        // sockaddr_in6: family, port, flow info (4 bytes), then the address.
        addr.copy_from_slice(&raw[8..24]);
    }
    (family, port, addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_peers_with_and_without_a_family_field() {
        let v4 = [10, 0, 0, 7];
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 7];
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut want_v4 = [0u8; 16];
        want_v4[..4].copy_from_slice(&v4);
        // 5.11+: the record says.
        assert_eq!(array_peer(Some(AF_INET), v4, mapped), (AF_INET, want_v4));
        assert_eq!(array_peer(Some(AF_INET6), [0; 4], v6), (AF_INET6, v6));
        // 5.10: no family field; IPv4 peers are v4-mapped in the IPv6 field.
        assert_eq!(array_peer(None, v4, mapped), (AF_INET, want_v4));
        assert_eq!(array_peer(None, [0; 4], v6), (AF_INET6, v6));
    }

    #[test]
    fn sockaddr_peers_of_both_families() {
        let mut sin = [0u8; SOCKADDR_SIZE];
        sin[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        sin[2..4].copy_from_slice(&8080u16.to_be_bytes());
        sin[4..8].copy_from_slice(&[127, 0, 0, 1]);
        let mut want = [0u8; 16];
        want[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(sockaddr_peer(&sin), (AF_INET, 8080, want));

        let mut sin6 = [0u8; SOCKADDR_SIZE];
        sin6[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        sin6[2..4].copy_from_slice(&443u16.to_be_bytes());
        sin6[4..8].copy_from_slice(&[9, 9, 9, 9]); // flow info, not the address
        sin6[23] = 1;
        let mut loopback6 = [0u8; 16];
        loopback6[15] = 1;
        assert_eq!(sockaddr_peer(&sin6), (AF_INET6, 443, loopback6));
    }

    /// The state sequences of an orderly close, as `sock:inet_sock_set_state` shows them.
    #[test]
    fn fins_of_orderly_closes() {
        // We close first: FIN_WAIT1 -> FIN_WAIT2 (ours acked) -> CLOSE (theirs arrived).
        let active = fins_of(1, TCP_FIN_WAIT1)
            | fins_of(TCP_FIN_WAIT1, TCP_FIN_WAIT2)
            | fins_of(TCP_FIN_WAIT2, TCP_CLOSE);
        assert_eq!(active, FIN_RECEIVED | FIN_ACKED);
        // They close first: CLOSE_WAIT (theirs arrived) -> LAST_ACK -> CLOSE (ours acked).
        let passive = fins_of(1, TCP_CLOSE_WAIT)
            | fins_of(TCP_CLOSE_WAIT, TCP_LAST_ACK)
            | fins_of(TCP_LAST_ACK, TCP_CLOSE);
        assert_eq!(passive, FIN_RECEIVED | FIN_ACKED);
        // A reset: straight to CLOSE, no FIN either way.
        assert_eq!(fins_of(1, TCP_CLOSE), 0);
        // The last state change alone tells both, when the earlier ones were missed.
        assert_eq!(fins_of(TCP_LAST_ACK, TCP_CLOSE), FIN_RECEIVED | FIN_ACKED);
        assert_eq!(fins_of(TCP_FIN_WAIT2, TCP_CLOSE), FIN_RECEIVED | FIN_ACKED);
        // 5 bytes sent by a client (SYN + 5 + FIN acked), 5000 received (+ FIN).
        assert_eq!(payload_bytes(7, 5001, true, passive), (5, 5000));
        assert_eq!(payload_bytes(5001, 6, false, active), (5000, 5));
    }
}
