//! Reference tools (libbpf-tools) run beside Periscope over the same workload, and their
//! bcc-style log2 histograms parsed.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// A running reference tool; it prints its histograms when stopped with SIGINT.
pub struct RefTool {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl RefTool {
    /// Starts `/usr/sbin/<tool> args...` (or `tool` itself, an absolute path) and waits until it
    /// says it is tracing (a line starting with `Tracing`). Its stdout is a pipe, so it runs
    /// under `stdbuf -oL` to see that line as soon as it is printed.
    pub fn start(tool: &str, args: &[&str]) -> Self {
        let path = if tool.starts_with('/') {
            tool.to_string()
        } else {
            format!("/usr/sbin/{tool}")
        };
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{tool} could not start ({e}); make test installs libbpf-tools")
            });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tool_ = Self { child, lines };
        loop {
            match tool_.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with("Tracing") => return tool_,
                Ok(_) => continue,
                Err(_) => {
                    let _ = tool_.child.kill();
                    let mut err = String::new();
                    if let Some(mut e) = tool_.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("{tool} did not start tracing: {err}");
                }
            }
        }
    }

    /// SIGINT, then everything it printed after "Tracing...".
    pub fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let mut out = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

/// bpftrace running `program`, which must print a line starting with `Tracing` in its `BEGIN`
/// probe (then its probes are attached); its maps are printed when it is stopped.
pub fn bpftrace(program: &str) -> RefTool {
    RefTool::start("/usr/bin/bpftrace", &["-e", program])
}

/// The value of a bpftrace map printed as `@name: N` (0 when it never fired).
pub fn bpftrace_count(output: &str, map: &str) -> u64 {
    output
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("@{map}: "))?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// syscount's table: syscall name -> (count, total latency in seconds).
pub fn parse_syscount(text: &str) -> BTreeMap<String, (u64, f64)> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let name = cols.next()?.to_string();
            let count = cols.next()?.parse().ok()?;
            let micros: f64 = cols.next()?.parse().ok()?;
            Some((name, (count, micros * 1e-6)))
        })
        .collect()
}

/// One bcc log2 histogram: slot (log2 of the lower bound; slot 0 holds 0 and 1) to count.
pub type Log2Hist = BTreeMap<u32, u64>;

/// Parses bcc histogram output. Sections are keyed by their header (`disk = loop3` as `loop3`,
/// `pid = 42 stress-ng` as `42 stress-ng`), or "" for a single unlabelled histogram.
pub fn parse_log2_histograms(text: &str) -> BTreeMap<String, Log2Hist> {
    let mut out: BTreeMap<String, Log2Hist> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("disk = ")
            .or_else(|| trimmed.strip_prefix("pid = "))
        {
            section = name.trim().to_string();
            continue;
        }
        let Some((range, rest)) = trimmed.split_once(':') else {
            continue;
        };
        let Some((low, _high)) = range.split_once("->") else {
            continue;
        };
        let (Ok(low), Some(count)) = (
            low.trim().parse::<u64>(),
            rest.split_whitespace()
                .next()
                .and_then(|c| c.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let slot = if low == 0 {
            0
        } else {
            63 - low.leading_zeros()
        };
        *out.entry(section.clone())
            .or_default()
            .entry(slot)
            .or_default() += count;
    }
    out
}

/// The slot holding the most counts.
pub fn mode<T: PartialOrd + Copy>(hist: &BTreeMap<u32, T>) -> Option<u32> {
    hist.iter()
        .fold(None::<(u32, T)>, |best, (slot, n)| match best {
            Some((_, m)) if m >= *n => best,
            _ => Some((*slot, *n)),
        })
        .map(|(slot, _)| slot)
}

/// Whether two log2 histograms of the same events have the same modal slot. Two tracers
/// time one IO at slightly different instants, so when a distribution straddles a slot
/// boundary its top two slots can swap; a differing mode is accepted only as such a near tie:
/// each side's modal slot holds at least `tie` (e.g. 0.9) of the other side's top count there.
pub fn modes_agree(ours: &BTreeMap<u32, f64>, theirs: &BTreeMap<u32, u64>, tie: f64) -> bool {
    let theirs: BTreeMap<u32, f64> = theirs.iter().map(|(k, v)| (*k, *v as f64)).collect();
    let (Some(a), Some(b)) = (mode(ours), mode(&theirs)) else {
        return false;
    };
    let near_top = |h: &BTreeMap<u32, f64>, slot: u32, top: u32| {
        h.get(&slot).copied().unwrap_or(0.0) >= tie * h[&top]
    };
    a == b || (near_top(ours, b, a) && near_top(&theirs, a, b))
}

/// Total variation distance between two histograms normalised to one: half the summed
/// absolute difference of slot shares (0 = identical, 1 = disjoint).
pub fn total_variation(ours: &BTreeMap<u32, f64>, theirs: &BTreeMap<u32, u64>) -> f64 {
    let our_total: f64 = ours.values().sum();
    let their_total = theirs.values().sum::<u64>() as f64;
    let slots: std::collections::BTreeSet<u32> =
        ours.keys().chain(theirs.keys()).copied().collect();
    let share = |n: f64, total: f64| if total > 0.0 { n / total } else { 0.0 };
    slots
        .iter()
        .map(|slot| {
            let a = share(ours.get(slot).copied().unwrap_or(0.0), our_total);
            let b = share(theirs.get(slot).copied().unwrap_or(0) as f64, their_total);
            (a - b).abs()
        })
        .sum::<f64>()
        / 2.0
}

/// The slot holding the median count.
pub fn median_slot(hist: &BTreeMap<u32, f64>) -> Option<u32> {
    let total: f64 = hist.values().sum();
    let mut seen = 0.0;
    for (slot, n) in hist {
        seen += n;
        if seen >= total / 2.0 {
            return Some(*slot);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_per_disk_sections() {
        let text = "\ndisk = loop0\t\n     usecs               : count    distribution\n         0 -> 1          : 3        |*|\n        16 -> 31         : 159      |****|\n";
        let h = parse_log2_histograms(text);
        assert_eq!(h["loop0"][&0], 3);
        assert_eq!(h["loop0"][&4], 159);
        assert_eq!(mode(&h["loop0"]), Some(4));
    }

    #[test]
    fn a_swapped_near_tie_is_the_same_mode_but_a_clear_difference_is_not() {
        // The CI run that motivated the tolerance: 1005/983 against 942/1046.
        let ours = BTreeMap::from([(4, 1005.0), (5, 983.0), (6, 11.0), (7, 1.0)]);
        let near = BTreeMap::from([(4, 942), (5, 1046), (6, 10), (7, 2)]);
        assert!(modes_agree(&ours, &near, 0.9));
        assert!(total_variation(&ours, &near) < 0.05);
        let far = BTreeMap::from([(4, 500), (5, 1490), (6, 10)]);
        assert!(!modes_agree(&ours, &far, 0.9));
        let shifted = BTreeMap::from([(6, 1000), (7, 1000)]);
        assert!(!modes_agree(&ours, &shifted, 0.9));
        assert!(total_variation(&ours, &shifted) > 0.9);
        assert_eq!(
            total_variation(
                &ours,
                &BTreeMap::from([(4, 1005), (5, 983), (6, 11), (7, 1)])
            ),
            0.0
        );
    }
}
