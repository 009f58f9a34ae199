//! What every family does to attach: plan a mechanism (before the object is loaded, since
//! globals and map sizes are load-time), attach its programs, take its maps, and report.

use aya::{Ebpf, maps::MapData};

use super::{KernelSupport, Mechanism, ProbeError, choose_mechanism, monotonic_ns};
use crate::kernel::{
    mechanism::MechanismChoice,
    programs::{attach_raw_tracepoints, attach_tracepoints},
    tracefs::Tracefs,
};

/// The error of a family none of whose configured entries (uprobe functions, USDT probes)
/// attached: each entry's index and reason.
pub fn none_attached<'a>(
    family: &str,
    what: &str,
    entries: impl Iterator<Item = (usize, Option<&'a String>)>,
) -> String {
    let reasons: Vec<String> = entries
        .filter_map(|(index, why)| Some(format!("[{index}] {}", why?)))
        .collect();
    format!(
        "{family}: no configured {what} could be attached ({})",
        reasons.join("; ")
    )
}

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
    Plan::single(settings, mechanism)
}

/// The plan of a family implementing `implemented`: forced, the configured mechanism alone;
/// with `auto`, every mechanism the kernel allows and whose load-time globals `globals` can
/// give, best first: the first is attached, the others are tried in turn when the kernel
/// refuses its programs. Mechanisms better than the first usable one are reported with why
/// they were passed over.
pub fn candidates_plan(
    family: &str,
    implemented: &[Mechanism],
    choice: MechanismChoice,
    kernel: &KernelSupport,
    mut settings: LoadSettings,
    mut globals: impl FnMut(Mechanism) -> Result<Vec<(&'static str, u32)>, String>,
) -> Plan {
    if let Some(forced) = Mechanism::from_choice(choice) {
        let mechanism = choose_mechanism(family, implemented, choice, kernel).and_then(|m| {
            let found = globals(m)
                .map_err(|why| format!("{family}: mechanism {forced} is configured but {why}"))?;
            settings.globals.extend(found);
            Ok(m)
        });
        return Plan::single(settings, mechanism.map_err(ProbeError::Mechanism));
    }
    let mut usable = Vec::new();
    let mut passed_over = Vec::new();
    for mechanism in Mechanism::PREFERENCE
        .into_iter()
        .filter(|m| implemented.contains(m))
    {
        match kernel.allows(mechanism).and_then(|()| globals(mechanism)) {
            Ok(found) => {
                settings.globals.extend(found);
                usable.push(mechanism);
            }
            Err(why) => passed_over.push((mechanism, why)),
        }
    }
    let Some((&first, fallbacks)) = usable.split_first() else {
        let reasons: Vec<String> = passed_over
            .iter()
            .map(|(m, why)| format!("{m}: {why}"))
            .collect();
        return Plan::single(
            settings,
            Err(ProbeError::Mechanism(format!(
                "{family}: no usable mechanism ({})",
                reasons.join("; ")
            ))),
        );
    };
    passed_over.retain(|(m, _)| *m < first);
    Plan {
        settings,
        enabled: true,
        mechanism: Ok(first),
        fallbacks: fallbacks.to_vec(),
        refused: passed_over,
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
    /// Mechanisms passed over or refused by the kernel before the one used (or all of them,
    /// when none attached), in the order tried, with why.
    pub refused: Vec<(Mechanism, String)>,
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
    /// The mechanism to attach first, or why there is none.
    pub mechanism: Result<Mechanism, ProbeError>,
    /// With `auto`: the mechanisms to try next, in order, when the kernel refuses the
    /// programs of the one before (verifier, missing helper); their globals are in `settings`.
    pub fallbacks: Vec<Mechanism>,
    /// Better mechanisms passed over while planning, and why.
    pub refused: Vec<(Mechanism, String)>,
}

impl Plan {
    pub fn disabled(settings: LoadSettings) -> Self {
        Self {
            enabled: false,
            ..Self::single(settings, Err(ProbeError::Mechanism("disabled".into())))
        }
    }

    /// A plan with one mechanism and no fallback.
    pub fn single(settings: LoadSettings, mechanism: Result<Mechanism, ProbeError>) -> Self {
        Self {
            settings,
            enabled: true,
            mechanism,
            fallbacks: Vec::new(),
            refused: Vec::new(),
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

/// As [`start_family`], with `attach` attaching the programs of a mechanism (all or none) and
/// returning their names. When the kernel refuses the planned mechanism's programs, the
/// plan's fallbacks are tried in order; each refusal is kept in the status.
pub fn start_family_with<T>(
    ebpf: &mut Ebpf,
    family: &'static str,
    plan: Plan,
    mut attach: impl FnMut(&mut Ebpf, Mechanism) -> Result<Vec<&'static str>, ProbeError>,
    take_maps: impl FnOnce(&mut Ebpf) -> Result<T, ProbeError>,
) -> (Option<T>, ProbeStatus) {
    let mut status = ProbeStatus {
        family,
        enabled: plan.enabled,
        mechanism: None,
        error: None,
        programs: Vec::new(),
        refused: plan.refused,
    };
    if !plan.enabled {
        return (None, status);
    }
    let first = match plan.mechanism {
        Ok(mechanism) => mechanism,
        Err(e) => {
            status.error = Some(e.to_string());
            return (None, status);
        }
    };
    let mut candidates = std::iter::once(first).chain(plan.fallbacks).peekable();
    while let Some(mechanism) = candidates.next() {
        match attach(ebpf, mechanism) {
            Ok(programs) => {
                return match take_maps(ebpf) {
                    Ok(maps) => {
                        status.mechanism = Some(mechanism);
                        status.programs = programs;
                        status.programs.dedup();
                        (Some(maps), status)
                    }
                    Err(e) => {
                        status.error = Some(e.to_string());
                        (None, status)
                    }
                };
            }
            Err(e) => {
                let why = crate::kernel::programs::refusal(&e);
                tracing::debug!(probe = family, %mechanism, error = %e, "programs refused");
                if candidates.peek().is_some() {
                    tracing::info!(probe = family, %mechanism, reason = %why, "refused; trying the next mechanism");
                }
                status.refused.push((mechanism, why));
            }
        }
    }
    let tried: Vec<String> = status
        .refused
        .iter()
        .map(|(m, why)| format!("{m}: {why}"))
        .collect();
    status.error = Some(format!(
        "{family}: no mechanism attached ({})",
        tried.join("; ")
    ));
    (None, status)
}

/// The plan of a family with raw tracepoint and tracepoint variants: `raw_globals` gives the
/// raw programs' globals (offsets from BTF), `tracepoint_globals` the tracepoint programs' ones
/// (from their format files); under `auto` both are candidates, raw first.
pub fn raw_or_tracepoint_plan(
    family: &str,
    choice: MechanismChoice,
    kernel: &KernelSupport,
    tracefs: Option<&Tracefs>,
    settings: LoadSettings,
    raw_globals: impl FnOnce() -> Result<Vec<(&'static str, u32)>, String>,
    tracepoint_globals: impl FnOnce(&Tracefs) -> Result<Vec<(&'static str, u32)>, ProbeError>,
) -> Plan {
    const BOTH: &[Mechanism] = &[Mechanism::RawTracepoint, Mechanism::Tracepoint];
    let (mut raw_globals, mut tracepoint_globals) = (Some(raw_globals), Some(tracepoint_globals));
    candidates_plan(family, BOTH, choice, kernel, settings, |mechanism| {
        if mechanism == Mechanism::RawTracepoint {
            return raw_globals.take().map_or(Ok(Vec::new()), |f| f());
        }
        let tracefs = tracefs.ok_or_else(|| "tracefs is not mounted".to_string())?;
        tracepoint_globals
            .take()
            .map_or(Ok(Vec::new()), |f| f(tracefs).map_err(|e| e.to_string()))
    })
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
    let attach = |ebpf: &mut Ebpf, mechanism: Mechanism| {
        attach_raw_or_tracepoints(ebpf, mechanism, raw, tracepoints)
    };
    start_family_with(ebpf, family, plan, attach, take_maps)
}

/// Attaches `mechanism`: the raw tracepoint programs `raw` lists for it, else `tracepoints`;
/// the names of the programs attached.
pub fn attach_raw_or_tracepoints(
    ebpf: &mut Ebpf,
    mechanism: Mechanism,
    raw: &[(Mechanism, &[(&'static str, &'static str)])],
    tracepoints: &[(&'static str, &'static str, &'static str)],
) -> Result<Vec<&'static str>, ProbeError> {
    match raw.iter().find(|(m, _)| *m == mechanism) {
        Some((_, programs)) => {
            attach_raw_tracepoints(ebpf, programs)?;
            Ok(programs.iter().map(|p| p.0).collect())
        }
        None => {
            attach_tracepoints(ebpf, tracepoints)?;
            Ok(tracepoints.iter().map(|p| p.0).collect())
        }
    }
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

/// Whether this kernel's tracing programs must use preallocated hash maps: before 6.1 (hash
/// maps on `bpf_mem_alloc`), allocating at run time in a tracepoint program can deadlock
/// (`sched_switch` holds the run-queue lock; 5.10 warns "trace type BPF program uses run-time
/// allocation"). `periscope check` hung on 5.10 under qemu in 4 boots of 5 before this.
pub fn needs_preallocated_maps() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    !crate::kernel::mechanism::release_at_least(release.trim(), (6, 1))
}

/// Sizes the histogram map in use of a pair (`name`, its preallocated twin `prealloc`) to
/// `entries` entries, and the other to 1 entry.
pub fn histogram_map(
    settings: &mut LoadSettings,
    name: &'static str,
    prealloc: &'static str,
    entries: u32,
) {
    let (used, unused) = if needs_preallocated_maps() {
        (prealloc, name)
    } else {
        (name, prealloc)
    };
    settings.max_entries.push((used, entries));
    settings.max_entries.push((unused, 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP_LIKE: &[Mechanism] = &[
        Mechanism::SocketTracepoint,
        Mechanism::RawTracepoint,
        Mechanism::Tracepoint,
    ];

    fn globals_for(m: Mechanism) -> Result<Vec<(&'static str, u32)>, String> {
        match m {
            Mechanism::SocketTracepoint => Err("no BTF for struct sock here".into()),
            Mechanism::RawTracepoint => Ok(vec![("RAW_OFFSET", 1)]),
            _ => Ok(vec![("TRACEPOINT_OFFSET", 2)]),
        }
    }

    #[test]
    fn auto_keeps_every_usable_mechanism_in_order_and_says_why_better_ones_were_passed_over() {
        let kernel = KernelSupport::allowing(&[
            Mechanism::SocketTracepoint,
            Mechanism::RawTracepoint,
            Mechanism::Tracepoint,
        ]);
        let plan = candidates_plan(
            "http",
            HTTP_LIKE,
            MechanismChoice::Auto,
            &kernel,
            LoadSettings::default(),
            globals_for,
        );
        assert_eq!(plan.mechanism.ok(), Some(Mechanism::RawTracepoint));
        assert_eq!(plan.fallbacks, vec![Mechanism::Tracepoint]);
        assert_eq!(
            plan.refused,
            vec![(
                Mechanism::SocketTracepoint,
                "no BTF for struct sock here".to_string()
            )]
        );
        // Both candidates' globals are set at load: the fallback needs no reload.
        assert_eq!(
            plan.settings.globals,
            vec![("RAW_OFFSET", 1), ("TRACEPOINT_OFFSET", 2)]
        );
    }

    #[test]
    fn a_forced_mechanism_has_no_fallback() {
        let kernel = KernelSupport::allowing(&[Mechanism::RawTracepoint, Mechanism::Tracepoint]);
        let plan = candidates_plan(
            "http",
            HTTP_LIKE,
            MechanismChoice::RawTracepoint,
            &kernel,
            LoadSettings::default(),
            globals_for,
        );
        assert_eq!(plan.mechanism.ok(), Some(Mechanism::RawTracepoint));
        assert!(plan.fallbacks.is_empty());
        let plan = candidates_plan(
            "http",
            HTTP_LIKE,
            MechanismChoice::SocketTracepoint,
            &kernel,
            LoadSettings::default(),
            globals_for,
        );
        assert_eq!(
            plan.mechanism.err().map(|e| e.to_string()),
            Some(
                "http: mechanism socket_tracepoint is configured but socket_tracepoint is not in \
                 this test kernel"
                    .to_string()
            )
        );
    }

    #[test]
    fn no_usable_mechanism_names_each_reason() {
        let kernel = KernelSupport::allowing(&[Mechanism::SocketTracepoint]);
        let plan = candidates_plan(
            "http",
            HTTP_LIKE,
            MechanismChoice::Auto,
            &kernel,
            LoadSettings::default(),
            globals_for,
        );
        assert_eq!(
            plan.mechanism.err().map(|e| e.to_string()),
            Some(
                "http: no usable mechanism (socket_tracepoint: no BTF for struct sock here; \
                 raw_tracepoint: raw_tracepoint is not in this test kernel; tracepoint: \
                 tracepoint is not in this test kernel)"
                    .to_string()
            )
        );
    }
}
