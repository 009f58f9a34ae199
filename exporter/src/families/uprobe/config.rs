//! `probes.uprobe`: user-function latency from uprobes.

use serde::Deserialize;

/// User-function latency from uprobes: `process.function.duration` per configured function.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UprobeConfig {
    pub enabled: bool,
    /// The functions to time; none: the family attaches nothing.
    pub functions: Vec<FunctionConfig>,
    /// (thread, function) calls in flight at once, machine-wide.
    pub max_in_flight: u32,
    /// (function, process) series in the kernel; beyond it new series are not recorded (counted).
    pub max_series: u32,
}

impl Default for UprobeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            functions: Vec::new(),
            max_in_flight: 16_384,
            max_series: 4096,
        }
    }
}

/// One function to time.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionConfig {
    /// The executable or shared library (absolute path, or a library file name such as
    /// `libc.so.6` looked up in the standard library directories).
    pub path: String,
    /// The symbol name as in the binary's symbol table (mangled for C++/Rust unless
    /// `#[no_mangle]`/`extern "C"`).
    pub symbol: String,
    /// Only calls in this process.
    pub pid: Option<u32>,
    /// Only calls from threads with this name (comm, at most 15 bytes), like bpftrace's `comm`.
    pub process: Option<String>,
}

/// Most functions one config may time: the entry index travels in the uprobe's cookie and in the
/// high half of kernel keys, and each one costs two perf events.
pub const MAX_FUNCTIONS: usize = 256;

impl UprobeConfig {
    pub fn validate(&self) -> Result<(), String> {
        let uprobe = self;
        if uprobe.functions.len() > MAX_FUNCTIONS {
            return Err(format!(
                "probes.uprobe.functions: {} entries, at most {MAX_FUNCTIONS}",
                uprobe.functions.len()
            ));
        }
        if uprobe.max_in_flight == 0 || uprobe.max_series == 0 {
            return Err("probes.uprobe: max_in_flight and max_series must be at least 1".into());
        }
        for (i, f) in uprobe.functions.iter().enumerate() {
            let at = format!("probes.uprobe.functions[{i}]");
            if f.path.is_empty() || f.symbol.is_empty() {
                return Err(format!("{at}: path and symbol are required"));
            }
            if f.pid == Some(0) {
                return Err(format!("{at}.pid: must be a process id (not 0)"));
            }
            if let Some(name) = &f.process
                && (name.is_empty() || name.len() > 15)
            {
                return Err(format!(
                    "{at}.process: {name:?} must be 1 to 15 bytes (the kernel's comm length)"
                ));
            }
        }
        Ok(())
    }
}
