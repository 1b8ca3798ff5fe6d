//! The relay role as a headless Bevy app: the control plane.
//!
//! ECS systems (20 Hz) rotate token keys at epoch boundaries, log a stats summary, watch the
//! data plane's health and turn SIGINT/SIGTERM into a clean `AppExit`. The data plane runs on
//! its own thread ([`RelayServer`]) and never waits for a frame.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bevy::app::ScheduleRunnerPlugin;
use bevy::log::LogPlugin;
use bevy::prelude::*;

use super::keys::KeySchedule;
use super::server::{RelayServer, RelayServerOptions, ServerError, StatsSnapshot};
use crate::config::RelayRoleConfig;

/// Control-plane frame rate: key rotation and health checks need no more.
pub const CONTROL_HZ: f64 = 20.0;

/// The running relay, as a Bevy resource.
#[derive(Resource)]
pub struct RelayRuntime {
    /// The data plane.
    pub server: RelayServer,
    /// Token key schedule.
    pub schedule: KeySchedule,
    epoch: u64,
    log_interval: Duration,
    last_log: Instant,
    last: StatsSnapshot,
}

impl RelayRuntime {
    /// Start the data plane for `config` (sockets, thread, metrics endpoint). Takes a
    /// [`RelayRoleConfig`] (or a `&ShardConfig`, from which only the relay key is derived):
    /// the relay never holds the shard secret.
    pub fn start(config: impl Into<RelayRoleConfig>) -> Result<RelayRuntime, ServerError> {
        let config: RelayRoleConfig = config.into();
        let schedule = KeySchedule::new(config.key.clone(), config.relay.token_key_rotation)
            .with_relay_id(config.relay.id);
        let unix = unix_now();
        let mut opts = RelayServerOptions::new(
            config.relay.listen_addrs(),
            config.relay.core.clone(),
            schedule.relay_keys(unix),
        );
        opts.socket_buffer_bytes = config.relay.socket_buffer_bytes;
        opts.batch = config.relay.batch;
        opts.threads = config.relay.threads;
        opts.gso_send = config.relay.gso;
        opts.metrics = config.metrics;

        let server = RelayServer::start(opts)?;
        let last = server.snapshot();
        Ok(RelayRuntime {
            server,
            epoch: schedule.epoch(unix),
            schedule,
            log_interval: config.relay.stats_log_interval,
            last_log: Instant::now(),
            last,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The relay's control-plane systems. Needs a [`RelayRuntime`] resource.
#[derive(Default)]
pub struct RelayControlPlugin;

impl Plugin for RelayControlPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Update, (rotate_token_keys, log_stats, watch_data_plane, exit_on_signal));
    }
}

fn rotate_token_keys(mut rt: ResMut<RelayRuntime>) {
    let unix = unix_now();
    let epoch = rt.schedule.epoch(unix);
    if epoch != rt.epoch {
        rt.epoch = epoch;
        let keys = rt.schedule.relay_keys(unix);
        info!(epoch, key_id = keys.current_id(), "rotating relay token keys");
        rt.server.set_keys(keys);
    }
}

fn log_stats(mut rt: ResMut<RelayRuntime>) {
    if rt.log_interval.is_zero() || rt.last_log.elapsed() < rt.log_interval {
        return;
    }
    let secs = rt.last_log.elapsed().as_secs_f64();
    rt.last_log = Instant::now();
    let s = rt.server.snapshot();
    let (p50, p99) = rt.server.recent_latency_ns();
    info!(
        forwarded_pps = ((s.forwarded_packets - rt.last.forwarded_packets) as f64 / secs).round(),
        forwarded_bps = ((s.forwarded_bytes - rt.last.forwarded_bytes) as f64 * 8.0 / secs).round(),
        dropped = s.dropped_total() - rt.last.dropped_total(),
        active_bindings = s.active_bindings,
        stun_answered = s.plane.stun_answered - rt.last.plane.stun_answered,
        p50_us = p50.map(|n| n / 1000),
        p99_us = p99.map(|n| n / 1000),
        "relay stats"
    );
    rt.last = s;
}

fn watch_data_plane(rt: Res<RelayRuntime>, mut exit: MessageWriter<AppExit>) {
    if !rt.server.is_alive() {
        error!("relay data plane stopped unexpectedly; exiting");
        exit.write(AppExit::error());
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// Route SIGINT and SIGTERM to a flag the app polls (async-signal-safe: one atomic store).
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn exit_on_signal(mut exit: MessageWriter<AppExit>) {
    if SIGNALLED.swap(false, Ordering::Relaxed) {
        info!("signal received; shutting down");
        exit.write(AppExit::Success);
    }
}

/// Build the relay app around a started runtime (no `run`; tests call `update`).
pub fn relay_app(runtime: RelayRuntime, with_log: bool) -> App {
    let mut app = App::new();
    app.add_plugins(
        MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / CONTROL_HZ))),
    );
    if with_log {
        app.add_plugins(LogPlugin::default());
    }
    app.insert_resource(runtime).add_plugins(RelayControlPlugin);
    app
}

/// `p2pmodel shard relay`: start the relay for `config` and run until a signal or a fault.
pub fn run_relay(config: &RelayRoleConfig) -> Result<AppExit, ServerError> {
    // Logging first, so the data plane's start is logged.
    let mut app = App::new();
    app.add_plugins(LogPlugin::default());
    let runtime = RelayRuntime::start(config)?;
    info!(
        shard = %config.name,
        relay = %runtime.server.primary_addr(),
        stun = ?runtime.server.local_addrs(),
        metrics = ?runtime.server.metrics_addr(),
        key_id = runtime.server.snapshot().current_key_id,
        "relay role running"
    );
    install_signal_handlers();
    app.add_plugins(
        MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / CONTROL_HZ))),
    )
    .insert_resource(runtime)
    .add_plugins(RelayControlPlugin);
    let exit = app.run();
    drop(app);
    info!("relay stopped");
    Ok(exit)
}
