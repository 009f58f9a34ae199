//! `probes.profile`: continuous CPU (or off-CPU) profiles in the daemon, exported over OTLP
//! and served as pprof beside `/metrics`. `periscope profile` sets the same fields from its
//! flags.

use serde::Deserialize;

/// On-CPU or off-CPU, how often, for which process, and how big the kernel maps are.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    pub enabled: bool,
    /// Samples per second on each CPU (on-CPU). The daemon's default, 19 Hz, is a prime off
    /// the timer ticks and costs well under 1% of a core; `periscope profile` samples at 99.
    pub frequency: u64,
    /// Off-CPU time instead of on-CPU samples.
    pub off_cpu: bool,
    /// Blocks shorter than this are not counted (off-CPU), in microseconds.
    pub min_block_us: u32,
    /// Only this process, filtered in the kernel (`periscope profile --pid`).
    #[serde(skip)]
    pub tgid: Option<u32>,
    /// Distinct stacks kept: the size of the stack-trace map and of the count maps. The daemon
    /// empties the maps when they are three-quarters full.
    pub max_stacks: u32,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            frequency: 19,
            off_cpu: false,
            min_block_us: 1,
            tgid: None,
            max_stacks: 16384,
        }
    }
}

impl ProfileConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.frequency) {
            return Err(format!(
                "probes.profile.frequency: {} Hz, must be between 1 and 10000",
                self.frequency
            ));
        }
        if self.max_stacks == 0 {
            return Err("probes.profile.max_stacks: must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frequency_outside_1_to_10000_hz_is_refused_by_name() {
        let config = ProfileConfig {
            frequency: 0,
            ..Default::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("probes.profile.frequency: 0 Hz")
        );
        assert!(ProfileConfig::default().validate().is_ok());
    }
}
