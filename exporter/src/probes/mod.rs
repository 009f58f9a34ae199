//! Loading the eBPF object and attaching each probe family on its own: a family that cannot
//! attach is reported (log, `periscope check`, `periscope_probe_attached`) and the others run.
//!
//! The attach mechanism is chosen at run time per family from what the kernel allows and what
//! the family implements, in the order fentry > kprobe > BTF tracepoint > raw tracepoint >
//! tracepoint.

pub mod block;
pub mod btf;
pub mod exec;
pub mod http;
pub mod https;
pub mod sched;
pub mod syscall;
pub mod tcp;
pub mod uprobe;

use std::{fmt, os::fd::AsFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::{ProgramType, TracePoint},
};

use crate::{
    config::{Config, MechanismChoice},
    metrics::Metric,
    tracefs::{Tracefs, TracefsError},
};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/periscope"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mechanism {
    Fentry,
    Kprobe,
    BtfTracepoint,
    /// Raw tracepoints on the socket layer (`sock_send_length`/`sock_recv_length`, Linux 6.5+):
    /// the HTTP family's way to see sends and receives without a program on every syscall.
    SocketTracepoint,
    RawTracepoint,
    Tracepoint,
    /// User-space probes (the `uprobe` family's only mechanism; not a kernel-path choice).
    Uprobe,
}

impl Mechanism {
    /// Best first.
    pub const PREFERENCE: [Mechanism; 6] = [
        Self::Fentry,
        Self::Kprobe,
        Self::BtfTracepoint,
        Self::SocketTracepoint,
        Self::RawTracepoint,
        Self::Tracepoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::BtfTracepoint => "btf_tracepoint",
            Self::SocketTracepoint => "socket_tracepoint",
            Self::RawTracepoint => "raw_tracepoint",
            Self::Tracepoint => "tracepoint",
            Self::Uprobe => "uprobe",
        }
    }

    fn from_choice(choice: MechanismChoice) -> Option<Self> {
        match choice {
            MechanismChoice::Auto => None,
            MechanismChoice::Fentry => Some(Self::Fentry),
            MechanismChoice::Kprobe => Some(Self::Kprobe),
            MechanismChoice::BtfTracepoint => Some(Self::BtfTracepoint),
            MechanismChoice::SocketTracepoint => Some(Self::SocketTracepoint),
            MechanismChoice::RawTracepoint => Some(Self::RawTracepoint),
            MechanismChoice::Tracepoint => Some(Self::Tracepoint),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What this kernel allows, probed once at start.
#[derive(Debug, Clone)]
pub struct KernelSupport {
    /// Per mechanism: `Ok(())` or why the kernel does not allow it.
    pub mechanisms: Vec<(Mechanism, Result<(), String>)>,
    /// The kernel's BTF, read on first use and shared by every family's plan; forgotten once
    /// the plans are made (megabytes the running daemon does not need).
    btf: std::sync::OnceLock<Result<std::sync::Arc<btf::KernelBtf>, String>>,
}

impl KernelSupport {
    pub fn probe(tracefs: Option<&Tracefs>) -> Self {
        let tracing = match aya::sys::is_program_supported(ProgramType::Tracing) {
            Ok(true) => Ok(()),
            Ok(false) => Err("BPF_PROG_TYPE_TRACING programs do not load on this kernel".into()),
            Err(e) => Err(format!("BPF_PROG_TYPE_TRACING probe failed: {e}")),
        };
        let kprobe = if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
            Ok(())
        } else {
            Err("kernel built without CONFIG_KPROBES (no kprobe PMU)".into())
        };
        let raw = match aya::sys::is_program_supported(ProgramType::RawTracePoint) {
            Ok(true) => Ok(()),
            Ok(false) => Err("raw tracepoint programs do not load on this kernel".into()),
            Err(e) => Err(format!("raw tracepoint probe failed: {e}")),
        };
        let socket = raw.clone().and_then(|()| {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let release = release.trim();
            // sock_send_length/sock_recv_length came in 6.3, but until 6.5 sendfile and splice
            // reached sockets through ->sendpage, past them: response bodies would be unseen.
            if release_at_least(release, (6, 5)) {
                Ok(())
            } else {
                Err(format!(
                    "kernel {release}: socket tracepoints see every send from Linux 6.5 (sendfile \
                     bypasses sock_send_length before)"
                ))
            }
        });
        let socket = socket.and_then(|()| {
            if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
                Ok(())
            } else {
                Err("no kernel BTF (bpf_get_current_task_btf needs it)".into())
            }
        });
        let tracepoint = match tracefs {
            Some(_) => Ok(()),
            None => Err("tracefs is not mounted".into()),
        };
        // aya attaches uprobes through the uprobe PMU (perf_event_open), else through tracefs.
        let uprobe = if std::path::Path::new("/sys/bus/event_source/devices/uprobe").exists()
            || tracefs.is_some()
        {
            Ok(())
        } else {
            Err("kernel without CONFIG_UPROBE_EVENTS (no uprobe PMU) and no tracefs".into())
        };
        Self {
            btf: std::sync::OnceLock::new(),
            mechanisms: vec![
                (Mechanism::Fentry, tracing.clone()),
                (Mechanism::Kprobe, kprobe),
                (Mechanism::BtfTracepoint, tracing),
                (Mechanism::SocketTracepoint, socket),
                (Mechanism::RawTracepoint, raw),
                (Mechanism::Tracepoint, tracepoint),
                (Mechanism::Uprobe, uprobe),
            ],
        }
    }

    /// The kernel's BTF (read once for all families), or why it cannot be read.
    pub fn btf(&self) -> Result<std::sync::Arc<btf::KernelBtf>, String> {
        self.btf
            .get_or_init(|| btf::KernelBtf::load().map(std::sync::Arc::new))
            .clone()
    }

    pub fn allows(&self, mechanism: Mechanism) -> Result<(), String> {
        self.mechanisms
            .iter()
            .find(|(m, _)| *m == mechanism)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Err("unknown mechanism".into()))
    }
}

/// Whether this kernel's tracing programs must use preallocated hash maps: before 6.1 (hash
/// maps on `bpf_mem_alloc`), allocating at run time in a tracepoint program can deadlock
/// (`sched_switch` holds the run-queue lock; 5.10 warns "trace type BPF program uses run-time
/// allocation"). `periscope check` hung on 5.10 under qemu in 4 boots of 5 before this.
pub fn needs_preallocated_maps() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    !release_at_least(release.trim(), (6, 1))
}

/// Sizes the histogram map in use of a pair (`name`, its preallocated twin `prealloc`) to
/// `entries` entries, and the other to 1 entry.
pub(super) fn histogram_map(
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

/// Whether a kernel release string (`6.18.0-1-amd64`) is at least `(major, minor)`.
pub fn release_at_least(release: &str, wanted: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= wanted
}

/// Picks the mechanism for a family: the configured one, or the best one that the family
/// implements and the kernel allows.
pub fn choose_mechanism(
    family: &str,
    implemented: &[Mechanism],
    choice: MechanismChoice,
    kernel: &KernelSupport,
) -> Result<Mechanism, String> {
    if let Some(forced) = Mechanism::from_choice(choice) {
        if !implemented.contains(&forced) {
            return Err(format!(
                "{family}: mechanism {forced} is configured but this family implements only {}",
                names(implemented)
            ));
        }
        return kernel
            .allows(forced)
            .map(|()| forced)
            .map_err(|why| format!("{family}: mechanism {forced} is configured but {why}"));
    }
    Mechanism::PREFERENCE
        .into_iter()
        .filter(|m| implemented.contains(m))
        .find(|m| kernel.allows(*m).is_ok())
        .ok_or_else(|| {
            let reasons: Vec<String> = implemented
                .iter()
                .map(|m| format!("{m}: {}", kernel.allows(*m).err().unwrap_or_default()))
                .collect();
            format!("{family}: no usable mechanism ({})", reasons.join("; "))
        })
}

/// The plan of an enabled tracepoint-based family: its mechanism, and the globals `offsets`
/// derives from this kernel's tracepoint format files, added to `settings`.
pub(super) fn tracepoint_plan(
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
pub(super) fn candidates_plan(
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

fn names(mechanisms: &[Mechanism]) -> String {
    mechanisms
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
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

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("{0}")]
    Mechanism(String),
    #[error("loading eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
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
    fn disabled(settings: LoadSettings) -> Self {
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
fn start_family<T>(
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
fn start_family_with<T>(
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
                let why = refusal(&e);
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

/// One line on why the kernel refused a program: for a verifier refusal, the verifier's last
/// message (its full log is logged at debug level), else the error itself.
pub fn refusal(error: &ProbeError) -> String {
    let ProbeError::Program {
        program,
        source:
            aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            },
    } = error
    else {
        return error.to_string();
    };
    let log = verifier_log.to_string();
    let message = log
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| {
            !line.is_empty()
                && !line.starts_with("processed ")
                && !line.starts_with("verification time")
                && !line.starts_with("stack depth")
        })
        .unwrap_or("(no verifier output)");
    format!("verifier refused {program} ({io_error}): {message}")
}

/// Unloads (and so detaches) the named programs: what an attempt that failed half-way loaded.
fn unload_programs<'a>(ebpf: &mut Ebpf, names: impl IntoIterator<Item = &'a str>) {
    for name in names {
        let unloaded = match ebpf.program_mut(name) {
            Some(aya::programs::Program::TracePoint(p)) => p.unload(),
            Some(aya::programs::Program::RawTracePoint(p)) => p.unload(),
            _ => Ok(()),
        };
        if let Err(e) = unloaded {
            tracing::debug!(program = name, error = %e, "unload after a refused attach");
        }
    }
}

/// Attaches tracepoint programs `(program, category, tracepoint)`, all or nothing.
fn attach_tracepoints(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str, &'static str)],
) -> Result<(), ProbeError> {
    let attached = try_attach_tracepoints(ebpf, programs);
    if attached.is_err() {
        unload_programs(ebpf, programs.iter().map(|p| p.0));
    }
    attached
}

fn try_attach_tracepoints(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str, &'static str)],
) -> Result<(), ProbeError> {
    for (program, category, name) in programs {
        let tp: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| ProbeError::Map {
                map: program,
                reason: "program missing from the eBPF object".into(),
            })?
            .try_into()
            .map_err(|source| ProbeError::Program { program, source })?;
        // One program may serve several tracepoints: load it once.
        if tp.fd().is_err() {
            tp.load()
                .map_err(|source| ProbeError::Program { program, source })?;
        }
        tp.attach(category, name)
            .map_err(|source| ProbeError::Program { program, source })?;
    }
    Ok(())
}

/// The plan of a family with raw tracepoint and tracepoint variants: raw tracepoints when
/// chosen and `raw_globals` (offsets from BTF) can be had, with the tracepoint plan
/// `tracepoints(implemented, choice, settings)` makes as the fallback under `auto` (also when
/// the kernel refuses the raw programs).
fn raw_or_tracepoint_plan(
    family: &str,
    choice: MechanismChoice,
    kernel: &KernelSupport,
    settings: LoadSettings,
    raw_globals: impl FnOnce() -> Result<Vec<(&'static str, u32)>, String>,
    tracepoints: impl FnOnce(&[Mechanism], MechanismChoice, LoadSettings) -> Plan,
) -> Plan {
    const BOTH: &[Mechanism] = &[Mechanism::RawTracepoint, Mechanism::Tracepoint];
    let mut raw_globals = Some(raw_globals);
    let mut tracepoints = Some(tracepoints);
    candidates_plan(family, BOTH, choice, kernel, settings, |mechanism| {
        if mechanism == Mechanism::RawTracepoint {
            return raw_globals.take().map_or(Ok(Vec::new()), |f| f());
        }
        let Some(tracepoints) = tracepoints.take() else {
            return Ok(Vec::new());
        };
        // The tracepoint plan on its own settings: only its globals are wanted here.
        let plan = tracepoints(
            &[Mechanism::Tracepoint],
            MechanismChoice::Auto,
            LoadSettings::default(),
        );
        plan.mechanism
            .map(|_| plan.settings.globals)
            .map_err(|e| e.to_string())
    })
}

/// Starts a family with raw tracepoint variants of its programs (`raw`: per mechanism, the
/// raw tracepoints it attaches to) and tracepoint ones (`tracepoints`), attaching those of the
/// planned mechanism.
fn start_raw_or_tracepoints<T>(
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

/// Attaches raw tracepoint programs `(program, tracepoint)`, all or nothing.
fn attach_raw_tracepoints(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str)],
) -> Result<(), ProbeError> {
    let attached = try_attach_raw_tracepoints(ebpf, programs);
    if attached.is_err() {
        unload_programs(ebpf, programs.iter().map(|p| p.0));
    }
    attached
}

fn try_attach_raw_tracepoints(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str)],
) -> Result<(), ProbeError> {
    for (program, name) in programs {
        let tp: &mut aya::programs::RawTracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| ProbeError::Map {
                map: program,
                reason: "program missing from the eBPF object".into(),
            })?
            .try_into()
            .map_err(|source| ProbeError::Program { program, source })?;
        tp.load()
            .map_err(|source| ProbeError::Program { program, source })?;
        tp.attach(name)
            .map_err(|source| ProbeError::Program { program, source })?;
    }
    Ok(())
}

/// Takes a per-CPU histogram map (series id to histogram values) out of the object.
fn take_histogram_map<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<PerCpuHashMap<MapData, u64, V>, ProbeError> {
    let map = ebpf.take_map(name).ok_or_else(|| ProbeError::Map {
        map: name,
        reason: "missing from the eBPF object".into(),
    })?;
    PerCpuHashMap::try_from(map).map_err(|e| ProbeError::Map {
        map: name,
        reason: e.to_string(),
    })
}

/// Start-time maps (in-flight requests, runnable tasks) are plain hashes: an end event that is
/// lost (Periscope attached mid-request, a requeued request) would leave its entry forever. The
/// daemon sweeps entries older than this every [`SWEEP_INTERVAL`].
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// `bpf_ktime_get_ns()` as user space sees it: CLOCK_MONOTONIC.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Deletes entries of a start-time map that started more than [`STALE_AFTER`] ago; returns how
/// many. O(entries), and entries are only the requests or tasks in flight right now.
fn sweep_stale<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::HashMap<MapData, K, V>,
    started_ns: impl Fn(&V) -> u64,
) -> u64 {
    let cutoff = monotonic_ns().saturating_sub(STALE_AFTER.as_nanos() as u64);
    let stale: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| started_ns(v) < cutoff)
        .map(|(k, _)| k)
        .collect();
    stale.iter().filter(|k| map.remove(k).is_ok()).count() as u64
}

/// Takes a plain hash map out of the object.
fn take_hash_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<aya::maps::HashMap<MapData, K, V>, ProbeError> {
    let map = ebpf.take_map(name).ok_or_else(|| ProbeError::Map {
        map: name,
        reason: "missing from the eBPF object".into(),
    })?;
    aya::maps::HashMap::try_from(map).map_err(|e| ProbeError::Map {
        map: name,
        reason: e.to_string(),
    })
}

type HttpPendingMap = std::sync::Arc<
    std::sync::Mutex<aya::maps::HashMap<MapData, u32, periscope_common::http::HttpPending>>,
>;

/// Everything loaded into the kernel: the object, each family's readers, and the statuses.
pub struct Probes {
    /// Owns every program and link; dropping it detaches everything.
    ebpf: Ebpf,
    pub statuses: Vec<ProbeStatus>,
    pub kernel: KernelSupport,
    block: Option<block::Block>,
    sched: Option<sched::Sched>,
    syscall: Option<syscall::Syscall>,
    /// The HTTP capture's maps, until the daemon takes them for its capture loop.
    pub http: Option<http::Http>,
    /// What the HTTP capture aggregated (shared with the capture loop).
    pub http_state: Option<std::sync::Arc<std::sync::Mutex<crate::http::HttpState>>>,
    counters: Option<PerCpuArray<MapData, u64>>,
    /// Syscalls in flight of the HTTP capture (swept like the other start-time maps).
    http_pending: Option<HttpPendingMap>,
    /// The OpenSSL probes of the HTTP family (HTTPS), when on.
    pub tls: Option<https::Tls>,
    /// TCP connection events and counters (drained by the daemon's TCP loop too).
    pub tcp: Option<std::sync::Arc<tcp::Tcp>>,
    uprobe: Option<uprobe::Uprobe>,
    /// Per configured function: resolved and attached, or why not (empty when the family is off).
    pub uprobe_entries: Vec<uprobe::EntryStatus>,
    /// Stale start-time entries removed by `sweep`, per family.
    swept: [(&'static str, u64); 5],
}

impl Probes {
    /// Loads the object and attaches every enabled family. Fails only when the object itself
    /// cannot be loaded; per-family failures end up in `statuses`.
    pub fn start(config: &Config, tracefs: Option<&Tracefs>) -> anyhow::Result<Self> {
        let mut kernel = KernelSupport::probe(tracefs);
        let block_plan = block::plan(&config.probes.block, &kernel, tracefs);
        let sched_plan = sched::plan(&config.probes.sched, &kernel, tracefs);
        let http_plan = http::plan(&config.probes.http, &kernel, tracefs);
        let tcp_plan = tcp::plan(&config.probes.tcp, &kernel, tracefs);
        let uprobe_plan = uprobe::plan(&config.probes.uprobe, &kernel);
        let syscall_plan = syscall::plan(&config.probes.syscall, &kernel, tracefs);
        kernel.btf.take();

        let mut loader = EbpfLoader::new();
        let preallocated = u32::from(needs_preallocated_maps());
        loader.override_global("PREALLOCATED_HISTS", &preallocated, true);
        for settings in [
            &block_plan.settings,
            &sched_plan.settings,
            &http_plan.settings,
            &tcp_plan.settings,
            &uprobe_plan.settings,
            &syscall_plan.settings,
        ] {
            for (name, value) in &settings.globals {
                loader.override_global(name, value, true);
            }
            for (name, size) in &settings.max_entries {
                loader.map_max_entries(name, *size);
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            anyhow::anyhow!(
                "loading the eBPF object failed: {e}. Periscope needs CAP_BPF and CAP_PERFMON \
                 (or root); run `periscope check` to see what is missing"
            )
        })?;

        let (block, block_status) = block::start(&mut ebpf, block_plan);
        let (sched, sched_status) =
            sched::start(&mut ebpf, sched_plan, config.probes.sched.by_cgroup);
        let (http, mut http_status) = http::start(&mut ebpf, http_plan);
        let tls = match (&http, config.probes.http.tls) {
            (Some(_), true) => match https::load(&mut ebpf) {
                Ok(mut tls) => {
                    tls.scan(&mut ebpf);
                    http_status
                        .programs
                        .extend(https::SYMBOLS.iter().map(|s| s.1));
                    http_status.programs.push(https::RETURN_PROGRAM);
                    Some(tls)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTPS capture (OpenSSL probes) is off");
                    None
                }
            },
            _ => None,
        };
        let http_state = http.as_ref().map(|_| http::state(&config.probes.http));
        let http_pending = http.as_ref().map(|h| h.pending.clone());
        let (tcp, tcp_status) = tcp::start(&mut ebpf, tcp_plan, &config.probes.tcp);
        let (uprobe, uprobe_status, uprobe_entries) =
            uprobe::start(&mut ebpf, uprobe_plan, &config.probes.uprobe);
        let (syscall, syscall_status) =
            syscall::start(&mut ebpf, syscall_plan, &config.probes.syscall);
        for status in [
            &block_status,
            &sched_status,
            &http_status,
            &tcp_status,
            &uprobe_status,
            &syscall_status,
        ] {
            match (&status.error, status.mechanism) {
                (None, Some(mechanism)) => {
                    tracing::info!(probe = status.family, %mechanism, "probe attached")
                }
                (Some(error), _) => {
                    tracing::warn!(probe = status.family, %error, "probe not attached")
                }
                (None, None) => tracing::info!(probe = status.family, "probe disabled"),
            }
        }
        let counters = ebpf
            .take_map("COUNTERS")
            .and_then(|m| PerCpuArray::try_from(m).ok());
        Ok(Self {
            ebpf,
            statuses: vec![
                block_status,
                sched_status,
                http_status,
                tcp_status,
                uprobe_status,
                syscall_status,
            ],
            kernel,
            block,
            sched,
            syscall,
            http,
            http_state,
            counters,
            http_pending,
            tls,
            tcp: tcp.map(std::sync::Arc::new),
            uprobe,
            uprobe_entries,
            swept: [
                ("block", 0),
                ("sched", 0),
                ("http", 0),
                ("uprobe", 0),
                ("syscall", 0),
            ],
        })
    }

    /// Reads every attached family's maps into metrics (the syscall family also folds the
    /// counts of exited processes into user space, hence `&mut`).
    pub fn collect(&mut self, out: &mut Vec<Metric>) {
        if let Some(block) = &self.block {
            block.collect(out);
        }
        if let Some(sched) = &self.sched {
            sched.collect(out);
        }
        if let Some(state) = &self.http_state {
            state.lock().unwrap_or_else(|e| e.into_inner()).collect(out);
        }
        if let Some(tcp) = &self.tcp {
            tcp.collect(out);
        }
        if let Some(uprobe) = &self.uprobe {
            uprobe.collect(out);
        }
        if let Some(syscall) = &mut self.syscall {
            syscall.collect(out);
        }
    }

    /// Picks up processes started since the last call (syscall selection and resources).
    pub fn rescan(&mut self) {
        if let Some(syscall) = &mut self.syscall {
            syscall.rescan();
        }
    }

    /// Attaches the OpenSSL probes to files that new processes map.
    pub fn scan_tls(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.scan(&mut self.ebpf);
        }
    }

    /// Removes start-time entries whose end event was lost (see [`STALE_AFTER`]).
    pub fn sweep(&mut self) {
        if let Some(block) = &mut self.block {
            self.swept[0].1 += block.sweep();
        }
        if let Some(sched) = &mut self.sched {
            self.swept[1].1 += sched.sweep();
        }
        if let Some(pending) = &self.http_pending {
            let mut map = pending.lock().unwrap_or_else(|e| e.into_inner());
            self.swept[2].1 += sweep_stale(&mut map, |p| p.start_ns);
        }
        if let Some(tcp) = &self.tcp {
            tcp.expire();
        }
        if let Some(uprobe) = &mut self.uprobe {
            self.swept[3].1 += uprobe.sweep();
        }
        if let Some(syscall) = &mut self.syscall {
            self.swept[4].1 += syscall.sweep();
        }
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
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((name.to_string(), info.run_time(), info.run_count()))
            })
            .collect()
    }

    /// Per loaded program, the runs the kernel skipped because another BPF program was already
    /// running on that CPU (`recursion_misses`; always counted, unlike run time). Such events
    /// are lost to every tracer, not only to Periscope.
    pub fn recursion_misses(&self) -> Vec<(String, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?;
                Some((name.to_string(), recursion_misses(fd.as_fd())?))
            })
            .collect()
    }
}

/// `recursion_misses` of a program, from `BPF_OBJ_GET_INFO_BY_FD` (aya does not expose it).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain integers; all-zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: attr points at a valid info buffer of info_len bytes, alive during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    (rc == 0).then_some(info.recursion_misses)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that allows `allowed` and refuses the rest.
    fn kernel(allowed: &[Mechanism]) -> KernelSupport {
        KernelSupport {
            mechanisms: Mechanism::PREFERENCE
                .into_iter()
                .map(|m| {
                    let allows = if allowed.contains(&m) {
                        Ok(())
                    } else {
                        Err(format!("{m} is not in this test kernel"))
                    };
                    (m, allows)
                })
                .collect(),
            btf: std::sync::OnceLock::new(),
        }
    }

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
        let kernel = kernel(&[
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
        let kernel = kernel(&[Mechanism::RawTracepoint, Mechanism::Tracepoint]);
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
        let kernel = kernel(&[Mechanism::SocketTracepoint]);
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
