//! The `fentry` mechanism, for kernels without the socket tracepoints (before 6.5) that have BTF
//! trampolines and `bpf_task_pt_regs` (5.15+): the same work as the socket tracepoint programs,
//! at the return of the TCP functions every send and receive of a TCP socket goes through. The
//! functions are the kernel's own, not an ABI: user space attaches each program only where this
//! kernel's BTF has the function with the parameters the program expects.

use super::socket::{sock_io, sock_recv};
use aya_ebpf::{macros::fexit, programs::FExitContext};
use periscope_common::http::KIND_WRITE;

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
