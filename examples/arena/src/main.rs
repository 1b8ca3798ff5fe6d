//! `p2pmodel-arena`: headless arena players (see the library docs). With no `--server`, an
//! arena shard starts inside the process first.
//!
//! ```text
//! p2pmodel-arena --bots 4 --seconds 10            # 4 bots in room "arena-1", embedded shard
//! p2pmodel-arena --server KEY@HOST:PORT --room r2 --bots 3
//! ```
//! Prints one JSON line per bot at the end (`{"bot":..., "peers":..., "ok":...}`); exits 1 if
//! a bot missed a room-mate, a shot, or saw an avatar older than one it had.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_p2pmodel::client::login::resolve_shard_address;
use bevy_p2pmodel::prelude::*;
use clap::Parser;
use p2pmodel_arena::{ArenaSettings, Scoreboard, embedded_shard, player_app};

/// Headless players of the arena example game.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The shard's login address, `KEY@HOST:PORT` (`p2pmodel secret --show-public`); without
    /// it an arena shard runs inside this process on 127.0.0.1.
    #[arg(long)]
    server: Option<String>,
    /// Room to join (a party anyone may join while it has fewer than 8 players).
    #[arg(long, default_value = "arena-1")]
    room: String,
    /// How many players this process runs (1–8).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=8))]
    bots: u32,
    /// Player name prefix (bots are `<prefix>-1`, `<prefix>-2`, …).
    #[arg(long, default_value = "arena")]
    name: String,
    /// How long to play, in seconds (after which every bot reports).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let shard = match &cli.server {
        Some(s) => match resolve_shard_address(s) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("--server: {e}");
                return ExitCode::from(2);
            }
        },
        None => match embedded_shard() {
            Ok(s) => s.login,
            Err(e) => {
                eprintln!("cannot start the embedded arena shard: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let bind: SocketAddr =
        if shard.login.ip().is_loopback() { "127.0.0.1:0" } else { "0.0.0.0:0" }.parse().expect("literal");
    let settings = ArenaSettings { room: cli.room.clone(), shoot_every: 4, max_shots: u32::MAX };
    let mut apps: Vec<App> = (1..=cli.bots)
        .map(|i| player_app(&format!("{}-{i}", cli.name), shard, bind, settings.clone()))
        .collect();
    eprintln!("{} bots in room {:?} on {} for {} s", cli.bots, cli.room, shard.login, cli.seconds);
    let end = Instant::now() + Duration::from_secs(cli.seconds);
    while Instant::now() < end {
        for app in apps.iter_mut() {
            app.update();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut all_ok = true;
    for app in &apps {
        let me = app.world().resource::<LocalPlayer>();
        let board = app.world().resource::<Scoreboard>();
        let mates = cli.bots as usize - 1;
        let clean = board.peers.values().all(|p| !p.older_after_newer && p.shots_out_of_order == 0);
        let heard = board.peers.values().filter(|p| p.avatars > 0).count();
        let ok = me.player.is_some() && clean && heard >= mates;
        all_ok &= ok;
        let peers: Vec<_> = board
            .peers
            .iter()
            .map(|(id, p)| serde_json::json!({"peer": id.0, "avatars": p.avatars, "shots": p.shots}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "bot": me.name, "player": me.player.map(|p| p.0), "room": cli.room,
                "avatars_sent": board.avatars_sent, "shots_fired": board.shots_fired,
                "health": board.health, "peers": peers, "ok": ok,
            })
        );
    }
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
