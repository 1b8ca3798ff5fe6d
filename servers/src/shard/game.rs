//! The Game role in the servers: the core's [`GameWorld`]s (see
//! [`p2pmodel_core::shard::game`]) ticked by Bevy's fixed clock, with heartbeats to the Lobby.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bevy::prelude::*;
use p2pmodel_core::proto::shard::{InternalMessage, Role};
pub use p2pmodel_core::shard::game::{GameRules, GameStats, GameWorld, MAX_PEER_DATA, Pair, ShardRelay};

use super::bus::ShardBus;

/// The Game servers this process runs.
#[derive(Resource, Debug)]
pub struct GameServers {
    /// The servers.
    pub worlds: Vec<GameWorld>,
    /// Rules shared by all of them.
    pub rules: GameRules,
    /// Killed or paused servers: no ticks, no heartbeats.
    pub stopped: Vec<u32>,
}

impl GameServers {
    /// Servers `games` (`(number, zone)`), each with link keys seeded from OS entropy.
    pub fn new(games: &[(u32, u32)], rules: GameRules) -> GameServers {
        let worlds = games.iter().map(|(g, z)| GameWorld::new(*g, *z, rand::random())).collect();
        GameServers { worlds, rules, stopped: Vec::new() }
    }

    /// Stop Game server `id` as if its process died (no more heartbeats, inbox ignored).
    pub fn kill(&mut self, id: u32) {
        for w in self.worlds.iter_mut().filter(|w| w.id == id) {
            w.clear();
        }
        self.pause(id);
    }

    /// Resume Game server `id` after [`GameServers::pause`] (it heart-beats again).
    pub fn resume(&mut self, id: u32) {
        self.stopped.retain(|g| *g != id);
    }

    /// Freeze Game server `id` with its state, as a stalled process (tests partitions).
    pub fn pause(&mut self, id: u32) {
        if !self.stopped.contains(&id) {
            self.stopped.push(id);
        }
    }

    /// Whether server `id` runs.
    pub fn alive(&self, id: u32) -> bool {
        !self.stopped.contains(&id)
    }

    /// The server with number `id`.
    pub fn get(&self, id: u32) -> Option<&GameWorld> {
        self.worlds.iter().find(|w| w.id == id)
    }
}

/// The Game servers' own tick in `FixedUpdate` (the game's logic runs after it, see
/// [`super::game_api::GameSet`]).
#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub struct GameTickSet;

/// The Game role: a fixed-tick system over every [`GameWorld`] in [`GameServers`].
pub struct GamePlugin {
    /// Simulation rate.
    pub tick_hz: u32,
}

impl Plugin for GamePlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(Time::<Fixed>::from_hz(self.tick_hz as f64))
            .add_systems(FixedUpdate, game_tick.in_set(GameTickSet))
            .add_systems(Update, game_heartbeat);
    }
}

fn game_tick(mut games: ResMut<GameServers>, mut bus: ResMut<ShardBus>) {
    let _tick = super::metrics::TickTimer::start(); // bench metrics: tick wall time
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let GameServers { worlds, rules, stopped } = &mut *games;
    for w in worlds.iter_mut().filter(|w| !stopped.contains(&w.id)) {
        for m in bus.drain(Role::Game(w.id)) {
            w.handle(&mut bus, rules, m);
        }
        w.step(&mut bus, rules, unix);
    }
}

fn game_heartbeat(mut games: ResMut<GameServers>, mut bus: ResMut<ShardBus>) {
    let now = Instant::now();
    let GameServers { worlds, rules, stopped } = &mut *games;
    for w in worlds.iter_mut().filter(|w| !stopped.contains(&w.id)) {
        if w.heartbeat_due(now, rules.heartbeat) {
            bus.send(Role::Lobby, &InternalMessage::Heartbeat { from: Role::Game(w.id) });
        }
    }
}
