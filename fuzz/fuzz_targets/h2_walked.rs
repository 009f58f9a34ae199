//! An HTTP/2 connection fed as the daemon feeds it (`http2.rs`): the kernel's frame walk of
//! each side ([`Connection::on_walked`]), cut anywhere, a walk that lost its place
//! ([`Connection::on_lost`]) and plain transfers after it, records lost on both sides, and
//! closes: never panics, its state stays bounded, and every exchange it reports ends no
//! earlier than it started.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::families::http::h2::{
    Connection, Outcome, PREFACE, Side, Start, Transfer, frame::MAX_WALKED, hpack, stream,
};

/// Each direction: a walk's pending frame, a framer's partial frame, a header block being
/// assembled (at most one more frame's worth past the limit), its table.
const MAX_BUFFERED: usize =
    2 * MAX_WALKED + 4 * (hpack::MAX_HEADER_BLOCK + 1) + 2 * hpack::MAX_TABLE_BYTES;

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let mut c = Connection::new(if first & 1 == 0 {
        Start::Beginning
    } else {
        Start::Midway
    });
    let mut out = Vec::new();
    let mut t = 0u64;
    // Each step: a control byte (side, what happens, how many bytes follow), then its bytes.
    while let Some((&control, tail)) = rest.split_first() {
        let side = if control & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        };
        let len = (control as usize >> 4) * 16 + 1;
        t += 10;
        match (control >> 1) & 7 {
            // Walked bytes, from any point of a frame (the kernel's records cut anywhere).
            0..=3 => {
                let (bytes, next) = tail.split_at(len.min(tail.len()));
                rest = next;
                c.on_walked(side, t, bytes, &mut out);
            }
            // A walk the kernel cut short: what follows on that side is unknown.
            4 => {
                let (bytes, next) = tail.split_at(len.min(tail.len()));
                rest = next;
                c.on_walked(side, t, bytes, &mut out);
                c.on_lost(side, &mut out);
            }
            // A plain transfer (after the walk lost its place), its end maybe not captured.
            5 => {
                let (bytes, next) = tail.split_at(len.min(tail.len()));
                rest = next;
                let missing = if control & 0x10 == 0 { 0 } else { 1000 };
                let transfer = Transfer {
                    time_ns: t,
                    len: bytes.len() as u64 + missing,
                    captured: bytes,
                };
                c.on_transfer(side, transfer, &mut out);
            }
            // The client preface, as a walk's first record starts past it.
            6 => {
                rest = tail;
                if control & 0x10 == 0 {
                    c.on_lost(Side::Client, &mut out);
                    c.on_lost(Side::Server, &mut out);
                } else {
                    let transfer = Transfer {
                        time_ns: t,
                        len: PREFACE.len() as u64,
                        captured: PREFACE,
                    };
                    c.on_transfer(Side::Client, transfer, &mut out);
                }
            }
            // Closed (the daemon then drops the connection; going on is harder still).
            _ => {
                rest = tail;
                c.on_close(t, &mut out);
                assert_eq!(c.open_streams(), 0);
            }
        }
        assert!(c.open_streams() <= stream::MAX_STREAMS);
        assert!(c.buffered() <= MAX_BUFFERED, "{} buffered", c.buffered());
    }
    c.on_close(t + 1, &mut out);
    assert_eq!(c.open_streams(), 0);
    for outcome in &out {
        if let Outcome::Exchange(e) = outcome {
            assert!(e.end_ns >= e.start_ns, "{e:?}");
        }
    }
});
