//! The USDT note reader on arbitrary bytes (a probed binary is built by someone else): as an
//! ELF file and as argument-spec text, it never panics, and every probe it returns lies inside
//! the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::families::usdt::note::{parse_args, probes};

fuzz_target!(|data: &[u8]| {
    if let Ok(found) = probes("fuzz", data) {
        for probe in found {
            assert!(probe.offset < data.len() as u64, "{probe:?}");
        }
    }
    if let Ok(args) = parse_args(&String::from_utf8_lossy(data)) {
        for arg in args {
            assert!(matches!(arg.size, 1 | 2 | 4 | 8) && arg.reg <= 20, "{arg:?}");
        }
    }
});
