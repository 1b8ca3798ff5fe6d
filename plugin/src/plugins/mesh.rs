//! [`P2pMeshPlugin`]: the mesh socket, the core, peer entities and the P2P messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bevy::prelude::*;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::client::P2pClient;
use super::diagnostics::P2pDiagnosticsPlugin;
use super::io::{MeshSocket, UdpMeshIo};
use super::message::{P2pDecodeError, decode_message};
use super::sets::{Step, configure_sets};
use super::shard::{LocalPlayer, ShardEvent};
use crate::client::ShardNotice;
use crate::client::{self, Channel, ClientConfig, ClientCore, ClientEvent};
use crate::endpoint::Endpoint;
use crate::nat::NatReport;
use crate::proto::peer::LinkId;
use crate::proto::shard::PlayerId;

/// Largest datagram the receive loop reads (bigger ones are truncated and fail to decode).
const RECV_BUF: usize = 2048;
/// Most datagrams one frame reads, so a flood cannot stall a frame; the rest wait.
const MAX_DATAGRAMS_PER_FRAME: usize = 4096;

/// Opens the mesh socket, runs the [`ClientCore`] and publishes peers as entities and Bevy
/// messages. Adds [`P2pDiagnosticsPlugin`].
#[derive(Debug, Clone)]
pub struct P2pMeshPlugin {
    /// The core's settings (player name, P2P on/off, link timing).
    pub client: ClientConfig,
    /// Where the mesh socket binds (default `0.0.0.0:0`: any port).
    pub bind: SocketAddr,
    /// Run NAT discovery against this STUN server at startup (with a shard, discovery
    /// starts at `Welcome` against the shard's server instead).
    pub stun: Option<SocketAddr>,
}

impl P2pMeshPlugin {
    /// A mesh for the named player, bound to any port.
    pub fn new(name: impl Into<String>) -> Self {
        P2pMeshPlugin {
            client: ClientConfig::new(name),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            stun: None,
        }
    }
}

impl Default for P2pMeshPlugin {
    fn default() -> Self {
        P2pMeshPlugin::new("player")
    }
}

/// Our NAT, once discovery finished.
#[derive(Resource, Debug, Default, Clone)]
pub struct LocalNat(pub Option<NatReport>);

/// Peer entities by player id.
#[derive(Resource, Debug, Default)]
pub struct PeerIndex(pub HashMap<PlayerId, Entity>);

impl PeerIndex {
    /// The entity of a peer.
    pub fn get(&self, player: PlayerId) -> Option<Entity> {
        self.0.get(&player).copied()
    }
}

/// An introduced peer (one entity each, despawned when the shard un-introduces it).
#[derive(Component, Debug, Clone, PartialEq, Eq, Reflect)]
#[reflect(Component, Debug)]
pub struct Peer {
    /// The peer's player id.
    #[reflect(remote = super::reflect::PlayerIdReflect)]
    pub player: PlayerId,
    /// Its name.
    pub name: String,
    /// The link the shard assigned.
    #[reflect(remote = super::reflect::LinkIdReflect)]
    pub link: LinkId,
}

/// How traffic to a peer travels now.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Reflect)]
#[reflect(Component, Debug)]
pub struct PeerPath {
    /// Connecting, relayed, direct, lost or server.
    #[reflect(remote = super::reflect::PeerPathKindReflect)]
    pub path: client::PeerPath,
    /// The peer's address (direct) or the relay's (relayed).
    pub remote: Option<SocketAddr>,
    /// Time from the introduction to this path.
    pub since_intro: Duration,
}

/// Per-peer measurements, refreshed every frame (rates once a second, on the network's
/// clock: real time, whatever the game does with `Time<Virtual>`).
#[derive(Component, Debug, Clone, Copy, Default, PartialEq, Reflect)]
#[reflect(Component, Default, Debug)]
pub struct PeerStats {
    /// Smoothed RTT on the current mesh path.
    pub rtt: Option<Duration>,
    /// 99th percentile of the recent RTT samples on the current path (probe, ping and
    /// keepalive answers).
    pub rtt_p99: Option<Duration>,
    /// RTT variation (RFC 6298 `RTTVAR`) on the current path.
    pub jitter: Option<Duration>,
    /// Application bytes per second to the peer over the last second (mesh + server).
    pub send_rate: f64,
    /// Application bytes per second from the peer over the last second (mesh + server).
    pub receive_rate: f64,
    /// How long after the introduction the link first went direct (`None`: not yet, or
    /// relayed only).
    pub time_to_direct: Option<Duration>,
    /// Packet loss toward the peer on the mesh (0–1, renet's estimate; 0 without a link).
    pub loss: f32,
    /// Application bytes sent to the peer (mesh + server routes).
    pub bytes_sent: u64,
    /// Application bytes received from the peer (mesh + server routes).
    pub bytes_received: u64,
    /// Messages sent over the mesh.
    pub p2p_messages_sent: u64,
    /// Messages received over the mesh.
    pub p2p_messages_received: u64,
    /// Messages sent through the Game server.
    pub server_messages_sent: u64,
    /// Messages received through the Game server.
    pub server_messages_received: u64,
}

/// The shard introduced a peer; its entity was spawned.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct PeerConnected {
    /// The peer's entity.
    pub entity: Entity,
    /// The peer.
    pub player: PlayerId,
    /// Its name.
    pub name: String,
}

/// A peer's path changed (relayed → direct, lost, …).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct PeerPathChanged {
    /// The peer's entity.
    pub entity: Entity,
    /// The peer.
    pub player: PlayerId,
    /// The new path.
    pub path: client::PeerPath,
    /// Peer (direct) or relay (relayed) address.
    pub remote: Option<SocketAddr>,
    /// Time since the introduction.
    pub since_intro: Duration,
}

/// A peer was un-introduced (moved away, left, Game server change); its entity is gone.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct PeerDisconnected {
    /// The peer.
    pub player: PlayerId,
}

/// An application message from a peer.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct P2pReceived {
    /// The sender.
    pub player: PlayerId,
    /// The sender's entity (`Entity::PLACEHOLDER` if it was already despawned).
    pub entity: Entity,
    /// The channel it was sent on.
    pub channel: Channel,
    /// The bytes (see [`P2pReceived::decode`] for typed messages).
    pub data: Bytes,
    /// `true` over the mesh, `false` through the Game server.
    pub p2p: bool,
}

impl P2pReceived {
    /// Decode a message sent with [`P2pSender::send`](crate::plugins::P2pSender::send).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, P2pDecodeError> {
        decode_message(&self.data)
    }
}

/// NAT discovery finished.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct NatDiscovered(pub NatReport);

impl Plugin for P2pMeshPlugin {
    fn build(&self, app: &mut App) {
        if !app.world().contains_non_send::<MeshSocket>() {
            let io = UdpMeshIo::bind(self.bind).unwrap_or_else(|e| {
                panic!("P2pMeshPlugin: cannot bind the mesh socket on {}: {e}", self.bind)
            });
            app.insert_non_send(MeshSocket(Box::new(io)));
        }
        let socket = app.world().non_send::<MeshSocket>();
        let now = socket.0.now();
        let mut core =
            ClientCore::new(now, self.client.clone(), socket.0.clock_anchor(), &socket.0.local_addrs());
        if let Some(stun) = self.stun {
            core.start_nat_discovery(now, stun);
        }
        configure_sets(app);
        app.insert_resource(P2pClient(core))
            .init_resource::<LocalNat>()
            .init_resource::<PeerIndex>()
            .add_message::<PeerConnected>()
            .add_message::<PeerPathChanged>()
            .add_message::<PeerDisconnected>()
            .add_message::<P2pReceived>()
            .add_message::<NatDiscovered>()
            .register_type::<PeerStats>()
            .register_type::<Peer>()
            .register_type::<PeerPath>()
            .add_message::<ShardEvent>()
            .add_systems(PreUpdate, receive_datagrams.in_set(Step::MeshIn))
            .add_systems(PreUpdate, publish_events.in_set(Step::Events))
            .add_systems(PreUpdate, update_peer_stats.in_set(Step::After))
            .add_systems(PostUpdate, send_datagrams.in_set(Step::Out));
        if !app.is_plugin_added::<P2pDiagnosticsPlugin>() {
            app.add_plugins(P2pDiagnosticsPlugin);
        }
    }
}

/// Mesh socket → core, then the core's timers.
fn receive_datagrams(mut socket: NonSendMut<MeshSocket>, mut client: ResMut<P2pClient>) {
    let mut buf = [0u8; RECV_BUF];
    for _ in 0..MAX_DATAGRAMS_PER_FRAME {
        let Some((n, from, local)) = socket.0.recv(&mut buf) else { break };
        let now = socket.0.now();
        client.handle_datagram(now, local, from, &buf[..n.min(RECV_BUF)]);
    }
    let now = socket.0.now();
    if client.poll_timeout().is_some_and(|t| t <= now) {
        client.handle_timeout(now);
    }
}

/// Core → mesh socket.
fn send_datagrams(mut socket: NonSendMut<MeshSocket>, mut client: ResMut<P2pClient>) {
    while let Some(t) = client.poll_transmit() {
        socket.0.send(&t);
    }
}

/// The writers [`publish_events`] fills.
#[derive(bevy::ecs::system::SystemParam)]
struct Out<'w> {
    connected: MessageWriter<'w, PeerConnected>,
    path: MessageWriter<'w, PeerPathChanged>,
    disconnected: MessageWriter<'w, PeerDisconnected>,
    received: MessageWriter<'w, P2pReceived>,
    nat: MessageWriter<'w, NatDiscovered>,
    shard: MessageWriter<'w, ShardEvent>,
}

/// Core events → Bevy messages, peer entities, [`LocalNat`] and [`LocalPlayer`].
fn publish_events(
    mut commands: Commands,
    mut client: ResMut<P2pClient>,
    mut index: ResMut<PeerIndex>,
    mut local_nat: ResMut<LocalNat>,
    mut local_player: Option<ResMut<LocalPlayer>>,
    mut paths: Query<&mut PeerPath>,
    mut out: Out,
) {
    while let Some(ev) = client.poll_event() {
        match ev {
            ClientEvent::PeerAdded { player, name } => {
                let Some(info) = client.peer(player) else { continue };
                let link = info.link;
                let path = PeerPath { path: info.path, remote: info.remote, since_intro: Duration::ZERO };
                if let Some(old) = index.0.remove(&player) {
                    commands.entity(old).despawn();
                }
                let entity = commands
                    .spawn((Peer { player, name: name.clone(), link }, path, PeerStats::default()))
                    .id();
                index.0.insert(player, entity);
                out.connected.write(PeerConnected { entity, player, name });
            }
            ClientEvent::PeerPath { player, path, remote, since_intro } => {
                let Some(entity) = index.get(player) else { continue };
                let new = PeerPath { path, remote, since_intro };
                match paths.get_mut(entity) {
                    Ok(mut p) => *p = new,
                    // Spawned this frame: the command has not run yet.
                    Err(_) => {
                        commands.entity(entity).insert(new);
                    }
                }
                out.path.write(PeerPathChanged { entity, player, path, remote, since_intro });
            }
            ClientEvent::PeerRemoved { player } => {
                if let Some(entity) = index.0.remove(&player) {
                    commands.entity(entity).despawn();
                }
                out.disconnected.write(PeerDisconnected { player });
            }
            ClientEvent::Message { player, channel, data, p2p } => {
                let entity = index.get(player).unwrap_or(Entity::PLACEHOLDER);
                out.received.write(P2pReceived { player, entity, channel, data, p2p });
            }
            ClientEvent::Nat(report) => {
                local_nat.0 = Some((*report).clone());
                out.nat.write(NatDiscovered(*report));
            }
            ClientEvent::Shard(notice) => {
                if let Some(lp) = local_player.as_mut() {
                    match &notice {
                        ShardNotice::Welcome { player } => lp.player = Some(*player),
                        ShardNotice::EnteredZone { zone, .. } => lp.zone = Some(*zone),
                        _ => {}
                    }
                }
                out.shard.write(ShardEvent(notice));
            }
        }
    }
}

/// Byte counts of a peer at the start of its current rate window.
#[derive(Default)]
struct RateWindows(HashMap<PlayerId, (std::time::Instant, u64, u64)>);

/// Refresh every peer's [`PeerStats`] from the core.
fn update_peer_stats(
    client: Res<P2pClient>,
    socket: NonSend<MeshSocket>,
    mut windows: Local<RateWindows>,
    mut peers: Query<(&Peer, &PeerPath, &mut PeerStats)>,
) {
    let now = socket.0.now();
    windows.0.retain(|p, _| client.peer(*p).is_some());
    for (peer, path, mut stats) in &mut peers {
        let Some(info) = client.peer(peer.player) else { continue };
        let (sent, received) = (
            info.sent.p2p_bytes + info.sent.server_bytes,
            info.received.p2p_bytes + info.received.server_bytes,
        );
        let (mut send_rate, mut receive_rate) = (stats.send_rate, stats.receive_rate);
        let w = windows.0.entry(peer.player).or_insert((now, sent, received));
        let secs = now.saturating_duration_since(w.0).as_secs_f64();
        if secs >= 1.0 {
            send_rate = sent.saturating_sub(w.1) as f64 / secs;
            receive_rate = received.saturating_sub(w.2) as f64 / secs;
            *w = (now, sent, received);
        }
        let rtt = client.peer_rtt_stats(peer.player);
        let direct_now = (path.path == client::PeerPath::Direct).then_some(path.since_intro);
        let new = PeerStats {
            rtt: client.peer_rtt(peer.player),
            rtt_p99: rtt.and_then(|r| r.p99),
            jitter: rtt.map(|r| r.jitter),
            send_rate,
            receive_rate,
            time_to_direct: stats.time_to_direct.or(direct_now),
            loss: client.peer_loss(peer.player).unwrap_or(0.0),
            bytes_sent: info.sent.p2p_bytes + info.sent.server_bytes,
            bytes_received: info.received.p2p_bytes + info.received.server_bytes,
            p2p_messages_sent: info.sent.p2p_messages,
            p2p_messages_received: info.received.p2p_messages,
            server_messages_sent: info.sent.server_messages,
            server_messages_received: info.received.server_messages,
        };
        stats.set_if_neq(new);
    }
}
