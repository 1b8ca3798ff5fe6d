//! `p2pmodel`: run shard roles and operator tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use p2pmodel_servers::config::{RelayRoleConfig, ShardConfig};

/// Counts bytes allocated during a `p2pmodel fuzz` exec (a relaxed load per allocation
/// otherwise), so a decoder that allocates absurdly is caught.
#[global_allocator]
static ALLOC: p2pmodel_servers::fuzz::CountingAlloc = p2pmodel_servers::fuzz::CountingAlloc;

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
    /// Mint a connect token for a client id (what a game backend with its own login does);
    /// prints the token as hex (renetcode's ConnectToken wire format).
    Token {
        /// The shard configuration (the secret and the Agent's public address).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The netcode client id.
        #[arg(long)]
        client_id: u64,
        /// Player name bound into the token's user data.
        #[arg(long, default_value = "player")]
        name: String,
    },
    /// Print the shard's relay key (64 hex digits), derived from the shard secret: give it to
    /// relay hosts as `[relay] key` so they never hold the shard secret.
    RelayKey {
        /// The shard configuration (with the shard secret).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Which relay of the shard (`[relay] id`, the index in `[shard] relays`): each has
        /// its own key.
        #[arg(long, default_value_t = 0)]
        id: u8,
    },
    /// Generate a shard secret and show the login public key clients pin; or show the key of
    /// an existing config; or hash a password for an accounts file.
    ///
    /// With no option: prints a fresh random secret (from the OS RNG) as a `secret = "..."`
    /// line for shard.toml, and the login public key derived from it. Keep the secret
    /// private (prefer `secret_file`); publish the key with the login address, as
    /// `KEY@HOST:PORT` (what game clients pass to `--server`).
    Secret(SecretArgs),
    /// The directory (world list): shards register with an authenticated heartbeat
    /// (`[directory]` in their shard.toml), game clients list them and pick one (TCP).
    Directory(p2pmodel_servers::directory::DirectoryArgs),
    /// Print the shard's directory key as a line for the directory's keys file
    /// (`name = "<64 hex>"`): derived from the shard secret, or `directory.key`.
    DirectoryKey {
        /// The shard configuration (with the shard secret).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Fuzz every decoder and network entry point for a while; prints execs and crashes.
    #[command(long_about = p2pmodel_servers::fuzz::LONG_ABOUT)]
    Fuzz(p2pmodel_servers::fuzz::FuzzArgs),
    /// Measure a component's performance (not a test: prints figures and a summary line).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("mode").args(["show_public", "hash_password"]))]
struct SecretArgs {
    /// Print only the login public key of the shard configured in --config (64 hex digits).
    #[arg(long, requires = "config")]
    show_public: bool,
    /// The shard configuration (with --show-public).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Read a password from stdin (first line) and print its argon2id hash (PHC string),
    /// for a `name = "<hash>"` line of an accounts file (`agent.accounts = "file:..."`).
    #[arg(long)]
    hash_password: bool,
}

#[derive(Subcommand, Debug)]
enum ShardRole {
    /// The Punch/Relay server: STUN on the primary and alternate ports, and the
    /// token-authenticated UDP relay (see docs/OPERATIONS.md).
    Relay {
        /// The shard configuration (see assets/shard.toml for every key); `[relay] key` is
        /// enough, the shard secret is not needed.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Data-plane threads (overrides `relay.threads`; 0 = one per CPU).
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u16).range(0..=p2pmodel_servers::relay::steer::MAX_THREADS as i64))]
        threads: Option<u16>,
    },
    /// Every role of the shard in one process: relay, Agent (+ login service), Lobby and
    /// every Game server. Prints what listens where.
    All {
        /// The shard configuration (see assets/shard.toml for every key).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Bind every role to this IP (overrides `shard.bind`).
        #[arg(long, value_name = "IP")]
        bind: Option<std::net::IpAddr>,
        /// The IP clients reach this host at (overrides `shard.public_addresses`).
        #[arg(long, value_name = "IP")]
        public_ip: Option<std::net::IpAddr>,
    },
    /// The Agent (and login service) alone; connects to the Lobby at `lobby.internal`.
    Agent {
        /// The shard configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Connect to the Lobby here instead of `lobby.internal`; a host name (a Kubernetes
        /// Service) is resolved once at startup.
        #[arg(long, value_name = "HOST:PORT")]
        lobby: Option<String>,
    },
    /// The Lobby alone; listens for internal links at `lobby.internal`. Start it first.
    Lobby {
        /// The shard configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Game servers; connect to the Lobby at `lobby.internal`.
    Game {
        /// The shard configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Which Game servers (numbers, comma-separated; default: all of the shard).
        #[arg(long, value_delimiter = ',')]
        games: Vec<u32>,
        /// Connect to the Lobby here instead of `lobby.internal`; a host name (a Kubernetes
        /// Service) is resolved once at startup.
        #[arg(long, value_name = "HOST:PORT")]
        lobby: Option<String>,
        /// Run as an Agones GameServer: Ready, wait for an allocation naming the Game servers
        /// (annotation `p2pmodel.dev/games`, else --games), Health from the tick, the players
        /// Counter, drain and Shutdown on SIGTERM (docs/OPERATIONS.md).
        #[cfg(feature = "agones")]
        #[arg(long)]
        agones: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Our relay vs coturn (TURN ChannelData) vs a raw recvmmsg→sendmmsg forwarder, on
    /// loopback, same flows and sizes; the last line is a `summary:` for scripts.
    Relay(p2pmodel_servers::bench::RelayBenchArgs),
    /// N clients (shard connection + P2P mesh each, driven in one process without Bevy)
    /// against an in-process shard (`shard all`): server bytes/s per role, offload ratio
    /// P2P on vs off, Game tick and routing latency, direct/relayed shares, CPU and RSS. The
    /// last line is a `summary:` for scripts. `--sweep 100,500,1000 --plot DIR` for scaling.
    Shard(p2pmodel_servers::bench::ShardBenchArgs),
}

fn load(path: &std::path::Path) -> Result<ShardConfig, ExitCode> {
    ShardConfig::load(path).map_err(|e| {
        eprintln!("p2pmodel: bad configuration: {e}");
        ExitCode::from(2)
    })
}

fn run_relay(config: &RelayRoleConfig) -> ExitCode {
    match p2pmodel_servers::relay::run_relay(config) {
        Ok(exit) if exit.is_success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("p2pmodel: relay failed to start: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config with `--lobby` applied (a host name is resolved here, once).
fn load_role(config: &std::path::Path, lobby: Option<&str>) -> Result<ShardConfig, ExitCode> {
    let mut c = load(config)?;
    if let Some(lobby) = lobby {
        use std::net::ToSocketAddrs as _;
        match lobby.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => c.lobby.internal = addr,
            Ok(None) | Err(_) => {
                eprintln!("p2pmodel: --lobby {lobby}: cannot resolve it to an address (HOST:PORT)");
                return Err(ExitCode::from(2));
            }
        }
    }
    Ok(c)
}

fn run_role(config: &std::path::Path, lobby: Option<&str>, role: RoleArg) -> ExitCode {
    let c = match load_role(config, lobby) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let role = match role {
        RoleArg::Agent => p2pmodel_servers::shard::SplitRole::Agent,
        RoleArg::Lobby => p2pmodel_servers::shard::SplitRole::Lobby,
        RoleArg::Games(g) => p2pmodel_servers::shard::SplitRole::Games(g),
    };
    match p2pmodel_servers::shard::run_role(&c, role) {
        Ok(exit) if exit.is_success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("p2pmodel: shard role failed to start: {e}");
            ExitCode::FAILURE
        }
    }
}

enum RoleArg {
    Agent,
    Lobby,
    Games(Vec<u32>),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Fuzz(args) => p2pmodel_servers::fuzz::main(&args),
        Command::Netcheck(args) => report(p2pmodel_servers::netcheck::run(&args)),
        Command::Stun(args) => report(p2pmodel_servers::netcheck::serve_stun(&args)),
        Command::Shard { role: ShardRole::Relay { config, threads } } => match RelayRoleConfig::load(&config)
        {
            Ok(mut c) => {
                if let Some(n) = threads {
                    c.relay.threads = usize::from(n);
                }
                run_relay(&c)
            }
            Err(e) => {
                eprintln!("p2pmodel: bad configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::RelayKey { config, id } => match load(&config) {
            Ok(c) => {
                println!("{}", p2pmodel_servers::relay::RelayKey::derive_for(&c.shard.secret, id).to_hex());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Shard { role: ShardRole::All { config, bind, public_ip } } => match load(&config) {
            Ok(mut c) => {
                if let Some(ip) = bind {
                    c.set_bind(ip);
                }
                if let Some(ip) = public_ip {
                    c.shard.public_addresses = vec![ip];
                }
                match p2pmodel_servers::shard::run_all(&c) {
                    Ok(exit) if exit.is_success() => ExitCode::SUCCESS,
                    Ok(_) => ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("p2pmodel: shard failed to start: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(code) => code,
        },
        Command::Shard { role: ShardRole::Agent { config, lobby } } => {
            run_role(&config, lobby.as_deref(), RoleArg::Agent)
        }
        Command::Shard { role: ShardRole::Lobby { config } } => run_role(&config, None, RoleArg::Lobby),
        #[cfg(feature = "agones")]
        Command::Shard { role: ShardRole::Game { config, games, lobby, agones: true } } => {
            match load_role(&config, lobby.as_deref()) {
                Ok(c) => match p2pmodel_servers::agones::run_game(&c, &games) {
                    Ok(exit) if exit.is_success() => ExitCode::SUCCESS,
                    Ok(_) => ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("p2pmodel: agones: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(code) => code,
            }
        }
        Command::Shard { role: ShardRole::Game { config, games, lobby, .. } } => {
            run_role(&config, lobby.as_deref(), RoleArg::Games(games))
        }
        Command::Token { config, client_id, name } => match load(&config) {
            Ok(c) => {
                if !p2pmodel_servers::shard::keys::valid_name(&name) {
                    eprintln!("p2pmodel: --name must be 1-32 letters, digits, '-' or '_'");
                    return ExitCode::from(2);
                }
                let agent = p2pmodel_servers::shard::public_addr(&c, c.agent.addr);
                match p2pmodel_servers::shard::minter(&c, agent).mint(client_id, &name) {
                    Ok(t) => {
                        let mut b = Vec::new();
                        let _ = t.write(&mut b);
                        println!("{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("p2pmodel: cannot mint a token: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(code) => code,
        },
        Command::Secret(args) => secret(&args),
        Command::Directory(args) => match p2pmodel_servers::directory::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("p2pmodel: directory: {e}");
                ExitCode::from(2)
            }
        },
        Command::DirectoryKey { config } => match load(&config) {
            Ok(c) => {
                let key = p2pmodel_servers::directory::heartbeat::directory_key(&c);
                println!("\"{}\" = \"{}\"", c.shard.name, key.to_hex());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Bench { what: BenchWhat::Shard(args) } => {
            match p2pmodel_servers::bench::run_shard_bench(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("p2pmodel: bench shard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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

fn secret(args: &SecretArgs) -> ExitCode {
    use p2pmodel_servers::shard::login::{hash_password, login_public_key};
    if args.show_public {
        let Some(path) = &args.config else { return ExitCode::from(2) };
        return match load(path) {
            Ok(c) => {
                println!("{}", login_public_key(&c.shard.secret));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        };
    }
    if args.hash_password {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("p2pmodel: cannot read the password from stdin: {e}");
            return ExitCode::FAILURE;
        }
        let password = line.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            eprintln!(
                "p2pmodel: empty password (give it on stdin: `echo -n 'pw' | p2pmodel secret --hash-password`)"
            );
            return ExitCode::from(2);
        }
        return match hash_password(password) {
            Ok(h) => {
                println!("{h}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("p2pmodel: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let secret = p2pmodel_servers::config::random_secret();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // Written, not println!: `p2pmodel secret | head -1` must not panic on a closed pipe.
    use std::io::Write as _;
    let key = login_public_key(&secret);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "secret = \"{hex}\"\n# login public key (clients pin it, as KEY@HOST:PORT): {key}");
    ExitCode::SUCCESS
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
