//! The triage report: what each section shows, computed from a window of the probes' cumulative
//! histograms and counters. `--json` prints this structure (schema: `exporter/triage.schema.json`);
//! the text rendering (`render.rs`) draws it.

use crate::model::names;
use std::collections::BTreeMap;

use periscope_common::hist::{SECONDS_INDEX_OFFSET, SUBBUCKETS, ZERO_SLOT, index_of_slot};
use serde::Serialize;

use super::collect::{Scope, Series, Unavailable, Value, Window};
use crate::model::histogram::{Histogram, ValueUnit};

/// Version of the JSON document (bumped on incompatible changes).
pub const SCHEMA: &str = "periscope.triage/v1";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    /// Seconds between the first and the last snapshot.
    pub elapsed_seconds: f64,
    pub requested_seconds: f64,
    /// True when Ctrl-C (SIGINT) or SIGTERM ended collection early.
    pub interrupted: bool,
    pub cpus: usize,
    pub scope: ScopeReport,
    pub verdict: Verdict,
    pub exec: Option<ExecReport>,
    pub runqueue: Option<RunqueueReport>,
    pub disks: Option<Vec<DiskReport>>,
    pub tcp: Option<TcpReport>,
    pub syscalls: Option<SyscallReport>,
    pub http: Option<Vec<HttpReport>>,
    pub unavailable: Vec<Unavailable>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScopeReport {
    pub description: String,
    #[serde(flatten)]
    pub selection: Scope,
}

/// One latency distribution: counts, quantiles from the 4.4% buckets, and bcc's log2 rows.
#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub sum_seconds: f64,
    pub mean_seconds: f64,
    /// Quantiles and max are the upper edge of the 4.4%-wide bucket they fall in.
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
    /// The middle of the fullest 4.4% bucket.
    pub mode_seconds: f64,
    /// Two separated peaks among the log2 rows, when there are.
    pub bimodal: Option<Bimodal>,
    /// bcc-style rows: `low`..=`high` microseconds (integer), from the lowest to the highest
    /// non-empty row.
    pub log2_usecs: Vec<Log2Row>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Log2Row {
    pub low: u64,
    pub high: u64,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bimodal {
    /// The two peaks (log2 rows), lower latency first.
    pub peaks: [Log2Row; 2],
    /// The emptiest row between them.
    pub valley: Log2Row,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecReport {
    pub total: u64,
    pub per_second: f64,
    /// Command names by execs, most first (at most 10).
    pub top: Vec<ExecComm>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecComm {
    pub comm: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunqueueReport {
    /// Time tasks spent waiting, over the CPU time of the window (CPUs x elapsed).
    pub waiting_share: f64,
    pub latency: Distribution,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub device: String,
    pub major_minor: String,
    /// `/sys/block/DEV/queue/rotational`; unknown for devices gone since.
    pub rotational: Option<bool>,
    pub ios: u64,
    pub ios_per_second: f64,
    /// Completions per operation (`read`, `write`, `flush`, `discard`, `other`).
    pub operations: BTreeMap<String, u64>,
    /// Sum of IO latencies over the window: the average number of IOs in flight (iostat's
    /// aqu-sz).
    pub in_flight: f64,
    pub latency: Distribution,
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpReport {
    pub retransmits: u64,
    pub retransmits_per_second: f64,
    /// Segments sent and retransmitted in every network namespace with a process
    /// (`/proc/PID/net/snmp` `OutSegs`, `RetransSegs`: node-wide, so only without a scope);
    /// `retransmit_share` is the second over the first. Segments, not packets: with GSO one
    /// retransmitted packet (one `retransmits` event) can carry several segments.
    pub segments_sent: Option<u64>,
    pub segments_retransmitted: Option<u64>,
    pub retransmit_share: Option<f64>,
    /// The highest share in one network namespace (one container, one test namespace) among
    /// those that sent at least [`MIN_NAMESPACE_SEGMENTS`] segments in the window: loss on one
    /// link is not diluted by the traffic of the others. Null with a scope.
    pub worst_namespace_share: Option<f64>,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub resets_per_second: f64,
    /// Retransmits per (process, local port, peer), most first (at most 10).
    pub top: Vec<TcpPeer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpPeer {
    pub service: String,
    pub pid: Option<u32>,
    pub local_port: String,
    pub peer: String,
    pub retransmits: u64,
    pub resets: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyscallReport {
    pub scope: String,
    /// Syscalls by total time spent in them, most first (at most 10).
    pub top: Vec<SyscallRow>,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyscallRow {
    pub name: String,
    pub calls: u64,
    pub total_seconds: f64,
    /// Total time per second of wall time: the average number of threads inside this syscall.
    pub seconds_per_second: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
    /// A blocking wait (futex, epoll_wait, nanosleep...): idle time, not work; left out of the
    /// verdict.
    pub waiting: bool,
    /// The process that spent the most time in it.
    pub top_process: String,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    pub service: String,
    /// `server` (requests served) or `client` (requests sent).
    pub side: &'static str,
    pub requests: u64,
    pub requests_per_second: f64,
    /// Requests with `error.type` (server: 5xx; client: status >= 400).
    pub errors: u64,
    pub error_ratio: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

/// Syscalls that wait for something else (a lock, an event, a timer, a child, a signal, a
/// connection): their time is idle time, so they never make the syscall layer stand out.
pub const WAITING_SYSCALLS: &[&str] = &[
    "futex",
    "futex_waitv",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "nanosleep",
    "clock_nanosleep",
    "wait4",
    "waitid",
    "pause",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "accept",
    "accept4",
    "io_getevents",
    "io_pgetevents",
    "io_uring_enter",
    "msgrcv",
    "semtimedop",
    "mq_timedreceive",
];

/// Segments a network namespace must send in the window for its own retransmit share to count.
pub const MIN_NAMESPACE_SEGMENTS: u64 = 1000;

/// Upper edge (seconds) of a slot of a duration histogram.
fn upper(slot: u32) -> f64 {
    if slot == ZERO_SLOT {
        return 0.0;
    }
    let index = index_of_slot(slot) - SECONDS_INDEX_OFFSET;
    ((index + 1) as f64 / f64::from(SUBBUCKETS)).exp2()
}

/// Geometric middle (seconds) of a slot.
fn middle(slot: u32) -> f64 {
    if slot == ZERO_SLOT {
        return 0.0;
    }
    let index = index_of_slot(slot) - SECONDS_INDEX_OFFSET;
    ((index as f64 + 0.5) / f64::from(SUBBUCKETS)).exp2()
}

/// The upper edge of the bucket holding quantile `q`.
pub fn quantile(h: &Histogram, q: f64) -> f64 {
    let total = h.count();
    if total == 0 {
        return 0.0;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (slot, n) in &h.counts {
        seen += n;
        if seen >= rank {
            return upper(*slot);
        }
    }
    h.counts.keys().last().map(|s| upper(*s)).unwrap_or(0.0)
}

/// bcc's log2 row of a value in microseconds: the number of bits of the integer value, with 0
/// and 1 sharing bcc's first row (`0 -> 1`).
fn log2_row(usecs: u64) -> u32 {
    (64 - usecs.leading_zeros()).max(1)
}

fn row_bounds(row: u32) -> (u64, u64) {
    if row <= 1 {
        return (0, 1);
    }
    (1u64 << (row - 1), (1u64 << row) - 1)
}

/// Aggregates the fine buckets into bcc's log2 microsecond rows (each fine bucket goes to the
/// row of its middle: a bucket straddling a power of two is at most 2.2% off).
pub fn log2_rows(h: &Histogram) -> Vec<Log2Row> {
    let mut rows: BTreeMap<u32, u64> = BTreeMap::new();
    for (slot, n) in h.counts.iter().filter(|(_, n)| **n > 0) {
        let usecs = (middle(*slot) * 1e6) as u64;
        *rows.entry(log2_row(usecs)).or_default() += n;
    }
    let (Some(first), Some(last)) = (rows.keys().next().copied(), rows.keys().last().copied())
    else {
        return Vec::new();
    };
    (first..=last)
        .map(|row| {
            let (low, high) = row_bounds(row);
            Log2Row {
                low,
                high,
                count: rows.get(&row).copied().unwrap_or(0),
            }
        })
        .collect()
}

/// Two peaks among the log2 rows, each at least 10% of the highest and 5 events, with a row
/// between them under half of the smaller peak.
pub fn bimodal(rows: &[Log2Row]) -> Option<Bimodal> {
    let highest = rows.iter().map(|r| r.count).max()?;
    let floor = (highest / 10).max(5);
    let is_peak = |i: usize| {
        let c = rows[i].count;
        c >= floor
            && (i == 0 || rows[i - 1].count <= c)
            && (i + 1 == rows.len() || rows[i + 1].count < c)
    };
    let peaks: Vec<usize> = (0..rows.len()).filter(|i| is_peak(*i)).collect();
    let mut best: Option<(usize, usize, usize)> = None;
    for (a, &i) in peaks.iter().enumerate() {
        for &j in &peaks[a + 1..] {
            let Some(valley) = (i + 1..j).min_by_key(|k| rows[*k].count) else {
                continue;
            };
            let smaller = rows[i].count.min(rows[j].count);
            if rows[valley].count * 2 < smaller {
                let weight = |t: &(usize, usize, usize)| rows[t.0].count.min(rows[t.1].count);
                if best.is_none_or(|b| weight(&b) < smaller) {
                    best = Some((i, j, valley));
                }
            }
        }
    }
    best.map(|(i, j, v)| Bimodal {
        peaks: [rows[i].clone(), rows[j].clone()],
        valley: rows[v].clone(),
    })
}

pub fn distribution(h: &Histogram) -> Distribution {
    let count = h.count();
    let sum_seconds = h.sum_in(ValueUnit::Seconds);
    let mode_slot = h
        .counts
        .iter()
        .max_by_key(|(slot, n)| (**n, std::cmp::Reverse(**slot)))
        .map(|(s, _)| *s);
    let rows = log2_rows(h);
    Distribution {
        count,
        sum_seconds,
        mean_seconds: if count > 0 {
            sum_seconds / count as f64
        } else {
            0.0
        },
        p50_seconds: quantile(h, 0.5),
        p99_seconds: quantile(h, 0.99),
        max_seconds: h
            .counts
            .iter()
            .rev()
            .find(|(_, n)| **n > 0)
            .map(|(s, _)| upper(*s))
            .unwrap_or(0.0),
        mode_seconds: mode_slot.map(middle).unwrap_or(0.0),
        bimodal: bimodal(&rows),
        log2_usecs: rows,
    }
}

fn add(into: &mut Histogram, h: &Histogram) {
    for (slot, n) in &h.counts {
        *into.counts.entry(*slot).or_default() += n;
    }
    into.sum = into.sum.wrapping_add(h.sum);
}

fn resource_attr(s: &Series, name: &str) -> Option<String> {
    s.resource.as_ref().and_then(|r| {
        r.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

fn service(s: &Series) -> String {
    match &s.resource {
        Some(r) => r.service_name.clone(),
        None => "(no process)".into(),
    }
}

fn rotational(device: &str) -> Option<bool> {
    std::fs::read_to_string(format!("/sys/block/{device}/queue/rotational"))
        .ok()
        .map(|v| v.trim() == "1")
}

pub struct Inputs<'a> {
    pub window: &'a Window,
    pub scope: &'a Scope,
    pub requested_seconds: f64,
    pub interrupted: bool,
    pub attached: &'a dyn Fn(&str) -> bool,
    pub unavailable: &'a [Unavailable],
}

pub fn build(input: Inputs<'_>) -> Report {
    let w = input.window;
    let secs = w.elapsed.as_secs_f64().max(1e-3);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let of = |name: &'static str| w.series.iter().filter(move |s| s.name == name);
    let hist = |s: &Series| match &s.value {
        Value::Histogram(h) => Some(h.clone()),
        Value::Count(_) => None,
    };
    let count = |s: &Series| match &s.value {
        Value::Count(n) => *n as u64,
        Value::Histogram(_) => 0,
    };

    let exec = w.exec.as_ref().map(|e| {
        let mut top: Vec<ExecComm> = e
            .by_comm
            .iter()
            .map(|(comm, count)| ExecComm {
                comm: comm.clone(),
                count: *count,
            })
            .collect();
        top.sort_by(|a, b| b.count.cmp(&a.count).then(a.comm.cmp(&b.comm)));
        top.truncate(10);
        ExecReport {
            total: e.total,
            per_second: e.total as f64 / secs,
            top,
        }
    });

    let runqueue = (input.attached)("sched").then(|| {
        let mut all = Histogram::default();
        for h in of(names::KERNEL_SCHED_RUNQUEUE_LATENCY).filter_map(hist) {
            add(&mut all, &h);
        }
        let latency = distribution(&all);
        RunqueueReport {
            waiting_share: latency.sum_seconds / (secs * cpus as f64),
            latency,
        }
    });

    let disks = (input.attached)("block").then(|| {
        let mut per_device: BTreeMap<(String, String), (Histogram, BTreeMap<String, u64>)> =
            BTreeMap::new();
        for s in of(names::KERNEL_BLOCK_IO_DURATION) {
            let Some(h) = hist(s) else { continue };
            let device = s.attribute("system.device").unwrap_or("?").to_string();
            let mm = s
                .attribute("block.device.major_minor")
                .unwrap_or("?")
                .to_string();
            let op = s.attribute("block.io.operation").unwrap_or("other");
            let entry = per_device.entry((device, mm)).or_default();
            *entry.1.entry(op.to_string()).or_default() += h.count();
            add(&mut entry.0, &h);
        }
        let mut disks: Vec<DiskReport> = per_device
            .into_iter()
            .map(|((device, major_minor), (h, operations))| {
                let latency = distribution(&h);
                DiskReport {
                    rotational: rotational(&device),
                    device,
                    major_minor,
                    ios: latency.count,
                    ios_per_second: latency.count as f64 / secs,
                    operations,
                    in_flight: latency.sum_seconds / secs,
                    latency,
                }
            })
            .collect();
        disks.sort_by(|a, b| b.ios.cmp(&a.ios).then(a.device.cmp(&b.device)));
        disks
    });

    let tcp = (input.attached)("tcp").then(|| {
        // (service, pid, local port, peer) -> (retransmits, resets)
        type PeerKey = (String, Option<u32>, String, String);
        let mut peers: BTreeMap<PeerKey, (u64, u64)> = BTreeMap::new();
        let (mut retransmits, mut sent, mut received) = (0, 0, 0);
        for s in of(names::KERNEL_TCP_RETRANSMITS).chain(of(names::KERNEL_TCP_RESETS)) {
            if !input.scope.matches(s.resource.as_deref()) {
                continue;
            }
            let n = count(s);
            let key = (
                service(s),
                resource_attr(s, "process.pid").and_then(|p| p.parse().ok()),
                s.attribute("network.local.port").unwrap_or("-").to_string(),
                s.attribute("network.peer.address")
                    .unwrap_or("(overflow)")
                    .to_string(),
            );
            let entry = peers.entry(key).or_default();
            if s.name == names::KERNEL_TCP_RETRANSMITS {
                retransmits += n;
                entry.0 += n;
            } else {
                entry.1 += n;
                match s.attribute("network.io.direction") {
                    Some("transmit") => sent += n,
                    _ => received += n,
                }
            }
        }
        let mut top: Vec<TcpPeer> = peers
            .into_iter()
            .map(|((service, pid, local_port, peer), (r, x))| TcpPeer {
                service,
                pid,
                local_port,
                peer,
                retransmits: r,
                resets: x,
            })
            .collect();
        top.sort_by(|a, b| {
            (b.retransmits, b.resets)
                .cmp(&(a.retransmits, a.resets))
                .then(a.local_port.cmp(&b.local_port))
        });
        top.truncate(10);
        // The share is node-wide: only meaningful without a process selection.
        let segments = w.segments.filter(|_| input.scope.is_all());
        TcpReport {
            retransmits,
            retransmits_per_second: retransmits as f64 / secs,
            retransmit_share: segments
                .filter(|(sent, _)| *sent > 0)
                .map(|(sent, again)| (again as f64 / sent as f64).min(1.0)),
            worst_namespace_share: if input.scope.is_all() {
                w.segments_per_namespace
                    .iter()
                    .filter(|(sent, _)| *sent >= MIN_NAMESPACE_SEGMENTS)
                    .map(|(sent, again)| (*again as f64 / *sent as f64).min(1.0))
                    .max_by(f64::total_cmp)
            } else {
                None
            },
            segments_sent: segments.map(|s| s.0),
            segments_retransmitted: segments.map(|s| s.1),
            resets_sent: sent,
            resets_received: received,
            resets_per_second: (sent + received) as f64 / secs,
            top,
        }
    });

    let syscalls = (input.attached)("syscall").then(|| {
        let mut by_name: BTreeMap<String, (Histogram, BTreeMap<String, f64>, u64)> =
            BTreeMap::new();
        let mut errors = 0;
        for s in of(names::KERNEL_SYSCALL_DURATION).chain(of(names::KERNEL_SYSCALL_ERRORS)) {
            if !input.scope.matches(s.resource.as_deref()) {
                continue;
            }
            let name = s.attribute("syscall.name").unwrap_or("?").to_string();
            let entry = by_name.entry(name).or_default();
            match &s.value {
                Value::Histogram(h) => {
                    add(&mut entry.0, h);
                    let who = format!(
                        "{} ({})",
                        service(s),
                        resource_attr(s, "process.pid").unwrap_or_default()
                    );
                    *entry.1.entry(who).or_default() += h.sum_in(ValueUnit::Seconds);
                }
                Value::Count(n) => {
                    entry.2 += *n as u64;
                    errors += *n as u64;
                }
            }
        }
        let mut top: Vec<SyscallRow> = by_name
            .into_iter()
            .filter(|(_, (h, _, _))| h.count() > 0)
            .map(|(name, (h, who, errors))| {
                let d = distribution(&h);
                SyscallRow {
                    waiting: WAITING_SYSCALLS.contains(&name.as_str()),
                    name,
                    calls: d.count,
                    total_seconds: d.sum_seconds,
                    seconds_per_second: d.sum_seconds / secs,
                    p99_seconds: d.p99_seconds,
                    max_seconds: d.max_seconds,
                    top_process: who
                        .into_iter()
                        .max_by(|a, b| a.1.total_cmp(&b.1))
                        .map(|(w, _)| w)
                        .unwrap_or_default(),
                    errors,
                }
            })
            .collect();
        top.sort_by(|a, b| b.total_seconds.total_cmp(&a.total_seconds));
        top.truncate(10);
        SyscallReport {
            scope: input.scope.describe(),
            top,
            errors,
        }
    });

    let http = (input.attached)("http").then(|| {
        let mut per: BTreeMap<(String, &'static str), (Histogram, u64)> = BTreeMap::new();
        for s in
            of(names::HTTP_SERVER_REQUEST_DURATION).chain(of(names::HTTP_CLIENT_REQUEST_DURATION))
        {
            if !input.scope.matches(s.resource.as_deref()) {
                continue;
            }
            let Some(h) = hist(s) else { continue };
            let side = if s.name == names::HTTP_SERVER_REQUEST_DURATION {
                "server"
            } else {
                "client"
            };
            let entry = per.entry((service(s), side)).or_default();
            if s.attribute("error.type").is_some_and(|e| !e.is_empty()) {
                entry.1 += h.count();
            }
            add(&mut entry.0, &h);
        }
        per.into_iter()
            .map(|((service, side), (h, errors))| {
                let n = h.count();
                HttpReport {
                    service,
                    side,
                    requests: n,
                    requests_per_second: n as f64 / secs,
                    errors,
                    error_ratio: if n > 0 { errors as f64 / n as f64 } else { 0.0 },
                    p50_seconds: quantile(&h, 0.5),
                    p99_seconds: quantile(&h, 0.99),
                    max_seconds: quantile(&h, 1.0),
                }
            })
            .collect()
    });

    Report {
        schema: SCHEMA,
        elapsed_seconds: secs,
        requested_seconds: input.requested_seconds,
        interrupted: input.interrupted,
        cpus,
        scope: ScopeReport {
            description: input.scope.describe(),
            selection: input.scope.clone(),
        },
        verdict: Verdict::default(),
        exec,
        runqueue,
        disks,
        tcp,
        syscalls,
        http,
        unavailable: input.unavailable.to_vec(),
    }
}

/// Which layer stands out, filled in by `verdict::judge` from the rest of the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// `cpu`, `disk`, `network` or `syscalls`; `null` when no layer stands out.
    pub layer: Option<&'static str>,
    /// The verdict line, with the numbers behind it.
    pub summary: String,
    /// Every layer that could be judged, highest score first.
    pub scores: Vec<Score>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub layer: &'static str,
    /// Observed over threshold, the highest of the layer's rules; 1 or more stands out.
    pub score: f64,
    pub evidence: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_common::hist::{ns_to_units, slot_of};

    fn hist_of(values_ns: &[(u64, u64)]) -> Histogram {
        let mut h = Histogram::default();
        for (ns, n) in values_ns {
            *h.counts.entry(slot_of(ns_to_units(*ns))).or_default() += n;
            h.sum += ns_to_units(*ns) * n;
        }
        h
    }

    #[test]
    fn log2_rows_are_bcc_rows() {
        // 20 us and 25 us land in bcc's 16 -> 31 row; 3 ms in 2048 -> 4095.
        let h = hist_of(&[(20_000, 7), (25_000, 3), (3_000_000, 2)]);
        let rows = log2_rows(&h);
        assert_eq!(
            rows.first(),
            Some(&Log2Row {
                low: 16,
                high: 31,
                count: 10
            })
        );
        assert_eq!(
            rows.last(),
            Some(&Log2Row {
                low: 2048,
                high: 4095,
                count: 2
            })
        );
        assert_eq!(rows.len(), 8, "every row between is drawn, empty ones too");
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 12);
    }

    #[test]
    fn zero_and_one_microsecond_share_the_first_row_as_in_bcc() {
        let h = hist_of(&[(0, 2), (300, 3), (1_500, 4), (2_500, 1)]);
        assert_eq!(
            log2_rows(&h),
            vec![
                Log2Row {
                    low: 0,
                    high: 1,
                    count: 9
                },
                Log2Row {
                    low: 2,
                    high: 3,
                    count: 1
                }
            ]
        );
    }

    #[test]
    fn quantiles_come_from_the_fine_buckets() {
        let h = hist_of(&[(1_000_000, 99), (50_000_000, 1)]);
        let p50 = quantile(&h, 0.5);
        assert!((p50 / 1e-3 - 1.0).abs() < 0.045, "{p50}");
        let p99 = quantile(&h, 0.99);
        assert!((p99 / 1e-3 - 1.0).abs() < 0.045, "{p99}");
        let max = distribution(&h).max_seconds;
        assert!((max / 0.05 - 1.0).abs() < 0.045, "{max}");
        let mode = distribution(&h).mode_seconds;
        assert!((mode / 1e-3 - 1.0).abs() < 0.045, "{mode}");
    }

    #[test]
    fn bimodality_needs_two_separated_peaks() {
        let two = hist_of(&[(20_000, 1000), (40_000, 100), (2_000_000, 300)]);
        let b = bimodal(&log2_rows(&two)).expect("bimodal");
        assert_eq!(b.peaks[0].low, 16);
        assert_eq!(b.peaks[1].low, 1024);
        let one = hist_of(&[(20_000, 1000), (40_000, 600), (80_000, 300), (160_000, 50)]);
        assert_eq!(bimodal(&log2_rows(&one)), None);
        // A second peak under 10% of the first is a tail, not a mode.
        let tail = hist_of(&[(20_000, 1000), (2_000_000, 50)]);
        assert_eq!(bimodal(&log2_rows(&tail)), None);
    }
}
