//! Classic bucket layouts: the fixed upper bounds every series of a histogram metric is exported
//! with as Prometheus `le` buckets and OTLP `explicit_bounds`, whatever it has observed.
//!
//! Users aggregate across series (`sum by (le)` over routes, pods, devices) before
//! `histogram_quantile`; that sum is only right when every series has the same bucket set at
//! every scrape. So the kernel's 4.4%-wide scale-4 buckets (lossless, exported as OTLP
//! exponential and Prometheus native histograms) are re-binned into one layout per metric.
//!
//! Re-binning: a kernel bucket `(L, U]` is counted in the classic bucket that holds its upper
//! edge `U`. A value is never counted below its bucket, and at most one kernel bucket above it:
//! the cumulative count reported at `le=B` is the exact count of values `<= B'` for some
//! `B'` in `(B / 2^(1/16), B]`. So a quantile read from the classic buckets lies between the
//! one the same reader computes from exact counts at the bounds `B` and the one it computes from
//! exact counts at `B / 1.0443` (see `rebinning_error_is_one_kernel_bucket` below).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, de};

use super::names;

/// Most finite bounds one layout may have: each costs a line (or a bucket) per series per
/// scrape, so 10,000 series at 100 bounds is already a million lines.
pub const MAX_BOUNDS: usize = 100;

/// Ratio between consecutive kernel bucket edges, `2^(1/16)`: the most re-binning can move a
/// value up.
pub const KERNEL_BUCKET_RATIO: f64 = 1.044_273_782_427_413_8;

/// Finite upper bounds, positive and strictly ascending; `+Inf` is implied after the last.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    bounds: Vec<f64>,
}

impl Layout {
    /// Checks the bounds a user (or a default) gives.
    pub fn new(bounds: Vec<f64>) -> Result<Self, String> {
        if bounds.is_empty() {
            return Err("needs at least one bound".into());
        }
        if bounds.len() > MAX_BOUNDS {
            return Err(format!(
                "{} bounds, at most {MAX_BOUNDS} (each is a series line per scrape)",
                bounds.len()
            ));
        }
        if let Some(b) = bounds.iter().find(|b| !b.is_finite() || **b <= 0.0) {
            return Err(format!(
                "bound {b} is not a positive finite number (+Inf is implied)"
            ));
        }
        if let Some(pair) = bounds.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "bounds must be strictly ascending: {} is followed by {}",
                pair[0], pair[1]
            ));
        }
        Ok(Self { bounds })
    }

    /// The finite bounds (the `+Inf` bucket follows them).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// The classic bucket (index into the bounds, or `bounds().len()` for `+Inf`) that counts a
    /// kernel bucket whose upper edge is `upper_edge` (exported units).
    pub fn bucket_of(&self, upper_edge: f64) -> usize {
        self.bounds.partition_point(|b| *b < upper_edge)
    }
}

/// `1, 2, 5` times each power of ten from `10^from` to `10^to` inclusive (ends at `10^to`).
fn one_two_five(from: i32, to: i32) -> Vec<f64> {
    let mut out = Vec::new();
    for exponent in from..to {
        for mantissa in [1.0, 2.0, 5.0] {
            // Parsed from text so that 0.000002 is the double closest to it, as a user's YAML
            // value would be (1e-6 * 2.0 is not).
            out.push(format!("{mantissa}e{exponent}").parse().unwrap_or(f64::NAN));
        }
    }
    out.push(format!("1e{to}").parse().unwrap_or(f64::NAN));
    out
}

/// `2^from, 2^(from+1), ..., 2^to`.
fn powers_of_two(from: i32, to: i32) -> Vec<f64> {
    (from..=to).map(|e| f64::from(e).exp2()).collect()
}

/// The OTel semantic-convention advice for `http.server.request.duration` and
/// `http.client.request.duration` (seconds), and the same for `rpc.server.call.duration` and
/// `rpc.client.call.duration`.
pub const HTTP_DURATION_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Every histogram metric Periscope exports, with its default layout and why.
pub fn default_bounds(metric: &str) -> Option<Vec<f64>> {
    Some(match metric {
        names::HTTP_SERVER_REQUEST_DURATION
        | names::HTTP_CLIENT_REQUEST_DURATION
        | names::RPC_SERVER_CALL_DURATION
        | names::RPC_CLIENT_CALL_DURATION => HTTP_DURATION_BOUNDS.to_vec(),
        // Device and scheduler latencies: 1 µs (a fast NVMe completion, an idle CPU's wakeup)
        // to 10 s (a stalled disk), 1-2-5 steps: 22 bounds.
        names::KERNEL_BLOCK_IO_DURATION | names::KERNEL_SCHED_RUNQUEUE_LATENCY => {
            one_two_five(-6, 1)
        }
        // Syscalls start below a microsecond (getpid, a cached read): 100 ns to 10 s, 25 bounds.
        names::KERNEL_SYSCALL_DURATION => one_two_five(-7, 1),
        // User functions: 1 µs to 10 s like the kernel latencies.
        names::PROCESS_FUNCTION_DURATION => one_two_five(-6, 1),
        // Connections live from a refused handshake (100 µs) to a long-lived stream (1000 s).
        names::KERNEL_TCP_CONNECTION_DURATION => one_two_five(-4, 3),
        // Block requests: 512 B sectors to 16 MiB (the largest merged request), 16 bounds.
        names::KERNEL_BLOCK_IO_SIZE => powers_of_two(9, 24),
        // Payload per connection: 64 B (a health check) to 1 GiB, 25 bounds.
        names::KERNEL_TCP_CONNECTION_SENT | names::KERNEL_TCP_CONNECTION_RECEIVED => {
            powers_of_two(6, 30)
        }
        _ => return None,
    })
}

/// The OTel names of every histogram metric (the keys `histograms.buckets` accepts).
pub const HISTOGRAM_METRICS: [&str; 12] = [
    names::HTTP_SERVER_REQUEST_DURATION,
    names::HTTP_CLIENT_REQUEST_DURATION,
    names::RPC_SERVER_CALL_DURATION,
    names::RPC_CLIENT_CALL_DURATION,
    names::KERNEL_BLOCK_IO_DURATION,
    names::KERNEL_BLOCK_IO_SIZE,
    names::KERNEL_SCHED_RUNQUEUE_LATENCY,
    names::KERNEL_SYSCALL_DURATION,
    names::PROCESS_FUNCTION_DURATION,
    names::KERNEL_TCP_CONNECTION_DURATION,
    names::KERNEL_TCP_CONNECTION_SENT,
    names::KERNEL_TCP_CONNECTION_RECEIVED,
];

/// One layout per histogram metric: the configured ones, else the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Layouts {
    by_metric: BTreeMap<&'static str, Layout>,
}

impl Default for Layouts {
    fn default() -> Self {
        Self::new(&BTreeMap::new())
    }
}

impl Layouts {
    pub fn new(configured: &BTreeMap<MetricName, Bounds>) -> Self {
        let by_metric = HISTOGRAM_METRICS
            .iter()
            .map(|name| {
                let layout = match configured.get(&MetricName(name)) {
                    Some(bounds) => bounds.0.clone(),
                    None => Layout::new(default_bounds(name).unwrap_or_default())
                        .unwrap_or_else(|e| panic!("default layout of {name}: {e}")),
                };
                (*name, layout)
            })
            .collect();
        Self { by_metric }
    }

    /// The layout of a histogram metric (OTel name). A metric without an entry (none today)
    /// gets the generic latency layout, so a new family can never export sparse buckets.
    pub fn of(&self, metric: &str) -> &Layout {
        self.by_metric
            .get(metric)
            .unwrap_or_else(|| &self.by_metric[names::PROCESS_FUNCTION_DURATION])
    }
}

/// A histogram metric's OTel name, checked against [`HISTOGRAM_METRICS`] while the YAML is read
/// (so a typo is reported with its line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricName(pub &'static str);

impl<'de> Deserialize<'de> for MetricName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        HISTOGRAM_METRICS
            .iter()
            .find(|known| **known == name)
            .map(|known| MetricName(known))
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "unknown histogram metric {name:?}, expected one of {}",
                    HISTOGRAM_METRICS.join(", ")
                ))
            })
    }
}

/// A configured layout, validated while the YAML is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds(pub Layout);

impl<'de> Deserialize<'de> for Bounds {
    /// The bounds are checked inside the sequence visitor, so that serde_yaml reports the
    /// metric's key path and the line and column of the list.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoundsVisitor;
        impl<'de> de::Visitor<'de> for BoundsVisitor {
            type Value = Bounds;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of bucket upper bounds such as [0.005, 0.01, 0.025]")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bounds, A::Error> {
                let mut bounds = Vec::new();
                while let Some(bound) = seq.next_element::<f64>()? {
                    bounds.push(bound);
                }
                Layout::new(bounds).map(Bounds).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_seq(BoundsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounded() {
        for name in HISTOGRAM_METRICS {
            let bounds = default_bounds(name).expect(name);
            let layout = Layout::new(bounds).expect(name);
            let n = layout.bounds().len();
            assert!((14..=30).contains(&n), "{name}: {n} bounds");
        }
        let latency = default_bounds("kernel.block.io.duration").unwrap();
        assert_eq!(latency.len(), 22);
        assert_eq!(
            (latency[0], latency[1], latency[2]),
            (0.000001, 0.000002, 0.000005)
        );
        assert_eq!(*latency.last().unwrap(), 10.0);
        let sizes = default_bounds("kernel.block.io.size").unwrap();
        assert_eq!((sizes[0], *sizes.last().unwrap()), (512.0, 16_777_216.0));
    }

    #[test]
    fn bad_layouts_are_refused_with_the_reason() {
        assert!(Layout::new(vec![]).unwrap_err().contains("at least one"));
        assert!(Layout::new(vec![0.1, -1.0]).unwrap_err().contains("-1"));
        assert!(Layout::new(vec![0.0]).unwrap_err().contains("positive"));
        assert!(
            Layout::new(vec![f64::INFINITY])
                .unwrap_err()
                .contains("+Inf")
        );
        assert_eq!(
            Layout::new(vec![0.1, 0.05]).unwrap_err(),
            "bounds must be strictly ascending: 0.1 is followed by 0.05"
        );
        assert!(Layout::new(vec![0.1, 0.1]).is_err());
        let many: Vec<f64> = (1..=MAX_BOUNDS + 1).map(|i| i as f64).collect();
        assert!(Layout::new(many).unwrap_err().contains("at most 100"));
    }

    #[test]
    fn a_kernel_bucket_goes_where_its_upper_edge_is() {
        let layout = Layout::new(vec![0.005, 0.01]).unwrap();
        assert_eq!(layout.bucket_of(0.004), 0);
        assert_eq!(layout.bucket_of(0.005), 0, "upper-inclusive like le");
        assert_eq!(layout.bucket_of(0.0051), 1);
        assert_eq!(layout.bucket_of(0.5), 2, "+Inf");
    }
}
