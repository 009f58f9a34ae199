//! `probes.usdt`: USDT probes (`.note.stapsdt`) to count, or whose argument to histogram.

use serde::Deserialize;

/// USDT probes: `process.usdt.calls` per configured probe, `process.usdt.argument` for
/// entries with `arg`, `process.usdt.duration` for entries with `done`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsdtConfig {
    pub enabled: bool,
    /// The probes to attach; none: the family attaches nothing.
    pub probes: Vec<ProbeConfig>,
    /// (probe, process) series in the kernel; beyond it new series are not recorded (counted).
    pub max_series: u32,
}

impl Default for UsdtConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            probes: Vec::new(),
            max_series: 4096,
        }
    }
}

/// One probe (all its addresses: a probe inlined in several places has one note each).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// The executable or shared library shipping the probe (absolute path, a library file name
    /// such as `libc.so.6`, or `/proc/PID/root/...` for a file inside a container).
    pub path: String,
    /// The probe's provider, as `periscope usdt list PATH` prints it.
    pub provider: String,
    /// The probe's name.
    pub name: String,
    /// Only firings in this process.
    pub pid: Option<u32>,
    /// Also histogram this argument (0-based, as bpftrace's `arg0`).
    pub arg: Option<u8>,
    /// The unit of that argument (UCUM, e.g. `By`, `ms`, `1`); default `1`.
    pub unit: Option<String>,
    /// The done probe (same file and provider) that ends what this one starts, matched per
    /// thread: the time between them is exported as `process.usdt.duration`.
    pub done: Option<String>,
}

/// Most probes one config may name: the entry index travels in the high half of kernel keys.
pub const MAX_PROBES: usize = 256;
/// Most addresses attached in all (each costs a perf event and a `USDT_SPECS` slot).
pub const MAX_ADDRESSES: u32 = 4096;
/// Arguments a USDT probe can have (`<sys/sdt.h>` goes up to 12).
pub const MAX_ARGS: u8 = 12;

impl UsdtConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.probes.len() > MAX_PROBES {
            return Err(format!(
                "probes.usdt.probes: {} entries, at most {MAX_PROBES}",
                self.probes.len()
            ));
        }
        if self.max_series == 0 {
            return Err("probes.usdt.max_series: must be at least 1".into());
        }
        for (i, p) in self.probes.iter().enumerate() {
            let at = format!("probes.usdt.probes[{i}]");
            if p.path.is_empty() || p.provider.is_empty() || p.name.is_empty() {
                return Err(format!("{at}: path, provider and name are required"));
            }
            if p.pid == Some(0) {
                return Err(format!("{at}.pid: must be a process id (not 0)"));
            }
            if let Some(arg) = p.arg
                && arg >= MAX_ARGS
            {
                return Err(format!(
                    "{at}.arg: {arg} is past the last argument ({})",
                    MAX_ARGS - 1
                ));
            }
            if p.done.is_some() && p.arg.is_some() {
                return Err(format!(
                    "{at}: arg and done cannot be combined (two entries can)"
                ));
            }
            if p.done.as_deref() == Some("") {
                return Err(format!("{at}.done: must name the done probe"));
            }
            if p.unit.is_some() && p.arg.is_none() {
                return Err(format!("{at}.unit: only meaningful with arg"));
            }
        }
        Ok(())
    }
}
