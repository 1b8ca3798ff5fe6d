//! Token-bucket rate limiting on virtual time, in integer arithmetic (deterministic, no
//! floating point, no allocation).

use std::time::{Duration, Instant};

use super::config::Quota;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A token bucket: refills at `rate` units per second up to a depth of `rate × burst`.
/// Levels are kept in nano-units so sub-unit refills between close packets are not lost.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: u64,
    capacity_nano: u128,
    level_nano: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(now: Instant, rate_per_sec: u64, burst: Duration) -> TokenBucket {
        let capacity_nano = u128::from(rate_per_sec) * burst.as_nanos();
        TokenBucket { rate_per_sec, capacity_nano, level_nano: capacity_nano, last: now }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_nanos();
            let add = elapsed.saturating_mul(u128::from(self.rate_per_sec));
            self.level_nano = self.level_nano.saturating_add(add).min(self.capacity_nano);
            self.last = now;
        }
    }

    fn has(&self, cost: u64) -> bool {
        self.level_nano >= u128::from(cost) * NANOS_PER_SEC
    }

    fn take(&mut self, cost: u64) {
        self.level_nano = self.level_nano.saturating_sub(u128::from(cost) * NANOS_PER_SEC);
    }

    /// Refill to `now`, then take `cost` units if they are there.
    pub fn try_take(&mut self, now: Instant, cost: u64) -> bool {
        self.refill(now);
        if self.has(cost) {
            self.take(cost);
            true
        } else {
            false
        }
    }
}

/// A packets bucket and a bytes bucket: a datagram passes only if both have room, and then
/// takes from both.
#[derive(Debug, Clone)]
pub struct FlowLimiter {
    packets: TokenBucket,
    bytes: TokenBucket,
}

impl FlowLimiter {
    /// Full buckets for `quota`.
    pub fn new(now: Instant, quota: Quota, burst: Duration) -> FlowLimiter {
        FlowLimiter {
            packets: TokenBucket::new(now, quota.packets_per_sec, burst),
            bytes: TokenBucket::new(now, quota.bytes_per_sec, burst),
        }
    }

    /// Whether a datagram of `len` bytes may pass now (and if so, account for it).
    pub fn allow(&mut self, now: Instant, len: usize) -> bool {
        self.packets.refill(now);
        self.bytes.refill(now);
        let len = len as u64;
        if self.packets.has(1) && self.bytes.has(len) {
            self.packets.take(1);
            self.bytes.take(len);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_bucket_burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 100, Duration::from_millis(100));
        // Depth: 10 units.
        for _ in 0..10 {
            assert!(b.try_take(t0, 1));
        }
        assert!(!b.try_take(t0, 1));
        // 10 ms later: one unit back.
        assert!(b.try_take(t0 + Duration::from_millis(10), 1));
        assert!(!b.try_take(t0 + Duration::from_millis(10), 1));
        // A long pause refills to the depth only.
        let t1 = t0 + Duration::from_secs(100);
        let mut n = 0;
        while b.try_take(t1, 1) {
            n += 1;
        }
        assert_eq!(n, 10);
        // Time going backwards is ignored, never panics.
        assert!(!b.try_take(t0, 1));
    }

    #[test]
    fn relay_flow_limiter_needs_both_buckets() {
        let t0 = Instant::now();
        let q = Quota { packets_per_sec: 10, bytes_per_sec: 1000 };
        let mut f = FlowLimiter::new(t0, q, Duration::from_secs(1));
        assert!(f.allow(t0, 600));
        assert!(!f.allow(t0, 600)); // bytes exhausted, packets not taken
        for _ in 0..9 {
            assert!(f.allow(t0, 1));
        }
        assert!(!f.allow(t0, 1)); // packets exhausted
    }
}
