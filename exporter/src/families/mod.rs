//! The probe families, each in one home, and the one registry that lists them. A family plans
//! its attach mechanism from what the kernel allows (before the object is loaded: globals and
//! map sizes are load-time), attaches, and then is driven through [`Family`]: collected at
//! scrape/export time, swept and rescanned periodically, and asked for its long-running tasks
//! (ring-buffer readers). A family that cannot attach is reported (log, `periscope check`,
//! `periscope_probe_attached`) and the others run.
//!
//! Adding a family: its folder (or file) here with a `REGISTRATION`, and one line in
//! [`REGISTRY`].

pub mod attach;
pub mod block;
pub mod exec;
pub mod http;
mod probes;
pub mod profile;
pub mod sched;
pub mod settings;
pub mod syscall;
pub mod tcp;
pub mod uprobe;
pub mod usdt;
pub mod user_probe;

use std::{future::Future, pin::Pin};

use aya::Ebpf;
use serde::Deserialize;
use tokio::sync::watch;

pub use self::{
    attach::{
        LoadSettings, Plan, ProbeStatus, STALE_AFTER, SWEEP_INTERVAL, candidates_plan,
        histogram_map, needs_preallocated_maps, none_attached, raw_or_tracepoint_plan,
        start_family, start_family_with, start_raw_or_tracepoints, sweep_stale, tracepoint_plan,
    },
    probes::Probes,
};
pub use crate::kernel::{
    ProbeError,
    maps::{monotonic_ns, take_hash_map, take_histogram_map, take_per_cpu_map},
    mechanism::{KernelSupport, Mechanism, choose_mechanism, release_at_least},
};
use crate::{
    kernel::tracefs::Tracefs,
    model::{metrics::Metric, span::SpanQueue},
};

/// `probes`: every family's section, each owned (and validated) by its family.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    pub block: block::BlockConfig,
    pub sched: sched::SchedConfig,
    pub http: http::HttpConfig,
    pub tcp: tcp::TcpConfig,
    pub uprobe: uprobe::UprobeConfig,
    pub usdt: usdt::UsdtConfig,
    pub syscall: syscall::SyscallConfig,
    pub profile: profile::ProfileConfig,
    /// Other processes the HTTP and syscall families skip in the kernel, besides Periscope's
    /// own (`periscope triage` puts the daemon here); not a configuration key.
    #[serde(skip)]
    pub skip_pids: Vec<u32>,
}

impl ProbesConfig {
    /// Every section's own checks; the error names the key (`probes.<family>...`).
    pub fn validate(&self) -> Result<(), String> {
        self.block.validate()?;
        self.sched.validate()?;
        self.http.validate()?;
        self.tcp.validate()?;
        self.uprobe.validate()?;
        self.usdt.validate()?;
        self.syscall.validate()?;
        self.profile.validate()
    }
}

/// A long-running task of a family (a ring-buffer reader), spawned by the daemon or triage.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What a family's tasks get from whoever runs them.
pub struct TaskContext<'a> {
    pub config: &'a ProbesConfig,
    /// Changes to `true` at shutdown: each task drains what is left and returns.
    pub stopped: watch::Receiver<bool>,
    /// Where finished spans go, when span export is on.
    pub spans: Option<SpanQueue>,
}

/// One attached probe family, as the daemon, `check` and `triage` drive it.
pub trait Family: Send {
    /// Reads what the family aggregated into metrics, cumulative since start. O(series).
    fn collect(&mut self, out: &mut Vec<Metric>);

    /// Deletes kernel-map entries whose end event was lost; returns how many.
    fn sweep(&mut self) -> u64 {
        0
    }

    /// How often [`Family::rescan`] should run, if ever.
    fn rescan_every(&self) -> Option<std::time::Duration> {
        None
    }

    /// Picks up processes started since the last call (selection, libraries to probe).
    fn rescan(&mut self, _ebpf: &mut Ebpf) {}

    /// The family's long-running tasks; called once, after every family has attached.
    fn tasks(&mut self, _ctx: &TaskContext<'_>) -> anyhow::Result<Vec<Task>> {
        Ok(Vec::new())
    }

    /// Whether it attaches programs after start (so the daemon keeps the capability to).
    fn attaches_later(&self) -> bool {
        false
    }

    /// Extra lines for `periscope check` under the family (one per configured entry).
    fn check_lines(&self) -> Option<CheckLines> {
        None
    }
}

/// A family's own section of `periscope check`: one line per configured entry.
pub struct CheckLines {
    pub title: &'static str,
    pub lines: Vec<CheckLine>,
}

/// One configured entry: where it attached (`ok`), or why it could not.
pub struct CheckLine {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

/// A family before it is attached: its entry in [`REGISTRY`].
pub struct Registration {
    pub name: &'static str,
    /// Decides the mechanism and load-time settings from the config and this kernel.
    pub plan: fn(&ProbesConfig, &KernelSupport, Option<&Tracefs>) -> Plan,
    /// Attaches the planned programs and takes the family's maps.
    pub start: fn(&mut Ebpf, Plan, &ProbesConfig) -> Started,
}

/// What [`Registration::start`] gives back: the family (when it attached, or when it has
/// something to report even so) and its status.
pub struct Started {
    pub family: Option<Box<dyn Family>>,
    pub status: ProbeStatus,
}

impl Started {
    pub fn from<F: Family + 'static>((family, status): (Option<F>, ProbeStatus)) -> Self {
        Self {
            family: family.map(|f| Box::new(f) as Box<dyn Family>),
            status,
        }
    }
}

/// Every family the daemon runs, in the order they attach and report.
pub const REGISTRY: &[Registration] = &[
    block::REGISTRATION,
    sched::REGISTRATION,
    http::REGISTRATION,
    tcp::REGISTRATION,
    uprobe::REGISTRATION,
    usdt::REGISTRATION,
    syscall::REGISTRATION,
    profile::REGISTRATION,
];
