//! The HTTP head parser and the chunked-body decoder on arbitrary bytes: never panic, a head it
//! calls complete lies within the input, and so does a chunked body's end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::families::http::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse::request(data) {
        assert!(r.head.len.is_none_or(|n| n <= data.len()));
        let _ = r.body();
    }
    if let Ok(r) = parse::response(data) {
        assert!(r.head.len.is_none_or(|n| n <= data.len()));
        let _ = r.body("GET");
    }
    let _ = parse::ends_chunked_body(data);
    let mut chunked = parse::Chunked::START;
    if let Ok(Some(end)) = chunked.feed(data) {
        assert!(end <= data.len());
    }
});
