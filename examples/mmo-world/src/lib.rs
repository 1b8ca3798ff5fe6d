//! # The demo MMO's world, as a game on P2PModel's game API
//!
//! The shard's Game role only meshes players; what makes the demo an MMO world beyond that is
//! the game's own server logic, written here against the public API only:
//! - **NPCs**: server-simulated characters wandering around the spawn point (the state P2P
//!   does not carry), sent to each player within its interest radius a few times a second
//!   ([`Npcs`], unreliable: the next one supersedes it);
//! - **chat in range**: a player's [`Say`] is trimmed, cut to [`MAX_CHAT_CHARS`] characters
//!   and delivered as a [`ChatLine`] to every player of its Game server within the interest
//!   radius, the speaker included.
//!
//! [`MmoWorldPlugin`] goes on the shard's App (the demo's embedded shard, or this crate's
//! `p2pmodel-mmo-shard` binary); [`MmoClientPlugin`] on the game client. Both register the
//! three message types in the same order, as the game API requires.

use std::collections::{HashMap, HashSet};

use bevy::prelude::*;
use bevy_p2pmodel::prelude::{P2pAppExt, PlayerId, ServerChannel};
use p2pmodel_servers::shard::game_api::{
    FromPlayer, GameAppExt, GameChannel, GameSet, PlayerLeft, PlayerSender,
};
use serde::{Deserialize, Serialize};

/// Longest chat line delivered, in characters (longer lines are cut at a char boundary).
pub const MAX_CHAT_CHARS: usize = 200;
/// NPC walking speed (units per second).
pub const NPC_SPEED: f32 = 2.0;

/// Client → server: a chat line for everyone in range (reliable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Say {
    /// The text (trimmed and cut to [`MAX_CHAT_CHARS`] by the server).
    pub text: String,
}

/// Server → client: a chat line from a player in range (our own lines come back too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    /// The speaker.
    pub from: PlayerId,
    /// Its name.
    pub name: String,
    /// The text.
    pub text: String,
}

/// One NPC as a client draws it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Npc {
    /// Its id (stable while it exists).
    pub id: u32,
    /// World x.
    pub x: f32,
    /// World y.
    pub y: f32,
}

/// Server → client: the NPCs within our interest radius (unreliable, `npc_hz` times a
/// second); an empty list once after the last one left our range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Npcs {
    /// NPCs in range.
    pub npcs: Vec<Npc>,
}

/// The world's settings (the demo's defaults: 6 NPCs within 40 units of the origin, 5 Hz).
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct MmoWorldSettings {
    /// NPCs per Game server (0: none).
    pub npcs: u32,
    /// NPCs stay within this distance of the spawn point (0, 0).
    pub npc_area: f32,
    /// How often each player is sent the NPCs in its range (Hz, at most the Game tick rate).
    pub npc_hz: u32,
}

impl Default for MmoWorldSettings {
    fn default() -> Self {
        MmoWorldSettings { npcs: 6, npc_area: 40.0, npc_hz: 5 }
    }
}

/// The world's server logic, for the shard's App.
#[derive(Default)]
pub struct MmoWorldPlugin(pub MmoWorldSettings);

impl Plugin for MmoWorldPlugin {
    fn build(&self, app: &mut App) {
        app.add_game_message::<Say>(GameChannel::Reliable)
            .add_game_message::<ChatLine>(GameChannel::Reliable)
            .add_game_message::<Npcs>(GameChannel::Unreliable)
            .insert_resource(self.0.clone())
            .init_resource::<WorldState>()
            .add_systems(FixedUpdate, (chat, npcs).in_set(GameSet::Logic));
    }
}

/// The client side: the world's message types, in the server's order. Read
/// `MessageReader<FromServer<ChatLine>>` and `FromServer<Npcs>`, send [`Say`] with
/// `ServerSender`.
pub struct MmoClientPlugin;

impl Plugin for MmoClientPlugin {
    fn build(&self, app: &mut App) {
        app.add_server_message::<Say>(ServerChannel::Reliable)
            .add_server_message::<ChatLine>(ServerChannel::Reliable)
            .add_server_message::<Npcs>(ServerChannel::Unreliable);
    }
}

/// splitmix64: a tiny deterministic generator, so a zone's NPCs wander the same way on every
/// run and every channel.
#[derive(Debug, Clone)]
struct Wander(u64);

impl Wander {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A uniform point of the disc of radius `r` around the origin.
    fn in_disc(&mut self, r: f32) -> (f32, f32) {
        let a = self.unit() * std::f32::consts::TAU;
        let d = r * self.unit().sqrt();
        (d * a.cos(), d * a.sin())
    }
}

/// An NPC: walks to a random point of the NPC area, then another.
#[derive(Debug, Clone)]
struct NpcSim {
    npc: Npc,
    target: (f32, f32),
    speed: f32,
}

/// One Game server's NPCs and who saw some last time.
#[derive(Debug)]
struct ServerWorld {
    npcs: Vec<NpcSim>,
    wander: Wander,
    saw: HashSet<PlayerId>,
    ticks: u64,
}

/// The world of every Game server of this process, by server number.
#[derive(Resource, Debug, Default)]
struct WorldState(HashMap<u32, ServerWorld>);

/// Chat lines: cut, then delivered within the interest radius of the speaker's server.
fn chat(mut says: MessageReader<FromPlayer<Say>>, mut tx: PlayerSender) {
    for s in says.read() {
        let text: String =
            s.message.text.trim().chars().filter(|c| !c.is_control()).take(MAX_CHAT_CHARS).collect();
        let text = text.trim_end();
        let games = tx.games();
        let (Some(w), false) = (games.get(s.game), text.is_empty()) else { continue };
        let r2 = games.rules.cfg.interest_radius.powi(2);
        let (Some(at), Some((name, _))) = (w.position(s.player), w.player_info(s.player)) else { continue };
        let line = ChatLine { from: s.player, name: name.to_string(), text: text.to_string() };
        let near: Vec<PlayerId> =
            w.player_ids().filter(|p| w.position(*p).is_some_and(|q| dist2(at, q) <= r2)).collect();
        for p in near {
            let _ = tx.send(p, &line);
        }
    }
}

fn dist2(a: [f32; 3], b: [f32; 3]) -> f32 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

/// Every Game tick: NPCs walk; `npc_hz` times a second each player gets those in range.
fn npcs(
    settings: Res<MmoWorldSettings>,
    mut state: ResMut<WorldState>,
    mut left: MessageReader<PlayerLeft>,
    mut tx: PlayerSender,
) {
    for l in left.read() {
        if let Some(w) = state.0.get_mut(&l.game) {
            w.saw.remove(&l.player);
        }
    }
    let games = tx.games();
    let (tick_hz, radius) = (games.rules.cfg.tick_hz.max(1), games.rules.cfg.interest_radius);
    let every = u64::from((tick_hz / settings.npc_hz.max(1)).max(1));
    let dt = 1.0 / tick_hz as f32;
    let mut sends: Vec<(PlayerId, Npcs)> = Vec::new();
    for g in games.worlds.iter().filter(|g| games.alive(g.id)) {
        let w = state.0.entry(g.id).or_insert_with(|| ServerWorld {
            npcs: Vec::new(),
            wander: Wander(0x5eed_0000_0000_0000 ^ u64::from(g.zone)),
            saw: HashSet::new(),
            ticks: 0,
        });
        step(w, &settings, dt);
        w.ticks += 1;
        if !w.ticks.is_multiple_of(every) {
            continue;
        }
        for p in g.player_ids().filter(|p| g.is_connected(*p)) {
            let Some(at) = g.position(p) else { continue };
            let npcs: Vec<Npc> = w
                .npcs
                .iter()
                .filter(|n| dist2(at, [n.npc.x, n.npc.y, 0.0]) <= radius * radius)
                .map(|n| n.npc)
                .collect();
            let saw = !npcs.is_empty();
            if !saw && !w.saw.contains(&p) {
                continue;
            }
            if saw {
                w.saw.insert(p);
            } else {
                w.saw.remove(&p);
            }
            sends.push((p, Npcs { npcs }));
        }
    }
    for (p, npcs) in sends {
        let _ = tx.send(p, &npcs);
    }
}

/// Spawn the missing NPCs in the area (first tick), then walk each one step.
fn step(w: &mut ServerWorld, settings: &MmoWorldSettings, dt: f32) {
    let area = settings.npc_area;
    while w.npcs.len() < settings.npcs as usize {
        let (x, y) = w.wander.in_disc(area);
        let target = w.wander.in_disc(area);
        let speed = NPC_SPEED * (0.5 + 0.5 * w.wander.unit());
        let id = w.npcs.len() as u32;
        w.npcs.push(NpcSim { npc: Npc { id, x, y }, target, speed });
    }
    for n in &mut w.npcs {
        let (dx, dy) = (n.target.0 - n.npc.x, n.target.1 - n.npc.y);
        let d = (dx * dx + dy * dy).sqrt();
        let s = n.speed * dt;
        if d <= s {
            (n.npc.x, n.npc.y) = n.target;
            n.target = w.wander.in_disc(area);
        } else {
            n.npc.x += dx / d * s;
            n.npc.y += dy / d * s;
        }
    }
}

/// Start the demo world's shard inside this process (loopback, free ports): `sections` as in
/// `p2pmodel_servers::embedded::local_config`, with the world's server logic.
pub fn embedded_shard(
    name: &str,
    sections: &str,
    settings: MmoWorldSettings,
) -> Result<p2pmodel_servers::embedded::EmbeddedShard, String> {
    p2pmodel_servers::embedded::start_with(
        p2pmodel_servers::embedded::local_config(name, sections)?,
        move |app| {
            app.add_plugins(MmoWorldPlugin(settings));
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npcs_stay_in_their_area_and_move_at_walking_pace() {
        let settings = MmoWorldSettings::default();
        let mut w = ServerWorld { npcs: Vec::new(), wander: Wander(7), saw: HashSet::new(), ticks: 0 };
        step(&mut w, &settings, 0.05);
        let start: Vec<Npc> = w.npcs.iter().map(|n| n.npc).collect();
        assert_eq!(start.len(), 6);
        for _ in 0..2000 {
            let before: Vec<Npc> = w.npcs.iter().map(|n| n.npc).collect();
            step(&mut w, &settings, 0.05);
            for (a, b) in before.iter().zip(&w.npcs) {
                assert!(
                    ((b.npc.x - a.x).powi(2) + (b.npc.y - a.y).powi(2)).sqrt() <= NPC_SPEED * 0.05 + 1e-4
                );
                assert!((b.npc.x.powi(2) + b.npc.y.powi(2)).sqrt() <= settings.npc_area + 1e-3);
            }
        }
        assert!(w.npcs.iter().zip(&start).all(|(n, s)| n.npc != *s), "they all moved");
    }
}
