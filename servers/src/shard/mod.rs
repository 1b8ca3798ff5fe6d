//! The shard roles: Agent (DMZ gateway) → Lobby → Game, as Bevy apps over real sockets.
//!
//! The role logic is the core's ([`p2pmodel_core::shard`], sans-IO): these modules drive it
//! with Bevy systems, renet/netcode for clients and the internal links between processes.
//!
//! - [`keys`]: the netcode key and client ids derived from the shard secret; token minting.
//! - [`login`]: the login service (name → connect token) and its pluggable [`login::AccountCheck`].
//! - [`agent`]: the only public endpoint (renet + netcode, secure mode); routes messages.
//! - [`lobby`]: characters ([`store`]), zones, least-loaded Game assignment, failure detection.
//! - [`party`]: parties by invitation (owner invites, invitations expire).
//! - [`game`]: the fixed-tick world, interest grid, peer introductions, session tracking.
//! - [`intro`]: checks on what a player says of its reachability before a peer gets it.
//! - [`link`]: the cross-process internal link (TCP, Noise-encrypted with a PSK from the
//!   shard secret, heartbeats).
//! - [`remote`]: the bus across processes (star at the Lobby over [`link`]s).
//! - [`bus`]: the in-process internal link (encoded [`InternalMessage`]s in per-role queues).
//!
//! [`shard_app`] assembles every role in one App (`p2pmodel shard all`); docs/SHARD.md
//! describes the login flow, the internal messages and failure handling.
//!
//! [`InternalMessage`]: p2pmodel_core::proto::shard::InternalMessage

pub mod agent;
pub mod bus;
pub mod game;
pub mod game_api;
/// What a player says of its reachability, checked (moved to the core with the roles).
pub use p2pmodel_core::shard::intro;
pub mod keys;
pub mod link;
pub mod load;
pub mod lobby;
pub mod login;
pub mod metrics;
/// Parties by invitation (moved to the core with the roles).
pub use p2pmodel_core::shard::party;
pub mod remote;
pub mod store;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;

use crate::config::ShardConfig;
use crate::relay::{KeySchedule, RelayKey};
use agent::{AgentPlugin, AgentState};
use bus::ShardBus;
use game::{GamePlugin, GameRules, GameServers, ShardRelay};
use keys::TokenMinter;
use lobby::{Lobby, LobbyPlugin, LobbySettings, LobbyState};
use login::{AccountCheck, FileAccounts, LoginServer, LoginService, OnlineNames, OpenAccounts};
use store::Store;

/// Why a shard could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A socket could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The character store could not be opened.
    #[error("cannot open the character store: {0}")]
    Store(std::io::Error),
    /// The accounts file (`agent.accounts = "file:..."`) could not be used.
    #[error("agent.accounts: {0}")]
    Accounts(String),
}

/// Where a running shard listens (public addresses, as clients see them).
#[derive(Resource)]
pub struct ShardInfo {
    /// The Agent (netcode) address.
    pub agent: SocketAddr,
    /// The login service.
    pub login: Option<SocketAddr>,
    /// The shard's login public key (derived from the secret): what clients pin.
    pub login_key: login::LoginKey,
    /// The relay/STUN server given to clients.
    pub relay: Option<SocketAddr>,
    /// The login service's handle (kept alive with the app).
    pub login_server: Option<LoginServer>,
}

impl ShardInfo {
    /// What clients log in with (`KEY@HOST:PORT`), if the login service runs.
    pub fn shard_address(&self) -> Option<login::ShardAddress> {
        self.login.map(|l| login::ShardAddress::new(l, self.login_key))
    }
}

/// The address clients reach a socket bound at `bound` at: the first of
/// `shard.public_addresses`, else loopback when bound to an unspecified IP.
pub fn public_addr(config: &ShardConfig, bound: SocketAddr) -> SocketAddr {
    let ip = match config.shard.public_addresses.first() {
        Some(ip) => *ip,
        None if bound.ip().is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        None => bound.ip(),
    };
    SocketAddr::new(ip, bound.port())
}

/// A token minter for `config`'s Agent at its public address `agent`.
pub fn minter(config: &ShardConfig, agent: SocketAddr) -> TokenMinter {
    TokenMinter::new(
        &config.shard.secret,
        config.agent.protocol_id,
        vec![agent],
        config.agent.token_expire,
        config.agent.client_timeout_secs,
    )
}

/// The relay token key schedule the Game servers mint relay 0's tokens with: from the relay
/// key derived from the shard secret (relays hold only that key).
pub fn relay_schedule(config: &ShardConfig) -> KeySchedule {
    KeySchedule::new(RelayKey::derive(&config.shard.secret), config.relay.token_key_rotation)
}

/// The shard's relays as the Game servers use them: `[shard] relays` by id, each with its
/// own key schedule; without that list, the one relay at `relay` (this shard's own).
pub fn shard_relays(config: &ShardConfig, relay: Option<SocketAddr>) -> Vec<ShardRelay> {
    let rotation = config.relay.token_key_rotation;
    let addrs: Vec<SocketAddr> = if config.shard.relays.is_empty() {
        relay.into_iter().collect()
    } else {
        config.shard.relays.clone()
    };
    addrs
        .into_iter()
        .enumerate()
        .map(|(id, addr)| ShardRelay {
            addr,
            keys: KeySchedule::for_relay(&config.shard.secret, id as u8, rotation),
        })
        .collect()
}

/// Add every shard role (Agent, Lobby, Game servers, login service) to `app`, which must
/// already have `MinimalPlugins`. `relay` is the relay/STUN address given to clients;
/// `check` replaces the login check of `agent.accounts` ([`OpenAccounts`] or [`FileAccounts`]).
pub fn add_shard(
    app: &mut App,
    config: &ShardConfig,
    relay: Option<SocketAddr>,
    check: Option<Box<dyn AccountCheck>>,
) -> Result<(), ShardError> {
    add_agent(app, config, check)?;
    app.world_mut().resource_mut::<ShardInfo>().relay = relay;
    let stun = relay.unwrap_or(app.world().resource::<ShardInfo>().agent);
    add_lobby(app, config, stun)?;
    add_games(app, config, &all_games(config), relay);
    Ok(())
}

/// Every Game server of the shard: `(number, zone)`.
pub fn all_games(config: &ShardConfig) -> Vec<(u32, u32)> {
    let spz = config.game.servers_per_zone;
    (0..config.lobby.zones * spz).map(|g| (g, g / spz)).collect()
}

/// The account check `agent.accounts` names (open mode logs a warning).
pub fn account_check(
    config: &ShardConfig,
    online: &OnlineNames,
) -> Result<Box<dyn AccountCheck>, ShardError> {
    match &config.agent.accounts {
        crate::config::Accounts::Open => {
            warn!(
                "agent.accounts = \"open\": any free name logs in without a password (guests); \
                 set accounts = \"file:accounts.toml\" or plug an AccountCheck for real accounts"
            );
            Ok(Box::new(OpenAccounts::new(config.shard.secret, online.clone())))
        }
        crate::config::Accounts::File(f) => FileAccounts::load(f, config.shard.secret, online.clone())
            .map(|c| Box::new(c) as Box<dyn AccountCheck>)
            .map_err(ShardError::Accounts),
    }
}

/// The Agent role and the login service (inserts [`ShardInfo`] and the [`ShardBus`]).
pub fn add_agent(
    app: &mut App,
    config: &ShardConfig,
    check: Option<Box<dyn AccountCheck>>,
) -> Result<(), ShardError> {
    let transport = agent::bind_transport(config)?;
    let agent_public = transport.addrs()[0];
    let online = OnlineNames::with_cap_per_ip(config.agent.max_clients_per_ip);
    let login_server = match config.agent.login {
        Some(addr) => {
            let check = match check {
                Some(c) => c,
                None => account_check(config, &online)?,
            };
            let minter = minter(config, agent_public).balanced(transport.load());
            let service = LoginService::new(
                &config.shard.secret,
                minter,
                check,
                online.clone(),
                config.agent.login_limits,
            );
            let key = login::login_public_key(&config.shard.secret);
            Some(LoginServer::start(addr, service, key).map_err(|source| ShardError::Bind {
                what: "login",
                addr,
                source,
            })?)
        }
        None => None,
    };
    let login = login_server.as_ref().map(|l| public_addr(config, l.local_addr()));
    app.init_resource::<ShardBus>()
        .add_plugins(agent::AgentTransportPlugin)
        .insert_resource(transport)
        .insert_resource(AgentState::new(online, config.agent.max_messages_per_sec, config.lobby.heartbeat))
        .insert_resource(ShardInfo {
            agent: agent_public,
            login,
            login_key: login::login_public_key(&config.shard.secret),
            relay: None,
            login_server,
        })
        .add_plugins(AgentPlugin);
    Ok(())
}

/// The Lobby role; `stun` is the STUN/relay address told to clients in `Welcome`.
pub fn add_lobby(app: &mut App, config: &ShardConfig, stun: SocketAddr) -> Result<(), ShardError> {
    // Guests (open accounts) are not kept forever; real accounts keep their characters.
    let ttl =
        (config.agent.accounts == crate::config::Accounts::Open).then_some(config.lobby.guest_ttl).flatten();
    let store = Store::open(config.lobby.store.clone()).map_err(ShardError::Store)?.with_ttl(ttl);
    app.init_resource::<ShardBus>()
        .insert_resource(LobbyState(Lobby::new(
            std::time::Instant::now(),
            Box::new(store),
            all_games(config),
            LobbySettings {
                zones: config.lobby.zones,
                stun,
                heartbeat_timeout: config.lobby.heartbeat_timeout,
                capacity: config.game.capacity,
                resume: keys::resume_key(&config.shard.secret),
                unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                parties: config.lobby.parties,
            },
        )))
        .add_plugins(LobbyPlugin);
    Ok(())
}

/// Game servers `games` (`(number, zone)`); `relay` is put in introductions (unless
/// `[shard] relays` lists the shard's relays).
pub fn add_games(app: &mut App, config: &ShardConfig, games: &[(u32, u32)], relay: Option<SocketAddr>) {
    app.init_resource::<ShardBus>()
        .insert_resource(GameServers::new(
            games,
            GameRules {
                cfg: config.game.clone(),
                relays: shard_relays(config, relay),
                heartbeat: config.lobby.heartbeat,
            },
        ))
        .add_plugins(GamePlugin { tick_hz: config.game.tick_hz });
}

/// A headless App with every shard role, running its loop at `frame_hz` (no `run`; tests
/// call `update`).
pub fn shard_app(
    config: &ShardConfig,
    relay: Option<SocketAddr>,
    check: Option<Box<dyn AccountCheck>>,
    frame_hz: f64,
) -> Result<App, ShardError> {
    let mut app = App::new();
    app.add_plugins(
        MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / frame_hz))),
    );
    add_shard(&mut app, config, relay, check)?;
    Ok(app)
}

/// `p2pmodel shard all`: the relay plus every shard role in one process; prints what
/// listens where and runs until SIGINT/SIGTERM.
pub fn run_all(config: &ShardConfig) -> Result<AppExit, Box<dyn std::error::Error>> {
    run_all_with(config, &|_| {})
}

/// [`run_all`] with the game's own server logic: `setup` adds the game's plugins, message
/// types and systems (see [`game_api`]); what a game's own shard binary calls.
pub fn run_all_with(
    config: &ShardConfig,
    setup: &dyn Fn(&mut App),
) -> Result<AppExit, Box<dyn std::error::Error>> {
    let mut app = App::new();
    app.add_plugins(bevy::log::LogPlugin::default());
    let runtime = crate::relay::RelayRuntime::start(config)?;
    let relay_public = public_addr(config, runtime.server.primary_addr());
    app.add_plugins(MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / 60.0))));
    add_shard(&mut app, config, Some(relay_public), None)?;
    let directory = crate::directory::heartbeat::attach(&mut app, config)?;
    let info = app.world().resource::<ShardInfo>();
    println!("shard {} running:", config.shard.name);
    println!("  agent  (netcode, clients)  udp {}", info.agent);
    match info.login {
        Some(l) => {
            println!("  login  (name -> token)     udp {l}");
            println!("  login key (clients pin it) {}", info.login_key);
            println!("  clients join with          --server {}@{l}", info.login_key);
        }
        None => println!("  login  disabled (agent.login_port = 0)"),
    }
    println!("  relay  (relay + STUN)      udp {} (local {:?})", relay_public, runtime.server.local_addrs());
    if let Some(m) = runtime.server.metrics_addr() {
        println!("  metrics                    http://{m}/metrics");
    }
    println!(
        "  lobby  in-process, {} zone(s); game servers: {} per zone at {} Hz",
        config.lobby.zones, config.game.servers_per_zone, config.game.tick_hz
    );
    if let (true, Some(d)) = (directory, &config.directory) {
        println!(
            "  directory                  tcp {} (region {}, every {:?})",
            d.address, d.region, d.heartbeat
        );
    }
    crate::relay::app::install_signal_handlers();
    app.insert_resource(runtime).add_plugins(crate::relay::RelayControlPlugin);
    setup(&mut app);
    Ok(app.run())
}

/// One role of a shard spread over several processes (`p2pmodel shard agent|lobby|game`).
#[derive(Debug, Clone)]
pub enum SplitRole {
    /// The Agent and login service.
    Agent,
    /// The Lobby (listens at `lobby.internal`).
    Lobby,
    /// These Game servers (empty: all of the shard).
    Games(Vec<u32>),
}

/// Run one role in its own process, linked to the others over [`remote`] internal links.
/// The relay runs separately (`p2pmodel shard relay`); clients are told its public address.
pub fn run_role(config: &ShardConfig, role: SplitRole) -> Result<AppExit, Box<dyn std::error::Error>> {
    run_role_with(config, role, &|_| {})
}

/// [`run_role`] with the game's own server logic, added to Game-server processes only.
pub fn run_role_with(
    config: &ShardConfig,
    role: SplitRole,
    setup: &dyn Fn(&mut App),
) -> Result<AppExit, Box<dyn std::error::Error>> {
    use p2pmodel_core::proto::shard::Role;
    use remote::{RemoteBus, RemoteBusPlugin};
    let mut app = App::new();
    app.add_plugins(bevy::log::LogPlugin::default());
    app.add_plugins(MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / 60.0))));
    let (hb, timeout, secret) = (config.lobby.heartbeat, config.lobby.heartbeat_timeout, config.shard.secret);
    let relay = public_addr(config, config.relay.primary);
    let lobby = config.lobby.internal;
    match role {
        SplitRole::Agent => {
            add_agent(&mut app, config, None)?;
            crate::directory::heartbeat::attach(&mut app, config)?;
            app.insert_resource(RemoteBus::connect(vec![Role::Agent], lobby, secret, hb, timeout)?);
            let info = app.world().resource::<ShardInfo>();
            println!(
                "shard {} agent: udp {} (clients), login {:?} key {}, lobby {lobby}",
                config.shard.name, info.agent, info.login, info.login_key
            );
        }
        SplitRole::Lobby => {
            add_lobby(&mut app, config, relay)?;
            let (bus, bound) = RemoteBus::listen(vec![Role::Lobby], lobby, secret, hb, timeout)?;
            app.insert_resource(bus);
            println!("shard {} lobby: internal links on tcp {bound}", config.shard.name);
        }
        SplitRole::Games(ids) => {
            let games: Vec<(u32, u32)> =
                all_games(config).into_iter().filter(|(g, _)| ids.is_empty() || ids.contains(g)).collect();
            if games.is_empty() {
                return Err(
                    format!("no such game servers {ids:?}; the shard has {:?}", all_games(config)).into()
                );
            }
            add_games(&mut app, config, &games, Some(relay));
            setup(&mut app);
            let roles = games.iter().map(|(g, _)| Role::Game(*g)).collect();
            app.insert_resource(RemoteBus::connect(roles, lobby, secret, hb, timeout)?);
            println!(
                "shard {} game servers {games:?} (number, zone): lobby {lobby}, relay {relay}",
                config.shard.name
            );
        }
    }
    install_signal_handlers();
    app.add_plugins(RemoteBusPlugin).add_systems(Update, exit_on_signal);
    Ok(app.run())
}

static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn exit_on_signal(mut exit: MessageWriter<AppExit>) {
    if SIGNALLED.swap(false, std::sync::atomic::Ordering::Relaxed) {
        info!("signal received; shutting down");
        exit.write(AppExit::Success);
    }
}
