//! A bare Bevy app on a shard: `cargo run -p bevy_p2pmodel --example minimal -- KEY@127.0.0.1:7001`.
//! Logs in, enters zone 0, greets every peer it meets and prints what happens.
use std::time::Duration;

use bevy::{app::ScheduleRunnerPlugin, prelude::*};
use bevy_p2pmodel::prelude::*;

fn main() {
    // KEY@HOST:PORT: the shard's login key (printed by `p2pmodel shard all`) and login address.
    let shard: ShardAddress =
        std::env::args().nth(1).expect("usage: minimal KEY@HOST:PORT").parse().expect("KEY@HOST:PORT");
    App::new()
        .add_plugins(MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / 60.0))))
        .add_plugins((
            P2pMeshPlugin::new(format!("minimal-{}", std::process::id())),
            ShardClientPlugin::new(shard),
        ))
        .add_systems(Update, print)
        .run();
}

fn print(
    mut met: MessageReader<PeerConnected>,
    mut paths: MessageReader<PeerPathChanged>,
    mut got: MessageReader<P2pReceived>,
    mut sender: P2pSender,
) {
    for p in met.read() {
        println!("met {} ({:?})", p.name, p.player);
        let _ = sender.send(p.player, Channel::Reliable, &format!("hello {}!", p.name));
    }
    for p in paths.read() {
        println!("{:?} is {} via {:?}, {:?} after intro", p.player, p.path.as_str(), p.remote, p.since_intro);
    }
    for m in got.read() {
        println!("{:?} says {:?} (over the mesh: {})", m.player, m.decode::<String>(), m.p2p);
    }
}
