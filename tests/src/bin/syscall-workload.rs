//! A workload whose syscalls are known exactly, for the syscall tests. It waits (polling with
//! `statx` + `clock_nanosleep`, never `read` or `futex`) until the file GO exists, so that the
//! tracers can attach first; then it makes READS 1-byte reads of /dev/zero, WAITS futex waits
//! that time out after WAIT_MS (a condition variable nobody signals: one FUTEX_WAIT_BITSET each,
//! failing with ETIMEDOUT), and BAD reads of an invalid descriptor (EBADF), and exits.
//! usage: syscall-workload GO READS WAITS WAIT_MS BAD
use std::{
    sync::{Condvar, Mutex},
    time::Duration,
};

fn arg(i: usize) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .expect("usage: syscall-workload GO READS WAITS WAIT_MS BAD")
}

fn main() {
    let go = std::path::PathBuf::from(std::env::args().nth(1).expect("GO file"));
    let (reads, waits, wait_ms, bad) = (arg(2), arg(3), arg(4), arg(5));
    let zero = std::fs::File::open("/dev/zero").expect("open /dev/zero");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&zero);
    let lock = Mutex::new(());
    let never = Condvar::new();
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut byte = [0u8; 1];
    for _ in 0..reads {
        // SAFETY: one byte into a one-byte buffer.
        let n = unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 1);
    }
    for _ in 0..waits {
        let guard = lock.lock().unwrap();
        let _ = never
            .wait_timeout(guard, Duration::from_millis(wait_ms))
            .unwrap();
    }
    for _ in 0..bad {
        // SAFETY: an invalid descriptor: the kernel fails the call before touching the buffer.
        let n = unsafe { libc::read(-1, byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, -1);
    }
}
