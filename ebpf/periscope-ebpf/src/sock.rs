//! Reading a `struct sock` at offsets from the running kernel's BTF (set at load time by user
//! space, `KernelBtf::sock_offsets`): what the programs on kernel functions, which get the
//! socket and not a tracepoint record, know of a connection. Shared by the HTTP and TCP families.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use periscope_common::tcp::{AF_INET, AF_INET6};

use crate::shared::global;

/// Offsets in `struct sock_common`: the port pair (peer port in network order, then the local
/// one in host order), family, state, IPv4 and IPv6 peer addresses.
#[unsafe(no_mangle)]
pub static SK_PORTPAIR: u32 = 0;
#[unsafe(no_mangle)]
pub static SK_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
static SK_STATE: u32 = 0;
#[unsafe(no_mangle)]
pub static SK_DADDR: u32 = 0;
#[unsafe(no_mangle)]
pub static SK_V6_DADDR: u32 = 0;

/// The `T` at `offset` (a global above) of socket `sk`.
#[inline(always)]
fn read<T>(sk: u64, offset: &u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; the offsets come from this kernel's BTF.
    unsafe { bpf_probe_read_kernel((sk + global(offset) as u64) as *const T) }.ok()
}

/// `skc_portpair`: the peer port in network order in the low half, the local port in host
/// order in the high half.
#[inline(always)]
pub fn portpair(sk: u64) -> Option<u32> {
    read(sk, &SK_PORTPAIR)
}

/// `(local port, peer port)`, both in host order.
#[inline(always)]
pub fn ports(sk: u64) -> (u16, u16) {
    let pair = portpair(sk).unwrap_or(0);
    ((pair >> 16) as u16, u16::from_be(pair as u16))
}

#[inline(always)]
pub fn family(sk: u64) -> Option<u16> {
    read(sk, &SK_FAMILY)
}

/// The TCP state (`skc_state`), as `include/net/tcp_states.h` numbers it.
#[inline(always)]
pub fn state(sk: u64) -> Option<u8> {
    read(sk, &SK_STATE)
}

/// Writes the peer address of a socket of `family` into `addr` (IPv4 in the first 4 bytes, or
/// IPv6); `None` for another family. In place: the HTTP programs' stack is near its limit.
#[inline(always)]
pub fn peer_addr(sk: u64, family: u16, addr: &mut [u8; 16]) -> Option<()> {
    match family {
        AF_INET => addr[..4].copy_from_slice(&read::<[u8; 4]>(sk, &SK_DADDR)?),
        AF_INET6 => *addr = read(sk, &SK_V6_DADDR)?,
        _ => return None,
    }
    Some(())
}
