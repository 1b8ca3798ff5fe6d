//! Agones integration (cargo feature `agones`): `p2pmodel shard game --agones` runs Game
//! servers as an Agones `GameServer` (docs/OPERATIONS.md "Deploying on Agones").
//!
//! The process connects to the Agones SDK sidecar, says **Ready** (it joins the warm pool of
//! its Fleet without hosting anything), sends **Health** while it waits, and starts its Game
//! servers only once Agones reports it **Allocated**: the allocation names the Game server
//! numbers in the annotation [`GAMES_ANNOTATION`] (`"0,2"`). From then on Health comes from
//! the Game tick, and the number of players is the Agones Counter [`PLAYERS_COUNTER`]. On
//! SIGTERM it **drains**: its Game servers stop ticking and heart-beating, the Lobby moves
//! their players to the zone's other server after `lobby.heartbeat_timeout_ms` (they keep
//! their links, docs/SHARD.md §5), and then it calls **Shutdown**.
//!
//! The SDK hides behind [`Agones`], a small trait of ours, so [`Lifecycle`] (sans-IO: it takes
//! `now`) and the Bevy wiring are tested with a recording fake; [`SdkClient`] is the real SDK
//! (the official `agones` crate) on a worker thread, tested against an in-test gRPC server
//! speaking the SDK's protocol.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;

use crate::config::ShardConfig;
use crate::shard::game::GameServers;

/// The GameServer annotation an allocation sets to tell a Game server process which Game
/// server numbers to run (comma-separated, e.g. `"0,2"`).
pub const GAMES_ANNOTATION: &str = "p2pmodel.dev/games";
/// The Agones Counter holding the number of players on this process's Game servers (declare
/// it in the Fleet's `spec.template.spec.counters`).
pub const PLAYERS_COUNTER: &str = "players";
/// How often Health is sent (the Fleet's `health.periodSeconds` must be larger: 5 s).
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// The player count is reported at most this often (changes in between are coalesced).
pub const PLAYERS_EVERY: Duration = Duration::from_secs(1);

/// What a Game server process tells Agones. [`SdkClient`] is the real SDK; calls are
/// fire-and-forget and delivered in order.
pub trait Agones: Send + Sync + 'static {
    /// The process can take an allocation (`SDK.Ready`).
    fn ready(&mut self);
    /// The process is alive (one message on `SDK.Health`).
    fn health(&mut self);
    /// The capacity of the players Counter.
    fn set_capacity(&mut self, capacity: i64);
    /// The count of the players Counter.
    fn set_players(&mut self, count: i64);
    /// The process is done; Agones deletes the pod (`SDK.Shutdown`).
    fn shutdown(&mut self);
}

/// Where the process is in its Agones life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected, Ready not sent yet.
    Starting,
    /// Ready sent: in the warm pool, hosting nothing.
    Ready,
    /// Allocated: Game servers running and taking players.
    Allocated,
    /// Draining: Game servers stopped; Shutdown is sent at `until`.
    Draining {
        /// When the Lobby has moved every player away.
        until: Instant,
    },
    /// Shutdown sent; the process may exit.
    Done,
}

/// The Agones life cycle of a Game server process, sans-IO: each call takes `now` and makes
/// the SDK calls due.
#[derive(Debug)]
pub struct Lifecycle {
    phase: Phase,
    health_every: Duration,
    next_health: Option<Instant>,
    drain_wait: Duration,
    players_every: Duration,
    capacity: i64,
    reported: Option<i64>,
    next_players: Option<Instant>,
}

impl Lifecycle {
    /// A life cycle sending Health every `health_every` and Shutdown `drain_wait` after a
    /// drain starts (the Lobby's heartbeat timeout and a margin).
    pub fn new(health_every: Duration, drain_wait: Duration) -> Lifecycle {
        Lifecycle {
            phase: Phase::Starting,
            health_every,
            next_health: None,
            drain_wait,
            players_every: PLAYERS_EVERY,
            capacity: 0,
            reported: None,
            next_players: None,
        }
    }

    /// Report the player count at most every `every` (default [`PLAYERS_EVERY`]).
    pub fn with_players_every(mut self, every: Duration) -> Lifecycle {
        self.players_every = every;
        self
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Sockets and links are set up: say Ready (once).
    pub fn ready(&mut self, sdk: &mut dyn Agones) {
        if self.phase == Phase::Starting {
            sdk.ready();
            self.phase = Phase::Ready;
        }
    }

    /// The GameServer is already Allocated (this container restarted inside an allocation):
    /// no Ready, which would put the GameServer back into the warm pool.
    pub fn skip_ready(&mut self) {
        if self.phase == Phase::Starting {
            self.phase = Phase::Ready;
        }
    }

    /// Agones allocated this process and its Game servers run: report the players Counter's
    /// capacity and a count of 0.
    pub fn allocated(&mut self, now: Instant, capacity: i64, sdk: &mut dyn Agones) {
        if self.phase != Phase::Ready {
            return;
        }
        self.phase = Phase::Allocated;
        self.capacity = capacity.max(0);
        sdk.set_capacity(self.capacity);
        self.report(now, 0, sdk);
    }

    /// Every tick (and while waiting for an allocation): Health when due, the player count
    /// when it changed (at most every [`Lifecycle::with_players_every`]).
    pub fn tick(&mut self, now: Instant, players: usize, sdk: &mut dyn Agones) {
        if matches!(self.phase, Phase::Starting | Phase::Done) {
            return;
        }
        if self.next_health.is_none_or(|t| now >= t) {
            sdk.health();
            self.next_health = Some(now + self.health_every);
        }
        let players = i64::try_from(players).unwrap_or(i64::MAX);
        if self.phase == Phase::Allocated
            && self.reported != Some(players)
            && self.next_players.is_none_or(|t| now >= t)
        {
            self.report(now, players, sdk);
        }
    }

    fn report(&mut self, now: Instant, players: i64, sdk: &mut dyn Agones) {
        // A party may exceed the nominal capacity (SHARD.md §4a); Agones refuses a count
        // above the capacity, so the capacity follows.
        if players > self.capacity {
            self.capacity = players;
            sdk.set_capacity(players);
        }
        sdk.set_players(players);
        self.reported = Some(players);
        self.next_players = Some(now + self.players_every);
    }

    /// Stop taking players (SIGTERM). Returns true the first time: the caller stops its Game
    /// servers' ticks and heartbeats so the Lobby moves their players.
    pub fn drain(&mut self, now: Instant) -> bool {
        match self.phase {
            Phase::Draining { .. } | Phase::Done => false,
            Phase::Allocated => {
                self.phase = Phase::Draining { until: now + self.drain_wait };
                true
            }
            // Nothing hosted: nothing to wait for.
            Phase::Starting | Phase::Ready => {
                self.phase = Phase::Draining { until: now };
                true
            }
        }
    }

    /// Whether the Game servers run (allocated and not draining).
    pub fn serving(&self) -> bool {
        self.phase == Phase::Allocated
    }

    /// Sends Shutdown once the drain is over; true when the process may exit.
    pub fn poll(&mut self, now: Instant, sdk: &mut dyn Agones) -> bool {
        match self.phase {
            Phase::Draining { until } if now >= until => {
                sdk.shutdown();
                self.phase = Phase::Done;
                true
            }
            Phase::Done => true,
            _ => false,
        }
    }
}

/// Why Agones mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgonesError {
    /// The SDK sidecar did not answer (`AGONES_SDK_GRPC_PORT`, default 9357).
    #[error("cannot reach the Agones SDK server: {0}")]
    Connect(String),
    /// The SDK worker stopped.
    #[error("the Agones SDK connection ended: {0}")]
    Closed(String),
    /// The allocation's `p2pmodel.dev/games` annotation is not usable.
    #[error("bad allocation: {0}")]
    Assignment(String),
}

/// What this process learns of its GameServer from the SDK (a view of `agones::GameServer`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GameServerView {
    /// The GameServer's name.
    pub name: String,
    /// `status.state`: `Scheduled`, `RequestReady`, `Ready`, `Allocated`, `Shutdown`, ...
    pub state: String,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

impl From<agones::GameServer> for GameServerView {
    fn from(gs: agones::GameServer) -> GameServerView {
        let meta = gs.object_meta.unwrap_or_default();
        GameServerView {
            name: meta.name,
            state: gs.status.map(|s| s.state).unwrap_or_default(),
            annotations: meta.annotations.into_iter().collect(),
            labels: meta.labels.into_iter().collect(),
        }
    }
}

/// The Game servers an allocation assigns: the numbers in [`GAMES_ANNOTATION`], else
/// `fallback` (`--games`), else every Game server of the shard. Each must exist in `config`.
pub fn assignment(
    config: &ShardConfig,
    gs: &GameServerView,
    fallback: &[u32],
) -> Result<Vec<(u32, u32)>, AgonesError> {
    let all = crate::shard::all_games(config);
    let ids: Vec<u32> = match gs.annotations.get(GAMES_ANNOTATION) {
        Some(v) => v.split(',').map(|s| s.trim().parse::<u32>()).collect::<Result<_, _>>().map_err(|_| {
            AgonesError::Assignment(format!("{GAMES_ANNOTATION} is {v:?}, not numbers like \"0,2\""))
        })?,
        None => fallback.to_vec(),
    };
    if let Some(bad) = ids.iter().find(|g| !all.iter().any(|(n, _)| n == *g)) {
        return Err(AgonesError::Assignment(format!(
            "Game server {bad} does not exist; the shard has 0..{} (lobby.zones × game.servers_per_zone)",
            all.len()
        )));
    }
    Ok(all.into_iter().filter(|(g, _)| ids.is_empty() || ids.contains(g)).collect())
}

enum Cmd {
    Ready,
    Health,
    Capacity(i64),
    Players(i64),
    Shutdown,
}

/// The official Agones SDK on a worker thread (a current-thread tokio runtime): our calls are
/// queued in order; GameServer updates (WatchGameServer) come back through
/// [`SdkWorker::next_update`]. Failed calls are logged as warnings.
pub struct SdkClient {
    cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
}

/// The worker of an [`SdkClient`]: its GameServer updates and its thread.
pub struct SdkWorker {
    updates: Option<mpsc::Receiver<GameServerView>>,
    thread: Option<JoinHandle<()>>,
}

impl SdkClient {
    /// Connect to the SDK server on localhost at `port` (None: `AGONES_SDK_GRPC_PORT`, else
    /// 9357); waits up to 30 s for it (the SDK's own timeout).
    pub fn connect(port: Option<u16>) -> Result<(SdkClient, SdkWorker), AgonesError> {
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let (up_tx, up_rx) = mpsc::channel();
        let (ok_tx, ok_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("agones-sdk".into())
            .spawn(move || worker(port, cmd_rx, up_tx, ok_tx))
            .map_err(|e| AgonesError::Connect(e.to_string()))?;
        match ok_rx.recv() {
            Ok(Ok(())) => {
                Ok((SdkClient { cmds: cmd_tx }, SdkWorker { updates: Some(up_rx), thread: Some(thread) }))
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(AgonesError::Connect(e))
            }
            Err(_) => {
                let _ = thread.join();
                Err(AgonesError::Connect("the SDK worker stopped".into()))
            }
        }
    }

    fn send(&mut self, c: Cmd) {
        // A stopped worker has logged why; nothing more to do here.
        let _ = self.cmds.send(c);
    }
}

impl Agones for SdkClient {
    fn ready(&mut self) {
        self.send(Cmd::Ready);
    }
    fn health(&mut self) {
        self.send(Cmd::Health);
    }
    fn set_capacity(&mut self, capacity: i64) {
        self.send(Cmd::Capacity(capacity));
    }
    fn set_players(&mut self, count: i64) {
        self.send(Cmd::Players(count));
    }
    fn shutdown(&mut self) {
        self.send(Cmd::Shutdown);
    }
}

impl SdkWorker {
    /// The next GameServer update, waiting at most `wait`; `Err` when the watch ended.
    pub fn next_update(&self, wait: Duration) -> Result<Option<GameServerView>, AgonesError> {
        let Some(updates) = &self.updates else {
            return Err(AgonesError::Closed("no longer watching".into()));
        };
        match updates.recv_timeout(wait) {
            Ok(gs) => Ok(Some(gs)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(AgonesError::Closed("GameServer watch ended".into()))
            }
        }
    }

    /// Stop watching the GameServer (every Counter update is a GameServer update: unread,
    /// they would pile up).
    pub fn stop_watching(&mut self) {
        self.updates = None;
    }

    /// Wait until every queued call went out (all [`SdkClient`]s must be dropped first).
    pub fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn worker(
    port: Option<u16>,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<Cmd>,
    updates: mpsc::Sender<GameServerView>,
    ok: mpsc::Sender<Result<(), String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ok.send(Err(format!("cannot start a tokio runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let mut sdk = match agones::Sdk::new(port, None).await {
            Ok(sdk) => sdk,
            Err(e) => {
                let _ = ok.send(Err(e.to_string()));
                return;
            }
        };
        // The current GameServer first: a restarted container may already be Allocated.
        match sdk.get_gameserver().await {
            Ok(gs) => {
                let _ = updates.send(GameServerView::from(gs));
            }
            Err(e) => {
                let _ = ok.send(Err(e.to_string()));
                return;
            }
        }
        let mut watcher = sdk.clone();
        tokio::spawn(async move {
            match watcher.watch_gameserver().await {
                Ok(mut stream) => {
                    while let Ok(Some(gs)) = stream.message().await {
                        if updates.send(GameServerView::from(gs)).is_err() {
                            break;
                        }
                    }
                }
                Err(e) => warn!("agones: WatchGameServer failed: {e}"),
            }
        });
        let health = sdk.health_check();
        let mut beta = sdk.beta().clone();
        let _ = ok.send(Ok(()));
        while let Some(cmd) = cmds.recv().await {
            let (what, r) = match cmd {
                Cmd::Ready => ("Ready", sdk.ready().await),
                Cmd::Health => {
                    // The health stream is a background task; a full queue means it is stuck.
                    let _ = health.try_send(());
                    ("Health", Ok(()))
                }
                Cmd::Capacity(n) => ("counter capacity", beta.set_counter_capacity(PLAYERS_COUNTER, n).await),
                Cmd::Players(n) => ("counter count", beta.set_counter_count(PLAYERS_COUNTER, n).await),
                Cmd::Shutdown => ("Shutdown", sdk.shutdown().await),
            };
            if let Err(e) = r {
                warn!("agones: {what} failed: {e}");
            }
        }
    });
}

/// The Agones side of a running Game server process (a Bevy resource).
#[derive(Resource)]
pub struct AgonesState {
    /// The life cycle.
    pub life: Lifecycle,
    /// The SDK (or a fake in tests).
    pub sdk: Box<dyn Agones>,
}

/// Health and the players Counter from the Game tick; drain on SIGTERM (or
/// [`AgonesState::life`]`.drain`), Shutdown and exit when drained. Needs [`GameServers`].
pub struct AgonesPlugin;

impl Plugin for AgonesPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(FixedUpdate, agones_tick).add_systems(Update, agones_frame);
    }
}

fn agones_tick(st: Option<ResMut<AgonesState>>, games: Res<GameServers>) {
    let Some(mut st) = st else { return };
    let players = games.worlds.iter().filter(|w| games.alive(w.id)).map(|w| w.players().count()).sum();
    let AgonesState { life, sdk } = &mut *st;
    life.tick(Instant::now(), players, sdk.as_mut());
}

fn agones_frame(
    st: Option<ResMut<AgonesState>>,
    mut games: ResMut<GameServers>,
    mut exit: MessageWriter<AppExit>,
    mut commands: Commands,
) {
    let Some(mut st) = st else { return };
    let now = Instant::now();
    let AgonesState { life, sdk } = &mut *st;
    if SIGNALLED.swap(false, Ordering::Relaxed) {
        info!("agones: signal received; draining");
        life.drain(now);
    }
    if matches!(life.phase(), Phase::Draining { .. }) {
        let ids: Vec<u32> = games.worlds.iter().map(|w| w.id).filter(|id| games.alive(*id)).collect();
        for id in ids {
            // No ticks, no heartbeats: the Lobby moves the players to the zone's other server.
            games.pause(id);
        }
    }
    if life.poll(now, sdk.as_mut()) {
        info!("agones: drained; Shutdown sent");
        exit.write(AppExit::Success);
        // Dropping the SDK lets its worker send what is queued and stop (`SdkWorker::finish`).
        commands.remove_resource::<AgonesState>();
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// How long a drain lasts: the Lobby's Game-failure timeout plus a second.
pub fn drain_wait(config: &ShardConfig) -> Duration {
    config.lobby.heartbeat_timeout + Duration::from_secs(1)
}

/// Say Ready, then send Health until Agones reports the GameServer Allocated (its view, with
/// the allocation's annotations) or `stop()` says to stop (then Shutdown is sent: `None`).
/// A GameServer already Allocated (the container restarted) is returned at once, without Ready.
pub fn wait_for_allocation(
    life: &mut Lifecycle,
    sdk: &mut dyn Agones,
    worker: &SdkWorker,
    mut stop: impl FnMut() -> bool,
) -> Result<Option<GameServerView>, AgonesError> {
    if let Some(gs) = worker.next_update(Duration::from_secs(5))?
        && gs.state == "Allocated"
    {
        life.skip_ready();
        return Ok(Some(gs));
    }
    life.ready(sdk);
    loop {
        let now = Instant::now();
        if stop() {
            life.drain(now);
            life.poll(now, sdk);
            return Ok(None);
        }
        life.tick(now, 0, sdk);
        if let Some(gs) = worker.next_update(Duration::from_millis(100))?
            && gs.state == "Allocated"
        {
            return Ok(Some(gs));
        }
    }
}

/// The allocated Game servers `games` (`(number, zone)`) in `app` (which has
/// `MinimalPlugins`): linked to the Lobby at `lobby.internal`, with [`AgonesPlugin`];
/// reports the players Counter's capacity (Game servers × `game.capacity`).
pub fn add_allocated_games(
    app: &mut App,
    config: &ShardConfig,
    games: &[(u32, u32)],
    mut life: Lifecycle,
    mut sdk: Box<dyn Agones>,
) -> std::io::Result<()> {
    use crate::shard::remote::{RemoteBus, RemoteBusPlugin};
    use p2pmodel_core::proto::shard::Role;

    let relay = crate::shard::public_addr(config, config.relay.primary);
    let (hb, timeout, secret) = (config.lobby.heartbeat, config.lobby.heartbeat_timeout, config.shard.secret);
    crate::shard::add_games(app, config, games, Some(relay));
    let roles = games.iter().map(|(g, _)| Role::Game(*g)).collect();
    app.insert_resource(RemoteBus::connect(roles, config.lobby.internal, secret, hb, timeout)?);
    let capacity = i64::try_from(games.len() * config.game.capacity).unwrap_or(i64::MAX);
    life.allocated(Instant::now(), capacity, sdk.as_mut());
    app.insert_resource(AgonesState { life, sdk }).add_plugins((RemoteBusPlugin, AgonesPlugin));
    Ok(())
}

/// `p2pmodel shard game --agones`: Ready, wait for an allocation (Health meanwhile), then run
/// the allocated Game servers (like `shard game`) with [`AgonesPlugin`]; `fallback` is
/// `--games`, used when the allocation names none.
pub fn run_game(config: &ShardConfig, fallback: &[u32]) -> Result<AppExit, Box<dyn std::error::Error>> {
    install_signal_handlers();
    let mut app = App::new();
    app.add_plugins(bevy::log::LogPlugin::default());
    let (mut sdk, mut worker) = SdkClient::connect(None)?;
    let mut life = Lifecycle::new(HEALTH_EVERY, drain_wait(config));
    info!("agones: connected; Ready, waiting for an allocation ({GAMES_ANNOTATION} names the Game servers)");
    let stop = || SIGNALLED.swap(false, Ordering::Relaxed);
    let Some(gs) = wait_for_allocation(&mut life, &mut sdk, &worker, stop)? else {
        drop(sdk);
        worker.finish();
        info!("agones: signal received before an allocation; Shutdown sent");
        return Ok(AppExit::Success);
    };
    worker.stop_watching();
    let games = match assignment(config, &gs, fallback) {
        Ok(g) if !g.is_empty() => g,
        Ok(_) => return Err(AgonesError::Assignment("no Game servers".into()).into()),
        Err(e) => {
            // This pod cannot serve the allocation: give it back to Agones (a fresh one is
            // made) and say why.
            error!("agones: {e}; Shutdown");
            life.drain(Instant::now());
            life.poll(Instant::now(), &mut sdk);
            drop(sdk);
            worker.finish();
            return Err(e.into());
        }
    };
    app.add_plugins(MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / 60.0))));
    add_allocated_games(&mut app, config, &games, life, Box::new(sdk))?;
    println!(
        "shard {} game servers {games:?} (number, zone), allocated as {}: lobby {}",
        config.shard.name, gs.name, config.lobby.internal
    );
    let exit = app.run();
    worker.finish();
    Ok(exit)
}

#[cfg(test)]
#[path = "agones_tests.rs"]
mod tests;
