//! Game servers: the authoritative world of a zone at a fixed tick, movement validation,
//! interest management on a grid with hysteresis, and **mesh membership** — players in
//! range are introduced (`PeerIntro`), drifted-apart pairs un-introduced (`PeerOutro`), and
//! every pair's path (direct / relayed / lost) is tracked from the clients' `PathReport`s.
//! Besides, messages routed between introduced peers that have no P2P path (`ToPeer` →
//! `FromPeer`). Everything else a world has (rules, NPCs, chat, scores) is the game's own
//! logic: it gets [`GameEvent`]s and answers through [`GameWorld::send_to_player`] and
//! [`GameWorld::set_position`] (the servers' `game_api` wraps this for Bevy).
//!
//! One [`GameWorld`] per Game server, sans-IO: its driver calls [`GameWorld::handle`] for each
//! message on the [`Bus`], [`GameWorld::step`] at `tick_hz` with the Unix time, and sends a
//! heartbeat when [`GameWorld::heartbeat_due`] says so. It talks to other roles only through
//! the bus.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tracing::{debug, info};

use super::bus::Bus;
use super::intro::{IntroRefusals, IntroRelay, IntroSide, introduce, nat_hint};

mod relays;
use crate::link::Candidate;
use crate::proto::peer::LinkId;
use crate::proto::shard::{
    ClientMessage, InternalMessage, LinkSeq, MAX_GAME_DATA, MAX_GAME_DATA_TO_CLIENT, NatSummary, PathState,
    PlayerId, Role, ShardMessage,
};
pub use relays::{MOVE_EVERY, MOVE_MARGIN_MS, ShardRelay, UNKNOWN_RTT_MS};

/// Largest `ToPeer` payload the Game server routes (bytes); larger ones are dropped.
pub const MAX_PEER_DATA: usize = 1200;
/// Links a `KeepLinks` may list (more than `max_peers` ever allows; the rest are ignored).
pub const MAX_KEEP_LINKS: usize = 64;
/// How long a player whose connection was lost ([`InternalMessage::ClientAway`]) keeps its
/// place and its pairs: its links keep running meanwhile, and a resume within this time
/// finds them (the client keeps unconfirmed links as long, `ClientConfig::keep_grace`).
pub const AWAY_GRACE: Duration = Duration::from_secs(30);
/// Players per `Positions` message: at most 17 encoded bytes each, so a message stays well
/// under `MAX_MESSAGE` (64 KiB) whatever `game.capacity` is.
const POSITIONS_PER_MESSAGE: usize = 2048;

/// `[game]` of a shard's config: the authoritative world's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct GameConfig {
    /// `tick_hz` (default 20): fixed simulation rate.
    pub tick_hz: u32,
    /// `servers_per_zone` (default 2): Game servers per zone (failover needs 2).
    pub servers_per_zone: u32,
    /// `max_speed` (default 10.0 units/s): faster moves are refused with a `Correction`.
    pub max_speed: f32,
    /// `interest_radius` (default 50.0): players this close are introduced.
    pub interest_radius: f32,
    /// `hysteresis` (default 10.0): an introduced pair is un-introduced only beyond
    /// `interest_radius + hysteresis`, so a pair at the edge does not flap.
    pub hysteresis: f32,
    /// `max_peers` (default 16): introductions per client at most.
    pub max_peers: usize,
    /// `max_intros_per_min` (default 120, 1..=10,000): new introductions per player within
    /// any minute; beyond it the Game server stops introducing that player until the minute
    /// passes (counted), so moving around cannot harvest every player's address.
    pub max_intros_per_min: usize,
    /// `relay_token_secs` (default 3600): lifetime of the relay tokens in introductions.
    pub relay_token_secs: u32,
    /// `capacity` (default 200): players a Game server takes before the Lobby places new
    /// players on the next one of the zone (the zone's servers are channels: players on
    /// different servers do not see each other, so the Lobby fills them in order).
    pub capacity: usize,
    /// `interest` (default `"distance"`): who is meshed with whom.
    pub interest: Interest,
    /// `movement` (default `"client"`): who moves players (and so decides who is near whom).
    pub movement: Movement,
}

/// Who sets a player's position on a Game server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Movement {
    /// Clients report it (`ClientMessage::Move`, 2D) and the server refuses moves faster than
    /// `max_speed` with a `Correction`; the game's server logic may also set it.
    #[default]
    Client,
    /// Only the game's server logic sets it ([`GameWorld::set_position`], 2D or 3D):
    /// `Move` is ignored (counted), for games that simulate movement on the server.
    Server,
}

/// What a Game server tells the game's own server logic (see [`GameWorld::enable_game_events`]).
#[derive(Debug, Clone, PartialEq)]
pub enum GameEvent {
    /// A player entered this Game server (first placement; a resume is not a new player).
    Joined {
        /// The player.
        player: PlayerId,
        /// Its name.
        name: String,
    },
    /// A player left this Game server (it left, or did not come back within [`AWAY_GRACE`]).
    Left {
        /// The player.
        player: PlayerId,
    },
    /// A [`ClientMessage::ToGame`] from a player of this server.
    Message {
        /// The sender.
        player: PlayerId,
        /// Sent reliable-ordered or unreliable.
        reliable: bool,
        /// The game's bytes (at most [`MAX_GAME_DATA`]).
        data: Vec<u8>,
    },
}

/// Events a Game server holds for the game's logic between two drains; beyond it, messages
/// are dropped and counted (joins and leaves are always kept).
pub const MAX_GAME_EVENTS: usize = 65_536;

/// Who a Game server meshes: the per-client cap (`max_peers`) holds in both modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interest {
    /// Players within `interest_radius` (with `hysteresis`), and party members at any
    /// distance: an open world.
    #[default]
    Distance,
    /// Party members only, at any distance; positions do not matter: the rooms of a
    /// match-based game (with `lobby.open_parties`, a party is a room anyone joins).
    Groups,
}

impl Default for GameConfig {
    /// The defaults `[game]` documents (a config file overrides each one).
    fn default() -> Self {
        GameConfig {
            tick_hz: 20,
            servers_per_zone: 2,
            max_speed: 10.0,
            interest_radius: 50.0,
            hysteresis: 10.0,
            max_peers: 16,
            max_intros_per_min: 120,
            relay_token_secs: 3600,
            capacity: 200,
            interest: Interest::Distance,
            movement: Movement::Client,
        }
    }
}

/// Game rules and what introductions need.
#[derive(Debug, Clone)]
pub struct GameRules {
    /// `[game]` settings.
    pub cfg: GameConfig,
    /// The shard's relays by id, each with its token key schedule (derived from the shard
    /// secret); empty: introductions carry no relay. With several, each pair gets the one
    /// with the lowest RTT sum over its two players (`game::relays`).
    pub relays: Vec<ShardRelay>,
    /// Heartbeat interval toward the Lobby.
    pub heartbeat: Duration,
}

#[derive(Debug, Clone)]
struct GamePlayer {
    client: u64,
    name: String,
    x: f32,
    y: f32,
    /// Height, set only by the game's logic ([`GameWorld::set_position`]); 0 otherwise.
    z: f32,
    last_move_tick: u64,
    candidates: Vec<Candidate>,
    nat: Option<NatSummary>,
    party: Option<String>,
    /// The IP its packets come from (Agent-observed): who may get its private candidates.
    ip: Option<IpAddr>,
    peers: usize,
    /// Ticks of its introductions within the last minute (at most `game.max_intros_per_min`).
    intro_ticks: VecDeque<u64>,
    /// At its introduction cap (counted once per time it reaches the cap).
    capped: bool,
    /// The links it still has, from its `KeepLinks` (kept when the peer reports the same).
    claims: Vec<(LinkId, PlayerId)>,
    /// It sent `KeepLinks` since it joined (until then, or `hold` ticks, it is not
    /// introduced: a pair it still has must be kept, not introduced twice).
    reported: bool,
    joined_tick: u64,
    /// Its connection was lost at this tick (`ClientAway`): not introduced to anyone, and
    /// removed after [`AWAY_GRACE`] unless it resumes.
    away: Option<u64>,
    /// Its RTT to each relay by index (`RelayRtts`; `None`: not reported).
    relay_rtts: Vec<Option<u16>>,
    /// It reported relay RTTs since it joined (with several relays it is not introduced
    /// before, or for `hold` ticks, so its pairs get the right relay at once).
    rtt_reported: bool,
    /// A new report arrived: weigh its pairs' relays again on the next tick.
    reweigh: bool,
}

impl GamePlayer {
    fn intro_side(&self) -> IntroSide<'_> {
        IntroSide { candidates: &self.candidates, nat: nat_hint(self.nat.as_ref()), ip: self.ip }
    }
}

/// What a Game server counted; logged once a minute when something changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GameStats {
    /// `ToPeer` messages routed to an introduced peer.
    pub peer_routed: u64,
    /// `ToPeer` messages dropped: too large, or for a player not introduced to the sender.
    pub peer_dropped: u64,
    /// Moves refused by speed validation.
    pub corrections: u64,
    /// Times a player reached `game.max_intros_per_min` (its further introductions wait).
    pub intros_capped: u64,
    /// Pairs kept from both sides' `KeepLinks` instead of introduced again (after a resume
    /// or a Game-server handover).
    pub links_kept: u64,
    /// Pairs moved to another relay (a better RTT sum, or their relay became unreachable).
    pub relay_moves: u64,
    /// Candidates withheld from a peer by scope (private / loopback across NATs).
    pub intro: IntroRefusals,
    /// `ToGame` messages handed to the game's logic.
    pub game_messages: u64,
    /// `ToGame` messages dropped: too large, no game logic listening, or its queue full.
    pub game_dropped: u64,
    /// `FromGame` messages the game's logic sent to players.
    pub game_sent: u64,
    /// `Move`s ignored because the game's logic moves players (`game.movement = "server"`).
    pub moves_ignored: u64,
}

/// An introduced pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The link id both were given.
    pub link: LinkId,
    /// The path each side reported last (`[A, B]`, A = the lower player id).
    pub paths: [Option<PathState>; 2],
    /// Unix time the pair's relay tokens expire; refreshed at 80 % of their life.
    pub token_expiry: u64,
    /// The tick it was introduced or kept.
    pub since_tick: u64,
    /// The relay (index in `GameRules::relays`) the pair uses; `None` for a kept pair until
    /// its tokens are refreshed.
    pub relay: Option<u8>,
    /// The relay both sides keep bound as a standby.
    pub standby: Option<u8>,
    /// The tick the pair last moved to another relay.
    pub moved_tick: u64,
}

/// One Game server.
#[derive(Debug)]
pub struct GameWorld {
    /// Its number in the shard.
    pub id: u32,
    /// Its zone.
    pub zone: u32,
    players: BTreeMap<PlayerId, GamePlayer>,
    by_client: HashMap<u64, PlayerId>,
    pairs: BTreeMap<(PlayerId, PlayerId), Pair>,
    by_link: HashMap<LinkId, (PlayerId, PlayerId)>,
    next_link: u32,
    tick: u64,
    last_heartbeat: Option<Instant>,
    /// Link keys come from here (seeded from OS entropy by the servers, from the run's seed
    /// in the simulator).
    rng: StdRng,
    /// Counters (routed peer and game messages, corrections, introductions).
    pub stats: GameStats,
    logged: GameStats,
    /// For the game's own logic (only when [`GameWorld::enable_game_events`] was called).
    events: Option<VecDeque<GameEvent>>,
}

impl GameWorld {
    /// An empty Game server; `seed` seeds the generator of its link keys (give it OS entropy
    /// outside tests).
    pub fn new(id: u32, zone: u32, seed: [u8; 32]) -> GameWorld {
        GameWorld {
            id,
            zone,
            players: BTreeMap::new(),
            by_client: HashMap::new(),
            pairs: BTreeMap::new(),
            by_link: HashMap::new(),
            // Link ids start at a random point, so a restarted server does not hand out ids
            // of links that outlived it (and allocation skips ids in use).
            next_link: StdRng::from_seed(seed).next_u32(),
            tick: 0,
            last_heartbeat: None,
            rng: StdRng::from_seed(seed),
            stats: GameStats::default(),
            logged: GameStats::default(),
            events: None,
        }
    }

    /// Keep [`GameEvent`]s for the game's own server logic, to take with
    /// [`GameWorld::drain_game_events`] (without it `ToGame` messages are dropped and counted).
    pub fn enable_game_events(&mut self) {
        self.events.get_or_insert_with(VecDeque::new);
    }

    /// The events since the last call, in order.
    pub fn drain_game_events(&mut self) -> Vec<GameEvent> {
        self.events.as_mut().map(|e| e.drain(..).collect()).unwrap_or_default()
    }

    fn game_event(&mut self, e: GameEvent) {
        match (&mut self.events, &e) {
            (Some(q), GameEvent::Message { .. }) if q.len() >= MAX_GAME_EVENTS => {
                self.stats.game_dropped += 1
            }
            (Some(q), GameEvent::Message { .. }) => {
                self.stats.game_messages += 1;
                q.push_back(e);
            }
            (Some(q), _) => q.push_back(e),
            (None, GameEvent::Message { .. }) => self.stats.game_dropped += 1,
            (None, _) => {}
        }
    }

    /// Send the game's bytes to `player` ([`ShardMessage::FromGame`]); `false` when it is
    /// not on this server, away, or `data` is over [`MAX_GAME_DATA_TO_CLIENT`].
    pub fn send_to_player(&mut self, bus: &mut Bus, player: PlayerId, reliable: bool, data: Vec<u8>) -> bool {
        let Some(g) = self.players.get(&player).filter(|g| g.away.is_none()) else { return false };
        if data.len() > MAX_GAME_DATA_TO_CLIENT {
            return false;
        }
        self.stats.game_sent += 1;
        Self::to_client(bus, g.client, ShardMessage::FromGame { reliable, data });
        true
    }

    /// Place `player` at `pos` (x, y, z): the game's logic moves players (any
    /// `game.movement`); interest is measured in 3D. `false` when it is not on this server or
    /// a coordinate is not finite.
    pub fn set_position(&mut self, player: PlayerId, pos: [f32; 3]) -> bool {
        let tick = self.tick;
        match self.players.get_mut(&player) {
            Some(g) if pos.iter().all(|c| c.is_finite()) => {
                (g.x, g.y, g.z, g.last_move_tick) = (pos[0], pos[1], pos[2], tick);
                true
            }
            _ => false,
        }
    }

    /// A player's position (x, y, z), if it is on this server.
    pub fn position(&self, player: PlayerId) -> Option<[f32; 3]> {
        self.players.get(&player).map(|g| [g.x, g.y, g.z])
    }

    /// A player's name and group (party or room), if it is on this server.
    pub fn player_info(&self, player: PlayerId) -> Option<(&str, Option<&str>)> {
        self.players.get(&player).map(|g| (g.name.as_str(), g.party.as_deref()))
    }

    /// The players on this server (connected or away), in id order.
    pub fn player_ids(&self) -> impl Iterator<Item = PlayerId> + '_ {
        self.players.keys().copied()
    }

    /// Whether `player` is on this server and connected (not away).
    pub fn is_connected(&self, player: PlayerId) -> bool {
        self.players.get(&player).is_some_and(|g| g.away.is_none())
    }

    /// Route an application message from `from` to `peer` through the server, only between
    /// players introduced to each other; anything else is dropped and counted.
    fn route_to_peer(
        &mut self,
        bus: &mut Bus,
        from: PlayerId,
        peer: PlayerId,
        reliable: bool,
        seq: Option<LinkSeq>,
        data: Vec<u8>,
    ) {
        let key = if from < peer { (from, peer) } else { (peer, from) };
        match (self.players.get(&peer), self.pairs.get(&key)) {
            (Some(g), Some(pair)) if data.len() <= MAX_PEER_DATA => {
                self.stats.peer_routed += 1;
                // An index into another link than the pair's (an older introduction) means
                // nothing to the receiver: it goes without.
                let seq = seq.filter(|s| reliable && s.link == pair.link);
                let msg = ShardMessage::FromPeer { peer: from, reliable, seq, data };
                Self::to_client(bus, g.client, msg);
            }
            _ => {
                self.stats.peer_dropped += 1;
                debug!(
                    game = self.id,
                    ?from,
                    ?peer,
                    len = data.len(),
                    "ToPeer dropped (not introduced or too large)"
                );
            }
        }
    }

    /// Introduced pairs, by player ids.
    pub fn pairs(&self) -> impl Iterator<Item = (&(PlayerId, PlayerId), &Pair)> {
        self.pairs.iter()
    }

    /// Players on this server: `(player, name, x, y)`.
    pub fn players(&self) -> impl Iterator<Item = (PlayerId, &str, f32, f32)> {
        self.players.iter().map(|(p, g)| (*p, g.name.as_str(), g.x, g.y))
    }

    fn to_client(bus: &mut Bus, client: u64, msg: ShardMessage) {
        bus.send(Role::Agent, &InternalMessage::ToClient { client, msg });
    }

    fn remove_player(&mut self, bus: &mut Bus, p: PlayerId) {
        let keys: Vec<_> = self.pairs.keys().filter(|(a, b)| *a == p || *b == p).copied().collect();
        for k in keys {
            self.outro(bus, k);
        }
        if let Some(g) = self.players.remove(&p) {
            self.by_client.remove(&g.client);
            self.game_event(GameEvent::Left { player: p });
        }
    }

    fn outro(&mut self, bus: &mut Bus, k: (PlayerId, PlayerId)) {
        if let Some(pair) = self.pairs.remove(&k) {
            self.by_link.remove(&pair.link);
            for p in [k.0, k.1] {
                if let Some(g) = self.players.get_mut(&p) {
                    g.peers = g.peers.saturating_sub(1);
                    Self::to_client(bus, g.client, ShardMessage::PeerOutro { link: pair.link });
                }
            }
        }
    }

    fn intro(&mut self, bus: &mut Bus, rules: &GameRules, k: (PlayerId, PlayerId), unix: u64) {
        let mut link = LinkId((self.id << 24) | (self.next_link & 0x00ff_ffff));
        while self.by_link.contains_key(&link) || link.0 == 0 {
            self.next_link = self.next_link.wrapping_add(1);
            link = LinkId((self.id << 24) | (self.next_link & 0x00ff_ffff));
        }
        self.next_link = self.next_link.wrapping_add(1);
        let expiry = (unix + u64::from(rules.cfg.relay_token_secs)) as u32;
        let chosen = self.choose_relays(rules, k);
        let minting = chosen.map(|(r, _)| rules.relays[usize::from(r)].keys.minting_keys(unix));
        let (Some(a), Some(b)) = (self.players.get(&k.0), self.players.get(&k.1)) else {
            return;
        };
        let relay = chosen.zip(minting.as_ref()).map(|((r, _), keys)| IntroRelay {
            addr: rules.relays[usize::from(r)].addr,
            keys,
            expiry_unix: expiry,
        });
        let i = introduce(
            &mut self.rng,
            link,
            &a.intro_side(),
            &b.intro_side(),
            relay.as_ref(),
            &mut self.stats.intro,
        );
        for (me, other, peer, params) in [(a, b, k.1, i.a), (b, a, k.0, i.b)] {
            let msg = ShardMessage::PeerIntro { peer, name: other.name.clone(), params };
            Self::to_client(bus, me.client, msg);
        }
        let tick = self.tick;
        for p in [k.0, k.1] {
            if let Some(g) = self.players.get_mut(&p) {
                g.peers += 1;
                g.intro_ticks.push_back(tick);
            }
        }
        let since_tick = self.tick;
        let (relay, standby) = (chosen.map(|c| c.0), chosen.and_then(|c| c.1));
        if let (Some(r), Some(_)) = (relay, standby) {
            // The standby's tokens (the primary's went in the introduction).
            self.send_pair_relays(bus, rules, k, link, (r, standby), unix, u64::from(expiry), false);
        }
        let pair = Pair {
            link,
            paths: [None, None],
            token_expiry: u64::from(expiry),
            since_tick,
            relay,
            standby,
            moved_tick: since_tick,
        };
        self.pairs.insert(k, pair);
        self.by_link.insert(link, k);
    }

    /// Keep the pair `p`–`q` on `link` when both reported it alive (`KeepLinks`): no new
    /// introduction, both told `PeerKept`; its relay tokens are refreshed within a second.
    fn keep(&mut self, bus: &mut Bus, rules: &GameRules, p: PlayerId, q: PlayerId, link: LinkId) {
        let k = if p < q { (p, q) } else { (q, p) };
        if self.pairs.get(&k).is_some_and(|pair| pair.link == link) {
            // Already kept (the peer re-joined, not us): confirm to the reporter.
            if let Some(a) = self.players.get(&p) {
                Self::to_client(bus, a.client, ShardMessage::PeerKept { peer: q, link });
            }
            return;
        }
        if p == q || self.pairs.contains_key(&k) || self.by_link.contains_key(&link) {
            return;
        }
        let (Some(a), Some(b)) = (self.players.get(&p), self.players.get(&q)) else { return };
        let cap = rules.cfg.max_peers;
        if !b.reported || !b.claims.contains(&(link, p)) || a.peers >= cap || b.peers >= cap {
            return;
        }
        let (ca, cb) = (a.client, b.client);
        Self::to_client(bus, ca, ShardMessage::PeerKept { peer: q, link });
        Self::to_client(bus, cb, ShardMessage::PeerKept { peer: p, link });
        for x in [p, q] {
            if let Some(g) = self.players.get_mut(&x) {
                g.peers += 1;
            }
        }
        let pair = Pair {
            link,
            paths: [None, None],
            token_expiry: 0,
            since_tick: self.tick,
            relay: None,
            standby: None,
            moved_tick: self.tick,
        };
        self.pairs.insert(k, pair);
        self.by_link.insert(link, k);
        self.stats.links_kept += 1;
    }

    /// Send both sides of every pair whose relay tokens are within the last fifth of their
    /// life a fresh token (`ShardMessage::RelayRefresh`, and `RelayStandby` for the standby),
    /// so relayed links outlive them. A kept pair gets its relays chosen here.
    pub fn refresh_tokens(&mut self, bus: &mut Bus, rules: &GameRules, unix: u64) {
        if rules.relays.is_empty() {
            return;
        }
        let life = u64::from(rules.cfg.relay_token_secs);
        let due: Vec<_> = self
            .pairs
            .iter()
            .filter(|(_, pair)| unix + life / 5 >= pair.token_expiry)
            .map(|(k, pair)| (*k, pair.link, pair.relay.zip(Some(pair.standby))))
            .collect();
        for (k, link, relays) in due {
            let Some(chosen) = relays.or_else(|| self.choose_relays(rules, k)) else { continue };
            self.send_pair_relays(bus, rules, k, link, chosen, unix, unix + life, true);
            if let Some(pair) = self.pairs.get_mut(&k) {
                pair.token_expiry = unix + life;
                (pair.relay, pair.standby) = (Some(chosen.0), chosen.1);
            }
        }
    }

    /// One message from the bus (the Lobby's placements, the Agent's client messages).
    pub fn handle(&mut self, bus: &mut Bus, rules: &GameRules, m: InternalMessage) {
        match m {
            InternalMessage::Reset => self.clear(),
            InternalMessage::ReportParties => {
                let members: Vec<(PlayerId, String)> = self
                    .players
                    .iter()
                    .filter_map(|(p, g)| g.party.clone().map(|party| (*p, party)))
                    .collect();
                for chunk in members.chunks(POSITIONS_PER_MESSAGE) {
                    bus.send(
                        Role::Lobby,
                        &InternalMessage::Parties { game: self.id, members: chunk.to_vec() },
                    );
                }
            }
            InternalMessage::SetParty { client, party } => {
                if let Some(g) = self.by_client.get(&client).and_then(|p| self.players.get_mut(p)) {
                    g.party = party;
                }
            }
            InternalMessage::Join { client, player, name, x, y, candidates, nat, party, ip, .. } => {
                // The same session placed again (it resumed after its connection was lost,
                // or its Agent restarted): keep its pairs and position; it answers
                // `EnteredZone` with `KeepLinks`, and pairs it no longer has are dropped then.
                if let Some(g) =
                    self.players.get_mut(&player).filter(|g| g.client == client || g.away.is_some())
                {
                    let old = std::mem::replace(&mut g.client, client);
                    (g.candidates, g.nat, g.party, g.ip) = (candidates, nat, party, ip);
                    (g.reported, g.joined_tick, g.away) = (false, self.tick, None);
                    g.rtt_reported = false;
                    let (zone, x, y) = (self.zone, g.x, g.y);
                    self.by_client.remove(&old);
                    self.by_client.insert(client, player);
                    Self::to_client(bus, client, ShardMessage::EnteredZone { zone, x, y });
                    Self::send_relays(bus, rules, client);
                    return;
                }
                if self.players.contains_key(&player) {
                    self.remove_player(bus, player);
                }
                self.by_client.insert(client, player);
                self.game_event(GameEvent::Joined { player, name: name.clone() });
                self.players.insert(
                    player,
                    GamePlayer {
                        client,
                        name,
                        x,
                        y,
                        z: 0.0,
                        last_move_tick: self.tick,
                        candidates,
                        nat,
                        party,
                        ip,
                        peers: 0,
                        intro_ticks: VecDeque::new(),
                        capped: false,
                        claims: Vec::new(),
                        reported: false,
                        joined_tick: self.tick,
                        away: None,
                        relay_rtts: Vec::new(),
                        rtt_reported: false,
                        reweigh: false,
                    },
                );
                Self::to_client(bus, client, ShardMessage::EnteredZone { zone: self.zone, x, y });
                Self::send_relays(bus, rules, client);
            }
            InternalMessage::ClientLeft { client } => {
                if let Some(p) = self.by_client.get(&client).copied() {
                    self.remove_player(bus, p);
                }
            }
            InternalMessage::ClientAway { client } => {
                let tick = self.tick;
                if let Some(g) = self.by_client.get(&client).and_then(|p| self.players.get_mut(p)) {
                    g.away.get_or_insert(tick);
                }
            }

            InternalMessage::FromClient { client, msg } => {
                let Some(p) = self.by_client.get(&client).copied() else { return };
                match msg {
                    ClientMessage::ToGame { reliable, data } if data.len() <= MAX_GAME_DATA => {
                        self.game_event(GameEvent::Message { player: p, reliable, data })
                    }
                    ClientMessage::ToGame { .. } => self.stats.game_dropped += 1,
                    ClientMessage::Move { .. } if rules.cfg.movement == Movement::Server => {
                        self.stats.moves_ignored += 1
                    }
                    ClientMessage::Move { x, y, .. } => {
                        let tick = self.tick;
                        let Some(g) = self.players.get_mut(&p) else { return };
                        let dt =
                            (tick.saturating_sub(g.last_move_tick)).max(1) as f32 / rules.cfg.tick_hz as f32;
                        let allowed = rules.cfg.max_speed * dt * 1.5 + 0.5;
                        let d = ((x - g.x).powi(2) + (y - g.y).powi(2)).sqrt();
                        if x.is_finite() && y.is_finite() && d <= allowed {
                            (g.x, g.y, g.last_move_tick) = (x, y, tick);
                        } else {
                            self.stats.corrections += 1;
                            Self::to_client(bus, client, ShardMessage::Correction { x: g.x, y: g.y });
                        }
                    }
                    ClientMessage::MeshInfo { candidates, nat } => {
                        if let Some(g) = self.players.get_mut(&p) {
                            g.candidates = candidates;
                            g.nat = Some(nat);
                        }
                    }
                    ClientMessage::ToPeer { peer, reliable, seq, data } => {
                        self.route_to_peer(bus, p, peer, reliable, seq, data)
                    }
                    ClientMessage::KeepLinks { mut links } => {
                        links.truncate(MAX_KEEP_LINKS);
                        let Some(g) = self.players.get_mut(&p) else { return };
                        g.claims = links.clone();
                        g.reported = true;
                        // Pairs it had before this placement but no longer has (it lost them,
                        // or logged in afresh): dropped, so both sides are introduced again.
                        let joined = g.joined_tick;
                        let gone: Vec<_> = self
                            .pairs
                            .iter()
                            .filter(|((a, b), pair)| {
                                (*a == p || *b == p)
                                    && pair.since_tick < joined
                                    && !links.contains(&(pair.link, if *a == p { *b } else { *a }))
                            })
                            .map(|(k, _)| *k)
                            .collect();
                        for k in gone {
                            self.outro(bus, k);
                        }
                        for (link, q) in links {
                            self.keep(bus, rules, p, q, link);
                        }
                    }
                    ClientMessage::RelayRtts { rtts } => self.relay_rtts(rules, p, &rtts),
                    ClientMessage::PathReport { link, path, .. } => {
                        if let Some(k) = self.by_link.get(&link).copied()
                            && (k.0 == p || k.1 == p)
                            && let Some(pair) = self.pairs.get_mut(&k)
                        {
                            pair.paths[usize::from(k.1 == p)] = Some(path);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// One fixed tick at Unix second `unix`: interest management and mesh membership, token
    /// refresh, positions to the Lobby.
    pub fn step(&mut self, bus: &mut Bus, rules: &GameRules, unix: u64) {
        self.tick += 1;
        // Players whose connection was lost and who did not resume in time leave now.
        let grace = AWAY_GRACE.as_secs() * u64::from(rules.cfg.tick_hz.max(1));
        let expired: Vec<PlayerId> = self
            .players
            .iter()
            .filter(|(_, g)| g.away.is_some_and(|t| t + grace <= self.tick))
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            debug!(game = self.id, player = ?p, "away too long; removed");
            self.remove_player(bus, p);
        }
        let r = rules.cfg.interest_radius;
        let leave = r + rules.cfg.hysteresis;
        let cell = leave.max(1.0);
        let mut grid: HashMap<(i32, i32), Vec<PlayerId>> = HashMap::new();
        for (p, g) in &self.players {
            grid.entry(((g.x / cell).floor() as i32, (g.y / cell).floor() as i32)).or_default().push(*p);
        }
        // In 3D (z is 0 unless the game's logic sets it); the grid is on x, y, which finds
        // every pair within range since the 3D distance is at least the 2D one.
        let dist = |a: &GamePlayer, b: &GamePlayer| {
            ((a.x - b.x).powi(2) + (a.y - b.y).powi(2) + (a.z - b.z).powi(2)).sqrt()
        };
        let same_party = |a: &GamePlayer, b: &GamePlayer| a.party.is_some() && a.party == b.party;
        let groups = rules.cfg.interest == Interest::Groups;
        // Un-introduce pairs that drifted beyond the hysteresis band.
        let far: Vec<_> = self
            .pairs
            .keys()
            .filter(|(a, b)| match (self.players.get(a), self.players.get(b)) {
                (Some(x), Some(y)) if groups => !same_party(x, y),
                (Some(x), Some(y)) => dist(x, y) > leave && !same_party(x, y),
                _ => true,
            })
            .copied()
            .collect();
        for k in far {
            self.outro(bus, k);
        }
        // Introduce new pairs within range (nearest first), capped per client.
        let mut candidates = Vec::new();
        // Party members first (distance counts as zero), whatever the distance.
        let mut parties: HashMap<&str, Vec<PlayerId>> = HashMap::new();
        for (p, g) in &self.players {
            if let Some(party) = &g.party {
                parties.entry(party.as_str()).or_default().push(*p);
            }
        }
        for members in parties.values() {
            for (i, p) in members.iter().enumerate() {
                for q in &members[i + 1..] {
                    let k = if p < q { (*p, *q) } else { (*q, *p) };
                    if !self.pairs.contains_key(&k) {
                        candidates.push((0.0f32, k.0, k.1));
                    }
                }
            }
        }
        for (p, g) in self.players.iter().filter(|_| !groups) {
            let c = ((g.x / cell).floor() as i32, (g.y / cell).floor() as i32);
            for dx in -1..=1 {
                for dy in -1..=1 {
                    for q in grid.get(&(c.0 + dx, c.1 + dy)).into_iter().flatten() {
                        if q > p && !self.pairs.contains_key(&(*p, *q)) {
                            let d = dist(g, &self.players[q]);
                            if d <= r && !same_party(g, &self.players[q]) {
                                candidates.push((d, *p, *q));
                            }
                        }
                    }
                }
            }
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Introductions per player per minute are capped, so moving around (or in and out
        // of parties) cannot harvest every player's address: the oldest count drops out of
        // the window after a minute of ticks.
        let window = u64::from(rules.cfg.tick_hz.max(1)) * 60;
        let tick = self.tick;
        for g in self.players.values_mut() {
            while g.intro_ticks.front().is_some_and(|t| t + window <= tick) {
                g.intro_ticks.pop_front();
            }
            if g.intro_ticks.len() < rules.cfg.max_intros_per_min {
                g.capped = false;
            }
        }
        // A player that just joined is not introduced until it said which links it still has
        // (or for a second): a pair both still have is kept, not introduced twice.
        let hold = u64::from(rules.cfg.tick_hz.max(1));
        // With several relays, also until it reported its relay RTTs (or for that second):
        // its pairs then get their best relay at once instead of moving to it.
        let rtts_due = rules.relays.len() > 1;
        let waiting = |g: &GamePlayer| {
            g.away.is_some()
                || ((!g.reported || (rtts_due && !g.rtt_reported))
                    && tick.saturating_sub(g.joined_tick) < hold)
        };
        candidates.retain(|(_, p, q)| !waiting(&self.players[p]) && !waiting(&self.players[q]));
        for (_, p, q) in candidates {
            let cap = rules.cfg.max_peers;
            let rate = rules.cfg.max_intros_per_min;
            if self.players[&p].peers >= cap || self.players[&q].peers >= cap {
                continue;
            }
            let mut over = false;
            for x in [p, q] {
                let Some(g) = self.players.get_mut(&x) else { continue };
                if g.intro_ticks.len() >= rate {
                    over = true;
                    if !g.capped {
                        g.capped = true;
                        self.stats.intros_capped += 1;
                        debug!(game = self.id, player = ?x, "introductions per minute reached; waiting");
                    }
                }
            }
            if !over {
                self.intro(bus, rules, (p, q), unix);
            }
        }
        self.reweigh_pairs(bus, rules, unix);
        if self.tick.is_multiple_of(u64::from(rules.cfg.tick_hz.max(1))) {
            self.refresh_tokens(bus, rules, unix);
        }
        if self.tick.is_multiple_of(5) {
            // In chunks, so each message stays under the 64 KiB shard message limit.
            let all: Vec<_> = self.players.iter().map(|(p, g)| (*p, g.x, g.y)).collect();
            for players in all.chunks(POSITIONS_PER_MESSAGE) {
                bus.send(
                    Role::Lobby,
                    &InternalMessage::Positions { game: self.id, players: players.to_vec() },
                );
            }
        }
        if self.tick.is_multiple_of(u64::from(rules.cfg.tick_hz.max(1)) * 60) && self.stats != self.logged {
            self.logged = self.stats;
            info!(game = self.id, zone = self.zone, players = self.players.len(), pairs = self.pairs.len(), stats = ?self.stats, "game server stats");
        }
    }
}

impl GameWorld {
    /// Whether a heartbeat to the Lobby is due at `now` (every `rules.heartbeat`); marks it
    /// sent.
    pub fn heartbeat_due(&mut self, now: Instant, every: Duration) -> bool {
        let due = self.last_heartbeat.is_none_or(|t| now.saturating_duration_since(t) >= every);
        if due {
            self.last_heartbeat = Some(now);
        }
        due
    }

    /// Forget every player and pair (a killed process: the Lobby moves its players).
    pub fn clear(&mut self) {
        self.players.clear();
        self.by_client.clear();
        self.pairs.clear();
        self.by_link.clear();
    }

    /// The current tick number.
    pub fn tick(&self) -> u64 {
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{Candidate, LinkParams};
    use crate::proto::shard::ShardMessage;

    /// The Unix time the tests' Game servers tick at.
    const UNIX: u64 = 1_790_000_000;

    fn rules() -> GameRules {
        GameRules {
            cfg: GameConfig::default(),
            relays: vec![ShardRelay {
                addr: "127.0.0.1:3478".parse().unwrap(),
                keys: crate::relay::KeySchedule::new(
                    crate::relay::RelayKey::derive(&[7; 32]),
                    Duration::ZERO,
                ),
            }],
            heartbeat: Duration::from_millis(250),
        }
    }

    /// Player `client` (player id `client`, name `p<client>`) joins zone 0 at `(x, 0)`.
    fn join_msg(client: u64, x: f32) -> InternalMessage {
        InternalMessage::Join {
            client,
            player: PlayerId(client),
            name: format!("p{client}"),
            zone: 0,
            x,
            y: 0.0,
            candidates: Vec::new(),
            nat: None,
            party: None,
            ip: None,
        }
    }

    /// Join, then report no live link (what a fresh client does after `EnteredZone`).
    fn join(w: &mut GameWorld, bus: &mut Bus, r: &GameRules, client: u64, x: f32) {
        w.handle(bus, r, join_msg(client, x));
        keep(w, bus, r, client, vec![]);
    }

    fn keep(w: &mut GameWorld, bus: &mut Bus, r: &GameRules, client: u64, links: Vec<(LinkId, PlayerId)>) {
        w.handle(bus, r, InternalMessage::FromClient { client, msg: ClientMessage::KeepLinks { links } });
    }

    /// What the roles sent to clients since the last call, `(client, message)` (also the
    /// relay tests').
    pub(super) fn to_clients(bus: &mut Bus) -> Vec<(u64, ShardMessage)> {
        bus.drain(Role::Agent)
            .into_iter()
            .filter_map(|m| match m {
                InternalMessage::ToClient { client, msg } => Some((client, msg)),
                _ => None,
            })
            .collect()
    }

    fn mv(w: &mut GameWorld, bus: &mut Bus, r: &GameRules, client: u64, x: f32) {
        let msg = ClientMessage::Move { tick: 0, x, y: 0.0 };
        w.handle(bus, r, InternalMessage::FromClient { client, msg });
    }

    #[test]
    fn game_introduces_with_hysteresis_and_validates_speed() {
        let r = rules(); // radius 50, hysteresis 10, max speed 10/s at 20 Hz
        let mut bus = Bus::default();
        let mut w = GameWorld::new(3, 0, [3; 32]);
        join(&mut w, &mut bus, &r, 1, 0.0);
        join(&mut w, &mut bus, &r, 2, 45.0);
        w.step(&mut bus, &r, UNIX);
        let out = to_clients(&mut bus);
        let intros: Vec<_> =
            out.iter().filter(|(_, m)| matches!(m, ShardMessage::PeerIntro { .. })).collect();
        assert_eq!(intros.len(), 2, "{out:?}");
        if let (_, ShardMessage::PeerIntro { params, .. }) = intros[0] {
            assert_eq!(params.link.0 >> 24, 3, "link ids carry the game number");
            assert!(params.relay.is_some());
        }
        // Walk p2 to 55 (inside the hysteresis band): still linked. 10/s at 20 Hz → 0.5 per
        // tick, plus slack; a 20-unit jump is refused with a correction.
        mv(&mut w, &mut bus, &r, 2, 65.0);
        assert!(matches!(to_clients(&mut bus)[..], [(2, ShardMessage::Correction { x, .. })] if x == 45.0));
        for _ in 0..20 {
            w.step(&mut bus, &r, UNIX);
            let x = w.players[&PlayerId(2)].x + 0.5;
            mv(&mut w, &mut bus, &r, 2, x.min(55.0));
        }
        assert_eq!(w.players[&PlayerId(2)].x, 55.0);
        w.step(&mut bus, &r, UNIX);
        assert_eq!(w.pairs().count(), 1, "inside radius + hysteresis: kept");
        to_clients(&mut bus);
        for _ in 0..20 {
            w.step(&mut bus, &r, UNIX);
            let x = w.players[&PlayerId(2)].x + 0.5;
            mv(&mut w, &mut bus, &r, 2, x);
        }
        w.step(&mut bus, &r, UNIX);
        assert_eq!(w.pairs().count(), 0, "beyond 60: un-introduced");
        let outros =
            to_clients(&mut bus).into_iter().filter(|(_, m)| matches!(m, ShardMessage::PeerOutro { .. }));
        assert_eq!(outros.count(), 2);
        // Tokens near expiry are refreshed for both sides of live pairs, once.
        join(&mut w, &mut bus, &r, 3, 300.0);
        join(&mut w, &mut bus, &r, 4, 310.0);
        w.step(&mut bus, &r, UNIX);
        to_clients(&mut bus);
        let expiry = w.pairs().next().map(|(_, p)| p.token_expiry).expect("3 and 4 introduced");
        w.refresh_tokens(&mut bus, &r, expiry - u64::from(r.cfg.relay_token_secs) / 2);
        assert!(to_clients(&mut bus).is_empty(), "half-way through its life: no refresh");
        w.refresh_tokens(&mut bus, &r, expiry - 10);
        let refreshed = to_clients(&mut bus);
        assert_eq!(refreshed.len(), 2, "{refreshed:?}");
        for (_, m) in &refreshed {
            let ShardMessage::RelayRefresh { relay, .. } = m else { panic!("{m:?}") };
            assert_eq!(
                u64::from(relay.token.expiry_unix_secs),
                expiry - 10 + u64::from(r.cfg.relay_token_secs)
            );
        }
        w.refresh_tokens(&mut bus, &r, expiry - 9);
        assert!(to_clients(&mut bus).is_empty(), "already refreshed");
        // Garbage on the bus is counted, never a panic.
        bus.send_raw(Role::Game(3), vec![0xff; 9]);
        assert!(bus.drain(Role::Game(3)).is_empty());
        assert_eq!(bus.errors, 1);
    }

    #[test]
    fn game_withholds_private_candidates_across_nats_and_caps_introductions_per_minute() {
        use crate::link::CandidateKind;
        let mut r = rules();
        r.cfg.max_intros_per_min = 2;
        let mut bus = Bus::default();
        let mut w = GameWorld::new(1, 0, [1; 32]);
        let cand = |k, a: &str| Candidate::new(k, a.parse().unwrap());
        // 1 and 2 share a public IP (one NAT), 3 is elsewhere, 4 is far away for now.
        for (client, ip, x) in
            [(1u64, "8.8.4.4", 0.0), (2, "8.8.4.4", 1.0), (3, "9.9.9.9", 2.0), (4, "1.1.1.1", 400.0)]
        {
            let mut m = join_msg(client, x);
            if let InternalMessage::Join { candidates, nat, ip: observed, .. } = &mut m {
                *candidates = vec![
                    cand(CandidateKind::Host, &format!("192.168.0.{client}:5000")),
                    cand(CandidateKind::ServerReflexive, &format!("{ip}:{}", 6000 + client)),
                ];
                *nat = Some(NatSummary {
                    class: "symmetric".into(),
                    dependent_mapping: true,
                    port_delta: Some(i32::MAX),
                    public: None,
                });
                *observed = Some(ip.parse().unwrap());
            }
            w.handle(&mut bus, &r, m);
            keep(&mut w, &mut bus, &r, client, vec![]);
        }
        w.step(&mut bus, &r, UNIX);
        let intros: Vec<(u64, PlayerId, LinkParams)> = to_clients(&mut bus)
            .into_iter()
            .filter_map(|(c, m)| match m {
                ShardMessage::PeerIntro { peer, params, .. } => Some((c, peer, params)),
                _ => None,
            })
            .collect();
        assert_eq!(intros.len(), 6, "1-2, 1-3, 2-3 introduced: {intros:?}");
        for (c, peer, params) in &intros {
            let private = params.remote.iter().filter(|x| x.kind == CandidateKind::Host).count();
            let same_nat = [*c, peer.0] == [1, 2] || [*c, peer.0] == [2, 1];
            assert_eq!(private, usize::from(same_nat), "{c} <- {peer:?}: {:?}", params.remote);
            assert_eq!(params.remote_nat.port_delta, None, "implausible step: unknown");
        }
        assert_eq!(w.stats.intro.private_withheld, 4);
        // Everyone has used its 2 introductions of this minute: 4 walking in waits.
        for _ in 0..20 {
            w.players.get_mut(&PlayerId(4)).unwrap().x = 3.0;
            w.step(&mut bus, &r, UNIX);
        }
        assert_eq!(w.pairs().count(), 3, "no new introduction within the minute");
        assert!(w.stats.intros_capped >= 3, "{:?}", w.stats);
        let capped = w.stats.intros_capped;
        for _ in 0..20 {
            w.step(&mut bus, &r, UNIX);
        }
        assert_eq!(w.stats.intros_capped, capped, "counted once per player reaching the cap");
        // A minute of ticks later the window has room again.
        for _ in 0..r.cfg.tick_hz * 60 {
            w.step(&mut bus, &r, UNIX);
        }
        assert!(w.pairs().any(|(k, _)| k.1 == PlayerId(4)), "introduced after the minute");
    }

    #[test]
    fn local_peer_messages_need_an_introduction_and_a_size_within_the_limit() {
        let r = rules(); // radius 50
        let mut bus = Bus::default();
        let mut w = GameWorld::new(1, 0, [1; 32]);
        join(&mut w, &mut bus, &r, 1, 0.0);
        join(&mut w, &mut bus, &r, 2, 45.0);
        join(&mut w, &mut bus, &r, 3, 200.0);
        w.step(&mut bus, &r, UNIX);
        to_clients(&mut bus);
        // ToPeer: routed to an introduced peer only, at most 1200 bytes.
        let link = w.pairs().next().map(|(_, pair)| pair.link).unwrap();
        let send = |w: &mut GameWorld, bus: &mut Bus, peer: u64, seq: Option<LinkSeq>, len: usize| {
            let msg = ClientMessage::ToPeer { peer: PlayerId(peer), reliable: true, seq, data: vec![7; len] };
            w.handle(bus, &r, InternalMessage::FromClient { client: 1, msg });
        };
        let ours = LinkSeq { link, seq: 4 };
        let stale = LinkSeq { link: LinkId(link.0.wrapping_add(1)), seq: 9 };
        send(&mut w, &mut bus, 2, Some(ours), 1200);
        send(&mut w, &mut bus, 2, Some(stale), 1);
        send(&mut w, &mut bus, 2, None, 1201);
        send(&mut w, &mut bus, 3, None, 10);
        send(&mut w, &mut bus, 99, None, 10);
        let got = to_clients(&mut bus);
        assert!(
            matches!(&got[..], [
                (2, ShardMessage::FromPeer { peer: PlayerId(1), reliable: true, seq: Some(s), data }),
                (2, ShardMessage::FromPeer { seq: None, .. }),
            ] if data.len() == 1200 && *s == ours),
            "the pair's index passes, another link's is stripped: {got:?}"
        );
        assert_eq!((w.stats.peer_routed, w.stats.peer_dropped), (2, 3));
        // Size documented in docs/PROTOCOL.md §6.
        let size = |m: &ShardMessage| crate::proto::shard::encode(m).unwrap().len();
        let data = vec![0; MAX_PEER_DATA];
        let seq = Some(LinkSeq { link: LinkId(u32::MAX), seq: u32::MAX });
        let biggest = ShardMessage::FromPeer { peer: PlayerId(u64::MAX), reliable: true, seq, data };
        assert_eq!(size(&biggest), 1225);
    }

    #[test]
    fn a_pair_both_sides_still_have_is_kept_not_introduced_again_and_newcomers_wait_for_their_report() {
        let r = rules();
        let mut bus = Bus::default();
        let mut w = GameWorld::new(5, 0, [5; 32]);
        let old = LinkId(0x0300_0042); // from a Game server that died
        for c in [1, 2, 3] {
            w.handle(&mut bus, &r, join_msg(c, c as f32));
        }
        to_clients(&mut bus);
        // Nobody reported yet: no introduction during the hold (one second of ticks).
        for _ in 0..5 {
            w.step(&mut bus, &r, UNIX);
        }
        assert_eq!(w.pairs().count(), 0);
        to_clients(&mut bus);
        // 1 and 2 both still have `old`; 3 has nothing.
        keep(&mut w, &mut bus, &r, 1, vec![(old, PlayerId(2))]);
        assert!(to_clients(&mut bus).is_empty(), "one side is not enough");
        keep(&mut w, &mut bus, &r, 2, vec![(old, PlayerId(1))]);
        let kept = to_clients(&mut bus);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept.iter().all(|(_, m)| matches!(m, ShardMessage::PeerKept { link, .. } if *link == old)));
        keep(&mut w, &mut bus, &r, 3, vec![(LinkId(99), PlayerId(1))]);
        w.step(&mut bus, &r, UNIX);
        let intros: Vec<_> = to_clients(&mut bus)
            .into_iter()
            .filter_map(|(c, m)| match m {
                ShardMessage::PeerIntro { peer, params, .. } => Some((c, peer, params.link)),
                _ => None,
            })
            .collect();
        assert_eq!(intros.len(), 4, "1-3 and 2-3 introduced (3's claim on 1 was one-sided): {intros:?}");
        assert!(intros.iter().all(|(_, _, l)| *l != old && l.0 >> 24 == 5), "fresh ids of this server");
        assert_eq!((w.pairs().count(), w.stats.links_kept), (3, 1));
        // The kept pair's tokens are refreshed on the next second.
        for _ in 0..r.cfg.tick_hz {
            w.step(&mut bus, &r, UNIX);
        }
        let refreshed = to_clients(&mut bus)
            .into_iter()
            .filter(|(_, m)| matches!(m, ShardMessage::RelayRefresh { link, .. } if *link == old));
        assert_eq!(refreshed.count(), 2);
    }

    #[test]
    fn a_player_whose_connection_is_lost_keeps_its_pairs_for_the_grace_period_then_leaves() {
        let r = rules();
        let mut bus = Bus::default();
        let mut w = GameWorld::new(6, 0, [6; 32]);
        for c in [1, 2, 3] {
            join(&mut w, &mut bus, &r, c, c as f32);
        }
        w.step(&mut bus, &r, UNIX);
        assert_eq!(w.pairs().count(), 3);
        let link_13 = w.pairs().find(|(k, _)| **k == (PlayerId(1), PlayerId(3))).unwrap().1.link;
        to_clients(&mut bus);
        // 1's connection is lost: nobody is told anything, its pairs stay.
        w.handle(&mut bus, &r, InternalMessage::ClientAway { client: 1 });
        for _ in 0..r.cfg.tick_hz * 10 {
            w.step(&mut bus, &r, UNIX);
        }
        assert!(!to_clients(&mut bus).iter().any(|(_, m)| matches!(m, ShardMessage::PeerOutro { .. })));
        assert_eq!(w.pairs().count(), 3);
        // A newcomer is not introduced to the absent player.
        join(&mut w, &mut bus, &r, 4, 2.5);
        w.step(&mut bus, &r, UNIX);
        let intros = to_clients(&mut bus)
            .into_iter()
            .filter(|(_, m)| matches!(m, ShardMessage::PeerIntro { peer, .. } if *peer == PlayerId(1)))
            .count();
        assert_eq!(intros, 0);
        // It resumes (same player): back in place, it still has the link to 3 but lost 2.
        w.handle(&mut bus, &r, join_msg(1, 9.0));
        assert!(
            to_clients(&mut bus)
                .iter()
                .any(|(c, m)| *c == 1 && matches!(m, ShardMessage::EnteredZone { x, .. } if *x == 1.0)),
            "its position, not the Lobby's"
        );
        keep(&mut w, &mut bus, &r, 1, vec![(link_13, PlayerId(3))]);
        let outros: Vec<_> = to_clients(&mut bus)
            .into_iter()
            .filter(|(_, m)| matches!(m, ShardMessage::PeerOutro { .. }))
            .map(|(c, _)| c)
            .collect();
        assert_eq!(outros, [1, 2], "only the pair it no longer has is dropped");
        assert!(w.pairs().any(|(k, p)| *k == (PlayerId(1), PlayerId(3)) && p.link == link_13));
        // Away again, and this time for good: after the grace period its pairs go.
        w.handle(&mut bus, &r, InternalMessage::ClientAway { client: 1 });
        let grace = AWAY_GRACE.as_secs() as u32 * r.cfg.tick_hz;
        for _ in 0..grace - 1 {
            w.step(&mut bus, &r, UNIX);
        }
        assert!(w.players().any(|(p, ..)| p == PlayerId(1)), "still within the grace period");
        to_clients(&mut bus);
        w.step(&mut bus, &r, UNIX);
        assert!(!w.players().any(|(p, ..)| p == PlayerId(1)));
        assert!(w.pairs().all(|(k, _)| k.0 != PlayerId(1)));
        let told: Vec<_> = to_clients(&mut bus)
            .into_iter()
            .filter(|(_, m)| matches!(m, ShardMessage::PeerOutro { .. }))
            .map(|(c, _)| c)
            .collect();
        assert!(told.contains(&3), "its peers are told: {told:?}");
    }

    #[test]
    fn the_games_logic_gets_joins_messages_and_leaves_and_moves_players_in_3d() {
        let mut r = rules();
        r.cfg.movement = Movement::Server;
        let mut bus = Bus::default();
        let mut w = GameWorld::new(1, 0, [1; 32]);
        // Without game logic listening, a ToGame is dropped and counted, nothing is queued.
        join(&mut w, &mut bus, &r, 1, 0.0);
        let to_game = |data: Vec<u8>| ClientMessage::ToGame { reliable: true, data };
        w.handle(&mut bus, &r, InternalMessage::FromClient { client: 1, msg: to_game(vec![1]) });
        assert_eq!((w.stats.game_dropped, w.drain_game_events()), (1, vec![]));
        w.enable_game_events();
        join(&mut w, &mut bus, &r, 2, 0.0);
        w.handle(&mut bus, &r, InternalMessage::FromClient { client: 2, msg: to_game(vec![7, 8]) });
        w.handle(
            &mut bus,
            &r,
            InternalMessage::FromClient { client: 2, msg: to_game(vec![0; MAX_GAME_DATA + 1]) },
        );
        assert_eq!(
            w.drain_game_events(),
            [
                GameEvent::Joined { player: PlayerId(2), name: "p2".into() },
                GameEvent::Message { player: PlayerId(2), reliable: true, data: vec![7, 8] },
            ]
        );
        assert_eq!((w.stats.game_messages, w.stats.game_dropped), (1, 2));
        // Interest in 3D: the same x, y but 100 apart in height are not introduced; the game
        // moves one up (client moves are ignored in "server" movement) and they are.
        assert!(w.set_position(PlayerId(2), [0.0, 0.0, 100.0]));
        assert!(!w.set_position(PlayerId(2), [0.0, f32::NAN, 0.0]), "not finite: refused");
        w.step(&mut bus, &r, UNIX);
        assert!(w.pairs().next().is_none(), "100 apart vertically: out of range");
        mv(&mut w, &mut bus, &r, 1, 0.0);
        assert_eq!(w.stats.moves_ignored, 1);
        assert!(w.set_position(PlayerId(1), [0.0, 0.0, 70.0]));
        w.step(&mut bus, &r, UNIX);
        assert_eq!(w.pairs().count(), 1, "30 apart: introduced");
        assert_eq!(w.position(PlayerId(1)), Some([0.0, 0.0, 70.0]));
        // Its answer goes to that player's client only; a player who left is told nothing.
        to_clients(&mut bus);
        assert!(w.send_to_player(&mut bus, PlayerId(2), false, vec![5]));
        assert_eq!(to_clients(&mut bus), [(2, ShardMessage::FromGame { reliable: false, data: vec![5] })]);
        w.handle(&mut bus, &r, InternalMessage::ClientLeft { client: 2 });
        assert_eq!(w.drain_game_events(), [GameEvent::Left { player: PlayerId(2) }]);
        assert!(!w.send_to_player(&mut bus, PlayerId(2), true, vec![5]));
    }

    #[test]
    fn in_groups_mode_only_party_members_are_meshed_whatever_the_distance() {
        let mut r = rules();
        r.cfg.interest = Interest::Groups;
        let mut bus = Bus::default();
        let mut w = GameWorld::new(7, 0, [7; 32]);
        // 1 and 2 in room "a" far apart; 3 in room "b" next to 1; 4 in no room next to 1.
        for (c, x) in [(1, 0.0), (2, 5000.0), (3, 1.0), (4, 2.0)] {
            join(&mut w, &mut bus, &r, c, x);
        }
        for (c, room) in [(1, "a"), (2, "a"), (3, "b")] {
            w.handle(&mut bus, &r, InternalMessage::SetParty { client: c, party: Some(room.into()) });
        }
        w.step(&mut bus, &r, UNIX);
        let pairs: Vec<_> = w.pairs().map(|(k, _)| (k.0.0, k.1.0)).collect();
        assert_eq!(pairs, [(1, 2)]);
        // 3 joins room "a": meshed with both; leaving it un-meshes it again.
        w.handle(&mut bus, &r, InternalMessage::SetParty { client: 3, party: Some("a".into()) });
        w.step(&mut bus, &r, UNIX);
        assert_eq!(w.pairs().count(), 3);
        w.handle(&mut bus, &r, InternalMessage::SetParty { client: 3, party: None });
        w.step(&mut bus, &r, UNIX);
        let pairs: Vec<_> = w.pairs().map(|(k, _)| (k.0.0, k.1.0)).collect();
        assert_eq!(pairs, [(1, 2)]);
    }
}
