//! `probes.sched`: run-queue latency.

use serde::Deserialize;

use crate::kernel::mechanism::MechanismChoice;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedConfig {
    pub enabled: bool,
    pub mechanism: MechanismChoice,
    /// Split run-queue latency by cgroup (container).
    pub by_cgroup: bool,
    /// Distinct cgroups with their own series; the rest share `cgroup.path="other"`.
    pub max_cgroups: u32,
}

impl Default for SchedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mechanism: MechanismChoice::Auto,
            by_cgroup: false,
            max_cgroups: 256,
        }
    }
}

impl SchedConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_cgroups == 0 {
            return Err("probes.sched.max_cgroups: must be at least 1".into());
        }
        Ok(())
    }
}
