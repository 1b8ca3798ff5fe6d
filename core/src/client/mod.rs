//! The game client's networking core, sans-IO: a [`Mesh`] plus the shard protocol around it.
//!
//! [`ClientCore`] is what a player's process runs, without sockets or clocks: the driver
//! (the Bevy `ShardClientPlugin` of `bevy_p2pmodel`, the demo's bots, the
//! `bench shard` load generator) feeds it the shard's messages and the mesh socket's
//! datagrams and sends what it returns. It does the bookkeeping every client needs:
//!
//! - login → NAT discovery against the shard's STUN server → `MeshInfo` → `EnterZone`, in
//!   that order, so introductions carry our real candidates (discovery is capped by
//!   [`ClientConfig::nat_timeout`], then we go on with what we have; a known network can skip
//!   it with [`ClientConfig::assume_nat`]);
//! - `PeerIntro` / `PeerOutro` / `EnteredZone` / `RelayRefresh` open, close and refresh links;
//! - every path change is reported to the shard (`PathReport`, session tracking);
//! - [`ClientCore::send`] picks the mesh when the peer has a path and the Game server
//!   (`ToPeer`) otherwise — or always the server when P2P is off — so application messages
//!   are never lost to a link that is still connecting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::MeshConfig;
use crate::endpoint::{ClockAnchor, Endpoint, Transmit};
use crate::link::{CHANNEL_RELIABLE, CHANNEL_UNRELIABLE, LinkEvent, Path};
use crate::mesh::{Mesh, MeshEvent, MeshStats};
use crate::nat::NatReport;
use crate::proto::peer::LinkId;
use crate::proto::shard::{
    ClientMessage, LinkSeq, MAX_GAME_DATA, NatSummary, PathState, PlayerId, ShardMessage,
};

mod merge;
pub mod relay_rtt;

use merge::RouteMerge;

/// Largest application message [`ClientCore::send`] accepts (the server route's limit; the
/// mesh fragments larger reliable messages, but both routes must take the same sizes).
pub const MAX_APP_MESSAGE: usize = 1200;

/// How an application message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Reliable and ordered per peer (chat, inventory, events).
    Reliable,
    /// Unreliable, latest wins (per-tick state).
    Unreliable,
}

impl Channel {
    fn mesh_channel(self) -> u8 {
        match self {
            Channel::Reliable => CHANNEL_RELIABLE,
            Channel::Unreliable => CHANNEL_UNRELIABLE,
        }
    }
}

/// Why the shard connection ended or could not be made ([`ShardNotice::Disconnected`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectReason {
    /// The game ended the session ([`ClientCore::leave`], the plugin's `Disconnect`).
    #[error("disconnected by the game")]
    ByGame,
    /// The shard's login refused us (bad credential, name in use, shard full, rate limit).
    #[error("login refused: {0}")]
    LoginRefused(String),
    /// The pinned login key is not the shard's (a wrong or outdated server address).
    #[error("{0}")]
    KeyMismatch(String),
    /// Nobody answered (the login service or the shard), or the network failed.
    #[error("shard unreachable: {0}")]
    Unreachable(String),
    /// The connection failed or was closed by the shard (timeout, refused token, kicked).
    #[error("shard connection closed: {0}")]
    Transport(String),
    /// This machine could not start an attempt (a socket, a thread).
    #[error("cannot connect: {0}")]
    Local(String),
}

/// Where a peer's traffic goes now, as the user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerPath {
    /// Introduced; no mesh path yet (messages go through the server meanwhile).
    Connecting,
    /// Through the shard's relay.
    Relayed,
    /// Straight to the peer.
    Direct,
    /// The peer went silent (link timeout); messages go through the server.
    Lost,
    /// P2P is off: everything goes through the server.
    Server,
}

impl PeerPath {
    /// `connecting`, `relayed`, `direct`, `lost` or `server` (the bot's JSON names).
    pub fn as_str(&self) -> &'static str {
        match self {
            PeerPath::Connecting => "connecting",
            PeerPath::Relayed => "relayed",
            PeerPath::Direct => "direct",
            PeerPath::Lost => "lost",
            PeerPath::Server => "server",
        }
    }
}

/// Where the client is in the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not logged in yet (waiting for the transport, then `Welcome`).
    Connecting,
    /// Logged in, not in a zone.
    Lobby,
    /// In a zone on a Game server.
    InGame,
    /// The shard connection was lost after a login: links keep running, peer messages go
    /// over the mesh; the driver reconnects and the core resumes the session.
    Reconnecting,
}

/// Settings of a [`ClientCore`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Player name sent at login.
    pub name: String,
    /// Open P2P links (`false`: every message goes through the Game server, for comparison).
    pub p2p: bool,
    /// The mesh's link settings.
    pub mesh: MeshConfig,
    /// Longest wait for NAT discovery before entering a zone anyway.
    pub nat_timeout: Duration,
    /// Seed for the mesh's randomness (STUN transaction ids). [`ClientConfig::new`] draws it
    /// from the OS (a predictable id lets an on-path attacker forge STUN answers, i.e. our
    /// public address); set a fixed one only for reproducible tests and simulations.
    pub seed: u64,
    /// Skip NAT discovery at `Welcome` and announce this NAT summary with the host
    /// candidates at once (load tests and simulations on a known network); `None` (default):
    /// discover against the shard's STUN server.
    pub assume_nat: Option<NatSummary>,
    /// After entering a zone on a (new) Game server, how long a live link waits to be kept
    /// (`PeerKept`) or introduced again before it is closed: long enough for the peer to
    /// reconnect too after a shard outage (default 30 s).
    pub keep_grace: Duration,
}

impl ClientConfig {
    /// Defaults for a named player: P2P on, 3 s NAT discovery cap, a random seed.
    pub fn new(name: impl Into<String>) -> Self {
        ClientConfig {
            name: name.into(),
            p2p: true,
            mesh: MeshConfig::default(),
            nat_timeout: Duration::from_secs(3),
            seed: rand::random(),
            assume_nat: None,
            keep_grace: Duration::from_secs(30),
        }
    }
}

/// One introduced peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's player id.
    pub player: PlayerId,
    /// The peer's name.
    pub name: String,
    /// The link the shard assigned to the pair.
    pub link: LinkId,
    /// When the shard introduced us.
    pub introduced_at: Instant,
    /// Current path.
    pub path: PeerPath,
    /// The peer's address on a direct path, the relay's on a relayed one.
    pub remote: Option<SocketAddr>,
    /// Application bytes/messages we sent to this peer, and by which route.
    pub sent: RouteCounters,
    /// Application bytes/messages we received from this peer and delivered, by the route
    /// that brought them first (a reliable message's second copy is not counted).
    pub received: RouteCounters,
}

/// Messages and bytes per route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteCounters {
    /// Messages over the mesh.
    pub p2p_messages: u64,
    /// Application bytes over the mesh.
    pub p2p_bytes: u64,
    /// Messages through the Game server.
    pub server_messages: u64,
    /// Application bytes through the Game server.
    pub server_bytes: u64,
}

/// What the shard told the client: the half of [`ClientEvent`] that a game's UI shows.
/// Drivers pass it on as is (the Bevy plugin's `ShardEvent` wraps it), so it is written once.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardNotice {
    /// Login accepted.
    Welcome {
        /// Our player id.
        player: PlayerId,
    },
    /// We are in a zone at this position (again, after a Game server failover).
    EnteredZone {
        /// Zone number.
        zone: u32,
        /// World x.
        x: f32,
        /// World y.
        y: f32,
    },
    /// The Game server corrected our position.
    Correction {
        /// World x.
        x: f32,
        /// World y.
        y: f32,
    },
    /// The shard refused a request.
    Refused(String),
    /// A party's owner invites us: [`ClientCore::join_party`] with this name within 60 s.
    PartyInvite {
        /// The party.
        party: String,
        /// The inviting owner.
        from: PlayerId,
        /// Its name.
        name: String,
    },
    /// The connection to the shard ended or could not be made (the driver reports it), and
    /// why: match on the reason, or show it (`Display` is a sentence for the user).
    Disconnected(DisconnectReason),
    /// The connection to the shard was lost after a login: the session is suspended, links
    /// keep running, and the driver tries again (attempt `attempt`, in `retry_in`).
    Reconnecting {
        /// Reconnection attempts so far (1 for the first).
        attempt: u32,
        /// When the next attempt starts.
        retry_in: Duration,
        /// What happened, for the user.
        reason: String,
    },
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// What the shard said (login, zone, chat, refusals...).
    Shard(ShardNotice),
    /// NAT discovery finished.
    Nat(Box<NatReport>),
    /// The shard introduced a peer.
    PeerAdded {
        /// The peer.
        player: PlayerId,
        /// Its name.
        name: String,
    },
    /// A peer's path changed.
    PeerPath {
        /// The peer.
        player: PlayerId,
        /// New path.
        path: PeerPath,
        /// Peer (direct) or relay (relayed) address.
        remote: Option<SocketAddr>,
        /// Time since the introduction.
        since_intro: Duration,
    },
    /// The shard un-introduced a peer (moved apart, left, Game server change).
    PeerRemoved {
        /// The peer.
        player: PlayerId,
    },
    /// A message from the game's own logic on our Game server ([`ShardMessage::FromGame`]).
    FromGame {
        /// Sent reliable-ordered (`true`) or unreliable.
        reliable: bool,
        /// The game's bytes.
        data: Bytes,
    },
    /// An application message from a peer.
    Message {
        /// The sender.
        player: PlayerId,
        /// The channel it was sent on.
        channel: Channel,
        /// Application bytes.
        data: Bytes,
        /// `true` when it came over the mesh, `false` through the Game server.
        p2p: bool,
    },
}

/// Why [`ClientCore::send`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The player is not one of our introduced peers.
    #[error("player {0:?} is not an introduced peer")]
    UnknownPeer(PlayerId),
    /// Larger than [`MAX_APP_MESSAGE`].
    #[error("message of {0} bytes exceeds the {MAX_APP_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// The shard is unreachable and the peer has no P2P link (P2P off).
    #[error("the shard is unreachable and this peer has no P2P link")]
    Offline,
    /// A message for the Game server before we entered a zone (or after we left it).
    #[error("not in a zone: there is no Game server to send to")]
    NotInGame,
}

/// Traffic totals of the client, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientTotals {
    /// The mesh socket's counters (P2P and relay traffic).
    pub mesh: MeshStats,
    /// Application bytes sent through the Game server.
    pub server_app_bytes_sent: u64,
    /// Application bytes received through the Game server.
    pub server_app_bytes_received: u64,
    /// Reliable messages that came by both routes (link and Game server): the second copy
    /// was dropped.
    pub reliable_duplicates: u64,
    /// Reliable messages given up on: a server copy waited [`merge::HOLD_TIME`] for the link
    /// to bring the ones before it, or the link broke first.
    pub reliable_gaps: u64,
}

/// The client's sans-IO networking core. See the module docs.
pub struct ClientCore {
    cfg: ClientConfig,
    mesh: Mesh,
    phase: Phase,
    player: Option<PlayerId>,
    zone: Option<u32>,
    want_zone: Option<u32>,
    mesh_info_sent: bool,
    nat_deadline: Option<Instant>,
    /// NAT discovery was started (at `Welcome` or by [`ClientCore::start_nat_discovery`]).
    nat_started: bool,
    peers: BTreeMap<PlayerId, PeerInfo>,
    by_link: HashMap<LinkId, PlayerId>,
    outgoing: VecDeque<(ClientMessage, bool)>,
    events: VecDeque<ClientEvent>,
    move_tick: u32,
    totals: ClientTotals,
    /// Each peer's reliable stream over its two routes.
    merges: HashMap<PlayerId, RouteMerge>,
    /// The newest resume ticket the shard gave us.
    ticket: Option<Vec<u8>>,
    /// Since when each peer waits to be kept (`PeerKept`) or introduced again after an
    /// `EnteredZone`; peers still waiting after `ClientConfig::keep_grace` are dropped.
    unconfirmed: BTreeMap<PlayerId, Instant>,
    last_now: Option<Instant>,
    /// Round-trip times to the shard's relays (`ShardMessage::Relays`), reported for the
    /// Game server's relay choice.
    relay_rtts: relay_rtt::RelayRtts,
}

impl std::fmt::Debug for ClientCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCore")
            .field("name", &self.cfg.name)
            .field("phase", &self.phase)
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl ClientCore {
    /// A client whose mesh socket has these host addresses.
    pub fn new(now: Instant, cfg: ClientConfig, clock: ClockAnchor, host_addrs: &[SocketAddr]) -> Self {
        let mesh = Mesh::new(now, cfg.mesh.clone(), clock, host_addrs);
        let relay_rtts = relay_rtt::RelayRtts::new(cfg.seed ^ 0x7274_7473);
        ClientCore {
            cfg,
            mesh,
            phase: Phase::Connecting,
            player: None,
            zone: None,
            want_zone: None,
            mesh_info_sent: false,
            nat_deadline: None,
            nat_started: false,
            peers: BTreeMap::new(),
            by_link: HashMap::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            move_tick: 0,
            totals: ClientTotals::default(),
            merges: HashMap::new(),
            ticket: None,
            unconfirmed: BTreeMap::new(),
            last_now: None,
            relay_rtts,
        }
    }

    /// Run NAT discovery against `server` now, without waiting for a shard's `Welcome`
    /// (mesh-only use, or to have the report ready before login). No-op with P2P off or
    /// once discovery was started.
    pub fn start_nat_discovery(&mut self, now: Instant, server: SocketAddr) {
        if self.cfg.p2p && self.mesh.nat_report().is_none() && !self.nat_started {
            self.nat_started = true;
            self.mesh.start_nat_discovery(now, server, self.cfg.seed);
            self.drain_mesh(now, None);
        }
    }

    /// The transport to the shard is up: log in, or — after a lost connection, with a
    /// ticket — resume the session (same player, zone, party; live links kept).
    pub fn connected(&mut self) {
        self.outgoing.clear();
        self.mesh_info_sent = false;
        match (&self.ticket, self.phase) {
            (Some(ticket), Phase::Reconnecting) => {
                let ticket = ticket.clone();
                self.push(ClientMessage::Resume { ticket });
            }
            _ => {
                self.phase = Phase::Connecting;
                self.push(ClientMessage::Login { name: self.cfg.name.clone() });
            }
        }
    }

    /// The transport to the shard is gone. After a login the session is only suspended:
    /// links keep running (phase [`Phase::Reconnecting`]) until the driver reconnects; call
    /// [`ClientCore::leave`] to end it. Before a login there is nothing to keep.
    pub fn disconnected(&mut self) {
        self.outgoing.clear();
        if self.player.is_some() && self.phase != Phase::Connecting {
            if self.zone.is_some() {
                self.want_zone = self.zone;
            }
            self.phase = Phase::Reconnecting;
            return;
        }
        self.leave();
    }

    /// End the session (the game disconnects on purpose): every peer is forgotten. While
    /// connected, [`ClientMessage::Leave`] is queued as the last message: the transport
    /// should send it before closing, so the shard ends the session at once (a connection
    /// lost without it is held for a resume).
    pub fn leave(&mut self) {
        let connected = matches!(self.phase, Phase::Lobby | Phase::InGame);
        self.outgoing.clear();
        if connected {
            self.outgoing.push_back((ClientMessage::Leave, true));
        }
        self.phase = Phase::Connecting;
        self.zone = None;
        self.player = None;
        self.ticket = None;
        self.unconfirmed.clear();
        self.clear_peers();
    }

    /// Log in under another name next time (a login screen). Only between sessions: while
    /// one runs (or is suspended) the name stays.
    pub fn set_name(&mut self, name: impl Into<String>) {
        if self.phase == Phase::Connecting && self.player.is_none() {
            self.cfg.name = name.into();
        }
    }

    /// Ask to enter a zone (sent once NAT discovery is done, so introductions carry our
    /// candidates).
    pub fn enter_zone(&mut self, now: Instant, zone: u32) {
        self.want_zone = Some(zone);
        self.flush_zone_request(now);
    }

    /// Report our position to the Game server (it validates the speed).
    pub fn move_to(&mut self, x: f32, y: f32) {
        self.move_tick = self.move_tick.wrapping_add(1);
        self.outgoing.push_back((ClientMessage::Move { tick: self.move_tick, x, y }, false));
    }

    /// Join a party (empty name: leave it). A new name creates a party we own; an existing
    /// one needs a pending invitation from its owner ([`ShardNotice::PartyInvite`]), else the
    /// shard answers [`ShardNotice::Refused`].
    pub fn join_party(&mut self, party: impl Into<String>) {
        self.push(ClientMessage::JoinParty { party: party.into() });
    }

    /// Invite a player into our party (we must own it); it may join within 60 s.
    pub fn invite_to_party(&mut self, player: PlayerId) {
        self.push(ClientMessage::InviteToParty { player });
    }

    /// Send application bytes to one peer: over the mesh when it has a path, through the
    /// Game server otherwise. Returns `true` when it went over the mesh.
    pub fn send(&mut self, player: PlayerId, channel: Channel, data: Bytes) -> Result<bool, SendError> {
        if data.len() > MAX_APP_MESSAGE {
            return Err(SendError::TooLarge(data.len()));
        }
        let peer = self.peers.get_mut(&player).ok_or(SendError::UnknownPeer(player))?;
        let len = data.len() as u64;
        let reliable = channel == Channel::Reliable;
        let merge = self.merges.entry(player).or_default();
        // Without the shard there is no server route: the link queues until it has a path.
        let offline = self.phase == Phase::Reconnecting;
        let mesh_ok = matches!(peer.path, PeerPath::Relayed | PeerPath::Direct) || offline;
        if mesh_ok && self.mesh.send(peer.link, channel.mesh_channel(), data.clone()).unwrap_or(false) {
            if reliable {
                merge.sent_on_link();
            }
            peer.sent.p2p_messages += 1;
            peer.sent.p2p_bytes += len;
            return Ok(true);
        }
        if offline {
            return Err(SendError::Offline);
        }
        // A reliable message also waits in the link (it leaves when the link has a path):
        // if the server copy dies with the shard, the link still brings it, and the peer
        // delivers whichever copy comes first, once, in order (`merge`).
        let seq = if reliable
            && !mesh_ok
            && peer.path != PeerPath::Server
            && self.mesh.send(peer.link, CHANNEL_RELIABLE, data.clone()).unwrap_or(false)
        {
            merge.sent_on_link().map(|seq| LinkSeq { link: peer.link, seq })
        } else {
            None
        };
        peer.sent.server_messages += 1;
        peer.sent.server_bytes += len;
        self.totals.server_app_bytes_sent += len;
        let msg = ClientMessage::ToPeer { peer: player, reliable, seq, data: data.to_vec() };
        self.outgoing.push_back((msg, reliable));
        Ok(false)
    }

    /// Send the game's own bytes to its logic on our Game server ([`ClientMessage::ToGame`]),
    /// reliable-ordered or unreliable. At most [`MAX_GAME_DATA`] bytes; only in a zone.
    pub fn send_to_game(&mut self, reliable: bool, data: &[u8]) -> Result<(), SendError> {
        if data.len() > MAX_GAME_DATA {
            return Err(SendError::TooLarge(data.len()));
        }
        match self.phase {
            Phase::InGame => {}
            Phase::Reconnecting => return Err(SendError::Offline),
            _ => return Err(SendError::NotInGame),
        }
        self.totals.server_app_bytes_sent += data.len() as u64;
        self.outgoing.push_back((ClientMessage::ToGame { reliable, data: data.to_vec() }, reliable));
        Ok(())
    }

    /// Send to every introduced peer. Returns how many went over the mesh.
    pub fn broadcast(&mut self, channel: Channel, data: Bytes) -> Result<usize, SendError> {
        let players: Vec<PlayerId> = self.peers.keys().copied().collect();
        let mut p2p = 0;
        for p in players {
            p2p += usize::from(self.send(p, channel, data.clone())?);
        }
        Ok(p2p)
    }

    /// A message from the shard (decoded by the driver).
    pub fn handle_shard_message(&mut self, now: Instant, msg: ShardMessage) {
        match msg {
            ShardMessage::Welcome { player, stun } => {
                self.player = Some(player);
                self.phase = Phase::Lobby;
                self.events.push_back(ClientEvent::Shard(ShardNotice::Welcome { player }));
                if self.cfg.p2p && self.mesh.nat_report().is_none() && self.cfg.assume_nat.is_none() {
                    // The shard may repeat Welcome (it answers every Login): a discovery
                    // that is already running is not restarted.
                    if !self.nat_started {
                        self.nat_started = true;
                        self.mesh.start_nat_discovery(now, stun, self.cfg.seed ^ player.0);
                    }
                    if !self.mesh_info_sent && self.nat_deadline.is_none() {
                        self.nat_deadline = Some(now + self.cfg.nat_timeout);
                    }
                } else {
                    self.send_mesh_info();
                }
                self.flush_zone_request(now);
            }
            ShardMessage::PeerIntro { peer, name, params } => {
                self.unconfirmed.remove(&peer);
                if self.peers.contains_key(&peer) {
                    self.remove_peer(peer);
                }
                let link = params.link;
                let path = if self.cfg.p2p && self.mesh.add_link(now, params).is_ok() {
                    PeerPath::Connecting
                } else {
                    PeerPath::Server
                };
                self.by_link.insert(link, peer);
                self.merges.insert(peer, RouteMerge::default());
                self.peers.insert(
                    peer,
                    PeerInfo {
                        player: peer,
                        name: name.clone(),
                        link,
                        introduced_at: now,
                        path,
                        remote: None,
                        sent: RouteCounters::default(),
                        received: RouteCounters::default(),
                    },
                );
                self.events.push_back(ClientEvent::PeerAdded { player: peer, name });
            }
            ShardMessage::PeerOutro { link } => {
                if let Some(p) = self.by_link.get(&link).copied() {
                    self.remove_peer(p);
                }
            }
            ShardMessage::EnteredZone { zone, x, y } => {
                // A new Game server (zone change, failover, resume): offer it our live links;
                // the ones it keeps are confirmed with `PeerKept`, the rest are dropped after
                // `keep_grace` unless the peer is introduced again.
                if self.zone.is_some_and(|z| z != zone) {
                    self.clear_peers();
                }
                let links: Vec<(LinkId, PlayerId)> =
                    self.peers.values().map(|p| (p.link, p.player)).collect();
                for (_, p) in &links {
                    self.unconfirmed.insert(*p, now);
                }
                self.push(ClientMessage::KeepLinks { links });
                self.phase = Phase::InGame;
                self.zone = Some(zone);
                self.want_zone = None;
                self.events.push_back(ClientEvent::Shard(ShardNotice::EnteredZone { zone, x, y }));
            }
            ShardMessage::PeerKept { peer, link } => {
                if self.peers.get(&peer).is_some_and(|p| p.link == link) {
                    self.unconfirmed.remove(&peer);
                    // The new Game server tracks the pair's path from our reports.
                    self.report_path(link);
                }
            }
            ShardMessage::Session { ticket } => {
                if ticket.len() <= crate::shard::resume::MAX_TICKET {
                    self.ticket = Some(ticket);
                }
            }
            ShardMessage::Correction { x, y } => {
                self.events.push_back(ClientEvent::Shard(ShardNotice::Correction { x, y }))
            }
            ShardMessage::Refused { reason } => {
                self.events.push_back(ClientEvent::Shard(ShardNotice::Refused(reason)))
            }
            ShardMessage::RelayRefresh { link, relay } => {
                let _ = self.mesh.update_relay(now, link, relay);
            }
            ShardMessage::RelayStandby { link, relay } => {
                let _ = self.mesh.update_standby(now, link, relay);
            }
            ShardMessage::Relays { relays } if self.cfg.p2p => {
                self.relay_rtts.set_relays(now, &relays);
            }
            ShardMessage::Relays { .. } => {}
            ShardMessage::PartyInvite { party, from, name } => {
                self.events.push_back(ClientEvent::Shard(ShardNotice::PartyInvite { party, from, name }))
            }
            ShardMessage::FromGame { reliable, data } => {
                self.totals.server_app_bytes_received += data.len() as u64;
                self.events.push_back(ClientEvent::FromGame { reliable, data: Bytes::from(data) });
            }
            ShardMessage::FromPeer { peer, reliable, seq, data } => {
                let Some(info) = self.peers.get_mut(&peer) else { return };
                self.totals.server_app_bytes_received += data.len() as u64;
                let channel = if reliable { Channel::Reliable } else { Channel::Unreliable };
                let data = Bytes::from(data);
                match seq.filter(|s| reliable && s.link == info.link) {
                    Some(s) => {
                        let alive = self.mesh.link(info.link).is_some_and(|l| l.broken().is_none());
                        let mut out = Vec::new();
                        let merge = self.merges.entry(peer).or_default();
                        merge.on_server(now, s.seq, data, alive, &mut out);
                        self.deliver_reliable(peer, out, false);
                    }
                    None => {
                        info.received.server_messages += 1;
                        info.received.server_bytes += data.len() as u64;
                        self.events.push_back(ClientEvent::Message {
                            player: peer,
                            channel,
                            data,
                            p2p: false,
                        })
                    }
                }
            }
        }
    }

    /// The next message for the shard, with `true` when it needs the reliable channel.
    pub fn poll_shard_message(&mut self) -> Option<(ClientMessage, bool)> {
        self.outgoing.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Where we are in the shard.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Our player id, once logged in.
    pub fn player(&self) -> Option<PlayerId> {
        self.player
    }

    /// Our zone, when in game.
    pub fn zone(&self) -> Option<u32> {
        self.zone
    }

    /// The settings this client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Our introduced peers.
    pub fn peers(&self) -> impl Iterator<Item = &PeerInfo> {
        self.peers.values()
    }

    /// One introduced peer.
    pub fn peer(&self, player: PlayerId) -> Option<&PeerInfo> {
        self.peers.get(&player)
    }

    /// Smoothed RTT to a peer over its current mesh path.
    pub fn peer_rtt(&self, player: PlayerId) -> Option<Duration> {
        let p = self.peers.get(&player)?;
        self.mesh.link(p.link)?.rtt()
    }

    /// RTT figures toward a peer on its current mesh path (smoothed, jitter, p99), if any.
    pub fn peer_rtt_stats(&self, player: PlayerId) -> Option<crate::link::RttStats> {
        let p = self.peers.get(&player)?;
        self.mesh.link(p.link)?.rtt_stats()
    }

    /// Packet loss toward a peer on the mesh (0–1), if it has a link.
    pub fn peer_loss(&self, player: PlayerId) -> Option<f32> {
        let p = self.peers.get(&player)?;
        Some(self.mesh.link(p.link)?.packet_loss())
    }

    /// Our round-trip time to each of the shard's relays, by index (`None`: not
    /// measured, or no answer in the last round).
    pub fn relay_rtts(&self) -> Vec<Option<Duration>> {
        self.relay_rtts.rtts()
    }

    /// The NAT report, once discovery finished.
    pub fn nat_report(&self) -> Option<&NatReport> {
        self.mesh.nat_report()
    }

    /// The mesh (read-only: links, candidates, stats).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Traffic totals.
    pub fn totals(&self) -> ClientTotals {
        let (reliable_duplicates, reliable_gaps) = self
            .merges
            .values()
            .fold((self.totals.reliable_duplicates, self.totals.reliable_gaps), |(d, g), m| {
                (d + m.duplicates, g + m.gaps)
            });
        ClientTotals { mesh: self.mesh.stats(), reliable_duplicates, reliable_gaps, ..self.totals }
    }

    fn push(&mut self, msg: ClientMessage) {
        self.outgoing.push_back((msg, true));
    }

    fn send_mesh_info(&mut self) {
        if self.mesh_info_sent {
            return;
        }
        self.mesh_info_sent = true;
        self.nat_deadline = None;
        let (candidates, nat) = if self.cfg.p2p {
            let nat = match self.mesh.nat_report() {
                Some(r) => NatSummary {
                    class: r.class.as_str().into(),
                    dependent_mapping: matches!(
                        r.mapping,
                        crate::nat::Mapping::AddressDependent | crate::nat::Mapping::AddressAndPortDependent
                    ),
                    port_delta: r.port_delta,
                    public: r.public,
                },
                None => self.cfg.assume_nat.clone().unwrap_or_else(unknown_nat),
            };
            if self.cfg.mesh.link.relay_only {
                // Privacy mode: the shard (and so every peer) learns no address of ours.
                (Vec::new(), NatSummary { public: None, port_delta: None, ..nat })
            } else {
                (self.mesh.local_candidates().to_vec(), nat)
            }
        } else {
            (Vec::new(), unknown_nat())
        };
        self.push(ClientMessage::MeshInfo { candidates, nat });
    }

    fn flush_zone_request(&mut self, _now: Instant) {
        if self.phase == Phase::Connecting || !self.mesh_info_sent {
            return;
        }
        if let Some(zone) = self.want_zone.take() {
            self.push(ClientMessage::EnterZone { zone });
        }
    }

    /// Tell the shard the current path of `link` (session tracking); nothing while offline.
    fn report_path(&mut self, link: LinkId) {
        if self.phase == Phase::Reconnecting {
            return;
        }
        let Some(peer) = self.by_link.get(&link).and_then(|p| self.peers.get(p)) else { return };
        let state = match peer.path {
            PeerPath::Connecting | PeerPath::Server => PathState::Connecting,
            PeerPath::Relayed => PathState::Relayed,
            PeerPath::Direct => PathState::Direct,
            PeerPath::Lost => PathState::Lost,
        };
        let rtt_ms = self.mesh.link(link).and_then(|l| l.rtt()).map(|r| r.as_secs_f32() * 1000.0);
        self.push(ClientMessage::PathReport { link, path: state, rtt_ms });
    }

    /// Drop peers that no Game server kept or introduced again within `keep_grace`.
    fn expire_unconfirmed(&mut self, now: Instant) {
        let grace = self.cfg.keep_grace;
        let stale: Vec<PlayerId> = self
            .unconfirmed
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= grace)
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            self.unconfirmed.remove(&p);
            self.remove_peer(p);
        }
    }

    fn remove_peer(&mut self, player: PlayerId) {
        if let Some(p) = self.peers.remove(&player) {
            if let Some(mut m) = self.merges.remove(&player) {
                // What the server brought ahead of a gap is still the peer's: it goes out.
                let mut out = Vec::new();
                m.flush(&mut out);
                self.deliver_reliable(player, out, false);
                self.totals.reliable_duplicates += m.duplicates;
                self.totals.reliable_gaps += m.gaps;
            }
            self.by_link.remove(&p.link);
            let _ = self.mesh.remove_link(p.link);
            self.events.push_back(ClientEvent::PeerRemoved { player });
        }
    }

    /// Reliable messages `merge` released, in order, to the game (server-route ones counted
    /// here; the link's where they are drained).
    fn deliver_reliable(&mut self, player: PlayerId, out: Vec<Bytes>, p2p: bool) {
        if !p2p && let Some(info) = self.peers.get_mut(&player) {
            info.received.server_messages += out.len() as u64;
            info.received.server_bytes += out.iter().map(|d| d.len() as u64).sum::<u64>();
        }
        for data in out {
            self.events.push_back(ClientEvent::Message { player, channel: Channel::Reliable, data, p2p });
        }
    }

    /// Server copies that waited too long for their link, or whose link broke, go out.
    fn release_held(&mut self, now: Instant) {
        let due: Vec<PlayerId> = self
            .merges
            .iter()
            .filter(|(p, m)| {
                // Only peers holding copies (rare) look at their link.
                m.deadline().is_some_and(|d| {
                    let link = self.peers.get(p).and_then(|i| self.mesh.link(i.link));
                    d <= now || link.is_none_or(|l| l.broken().is_some())
                })
            })
            .map(|(p, _)| *p)
            .collect();
        for player in due {
            let mut out = Vec::new();
            if let Some(m) = self.merges.get_mut(&player) {
                m.flush(&mut out);
            }
            self.deliver_reliable(player, out, false);
        }
    }

    fn clear_peers(&mut self) {
        let all: Vec<PlayerId> = self.peers.keys().copied().collect();
        for p in all {
            self.remove_peer(p);
        }
    }

    /// Turn mesh events, and the messages received on link `touched` (the one a datagram
    /// reached: no other link has new ones), into client events and shard reports.
    fn drain_mesh(&mut self, now: Instant, touched: Option<LinkId>) {
        while let Some(ev) = self.mesh.poll_event() {
            match ev {
                MeshEvent::Nat(report) => {
                    self.events.push_back(ClientEvent::Nat(Box::new(report)));
                    // Discovery outlived `nat_timeout`: the shard got "unknown"; correct it so
                    // later introductions carry the right hint.
                    self.mesh_info_sent = false;
                    self.send_mesh_info();
                    self.flush_zone_request(now);
                }
                MeshEvent::PublicAddress(_) => {}
                MeshEvent::Link { link, event } => {
                    let Some(player) = self.by_link.get(&link).copied() else { continue };
                    let Some(peer) = self.peers.get_mut(&player) else { continue };
                    let (path, remote) = match event {
                        LinkEvent::Path(Path::None) => (PeerPath::Connecting, None),
                        LinkEvent::Path(Path::Relayed { relay }) => (PeerPath::Relayed, Some(relay)),
                        LinkEvent::Path(Path::Direct { remote }) => (PeerPath::Direct, Some(remote)),
                        LinkEvent::Lost | LinkEvent::Broken => (PeerPath::Lost, peer.remote),
                        LinkEvent::Recovered => match self.mesh.link(link).map(|l| l.path()) {
                            Some(Path::Relayed { relay }) => (PeerPath::Relayed, Some(relay)),
                            Some(Path::Direct { remote }) => (PeerPath::Direct, Some(remote)),
                            _ => (PeerPath::Connecting, None),
                        },
                        LinkEvent::ObservedAddressChanged(_) | LinkEvent::DirectPathFailed(_) => continue,
                    };
                    if peer.path == path && peer.remote == remote {
                        continue;
                    }
                    if peer.path == PeerPath::Relayed && path == PeerPath::Relayed {
                        // The link left its relay (a move, or it stopped answering): time
                        // the relays again, so the shard hears of a dead one at once.
                        self.relay_rtts.measure_now(now);
                    }
                    peer.path = path;
                    peer.remote = remote;
                    let since_intro = now.saturating_duration_since(peer.introduced_at);
                    self.events.push_back(ClientEvent::PeerPath { player, path, remote, since_intro });
                    self.report_path(link);
                }
            }
        }
        let peer = touched.and_then(|l| self.by_link.get(&l)).and_then(|p| self.peers.get_mut(p));
        if let Some(peer) = peer {
            let merge = self.merges.entry(peer.player).or_default();
            let mut reliable = Vec::new();
            while let Some(data) = self.mesh.receive(peer.link, CHANNEL_RELIABLE) {
                merge.on_link(data, &mut reliable);
            }
            // Counted as delivered: a copy the server route brought first is not.
            peer.received.p2p_messages += reliable.len() as u64;
            peer.received.p2p_bytes += reliable.iter().map(|d| d.len() as u64).sum::<u64>();
            let player = peer.player;
            while let Some(data) = self.mesh.receive(peer.link, CHANNEL_UNRELIABLE) {
                peer.received.p2p_messages += 1;
                peer.received.p2p_bytes += data.len() as u64;
                self.events.push_back(ClientEvent::Message {
                    player,
                    channel: Channel::Unreliable,
                    data,
                    p2p: true,
                });
            }
            self.deliver_reliable(player, reliable, true);
        }
    }
}

/// The NAT summary of a client that has not (or not yet) discovered its NAT.
fn unknown_nat() -> NatSummary {
    NatSummary { class: "unknown".into(), dependent_mapping: false, port_delta: None, public: None }
}

impl ClientCore {
    /// A finished relay RTT round worth reporting goes to the shard (not while offline).
    fn report_relay_rtts(&mut self) {
        if let Some(rtts) = self.relay_rtts.poll_report()
            && self.phase != Phase::Reconnecting
        {
            self.push(ClientMessage::RelayRtts { rtts });
        }
    }
}

impl Endpoint for ClientCore {
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: &[u8]) {
        if self.relay_rtts.handle_datagram(now, from, data) {
            self.report_relay_rtts();
            return;
        }
        let touched = self.mesh.handle_datagram_to_link(now, local, from, data);
        self.drain_mesh(now, touched);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
            self.mesh.handle_timeout(now);
        }
        self.expire_unconfirmed(now);
        self.release_held(now);
        if self.relay_rtts.poll_timeout().is_some_and(|t| t <= now) {
            self.relay_rtts.handle_timeout(now);
        }
        self.report_relay_rtts();
        if self.nat_deadline.is_some_and(|d| d <= now) {
            self.send_mesh_info();
            self.flush_zone_request(now);
        }
        self.drain_mesh(now, None);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.mesh.poll_transmit().or_else(|| self.relay_rtts.poll_transmit())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let keep = self.unconfirmed.values().min().map(|t| *t + self.cfg.keep_grace);
        let held = self.merges.values().filter_map(RouteMerge::deadline).min();
        [self.mesh.poll_timeout(), self.nat_deadline, keep, self.relay_rtts.poll_timeout(), held]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests;
