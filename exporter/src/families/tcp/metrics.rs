//! TCP connection metrics from the kernel's connection events (`families::tcp`): opens per
//! direction, connection lifetimes and bytes per connection, failed connects, and the
//! retransmit and reset counters the kernel keeps per (process, local port, peer).
//!
//! Every series belongs to a process. Outbound connections carry the process that called
//! `connect`; inbound ones are attributed to the process that owns the listening socket of their
//! local port (found from /proc), because the kernel finishes an inbound handshake in softirq
//! context where the accepting process is not known yet. So a leak shows per process as
//! `kernel.tcp.connections` (opens) minus the count of `kernel.tcp.connection.duration`
//! (closes), whichever side leaks.

use crate::model::names;
use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    sync::Arc,
    time::{Duration, Instant},
};

use periscope_common::{
    hist::{ns_to_units, slot_of},
    tcp::{
        AF_INET, AF_INET6, DIRECTION_INBOUND, EVENT_CLOSE, EVENT_CONNECT_FAILED, EVENT_OPEN,
        PEER_RESET_RECEIVED, PEER_RESET_SENT, PEER_RETRANSMIT, TcpEvent, TcpPeerKey,
    },
};

use crate::{
    model::histogram::{Histogram, ValueUnit},
    model::metrics::{Attributes, Metric, Points},
    process::{ProcessCache, ProcessResource},
};

/// A port whose listener was not found is looked up again after this long.
const LISTENER_RETRY: Duration = Duration::from_secs(1);

/// What one series measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Opened,
    ConnectFailed,
    Duration,
    BytesSent,
    BytesReceived,
}

/// A series' process, by identity.
use crate::model::resource::ResourceId as Owner;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    /// `None`: the process is unknown, or this is the overflow series.
    owner: Option<Owner>,
    kind: Kind,
    attributes: Attributes,
}

/// Points grouped by the process they belong to and what they measure.
type ByOwner<K, T> = HashMap<(Option<Owner>, K), Vec<(Attributes, T)>>;

#[derive(Debug, Default)]
struct Value {
    count: u64,
    histogram: Histogram,
}

/// Processes seen in TCP events, with their resources.
#[derive(Debug, Default)]
struct Processes {
    resources: ProcessCache,
    /// Local port to the process owning a listening socket on it.
    listeners: HashMap<u16, u32>,
    /// Ports that had no listener, and when that was found.
    unresolved: HashMap<u16, Instant>,
}

impl Processes {
    /// The process listening on `port`, re-reading /proc when it is not known or the known one
    /// is gone (ports are reused). Only ports of established connections are looked up (a
    /// listener exists for them), and a port that found no listener is not retried for
    /// [`LISTENER_RETRY`], so the /proc scans are bounded by the node's listening ports.
    fn listener(&mut self, port: u16) -> Option<u32> {
        if let Some(pid) = self.listeners.get(&port)
            && std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            return Some(*pid);
        }
        if self
            .unresolved
            .get(&port)
            .is_some_and(|at| at.elapsed() < LISTENER_RETRY)
        {
            return None;
        }
        self.listeners = listening_ports();
        let pid = self.listeners.get(&port).copied();
        if pid.is_none() {
            if self.unresolved.len() > 4096 {
                self.unresolved.clear();
            }
            self.unresolved.insert(port, Instant::now());
        }
        pid
    }

    /// Marks processes that are gone; returns those gone for longer than the TTL (forgotten).
    fn reap(&mut self) -> Vec<(u32, Arc<ProcessResource>)> {
        let now = Instant::now();
        self.resources.mark_gone(now);
        let expired = self.resources.expire(now);
        for (pid, _) in &expired {
            self.listeners.retain(|_, p| p != pid);
        }
        expired
    }
}

/// Aggregated TCP connection metrics (cumulative).
#[derive(Debug)]
pub struct TcpMetrics {
    series: HashMap<SeriesKey, Value>,
    max_series: usize,
    processes: Processes,
}

impl TcpMetrics {
    pub fn new(max_series: usize) -> Self {
        Self {
            series: HashMap::new(),
            max_series,
            processes: Processes::default(),
        }
    }

    /// Accounts one connection event from the kernel.
    pub fn record(&mut self, event: &TcpEvent) {
        let owner = self.owner_of(event.tgid, event.local_port, &event.comm);
        let inbound = event.direction == DIRECTION_INBOUND;
        let attributes = vec![
            (
                "direction",
                if inbound { "inbound" } else { "outbound" }.to_string(),
            ),
            (
                "server.port",
                if inbound {
                    event.local_port
                } else {
                    event.remote_port
                }
                .to_string(),
            ),
        ];
        match event.kind {
            EVENT_OPEN => self.add(owner, Kind::Opened, attributes, None),
            EVENT_CONNECT_FAILED => self.add(owner, Kind::ConnectFailed, attributes, None),
            EVENT_CLOSE => {
                let duration = ns_to_units(event.end_ns.saturating_sub(event.start_ns));
                self.add(
                    owner.clone(),
                    Kind::Duration,
                    attributes.clone(),
                    Some(duration),
                );
                self.add(
                    owner.clone(),
                    Kind::BytesSent,
                    attributes.clone(),
                    Some(event.bytes_sent),
                );
                self.add(
                    owner,
                    Kind::BytesReceived,
                    attributes,
                    Some(event.bytes_received),
                );
            }
            _ => {}
        }
    }

    /// The process a connection event belongs to: the connecting process (outbound), else the
    /// one listening on the local port.
    fn owner_of(&mut self, tgid: u32, local_port: u16, comm: &[u8]) -> Option<Owner> {
        // An unknown owner (inbound, or a socket not followed) is the port's listener.
        let pid = match tgid {
            0 => self.processes.listener(local_port)?,
            pid => pid,
        };
        let comm = || {
            let name = comm.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(name).into_owned()
        };
        Some(Owner(self.processes.resources.resource(pid, comm)))
    }

    fn add(
        &mut self,
        owner: Option<Owner>,
        kind: Kind,
        attributes: Attributes,
        value: Option<u64>,
    ) {
        let mut key = SeriesKey {
            owner,
            kind,
            attributes,
        };
        if !self.series.contains_key(&key) && self.series.len() >= self.max_series {
            key = SeriesKey {
                owner: None,
                kind,
                attributes: vec![("otel.metric.overflow", "true".to_string())],
            };
        }
        let entry = self.series.entry(key).or_default();
        entry.count += 1;
        if let Some(v) = value {
            *entry.histogram.counts.entry(slot_of(v)).or_default() += 1;
            entry.histogram.sum = entry.histogram.sum.wrapping_add(v);
        }
    }

    /// Forgets processes gone for longer than the TTL; returns their pids (so their kernel
    /// counters can be deleted too).
    pub fn expire(&mut self) -> Vec<u32> {
        let gone = self.processes.reap();
        for (_, resource) in &gone {
            self.series.retain(|k, _| {
                k.owner
                    .as_ref()
                    .is_none_or(|o| !Arc::ptr_eq(&o.0, resource))
            });
        }
        gone.into_iter().map(|(pid, _)| pid).collect()
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The connection metrics plus the kernel's retransmit and reset counters (`peers`, summed
    /// over CPUs) and the counts that found the peer map full (`overflow`, per peer kind).
    pub fn collect(
        &mut self,
        peers: &[(TcpPeerKey, u64)],
        overflow: [u64; 3],
        out: &mut Vec<Metric>,
    ) {
        let mut grouped: ByOwner<Kind, &Value> = HashMap::new();
        for (key, value) in &self.series {
            grouped
                .entry((key.owner.clone(), key.kind))
                .or_default()
                .push((key.attributes.clone(), value));
        }
        for ((owner, kind), mut points) in grouped {
            points.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(series_metric(owner.map(|o| o.0), kind, points));
        }
        out.push(Metric {
            name: names::PERISCOPE_TCP_SERIES,
            description: "Distinct TCP connection metric series held (capped by probes.tcp.max_series).",
            unit: "1",
            points: Points::Gauge(vec![(vec![], self.series.len() as f64)]),
            resource: None,
        });
        self.collect_peers(peers, overflow, out);
    }

    fn collect_peers(
        &mut self,
        peers: &[(TcpPeerKey, u64)],
        overflow: [u64; 3],
        out: &mut Vec<Metric>,
    ) {
        let mut grouped: ByOwner<u8, f64> = HashMap::new();
        for (key, n) in peers {
            // A reset sent for no socket (a SYN to a closed port) belongs to no process.
            let owner = match key.has_socket {
                0 => None,
                _ => self.owner_of(key.tgid, key.local_port, &[]),
            };
            let mut attributes = vec![
                ("network.local.port", key.local_port.to_string()),
                ("network.peer.address", peer_address(key)),
            ];
            if key.kind != PEER_RETRANSMIT {
                attributes.push(("network.io.direction", reset_direction(key.kind).into()));
            }
            grouped
                .entry((owner, if key.kind == PEER_RETRANSMIT { 0 } else { 1 }))
                .or_default()
                .push((attributes, *n as f64));
        }
        for (kind, n) in overflow.iter().enumerate().filter(|(_, n)| **n > 0) {
            let mut attributes = vec![("otel.metric.overflow", "true".to_string())];
            let kind = kind as u8;
            if kind != PEER_RETRANSMIT {
                attributes.push(("network.io.direction", reset_direction(kind).into()));
            }
            grouped
                .entry((None, if kind == PEER_RETRANSMIT { 0 } else { 1 }))
                .or_default()
                .push((attributes, *n as f64));
        }
        for ((owner, which), mut points) in grouped {
            points.sort_by(|a, b| a.0.cmp(&b.0));
            let (name, description) = if which == 0 {
                (
                    names::KERNEL_TCP_RETRANSMITS,
                    "TCP segments retransmitted (tcp:tcp_retransmit_skb), by local port and peer.",
                )
            } else {
                (
                    names::KERNEL_TCP_RESETS,
                    "TCP resets sent (transmit) and received (receive), by local port and peer.",
                )
            };
            out.push(Metric {
                name,
                description,
                unit: "1",
                points: Points::Counter(points),
                resource: owner.map(|o| o.0),
            });
        }
    }
}

fn reset_direction(kind: u8) -> &'static str {
    match kind {
        PEER_RESET_SENT => "transmit",
        PEER_RESET_RECEIVED => "receive",
        _ => "",
    }
}

fn series_metric(
    resource: Option<Arc<ProcessResource>>,
    kind: Kind,
    points: Vec<(Attributes, &Value)>,
) -> Metric {
    let counter = |points: Vec<(Attributes, &Value)>| {
        Points::Counter(
            points
                .into_iter()
                .map(|(a, v)| (a, v.count as f64))
                .collect(),
        )
    };
    let histogram = |unit, points: Vec<(Attributes, &Value)>| {
        Points::Histogram(
            unit,
            points
                .into_iter()
                .map(|(a, v)| (a, v.histogram.clone()))
                .collect(),
        )
    };
    let (name, description, unit, points) = match kind {
        Kind::Opened => (
            names::KERNEL_TCP_CONNECTIONS,
            "TCP connections established, by direction (inbound: accepted; outbound: connected).",
            "1",
            counter(points),
        ),
        Kind::ConnectFailed => (
            names::KERNEL_TCP_CONNECT_FAILURES,
            "Outbound TCP connects that never reached ESTABLISHED (refused, timed out, reset).",
            "1",
            counter(points),
        ),
        Kind::Duration => (
            names::KERNEL_TCP_CONNECTION_DURATION,
            "Lifetime of closed TCP connections (connect or handshake end to CLOSE); its count is the closes.",
            "s",
            histogram(ValueUnit::Seconds, points),
        ),
        Kind::BytesSent => (
            names::KERNEL_TCP_CONNECTION_SENT,
            "Payload bytes sent (and acknowledged) per closed TCP connection.",
            "By",
            histogram(ValueUnit::Bytes, points),
        ),
        Kind::BytesReceived => (
            names::KERNEL_TCP_CONNECTION_RECEIVED,
            "Payload bytes received per closed TCP connection.",
            "By",
            histogram(ValueUnit::Bytes, points),
        ),
    };
    Metric {
        name,
        description,
        unit,
        points,
        resource,
    }
}

fn peer_address(key: &TcpPeerKey) -> String {
    match key.family {
        AF_INET => {
            let a = key.remote_addr;
            Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
        }
        AF_INET6 => Ipv6Addr::from(key.remote_addr).to_string(),
        _ => String::new(),
    }
}

/// Local port -> the process owning a listening TCP socket on it, over every network namespace:
/// socket inodes from /proc/*/fd, LISTEN sockets from each namespace's /proc/PID/net/tcp{,6}.
/// When several processes share a listener (pre-fork servers), the lowest pid (the parent) wins.
fn listening_ports() -> HashMap<u16, u32> {
    let mut socket_owner: HashMap<u64, u32> = HashMap::new();
    let mut namespaces: HashMap<u64, u32> = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    let mut pids: Vec<u32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        if let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            namespaces.entry(ns.ino()).or_insert(pid);
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
            if let Some(inode) = inode {
                socket_owner.entry(inode).or_insert(pid);
            }
        }
    }
    let mut out = HashMap::new();
    for pid in namespaces.values() {
        for table in ["tcp", "tcp6"] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
                continue;
            };
            for (port, inode) in text.lines().skip(1).filter_map(listen_entry) {
                if let Some(owner) = socket_owner.get(&inode) {
                    let current = out.entry(port).or_insert(*owner);
                    *current = (*current).min(*owner);
                }
            }
        }
    }
    out
}

/// (local port, socket inode) of a LISTEN line of /proc/net/tcp{,6}.
fn listen_entry(line: &str) -> Option<(u16, u64)> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    if cols.get(3) != Some(&"0A") {
        return None;
    }
    let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
    Some((port, cols.get(9)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_lines_parse() {
        let listen = "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        let established = "   1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listen_entry(listen), Some((8080, 12345)));
        assert_eq!(listen_entry(established), None);
    }

    #[test]
    fn this_process_listener_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_ports().get(&port), Some(&std::process::id()));
    }

    fn event(kind: u8, tgid: u32, start: u64, end: u64) -> TcpEvent {
        TcpEvent {
            kind,
            tgid,
            direction: periscope_common::tcp::DIRECTION_OUTBOUND,
            start_ns: start,
            end_ns: end,
            remote_port: 5432,
            bytes_sent: 100,
            bytes_received: 2000,
            ..TcpEvent::default()
        }
    }

    #[test]
    fn opens_and_closes_per_process() {
        let mut m = TcpMetrics::new(100);
        let me = std::process::id();
        for _ in 0..3 {
            m.record(&event(EVENT_OPEN, me, 0, 0));
        }
        m.record(&event(EVENT_CLOSE, me, 1_000, 2_000_000));
        let mut out = Vec::new();
        m.collect(&[], [0; 3], &mut out);
        let opened = out
            .iter()
            .find(|m| m.name == names::KERNEL_TCP_CONNECTIONS)
            .unwrap();
        let Points::Counter(points) = &opened.points else {
            panic!()
        };
        assert_eq!(points[0].1, 3.0);
        assert!(points[0].0.contains(&("server.port", "5432".to_string())));
        let durations = out
            .iter()
            .find(|m| m.name == names::KERNEL_TCP_CONNECTION_DURATION)
            .unwrap();
        let Points::Histogram(_, points) = &durations.points else {
            panic!()
        };
        assert_eq!(points[0].1.count(), 1);
        assert_eq!(
            durations.resource.as_ref().unwrap().attributes[3],
            ("process.pid".to_string(), me.to_string())
        );
    }

    #[test]
    fn series_beyond_the_cap_overflow() {
        let mut m = TcpMetrics::new(1);
        let me = std::process::id();
        let mut e = event(EVENT_OPEN, me, 0, 0);
        m.record(&e);
        e.remote_port = 1;
        m.record(&e);
        m.record(&e);
        let overflow = m
            .series
            .iter()
            .find(|(k, _)| k.owner.is_none())
            .map(|(_, v)| v.count);
        assert_eq!(overflow, Some(2));
    }
}
