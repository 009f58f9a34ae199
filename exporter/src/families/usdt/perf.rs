//! A uprobe with a reference counter (semaphore), attached with a cookie: what aya 0.14's
//! `UProbe::attach` cannot express (it opens the perf event itself with `config` holding only
//! the return bit). So the perf event is opened here, on the kernel's `uprobe` PMU, with the
//! semaphore's file offset in `config` bits 63:32 (the format `/sys/bus/event_source/devices/
//! uprobe/format/ref_ctr_offset` documents), and the loaded program is attached to it with
//! `BPF_LINK_CREATE` (attach type `BPF_PERF_EVENT`, carrying the cookie). The kernel then
//! increments the semaphore in every process that maps the file, now and later, for as long
//! as the event is open, so `*_ENABLED()` guards fire.
//!
//! Both file descriptors live in [`Link`]; dropping it closes them, which detaches the program
//! and decrements the semaphores.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

/// `BPF_LINK_CREATE` and `BPF_PERF_EVENT` from `<linux/bpf.h>`.
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PERF_EVENT: u32 = 41;
/// Bytes of `struct perf_event_attr` this code fills (`PERF_ATTR_SIZE_VER5`).
const PERF_ATTR_SIZE: usize = 112;
/// `PERF_FLAG_FD_CLOEXEC` from `<linux/perf_event.h>`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// Where the uprobe PMU's type number is published.
const UPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/uprobe/type";

/// One attached address: the perf event and the BPF link on it.
#[derive(Debug)]
pub struct Link {
    _link: OwnedFd,
    _event: OwnedFd,
}

/// Attaches `program` at `offset` of `file` for every process (or only `pid`), with the
/// semaphore at `ref_ctr_offset` (0: none) and `cookie`.
pub fn attach(
    program: &OwnedFd,
    file: &Path,
    offset: u64,
    ref_ctr_offset: u64,
    pid: Option<u32>,
    cookie: u64,
) -> io::Result<Link> {
    let event = open_uprobe(file, offset, ref_ctr_offset, pid)?;
    let link = link_create(program, &event, cookie)?;
    Ok(Link {
        _link: link,
        _event: event,
    })
}

fn uprobe_pmu_type() -> io::Result<u32> {
    std::fs::read_to_string(UPROBE_PMU_TYPE)?
        .trim()
        .parse()
        .map_err(|e| io::Error::other(format!("{UPROBE_PMU_TYPE}: {e}")))
}

fn open_uprobe(
    file: &Path,
    offset: u64,
    ref_ctr_offset: u64,
    pid: Option<u32>,
) -> io::Result<OwnedFd> {
    if ref_ctr_offset > u32::MAX.into() {
        return Err(io::Error::other(format!(
            "semaphore file offset {ref_ctr_offset:#x} does not fit the kernel's 32 bits"
        )));
    }
    let path = CString::new(file.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path holds a NUL byte"))?;
    // struct perf_event_attr: type @0, size @4, config @8, config1 (uprobe_path) @56,
    // config2 (probe_offset) @64; the rest zero.
    let mut attr = [0u8; PERF_ATTR_SIZE];
    attr[0..4].copy_from_slice(&uprobe_pmu_type()?.to_ne_bytes());
    attr[4..8].copy_from_slice(&(PERF_ATTR_SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(ref_ctr_offset << 32).to_ne_bytes());
    attr[56..64].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[64..72].copy_from_slice(&offset.to_ne_bytes());
    // Every process: pid -1 on CPU 0 (a uprobe's program runs on whichever CPU hits it), as
    // aya does; one process: that pid on any CPU.
    let (pid, cpu) = match pid {
        Some(pid) => (pid as libc::c_int, -1),
        None => (-1, 0),
    };
    // SAFETY: attr is a zero-filled perf_event_attr of the size it declares; path outlives
    // the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            pid,
            cpu,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn link_create(program: &OwnedFd, event: &OwnedFd, cookie: u64) -> io::Result<OwnedFd> {
    // union bpf_attr, link_create: prog_fd @0, target_fd @4, attach_type @8, flags @12,
    // perf_event.bpf_cookie @16; the rest zero.
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(event.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_PERF_EVENT.to_ne_bytes());
    attr[16..24].copy_from_slice(&cookie.to_ne_bytes());
    // SAFETY: attr is a zero-filled bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
