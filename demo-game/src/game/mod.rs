//! The game window: a top-down 2D world.
//!
//! - [`world`]: players (coloured circles with name tags), NPCs, the grid, and the P2P mesh
//!   drawn with gizmos (a line per link, coloured by path).
//! - [`ui`]: the network panel (NAT, peers' paths and RTT, server vs P2P bytes/s), the chat
//!   panel and its input line, the key help; the FPS overlay is Bevy's.
//! - [`shot`]: `--screenshot FILE`: capture, check the pixels, save, exit.
//!
//! Steering: the keyboard (WASD / arrows), or with `--bot` the bot's walk.

pub mod shot;
pub mod ui;
pub mod world;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bevy::dev_tools::fps_overlay::{FpsOverlayConfig, FpsOverlayPlugin, FrameTimeGraphConfig};
use bevy::log::LogPlugin;
use bevy::prelude::*;
use bevy::window::{PresentMode, WindowResolution};

use crate::bot::BotWalkPlugin;
use crate::net::{DemoNetPlugin, MeshBoard, NetFailure, NetSettings, NetSystems, RunClock};

/// Window size at start.
pub const WINDOW: (u32, u32) = (1024, 768);

/// Why the window cannot open, checked before anything starts: `Some(message)` when there is
/// no X display to talk to.
pub fn display_problem() -> Option<String> {
    let display = std::env::var("DISPLAY").unwrap_or_default();
    let wayland = std::env::var("WAYLAND_DISPLAY").unwrap_or_default();
    let hint = "run under an X server (e.g. `xvfb-run -a p2pmodel-demo ...`) or use `--headless --bot`";
    if display.is_empty() {
        return Some(if wayland.is_empty() {
            format!("no display: neither DISPLAY nor WAYLAND_DISPLAY is set; {hint}")
        } else {
            format!(
                "this build draws through X11 and DISPLAY is not set (Wayland only, no XWayland?); {hint}"
            )
        });
    }
    // ":N" / "unix:N" means the local socket /tmp/.X11-unix/XN: check that something listens.
    let local = display.strip_prefix("unix").unwrap_or(&display);
    if let Some(rest) = local.strip_prefix(':') {
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let socket = format!("/tmp/.X11-unix/X{n}");
        if !n.is_empty() && std::os::unix::net::UnixStream::connect(&socket).is_err() {
            return Some(format!("no X server answers on DISPLAY={display} ({socket}); {hint}"));
        }
    }
    None
}

/// What the window needs besides the network settings.
pub struct GameOptions {
    /// The bot steers the local player (`--bot`).
    pub auto: bool,
    /// `--screenshot FILE`.
    pub screenshot: Option<PathBuf>,
    /// The in-process mesh board (background bots post their links there).
    pub board: MeshBoard,
    /// `--directory`: the server list the directory gave, the chosen shard marked (shown in
    /// a panel of the window).
    pub shards: Option<String>,
}

/// How the window's run ended.
#[derive(Debug)]
pub enum GameEnd {
    /// Closed or `--exit-after` elapsed.
    Ok,
    /// The network run failed, or the screenshot check.
    Failed(String),
}

/// Build and run the window until it closes. Logging is already set up by the caller.
pub fn run(settings: NetSettings, options: GameOptions) -> GameEnd {
    let mut app = App::new();
    let title = format!("P2PModel demo — {}", settings.name);
    app.add_plugins(
        DefaultPlugins
            .set(WindowPlugin {
                primary_window: Some(Window {
                    title,
                    resolution: WindowResolution::new(WINDOW.0, WINDOW.1),
                    present_mode: PresentMode::AutoNoVsync,
                    ..default()
                }),
                ..default()
            })
            .disable::<LogPlugin>(),
    )
    .add_plugins(FpsOverlayPlugin {
        config: FpsOverlayConfig {
            text_config: TextFont::from_font_size(18.0),
            frame_time_graph_config: FrameTimeGraphConfig {
                enabled: false,
                ..FrameTimeGraphConfig::target_fps(60.0)
            },
            ..default()
        },
    })
    .insert_resource(ClearColor(world::BACKGROUND))
    .add_plugins(DemoNetPlugin { settings, board: Some(options.board.clone()) })
    .insert_resource(ui::ServerList(options.shards.clone()))
    .add_plugins((world::WorldPlugin, ui::UiPlugin));
    if options.auto {
        app.add_plugins(BotWalkPlugin);
    } else {
        app.add_systems(Update, ui::steer_with_keys.before(NetSystems));
    }
    match options.screenshot {
        Some(path) => {
            app.add_plugins(shot::ScreenshotPlugin { path });
        }
        None => {
            app.add_systems(Update, exit_when_done.after(NetSystems));
        }
    }
    // `App::run` hands the App to the winit runner: what went wrong comes back through here.
    let report = GameReport::default();
    app.insert_resource(report.clone()).add_systems(Last, keep_report);
    let exit = app.run();
    let failure = report.0.lock().ok().and_then(|r| r.clone());
    match (exit, failure) {
        (_, Some(why)) => GameEnd::Failed(why),
        (AppExit::Success, None) => GameEnd::Ok,
        (AppExit::Error(code), None) => GameEnd::Failed(format!("the game ended with error {code}")),
    }
}

/// Why the window's run failed, shared with [`run`].
#[derive(Resource, Clone, Default)]
struct GameReport(Arc<Mutex<Option<String>>>);

fn keep_report(report: Res<GameReport>, failure: Res<NetFailure>, shot: Option<Res<shot::ShotResult>>) {
    let why = failure.0.clone().or_else(|| match shot.as_deref().and_then(|s| s.0.clone()) {
        Some(Err(e)) => Some(format!("screenshot check failed: {e}")),
        _ => None,
    });
    if let Some(why) = why
        && let Ok(mut r) = report.0.lock()
        && r.is_none()
    {
        *r = Some(why);
    }
}

fn exit_when_done(clock: Res<RunClock>, mut exit: MessageWriter<AppExit>) {
    if clock.done {
        exit.write(AppExit::Success);
    }
}
