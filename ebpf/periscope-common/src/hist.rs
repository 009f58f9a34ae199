//! Log-exponential histogram buckets, 16 per power of two: the OpenTelemetry base-2 exponential
//! layout at scale 4 (bucket `i` covers `(2^(i/16), 2^((i+1)/16)]`, ratio 1.044 between edges).
//!
//! bcc's `log2` slots are up to 2x wide; these are 4.4% wide, so any quantile read from them is
//! within 4.4% of the exact value. The bucket index is computed in the kernel with integer
//! arithmetic only: the position of the leading one gives the power of two, and four comparisons
//! of the normalised mantissa against `2^(k/16)` thresholds give the sub-bucket. Because the
//! layout is exactly OTel's, user space exports these buckets losslessly both as OTLP exponential
//! histograms and as explicit buckets whose edges are the same numbers.
//!
//! Durations are recorded in units of 2^-30 s (about 0.93 ns) rather than nanoseconds, so a
//! bucket edge in those units is also an exact scale-4 edge in seconds: index_in_seconds =
//! index_in_units - 30 * 16.

/// OTel exponential histogram scale of the kernel buckets.
pub const SCALE: i32 = 4;
/// Buckets per power of two.
pub const SUBBUCKETS: u32 = 1 << SCALE;
/// Values up to 2^MAX_EXPONENT units are bucketed exactly; larger ones land in the last bucket.
/// For durations that is 1024 s, for sizes 1 TiB.
pub const MAX_EXPONENT: u32 = 40;
/// Slot of the value zero.
pub const ZERO_SLOT: u32 = 0;
/// Slots are `0` (zero) and `2 + i` for exponential index `i` in `[-1, MAX_EXPONENT * 16)`.
pub const NUM_SLOTS: u32 = 2 + MAX_EXPONENT * SUBBUCKETS;
/// Exponential index offset between duration units (2^-30 s) and seconds.
pub const SECONDS_INDEX_OFFSET: i32 = 30 * SUBBUCKETS as i32;

/// `round(2^(k/16) * 2^63)` for k in 0..16: the sub-bucket edges of a mantissa normalised so
/// that its leading one is bit 63.
const THRESHOLDS: [u64; 16] = [
    0x8000000000000000,
    0x85aac367cc487b15,
    0x8b95c1e3ea8bd6e7,
    0x91c3d373ab11c336,
    0x9837f0518db8a96f,
    0x9ef5326091a111ae,
    0xa5fed6a9b15138ea,
    0xad583eea42a14ac6,
    0xb504f333f9de6484,
    0xbd08a39f580c36bf,
    0xc5672a115506dadd,
    0xce248c151f8480e4,
    0xd744fccad69d6af4,
    0xe0ccdeec2a94e111,
    0xeac0c6e7dd24392f,
    0xf5257d152486cc2c,
];

/// Position of the most significant set bit of `v` (`v > 0`), in six branchy steps that the
/// BPF verifier accepts (there is no count-leading-zeros instruction in BPF).
#[inline(always)]
pub fn log2_floor(mut v: u64) -> u32 {
    let mut r = 0;
    if v >> 32 != 0 {
        v >>= 32;
        r += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        r += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        r += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        r += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        r += 2;
    }
    if v >> 1 != 0 {
        r += 1;
    }
    r
}

/// The bucket slot of `v`. Upper-inclusive like OTel: an exact power of two `2^e` belongs to the
/// bucket whose upper edge is `2^e`.
#[inline(always)]
pub fn slot_of(v: u64) -> u32 {
    if v == 0 {
        return ZERO_SLOT;
    }
    let e = log2_floor(v);
    if e >= MAX_EXPONENT {
        return NUM_SLOTS - 1;
    }
    let m = v << (63 - e);
    if m == THRESHOLDS[0] {
        // Exactly 2^e: the last bucket of the previous power of two.
        return e * SUBBUCKETS + 1;
    }
    // Largest k with THRESHOLDS[k] < m, by binary search over the 16 edges.
    let mut k = 0usize;
    if m > THRESHOLDS[8] {
        k = 8;
    }
    if m > THRESHOLDS[(k + 4) & 15] {
        k += 4;
    }
    if m > THRESHOLDS[(k + 2) & 15] {
        k += 2;
    }
    if m > THRESHOLDS[(k + 1) & 15] {
        k += 1;
    }
    e * SUBBUCKETS + k as u32 + 2
}

/// The OTel exponential index of a non-zero slot (in the recorded unit).
#[inline]
pub const fn index_of_slot(slot: u32) -> i32 {
    slot as i32 - 2
}

/// Nanoseconds to duration units of 2^-30 s: `ns * 2^30 / 10^9 = ns * 1.073741824`, computed
/// without overflow for any u64 with a 32-bit fixed-point fraction: relative error below 10^-9,
/// negligible next to the 4.4% bucket width.
#[inline(always)]
pub fn ns_to_units(ns: u64) -> u64 {
    // 0.073741824 * 2^32, rounded.
    const FRACTION: u64 = 316_718_722;
    ns.wrapping_add((ns >> 32).wrapping_mul(FRACTION))
        .wrapping_add(((ns & 0xffff_ffff) * FRACTION) >> 32)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    const BASE: f64 = 1.044_273_782_427_413_8; // 2^(1/16)

    fn upper_edge(slot: u32) -> f64 {
        BASE.powi(index_of_slot(slot) + 1)
    }

    #[test]
    fn thresholds_are_powers_of_two_to_the_sixteenth() {
        for (k, t) in THRESHOLDS.iter().enumerate() {
            let expected = 2f64.powf(k as f64 / 16.0) * 2f64.powi(63);
            assert!(((*t as f64) - expected).abs() / expected < 1e-15, "k={k}");
        }
    }

    #[test]
    fn powers_of_two_close_their_bucket() {
        assert_eq!(slot_of(1), 1);
        for e in 0..MAX_EXPONENT {
            let v = 1u64 << e;
            assert_eq!(
                index_of_slot(slot_of(v)),
                (e * SUBBUCKETS) as i32 - 1,
                "2^{e}"
            );
            if e >= 5 {
                // 2^e + 1 lies within 4.4% above 2^e: the first bucket above it.
                let first_above = (e * SUBBUCKETS) as i32;
                assert_eq!(index_of_slot(slot_of(v + 1)), first_above, "2^{e}+1");
            }
        }
    }

    #[test]
    fn zero_and_huge_values() {
        assert_eq!(slot_of(0), ZERO_SLOT);
        assert_eq!(slot_of(u64::MAX), NUM_SLOTS - 1);
        assert_eq!(slot_of(1 << MAX_EXPONENT), NUM_SLOTS - 1);
    }

    #[test]
    fn units_conversion_is_exact_to_a_part_per_billion() {
        assert_eq!(ns_to_units(0), 0);
        for ns in [
            1u64,
            999,
            1_000_000_000,
            123_456_789_012,
            u32::MAX as u64 * 7,
            1 << 50,
        ] {
            let exact = (ns as u128 * (1u128 << 30)) / 1_000_000_000;
            let got = ns_to_units(ns) as u128;
            let relative = got.abs_diff(exact) as f64 / exact as f64;
            assert!(
                got.abs_diff(exact) <= 1 || relative < 1e-9,
                "ns={ns} got={got} exact={exact}"
            );
        }
        // One second is 2^30 units, to within one unit.
        assert!(ns_to_units(1_000_000_000).abs_diff(1 << 30) <= 1);
    }

    /// The quantile a reader derives from the buckets: the geometric middle of the bucket
    /// holding the q-th value.
    fn bucket_quantile(sorted_slots: &[u32], q: f64) -> f64 {
        let rank = ((q * sorted_slots.len() as f64).ceil() as usize).clamp(1, sorted_slots.len());
        let slot = sorted_slots[rank - 1];
        if slot == ZERO_SLOT {
            return 0.0;
        }
        upper_edge(slot) / BASE.sqrt()
    }

    proptest! {
        #[test]
        fn every_value_lies_inside_its_bucket(v in 1u64..(1 << MAX_EXPONENT)) {
            let slot = slot_of(v);
            let upper = upper_edge(slot);
            let lower = upper / BASE;
            let x = v as f64;
            // Tolerance for f64 rounding of the edges themselves.
            prop_assert!(x > lower * (1.0 - 1e-12) && x <= upper * (1.0 + 1e-12),
                "v={} slot={} ({}, {}]", v, slot, lower, upper);
        }

        #[test]
        fn slots_are_monotonic(a in 0u64..(1 << 41), b in 0u64..(1 << 41)) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(slot_of(lo) <= slot_of(hi));
        }

        /// Any quantile read from the buckets is within 10% (in fact 2.2%) of the exact one.
        #[test]
        fn quantiles_within_ten_percent(
            values in proptest::collection::vec(1u64..(1u64 << 36), 1..2000),
            q in 0.01f64..1.0,
        ) {
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let exact = sorted[rank - 1] as f64;
            let slots: Vec<u32> = sorted.iter().map(|v| slot_of(*v)).collect();
            let estimate = bucket_quantile(&slots, q);
            let err = (estimate - exact).abs() / exact;
            prop_assert!(err <= 0.10, "q={} exact={} estimate={} err={}", q, exact, estimate, err);
            prop_assert!(err <= 0.0222, "q={} exact={} estimate={} err={}", q, exact, estimate, err);
        }
    }
}
