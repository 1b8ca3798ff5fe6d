//! The relay server's counters as read from outside the data plane: [`StatsSnapshot`] (the
//! relay core's counters plus the data plane's) and the `MetricsSource` the Prometheus
//! endpoint reads. Shared by the server and the metrics endpoint, so neither imports the other
//! for it.

use p2pmodel_core::relay::RelayStats;

use super::histogram::BUCKETS;

/// Counters the data plane adds on top of the relay core's [`p2pmodel_core::relay::RelayStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaneStats {
    /// STUN datagrams answered.
    pub stun_answered: u64,
    /// STUN datagrams the hook did not answer.
    pub stun_unanswered: u64,
    /// Relay datagrams that arrived on a STUN-only socket (dropped).
    pub not_relay_port: u64,
    /// Datagrams with an address family the relay does not handle (dropped).
    pub bad_source: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    /// Datagrams not sent because a batch was full (cannot happen with the default
    /// sizes; counted to prove it).
    pub batch_overflow: u64,
    /// recvmmsg calls that returned datagrams.
    pub recv_batches: u64,
    /// Datagrams longer than the receive buffer (`MSG_TRUNC`): dropped whole, never
    /// forwarded or answered cut short.
    pub truncated: u64,
    /// Relay datagrams a thread received for another thread's link id and handed to that
    /// thread (the kernel steers each datagram by link id, but a GSO/GRO burst mixing links
    /// goes whole to the thread of its first datagram). Not a drop.
    pub misrouted: u64,
    /// Of those, dropped because the other thread's hand-off queue was full.
    pub handoff_dropped: u64,
}

/// A consistent-enough copy of every counter (each value is exact; values are read one by
/// one while the data plane runs). The relay core's counters are a [`RelayStats`] (derefs
/// to it); the data plane adds its own and the latency histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    /// The relay core's counters (STUN and wrong-port datagrams are counted in [`PlaneStats`]).
    pub core: RelayStats,
    /// Data-plane counters.
    pub plane: PlaneStats,
    /// Forwarding latency (recv → send inside the relay) per bucket (not cumulative).
    pub latency: [u64; BUCKETS],
    /// Sum of those latencies in nanoseconds.
    pub latency_sum_ns: u64,
    /// Key id tokens are currently minted under.
    pub current_key_id: u8,
    /// Peer datagrams forwarded by each data-plane thread (how evenly link ids spread).
    pub thread_forwarded: Vec<u64>,
}

impl std::ops::Deref for StatsSnapshot {
    type Target = RelayStats;
    fn deref(&self) -> &RelayStats {
        &self.core
    }
}

impl StatsSnapshot {
    /// Every drop: core reasons and data-plane ones.
    pub fn dropped_total(&self) -> u64 {
        self.core.dropped_total()
            + self.plane.stun_unanswered
            + self.plane.not_relay_port
            + self.plane.bad_source
            + self.plane.send_errors
            + self.plane.batch_overflow
            + self.plane.truncated
            + self.plane.handoff_dropped
    }
}

/// What the metrics endpoint reads: a snapshot and the recent percentiles.
pub(crate) type MetricsSource = Box<dyn Fn() -> (StatsSnapshot, Option<u64>, Option<u64>) + Send + Sync>;
