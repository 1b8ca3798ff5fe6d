//! The plugins over the simulator: a [`MeshIo`] backed by a simulated host, an in-memory
//! shard, a punch server (STUN + relay) and a stepper that advances the simulator and the
//! Bevy apps together in virtual time.
//!
//! The apps share one simulator through `Rc<RefCell<_>>`, which is why [`MeshSocket`] is a
//! `NonSend` resource. A frame of the [`SimStepper`] runs the network for one frame's time,
//! then updates each app with that much manual time, so a test of two players behind NATs
//! runs in milliseconds and gives the same result on every run.
//!
//! ```no_run
//! # use std::{cell::RefCell, rc::Rc, time::Duration};
//! # use bevy_p2pmodel::plugins::sim::*;
//! # use bevy_p2pmodel::sim::{HostConfig, NatConfig, Sim};
//! let mut sim = Sim::new(1);
//! let punch = SimPunchServer::add_to(&mut sim, [203, 0, 113, 1].into(), [203, 0, 113, 2].into(), 1);
//! let shard = SimShard::new(punch.addr, Some((punch.addr, punch.keys.clone())), punch.token_expiry(3600), 1);
//! let nat = sim.add_nat(NatConfig::port_restricted().public_ip([198, 51, 100, 1]));
//! let mut stepper = SimStepper::new(Rc::new(RefCell::new(sim)), Duration::from_millis(10));
//! let ana = stepper.client_app("ana", HostConfig::behind(nat, [192, 168, 0, 2]), &shard, punch.clock);
//! stepper.run_frames(100);
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::state::app::StatesPlugin;
use bevy::time::TimeUpdateStrategy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::io::{MeshIo, MeshSocket};
use super::mesh::P2pMeshPlugin;
use super::shard::{ShardClientPlugin, ShardTransport};
use crate::crypto::LinkKey;
use crate::endpoint::{ClockAnchor, Endpoint, Transmit};
use crate::link::{Candidate, LinkParams, NatHint, RelayParams};
use crate::proto::peer::{LinkId, Side};
use crate::proto::shard::{ClientMessage, NatSummary, PathState, PlayerId, ShardMessage, encode};
use crate::proto::{DatagramClass, classify};
use crate::relay::{Relay, RelayConfig, RelayEndpoint, TokenKeys, mint};
use crate::sim::{HostConfig, HostId, Sim};
use crate::stun::{StunServer, StunServerConfig};

/// Most datagrams a [`SimMailbox`] holds before it drops (a stalled app must not grow
/// memory without bound).
pub const MAILBOX_CAPACITY: usize = 65_536;

/// A simulated host that only queues: the simulator delivers into its inbox, the app's
/// [`SimMeshIo`] drains it and fills the outbox the simulator sends from.
#[derive(Debug, Default)]
pub struct SimMailbox {
    inbox: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    outbox: VecDeque<Transmit>,
    /// Datagrams dropped because the inbox was full.
    pub dropped: u64,
}

impl Endpoint for SimMailbox {
    fn handle_datagram(&mut self, _now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        if self.inbox.len() >= MAILBOX_CAPACITY {
            self.dropped += 1;
            return;
        }
        self.inbox.push_back((local, from, data.to_vec()));
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// A [`MeshIo`] on a simulated host: datagrams cross the simulated NATs, `now()` is the
/// simulator's clock. `W` is the simulator or anything that owns one (a test world).
pub struct SimMeshIo<W: AsRef<Sim> + AsMut<Sim> + 'static = Sim> {
    net: Rc<RefCell<W>>,
    host: HostId,
    anchor: ClockAnchor,
}

impl<W: AsRef<Sim> + AsMut<Sim> + 'static> SimMeshIo<W> {
    /// Add a mailbox host with `config` to the simulator and return its socket. `anchor`
    /// ties the simulator's clock to Unix time (use the relay's, so tokens agree).
    pub fn attach(net: &Rc<RefCell<W>>, config: HostConfig, anchor: ClockAnchor) -> Self {
        let host = net.borrow_mut().as_mut().add_host(config, SimMailbox::default());
        SimMeshIo { net: net.clone(), host, anchor }
    }

    /// The simulated host.
    pub fn host(&self) -> HostId {
        self.host
    }
}

impl<W: AsRef<Sim> + AsMut<Sim> + 'static> MeshIo for SimMeshIo<W> {
    fn now(&self) -> Instant {
        self.net.borrow().as_ref().now()
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        vec![self.net.borrow().as_ref().host_addr(self.host)]
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr, SocketAddr)> {
        let mut net = self.net.borrow_mut();
        let mailbox = net.as_mut().try_node_mut::<SimMailbox>(self.host)?;
        let (local, from, data) = mailbox.inbox.pop_front()?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Some((n, from, local))
    }

    fn send(&mut self, t: &Transmit) {
        let mut net = self.net.borrow_mut();
        if let Some(mailbox) = net.as_mut().try_node_mut::<SimMailbox>(self.host) {
            mailbox.outbox.push_back(t.clone());
        }
    }

    fn clock_anchor(&self) -> ClockAnchor {
        self.anchor
    }
}

/// STUN (two IPs × two ports) and the relay on one simulated public host, as the shard's
/// punch server runs them.
pub struct SimPunchServer {
    stun: StunServer,
    relay: RelayEndpoint,
    relay_addr: SocketAddr,
}

/// What [`SimPunchServer::add_to`] returns: where it is and the secrets a shard needs.
#[derive(Debug, Clone)]
pub struct SimPunchInfo {
    /// The host.
    pub host: HostId,
    /// STUN primary and relay address (`ip:3478`).
    pub addr: SocketAddr,
    /// The relay's token keys (the shard mints with them).
    pub keys: TokenKeys,
    /// The relay's clock anchor (give it to the clients too).
    pub clock: ClockAnchor,
}

impl SimPunchInfo {
    /// A relay-token expiry `secs` after the simulator's start.
    pub fn token_expiry(&self, secs: u64) -> u32 {
        (self.clock.unix_secs_at(self.clock.at) + secs) as u32
    }
}

/// Unix time the simulated clock starts at (fixed, so runs are reproducible).
pub const SIM_UNIX_START: u64 = 1_790_000_000;

impl SimPunchServer {
    /// Add a punch server on `ip` (alternate `alt_ip`, ports 3478/3479) to `sim`, with
    /// token keys from `seed`.
    pub fn add_to(sim: &mut Sim, ip: IpAddr, alt_ip: IpAddr, seed: u64) -> SimPunchInfo {
        let clock = ClockAnchor { at: sim.now(), unix_micros: SIM_UNIX_START * 1_000_000 };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keys = TokenKeys::new(1, rng.random());
        let server = SimPunchServer::new(ip, alt_ip, keys.clone(), clock, rng.random());
        let addr = server.relay_addr;
        let host = sim.add_host(HostConfig::public(ip).extra_ip(alt_ip).port(3478), server);
        SimPunchInfo { host, addr, keys, clock }
    }

    /// A punch server on `ip:3478` (RFC 5780 alternate `alt_ip:3479`) whose relay accepts
    /// tokens minted with `keys`.
    pub fn new(ip: IpAddr, alt_ip: IpAddr, keys: TokenKeys, clock: ClockAnchor, seed: u64) -> Self {
        let relay_addr = SocketAddr::new(ip, 3478);
        let stun = StunServer::new(StunServerConfig {
            primary: relay_addr,
            alt_port: Some(3479),
            alt_ip: Some(alt_ip),
            software: None,
            no_amplification: true,
        });
        let relay = Relay::new(RelayConfig::default(), keys, clock, ChaCha8Rng::seed_from_u64(seed).random());
        SimPunchServer { stun, relay: RelayEndpoint::new(relay), relay_addr }
    }

    /// The relay inside (stats).
    pub fn relay(&self) -> &Relay {
        self.relay.relay()
    }
}

impl Endpoint for SimPunchServer {
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        match classify(data) {
            Ok(DatagramClass::Stun) => self.stun.handle_datagram(now, local, from, data),
            _ if local == self.relay_addr => self.relay.handle_datagram(now, local, from, data),
            _ => {}
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.stun.handle_timeout(now);
        self.relay.handle_timeout(now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.stun.poll_transmit().or_else(|| self.relay.poll_transmit())
    }
    fn poll_timeout(&self) -> Option<Instant> {
        [self.stun.poll_timeout(), self.relay.poll_timeout()].into_iter().flatten().min()
    }
}

struct SimPlayer {
    name: String,
    connected: bool,
    logged_in: bool,
    zone: Option<u32>,
    candidates: Vec<Candidate>,
    nat: Option<NatSummary>,
    inbox: VecDeque<ShardMessage>,
    bytes_in: u64,
    bytes_out: u64,
}

struct ShardInner {
    stun: SocketAddr,
    relay: Option<(SocketAddr, TokenKeys)>,
    token_expiry: u32,
    rng: ChaCha8Rng,
    players: BTreeMap<PlayerId, SimPlayer>,
    pairs: BTreeMap<(PlayerId, PlayerId), LinkId>,
    next_player: u64,
    next_link: u32,
    path_reports: Vec<(PlayerId, LinkId, PathState)>,
    dropped: u64,
}

/// A shard in memory, for tests and examples: it answers `Login` with `Welcome` (the punch
/// server as STUN), and on `EnterZone` introduces every pair of players in the zone with
/// link keys and relay tokens, as the Game server does. `ToPeer` becomes `FromPeer`, chat
/// goes to the zone. Clone it freely: clones share the shard.
#[derive(Clone)]
pub struct SimShard(Arc<Mutex<ShardInner>>);

impl std::fmt::Debug for SimShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimShard").field("players", &self.lock().players.len()).finish()
    }
}

fn key(a: PlayerId, b: PlayerId) -> (PlayerId, PlayerId) {
    if a < b { (a, b) } else { (b, a) }
}

impl SimShard {
    /// A shard whose clients discover their NAT against `stun` and relay through `relay`
    /// (tokens minted with its keys, expiring at `token_expiry` Unix seconds).
    pub fn new(
        stun: SocketAddr,
        relay: Option<(SocketAddr, TokenKeys)>,
        token_expiry: u32,
        seed: u64,
    ) -> Self {
        SimShard(Arc::new(Mutex::new(ShardInner {
            stun,
            relay,
            token_expiry,
            rng: ChaCha8Rng::seed_from_u64(seed),
            players: BTreeMap::new(),
            pairs: BTreeMap::new(),
            next_player: 1,
            next_link: 1,
            path_reports: Vec::new(),
            dropped: 0,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, ShardInner> {
        // A panic while holding the lock only happens in a failing test; keep going.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection (one per client), connected at once.
    pub fn connect(&self) -> SimShardTransport {
        let mut s = self.lock();
        let player = PlayerId(s.next_player);
        s.next_player += 1;
        s.players.insert(
            player,
            SimPlayer {
                name: String::new(),
                connected: true,
                logged_in: false,
                zone: None,
                candidates: Vec::new(),
                nat: None,
                inbox: VecDeque::new(),
                bytes_in: 0,
                bytes_out: 0,
            },
        );
        SimShardTransport { shard: self.clone(), player }
    }

    /// The player logged in under `name`.
    pub fn player(&self, name: &str) -> Option<PlayerId> {
        self.lock().players.iter().find(|(_, p)| p.logged_in && p.name == name).map(|(id, _)| *id)
    }

    /// The link the shard assigned to a pair, if introduced.
    pub fn link_between(&self, a: PlayerId, b: PlayerId) -> Option<LinkId> {
        self.lock().pairs.get(&key(a, b)).copied()
    }

    /// Every `PathReport` received: (reporter, link, path).
    pub fn path_reports(&self) -> Vec<(PlayerId, LinkId, PathState)> {
        self.lock().path_reports.clone()
    }

    /// Un-introduce a pair (as when players move apart): both get `PeerOutro`.
    pub fn outro(&self, a: PlayerId, b: PlayerId) -> bool {
        self.lock().outro(key(a, b))
    }

    /// Messages for a player that was gone (dropped).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

impl ShardInner {
    fn deliver(&mut self, p: PlayerId, msg: ShardMessage) {
        match self.players.get_mut(&p) {
            Some(pl) if pl.connected => {
                pl.bytes_in += encode(&msg).map_or(0, |b| b.len() as u64);
                pl.inbox.push_back(msg);
            }
            _ => self.dropped += 1,
        }
    }

    fn outro(&mut self, k: (PlayerId, PlayerId)) -> bool {
        let Some(link) = self.pairs.remove(&k) else { return false };
        self.deliver(k.0, ShardMessage::PeerOutro { link });
        self.deliver(k.1, ShardMessage::PeerOutro { link });
        true
    }

    fn intro(&mut self, k: (PlayerId, PlayerId)) {
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let link_key = LinkKey(self.rng.random());
        let (Some(a), Some(b)) = (self.players.get(&k.0), self.players.get(&k.1)) else { return };
        let hint = |p: &SimPlayer| {
            p.nat
                .as_ref()
                .map(|n| NatHint { dependent_mapping: n.dependent_mapping, port_delta: n.port_delta })
                .unwrap_or_default()
        };
        let mut intros = Vec::new();
        for (me, other, side, peer) in [(k.0, b, Side::A, k.1), (k.1, a, Side::B, k.0)] {
            let relay = self.relay.as_ref().map(|(addr, keys)| {
                let (token, bind_key) = mint(keys, link, side, self.token_expiry);
                RelayParams { addr: *addr, token, bind_key }
            });
            let params = LinkParams {
                link,
                side,
                key: link_key.clone(),
                remote: other.candidates.clone(),
                remote_nat: hint(other),
                relay,
            };
            intros.push((me, ShardMessage::PeerIntro { peer, name: other.name.clone(), params }));
        }
        for (me, msg) in intros {
            self.deliver(me, msg);
        }
        self.pairs.insert(k, link);
    }

    fn handle(&mut self, from: PlayerId, msg: &ClientMessage) {
        let Some(p) = self.players.get_mut(&from) else { return };
        p.bytes_out += encode(msg).map_or(0, |b| b.len() as u64);
        match msg {
            ClientMessage::Login { name } => {
                p.name = name.clone();
                p.logged_in = true;
                let stun = self.stun;
                self.deliver(from, ShardMessage::Welcome { player: from, stun });
            }
            ClientMessage::MeshInfo { candidates, nat } => {
                p.candidates = candidates.clone();
                p.nat = Some(nat.clone());
            }
            ClientMessage::EnterZone { zone } => {
                p.zone = Some(*zone);
                self.deliver(from, ShardMessage::EnteredZone { zone: *zone, x: 0.0, y: 0.0 });
                let others: Vec<PlayerId> = self
                    .players
                    .iter()
                    .filter(|(id, o)| **id != from && o.connected && o.zone == Some(*zone))
                    .map(|(id, _)| *id)
                    .collect();
                for o in others {
                    if !self.pairs.contains_key(&key(from, o)) {
                        self.intro(key(from, o));
                    }
                }
            }
            ClientMessage::Chat { text } => {
                let (zone, name) = (p.zone, p.name.clone());
                let to: Vec<PlayerId> = self
                    .players
                    .iter()
                    .filter(|(_, o)| o.zone.is_some() && o.zone == zone)
                    .map(|(id, _)| *id)
                    .collect();
                for t in to {
                    self.deliver(t, ShardMessage::Chat { from, name: name.clone(), text: text.clone() });
                }
            }
            ClientMessage::PathReport { link, path, .. } => self.path_reports.push((from, *link, *path)),
            ClientMessage::ToPeer { peer, reliable, data } => {
                if self.pairs.contains_key(&key(from, *peer)) {
                    let msg = ShardMessage::FromPeer { peer: from, reliable: *reliable, data: data.clone() };
                    self.deliver(*peer, msg);
                }
            }
            // The simulator's shard has no parties (it meshes a whole zone).
            ClientMessage::Move { .. }
            | ClientMessage::JoinParty { .. }
            | ClientMessage::InviteToParty { .. } => {}
        }
    }

    fn leave(&mut self, player: PlayerId) {
        let pairs: Vec<_> =
            self.pairs.keys().filter(|(a, b)| *a == player || *b == player).copied().collect();
        for k in pairs {
            self.outro(k);
        }
        if let Some(p) = self.players.get_mut(&player) {
            p.connected = false;
            p.logged_in = false;
            p.zone = None;
            p.inbox.clear();
        }
    }
}

/// One client's connection to a [`SimShard`].
#[derive(Debug)]
pub struct SimShardTransport {
    shard: SimShard,
    player: PlayerId,
}

impl SimShardTransport {
    /// The player id this connection will log in as.
    pub fn player(&self) -> PlayerId {
        self.player
    }
}

impl ShardTransport for SimShardTransport {
    fn is_connected(&self) -> bool {
        self.shard.lock().players.get(&self.player).is_some_and(|p| p.connected)
    }
    fn send(&mut self, msg: &ClientMessage, _reliable: bool) {
        self.shard.lock().handle(self.player, msg);
    }
    fn receive(&mut self) -> Option<ShardMessage> {
        self.shard.lock().players.get_mut(&self.player)?.inbox.pop_front()
    }
    fn bytes_in(&self) -> u64 {
        self.shard.lock().players.get(&self.player).map_or(0, |p| p.bytes_in)
    }
    fn bytes_out(&self) -> u64 {
        self.shard.lock().players.get(&self.player).map_or(0, |p| p.bytes_out)
    }
    fn disconnect(&mut self) {
        self.shard.lock().leave(self.player);
    }
    fn connect(&mut self) {
        if let Some(p) = self.shard.lock().players.get_mut(&self.player) {
            p.connected = true;
        }
    }
}

/// Steps the simulator and a set of Bevy apps together: each frame runs the network for
/// `frame` of virtual time, then updates every app with `frame` of manual time.
pub struct SimStepper<W: AsRef<Sim> + AsMut<Sim> + 'static = Sim> {
    /// The shared simulator (or the world owning it).
    pub net: Rc<RefCell<W>>,
    /// The apps, in the order they were added.
    pub apps: Vec<App>,
    /// One frame.
    pub frame: Duration,
    frames: u64,
}

impl<W: AsRef<Sim> + AsMut<Sim> + 'static> SimStepper<W> {
    /// A stepper with no apps yet.
    pub fn new(net: Rc<RefCell<W>>, frame: Duration) -> Self {
        SimStepper { net, apps: Vec::new(), frame, frames: 0 }
    }

    /// Add an app: it gets manual time of one frame per update and is finished (plugins'
    /// `finish`/`cleanup`). Returns its index.
    pub fn add_app(&mut self, mut app: App) -> usize {
        app.insert_resource(TimeUpdateStrategy::ManualDuration(self.frame));
        app.finish();
        app.cleanup();
        self.apps.push(app);
        self.apps.len() - 1
    }

    /// A headless game client on a new simulated host: `MinimalPlugins`, `StatesPlugin`,
    /// the mesh over the simulator and the shard plugin over `shard`. Returns its index.
    pub fn client_app(
        &mut self,
        name: &str,
        host: HostConfig,
        shard: &SimShard,
        clock: ClockAnchor,
    ) -> usize {
        let mut mesh = P2pMeshPlugin::new(name);
        mesh.client.seed = self.apps.len() as u64 + 1;
        self.client_app_with(mesh, host, shard, clock, Some(0))
    }

    /// [`SimStepper::client_app`] with your own mesh settings and auto zone.
    pub fn client_app_with(
        &mut self,
        mesh: P2pMeshPlugin,
        host: HostConfig,
        shard: &SimShard,
        clock: ClockAnchor,
        auto_zone: Option<u32>,
    ) -> usize {
        let mut app = App::new();
        app.add_plugins((MinimalPlugins, StatesPlugin));
        app.insert_non_send(MeshSocket(Box::new(SimMeshIo::attach(&self.net, host, clock))));
        app.add_plugins(mesh);
        let plugin = ShardClientPlugin { auto_zone, ..ShardClientPlugin::default() };
        app.add_plugins(plugin.with_transport(shard.connect()));
        self.add_app(app)
    }

    /// Run one frame.
    pub fn step(&mut self) {
        let frame = self.frame;
        self.net.borrow_mut().as_mut().run_for(frame);
        for app in &mut self.apps {
            app.update();
        }
        self.frames += 1;
    }

    /// Run `n` frames.
    pub fn run_frames(&mut self, n: u64) {
        for _ in 0..n {
            self.step();
        }
    }

    /// Step until `cond` holds, at most `max_frames`; returns whether it held.
    pub fn run_until(&mut self, max_frames: u64, mut cond: impl FnMut(&mut Self) -> bool) -> bool {
        for _ in 0..max_frames {
            if cond(self) {
                return true;
            }
            self.step();
        }
        cond(self)
    }

    /// Frames run so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Virtual time elapsed in the simulator.
    pub fn elapsed(&self) -> Duration {
        self.net.borrow().as_ref().elapsed()
    }

    /// One app's world.
    pub fn world(&self, app: usize) -> &World {
        self.apps[app].world()
    }

    /// One app's world, mutably.
    pub fn world_mut(&mut self, app: usize) -> &mut World {
        self.apps[app].world_mut()
    }
}
