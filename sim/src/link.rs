//! One-way link impairments: latency, jitter, loss and duplication.

use std::time::Duration;

use rand::Rng;

/// How a link delays, loses and duplicates the datagrams that cross it.
///
/// Used for a host's uplink (applied once on the way out and once on the way in, so a
/// datagram between two hosts crosses both uplinks) and for the optional core of the public
/// realm ([`crate::Sim::set_core`]).
///
/// Per datagram and per crossing:
/// 1. it is lost with probability `loss`;
/// 2. otherwise it arrives once, or twice with probability `duplicate`;
/// 3. each copy gets its own delay, drawn uniformly from `[latency - jitter, latency + jitter]`
///    (floored at zero). The mean delay is therefore `latency` whenever `jitter <= latency`,
///    and reordering arises naturally once `jitter` exceeds the gap between two datagrams.
///
/// Probabilities outside `0.0..=1.0` are clamped and NaN counts as `0.0`, so no setting can
/// make the simulator panic.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkParams {
    /// Mean one-way delay.
    pub latency: Duration,
    /// Half-width of the uniform delay spread around `latency`.
    pub jitter: Duration,
    /// Probability that a datagram is lost on this link (0.0–1.0).
    pub loss: f64,
    /// Probability that a datagram that got through arrives twice (0.0–1.0).
    pub duplicate: f64,
}

impl LinkParams {
    /// A perfect link: no delay, no loss, no duplication (same as `Default`).
    pub const IDEAL: LinkParams =
        LinkParams { latency: Duration::ZERO, jitter: Duration::ZERO, loss: 0.0, duplicate: 0.0 };

    /// A link with a fixed one-way `latency` and no other impairment.
    pub fn with_latency(latency: Duration) -> Self {
        LinkParams { latency, ..Self::IDEAL }
    }

    /// The same link with a delay spread of `±jitter`.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same link losing each datagram with probability `loss`.
    pub fn loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    /// The same link duplicating each delivered datagram with probability `duplicate`.
    pub fn duplicate(mut self, duplicate: f64) -> Self {
        self.duplicate = duplicate;
        self
    }

    /// True when crossing this link changes nothing (lets the simulator skip an event).
    pub(crate) fn is_ideal(&self) -> bool {
        self.latency.is_zero()
            && self.jitter.is_zero()
            && prob(self.loss) == 0.0
            && prob(self.duplicate) == 0.0
    }

    /// Decide the fate of one datagram: `None` if lost, else the delays of its 1 or 2 copies.
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> Option<Copies> {
        let loss = prob(self.loss);
        if loss > 0.0 && rng.random::<f64>() < loss {
            return None;
        }
        let dup = prob(self.duplicate);
        let twice = dup > 0.0 && rng.random::<f64>() < dup;
        let first = self.delay(rng);
        let second = if twice { Some(self.delay(rng)) } else { None };
        Some(Copies { first, second })
    }

    fn delay(&self, rng: &mut impl Rng) -> Duration {
        if self.jitter.is_zero() {
            return self.latency;
        }
        let lat = self.latency.as_nanos().min(u64::MAX as u128) as u64;
        let jit = self.jitter.as_nanos().min(u64::MAX as u128) as u64;
        let lo = lat.saturating_sub(jit);
        let hi = lat.saturating_add(jit);
        Duration::from_nanos(rng.random_range(lo..=hi))
    }
}

/// The delays of the copies of one datagram that survived a link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Copies {
    pub first: Duration,
    pub second: Option<Duration>,
}

/// A probability made safe: NaN → 0, clamped to `0.0..=1.0`.
fn prob(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn sim_link_bad_probabilities_do_not_panic() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let l = LinkParams::IDEAL.loss(f64::NAN).duplicate(7.0);
        let c = l.sample(&mut rng).expect("NaN loss means no loss");
        assert!(c.second.is_some(), "duplicate > 1 clamps to always");
        assert!(LinkParams::IDEAL.loss(-3.0).is_ideal());
        assert!(LinkParams::IDEAL.loss(2.0).sample(&mut rng).is_none());
    }

    #[test]
    fn sim_link_jitter_stays_in_bounds_and_floors_at_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let l = LinkParams::with_latency(Duration::from_millis(5)).jitter(Duration::from_millis(20));
        for _ in 0..1000 {
            let d = l.sample(&mut rng).unwrap().first;
            assert!(d <= Duration::from_millis(25), "{d:?}");
        }
        let huge = LinkParams::with_latency(Duration::MAX).jitter(Duration::MAX);
        let _ = huge.sample(&mut rng);
    }
}
