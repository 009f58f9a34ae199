//! HTTP capture: the user-space half of `ebpf/periscope-ebpf/src/http/`. Attaches the socket
//! tracepoint programs (else the raw or per-syscall tracepoint ones), and runs the loop that drains the ring buffer into the
//! [`Tracker`](super::Tracker).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::{io::unix::AsyncFd, sync::watch};

use periscope_common::http::{HttpPending, REGS_WINDOW, SYSCALL_OPS, op};

use super::{HttpConfig, HttpState, Tracker};
use crate::{
    families::{
        KernelSupport, LoadSettings, Mechanism, Plan, ProbeError, ProbeStatus,
        attach::{attach_raw_or_tracepoints, start_family_with},
        candidates_plan,
    },
    kernel::{
        btf::KernelBtf,
        programs::{attach_raw_tracepoints, attach_trampolines, unload_programs},
        tracefs::Tracefs,
    },
};

const FAMILY: &str = "http";

/// `(program, raw tracepoint)` on socket tracepoints: every send and receive on a socket (after
/// it, in its task), every TCP state change (sides, closes), process exits, and forks and execs
/// (a child forked without exec belongs to its parent's service instance).
const SOCKET_PROGRAMS: &[(&str, &str)] = &[
    ("http_sock_send", "sock_send_length"),
    ("http_sock_recv", "sock_recv_length"),
    ("http_sock_state", "inet_sock_set_state"),
    ("http_process_exit_raw", "sched_process_exit"),
    ("http_process_fork_raw", "sched_process_fork"),
    ("http_process_exec_raw", "sched_process_exec"),
];

/// `(program, raw tracepoint)` beside the `fentry` programs ([`fentry_programs`]): TCP state
/// changes and process exits, as on socket tracepoints.
const FENTRY_RAW_PROGRAMS: &[(&str, &str)] = &[
    ("http_sock_state", "inet_sock_set_state"),
    ("http_process_exit_raw", "sched_process_exit"),
    ("http_process_fork_raw", "sched_process_fork"),
    ("http_process_exec_raw", "sched_process_exec"),
];

/// `(program, raw tracepoint)`: one program on every syscall entry (write stamps, `close`),
/// one on every exit (the rest), reading arguments from the saved registers.
const RAW_PROGRAMS: &[(&str, &str)] = &[
    ("http_sys_enter_raw", "sys_enter"),
    ("http_sys_exit_raw", "sys_exit"),
    ("http_process_exit_raw", "sched_process_exit"),
    ("http_process_fork_raw", "sched_process_fork"),
    ("http_process_exec_raw", "sched_process_exec"),
];

/// What each syscall the raw programs handle is to them, by this architecture's numbers.
#[cfg(target_arch = "x86_64")]
const SYSCALL_TABLE: &[(i64, u8)] = &[
    (libc::SYS_read, op::READ),
    (libc::SYS_recvfrom, op::READ),
    (libc::SYS_readv, op::READV),
    (libc::SYS_recvmsg, op::RECVMSG),
    (libc::SYS_write, op::WRITE),
    (libc::SYS_sendto, op::WRITE),
    (libc::SYS_writev, op::WRITEV),
    (libc::SYS_sendmsg, op::SENDMSG),
    (libc::SYS_sendfile, op::SENDFILE),
    (libc::SYS_accept, op::ACCEPT),
    (libc::SYS_accept4, op::ACCEPT),
    (libc::SYS_connect, op::CONNECT),
    (libc::SYS_close, op::CLOSE),
    (libc::SYS_dup, op::DUP),
    (libc::SYS_dup2, op::DUP),
    (libc::SYS_dup3, op::DUP),
    (libc::SYS_fcntl, op::FCNTL),
];

/// `(program, category, tracepoint)`: every read/write syscall's entry has a program per buffer
/// shape, and all their exits share one.
pub const PROGRAMS: &[(&str, &str, &str)] = &[
    ("http_enter_read", "syscalls", "sys_enter_read"),
    ("http_enter_read", "syscalls", "sys_enter_recvfrom"),
    ("http_enter_readv", "syscalls", "sys_enter_readv"),
    ("http_enter_recvmsg", "syscalls", "sys_enter_recvmsg"),
    ("http_enter_write", "syscalls", "sys_enter_write"),
    ("http_enter_write", "syscalls", "sys_enter_sendto"),
    ("http_enter_writev", "syscalls", "sys_enter_writev"),
    ("http_enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
    ("http_enter_sendfile", "syscalls", "sys_enter_sendfile64"),
    ("http_exit_io", "syscalls", "sys_exit_read"),
    ("http_exit_io", "syscalls", "sys_exit_recvfrom"),
    ("http_exit_io", "syscalls", "sys_exit_readv"),
    ("http_exit_io", "syscalls", "sys_exit_recvmsg"),
    ("http_exit_io", "syscalls", "sys_exit_write"),
    ("http_exit_io", "syscalls", "sys_exit_sendto"),
    ("http_exit_io", "syscalls", "sys_exit_writev"),
    ("http_exit_io", "syscalls", "sys_exit_sendmsg"),
    ("http_exit_io", "syscalls", "sys_exit_sendfile64"),
    ("http_enter_accept", "syscalls", "sys_enter_accept"),
    ("http_enter_accept", "syscalls", "sys_enter_accept4"),
    ("http_exit_accept", "syscalls", "sys_exit_accept"),
    ("http_exit_accept", "syscalls", "sys_exit_accept4"),
    ("http_enter_connect", "syscalls", "sys_enter_connect"),
    ("http_exit_connect", "syscalls", "sys_exit_connect"),
    ("http_enter_close", "syscalls", "sys_enter_close"),
    ("http_enter_dup", "syscalls", "sys_enter_dup"),
    ("http_enter_dup", "syscalls", "sys_enter_dup2"),
    ("http_enter_dup", "syscalls", "sys_enter_dup3"),
    ("http_enter_fcntl", "syscalls", "sys_enter_fcntl"),
    ("http_exit_dup", "syscalls", "sys_exit_dup"),
    ("http_exit_dup", "syscalls", "sys_exit_dup2"),
    ("http_exit_dup", "syscalls", "sys_exit_dup3"),
    ("http_exit_dup", "syscalls", "sys_exit_fcntl"),
    ("http_process_exit", "sched", "sched_process_exit"),
];

/// `PERISCOPE_BENCH_HTTP_STAGE`: where the socket-tracepoint programs stop, for
/// `bench/http_cost.py` only (its cost breakdown removes the hot path's steps one at a time).
/// 7 runs them whole but sends no record of a request's bytes (the upper bound of what one
/// record per exchange could save in the kernel). Unset, or anything but 1-7, runs them whole;
/// it is not a setting for users, since a stopped program reports nothing.
fn cost_stage() -> u32 {
    std::env::var("PERISCOPE_BENCH_HTTP_STAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|stage| (1..=7).contains(stage))
        .unwrap_or(0)
}

pub fn plan(config: &HttpConfig, kernel: &KernelSupport, tracefs: Option<&Tracefs>) -> Plan {
    let settings = LoadSettings {
        globals: vec![
            ("HTTP_WAKEUP_BYTES", wakeup_step(config.ring_buffer_size)),
            ("HTTP_COST_STAGE", cost_stage()),
            // Go TLS: the path from a *tls.Conn to its fd (gotls.rs; checked per binary).
            super::gotls::KNOWN.globals()[0],
            super::gotls::KNOWN.globals()[1],
            super::gotls::KNOWN.globals()[2],
        ],
        max_entries: vec![
            ("HTTP_CONNS", config.max_connections),
            ("HTTP_FD_SOCKS", config.max_connections),
            ("HTTP_SOCK_FDS", config.max_connections),
            ("HTTP_SOCK_ROLES", config.max_connections),
            // One blocked `Read` per open Go TLS connection (an idle keep-alive connection
            // waits in one): as many as the connections followed.
            ("HTTP_GO_TLS_PENDING", config.max_connections),
            ("HTTP_EVENTS", config.ring_buffer_size),
        ],
    };
    if !config.enabled {
        return Plan::disabled(settings);
    }
    const ALL: &[Mechanism] = &[
        Mechanism::SocketTracepoint,
        Mechanism::Fentry,
        Mechanism::RawTracepoint,
        Mechanism::Tracepoint,
    ];
    // Under `auto`, every mechanism whose globals can be had is a candidate: a kernel whose
    // verifier refuses the socket or raw programs (6.1 and older refuse the raw exit program)
    // falls back to the next.
    candidates_plan(
        FAMILY,
        ALL,
        config.mechanism,
        kernel,
        settings,
        |mechanism| match mechanism {
            Mechanism::SocketTracepoint => socket_offsets(kernel),
            Mechanism::Fentry => fentry_offsets(kernel),
            Mechanism::RawTracepoint => raw_tracepoint_offsets(kernel),
            _ => tracefs
                .ok_or_else(|| "tracefs is not mounted".to_string())
                .and_then(|tracefs| syscall_offsets(tracefs).map_err(|e| e.to_string())),
        },
    )
}

/// Bytes a CPU sends between two wakeups of the reader: all CPUs together wake it about once
/// per eighth of the ring buffer (and the timer drains what is below that).
fn wakeup_step(ring_buffer_size: u32) -> u32 {
    // Online, not possible, CPUs: a VM may declare many more it could hot-plug, and the step
    // would shrink to its floor for nothing.
    let cpus = aya::util::online_cpus().map_or(1, |cpus| cpus.len().max(1)) as u32;
    wakeup_step_for(ring_buffer_size, cpus)
}

/// [`wakeup_step`] on `cpus` CPUs: at least about two records (a wakeup per record costs more
/// than the record), at most an eighth of the ring (a small ring must not fill before a wakeup).
/// With a small ring and many CPUs the floor makes the CPUs' steps add up to more than the
/// ring: it may then fill before any wakeup, until the 25 ms timer drains it.
fn wakeup_step_for(ring_buffer_size: u32, cpus: u32) -> u32 {
    (ring_buffer_size / 8 / cpus.max(1))
        .max(1024)
        .min(ring_buffer_size / 8)
}

/// Where the raw syscall programs find the syscall number, the first three arguments and the
/// code segment in `struct pt_regs`, from this kernel's BTF (x86_64 only: other architectures
/// name their registers otherwise, and use the tracepoints).
fn raw_tracepoint_offsets(kernel: &KernelSupport) -> Result<Vec<(&'static str, u32)>, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("raw syscall tracepoints are implemented for x86_64 only".into());
    }
    let btf = kernel.btf()?;
    let fields = [
        ("HTTP_REGS_ARG0", btf.offset("pt_regs", "di")?),
        ("HTTP_REGS_ARG1", btf.offset("pt_regs", "si")?),
        ("HTTP_REGS_ARG2", btf.offset("pt_regs", "dx")?),
        ("HTTP_REGS_CS", btf.offset("pt_regs", "cs")?),
        ("HTTP_REGS_WINDOW_NR", btf.offset("pt_regs", "orig_ax")?),
    ];
    let task_tgid = ("HTTP_TASK_TGID", btf.offset("task_struct", "tgid")?);
    let base = fields.iter().map(|f| f.1).min().unwrap_or(0);
    let end = fields.iter().map(|f| f.1 + 8).max().unwrap_or(0);
    if (end - base) as usize > REGS_WINDOW {
        return Err(format!(
            "struct pt_regs: the registers Periscope reads span {} bytes, more than the {REGS_WINDOW} it reads",
            end - base
        ));
    }
    // The number is in the window (socket programs read it with the arguments) and also read
    // on its own at its offset in pt_regs (the raw exit leaves other syscalls after that read).
    let mut globals = vec![
        ("HTTP_REGS_BASE", base),
        ("HTTP_REGS_NR", btf.offset("pt_regs", "orig_ax")?),
    ];
    globals.extend(fields.iter().map(|(name, offset)| (*name, offset - base)));
    globals.push(task_tgid);
    Ok(globals)
}

/// What the socket-tracepoint programs read: the saved registers (as the raw syscall programs)
/// and, in `struct sock`, what every family reads of a socket ([`KernelBtf::sock_offsets`]),
/// the protocol, the socket (whose file tells a process's socket from a kernel one), and the
/// shutdown bits and receive-queue length (which together tell a process's close from a
/// half-close).
fn socket_offsets(kernel: &KernelSupport) -> Result<Vec<(&'static str, u32)>, String> {
    let mut globals = raw_tracepoint_offsets(kernel)?;
    let btf = kernel.btf()?;
    globals.extend(btf.sock_offsets()?);
    globals.extend([
        ("HTTP_SK_PROTOCOL", btf.offset("sock", "sk_protocol")?),
        ("HTTP_SK_SOCKET", btf.offset("sock", "sk_socket")?),
        ("HTTP_SK_SHUTDOWN", btf.offset("sock", "sk_shutdown")?),
        (
            "HTTP_SK_RCV_QLEN",
            btf.offset("sock", "sk_receive_queue")? + btf.offset("sk_buff_head", "qlen")?,
        ),
        ("HTTP_SOCKET_FILE", btf.offset("socket", "file")?),
    ]);
    let in_place = registers_in_ptrace_layout(|field| btf.offset("pt_regs", field))?;
    globals.push(("HTTP_REGS_IN_PLACE", in_place as u32));
    Ok(globals)
}

/// Whether `struct pt_regs` (its field offsets from `offset`) has x86_64's ptrace layout, which
/// the socket programs then load in place (`HTTP_REGS_IN_PLACE`).
fn registers_in_ptrace_layout(
    offset: impl Fn(&str) -> Result<u32, String>,
) -> Result<bool, String> {
    const PTRACE: [(&str, u32); 5] = [
        ("dx", 96),
        ("si", 104),
        ("di", 112),
        ("orig_ax", 120),
        ("cs", 136),
    ];
    for (field, expected) in PTRACE {
        if offset(field)? != expected {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What the `fentry` programs need: the socket programs' offsets, `bpf_task_pt_regs` (5.15+),
/// and the TCP functions with the parameters the programs read.
fn fentry_offsets(kernel: &KernelSupport) -> Result<Vec<(&'static str, u32)>, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if !crate::kernel::mechanism::release_at_least(release.trim(), (5, 15)) {
        return Err(format!(
            "kernel {}: bpf_task_pt_regs, which the programs read the syscall's arguments with, came in 5.15",
            release.trim()
        ));
    }
    fentry_programs(&*kernel.btf()?)?;
    socket_offsets(kernel)
}

/// The `(fexit program, kernel function)` pairs for this kernel's BTF: `tcp_sendmsg`, the
/// `tcp_recvmsg` program for its parameter list (5.19 dropped `nonblock`, later kernels
/// `addr_len`), and `tcp_sendpage`
/// where it still exists (sendfile's path before 6.5).
fn fentry_programs(btf: &KernelBtf) -> Result<Vec<(&'static str, &'static str)>, String> {
    let params = |function: &str| {
        btf.function_params(function)
            .ok_or_else(|| format!("BTF has no function {function}"))
    };
    let mut programs = Vec::new();
    let send = params("tcp_sendmsg")?;
    if send.first().map(String::as_str) != Some("sk") || send.len() != 3 {
        return Err(format!("tcp_sendmsg{send:?}: expected (sk, msg, size)"));
    }
    programs.push(("http_tcp_sendmsg", "tcp_sendmsg"));
    let recv = params("tcp_recvmsg")?;
    let names: Vec<&str> = recv.iter().map(String::as_str).collect();
    programs.push(match names.as_slice() {
        ["sk", _, _, "flags"] => ("http_tcp_recvmsg_no_addr_len", "tcp_recvmsg"),
        ["sk", _, _, "flags", _] => ("http_tcp_recvmsg", "tcp_recvmsg"),
        ["sk", _, _, "nonblock", "flags", _] => ("http_tcp_recvmsg_nonblock", "tcp_recvmsg"),
        _ => {
            return Err(format!(
                "tcp_recvmsg{names:?}: a parameter list the programs do not know"
            ));
        }
    });
    if let Ok(page) = params("tcp_sendpage") {
        if page.first().map(String::as_str) != Some("sk") || page.len() != 5 {
            return Err(format!(
                "tcp_sendpage{page:?}: expected (sk, page, offset, size, flags)"
            ));
        }
        programs.push(("http_tcp_sendpage", "tcp_sendpage"));
    }
    Ok(programs)
}

/// Attaches the `fentry` mechanism: the `fexit` programs for this kernel, then the raw
/// tracepoint programs beside them (all or none).
fn attach_fentry(ebpf: &mut Ebpf) -> Result<Vec<&'static str>, ProbeError> {
    let btf = KernelBtf::load().map_err(ProbeError::Mechanism)?;
    let fexits = fentry_programs(&btf).map_err(ProbeError::Mechanism)?;
    drop(btf);
    attach_trampolines(ebpf, &fexits)?;
    if let Err(e) = attach_raw_tracepoints(ebpf, FENTRY_RAW_PROGRAMS) {
        unload_programs(ebpf, fexits.iter().map(|p| p.0));
        return Err(e);
    }
    Ok(fexits
        .iter()
        .chain(FENTRY_RAW_PROGRAMS)
        .map(|p| p.0)
        .collect())
}

/// Fills the raw programs' syscall-number table.
fn fill_syscall_table(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let map = ebpf
        .map_mut("HTTP_SYSCALL_OPS")
        .ok_or_else(|| ProbeError::missing_map("HTTP_SYSCALL_OPS"))?;
    let mut table: aya::maps::Array<_, u8> =
        aya::maps::Array::try_from(map).map_err(|e| ProbeError::Map {
            map: "HTTP_SYSCALL_OPS",
            reason: e.to_string(),
        })?;
    #[cfg(target_arch = "x86_64")]
    for (nr, op) in SYSCALL_TABLE {
        if (*nr as u32) < SYSCALL_OPS {
            table.set(*nr as u32, op, 0).map_err(|e| ProbeError::Map {
                map: "HTTP_SYSCALL_OPS",
                reason: e.to_string(),
            })?;
        }
    }
    let _ = &mut table;
    Ok(())
}

/// Syscall tracepoints share one record layout; check that on this kernel every one used has
/// its first argument and its return value where `sys_enter_read`/`sys_exit_read` have them.
fn syscall_offsets(tracefs: &Tracefs) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let args = tracefs
        .format("syscalls", "sys_enter_read")?
        .offset("fd", 0)?;
    let ret = tracefs
        .format("syscalls", "sys_exit_read")?
        .offset("ret", 8)?;
    for (_, category, name) in PROGRAMS.iter().filter(|p| p.1 == "syscalls") {
        let format = tracefs.format(category, name)?;
        let first = format
            .fields
            .iter()
            .filter(|f| !f.name.starts_with("common_") && f.name != "__syscall_nr")
            .map(|f| f.offset)
            .min();
        let expected = if name.starts_with("sys_exit") {
            ret
        } else {
            args
        };
        if first != Some(expected) {
            return Err(ProbeError::Mechanism(format!(
                "syscalls:{name}: first field at {first:?}, expected {expected} like sys_enter_read/sys_exit_read"
            )));
        }
    }
    Ok(vec![("HTTP_ARGS_OFFSET", args), ("HTTP_RET_OFFSET", ret)])
}

/// The maps the capture loop needs.
pub struct Http {
    events: RingBuf<MapData>,
    conns: aya::maps::HashMap<MapData, u64, u8>,
    /// Set while the capture loop sleeps until the next record (see `Cadence`).
    reader_parked: aya::maps::Array<MapData, u32>,
    /// Processes forked without exec: child tgid -> forker (kernel side: `HTTP_FORKED`).
    forked: aya::maps::HashMap<MapData, u32, u32>,
    /// Syscalls in flight (per-syscall tracepoints: every watched read and write, stamped at its
    /// entry); the daemon's sweeper removes entries older than a minute, of threads that never
    /// returned.
    pub pending: std::sync::Arc<std::sync::Mutex<aya::maps::HashMap<MapData, u32, HttpPending>>>,
}

pub fn start(ebpf: &mut Ebpf, plan: Plan) -> (Option<Http>, ProbeStatus) {
    let raw: &[(Mechanism, &[(&str, &str)])] = &[
        (Mechanism::SocketTracepoint, SOCKET_PROGRAMS),
        (Mechanism::RawTracepoint, RAW_PROGRAMS),
    ];
    let attach = |ebpf: &mut Ebpf, mechanism: Mechanism| match mechanism {
        Mechanism::Fentry => attach_fentry(ebpf),
        _ => attach_raw_or_tracepoints(ebpf, mechanism, raw, PROGRAMS),
    };
    start_family_with(ebpf, FAMILY, plan, attach, |ebpf| {
        fill_syscall_table(ebpf)?;
        let events = ebpf
            .take_map("HTTP_EVENTS")
            .ok_or_else(|| ProbeError::missing_map("HTTP_EVENTS"))?;
        let conns = ebpf
            .take_map("HTTP_CONNS")
            .ok_or_else(|| ProbeError::missing_map("HTTP_CONNS"))?;
        let pending = crate::families::take_hash_map(ebpf, "HTTP_PENDING")?;
        let reader_parked = crate::kernel::maps::take_reader_flag(ebpf, "HTTP_READER_PARKED")?;
        let forked = crate::families::take_hash_map(ebpf, "HTTP_FORKED")?;
        Ok(Http {
            forked,
            reader_parked,
            pending: std::sync::Arc::new(std::sync::Mutex::new(pending)),
            events: RingBuf::try_from(events).map_err(|e| ProbeError::Map {
                map: "HTTP_EVENTS",
                reason: e.to_string(),
            })?,
            conns: aya::maps::HashMap::try_from(conns).map_err(|e| ProbeError::Map {
                map: "HTTP_CONNS",
                reason: e.to_string(),
            })?,
        })
    })
}

/// How often the loop drains the ring buffer without being woken (records below a CPU's wakeup
/// step do not wake it) and publishes its counters and gauges, while records are many.
const TICK: Duration = Duration::from_millis(25);
/// While records are few, the kernel wakes the loop at each one (see `Cadence`) and the loop
/// wakes on its own only this often: to reap, and to bound the wait of a record written in the
/// instant the flag was being set (it did not wake the loop).
const PARKED_TICK: Duration = Duration::from_secs(5);
/// Processes and connections whose end record was lost are looked for this often (and as
/// often while parked when some were found gone, so that they go on the next round).
const REAP_EVERY: Duration = Duration::from_secs(1);
/// The wall clock is re-read this often (span timestamps are monotonic plus an offset).
const CLOCK_EVERY: Duration = Duration::from_secs(60);

/// Drains the ring buffer into `tracker` until shutdown, then drains what is left.
pub async fn run(http: Http, mut tracker: Tracker, mut shutdown: watch::Receiver<bool>) {
    let Http {
        events,
        mut conns,
        reader_parked,
        forked,
        ..
    } = http;
    tracker.set_forked(Box::new(move |tgid| forked.get(&tgid, 0).ok()));
    // SAFETY: the ring buffer's fd stays open as long as the AsyncFd owns the map.
    let mut events = match unsafe { AsyncFd::register(events) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the HTTP ring buffer; HTTP capture stops");
            return;
        }
    };
    let mut cadence = crate::kernel::maps::Cadence::new(reader_parked, FAMILY, TICK, PARKED_TICK);
    let mut next = tokio::time::Instant::now() + TICK;
    let (mut last_reap, mut last_clock) = (Instant::now(), Instant::now());
    loop {
        let records = tokio::select! {
            guard = events.readable_mut() => {
                match guard {
                    Ok(mut guard) => {
                        // Cleared before the drain: a record written after it wakes the loop
                        // again (cleared after, its wakeup would be lost until the next tick).
                        guard.clear_ready();
                        drain(guard.get_inner_mut(), &mut tracker, &mut conns)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "HTTP ring buffer poll failed");
                        return;
                    }
                }
            }
            _ = tokio::time::sleep_until(next) => drain(events.get_mut(), &mut tracker, &mut conns),
            _ = shutdown.changed() => {
                drain(events.get_mut(), &mut tracker, &mut conns);
                forget(&mut conns, &mut tracker);
                tracker.publish();
                return;
            }
        };
        cadence.drained(records);
        if last_clock.elapsed() >= CLOCK_EVERY {
            tracker.refresh_clock();
            last_clock = Instant::now();
        }
        if last_reap.elapsed() >= REAP_EVERY {
            tracker.reap_exited();
            tracker.reap_evicted(|key| conns.get(&key, 0).is_ok());
            last_reap = Instant::now();
        }
        if cadence.adapt() {
            cadence.drained(drain(events.get_mut(), &mut tracker, &mut conns));
        }
        let period = match cadence.period() {
            parked if tracker.reap_pending() => parked.min(REAP_EVERY),
            period => period,
        };
        next = tokio::time::Instant::now() + period;
        forget(&mut conns, &mut tracker);
        tracker.publish();
    }
}

/// Handles every record in the ring buffer; returns how many. Connections given up on are deleted from the
/// kernel map as soon as possible (every few records), so that they stop producing records.
fn drain(
    events: &mut RingBuf<MapData>,
    tracker: &mut Tracker,
    conns: &mut aya::maps::HashMap<MapData, u64, u8>,
) -> usize {
    let mut records = 0;
    while let Some(record) = events.next() {
        records += 1;
        tracker.handle(&record);
        if !tracker.forget.is_empty() {
            forget(conns, tracker);
        }
    }
    records
}

/// Stops kernel capture on connections the tracker gave up on (not HTTP, not selected).
fn forget(conns: &mut aya::maps::HashMap<MapData, u64, u8>, tracker: &mut Tracker) {
    for key in tracker.forget.drain(..) {
        let _ = conns.remove(&key);
    }
}

/// Shared state for the exporters.
pub fn state(config: &HttpConfig) -> Arc<Mutex<HttpState>> {
    Arc::new(Mutex::new(HttpState::new(config.max_series)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket programs load registers in place only at the ptrace layout's offsets.
    #[test]
    fn registers_load_in_place_only_in_the_ptrace_layout() {
        let ptrace = |field: &str| -> Result<u32, String> {
            Ok(match field {
                "dx" => 96,
                "si" => 104,
                "di" => 112,
                "orig_ax" => 120,
                "cs" => 136,
                _ => return Err(format!("no {field}")),
            })
        };
        assert_eq!(registers_in_ptrace_layout(ptrace), Ok(true));
        let moved = |field: &str| ptrace(field).map(|o| if field == "cs" { o + 8 } else { o });
        assert_eq!(registers_in_ptrace_layout(moved), Ok(false));
    }

    /// Below 6.5 (no socket tracepoints), `auto` takes `fentry`, with the raw and per-syscall
    /// tracepoints behind it; above, socket tracepoints come first and `fentry` is a fallback.
    #[test]
    fn fentry_comes_after_socket_tracepoints_and_before_syscalls() {
        let config = HttpConfig::default();
        let no_socket = KernelSupport::allowing(&[
            Mechanism::Fentry,
            Mechanism::RawTracepoint,
            Mechanism::Tracepoint,
        ]);
        let plan = plan(&config, &no_socket, None);
        assert_eq!(plan.mechanism.ok(), Some(Mechanism::Fentry));
        assert_eq!(plan.fallbacks, vec![Mechanism::RawTracepoint]);
        let all = KernelSupport::allowing(&[
            Mechanism::SocketTracepoint,
            Mechanism::Fentry,
            Mechanism::RawTracepoint,
        ]);
        let plan = super::plan(&config, &all, None);
        assert_eq!(plan.mechanism.ok(), Some(Mechanism::SocketTracepoint));
        assert_eq!(
            plan.fallbacks,
            vec![Mechanism::Fentry, Mechanism::RawTracepoint]
        );
    }

    /// This kernel's TCP functions have parameter lists the programs know.
    #[test]
    fn fentry_programs_match_this_kernels_tcp_functions() {
        let btf = KernelBtf::load().unwrap();
        let programs = fentry_programs(&btf).unwrap();
        assert_eq!(programs[0], ("http_tcp_sendmsg", "tcp_sendmsg"));
        assert_eq!(
            programs[1],
            ("http_tcp_recvmsg_no_addr_len", "tcp_recvmsg"),
            "6.18: (sk, msg, len, flags)"
        );
        assert_eq!(programs.len(), 2, "no tcp_sendpage after 6.5: {programs:?}");
    }

    #[test]
    fn wakeup_steps_share_an_eighth_of_the_ring_between_cpus() {
        assert_eq!(wakeup_step_for(4 << 20, 2), 256 << 10);
        assert_eq!(wakeup_step_for(4 << 20, 1), 512 << 10);
        assert_eq!(
            wakeup_step_for(4 << 20, 4096),
            1024,
            "not one wakeup per record"
        );
        assert_eq!(
            wakeup_step_for(4096, 2),
            512,
            "a small ring is read before it fills"
        );
        assert_eq!(wakeup_step_for(4096, 0), 512);
    }
}
