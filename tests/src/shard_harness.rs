//! A whole shard in this process over loopback sockets (the real relay, Agent + login,
//! Lobby, Game servers) and Bevy game apps that join it: what the loopback end-to-end tests
//! share. Only loopback addresses are used.

use std::net::UdpSocket;
use std::time::Duration;

use bevy::prelude::*;
use bevy_p2pmodel::prelude::*;
use p2pmodel_servers::config::ShardConfig;
use p2pmodel_servers::relay::RelayRuntime;
use p2pmodel_servers::shard::{ShardInfo, shard_app};

/// A strong test-only shard secret (the loader refuses weak and published ones).
pub const TEST_SECRET: &str = "8c1f3e5a7b9d0c2e4f6a8b0d1c3e5f7a9b2d4c6e8f0a1b3d5c7e9f2a4b6d8c0e";

/// A UDP port free on 127.0.0.1 right now.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The relay and every shard role of `cfg` in one app (`shard all` in a test), and the
/// address clients log in with.
pub fn start_shard(cfg: &ShardConfig) -> (App, ShardAddress) {
    let relay = RelayRuntime::start(cfg).unwrap();
    let relay_addr = relay.server.primary_addr();
    let mut app = shard_app(cfg, Some(relay_addr), None, 100.0).unwrap();
    app.insert_resource(relay);
    let address = app.world().resource::<ShardInfo>().shard_address().unwrap();
    (app, address)
}

/// A headless game app with the mesh and shard plugins on loopback, joining `shard` as
/// `name`; `setup` adds the test's own resources and systems.
pub fn game_app(name: &str, shard: ShardAddress, setup: impl FnOnce(&mut App)) -> App {
    let mut mesh = P2pMeshPlugin::new(name);
    mesh.bind = "127.0.0.1:0".parse().unwrap();
    mesh.client.nat_timeout = Duration::from_millis(500);
    let mut app = App::new();
    app.add_plugins(MinimalPlugins).add_plugins((mesh, ShardClientPlugin::new(shard)));
    setup(&mut app);
    app.finish();
    app.cleanup();
    app
}
