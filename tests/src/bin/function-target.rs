//! The user function the uprobe tests time. usage: function-target CALLS SLEEP_MS
//!
//! Prints `pid PID`, waits for a line on stdin (so Periscope attaches first), calls
//! `process_order` CALLS times, printing how long each call took as measured here
//! (`call NANOSECONDS`), then `done`, and stays alive until stdin closes (so the daemon can still
//! read its /proc entry when it is scraped).
use std::{
    io::{BufRead, Write},
    time::{Duration, Instant},
};

/// Sleeps the given time: the function a uprobe and a uretprobe are attached to. `no_mangle`
/// keeps its name in the symbol table; `inline(never)` keeps it a real call in both profiles.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn process_order(sleep_ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(sleep_ms));
    std::hint::black_box(sleep_ms)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: function-target CALLS SLEEP_MS"))
        .collect();
    let (calls, sleep_ms) = (args[0], args[1]);
    let mut out = std::io::stdout().lock();
    writeln!(out, "pid {}", std::process::id()).unwrap();
    out.flush().unwrap();
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    for _ in 0..calls {
        let start = Instant::now();
        std::hint::black_box(process_order(std::hint::black_box(sleep_ms)));
        writeln!(out, "call {}", start.elapsed().as_nanos()).unwrap();
    }
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
    for _ in lines {}
}
