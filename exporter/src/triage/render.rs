//! Text rendering of a triage report: the final summary (stdout), the live screen (a TTY on
//! stderr) and one-line progress (stderr that is not a TTY: no escapes, no redraws).

use std::fmt::Write;

use super::{
    report::{Distribution, Report},
    verdict::fmt_seconds,
};

const STARS: u64 = 40;

/// bcc's `print_log2_hist`: a header, then `low -> high : count |stars|` per row.
pub fn histogram(out: &mut String, d: &Distribution) {
    let max = d.log2_usecs.iter().map(|r| r.count).max().unwrap_or(0);
    if max == 0 {
        let _ = writeln!(out, "     (no events)");
        return;
    }
    let wide = d.log2_usecs.last().is_some_and(|r| r.high >= 1 << 32);
    let width = if wide { 20 } else { 10 };
    let _ = writeln!(
        out,
        "{:>w$}{:<w2$} : count     distribution",
        "",
        "usecs",
        w = width - 5,
        w2 = width + 9
    );
    for row in &d.log2_usecs {
        let stars = (row.count * STARS).div_ceil(max).min(STARS) as usize;
        let stars = if row.count == 0 { 0 } else { stars };
        let _ = writeln!(
            out,
            "{:>width$} -> {:<width$} : {:<8} |{:<40}|",
            row.low,
            row.high,
            row.count,
            "*".repeat(stars),
        );
    }
}

/// Mode, tail and bimodality in words.
pub fn reading(d: &Distribution) -> String {
    let mode_row = d
        .log2_usecs
        .iter()
        .max_by_key(|r| (r.count, std::cmp::Reverse(r.low)))
        .map(|r| format!("{} -> {} usecs", r.low, r.high))
        .unwrap_or_default();
    let shape = match &d.bimodal {
        Some(b) => format!(
            "bimodal: peaks at {} -> {} usecs ({}) and {} -> {} usecs ({}), only {} between: two paths mixed (e.g. hit and miss), the mean ({}) describes neither",
            b.peaks[0].low,
            b.peaks[0].high,
            b.peaks[0].count,
            b.peaks[1].low,
            b.peaks[1].high,
            b.peaks[1].count,
            b.valley.count,
            fmt_seconds(d.mean_seconds)
        ),
        None => "one mode".into(),
    };
    let tail = if d.p99_seconds > 10.0 * d.mode_seconds && d.count >= 100 {
        " (a tail: p99 is over 10x the mode)"
    } else {
        ""
    };
    format!(
        "mode {mode_row} (fine mode {}); tail: p99 {}, max {}{tail}; p50 {}, mean {}; {shape}",
        fmt_seconds(d.mode_seconds),
        fmt_seconds(d.p99_seconds),
        fmt_seconds(d.max_seconds),
        fmt_seconds(d.p50_seconds),
        fmt_seconds(d.mean_seconds),
    )
}

fn section(out: &mut String, title: &str) {
    let _ = writeln!(out, "\n== {title} ==");
}

/// The final summary (also the body of the live screen).
pub fn summary(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "periscope triage: {:.1} s collected{} (requested {:.0} s), {} CPUs, scope: {}",
        r.elapsed_seconds,
        if r.interrupted {
            ", interrupted: the summary so far"
        } else {
            ""
        },
        r.requested_seconds,
        r.cpus,
        r.scope.description
    );
    let _ = writeln!(out, "verdict: {}", r.verdict.summary);

    section(&mut out, "New processes (exec, sched:sched_process_exec)");
    match &r.exec {
        Some(e) => {
            let _ = writeln!(out, "{} execs ({:.1}/s)", e.total, e.per_second);
            if !e.top.is_empty() {
                let _ = writeln!(out, "  {:<16} {:>8}", "COMM", "EXECS");
                for c in &e.top {
                    let _ = writeln!(out, "  {:<16} {:>8}", c.comm, c.count);
                }
            }
        }
        None => {
            let _ = writeln!(out, "not shown (see below)");
        }
    }

    section(&mut out, "CPU: run-queue latency (sched)");
    match &r.runqueue {
        Some(q) => {
            let _ = writeln!(
                out,
                "{} waits, {:.2} s waited in all: {:.0}% of the CPU time ({} CPUs x {:.1} s)",
                q.latency.count,
                q.latency.sum_seconds,
                q.waiting_share * 100.0,
                r.cpus,
                r.elapsed_seconds
            );
            histogram(&mut out, &q.latency);
            if q.latency.count > 0 {
                let _ = writeln!(out, "{}", reading(&q.latency));
            }
        }
        None => {
            let _ = writeln!(out, "not shown (see below)");
        }
    }

    section(&mut out, "Disk: block IO latency per device (block)");
    match &r.disks {
        Some(disks) if disks.is_empty() => {
            let _ = writeln!(out, "no block IO completed");
        }
        Some(disks) => {
            for d in disks {
                let ops: Vec<String> = d
                    .operations
                    .iter()
                    .map(|(op, n)| format!("{op} {n}"))
                    .collect();
                let kind = match d.rotational {
                    Some(true) => "rotational",
                    Some(false) => "non-rotational",
                    None => "gone",
                };
                let _ = writeln!(
                    out,
                    "{} ({}, {kind}): {} IOs ({}), {:.0}/s, {:.2} in flight on average",
                    d.device,
                    d.major_minor,
                    d.ios,
                    ops.join(", "),
                    d.ios_per_second,
                    d.in_flight
                );
                histogram(&mut out, &d.latency);
                let _ = writeln!(out, "{}", reading(&d.latency));
            }
        }
        None => {
            let _ = writeln!(out, "not shown (see below)");
        }
    }

    section(&mut out, "Network: TCP retransmits and resets (tcp)");
    match &r.tcp {
        Some(t) => {
            let mut share = match (t.retransmit_share, t.segments_sent) {
                (Some(s), Some(n)) => format!("{:.2}% of {n} segments sent again", s * 100.0),
                _ => "share of segments unknown".into(),
            };
            if let Some(worst) = t.worst_namespace_share {
                share += &format!(", {:.2}% in the worst network namespace", worst * 100.0);
            }
            let _ = writeln!(
                out,
                "{} retransmits ({:.1}/s, {share}); resets: {} sent, {} received",
                t.retransmits, t.retransmits_per_second, t.resets_sent, t.resets_received
            );
            if !t.top.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:<26} {:>8} {:>10} {:<40} {:>11} {:>7}",
                    "SERVICE", "PID", "LOCAL PORT", "PEER", "RETRANSMITS", "RESETS"
                );
                for p in &t.top {
                    let _ = writeln!(
                        out,
                        "  {:<26.26} {:>8} {:>10} {:<40} {:>11} {:>7}",
                        p.service,
                        p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        p.local_port,
                        p.peer,
                        p.retransmits,
                        p.resets
                    );
                }
            }
        }
        None => {
            let _ = writeln!(out, "not shown (see below)");
        }
    }

    section(&mut out, "Syscalls: top by total latency (syscall)");
    match &r.syscalls {
        Some(s) => {
            let _ = writeln!(
                out,
                "scope: {}; {} failed calls; (wait) = a blocking wait, left out of the verdict",
                s.scope, s.errors
            );
            let _ = writeln!(
                out,
                "  {:<24} {:>9} {:>11} {:>8} {:>10} {:>10}  MOST IN",
                "SYSCALL", "CALLS", "TOTAL", "PER S", "P99", "MAX"
            );
            for row in &s.top {
                let _ = writeln!(
                    out,
                    "  {:<24} {:>9} {:>11} {:>8.3} {:>10} {:>10}  {}",
                    if row.waiting {
                        format!("{} (wait)", row.name)
                    } else {
                        row.name.clone()
                    },
                    row.calls,
                    fmt_seconds(row.total_seconds),
                    row.seconds_per_second,
                    fmt_seconds(row.p99_seconds),
                    fmt_seconds(row.max_seconds),
                    row.top_process
                );
            }
        }
        None => {
            let _ = writeln!(out, "not shown (see below)");
        }
    }

    section(&mut out, "HTTP: RED per service (http)");
    match &r.http {
        Some(h) if h.is_empty() => {
            let _ = writeln!(out, "no HTTP traffic seen");
        }
        Some(h) => {
            let _ = writeln!(
                out,
                "  {:<26} {:<6} {:>9} {:>8} {:>7} {:>10} {:>10} {:>10}",
                "SERVICE", "SIDE", "REQUESTS", "RATE/S", "ERRORS", "P50", "P99", "MAX"
            );
            for s in h {
                let _ = writeln!(
                    out,
                    "  {:<26.26} {:<6} {:>9} {:>8.1} {:>6.1}% {:>10} {:>10} {:>10}",
                    s.service,
                    s.side,
                    s.requests,
                    s.requests_per_second,
                    s.error_ratio * 100.0,
                    fmt_seconds(s.p50_seconds),
                    fmt_seconds(s.p99_seconds),
                    fmt_seconds(s.max_seconds)
                );
            }
        }
        None => {
            let _ = writeln!(out, "not shown (see below)");
        }
    }

    if !r.unavailable.is_empty() {
        section(&mut out, "Not shown");
        for u in &r.unavailable {
            let _ = writeln!(out, "  {}: {}", u.what, u.why);
        }
    }
    out
}

/// One progress line for a log: no escapes, no redraw.
pub fn progress_line(r: &Report) -> String {
    let mut parts = vec![format!(
        "{:.0}/{:.0} s",
        r.elapsed_seconds, r.requested_seconds
    )];
    if let Some(e) = &r.exec {
        parts.push(format!("{} execs", e.total));
    }
    if let Some(q) = &r.runqueue {
        parts.push(format!(
            "run-queue p99 {}",
            fmt_seconds(q.latency.p99_seconds)
        ));
    }
    if let Some(d) = r.disks.as_ref().and_then(|d| d.first()) {
        parts.push(format!(
            "disk {} {} IOs p99 {}",
            d.device,
            d.ios,
            fmt_seconds(d.latency.p99_seconds)
        ));
    }
    if let Some(t) = &r.tcp {
        parts.push(format!("{} retransmits", t.retransmits));
    }
    format!(
        "periscope triage: {}; so far: {}",
        parts.join(", "),
        r.verdict.layer.unwrap_or("no layer stands out")
    )
}

/// The live screen: a progress bar, then the summary so far, every line cut to the terminal's
/// width and the whole cut to its height (so a redraw never scrolls).
pub fn live_screen(r: &Report, rows: usize, cols: usize) -> String {
    let done = (r.elapsed_seconds / r.requested_seconds.max(1e-3)).clamp(0.0, 1.0);
    let width = 20;
    let filled = (done * width as f64).round() as usize;
    let left = (r.requested_seconds - r.elapsed_seconds).max(0.0);
    let header = format!(
        "periscope triage: collecting [{}{}] {:.0}/{:.0} s, {:.0} s left\n\
         Ctrl-C stops and prints the summary so far.\n\n",
        "#".repeat(filled),
        ".".repeat(width - filled),
        r.elapsed_seconds,
        r.requested_seconds,
        left
    );
    let mut out = String::new();
    for line in (header + &at_a_glance(r) + "\n" + &summary(r))
        .lines()
        .take(rows.saturating_sub(1).max(1))
    {
        out.extend(line.chars().take(cols.max(20)));
        out.push('\n');
    }
    out
}

/// One line per layer, for the top of the live screen.
pub fn at_a_glance(r: &Report) -> String {
    let mut out = format!("so far: {}\n", r.verdict.summary);
    if let Some(e) = &r.exec {
        let top: Vec<String> = e
            .top
            .iter()
            .take(3)
            .map(|c| format!("{} {}", c.comm, c.count))
            .collect();
        let _ = writeln!(
            out,
            "  execs     {} ({:.1}/s){}{}",
            e.total,
            e.per_second,
            if top.is_empty() { "" } else { ", most: " },
            top.join(", ")
        );
    }
    if let Some(q) = &r.runqueue {
        let _ = writeln!(
            out,
            "  CPU       {} run-queue waits, p99 {}, max {}, waited {:.0}% of the CPU time",
            q.latency.count,
            fmt_seconds(q.latency.p99_seconds),
            fmt_seconds(q.latency.max_seconds),
            q.waiting_share * 100.0
        );
    }
    if let Some(disks) = &r.disks {
        let each: Vec<String> = disks
            .iter()
            .take(3)
            .map(|d| {
                format!(
                    "{} {} IOs p99 {} {:.1} in flight",
                    d.device,
                    d.ios,
                    fmt_seconds(d.latency.p99_seconds),
                    d.in_flight
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  disk      {}",
            if each.is_empty() {
                "no IO".to_string()
            } else {
                each.join("; ")
            }
        );
    }
    if let Some(t) = &r.tcp {
        let _ = writeln!(
            out,
            "  network   {} retransmits ({:.1}/s), {} resets",
            t.retransmits,
            t.retransmits_per_second,
            t.resets_sent + t.resets_received
        );
    }
    if let Some(top) = r
        .syscalls
        .as_ref()
        .and_then(|s| s.top.iter().find(|row| !row.waiting))
    {
        let _ = writeln!(
            out,
            "  syscalls  {} {:.2} s/s, {} calls, p99 {}, most in {}",
            top.name,
            top.seconds_per_second,
            top.calls,
            fmt_seconds(top.p99_seconds),
            top.top_process
        );
    }
    if let Some(h) = &r.http {
        let each: Vec<String> = h
            .iter()
            .take(3)
            .map(|s| {
                format!(
                    "{} {} {:.1}/s {:.1}% errors p99 {}",
                    s.service,
                    s.side,
                    s.requests_per_second,
                    s.error_ratio * 100.0,
                    fmt_seconds(s.p99_seconds)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  HTTP      {}",
            if each.is_empty() {
                "no traffic".to_string()
            } else {
                each.join("; ")
            }
        );
    }
    out
}
