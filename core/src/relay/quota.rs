//! Token-bucket rate limiting on virtual time, in integer arithmetic (deterministic, no
//! floating point, no allocation), and the limits several relays of one data plane share
//! ([`SharedLimits`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;

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

/// A source address's limiter: owned by one relay, or shared by the relays of a
/// multi-threaded data plane (the address may have links on several threads).
#[derive(Debug)]
pub(crate) enum SourceLimiter {
    /// One relay only (single-threaded data plane): no synchronisation.
    Local(FlowLimiter),
    /// Every relay of the data plane that has a binding at this address holds it.
    Shared(SharedFlowLimiter),
}

impl SourceLimiter {
    /// [`FlowLimiter::allow`] on the one limiter of this address.
    pub(crate) fn allow(&mut self, now: Instant, len: usize) -> bool {
        match self {
            SourceLimiter::Local(l) => l.allow(now, len),
            SourceLimiter::Shared(l) => relock(l).allow(now, len),
        }
    }
}

/// Lock, ignoring poisoning: nothing that holds these locks can panic half-way.
fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One address's limiter, shared by the relays holding a binding at it.
type SharedFlowLimiter = Arc<Mutex<FlowLimiter>>;

/// What the relays of one multi-threaded data plane share so that its limits hold across
/// threads exactly as in one relay (`Relay::with_shared_limits`):
///
/// - the **per-source quota**: one address may have links on every thread (links are steered
///   by link id, not by address), so each address has one [`FlowLimiter`] shared by the
///   relays that hold a binding at it. The per-datagram check locks that address's limiter
///   only (a `Mutex` held for the bucket arithmetic, ~20 ns, no system call inside): it is
///   uncontended unless one address sends on two threads at the same instant. The registry
///   lock is taken only when a binding starts, moves or ends at an address (Bind path,
///   sweep), never per datagram;
/// - the **table bound** (`max_bindings`): one atomic count of entries over all relays,
///   reserved before an entry is created, released when the sweep removes it (lock-free).
///
/// Per-(link, side) state (bindings, replay floors, link quotas, anti-amplification budgets)
/// is not shared: both sides of a link always reach the same relay.
#[derive(Debug, Default)]
pub struct SharedLimits {
    /// Per address: how many relays hold its limiter, and the limiter.
    sources: Mutex<HashMap<SocketAddr, (u32, SharedFlowLimiter), RandomState>>,
    entries: AtomicUsize,
}

impl SharedLimits {
    /// The limiter of `addr` (created full with `quota` if no relay holds it yet); call
    /// [`SharedLimits::release_source`] once per call when the caller stops using it.
    pub(crate) fn acquire_source(
        &self,
        addr: SocketAddr,
        now: Instant,
        quota: Quota,
        burst: Duration,
    ) -> SharedFlowLimiter {
        let mut map = relock(&self.sources);
        let e =
            map.entry(addr).or_insert_with(|| (0, Arc::new(Mutex::new(FlowLimiter::new(now, quota, burst)))));
        e.0 += 1;
        e.1.clone()
    }

    /// One holder of `addr`'s limiter is done with it; the last one removes it.
    pub(crate) fn release_source(&self, addr: SocketAddr) {
        let mut map = relock(&self.sources);
        if let Some(e) = map.get_mut(&addr) {
            e.0 = e.0.saturating_sub(1);
            if e.0 == 0 {
                map.remove(&addr);
            }
        }
    }

    /// Reserve one table entry if fewer than `max` exist over all relays.
    pub(crate) fn reserve_entry(&self, max: usize) -> bool {
        self.entries.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// An entry was removed.
    pub(crate) fn release_entry(&self) {
        let _ = self.entries.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
    }

    /// Binding-table entries over all relays sharing these limits.
    pub fn table_entries(&self) -> usize {
        self.entries.load(Ordering::Acquire)
    }

    /// Source addresses with at least one live binding on some relay.
    pub fn sources(&self) -> usize {
        relock(&self.sources).len()
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
