//! A network conditioner: delay, jitter, loss and duplication for the datagrams of a real
//! socket (like Steam's fake-lag settings), so a game can be tried on a bad network without a
//! lab. Sans-IO like everything here: the driver pushes datagrams with `now` and sends (or
//! delivers) what [`Conditioner::poll`] releases; [`Conditioner::poll_timeout`] says when the
//! next one is due. The randomness is seeded, so the same seed and traffic give the same
//! drops and delays.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Most datagrams a [`Conditioner`] holds; more are dropped and counted
/// ([`ConditionerStats::overflow`]), so a long delay on a busy socket cannot grow memory
/// without bound.
pub const MAX_HELD: usize = 65_536;

/// What a [`Conditioner`] does to each datagram, in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConditionerConfig {
    /// Added to every datagram (the mean one-way delay).
    pub delay: Duration,
    /// Each datagram's delay is drawn uniformly from `delay ± jitter` (never below zero), so
    /// datagrams closer together than the spread can be reordered.
    pub jitter: Duration,
    /// Probability (0–1) that a datagram is dropped.
    pub loss: f32,
    /// Probability (0–1) that a datagram that was not dropped is delivered twice (the copy
    /// with a delay of its own).
    pub duplicate: f32,
    /// Seed of the random draws (loss, duplication, jitter).
    pub seed: u64,
}

impl ConditionerConfig {
    /// `delay` on every datagram, nothing else.
    pub fn delay(delay: Duration) -> Self {
        ConditionerConfig { delay, ..ConditionerConfig::default() }
    }

    /// True when the settings change nothing (no delay, jitter, loss or duplication; a NaN
    /// probability counts as zero).
    pub fn is_passthrough(&self) -> bool {
        let none = |p: f32| p.is_nan() || p <= 0.0;
        self.delay.is_zero() && self.jitter.is_zero() && none(self.loss) && none(self.duplicate)
    }
}

/// What a [`Conditioner`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConditionerStats {
    /// Datagrams pushed.
    pub pushed: u64,
    /// Datagrams released (copies included).
    pub released: u64,
    /// Datagrams dropped on purpose (`loss`).
    pub dropped: u64,
    /// Extra copies scheduled (`duplicate`).
    pub duplicated: u64,
    /// Datagrams dropped because [`MAX_HELD`] were already held.
    pub overflow: u64,
}

/// One held datagram, ordered by release time, then by arrival (so equal delays keep order).
struct Held<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Delays, drops and duplicates datagrams (any `T`: a transmit, a received datagram) as its
/// [`ConditionerConfig`] says.
pub struct Conditioner<T> {
    cfg: ConditionerConfig,
    rng: ChaCha8Rng,
    held: BinaryHeap<Reverse<Held<T>>>,
    seq: u64,
    stats: ConditionerStats,
}

impl<T> std::fmt::Debug for Conditioner<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conditioner")
            .field("cfg", &self.cfg)
            .field("held", &self.held.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<T: Clone> Conditioner<T> {
    /// A conditioner with these settings (`loss` and `duplicate` are clamped to 0–1).
    pub fn new(cfg: ConditionerConfig) -> Self {
        let clamp = |p: f32| if p > 0.0 { p.min(1.0) } else { 0.0 };
        let cfg = ConditionerConfig { loss: clamp(cfg.loss), duplicate: clamp(cfg.duplicate), ..cfg };
        Conditioner {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            held: BinaryHeap::new(),
            seq: 0,
            stats: ConditionerStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ConditionerConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> ConditionerStats {
        self.stats
    }

    /// Datagrams held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A datagram arrives at the conditioner at `now`: dropped, or held until its release
    /// time (once or twice).
    pub fn push(&mut self, now: Instant, item: T) {
        self.stats.pushed += 1;
        if self.cfg.loss > 0.0 && self.rng.random::<f32>() < self.cfg.loss {
            self.stats.dropped += 1;
            return;
        }
        if self.cfg.duplicate > 0.0 && self.rng.random::<f32>() < self.cfg.duplicate {
            self.stats.duplicated += 1;
            self.hold(now, item.clone());
        }
        self.hold(now, item);
    }

    fn hold(&mut self, now: Instant, item: T) {
        if self.held.len() >= MAX_HELD {
            self.stats.overflow += 1;
            return;
        }
        let at = now + self.draw_delay();
        self.seq += 1;
        self.held.push(Reverse(Held { at, seq: self.seq, item }));
    }

    /// `delay ± jitter`, uniform, at least zero.
    fn draw_delay(&mut self) -> Duration {
        if self.cfg.jitter.is_zero() {
            return self.cfg.delay;
        }
        let spread = self.cfg.jitter.as_secs_f64() * (2.0 * self.rng.random::<f64>() - 1.0);
        Duration::from_secs_f64((self.cfg.delay.as_secs_f64() + spread).max(0.0))
    }

    /// The next datagram whose release time is `now` or earlier.
    pub fn poll(&mut self, now: Instant) -> Option<T> {
        if self.held.peek().is_some_and(|Reverse(h)| h.at <= now) {
            self.stats.released += 1;
            return self.held.pop().map(|Reverse(h)| h.item);
        }
        None
    }

    /// When the next held datagram is due; `None` when nothing is held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held.peek().map(|Reverse(h)| h.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Push `n` datagrams 1 ms apart in virtual time, releasing each one exactly at its
    /// deadline; returns each released datagram's (id, delay) in release order.
    fn run(cfg: ConditionerConfig, n: u32) -> (Vec<(u32, Duration)>, ConditionerStats) {
        let t0 = Instant::now();
        let mut c = Conditioner::<(u32, Instant)>::new(cfg);
        let mut out = Vec::new();
        // Step to every deadline up to `to`, releasing what is due there.
        let mut advance = |c: &mut Conditioner<(u32, Instant)>, to: Instant| {
            while let Some(t) = c.poll_timeout().filter(|t| *t <= to) {
                assert_eq!(c.poll(t - Duration::from_nanos(1)), None, "nothing before its deadline");
                while let Some((id, pushed)) = c.poll(t) {
                    out.push((id, t - pushed));
                }
            }
        };
        for id in 0..n {
            let now = t0 + MS * id;
            advance(&mut c, now);
            c.push(now, (id, now));
        }
        advance(&mut c, t0 + Duration::from_secs(3600));
        assert_eq!(c.held(), 0);
        (out, c.stats())
    }

    #[test]
    fn with_nothing_configured_every_datagram_passes_at_once_in_order() {
        let cfg = ConditionerConfig::default();
        assert!(cfg.is_passthrough());
        let (out, stats) = run(cfg, 1000);
        assert_eq!(out.iter().map(|(id, _)| *id).collect::<Vec<_>>(), (0..1000).collect::<Vec<_>>());
        assert!(out.iter().all(|(_, d)| d.is_zero()));
        assert_eq!((stats.pushed, stats.released, stats.dropped), (1000, 1000, 0));
    }

    #[test]
    fn a_fixed_delay_holds_each_datagram_exactly_that_long_and_keeps_the_order() {
        let (out, _) = run(ConditionerConfig::delay(Duration::from_millis(40)), 500);
        assert_eq!(out.len(), 500);
        assert!(out.iter().all(|(_, d)| *d == Duration::from_millis(40)), "exact delay");
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "in order");
    }

    #[test]
    fn jittered_delays_spread_uniformly_over_delay_plus_minus_jitter() {
        let cfg = ConditionerConfig {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(10),
            seed: 3,
            ..ConditionerConfig::default()
        };
        let (out, stats) = run(cfg, 20_000);
        assert_eq!(out.len(), 20_000, "nothing lost");
        assert_eq!(stats.released, 20_000);
        let ms: Vec<f64> = out.iter().map(|(_, d)| d.as_secs_f64() * 1000.0).collect();
        assert!(ms.iter().all(|m| (40.0..=60.0).contains(m)), "within delay ± jitter");
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        assert!((49.8..=50.2).contains(&mean), "mean {mean}");
        // Uniform: each 5 ms quarter of the range holds about a quarter (±2 %).
        for q in 0..4 {
            let lo = 40.0 + 5.0 * q as f64;
            let share = ms.iter().filter(|m| **m >= lo && **m < lo + 5.0).count() as f64 / ms.len() as f64;
            assert!((0.23..=0.27).contains(&share), "quarter {q}: {share}");
        }
        // Datagrams 1 ms apart under ±10 ms jitter get reordered.
        assert!(out.windows(2).any(|w| w[0].0 > w[1].0), "reordering happens");
    }

    #[test]
    fn jitter_larger_than_the_delay_never_gives_a_negative_delay() {
        let cfg = ConditionerConfig {
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(10),
            seed: 9,
            ..ConditionerConfig::default()
        };
        let (out, _) = run(cfg, 2000);
        assert_eq!(out.len(), 2000);
        let zero = out.iter().filter(|(_, d)| d.is_zero()).count();
        assert!(zero > 500, "clamped at zero: {zero}");
        assert!(out.iter().all(|(_, d)| *d <= Duration::from_millis(12)));
    }

    #[test]
    fn loss_drops_about_the_configured_share() {
        let cfg = ConditionerConfig { loss: 0.1, seed: 5, ..ConditionerConfig::default() };
        let (out, stats) = run(cfg, 20_000);
        let share = stats.dropped as f64 / 20_000.0;
        assert!((0.09..=0.11).contains(&share), "dropped {share}");
        assert_eq!(out.len() as u64, 20_000 - stats.dropped);
        let ids: std::collections::HashSet<u32> = out.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), out.len(), "nothing delivered twice");
    }

    #[test]
    fn duplication_delivers_about_the_configured_share_twice() {
        let cfg = ConditionerConfig {
            duplicate: 0.05,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            seed: 6,
            ..ConditionerConfig::default()
        };
        let (out, stats) = run(cfg, 20_000);
        let extra = out.len() as f64 / 20_000.0 - 1.0;
        assert!((0.045..=0.055).contains(&extra), "duplicated {extra}");
        assert_eq!(stats.duplicated as usize, out.len() - 20_000);
        let mut ids: Vec<u32> = out.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 20_000, "every datagram at least once");
    }

    #[test]
    fn the_same_seed_gives_the_same_pattern_and_another_seed_another() {
        let cfg = |seed| ConditionerConfig {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(15),
            loss: 0.2,
            duplicate: 0.1,
            seed,
        };
        assert_eq!(run(cfg(1), 2000).0, run(cfg(1), 2000).0);
        assert_ne!(run(cfg(1), 2000).0, run(cfg(2), 2000).0);
    }

    #[test]
    fn nothing_is_released_before_its_deadline_and_out_of_range_probabilities_are_clamped() {
        let t0 = Instant::now();
        let mut c = Conditioner::new(ConditionerConfig {
            delay: Duration::from_millis(30),
            loss: -1.0,
            duplicate: f32::NAN,
            ..ConditionerConfig::default()
        });
        assert_eq!((c.config().loss, c.config().duplicate), (0.0, 0.0));
        assert_eq!(c.poll_timeout(), None);
        c.push(t0, 7u8);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(30)));
        assert_eq!(c.poll(t0 + Duration::from_millis(29)), None);
        assert_eq!(c.poll(t0 + Duration::from_millis(30)), Some(7));
        let mut all = Conditioner::new(ConditionerConfig { loss: 7.0, ..ConditionerConfig::default() });
        for i in 0..100u8 {
            all.push(t0, i);
        }
        assert_eq!((all.stats().dropped, all.held()), (100, 0), "loss above 1 is 1");
    }

    #[test]
    fn a_full_conditioner_drops_and_counts_instead_of_growing() {
        let t0 = Instant::now();
        let mut c = Conditioner::new(ConditionerConfig::delay(Duration::from_secs(1)));
        for i in 0..MAX_HELD + 10 {
            c.push(t0, i);
        }
        assert_eq!((c.held(), c.stats().overflow), (MAX_HELD, 10));
    }
}
