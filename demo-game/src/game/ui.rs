//! The panels: network (top right), chat (bottom left), key help (bottom right); and the
//! keyboard: movement, and the chat line (Enter opens it, Enter sends, Esc cancels).

use std::time::{Duration, Instant};

use bevy::diagnostic::{DiagnosticPath, DiagnosticsStore};
use bevy::input::ButtonState;
use bevy::input::keyboard::{Key, KeyboardInput};
use bevy::prelude::*;
use bevy_p2pmodel::client::PeerPath as Route;
use bevy_p2pmodel::plugins::diagnostics::{
    BYTES_IN_PER_S, BYTES_OUT_PER_S, SERVER_BYTES_IN_PER_S, SERVER_BYTES_OUT_PER_S,
};
use bevy_p2pmodel::plugins::{LocalNat, P2pClient, ServerSender};

use super::world::path_color;
use crate::net::{ChatLog, MAX_SPEED, Me, NetSettings, NetSystems, Remotes};

/// Longest chat line we send (the shard keeps 200 characters).
const CHAT_MAX: usize = 200;
/// Panel refresh period.
const REFRESH: Duration = Duration::from_millis(250);
const PANEL_BG: Color = Color::srgba(0.0, 0.0, 0.0, 0.6);
const TEXT: Color = Color::srgb(0.92, 0.92, 0.92);
const DIM: Color = Color::srgb(0.6, 0.62, 0.66);

/// The panels and the chat line.
pub struct UiPlugin;

impl Plugin for UiPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<ChatInput>()
            .add_systems(Startup, setup)
            .add_systems(Update, (chat_keys.before(NetSystems), net_panel, chat_panel).chain());
    }
}

/// The shards a directory listed (`--directory`), as text with the chosen one marked: a
/// panel under the FPS counter shows it.
#[derive(Resource, Default)]
pub struct ServerList(pub Option<String>);

/// The chat line being typed (`None`: closed).
#[derive(Resource, Default)]
pub struct ChatInput(pub Option<String>);

#[derive(Component)]
struct NetPanel;

#[derive(Component)]
struct ChatPanel;

fn panel(
    top: Option<f32>,
    bottom: Option<f32>,
    left: Option<f32>,
    right: Option<f32>,
    width: f32,
) -> impl Bundle {
    (
        Node {
            position_type: PositionType::Absolute,
            top: top.map_or(Val::Auto, Val::Px),
            bottom: bottom.map_or(Val::Auto, Val::Px),
            left: left.map_or(Val::Auto, Val::Px),
            right: right.map_or(Val::Auto, Val::Px),
            width: Val::Px(width),
            padding: UiRect::all(Val::Px(8.0)),
            ..default()
        },
        BackgroundColor(PANEL_BG),
    )
}

fn setup(mut commands: Commands, shards: Option<Res<ServerList>>) {
    if let Some(list) = shards.as_ref().and_then(|s| s.0.clone()) {
        commands.spawn(panel(Some(40.0), None, Some(8.0), None, 420.0)).with_children(|p| {
            p.spawn((
                Text::new(format!("{list}(another shard: --shard NAME)")),
                TextFont::from_font_size(13.0),
                TextColor(TEXT),
            ));
        });
    }
    commands.spawn(panel(Some(8.0), None, None, Some(8.0), 330.0)).with_children(|p| {
        p.spawn((NetPanel, Text::new("network"), TextFont::from_font_size(14.0), TextColor(TEXT)));
    });
    commands.spawn(panel(None, Some(8.0), Some(8.0), None, 460.0)).with_children(|p| {
        p.spawn((ChatPanel, Text::new(""), TextFont::from_font_size(14.0), TextColor(TEXT)));
    });
    commands.spawn(panel(None, Some(8.0), None, Some(8.0), 300.0)).with_children(|p| {
        p.spawn((
            Text::new("WASD / arrows: move\nEnter: chat   Esc: cancel\nlines: P2P links\n"),
            TextFont::from_font_size(13.0),
            TextColor(DIM),
        ))
        .with_children(|t| {
            for (label, color) in [
                ("direct ", path_color(Route::Direct)),
                ("relayed ", path_color(Route::Relayed)),
                ("connecting ", path_color(Route::Connecting)),
                ("lost", path_color(Route::Lost)),
            ] {
                t.spawn((TextSpan::new(label), TextFont::from_font_size(13.0), TextColor(color)));
            }
        });
    });
}

/// WASD / arrow keys move the local player at [`MAX_SPEED`] (not while typing).
pub fn steer_with_keys(
    keys: Res<ButtonInput<KeyCode>>,
    input: Res<ChatInput>,
    mut me: ResMut<Me>,
    time: Res<Time>,
) {
    let mut dir = Vec2::ZERO;
    if input.0.is_none() && me.in_game {
        for (codes, d) in [
            ([KeyCode::KeyW, KeyCode::ArrowUp], Vec2::Y),
            ([KeyCode::KeyS, KeyCode::ArrowDown], Vec2::NEG_Y),
            ([KeyCode::KeyA, KeyCode::ArrowLeft], Vec2::NEG_X),
            ([KeyCode::KeyD, KeyCode::ArrowRight], Vec2::X),
        ] {
            if keys.any_pressed(codes) {
                dir += d;
            }
        }
    }
    me.vel = dir.normalize_or_zero() * MAX_SPEED;
    let step = me.vel * time.delta_secs().min(0.1);
    me.pos += step;
}

fn chat_keys(
    mut keys: MessageReader<KeyboardInput>,
    mut input: ResMut<ChatInput>,
    mut world: ServerSender,
    mut log: ResMut<ChatLog>,
) {
    for k in keys.read() {
        if k.state != ButtonState::Pressed {
            continue;
        }
        match (&mut input.0, &k.logical_key) {
            (None, Key::Enter) => input.0 = Some(String::new()),
            (None, _) => {}
            (Some(line), Key::Enter) => {
                let text = line.trim().to_string();
                if !text.is_empty() {
                    // To the world's server logic, which sends it to everyone in range.
                    if let Err(e) = world.send(&p2pmodel_mmo_world::Say { text }) {
                        log.push("*", format!("chat not sent: {e}"));
                    }
                }
                input.0 = None;
            }
            (Some(_), Key::Escape) => input.0 = None,
            (Some(line), Key::Backspace) => {
                line.pop();
            }
            (Some(line), Key::Space) if line.chars().count() < CHAT_MAX => line.push(' '),
            (Some(line), Key::Character(s)) if line.chars().count() < CHAT_MAX => {
                line.extend(s.chars().filter(|c| !c.is_control()));
            }
            _ => {}
        }
    }
}

fn human_rate(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB/s", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB/s", b / 1e3)
    } else {
        format!("{b:.0} B/s")
    }
}

#[allow(clippy::too_many_arguments)]
fn net_panel(
    mut commands: Commands,
    panel: Query<Entity, With<NetPanel>>,
    me: Res<Me>,
    remotes: Res<Remotes>,
    nat: Res<LocalNat>,
    client: Res<P2pClient>,
    diagnostics: Res<DiagnosticsStore>,
    settings: Res<NetSettings>,
    mut last: Local<Option<Instant>>,
) {
    let now = Instant::now();
    if last.is_some_and(|t| now - t < REFRESH) {
        return;
    }
    *last = Some(now);
    let Ok(panel) = panel.single() else { return };
    let mut spans: Vec<(String, Color)> = Vec::new();
    let who = match (me.player, me.in_game) {
        (Some(p), true) => format!("{} (#{}) in game", settings.name, p.0),
        (Some(p), false) => format!("{} (#{}) in the lobby", settings.name, p.0),
        (None, _) => format!("{}: connecting to {}", settings.name, settings.login.login),
    };
    spans.push((format!("\n{who}\n"), TEXT));
    let nat_line = match &nat.0 {
        Some(r) => format!(
            "NAT {}  public {}\n",
            r.class.as_str(),
            r.public.map_or("unknown".to_string(), |a| a.to_string())
        ),
        None if !settings.p2p => "NAT not probed (P2P off)\n".to_string(),
        None => "NAT discovering...\n".to_string(),
    };
    spans.push((nat_line, TEXT));
    let present: Vec<_> = remotes.0.iter().filter(|(_, r)| r.present).collect();
    spans.push((format!("peers {}\n", present.len()), TEXT));
    for (p, r) in present {
        let rtt =
            client.peer_rtt(*p).map_or("-".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0));
        let name: String = r.name.chars().take(14).collect();
        spans.push((format!("  {name:<14} {:<10} {rtt}\n", r.path.as_str()), path_color(r.path)));
    }
    let rate = |p: &DiagnosticPath| diagnostics.get(p).and_then(|d| d.smoothed()).unwrap_or(0.0);
    let [sin, sout, pin, pout] =
        [&SERVER_BYTES_IN_PER_S, &SERVER_BYTES_OUT_PER_S, &BYTES_IN_PER_S, &BYTES_OUT_PER_S].map(rate);
    spans.push((format!("server  in {}  out {}\n", human_rate(sin), human_rate(sout)), TEXT));
    spans.push((format!("p2p     in {}  out {}", human_rate(pin), human_rate(pout)), TEXT));
    commands.entity(panel).despawn_related::<Children>().insert(Text::new("NETWORK")).with_children(|t| {
        for (s, c) in spans {
            t.spawn((TextSpan::new(s), TextFont::from_font_size(14.0), TextColor(c)));
        }
    });
}

fn chat_panel(mut panel: Query<&mut Text, With<ChatPanel>>, chat: Res<ChatLog>, input: Res<ChatInput>) {
    if !chat.is_changed() && !input.is_changed() {
        return;
    }
    let Ok(mut text) = panel.single_mut() else { return };
    let mut s: String = chat.0.iter().map(|l| format!("{}: {}\n", l.name, l.text)).collect();
    match &input.0 {
        Some(line) => s.push_str(&format!("> {line}_")),
        None => s.push_str("(Enter to chat)"),
    }
    text.0 = s;
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_read_naturally() {
        assert_eq!(super::human_rate(12.0), "12 B/s");
        assert_eq!(super::human_rate(1500.0), "1.5 kB/s");
        assert_eq!(super::human_rate(2_500_000.0), "2.5 MB/s");
    }
}
