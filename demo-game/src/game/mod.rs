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
            format!("this build draws through X11 and DISPLAY is not set (Wayland only, no XWayland?); {hint}")
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
            frame_time_graph_config: FrameTimeGraphConfig { enabled: false, ..FrameTimeGraphConfig::target_fps(60.0) },
            ..default()
        },
    })
    .insert_resource(ClearColor(world::BACKGROUND))
    .add_plugins(DemoNetPlugin { settings, board: Some(options.board.clone()) })
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
    let exit = app.run();
    let failure = app.world().get_resource::<NetFailure>().and_then(|f| f.0.clone());
    let shot = app.world().get_resource::<shot::ShotResult>().and_then(|r| r.0.clone());
    match (exit, failure, shot) {
        (_, Some(why), _) => GameEnd::Failed(why),
        (_, None, Some(Err(why))) => GameEnd::Failed(why),
        (AppExit::Success, None, _) => GameEnd::Ok,
        (AppExit::Error(code), None, _) => GameEnd::Failed(format!("the game ended with error {code}")),
    }
}

fn exit_when_done(clock: Res<RunClock>, mut exit: MessageWriter<AppExit>) {
    if clock.done {
        exit.write(AppExit::Success);
    }
}
