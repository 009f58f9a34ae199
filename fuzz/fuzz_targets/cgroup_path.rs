//! The cgroup path parser on arbitrary text (a container may name its own sub-cgroups, so a
//! `/proc/PID/cgroup` path is not trusted): never panics, and whatever it returns has the
//! exact shape of a container id (64 hex digits) or pod uid (a UUID, or 32 hex digits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::process::cgroup::{CgroupIdentity, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    for identity in [parse(&text), CgroupIdentity::from_proc_cgroup(&text)] {
        if let Some(id) = &identity.container_id {
            assert!(id.len() == 64 && hex(id), "{id:?}");
        }
        if let Some(uid) = &identity.pod_uid {
            let plain = uid.replace('-', "");
            assert!(plain.len() == 32 && hex(&plain), "{uid:?}");
        }
        assert!(identity.runtime.is_none() || identity.container_id.is_some());
    }
});
