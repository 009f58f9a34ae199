//! The HTTP head parser on arbitrary bytes: never panics, and a head it calls complete lies
//! within the input.
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
});
