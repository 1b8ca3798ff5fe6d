//! The game's own logic on its Game servers: message types the game registers, players
//! joining and leaving, and what the logic may change (positions for interest, messages to
//! players). The Game role itself only meshes players; rules, scores, NPCs are the game's.
//!
//! ```ignore
//! // On the shard (an `App` from `shard_app`, `embedded::start_with` or `run_all_with`):
//! app.add_game_message::<Hit>(GameChannel::Reliable)
//!    .add_game_message::<Scores>(GameChannel::Reliable)
//!    .add_systems(FixedUpdate, score.in_set(GameSet::Logic));
//! fn score(mut hits: MessageReader<FromPlayer<Hit>>, mut tx: PlayerSender) { /* tx.send(p, &s) */ }
//! // On the client (bevy_p2pmodel): app.add_server_message::<Hit>(ServerChannel::Reliable)
//! //                                    .add_server_message::<Scores>(ServerChannel::Reliable);
//! ```
//!
//! On the wire a game message is the payload of `ClientMessage::ToGame` /
//! `ShardMessage::FromGame`: `kind u8 | value` (the value encoded by the core's codec); `kind`
//! is the type's registration index, so the game's client and server register the same types
//! in the same order. An unknown kind or a value that does not decode is dropped and counted
//! in [`GameApiStats`]; nothing a player sends panics the server.

use std::any::{TypeId, type_name};

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use p2pmodel_core::codec;
use p2pmodel_core::proto::shard::{MAX_GAME_DATA, MAX_GAME_DATA_TO_CLIENT, PlayerId};
use p2pmodel_core::shard::GameEvent;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::bus::ShardBus;
use super::game::{GameServers, GameTickSet};

/// At most this many game message types (the kind is one byte).
pub const MAX_GAME_TYPES: usize = 256;

/// What a type needs to be a game message: serde both ways, sendable between threads.
pub trait GameMessage: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> GameMessage for T {}

/// How the server sends a registered type to players (over the client's shard connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GameChannel {
    /// Every message once, in order (scores, inventory, match events).
    Reliable,
    /// Fire and forget, superseded by the next one (snapshots).
    Unreliable,
}

/// Where the game's systems go, in `FixedUpdate`, after the Game servers' tick:
/// [`GameSet::Receive`] turns what players sent into messages, then [`GameSet::Logic`] runs
/// the game's systems (put yours there).
#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum GameSet {
    /// Players' messages, joins and leaves become Bevy messages.
    Receive,
    /// The game's systems.
    Logic,
}

/// A registered message from a player (see [`GameAppExt::add_game_message`]).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct FromPlayer<T> {
    /// The Game server (number in the shard) the player is on.
    pub game: u32,
    /// The sender.
    pub player: PlayerId,
    /// The message.
    pub message: T,
}

/// A player entered a Game server of this process (not sent again when it resumes).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct PlayerJoined {
    /// The Game server.
    pub game: u32,
    /// The player.
    pub player: PlayerId,
    /// Its name.
    pub name: String,
}

/// A player left a Game server of this process (it left, or did not come back in time).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct PlayerLeft {
    /// The Game server.
    pub game: u32,
    /// The player.
    pub player: PlayerId,
}

type Deliver = fn(&mut World, u32, PlayerId, &[u8]) -> bool;

#[derive(Debug, Clone)]
struct Registered {
    type_id: TypeId,
    name: &'static str,
    channel: GameChannel,
    deliver: Deliver,
}

/// The registered game message types, in registration order (the kind byte is the index).
#[derive(Resource, Debug, Default)]
pub struct GameMessageRegistry {
    types: Vec<Registered>,
}

impl GameMessageRegistry {
    /// The kind byte and channel of `T`, if registered.
    pub fn kind_of<T: 'static>(&self) -> Option<(u8, GameChannel)> {
        let id = TypeId::of::<T>();
        self.types.iter().position(|r| r.type_id == id).map(|i| (i as u8, self.types[i].channel))
    }

    /// The registered types' names in kind order (to compare with the client's).
    pub fn names(&self) -> Vec<&'static str> {
        self.types.iter().map(|r| r.name).collect()
    }
}

/// Game messages from players that were dropped (the Game servers' `GameStats` count the
/// ones the role dropped before: too large, or no logic listening).
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GameApiStats {
    /// Messages of a kind the server did not register (another build of the game?).
    pub unknown_kind: u64,
    /// Messages of a registered kind whose value did not decode (or empty ones).
    pub undecodable: u64,
}

/// Why a message to a player was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GameSendError {
    /// The player is not on a running Game server of this process, or is away.
    #[error("player {0:?} is not connected to a Game server here")]
    NotConnected(PlayerId),
    /// The encoded value is larger than the limit.
    #[error("game message of {0} bytes exceeds the {MAX_GAME_DATA_TO_CLIENT}-byte limit")]
    TooLarge(usize),
    /// The value could not be encoded.
    #[error("cannot encode the game message: {0}")]
    Encode(String),
}

/// The game API without message types: [`PlayerJoined`] / [`PlayerLeft`], [`GameSet`],
/// [`GameApiStats`]. Added by [`GameAppExt::add_game_message`]; add it yourself when the
/// game registers no message type.
pub struct GameApiPlugin;

impl Plugin for GameApiPlugin {
    fn build(&self, app: &mut App) {
        if app.world().contains_resource::<GameMessageRegistry>() {
            return;
        }
        app.init_resource::<GameMessageRegistry>()
            .init_resource::<GameApiStats>()
            .add_message::<PlayerJoined>()
            .add_message::<PlayerLeft>()
            .configure_sets(FixedUpdate, (GameSet::Receive, GameSet::Logic).chain().after(GameTickSet))
            .add_systems(PreStartup, enable_events)
            .add_systems(FixedUpdate, receive.in_set(GameSet::Receive));
    }
}

/// Registering the game's message types on a shard's [`App`].
pub trait GameAppExt {
    /// Register `T` as a message between the game's clients and its Game servers: read with
    /// `MessageReader<FromPlayer<T>>`, sent to players with [`PlayerSender`] on `channel`.
    /// The client registers the same types in the same order (`add_server_message`).
    ///
    /// # Panics
    /// At app build, when `T` is registered twice or more than [`MAX_GAME_TYPES`] types are.
    fn add_game_message<T: GameMessage>(&mut self, channel: GameChannel) -> &mut Self;
}

impl GameAppExt for App {
    fn add_game_message<T: GameMessage>(&mut self, channel: GameChannel) -> &mut Self {
        self.add_plugins_once();
        let mut reg = self.world_mut().resource_mut::<GameMessageRegistry>();
        assert!(reg.kind_of::<T>().is_none(), "add_game_message::<{}>: registered twice", type_name::<T>());
        assert!(
            reg.types.len() < MAX_GAME_TYPES,
            "add_game_message::<{}>: at most {MAX_GAME_TYPES} game message types",
            type_name::<T>()
        );
        reg.types.push(Registered {
            type_id: TypeId::of::<T>(),
            name: type_name::<T>(),
            channel,
            deliver: deliver::<T>,
        });
        self.add_message::<FromPlayer<T>>()
    }
}

trait OncePlugin {
    fn add_plugins_once(&mut self);
}

impl OncePlugin for App {
    fn add_plugins_once(&mut self) {
        if !self.world().contains_resource::<GameMessageRegistry>() {
            self.add_plugins(GameApiPlugin);
        }
    }
}

fn deliver<T: GameMessage>(world: &mut World, game: u32, player: PlayerId, body: &[u8]) -> bool {
    match codec::decode::<T>(body, MAX_GAME_DATA) {
        Ok(message) => {
            world.write_message(FromPlayer { game, player, message });
            true
        }
        Err(_) => false,
    }
}

/// From the first tick on, the Game servers keep events for the game's logic.
fn enable_events(games: Option<ResMut<GameServers>>) {
    for w in games.into_iter().flat_map(|g| g.into_inner().worlds.iter_mut()) {
        w.enable_game_events();
    }
}

/// Every running Game server's events → [`PlayerJoined`], [`PlayerLeft`], [`FromPlayer`].
fn receive(world: &mut World) {
    let mut events = Vec::new();
    if let Some(mut games) = world.get_resource_mut::<GameServers>() {
        let GameServers { worlds, stopped, .. } = &mut *games;
        for w in worlds.iter_mut().filter(|w| !stopped.contains(&w.id)) {
            w.enable_game_events();
            let id = w.id;
            events.extend(w.drain_game_events().into_iter().map(|e| (id, e)));
        }
    }
    if events.is_empty() {
        return;
    }
    let delivers: Vec<Deliver> =
        world.resource::<GameMessageRegistry>().types.iter().map(|r| r.deliver).collect();
    let mut stats = *world.resource::<GameApiStats>();
    for (game, e) in events {
        match e {
            GameEvent::Joined { player, name } => {
                world.write_message(PlayerJoined { game, player, name });
            }
            GameEvent::Left { player } => {
                world.write_message(PlayerLeft { game, player });
            }
            GameEvent::Message { player, data, .. } => {
                let Some((&kind, body)) = data.split_first() else {
                    stats.undecodable += 1;
                    continue;
                };
                match delivers.get(usize::from(kind)) {
                    Some(d) if d(world, game, player, body) => {}
                    Some(_) => stats.undecodable += 1,
                    None => stats.unknown_kind += 1,
                }
            }
        }
    }
    *world.resource_mut::<GameApiStats>() = stats;
}

/// Sends registered message types to players (through the Agent, on the type's channel).
/// One parameter sends every type.
#[derive(SystemParam)]
pub struct PlayerSender<'w> {
    games: ResMut<'w, GameServers>,
    bus: ResMut<'w, ShardBus>,
    registry: Res<'w, GameMessageRegistry>,
}

impl PlayerSender<'_> {
    fn framed<T: GameMessage>(&self, value: &T) -> Result<(Vec<u8>, bool), GameSendError> {
        let (kind, channel) = self.registry.kind_of::<T>().unwrap_or_else(|| {
            panic!("PlayerSender: call app.add_game_message::<{0}>() before sending a {0}", type_name::<T>())
        });
        let mut out = vec![kind];
        match codec::encode(value, MAX_GAME_DATA_TO_CLIENT - 1) {
            Ok(b) => out.extend_from_slice(&b),
            Err(codec::CodecError::TooLarge { len, .. }) => return Err(GameSendError::TooLarge(len + 1)),
            Err(e) => return Err(GameSendError::Encode(e.to_string())),
        }
        Ok((out, channel == GameChannel::Reliable))
    }

    /// Send `value` to `player`, wherever it plays in this process.
    ///
    /// # Panics
    /// When `T` was not registered with [`GameAppExt::add_game_message`] (a programming error).
    pub fn send<T: GameMessage>(&mut self, player: PlayerId, value: &T) -> Result<(), GameSendError> {
        let (data, reliable) = self.framed(value)?;
        let GameServers { worlds, stopped, .. } = &mut *self.games;
        let w = worlds
            .iter_mut()
            .filter(|w| !stopped.contains(&w.id))
            .find(|w| w.is_connected(player))
            .ok_or(GameSendError::NotConnected(player))?;
        w.send_to_player(&mut self.bus, player, reliable, data);
        Ok(())
    }

    /// Send `value` to every connected player of Game server `game` for whom `to` is true
    /// (e.g. everyone in a room: `|_, group| group == Some("red")`). Returns how many.
    ///
    /// # Panics
    /// When `T` was not registered with [`GameAppExt::add_game_message`].
    pub fn send_where<T: GameMessage>(
        &mut self,
        game: u32,
        value: &T,
        mut to: impl FnMut(PlayerId, Option<&str>) -> bool,
    ) -> Result<usize, GameSendError> {
        let (data, reliable) = self.framed(value)?;
        let GameServers { worlds, stopped, .. } = &mut *self.games;
        let Some(w) = worlds.iter_mut().find(|w| w.id == game && !stopped.contains(&w.id)) else {
            return Ok(0);
        };
        let players: Vec<PlayerId> = w
            .player_ids()
            .filter(|p| w.is_connected(*p) && w.player_info(*p).is_some_and(|(_, group)| to(*p, group)))
            .collect();
        let mut n = 0;
        for p in players {
            n += usize::from(w.send_to_player(&mut self.bus, p, reliable, data.clone()));
        }
        Ok(n)
    }

    /// Place `player` at `pos` (x, y, z) for interest management; `false` when it is not on
    /// a running Game server here. See `game.movement`.
    pub fn set_position(&mut self, player: PlayerId, pos: [f32; 3]) -> bool {
        let GameServers { worlds, stopped, .. } = &mut *self.games;
        worlds.iter_mut().filter(|w| !stopped.contains(&w.id)).any(|w| w.set_position(player, pos))
    }

    /// The Game servers of this process, to look players up (names, groups, positions).
    pub fn games(&self) -> &GameServers {
        &self.games
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevy::ecs::system::RunSystemOnce;
    use p2pmodel_core::proto::shard::{ClientMessage, InternalMessage, Role, ShardMessage};
    use p2pmodel_core::shard::GameConfig;
    use serde::Deserialize;

    use super::super::game::{GamePlugin, GameRules};

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Hit {
        target: PlayerId,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Score(Vec<(PlayerId, u32)>);

    #[derive(Resource, Default)]
    struct Tally(Vec<(PlayerId, PlayerId)>, Vec<PlayerId>, Vec<PlayerId>);

    /// The game's logic under test: counts hits on players of the same server and tells the
    /// shooter its score.
    fn score(
        mut joined: MessageReader<PlayerJoined>,
        mut left: MessageReader<PlayerLeft>,
        mut hits: MessageReader<FromPlayer<Hit>>,
        mut tally: ResMut<Tally>,
        mut tx: PlayerSender,
    ) {
        tally.1.extend(joined.read().map(|j| j.player));
        tally.2.extend(left.read().map(|l| l.player));
        for h in hits.read() {
            tally.0.push((h.player, h.message.target));
            let n = tally.0.iter().filter(|(s, _)| *s == h.player).count() as u32;
            tx.send(h.player, &Score(vec![(h.player, n)])).unwrap();
            tx.set_position(h.player, [1.0, 2.0, 3.0]);
        }
    }

    fn app() -> App {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins)
            .insert_resource(Time::<Fixed>::from_hz(1000.0))
            // Virtual time: every update advances 5 ms (a few fixed ticks), no sleeping.
            .insert_resource(bevy::time::TimeUpdateStrategy::ManualDuration(
                std::time::Duration::from_millis(5),
            ))
            .init_resource::<ShardBus>()
            .init_resource::<Tally>()
            .insert_resource(GameServers::new(
                &[(1, 0)],
                GameRules {
                    cfg: GameConfig::default(),
                    relays: Vec::new(),
                    heartbeat: std::time::Duration::from_secs(1),
                },
            ))
            .add_plugins(GamePlugin { tick_hz: 1000 })
            .add_game_message::<Hit>(GameChannel::Reliable)
            .add_game_message::<Score>(GameChannel::Unreliable)
            .add_systems(FixedUpdate, score.in_set(GameSet::Logic));
        app
    }

    fn join(app: &mut App, client: u64, player: u64) {
        let m = InternalMessage::Join {
            client,
            player: PlayerId(player),
            name: format!("p{player}"),
            x: 0.0,
            y: 0.0,
            candidates: Vec::new(),
            nat: None,
            party: None,
            ip: None,
            zone: 0,
        };
        app.world_mut().resource_mut::<ShardBus>().send(Role::Game(1), &m);
    }

    fn from(app: &mut App, client: u64, data: Vec<u8>) {
        let m = InternalMessage::FromClient { client, msg: ClientMessage::ToGame { reliable: true, data } };
        app.world_mut().resource_mut::<ShardBus>().send(Role::Game(1), &m);
    }

    fn run(app: &mut App) {
        for _ in 0..5 {
            app.update();
        }
    }

    #[test]
    fn a_registered_message_reaches_the_games_system_and_its_answer_goes_to_the_sender_only() {
        let mut app = app();
        join(&mut app, 10, 1);
        join(&mut app, 20, 2);
        run(&mut app);
        let mut hit = vec![0u8];
        hit.extend(codec::encode(&Hit { target: PlayerId(2) }, 100).unwrap());
        from(&mut app, 10, hit);
        // Hostile input: an unknown kind, a registered kind that does not decode, nothing.
        from(&mut app, 10, vec![9, 1, 2]);
        from(&mut app, 20, vec![0, 0xff, 0xff, 0xff, 0xff, 0xff]);
        from(&mut app, 20, Vec::new());
        run(&mut app);
        let tally = app.world().resource::<Tally>();
        assert_eq!(tally.0, [(PlayerId(1), PlayerId(2))]);
        assert_eq!(tally.1, [PlayerId(1), PlayerId(2)]);
        assert_eq!(*app.world().resource::<GameApiStats>(), GameApiStats { unknown_kind: 1, undecodable: 2 });
        let games = app.world().resource::<GameServers>();
        assert_eq!(games.get(1).unwrap().position(PlayerId(1)), Some([1.0, 2.0, 3.0]));
        // The answer: FromGame to client 10 only, kind 1 (Score), unreliable as registered.
        let out: Vec<_> = app
            .world_mut()
            .resource_mut::<ShardBus>()
            .drain(Role::Agent)
            .into_iter()
            .filter_map(|m| match m {
                InternalMessage::ToClient { client, msg: ShardMessage::FromGame { reliable, data } } => {
                    Some((client, reliable, data))
                }
                _ => None,
            })
            .collect();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].0, out[0].1, out[0].2[0]), (10, false, 1));
        let score: Score = codec::decode(&out[0].2[1..], 100).unwrap();
        assert_eq!(score, Score(vec![(PlayerId(1), 1)]));
    }

    #[test]
    fn a_player_who_leaves_is_announced_and_can_no_longer_be_sent_to() {
        let mut app = app();
        join(&mut app, 10, 1);
        run(&mut app);
        app.world_mut()
            .resource_mut::<ShardBus>()
            .send(Role::Game(1), &InternalMessage::ClientLeft { client: 10 });
        run(&mut app);
        assert_eq!(app.world().resource::<Tally>().2, [PlayerId(1)]);
        let r = app
            .world_mut()
            .run_system_once(|mut tx: PlayerSender| tx.send(PlayerId(1), &Score(Vec::new())))
            .unwrap();
        assert_eq!(r, Err(GameSendError::NotConnected(PlayerId(1))));
    }
}
