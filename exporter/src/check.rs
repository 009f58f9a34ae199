//! `periscope check`: what this kernel and these privileges allow, and for every probe family
//! the mechanism it will use or why it cannot attach. It loads and attaches the real programs
//! (then detaches them), so "ok" means the probe really works here.

use caps::{CapSet, Capability};

use crate::{
    config::Config,
    families::{CheckLines, ProbeStatus, Probes},
    kernel::tracefs::Tracefs,
};

/// Capabilities Periscope uses, and what for.
pub const CAPABILITIES: &[(Capability, &str)] = &[
    (Capability::CAP_BPF, "load eBPF programs and create maps"),
    (
        Capability::CAP_PERFMON,
        "attach tracepoints and uprobes; read kernel memory in programs",
    ),
    (
        Capability::CAP_SYS_ADMIN,
        "uprobe: attach (the kernel's uprobe PMU requires it); mount tracefs when missing",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "read /proc/PID and tracefs files of other users",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "HTTP, syscall: read /proc/PID/exe and OTEL_SERVICE_NAME from /proc/PID/environ of other users",
    ),
];

fn line(status: &str, what: &str, detail: &str) {
    println!("  {status:<5} {what:<28} {detail}");
}

/// A family's own lines (e.g. one per configured function), under their title.
fn print_family_lines(section: &CheckLines) {
    println!("\n{}", section.title);
    for entry in &section.lines {
        line(
            if entry.ok { "ok" } else { "FAIL" },
            &entry.what,
            &entry.detail,
        );
    }
}

/// Prints the report; returns whether anything useful can run.
pub fn run(config: &Config) -> bool {
    println!("Periscope {} preflight", env!("CARGO_PKG_VERSION"));
    println!("\nKernel");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    line("info", "version", release.trim());
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    line(
        if btf { "ok" } else { "warn" },
        "BTF",
        if btf {
            "/sys/kernel/btf/vmlinux"
        } else {
            "missing: fentry and BTF tracepoints unavailable"
        },
    );
    let tracefs = match Tracefs::locate_or_mount() {
        Ok(t) => {
            line("ok", "tracefs", &t.root().display().to_string());
            Some(t)
        }
        Err(e) => {
            line("FAIL", "tracefs", &e.to_string());
            None
        }
    };
    let stats = crate::telemetry::bpf_stats_enabled();
    line(
        "info",
        "kernel.bpf_stats_enabled",
        if stats {
            "1: per-program run time is exported"
        } else {
            "0: `sysctl kernel.bpf_stats_enabled=1` to export per-program run time"
        },
    );

    println!("\nCapabilities (effective)");
    for (cap, why) in CAPABILITIES {
        let has = caps::has_cap(None, CapSet::Effective, *cap).unwrap_or(false);
        line(if has { "ok" } else { "miss" }, &cap.to_string(), why);
    }

    println!("\nProbe families");
    let probes = match Probes::start(&config.probes, tracefs.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            line("FAIL", "eBPF object", &format!("{e:#}"));
            return false;
        }
    };
    for status in &probes.statuses {
        let (mark, detail) = match (&status.error, status.mechanism) {
            _ if status.family == "uprobe"
                && config.probes.uprobe.enabled
                && config.probes.uprobe.functions.is_empty() =>
            {
                (
                    "off",
                    "no functions configured (probes.uprobe.functions)".to_string(),
                )
            }
            _ if status.family == "usdt"
                && config.probes.usdt.enabled
                && config.probes.usdt.probes.is_empty() =>
            {
                (
                    "off",
                    "no probes configured (probes.usdt.probes)".to_string(),
                )
            }
            _ if status.family == "profile" && !status.enabled => (
                "off",
                "on demand (`periscope profile`), or continuous with probes.profile.enabled"
                    .to_string(),
            ),
            _ if !status.enabled => ("off", "disabled in config".to_string()),
            (None, Some(m)) => (
                "ok",
                format!("attached with {m} ({})", status.programs.join(", ")),
            ),
            (Some(e), _) => ("FAIL", e.clone()),
            (None, None) => ("FAIL", "not attached".to_string()),
        };
        line(mark, status.family, &detail);
        // What was passed over or refused on the way to the mechanism used (or to none).
        if status.enabled {
            for (mechanism, why) in &status.refused {
                line("", &format!("  not {mechanism}"), why);
            }
        }
    }
    for section in probes.check_lines() {
        print_family_lines(&section);
    }

    println!(
        "\nAttach mechanisms on this kernel (kernel paths best first, then uprobe, perf_event)"
    );
    for (mechanism, allowed) in &probes.kernel.mechanisms {
        match allowed {
            Ok(()) => line("ok", mechanism.name(), "available"),
            Err(why) => line("no", mechanism.name(), why),
        }
    }
    let useful = probes.statuses.iter().any(|s| s.attached());
    let failed = failed_default_families(&probes.statuses);
    if !useful {
        println!("\nResult: no probe family can attach; Periscope would export nothing.");
    } else if !failed.is_empty() {
        println!(
            "\nResult: FAILED: {} enabled by default but cannot attach by any mechanism here (see FAIL above).",
            failed.join(", ")
        );
    } else {
        println!("\nResult: Periscope can run here.");
    }
    useful && failed.is_empty()
}

/// Families that the default configuration enables, that are enabled now, and that attached
/// by no mechanism: a node where they fail misses what users expect.
fn failed_default_families(statuses: &[ProbeStatus]) -> Vec<&'static str> {
    let defaults = Config::default().probes;
    let on_by_default = |family: &str| match family {
        "block" => defaults.block.enabled,
        "sched" => defaults.sched.enabled,
        "http" => defaults.http.enabled,
        "tcp" => defaults.tcp.enabled,
        "syscall" => defaults.syscall.enabled,
        // On by default but nothing to attach without configured functions.
        _ => false,
    };
    statuses
        .iter()
        .filter(|s| s.enabled && on_by_default(s.family) && !s.attached())
        .map(|s| s.family)
        .collect()
}
