//! What a profile samples: set by `periscope profile` from its flags. Not a configuration key
//! yet: the daemon does not export profiles (see docs/profile.md).

/// On-CPU or off-CPU, how often, for which process, and how big the kernel maps are.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileConfig {
    pub enabled: bool,
    /// Samples per second on each CPU (on-CPU).
    pub frequency: u64,
    /// Off-CPU time instead of on-CPU samples.
    pub off_cpu: bool,
    /// Blocks shorter than this are not counted (off-CPU), in microseconds.
    pub min_block_us: u32,
    /// Only this process, filtered in the kernel (`--pid`).
    pub tgid: Option<u32>,
    /// Distinct stacks kept: the size of the stack-trace map and of the count maps.
    pub max_stacks: u32,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            frequency: 99,
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
                "profile frequency {} Hz: must be between 1 and 10000",
                self.frequency
            ));
        }
        if self.max_stacks == 0 {
            return Err("profile max stacks: must be at least 1".into());
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
        assert!(config.validate().unwrap_err().contains("frequency 0 Hz"));
        assert!(ProfileConfig::default().validate().is_ok());
    }
}
