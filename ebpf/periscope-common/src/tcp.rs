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

#[cfg(test)]
mod tests {
    use super::*;

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
