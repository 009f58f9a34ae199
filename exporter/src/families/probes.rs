//! Everything loaded into the kernel: the eBPF object, each attached family (from the
//! [`REGISTRY`]), and every family's status.

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
};

use super::{
    CheckLines, Family, KernelSupport, ProbeStatus, ProbesConfig, REGISTRY, Task, TaskContext,
};
use crate::{kernel::tracefs::Tracefs, model::metrics::Metric};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/periscope"));

/// The processes the HTTP and syscall families never measure, as their eBPF programs take them:
/// this one first, then `others` (other Periscope processes), as many as fit; 0 fills the rest.
fn skip_tgids(others: &[u32]) -> [u32; periscope_common::SKIP_TGIDS] {
    let me = std::process::id();
    let mut list = [0; periscope_common::SKIP_TGIDS];
    list[0] = me;
    for (slot, pid) in list[1..]
        .iter_mut()
        .zip(others.iter().filter(|p| **p != me))
    {
        *slot = *pid;
    }
    list
}

/// One attached family and what its sweeps removed so far.
struct Attached {
    name: &'static str,
    family: Box<dyn Family>,
}

pub struct Probes {
    /// Owns every program and link; dropping it detaches everything.
    pub(super) ebpf: Ebpf,
    pub statuses: Vec<ProbeStatus>,
    pub kernel: KernelSupport,
    families: Vec<Attached>,
    counters: Option<PerCpuArray<MapData, u64>>,
    /// Stale start-time entries removed by `sweep`, per registered family.
    swept: Vec<(&'static str, u64)>,
}

impl Probes {
    /// Loads the object and attaches every enabled family. Fails only when the object itself
    /// cannot be loaded; per-family failures end up in `statuses`.
    pub fn start(config: &ProbesConfig, tracefs: Option<&Tracefs>) -> anyhow::Result<Self> {
        let mut kernel = KernelSupport::probe(tracefs);
        let plans: Vec<_> = REGISTRY
            .iter()
            .map(|r| (r, (r.plan)(config, &kernel, tracefs)))
            .collect();
        kernel.forget_btf();

        let mut loader = EbpfLoader::new();
        let preallocated = u32::from(super::attach::needs_preallocated_maps());
        loader.override_global("PREALLOCATED_HISTS", &preallocated, true);
        let skip = skip_tgids(&config.skip_pids);
        for name in [
            "HTTP_SKIP_TGIDS",
            "SYSCALL_SKIP_TGIDS",
            "PROFILE_SKIP_TGIDS",
        ] {
            loader.override_global(name, &skip, true);
        }
        for (_, plan) in &plans {
            for (name, value) in &plan.settings.globals {
                loader.override_global(name, value, true);
            }
            for (name, size) in &plan.settings.max_entries {
                loader.map_max_entries(name, *size);
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            anyhow::anyhow!(
                "loading the eBPF object failed: {e}. Periscope needs CAP_BPF and CAP_PERFMON \
                 (or root); run `periscope check` to see what is missing"
            )
        })?;

        let mut statuses = Vec::new();
        let mut families = Vec::new();
        for (registration, plan) in plans {
            let started = (registration.start)(&mut ebpf, plan, config);
            log_status(&started.status);
            statuses.push(started.status);
            if let Some(family) = started.family {
                families.push(Attached {
                    name: registration.name,
                    family,
                });
            }
        }
        let counters = ebpf
            .take_map("COUNTERS")
            .and_then(|m| PerCpuArray::try_from(m).ok());
        Ok(Self {
            ebpf,
            statuses,
            kernel,
            families,
            counters,
            swept: REGISTRY.iter().map(|r| (r.name, 0)).collect(),
        })
    }

    /// The profile's maps, when `profile` attached: taken out for the one who reads them.
    pub fn take_profile(&mut self) -> Result<super::profile::ProfileReader, super::ProbeError> {
        super::profile::ProfileReader::take(&mut self.ebpf)
    }

    /// Reads every attached family into metrics.
    pub fn collect(&mut self, out: &mut Vec<Metric>) {
        for attached in &mut self.families {
            attached.family.collect(out);
        }
    }

    /// Which families want [`Family::rescan`], and how often.
    pub fn rescans(&self) -> Vec<(&'static str, std::time::Duration)> {
        self.families
            .iter()
            .filter_map(|a| Some((a.name, a.family.rescan_every()?)))
            .collect()
    }

    /// Picks up processes started since the last call, for `family` (see [`Family::rescan`]).
    pub fn rescan(&mut self, family: &str) {
        for attached in self.families.iter_mut().filter(|a| a.name == family) {
            attached.family.rescan(&mut self.ebpf);
        }
    }

    /// Removes start-time entries whose end event was lost (see [`super::STALE_AFTER`]).
    pub fn sweep(&mut self) {
        for attached in &mut self.families {
            let removed = attached.family.sweep();
            if let Some(count) = self.swept.iter_mut().find(|(n, _)| *n == attached.name) {
                count.1 += removed;
            }
        }
    }

    /// Every family's long-running tasks.
    pub fn tasks(&mut self, ctx: &TaskContext<'_>) -> anyhow::Result<Vec<Task>> {
        let mut tasks = Vec::new();
        for attached in &mut self.families {
            tasks.extend(attached.family.tasks(ctx)?);
        }
        Ok(tasks)
    }

    /// Whether some family attaches programs after start (and needs its capability kept).
    pub fn attaches_later(&self) -> bool {
        self.families.iter().any(|a| a.family.attaches_later())
    }

    /// Per family that has them, the extra lines `periscope check` prints.
    pub fn check_lines(&self) -> Vec<CheckLines> {
        self.families
            .iter()
            .filter_map(|a| a.family.check_lines())
            .collect()
    }

    /// The self-telemetry counters, `(probe, kind, value)`: the in-kernel ones and the sweeps.
    pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let swept = self
            .swept
            .iter()
            .map(|(probe, n)| (*probe, "stale_start_swept", *n));
        let Some(counters) = &self.counters else {
            return swept.collect();
        };
        periscope_common::counters::NAMES
            .iter()
            .enumerate()
            .map(|(i, (probe, kind))| {
                let total = counters
                    .get(&(i as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (*probe, *kind, total)
            })
            .chain(swept)
            .collect()
    }

    /// Run time and run count per attached program (meaningful when kernel.bpf_stats_enabled=1).
    pub fn program_stats(&self) -> Vec<(String, std::time::Duration, u64)> {
        crate::kernel::programs::program_stats(&self.ebpf)
    }

    /// Per loaded program, the runs the kernel skipped because another BPF program was already
    /// running on that CPU (`recursion_misses`; always counted, unlike run time). Such events
    /// are lost to every tracer, not only to Periscope.
    pub fn recursion_misses(&self) -> Vec<(String, u64)> {
        crate::kernel::programs::recursion_misses_of(&self.ebpf)
    }
}

fn log_status(status: &ProbeStatus) {
    match (&status.error, status.mechanism) {
        (None, Some(mechanism)) => {
            tracing::info!(probe = status.family, %mechanism, "probe attached")
        }
        (Some(error), _) => tracing::warn!(probe = status.family, %error, "probe not attached"),
        (None, None) => tracing::info!(probe = status.family, "probe disabled"),
    }
}
