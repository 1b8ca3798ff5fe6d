//! The Lobby role in the servers: the core's [`Lobby`] (see [`p2pmodel_core::shard::lobby`])
//! run every frame on the [`ShardBus`], with the character [`super::store::Store`] on disk.

use std::time::Instant;

use bevy::prelude::*;
pub use p2pmodel_core::shard::lobby::{GameInfo, Lobby, LobbyClient, LobbySettings, RESYNC_WINDOW};

use super::bus::ShardBus;

/// The Lobby's state as a Bevy resource.
#[derive(Resource, Debug, Deref, DerefMut)]
pub struct LobbyState(pub Lobby);

/// The Lobby role. Needs [`LobbyState`] and [`ShardBus`].
pub struct LobbyPlugin;

impl Plugin for LobbyPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Update, lobby_frame);
    }
}

fn lobby_frame(mut lobby: ResMut<LobbyState>, mut bus: ResMut<ShardBus>) {
    let now = Instant::now();
    lobby.handle_all(now, &mut bus);
    lobby.check(now, &mut bus);
}
