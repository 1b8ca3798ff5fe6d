//! Full clients against the real shard roles, in the simulator.
//!
//! A [`ShardWorld`] is a [`World`] (sites, NATs, the punch server) plus a [`SimShard`] —
//! the production Agent routing, Lobby and Game servers on the simulator's clock. Each
//! [`Player`] is a `ClientCore` (the client every driver uses: the Bevy plugin, the demo's
//! bots) attached to the shard through an in-memory connection, plus a small application
//! that streams sequence-numbered reliable messages to every introduced peer. Nothing here
//! introduces peers by hand: the Game server does, when players share a zone and stand in
//! range.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pmodel_core::client::{Channel, ClientConfig, ClientCore, ClientEvent, PeerPath};
use p2pmodel_core::endpoint::{Endpoint, Transmit};
use p2pmodel_core::proto::shard::PlayerId;
use p2pmodel_core::shard::LocalShardConfig;
use p2pmodel_core::shard::game::ShardRelay;
use p2pmodel_sim::HostId;
use p2pmodel_sim::hosts::{PunchServer, SimShard, public_ip};

use crate::{Site, World};

/// How often a player looks at its shard connection (the in-memory transport has no
/// socket to wake it).
const POLL: Duration = Duration::from_millis(10);

/// One message received from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    /// Its sequence number.
    pub seq: u32,
    /// When it arrived.
    pub at: Instant,
    /// Over the mesh (`false`: through the Game server).
    pub p2p: bool,
}

/// A simulated player: `ClientCore` + its shard connection + a streaming application.
pub struct Player {
    /// The client under test.
    pub core: ClientCore,
    shard: SimShard,
    client: u64,
    connected: bool,
    /// Stream one reliable message to every peer at this interval (`None`: silent).
    pub stream_every: Option<Duration>,
    next_send: Instant,
    /// Next sequence number per peer.
    pub sent: BTreeMap<PlayerId, u32>,
    /// Messages received, per peer, in arrival order.
    pub received: BTreeMap<PlayerId, Vec<Got>>,
    /// Every event with its time.
    pub events: Vec<(Instant, ClientEvent)>,
    now: Instant,
    /// Reconnection attempts since the shard connection was lost, and when the next one is.
    attempt: u32,
    next_retry: Option<Instant>,
    /// Does not reconnect (a player who closed the game, or whose network is gone for good).
    pub offline: bool,
    /// Every IP a datagram reached us from.
    pub heard_from: std::collections::BTreeSet<std::net::IpAddr>,
    /// The public IP of our site (our NAT's), as peers would see it.
    pub public_ip: Option<std::net::IpAddr>,
}

impl Player {
    fn service(&mut self, now: Instant) {
        self.now = now;
        // A suspended session reconnects with capped exponential backoff, as the plugin does
        // (without its jitter, so runs repeat).
        if !self.connected && !self.offline && self.next_retry.is_some_and(|t| now >= t) {
            self.shard.reconnect(self.client);
            self.attempt += 1;
            let delay = Duration::from_millis(250).saturating_mul(1 << self.attempt.min(5));
            self.next_retry = Some(now + delay.min(Duration::from_secs(4)));
        }
        let up = self.shard.is_connected(self.client);
        if up != self.connected {
            self.connected = up;
            if up {
                self.attempt = 0;
                self.next_retry = None;
                self.core.connected();
            } else {
                self.core.disconnected();
                self.next_retry = Some(now + Duration::from_millis(250));
            }
        }
        while let Some(m) = self.shard.receive(self.client) {
            self.core.handle_shard_message(now, m);
        }
        self.flush(now);
    }

    fn flush(&mut self, now: Instant) {
        while let Some((m, _reliable)) = self.core.poll_shard_message() {
            self.shard.send(self.client, &m);
        }
        while let Some(e) = self.core.poll_event() {
            if let ClientEvent::Message { player, data, p2p, .. } = &e
                && let Some(seq) = data.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            {
                self.received.entry(*player).or_default().push(Got { seq, at: now, p2p: *p2p });
                continue;
            }
            self.events.push((now, e));
        }
    }

    fn app(&mut self, now: Instant) {
        let Some(every) = self.stream_every else { return };
        if now < self.next_send {
            return;
        }
        self.next_send = now + every;
        let peers: Vec<PlayerId> = self.core.peers().map(|p| p.player).collect();
        for p in peers {
            let seq = self.sent.entry(p).or_default();
            let mut msg = seq.to_be_bytes().to_vec();
            msg.resize(64, 0xAB);
            if self.core.send(p, Channel::Reliable, Bytes::from(msg)).is_ok() {
                *seq += 1;
            }
        }
    }

    /// Quit on purpose, as the plugin's `ShardRequest::Disconnect` does: the core's goodbye
    /// goes out, then the connection closes; it does not reconnect.
    pub fn leave(&mut self) {
        self.core.leave();
        let now = self.now;
        self.flush(now);
        self.shard.disconnect(self.client);
        (self.connected, self.offline) = (false, true);
    }

    /// The shard's id of this player's connection.
    pub fn client(&self) -> u64 {
        self.client
    }

    /// The path to `peer` as the client reports it (`None`: not introduced).
    pub fn path(&self, peer: PlayerId) -> Option<PeerPath> {
        self.core.peer(peer).map(|p| p.path)
    }

    /// Gaps and duplicates in what `from` streamed to us: `(received, gaps, dups)`, where
    /// a gap is a sequence number below the highest received that never arrived.
    pub fn stream_from(&self, from: PlayerId) -> (u32, u32, u32) {
        let got = self.received.get(&from).map(Vec::as_slice).unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        let dups = got.iter().filter(|g| !seen.insert(g.seq)).count() as u32;
        let max = seen.iter().next_back().map_or(0, |m| m + 1);
        (got.len() as u32, max - seen.len() as u32, dups)
    }

    /// The times `player`'s path became `path`.
    pub fn path_changes(&self, player: PlayerId, path: PeerPath) -> Vec<Instant> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                ClientEvent::PeerPath { player: p, path: x, .. } if *p == player && *x == path => Some(*t),
                _ => None,
            })
            .collect()
    }
}

impl Endpoint for Player {
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        self.heard_from.insert(from.ip());
        self.core.handle_datagram(now, local, from, data);
        self.service(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.service(now);
        self.app(now);
        self.core.handle_timeout(now);
        self.flush(now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.poll_transmit()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let poll = self.now + POLL;
        Some(self.core.poll_timeout().map_or(poll, |t| t.min(poll)))
    }
}

/// A simulated internet with the whole shard in it.
pub struct ShardWorld {
    /// Sites, NATs, the punch server (and the simulator, `world.sim`).
    pub world: World,
    /// The shard's roles.
    pub shard: SimShard,
}

impl ShardWorld {
    /// A world from `seed` whose shard has `zones` zones (and `tweak`'s other settings).
    pub fn new(seed: u64, tweak: impl FnOnce(&mut LocalShardConfig)) -> ShardWorld {
        Self::from_world(World::new(seed), tweak)
    }

    /// The shard on a world the caller prepared (sites, extra relays): see
    /// [`ShardWorld::add_relay`].
    pub fn from_world(mut world: World, tweak: impl FnOnce(&mut LocalShardConfig)) -> ShardWorld {
        let shard = world.plugin_shard_with(tweak);
        ShardWorld { world, shard }
    }

    /// One more relay for a shard with several, on public IP `ip` (STUN also on the next
    /// IP), relay `id`, `delays` one way (each direction) farther from the IPs listed than
    /// the simulator's core latency: give the result to the shard's `relays` (its index
    /// must be `id`). The punch server is relay 0.
    pub fn add_relay(
        world: &mut World,
        ip: std::net::Ipv4Addr,
        id: u8,
        delays: &[(std::net::IpAddr, Duration)],
    ) -> (HostId, ShardRelay) {
        let alt = std::net::Ipv4Addr::from(u32::from(ip) + 1);
        let clock = world.clock();
        let seed = world.sim.seed() ^ (u64::from(id) << 40);
        PunchServer::add_relay_to(&mut world.sim, ip.into(), alt.into(), id, clock, seed, delays.to_vec())
    }

    /// A player named `name` on `site`: it connects, logs in, discovers its NAT against the
    /// shard's STUN server and asks for `zone`.
    pub fn player(&mut self, site: &mut Site, name: &str, zone: u32) -> HostId {
        let host = self.world.next_host(site);
        let ip = public_ip(&self.world.sim, &host);
        let addr = SocketAddr::new(host.ips[0], host.default_port);
        let now = self.world.sim.now();
        let mut cfg = ClientConfig::new(name);
        cfg.seed = self.world.sim.seed() ^ u64::from(self.world.sim.host_count() as u32) << 32;
        cfg.mesh = self.world.mesh_config.clone();
        let mut core = ClientCore::new(now, cfg, self.world.clock(), &[addr]);
        core.enter_zone(now, zone);
        let client = self.shard.connect(name, ip);
        let p = Player {
            core,
            shard: self.shard.clone(),
            client,
            connected: false,
            stream_every: None,
            next_send: now,
            sent: BTreeMap::new(),
            received: BTreeMap::new(),
            events: Vec::new(),
            now,
            attempt: 0,
            next_retry: None,
            offline: false,
            heard_from: Default::default(),
            public_ip: ip,
        };
        self.world.sim.add_host(host, p)
    }

    /// The player on `host`.
    pub fn p(&self, host: HostId) -> &Player {
        self.world.sim.node::<Player>(host)
    }

    /// The player on `host`, mutably.
    pub fn p_mut(&mut self, host: HostId) -> &mut Player {
        self.world.sim.node_mut::<Player>(host)
    }

    /// Its player id (after `Welcome`).
    pub fn id(&self, host: HostId) -> PlayerId {
        self.p(host).core.player().expect("logged in")
    }

    /// Stream at 20 Hz from every listed player.
    pub fn stream(&mut self, hosts: &[HostId]) {
        for h in hosts {
            self.p_mut(*h).stream_every = Some(Duration::from_millis(50));
        }
    }

    /// Run until `a` and `b` are introduced to each other (at most `max`); returns whether
    /// they were.
    pub fn until_introduced(&mut self, a: HostId, b: HostId, max: Duration) -> bool {
        let deadline = self.world.sim.now() + max;
        self.world.sim.run_until(deadline, |sim| {
            let (pa, pb) = (sim.node::<Player>(a), sim.node::<Player>(b));
            match (pa.core.player(), pb.core.player()) {
                (Some(ia), Some(ib)) => pa.core.peer(ib).is_some() && pb.core.peer(ia).is_some(),
                _ => false,
            }
        })
    }

    /// Run for `d`.
    pub fn run(&mut self, d: Duration) {
        self.world.sim.run_for(d);
    }
}
