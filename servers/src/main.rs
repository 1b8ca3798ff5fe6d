//! `p2pmodel`: run shard roles and operator tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use p2pmodel_servers::config::ShardConfig;

/// P2PModel shard servers and operator tools.
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
    /// Run shard roles (headless servers) from a shard.toml.
    Shard {
        #[command(subcommand)]
        role: ShardRole,
    },
    /// Measure a component's performance (not a test: prints figures and a summary line).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand, Debug)]
enum ShardRole {
    /// The Punch/Relay server: STUN on the primary and alternate ports, and the
    /// token-authenticated UDP relay (see docs/OPERATIONS.md).
    Relay {
        /// The shard configuration (see assets/shard.toml for every key).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Every role of the shard in one process (for now: the relay only; agent, lobby and
    /// game arrive with the shard issue).
    All {
        /// The shard configuration (see assets/shard.toml for every key).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Our relay vs coturn (TURN ChannelData) vs a raw recvmmsg→sendmmsg forwarder, on
    /// loopback, same flows and sizes; the last line is a `summary:` for scripts.
    Relay(p2pmodel_servers::bench::RelayBenchArgs),
}

fn load(path: &std::path::Path) -> Result<ShardConfig, ExitCode> {
    ShardConfig::load(path).map_err(|e| {
        eprintln!("p2pmodel: bad configuration: {e}");
        ExitCode::from(2)
    })
}

fn run_relay(config: &ShardConfig) -> ExitCode {
    match p2pmodel_servers::relay::run_relay(config) {
        Ok(exit) if exit.is_success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("p2pmodel: relay failed to start: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Netcheck(args) => report(p2pmodel_servers::netcheck::run(&args)),
        Command::Stun(args) => report(p2pmodel_servers::netcheck::serve_stun(&args)),
        Command::Shard { role: ShardRole::Relay { config } } => match load(&config) {
            Ok(c) => run_relay(&c),
            Err(code) => code,
        },
        Command::Shard { role: ShardRole::All { config } } => match load(&config) {
            Ok(c) => {
                eprintln!(
                    "p2pmodel: `shard all` runs the relay only for now; agent, lobby and game arrive with the shard issue"
                );
                run_relay(&c)
            }
            Err(code) => code,
        },
        Command::Bench { what: BenchWhat::Relay(args) } => {
            match p2pmodel_servers::bench::run_relay_bench(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("p2pmodel: bench failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2pmodel: {e}");
            ExitCode::FAILURE
        }
    }
}
