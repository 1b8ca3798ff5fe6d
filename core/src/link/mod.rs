//! One peer pair: relay first, punch in parallel, switch to the first validated direct path,
//! keep the relay warm, fall back fast, re-punch when an address changes.
//!
//! A [`Link`] is a sans-IO state machine. It is driven by the [`crate::mesh::Mesh`] that owns
//! the socket, which routes datagrams to it by link id:
//!
//! - [`Link::handle_peer`] for peer datagrams, [`Link::handle_relay`] for relay bind-acks,
//!   [`Link::handle_timeout`] when [`Link::poll_timeout`] passes;
//! - [`Link::poll_transmit`] and [`Link::poll_event`] for output.
//!
//! renet's channels ride above whichever path is in use: a reliable message lost on a dying
//! path is re-sent on the next one, and renet's sequence numbers drop the duplicates, so a
//! path switch loses and duplicates nothing.

mod candidate;
mod relays;

pub use crate::proto::intro::{LinkParams, RelayParams};

pub use candidate::{
    Candidate, CandidateKind, MAX_PORT_DELTA, NatHint, Refusal, Scope, clamp_port_delta, clean_candidates,
    is_probeable, predict, scope,
};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use renet::{ChannelConfig, ConnectionConfig, RenetClient, SendType};
use serde::{Deserialize, Serialize};

use crate::config::LinkConfig;
use crate::crypto::{LinkCrypto, OpenError};
pub use crate::endpoint::ClockAnchor;
use crate::endpoint::Transmit;
use crate::proto::peer::{LinkId, PeerKind, Side};
use crate::proto::relay::{BindAck, BindRequest, MAX_PADDED_BIND};
use relays::{BindAttempt, RelayState};

/// The renet channel for the application's reliable, ordered messages.
pub const CHANNEL_RELIABLE: u8 = 0;
/// The renet channel for the application's unreliable messages (latest-state updates).
pub const CHANNEL_UNRELIABLE: u8 = 1;
/// Internal reliable channel for link control (candidate updates).
const CHANNEL_CONTROL: u8 = 2;
/// Buffer of the reliable application channel (unacked + queued bytes).
const RELIABLE_MEMORY: usize = 5 << 20;
const CONTROL_MEMORY: usize = 1 << 20;

/// RTT samples a link keeps for [`Link::rtt_stats`].
pub const RTT_WINDOW: usize = 128;

/// A link's RTT figures ([`Link::rtt_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttStats {
    /// Smoothed RTT (as [`Link::rtt`]).
    pub smoothed: Duration,
    /// RTT variation (RFC 6298 `RTTVAR`).
    pub jitter: Duration,
    /// 99th percentile of the recent samples.
    pub p99: Option<Duration>,
    /// Smallest recent sample.
    pub min: Option<Duration>,
    /// Samples in the window.
    pub samples: usize,
}

/// The path the link currently sends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// No usable path yet (or any more).
    None,
    /// Through the relay at this address.
    Relayed {
        /// The relay's address.
        relay: SocketAddr,
    },
    /// Straight to the peer at this address.
    Direct {
        /// The peer's validated address.
        remote: SocketAddr,
    },
}

impl Path {
    /// `"relayed"`, `"direct"` or `"none"`.
    pub fn name(&self) -> &'static str {
        match self {
            Path::None => "none",
            Path::Relayed { .. } => "relayed",
            Path::Direct { .. } => "direct",
        }
    }
}

/// Something the application or the mesh should know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The path we send on changed (the first one means "connected").
    Path(Path),
    /// The peer has not answered anything for `link_timeout`: the session is dead for now.
    Lost,
    /// A lost link heard from its peer again.
    Recovered,
    /// The relay saw us at a different public address than before (our NAT mapping changed).
    ObservedAddressChanged(SocketAddr),
    /// The direct path died: the mesh should re-check our public address.
    DirectPathFailed(SocketAddr),
    /// The peer's renet layer sent something renet refused (undecodable, unknown channel,
    /// invalid slice, over budget) or that made renet panic: the link is unusable for good
    /// (reported once; [`Link::broken`] says why). Other links are unaffected.
    Broken,
}

/// Why a link broke ([`LinkEvent::Broken`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakReason {
    /// renet refused the peer's packet and closed its connection.
    RenetError,
    /// renet panicked on the peer's packet (caught; its state was thrown away).
    RenetPanic,
}

/// Counters of one link, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams sent straight to the peer.
    pub direct_sent: u64,
    /// Bytes sent straight to the peer.
    pub direct_bytes_sent: u64,
    /// Datagrams sent to the relay (data, keepalives, binds).
    pub relay_sent: u64,
    /// Bytes sent to the relay.
    pub relay_bytes_sent: u64,
    /// Authenticated datagrams received directly.
    pub direct_received: u64,
    /// Authenticated datagrams received through the relay.
    pub relay_received: u64,
    /// Authenticated datagrams that came directly while in privacy mode
    /// ([`LinkConfig::relay_only`](crate::config::LinkConfig::relay_only)): dropped unanswered.
    pub direct_refused: u64,
    /// Authenticated bytes received (both paths).
    pub bytes_received: u64,
    /// Probes sent.
    pub probes_sent: u64,
    /// Datagrams for this link that failed authentication or the replay check.
    pub rejected: u64,
    /// Direct paths that failed and fell back.
    pub failovers: u64,
    /// Times the direct path went unanswered for the suspicion timeout (or the peer moved to
    /// the relay) and sending moved to the relay; most end in a failover, a few (a late
    /// answer on a jittery path) in a return to the direct path.
    pub suspicions: u64,
    /// Candidates from the peer's updates refused: a private, loopback or link-local address
    /// when the shard's list held none (the shard judged the two are not behind one NAT).
    pub candidates_refused: u64,
    /// Peer data datagrams ignored because the link is broken.
    pub dropped_broken: u64,
    /// Times the link changed the relay it sends through (a move by the shard, a failover to
    /// the standby, following the peer).
    pub relay_switches: u64,
    /// Times the relay in use went unanswered (or the peer left it) while a spare was bound.
    pub relay_suspicions: u64,
}

/// Liveness of one path: when we last heard on it, and the oldest send not yet answered.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    last_send: Instant,
    last_recv: Option<Instant>,
    unanswered_since: Option<Instant>,
    last_ping: Option<Instant>,
    /// The first ack of the peer's messages we sent since we last heard on the path (the
    /// receiving end of a one-way stream sends nothing else).
    acked_since: Option<Instant>,
}

impl Liveness {
    fn new(now: Instant) -> Self {
        Self { last_send: now, last_recv: None, unanswered_since: None, last_ping: None, acked_since: None }
    }
    fn sent(&mut self, now: Instant) {
        self.last_send = now;
        self.unanswered_since.get_or_insert(now);
    }
    fn received(&mut self, now: Instant) {
        self.last_recv = Some(now);
        self.unanswered_since = None;
        self.acked_since = None;
    }
}

#[derive(Debug, Clone, Copy)]
struct DirectPath {
    addr: SocketAddr,
    /// The local socket the path was validated from (`None` = the mesh socket).
    local: Option<SocketAddr>,
    kind: CandidateKind,
    live: Liveness,
    /// The path went unanswered for the suspicion timeout (or the peer moved to the relay)
    /// at this instant: we send on the relay and keep pinging here until an answer to one of
    /// our own datagrams clears it, or `path_timeout` declares the path dead.
    suspected_at: Option<Instant>,
    /// The peer's last renet datagram (messages or acks) that came over this path.
    last_peer_data: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Remote {
    cand: Candidate,
    validated: bool,
}

#[derive(Debug, Clone, Copy)]
struct Punch {
    started: Instant,
    until: Instant,
    next_round: Instant,
    /// The birthday-paradox stage ran (or does not apply) in this punch.
    birthday_tried: bool,
}

/// Birthday-paradox punching between a random-port symmetric NAT and an endpoint-
/// independent one (whose filter is port-restricted, or it would have punched already).
#[derive(Debug, Clone, Copy)]
struct Birthday {
    role: BirthdayRole,
    next: Instant,
    sent: u32,
}

#[derive(Debug, Clone, Copy)]
enum BirthdayRole {
    /// We are behind the symmetric NAT: open `birthday_sockets` extra local ports, each
    /// probing the peer's one public mapping, so our NAT holds that many open mappings.
    Sockets { host: SocketAddr },
    /// We are the endpoint-independent side: spray probes at random ports of the peer's IP
    /// until one lands on an open mapping.
    Spray { ip: std::net::IpAddr },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Connected,
    Lost,
}

/// Largest control message we send or accept (a candidate list is far smaller).
const MAX_CONTROL_MESSAGE: usize = 64 * 1024;

/// Internal control messages on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Control {
    /// The sender's current candidates (sent when its public address changes).
    Candidates(Vec<Candidate>),
}

/// One peer pair. See the module docs.
pub struct Link {
    cfg: LinkConfig,
    id: LinkId,
    side: Side,
    clock: ClockAnchor,
    crypto: LinkCrypto,
    renet: RenetClient,
    renet_time: Instant,
    remote: Vec<Remote>,
    remote_nat: NatHint,
    /// The shard's list held private (`[0]`) / loopback (`[1]`) candidates: the peers share
    /// a NAT / a host, so the peer's updates may list such addresses.
    allow_local: [bool; 2],
    local: Vec<Candidate>,
    /// The relay we send through (when relayed).
    relay: Option<RelayState>,
    /// Other relays kept bound: the shard's standby, the relay a move goes to, or the one
    /// the link left (see `relays`).
    spares: Vec<RelayState>,
    /// The relay the shard wants the link on (the introduction's, then each `RelayRefresh`).
    primary: Option<SocketAddr>,
    /// The shard's standby relay (`RelayStandby`).
    standby: Option<SocketAddr>,
    direct: Option<DirectPath>,
    punch: Option<Punch>,
    next_repunch: Option<Instant>,
    /// Outstanding probes: id, destination, local socket (`None` = mesh socket), sent at.
    probes: VecDeque<(u64, SocketAddr, Option<SocketAddr>, Instant)>,
    /// Our own NAT, as discovery saw it (decides our birthday-paradox role).
    local_nat: NatHint,
    birthday: Option<Birthday>,
    rng: ChaCha8Rng,
    next_probe_id: u64,
    pings: VecDeque<(u64, Instant)>,
    live: Liveness,
    state: State,
    reported: Path,
    srtt: Option<Duration>,
    /// RTT variation (RFC 6298 `RTTVAR`): the jitter a game shows.
    rttvar: Duration,
    /// The last [`RTT_WINDOW`] RTT samples on the current path (for percentiles).
    rtt_window: VecDeque<Duration>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<LinkEvent>,
    dirty: bool,
    /// A message-bearing renet packet arrived; its ack must leave by this time.
    ack_due: Option<Instant>,
    /// [`Link::poll_timeout`], recomputed at the end of every input (the mesh asks for it
    /// after every datagram, for every link).
    timeout: Option<Instant>,
    /// Scratch buffer for decrypted datagrams (no allocation per datagram received).
    plaintext: Vec<u8>,
    /// renet holds unacked reliable messages (application or control channel). Set on a
    /// reliable send, re-read from renet only after it processed a packet (acks free its
    /// memory nowhere else), so the deadline costs no lookups into renet's maps.
    reliable_pending: bool,
    /// Set once renet refused the peer's data or panicked on it; the link then ignores peer
    /// data and `renet` is a closed connection.
    broken: Option<BreakReason>,
    /// Test-only fault injection: renet "panics" on the next peer data datagram.
    #[cfg(test)]
    pub(crate) panic_on_data: bool,
    now: Instant,
    stats: LinkStats,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.id)
            .field("side", &self.side)
            .field("path", &self.path())
            .finish()
    }
}

/// The renet channel layout both ends of every link use (renet is symmetric when a client's
/// send and receive channel lists are the same).
///
/// The order is the send priority within a packet budget (renet fills channels in list
/// order): link control, then unreliable state, then reliable data, so bulk reliable data
/// cannot starve per-tick state. Ids, not order, must match between the two ends.
fn channels(cfg: &LinkConfig) -> Vec<ChannelConfig> {
    let reliable = SendType::ReliableOrdered { resend_time: cfg.reliable_resend };
    vec![
        ChannelConfig {
            channel_id: CHANNEL_CONTROL,
            max_memory_usage_bytes: CONTROL_MEMORY,
            send_type: reliable.clone(),
        },
        ChannelConfig {
            channel_id: CHANNEL_UNRELIABLE,
            max_memory_usage_bytes: 1 << 20,
            send_type: SendType::Unreliable,
        },
        ChannelConfig {
            channel_id: CHANNEL_RELIABLE,
            max_memory_usage_bytes: RELIABLE_MEMORY,
            send_type: reliable,
        },
    ]
}

impl Link {
    /// Open a link at `now`: binds at the relay and starts probing at once.
    /// `local` are our own candidates (sent to the peer again if they change), `local_nat`
    /// what discovery learned of our NAT.
    pub fn new(
        now: Instant,
        params: LinkParams,
        local: Vec<Candidate>,
        local_nat: NatHint,
        cfg: LinkConfig,
        clock: ClockAnchor,
    ) -> Self {
        // Spray ports are the only randomness; seed it from the link key so runs repeat.
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&params.key.0);
        seed[0] ^= params.side.to_byte().wrapping_add(1);
        let channels = channels(&cfg);
        let mut renet = RenetClient::new(ConnectionConfig {
            available_bytes_per_tick: 60_000,
            server_channels_config: channels.clone(),
            client_channels_config: channels,
        });
        renet.set_connected();
        // The peer's list comes from the shard, but a link does not trust it either: capped
        // and de-duplicated in linear time before anything else looks at it, the NAT hint's
        // port step clamped before port prediction.
        let remote_nat = params.remote_nat.sanitized();
        let listed = clean_candidates(&params.remote, cfg.max_candidates);
        let predicted = predict(&listed, &remote_nat, cfg.prediction_span);
        // The shard passes private / loopback candidates only between players behind one
        // NAT; the peer's later updates may add such addresses only in that case.
        let allow_local =
            [Locality::Lan, Locality::Host].map(|l| listed.iter().any(|c| locality(&c.addr) == Some(l)));
        let remote: Vec<Remote> = clean_candidates(listed.iter().chain(predicted.iter()), cfg.max_candidates)
            .into_iter()
            .map(|cand| Remote { cand, validated: false })
            .collect();
        let primary = params.relay.as_ref().map(|p| p.addr);
        let relay = params.relay.map(|p| RelayState::new(now, p, 0));
        // Privacy mode: our candidates are never sent, theirs never probed.
        let (local, remote) = if cfg.relay_only { (Vec::new(), Vec::new()) } else { (local, remote) };
        let mut link = Link {
            crypto: LinkCrypto::new(&params.key, params.link, params.side),
            id: params.link,
            side: params.side,
            clock,
            renet,
            renet_time: now,
            remote,
            remote_nat,
            allow_local,
            local_nat,
            birthday: None,
            rng: ChaCha8Rng::from_seed(seed),
            local,
            relay,
            spares: Vec::new(),
            primary,
            standby: None,
            direct: None,
            punch: None,
            next_repunch: None,
            probes: VecDeque::new(),
            next_probe_id: 1,
            pings: VecDeque::new(),
            live: Liveness::new(now),
            state: State::Connecting,
            reported: Path::None,
            srtt: None,
            rttvar: Duration::ZERO,
            rtt_window: VecDeque::with_capacity(RTT_WINDOW),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            dirty: false,
            ack_due: None,
            timeout: None,
            plaintext: Vec::new(),
            reliable_pending: false,
            broken: None,
            #[cfg(test)]
            panic_on_data: false,
            now,
            stats: LinkStats::default(),
            cfg,
        };
        link.start_bind(now);
        link.start_punch(now);
        link.flush(now);
        link
    }

    /// This link's id.
    pub fn id(&self) -> LinkId {
        self.id
    }

    /// Our side of the link.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The path we currently send on.
    pub fn path(&self) -> Path {
        let relay = self.relay.as_ref().filter(|r| r.usable()).map(|r| r.params.addr);
        match (&self.direct, relay) {
            // A suspect direct path gives way to the relay (if there is one to give way to).
            (Some(d), Some(relay)) if d.suspected_at.is_some() => Path::Relayed { relay },
            (Some(d), _) => Path::Direct { remote: d.addr },
            (None, Some(relay)) => Path::Relayed { relay },
            (None, None) => Path::None,
        }
    }

    /// True once the peer has gone silent for `link_timeout` (until it is heard again).
    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Smoothed round-trip time to the peer on the current path: from probe and keepalive
    /// answers, or — on a busy path that needs neither — renet's estimate from its acks
    /// (which includes the peer's ack delay, ≤ `ack_delay`).
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt.or_else(|| {
            let r = self.renet.rtt();
            (r.is_finite() && r > 0.0).then(|| Duration::from_secs_f64(r))
        })
    }

    /// Fraction of our datagrams the peer did not acknowledge (renet's estimate over its
    /// recent window, 0–1), whatever path carried them.
    pub fn packet_loss(&self) -> f32 {
        self.renet.packet_loss() as f32
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Why the link broke, if it did ([`LinkEvent::Broken`]).
    pub fn broken(&self) -> Option<BreakReason> {
        self.broken
    }

    /// The peer's data broke renet: close the link's renet connection for good (after a
    /// panic, replace it — a value that panicked mid-update is not trusted again) and report
    /// it once.
    fn break_link(&mut self, reason: BreakReason) {
        if self.broken.is_some() {
            return;
        }
        if reason == BreakReason::RenetPanic {
            let channels = channels(&self.cfg);
            self.renet = RenetClient::new(ConnectionConfig {
                available_bytes_per_tick: 0,
                server_channels_config: channels.clone(),
                client_channels_config: channels,
            });
        }
        self.renet.disconnect();
        self.reliable_pending = false;
        self.ack_due = None;
        self.broken = Some(reason);
        self.events.push_back(LinkEvent::Broken);
    }

    /// Our public address as the relay last saw it.
    pub fn observed_address(&self) -> Option<SocketAddr> {
        self.relay.as_ref().and_then(|r| r.observed)
    }

    /// Queue an application message on `channel` ([`CHANNEL_RELIABLE`] or
    /// [`CHANNEL_UNRELIABLE`]); it leaves at the next `handle_timeout`, which
    /// [`Link::poll_timeout`] asks for at once. Returns false (and drops it) if the channel's
    /// buffer is full, the channel does not exist or the link is [broken](Link::broken).
    pub fn send(&mut self, channel: u8, message: impl Into<Bytes>) -> bool {
        let message = message.into();
        if channel > CHANNEL_UNRELIABLE
            || self.broken.is_some()
            || !self.renet.can_send_message(channel, message.len())
        {
            return false;
        }
        self.renet.send_message(channel, message);
        if channel == CHANNEL_RELIABLE {
            self.reliable_pending = self.renet_reliable_pending();
        }
        self.dirty = true;
        self.timeout = Some(self.now);
        true
    }

    /// Next application message received on `channel`.
    pub fn receive(&mut self, channel: u8) -> Option<Bytes> {
        if channel > CHANNEL_UNRELIABLE {
            return None;
        }
        self.renet.receive_message(channel)
    }

    /// Our own candidates changed (e.g. a new public address): tell the peer and re-punch.
    pub fn set_local_candidates(&mut self, now: Instant, local: Vec<Candidate>) {
        if local == self.local || self.cfg.relay_only {
            return;
        }
        self.local = local;
        self.send_candidates();
        self.start_punch(now);
        self.flush(now);
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// When to call [`Link::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timeout
    }

    fn compute_timeout(&self) -> Option<Instant> {
        if self.dirty {
            return Some(self.now);
        }
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(r) = &self.relay {
            if let Some(a) = r.attempt {
                at(a.next_retry);
            } else if self.cfg.keepalive || !r.bound {
                at(r.next_refresh);
            }
            if self.direct.is_none()
                && let Some(t) = r.rescue_at(self.path_timeout())
            {
                at(t);
            }
            if let Some(t) = r.optimistic_until.filter(|_| !r.confirmed()) {
                at(t);
            }
        }
        if let Some(t) = self.spares_timeout() {
            at(t);
        }
        if let Some(t) = self.relay_suspect_at() {
            at(t);
        }
        if let Some(b) = &self.birthday {
            at(b.next);
        }
        if let Some(p) = &self.punch {
            at(p.next_round.min(p.until));
            if !p.birthday_tried && self.direct.is_none() {
                at(p.started + self.cfg.birthday_after);
            }
        } else if let Some(r) = self.next_repunch {
            at(r);
        }
        if let Some(d) = &self.direct {
            if let Some(u) = d.live.unanswered_since {
                at(u + self.path_timeout());
                if d.suspected_at.is_none() {
                    at(u + self.suspect_timeout());
                }
            }
            if let Some(s) = d.suspected_at {
                at(s + self.path_timeout());
            }
            if let Some(p) = self.next_direct_ping(d) {
                at(p);
            }
            if self.cfg.keepalive {
                at(d.live.last_send + self.cfg.keepalive_interval);
            }
        } else if let Some(r) = self.relay.as_ref().filter(|r| r.bound && r.peer_bound && self.cfg.keepalive)
        {
            at(r.live.last_send + self.cfg.keepalive_interval);
        }
        if let (Some(u), false) = (self.live.unanswered_since, self.state == State::Lost) {
            at(u + self.cfg.link_timeout);
        }
        // renet's reliable channels re-send on their own clock while anything is unacked
        if let Some(t) = self.ack_due.filter(|_| self.path() != Path::None) {
            at(t);
        }
        if self.path() != Path::None && self.reliable_pending() {
            at(self.renet_time + self.cfg.reliable_resend / 2);
        }
        t
    }

    fn reliable_pending(&self) -> bool {
        self.reliable_pending
    }

    fn renet_reliable_pending(&self) -> bool {
        self.renet.channel_available_memory(CHANNEL_RELIABLE) < RELIABLE_MEMORY
            || self.renet.channel_available_memory(CHANNEL_CONTROL) < CONTROL_MEMORY
    }

    fn path_timeout(&self) -> Duration {
        self.cfg.path_timeout.max(self.srtt.map_or(Duration::ZERO, |r| r * 4))
    }

    /// How long a send may go unanswered on the direct path before we suspect it: the
    /// answer to a send takes one RTT plus the peer's ack delay; half an RTT more covers
    /// jitter, `path_suspect_after` the paths whose RTT is tiny or unknown. (No RTT variance
    /// term: a busy path gets almost no samples after punching, so the variance would stay
    /// at its first guess.)
    fn suspect_timeout(&self) -> Duration {
        let rtt = self.srtt.map_or(Duration::ZERO, |r| r + r / 2);
        self.cfg.path_suspect_after.max(rtt + self.cfg.ack_delay)
    }

    /// When to ask the direct path for an answer (a keepalive), if at all: at once and every
    /// `path_ping_after` while it is suspect; `path_ping_after` into the silence after an
    /// unanswered send; and `path_ping_after` after we acked the peer's messages and heard
    /// nothing more — the receiving end of a one-way stream sends nothing that expects an
    /// answer, and this is how it notices that the path died under the stream.
    fn next_direct_ping(&self, d: &DirectPath) -> Option<Instant> {
        let after = self.cfg.path_ping_after;
        if let Some(s) = d.suspected_at {
            return Some(d.live.last_ping.filter(|p| *p >= s).map_or(s, |p| p + after));
        }
        let since = d.live.unanswered_since.or(d.live.acked_since)?;
        Some(d.live.last_ping.filter(|p| *p >= since).unwrap_or(since) + after)
    }

    /// Drive timers: bind retries and refreshes, probe rounds, keepalives, failure detection.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.relay_timers(now);
        self.punch_timers(now);
        self.direct_timers(now);
        if self.cfg.keepalive && self.direct.is_none() {
            let idle_relay = self
                .relay
                .as_ref()
                .filter(|r| r.bound && r.peer_bound && now >= r.live.last_send + self.cfg.keepalive_interval)
                .map(|r| r.params.addr);
            if let Some(addr) = idle_relay {
                self.send_ping(now, addr);
            }
        }
        if let Some(u) = self.live.unanswered_since
            && self.state != State::Lost
            && now >= u + self.cfg.link_timeout
        {
            self.state = State::Lost;
            self.events.push_back(LinkEvent::Lost);
            if let Some(d) = self.direct.take() {
                self.stats.failovers += 1;
                self.events.push_back(LinkEvent::DirectPathFailed(d.addr));
            }
            self.next_repunch = Some(now + self.cfg.repunch_interval.min(self.cfg.link_timeout));
        }
        self.flush(now);
    }

    fn relay_timers(&mut self, now: Instant) {
        if let Some(r) = self.relay.as_mut()
            && r.optimistic_until.is_some_and(|t| now >= t)
        {
            r.optimistic_until = None;
        }
        let (timeout, direct) = (self.path_timeout(), self.direct.is_some());
        // On the relayed path, silence after our sends may mean the relay restarted and lost
        // our binding: bind again now (at most once a second) rather than at the next refresh
        // (15 s) or the link timeout (10 s).
        if let Some(r) = self.relay.as_mut().filter(|_| !direct)
            && r.rescue_at(timeout).is_some_and(|t| now >= t)
        {
            r.last_rescue = Some(now);
            self.start_bind(now);
        }
        for addr in self.relay_addrs() {
            self.bind_timer(now, addr);
        }
        self.relay_suspicion(now);
        self.trim_relays(now);
        self.select_relay(now);
    }

    fn punch_timers(&mut self, now: Instant) {
        if let Some(p) = self.punch
            && !p.birthday_tried
            && self.direct.is_none()
            && now >= p.started + self.cfg.birthday_after
        {
            self.birthday = self.birthday_role().map(|role| Birthday { role, next: now, sent: 0 });
            if let Some(p) = self.punch.as_mut() {
                p.birthday_tried = true;
            }
        }
        if let Some(b) = self.birthday
            && now >= b.next
        {
            self.birthday_tick(now, b);
        }
        if let Some(p) = self.punch {
            if now >= p.until {
                self.punch = None;
                self.birthday = None;
                if self.direct.is_none() {
                    self.next_repunch = Some(now + self.cfg.repunch_interval);
                }
            } else if now >= p.next_round {
                self.probe_round(now);
                if let Some(p) = self.punch.as_mut() {
                    p.next_round = now + self.cfg.probe_interval;
                }
            }
        } else if let Some(r) = self.next_repunch
            && now >= r
        {
            self.next_repunch = None;
            self.start_punch(now);
        }
    }

    /// Our part in birthday-paradox punching, if the NAT pair calls for it.
    fn birthday_role(&self) -> Option<BirthdayRole> {
        let random = |h: &NatHint| h.dependent_mapping && h.port_delta.is_none();
        let peer_public =
            self.remote.iter().find(|r| r.cand.kind == CandidateKind::ServerReflexive)?.cand.addr;
        if self.cfg.birthday_sockets > 0 && random(&self.local_nat) && !self.remote_nat.dependent_mapping {
            let host = self.local.iter().find(|c| c.kind == CandidateKind::Host)?.addr;
            Some(BirthdayRole::Sockets { host })
        } else if self.cfg.birthday_probes > 0
            && random(&self.remote_nat)
            && !self.local_nat.dependent_mapping
        {
            Some(BirthdayRole::Spray { ip: peer_public.ip() })
        } else {
            None
        }
    }

    fn birthday_tick(&mut self, now: Instant, mut b: Birthday) {
        match b.role {
            BirthdayRole::Sockets { host } => {
                let targets: Vec<SocketAddr> = self
                    .remote
                    .iter()
                    .filter(|r| r.cand.kind == CandidateKind::ServerReflexive)
                    .map(|r| r.cand.addr)
                    .collect();
                for k in 0..self.cfg.birthday_sockets {
                    let Some(port) = host.port().checked_add(BIRTHDAY_PORT_OFFSET + k) else { break };
                    let src = SocketAddr::new(host.ip(), port);
                    for t in &targets {
                        self.send_probe_from(now, Some(src), *t);
                    }
                }
                // Re-probe now and then: keeps our NAT's mappings alive while the peer sprays.
                b.next = now + Duration::from_secs(1);
            }
            BirthdayRole::Spray { ip } => {
                let batch = self.cfg.birthday_batch.min(self.cfg.birthday_probes.saturating_sub(b.sent));
                for _ in 0..batch {
                    let port = self.rng.random_range(1024..=u16::MAX);
                    self.send_probe(now, SocketAddr::new(ip, port));
                }
                b.sent += batch;
                b.next = now + self.cfg.probe_interval;
                if b.sent >= self.cfg.birthday_probes {
                    self.birthday = None;
                    return;
                }
            }
        }
        self.birthday = Some(b);
    }

    fn direct_timers(&mut self, now: Instant) {
        let Some(d) = self.direct else { return };
        let dead_after = self.path_timeout();
        // Dead: a send unanswered for `path_timeout`, or suspect that long without an answer
        // to our pings (the peer's own datagrams may still reach us on a one-way failure).
        if d.live.unanswered_since.is_some_and(|u| now >= u + dead_after)
            || d.suspected_at.is_some_and(|s| now >= s + dead_after)
        {
            self.fail_direct(now);
            return;
        }
        if d.suspected_at.is_none()
            && d.live.unanswered_since.is_some_and(|u| now >= u + self.suspect_timeout())
        {
            self.suspect_direct(now);
            return;
        }
        let ask = self.next_direct_ping(&d).is_some_and(|t| now >= t);
        let keepalive = self.cfg.keepalive
            && d.live.unanswered_since.is_none()
            && now >= d.live.last_send + self.cfg.keepalive_interval;
        if ask || keepalive {
            self.send_ping(now, d.addr);
        }
    }

    /// The direct path looks dead: send on the relay from now on (at once — the relay stays
    /// bound while we are direct), keep pinging the direct path and return to it when it
    /// answers. A spurious suspicion (a late answer) costs a relay detour of about one RTT.
    fn suspect_direct(&mut self, now: Instant) {
        let Some(d) = self.direct.as_mut() else { return };
        if d.suspected_at.is_some() {
            return;
        }
        d.suspected_at = Some(now);
        let addr = d.addr;
        self.stats.suspicions += 1;
        // Our own address may have changed (then the relay must learn the new one before it
        // can carry our data): re-bind now.
        if self.relay.as_ref().is_some_and(|r| r.attempt.is_none()) {
            self.start_bind(now);
        }
        self.send_ping(now, addr);
        // Tell the peer at once (an ack through the relay, if renet has anything to
        // acknowledge) rather than with our next message: the receiving end of a one-way
        // stream follows us to the relay when our data arrives there (see `handle_peer`).
        self.ack_due = Some(now);
        // One probe round: if the peer moved to an address we know of (one it reached us
        // from), the pair validates within an RTT and replaces the suspect one.
        self.probe_round(now);
    }

    fn fail_direct(&mut self, now: Instant) {
        let Some(d) = self.direct.take() else { return };
        self.stats.failovers += 1;
        self.events.push_back(LinkEvent::DirectPathFailed(d.addr));
        for r in self.remote.iter_mut().filter(|r| r.cand.addr == d.addr) {
            r.validated = false;
        }
        // Our own address may have changed: re-bind now so the relay follows us (unless the
        // suspicion did already), and punch again.
        if d.suspected_at.is_none() && self.relay.as_ref().is_some_and(|r| r.attempt.is_none()) {
            self.start_bind(now);
        }
        self.start_punch(now);
    }

    /// Bind at the relay in use (a new attempt).
    fn start_bind(&mut self, now: Instant) {
        if let Some(addr) = self.relay.as_ref().map(|r| r.params.addr) {
            self.start_bind_at(now, addr);
        }
    }

    /// Bind at the relay at `addr` (in use or spare): a new attempt.
    fn start_bind_at(&mut self, now: Instant, addr: SocketAddr) {
        let Some(r) = self.relay_ref(addr) else { return };
        let first_counter = self.clock.unix_micros_at(now).max(r.last_counter + 1);
        let refresh = self.refresh_interval(r);
        let rto = self.cfg.relay_bind_rto;
        let Some(r) = self.relay_mut(addr) else { return };
        r.attempt = Some(BindAttempt { first_counter, tries: 1, next_retry: now + rto });
        r.next_refresh = now + refresh;
        self.send_bind_at(now, addr);
    }

    /// Until the peer is bound too, re-bind every second: the relay's "peer bound"
    /// notification may be withheld (anti-amplification) or lost.
    fn refresh_interval(&self, r: &RelayState) -> Duration {
        if r.bound && !r.peer_bound { Duration::from_secs(1) } else { self.cfg.relay_refresh_interval }
    }

    /// Send a Bind with a fresh counter: every Bind, retransmissions included, must carry a
    /// counter above the last one the relay accepted, or the relay takes it for a replay.
    fn send_bind_at(&mut self, now: Instant, addr: SocketAddr) {
        let Some(r) = relays::slot(&mut self.relay, &mut self.spares, addr) else { return };
        let counter = self.clock.unix_micros_at(now).max(r.last_counter + 1);
        r.last_counter = counter;
        let bytes =
            BindRequest::encode(self.id, self.side, &r.params.token, &r.params.bind_key, counter, r.cookie);
        let dst = r.params.addr;
        self.stats.relay_sent += 1;
        self.stats.relay_bytes_sent += bytes.len() as u64;
        let mut payload = bytes.to_vec();
        if !r.validated {
            // Earn an anti-amplification allowance for the first relayed data (see MAX_PADDED_BIND).
            payload.resize(MAX_PADDED_BIND, 0);
        }
        self.transmits.push_back(Transmit { src: None, dst, payload });
    }

    /// A datagram for the relay at `dst` while the relay has not confirmed both sides bound
    /// goes in a BindData (zero-round-trip relay): it binds us (a fresh counter, our latest
    /// cookie, padded while our address is not validated) and the relay forwards the data,
    /// or holds it until the peer binds. Anything else is returned as it is.
    fn with_bind_proof(&mut self, now: Instant, dst: SocketAddr, datagram: Vec<u8>) -> Vec<u8> {
        let Some(r) = relays::slot(&mut self.relay, &mut self.spares, dst).filter(|r| !r.confirmed()) else {
            return datagram;
        };
        let counter = self.clock.unix_micros_at(now).max(r.last_counter + 1);
        let pad = if r.validated { 0 } else { MAX_PADDED_BIND };
        match BindRequest::encode_with_data(
            self.id,
            self.side,
            &r.params.token,
            &r.params.bind_key,
            counter,
            r.cookie,
            &datagram,
            pad,
        ) {
            Some(b) => {
                r.last_counter = counter;
                b
            }
            None => {
                // Too long to carry: bind on its own, the data follows as it is.
                self.send_bind_at(now, dst);
                datagram
            }
        }
    }

    fn start_punch(&mut self, now: Instant) {
        if self.remote.is_empty() || self.cfg.relay_only {
            return;
        }
        self.next_repunch = None;
        let until = now + self.cfg.punch_timeout;
        match self.punch.as_mut() {
            Some(p) => p.until = p.until.max(until),
            None => self.punch = Some(Punch { started: now, until, next_round: now, birthday_tried: false }),
        }
        self.probe_round(now);
        if let Some(p) = self.punch.as_mut() {
            p.next_round = now + self.cfg.probe_interval;
        }
    }

    fn probe_round(&mut self, now: Instant) {
        let targets: Vec<SocketAddr> = self.remote.iter().map(|r| r.cand.addr).collect();
        for addr in targets {
            self.send_probe(now, addr);
        }
    }

    fn send_probe(&mut self, now: Instant, addr: SocketAddr) {
        self.send_probe_from(now, None, addr);
    }

    fn send_probe_from(&mut self, now: Instant, src: Option<SocketAddr>, addr: SocketAddr) {
        let id = self.next_probe_id;
        self.next_probe_id += 1;
        self.probes.push_back((id, addr, src, now));
        let cap = (4 * self.cfg.max_candidates)
            .max(self.cfg.birthday_probes as usize + 4 * self.cfg.birthday_sockets as usize);
        while self.probes.len() > cap {
            self.probes.pop_front();
        }
        let d = self.crypto.seal(PeerKind::Probe, &id.to_be_bytes());
        self.stats.probes_sent += 1;
        self.send_on_path(now, src, addr, d, true);
    }

    fn send_ping(&mut self, now: Instant, addr: SocketAddr) {
        let id = self.next_probe_id;
        self.next_probe_id += 1;
        self.pings.push_back((id, now));
        if self.pings.len() > 16 {
            self.pings.pop_front();
        }
        if let Some(d) = self.direct.as_mut().filter(|d| d.addr == addr) {
            d.live.last_ping = Some(now);
        }
        let d = self.crypto.seal(PeerKind::Keepalive, &id.to_be_bytes());
        self.raw_send(now, addr, d);
    }

    /// Send a datagram that the peer answers (keepalive, message-bearing data), from the
    /// socket the direct path to `addr` uses.
    fn raw_send(&mut self, now: Instant, addr: SocketAddr, bytes: Vec<u8>) {
        let src = self.direct.filter(|d| d.addr == addr).and_then(|d| d.local);
        self.send_on_path(now, src, addr, bytes, true);
    }

    /// Send bytes to `addr`, updating the counters and, if the peer will answer this
    /// datagram, the liveness of the path it belongs to. Answers themselves (acks) must not
    /// count, or two idle peers would keep asking each other for answers forever.
    fn send_on_path(
        &mut self,
        now: Instant,
        src: Option<SocketAddr>,
        addr: SocketAddr,
        bytes: Vec<u8>,
        expects_answer: bool,
    ) {
        let len = bytes.len() as u64;
        if let Some(r) = relays::slot(&mut self.relay, &mut self.spares, addr) {
            r.live.last_send = now;
            if expects_answer {
                r.live.sent(now);
                self.live.sent(now);
            }
            self.stats.relay_sent += 1;
            self.stats.relay_bytes_sent += len;
        } else {
            if let Some(d) = self.direct.as_mut().filter(|d| d.addr == addr) {
                d.live.last_send = now;
                if expects_answer {
                    d.live.sent(now);
                    self.live.sent(now);
                }
            }
            self.stats.direct_sent += 1;
            self.stats.direct_bytes_sent += len;
        }
        self.transmits.push_back(Transmit { src, dst: addr, payload: bytes });
    }

    fn send_candidates(&mut self) {
        let msg = Control::Candidates(self.local.clone());
        if let Ok(bytes) = crate::codec::encode(&msg, MAX_CONTROL_MESSAGE) {
            self.renet.send_message(CHANNEL_CONTROL, bytes);
            self.reliable_pending = self.renet_reliable_pending();
            self.dirty = true;
        }
    }

    /// A relay control datagram (bind-ack) addressed to this link arrived from `from`.
    pub fn handle_relay(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Result<(), OpenError> {
        self.now = now;
        let in_use = self.relay.as_ref().is_some_and(|r| r.params.addr == from);
        let Some(r) = relays::slot(&mut self.relay, &mut self.spares, from) else {
            self.stats.rejected += 1;
            return Err(OpenError::WrongLink);
        };
        let Ok(ack) = BindAck::decode_verified(bytes, &r.params.bind_key) else {
            self.stats.rejected += 1;
            return Err(OpenError::Auth);
        };
        if ack.counter > r.last_counter {
            self.stats.rejected += 1;
            return Err(OpenError::Replay);
        }
        if r.attempt.is_some_and(|a| ack.counter >= a.first_counter) {
            r.attempt = None;
        }
        let needs_confirm = !ack.validated && !ack.cookie.is_none() && ack.cookie != r.cookie;
        let was_peer_bound = r.peer_bound;
        r.bound = true;
        r.peer_bound = ack.peer_bound;
        r.validated = ack.validated;
        if !ack.cookie.is_none() {
            r.cookie = ack.cookie;
        }
        r.live.received(now);
        // An answer to our own Bind: the relay works both ways.
        r.suspected_at = None;
        if r.peer_bound && !was_peer_bound {
            r.next_refresh = now + self.cfg.relay_refresh_interval;
        } else if !r.peer_bound && r.attempt.is_none() {
            r.next_refresh = r.next_refresh.min(now + Duration::from_secs(1));
        }
        // Our public address as the relay in use sees it (behind an address-dependent NAT
        // each relay sees another mapping: the spares' do not count).
        let changed = in_use && r.observed.is_some_and(|o| o != ack.observed);
        r.observed = Some(ack.observed);
        if needs_confirm {
            // Echo the cookie at once: proves we receive at this address, which lifts the
            // relay's anti-amplification cap.
            self.send_bind_at(now, from);
        }
        if changed {
            self.events.push_back(LinkEvent::ObservedAddressChanged(ack.observed));
            let mut local: Vec<Candidate> =
                self.local.iter().copied().filter(|c| c.kind != CandidateKind::ServerReflexive).collect();
            local.push(Candidate::new(CandidateKind::ServerReflexive, ack.observed));
            self.set_local_candidates(now, local);
        }
        self.select_relay(now);
        self.flush(now);
        Ok(())
    }

    /// A peer datagram for this link arrived from `from` (directly or via the relay) on local
    /// socket `local` (`None` = the mesh socket; `Some` = one of our birthday sockets).
    pub fn handle_peer(
        &mut self,
        now: Instant,
        local: Option<SocketAddr>,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), OpenError> {
        self.now = now;
        let mut body = std::mem::take(&mut self.plaintext);
        let header = match self.crypto.open_into(bytes, &mut body) {
            Ok(h) => h,
            Err(e) => {
                self.plaintext = body;
                self.stats.rejected += 1;
                return Err(e);
            }
        };
        let via_relay = self.relay_ref(from).is_some();
        if self.cfg.relay_only && !via_relay {
            // Privacy mode: whatever reaches us directly is not answered, so the sender
            // learns nothing (not even that this address is ours).
            self.plaintext = body;
            self.stats.direct_refused += 1;
            return Ok(());
        }
        self.stats.bytes_received += bytes.len() as u64;
        self.live.received(now);
        match self.state {
            State::Lost => {
                self.state = State::Connected;
                self.events.push_back(LinkEvent::Recovered);
                // Whatever broke the link may have changed both sides' mappings: punch afresh.
                if self.direct.is_none() {
                    self.start_punch(now);
                }
            }
            State::Connecting => self.state = State::Connected,
            State::Connected => {}
        }
        let mut ack_now = false;
        if via_relay {
            self.stats.relay_received += 1;
            if let Some(r) = relays::slot(&mut self.relay, &mut self.spares, from) {
                r.live.received(now);
                // Data from the peer through the relay proves both sides are bound.
                if r.bound {
                    r.peer_bound = true;
                }
                if header.kind == PeerKind::Data {
                    r.last_peer_data = Some(now);
                }
            }
            if header.kind == PeerKind::Data {
                self.follow_peer_relay(now, from);
            }
            // The peer sends through the relay while we use a direct path: it found that path
            // dead (or has not validated it yet). If it had been sending to us directly and
            // has not for `path_ping_after`, it left the path: follow it to the relay at once
            // (and ack there at once) instead of acking into a dead path while the peer
            // re-sends its window. Otherwise (it never used the path, or a datagram it relayed
            // during a short detour overtook its direct ones) ask the direct path for an
            // answer, so that silence fails us over too.
            if let Some(d) = self.direct
                && d.suspected_at.is_none()
            {
                let peer_left = header.kind == PeerKind::Data
                    && d.last_peer_data.is_some_and(|t| now >= t + self.cfg.path_ping_after);
                if peer_left {
                    self.suspect_direct(now);
                    ack_now = true;
                } else if d.live.unanswered_since.is_none()
                    && d.live.last_ping.is_none_or(|p| now >= p + self.cfg.path_ping_after)
                {
                    self.send_ping(now, d.addr);
                }
            }
        } else {
            self.stats.direct_received += 1;
            if let Some(d) = self.direct.as_mut().filter(|d| d.addr == from) {
                d.live.received(now);
                if header.kind == PeerKind::Data {
                    d.last_peer_data = Some(now);
                }
            } else if !self.remote.iter().any(|r| r.cand.addr == from)
                && self.remote.len() < self.cfg.max_candidates
            {
                // Peer-reflexive: the peer reaches us from an address nobody told us about.
                self.remote.push(Remote {
                    cand: Candidate::new(CandidateKind::PeerReflexive, from),
                    validated: false,
                });
                if header.kind != PeerKind::Probe {
                    self.send_probe_from(now, local, from);
                }
            }
        }
        match header.kind {
            PeerKind::Probe => {
                if !via_relay {
                    let mut ack = body.get(..8).unwrap_or(&[0; 8]).to_vec();
                    encode_addr(&mut ack, from);
                    let d = self.crypto.seal(PeerKind::ProbeAck, &ack);
                    self.send_on_path(now, local, from, d, false);
                    // Triggered check (RFC 8445 §7.3.1.4): probe back at once, from the socket
                    // the probe reached.
                    if self.direct.is_none()
                        && !self.probes.iter().any(|(_, a, l, t)| {
                            *a == from && *l == local && now - *t < self.cfg.probe_interval
                        })
                    {
                        self.send_probe_from(now, local, from);
                    }
                }
            }
            PeerKind::ProbeAck => {
                if let Some(id) = body.get(..8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                    && !via_relay
                {
                    self.on_probe_ack(now, from, id);
                }
            }
            PeerKind::Keepalive => {
                let d = self.crypto.seal(PeerKind::KeepaliveAck, body.get(..8).unwrap_or(&[0; 8]));
                self.send_on_path(now, local, from, d, false);
            }
            PeerKind::KeepaliveAck => {
                if let Some(id) = body.get(..8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                    && let Some(pos) = self.pings.iter().position(|(i, _)| *i == id)
                {
                    let (_, sent) = self.pings.remove(pos).expect("position is valid");
                    self.rtt_sample(now - sent);
                    // An answer to our own ping over the direct path: it works both ways.
                    if let Some(d) = self.direct.as_mut().filter(|d| d.addr == from && !via_relay) {
                        d.suspected_at = None;
                    }
                }
            }
            PeerKind::Data if self.broken.is_some() => self.stats.dropped_broken += 1,
            PeerKind::Data => {
                if !is_renet_ack(&body) {
                    let due = if ack_now { now } else { now + self.cfg.ack_delay };
                    self.ack_due = Some(self.ack_due.map_or(due, |t| t.min(due)));
                }
                // The peer's bytes reach renet here: a refusal closes renet's connection, a
                // panic is caught; either way only this link breaks.
                let renet = &mut self.renet;
                #[cfg(test)]
                let inject = std::mem::take(&mut self.panic_on_data);
                #[cfg(not(test))]
                let inject = false;
                let fed = crate::guard::catch_panic(|| {
                    assert!(!inject, "injected renet panic");
                    renet.process_packet(&body)
                });
                if let Err(panic) = fed {
                    tracing::warn!(link = ?self.id, %panic, "renet panicked on peer data; link broken");
                    self.break_link(BreakReason::RenetPanic);
                } else if self.renet.is_disconnected() {
                    tracing::warn!(link = ?self.id, reason = ?self.renet.disconnect_reason(), "renet refused peer data; link broken");
                    self.break_link(BreakReason::RenetError);
                } else {
                    if self.reliable_pending {
                        self.reliable_pending = self.renet_reliable_pending();
                    }
                    while let Some(msg) = self.renet.receive_message(CHANNEL_CONTROL) {
                        self.on_control(now, &msg);
                    }
                }
            }
            PeerKind::Control => {}
        }
        self.plaintext = body;
        // Most datagrams (the peer's data, acks) leave renet nothing to send that is due: its
        // ack is owed only after `ack_delay` or with our next messages. Asking renet for its
        // packets anyway would build (and we would drop) an ack-only packet per datagram.
        if self.renet_due(now) {
            self.flush(now);
        } else {
            self.timeout = self.compute_timeout();
        }
        Ok(())
    }

    /// Does renet have something to send now: queued messages, a path to send what it held
    /// back, a due ack, or possibly a reliable re-send? (The same conditions as the renet part
    /// of [`Link::poll_timeout`].)
    fn renet_due(&self, now: Instant) -> bool {
        self.dirty
            || self.path() != self.reported
            || self.ack_due.is_some_and(|t| now >= t)
            || (self.reliable_pending() && now >= self.renet_time + self.cfg.reliable_resend / 2)
    }

    fn on_probe_ack(&mut self, now: Instant, from: SocketAddr, id: u64) {
        let Some(pos) = self.probes.iter().position(|(i, a, _, _)| *i == id && *a == from) else {
            return;
        };
        let (_, _, local, sent) = self.probes.remove(pos).expect("position is valid");
        self.rtt_sample(now - sent);
        if let Some(d) = self.direct.as_mut().filter(|d| d.addr == from) {
            d.suspected_at = None;
        }
        let kind = match self.remote.iter_mut().find(|r| r.cand.addr == from) {
            Some(r) => {
                r.validated = true;
                r.cand.kind
            }
            None => {
                // A sprayed guess that hit (birthday paradox): remember it as peer-reflexive.
                let cand = Candidate::new(CandidateKind::PeerReflexive, from);
                self.remote.push(Remote { cand, validated: true });
                cand.kind
            }
        };
        let better = match &self.direct {
            None => true,
            // A validated pair replaces a suspect one (e.g. the peer's address changed), and
            // a host (LAN) pair a public one.
            Some(d) => {
                d.addr != from
                    && (d.suspected_at.is_some()
                        || (kind == CandidateKind::Host && d.kind != CandidateKind::Host))
            }
        };
        if better {
            let mut live = Liveness::new(now);
            live.received(now);
            self.direct =
                Some(DirectPath { addr: from, local, kind, live, suspected_at: None, last_peer_data: None });
            self.punch = None;
            self.birthday = None;
            self.next_repunch = None;
        }
    }

    fn on_control(&mut self, now: Instant, msg: &[u8]) {
        let Ok(Control::Candidates(cands)) = crate::codec::decode::<Control>(msg, MAX_CONTROL_MESSAGE) else {
            return;
        };
        if self.cfg.relay_only {
            return;
        }
        let mut added = false;
        // Capped and de-duplicated in linear time first, like the shard's list in `new`; no
        // local-scope address unless the shard's list had one (see `allow_local`).
        let allow = self.allow_local;
        let before = cands.len();
        let cands: Vec<Candidate> = cands
            .into_iter()
            .filter(|c| match locality(&c.addr) {
                None => true,
                Some(Locality::Lan) => allow[0],
                Some(Locality::Host) => allow[1],
            })
            .collect();
        self.stats.candidates_refused += (before - cands.len()) as u64;
        let cands = clean_candidates(&cands, self.cfg.max_candidates);
        let predicted = predict(&cands, &self.remote_nat, self.cfg.prediction_span);
        let fresh = clean_candidates(cands.iter().chain(predicted.iter()), self.cfg.max_candidates);
        for c in &fresh {
            if !self.remote.iter().any(|r| r.cand.addr == c.addr) {
                if self.remote.len() >= self.cfg.max_candidates {
                    // Forget the oldest unvalidated guess to make room for fresher information.
                    if let Some(i) = self.remote.iter().position(|r| !r.validated) {
                        self.remote.remove(i);
                    }
                }
                self.remote.push(Remote { cand: *c, validated: false });
                added = true;
            }
        }
        if added && self.direct.is_none_or(|d| d.suspected_at.is_some()) {
            self.start_punch(now);
        }
    }

    fn rtt_sample(&mut self, sample: Duration) {
        // RFC 6298 §2: RTTVAR first (from the old SRTT), then SRTT.
        self.rttvar = match self.srtt {
            None => sample / 2,
            Some(s) => (self.rttvar * 3 + s.abs_diff(sample)) / 4,
        };
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
        if self.rtt_window.len() == RTT_WINDOW {
            self.rtt_window.pop_front();
        }
        self.rtt_window.push_back(sample);
    }

    /// RTT figures of the current path: smoothed, jitter (RFC 6298 `RTTVAR`), and the 99th
    /// percentile and minimum of the last [`RTT_WINDOW`] samples (probe, ping and keepalive
    /// answers; `None` until there is one).
    pub fn rtt_stats(&self) -> Option<RttStats> {
        let smoothed = self.rtt()?;
        let mut w: Vec<Duration> = self.rtt_window.iter().copied().collect();
        w.sort_unstable();
        let p99 = w.get((w.len() * 99).div_ceil(100).saturating_sub(1)).copied();
        Some(RttStats { smoothed, jitter: self.rttvar, p99, min: w.first().copied(), samples: w.len() })
    }

    /// Move renet's packets onto the current path, and report a path change.
    fn flush(&mut self, now: Instant) {
        self.dirty = false;
        let path = self.path();
        let dst = match path {
            Path::Direct { remote } => Some(remote),
            Path::Relayed { relay } => Some(relay),
            Path::None => None,
        };
        // renet's send side acts on the peer's acks: guarded like `process_packet`.
        let (renet, elapsed) = (&mut self.renet, now.saturating_duration_since(self.renet_time));
        let packets = crate::guard::catch_panic(|| {
            renet.update(elapsed);
            if dst.is_some() { renet.get_packets_to_send() } else { Vec::new() }
        });
        self.renet_time = self.renet_time.max(now);
        let packets = packets.unwrap_or_else(|panic| {
            tracing::warn!(link = ?self.id, %panic, "renet panicked sending; link broken");
            self.break_link(BreakReason::RenetPanic);
            Vec::new()
        });
        if let Some(dst) = dst {
            let carries_messages = packets.iter().any(|p| !is_renet_ack(p));
            for packet in packets {
                let expects_answer = !is_renet_ack(&packet);
                if !expects_answer {
                    // renet acknowledges ack packets too, so sending every ack it offers would
                    // keep an idle link ping-ponging forever. Send one only when a message
                    // packet is owed an ack: at once when it can ride along with our own
                    // messages, else after `ack_delay` (like QUIC's max_ack_delay).
                    let due = self.ack_due.is_some_and(|t| carries_messages || now >= t);
                    if !due {
                        continue;
                    }
                    self.ack_due = None;
                }
                let d = self.crypto.seal(PeerKind::Data, &packet);
                let src = self.direct.filter(|d| d.addr == dst).and_then(|d| d.local);
                let d = self.with_bind_proof(now, dst, d);
                self.send_on_path(now, src, dst, d, expects_answer);
                if !expects_answer && let Some(d) = self.direct.as_mut().filter(|d| d.addr == dst) {
                    d.live.acked_since.get_or_insert(now);
                }
            }
            // A due ack renet did not offer (nothing to acknowledge) is moot: forget it, or
            // the deadline would stay in the past and the timer would spin.
            if self.ack_due.is_some_and(|t| now >= t) {
                self.ack_due = None;
            }
        }
        if path != self.reported {
            self.reported = path;
            // Percentiles describe the current path.
            self.rtt_window.clear();
            self.events.push_back(LinkEvent::Path(path));
        }
        self.timeout = self.compute_timeout();
    }
}

/// Birthday sockets use local ports `mesh port + 1000 + k`.
const BIRTHDAY_PORT_OFFSET: u16 = 1000;

/// renet's packet type 4 is an ack-only packet (renet 2 `Packet::Ack`).
/// Where a local-scope address is reachable from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locality {
    /// Private or link-local: the same NAT / LAN.
    Lan,
    /// Loopback: the same host.
    Host,
}

/// The locality of a private, link-local or loopback address (`None`: any other).
fn locality(addr: &SocketAddr) -> Option<Locality> {
    match scope(addr) {
        Ok(Scope::Private) | Err(Refusal::LinkLocal) => Some(Locality::Lan),
        Ok(Scope::Loopback) => Some(Locality::Host),
        _ => None,
    }
}

fn is_renet_ack(packet: &[u8]) -> bool {
    packet.first() == Some(&4)
}

/// Append an address as `family (4|6) | port u16 BE | ip (4|16 bytes)`.
pub(crate) fn encode_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.ip().octets());
        }
    }
}

#[cfg(test)]
mod tests;
