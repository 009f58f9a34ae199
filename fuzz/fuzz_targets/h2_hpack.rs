//! The HPACK decoder on arbitrary header blocks, from a connection's start and joined midway:
//! never panics, and its table stays within its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::families::http::h2::hpack::{Decoder, MAX_TABLE_BYTES};

fuzz_target!(|data: &[u8]| {
    for mut decoder in [Decoder::at_start(), Decoder::midway()] {
        decoder.allow_table_size(u32::MAX);
        // Several blocks in one input, cut at each 0xfe byte.
        for block in data.split(|b| *b == 0xfe) {
            let _ = decoder.decode(block, |_| {});
            assert!(decoder.table_size() <= MAX_TABLE_BYTES);
        }
    }
});
