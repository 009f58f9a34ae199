//! What family config sections share: how durations are written, and the checks every
//! family's sizes get.

use std::time::Duration;

use serde::Deserializer;

/// Durations are written the human way: `10s`, `500ms`, `1m 30s`. The error is raised while the
/// scalar itself is read, so serde_yaml reports the key path and the value's line and column.
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct HumanDuration;
    impl serde::de::Visitor<'_> for HumanDuration {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as 10s, 500ms or 1m")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text).map_err(|e| {
                E::custom(format!(
                    "invalid duration {text:?} ({e}); write it like 10s, 500ms or 1m"
                ))
            })
        }
    }
    deserializer.deserialize_str(HumanDuration)
}

/// A kernel ring buffer size: a power of two of at least a page.
pub fn check_ring_buffer(section: &str, size: u32) -> Result<(), String> {
    if size.is_power_of_two() && size >= 4096 {
        Ok(())
    } else {
        Err(format!(
            "{section}.ring_buffer_size: {size} is not a power of two of at least 4096"
        ))
    }
}
