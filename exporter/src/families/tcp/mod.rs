//! TCP connections, retransmits and resets: the user-space half of
//! `ebpf/periscope-ebpf/src/tcp.rs` (tracepoints `sock:inet_sock_set_state`,
//! `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`).
//!
//! Connection events are drained from the ring buffer on a short timer and at every collect
//! (so a scrape sees every connection closed before it); retransmit and reset counters are read
//! from their kernel map at collect time.

use std::sync::Mutex;

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use periscope_common::tcp::{PEER_KINDS, TcpEvent, TcpPeerKey};

use super::{
    Family, KernelSupport, LoadSettings, Mechanism, Plan, ProbeError, ProbeStatus, Registration,
    Started, Task, TaskContext, start_family,
};
pub mod config;
pub mod metrics;

pub use self::config::TcpConfig;
use self::metrics::TcpMetrics;
use crate::{
    kernel::tracefs::{Tracefs, TracepointFormat},
    model::metrics::Metric,
};

const FAMILY: &str = "tcp";
const IMPLEMENTED: &[Mechanism] = &[Mechanism::Tracepoint];
pub const PROGRAMS: &[(&str, &str, &str)] = &[
    ("tcp_state", "sock", "inet_sock_set_state"),
    ("tcp_retransmit", "tcp", "tcp_retransmit_skb"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
];

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
    super::tracepoint_plan(
        FAMILY,
        IMPLEMENTED,
        config.mechanism,
        kernel,
        tracefs,
        settings,
        tracepoint_offsets,
    )
}

/// The programs' field-offset globals, from this kernel's format files.
fn tracepoint_offsets(tracefs: &Tracefs) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let state = tracefs.format("sock", "inet_sock_set_state")?;
    let retransmit = tracefs.format("tcp", "tcp_retransmit_skb")?;
    let receive_reset = tracefs.format("tcp", "tcp_receive_reset")?;
    let send_reset = tracefs.format("tcp", "tcp_send_reset")?;
    let field = |format: &TracepointFormat, global: &'static str, name: &str, size: u32| {
        format.offset(name, size).map(|offset| (global, offset))
    };
    Ok(vec![
        field(&state, "TCP_STATE_SKADDR", "skaddr", 8)?,
        field(&state, "TCP_STATE_OLDSTATE", "oldstate", 4)?,
        field(&state, "TCP_STATE_NEWSTATE", "newstate", 4)?,
        field(&state, "TCP_STATE_SPORT", "sport", 2)?,
        field(&state, "TCP_STATE_DPORT", "dport", 2)?,
        field(&state, "TCP_STATE_FAMILY", "family", 2)?,
        field(&state, "TCP_STATE_PROTOCOL", "protocol", 2)?,
        field(&state, "TCP_STATE_DADDR", "daddr", 4)?,
        field(&state, "TCP_STATE_DADDR_V6", "daddr_v6", 16)?,
        field(&retransmit, "TCP_RETRANSMIT_SKADDR", "skaddr", 8)?,
        field(&retransmit, "TCP_RETRANSMIT_SPORT", "sport", 2)?,
        field(&retransmit, "TCP_RETRANSMIT_FAMILY", "family", 2)?,
        field(&retransmit, "TCP_RETRANSMIT_DADDR", "daddr", 4)?,
        field(&retransmit, "TCP_RETRANSMIT_DADDR_V6", "daddr_v6", 16)?,
        field(&receive_reset, "TCP_RECV_RESET_SKADDR", "skaddr", 8)?,
        field(&receive_reset, "TCP_RECV_RESET_SPORT", "sport", 2)?,
        field(&receive_reset, "TCP_RECV_RESET_FAMILY", "family", 2)?,
        field(&receive_reset, "TCP_RECV_RESET_DADDR", "daddr", 4)?,
        field(&receive_reset, "TCP_RECV_RESET_DADDR_V6", "daddr_v6", 16)?,
        field(&send_reset, "TCP_SEND_RESET_SKADDR", "skaddr", 8)?,
        // Since 6.x these are sockaddr_in6-sized buffers (28 bytes), older kernels differ.
        field(&send_reset, "TCP_SEND_RESET_SADDR", "saddr", 28)?,
        field(&send_reset, "TCP_SEND_RESET_DADDR", "daddr", 28)?,
    ])
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
    start_family(ebpf, FAMILY, plan, PROGRAMS, |ebpf| {
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
            reader_parked: Mutex::new(Some(crate::kernel::maps::take_reader_flag(ebpf, "TCP_READER_PARKED")?)),
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
    let mut cadence = crate::kernel::maps::Cadence::new(flag, FAMILY, DRAIN_EVERY, PARKED_DRAIN_EVERY);
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
