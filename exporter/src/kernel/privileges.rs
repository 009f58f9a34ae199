//! Least privilege: refuse to start without the capabilities eBPF needs, and once every probe is
//! attached, give up every capability the running daemon no longer uses.
//!
//! Capabilities are per thread in Linux, so the drop happens on the main thread before the
//! runtime starts any other thread; every thread created later inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// What the daemon cannot start without: loading programs and creating maps (CAP_BPF), and
/// attaching them to tracepoints and uprobes and reading kernel memory (CAP_PERFMON).
pub const REQUIRED: &[Capability] = &[Capability::CAP_BPF, Capability::CAP_PERFMON];

/// The capability names as `periscope check` and docs/deploy.md print them.
fn names(caps: impl IntoIterator<Item = Capability>) -> String {
    let mut names: Vec<String> = caps.into_iter().map(|c| c.to_string()).collect();
    names.sort();
    names.join(", ")
}

/// Makes the required capabilities effective (they may be only permitted, e.g. from file
/// capabilities without `+e`), or fails with the list of what is missing.
pub fn require() -> anyhow::Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).unwrap_or_default();
    let missing: Vec<Capability> = REQUIRED
        .iter()
        .copied()
        .filter(|c| !permitted.contains(c))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "missing capabilities: {}. Periscope needs CAP_BPF and CAP_PERFMON to load and \
             attach its eBPF programs (plus CAP_SYS_ADMIN for uprobes/HTTPS and to mount \
             tracefs, CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE to read other users' /proc; see \
             docs/deploy.md, Privileges). Run it as root, or grant them: systemd \
             `AmbientCapabilities=CAP_BPF CAP_PERFMON ...`, Kubernetes \
             `securityContext.capabilities.add: [BPF, PERFMON, ...]`, or \
             `capsh --caps=... --`; `periscope check` lists what this process has",
            names(missing)
        );
    }
    for cap in REQUIRED {
        caps::raise(None, CapSet::Effective, *cap)
            .map_err(|e| anyhow::anyhow!("cannot make {cap} effective: {e}"))?;
    }
    Ok(())
}

/// Whether this kernel lets a process without CAP_BPF use map and program fds it already holds.
/// Before 6.5 `bpf()` refused every command to such a process when
/// `kernel.unprivileged_bpf_disabled` was set (the default on most distributions).
fn fds_work_without_cap_bpf(release: &str) -> bool {
    super::mechanism::release_at_least(release, (6, 5))
}

/// The capabilities the running daemon still uses after every probe is attached.
pub fn still_needed(attaches_later: bool, kernel_release: &str) -> CapsHashSet {
    // Reading /proc/PID/{exe,environ,fd,cgroup} of other users' processes, all the time.
    let mut keep: CapsHashSet = [Capability::CAP_DAC_READ_SEARCH, Capability::CAP_SYS_PTRACE]
        .into_iter()
        .collect();
    if attaches_later {
        // HTTPS: processes started later get OpenSSL or Go TLS uprobes attached as they appear.
        keep.extend([
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
            Capability::CAP_SYS_ADMIN,
        ]);
    } else if !fds_work_without_cap_bpf(kernel_release) {
        keep.insert(Capability::CAP_BPF);
    }
    keep
}

/// Reduces this thread's capabilities (and the bounding set, while CAP_SETPCAP still allows
/// it) to `keep`. Returns what was kept and what was dropped, for the log.
pub fn drop_all_but(keep: &CapsHashSet) -> anyhow::Result<(CapsHashSet, CapsHashSet)> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    if threads > 1 {
        // Other threads would keep their capabilities; say so rather than claim a drop.
        tracing::warn!(
            threads,
            "capabilities dropped on the main thread only: other threads already exist"
        );
    }
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    let dropped: CapsHashSet = permitted.difference(keep).copied().collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    // No execve can ever give any of it back.
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) has no memory arguments.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Ok((kept, dropped))
}

/// Drops what the daemon no longer needs and logs the outcome.
pub fn drop_after_attach(attaches_later: bool) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let keep = still_needed(attaches_later, release.trim());
    match drop_all_but(&keep) {
        Ok((kept, dropped)) => tracing::info!(
            kept = %names(kept),
            dropped = %names(dropped),
            "capabilities reduced to what the running daemon uses"
        ),
        Err(e) => tracing::warn!(error = %e, "could not drop capabilities"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_bpf_is_kept_where_old_kernels_need_it_for_held_fds() {
        assert!(fds_work_without_cap_bpf("6.18.0-1-amd64"));
        assert!(fds_work_without_cap_bpf("6.5.0"));
        assert!(!fds_work_without_cap_bpf("6.4.16"));
        assert!(!fds_work_without_cap_bpf("5.15.0-91-generic"));
        assert!(!fds_work_without_cap_bpf(""));
        let later = still_needed(true, "6.18.0");
        assert!(later.contains(&Capability::CAP_SYS_ADMIN));
        let none_later = still_needed(false, "6.18.0");
        assert_eq!(
            names(none_later),
            "CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE",
            "nothing eBPF-related stays after attach on 6.5+"
        );
        assert!(still_needed(false, "5.15.0").contains(&Capability::CAP_BPF));
    }
}
