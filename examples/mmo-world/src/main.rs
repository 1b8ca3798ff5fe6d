//! `p2pmodel-mmo-shard`: a shard that serves the demo MMO's world (NPCs, chat in range): the
//! stock shard roles of `p2pmodel shard` plus the world's server logic, which is all a game's
//! own shard binary needs to be.
//!
//! ```text
//! p2pmodel-mmo-shard all --config shard.toml              # every role and the relay
//! p2pmodel-mmo-shard game --config shard.toml --games 1,2  # Game servers only (split shard)
//! ```
//! The relay, Agent and Lobby need no game logic: run them with `p2pmodel shard relay|agent|lobby`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use p2pmodel_mmo_world::{MmoWorldPlugin, MmoWorldSettings};
use p2pmodel_servers::config::ShardConfig;
use p2pmodel_servers::shard::{SplitRole, run_all_with, run_role_with};

/// A shard with the demo MMO's world (NPCs, chat in range) as its game logic.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    role: Role,
    /// NPCs per Game server (0: none).
    #[arg(long, global = true, default_value_t = 6)]
    npcs: u32,
    /// NPCs stay within this distance of the spawn point (world units, > 0).
    #[arg(long, global = true, default_value_t = 40.0)]
    npc_area: f32,
    /// How often each player is sent the NPCs in its interest radius (Hz, 1..=game.tick_hz).
    #[arg(long, global = true, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    npc_hz: u32,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// The relay and every shard role in this process (as `p2pmodel shard all`).
    All {
        /// The shard's configuration file (see assets/shard.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Game servers only, linked to the Lobby at `lobby.internal` (as `p2pmodel shard game`).
    Game {
        /// The shard's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Which Game servers (numbers, comma-separated; default: all of the shard).
        #[arg(long, value_delimiter = ',')]
        games: Vec<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(cli.npc_area.is_finite() && cli.npc_area > 0.0) {
        eprintln!("p2pmodel-mmo-shard: --npc-area must be a positive number of world units");
        return ExitCode::from(2);
    }
    let settings = MmoWorldSettings { npcs: cli.npcs, npc_area: cli.npc_area, npc_hz: cli.npc_hz };
    let (path, games) = match &cli.role {
        Role::All { config } => (config, None),
        Role::Game { config, games } => (config, Some(games.clone())),
    };
    let config = match ShardConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("p2pmodel-mmo-shard: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let setup = move |app: &mut bevy::app::App| {
        app.add_plugins(MmoWorldPlugin(settings.clone()));
    };
    let result = match games {
        None => run_all_with(&config, &setup),
        Some(g) => run_role_with(&config, SplitRole::Games(g), &setup),
    };
    match result {
        Ok(exit) if exit.is_success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("p2pmodel-mmo-shard: the shard failed to start: {e}");
            ExitCode::FAILURE
        }
    }
}
