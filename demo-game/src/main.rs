//! The P2PModel demo MMO client (`p2pmodel-demo --help`; docs/DEMO.md).
//!
//! - [`cli`]: flags and their checks.
//! - [`embedded`]: the local shard started in this process when no `--server` is given.
//! - [`directory`]: `--directory`: list the shards and choose one.
//! - [`net`]: the plugin plus what every demo client sends and counts.
//! - [`wire`]: the messages demo clients send each other.
//! - [`counter`]: reliable gap and duplicate counting.
//! - [`bot`]: the bot's walk, its reports, the headless runner.
//! - [`json`]: the `--json` line format (a public interface).
//! - [`game`]: the window.

mod bot;
mod cli;
mod counter;
mod directory;
mod embedded;
mod game;
mod json;
mod net;
mod wire;

use bevy_p2pmodel::client::login::ShardAddress;
use std::process::ExitCode;

use bevy::app::App;
use bevy::log::LogPlugin;
use bevy::prelude::Vec2;
use clap::Parser;

use bot::{BotReporting, bot_app, bot_names, run_bots};
use cli::{Cli, Mode, Settings, ShardChoice};
use net::{MeshBoard, NetFailure, NetSettings};

/// Exit code for a run that failed.
const EXIT_FAILED: u8 = 1;
/// Exit code for bad arguments or no display (clap uses 2 for its errors too).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let settings = match Cli::parse().settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("p2pmodel-demo: {e}\n(see p2pmodel-demo --help)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if matches!(settings.mode, Mode::Window { .. })
        && let Some(problem) = game::display_problem()
    {
        eprintln!("p2pmodel-demo: cannot open the game window: {problem}");
        return ExitCode::from(EXIT_USAGE);
    }
    init_logging();
    if matches!(settings.mode, Mode::Window { .. }) {
        install_display_panic_hook();
    }
    let mut shards = None;
    let login = match (&settings.directory, settings.shard) {
        (Some(d), _) => match directory::choose(&d.addr, &d.region, d.shard.as_deref()) {
            Ok(c) => {
                shards = Some(format!("shards at {}:\n{}", d.addr, directory::render(&c)));
                match settings.mode {
                    Mode::Headless { json: true, .. } => {
                        println!("{}", json::JsonLine { event: directory::event(&c), bot: None }.to_line())
                    }
                    _ => println!("shards listed by {}:\n{}", d.addr, directory::render(&c)),
                }
                c.login
            }
            Err(e) => {
                eprintln!("p2pmodel-demo: --directory {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        },
        (None, ShardChoice::Remote(addr)) => addr,
        (None, ShardChoice::Embedded) => match embedded::start() {
            Ok(shard) => shard.login,
            Err(e) => {
                eprintln!("p2pmodel-demo: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        },
    };
    match settings.mode.clone() {
        Mode::Headless { bots, json } => run_headless(&settings, login, bots, json),
        Mode::Window { bots, auto, screenshot } => {
            run_window(&settings, login, bots, auto, screenshot, shards)
        }
    }
}

/// Bevy's LogPlugin (stderr, `RUST_LOG` filter) installed once for the whole process: the
/// window, the bots and the embedded shard all log through it.
fn init_logging() {
    let mut app = App::new();
    app.add_plugins(LogPlugin {
        filter: "info,wgpu=error,naga=warn,bevy_render=warn,bevy_winit=warn,offset_allocator=warn".into(),
        ..Default::default()
    });
}

/// winit panics when it cannot reach the display after all (the check above passed): say so
/// and exit 2 instead of printing a panic.
fn install_display_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or_default();
        let lower = msg.to_lowercase();
        if ["event loop", "display", "x11", "xlib", "winit", "no suitable adapter"]
            .iter()
            .any(|k| lower.contains(k))
        {
            eprintln!(
                "p2pmodel-demo: cannot open the game window: {msg}\n\
                 Run under an X server (e.g. `xvfb-run -a p2pmodel-demo ...`) or use `--headless --bot`."
            );
            std::process::exit(i32::from(EXIT_USAGE));
        }
        default_hook(info);
    }));
}

fn net_settings(s: &Settings, login: ShardAddress, name: String) -> NetSettings {
    NetSettings {
        name,
        login,
        p2p: s.p2p,
        keepalive: s.keepalive,
        zone: s.zone,
        exit_after: s.exit_after,
        pause: s.pause,
        spawn: s.spawn.map(|(x, y)| Vec2::new(x, y)),
        max_silence: s.max_silence,
    }
}

fn run_headless(s: &Settings, login: ShardAddress, bots: usize, json: bool) -> ExitCode {
    let names = bot_names(&s.name, bots);
    let apps: Vec<App> = names
        .iter()
        .map(|n| {
            let label = (bots > 1).then(|| n.clone());
            bot_app(net_settings(s, login, n.clone()), Some(BotReporting { json, label }), None)
        })
        .collect();
    let (exits, apps) = run_bots(apps);
    let mut ok = true;
    for ((exit, app), name) in exits.iter().zip(&apps).zip(&names) {
        if !exit.is_success() {
            ok = false;
            let why = app.world().get_resource::<NetFailure>().and_then(|f| f.0.clone());
            eprintln!("p2pmodel-demo: bot {name} failed: {}", why.unwrap_or_else(|| format!("{exit:?}")));
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) }
}

fn run_window(
    s: &Settings,
    login: ShardAddress,
    bots: usize,
    auto: bool,
    screenshot: Option<std::path::PathBuf>,
    shards: Option<String>,
) -> ExitCode {
    let board = MeshBoard::default();
    if bots > 0 {
        // Background bots on their own thread; they run until the process ends.
        let names = bot_names("bot", bots);
        let mut bot_settings = s.clone();
        bot_settings.exit_after = None;
        let board = board.clone();
        let spawned = std::thread::Builder::new().name("bots".into()).spawn(move || {
            let apps = names
                .into_iter()
                .map(|n| bot_app(net_settings(&bot_settings, login, n), None, Some(board.clone())))
                .collect();
            let _ = run_bots(apps);
        });
        if let Err(e) = spawned {
            eprintln!("p2pmodel-demo: cannot start the bot thread: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    }
    let options = game::GameOptions { auto, screenshot, board, shards };
    match game::run(net_settings(s, login, s.name.clone()), options) {
        game::GameEnd::Ok => ExitCode::SUCCESS,
        game::GameEnd::Failed(why) => {
            eprintln!("p2pmodel-demo: {why}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
