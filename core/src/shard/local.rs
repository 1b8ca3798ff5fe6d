//! Every role of one shard in one sans-IO value: the Agent's router, the Lobby and the Game
//! servers of every zone, on one [`Bus`] — the same code `p2pmodel shard` runs, minus the
//! sockets. The simulator and the tests attach clients to it with bytes in, bytes out
//! (encoded [`ClientMessage`](crate::proto::shard::ClientMessage)s and
//! [`ShardMessage`](crate::proto::shard::ShardMessage)s), and can kill a Game server or
//! restart the Lobby at a chosen instant, deterministically.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::agent::{AgentRouter, Outgoing};
use super::bus::Bus;
use super::game::{GameConfig, GameRules, GameWorld, ShardRelay};
use super::lobby::{CharacterStore, Lobby, LobbySettings, MemoryStore};
use super::party::PartyRules;
use super::resume::ResumeKey;
use crate::proto::shard::{InternalMessage, Role};
use crate::relay::{ClockAnchor, KeySchedule};

/// What a [`LocalShard`] is made of (the parts of a shard config its roles read).
#[derive(Debug, Clone)]
pub struct LocalShardConfig {
    /// `[game]` rules (tick rate, interest radius, caps, servers per zone...).
    pub game: GameConfig,
    /// Zones (each gets `game.servers_per_zone` Game servers, numbered from 0).
    pub zones: u32,
    /// The STUN server told to clients in `Welcome`.
    pub stun: SocketAddr,
    /// The relays put in introductions, by id (empty: direct paths only); each relay must
    /// hold its schedule. [`LocalShardConfig::new`] makes the one given there relay 0.
    pub relays: Vec<ShardRelay>,
    /// Game → Lobby and Agent → Lobby heartbeat interval.
    pub heartbeat: Duration,
    /// Silence after which the Lobby declares a Game server dead and moves its players.
    pub heartbeat_timeout: Duration,
    /// Messages each client may send per second.
    pub max_messages_per_sec: u32,
    /// Seeds the Game servers' link keys (same seed, same run).
    pub seed: u64,
    /// The characters (a clone shares them): what survives a Lobby restart.
    pub store: MemoryStore,
    /// The key resume tickets are sealed with (the servers derive it from the shard secret).
    pub resume: ResumeKey,
    /// Parties by invitation, or open rooms.
    pub parties: PartyRules,
}

impl LocalShardConfig {
    /// The defaults of `p2pmodel shard` (heartbeat 250 ms, timeout 1 s, 200 messages/s per
    /// client, one zone) around `stun`, `relay` and `keys`.
    pub fn new(stun: SocketAddr, relay: Option<SocketAddr>, keys: KeySchedule, seed: u64) -> Self {
        LocalShardConfig {
            game: GameConfig::default(),
            zones: 1,
            stun,
            relays: relay.map(|addr| ShardRelay { addr, keys }).into_iter().collect(),
            heartbeat: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(1),
            max_messages_per_sec: 200,
            seed,
            store: MemoryStore::default(),
            resume: ResumeKey(ChaCha8Rng::seed_from_u64(seed ^ 0x7265_7375_6d65).random()),
            parties: PartyRules::default(),
        }
    }
}

/// Every role of a shard, driven by `now` (see the module docs).
#[derive(Debug)]
pub struct LocalShard {
    cfg: LocalShardConfig,
    rules: GameRules,
    clock: ClockAnchor,
    bus: Bus,
    agent: AgentRouter,
    lobby: Option<Lobby>,
    games: Vec<GameWorld>,
    /// Killed or paused Game servers (no ticks, no heartbeats, inbox dropped).
    stopped: BTreeSet<u32>,
    next_tick: Instant,
    outgoing: VecDeque<Outgoing>,
    rng: ChaCha8Rng,
}

impl LocalShard {
    /// A shard started at `now`; `clock` maps `now` to Unix time (token expiry).
    pub fn new(now: Instant, cfg: LocalShardConfig, clock: ClockAnchor) -> LocalShard {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let spz = cfg.game.servers_per_zone.max(1);
        let games = (0..cfg.zones * spz)
            .map(|g| {
                let mut seed = [0u8; 32];
                rng.fill_bytes(&mut seed);
                GameWorld::new(g, g / spz, seed)
            })
            .collect();
        let rules = GameRules { cfg: cfg.game.clone(), relays: cfg.relays.clone(), heartbeat: cfg.heartbeat };
        let agent = AgentRouter::new(cfg.max_messages_per_sec, cfg.heartbeat);
        let mut shard = LocalShard {
            rules,
            clock,
            bus: Bus::default(),
            agent,
            lobby: None,
            games,
            stopped: BTreeSet::new(),
            next_tick: now,
            outgoing: VecDeque::new(),
            rng,
            cfg,
        };
        shard.lobby = Some(shard.new_lobby(now, Box::new(shard.cfg.store.clone())));
        shard
    }

    fn new_lobby(&self, now: Instant, store: Box<dyn CharacterStore>) -> Lobby {
        let games = self.games.iter().map(|g| (g.id, g.zone));
        let cfg = &self.cfg;
        let settings = LobbySettings {
            zones: cfg.zones,
            stun: cfg.stun,
            heartbeat_timeout: cfg.heartbeat_timeout,
            capacity: cfg.game.capacity,
            resume: cfg.resume.clone(),
            unix: self.clock.unix_secs_at(now),
            parties: cfg.parties,
        };
        Lobby::new(now, store, games, settings)
    }

    /// A client connected with `name` from `ip` (its transport is the caller's).
    pub fn connect(&mut self, now: Instant, client: u64, name: &str, ip: Option<IpAddr>) {
        self.agent.connect(now, &mut self.bus, client, name.to_string(), ip);
        self.pump(now);
    }

    /// A client's connection is gone.
    pub fn disconnect(&mut self, now: Instant, client: u64) {
        self.agent.disconnect(&mut self.bus, client);
        self.pump(now);
    }

    /// One encoded `ClientMessage` from `client`.
    pub fn from_client(&mut self, now: Instant, client: u64, bytes: &[u8]) {
        self.agent.from_client(now, &mut self.bus, client, bytes);
        self.pump(now);
    }

    /// Run every role up to `now`: Game ticks that are due, heartbeats, failure detection.
    pub fn handle_timeout(&mut self, now: Instant) {
        let tick = Duration::from_secs(1) / self.rules.cfg.tick_hz.max(1);
        while self.next_tick <= now {
            let unix = self.clock.unix_secs_at(self.next_tick);
            for g in self.games.iter_mut().filter(|g| !self.stopped.contains(&g.id)) {
                for m in self.bus.drain(Role::Game(g.id)) {
                    g.handle(&mut self.bus, &self.rules, m);
                }
                g.step(&mut self.bus, &self.rules, unix);
            }
            self.next_tick += tick;
        }
        for g in self.games.iter_mut().filter(|g| !self.stopped.contains(&g.id)) {
            if g.heartbeat_due(now, self.rules.heartbeat) {
                self.bus.send(Role::Lobby, &InternalMessage::Heartbeat { from: Role::Game(g.id) });
            }
        }
        self.agent.tick(now, &mut self.bus);
        self.pump(now);
        if let Some(l) = &mut self.lobby {
            l.check(now, &mut self.bus);
        }
        self.pump(now);
    }

    /// Deliver what is queued: the Lobby's inbox, the live Games' inboxes (their ticks stay
    /// on the tick clock), and the Agent's messages for clients.
    fn pump(&mut self, now: Instant) {
        for _ in 0..4 {
            match &mut self.lobby {
                Some(l) => l.handle_all(now, &mut self.bus),
                None => self.bus.clear(Role::Lobby),
            }
            for g in self.games.iter_mut() {
                if self.stopped.contains(&g.id) {
                    self.bus.clear(Role::Game(g.id));
                    continue;
                }
                for m in self.bus.drain(Role::Game(g.id)) {
                    g.handle(&mut self.bus, &self.rules, m);
                }
            }
            self.outgoing.extend(self.agent.to_clients(&mut self.bus));
            if self.bus.pending_roles().is_empty() {
                break;
            }
        }
    }

    /// The next message for a client: `(client, reliable, encoded ShardMessage)`.
    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.outgoing.pop_front()
    }

    /// When [`LocalShard::handle_timeout`] must run next (the next Game tick).
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_tick)
    }

    /// Kill Game server `id` as a crashed process: it forgets its world and goes silent; the
    /// Lobby notices after `heartbeat_timeout` and moves its players.
    pub fn kill_game(&mut self, id: u32) {
        if let Some(g) = self.games.iter_mut().find(|g| g.id == id) {
            g.clear();
            self.stopped.insert(id);
        }
    }

    /// Bring Game server `id` back (empty, as a restarted process).
    pub fn restart_game(&mut self, id: u32) {
        self.stopped.remove(&id);
    }

    /// Stop the Lobby (a crashed process): its messages are lost until [`Self::start_lobby`].
    pub fn stop_lobby(&mut self) {
        self.lobby = None;
    }

    /// Start a fresh Lobby at `now` with `store` (`None`: the config's store, whose
    /// characters survived): the Agent re-announces its clients first, as it does when its
    /// internal link comes back.
    pub fn start_lobby(&mut self, now: Instant, store: Option<Box<dyn CharacterStore>>) {
        let store = store.unwrap_or_else(|| Box::new(self.cfg.store.clone()));
        self.lobby = Some(self.new_lobby(now, store));
        for m in self.agent.resync() {
            self.bus.send(Role::Lobby, &m);
        }
        self.pump(now);
    }

    /// The Lobby, while it runs.
    pub fn lobby(&self) -> Option<&Lobby> {
        self.lobby.as_ref()
    }

    /// The Game servers (stopped ones included, empty).
    pub fn games(&self) -> &[GameWorld] {
        &self.games
    }

    /// The Agent's router (sessions, counters).
    pub fn agent(&self) -> &AgentRouter {
        &self.agent
    }

    /// The bus's counters: `(delivered, errors)`.
    pub fn bus_counters(&self) -> (u64, u64) {
        (self.bus.delivered, self.bus.errors)
    }

    /// A random client id (the servers derive it from the name; any unique u64 will do).
    pub fn random_client_id(&mut self) -> u64 {
        self.rng.next_u64()
    }
}
