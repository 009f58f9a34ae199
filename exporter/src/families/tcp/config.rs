//! `probes.tcp`: TCP connections, retransmits and resets.

use serde::Deserialize;

use crate::kernel::mechanism::MechanismChoice;

/// TCP connections (opens, lifetimes, bytes), retransmits and resets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    pub enabled: bool,
    pub mechanism: MechanismChoice,
    /// Connections followed in the kernel at once (LRU beyond it).
    pub max_connections: u32,
    /// Distinct (process, local port, peer) retransmit/reset counters in the kernel; beyond it
    /// they count in one series marked `otel.metric.overflow=true`.
    pub max_peers: u32,
    /// Distinct connection metric series (all processes); beyond it, `otel.metric.overflow=true`.
    pub max_series: usize,
    /// Kernel-to-user ring buffer size in bytes for connection events (a power of two, at
    /// least 4096).
    pub ring_buffer_size: u32,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mechanism: MechanismChoice::Auto,
            max_connections: 65_536,
            max_peers: 4096,
            max_series: 10_000,
            ring_buffer_size: 1 << 20,
        }
    }
}

impl TcpConfig {
    pub fn validate(&self) -> Result<(), String> {
        crate::families::settings::check_ring_buffer("probes.tcp", self.ring_buffer_size)?;
        if self.max_connections == 0 || self.max_peers == 0 || self.max_series == 0 {
            return Err(
                "probes.tcp: max_connections, max_peers and max_series must be at least 1".into(),
            );
        }
        Ok(())
    }
}
