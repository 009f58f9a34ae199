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
    /// Starts `/usr/sbin/<tool> args...` and waits until it says it is tracing. Its stdout is
    /// a pipe, so it runs under `stdbuf -oL` to see that line as soon as it is printed.
    pub fn start(tool: &str, args: &[&str]) -> Self {
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(format!("/usr/sbin/{tool}"))
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

/// One bcc log2 histogram: slot (log2 of the lower bound; slot 0 holds 0 and 1) to count.
pub type Log2Hist = BTreeMap<u32, u64>;

/// Parses bcc histogram output. Sections are keyed by their header (`disk = loop3`), or "" for a
/// single unlabelled histogram.
pub fn parse_log2_histograms(text: &str) -> BTreeMap<String, Log2Hist> {
    let mut out: BTreeMap<String, Log2Hist> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("disk = ") {
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
}
