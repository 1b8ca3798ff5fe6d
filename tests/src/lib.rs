//! End-to-end scenarios across the P2PModel crates, in the deterministic simulator.
//!
//! A [`World`] is a simulated internet with one punch server (STUN on two IPs × two ports,
//! and the relay on the primary address — the very `StunServer` and `Relay` code the servers
//! run) and any number of sites, each a NAT preset with clients behind it. Every site uses
//! the same private range (192.168.0.0/24), as real homes do. Clients are [`Client`]s: a
//! `Mesh` plus a small application that streams sequence-numbered reliable messages to every
//! peer and records what arrives, and when.
//!
//! The shard's introduction is [`World::introduce`]: it calls the one peer introduction of
//! the core (`p2pmodel_core::shard::intro::introduce`, what the Game server calls), so a
//! test chooses the instant two clients meet. [`World::plugin_shard`] adds the whole shard
//! (the real Agent/Lobby/Game roles) for tests of full clients; `tests/shard_sim.rs` runs the
//! seed scenarios through it.

pub mod loopback;
pub mod shard_harness;
pub mod shard_world;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bevy_p2pmodel::plugins::sim::SimShard;
use p2pmodel_core::config::MeshConfig;
use p2pmodel_core::endpoint::{ClockAnchor, Endpoint, Transmit};
use p2pmodel_core::link::{CHANNEL_RELIABLE, LinkEvent, NatHint, Path};
use p2pmodel_core::mesh::{Mesh, MeshEvent};
use p2pmodel_core::nat::{NatClass, NatReport};
use p2pmodel_core::proto::peer::{LinkId, Side};
use p2pmodel_core::relay::{KeySchedule, RelayKey, TokenKeys};
use p2pmodel_core::shard::LocalShardConfig;
use p2pmodel_core::shard::intro::{IntroRefusals, IntroRelay, IntroSide, introduce};
use p2pmodel_sim::hosts::PunchInfo;
use p2pmodel_sim::{HostConfig, HostId, LinkParams as Wire, NatConfig, NatId, Sim};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The punch server's primary public IP.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Its second IP (RFC 5780 change-IP tests).
pub const SERVER_IP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// Where the shard's roles run ([`World::plugin_shard`]); they exchange no datagrams.
pub const SHARD_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// STUN primary port; the relay listens here too (demultiplexed by first byte).
pub const PUNCH_PORT: u16 = 3478;
/// STUN alternate port.
pub const ALT_PORT: u16 = 3479;
/// Unix time at the start of every simulated world (fixed, so runs are reproducible).
pub const UNIX_START: u64 = 1_790_000_000;

/// STUN server and relay on one simulated host, as `p2pmodel shard relay` runs them (the
/// plugin's simulator version, shared with the Bevy app tests).
pub use bevy_p2pmodel::plugins::sim::SimPunchServer as PunchServer;

/// NAT presets of the class matrix (the seed's names plus the two symmetric flavours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatKind {
    /// A public address, no NAT.
    Open,
    /// EIM + EIF.
    FullCone,
    /// EIM + ADF.
    Restricted,
    /// EIM + APDF.
    PortRestricted,
    /// APDM with random ports.
    SymmetricRandom,
    /// APDM with sequential ports.
    SymmetricSequential,
    /// Drops all UDP except to the shard.
    UdpFirewall,
}

impl NatKind {
    /// Every preset, in matrix order.
    pub const ALL: [NatKind; 7] = [
        NatKind::Open,
        NatKind::FullCone,
        NatKind::Restricted,
        NatKind::PortRestricted,
        NatKind::SymmetricRandom,
        NatKind::SymmetricSequential,
        NatKind::UdpFirewall,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Open => "open",
            NatKind::FullCone => "full-cone",
            NatKind::Restricted => "restricted",
            NatKind::PortRestricted => "port-restricted",
            NatKind::SymmetricRandom => "symmetric-random",
            NatKind::SymmetricSequential => "symmetric-seq",
            NatKind::UdpFirewall => "udp-firewall",
        }
    }

    /// The NAT class discovery must report for this preset.
    pub fn expected_class(self) -> NatClass {
        match self {
            NatKind::Open => NatClass::Open,
            NatKind::FullCone => NatClass::FullCone,
            NatKind::Restricted => NatClass::Restricted,
            NatKind::PortRestricted => NatClass::PortRestricted,
            NatKind::SymmetricRandom | NatKind::SymmetricSequential => NatClass::Symmetric,
            // It lets the shard through, and behind it sits a port-restricted NAT: that is all
            // a STUN server can see. (`blocked` is for networks where STUN gets no answer.)
            NatKind::UdpFirewall => NatClass::PortRestricted,
        }
    }

    fn nat_config(self) -> Option<NatConfig> {
        Some(match self {
            NatKind::Open => return None,
            NatKind::FullCone => NatConfig::full_cone(),
            NatKind::Restricted => NatConfig::restricted(),
            NatKind::PortRestricted => NatConfig::port_restricted(),
            NatKind::SymmetricRandom => NatConfig::symmetric_random(),
            NatKind::SymmetricSequential => NatConfig::symmetric_sequential(),
            NatKind::UdpFirewall => NatConfig::udp_firewall([IpAddr::V4(SERVER_IP), IpAddr::V4(SERVER_IP2)]),
        })
    }
}

/// A home network: a NAT (or none, for public hosts) and the clients behind it.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// The NAT box, `None` for a public host.
    pub nat: Option<NatId>,
    /// The preset.
    pub kind: NatKind,
    next_host: u8,
    public_ip: Ipv4Addr,
}

/// One reliable message as received: its sequence number and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Sequence number the sender gave it.
    pub seq: u32,
    /// Simulated arrival time.
    pub at: Instant,
}

/// What a client did and saw, per link.
#[derive(Debug, Default, Clone)]
pub struct LinkLog {
    /// When the link was introduced.
    pub intro_at: Option<Instant>,
    /// Messages sent (the next sequence number).
    pub sent: u32,
    /// Messages received, in arrival order.
    pub received: Vec<Arrival>,
    /// Link events with their times.
    pub events: Vec<(Instant, LinkEvent)>,
}

/// A simulated player: the mesh plus a streaming application.
pub struct Client {
    /// The mesh under test.
    pub mesh: Mesh,
    /// Per-link application log.
    pub links: BTreeMap<LinkId, LinkLog>,
    /// Mesh-level events (NAT report, public address).
    pub mesh_events: Vec<(Instant, MeshEvent)>,
    /// Send one reliable message to every peer at this interval (`None` = silent).
    pub stream_every: Option<Duration>,
    next_send: Option<Instant>,
    now: Instant,
}

impl Client {
    fn drain(&mut self, now: Instant) {
        self.now = now;
        while let Some(e) = self.mesh.poll_event() {
            if let MeshEvent::Link { link, event } = &e {
                self.links.entry(*link).or_default().events.push((now, event.clone()));
            } else {
                self.mesh_events.push((now, e));
            }
        }
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            while let Some(msg) = self.mesh.receive(id, CHANNEL_RELIABLE) {
                if let Some(seq) = msg.get(..4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))) {
                    self.links.entry(id).or_default().received.push(Arrival { seq, at: now });
                }
            }
        }
    }

    fn app_tick(&mut self, now: Instant) {
        let Some(every) = self.stream_every else { return };
        if self.next_send.is_some_and(|t| t > now) {
            return;
        }
        for (id, log) in self.links.iter_mut() {
            if self.mesh.link(*id).is_none() {
                continue;
            }
            let mut msg = log.sent.to_be_bytes().to_vec();
            msg.resize(64, 0xAB); // a typical small game event
            if self.mesh.send(*id, CHANNEL_RELIABLE, msg).unwrap_or(false) {
                log.sent += 1;
            }
        }
        self.next_send = Some(now + every);
    }

    /// The current path of a link, `Path::None` if it does not exist.
    pub fn path(&self, link: LinkId) -> Path {
        self.mesh.link(link).map_or(Path::None, |l| l.path())
    }

    /// Start or stop streaming.
    pub fn set_stream(&mut self, every: Option<Duration>) {
        self.stream_every = every;
        self.next_send = None;
    }
}

impl Endpoint for Client {
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        self.mesh.handle_datagram(now, local, from, data);
        self.drain(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.app_tick(now);
        self.mesh.handle_timeout(now);
        self.drain(now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.mesh.poll_transmit()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let app = self.stream_every.map(|_| self.next_send.unwrap_or(self.now));
        [self.mesh.poll_timeout(), app].into_iter().flatten().min()
    }
}

/// The simulated internet with one punch server.
pub struct World {
    /// The simulator (public so tests can break things mid-run).
    pub sim: Sim,
    /// The punch server host.
    pub server: HostId,
    schedule: KeySchedule,
    keys: TokenKeys,
    rng: ChaCha8Rng,
    next_link: u32,
    next_public: u8,
    clock: ClockAnchor,
    /// Configuration every new client gets.
    pub mesh_config: MeshConfig,
}

/// Access-link profile of a typical home player: 15 ms ± 3 ms to the core, 0.1 % loss.
pub fn home_uplink() -> Wire {
    Wire::with_latency(Duration::from_millis(15)).jitter(Duration::from_millis(3)).loss(0.001)
}

impl World {
    /// A world whose randomness (NAT ports, jitter, loss, keys) all comes from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sim = Sim::new(seed);
        sim.set_core(Wire::with_latency(Duration::from_millis(10)));
        let start = sim.now();
        let clock = ClockAnchor { at: start, unix_micros: UNIX_START * 1_000_000 };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let schedule = KeySchedule::new(RelayKey::from_bytes(rng.random()), Duration::ZERO);
        let keys = schedule.relay_keys(UNIX_START);
        let node = PunchServer::new(
            IpAddr::V4(SERVER_IP),
            IpAddr::V4(SERVER_IP2),
            keys.clone(),
            clock,
            rng.random(),
        );
        let server = sim.add_host(HostConfig::public(SERVER_IP).extra_ip(SERVER_IP2).port(PUNCH_PORT), node);
        World {
            sim,
            server,
            schedule,
            keys,
            rng,
            next_link: 1,
            next_public: 10,
            clock,
            mesh_config: MeshConfig::default(),
        }
    }

    /// A punch server as the one of this world comes back after a restart: same addresses
    /// and token keys, no bindings (put it in place with `sim.node_mut`).
    pub fn restarted_punch_server(&mut self) -> PunchServer {
        PunchServer::new(
            IpAddr::V4(SERVER_IP),
            IpAddr::V4(SERVER_IP2),
            self.keys.clone(),
            self.clock,
            self.rng.random(),
        )
    }

    /// The relay / STUN primary address.
    pub fn punch_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(SERVER_IP), PUNCH_PORT)
    }

    /// A new site with `kind`'s NAT (every site uses 192.168.0.0/24).
    pub fn site(&mut self, kind: NatKind) -> Site {
        self.site_with(kind, |c| c)
    }

    /// A new site with `kind`'s NAT changed by `tweak` (binding timeout, hairpinning, …).
    pub fn site_with(&mut self, kind: NatKind, tweak: impl FnOnce(NatConfig) -> NatConfig) -> Site {
        let public_ip = Ipv4Addr::new(198, 18, 100, self.next_public);
        self.next_public += 1;
        let nat = kind.nat_config().map(|c| self.sim.add_nat(tweak(c).public_ip(public_ip)));
        Site { nat, kind, next_host: 2, public_ip }
    }

    /// Round-trip time through the relay between two home clients (uplink + core each way).
    pub fn relay_rtt(&self) -> Duration {
        (home_uplink().latency + self.sim.core().latency) * 4
    }

    /// Round-trip time of a direct path between two home clients.
    pub fn peer_rtt(&self) -> Duration {
        (home_uplink().latency * 2 + self.sim.core().latency) * 2
    }

    /// A client on `site`, with NAT discovery started against the punch server.
    pub fn client(&mut self, site: &mut Site) -> HostId {
        let ip = match site.nat {
            Some(_) => Ipv4Addr::new(192, 168, 0, site.next_host),
            None => {
                // public hosts: one per site, the site's public IP
                site.public_ip
            }
        };
        site.next_host += 1;
        let config = match site.nat {
            Some(nat) => HostConfig::behind(nat, ip),
            None => HostConfig::public(ip),
        }
        .uplink(home_uplink());
        let host_addr = SocketAddr::new(IpAddr::V4(ip), config.default_port);
        let now = self.sim.now();
        let mut mesh = Mesh::new(now, self.mesh_config.clone(), self.clock, &[host_addr]);
        mesh.start_nat_discovery(now, self.punch_addr(), self.rng.random());
        let client = Client {
            mesh,
            links: BTreeMap::new(),
            mesh_events: Vec::new(),
            stream_every: None,
            next_send: None,
            now,
        };
        self.sim.add_host(config, client)
    }

    /// The client on `host`.
    pub fn client_ref(&self, host: HostId) -> &Client {
        self.sim.node::<Client>(host)
    }

    /// The client on `host`, mutably.
    pub fn client_mut(&mut self, host: HostId) -> &mut Client {
        self.sim.node_mut::<Client>(host)
    }

    /// Run until every client finished NAT discovery (at most 30 simulated seconds).
    pub fn discover(&mut self, hosts: &[HostId]) -> Vec<NatReport> {
        let deadline = self.sim.now() + Duration::from_secs(30);
        let done = self.sim.run_until(deadline, |sim| {
            hosts.iter().all(|h| sim.node::<Client>(*h).mesh.nat_report().is_some())
        });
        assert!(done, "NAT discovery did not finish in 30 s");
        hosts.iter().map(|h| self.client_ref(*h).mesh.nat_report().cloned().expect("done")).collect()
    }

    fn hint(report: Option<&NatReport>) -> NatHint {
        report.map(NatHint::from_report).unwrap_or_default()
    }

    /// Introduce `a` and `b` with the Game server's introduction (the core's one
    /// implementation): a fresh link id and key, each side the other's candidates and NAT
    /// hint, relay tokens for both sides. Both get it at the same instant.
    pub fn introduce(&mut self, a: HostId, b: HostId) -> LinkId {
        self.introduce_with_token_life(a, b, Duration::from_secs(3600))
    }

    /// Mint a relay token for `host`'s side of `link`, valid for `life` from now, and hand it
    /// to its mesh, as the shard does before the previous token expires.
    pub fn refresh_relay_token(&mut self, host: HostId, link: LinkId, side: Side, life: Duration) {
        let unix = self.clock.unix_secs_at(self.sim.now());
        let keys = self.schedule.minting_keys(unix);
        let relay =
            IntroRelay { addr: self.punch_addr(), keys: &keys, expiry_unix: (unix + life.as_secs()) as u32 };
        let params = relay.params(link, side);
        let now = self.sim.now();
        self.client_mut(host).mesh.update_relay(now, link, params).expect("link exists");
    }

    /// [`World::introduce`] with relay tokens valid for `life`.
    pub fn introduce_with_token_life(&mut self, a: HostId, b: HostId, life: Duration) -> LinkId {
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let unix = self.clock.unix_secs_at(self.sim.now());
        let keys = self.schedule.minting_keys(unix);
        let relay =
            IntroRelay { addr: self.punch_addr(), keys: &keys, expiry_unix: (unix + life.as_secs()) as u32 };
        // Candidates as the client reports them, seen from its public IP (as the Agent sees it).
        let info = |w: &World, h: HostId| {
            let c = w.client_ref(h);
            let ip = c.mesh.nat_report().and_then(|r| r.public).map(|a| a.ip());
            (c.mesh.local_candidates().to_vec(), Self::hint(c.mesh.nat_report()), ip)
        };
        let (cand_a, hint_a, ip_a) = info(self, a);
        let (cand_b, hint_b, ip_b) = info(self, b);
        let side_a = IntroSide { candidates: &cand_a, nat: hint_a, ip: ip_a };
        let side_b = IntroSide { candidates: &cand_b, nat: hint_b, ip: ip_b };
        let mut refused = IntroRefusals::default();
        let intro = introduce(&mut self.rng, link, &side_a, &side_b, Some(&relay), &mut refused);
        let now = self.sim.now();
        for (h, p) in [(a, intro.a), (b, intro.b)] {
            let c = self.client_mut(h);
            c.links.entry(link).or_default().intro_at = Some(now);
            c.mesh.add_link(now, p).expect("fresh link id");
        }
        link
    }

    /// When `host`'s link first reported an event matching `pred` after `after`.
    pub fn event_time(
        &self,
        host: HostId,
        link: LinkId,
        after: Instant,
        pred: impl Fn(&LinkEvent) -> bool,
    ) -> Option<Instant> {
        self.client_ref(host)
            .links
            .get(&link)?
            .events
            .iter()
            .find_map(|(t, e)| (*t > after && pred(e)).then_some(*t))
    }

    /// Run the simulation for `d`.
    pub fn run(&mut self, d: Duration) {
        self.sim.run_for(d);
    }

    /// Summarise one direction of a link: `from` streams, `to` receives.
    pub fn outcome(&self, from: HostId, to: HostId, link: LinkId) -> Outcome {
        let f = self.client_ref(from);
        let t = self.client_ref(to);
        let empty = LinkLog::default();
        let flog = f.links.get(&link).unwrap_or(&empty);
        let tlog = t.links.get(&link).unwrap_or(&empty);
        let intro = flog.intro_at.unwrap_or(self.sim.start());
        let first_message = tlog.received.first().map(|a| a.at - intro);
        let direct_at = |log: &LinkLog| {
            log.events
                .iter()
                .find_map(|(at, e)| matches!(e, LinkEvent::Path(Path::Direct { .. })).then(|| *at - intro))
        };
        let seqs: Vec<u32> = tlog.received.iter().map(|a| a.seq).collect();
        let mut dups = 0;
        let mut seen = std::collections::BTreeSet::new();
        for s in &seqs {
            if !seen.insert(*s) {
                dups += 1;
            }
        }
        let in_order = seqs.windows(2).all(|w| w[0] < w[1]);
        let max = seqs.iter().max().map_or(0, |m| m + 1);
        Outcome {
            path_from: f.path(link),
            path_to: t.path(link),
            first_message,
            direct_from: direct_at(flog),
            direct_to: direct_at(tlog),
            sent: flog.sent,
            received: seqs.len() as u32,
            gaps: max - seen.len() as u32,
            dups,
            in_order,
        }
    }
}

/// What one direction of a link achieved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Path the sender uses now.
    pub path_from: Path,
    /// Path the receiver uses now.
    pub path_to: Path,
    /// Introduction → first message delivered.
    pub first_message: Option<Duration>,
    /// Introduction → the sender switched to a direct path.
    pub direct_from: Option<Duration>,
    /// Introduction → the receiver switched to a direct path.
    pub direct_to: Option<Duration>,
    /// Messages sent.
    pub sent: u32,
    /// Messages received (with duplicates).
    pub received: u32,
    /// Sequence numbers missing below the highest received.
    pub gaps: u32,
    /// Messages received more than once.
    pub dups: u32,
    /// Received in strictly increasing order.
    pub in_order: bool,
}

impl Outcome {
    /// "direct" when both ends send directly, "relayed" when at least one end relays,
    /// "failed" when an end has no path.
    pub fn verdict(&self) -> &'static str {
        match (self.path_from, self.path_to) {
            (Path::Direct { .. }, Path::Direct { .. }) => "direct",
            (Path::None, _) | (_, Path::None) => "failed",
            _ => "relayed",
        }
    }

    /// Time until both ends were direct.
    pub fn time_to_direct(&self) -> Option<Duration> {
        Some(self.direct_from?.max(self.direct_to?))
    }

    /// The stream arrived complete (all sent messages except those still in flight within
    /// `in_flight`), in order, without duplicates.
    pub fn stream_ok(&self, in_flight: u32) -> bool {
        self.in_order && self.dups == 0 && self.gaps == 0 && self.received + in_flight >= self.sent
    }
}

/// Two sites of the given kinds with one client each, NAT discovery done and the pair
/// introduced; nothing streams yet.
pub struct PairSetup {
    /// The world.
    pub world: World,
    /// A's site and B's site.
    pub sites: (Site, Site),
    /// A's client host.
    pub a: HostId,
    /// B's client host.
    pub b: HostId,
    /// Their link.
    pub link: LinkId,
}

/// Build a [`PairSetup`] for `seed`.
pub fn setup_pair(seed: u64, a: NatKind, b: NatKind) -> PairSetup {
    let mut w = World::new(seed);
    let mut sa = w.site(a);
    let mut sb = w.site(b);
    let ha = w.client(&mut sa);
    let hb = w.client(&mut sb);
    w.discover(&[ha, hb]);
    let link = w.introduce(ha, hb);
    PairSetup { world: w, sites: (sa, sb), a: ha, b: hb, link }
}

/// One pair ([`setup_pair`]) with a 20 msg/s reliable stream from A to B for `secs`
/// simulated seconds.
pub fn run_pair(seed: u64, a: NatKind, b: NatKind, secs: u64) -> (World, HostId, HostId, LinkId) {
    let PairSetup { world: mut w, a: ha, b: hb, link, .. } = setup_pair(seed, a, b);
    w.client_mut(ha).set_stream(Some(Duration::from_millis(50)));
    w.run(Duration::from_secs(secs));
    (w, ha, hb, link)
}

// ----- plugin tests: the World as the network under Bevy apps --------------------------------

impl AsRef<Sim> for World {
    fn as_ref(&self) -> &Sim {
        &self.sim
    }
}

impl AsMut<Sim> for World {
    fn as_mut(&mut self) -> &mut Sim {
        &mut self.sim
    }
}

impl World {
    /// The relay's token keys (an in-memory shard mints with them).
    pub fn token_keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// The clock anchor the relay runs on (give it to simulated clients too).
    pub fn clock(&self) -> ClockAnchor {
        self.clock
    }

    /// The host config of the next client on `site`, for a host the caller adds itself
    /// (a Bevy app's simulated mesh socket).
    pub fn next_host(&mut self, site: &mut Site) -> HostConfig {
        let ip = match site.nat {
            Some(_) => Ipv4Addr::new(192, 168, 0, site.next_host),
            None => site.public_ip,
        };
        site.next_host += 1;
        match site.nat {
            Some(nat) => HostConfig::behind(nat, ip),
            None => HostConfig::public(ip),
        }
        .uplink(home_uplink())
    }

    /// The shard's roles ([`SimShard`]: Agent routing, Lobby, Game servers) on a host of
    /// this world, sending clients to its punch server for STUN and relaying; `tweak` changes
    /// the roles' settings.
    pub fn plugin_shard_with(&mut self, tweak: impl FnOnce(&mut LocalShardConfig)) -> SimShard {
        let punch = PunchInfo {
            host: self.server,
            addr: self.punch_addr(),
            schedule: self.schedule.clone(),
            keys: self.keys.clone(),
            clock: self.clock,
        };
        let seed = self.rng.random();
        SimShard::add_to(&mut self.sim, IpAddr::V4(SHARD_IP), &punch, seed, tweak)
    }

    /// [`World::plugin_shard_with`] with `p2pmodel shard`'s defaults.
    pub fn plugin_shard(&mut self) -> SimShard {
        self.plugin_shard_with(|_| {})
    }
}
