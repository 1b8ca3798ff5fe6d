//! The Agent (DMZ gateway): the only endpoint clients reach.
//!
//! bevy_renet + renet_netcode in secure mode: a client needs a connect token minted with the
//! shard's key (see [`super::login`]). The Agent tracks each session, routes lobby-phase
//! messages to the Lobby and game-phase messages to the client's Game server, and back;
//! applies a per-client message budget; never tells clients an internal address.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_p2pmodel::proto::shard::{ClientMessage, InternalMessage, Role, ShardMessage, decode, encode};
use bevy_renet::netcode::{NetcodeErrorEvent, NetcodeServerTransport};
use bevy_renet::renet::{DefaultChannel, ServerEvent};
use bevy_renet::{RenetServer, RenetServerEvent};

use super::bus::ShardBus;
use super::keys::name_from_user_data;
use super::login::OnlineNames;

/// One client session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Name bound in the connect token.
    pub name: String,
    /// Game server the client's game-phase messages go to (`None`: lobby phase).
    pub game: Option<u32>,
    tokens: f32,
    refill: Instant,
}

/// The Agent's state.
#[derive(Resource, Debug)]
pub struct AgentState {
    /// Sessions by netcode client id.
    pub sessions: HashMap<u64, Session>,
    /// Names online (shared with the login service).
    pub online: OnlineNames,
    /// Messages allowed per client per second.
    pub max_messages_per_sec: u32,
    /// Client messages that did not decode (dropped).
    pub decode_errors: u64,
    /// Client messages over the budget (dropped).
    pub rate_limited: u64,
    heartbeat: Duration,
    last_heartbeat: Instant,
}

impl AgentState {
    /// A fresh Agent state.
    pub fn new(online: OnlineNames, max_messages_per_sec: u32, heartbeat: Duration) -> AgentState {
        AgentState {
            sessions: HashMap::new(),
            online,
            max_messages_per_sec,
            decode_errors: 0,
            rate_limited: 0,
            heartbeat,
            last_heartbeat: Instant::now(),
        }
    }
}

/// The Agent role. Needs [`RenetServer`], [`NetcodeServerTransport`], [`AgentState`] and
/// [`ShardBus`] resources, and bevy_renet's server plugins.
pub struct AgentPlugin;

impl Plugin for AgentPlugin {
    fn build(&self, app: &mut App) {
        app.add_observer(on_server_event)
            .add_observer(on_netcode_error)
            .add_systems(Update, (client_to_roles, roles_to_clients).chain());
    }
}

fn on_netcode_error(e: On<NetcodeErrorEvent>) {
    warn!("agent netcode error: {}", e.event().0);
}

fn on_server_event(
    ev: On<RenetServerEvent>,
    transport: Res<NetcodeServerTransport>,
    mut agent: ResMut<AgentState>,
    mut bus: ResMut<ShardBus>,
    mut server: ResMut<RenetServer>,
) {
    match ev.event().0 {
        ServerEvent::ClientConnected { client_id } => {
            let name = transport.user_data(client_id).and_then(|d| name_from_user_data(&d));
            let Some(name) = name else {
                warn!(client_id, "connect token without a valid name; disconnecting");
                server.disconnect(client_id);
                return;
            };
            info!(client_id, %name, "client connected");
            agent.online.set(&name, true);
            let budget = agent.max_messages_per_sec as f32;
            agent.sessions.insert(
                client_id,
                Session { name: name.clone(), game: None, tokens: budget, refill: Instant::now() },
            );
            bus.send(Role::Lobby, &InternalMessage::ClientJoined { client: client_id, name });
        }
        ServerEvent::ClientDisconnected { client_id, reason } => {
            if let Some(s) = agent.sessions.remove(&client_id) {
                info!(client_id, name = %s.name, ?reason, "client disconnected");
                agent.online.set(&s.name, false);
                let left = InternalMessage::ClientLeft { client: client_id };
                if let Some(g) = s.game {
                    bus.send(Role::Game(g), &left);
                }
                bus.send(Role::Lobby, &left);
            }
        }
    }
}

fn client_to_roles(
    mut server: ResMut<RenetServer>,
    mut agent: ResMut<AgentState>,
    mut bus: ResMut<ShardBus>,
) {
    let now = Instant::now();
    let budget = agent.max_messages_per_sec as f32;
    let ids: Vec<u64> = agent.sessions.keys().copied().collect();
    for client in ids {
        for ch in [2u8, 1, 0] {
            while let Some(bytes) = server.receive_message(client, ch) {
                let Some(s) = agent.sessions.get_mut(&client) else { break };
                let elapsed = now.duration_since(s.refill).as_secs_f32();
                s.refill = now;
                s.tokens = (s.tokens + elapsed * budget).min(budget);
                if s.tokens < 1.0 {
                    agent.rate_limited += 1;
                    continue;
                }
                s.tokens -= 1.0;
                let game = s.game;
                let msg = match decode::<ClientMessage>(&bytes) {
                    Ok(m) => m,
                    Err(_) => {
                        agent.decode_errors += 1;
                        continue;
                    }
                };
                let lobby_phase = matches!(
                    msg,
                    ClientMessage::Login { .. }
                        | ClientMessage::EnterZone { .. }
                        | ClientMessage::JoinParty { .. }
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
        }
    }
    if now.duration_since(agent.last_heartbeat) >= agent.heartbeat {
        agent.last_heartbeat = now;
        bus.send(Role::Lobby, &InternalMessage::Heartbeat { from: Role::Agent });
    }
}

fn roles_to_clients(
    mut server: ResMut<RenetServer>,
    mut agent: ResMut<AgentState>,
    mut bus: ResMut<ShardBus>,
) {
    for m in bus.drain(Role::Agent) {
        match m {
            InternalMessage::ToClient { client, msg } => {
                if !agent.sessions.contains_key(&client) {
                    continue;
                }
                let ch = match msg {
                    ShardMessage::Correction { .. }
                    | ShardMessage::Npcs { .. }
                    | ShardMessage::FromPeer { reliable: false, .. } => DefaultChannel::Unreliable,
                    _ => DefaultChannel::ReliableOrdered,
                };
                if let Ok(b) = encode(&msg) {
                    server.send_message(client, ch, b);
                }
            }
            InternalMessage::Route { client, game } => {
                if let Some(s) = agent.sessions.get_mut(&client) {
                    s.game = game;
                }
            }
            _ => {}
        }
    }
}
