//! `p2pmodel`: run shard roles and operator tools.

use clap::{Parser, Subcommand};

/// P2PModel shard servers and operator tools.
///
/// A shard is Agent (public gateway) → Lobby → Game, plus a Punch/Relay server that answers
/// STUN and relays UDP for players whose NATs defeat hole punching.
#[derive(Parser, Debug)]
#[command(name = "p2pmodel", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Learn this host's public address and NAT class from a STUN server (RFC 8489 / RFC 5780).
    Netcheck(p2pmodel_servers::netcheck::NetcheckArgs),
    /// Run a standalone STUN server (two ports, optionally two IPs) for NAT classification.
    Stun(p2pmodel_servers::netcheck::StunServeArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Netcheck(args) => p2pmodel_servers::netcheck::run(args).map_err(|e| e.to_string()),
        Command::Stun(args) => p2pmodel_servers::netcheck::serve_stun(args).map_err(|e| e.to_string()),
    };
    if let Err(e) = result {
        eprintln!("p2pmodel: {e}");
        std::process::exit(1);
    }
}
