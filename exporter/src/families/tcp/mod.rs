//! TCP connections, retransmits and resets: the user-space half of
//! `ebpf/periscope-ebpf/src/tcp.rs` (tracepoints `sock:inet_sock_set_state`,
//! `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`; or, with the
//! `fentry` mechanism, a BPF trampoline on `tcp_set_state`, the raw `tcp_retransmit_skb`
//! tracepoint and the two reset tracepoints).
//!
//! Connection events are drained from the ring buffer on a short timer and at every collect
//! (so a scrape sees every connection closed before it); retransmit and reset counters are read
//! from their kernel map at collect time.

use std::sync::Mutex;

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use periscope_common::tcp::{FIELD_ABSENT, PEER_KINDS, SOCKADDR_SIZE, TcpEvent, TcpPeerKey};

use super::{
    Family, KernelSupport, LoadSettings, Mechanism, Plan, ProbeError, ProbeStatus, Registration,
    Started, Task, TaskContext, candidates_plan, start_family_with,
};
pub mod config;
pub mod metrics;

pub use self::config::TcpConfig;
use self::metrics::TcpMetrics;
use crate::{
    kernel::{
        btf::KernelBtf,
        programs::{
            attach_raw_tracepoints, attach_tracepoints, attach_trampolines, unload_programs,
        },
        tracefs::{Tracefs, TracepointFormat},
    },
    model::metrics::Metric,
};

const FAMILY: &str = "tcp";
/// Best first (see `Mechanism::PREFERENCE`): `fentry` where the kernel has BPF trampolines
/// (measured cheaper per event in the kernel matrix, docs/kernels.md), else tracepoints.
const IMPLEMENTED: &[Mechanism] = &[Mechanism::Fentry, Mechanism::Tracepoint];
pub const PROGRAMS: &[(&str, &str, &str)] = &[
    ("tcp_state", "sock", "inet_sock_set_state"),
    ("tcp_retransmit", "tcp", "tcp_retransmit_skb"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
];
/// `(program, kernel function)` of the `fentry` mechanism, with the parameter names the
/// programs expect (checked against this kernel's BTF before loading).
const TRAMPOLINES: &[(&str, &str, &[&str])] =
    &[("tcp_state_fentry", "tcp_set_state", &["sk", "state"])];
/// `(program, raw tracepoint)` beside the `fentry` program: retransmits where the tracepoint
/// fires (`__tcp_retransmit_skb`, which Debian's 6.1 inlines into its caller: no `fexit` there
/// sees a SYN retransmit), without the tracepoint's record.
const FENTRY_RAW: &[(&str, &str)] = &[("tcp_retransmit_raw", "tcp_retransmit_skb")];
/// The tracepoint programs beside the `fentry` ones: resets are rare (nothing to save), and
/// which of them the kernel reports has changed between releases (a reset for no socket, an
/// active reset: since 6.10), where the tracepoint stays the same interface.
/// The reset programs: [`PROGRAMS`] after the state and retransmit ones.
const FENTRY_TRACEPOINTS: &[(&str, &str, &str)] = PROGRAMS.split_at(2).1;

pub fn plan(config: &TcpConfig, kernel: &KernelSupport, tracefs: Option<&Tracefs>) -> Plan {
    let mut settings = LoadSettings {
        globals: Vec::new(),
        max_entries: vec![
            ("TCP_SOCKS", config.max_connections),
            ("TCP_PEERS", config.max_peers),
            ("TCP_EVENTS", config.ring_buffer_size),
        ],
    };
    if !config.enabled {
        return Plan::disabled(settings);
    }
    match byte_count_offsets(kernel) {
        Ok(offsets) => settings.globals.extend(offsets),
        Err(why) => tracing::warn!(
            %why,
            "TCP byte counts per connection are off (kernel.tcp.connection.sent/received stay 0)"
        ),
    }
    candidates_plan(
        FAMILY,
        IMPLEMENTED,
        config.mechanism,
        kernel,
        settings,
        |mechanism| {
            let tracefs = tracefs.ok_or_else(|| "tracefs is not mounted".to_string())?;
            match mechanism {
                Mechanism::Fentry => fentry_globals(kernel, tracefs),
                _ => tracepoint_offsets(tracefs).map_err(|e| e.to_string()),
            }
        },
    )
}

/// What the `fentry` mechanism needs: this kernel's functions with the parameters the programs
/// read, the socket offsets from BTF, and the reset tracepoints' layouts.
fn fentry_globals(
    kernel: &KernelSupport,
    tracefs: &Tracefs,
) -> Result<Vec<(&'static str, u32)>, String> {
    let btf = kernel.btf()?;
    trampolines(&btf)?;
    let mut globals = btf.sock_offsets()?;
    for (name, fields) in PEER_TRACEPOINTS
        .iter()
        .filter(|(name, _)| FENTRY_TRACEPOINTS.iter().any(|p| p.2 == *name))
    {
        let format = tracefs.format("tcp", name).map_err(|e| e.to_string())?;
        globals.extend(peer_offsets(&format, fields).map_err(|e| e.to_string())?);
    }
    Ok(globals)
}

/// The `fentry` mechanism's `(program, function)` pairs, when this kernel's BTF has each
/// function with the parameters its program reads.
fn trampolines(btf: &KernelBtf) -> Result<Vec<(&'static str, &'static str)>, String> {
    TRAMPOLINES
        .iter()
        .map(|(program, function, expected)| {
            let params = btf
                .function_params(function)
                .ok_or_else(|| format!("BTF has no function {function}"))?;
            if params != *expected {
                return Err(format!("{function}{params:?}: expected {expected:?}"));
            }
            Ok((*program, *function))
        })
        .collect()
}

/// Attaches the `fentry` mechanism: the trampoline programs, then the raw tracepoint and the
/// reset tracepoints (all or none). The plan checked each function's parameters against this
/// kernel's BTF ([`fentry_globals`]): a plan for `fentry` exists only if they matched.
fn attach_fentry(ebpf: &mut Ebpf) -> Result<Vec<&'static str>, ProbeError> {
    let programs: Vec<(&'static str, &'static str)> = TRAMPOLINES
        .iter()
        .map(|(program, function, _)| (*program, *function))
        .collect();
    attach_trampolines(ebpf, &programs)?;
    let beside = attach_raw_tracepoints(ebpf, FENTRY_RAW).and_then(|()| {
        attach_tracepoints(ebpf, FENTRY_TRACEPOINTS).inspect_err(|_| {
            unload_programs(ebpf, FENTRY_RAW.iter().map(|p| p.0));
        })
    });
    if let Err(e) = beside {
        unload_programs(ebpf, programs.iter().map(|p| p.0));
        return Err(e);
    }
    Ok(programs
        .iter()
        .chain(FENTRY_RAW)
        .map(|p| p.0)
        .chain(FENTRY_TRACEPOINTS.iter().map(|p| p.0))
        .collect())
}

/// The programs' field-offset globals, from this kernel's format files.
fn tracepoint_offsets(tracefs: &Tracefs) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let state = tracefs.format("sock", "inet_sock_set_state")?;
    let field = |global: &'static str, name: &str, size: u32| {
        state.offset(name, size).map(|offset| (global, offset))
    };
    let mut globals = vec![
        field("TCP_STATE_SKADDR", "skaddr", 8)?,
        field("TCP_STATE_OLDSTATE", "oldstate", 4)?,
        field("TCP_STATE_NEWSTATE", "newstate", 4)?,
        field("TCP_STATE_SPORT", "sport", 2)?,
        field("TCP_STATE_DPORT", "dport", 2)?,
        field("TCP_STATE_FAMILY", "family", 2)?,
        field("TCP_STATE_PROTOCOL", "protocol", 2)?,
        field("TCP_STATE_DADDR", "daddr", 4)?,
        field("TCP_STATE_DADDR_V6", "daddr_v6", 16)?,
    ];
    for (name, fields) in PEER_TRACEPOINTS {
        globals.extend(peer_offsets(&tracefs.format("tcp", name)?, &fields)?);
    }
    Ok(globals)
}

/// The globals of one peer-counting tracepoint (see `PeerFields` in the eBPF crate).
struct PeerGlobals {
    skaddr: &'static str,
    sport: &'static str,
    family: &'static str,
    daddr: &'static str,
    daddr_v6: &'static str,
    saddr_sockaddr: &'static str,
    daddr_sockaddr: &'static str,
}

const PEER_TRACEPOINTS: [(&str, PeerGlobals); 3] = [
    (
        "tcp_retransmit_skb",
        PeerGlobals {
            skaddr: "TCP_RETRANSMIT_SKADDR",
            sport: "TCP_RETRANSMIT_SPORT",
            family: "TCP_RETRANSMIT_FAMILY",
            daddr: "TCP_RETRANSMIT_DADDR",
            daddr_v6: "TCP_RETRANSMIT_DADDR_V6",
            saddr_sockaddr: "TCP_RETRANSMIT_SADDR_SOCKADDR",
            daddr_sockaddr: "TCP_RETRANSMIT_DADDR_SOCKADDR",
        },
    ),
    (
        "tcp_receive_reset",
        PeerGlobals {
            skaddr: "TCP_RECV_RESET_SKADDR",
            sport: "TCP_RECV_RESET_SPORT",
            family: "TCP_RECV_RESET_FAMILY",
            daddr: "TCP_RECV_RESET_DADDR",
            daddr_v6: "TCP_RECV_RESET_DADDR_V6",
            saddr_sockaddr: "TCP_RECV_RESET_SADDR_SOCKADDR",
            daddr_sockaddr: "TCP_RECV_RESET_DADDR_SOCKADDR",
        },
    ),
    (
        "tcp_send_reset",
        PeerGlobals {
            skaddr: "TCP_SEND_RESET_SKADDR",
            sport: "TCP_SEND_RESET_SPORT",
            family: "TCP_SEND_RESET_FAMILY",
            daddr: "TCP_SEND_RESET_DADDR",
            daddr_v6: "TCP_SEND_RESET_DADDR_V6",
            saddr_sockaddr: "TCP_SEND_RESET_SADDR_SOCKADDR",
            daddr_sockaddr: "TCP_SEND_RESET_DADDR_SOCKADDR",
        },
    ),
];

/// Offsets of a peer-counting tracepoint's fields in either layout the kernels have had:
/// `saddr`/`daddr` as 28-byte `sockaddr` buffers (`tcp_send_reset` since 6.10), or `sport`,
/// `daddr` (4 bytes) and `daddr_v6` (16), with `family` where the kernel has it (5.11+).
/// Fields of the other layout are [`FIELD_ABSENT`].
fn peer_offsets(
    format: &TracepointFormat,
    globals: &PeerGlobals,
) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let mut out = vec![(globals.skaddr, format.offset("skaddr", 8)?)];
    let sockaddr = format
        .field("daddr")
        .is_some_and(|f| f.size == SOCKADDR_SIZE as u32);
    if sockaddr {
        out.extend([
            (
                globals.saddr_sockaddr,
                format.offset("saddr", SOCKADDR_SIZE as u32)?,
            ),
            (
                globals.daddr_sockaddr,
                format.offset("daddr", SOCKADDR_SIZE as u32)?,
            ),
            (globals.sport, FIELD_ABSENT),
            (globals.family, FIELD_ABSENT),
            (globals.daddr, FIELD_ABSENT),
            (globals.daddr_v6, FIELD_ABSENT),
        ]);
        return Ok(out);
    }
    let family = match format.field("family") {
        Some(_) => format.offset("family", 2)?,
        None => FIELD_ABSENT,
    };
    out.extend([
        (globals.sport, format.offset("sport", 2)?),
        (globals.family, family),
        (globals.daddr, format.offset("daddr", 4)?),
        (globals.daddr_v6, format.offset("daddr_v6", 16)?),
        (globals.saddr_sockaddr, FIELD_ABSENT),
        (globals.daddr_sockaddr, FIELD_ABSENT),
    ]);
    Ok(out)
}

/// Offsets of `bytes_acked` and `bytes_received` in `struct tcp_sock`, from the kernel's BTF
/// (the programs read them at close, like tcplife, instead of hooking every send and receive).
fn byte_count_offsets(kernel: &KernelSupport) -> Result<Vec<(&'static str, u32)>, String> {
    let btf = kernel.btf()?;
    let offset = |member: &str| match btf.offset("tcp_sock", member)? {
        0 => Err(format!("tcp_sock.{member}: offset 0")),
        offset => Ok(offset),
    };
    Ok(vec![
        ("TCP_BYTES_ACKED_OFFSET", offset("bytes_acked")?),
        ("TCP_BYTES_RECEIVED_OFFSET", offset("bytes_received")?),
    ])
}

pub const REGISTRATION: Registration = Registration {
    name: FAMILY,
    plan: |config, kernel, tracefs| plan(&config.tcp, kernel, tracefs),
    start: |ebpf, plan, config| {
        let (tcp, status) = start(ebpf, plan, &config.tcp);
        Started::from((tcp.map(|tcp| TcpFamily(std::sync::Arc::new(tcp))), status))
    },
};

/// The family as the daemon drives it: shared with its drain task.
struct TcpFamily(std::sync::Arc<Tcp>);

impl Family for TcpFamily {
    fn collect(&mut self, out: &mut Vec<Metric>) {
        self.0.collect(out);
    }

    fn sweep(&mut self) -> u64 {
        self.0.expire();
        0
    }

    fn tasks(&mut self, ctx: &TaskContext<'_>) -> anyhow::Result<Vec<Task>> {
        Ok(vec![Box::pin(run(self.0.clone(), ctx.stopped.clone()))])
    }
}

/// The family's maps and what was aggregated from them.
pub struct Tcp {
    events: Mutex<RingBuf<MapData>>,
    peers: Mutex<PerCpuHashMap<MapData, TcpPeerKey, u64>>,
    overflow: PerCpuArray<MapData, u64>,
    metrics: Mutex<TcpMetrics>,
    /// Set while the drain loop sleeps until the next record (see `Cadence`); the loop takes it.
    reader_parked: Mutex<Option<Array<MapData, u32>>>,
}

pub fn start(ebpf: &mut Ebpf, plan: Plan, config: &TcpConfig) -> (Option<Tcp>, ProbeStatus) {
    let attach = |ebpf: &mut Ebpf, mechanism: Mechanism| match mechanism {
        Mechanism::Fentry => attach_fentry(ebpf),
        _ => {
            attach_tracepoints(ebpf, PROGRAMS)?;
            Ok(PROGRAMS.iter().map(|p| p.0).collect())
        }
    };
    start_family_with(ebpf, FAMILY, plan, attach, |ebpf| {
        let map_error = |map: &'static str| {
            move |e: aya::maps::MapError| ProbeError::Map {
                map,
                reason: e.to_string(),
            }
        };
        let mut take = |map: &'static str| ebpf.take_map(map).ok_or(ProbeError::missing_map(map));
        Ok(Tcp {
            events: Mutex::new(
                RingBuf::try_from(take("TCP_EVENTS")?).map_err(map_error("TCP_EVENTS"))?,
            ),
            peers: Mutex::new(
                PerCpuHashMap::try_from(take("TCP_PEERS")?).map_err(map_error("TCP_PEERS"))?,
            ),
            overflow: PerCpuArray::try_from(take("TCP_PEERS_OVERFLOW")?)
                .map_err(map_error("TCP_PEERS_OVERFLOW"))?,
            metrics: Mutex::new(TcpMetrics::new(config.max_series)),
            reader_parked: Mutex::new(Some(crate::kernel::maps::take_reader_flag(
                ebpf,
                "TCP_READER_PARKED",
            )?)),
        })
    })
}

impl Tcp {
    /// Moves every connection event out of the ring buffer into the metrics; returns how many.
    pub fn drain(&self) -> usize {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let mut records = 0;
        while let Some(record) = events.next() {
            records += 1;
            if record.len() < size_of::<TcpEvent>() {
                continue;
            }
            // SAFETY: the kernel writes whole TcpEvent records; read unaligned from the ring.
            let event: TcpEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
            metrics.record(&event);
        }
        records
    }

    /// Everything up to now: drains the events first, then reads the kernel counters.
    pub fn collect(&self, out: &mut Vec<Metric>) {
        self.drain();
        let peers: Vec<(TcpPeerKey, u64)> = {
            let map = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter_map(Result::ok)
                .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
                .collect()
        };
        let mut overflow = [0u64; PEER_KINDS as usize];
        for (kind, slot) in overflow.iter_mut().enumerate() {
            *slot = self
                .overflow
                .get(&(kind as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
        }
        let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        metrics.collect(&peers, overflow, out);
    }

    /// Forgets processes gone for longer than the series TTL, with their kernel counters.
    pub fn expire(&self) {
        let gone = self
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire();
        if gone.is_empty() {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<TcpPeerKey> = peers
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone.contains(&k.tgid))
            .collect();
        for key in stale {
            let _ = peers.remove(&key);
        }
    }

    pub fn series_count(&self) -> usize {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .series_count()
    }
}

/// How often connection events are drained between collects while they are many. The default
/// 1 MiB ring holds about 10,000 events: 100,000 connection events per second before any is lost.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// While events are few, the kernel wakes the loop at each one (see `Cadence`) and the loop
/// drains on its own only this often: an event written in the instant the flag was being set
/// did not wake it (a scrape drains anyway).
const PARKED_DRAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Drains connection events until shutdown.
pub async fn run(tcp: std::sync::Arc<Tcp>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    use std::os::fd::AsFd;
    let flag = tcp
        .reader_parked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let ring = tcp
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_fd()
        .try_clone_to_owned();
    let (Some(flag), Ok(ring)) = (flag, ring) else {
        tracing::error!(
            "the TCP ring buffer cannot be polled; TCP events are read at scrapes only"
        );
        return;
    };
    // SAFETY: the AsyncFd owns the duplicated descriptor: it stays open while registered.
    let ring = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
        Ok(ring) => ring,
        Err(e) => {
            tracing::error!(error = %e, "the TCP ring buffer cannot be polled; TCP events are read at scrapes only");
            return;
        }
    };
    let mut cadence =
        crate::kernel::maps::Cadence::new(flag, FAMILY, DRAIN_EVERY, PARKED_DRAIN_EVERY);
    let mut next = tokio::time::Instant::now() + DRAIN_EVERY;
    // Resolving a new listener reads /proc: keep the drain off the async workers.
    let drain = |tcp: &std::sync::Arc<Tcp>| {
        let tcp = tcp.clone();
        tokio::task::spawn_blocking(move || tcp.drain())
    };
    loop {
        tokio::select! {
            guard = ring.readable() => {
                let Ok(mut guard) = guard else { return };
                guard.clear_ready();
            }
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.changed() => return,
        }
        cadence.drained(drain(&tcp).await.unwrap_or(0));
        if cadence.adapt() {
            cadence.drained(drain(&tcp).await.unwrap_or(0));
        }
        next = tokio::time::Instant::now() + cadence.period();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tcp:tcp_retransmit_skb` of Linux 5.10 (Debian 11): no `family` field.
    const RETRANSMIT_5_10: &str = "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    /// `tcp:tcp_send_reset` of Linux 6.1 (Debian 12): address arrays and `family`.
    const SEND_RESET_6_1: &str = "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
";

    /// `tcp:tcp_send_reset` of Linux 6.12 and 6.18: `sockaddr` buffers, no ports or family.
    const SEND_RESET_6_12: &str = "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;
";

    fn offsets(text: &str) -> std::collections::HashMap<&'static str, u32> {
        let format = TracepointFormat::parse("tcp:test", text);
        peer_offsets(&format, &PEER_TRACEPOINTS[2].1)
            .expect("a known layout")
            .into_iter()
            .collect()
    }

    #[test]
    fn address_arrays_without_a_family_field_leave_family_absent() {
        let o = offsets(RETRANSMIT_5_10);
        assert_eq!(o["TCP_SEND_RESET_SKADDR"], 16);
        assert_eq!(o["TCP_SEND_RESET_SPORT"], 28);
        assert_eq!(o["TCP_SEND_RESET_FAMILY"], FIELD_ABSENT);
        assert_eq!(o["TCP_SEND_RESET_DADDR"], 36);
        assert_eq!(o["TCP_SEND_RESET_DADDR_V6"], 56);
        assert_eq!(o["TCP_SEND_RESET_DADDR_SOCKADDR"], FIELD_ABSENT);
    }

    #[test]
    fn address_arrays_with_a_family_field() {
        let o = offsets(SEND_RESET_6_1);
        assert_eq!(o["TCP_SEND_RESET_FAMILY"], 32);
        assert_eq!(o["TCP_SEND_RESET_DADDR"], 38);
        assert_eq!(o["TCP_SEND_RESET_DADDR_V6"], 58);
        assert_eq!(o["TCP_SEND_RESET_SADDR_SOCKADDR"], FIELD_ABSENT);
    }

    #[test]
    fn sockaddr_buffers_replace_ports_family_and_arrays() {
        let o = offsets(SEND_RESET_6_12);
        assert_eq!(o["TCP_SEND_RESET_SADDR_SOCKADDR"], 32);
        assert_eq!(o["TCP_SEND_RESET_DADDR_SOCKADDR"], 60);
        assert_eq!(o["TCP_SEND_RESET_SPORT"], FIELD_ABSENT);
        assert_eq!(o["TCP_SEND_RESET_FAMILY"], FIELD_ABSENT);
    }

    #[test]
    fn an_unknown_layout_names_the_field_it_lacks() {
        let format = TracepointFormat::parse(
            "tcp:tcp_send_reset",
            "\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:__u8 daddr[8];\toffset:24;\tsize:8;\tsigned:0;\n",
        );
        let error = peer_offsets(&format, &PEER_TRACEPOINTS[2].1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "tracepoint tcp:tcp_send_reset has no field \"sport\" on this kernel"
        );
    }

    /// `auto` takes `fentry` where the kernel allows it (cheaper per connection in the kernel
    /// matrix), with tracepoints behind it, and tracepoints alone elsewhere (this machine).
    #[test]
    fn auto_takes_fentry_first_and_tracepoints_behind_it() {
        let tracefs = Tracefs::locate().expect("tracefs is mounted");
        let config = TcpConfig::default();
        let both = KernelSupport::allowing(&[Mechanism::Fentry, Mechanism::Tracepoint]);
        let planned = plan(&config, &both, Some(&tracefs));
        assert_eq!(planned.mechanism.ok(), Some(Mechanism::Fentry));
        assert_eq!(planned.fallbacks, vec![Mechanism::Tracepoint]);
        let globals: Vec<&str> = planned.settings.globals.iter().map(|g| g.0).collect();
        for global in [
            "SK_STATE",
            "SK_PORTPAIR",
            "TCP_STATE_SKADDR",
            "TCP_SEND_RESET_SKADDR",
        ] {
            assert!(globals.contains(&global), "{global} missing: {globals:?}");
        }
        let planned = plan(
            &config,
            &KernelSupport::allowing(&[Mechanism::Tracepoint]),
            Some(&tracefs),
        );
        assert_eq!(planned.mechanism.ok(), Some(Mechanism::Tracepoint));
        assert_eq!(planned.refused[0].0, Mechanism::Fentry);
    }

    /// This kernel's `tcp_set_state` has the parameters the `fentry` program reads.
    #[test]
    fn this_kernels_tcp_set_state_is_what_the_fentry_program_reads() {
        let btf = KernelBtf::load().unwrap();
        assert_eq!(
            trampolines(&btf),
            Ok(vec![("tcp_state_fentry", "tcp_set_state")])
        );
    }

    #[test]
    fn this_kernels_peer_tracepoints_have_a_known_layout() {
        let tracefs = Tracefs::locate().expect("tracefs is mounted");
        tracepoint_offsets(&tracefs).expect("every TCP tracepoint's layout is known");
    }
}
