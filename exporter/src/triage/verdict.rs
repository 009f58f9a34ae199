//! The one-line verdict: which layer (CPU, disk, network, syscalls) stands out, with the
//! numbers behind it. Each rule gives a score, the observed value over its threshold (a score of
//! 1 is at the threshold); a layer stands out at a score of 1 or more, and the highest wins.
//! Syscalls are named only when no lower layer stands out: a syscall is slow *because of* the
//! CPU, the disk or the network beneath it, so the lower layer is the better lead.
//!
//! Rules (minimum evidence first, so a quiet machine never "stands out"):
//! - CPU, from at least [`MIN_WAITS`] run-queue waits: p99 run-queue latency over
//!   [`RUNQ_P99`], or the waiting share (time tasks waited runnable / (CPUs x window)) over
//!   [`RUNQ_SHARE`].
//! - disk, per device with at least [`MIN_IOS`] completions: p99 latency over
//!   [`DISK_P99_ROTATIONAL`] (rotational) or [`DISK_P99_SOLID`] (other devices), or on average
//!   [`DISK_IN_FLIGHT`] IO or more in flight (iostat's aqu-sz: the device was never idle).
//! - network, from at least [`MIN_RETRANSMITS`] retransmits: retransmits over
//!   [`RETRANSMIT_SHARE`] of the TCP segments sent (`RetransSegs` / `OutSegs` of every network
//!   namespace, or of the worst namespace that sent 1000 segments or more), or over
//!   [`RETRANSMITS_PER_S`] per second;
//!   or resets over [`RESETS_PER_S`] per second.
//! - syscalls: the top non-waiting syscall (see `report::WAITING_SYSCALLS`) by total time per
//!   second of wall time, over [`SYSCALL_SECONDS_PER_S`] (on average that many threads inside
//!   it all the time).

use super::report::{Report, Score, Verdict};

pub const MIN_WAITS: u64 = 50;
pub const RUNQ_P99: f64 = 0.010;
pub const RUNQ_SHARE: f64 = 0.5;
pub const MIN_IOS: u64 = 20;
pub const DISK_P99_ROTATIONAL: f64 = 0.050;
pub const DISK_P99_SOLID: f64 = 0.010;
pub const DISK_IN_FLIGHT: f64 = 1.0;
pub const MIN_RETRANSMITS: u64 = 5;
pub const RETRANSMIT_SHARE: f64 = 0.01;
pub const RETRANSMITS_PER_S: f64 = 10.0;
pub const RESETS_PER_S: f64 = 50.0;
pub const SYSCALL_SECONDS_PER_S: f64 = 1.0;

pub fn fmt_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

fn cpu(report: &Report) -> Option<Score> {
    let r = report.runqueue.as_ref()?;
    let l = &r.latency;
    if l.count < MIN_WAITS {
        return None;
    }
    let score = (l.p99_seconds / RUNQ_P99).max(r.waiting_share / RUNQ_SHARE);
    Some(Score {
        layer: "cpu",
        score,
        evidence: format!(
            "run-queue p99 {} (threshold {}), tasks waited {:.0}% of the CPU time (threshold {:.0}%), {} waits",
            fmt_seconds(l.p99_seconds),
            fmt_seconds(RUNQ_P99),
            r.waiting_share * 100.0,
            RUNQ_SHARE * 100.0,
            l.count
        ),
    })
}

fn disk(report: &Report) -> Option<Score> {
    report
        .disks
        .as_ref()?
        .iter()
        .filter(|d| d.ios >= MIN_IOS)
        .map(|d| {
            let threshold = if d.rotational == Some(true) {
                DISK_P99_ROTATIONAL
            } else {
                DISK_P99_SOLID
            };
            let score = (d.latency.p99_seconds / threshold).max(d.in_flight / DISK_IN_FLIGHT);
            Score {
                layer: "disk",
                score,
                evidence: format!(
                    "{}: p99 {} (threshold {}), {:.1} IOs in flight on average (threshold {:.0}), {} IOs ({:.0}/s)",
                    d.device,
                    fmt_seconds(d.latency.p99_seconds),
                    fmt_seconds(threshold),
                    d.in_flight,
                    DISK_IN_FLIGHT,
                    d.ios,
                    d.ios_per_second
                ),
            }
        })
        .max_by(|a, b| a.score.total_cmp(&b.score))
}

fn network(report: &Report) -> Option<Score> {
    let t = report.tcp.as_ref()?;
    let retransmit_score = if t.retransmits >= MIN_RETRANSMITS {
        let share = t
            .retransmit_share
            .unwrap_or(0.0)
            .max(t.worst_namespace_share.unwrap_or(0.0));
        (t.retransmits_per_second / RETRANSMITS_PER_S).max(share / RETRANSMIT_SHARE)
    } else {
        0.0
    };
    let reset_score = t.resets_per_second / RESETS_PER_S;
    let mut share = match (t.retransmit_share, t.segments_sent) {
        (Some(share), Some(n)) => format!("{:.2}% of {n} segments sent again", share * 100.0),
        _ => "share of segments unknown".into(),
    };
    if let Some(worst) = t.worst_namespace_share {
        share += &format!(", {:.2}% in the worst network namespace", worst * 100.0);
    }
    Some(Score {
        layer: "network",
        score: retransmit_score.max(reset_score),
        evidence: format!(
            "{} TCP retransmits ({:.1}/s, {share}; thresholds {:.0}/s or {:.0}%), {} resets ({:.1}/s, threshold {:.0}/s)",
            t.retransmits,
            t.retransmits_per_second,
            RETRANSMITS_PER_S,
            RETRANSMIT_SHARE * 100.0,
            t.resets_sent + t.resets_received,
            t.resets_per_second,
            RESETS_PER_S
        ),
    })
}

fn syscalls(report: &Report) -> Option<Score> {
    let s = report.syscalls.as_ref()?;
    let top = s.top.iter().find(|r| !r.waiting)?;
    Some(Score {
        layer: "syscalls",
        score: top.seconds_per_second / SYSCALL_SECONDS_PER_S,
        evidence: format!(
            "{} took {:.2} s per second of wall time (threshold {:.1}; {} calls, p99 {}, most in {})",
            top.name,
            top.seconds_per_second,
            SYSCALL_SECONDS_PER_S,
            top.calls,
            fmt_seconds(top.p99_seconds),
            top.top_process
        ),
    })
}

pub fn judge(report: &Report) -> Verdict {
    let mut scores: Vec<Score> = [cpu(report), disk(report), network(report), syscalls(report)]
        .into_iter()
        .flatten()
        .collect();
    scores.sort_by(|a, b| b.score.total_cmp(&a.score));
    let lower = scores
        .iter()
        .find(|s| s.layer != "syscalls" && s.score >= 1.0);
    let winner = lower.or_else(|| scores.iter().find(|s| s.score >= 1.0));
    let (layer, summary) = match winner {
        Some(w) => (
            Some(w.layer),
            format!("{} stands out: {}", label(w.layer), w.evidence),
        ),
        None if scores.is_empty() => (None, "nothing to judge: no probe family attached".into()),
        None => (
            None,
            format!(
                "no layer stands out (highest: {} at {:.2} of its threshold: {})",
                label(scores[0].layer),
                scores[0].score,
                scores[0].evidence
            ),
        ),
    };
    Verdict {
        layer,
        summary,
        scores,
    }
}

fn label(layer: &str) -> &'static str {
    match layer {
        "cpu" => "CPU",
        "disk" => "disk",
        "network" => "network",
        _ => "syscalls",
    }
}
