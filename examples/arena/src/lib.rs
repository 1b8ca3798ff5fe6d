//! # Arena: a room-based game on P2PModel
//!
//! A second example game, of another shape than the demo MMO and built only on the public
//! API: players join a **room** of up to 8 (`lobby.open_parties`: a party anyone joins while
//! it has room), the shard meshes everyone in the room whatever their positions
//! (`game.interest = "groups"`: no world grid, no NPCs), and the match runs peer to peer:
//! - [`Avatar`] (3D position, yaw, health) at 20 Hz on `UnreliableSequenced`: newest wins;
//! - [`Shot`] (who hit whom, numbered) on `ReliableOrdered`: every one, in order.
//!
//! The score is the server's: each shooter also claims its hit from the **referee**, the
//! game's own logic on the Game server ([`ArenaServerPlugin`], the shard's game API). It
//! accepts a claim only on a room-mate, keeps the room's tally and sends it to the room
//! ([`HitClaim`] → [`RoomScore`], or [`ClaimRefused`]).
//!
//! [`ArenaPlugin`] is the game: it registers its message types, joins its room once logged
//! in, flies its avatar on a circle, shoots at room-mates and keeps a [`Scoreboard`] of what
//! it received. The binary (`src/main.rs`) runs it headless against an embedded shard
//! ([`embedded_shard`], with the referee) or a remote one, with bots; `tests/rooms.rs` runs
//! two rooms.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bevy::prelude::*;
use bevy_p2pmodel::prelude::*;
use serde::{Deserialize, Serialize};

/// Players per room at most (`lobby.max_party_size`).
pub const ROOM_SIZE: usize = 8;
/// Avatar updates per second.
pub const AVATAR_HZ: f64 = 20.0;

/// A player's avatar as its peers draw it: sent 20 times a second, the newest wins.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Avatar {
    /// Position in the arena (metres; y is up).
    pub pos: [f32; 3],
    /// Facing, radians.
    pub yaw: f32,
    /// Health, 0–100.
    pub health: u8,
    /// Our update counter (to see what arrived).
    pub tick: u32,
}

/// A hit: the shooter's `n`-th shot hit `target` (every one arrives, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shot {
    /// The shooter's shot counter (0, 1, 2, …).
    pub n: u32,
    /// Who was hit.
    pub target: PlayerId,
    /// Damage dealt.
    pub damage: u8,
}

/// To the referee: our shot hit `target` (reliable). Refused unless `target` is in our room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HitClaim {
    /// Who was hit.
    pub target: PlayerId,
}

/// From the referee to everyone in a room, after every accepted claim: hits per player.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomScore {
    /// `(player, hits it scored)`, by player id.
    pub hits: Vec<(PlayerId, u32)>,
}

/// From the referee to a shooter whose claim it refused (not a room-mate, or itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRefused {
    /// The claimed target.
    pub target: PlayerId,
}

/// The referee: the arena's own logic on the Game server (added to the shard's App, e.g. by
/// [`embedded_shard`] or a game's shard binary with `run_all_with`). Registers the same
/// message types in the same order as [`ArenaPlugin`].
pub struct ArenaServerPlugin;

impl Plugin for ArenaServerPlugin {
    fn build(&self, app: &mut App) {
        use p2pmodel_servers::shard::game_api::{GameAppExt, GameChannel, GameSet};
        app.add_game_message::<HitClaim>(GameChannel::Reliable)
            .add_game_message::<RoomScore>(GameChannel::Reliable)
            .add_game_message::<ClaimRefused>(GameChannel::Reliable)
            .init_resource::<Referee>()
            .add_systems(FixedUpdate, referee.in_set(GameSet::Logic));
    }
}

/// Hits scored per player (the referee's tally; a player who leaves is forgotten).
#[derive(Resource, Debug, Default)]
pub struct Referee {
    /// Accepted claims per shooter.
    pub hits: HashMap<PlayerId, u32>,
    /// Claims refused.
    pub refused: u64,
}

fn referee(
    mut claims: MessageReader<p2pmodel_servers::shard::game_api::FromPlayer<HitClaim>>,
    mut left: MessageReader<p2pmodel_servers::shard::game_api::PlayerLeft>,
    mut referee: ResMut<Referee>,
    mut tx: p2pmodel_servers::shard::game_api::PlayerSender,
) {
    for l in left.read() {
        referee.hits.remove(&l.player);
    }
    let mut rooms: BTreeSet<(u32, String)> = BTreeSet::new();
    for c in claims.read() {
        let Some(world) = tx.games().get(c.game) else { continue };
        let room = |p: PlayerId| world.player_info(p).and_then(|(_, g)| g.map(str::to_string));
        let shooter = room(c.player);
        if c.player != c.message.target && shooter.is_some() && shooter == room(c.message.target) {
            *referee.hits.entry(c.player).or_default() += 1;
            rooms.extend(shooter.map(|r| (c.game, r)));
        } else {
            referee.refused += 1;
            let _ = tx.send(c.player, &ClaimRefused { target: c.message.target });
        }
    }
    for (game, room) in rooms {
        let Some(world) = tx.games().get(game) else { continue };
        let hits: Vec<(PlayerId, u32)> = world
            .player_ids()
            .filter(|p| world.player_info(*p).is_some_and(|(_, g)| g == Some(room.as_str())))
            .map(|p| (p, referee.hits.get(&p).copied().unwrap_or(0)))
            .collect();
        let _ = tx.send_where(game, &RoomScore { hits }, |_, g| g == Some(room.as_str()));
    }
}

/// The shard settings an arena needs (the `sections` of
/// `p2pmodel_servers::embedded::local_config`, or of a `shard.toml`).
pub const SHARD_SECTIONS: &str = "[lobby]\nzones = 1\nopen_parties = true\nmax_party_size = 8\n\
    [game]\nservers_per_zone = 1\ninterest = \"groups\"\nmax_peers = 8\n";

/// Start an arena shard inside this process (loopback, free ports), with the referee.
pub fn embedded_shard() -> Result<p2pmodel_servers::embedded::EmbeddedShard, String> {
    p2pmodel_servers::embedded::start_with(
        p2pmodel_servers::embedded::local_config("arena", SHARD_SECTIONS)?,
        |app| {
            app.add_plugins(ArenaServerPlugin);
        },
    )
}

/// What this player does in the arena.
#[derive(Resource, Debug, Clone)]
pub struct ArenaSettings {
    /// The room to join.
    pub room: String,
    /// Fire a shot every this many avatar updates (0: never).
    pub shoot_every: u32,
    /// Stop shooting after this many shots.
    pub max_shots: u32,
}

/// What this player sent and received, per room-mate.
#[derive(Resource, Debug, Default, Clone)]
pub struct Scoreboard {
    /// Avatar updates sent.
    pub avatars_sent: u32,
    /// Shots fired.
    pub shots_fired: u32,
    /// Per peer: avatar updates received, the newest tick, shots received in order, and
    /// shots that arrived out of order or twice.
    pub peers: BTreeMap<PlayerId, PeerScore>,
    /// Health left.
    pub health: i32,
    /// The referee's newest tally of our room (hits per player).
    pub room_score: BTreeMap<PlayerId, u32>,
    /// Our claims the referee refused.
    pub refused: Vec<PlayerId>,
}

/// What one room-mate sent us.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerScore {
    /// Avatar updates received.
    pub avatars: u32,
    /// The newest avatar tick received.
    pub newest_tick: u32,
    /// An avatar older than one already received arrived (must never happen).
    pub older_after_newer: bool,
    /// Shots received (in order: `n` = 0, 1, 2, …).
    pub shots: u32,
    /// Shots that arrived with an unexpected number (a gap or a duplicate: must never happen).
    pub shots_out_of_order: u32,
}

/// The arena game: message types, joining the room, flying, shooting, scoring.
pub struct ArenaPlugin(pub ArenaSettings);

impl Plugin for ArenaPlugin {
    fn build(&self, app: &mut App) {
        app.add_peer_message::<Avatar>(P2pChannel::UnreliableSequenced)
            .add_peer_message::<Shot>(P2pChannel::ReliableOrdered)
            // The referee's messages, in the order `ArenaServerPlugin` registers them.
            .add_server_message::<HitClaim>(ServerChannel::Reliable)
            .add_server_message::<RoomScore>(ServerChannel::Reliable)
            .add_server_message::<ClaimRefused>(ServerChannel::Reliable)
            .insert_resource(self.0.clone())
            .insert_resource(Scoreboard { health: 100, ..Default::default() })
            .insert_resource(Time::<Fixed>::from_hz(AVATAR_HZ))
            .add_systems(Update, (join_room, score, referee_says))
            .add_systems(FixedUpdate, (fly, shoot));
    }
}

/// Once logged in (and on every return to the lobby), join our room.
fn join_room(
    mut ev: MessageReader<ShardEvent>,
    settings: Res<ArenaSettings>,
    mut req: MessageWriter<ShardRequest>,
) {
    for e in ev.read() {
        if let ShardNotice::Welcome { .. } = e.0 {
            req.write(ShardRequest::JoinParty(settings.room.clone()));
        }
    }
}

/// Fly a circle (each player its own phase) and tell the room.
fn fly(time: Res<Time>, me: Res<LocalPlayer>, mut board: ResMut<Scoreboard>, mut tx: PeerSender) {
    let Some(player) = me.player else { return };
    let phase = (player.0 % 8) as f32 * std::f32::consts::FRAC_PI_4;
    let t = time.elapsed_secs() + phase;
    let avatar = Avatar {
        pos: [10.0 * t.cos(), 2.0 + (2.0 * t).sin(), 10.0 * t.sin()],
        yaw: t + std::f32::consts::FRAC_PI_2,
        health: board.health.clamp(0, 100) as u8,
        tick: board.avatars_sent,
    };
    if tx.broadcast(&avatar).is_ok() {
        board.avatars_sent += 1;
    }
}

/// Every few updates, hit the room-mate with the lowest id we have not hit last.
fn shoot(
    settings: Res<ArenaSettings>,
    peers: Query<(&Peer, &PeerPath)>,
    mut board: ResMut<Scoreboard>,
    mut tx: PeerSender,
    mut referee: ServerSender,
) {
    if settings.shoot_every == 0
        || board.shots_fired >= settings.max_shots
        || !board.avatars_sent.is_multiple_of(settings.shoot_every)
    {
        return;
    }
    // Shots wait until every room-mate's link is up (a shot is worth little late).
    let linked = |p: &PeerPath| matches!(p.path, PathKind::Relayed | PathKind::Direct);
    if peers.is_empty() || !peers.iter().all(|(_, path)| linked(path)) {
        return;
    }
    let mut ids: Vec<PlayerId> = peers.iter().map(|(p, _)| p.player).collect();
    ids.sort();
    let target = ids[board.shots_fired as usize % ids.len()];
    let shot = Shot { n: board.shots_fired, target, damage: 1 };
    // Every room-mate learns of every hit (it keeps its own tally of the match).
    if tx.broadcast(&shot).is_ok() {
        board.shots_fired += 1;
        // The score is the referee's: claim the hit (lost only if the shard is away).
        let _ = referee.send(&HitClaim { target });
    }
}

/// What the referee says: the room's tally, refused claims.
fn referee_says(
    mut scores: MessageReader<FromServer<RoomScore>>,
    mut refused: MessageReader<FromServer<ClaimRefused>>,
    mut board: ResMut<Scoreboard>,
) {
    for s in scores.read() {
        board.room_score = s.message.hits.iter().copied().collect();
    }
    for r in refused.read() {
        board.refused.push(r.message.target);
    }
}

/// Count what arrived: avatars never older than the newest, shots in order.
fn score(
    mut avatars: MessageReader<FromPeer<Avatar>>,
    mut shots: MessageReader<FromPeer<Shot>>,
    me: Res<LocalPlayer>,
    mut board: ResMut<Scoreboard>,
) {
    for a in avatars.read() {
        let s = board.peers.entry(a.player).or_default();
        if s.avatars > 0 && a.message.tick <= s.newest_tick {
            s.older_after_newer = true;
        }
        s.avatars += 1;
        s.newest_tick = s.newest_tick.max(a.message.tick);
    }
    for shot in shots.read() {
        let hit_me = Some(shot.message.target) == me.player;
        let s = board.peers.entry(shot.player).or_default();
        if shot.message.n == s.shots {
            s.shots += 1;
        } else {
            s.shots_out_of_order += 1;
        }
        if hit_me {
            board.health -= i32::from(shot.message.damage);
        }
    }
}

/// A headless arena player as a Bevy app: the mesh on a loopback (or any) socket, the shard
/// client for `shard` with name `name`, and the game. Used by the binary's bots and the tests.
pub fn player_app(
    name: &str,
    shard: ShardAddress,
    bind: std::net::SocketAddr,
    settings: ArenaSettings,
) -> App {
    let mut mesh = P2pMeshPlugin::new(name);
    mesh.bind = bind;
    mesh.client.nat_timeout = Duration::from_millis(500);
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .add_plugins((mesh, ShardClientPlugin::new(shard)))
        .add_plugins(ArenaPlugin(settings));
    app.finish();
    app.cleanup();
    app
}
