//! Attaching programs of the loaded object, and what the kernel tells about them.

use std::os::fd::AsFd;

use aya::{Ebpf, programs::TracePoint};

use super::ProbeError;

/// Attaches tracepoint programs `(program, category, tracepoint)`, all or nothing.
pub fn attach_tracepoints(
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
            .ok_or_else(|| ProbeError::missing_program(program))?
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

/// Attaches raw tracepoint programs `(program, tracepoint)`, all or nothing.
pub fn attach_raw_tracepoints(
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
            .ok_or_else(|| ProbeError::missing_program(program))?
            .try_into()
            .map_err(|source| ProbeError::Program { program, source })?;
        tp.load()
            .map_err(|source| ProbeError::Program { program, source })?;
        tp.attach(name)
            .map_err(|source| ProbeError::Program { program, source })?;
    }
    Ok(())
}

/// Loads and attaches programs on BPF trampolines (`fentry` or `fexit`), `(program, kernel
/// function)`, against the running kernel's BTF; on any failure unloads the ones loaded.
pub fn attach_trampolines(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str)],
) -> Result<(), ProbeError> {
    let attached = try_attach_trampolines(ebpf, programs);
    if attached.is_err() {
        unload_programs(ebpf, programs.iter().map(|p| p.0));
    }
    attached
}

fn try_attach_trampolines(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str)],
) -> Result<(), ProbeError> {
    // aya's own BTF model: its loader needs it to find each function's type id.
    let btf = aya::Btf::from_sys_fs().map_err(|e| {
        ProbeError::Mechanism(format!(
            "fentry: reading /sys/kernel/btf/vmlinux failed: {e}"
        ))
    })?;
    for (program, function) in programs {
        let failed = |source| ProbeError::Program { program, source };
        match ebpf.program_mut(program) {
            Some(aya::programs::Program::FEntry(p)) => {
                p.load(function, &btf).map_err(failed)?;
                p.attach().map_err(failed)?;
            }
            Some(aya::programs::Program::FExit(p)) => {
                p.load(function, &btf).map_err(failed)?;
                p.attach().map_err(failed)?;
            }
            Some(_) => return Err(failed(aya::programs::ProgramError::UnexpectedProgramType)),
            None => return Err(ProbeError::missing_program(program)),
        }
    }
    Ok(())
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
pub fn unload_programs<'a>(ebpf: &mut Ebpf, names: impl IntoIterator<Item = &'a str>) {
    for name in names {
        let unloaded = match ebpf.program_mut(name) {
            Some(aya::programs::Program::TracePoint(p)) => p.unload(),
            Some(aya::programs::Program::RawTracePoint(p)) => p.unload(),
            Some(aya::programs::Program::FEntry(p)) => p.unload(),
            Some(aya::programs::Program::FExit(p)) => p.unload(),
            _ => Ok(()),
        };
        if let Err(e) = unloaded {
            tracing::debug!(program = name, error = %e, "unload after a refused attach");
        }
    }
}

/// Run time and run count per loaded program (meaningful when kernel.bpf_stats_enabled=1).
pub fn program_stats(ebpf: &Ebpf) -> Vec<(String, std::time::Duration, u64)> {
    ebpf.programs()
        .filter_map(|(name, program)| {
            let info = program.info().ok()?;
            Some((name.to_string(), info.run_time(), info.run_count()))
        })
        .collect()
}

/// Per loaded program, the runs the kernel skipped because another BPF program was already
/// running on that CPU (`recursion_misses`; always counted, unlike run time).
pub fn recursion_misses_of(ebpf: &Ebpf) -> Vec<(String, u64)> {
    ebpf.programs()
        .filter_map(|(name, program)| {
            let fd = program.fd().ok()?;
            Some((name.to_string(), recursion_misses(fd.as_fd())?))
        })
        .collect()
}

/// `recursion_misses` of a program, from `BPF_OBJ_GET_INFO_BY_FD` (aya does not expose it).
pub fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
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
