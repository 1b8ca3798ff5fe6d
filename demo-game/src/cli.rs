//! The command line: clap parses, [`Cli::settings`] checks the combinations and names the
//! problem when one does not make sense.

use bevy_p2pmodel::client::login::ShardAddress;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How many background bots join the embedded local shard in the windowed game by default.
pub const DEFAULT_WINDOW_BOTS: usize = 4;

/// `p2pmodel-demo`: the P2PModel demo MMO client.
#[derive(Debug, Parser)]
#[command(
    name = "p2pmodel-demo",
    version,
    about = "The P2PModel demo MMO: players meet in a shard and talk over a P2P mesh (hole punching, relay fallback).",
    long_about = "The P2PModel demo MMO: players meet in a shard and talk over a P2P mesh \
(hole punching, relay fallback).\n\n\
With no arguments it starts a local shard in this process (relay + Agent, Lobby and Game \
servers on 127.0.0.1), adds 4 bot players and opens the game window: move with WASD or the \
arrow keys, press Enter to chat. Lines between players are P2P links: green direct, orange \
relayed, grey connecting, red lost.\n\n\
`--headless --bot` plays without a window (for tests and the netlab); `--json` then prints \
one JSON object per line on stdout (format: docs/DEMO.md).\n\n\
Exit codes: 0 ok, 1 a run that failed (shard unreachable, a bot saw gaps or duplicates), \
2 bad arguments or no display.",
    after_help = "Examples:\n  p2pmodel-demo                                   # play on a local shard with 4 bots\n  \
p2pmodel-demo --server KEY@203.0.113.5:7001 --name ana   # join a remote shard\n  \
p2pmodel-demo --headless --bot --bots 2 --json --exit-after 6\n  \
p2pmodel-demo --screenshot shot.png --exit-after 8"
)]
pub struct Cli {
    /// Join the shard whose login service listens at HOST:PORT, pinned to its login key
    /// KEY (64 hex digits, printed by `p2pmodel shard all` and `p2pmodel secret
    /// --show-public`), instead of starting an embedded local shard.
    #[arg(long, value_name = "KEY@HOST:PORT", value_parser = parse_shard)]
    pub server: Option<ShardAddress>,
    /// Ask the directory at HOST:PORT (`p2pmodel directory`) which shards exist and join one:
    /// --shard NAME, else the least loaded (the list is printed; bots print `shard_chosen`).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "server")]
    pub directory: Option<String>,
    /// With --directory: list only this region's shards.
    #[arg(long, value_name = "REGION", requires = "directory")]
    pub region: Option<String>,
    /// With --directory: join this shard instead of the least loaded.
    #[arg(long, value_name = "NAME", requires = "directory")]
    pub shard: Option<String>,
    /// Player name (default "player", or "bot"; with --bots N each bot gets "-1".."-N"
    /// appended). On a remote shard the default gets a random suffix.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,
    /// Run without a window or renderer (needs --bot).
    #[arg(long)]
    pub headless: bool,
    /// Let the bot play: log in, wander near the spawn point, send sequence-numbered
    /// reliable (10/s) and unreliable (20/s) messages to every peer and count gaps and
    /// duplicates.
    #[arg(long)]
    pub bot: bool,
    /// Bots to run in this process: with --headless, N bots (default 1); in the window,
    /// background bots beside you (default 4 on the embedded shard, 0 on a remote one).
    #[arg(long, value_name = "N")]
    pub bots: Option<usize>,
    /// Print one JSON object per line on stdout (with --headless --bot; docs/DEMO.md).
    #[arg(long)]
    pub json: bool,
    /// Where the bot lives: after entering the zone it walks to X,Y (at the speed limit)
    /// and wanders around it. Default: where the shard put it.
    #[arg(long, value_name = "X,Y", value_parser = parse_spawn, allow_hyphen_values = true)]
    pub spawn: Option<(f32, f32)>,
    /// Exit after this many seconds (bots stop sending for the last second so the counts
    /// are final).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, allow_hyphen_values = true)]
    pub exit_after: Option<Duration>,
    /// `off`: send every message through the Game server (no P2P links), for comparison.
    #[arg(long, value_enum, default_value_t = OnOff::On, value_name = "on|off")]
    pub p2p: OnOff,
    /// `off`: no link keepalives or relay refreshes (shows NAT binding timeouts, TC-05).
    #[arg(long, value_enum, default_value_t = OnOff::On, value_name = "on|off")]
    pub keepalive: OnOff,
    /// Save a screenshot of the window to FILE (PNG) when --exit-after elapses, then exit.
    #[arg(long, value_name = "FILE", requires = "exit_after")]
    pub screenshot: Option<PathBuf>,
    /// Zone to enter.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub zone: u32,
    /// Stop sending to peers this many seconds after start (for --pause-for seconds): an
    /// idle session, to show NAT binding timeouts with and without keepalive (TC-05).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, requires = "pause_for")]
    pub pause_at: Option<Duration>,
    /// How long the pause started by --pause-at lasts.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, requires = "pause_at")]
    pub pause_for: Option<Duration>,
    /// A bot fails when a live peer delivers nothing for longer than this: well above a
    /// failover (< 1 s), far below "this pair stopped talking" (raise it when a test cuts a
    /// network on purpose).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, default_value = "5")]
    pub max_silence: Duration,
}

/// A switch given as `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Which shard to play on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardChoice {
    /// Start one in this process on 127.0.0.1.
    Embedded,
    /// The login service of a running shard, and its pinned key.
    Remote(ShardAddress),
}

/// `--directory` and its filters: resolved into a [`ShardChoice::Remote`] at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryChoice {
    /// The directory, `HOST:PORT`.
    pub addr: String,
    /// Region filter (empty: all).
    pub region: String,
    /// A shard by name (else the least loaded).
    pub shard: Option<String>,
}

/// Windowed or not.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// The game window, with `bots` background bots; `auto`: the bot steers you.
    Window {
        /// Background bots in this process.
        bots: usize,
        /// The local player is steered by the bot logic (`--bot`).
        auto: bool,
        /// Save a screenshot here at exit.
        screenshot: Option<PathBuf>,
    },
    /// No window: `bots` bots, JSON lines on stdout when `json`.
    Headless {
        /// Bots in this process (at least 1).
        bots: usize,
        /// `--json`.
        json: bool,
    },
}

/// Everything the run needs, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Which shard.
    pub shard: ShardChoice,
    /// `--directory`: choose the shard from a directory at start (then `shard` is replaced).
    pub directory: Option<DirectoryChoice>,
    /// Windowed or headless.
    pub mode: Mode,
    /// The player's (or first bot's base) name.
    pub name: String,
    /// `--spawn`.
    pub spawn: Option<(f32, f32)>,
    /// `--exit-after`.
    pub exit_after: Option<Duration>,
    /// `--p2p`.
    pub p2p: bool,
    /// `--keepalive`.
    pub keepalive: bool,
    /// `--zone`.
    pub zone: u32,
    /// `--pause-at`, `--pause-for`: no peer traffic in this window after the start.
    pub pause: Option<(Duration, Duration)>,
    /// `--max-silence`.
    pub max_silence: Duration,
}

impl Cli {
    /// Check the flags together; the error names the problem and the fix.
    pub fn settings(self) -> Result<Settings, String> {
        let directory = self.directory.map(|addr| DirectoryChoice {
            addr,
            region: self.region.unwrap_or_default(),
            shard: self.shard,
        });
        // Not the embedded shard: the directory names a remote one (the key is a placeholder
        // until the list is read).
        let shard = match (self.server, &directory) {
            (Some(s), _) => ShardChoice::Remote(s),
            (None, Some(_)) => ShardChoice::Remote(ShardAddress::new(
                std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                bevy_p2pmodel::client::login::LoginKey([0; 32]),
            )),
            (None, None) => ShardChoice::Embedded,
        };
        if self.headless && !self.bot {
            return Err("--headless needs --bot: without a window nobody steers the player".into());
        }
        if self.json && !self.headless {
            return Err("--json needs --headless --bot: the JSON lines describe headless bots".into());
        }
        if self.screenshot.is_some() && self.headless {
            return Err("--screenshot needs the window: drop --headless".into());
        }
        let mode = if self.headless {
            let bots = self.bots.unwrap_or(1);
            if bots == 0 {
                return Err("--bots must be at least 1 with --headless".into());
            }
            Mode::Headless { bots, json: self.json }
        } else {
            let default = if shard == ShardChoice::Embedded { DEFAULT_WINDOW_BOTS } else { 0 };
            Mode::Window { bots: self.bots.unwrap_or(default), auto: self.bot, screenshot: self.screenshot }
        };
        if let Mode::Headless { bots, .. } | Mode::Window { bots, .. } = mode
            && bots > 64
        {
            return Err(format!("--bots {bots} is too many for one process (at most 64)"));
        }
        let name = match (self.name, shard) {
            (Some(n), _) => n,
            (None, ShardChoice::Embedded) => if self.headless { "bot" } else { "player" }.to_string(),
            (None, ShardChoice::Remote(_)) => {
                let base = if self.headless { "bot" } else { "player" };
                format!("{base}-{:04x}", rand::random::<u16>())
            }
        };
        Ok(Settings {
            shard,
            directory,
            mode,
            name,
            spawn: self.spawn,
            exit_after: self.exit_after,
            p2p: self.p2p == OnOff::On,
            keepalive: self.keepalive == OnOff::On,
            zone: self.zone,
            pause: self.pause_at.zip(self.pause_for),
            max_silence: self.max_silence,
        })
    }
}

fn parse_shard(s: &str) -> Result<ShardAddress, String> {
    bevy_p2pmodel::client::login::resolve_shard_address(s)
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().count() > 24 {
        return Err("a name has 1 to 24 characters".into());
    }
    if !s.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("{s:?}: use letters, digits, '-', '_' or '.'"));
    }
    Ok(s.to_string())
}

fn parse_spawn(s: &str) -> Result<(f32, f32), String> {
    let bad = || format!("{s:?} is not X,Y (two numbers, e.g. 10,-5)");
    let (x, y) = s.split_once(',').ok_or_else(bad)?;
    let x: f32 = x.trim().parse().map_err(|_| bad())?;
    let y: f32 = y.trim().parse().map_err(|_| bad())?;
    if !x.is_finite() || !y.is_finite() || x.abs() > 1e6 || y.abs() > 1e6 {
        return Err(format!("{s:?}: coordinates must be finite and within ±1000000"));
    }
    Ok((x, y))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > 1e7 {
        return Err(format!("{s:?}: seconds must be more than 0"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "3f00000000000000000000000000000000000000000000000000000000000001";

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("p2pmodel-demo").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.settings()
    }

    #[test]
    fn no_arguments_is_the_window_on_an_embedded_shard_with_four_bots() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.shard, ShardChoice::Embedded);
        assert_eq!(s.mode, Mode::Window { bots: DEFAULT_WINDOW_BOTS, auto: false, screenshot: None });
        assert!(s.p2p && s.keepalive);
    }

    #[test]
    fn a_pause_needs_both_its_start_and_its_length() {
        let s = parse(&["--headless", "--bot", "--pause-at", "6", "--pause-for", "30"]).unwrap();
        assert_eq!(s.pause, Some((Duration::from_secs(6), Duration::from_secs(30))));
        let e = parse(&["--headless", "--bot", "--pause-at", "6"]).unwrap_err();
        assert!(e.contains("--pause-for"), "{e}");
        assert!(parse(&["--headless", "--bot", "--pause-at", "x", "--pause-for", "1"]).is_err());
    }

    #[test]
    fn headless_bot_flags_parse() {
        let s = parse(&[
            "--headless",
            "--bot",
            "--bots",
            "2",
            "--json",
            "--exit-after",
            "6",
            "--spawn",
            "-10,2.5",
            "--p2p",
            "off",
            "--keepalive",
            "off",
            "--server",
            &format!("{KEY}@127.0.0.1:7001"),
            "--name",
            "ana",
        ])
        .unwrap();
        assert_eq!(s.mode, Mode::Headless { bots: 2, json: true });
        assert_eq!(s.shard, ShardChoice::Remote(format!("{KEY}@127.0.0.1:7001").parse().unwrap()));
        assert_eq!(s.spawn, Some((-10.0, 2.5)));
        assert_eq!(s.exit_after, Some(Duration::from_secs(6)));
        assert!(!s.p2p && !s.keepalive);
        assert_eq!(s.name, "ana");
    }

    #[test]
    fn bad_values_name_the_problem() {
        let cases: &[(&[&str], &str)] = &[
            (&["--server", "nowhere"], "KEY@HOST:PORT"),
            (&["--server", "127.0.0.1:7001"], "KEY@HOST:PORT"),
            (&["--spawn", "1;2"], "not X,Y"),
            (&["--spawn", "a,2"], "not X,Y"),
            (&["--exit-after", "-1"], "more than 0"),
            (&["--exit-after", "soon"], "not a number"),
            (&["--p2p", "maybe"], "maybe"),
            (&["--name", "has space"], "letters, digits"),
            (&["--bots", "many"], "many"),
            (&["--headless"], "--headless needs --bot"),
            (&["--json"], "--json needs --headless"),
            (&["--headless", "--bot", "--bots", "0"], "at least 1"),
            (&["--headless", "--bot", "--screenshot", "x.png", "--exit-after", "1"], "needs the window"),
            (&["--screenshot", "x.png"], "--exit-after"),
            (&["--frobnicate"], "--frobnicate"),
        ];
        for (args, want) in cases {
            let err = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert!(err.contains(want), "{args:?}: {err:?} should mention {want:?}");
        }
    }

    #[test]
    fn remote_shards_get_a_random_default_name_and_no_background_bots() {
        let s = parse(&["--server", &format!("{KEY}@127.0.0.1:7001")]).unwrap();
        assert!(s.name.starts_with("player-"), "{}", s.name);
        assert_eq!(s.mode, Mode::Window { bots: 0, auto: false, screenshot: None });
    }

    #[test]
    fn a_directory_replaces_the_server_and_takes_a_region_and_a_shard() {
        let s = parse(&["--directory", "dir.example.com:7200", "--region", "eu", "--shard", "eu-2"]).unwrap();
        let d = s.directory.unwrap();
        assert_eq!(
            (d.addr.as_str(), d.region.as_str(), d.shard.as_deref()),
            ("dir.example.com:7200", "eu", Some("eu-2"))
        );
        assert!(matches!(s.shard, ShardChoice::Remote(_)) && s.name.starts_with("player-"));
        let both =
            parse(&["--directory", "d:7200", "--server", &format!("{KEY}@127.0.0.1:7001")]).unwrap_err();
        assert!(both.contains("--server"), "{both}");
        assert!(parse(&["--region", "eu"]).unwrap_err().contains("--directory"));
    }

    #[test]
    fn help_explains_every_flag() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in
            ["--server", "--headless", "--bot", "--bots", "--json", "--spawn", "--exit-after", "--p2p"]
        {
            assert!(help.contains(flag), "--help mentions {flag}");
        }
        assert!(help.contains("WASD"));
    }
}
