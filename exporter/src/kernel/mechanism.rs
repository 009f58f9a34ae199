//! Attach mechanisms, and what this kernel allows of each, probed once at start. A family
//! lists the mechanisms it implements; [`choose_mechanism`] picks the best one the kernel allows
//! (or the configured one).

use std::fmt;

use aya::programs::ProgramType;

use super::{btf, tracefs::Tracefs};
use serde::Deserialize;

/// In order of preference (the derived order is [`Mechanism::PREFERENCE`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mechanism {
    /// Raw tracepoints on the socket layer (`sock_send_length`/`sock_recv_length`, Linux 6.5+):
    /// the HTTP family's way to see sends and receives without a program on every syscall.
    SocketTracepoint,
    /// `fexit` programs on kernel functions (BTF trampolines): the HTTP family's way on kernels
    /// without the socket tracepoints.
    Fentry,
    Kprobe,
    BtfTracepoint,
    RawTracepoint,
    Tracepoint,
    /// User-space probes (the `uprobe` family's only mechanism; not a kernel-path choice).
    Uprobe,
    /// A program on a perf event (the CPU clock of each CPU): the on-CPU profile's only
    /// mechanism.
    PerfEvent,
}

impl Mechanism {
    /// Best first. Socket tracepoints come before `fentry`: both run only on socket transfers,
    /// and a tracepoint is a stable interface, where `fentry` attaches to kernel functions
    /// whose names and parameters change between releases.
    pub const PREFERENCE: [Mechanism; 6] = [
        Self::SocketTracepoint,
        Self::Fentry,
        Self::Kprobe,
        Self::BtfTracepoint,
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
            Self::PerfEvent => "perf_event",
        }
    }

    pub fn from_choice(choice: MechanismChoice) -> Option<Self> {
        match choice {
            MechanismChoice::Auto => None,
            MechanismChoice::SocketTracepoint => Some(Self::SocketTracepoint),
            MechanismChoice::Fentry => Some(Self::Fentry),
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

/// How a probe family attaches; `auto` picks the best the kernel allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MechanismChoice {
    #[default]
    Auto,
    SocketTracepoint,
    Fentry,
    RawTracepoint,
    Tracepoint,
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
        let perf_event = match aya::sys::is_program_supported(ProgramType::PerfEvent) {
            Ok(true) => Ok(()),
            Ok(false) => Err("perf_event programs do not load on this kernel".into()),
            Err(e) => Err(format!("perf_event program probe failed: {e}")),
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
                (Mechanism::PerfEvent, perf_event),
            ],
        }
    }

    /// A kernel (with this machine's BTF) that allows exactly `allowed` and refuses the other
    /// kernel-path mechanisms: for tests of the planning.
    pub fn allowing(allowed: &[Mechanism]) -> Self {
        let mechanisms = Mechanism::PREFERENCE
            .into_iter()
            .map(|m| {
                let allows = if allowed.contains(&m) {
                    Ok(())
                } else {
                    Err(format!("{m} is not in this test kernel"))
                };
                (m, allows)
            })
            .collect();
        Self {
            mechanisms,
            btf: std::sync::OnceLock::new(),
        }
    }

    /// Forgets the kernel's BTF once every plan is made (megabytes the daemon does not need).
    pub fn forget_btf(&mut self) {
        self.btf.take();
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

fn names(mechanisms: &[Mechanism]) -> String {
    mechanisms
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}
