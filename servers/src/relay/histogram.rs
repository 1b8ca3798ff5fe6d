//! Forwarding latency histogram: fixed buckets, plain counters in the data plane,
//! published to atomics, percentiles by interpolation inside a bucket.

/// Upper bounds of the buckets in nanoseconds (the last bucket, `+Inf`, is implicit).
pub const BOUNDS_NS: [u64; 24] = [
    1_000,
    2_000,
    3_000,
    5_000,
    7_000,
    10_000,
    15_000,
    20_000,
    30_000,
    50_000,
    70_000,
    100_000,
    150_000,
    200_000,
    300_000,
    500_000,
    700_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
];

/// Number of buckets including `+Inf`.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// The bucket of a latency.
#[inline]
pub fn bucket_of(ns: u64) -> usize {
    BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(BOUNDS_NS.len())
}

/// The `q` quantile (0..=1) in nanoseconds of per-bucket (not cumulative) counts, by linear
/// interpolation inside the bucket; `None` with no samples.
pub fn quantile_ns(counts: &[u64; BUCKETS], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && seen + c >= rank {
            let lo = if i == 0 { 0 } else { BOUNDS_NS[i - 1] };
            let hi = BOUNDS_NS.get(i).copied().unwrap_or(lo * 2);
            let frac = (rank - seen) as f64 / c as f64;
            return Some(lo + ((hi - lo) as f64 * frac) as u64);
        }
        seen += c;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_interpolate() {
        let mut c = [0u64; BUCKETS];
        assert_eq!(quantile_ns(&c, 0.5), None);
        c[bucket_of(1_500)] = 100; // all in (1 µs, 2 µs]
        assert_eq!(quantile_ns(&c, 0.5), Some(1_500));
        assert_eq!(quantile_ns(&c, 1.0), Some(2_000));
        c[bucket_of(u64::MAX)] = 1;
        assert!(quantile_ns(&c, 1.0).unwrap() > 100_000_000);
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1);
    }
}
