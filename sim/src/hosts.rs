//! The shard's servers as simulated hosts, running the production code of the core:
//! [`PunchServer`] (the STUN server and the relay, `relay::Relay`) and [`SimShard`] (every
//! shard role — the Agent's routing, the Lobby, the Game servers — as
//! [`LocalShard`](p2pmodel_core::shard::LocalShard)).
//!
//! Clients reach the shard through an in-memory connection ([`SimShard::connect`]): the
//! servers' renet/netcode transport is not simulated, the roles behind it are. The shard
//! host ticks on the simulator's clock, so Game ticks, heartbeats and failure detection run
//! in virtual time, and a Game-server crash or a Lobby restart happens at an exact instant.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use p2pmodel_core::endpoint::{ClockAnchor, Endpoint, Transmit};
use p2pmodel_core::proto::shard::{ClientMessage, PathState, PlayerId, ShardMessage, decode, encode};
use p2pmodel_core::proto::{DatagramClass, classify};
use p2pmodel_core::relay::{KeySchedule, Relay, RelayConfig, RelayEndpoint, RelayKey, TokenKeys};
use p2pmodel_core::shard::game::ShardRelay;
use p2pmodel_core::shard::{CharacterStore, LocalShard, LocalShardConfig};
use p2pmodel_core::stun::{StunServer, StunServerConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{HostConfig, HostId, Realm, Sim};

/// Unix time the simulated clock starts at (fixed, so runs are reproducible).
pub const SIM_UNIX_START: u64 = 1_790_000_000;

/// STUN (two IPs × two ports) and the relay on one simulated public host, as the shard's
/// punch server runs them.
pub struct PunchServer {
    stun: StunServer,
    relay: RelayEndpoint,
    relay_addr: SocketAddr,
}

/// What [`PunchServer::add_to`] returns: where it is and the secrets a shard needs.
#[derive(Debug, Clone)]
pub struct PunchInfo {
    /// The host.
    pub host: HostId,
    /// STUN primary and relay address (`ip:3478`).
    pub addr: SocketAddr,
    /// The relay's token key schedule (the shard's Game servers mint with it).
    pub schedule: KeySchedule,
    /// The token keys the relay holds (one epoch: the schedule does not rotate here).
    pub keys: TokenKeys,
    /// The relay's clock anchor (give it to the clients too).
    pub clock: ClockAnchor,
}

impl PunchInfo {
    /// A relay-token expiry `secs` after the simulator's start.
    pub fn token_expiry(&self, secs: u64) -> u32 {
        (self.clock.unix_secs_at(self.clock.at) + secs) as u32
    }
}

impl PunchServer {
    /// Add a punch server on `ip` (alternate `alt_ip`, ports 3478/3479) to `sim`, with a
    /// relay key from `seed` (no rotation).
    pub fn add_to(sim: &mut Sim, ip: IpAddr, alt_ip: IpAddr, seed: u64) -> PunchInfo {
        let clock = ClockAnchor { at: sim.now(), unix_micros: SIM_UNIX_START * 1_000_000 };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let schedule = KeySchedule::new(RelayKey::from_bytes(rng.random()), Duration::ZERO);
        let keys = schedule.relay_keys(SIM_UNIX_START);
        let server = PunchServer::new(ip, alt_ip, keys.clone(), clock, rng.random());
        let addr = server.relay_addr;
        let host = sim.add_host(HostConfig::public(ip).extra_ip(alt_ip).port(3478), server);
        PunchInfo { host, addr, schedule, keys, clock }
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
        PunchServer { stun, relay: RelayEndpoint::new(relay), relay_addr }
    }

    /// The relay inside (stats).
    pub fn relay(&self) -> &Relay {
        self.relay.relay()
    }

    /// Add one more relay of a shard with several (issue #15) to `sim`: relay `id` on `ip`
    /// (STUN on `ip` and `alt_ip`, ports 3478/3479), with its own random relay key, behind a
    /// [`DelayLine`] that adds `delays` (one way, each direction) toward the IPs listed.
    /// Returns its host and what the shard's Game servers mint its tokens with.
    pub fn add_relay_to(
        sim: &mut Sim,
        ip: IpAddr,
        alt_ip: IpAddr,
        id: u8,
        clock: ClockAnchor,
        seed: u64,
        delays: Vec<(IpAddr, Duration)>,
    ) -> (HostId, ShardRelay) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keys = KeySchedule::new(RelayKey::from_bytes(rng.random()), Duration::ZERO).with_relay_id(id);
        let clock_unix = clock.unix_secs_at(clock.at);
        let server = PunchServer::new(ip, alt_ip, keys.relay_keys(clock_unix), clock, rng.random());
        let addr = server.relay_addr;
        let host =
            sim.add_host(HostConfig::public(ip).extra_ip(alt_ip).port(3478), DelayLine::new(server, delays));
        (host, ShardRelay { addr, keys })
    }
}

/// A datagram on its way into a [`DelayLine`]: (due, order, local, from, bytes).
type Inbound = Reverse<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>;
/// A datagram on its way out of a [`DelayLine`]: (due, order, src, dst, bytes).
type Outbound = Reverse<(Instant, u64, Option<SocketAddr>, SocketAddr, Vec<u8>)>;

/// A host behind delay lines toward some IPs, and a switch that takes it off the network:
/// the simulator's way to put a relay "far" from one site and "near" another (its core
/// latency is the same between any two hosts), and to kill it.
pub struct DelayLine<E> {
    inner: E,
    delays: Vec<(IpAddr, Duration)>,
    /// Datagrams on their way in.
    inbox: BinaryHeap<Inbound>,
    /// Datagrams on their way out, by due time.
    outbox: BinaryHeap<Outbound>,
    seq: u64,
    now: Option<Instant>,
    /// Off the network: everything in or out is dropped.
    pub down: bool,
}

impl<E: Endpoint> DelayLine<E> {
    /// `inner` behind lines adding `delays` toward (and from) the IPs listed.
    pub fn new(inner: E, delays: Vec<(IpAddr, Duration)>) -> DelayLine<E> {
        DelayLine {
            inner,
            delays,
            inbox: BinaryHeap::new(),
            outbox: BinaryHeap::new(),
            seq: 0,
            now: None,
            down: false,
        }
    }

    /// The host inside.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The extra one-way delay toward `ip`.
    pub fn delay_to(&self, ip: IpAddr) -> Duration {
        self.delays.iter().find(|(a, _)| *a == ip).map_or(Duration::ZERO, |(_, d)| *d)
    }

    /// Change the extra delay toward `ip`.
    pub fn set_delay(&mut self, ip: IpAddr, d: Duration) {
        self.delays.retain(|(a, _)| *a != ip);
        self.delays.push((ip, d));
    }

    fn collect(&mut self, now: Instant) {
        while let Some(t) = self.inner.poll_transmit() {
            if self.down {
                continue;
            }
            let due = now + self.delay_to(t.dst.ip());
            self.seq += 1;
            self.outbox.push(Reverse((due, self.seq, t.src, t.dst, t.payload)));
        }
    }
}

impl<E: Endpoint> Endpoint for DelayLine<E> {
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        self.now = Some(now);
        if self.down {
            self.inbox.clear();
            self.outbox.clear();
            return;
        }
        let d = self.delay_to(from.ip());
        if d.is_zero() {
            self.inner.handle_datagram(now, local, from, data);
            self.collect(now);
        } else {
            self.seq += 1;
            self.inbox.push(Reverse((now + d, self.seq, local, from, data.to_vec())));
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        while let Some(Reverse((due, ..))) = self.inbox.peek()
            && *due <= now
        {
            let Some(Reverse((_, _, local, from, data))) = self.inbox.pop() else { break };
            if !self.down {
                self.inner.handle_datagram(now, local, from, &data);
            }
        }
        if self.inner.poll_timeout().is_some_and(|t| t <= now) {
            self.inner.handle_timeout(now);
        }
        self.collect(now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        let now = self.now?;
        match self.outbox.peek() {
            Some(Reverse((due, ..))) if *due <= now => {
                let Reverse((_, _, src, dst, payload)) = self.outbox.pop()?;
                (!self.down).then_some(Transmit { src, dst, payload })
            }
            _ => None,
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let inbox = self.inbox.peek().map(|Reverse((t, ..))| *t);
        let outbox = self.outbox.peek().map(|Reverse((t, ..))| *t);
        [inbox, outbox, self.inner.poll_timeout()].into_iter().flatten().min()
    }
}

impl Endpoint for PunchServer {
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

/// One client's side of the in-memory connection.
#[derive(Debug, Default)]
struct Conn {
    connected: bool,
    name: String,
    ip: Option<IpAddr>,
    inbox: VecDeque<Vec<u8>>,
    bytes_in: u64,
    bytes_out: u64,
}

#[derive(Debug)]
struct Inner {
    shard: LocalShard,
    /// What a restart starts from (the same store and keys: a process restarted on its disk).
    cfg: LocalShardConfig,
    clock: ClockAnchor,
    /// The whole shard is down: connections are refused until [`SimShard::restart`].
    down: bool,
    now: Instant,
    conns: BTreeMap<u64, Conn>,
    next_client: u64,
    /// Messages for clients without a connection (dropped).
    dropped: u64,
}

impl Inner {
    fn drain(&mut self) {
        while let Some(o) = self.shard.poll_outgoing() {
            match self.conns.get_mut(&o.client) {
                Some(c) if c.connected => {
                    c.bytes_in += o.bytes.len() as u64;
                    c.inbox.push_back(o.bytes);
                }
                _ => self.dropped += 1,
            }
        }
    }
}

/// The whole shard (Agent routing, Lobby, Game servers: the production role logic) on the
/// simulator's clock. Clone it freely: clones share the shard. Add it to a simulator with
/// [`SimShard::add_to`] so it ticks.
#[derive(Clone, Debug)]
pub struct SimShard(Arc<Mutex<Inner>>);

/// The simulator node that ticks a [`SimShard`] (it sends and receives no datagrams).
#[derive(Debug)]
pub struct SimShardNode(SimShard);

impl Endpoint for SimShardNode {
    fn handle_datagram(&mut self, _now: Instant, _local: SocketAddr, _from: SocketAddr, _data: &[u8]) {}
    fn handle_timeout(&mut self, now: Instant) {
        let mut s = self.0.lock();
        s.now = now;
        s.shard.handle_timeout(now);
        s.drain();
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.0.lock().shard.poll_timeout()
    }
}

impl SimShard {
    /// A shard whose clients use `punch` for STUN and relaying; `tweak` changes the roles'
    /// settings (zones, game rules, heartbeat timeout) from `p2pmodel shard`'s defaults. Its
    /// ticking node is added to `sim` on `ip`.
    pub fn add_to(
        sim: &mut Sim,
        ip: IpAddr,
        punch: &PunchInfo,
        seed: u64,
        tweak: impl FnOnce(&mut LocalShardConfig),
    ) -> SimShard {
        let mut cfg = LocalShardConfig::new(punch.addr, Some(punch.addr), punch.schedule.clone(), seed);
        tweak(&mut cfg);
        let now = sim.now();
        let shard = SimShard(Arc::new(Mutex::new(Inner {
            shard: LocalShard::new(now, cfg.clone(), punch.clock),
            cfg,
            clock: punch.clock,
            down: false,
            now,
            conns: BTreeMap::new(),
            next_client: 1,
            dropped: 0,
        })));
        sim.add_host(HostConfig::public(ip), SimShardNode(shard.clone()));
        shard
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock only happens in a failing test; keep going.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new client connection, logged in as `name` from public IP `ip` (what the Agent
    /// would see; `None`: unknown), connected at once. Returns its client id.
    pub fn connect(&self, name: &str, ip: Option<IpAddr>) -> u64 {
        let mut s = self.lock();
        let client = s.next_client;
        s.next_client += 1;
        s.conns.insert(client, Conn { name: name.to_string(), ip, ..Conn::default() });
        drop(s);
        self.reconnect(client);
        client
    }

    /// (Re)open `client`'s connection (a new session under the same name and IP).
    pub fn reconnect(&self, client: u64) {
        let mut s = self.lock();
        let now = s.now;
        if s.down {
            return;
        }
        let Some(c) = s.conns.get_mut(&client) else { return };
        if c.connected {
            return;
        }
        c.connected = true;
        let (name, ip) = (c.name.clone(), c.ip);
        s.shard.connect(now, client, &name, ip);
        s.drain();
    }

    /// Close `client`'s connection (the shard learns it at once).
    pub fn disconnect(&self, client: u64) {
        let mut s = self.lock();
        let now = s.now;
        if let Some(c) = s.conns.get_mut(&client).filter(|c| c.connected) {
            c.connected = false;
            c.inbox.clear();
            s.shard.disconnect(now, client);
            s.drain();
        }
    }

    /// `client`'s connection drops without the shard hearing of it (its Agent process died
    /// and a new one took over: the Lobby and the Game servers still hold the session).
    pub fn disconnect_silently(&self, client: u64) {
        if let Some(c) = self.lock().conns.get_mut(&client) {
            c.connected = false;
            c.inbox.clear();
        }
    }

    /// Whether `client` is connected.
    pub fn is_connected(&self, client: u64) -> bool {
        self.lock().conns.get(&client).is_some_and(|c| c.connected)
    }

    /// A message from `client` (encoded as the Agent receives it).
    pub fn send(&self, client: u64, msg: &ClientMessage) {
        let Ok(bytes) = encode(msg) else { return };
        let mut s = self.lock();
        let now = s.now;
        match s.conns.get_mut(&client) {
            Some(c) if c.connected => c.bytes_out += bytes.len() as u64,
            _ => return,
        }
        s.shard.from_client(now, client, &bytes);
        s.drain();
    }

    /// The next message for `client`, decoded.
    pub fn receive(&self, client: u64) -> Option<ShardMessage> {
        let bytes = self.lock().conns.get_mut(&client)?.inbox.pop_front()?;
        decode(&bytes).ok()
    }

    /// Bytes `(to the client, from the client)` on `client`'s connection.
    pub fn bytes(&self, client: u64) -> (u64, u64) {
        self.lock().conns.get(&client).map_or((0, 0), |c| (c.bytes_in, c.bytes_out))
    }

    /// The player logged in under `name` (the Lobby's view).
    pub fn player(&self, name: &str) -> Option<PlayerId> {
        let s = self.lock();
        s.shard.lobby()?.clients.values().find(|c| c.name == name).map(|c| c.player)
    }

    /// The Game server `player` plays on, if placed.
    pub fn game_of(&self, player: PlayerId) -> Option<u32> {
        let s = self.lock();
        s.shard.lobby()?.clients.values().find(|c| c.player == player).and_then(|c| c.placed).map(|(_, g)| g)
    }

    /// The paths both sides of the pair `a`–`b` last reported to their Game server
    /// (`[lower id's, higher id's]`), if the pair is introduced.
    pub fn pair_paths(&self, a: PlayerId, b: PlayerId) -> Option<[Option<PathState>; 2]> {
        let k = if a < b { (a, b) } else { (b, a) };
        let s = self.lock();
        s.shard.games().iter().find_map(|g| g.pairs().find(|(p, _)| **p == k).map(|(_, pair)| pair.paths))
    }

    /// The relay (index in the shard's relay list) and the standby the pair `a`–`b` was
    /// given, if it is introduced.
    pub fn pair_relays(&self, a: PlayerId, b: PlayerId) -> Option<(Option<u8>, Option<u8>)> {
        let k = if a < b { (a, b) } else { (b, a) };
        let s = self.lock();
        s.shard
            .games()
            .iter()
            .find_map(|g| g.pairs().find(|(p, _)| **p == k).map(|(_, pair)| (pair.relay, pair.standby)))
    }

    /// Introduced pairs over all Game servers.
    pub fn pairs(&self) -> usize {
        self.lock().shard.games().iter().map(|g| g.pairs().count()).sum()
    }

    /// Kill Game server `id` (a crashed process): the Lobby moves its players after the
    /// heartbeat timeout.
    pub fn kill_game(&self, id: u32) {
        self.lock().shard.kill_game(id);
    }

    /// Stop the Lobby (a crashed process).
    pub fn stop_lobby(&self) {
        self.lock().shard.stop_lobby();
    }

    /// Start a new Lobby with `store` (`None`: the shard's store, whose characters
    /// survived); the Agent re-announces its clients.
    pub fn start_lobby(&self, store: Option<Box<dyn CharacterStore>>) {
        let mut s = self.lock();
        let now = s.now;
        s.shard.start_lobby(now, store);
        s.drain();
    }

    /// Restart the Lobby at once with the shard's store (characters persisted).
    pub fn restart_lobby(&self) {
        self.stop_lobby();
        self.start_lobby(None);
    }

    /// The whole shard process dies (`kill -9`): every connection drops at once, every role
    /// loses its memory; what its store holds survives. Connections are refused until
    /// [`SimShard::restart`].
    pub fn crash(&self) {
        let mut s = self.lock();
        s.down = true;
        for c in s.conns.values_mut() {
            c.connected = false;
            c.inbox.clear();
        }
        let (now, cfg, clock) = (s.now, s.cfg.clone(), s.clock);
        s.shard = LocalShard::new(now, cfg, clock);
    }

    /// The shard process is back (fresh roles on the same store and keys): clients may
    /// reconnect and resume.
    pub fn restart(&self) {
        let mut s = self.lock();
        let (now, cfg, clock) = (s.now, s.cfg.clone(), s.clock);
        s.shard = LocalShard::new(now, cfg, clock);
        s.down = false;
    }

    /// Whether the shard is down.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Messages for clients that had no connection (dropped).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Run `f` on the shard's roles (inspect the Lobby, the Games, the Agent's counters).
    pub fn with<R>(&self, f: impl FnOnce(&LocalShard) -> R) -> R {
        f(&self.lock().shard)
    }
}

/// The public IP the Agent would see for a host with `config` in `sim`.
pub fn public_ip(sim: &Sim, config: &HostConfig) -> Option<IpAddr> {
    match config.realm {
        Realm::Public => config.ips.first().copied(),
        Realm::Behind(nat) => Some(sim.nat_public_ip(nat)),
    }
}
