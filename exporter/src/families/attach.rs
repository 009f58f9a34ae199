//! What every family does to attach: plan a mechanism (before the object is loaded, since
//! globals and map sizes are load-time), attach its programs, take its maps, and report.

use aya::{Ebpf, maps::MapData};

use super::{KernelSupport, Mechanism, ProbeError, choose_mechanism, monotonic_ns};
use crate::kernel::{
    mechanism::MechanismChoice,
    programs::{attach_raw_tracepoints, attach_tracepoints},
    tracefs::Tracefs,
};

/// The plan of an enabled tracepoint-based family: its mechanism, and the globals `offsets`
/// derives from this kernel's tracepoint format files, added to `settings`.
pub fn tracepoint_plan(
    family: &str,
    implemented: &[Mechanism],
    choice: MechanismChoice,
    kernel: &KernelSupport,
    tracefs: Option<&Tracefs>,
    mut settings: LoadSettings,
    offsets: impl FnOnce(&Tracefs) -> Result<Vec<(&'static str, u32)>, ProbeError>,
) -> Plan {
    let mechanism = choose_mechanism(family, implemented, choice, kernel)
        .map_err(ProbeError::Mechanism)
        .and_then(|mechanism| {
            let tracefs = tracefs.ok_or_else(|| {
                ProbeError::Mechanism(format!("{family}: tracefs is not mounted"))
            })?;
            settings.globals.extend(offsets(tracefs)?);
            Ok(mechanism)
        });
    Plan {
        settings,
        enabled: true,
        mechanism,
    }
}

/// Outcome of attaching one family.
#[derive(Debug, Clone)]
pub struct ProbeStatus {
    pub family: &'static str,
    pub enabled: bool,
    pub mechanism: Option<Mechanism>,
    pub error: Option<String>,
    /// Names of the attached eBPF programs.
    pub programs: Vec<&'static str>,
}

impl ProbeStatus {
    pub fn attached(&self) -> bool {
        self.mechanism.is_some() && self.error.is_none()
    }
}

/// Load-time settings of one family: the globals it sets and the map sizes it overrides.
#[derive(Default)]
pub struct LoadSettings {
    pub globals: Vec<(&'static str, u32)>,
    pub max_entries: Vec<(&'static str, u32)>,
}

/// What a family will do, decided before the object is loaded (globals are load-time).
pub struct Plan {
    pub settings: LoadSettings,
    pub enabled: bool,
    pub mechanism: Result<Mechanism, ProbeError>,
}

impl Plan {
    pub fn disabled(settings: LoadSettings) -> Self {
        Self {
            settings,
            enabled: false,
            mechanism: Err(ProbeError::Mechanism("disabled".into())),
        }
    }
}

/// Attaches a family's tracepoint `programs` as its plan says, then takes its maps with
/// `take_maps`; either way, the outcome becomes the family's status.
pub fn start_family<T>(
    ebpf: &mut Ebpf,
    family: &'static str,
    plan: Plan,
    programs: &[(&'static str, &'static str, &'static str)],
    take_maps: impl FnOnce(&mut Ebpf) -> Result<T, ProbeError>,
) -> (Option<T>, ProbeStatus) {
    let attach = |ebpf: &mut Ebpf, _: Mechanism| {
        attach_tracepoints(ebpf, programs)?;
        Ok(programs.iter().map(|p| p.0).collect())
    };
    start_family_with(ebpf, family, plan, attach, take_maps)
}

/// As [`start_family`], with `attach` attaching the programs of the planned mechanism and
/// returning their names.
pub fn start_family_with<T>(
    ebpf: &mut Ebpf,
    family: &'static str,
    plan: Plan,
    attach: impl FnOnce(&mut Ebpf, Mechanism) -> Result<Vec<&'static str>, ProbeError>,
    take_maps: impl FnOnce(&mut Ebpf) -> Result<T, ProbeError>,
) -> (Option<T>, ProbeStatus) {
    let mut status = ProbeStatus {
        family,
        enabled: plan.enabled,
        mechanism: None,
        error: None,
        programs: Vec::new(),
    };
    if !plan.enabled {
        return (None, status);
    }
    let started = plan.mechanism.and_then(|mechanism| {
        let programs = attach(ebpf, mechanism)?;
        Ok((mechanism, programs, take_maps(ebpf)?))
    });
    match started {
        Ok((mechanism, programs, family)) => {
            status.mechanism = Some(mechanism);
            status.programs = programs;
            status.programs.dedup();
            (Some(family), status)
        }
        Err(e) => {
            status.error = Some(e.to_string());
            (None, status)
        }
    }
}

/// The plan of a family with raw tracepoint and tracepoint variants: raw tracepoints when
/// chosen and `raw_globals` (offsets from BTF) can be had, else, unless raw tracepoints were
/// forced, the tracepoint plan `tracepoints(implemented, choice, settings)` makes.
pub fn raw_or_tracepoint_plan(
    family: &str,
    choice: MechanismChoice,
    kernel: &KernelSupport,
    mut settings: LoadSettings,
    raw_globals: impl FnOnce() -> Result<Vec<(&'static str, u32)>, String>,
    tracepoints: impl FnOnce(&[Mechanism], MechanismChoice, LoadSettings) -> Plan,
) -> Plan {
    const BOTH: &[Mechanism] = &[Mechanism::RawTracepoint, Mechanism::Tracepoint];
    if choose_mechanism(family, BOTH, choice, kernel) != Ok(Mechanism::RawTracepoint) {
        return tracepoints(BOTH, choice, settings);
    }
    match raw_globals() {
        Ok(globals) => {
            settings.globals.extend(globals);
            Plan {
                settings,
                enabled: true,
                mechanism: Ok(Mechanism::RawTracepoint),
            }
        }
        // Chosen, not forced: the tracepoints need no BTF.
        Err(why) if choice == MechanismChoice::Auto => {
            tracing::info!(probe = family, reason = %why, "raw tracepoints unusable; using tracepoints");
            tracepoints(&[Mechanism::Tracepoint], MechanismChoice::Auto, settings)
        }
        Err(why) => Plan {
            settings,
            enabled: true,
            mechanism: Err(ProbeError::Mechanism(format!(
                "{family}: mechanism raw_tracepoint is configured but {why}"
            ))),
        },
    }
}

/// Starts a family with raw tracepoint variants of its programs (`raw`: per mechanism, the
/// raw tracepoints it attaches to) and tracepoint ones (`tracepoints`), attaching those of the
/// planned mechanism.
pub fn start_raw_or_tracepoints<T>(
    ebpf: &mut Ebpf,
    family: &'static str,
    plan: Plan,
    raw: &[(Mechanism, &[(&'static str, &'static str)])],
    tracepoints: &[(&'static str, &'static str, &'static str)],
    take_maps: impl FnOnce(&mut Ebpf) -> Result<T, ProbeError>,
) -> (Option<T>, ProbeStatus) {
    let attach =
        |ebpf: &mut Ebpf, mechanism: Mechanism| match raw.iter().find(|(m, _)| *m == mechanism) {
            Some((_, programs)) => {
                attach_raw_tracepoints(ebpf, programs)?;
                Ok(programs.iter().map(|p| p.0).collect())
            }
            None => {
                attach_tracepoints(ebpf, tracepoints)?;
                Ok(tracepoints.iter().map(|p| p.0).collect())
            }
        };
    start_family_with(ebpf, family, plan, attach, take_maps)
}

/// Start-time maps (in-flight requests, runnable tasks) are plain hashes: an end event that is
/// lost (Periscope attached mid-request, a requeued request) would leave its entry forever. The
/// daemon sweeps entries older than this every [`SWEEP_INTERVAL`].
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Deletes entries of a start-time map that started more than [`STALE_AFTER`] ago; returns how
/// many. O(entries), and entries are only the requests or tasks in flight right now.
pub fn sweep_stale<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::HashMap<MapData, K, V>,
    started_ns: impl Fn(&V) -> u64,
) -> u64 {
    let cutoff = monotonic_ns().saturating_sub(STALE_AFTER.as_nanos() as u64);
    crate::kernel::maps::sweep_older_than(map, cutoff, started_ns)
}
