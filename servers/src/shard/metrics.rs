//! Shard metrics for benchmarks: bytes in/out per role, Game tick time and internal routing
//! latency. Process-wide and **off by default**: every hook is a relaxed atomic load until
//! [`enable`] is called (`p2pmodel bench shard` does), so production roles pay nothing.
//!
//! What is counted where:
//! - **Agent** bytes: UDP payload bytes on the Agent's netcode sockets (the transport in
//!   [`super::agent`]), both ways. The login service is not counted.
//! - **Game** bytes: encoded [`InternalMessage`] bytes on the [`super::bus::ShardBus`] to a
//!   Game server (in) and from one (out). The bus does not know a message's sender, so the
//!   sender is read off the message kind ([`sender_of`]): `ToClient` carrying a Game-phase
//!   message, `Positions` and a Game's `Heartbeat` come from a Game server.
//! - **Game tick**: wall time of one `FixedUpdate` pass over every Game server of the process
//!   ([`TickTimer`], one line in `game.rs`).
//! - **Routing latency**: time an internal message waits on the bus, from `send` to the
//!   destination's `drain`, per direction: toward a Game server (a client's message routed
//!   by the Agent, waiting for the next fixed tick) and toward the Agent (a role's message to
//!   a client, sent by the Agent to the client in the same frame). Stamped per message in
//!   FIFO order, so it needs the in-process bus (`shard all`).
//!
//! Histograms are log-linear (16 sub-buckets per power of two of µs, ≤ 6 % error).
//!
//! One family is **always on** (security, not benchmarking): clients the Agent dropped, by
//! [`ClientDropReason`] — `p2pmodel_agent_dropped_clients_total{reason=…}`, appended to the
//! relay's `/metrics` in a process that runs an Agent ([`render_prometheus`]), with
//! `p2pmodel_agent_netcode_panics_total` (datagrams netcode panicked on; caught) and
//! `p2pmodel_agent_queue_dropped_messages_total{queue=…}` (messages dropped between the
//! Agent's I/O threads and the frame).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use p2pmodel_core::proto::shard::{InternalMessage, Role, ShardMessage};
use p2pmodel_core::shard::BusObserver;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turn the hooks on for this process (idempotent).
pub fn enable() {
    let _ = registry();
    ENABLED.store(true, Ordering::Relaxed);
}

/// Are the hooks on?
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A latency histogram in microseconds (log-linear buckets).
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max_us: u64,
}

const SUB: u64 = 16;

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: vec![0; 64 * SUB as usize], count: 0, max_us: 0 }
    }
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < SUB {
            return us as usize;
        }
        let p = 63 - us.leading_zeros() as u64; // us in [2^p, 2^(p+1))
        let sub = (us >> (p - 4)) & (SUB - 1);
        ((p - 3) * SUB + sub) as usize
    }

    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let p = i / SUB + 3;
        (1 << p) + (i % SUB) * (1 << (p - 4))
    }

    /// Record one sample.
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX >> 8)) as u64;
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile in milliseconds (`None` without samples): the bucket's midpoint.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64 * q).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, hi) = (Self::lower(i), Self::lower(i + 1));
                let mid = (lo + hi) as f64 / 2.0;
                return Some(mid.min(self.max_us as f64) / 1000.0);
            }
        }
        Some(self.max_us as f64 / 1000.0)
    }

    /// Largest sample, ms.
    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1000.0
    }
}

/// Byte and datagram counters of one role, both ways.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Datagrams / messages received.
    pub msgs_in: AtomicU64,
    /// Datagrams / messages sent.
    pub msgs_out: AtomicU64,
}

impl Traffic {
    fn add_in(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        self.msgs_in.fetch_add(1, Ordering::Relaxed);
    }
    fn add_out(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.msgs_out.fetch_add(1, Ordering::Relaxed);
    }
    /// `(bytes_in, bytes_out, msgs_in, msgs_out)` now.
    pub fn read(&self) -> [u64; 4] {
        [&self.bytes_in, &self.bytes_out, &self.msgs_in, &self.msgs_out].map(|a| a.load(Ordering::Relaxed))
    }
}

/// Why the Agent dropped a client: the `reason` label of
/// `p2pmodel_agent_dropped_clients_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientDropReason {
    /// renet could not decode the client's packet (`renet_decode`).
    RenetDecode,
    /// The packet named a channel that does not exist (`renet_channel_id`).
    RenetChannelId,
    /// A receive channel refused it: invalid slice, over the memory budget, message id out of
    /// window (`renet_channel`).
    RenetChannel,
    /// renet panicked on the client's packet; caught, the connection was discarded
    /// (`renet_panic`).
    RenetPanic,
    /// Our reliable send buffer to the client overflowed: a client that does not ack
    /// (`send_overflow`).
    SendOverflow,
    /// The shard disconnected it on purpose, e.g. a token without a valid name (`kicked`).
    Kicked,
}

impl ClientDropReason {
    /// Every reason, in label order.
    pub const ALL: [ClientDropReason; 6] = [
        ClientDropReason::RenetDecode,
        ClientDropReason::RenetChannelId,
        ClientDropReason::RenetChannel,
        ClientDropReason::RenetPanic,
        ClientDropReason::SendOverflow,
        ClientDropReason::Kicked,
    ];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            ClientDropReason::RenetDecode => "renet_decode",
            ClientDropReason::RenetChannelId => "renet_channel_id",
            ClientDropReason::RenetChannel => "renet_channel",
            ClientDropReason::RenetPanic => "renet_panic",
            ClientDropReason::SendOverflow => "send_overflow",
            ClientDropReason::Kicked => "kicked",
        }
    }

    /// The reason for a connection renet closed (`None`: not a drop by the shard).
    pub fn from_renet(reason: renet::DisconnectReason) -> Option<ClientDropReason> {
        use renet::DisconnectReason as R;
        Some(match reason {
            R::PacketDeserialization(_) => ClientDropReason::RenetDecode,
            R::ReceivedInvalidChannelId(_) => ClientDropReason::RenetChannelId,
            R::ReceiveChannelError { .. } => ClientDropReason::RenetChannel,
            R::SendChannelError { .. } | R::PacketSerialization(_) => ClientDropReason::SendOverflow,
            R::DisconnectedByServer => ClientDropReason::Kicked,
            R::Transport | R::DisconnectedByClient => return None,
        })
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Clients dropped by the Agent, per [`ClientDropReason`].
#[derive(Debug, Default)]
pub struct ClientDrops([AtomicU64; ClientDropReason::ALL.len()]);

impl ClientDrops {
    /// Count one drop.
    pub fn add(&self, reason: ClientDropReason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Drops for `reason` so far.
    pub fn get(&self, reason: ClientDropReason) -> u64 {
        self.0[reason.index()].load(Ordering::Relaxed)
    }
}

/// Hook (always on): the Agent dropped a client for `reason`.
pub fn agent_dropped_client(reason: ClientDropReason) {
    registry().agent_drops.add(reason);
}

/// Hook (always on): netcode panicked on a datagram at the Agent (caught, datagram dropped).
pub fn agent_netcode_panic() {
    registry().agent_netcode_panics.fetch_add(1, Ordering::Relaxed);
}

/// Append the always-on Agent counters in the Prometheus text format (nothing in a process
/// that never started an Agent).
pub fn render_prometheus(out: &mut String) {
    let r = registry();
    if !r.agent_running.load(Ordering::Relaxed) {
        return;
    }
    let name = "p2pmodel_agent_dropped_clients_total";
    out.push_str(&format!(
        "# HELP {name} Clients the Agent disconnected, by reason.\n# TYPE {name} counter\n"
    ));
    for reason in ClientDropReason::ALL {
        out.push_str(&format!("{name}{{reason=\"{}\"}} {}\n", reason.label(), r.agent_drops.get(reason)));
    }
    let name = "p2pmodel_agent_netcode_panics_total";
    out.push_str(&format!(
        "# HELP {name} Datagrams dropped because netcode panicked decoding them.\n# TYPE {name} counter\n{name} {}\n",
        r.agent_netcode_panics.load(Ordering::Relaxed)
    ));
    let name = "p2pmodel_agent_queue_dropped_messages_total";
    out.push_str(&format!(
        "# HELP {name} Messages dropped between the Agent's I/O threads and the frame (a full queue).\n# TYPE {name} counter\n\
         {name}{{queue=\"from_clients\"}} {}\n{name}{{queue=\"to_clients\"}} {}\n",
        r.agent_inbox_dropped.load(Ordering::Relaxed),
        r.agent_outbox_dropped.load(Ordering::Relaxed)
    ));
}

/// Everything recorded (see the module docs).
#[derive(Debug, Default)]
pub struct Registry {
    /// Clients the Agent dropped, by reason (always on).
    pub agent_drops: ClientDrops,
    /// An Agent runs in this process (its counters are rendered).
    pub agent_running: AtomicBool,
    /// Datagrams netcode panicked on at the Agent (always on).
    pub agent_netcode_panics: AtomicU64,
    /// Client messages the Agent's I/O threads dropped because the frame did not take them
    /// in time (its inbox was full; always on).
    pub agent_inbox_dropped: AtomicU64,
    /// Messages for clients dropped because the Agent's I/O threads did not take them in
    /// time (always on).
    pub agent_outbox_dropped: AtomicU64,
    /// The Agent's netcode sockets.
    pub agent: Traffic,
    /// Game servers, on the internal bus.
    pub game: Traffic,
    /// Game tick wall time.
    pub tick: Mutex<Histogram>,
    /// Bus wait toward a Game server (client → role).
    pub route_to_game: Mutex<Histogram>,
    /// Bus wait toward the Agent (role → client).
    pub route_to_agent: Mutex<Histogram>,
}

/// The process-wide registry.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// Clear the histograms (between phases of a benchmark); counters are read as deltas.
pub fn reset_histograms() {
    let r = registry();
    for h in [&r.tick, &r.route_to_game, &r.route_to_agent] {
        if let Ok(mut h) = h.lock() {
            *h = Histogram::default();
        }
    }
}

/// Hook: the Agent received a datagram of `bytes` on a netcode socket.
#[inline]
pub fn agent_in(bytes: usize) {
    if enabled() {
        registry().agent.add_in(bytes);
    }
}

/// Hook: the Agent sent a datagram of `bytes` on a netcode socket.
#[inline]
pub fn agent_out(bytes: usize) {
    if enabled() {
        registry().agent.add_out(bytes);
    }
}

/// The role that sent `msg` onto the bus, by message kind (the bus does not record senders).
pub fn sender_of(msg: &InternalMessage) -> Option<Role> {
    match msg {
        InternalMessage::Heartbeat { from } => Some(*from),
        InternalMessage::Positions { game, .. } => Some(Role::Game(*game)),
        InternalMessage::ToClient { msg, .. } => match msg {
            ShardMessage::Welcome { .. } | ShardMessage::Refused { .. } => Some(Role::Lobby),
            _ => Some(Role::Game(u32::MAX)),
        },
        _ => None,
    }
}

/// Per-bus send stamps, so a drain can tell how long each message waited: the observer of
/// the [`super::bus::ShardBus`]; inert (empty) while metrics are off.
#[derive(Debug, Default)]
pub struct BusClock {
    stamps: HashMap<Role, VecDeque<Instant>>,
}

impl BusObserver for BusClock {
    #[inline]
    fn sent(&mut self, to: Role, msg: &InternalMessage, len: usize) {
        if !enabled() {
            return;
        }
        let r = registry();
        if matches!(to, Role::Game(_)) {
            r.game.add_in(len);
        }
        if matches!(sender_of(msg), Some(Role::Game(_))) {
            r.game.add_out(len);
        }
        self.stamps.entry(to).or_default().push_back(Instant::now());
    }

    /// Stamped only, so drains stay aligned.
    #[inline]
    fn sent_raw(&mut self, to: Role) {
        if enabled() {
            self.stamps.entry(to).or_default().push_back(Instant::now());
        }
    }

    #[inline]
    fn drained(&mut self, role: Role, n: usize) {
        let Some(q) = self.stamps.get_mut(&role) else { return };
        if !enabled() {
            q.clear();
            return;
        }
        let now = Instant::now();
        let hist = match role {
            Role::Game(_) => &registry().route_to_game,
            Role::Agent => &registry().route_to_agent,
            _ => {
                q.drain(..n.min(q.len()));
                return;
            }
        };
        let Ok(mut h) = hist.lock() else { return };
        for t in q.drain(..n.min(q.len())) {
            h.record(now.saturating_duration_since(t));
        }
    }

    fn cleared(&mut self, role: Role) {
        self.stamps.remove(&role);
    }
}

/// Records the wall time of one Game tick when dropped (`let _t = TickTimer::start();`).
pub struct TickTimer(Option<Instant>);

impl TickTimer {
    /// Start timing (does nothing while metrics are off).
    #[inline]
    pub fn start() -> TickTimer {
        TickTimer(enabled().then(Instant::now))
    }
}

impl Drop for TickTimer {
    fn drop(&mut self) {
        if let Some(t) = self.0
            && let Ok(mut h) = registry().tick.lock()
        {
            h.record(t.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((p50 - 5.0).abs() / 5.0 < 0.07, "{p50}");
        assert!((p99 - 9.9).abs() / 9.9 < 0.07, "{p99}");
        assert_eq!(h.count(), 10_000);
        assert!(Histogram::default().quantile_ms(0.5).is_none());
        for us in [0u64, 1, 15, 16, 17, 31, 32, 1000, 65_535, 1 << 30] {
            let i = Histogram::index(us);
            assert!(Histogram::lower(i) <= us && us < Histogram::lower(i + 1), "{us}");
        }
    }
}
