//! A connection fed arbitrary reads and writes, cut as the kernel cuts them (at most 512 leading
//! bytes plus an 8-byte tail): never panics, and its state stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::families::http::connection::{Capture, Connection, Io, MAX_IN_FLIGHT, Role};

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let mut c = Connection::new(if first & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    });
    let mut out = Vec::new();
    let mut t = 0u64;
    // Each IO: one control byte (direction, length), then its bytes.
    while let Some((&control, tail)) = rest.split_first() {
        let len = (control as usize >> 1) * 8 + 1;
        let (bytes, next) = tail.split_at(len.min(tail.len()));
        rest = next;
        t += 10;
        let captured = &bytes[..bytes.len().min(512)];
        let last = &bytes[bytes.len().saturating_sub(8)..];
        let io = Io {
            start_ns: t,
            end_ns: t + 5,
            len: bytes.len() as u64,
            captured,
            tail: if bytes.len() > 512 { last } else { &[] },
            tid: 1,
            capture: Capture::Plain,
        };
        if control & 1 == 0 {
            c.on_read(&io, &mut out);
        } else {
            c.on_write(&io, &mut out);
        }
        assert!(c.in_flight() <= MAX_IN_FLIGHT);
        out.clear();
    }
    c.on_close(&mut out);
    assert_eq!(c.in_flight(), 0);
});
