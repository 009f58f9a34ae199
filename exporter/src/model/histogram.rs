//! Histograms as the kernel keeps them (counts per bucket slot plus a sum), read from per-CPU
//! maps and turned into the export shapes: OTel base-2 exponential buckets at scale 4 and
//! Prometheus native buckets at schema 4 (both the kernel's own layout, lossless), and classic
//! buckets re-binned into the metric's fixed [`Layout`] (see `layout.rs` for the error bound).
//!
//! Reading costs O(non-empty buckets), whatever the number of events recorded.

use std::collections::BTreeMap;

use aya::{
    Pod,
    maps::{MapData, MapError, PerCpuHashMap},
};
use periscope_common::{
    Hist,
    hist::{SCALE, SECONDS_INDEX_OFFSET, ZERO_SLOT, index_of_slot, slot_of},
};

use crate::model::layout::Layout;

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
    pub fn scale(self) -> f64 {
        match self {
            Self::Seconds => (-30f64).exp2(),
            Self::Bytes => 1.0,
        }
    }
}

/// One recorded value that belongs to a sampled span: the link from a bucket to its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exemplar {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The value in recorded units (see [`ValueUnit`]).
    pub value: u64,
    /// When it was recorded (the request's end), Unix nanoseconds.
    pub time_unix_ns: u64,
}

/// Counts per bucket slot and the sum of recorded values (recorded units), and exemplars of
/// sampled spans where the metric has them (HTTP durations): at most one per power of two,
/// the latest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    pub counts: BTreeMap<u32, u64>,
    pub sum: u64,
    pub exemplars: Vec<Exemplar>,
}

/// An OTel base-2 exponential histogram's buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Exponential {
    pub scale: i32,
    pub zero_count: u64,
    pub offset: i32,
    pub counts: Vec<u64>,
}

/// Counts per classic bucket of a [`Layout`]: one per finite bound, then `+Inf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classic {
    pub counts: Vec<u64>,
}

impl Classic {
    /// Running totals, as Prometheus `le` buckets are written.
    pub fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().scan(0u64, |total, n| {
            *total += n;
            Some(*total)
        })
    }
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn sum_in(&self, unit: ValueUnit) -> f64 {
        self.sum as f64 * unit.scale()
    }

    /// Upper edge of a slot, in exported units: `2^((index + 1) / 16)`, and 0 for the zero slot.
    pub fn upper_edge(slot: u32, unit: ValueUnit) -> f64 {
        if slot == ZERO_SLOT {
            return 0.0;
        }
        let index = index_of_slot(slot) - unit.index_offset();
        ((index + 1) as f64 / (1 << SCALE) as f64).exp2()
    }

    /// The counts re-binned into `layout`: each kernel bucket goes whole into the classic bucket
    /// that holds its upper edge. O(non-empty kernel buckets x log(bounds)).
    pub fn classic(&self, layout: &Layout, unit: ValueUnit) -> Classic {
        let mut counts = vec![0u64; layout.bounds().len() + 1];
        for (&slot, &count) in &self.counts {
            counts[layout.bucket_of(Self::upper_edge(slot, unit))] += count;
        }
        Classic { counts }
    }

    /// The latest exemplar of each classic bucket of `layout` (by the bucket its value is
    /// counted in), `None` where there is none.
    pub fn classic_exemplars(&self, layout: &Layout, unit: ValueUnit) -> Vec<Option<Exemplar>> {
        let mut out: Vec<Option<Exemplar>> = vec![None; layout.bounds().len() + 1];
        for e in &self.exemplars {
            let bucket = layout.bucket_of(Self::upper_edge(slot_of(e.value), unit));
            if out[bucket].is_none_or(|kept| kept.time_unix_ns <= e.time_unix_ns) {
                out[bucket] = Some(*e);
            }
        }
        out
    }

    /// Sparse explicit buckets as `(upper bound, count in this bucket)`, ascending, ending with
    /// `(f64::INFINITY, 0)`: only the non-empty kernel buckets and their lower edges. This was
    /// the classic output before layouts; it is kept only so that the benchmark can measure both
    /// in one run (`PERISCOPE_SPARSE_CLASSIC=1`). Different series get different bounds here, so
    /// sums across series are wrong: never the default.
    pub fn sparse_buckets(&self, unit: ValueUnit) -> Vec<(f64, u64)> {
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

/// Prometheus native histogram buckets at schema 4: spans of consecutive bucket indexes and
/// the delta of each bucket's count from the previous one, as `io.prometheus.client.Histogram`
/// carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Native {
    pub schema: i32,
    pub zero_count: u64,
    /// `(offset, length)`: the first span's offset is its first index, later ones the gap after
    /// the previous span.
    pub spans: Vec<(i32, u32)>,
    pub deltas: Vec<i64>,
}

/// Prometheus schema-4 bucket `i` covers `(2^((i-1)/16), 2^(i/16)]` while OTel scale-4 index `k`
/// covers `(2^(k/16), 2^((k+1)/16)]`: the same bucket is `i = k + 1`.
pub const PROMETHEUS_INDEX_OFFSET: i32 = 1;

/// Up to this many empty buckets between two non-empty ones are sent as zero deltas (one byte
/// each) rather than starting a new span (two varints), as client_golang does.
const MAX_FILLED_GAP: i32 = 2;

impl Histogram {
    /// The kernel buckets as a Prometheus native histogram (schema 4), exact.
    pub fn native(&self, unit: ValueUnit) -> Native {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::new();
        let mut previous: Option<(i32, i64)> = None;
        for (&slot, &count) in self
            .counts
            .iter()
            .filter(|(s, c)| **s != ZERO_SLOT && **c > 0)
        {
            let index = index_of_slot(slot) - unit.index_offset() + PROMETHEUS_INDEX_OFFSET;
            let count = count as i64;
            let mut last = previous.map_or(0, |(_, c)| c);
            match (previous, spans.last_mut()) {
                (Some((before, _)), Some(span)) if index - before <= MAX_FILLED_GAP + 1 => {
                    for _ in before + 1..index {
                        deltas.push(-last);
                        last = 0;
                        span.1 += 1;
                    }
                    span.1 += 1;
                }
                _ => {
                    let offset = previous.map_or(index, |(before, _)| index - before - 1);
                    spans.push((offset, 1));
                }
            }
            deltas.push(count - last);
            previous = Some((index, count));
        }
        Native {
            schema: SCALE,
            zero_count: self.counts.get(&ZERO_SLOT).copied().unwrap_or(0),
            spans,
            deltas,
        }
    }
}

impl Histogram {
    /// What was recorded since `earlier` (an older copy of the same cumulative series), or
    /// `None` if any bucket went down: the series was reset in between. Exemplars already in
    /// `earlier` are not repeated.
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
            exemplars: self
                .exemplars
                .iter()
                .filter(|e| !earlier.exemplars.contains(e))
                .copied()
                .collect(),
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
    use periscope_common::hist::ns_to_units;
    use proptest::prelude::*;

    use crate::model::layout::KERNEL_BUCKET_RATIO;

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
        let buckets = h.sparse_buckets(ValueUnit::Seconds);
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
        let explicit = h.sparse_buckets(ValueUnit::Bytes);
        assert!(explicit.contains(&(65536.0, 1)));
        assert!(explicit.contains(&(4096.0, 2)));
        assert_eq!(explicit[0], (0.0, 1));
    }

    #[test]
    fn seconds_edges_are_exact_powers_of_two() {
        let mut h = Histogram::default();
        record(&mut h, 1 << 30); // exactly 1 s
        let buckets = h.sparse_buckets(ValueUnit::Seconds);
        assert_eq!(
            buckets[1],
            (1.0, 1),
            "1 s closes the bucket whose edge is 1 s"
        );
        let e = h.exponential(ValueUnit::Seconds);
        assert_eq!(e.offset, -1);
    }

    #[test]
    fn classic_buckets_have_the_layout_whatever_was_observed() {
        let layout = Layout::new(vec![0.005, 0.01, 0.025]).unwrap();
        let empty = Histogram::default().classic(&layout, ValueUnit::Seconds);
        assert_eq!(empty.counts, vec![0, 0, 0, 0]);
        let mut h = Histogram::default();
        for ns in [0u64, 100_000, 7_000_000, 7_100_000, 30_000_000] {
            record(&mut h, ns_to_units(ns));
        }
        let classic = h.classic(&layout, ValueUnit::Seconds);
        assert_eq!(classic.counts, vec![2, 2, 0, 1]);
        assert_eq!(classic.cumulative().collect::<Vec<_>>(), vec![2, 4, 4, 5]);
    }

    #[test]
    fn a_delta_carries_only_new_exemplars() {
        let exemplar = |n: u8| Exemplar {
            trace_id: [n; 16],
            span_id: [n; 8],
            value: 100,
            time_unix_ns: u64::from(n),
        };
        let mut before = Histogram::default();
        record(&mut before, 100);
        before.exemplars = vec![exemplar(1), exemplar(2)];
        let mut now = before.clone();
        record(&mut now, 100);
        now.exemplars = vec![exemplar(1), exemplar(3)];
        let delta = now.minus(&before).unwrap();
        assert_eq!(delta.count(), 1);
        assert_eq!(delta.exemplars, vec![exemplar(3)]);
    }

    #[test]
    fn classic_exemplars_are_the_latest_of_their_bucket() {
        let layout = Layout::new(vec![0.005, 0.01]).unwrap();
        let at = |ms: u64, n: u8| Exemplar {
            trace_id: [n; 16],
            span_id: [n; 8],
            value: ns_to_units(ms * 1_000_000),
            time_unix_ns: u64::from(n),
        };
        let h = Histogram {
            exemplars: vec![at(7, 2), at(6, 1), at(40, 3)],
            ..Histogram::default()
        };
        let kept = h.classic_exemplars(&layout, ValueUnit::Seconds);
        assert_eq!(kept, vec![None, Some(at(7, 2)), Some(at(40, 3))]);
    }

    #[test]
    fn a_straddling_kernel_bucket_counts_above_the_bound() {
        // 0.00499 s lies in the kernel bucket (0.004893, 0.005110]: its upper edge is above
        // 0.005, so it counts in le=0.01, one kernel bucket (4.4%) above where it belongs.
        let layout = Layout::new(vec![0.005, 0.01]).unwrap();
        let mut h = Histogram::default();
        record(&mut h, ns_to_units(4_990_000));
        assert_eq!(h.classic(&layout, ValueUnit::Seconds).counts, vec![0, 1, 0]);
    }

    #[test]
    fn native_buckets_are_the_kernel_buckets_one_index_up() {
        let mut h = Histogram::default();
        record(&mut h, 1 << 30); // 1 s: OTel index -1, Prometheus index 0 = (2^(-1/16), 1]
        record(&mut h, 0);
        let n = h.native(ValueUnit::Seconds);
        assert_eq!(n.schema, 4);
        assert_eq!(n.zero_count, 1);
        assert_eq!(n.spans, vec![(0, 1)]);
        assert_eq!(n.deltas, vec![1]);
        assert_eq!(h.exponential(ValueUnit::Seconds).offset, -1);
    }

    #[test]
    fn native_fills_small_gaps_and_splits_large_ones() {
        let mut h = Histogram::default();
        // Bytes: 2^10 is OTel index 159, Prometheus 160.
        for (v, n) in [(1u64 << 10, 3), ((1 << 10) + 100, 1), (1 << 20, 2)] {
            for _ in 0..n {
                record(&mut h, v);
            }
        }
        let prometheus_index = |v: u64| index_of_slot(slot_of(v)) + PROMETHEUS_INDEX_OFFSET;
        let (a, b, c) = (
            prometheus_index(1 << 10),
            prometheus_index((1 << 10) + 100),
            prometheus_index(1 << 20),
        );
        assert_eq!((a, b, c), (160, 163, 320));
        let n = h.native(ValueUnit::Bytes);
        // Two empty buckets between a and b are filled with zeros; c starts a new span.
        assert_eq!(n.spans, vec![(160, 4), (320 - 163 - 1, 1)]);
        assert_eq!(n.deltas, vec![3, -3, 0, 1, 1]);
    }

    /// Counts of `(index, count)` decoded back from spans and deltas, as Prometheus reads them.
    fn decode_native(n: &Native) -> Vec<(i32, u64)> {
        let mut out = Vec::new();
        let (mut index, mut count, mut deltas) = (0i32, 0i64, n.deltas.iter());
        for (i, (offset, length)) in n.spans.iter().enumerate() {
            index = if i == 0 { *offset } else { index + offset };
            for _ in 0..*length {
                count += deltas.next().expect("a delta per bucket");
                if count > 0 {
                    out.push((index, count as u64));
                }
                index += 1;
            }
        }
        assert!(deltas.next().is_none(), "no delta left over");
        out
    }

    /// PromQL's `histogram_quantile` over classic buckets (`bounds` finite, `cumulative` with
    /// one more entry for `+Inf`), as Prometheus computes it.
    fn histogram_quantile(q: f64, bounds: &[f64], cumulative: &[u64]) -> f64 {
        let total = *cumulative.last().unwrap() as f64;
        let rank = q * total;
        let b = cumulative.partition_point(|c| (*c as f64) < rank);
        if b == bounds.len() {
            return bounds[bounds.len() - 1];
        }
        let (start, below) = if b == 0 {
            (0.0, 0.0)
        } else {
            (bounds[b - 1], cumulative[b - 1] as f64)
        };
        let inside = cumulative[b] as f64 - below;
        start + (bounds[b] - start) * ((rank - below) / inside)
    }

    fn layout_strategy() -> impl Strategy<Value = Layout> {
        proptest::collection::vec(1e-7f64..100.0, 1..40).prop_map(|mut bounds| {
            bounds.sort_by(f64::total_cmp);
            bounds.dedup();
            Layout::new(bounds).unwrap()
        })
    }

    proptest! {
        /// The error bound stated in layout.rs: the count at `le=B` is the exact count at some
        /// point of `(B/2^(1/16), B]`, so a quantile from re-binned buckets lies between the
        /// ones computed from exact counts at `B` and at `B/2^(1/16)`; and the true quantile
        /// lies in the classic bucket read, widened below by one kernel bucket.
        #[test]
        fn rebinning_error_is_one_kernel_bucket(
            values in proptest::collection::vec(1u64..(1u64 << 36), 1..500),
            layout in layout_strategy(),
            q in 0.01f64..1.0,
        ) {
            let unit = ValueUnit::Seconds;
            let mut h = Histogram::default();
            for v in &values {
                record(&mut h, *v);
            }
            let secs: Vec<f64> = values.iter().map(|v| *v as f64 * unit.scale()).collect();
            let exact_at = |bound: f64| secs.iter().filter(|s| **s <= bound).count() as u64;
            let bounds = layout.bounds();
            let with_inf = |f: &dyn Fn(f64) -> u64| -> Vec<u64> {
                bounds.iter().map(|b| f(*b)).chain([values.len() as u64]).collect()
            };
            let rebinned: Vec<u64> = h.classic(&layout, unit).cumulative().collect();
            let high = with_inf(&|b| exact_at(b * (1.0 + 1e-12)));
            let low = with_inf(&|b| exact_at(b / KERNEL_BUCKET_RATIO * (1.0 - 1e-12)));
            for j in 0..bounds.len() {
                prop_assert!(low[j] <= rebinned[j] && rebinned[j] <= high[j],
                    "le={}: {} not in [{}, {}]", bounds[j], rebinned[j], low[j], high[j]);
            }
            let estimate = histogram_quantile(q, bounds, &rebinned);
            let from_exact = histogram_quantile(q, bounds, &high);
            let from_lowered = histogram_quantile(q, bounds, &low);
            let tolerance = 1e-9 * from_lowered.abs();
            prop_assert!(from_exact - tolerance <= estimate && estimate <= from_lowered + tolerance,
                "q={} estimate {} outside [{}, {}]", q, estimate, from_exact, from_lowered);

            let mut sorted = secs.clone();
            sorted.sort_by(f64::total_cmp);
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let truth = sorted[rank - 1];
            let b = rebinned.partition_point(|c| (*c as f64) < q * values.len() as f64);
            let lower = if b == 0 { 0.0 } else { bounds[b - 1] / KERNEL_BUCKET_RATIO };
            let upper = bounds.get(b).copied().unwrap_or(f64::INFINITY);
            prop_assert!(truth > lower * (1.0 - 1e-12) && truth <= upper * (1.0 + 1e-12),
                "q={} true {} outside ({}, {}]", q, truth, lower, upper);
        }

        /// Native buckets are the kernel's, one index up, and every count is kept.
        #[test]
        fn native_is_lossless(values in proptest::collection::vec(0u64..(1u64 << 40), 0..300)) {
            let mut h = Histogram::default();
            for v in &values {
                record(&mut h, *v);
            }
            let native = h.native(ValueUnit::Bytes);
            let decoded = decode_native(&native);
            let expected: Vec<(i32, u64)> = h.counts.iter()
                .filter(|(s, _)| **s != ZERO_SLOT)
                .map(|(s, c)| (index_of_slot(*s) + PROMETHEUS_INDEX_OFFSET, *c))
                .collect();
            prop_assert_eq!(decoded, expected);
            prop_assert_eq!(native.zero_count, values.iter().filter(|v| **v == 0).count() as u64);
        }
    }
}
