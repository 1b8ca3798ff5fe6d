//! The Lobby: login by name, characters in the [`Store`], zones with live population,
//! Game assignment (fill in order up to `game.capacity`, then least-loaded), and Game failure detection (missing heartbeats) with
//! reassignment of the dead server's players, positions kept.
//!
//! A party member is placed on the Game server where the party already is (a zone's servers
//! are channels that do not see each other). A restarted Lobby rebuilds its view: the Agent
//! re-announces its clients and the Games' `Positions` tell where each of them plays.
//!
//! Sans-IO: its driver calls [`Lobby::handle`] for each message on the [`Bus`] and
//! [`Lobby::check`] every frame, both with `now`; characters live in a [`CharacterStore`]
//! the driver chooses (a file in the servers, memory in the simulator).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::bus::Bus;
use super::game::AWAY_GRACE;
use super::party::{Parties, PartyRules};
use super::resume::{ResumeKey, TICKET_RENEW, Ticket};
use crate::link::Candidate;
use crate::proto::shard::{ClientMessage, InternalMessage, NatSummary, PlayerId, Role, ShardMessage};

/// What the Lobby keeps of a character between sessions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredCharacter {
    /// Player id (stable across sessions).
    pub player: u64,
    /// Last zone.
    pub zone: u32,
    /// Last position x.
    pub x: f32,
    /// Last position y.
    pub y: f32,
}

/// Where characters persist: the Lobby loads one at login and updates it as players move.
pub trait CharacterStore: Send + Sync {
    /// The character named `name`, created (with a fresh player id) if unknown.
    fn load_or_create(&mut self, name: &str) -> StoredCharacter;
    /// Record where `name` is.
    fn update(&mut self, name: &str, zone: u32, x: f32, y: f32);
    /// Write what changed to durable storage (no-op for memory).
    fn flush(&mut self) -> std::io::Result<()>;
}

/// Characters in memory (simulator, tests): player ids from 1 in order of first login.
/// Clones share the characters, like a database that outlives a Lobby process: give a
/// restarted Lobby a clone and it keeps every player's id and position.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    chars: std::sync::Arc<std::sync::Mutex<BTreeMap<String, StoredCharacter>>>,
}

impl MemoryStore {
    fn chars(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredCharacter>> {
        self.chars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Characters stored.
    pub fn len(&self) -> usize {
        self.chars().len()
    }

    /// No character stored?
    pub fn is_empty(&self) -> bool {
        self.chars().is_empty()
    }
}

impl CharacterStore for MemoryStore {
    fn load_or_create(&mut self, name: &str) -> StoredCharacter {
        let mut chars = self.chars();
        let next = chars.len() as u64 + 1;
        *chars.entry(name.to_string()).or_insert(StoredCharacter { player: next, zone: 0, x: 0.0, y: 0.0 })
    }
    fn update(&mut self, name: &str, zone: u32, x: f32, y: f32) {
        if let Some(c) = self.chars().get_mut(name) {
            (c.zone, c.x, c.y) = (zone, x, y);
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Longest wait between an internal link's reconnect attempts (the Lobby gives Game servers
/// this long after its own start to link before judging their heartbeats).
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// After a start, how long the Lobby adopts placements it learns from Games' `Positions`
/// (a restarted Lobby's resync); later, only its own placements count.
pub const RESYNC_WINDOW: Duration = Duration::from_secs(10);

/// A logged-in client as the Lobby sees it.
#[derive(Debug, Clone)]
pub struct LobbyClient {
    /// Name.
    pub name: String,
    /// Player id.
    pub player: PlayerId,
    /// Zone and Game server, once in a zone.
    pub placed: Option<(u32, u32)>,
    /// Last known position.
    pub pos: (f32, f32),
    /// Party, if any.
    pub party: Option<String>,
    /// The IP its packets come from, as the Agent saw it (filters its candidates per peer).
    pub ip: Option<IpAddr>,
    mesh: Option<(Vec<Candidate>, NatSummary)>,
}

/// A Game server as the Lobby tracks it.
#[derive(Debug, Clone)]
pub struct GameInfo {
    /// Its zone.
    pub zone: u32,
    /// Last message heard from it.
    pub last_heard: Instant,
    /// Still considered alive.
    pub alive: bool,
    /// Heard from since the Lobby started (only such servers get new players).
    pub heard: bool,
}

/// The Lobby role's state.
pub struct Lobby {
    /// Clients by netcode id.
    pub clients: HashMap<u64, LobbyClient>,
    /// Game servers by number.
    pub games: BTreeMap<u32, GameInfo>,
    /// Number of zones.
    pub zones: u32,
    /// The STUN/relay server clients use (told in `Welcome`).
    pub stun: SocketAddr,
    /// Players per Game server before the next one is used.
    pub capacity: usize,
    /// Parties, their owners and pending invitations (see [`super::party`]).
    pub parties: Parties,
    store: Box<dyn CharacterStore>,
    heartbeat_timeout: Duration,
    last_flush: Instant,
    last_check: Instant,
    started: Instant,
    resume: ResumeKey,
    /// Unix second at `started` (tickets carry Unix times).
    unix_start: u64,
    /// The nonce of the newest ticket issued to each player (single use).
    tickets: HashMap<PlayerId, u64>,
    next_nonce: u64,
    last_renew: Instant,
    /// The time of the message or check being handled.
    now: Instant,
    /// Placements waiting for a Game server of their zone to be heard (a fresh Lobby).
    waiting: Vec<(u64, u32)>,
    /// Parties the Game servers reported after a restart (`Parties`), by player: applied when
    /// the player is known (the Agent's re-announcement may come later).
    known_parties: HashMap<PlayerId, String>,
    /// Resumes refused (forged, expired, replayed, another player's).
    pub resumes_refused: u64,
    /// Sessions resumed.
    pub resumed: u64,
    /// Players whose connection was lost (`ClientAway`): where they played and since when.
    /// A resume within [`AWAY_GRACE`] goes back to the same Game server, which kept their
    /// pairs; their party membership waits as long.
    away: HashMap<PlayerId, (Option<(u32, u32)>, Instant)>,
}

impl std::fmt::Debug for Lobby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lobby")
            .field("clients", &self.clients.len())
            .field("games", &self.games)
            .finish_non_exhaustive()
    }
}

impl Drop for Lobby {
    /// Positions survive a clean shutdown: the store is written when the Lobby goes away.
    fn drop(&mut self) {
        if let Err(e) = self.store.flush() {
            warn!("character store write failed at shutdown: {e}");
        }
    }
}

/// What a Lobby is started with (besides its store and its Game servers).
#[derive(Debug, Clone)]
pub struct LobbySettings {
    /// Number of zones.
    pub zones: u32,
    /// The STUN/relay server clients use (told in `Welcome`).
    pub stun: SocketAddr,
    /// Silence after which a Game server is declared dead.
    pub heartbeat_timeout: Duration,
    /// Players per Game server before the next one is used.
    pub capacity: usize,
    /// The key resume tickets are sealed with (from the shard secret).
    pub resume: ResumeKey,
    /// Unix second at the start (tickets carry Unix times).
    pub unix: u64,
    /// Parties by invitation, or open rooms; their size.
    pub parties: PartyRules,
}

impl Lobby {
    /// A Lobby started at `now` for `games` (number → zone).
    pub fn new(
        now: Instant,
        store: Box<dyn CharacterStore>,
        games: impl IntoIterator<Item = (u32, u32)>,
        settings: LobbySettings,
    ) -> Lobby {
        let LobbySettings { zones, stun, heartbeat_timeout, capacity, resume, unix, parties } = settings;
        Lobby {
            clients: HashMap::new(),
            games: games
                .into_iter()
                .map(|(g, zone)| (g, GameInfo { zone, last_heard: now, alive: true, heard: false }))
                .collect(),
            zones,
            stun,
            capacity,
            parties: Parties::new(parties),
            store,
            heartbeat_timeout,
            last_flush: now,
            last_check: now,
            started: now,
            resume,
            unix_start: unix,
            tickets: HashMap::new(),
            // Nonces grow across restarts too (milliseconds of the start time).
            next_nonce: unix.saturating_mul(1000),
            last_renew: now,
            now,
            waiting: Vec::new(),
            known_parties: HashMap::new(),
            resumes_refused: 0,
            resumed: 0,
            away: HashMap::new(),
        }
    }

    /// A party a Game server reported for `player` (after a Lobby restart): rejoin it.
    fn restore_party(&mut self, bus: &mut Bus, player: PlayerId) {
        let Some(client) = self.clients.iter().find(|(_, c)| c.player == player).map(|(id, _)| *id) else {
            return;
        };
        let Some(party) = self.known_parties.remove(&player) else { return };
        if self.clients.get(&client).is_some_and(|c| c.party.is_none()) {
            let restored = self.parties.restore(player, &party);
            if let Some(c) = self.clients.get_mut(&client) {
                c.party = restored;
            }
            self.issue_ticket(bus, client);
        }
    }

    fn unix(&self) -> u64 {
        self.unix_start + self.now.saturating_duration_since(self.started).as_secs()
    }

    /// Send `client` to Game server `game` (`Join` with its state, `Route` to the Agent, a new
    /// ticket): a fresh placement, or a resumed session whose Game server never lost it (the
    /// Game keeps its pairs when the client is the same).
    fn rejoin(&mut self, bus: &mut Bus, client: u64, zone: u32, game: u32) {
        let Some(c) = self.clients.get(&client) else { return };
        let (candidates, nat) = match &c.mesh {
            Some((cands, nat)) => (cands.clone(), Some(nat.clone())),
            None => (Vec::new(), None),
        };
        let join = InternalMessage::Join {
            client,
            player: c.player,
            name: c.name.clone(),
            zone,
            x: c.pos.0,
            y: c.pos.1,
            candidates,
            nat,
            party: c.party.clone(),
            ip: c.ip,
        };
        bus.send(Role::Game(game), &join);
        bus.send(Role::Agent, &InternalMessage::Route { client, game: Some(game) });
        self.issue_ticket(bus, client);
    }

    /// Seal a fresh ticket for `client`'s session and send it (`ShardMessage::Session`).
    fn issue_ticket(&mut self, bus: &mut Bus, client: u64) {
        let Some(c) = self.clients.get(&client) else { return };
        self.next_nonce += 1;
        let t = Ticket {
            player: c.player,
            zone: c.placed.map(|(z, _)| z),
            party: c.party.clone(),
            issued: self.unix(),
            nonce: self.next_nonce,
        };
        self.tickets.insert(c.player, t.nonce);
        let msg = ShardMessage::Session { ticket: self.resume.seal(&t) };
        bus.send(Role::Agent, &InternalMessage::ToClient { client, msg });
    }

    /// A reconnected client presents its ticket: same player (the connection's name must
    /// map to the ticket's player), newest issue, unexpired → welcomed back into its party
    /// and zone. Otherwise refused and welcomed as a fresh login.
    fn resume(&mut self, bus: &mut Bus, client: u64, ticket: &[u8]) {
        let Some(c) = self.clients.get(&client) else { return };
        let (player, stun) = (c.player, self.stun);
        let checked = self.resume.open(ticket, self.unix()).map_err(|e| e.to_string()).and_then(|t| {
            if t.player != player {
                Err("ticket of another player".to_string())
            } else if self.tickets.get(&player).is_some_and(|n| *n != t.nonce) {
                Err("ticket already used or replaced".to_string())
            } else {
                Ok(t)
            }
        });
        bus.send(
            Role::Agent,
            &InternalMessage::ToClient { client, msg: ShardMessage::Welcome { player, stun } },
        );
        let t = match checked {
            Ok(t) => t,
            Err(reason) => {
                self.resumes_refused += 1;
                warn!(client, %reason, "resume refused; a fresh session instead");
                let msg = ShardMessage::Refused { reason: format!("resume refused: {reason}") };
                bus.send(Role::Agent, &InternalMessage::ToClient { client, msg });
                self.issue_ticket(bus, client);
                return;
            }
        };
        self.resumed += 1;
        if let Some(party) = t.party.as_deref().and_then(|p| self.parties.restore(player, p))
            && let Some(c) = self.clients.get_mut(&client)
        {
            c.party = Some(party);
        }
        info!(client, player = player.0, zone = ?t.zone, "session resumed");
        let placed = self.clients.get(&client).and_then(|c| c.placed);
        match (t.zone.filter(|z| *z < self.zones), placed) {
            (Some(zone), None) => self.place(bus, client, zone),
            // Still placed (only its Agent restarted): tell the new Agent where it plays and
            // its Game server to take the session back (it keeps its pairs).
            (_, Some((zone, game))) => self.rejoin(bus, client, zone, game),
            _ => self.issue_ticket(bus, client),
        }
    }

    /// The Game server `client` played on in `zone` before its connection was lost, if it is
    /// alive: it still holds the player's pairs.
    fn away_game(&mut self, client: u64, zone: u32) -> Option<u32> {
        let player = self.clients.get(&client)?.player;
        let ((z, g), _) = self.away.remove(&player).and_then(|(placed, t)| Some((placed?, t)))?;
        (z == zone && self.games.get(&g).is_some_and(|i| i.alive)).then_some(g)
    }

    /// Players per zone.
    pub fn population(&self, zone: u32) -> usize {
        self.clients.values().filter(|c| c.placed.is_some_and(|(z, _)| z == zone)).count()
    }

    /// Players placed on Game server `game`.
    pub fn load(&self, game: u32) -> usize {
        self.clients.values().filter(|c| c.placed.is_some_and(|(_, g)| g == game)).count()
    }

    /// Where a new player of `zone` goes: the first live server below capacity (players
    /// stay together), else the least-loaded live one.
    fn pick_game(&self, zone: u32) -> Option<u32> {
        let live =
            || self.games.iter().filter(|(_, g)| g.zone == zone && g.alive && g.heard).map(|(id, _)| *id);
        live()
            .find(|id| self.load(*id) < self.capacity)
            .or_else(|| live().min_by_key(|id| (self.load(*id), *id)))
    }

    /// The live server of `zone` where most of `client`'s party members play (lowest number
    /// on a tie), if any member does: party members must share a server to be meshed.
    fn party_game(&self, client: u64, zone: u32) -> Option<u32> {
        let party = self.clients.get(&client)?.party.as_ref()?;
        let mut members: BTreeMap<u32, usize> = BTreeMap::new();
        for (id, c) in &self.clients {
            if *id != client
                && c.party.as_ref() == Some(party)
                && let Some((z, g)) = c.placed
                && z == zone
                && self.games.get(&g).is_some_and(|i| i.alive)
            {
                *members.entry(g).or_default() += 1;
            }
        }
        members.into_iter().max_by_key(|(g, n)| (*n, std::cmp::Reverse(*g))).map(|(g, _)| g)
    }

    fn place(&mut self, bus: &mut Bus, client: u64, zone: u32) {
        let game = self.away_game(client, zone).or_else(|| self.party_game(client, zone));
        let Some(game) = game.or_else(|| self.pick_game(zone)) else {
            // A Lobby that just started has not heard its Game servers yet (they are linking
            // again): placements wait for them; later, a zone without servers is refused.
            if self.now.saturating_duration_since(self.started) < RESYNC_WINDOW {
                self.waiting.retain(|(c, _)| *c != client);
                self.waiting.push((client, zone));
                return;
            }
            let msg = ShardMessage::Refused { reason: format!("zone {zone} has no running game server") };
            bus.send(Role::Agent, &InternalMessage::ToClient { client, msg });
            return;
        };
        let Some(c) = self.clients.get_mut(&client) else { return };
        c.placed = Some((zone, game));
        info!(client, name = %c.name, zone, game, "player placed");
        self.rejoin(bus, client, zone, game);
    }
}

impl Lobby {
    /// Every message queued for the Lobby on `bus`, at `now`.
    pub fn handle_all(&mut self, now: Instant, bus: &mut Bus) {
        for m in bus.drain(Role::Lobby) {
            self.handle(now, bus, m);
        }
    }

    /// One message for the Lobby.
    pub fn handle(&mut self, now: Instant, bus: &mut Bus, m: InternalMessage) {
        self.now = now;
        let lobby = self;
        match m {
            InternalMessage::Heartbeat { from: Role::Game(g) } => {
                if let Some(info) = lobby.games.get_mut(&g) {
                    info.last_heard = now;
                    if !info.heard {
                        // First word from it since we started: after a Lobby restart, learn
                        // the parties its players are in (they were only in the old Lobby).
                        bus.send(Role::Game(g), &InternalMessage::ReportParties);
                    }
                    info.heard = true;
                    if !info.alive {
                        // Back after being declared dead (a pause, a partition): its players
                        // live elsewhere now, so it starts empty and rejoins the pool.
                        warn!(game = g, "game server is back; resetting it");
                        info.alive = true;
                        bus.send(Role::Game(g), &InternalMessage::Reset);
                    }
                }
            }
            InternalMessage::ClientJoined { client, name, ip } => {
                if lobby.clients.get(&client).is_some_and(|c| c.name == name) {
                    return; // announced twice (an Agent's resync after a relink)
                }
                let ch = lobby.store.load_or_create(&name);
                let player = PlayerId(ch.player);
                lobby.clients.insert(
                    client,
                    LobbyClient {
                        name,
                        player,
                        placed: None,
                        pos: (ch.x, ch.y),
                        party: None,
                        ip,
                        mesh: None,
                    },
                );
                // `Welcome` answers the client's `Login` (below), once per login: not here too.
                lobby.restore_party(bus, player);
            }
            InternalMessage::ClientLeft { client } | InternalMessage::ClientAway { client } => {
                let away = matches!(m, InternalMessage::ClientAway { .. });
                if let Some(c) = lobby.clients.remove(&client) {
                    if away {
                        // It may resume: its party and its Game server wait for it.
                        lobby.away.insert(c.player, (c.placed, now));
                    } else {
                        lobby.parties.leave(c.player);
                    }
                    let zone = c.placed.map(|(z, _)| z).unwrap_or(0);
                    lobby.store.update(&c.name, zone, c.pos.0, c.pos.1);
                    if let Err(e) = lobby.store.flush() {
                        warn!("character store write failed: {e}");
                    }
                }
            }
            InternalMessage::FromClient { client, msg } => match msg {
                ClientMessage::Login { .. } => {
                    if let Some(c) = lobby.clients.get(&client) {
                        let msg = ShardMessage::Welcome { player: c.player, stun: lobby.stun };
                        bus.send(Role::Agent, &InternalMessage::ToClient { client, msg });
                        lobby.issue_ticket(bus, client);
                    }
                }
                ClientMessage::Resume { ticket } => lobby.resume(bus, client, &ticket),
                ClientMessage::JoinParty { party } => join_party(lobby, bus, client, &party, now),
                ClientMessage::InviteToParty { player: to } => invite_to_party(lobby, bus, client, to, now),
                ClientMessage::MeshInfo { candidates, nat } => {
                    if let Some(c) = lobby.clients.get_mut(&client) {
                        c.mesh = Some((candidates, nat));
                    }
                }
                ClientMessage::EnterZone { zone } => enter_zone(lobby, bus, client, zone),
                _ => {
                    let msg = ShardMessage::Refused { reason: "enter a zone first".into() };
                    bus.send(Role::Agent, &InternalMessage::ToClient { client, msg });
                }
            },
            InternalMessage::Positions { game, players } => positions(lobby, bus, game, players, now),
            InternalMessage::Parties { members, .. } => {
                for (player, party) in members {
                    // The Agent may not have re-announced this player yet: keep it until then.
                    lobby.known_parties.insert(player, party);
                    lobby.restore_party(bus, player);
                }
            }
            _ => {}
        }
    }

    /// Once per frame: write the store every 2 s, and move the players of Game servers that
    /// missed their heartbeats.
    pub fn check(&mut self, now: Instant, bus: &mut Bus) {
        self.now = now;
        // Players away longer than the grace period have left: their party goes on without
        // them (unless they are back, in the lobby).
        let expired: Vec<PlayerId> = self
            .away
            .iter()
            .filter(|(_, (_, t))| now.saturating_duration_since(*t) > AWAY_GRACE)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.away.remove(&p);
            if !self.clients.values().any(|c| c.player == p) {
                self.parties.leave(p);
            }
        }
        for (client, zone) in std::mem::take(&mut self.waiting) {
            if self.clients.get(&client).is_some_and(|c| c.placed.is_none()) {
                self.place(bus, client, zone);
            }
        }
        if now.saturating_duration_since(self.last_renew) >= TICKET_RENEW {
            self.last_renew = now;
            let clients: Vec<u64> = self.clients.keys().copied().collect();
            for c in clients {
                self.issue_ticket(bus, c);
            }
        }
        if now.saturating_duration_since(self.last_flush) > Duration::from_secs(2) {
            self.last_flush = now;
            if let Err(e) = self.store.flush() {
                warn!("character store write failed: {e}");
            }
        }
        detect_dead_games(self, bus, now);
    }
}

/// A client asks to join a party: join it, or refuse; move it to the party's Game server if
/// none of the party plays on its own.
fn join_party(lobby: &mut Lobby, bus: &mut Bus, client: u64, party: &str, now: Instant) {
    let Some(player) = lobby.clients.get(&client).map(|c| c.player) else { return };
    let party = match lobby.parties.join(player, party, now) {
        Ok(party) => party,
        Err(e) => {
            let msg = ShardMessage::Refused { reason: e.to_string() };
            bus.send(Role::Agent, &InternalMessage::ToClient { client, msg });
            return;
        }
    };
    let Some(c) = lobby.clients.get_mut(&client) else { return };
    c.party = party.clone();
    let placed = c.placed;
    lobby.issue_ticket(bus, client);
    let Some((zone, g)) = placed else { return };
    // Meshing needs one server: join the party's server if none plays on ours.
    let here = lobby
        .clients
        .iter()
        .any(|(id, o)| *id != client && party.is_some() && o.party == party && o.placed == Some((zone, g)));
    match lobby.party_game(client, zone) {
        Some(pg) if pg != g && !here => {
            info!(client, party = ?party, from = g, to = pg, "moving a player to its party's game server");
            bus.send(Role::Game(g), &InternalMessage::ClientLeft { client });
            lobby.place(bus, client, zone);
        }
        _ => bus.send(Role::Game(g), &InternalMessage::SetParty { client, party }),
    }
}

/// A client invites a player to its party: the invitee gets a `PartyInvite`, or the client
/// a `Refused`.
fn invite_to_party(lobby: &mut Lobby, bus: &mut Bus, client: u64, to: PlayerId, now: Instant) {
    let Some((from, from_name)) = lobby.clients.get(&client).map(|c| (c.player, c.name.clone())) else {
        return;
    };
    let target = lobby.clients.iter().find(|(_, c)| c.player == to).map(|(id, _)| *id);
    let invited = match target {
        Some(target) => lobby.parties.invite(from, to, now).map(|p| (p, target)).map_err(|e| e.to_string()),
        None => Err(format!("player {} is not online", to.0)),
    };
    match invited {
        Ok((party, target)) => {
            info!(client, party = %party, invited = to.0, "party invitation");
            let msg = ShardMessage::PartyInvite { party, from, name: from_name };
            bus.send(Role::Agent, &InternalMessage::ToClient { client: target, msg });
        }
        Err(reason) => {
            let msg = ShardMessage::Refused { reason };
            bus.send(Role::Agent, &InternalMessage::ToClient { client, msg });
        }
    }
}

/// A client asks for a zone: place it (leaving its current Game server), or refuse.
fn enter_zone(lobby: &mut Lobby, bus: &mut Bus, client: u64, zone: u32) {
    let placed = lobby.clients.get(&client).and_then(|c| c.placed);
    if zone >= lobby.zones {
        let msg = ShardMessage::Refused { reason: format!("no zone {zone}") };
        bus.send(Role::Agent, &InternalMessage::ToClient { client, msg });
    } else if let Some((z, g)) = placed
        && z != zone
    {
        bus.send(Role::Game(g), &InternalMessage::ClientLeft { client });
        lobby.place(bus, client, zone);
    } else if placed.is_none() {
        lobby.place(bus, client, zone);
    }
}

/// A Game server reports its players' positions: a heartbeat too; positions go to the store,
/// and a restarted Lobby learns where its re-announced clients play.
fn positions(lobby: &mut Lobby, bus: &mut Bus, game: u32, players: Vec<(PlayerId, f32, f32)>, now: Instant) {
    let Some(info) = lobby.games.get_mut(&game) else { return };
    info.last_heard = now;
    if !info.heard {
        // First word from it since we started (see `Heartbeat`): ask for its parties.
        bus.send(Role::Game(game), &InternalMessage::ReportParties);
    }
    info.heard = true;
    let (zone, alive) = (info.zone, info.alive);
    let by_player: HashMap<PlayerId, (f32, f32)> = players.into_iter().map(|(p, x, y)| (p, (x, y))).collect();
    // A restarted Lobby learns where its re-announced clients play.
    let resync = alive && now.saturating_duration_since(lobby.started) < RESYNC_WINDOW;
    let mut updates = Vec::new();
    for (client, c) in lobby.clients.iter_mut() {
        if resync && c.placed.is_none() && by_player.contains_key(&c.player) {
            info!(client, name = %c.name, zone, game, "resync: player found on its game server");
            c.placed = Some((zone, game));
            bus.send(Role::Agent, &InternalMessage::Route { client: *client, game: Some(game) });
        }
        if c.placed.is_some_and(|(_, g)| g == game)
            && let Some(&pos) = by_player.get(&c.player)
        {
            c.pos = pos;
            updates.push((c.name.clone(), c.placed.map(|(z, _)| z).unwrap_or(0), pos));
        }
    }
    for (name, zone, (x, y)) in updates {
        lobby.store.update(&name, zone, x, y);
    }
}

fn detect_dead_games(lobby: &mut Lobby, bus: &mut Bus, now: Instant) {
    let timeout = lobby.heartbeat_timeout;
    // If the Lobby itself stalled (a paused process, a long frame), the silence is ours:
    // restart the clocks rather than declare every Game server dead.
    let stalled = now.saturating_duration_since(lobby.last_check);
    if stalled > timeout / 2 {
        warn!(?stalled, "lobby stalled; restarting heartbeat clocks");
        for g in lobby.games.values_mut() {
            g.last_heard = now;
        }
    }
    lobby.last_check = now;
    // A fresh Lobby gives Game servers that have not linked yet time to (re)connect.
    let starting = now.saturating_duration_since(lobby.started) < timeout + RECONNECT_MAX;
    let dead: Vec<u32> = lobby
        .games
        .iter()
        .filter(|(_, g)| {
            g.alive && (g.heard || !starting) && now.saturating_duration_since(g.last_heard) > timeout
        })
        .map(|(id, _)| *id)
        .collect();
    for g in dead {
        error!(game = g, ?timeout, "game server missed its heartbeats; moving its players");
        if let Some(info) = lobby.games.get_mut(&g) {
            info.alive = false;
        }
        bus.clear(Role::Game(g));
        let moved: Vec<(u64, u32)> = lobby
            .clients
            .iter()
            .filter_map(|(id, c)| c.placed.filter(|(_, pg)| *pg == g).map(|(z, _)| (*id, z)))
            .collect();
        for (client, zone) in moved {
            if let Some(c) = lobby.clients.get_mut(&client) {
                c.placed = None;
            }
            bus.send(Role::Agent, &InternalMessage::Route { client, game: None });
            lobby.place(bus, client, zone);
        }
    }
}
