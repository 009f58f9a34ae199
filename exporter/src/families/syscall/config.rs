//! `probes.syscall`: syscall latency and errors per process.

use std::time::Duration;

use serde::Deserialize;

use crate::{families::settings::duration, kernel::mechanism::MechanismChoice, process::Selector};

/// Syscall latency and errors per process and syscall (`syscount -L` as metrics). Off by
/// default: on, it runs two programs on every syscall of the processes it measures.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyscallConfig {
    pub enabled: bool,
    pub mechanism: MechanismChoice,
    /// Which processes to measure (the HTTP selectors, without `port`); empty: every process.
    pub select: Vec<Selector>,
    /// How often /proc is rescanned for processes started since (they are measured from the
    /// first rescan that sees them).
    #[serde(deserialize_with = "duration")]
    pub rescan_interval: Duration,
    /// Selected processes measured at once (the kernel's allow-map size).
    pub max_processes: u32,
    /// Kernel entries for (process, syscall, latency bucket) counts and per-series sums; a
    /// series takes one entry per non-empty bucket plus one.
    pub max_latency_entries: u32,
    /// Kernel entries for (process, syscall, errno) error counts.
    pub max_error_entries: u32,
    /// Threads inside a syscall at once (blocked ones included).
    pub max_threads: u32,
}

impl Default for SyscallConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mechanism: MechanismChoice::Auto,
            select: Vec::new(),
            rescan_interval: Duration::from_secs(1),
            max_processes: 4096,
            max_latency_entries: 65_536,
            max_error_entries: 8192,
            max_threads: 32_768,
        }
    }
}

impl SyscallConfig {
    pub fn validate(&self) -> Result<(), String> {
        Selector::validate_all("probes.syscall", &self.select)?;
        if let Some(i) = self.select.iter().position(|s| s.port.is_some()) {
            return Err(format!(
                "probes.syscall.select[{i}].port: syscalls are selected by process, not port"
            ));
        }
        if self.rescan_interval.is_zero() {
            return Err("probes.syscall.rescan_interval: must be greater than zero".into());
        }
        if [
            self.max_processes,
            self.max_latency_entries,
            self.max_error_entries,
            self.max_threads,
        ]
        .contains(&0)
        {
            return Err(
                "probes.syscall: max_processes, max_latency_entries, max_error_entries \
                        and max_threads must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}
