//! [`ShardClientPlugin`]: the connection to the shard (login → renet/netcode, or any
//! [`ShardTransport`]), [`ShardState`], [`ShardRequest`]s in and [`ShardEvent`]s out.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bevy::prelude::*;
use bevy::state::app::StatesPlugin;
use bevy_renet::RenetClient;
use bevy_renet::netcode::{ClientAuthentication, ConnectToken, NetcodeClientTransport};
use bevy_renet::renet::{ConnectionConfig, DefaultChannel};

use super::client::P2pClient;
use super::io::{MeshSocket, MeshSocketState};
use super::sets::{Step, configure_sets};
use crate::client::login::{self, LoginKey, ShardAddress};
use crate::client::{ClientCore, DisconnectReason, Phase, ShardNotice};
use crate::proto::shard::{ClientMessage, PlayerId, ShardMessage, decode, encode};

/// Connects to a shard and drives the shard side of the [`P2pClient`]. Needs
/// [`P2pMeshPlugin`](crate::plugins::P2pMeshPlugin) and Bevy's `StatesPlugin` (added if
/// missing; add `DefaultPlugins`/`MinimalPlugins` first).
#[derive(Debug, Clone)]
pub struct ShardClientPlugin {
    /// The shard's login service and pinned login key (what `--server KEY@ADDR` names).
    pub shard: ShardAddress,
    /// The credential sent with the name (password, ticket...); empty for an open shard.
    pub credential: Vec<u8>,
    /// Connect at startup (default `true`); otherwise send [`ShardRequest::Connect`].
    pub auto_connect: bool,
    /// Enter this zone after login (default `Some(0)`); `None`: stay in the lobby.
    pub auto_zone: Option<u32>,
}

impl ShardClientPlugin {
    /// Connect to the shard whose login service is at `shard`, then enter zone 0.
    pub fn new(shard: ShardAddress) -> Self {
        ShardClientPlugin { shard, credential: Vec::new(), auto_connect: true, auto_zone: Some(0) }
    }

    /// Send this credential with the name (for a shard with accounts).
    pub fn with_credential(mut self, credential: impl Into<Vec<u8>>) -> Self {
        self.credential = credential.into();
        self
    }

    /// This plugin over a custom transport (an in-memory shard, the simulator) instead of
    /// login + renet; `shard` is then unused.
    pub fn with_transport(self, transport: impl ShardTransport) -> impl Plugin {
        let slot = Mutex::new(Some(Box::new(transport) as Box<dyn ShardTransport>));
        move |app: &mut App| {
            if let Some(t) = slot.lock().ok().and_then(|mut s| s.take()) {
                app.insert_resource(ShardLink::custom(t));
            }
            app.add_plugins(self.clone());
        }
    }
}

impl Default for ShardClientPlugin {
    /// A shard on this machine (login port 7001, the servers' default) with an all-zero
    /// key: only useful with [`ShardClientPlugin::with_transport`].
    fn default() -> Self {
        ShardClientPlugin::new(ShardAddress::new(SocketAddr::from(([127, 0, 0, 1], 7001)), LoginKey([0; 32])))
    }
}

/// Where the client is in the shard (Bevy state).
#[derive(States, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ShardState {
    /// No connection (before connecting, after a disconnect or a failed login).
    #[default]
    Disconnected,
    /// Logging in: login request, transport handshake, waiting for `Welcome`.
    Connecting,
    /// Logged in, not in a zone.
    Lobby,
    /// In a zone: peers are introduced here.
    InGame,
    /// The shard connection was lost after a login: links to peers keep running and peer
    /// messages flow over them; the plugin reconnects (capped exponential backoff with
    /// jitter) and resumes the session (same player, zone, party, links).
    Reconnecting,
}

/// What the game asks of the shard (write with `MessageWriter<ShardRequest>`).
#[derive(Message, Debug, Clone, PartialEq)]
pub enum ShardRequest {
    /// Log in and connect to the plugin's shard (done at startup when `auto_connect`); while
    /// reconnecting: try now.
    Connect,
    /// Log in to this shard (a server browser's choice, a login screen's name and
    /// password) and connect; later reconnections use it too. Ignored while connected:
    /// `Disconnect` first.
    ConnectTo {
        /// The shard's login service and its pinned key.
        shard: ShardAddress,
        /// Our player name.
        name: String,
        /// The credential for the shard's account check (empty for an open shard).
        credential: Vec<u8>,
    },
    /// Connect with a connect token the game's own backend minted for this shard (skips the
    /// login service; the token's name becomes ours).
    ConnectWithToken(Box<ConnectToken>),
    /// Leave the shard: every peer is dropped.
    Disconnect,
    /// Enter a zone.
    EnterZone(u32),
    /// Report our position (the Game server validates the speed).
    Move {
        /// World x.
        x: f32,
        /// World y.
        y: f32,
    },
    /// Join a party (empty: leave it); party members are meshed regardless of distance. A
    /// new name creates a party we own; an existing one needs its owner's invitation
    /// ([`ShardEvent::PartyInvite`]), else [`ShardEvent::Refused`].
    JoinParty(String),
    /// Invite a player into our party (we must own it).
    InviteToParty(PlayerId),
}

/// What the shard told us (read with `MessageReader<ShardEvent>`): the core's
/// [`ShardNotice`], as a Bevy message (match on `&event.0`, or on `*event` through `Deref`).
#[derive(Message, Debug, Clone, PartialEq, Deref)]
pub struct ShardEvent(pub ShardNotice);

/// Who we are in the shard.
#[derive(Resource, Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPlayer {
    /// Our id, once logged in.
    pub player: Option<PlayerId>,
    /// Our name.
    pub name: String,
    /// Our zone, when in game.
    pub zone: Option<u32>,
}

/// A way to exchange shard messages other than renet (an in-memory shard, the simulator).
/// Messages must arrive in order; `reliable` says whether the core needs them reliable.
pub trait ShardTransport: Send + Sync + 'static {
    /// The connection is up (the plugin logs in when it becomes `true`).
    fn is_connected(&self) -> bool;
    /// Send one message.
    fn send(&mut self, msg: &ClientMessage, reliable: bool);
    /// The next message from the shard.
    fn receive(&mut self) -> Option<ShardMessage>;
    /// Bytes received so far (for diagnostics).
    fn bytes_in(&self) -> u64;
    /// Bytes sent so far (for diagnostics).
    fn bytes_out(&self) -> u64;
    /// The game asked to disconnect ([`ShardRequest::Disconnect`]).
    fn disconnect(&mut self) {}
    /// The game asked to connect again after a disconnect.
    fn connect(&mut self) {}
}

/// The shard connection: renet over netcode, driven by the plugin's own systems.
struct RenetConn {
    renet: RenetClient,
    netcode: NetcodeClientTransport,
    last: std::time::Instant,
}

/// A login answer, handed over by the login thread.
type LoginSlot = Arc<Mutex<Option<Result<ConnectToken, DisconnectReason>>>>;

enum Mode {
    /// Not connected, not trying.
    Idle,
    /// The login request runs on a thread.
    LoggingIn(LoginSlot),
    /// Our own renet client and netcode transport carry the connection (not the global
    /// `RenetClient` resource: a game may use bevy_renet for something else).
    Renet(Box<RenetConn>),
    /// A custom transport; `active` is false after a `Disconnect` request.
    Custom { transport: Box<dyn ShardTransport>, active: bool },
    /// The session is suspended; the next attempt starts at `at` (renet: a new login;
    /// custom: `ShardTransport::connect`).
    Backoff { at: std::time::Instant, custom: Option<Box<dyn ShardTransport>> },
}

/// First reconnection delay; doubled per failed attempt up to [`RECONNECT_MAX_DELAY`], with
/// ±25 % jitter so a shard's players do not all come back in the same instant.
pub const RECONNECT_FIRST_DELAY: std::time::Duration = std::time::Duration::from_millis(250);
/// Longest delay between reconnection attempts.
pub const RECONNECT_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(4);

/// The delay before reconnection attempt `attempt` (1, 2, …): capped exponential, ±25 %
/// jitter drawn from the OS-seeded hasher.
pub fn reconnect_delay(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = RECONNECT_FIRST_DELAY.saturating_mul(1u32 << attempt.saturating_sub(1).min(6));
    let base = base.min(RECONNECT_MAX_DELAY);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    base.mul_f64(0.75 + 0.5 * unit)
}

/// The connection to the shard: renet (after login) or a custom [`ShardTransport`], with
/// counters. Insert [`ShardLink::custom`] before adding [`ShardClientPlugin`] to use your
/// own transport.
#[derive(Resource)]
pub struct ShardLink {
    mode: Mode,
    /// `core.connected()` was called for the current connection.
    connected: bool,
    last_error: Option<String>,
    decode_errors: u64,
    unsent: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Reconnection attempts since the connection was lost (0: not reconnecting).
    attempt: u32,
}

impl std::fmt::Debug for ShardLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Idle => "idle",
            Mode::LoggingIn(_) => "logging-in",
            Mode::Renet(_) => "renet",
            Mode::Custom { .. } => "custom",
            Mode::Backoff { .. } => "backoff",
        };
        f.debug_struct("ShardLink")
            .field("mode", &mode)
            .field("connected", &self.connected)
            .field("decode_errors", &self.decode_errors)
            .finish_non_exhaustive()
    }
}

impl ShardLink {
    fn new(mode: Mode) -> Self {
        ShardLink {
            mode,
            connected: false,
            last_error: None,
            decode_errors: 0,
            unsent: 0,
            bytes_in: 0,
            bytes_out: 0,
            attempt: 0,
        }
    }

    /// A link over a custom transport (active from the start).
    pub fn custom(transport: Box<dyn ShardTransport>) -> Self {
        ShardLink::new(Mode::Custom { transport, active: true })
    }

    /// Logged in and the transport is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Shard messages that did not decode (dropped).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Messages the core produced while no connection was up (dropped).
    pub fn unsent(&self) -> u64 {
        self.unsent
    }

    /// Shard message bytes received (payloads; renet/netcode headers not included).
    pub fn bytes_in(&self) -> u64 {
        match &self.mode {
            Mode::Custom { transport, .. } => transport.bytes_in(),
            _ => self.bytes_in,
        }
    }

    /// Shard message bytes sent (payloads; renet/netcode headers not included).
    pub fn bytes_out(&self) -> u64 {
        match &self.mode {
            Mode::Custom { transport, .. } => transport.bytes_out(),
            _ => self.bytes_out,
        }
    }

    /// The last transport error (netcode), for the user.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    fn state(&self, phase: Phase) -> ShardState {
        if phase == Phase::Reconnecting {
            return ShardState::Reconnecting;
        }
        match &self.mode {
            Mode::Idle | Mode::Custom { active: false, .. } => ShardState::Disconnected,
            Mode::Backoff { .. } => ShardState::Reconnecting,
            Mode::LoggingIn(_) => ShardState::Connecting,
            Mode::Renet(_) | Mode::Custom { .. } if !self.connected => ShardState::Connecting,
            _ => match phase {
                Phase::Connecting => ShardState::Connecting,
                Phase::Lobby => ShardState::Lobby,
                Phase::InGame => ShardState::InGame,
                Phase::Reconnecting => ShardState::Reconnecting,
            },
        }
    }
}

/// The plugin's settings, as a resource for its systems (`ConnectTo` changes them).
#[derive(Resource, Debug, Clone)]
struct ShardSettings {
    shard: ShardAddress,
    credential: Vec<u8>,
    auto_zone: Option<u32>,
    /// Reconnect through the login service (`false` after `ConnectWithToken`: only the
    /// game's backend can mint the next token, so the game sends another).
    use_login: bool,
}

impl Plugin for ShardClientPlugin {
    fn build(&self, app: &mut App) {
        if !app.is_plugin_added::<StatesPlugin>() {
            app.add_plugins(StatesPlugin);
        }
        configure_sets(app);
        if !app.world().contains_resource::<ShardLink>() {
            app.insert_resource(ShardLink::new(Mode::Idle));
        }
        app.init_state::<ShardState>()
            .init_resource::<LocalPlayer>()
            .insert_resource(ShardSettings {
                shard: self.shard,
                credential: self.credential.clone(),
                auto_zone: self.auto_zone,
                use_login: true,
            })
            .add_message::<ShardRequest>()
            .add_message::<ShardEvent>()
            .add_systems(Startup, startup(self.auto_connect))
            .add_systems(PreUpdate, shard_in.in_set(Step::ShardIn))
            .add_systems(PreUpdate, shard_after.in_set(Step::After))
            .add_systems(PostUpdate, handle_requests.in_set(Step::Requests))
            .add_systems(PostUpdate, shard_out.in_set(Step::Out));
    }
}

fn startup(
    auto_connect: bool,
) -> impl FnMut(Res<P2pClient>, ResMut<LocalPlayer>, MessageWriter<ShardRequest>) {
    move |client, mut local, mut requests| {
        local.name = client.config().name.clone();
        if auto_connect {
            requests.write(ShardRequest::Connect);
        }
    }
}

fn unix_now() -> std::time::Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The connection is gone. With a session (logged in) the core suspends it — links keep
/// running — and a reconnection is scheduled; before any login the attempt just failed.
fn lost(
    link: &mut ShardLink,
    client: &mut ClientCore,
    now: std::time::Instant,
    reason: DisconnectReason,
    custom: Option<Box<dyn ShardTransport>>,
    events: &mut MessageWriter<ShardEvent>,
) {
    link.connected = false;
    client.disconnected();
    if client.phase() == Phase::Reconnecting {
        link.attempt += 1;
        let retry_in = reconnect_delay(link.attempt);
        warn!(attempt = link.attempt, ?retry_in, %reason, "shard connection lost; links keep running, reconnecting");
        link.mode = Mode::Backoff { at: now + retry_in, custom };
        let reason = reason.to_string();
        events.write(ShardEvent(ShardNotice::Reconnecting { attempt: link.attempt, retry_in, reason }));
    } else {
        link.attempt = 0;
        link.mode = match custom {
            Some(transport) => Mode::Custom { transport, active: false },
            None => Mode::Idle,
        };
        events.write(ShardEvent(ShardNotice::Disconnected(reason)));
    }
}

/// Request a connect token on a thread (the login is blocking UDP request/response).
fn start_login(settings: &ShardSettings, name: String) -> Result<LoginSlot, DisconnectReason> {
    let slot: LoginSlot = Arc::new(Mutex::new(None));
    let (shard, out, credential) = (settings.shard, slot.clone(), settings.credential.clone());
    std::thread::Builder::new()
        .name("p2pmodel-login".into())
        .spawn(move || {
            let answer = login::request_token(&shard, &name, &credential).map_err(login_reason);
            if let Ok(mut s) = out.lock() {
                *s = Some(answer);
            }
        })
        .map_err(|e| DisconnectReason::Local(format!("cannot start the login thread: {e}")))?;
    Ok(slot)
}

/// A failed login as the game sees it.
fn login_reason(e: login::LoginError) -> DisconnectReason {
    match e {
        login::LoginError::Refused(r) => DisconnectReason::LoginRefused(r),
        e @ login::LoginError::KeyMismatch(_) => DisconnectReason::KeyMismatch(e.to_string()),
        login::LoginError::BadRequest(r) => DisconnectReason::Local(format!("bad login request: {r}")),
        e @ (login::LoginError::Io(_) | login::LoginError::Malformed) => {
            DisconnectReason::Unreachable(e.to_string())
        }
    }
}

/// Shard transport → core; connection state changes; reconnection.
fn shard_in(
    mut link: ResMut<ShardLink>,
    client: ResMut<P2pClient>,
    settings: Res<ShardSettings>,
    socket: NonSend<MeshSocket>,
    mut events: MessageWriter<ShardEvent>,
) {
    // The clock is read under the lock (as the I/O thread does): `now` never goes back.
    let mut client = client.lock();
    let now = socket.0.now();
    let link = &mut *link;
    match &mut link.mode {
        Mode::Idle => {}
        Mode::Backoff { at, .. } => {
            if now < *at {
                return;
            }
            let Mode::Backoff { custom, .. } = std::mem::replace(&mut link.mode, Mode::Idle) else { return };
            match custom {
                Some(mut transport) => {
                    transport.connect();
                    if transport.is_connected() {
                        link.mode = Mode::Custom { transport, active: true };
                    } else {
                        lost(
                            link,
                            &mut client,
                            now,
                            DisconnectReason::Unreachable("the transport did not connect".into()),
                            Some(transport),
                            &mut events,
                        );
                    }
                }
                // A token session waits for the game's next `ConnectWithToken`.
                None if !settings.use_login => {
                    link.mode = Mode::Backoff { at: now + RECONNECT_MAX_DELAY, custom: None }
                }
                None => match start_login(&settings, client.config().name.clone()) {
                    Ok(slot) => link.mode = Mode::LoggingIn(slot),
                    Err(e) => lost(link, &mut client, now, e, None, &mut events),
                },
            }
        }
        Mode::LoggingIn(slot) => {
            let answer = slot.lock().ok().and_then(|mut s| s.take());
            match answer {
                None => {}
                Some(Ok(token)) => match start_netcode(token) {
                    Ok(netcode) => {
                        let renet = RenetClient::new(ConnectionConfig::default());
                        link.mode = Mode::Renet(Box::new(RenetConn { renet, netcode, last: now }));
                    }
                    Err(e) => lost(link, &mut client, now, e, None, &mut events),
                },
                Some(Err(e)) => lost(link, &mut client, now, e, None, &mut events),
            }
        }
        Mode::Renet(conn) => {
            // What bevy_renet's client systems do, on our own connection.
            let dt = now.saturating_duration_since(conn.last);
            conn.last = now;
            conn.renet.update(dt);
            if let Err(e) = conn.netcode.update(dt, &mut conn.renet) {
                warn!("shard connection: {e}");
                link.last_error = Some(e.to_string());
            }
            let renet = &mut conn.renet;
            if renet.is_disconnected() {
                let reason = link
                    .last_error
                    .take()
                    .or_else(|| renet.disconnect_reason().map(|r| r.to_string()))
                    .unwrap_or_else(|| "disconnected".into());
                let reason = if link.connected {
                    DisconnectReason::Transport(reason)
                } else {
                    DisconnectReason::Unreachable(reason)
                };
                lost(link, &mut client, now, reason, None, &mut events);
                return;
            }
            if renet.is_connected() && !link.connected {
                link.connected = true;
                link.attempt = 0;
                client.connected();
            }
            for channel in [u8::from(DefaultChannel::ReliableOrdered), u8::from(DefaultChannel::Unreliable)] {
                while let Some(bytes) = renet.receive_message(channel) {
                    link.bytes_in += bytes.len() as u64;
                    match decode::<ShardMessage>(&bytes) {
                        Ok(msg) => client.handle_shard_message(now, msg),
                        Err(_) => link.decode_errors += 1,
                    }
                }
            }
        }
        Mode::Custom { transport, active } => {
            if !*active {
                return;
            }
            let up = transport.is_connected();
            if up && !link.connected {
                link.connected = true;
                link.attempt = 0;
                client.connected();
            } else if !up && link.connected {
                let Mode::Custom { transport, .. } = std::mem::replace(&mut link.mode, Mode::Idle) else {
                    return;
                };
                let reason = DisconnectReason::Transport("transport closed".into());
                lost(link, &mut client, now, reason, Some(transport), &mut events);
                return;
            }
            while let Some(msg) = transport.receive() {
                client.handle_shard_message(now, msg);
            }
        }
    }
}

fn start_netcode(token: ConnectToken) -> Result<NetcodeClientTransport, DisconnectReason> {
    let server_v6 = token.server_addresses.iter().flatten().next().is_some_and(|a| a.is_ipv6());
    let bind: SocketAddr = if server_v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("literal");
    let socket = UdpSocket::bind(bind)
        .map_err(|e| DisconnectReason::Local(format!("cannot open the shard socket: {e}")))?;
    NetcodeClientTransport::new(unix_now(), ClientAuthentication::Secure { connect_token: token }, socket)
        .map_err(|e| DisconnectReason::Local(format!("cannot start the shard connection: {e}")))
}

/// [`ShardState`], auto zone and [`LocalPlayer`] from what happened this frame.
#[expect(clippy::too_many_arguments, reason = "a Bevy system: one parameter per resource")]
fn shard_after(
    link: Res<ShardLink>,
    client: ResMut<P2pClient>,
    settings: Res<ShardSettings>,
    socket: NonSend<MeshSocket>,
    state: Res<State<ShardState>>,
    mut next: ResMut<NextState<ShardState>>,
    mut local: ResMut<LocalPlayer>,
    mut events: MessageReader<ShardEvent>,
    mut zone_asked: Local<bool>,
) {
    let mut client = client.lock();
    for ev in events.read() {
        match ev {
            // The shard answers every Login with Welcome; ask for the zone once.
            ShardEvent(ShardNotice::Welcome { .. }) if !*zone_asked => {
                *zone_asked = true;
                if let Some(zone) = settings.auto_zone {
                    client.enter_zone(socket.0.now(), zone);
                }
            }
            ShardEvent(ShardNotice::Disconnected(_)) => {
                *zone_asked = false;
                local.player = None;
                local.zone = None;
            }
            _ => {}
        }
    }
    if local.name != client.config().name {
        local.name = client.config().name.clone();
    }
    let want = link.state(client.phase());
    if *state.get() != want {
        next.set(want);
    }
}

/// [`ShardRequest`]s → core and connection.
fn handle_requests(
    mut link: ResMut<ShardLink>,
    client: ResMut<P2pClient>,
    mut settings: ResMut<ShardSettings>,
    socket: NonSend<MeshSocket>,
    mesh: Option<Res<MeshSocketState>>,
    mut requests: MessageReader<ShardRequest>,
    mut events: MessageWriter<ShardEvent>,
) {
    let mut client = client.lock();
    let now = socket.0.now();
    // Without a mesh socket there is no P2P: refuse to connect, with the reason.
    let unusable = match mesh.as_deref() {
        Some(MeshSocketState::Failed(why)) => Some(format!("P2P is unavailable: {why}")),
        _ => None,
    };
    for req in requests.read() {
        if let Some(why) = &unusable
            && matches!(
                req,
                ShardRequest::Connect | ShardRequest::ConnectTo { .. } | ShardRequest::ConnectWithToken(_)
            )
            && matches!(link.mode, Mode::Idle)
        {
            warn!("{why}: not connecting to the shard");
            events.write(ShardEvent(ShardNotice::Disconnected(DisconnectReason::Local(why.clone()))));
            continue;
        }
        match req {
            ShardRequest::ConnectTo { shard, name, credential } => {
                if !matches!(link.mode, Mode::Idle) {
                    warn!(%shard, "ShardRequest::ConnectTo while connected or connecting: ignored (send Disconnect first)");
                    continue;
                }
                (settings.shard, settings.credential, settings.use_login) =
                    (*shard, credential.clone(), true);
                client.set_name(name.clone());
                match start_login(&settings, name.clone()) {
                    Ok(slot) => link.mode = Mode::LoggingIn(slot),
                    Err(e) => {
                        events.write(ShardEvent(ShardNotice::Disconnected(e)));
                    }
                }
            }
            ShardRequest::ConnectWithToken(token) => {
                if !matches!(link.mode, Mode::Idle | Mode::Backoff { custom: None, .. }) {
                    warn!(
                        "ShardRequest::ConnectWithToken while connected or connecting: ignored (send Disconnect first)"
                    );
                    continue;
                }
                settings.use_login = false;
                link.mode = Mode::LoggingIn(Arc::new(Mutex::new(Some(Ok((**token).clone())))));
            }
            ShardRequest::Connect => match &mut link.mode {
                Mode::Idle => match start_login(&settings, client.config().name.clone()) {
                    Ok(slot) => link.mode = Mode::LoggingIn(slot),
                    Err(e) => {
                        events.write(ShardEvent(ShardNotice::Disconnected(e)));
                    }
                },
                Mode::Custom { transport, active } if !*active => {
                    transport.connect();
                    *active = true;
                }
                // Reconnecting: try now.
                Mode::Backoff { at, .. } => *at = now,
                _ => {}
            },
            ShardRequest::Disconnect => {
                if matches!(link.mode, Mode::Idle | Mode::Custom { active: false, .. }) {
                    continue;
                }
                // On purpose: the session ends, peers are dropped (no resume). The core's
                // last message (`Leave`) goes out before the connection closes, so the shard
                // ends the session at once instead of holding it for a resume.
                client.leave();
                let mut goodbye: Vec<_> = std::iter::from_fn(|| client.poll_shard_message()).collect();
                if !link.connected {
                    goodbye.clear();
                }
                match &mut link.mode {
                    Mode::Idle | Mode::Custom { active: false, .. } => {}
                    Mode::LoggingIn(_) => link.mode = Mode::Idle,
                    Mode::Backoff { custom, .. } => {
                        link.mode = match custom.take() {
                            Some(transport) => Mode::Custom { transport, active: false },
                            None => Mode::Idle,
                        };
                    }
                    Mode::Renet(conn) => {
                        let RenetConn { renet, netcode, .. } = &mut **conn;
                        if renet.is_connected() {
                            for bytes in goodbye.iter().filter_map(|(m, _)| encode(m).ok()) {
                                renet.send_message(DefaultChannel::ReliableOrdered, bytes);
                            }
                            if let Err(e) = netcode.send_packets(renet) {
                                debug!("could not send the goodbye: {e}");
                            }
                        }
                        netcode.disconnect();
                        link.mode = Mode::Idle;
                    }
                    Mode::Custom { transport, active } => {
                        for (m, reliable) in &goodbye {
                            transport.send(m, *reliable);
                        }
                        transport.disconnect();
                        *active = false;
                    }
                }
                link.connected = false;
                link.attempt = 0;
                events.write(ShardEvent(ShardNotice::Disconnected(DisconnectReason::ByGame)));
            }
            ShardRequest::EnterZone(zone) => client.enter_zone(now, *zone),
            ShardRequest::Move { x, y } => {
                if client.phase() == Phase::InGame {
                    client.move_to(*x, *y);
                }
            }
            ShardRequest::JoinParty(party) => client.join_party(party.clone()),
            ShardRequest::InviteToParty(player) => client.invite_to_party(*player),
        }
    }
}

/// Core → shard transport. Without a connection the messages are dropped and counted.
fn shard_out(mut link: ResMut<ShardLink>, client: ResMut<P2pClient>) {
    let mut client = client.lock();
    let link = &mut *link;
    while let Some((msg, reliable)) = client.poll_shard_message() {
        if !link.connected {
            link.unsent += 1;
            continue;
        }
        match &mut link.mode {
            Mode::Custom { transport, active: true } => transport.send(&msg, reliable),
            Mode::Renet(conn) if conn.renet.is_connected() => match encode(&msg) {
                Ok(bytes) => {
                    link.bytes_out += bytes.len() as u64;
                    let channel =
                        if reliable { DefaultChannel::ReliableOrdered } else { DefaultChannel::Unreliable };
                    conn.renet.send_message(channel, bytes);
                }
                Err(_) => link.unsent += 1,
            },
            _ => link.unsent += 1,
        }
    }
    // What bevy_renet's `send_packets` system does, on our own connection (every frame: acks
    // and keepalives too).
    if let Mode::Renet(conn) = &mut link.mode {
        let RenetConn { renet, netcode, .. } = &mut **conn;
        if let Err(e) = netcode.send_packets(renet) {
            debug!("shard connection: {e}");
            link.last_error = Some(e.to_string());
        }
    }
}

#[cfg(test)]
mod reconnect_tests {
    use super::*;

    #[test]
    fn reconnection_delays_double_from_250_ms_to_a_4_s_cap_with_jitter() {
        for attempt in 1..=12u32 {
            let base =
                RECONNECT_FIRST_DELAY.saturating_mul(1 << (attempt - 1).min(6)).min(RECONNECT_MAX_DELAY);
            let d: Vec<_> = (0..50).map(|_| reconnect_delay(attempt)).collect();
            assert!(
                d.iter().all(|x| *x >= base.mul_f64(0.75) && *x <= base.mul_f64(1.25)),
                "{attempt}: {d:?}"
            );
            assert!(d.iter().any(|x| *x != d[0]), "jittered: {d:?}");
        }
        assert!(reconnect_delay(100) <= RECONNECT_MAX_DELAY.mul_f64(1.25));
    }
}
