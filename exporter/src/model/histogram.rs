//! Histograms as the kernel keeps them (counts per bucket slot plus a sum), read from per-CPU
//! maps and turned into the two export shapes without losing a count: explicit buckets whose
//! bounds are the kernel's bucket edges, and OTel base-2 exponential buckets at scale 4.
//!
//! Reading costs O(non-empty buckets), whatever the number of events recorded.

use std::collections::BTreeMap;

use aya::{
    Pod,
    maps::{MapData, MapError, PerCpuHashMap},
};
use periscope_common::{
    Hist,
    hist::{SCALE, SECONDS_INDEX_OFFSET, ZERO_SLOT, index_of_slot},
};

/// What the kernel recorded, and so how to turn slots into values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueUnit {
    /// Durations in units of 2^-30 s, exported in seconds.
    Seconds,
    /// Sizes in bytes.
    Bytes,
}

impl ValueUnit {
    /// Exponential index offset from recorded units to exported units.
    fn index_offset(self) -> i32 {
        match self {
            Self::Seconds => SECONDS_INDEX_OFFSET,
            Self::Bytes => 0,
        }
    }

    /// One recorded unit in exported units.
    fn scale(self) -> f64 {
        match self {
            Self::Seconds => (-30f64).exp2(),
            Self::Bytes => 1.0,
        }
    }
}

/// Counts per bucket slot and the sum of recorded values (recorded units).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    pub counts: BTreeMap<u32, u64>,
    pub sum: u64,
}

/// An OTel base-2 exponential histogram's buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Exponential {
    pub scale: i32,
    pub zero_count: u64,
    pub offset: i32,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn sum_in(&self, unit: ValueUnit) -> f64 {
        self.sum as f64 * unit.scale()
    }

    /// Upper edge of a non-zero slot, in exported units: `2^((index + 1) / 16)`.
    fn upper_edge(slot: u32, unit: ValueUnit) -> f64 {
        let index = index_of_slot(slot) - unit.index_offset();
        ((index + 1) as f64 / (1 << SCALE) as f64).exp2()
    }

    /// Explicit buckets as `(upper bound, count in this bucket)`, ascending, ending with
    /// `(f64::INFINITY, 0)`. Empty buckets are left out, except that the lower edge of every
    /// non-empty bucket is present, so interpolation (PromQL's `histogram_quantile`) stays inside
    /// the true 4.4%-wide bucket.
    pub fn explicit_buckets(&self, unit: ValueUnit) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = Vec::with_capacity(self.counts.len() * 2 + 1);
        for (&slot, &count) in &self.counts {
            if count == 0 {
                continue;
            }
            if slot == ZERO_SLOT {
                out.push((0.0, count));
                continue;
            }
            // The upper edge of the slot below (for slot 1, the formula still gives 2^(-1/16)).
            let lower = Self::upper_edge(slot - 1, unit);
            if out.last().is_none_or(|(bound, _)| *bound < lower) {
                out.push((lower, 0));
            }
            out.push((Self::upper_edge(slot, unit), count));
        }
        out.push((f64::INFINITY, 0));
        out
    }

    /// The same buckets as an OTel exponential histogram (scale 4), exact.
    pub fn exponential(&self, unit: ValueUnit) -> Exponential {
        let zero_count = self.counts.get(&ZERO_SLOT).copied().unwrap_or(0);
        let nonzero: Vec<(u32, u64)> = self
            .counts
            .iter()
            .filter(|(slot, count)| **slot != ZERO_SLOT && **count > 0)
            .map(|(s, c)| (*s, *c))
            .collect();
        let (Some(first), Some(last)) = (nonzero.first(), nonzero.last()) else {
            return Exponential {
                scale: SCALE,
                zero_count,
                offset: 0,
                counts: Vec::new(),
            };
        };
        let mut counts = vec![0u64; (last.0 - first.0 + 1) as usize];
        for (slot, count) in &nonzero {
            counts[(slot - first.0) as usize] = *count;
        }
        Exponential {
            scale: SCALE,
            zero_count,
            offset: index_of_slot(first.0) - unit.index_offset(),
            counts,
        }
    }
}

impl Histogram {
    /// What was recorded since `earlier` (an older copy of the same cumulative series), or
    /// `None` if any bucket went down: the series was reset in between.
    pub fn minus(&self, earlier: &Self) -> Option<Self> {
        let mut counts = BTreeMap::new();
        for (slot, before) in &earlier.counts {
            if self.counts.get(slot).copied().unwrap_or(0) < *before {
                return None;
            }
        }
        for (slot, now) in &self.counts {
            let delta = now - earlier.counts.get(slot).copied().unwrap_or(0);
            if delta > 0 {
                counts.insert(*slot, delta);
            }
        }
        Some(Self {
            counts,
            sum: self.sum.checked_sub(earlier.sum)?,
        })
    }

    /// Sums the per-CPU copies of one kernel series.
    pub fn from_kernel<'a>(per_cpu: impl IntoIterator<Item = &'a Hist>) -> Self {
        let mut out = Self::default();
        for hist in per_cpu {
            out.sum = out.sum.wrapping_add(hist.sum);
            for (slot, n) in hist.buckets.iter().enumerate().filter(|(_, n)| **n > 0) {
                *out.counts.entry(slot as u32).or_default() += n;
            }
        }
        out
    }
}

/// Reads every series of a per-CPU histogram map, handing each series' per-CPU values to
/// `convert`. One lookup per series: O(series x buckets x CPUs), whatever the event count.
pub fn read_series<V: Pod, T>(
    map: &PerCpuHashMap<MapData, u64, V>,
    mut convert: impl FnMut(&[V]) -> T,
) -> Result<Vec<(u64, T)>, MapError> {
    map.iter()
        .map(|entry| entry.map(|(series, per_cpu)| (series, convert(&per_cpu))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_common::hist::{ns_to_units, slot_of};

    fn record(h: &mut Histogram, v: u64) {
        *h.counts.entry(slot_of(v)).or_default() += 1;
        h.sum += v;
    }

    #[test]
    fn per_cpu_copies_are_summed() {
        let mut a = Hist::ZERO;
        let mut b = Hist::ZERO;
        a.record(100);
        a.record(0);
        b.record(100);
        let h = Histogram::from_kernel([&a, &b]);
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum, 200);
        assert_eq!(h.counts[&slot_of(100)], 2);
        assert_eq!(h.counts[&ZERO_SLOT], 1);
    }

    #[test]
    fn explicit_buckets_hold_every_count_between_true_edges() {
        let mut h = Histogram::default();
        for ns in [1_000u64, 1_000, 1_050, 250_000, 3_000_000_000] {
            record(&mut h, ns_to_units(ns));
        }
        let buckets = h.explicit_buckets(ValueUnit::Seconds);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 5);
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "ascending");
        // Each value lies in (previous bound, its bound].
        for ns in [1_000u64, 1_050, 250_000, 3_000_000_000] {
            let secs = ns as f64 * 1e-9;
            let i = buckets.iter().position(|(b, _)| secs <= *b).unwrap();
            assert!(buckets[i].1 > 0, "{secs} falls in a counted bucket");
            assert!(
                buckets[i].0 / buckets[i - 1].0 < 1.045,
                "bucket is 4.4% wide"
            );
        }
        assert!((h.sum_in(ValueUnit::Seconds) - 3.000253100).abs() < 1e-6);
    }

    #[test]
    fn exponential_matches_explicit() {
        let mut h = Histogram::default();
        for bytes in [0u64, 4096, 4096, 65536, 1 << 20] {
            record(&mut h, bytes);
        }
        let e = h.exponential(ValueUnit::Bytes);
        assert_eq!(e.zero_count, 1);
        assert_eq!(e.counts.iter().sum::<u64>(), 4);
        // 65536 = 2^16 closes bucket index 16*16-1 = 255: (2^(255/16), 2^16].
        let idx_65536 = 255 - e.offset;
        assert_eq!(e.counts[idx_65536 as usize], 1);
        assert_eq!(e.offset, 12 * 16 - 1, "4096 = 2^12 closes bucket 191");
        let explicit = h.explicit_buckets(ValueUnit::Bytes);
        assert!(explicit.contains(&(65536.0, 1)));
        assert!(explicit.contains(&(4096.0, 2)));
        assert_eq!(explicit[0], (0.0, 1));
    }

    #[test]
    fn seconds_edges_are_exact_powers_of_two() {
        let mut h = Histogram::default();
        record(&mut h, 1 << 30); // exactly 1 s
        let buckets = h.explicit_buckets(ValueUnit::Seconds);
        assert_eq!(
            buckets[1],
            (1.0, 1),
            "1 s closes the bucket whose edge is 1 s"
        );
        let e = h.exponential(ValueUnit::Seconds);
        assert_eq!(e.offset, -1);
    }
}
