//! The world view: players as coloured circles with name tags, NPCs as diamonds, a grid,
//! the interest radius, and the P2P mesh as gizmo lines coloured by path.

use std::collections::HashMap;
use std::time::Instant;

use bevy::prelude::*;
use bevy_p2pmodel::client::PeerPath as Route;
use bevy_p2pmodel::proto::shard::PlayerId;

use crate::net::{Me, MeshBoard, NetSettings, NetSystems, NpcView, Remotes};

/// Screen pixels per world unit.
pub const PX: f32 = 8.0;
/// Player circle radius in world units.
pub const PLAYER_RADIUS: f32 = 1.6;
/// The shard's default interest radius (drawn around the local player).
pub const INTEREST_RADIUS: f32 = 50.0;
/// Clear colour.
pub const BACKGROUND: Color = Color::srgb(0.07, 0.08, 0.11);
/// A direct P2P path.
pub const DIRECT: Color = Color::srgb(0.15, 0.9, 0.3);
/// A path through the relay.
pub const RELAYED: Color = Color::srgb(1.0, 0.55, 0.05);
/// Introduced, no path yet.
pub const CONNECTING: Color = Color::srgb(0.55, 0.55, 0.55);
/// The peer went silent.
pub const LOST: Color = Color::srgb(0.95, 0.15, 0.15);
/// P2P off: through the Game server.
pub const SERVER: Color = Color::srgb(0.35, 0.55, 1.0);

/// The colour of a path.
pub fn path_color(path: Route) -> Color {
    match path {
        Route::Direct => DIRECT,
        Route::Relayed => RELAYED,
        Route::Connecting => CONNECTING,
        Route::Lost => LOST,
        Route::Server => SERVER,
    }
}

/// A player's colour, from its id (stable across clients).
pub fn player_color(player: PlayerId) -> Color {
    Color::hsl((player.0.wrapping_mul(67) % 360) as f32, 0.65, 0.62)
}

/// Lines of other clients' links (background bots of this process): thinner.
#[derive(Default, Reflect, GizmoConfigGroup)]
pub struct OtherLinks;

/// The world view.
pub struct WorldPlugin;

impl Plugin for WorldPlugin {
    fn build(&self, app: &mut App) {
        app.init_gizmo_group::<OtherLinks>()
            .init_resource::<Shown>()
            .add_systems(Startup, setup)
            .add_systems(Update, (sync_players, place_players, draw).chain().after(NetSystems));
    }
}

/// A drawn player (`None`: the local one).
#[derive(Component)]
struct Avatar(Option<PlayerId>);

/// Player → entity of the drawn remote players.
#[derive(Resource, Default)]
struct Shown(HashMap<PlayerId, Entity>);

#[derive(Resource)]
struct Shapes {
    circle: Handle<Mesh>,
}

fn setup(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<ColorMaterial>>,
    mut gizmo_config: ResMut<GizmoConfigStore>,
    settings: Res<NetSettings>,
) {
    commands.spawn(Camera2d);
    let (default, _) = gizmo_config.config_mut::<DefaultGizmoConfigGroup>();
    default.line.width = 3.5;
    let (other, _) = gizmo_config.config_mut::<OtherLinks>();
    other.line.width = 1.5;
    let circle = meshes.add(Circle::new(PLAYER_RADIUS * PX));
    let me = materials.add(Color::WHITE);
    spawn_avatar(&mut commands, circle.clone(), me, Avatar(None), &format!("{} (you)", settings.name));
    commands.insert_resource(Shapes { circle });
}

fn spawn_avatar(
    commands: &mut Commands,
    circle: Handle<Mesh>,
    material: Handle<ColorMaterial>,
    avatar: Avatar,
    name: &str,
) -> Entity {
    commands
        .spawn((avatar, Mesh2d(circle), MeshMaterial2d(material), Transform::from_xyz(0.0, 0.0, 1.0)))
        .with_children(|c| {
            c.spawn((
                Text2d::new(name),
                TextFont::from_font_size(14.0),
                TextColor(Color::srgb(0.9, 0.9, 0.9)),
                Transform::from_xyz(0.0, PLAYER_RADIUS * PX + 12.0, 1.0),
            ));
        })
        .id()
}

/// Spawn an avatar for every present peer that has sent its state; despawn the others.
fn sync_players(
    mut commands: Commands,
    mut shown: ResMut<Shown>,
    remotes: Res<Remotes>,
    shapes: Res<Shapes>,
    mut materials: ResMut<Assets<ColorMaterial>>,
) {
    for (player, r) in &remotes.0 {
        let visible = r.present && r.state.is_some();
        match (visible, shown.0.get(player)) {
            (true, None) => {
                let mat = materials.add(player_color(*player));
                let e =
                    spawn_avatar(&mut commands, shapes.circle.clone(), mat, Avatar(Some(*player)), &r.name);
                shown.0.insert(*player, e);
            }
            (false, Some(e)) => {
                commands.entity(*e).despawn();
                shown.0.remove(player);
            }
            _ => {}
        }
    }
}

fn place_players(
    me: Res<Me>,
    remotes: Res<Remotes>,
    mut avatars: Query<(&Avatar, &mut Transform, &mut Visibility)>,
    mut camera: Query<&mut Transform, (With<Camera2d>, Without<Avatar>)>,
) {
    let now = Instant::now();
    for (avatar, mut t, mut vis) in &mut avatars {
        let pos = match avatar.0 {
            None => me.in_game.then_some(me.pos),
            Some(p) => remotes.0.get(&p).and_then(|r| r.position(now)),
        };
        match pos {
            Some(p) => {
                t.translation = (p * PX).extend(1.0);
                *vis = Visibility::Inherited;
            }
            None => *vis = Visibility::Hidden,
        }
    }
    if let Ok(mut cam) = camera.single_mut() {
        cam.translation = (me.pos * PX).extend(cam.translation.z);
    }
}

/// A line between two players' circles (not through them).
fn link_line(a: Vec2, b: Vec2) -> Option<(Vec2, Vec2)> {
    let d = b - a;
    let len = d.length();
    let r = PLAYER_RADIUS * PX + 2.0;
    if len <= 2.0 * r {
        return None;
    }
    let u = d / len;
    Some((a + u * r, b - u * r))
}

fn draw(
    mut gizmos: Gizmos,
    mut others: Gizmos<OtherLinks>,
    me: Res<Me>,
    remotes: Res<Remotes>,
    npcs: Res<NpcView>,
    board: Option<Res<MeshBoard>>,
) {
    let now = Instant::now();
    let origin = me.pos * PX;
    // Grid every 10 units around the camera.
    let cell = 10.0 * PX;
    let snap = (origin / cell).round() * cell;
    gizmos.grid_2d(
        Isometry2d::from_translation(snap),
        UVec2::new(16, 12),
        Vec2::splat(cell),
        Color::srgb(0.13, 0.15, 0.19),
    );
    if !me.in_game {
        return;
    }
    gizmos
        .circle_2d(Isometry2d::from_translation(origin), INTEREST_RADIUS * PX, Color::srgb(0.2, 0.24, 0.32))
        .resolution(96);
    // Our links: thick.
    let mine: Vec<PlayerId> = remotes.0.iter().filter(|(_, r)| r.present).map(|(p, _)| *p).collect();
    for p in &mine {
        let r = &remotes.0[p];
        if let Some(pos) = r.position(now)
            && let Some((a, b)) = link_line(origin, pos * PX)
        {
            gizmos.line_2d(a, b, path_color(r.path));
        }
    }
    // Links between other clients of this process (background bots): thin.
    if let (Some(board), Some(me_id)) = (board, me.player)
        && let Ok(b) = board.0.lock()
    {
        for (id, entry) in b.iter().filter(|(id, e)| **id != me_id && now.duration_since(e.at).as_secs() < 2)
        {
            for (peer, path) in &entry.links {
                // Each pair once (from the lower id), and not our own links.
                if *peer == me_id || (peer < id && b.contains_key(peer)) {
                    continue;
                }
                let peer_pos =
                    b.get(peer).map(|e| e.pos).or_else(|| remotes.0.get(peer).and_then(|r| r.position(now)));
                if let Some(pp) = peer_pos
                    && let Some((a, bb)) = link_line(entry.pos * PX, pp * PX)
                {
                    others.line_2d(a, bb, path_color(*path).with_alpha(0.8));
                }
            }
        }
    }
    for npc in &npcs.0 {
        let c = Vec2::new(npc.x, npc.y) * PX;
        let iso = Isometry2d::new(c, Rot2::degrees(45.0));
        gizmos.rect_2d(iso, Vec2::splat(1.6 * PX), Color::srgb(0.95, 0.85, 0.3));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stop_at_the_circles_and_vanish_when_they_overlap() {
        let (a, b) = link_line(Vec2::ZERO, Vec2::new(200.0, 0.0)).unwrap();
        assert!(a.x > 0.0 && b.x < 200.0);
        assert!(link_line(Vec2::ZERO, Vec2::new(5.0, 0.0)).is_none());
    }

    #[test]
    fn every_path_has_its_own_colour() {
        let all = [Route::Direct, Route::Relayed, Route::Connecting, Route::Lost, Route::Server];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(path_color(*a), path_color(*b));
            }
        }
    }
}
