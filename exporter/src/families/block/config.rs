//! `probes.block`: block IO latency and size per device and operation.

use serde::Deserialize;

use crate::kernel::mechanism::MechanismChoice;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockConfig {
    pub enabled: bool,
    pub mechanism: MechanismChoice,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mechanism: MechanismChoice::Auto,
        }
    }
}

impl BlockConfig {
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
