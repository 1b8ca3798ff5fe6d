//! The Agent (DMZ gateway): the only endpoint clients reach.
//!
//! bevy_renet + renet_netcode in secure mode: a client needs a connect token minted with the
//! shard's key (see [`super::login`]). The Agent tracks each session, routes lobby-phase
//! messages to the Lobby and game-phase messages to the client's Game server, and back;
//! applies a per-client message budget; never tells clients an internal address.
//!
//! ## Past netcode's 1,024 clients
//! One netcode server holds at most 1,024 clients. The Agent runs one renetcode
//! [`NetcodeServer`] per UDP socket ([`AgentTransport`]: `ceil(agent.max_clients / 1024)`
//! sockets, the first on `agent.port`, the next ones on the following ports, skipping
//! `agent.login_port`), all feeding one [`RenetServer`] (client ids are unique shard-wide:
//! they derive from the name). The login service writes every socket's address into each
//! connect token, **least-loaded first** ([`AgentLoad`]: connected clients plus tokens minted
//! in the last 10 s per socket); a netcode client connects to the first address and moves on
//! to the next one only if that one times out.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_renet::renet::{DefaultChannel, ServerEvent};
use bevy_renet::{RenetReceive, RenetSend, RenetServer, RenetServerEvent, RenetServerPlugin};
use renet_netcode::{NETCODE_KEY_BYTES, NETCODE_USER_DATA_BYTES, ServerAuthentication, ServerConfig};
use renetcode::{NetcodeServer, ServerResult};

use super::bus::ShardBus;
use super::keys::name_from_user_data;
pub use super::load::AgentLoad;
use super::login::OnlineNames;
use super::metrics::{self, ClientDropReason};
use p2pmodel_core::guard::catch_panic;

/// SO_RCVBUF / SO_SNDBUF of the Agent's sockets: at 2,000 clients the Agent takes
/// ~1.5 MB/s, so the kernel default (208 KiB) overflows when a frame is late by ~150 ms.
const AGENT_SOCKET_BUFFER: usize = 4 << 20;

/// renet's packet type byte of an ack-only packet (`Packet::Ack`).
const RENET_ACK: u8 = 4;

/// Clients one netcode server (one socket) holds at most.
pub const CLIENTS_PER_SOCKET: usize = 1024;
/// Netcode sockets at most (a connect token lists at most 32 server addresses).
pub const MAX_SOCKETS: usize = 32;
/// Ack-only packets to one client at most this often. renet repeats its pending ack ranges
/// in an Ack packet on *every* send until the client acknowledges that Ack, i.e. once per
/// Agent frame (60 Hz) for a client that sends at 20 Hz — ~1.5 kB/s per client of pure acks,
/// as much as all the game traffic left on the server with P2P on. Ranges are cumulative, so
/// a skipped Ack loses nothing; 50 ms (one game tick) keeps reliable resends (≥ 200 ms) and
/// RTT estimates sound.
pub const ACK_INTERVAL: Duration = Duration::from_millis(50);

struct NetcodePort {
    socket: UdpSocket,
    server: NetcodeServer,
}

/// The Agent's netcode endpoints: one renetcode [`NetcodeServer`] per UDP socket, feeding one
/// [`RenetServer`] (see the module docs). Replaces bevy_renet's single-socket transport.
#[derive(Resource)]
pub struct AgentTransport {
    ports: Vec<NetcodePort>,
    owner: HashMap<u64, usize>,
    load: AgentLoad,
    buf: Vec<u8>,
    last_ack: HashMap<u64, Instant>,
    /// Ack-only packets not sent because one went to that client less than
    /// [`ACK_INTERVAL`] ago.
    pub acks_deferred: u64,
    /// Clients whose packet made renet panic this frame (their renet state is discarded).
    panicked: HashMap<u64, ClientDropReason>,
    /// Clients this transport dropped, per [`ClientDropReason`] (also counted process-wide in
    /// [`metrics`]).
    dropped: HashMap<ClientDropReason, u64>,
    /// Datagrams dropped because netcode panicked decoding them (caught).
    pub netcode_panics: u64,
    /// Messages a client sent just before its connection closed (its `Leave` travels with
    /// its disconnect): the Agent reads them before it ends the session.
    last_words: Vec<(u64, Vec<u8>)>,
}

impl AgentTransport {
    /// Netcode servers (secure mode, `private_key`) on `sockets` (bound), reachable by
    /// clients at `public` (same order); `max_clients` is split over the sockets.
    pub fn new(
        sockets: Vec<UdpSocket>,
        public: Vec<SocketAddr>,
        max_clients: usize,
        protocol_id: u64,
        private_key: [u8; NETCODE_KEY_BYTES],
    ) -> std::io::Result<Self> {
        let n = sockets.len().max(1);
        metrics::registry().agent_running.store(true, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut ports = Vec::new();
        for (i, (socket, addr)) in sockets.into_iter().zip(public.iter()).enumerate() {
            socket.set_nonblocking(true)?;
            let share = (max_clients / n + usize::from(i < max_clients % n)).clamp(1, CLIENTS_PER_SOCKET);
            let server = NetcodeServer::new(ServerConfig {
                current_time: now,
                max_clients: share,
                protocol_id,
                public_addresses: vec![*addr],
                authentication: ServerAuthentication::Secure { private_key },
            });
            ports.push(NetcodePort { socket, server });
        }
        Ok(AgentTransport {
            ports,
            owner: HashMap::new(),
            load: AgentLoad::new(public),
            buf: vec![0; 1500],
            last_ack: HashMap::new(),
            acks_deferred: 0,
            panicked: HashMap::new(),
            last_words: Vec::new(),
            dropped: HashMap::new(),
            netcode_panics: 0,
        })
    }

    /// Sockets needed for `max_clients`.
    pub fn sockets_for(max_clients: usize) -> usize {
        max_clients.div_ceil(CLIENTS_PER_SOCKET).clamp(1, MAX_SOCKETS)
    }

    /// The load tracker (hand it to the login service's minter).
    pub fn load(&self) -> AgentLoad {
        self.load.clone()
    }

    /// The sockets' public addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        self.load.addrs()
    }

    /// The address a connected client's packets come from.
    pub fn client_addr(&self, client: u64) -> Option<SocketAddr> {
        self.ports.get(*self.owner.get(&client)?)?.server.client_addr(client)
    }

    /// The netcode user data of a connected client.
    pub fn user_data(&self, client: u64) -> Option<[u8; NETCODE_USER_DATA_BYTES]> {
        self.ports.get(*self.owner.get(&client)?)?.server.user_data(client)
    }

    /// Connected clients per socket.
    pub fn connected(&self) -> Vec<usize> {
        self.ports.iter().map(|p| p.server.connected_clients()).collect()
    }

    /// Clients this transport dropped for `reason` so far.
    pub fn dropped(&self, reason: ClientDropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }

    /// Receive on every socket, advance every netcode server, feed payloads to `renet`.
    pub fn update(&mut self, dt: Duration, renet: &mut RenetServer) {
        // Last words are read by the disconnect events of the frame they were kept in.
        self.last_words.clear();
        let mut refuse = Vec::new();
        for (i, port) in self.ports.iter_mut().enumerate() {
            let NetcodePort { socket, server } = port;
            server.update(dt);
            loop {
                let (len, addr) = match socket.recv_from(&mut self.buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                    Err(e) => {
                        warn!("agent socket {i}: receive failed: {e}");
                        break;
                    }
                };
                metrics::agent_in(len);
                // netcode decodes a datagram's header before authenticating it: a panic in
                // there (renetcode 2.0.0 had two, patched in vendor/renetcode) drops the
                // datagram, is counted and logged, and the Agent goes on.
                let (srv, buf) = (&mut *server, &mut self.buf[..len]);
                let r = match catch_panic(move || srv.process_packet(addr, buf)) {
                    Ok(r) => r,
                    Err(panic) => {
                        self.netcode_panics += 1;
                        metrics::agent_netcode_panic();
                        warn!(%addr, %panic, "netcode panicked on a datagram; dropped");
                        continue;
                    }
                };
                handle(
                    r,
                    i,
                    socket,
                    renet,
                    &mut self.owner,
                    &self.load,
                    &mut refuse,
                    &mut self.panicked,
                    &mut self.last_words,
                );
            }
            for id in server.clients_id() {
                let r = server.update_client(id);
                handle(
                    r,
                    i,
                    socket,
                    renet,
                    &mut self.owner,
                    &self.load,
                    &mut refuse,
                    &mut self.panicked,
                    &mut self.last_words,
                );
            }
        }
        for (i, id) in refuse {
            // The same client id already connected through another socket: refuse this one.
            warn!(client_id = id, socket = i, "client connected twice (two sockets); dropping the second");
            let NetcodePort { socket, server } = &mut self.ports[i];
            if let ServerResult::ClientDisconnected { addr, payload: Some(p), .. } = server.disconnect(id) {
                let _ = socket.send_to(p, addr);
            }
        }
        // Connections renet closed (it refused a client's packet, or we kicked the client) and
        // those whose packet made renet panic: drop them at the netcode layer too, count why.
        for id in renet.disconnections_id() {
            let reason = self
                .panicked
                .remove(&id)
                .or_else(|| renet.disconnect_reason(id).and_then(ClientDropReason::from_renet));
            if let Some(reason) = reason {
                count_drop(&mut self.dropped, reason);
                if reason != ClientDropReason::Kicked {
                    warn!(client_id = id, reason = reason.label(), renet = ?renet.disconnect_reason(id), "dropping client");
                }
            }
            let Some(&i) = self.owner.get(&id) else {
                renet.remove_connection(id);
                continue;
            };
            let NetcodePort { socket, server } = &mut self.ports[i];
            let r = server.disconnect(id);
            handle(
                r,
                i,
                socket,
                renet,
                &mut self.owner,
                &self.load,
                &mut Vec::new(),
                &mut self.panicked,
                &mut self.last_words,
            );
            if self.owner.get(&id) == Some(&i) {
                // netcode no longer knew the client: finish the drop here, so it is not
                // listed (and counted) again next frame.
                forget(&mut self.owner, &self.load, renet, id);
            }
        }
        self.panicked.clear();
    }

    /// Send what renet has queued for every client, on the socket it connected through
    /// (ack-only packets at most every [`ACK_INTERVAL`] per client).
    pub fn send_packets(&mut self, renet: &mut RenetServer) {
        let now = Instant::now();
        self.last_ack.retain(|id, _| self.owner.contains_key(id));
        for id in renet.clients_id() {
            let Some(&i) = self.owner.get(&id) else { continue };
            // renet's send side acts on the client's acks: guarded like `feed_renet`. A client
            // it panics on is dropped at once (its connection is not touched again).
            let packets = match catch_panic(|| renet.get_packets_to_send(id)) {
                Ok(Ok(packets)) => packets,
                Ok(Err(_)) => continue,
                Err(panic) => {
                    warn!(client_id = id, %panic, reason = "renet_panic", "renet panicked sending; dropping client");
                    count_drop(&mut self.dropped, ClientDropReason::RenetPanic);
                    let NetcodePort { socket, server } = &mut self.ports[i];
                    let r = server.disconnect(id);
                    let (owner, load) = (&mut self.owner, &self.load);
                    handle(
                        r,
                        i,
                        socket,
                        renet,
                        owner,
                        load,
                        &mut Vec::new(),
                        &mut HashMap::new(),
                        &mut Vec::new(),
                    );
                    forget(owner, load, renet, id);
                    continue;
                }
            };
            let NetcodePort { socket, server } = &mut self.ports[i];
            for packet in packets {
                if packet.first() == Some(&RENET_ACK) {
                    let last = self.last_ack.entry(id).or_insert(now - ACK_INTERVAL);
                    if now.duration_since(*last) < ACK_INTERVAL {
                        self.acks_deferred += 1;
                        continue;
                    }
                    *last = now;
                }
                match server.generate_payload_packet(id, &packet) {
                    Ok((addr, payload)) => {
                        metrics::agent_out(payload.len());
                        if let Err(e) = socket.send_to(payload, addr) {
                            debug!(client_id = id, "agent send failed: {e}");
                        }
                    }
                    Err(e) => {
                        debug!(client_id = id, "cannot encrypt a packet: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// The messages `client` sent in the packets before its disconnection, in order.
    pub fn take_last_words(&mut self, client: u64) -> Vec<Vec<u8>> {
        let (mine, rest) = std::mem::take(&mut self.last_words).into_iter().partition(|(c, _)| *c == client);
        self.last_words = rest;
        mine.into_iter().map(|(_, b)| b).collect()
    }

    /// Tell every client we are going (at exit).
    pub fn disconnect_all(&mut self, renet: &mut RenetServer) {
        for (i, port) in self.ports.iter_mut().enumerate() {
            let NetcodePort { socket, server } = port;
            for id in server.clients_id() {
                let r = server.disconnect(id);
                handle(
                    r,
                    i,
                    socket,
                    renet,
                    &mut self.owner,
                    &self.load,
                    &mut Vec::new(),
                    &mut self.panicked,
                    &mut self.last_words,
                );
            }
        }
    }
}

/// Bind the Agent's netcode sockets for `config`: `ceil(agent.max_clients / 1024)` of them,
/// the first at `agent.port`, the next ones on the following ports (skipping
/// `agent.login_port`; all ephemeral when `agent.port` is 0).
pub fn bind_transport(config: &crate::config::ShardConfig) -> Result<AgentTransport, super::ShardError> {
    let n = AgentTransport::sockets_for(config.agent.max_clients);
    let first = config.agent.addr;
    let login_port = config.agent.login.map(|a| a.port());
    let mut port = first.port();
    let (mut sockets, mut public) = (Vec::new(), Vec::new());
    for i in 0..n {
        if i > 0 && first.port() != 0 {
            port = port.wrapping_add(1);
            if Some(port) == login_port {
                port = port.wrapping_add(1);
            }
        }
        let addr = SocketAddr::new(first.ip(), port);
        let err = |source| super::ShardError::Bind { what: "agent", addr, source };
        let socket = UdpSocket::bind(addr).map_err(err)?;
        // Room for a few frames of a few thousand clients (capped by net.core.rmem_max).
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_recv_buffer_size(AGENT_SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(AGENT_SOCKET_BUFFER);
        public.push(super::public_addr(config, socket.local_addr().map_err(err)?));
        sockets.push(socket);
    }
    let key = super::keys::netcode_key(&config.shard.secret);
    AgentTransport::new(sockets, public, config.agent.max_clients, config.agent.protocol_id, key)
        .map_err(|source| super::ShardError::Bind { what: "agent", addr: first, source })
}

/// Count a dropped client, here and process-wide.
fn count_drop(dropped: &mut HashMap<ClientDropReason, u64>, reason: ClientDropReason) {
    *dropped.entry(reason).or_default() += 1;
    metrics::agent_dropped_client(reason);
}

/// Forget a client netcode no longer knows: its socket's load, and its renet connection.
fn forget(owner: &mut HashMap<u64, usize>, load: &AgentLoad, renet: &mut RenetServer, id: u64) {
    if let Some(i) = owner.remove(&id) {
        load.add(i, -1);
    }
    renet.remove_connection(id);
}

#[allow(clippy::too_many_arguments)]
fn handle(
    r: ServerResult<'_, '_>,
    i: usize,
    socket: &UdpSocket,
    renet: &mut RenetServer,
    owner: &mut HashMap<u64, usize>,
    load: &AgentLoad,
    refuse: &mut Vec<(usize, u64)>,
    panicked: &mut HashMap<u64, ClientDropReason>,
    last_words: &mut Vec<(u64, Vec<u8>)>,
) {
    let send = |p: &[u8], addr: SocketAddr| {
        metrics::agent_out(p.len());
        let _ = socket.send_to(p, addr);
    };
    match r {
        ServerResult::None => {}
        ServerResult::PacketToSend { payload, addr } => send(payload, addr),
        ServerResult::Payload { client_id, payload } => {
            if owner.get(&client_id) == Some(&i) {
                feed_renet(renet, payload, client_id, panicked);
            }
        }
        ServerResult::ClientConnected { client_id, addr, payload, .. } => {
            send(payload, addr);
            if owner.contains_key(&client_id) {
                refuse.push((i, client_id));
                return;
            }
            owner.insert(client_id, i);
            load.add(i, 1);
            renet.add_connection(client_id);
        }
        ServerResult::ClientDisconnected { client_id, addr, payload } => {
            if let Some(p) = payload {
                send(p, addr);
            }
            if owner.get(&client_id) == Some(&i) {
                owner.remove(&client_id);
                load.add(i, -1);
                // What it sent in its last packets (a client that quits sends `Leave` right
                // before its disconnect) is kept for the Agent; a client renet panicked on
                // is not touched again.
                if !panicked.contains_key(&client_id) {
                    for ch in [2u8, 1, 0] {
                        while let Some(bytes) = renet.receive_message(client_id, ch) {
                            last_words.push((client_id, bytes.to_vec()));
                        }
                    }
                }
                renet.remove_connection(client_id);
            }
        }
    }
}

/// Hand one client's decrypted payload to renet. A packet renet refuses closes that client's
/// renet connection (renet does it; [`AgentTransport::update`] then drops the client). A panic
/// inside renet is caught: the client's connection is closed at once and recorded in
/// `panicked`, so it is dropped and discarded in the same frame — nothing touches its
/// half-updated state again — and every other session goes on.
pub fn feed_renet(
    renet: &mut RenetServer,
    payload: &[u8],
    client_id: u64,
    panicked: &mut HashMap<u64, ClientDropReason>,
) {
    guarded(renet, client_id, panicked, |renet| {
        let _ = renet.process_packet_from(payload, client_id);
    });
}

/// [`feed_renet`]'s guard around any renet call made for `client_id`.
fn guarded(
    renet: &mut RenetServer,
    client_id: u64,
    panicked: &mut HashMap<u64, ClientDropReason>,
    f: impl FnOnce(&mut RenetServer),
) {
    if let Err(panic) = catch_panic(|| f(renet)) {
        warn!(client_id, %panic, "renet panicked on a client's packet; dropping the client");
        renet.disconnect(client_id);
        panicked.insert(client_id, ClientDropReason::RenetPanic);
    }
}

/// Runs the [`AgentTransport`] around renet (receive in `PreUpdate`, send in `PostUpdate`).
pub struct AgentTransportPlugin;

impl Plugin for AgentTransportPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(
            PreUpdate,
            transport_receive
                .in_set(RenetReceive)
                .after(RenetServerPlugin::update_system)
                .before(RenetServerPlugin::emit_server_events_system),
        )
        .add_systems(PostUpdate, transport_send.in_set(RenetSend))
        .add_systems(Last, transport_disconnect_on_exit);
    }
}

fn transport_receive(mut t: ResMut<AgentTransport>, mut server: ResMut<RenetServer>, time: Res<Time<Real>>) {
    t.update(time.delta(), &mut server);
}

fn transport_send(mut t: ResMut<AgentTransport>, mut server: ResMut<RenetServer>) {
    t.send_packets(&mut server);
}

fn transport_disconnect_on_exit(
    exit: MessageReader<AppExit>,
    mut t: ResMut<AgentTransport>,
    mut server: ResMut<RenetServer>,
) {
    if !exit.is_empty() {
        t.disconnect_all(&mut server);
    }
}

pub use p2pmodel_core::shard::agent::{AgentRouter, Outgoing, Session};

/// The Agent's state: the core's [`AgentRouter`] (sessions, budget, routing) and the names
/// online, shared with the login service.
#[derive(Resource, Debug, Deref, DerefMut)]
pub struct AgentState {
    /// Sessions, counters and routing.
    #[deref]
    pub router: AgentRouter,
    /// Names online (shared with the login service).
    pub online: OnlineNames,
}

impl AgentState {
    /// A fresh Agent state.
    pub fn new(online: OnlineNames, max_messages_per_sec: u32, heartbeat: Duration) -> AgentState {
        AgentState { router: AgentRouter::new(max_messages_per_sec, heartbeat), online }
    }
}

/// The Agent role. Needs [`RenetServer`], [`AgentTransport`], [`AgentState`] and
/// [`ShardBus`] resources, bevy_renet's `RenetServerPlugin` and [`AgentTransportPlugin`].
pub struct AgentPlugin;

impl Plugin for AgentPlugin {
    fn build(&self, app: &mut App) {
        app.add_observer(on_server_event).add_systems(Update, (client_to_roles, roles_to_clients).chain());
    }
}

fn on_server_event(
    ev: On<RenetServerEvent>,
    mut transport: ResMut<AgentTransport>,
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
            let ip = transport.client_addr(client_id).map(|a| a.ip().to_canonical());
            if !ip.is_some_and(|ip| agent.online.connect(&name, ip)) {
                warn!(client_id, %name, ?ip, "too many sessions from this IP (agent.max_clients_per_ip); disconnecting");
                server.disconnect(client_id);
                return;
            }
            info!(client_id, %name, "client connected");
            agent.router.connect(Instant::now(), &mut bus, client_id, name, ip);
        }
        ServerEvent::ClientDisconnected { client_id, reason } => {
            // Its last messages first: a `Leave` among them ends the session at once, without
            // one the session is held for a resume.
            let now = Instant::now();
            for bytes in transport.take_last_words(client_id) {
                agent.router.from_client(now, &mut bus, client_id, &bytes);
            }
            if let Some(s) = agent.router.disconnect(&mut bus, client_id) {
                info!(client_id, name = %s.name, ?reason, "client disconnected");
                agent.online.disconnect(&s.name);
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
    let ids: Vec<u64> = agent.sessions.keys().copied().collect();
    for client in ids {
        for ch in [2u8, 1, 0] {
            while let Some(bytes) = server.receive_message(client, ch) {
                agent.router.from_client(now, &mut bus, client, &bytes);
            }
        }
    }
    agent.router.tick(now, &mut bus);
}

fn roles_to_clients(
    mut server: ResMut<RenetServer>,
    mut agent: ResMut<AgentState>,
    mut bus: ResMut<ShardBus>,
) {
    for o in agent.router.to_clients(&mut bus) {
        let ch = if o.reliable { DefaultChannel::ReliableOrdered } else { DefaultChannel::Unreliable };
        server.send_message(o.client, ch, o.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevy_renet::renet::ConnectionConfig;

    fn transport() -> AgentTransport {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        AgentTransport::new(vec![socket], vec![addr], 8, 1, [7; NETCODE_KEY_BYTES]).unwrap()
    }

    #[test]
    fn a_panic_inside_renet_drops_only_that_client_and_is_counted() {
        let mut t = transport();
        let mut renet = RenetServer::new(ConnectionConfig::default());
        renet.add_connection(1);
        renet.add_connection(2);
        // renet panics half-way through client 1's packet (injected: the patched renet does
        // not panic on any packet we know of).
        guarded(&mut renet, 1, &mut t.panicked, |r| {
            r.send_message(1, DefaultChannel::ReliableOrdered, vec![1u8; 10]);
            panic!("injected");
        });
        t.update(Duration::from_millis(16), &mut renet);
        assert_eq!(t.dropped(ClientDropReason::RenetPanic), 1);
        assert!(!renet.clients_id().contains(&1) && renet.disconnect_reason(1).is_none(), "discarded");
        assert!(renet.is_connected(2));
        // A packet renet refuses (unknown channel 9) drops client 2, counted as such.
        feed_renet(&mut renet, &[0, 0, 9, 0, 0], 2, &mut t.panicked);
        t.update(Duration::from_millis(16), &mut renet);
        assert_eq!(t.dropped(ClientDropReason::RenetChannelId), 1);
        assert!(!renet.has_connections());
        // Nothing is counted twice on later frames.
        t.update(Duration::from_millis(16), &mut renet);
        assert_eq!(t.dropped(ClientDropReason::RenetPanic) + t.dropped(ClientDropReason::RenetChannelId), 2);
        assert!(metrics::registry().agent_drops.get(ClientDropReason::RenetPanic) >= 1);
        let mut text = String::new();
        metrics::render_prometheus(&mut text);
        assert!(text.contains("p2pmodel_agent_dropped_clients_total{reason=\"renet_panic\"}"), "{text}");
    }
}
