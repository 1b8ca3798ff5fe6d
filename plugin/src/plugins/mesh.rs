//! [`P2pMeshPlugin`]: the mesh socket, the core, peer entities and the P2P messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bevy::prelude::*;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::client::P2pClient;
use super::diagnostics::P2pDiagnosticsPlugin;
use super::io::{ClosedMeshIo, MeshIo, MeshSocket, MeshSocketState, UdpMeshIo};
use super::io_thread::{self, Conditioners, IoThread, RECV_BUF, ThreadIo};
use super::message::{P2pDecodeError, decode_message};
use super::sets::{P2pReceive, Step, configure_sets};
use super::shard::{LocalPlayer, ShardEvent};
use crate::client::ShardNotice;
use crate::client::{self, Channel, ClientConfig, ClientCore, ClientEvent};
use crate::conditioner::ConditionerConfig;
use crate::endpoint::Endpoint;
use crate::nat::NatReport;
use crate::proto::peer::LinkId;
use crate::proto::shard::PlayerId;

/// Most datagrams one frame reads, so a flood cannot stall a frame; the rest wait.
const MAX_DATAGRAMS_PER_FRAME: usize = 4096;

/// Opens the mesh socket (at startup, not when the plugin is added), runs the
/// [`ClientCore`] and publishes peers as entities and Bevy messages. Adds
/// [`P2pDiagnosticsPlugin`].
#[derive(Debug, Clone)]
pub struct P2pMeshPlugin {
    /// The core's settings (player name, P2P on/off, link timing).
    pub client: ClientConfig,
    /// Where the mesh socket binds (default `0.0.0.0:0`: any port).
    pub bind: SocketAddr,
    /// Run NAT discovery against this STUN server at startup (with a shard, discovery
    /// starts at `Welcome` against the shard's server instead).
    pub stun: Option<SocketAddr>,
    /// Service the real UDP socket on its own I/O thread (default `true`): probes, acks,
    /// keepalives and relay refreshes are answered whatever the frame rate, and the RTT is
    /// the network's. `false`: read and write it in the frames (`PreUpdate`/`PostUpdate`).
    /// Other [`MeshIo`]s (the simulator) are always driven in the frames.
    pub io_thread: bool,
    /// Delay, jitter, loss and duplication on the mesh socket, each way (so the RTT grows by
    /// twice the delay), to try a game on a bad network; `None` (default): none.
    pub conditioner: Option<ConditionerConfig>,
}

impl P2pMeshPlugin {
    /// A mesh for the named player, bound to any port, on its own I/O thread.
    pub fn new(name: impl Into<String>) -> Self {
        P2pMeshPlugin {
            client: ClientConfig::new(name),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            stun: None,
            io_thread: true,
            conditioner: None,
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

/// A message from the game's own logic on our Game server, as bytes (typed ones are read
/// with `MessageReader<FromServer<T>>`, see [`P2pAppExt::add_server_message`](super::P2pAppExt::add_server_message)).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct ServerReceived {
    /// Sent reliable-ordered (`true`) or unreliable.
    pub reliable: bool,
    /// The bytes.
    pub data: Bytes,
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

/// Something went wrong with the mesh socket (read with `MessageReader<P2pError>`); the game
/// goes on, without P2P.
#[derive(Message, Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum P2pError {
    /// The mesh socket could not be opened (port taken, no permission, no such address):
    /// nothing goes over the mesh, and the shard plugin refuses to connect
    /// (`ShardNotice::Disconnected(DisconnectReason::Local(..))`).
    #[error("cannot open the mesh socket on {bind}: {reason}")]
    MeshSocket {
        /// The address it was to bind.
        bind: SocketAddr,
        /// The system's reason.
        reason: String,
    },
    /// The mesh socket's I/O thread could not start or stopped.
    #[error("{0}")]
    IoThread(String),
}

/// The plugin's settings, for its startup system.
#[derive(Resource, Debug, Clone)]
struct MeshSettings(P2pMeshPlugin);

/// Present when the mesh socket is driven in the frames (the simulator, `io_thread: false`,
/// a failed socket), with the conditioner if one is configured.
#[derive(Resource, Debug)]
struct FrameDriven(Option<Conditioners>);

impl Plugin for P2pMeshPlugin {
    fn build(&self, app: &mut App) {
        configure_sets(app);
        app.insert_resource(MeshSettings(self.clone()))
            .init_resource::<MeshSocketState>()
            .init_resource::<LocalNat>()
            .init_resource::<PeerIndex>()
            .add_message::<PeerConnected>()
            .add_message::<PeerPathChanged>()
            .add_message::<PeerDisconnected>()
            .add_message::<P2pReceived>()
            .add_message::<ServerReceived>()
            .add_message::<NatDiscovered>()
            .add_message::<P2pError>()
            .add_message::<OpenMeshSocket>()
            .register_type::<PeerStats>()
            .register_type::<Peer>()
            .register_type::<PeerPath>()
            .add_message::<ShardEvent>()
            // The socket opens before any `Startup` system, so they all find `P2pClient`.
            .add_systems(PreStartup, open_mesh_socket)
            .add_systems(PreUpdate, reopen_mesh_socket.in_set(P2pReceive).before(Step::ShardIn))
            .add_systems(
                PreUpdate,
                receive_datagrams.in_set(Step::MeshIn).run_if(resource_exists::<FrameDriven>),
            )
            .add_systems(PreUpdate, (report_thread_failure, publish_events).chain().in_set(Step::Events))
            .add_systems(PreUpdate, update_peer_stats.in_set(Step::After))
            .add_systems(PostUpdate, send_datagrams.in_set(Step::Out).run_if(resource_exists::<FrameDriven>));
        if !app.is_plugin_added::<P2pDiagnosticsPlugin>() {
            app.add_plugins(P2pDiagnosticsPlugin);
        }
    }
}

/// Open the mesh socket (or take the one inserted before the first update), create the core
/// on it, and start the I/O thread for a real socket. A socket that cannot be opened is
/// reported ([`P2pError`], [`MeshSocketState::Failed`]); the app runs on without P2P.
fn open_mesh_socket(world: &mut World) {
    let settings = world.resource::<MeshSettings>().0.clone();
    let inserted = world.remove_non_send::<MeshSocket>();
    open(world, &settings, settings.bind, inserted);
}

/// After the mesh socket failed to open: try again on `bind` (write with
/// `MessageWriter<OpenMeshSocket>`; the next frame opens it, then send
/// `ShardRequest::Connect`). Ignored while it is open or once the client logged in.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenMeshSocket(pub SocketAddr);

/// [`OpenMeshSocket`] requests: a new socket and a fresh core in the same [`P2pClient`].
fn reopen_mesh_socket(world: &mut World) {
    let Some(bind) = world.resource_mut::<Messages<OpenMeshSocket>>().drain().last().map(|m| m.0) else {
        return;
    };
    let failed = matches!(world.resource::<MeshSocketState>(), MeshSocketState::Failed(_));
    let fresh = world.get_resource::<P2pClient>().is_none_or(|c| {
        let core = c.lock();
        core.phase() == client::Phase::Connecting && core.peers().next().is_none()
    });
    if !failed || !fresh {
        warn!(%bind, "OpenMeshSocket while the mesh socket is open or a session runs: ignored");
        return;
    }
    let settings = world.resource::<MeshSettings>().0.clone();
    world.remove_non_send::<MeshSocket>();
    world.remove_resource::<FrameDriven>();
    // A thread that stopped has ended; dropping its handle joins it.
    world.remove_resource::<IoThread>();
    open(world, &settings, bind, None);
}

/// Open the socket on `bind` (or use `inserted`), create the core on it and start the I/O
/// thread when it is a real socket; report a failure.
fn open(world: &mut World, settings: &P2pMeshPlugin, bind: SocketAddr, inserted: Option<MeshSocket>) {
    let io: Result<Box<dyn MeshIo>, P2pError> = match inserted {
        Some(socket) => Ok(socket.0),
        None => UdpMeshIo::bind(bind)
            .map(|io| Box::new(io) as Box<dyn MeshIo>)
            .map_err(|e| P2pError::MeshSocket { bind, reason: e.to_string() }),
    };
    let (io, failure) = match io {
        Ok(io) => (io, None),
        Err(e) => (Box::new(ClosedMeshIo) as Box<dyn MeshIo>, Some(e)),
    };
    let now = io.now();
    let host_addrs = io.local_addrs();
    let mut core = ClientCore::new(now, settings.client.clone(), io.clock_anchor(), &host_addrs);
    if let Some(stun) = settings.stun.filter(|_| failure.is_none()) {
        core.start_nat_discovery(now, stun);
    }
    // Reopening keeps the resource (and any clone a game holds); only the core is new.
    let client = match world.get_resource::<P2pClient>() {
        Some(c) => {
            c.lock_shared().core = core;
            c.clone()
        }
        None => P2pClient::new(core),
    };
    let local = host_addrs.first().copied().unwrap_or(bind);
    let is_udp = (&*io as &dyn std::any::Any).is::<UdpMeshIo>();
    let (socket, state, failure) = if settings.io_thread && is_udp && failure.is_none() {
        let udp = *(io as Box<dyn std::any::Any>).downcast::<UdpMeshIo>().expect("checked above");
        match io_thread::spawn(udp, &client, settings.conditioner) {
            Ok(thread) => {
                world.insert_resource(thread);
                let io: Box<dyn MeshIo> = Box::new(ThreadIo { client: client.clone(), local });
                (io, MeshSocketState::Open { local, io_thread: true }, None)
            }
            Err(failed) => {
                let (e, udp) = *failed;
                // No thread: drive the socket in the frames instead.
                warn!("cannot start the mesh socket's I/O thread ({e}); driving it in the frames");
                world.insert_resource(FrameDriven(frame_conditioner(settings)));
                let io: Box<dyn MeshIo> = Box::new(udp);
                (io, MeshSocketState::Open { local, io_thread: false }, None)
            }
        }
    } else {
        world.insert_resource(FrameDriven(frame_conditioner(settings)));
        let state = match &failure {
            None => MeshSocketState::Open { local, io_thread: false },
            Some(e) => MeshSocketState::Failed(e.to_string()),
        };
        (io, state, failure)
    };
    if let Some(e) = failure {
        error!("{e}; P2P is unavailable");
        world.write_message(e);
    }
    world.insert_non_send(MeshSocket(socket));
    world.insert_resource(client);
    world.insert_resource(state);
}

/// The conditioner for the frame driver, when one is configured.
fn frame_conditioner(settings: &P2pMeshPlugin) -> Option<Conditioners> {
    settings.conditioner.filter(|c| !c.is_passthrough()).map(Conditioners::new)
}

/// The I/O thread stopped: say so once, and mark the socket failed.
fn report_thread_failure(
    client: Res<P2pClient>,
    mut state: ResMut<MeshSocketState>,
    thread: Option<Res<IoThread>>,
    mut errors: MessageWriter<P2pError>,
) {
    if thread.is_none() {
        return;
    }
    let Some(why) = client.lock_shared().thread_error.take() else { return };
    error!("{why}; P2P is unavailable");
    *state = MeshSocketState::Failed(why.clone());
    errors.write(P2pError::IoThread(why));
}

/// Mesh socket → core, then the core's timers (when the socket is driven in the frames).
fn receive_datagrams(
    mut socket: NonSendMut<MeshSocket>,
    client: Res<P2pClient>,
    mut driver: ResMut<FrameDriven>,
) {
    let mut shared = client.lock_shared();
    let core = &mut shared.core;
    let mut buf = [0u8; RECV_BUF];
    for _ in 0..MAX_DATAGRAMS_PER_FRAME {
        let Some((n, from, local)) = socket.0.recv(&mut buf) else { break };
        let now = socket.0.now();
        let data = &buf[..n.min(RECV_BUF)];
        match driver.0.as_mut() {
            Some(c) => c.push_in(now, (local, from, data.to_vec())),
            None => core.handle_datagram(now, local, from, data),
        }
    }
    let now = socket.0.now();
    if let Some(c) = driver.0.as_mut() {
        while let Some((local, from, data)) = c.poll_in(now) {
            core.handle_datagram(now, local, from, &data);
        }
    }
    if core.poll_timeout().is_some_and(|t| t <= now) {
        core.handle_timeout(now);
    }
}

/// Core → mesh socket (when the socket is driven in the frames).
fn send_datagrams(
    mut socket: NonSendMut<MeshSocket>,
    client: Res<P2pClient>,
    mut driver: ResMut<FrameDriven>,
) {
    let mut shared = client.lock_shared();
    let now = socket.0.now();
    while let Some(t) = shared.core.poll_transmit() {
        match driver.0.as_mut() {
            Some(c) => c.push_out(now, t),
            None => socket.0.send(&t),
        }
    }
    if let Some(c) = driver.0.as_mut() {
        while let Some(t) = c.poll_out(now) {
            socket.0.send(&t);
        }
        c.record(&mut shared.stats);
    }
}

/// The writers [`publish_events`] fills.
#[derive(bevy::ecs::system::SystemParam)]
struct Out<'w> {
    connected: MessageWriter<'w, PeerConnected>,
    path: MessageWriter<'w, PeerPathChanged>,
    disconnected: MessageWriter<'w, PeerDisconnected>,
    received: MessageWriter<'w, P2pReceived>,
    server: MessageWriter<'w, ServerReceived>,
    nat: MessageWriter<'w, NatDiscovered>,
    shard: MessageWriter<'w, ShardEvent>,
}

/// Core events → Bevy messages, peer entities, [`LocalNat`] and [`LocalPlayer`].
fn publish_events(
    mut commands: Commands,
    client: ResMut<P2pClient>,
    mut index: ResMut<PeerIndex>,
    mut local_nat: ResMut<LocalNat>,
    mut local_player: Option<ResMut<LocalPlayer>>,
    mut paths: Query<&mut PeerPath>,
    mut out: Out,
) {
    let mut client = client.lock();
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
            ClientEvent::FromGame { reliable, data } => {
                out.server.write(ServerReceived { reliable, data });
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
    let client = client.lock();
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
