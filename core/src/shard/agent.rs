//! The Agent's routing, sans-IO: sessions, a per-client message budget, `MeshInfo` cleaning,
//! and routing by phase — lobby-phase messages to the Lobby, game-phase messages to the
//! client's Game server, and the roles' answers back to the client.
//!
//! The transport (netcode over UDP in the servers, in-memory in [`super::LocalShard`]) is the
//! driver's: it tells the router who connected ([`AgentRouter::connect`]) and left, hands it
//! each client message as bytes ([`AgentRouter::from_client`]), and sends what
//! [`AgentRouter::to_clients`] returns on the channel it names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::bus::Bus;
use super::intro::{IntroRefusals, clean_mesh_info};
use crate::proto::shard::{ClientMessage, InternalMessage, Role, ShardMessage, decode, encode};

/// One client session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Name bound in the connect token.
    pub name: String,
    /// Game server the client's game-phase messages go to (`None`: lobby phase).
    pub game: Option<u32>,
    /// The IP the client's packets come from (told to the Lobby and Games only to judge
    /// which of its candidates a peer may get, see [`super::intro`]).
    pub ip: Option<IpAddr>,
    tokens: f32,
    refill: Instant,
    /// The client's last `MeshInfo`, cleaned: re-announced to a restarted Lobby so later
    /// introductions still carry its candidates.
    mesh_info: Option<ClientMessage>,
    /// It said [`ClientMessage::Leave`]: its disconnection ends the session at once.
    leaving: bool,
}

/// A message for one client, encoded, with the channel it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The client (netcode id).
    pub client: u64,
    /// Reliable-ordered (`true`) or unreliable (`false`): corrections and
    /// unreliable peer messages are superseded by the next one, so they are not re-sent.
    pub reliable: bool,
    /// The encoded [`ShardMessage`].
    pub bytes: Vec<u8>,
}

/// The Agent's state.
#[derive(Debug)]
pub struct AgentRouter {
    /// Sessions by client id.
    pub sessions: HashMap<u64, Session>,
    /// Messages allowed per client per second.
    pub max_messages_per_sec: u32,
    /// Client messages that did not decode (dropped).
    pub decode_errors: u64,
    /// Client messages over the budget (dropped).
    pub rate_limited: u64,
    /// `MeshInfo` candidates and hints refused, by reason.
    pub intro: IntroRefusals,
    heartbeat: Duration,
    last_heartbeat: Option<Instant>,
    last_log: Option<Instant>,
    logged: (u64, u64, IntroRefusals),
}

impl AgentRouter {
    /// A router with no sessions.
    pub fn new(max_messages_per_sec: u32, heartbeat: Duration) -> AgentRouter {
        AgentRouter {
            sessions: HashMap::new(),
            max_messages_per_sec,
            decode_errors: 0,
            rate_limited: 0,
            intro: IntroRefusals::default(),
            heartbeat,
            last_heartbeat: None,
            last_log: None,
            logged: (0, 0, IntroRefusals::default()),
        }
    }

    /// A client connected (its name and source IP checked by the driver): tell the Lobby.
    pub fn connect(&mut self, now: Instant, bus: &mut Bus, client: u64, name: String, ip: Option<IpAddr>) {
        let tokens = self.max_messages_per_sec as f32;
        let session = Session {
            name: name.clone(),
            game: None,
            ip,
            tokens,
            refill: now,
            mesh_info: None,
            leaving: false,
        };
        self.sessions.insert(client, session);
        bus.send(Role::Lobby, &InternalMessage::ClientJoined { client, name, ip });
    }

    /// A client is gone: tell its Game server and the Lobby. Returns its session.
    ///
    /// After its [`ClientMessage::Leave`] that is `ClientLeft` (the session ends); otherwise
    /// `ClientAway`: the connection was lost (a timeout, a new address), so its Game server
    /// keeps its pairs for a grace period and a resume finds its links where they were.
    pub fn disconnect(&mut self, bus: &mut Bus, client: u64) -> Option<Session> {
        let s = self.sessions.remove(&client)?;
        let left = if s.leaving {
            InternalMessage::ClientLeft { client }
        } else {
            InternalMessage::ClientAway { client }
        };
        if let Some(g) = s.game {
            bus.send(Role::Game(g), &left);
        }
        bus.send(Role::Lobby, &left);
        Some(s)
    }

    /// One message from `client`: over the budget or undecodable → dropped and counted;
    /// `MeshInfo` cleaned; then routed by phase.
    pub fn from_client(&mut self, now: Instant, bus: &mut Bus, client: u64, bytes: &[u8]) {
        let budget = self.max_messages_per_sec as f32;
        let Some(s) = self.sessions.get_mut(&client) else { return };
        let elapsed = now.saturating_duration_since(s.refill).as_secs_f32();
        s.refill = now;
        s.tokens = (s.tokens + elapsed * budget).min(budget);
        if s.tokens < 1.0 {
            self.rate_limited += 1;
            return;
        }
        s.tokens -= 1.0;
        let (game, ip) = (s.game, s.ip);
        let msg = match decode::<ClientMessage>(bytes) {
            // What a player says of its reachability is cleaned here, once, before the
            // Lobby or a Game stores it (see `super::intro`).
            Ok(ClientMessage::MeshInfo { candidates, nat }) => {
                let before = self.intro;
                let (candidates, nat) = clean_mesh_info(&candidates, nat, ip, &mut self.intro);
                if self.intro != before {
                    debug!(client, refused = ?self.intro, "MeshInfo cleaned");
                }
                let m = ClientMessage::MeshInfo { candidates, nat };
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.mesh_info = Some(m.clone());
                }
                m
            }
            Ok(ClientMessage::Leave) => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.leaving = true;
                }
                return;
            }
            Ok(m) => m,
            Err(_) => {
                self.decode_errors += 1;
                return;
            }
        };
        let lobby_phase = matches!(
            msg,
            ClientMessage::Login { .. }
                | ClientMessage::Resume { .. }
                | ClientMessage::EnterZone { .. }
                | ClientMessage::JoinParty { .. }
                | ClientMessage::InviteToParty { .. }
        );
        let also_lobby = matches!(msg, ClientMessage::MeshInfo { .. });
        let wrapped = InternalMessage::FromClient { client, msg };
        match game {
            Some(g) if !lobby_phase => {
                bus.send(Role::Game(g), &wrapped);
                if also_lobby {
                    bus.send(Role::Lobby, &wrapped);
                }
            }
            _ => bus.send(Role::Lobby, &wrapped),
        }
    }

    /// Once per frame: a heartbeat to the Lobby when due, and once a minute (when something
    /// changed) a log line of what clients sent that was dropped or refused.
    pub fn tick(&mut self, now: Instant, bus: &mut Bus) {
        if self.last_heartbeat.is_none_or(|t| now.saturating_duration_since(t) >= self.heartbeat) {
            self.last_heartbeat = Some(now);
            bus.send(Role::Lobby, &InternalMessage::Heartbeat { from: Role::Agent });
        }
        let counts = (self.decode_errors, self.rate_limited, self.intro);
        let last = *self.last_log.get_or_insert(now);
        if now.saturating_duration_since(last) >= Duration::from_secs(60) && counts != self.logged {
            self.last_log = Some(now);
            self.logged = counts;
            let refused: Vec<String> = self
                .intro
                .counters()
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            info!(
                decode_errors = counts.0,
                rate_limited = counts.1,
                candidates_refused = %refused.join(" "),
                "agent stats"
            );
        }
    }

    /// The roles' messages for clients, encoded, in order; `Route` updates applied. Messages
    /// for clients without a session are dropped.
    pub fn to_clients(&mut self, bus: &mut Bus) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for m in bus.drain(Role::Agent) {
            match m {
                InternalMessage::ToClient { client, msg } => {
                    if !self.sessions.contains_key(&client) {
                        continue;
                    }
                    let reliable = !matches!(
                        msg,
                        ShardMessage::Correction { .. }
                            | ShardMessage::FromPeer { reliable: false, .. }
                            | ShardMessage::FromGame { reliable: false, .. }
                    );
                    if let Ok(bytes) = encode(&msg) {
                        out.push(Outgoing { client, reliable, bytes });
                    }
                }
                InternalMessage::Route { client, game } => {
                    if let Some(s) = self.sessions.get_mut(&client) {
                        s.game = game;
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// `ClientJoined` for every session, then its last `MeshInfo`: what a restarted Lobby
    /// must hear first, so it knows the clients (and their candidates, for the introductions
    /// of a later Game-server handover) before their next message.
    pub fn resync(&self) -> Vec<InternalMessage> {
        let mut out = Vec::with_capacity(self.sessions.len() * 2);
        for (client, s) in &self.sessions {
            out.push(InternalMessage::ClientJoined { client: *client, name: s.name.clone(), ip: s.ip });
            if let Some(m) = &s.mesh_info {
                out.push(InternalMessage::FromClient { client: *client, msg: m.clone() });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shard::PlayerId;

    fn lobby_msgs(bus: &mut Bus) -> Vec<InternalMessage> {
        bus.drain(Role::Lobby)
    }

    fn enc(m: &ClientMessage) -> Vec<u8> {
        encode(m).unwrap()
    }

    #[test]
    fn the_agent_routes_by_phase_limits_each_client_and_drops_garbage() {
        let t0 = Instant::now();
        let mut bus = Bus::default();
        let mut a = AgentRouter::new(10, Duration::from_millis(250));
        a.connect(t0, &mut bus, 1, "ana".into(), None);
        assert!(matches!(&lobby_msgs(&mut bus)[..], [InternalMessage::ClientJoined { client: 1, .. }]));
        // Lobby phase: everything to the Lobby.
        a.from_client(t0, &mut bus, 1, &enc(&ClientMessage::JoinParty { party: "p".into() }));
        assert_eq!(lobby_msgs(&mut bus).len(), 1);
        // Routed to Game 4: game messages go there, zone changes still to the Lobby.
        bus.send(Role::Agent, &InternalMessage::Route { client: 1, game: Some(4) });
        assert!(a.to_clients(&mut bus).is_empty());
        a.from_client(t0, &mut bus, 1, &enc(&ClientMessage::Move { tick: 1, x: 1.0, y: 0.0 }));
        a.from_client(t0, &mut bus, 1, &enc(&ClientMessage::EnterZone { zone: 1 }));
        assert_eq!(bus.drain(Role::Game(4)).len(), 1);
        assert_eq!(lobby_msgs(&mut bus).len(), 1);
        // Garbage is counted; the budget (10/s) refuses the 11th message within the second.
        a.from_client(t0, &mut bus, 1, &[0xff; 7]);
        assert_eq!(a.decode_errors, 1);
        for _ in 0..10 {
            a.from_client(t0, &mut bus, 1, &enc(&ClientMessage::Move { tick: 1, x: 1.0, y: 0.0 }));
        }
        assert_eq!(a.rate_limited, 4, "3 + 1 + 1 + garbage used 4 of 10 tokens; 6 more passed");
        // Unknown clients are ignored; answers carry the channel.
        a.from_client(t0, &mut bus, 99, &enc(&ClientMessage::JoinParty { party: "x".into() }));
        bus.send(
            Role::Agent,
            &InternalMessage::ToClient { client: 1, msg: ShardMessage::Correction { x: 0.0, y: 0.0 } },
        );
        bus.send(
            Role::Agent,
            &InternalMessage::ToClient {
                client: 1,
                msg: ShardMessage::PeerOutro { link: crate::proto::peer::LinkId(3) },
            },
        );
        bus.send(
            Role::Agent,
            &InternalMessage::ToClient {
                client: 9,
                msg: ShardMessage::Welcome { player: PlayerId(9), stun: "1.2.3.4:5".parse().unwrap() },
            },
        );
        let out = a.to_clients(&mut bus);
        assert_eq!(out.iter().map(|o| (o.client, o.reliable)).collect::<Vec<_>>(), [(1, false), (1, true)]);
        // A restarted Lobby hears every session again, with its last (cleaned) MeshInfo.
        let nat = crate::proto::shard::NatSummary {
            class: "open".into(),
            dependent_mapping: false,
            port_delta: None,
            public: None,
        };
        a.from_client(
            t0 + Duration::from_secs(2),
            &mut bus,
            1,
            &enc(&ClientMessage::MeshInfo { candidates: vec![], nat }),
        );
        let resync = a.resync();
        assert!(
            matches!(
                &resync[..],
                [
                    InternalMessage::ClientJoined { client: 1, .. },
                    InternalMessage::FromClient { client: 1, msg: ClientMessage::MeshInfo { .. } }
                ]
            ),
            "{resync:?}"
        );
        // A lost connection (no `Leave`) tells the Game server and the Lobby the player is
        // away: its Game server keeps its pairs for a resume.
        bus.drain(Role::Game(4));
        lobby_msgs(&mut bus);
        assert!(a.disconnect(&mut bus, 1).is_some());
        assert!(matches!(&bus.drain(Role::Game(4))[..], [InternalMessage::ClientAway { client: 1 }]));
        assert!(matches!(&lobby_msgs(&mut bus)[..], [InternalMessage::ClientAway { client: 1 }]));
    }

    #[test]
    fn a_client_that_says_leave_ends_its_session_at_once_and_the_message_goes_nowhere() {
        let mut bus = Bus::default();
        let mut a = AgentRouter::new(100, Duration::from_secs(1));
        let t0 = Instant::now();
        a.connect(t0, &mut bus, 7, "ana".into(), None);
        lobby_msgs(&mut bus);
        bus.send(Role::Agent, &InternalMessage::Route { client: 7, game: Some(2) });
        a.to_clients(&mut bus);
        a.from_client(t0, &mut bus, 7, &enc(&ClientMessage::Leave));
        assert!(bus.drain(Role::Game(2)).is_empty() && lobby_msgs(&mut bus).is_empty(), "not forwarded");
        assert!(a.disconnect(&mut bus, 7).is_some());
        assert!(matches!(&bus.drain(Role::Game(2))[..], [InternalMessage::ClientLeft { client: 7 }]));
        assert!(matches!(&lobby_msgs(&mut bus)[..], [InternalMessage::ClientLeft { client: 7 }]));
    }
}
