//! A Rust program for the profile tests: waits for a line on stdin, then spins for the given
//! seconds in `Spinner::spin_for` (a method, so its symbol is a mangled Rust path that the
//! profile must show demangled), prints `done`, and stays alive until stdin closes. Built
//! without frame pointers, as most Rust programs are.
use std::{
    io::{BufRead, Write},
    time::{Duration, Instant},
};

struct Spinner {
    state: u64,
}

impl Spinner {
    #[inline(never)]
    fn spin_for(&mut self, how_long: Duration) {
        let end = Instant::now() + how_long;
        while Instant::now() < end {
            // Most of the time in this function's own code, not in the clock read.
            for _ in 0..100_000 {
                self.state = std::hint::black_box(self.state.wrapping_mul(31).wrapping_add(7));
            }
        }
    }
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: profile-target SECONDS");
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    let mut spinner = Spinner { state: 1 };
    spinner.spin_for(Duration::from_secs(seconds));
    let mut out = std::io::stdout().lock();
    writeln!(out, "done {}", spinner.state % 10).unwrap();
    out.flush().unwrap();
    for _ in lines {}
}
