//! An HTTP/2 connection fed arbitrary transfers from both sides, cut as a capture cuts them
//! (the first bytes known, the rest only counted): never panics, its state stays bounded, and
//! every exchange it reports ends no earlier than it started.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::families::http::h2::{
    Connection, Outcome, PREFACE, Side, Start, Transfer, hpack, stream,
};

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
    // Often start with a real preface, so the framing gets past it.
    if first & 2 == 0 {
        let transfer = Transfer {
            time_ns: 0,
            len: PREFACE.len() as u64,
            captured: PREFACE,
        };
        c.on_transfer(Side::Client, transfer, &mut out);
    }
    let mut t = 0u64;
    // Each transfer: one control byte (side, length, whether bytes beyond are missing).
    while let Some((&control, tail)) = rest.split_first() {
        let len = (control as usize >> 2) * 4 + 1;
        let (bytes, next) = tail.split_at(len.min(tail.len()));
        rest = next;
        t += 10;
        let missing = if control & 2 == 0 {
            0
        } else {
            u64::from(control) * 97
        };
        let side = if control & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        };
        let transfer = Transfer {
            time_ns: t,
            len: bytes.len() as u64 + missing,
            captured: bytes,
        };
        c.on_transfer(side, transfer, &mut out);
        assert!(c.open_streams() <= stream::MAX_STREAMS);
        assert!(c.buffered() <= 4 * (hpack::MAX_HEADER_BLOCK + 1) + 2 * hpack::MAX_TABLE_BYTES);
    }
    c.on_close(t + 1, &mut out);
    assert_eq!(c.open_streams(), 0);
    for outcome in &out {
        if let Outcome::Exchange(e) = outcome {
            assert!(e.end_ns >= e.start_ns, "{e:?}");
        }
    }
});
