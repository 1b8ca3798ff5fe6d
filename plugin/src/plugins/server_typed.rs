//! Typed messages between the game and its own logic on the Game server (the shard's game
//! API, `p2pmodel_servers::shard::game_api`):
//!
//! ```ignore
//! app.add_server_message::<Hit>(ServerChannel::Reliable)
//!    .add_server_message::<Scores>(ServerChannel::Reliable);
//! // a system sends:  mut tx: ServerSender  →  tx.send(&Hit { target })?
//! // a system reads:  mut rx: MessageReader<FromServer<Scores>>
//! ```
//!
//! On the wire (inside `ClientMessage::ToGame` / `ShardMessage::FromGame`) a message is
//! `kind u8 | value`: `kind` is the type's registration index, so the game's client and its
//! server logic register the same types in the same order. Unknown kinds and values that do
//! not decode are dropped and counted in [`ServerTypedStats`].

use std::any::{TypeId, type_name};

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use super::client::P2pClient;
use super::mesh::ServerReceived;
use super::message::SendError;
use super::sets::Step;
use super::typed::PeerMessage;
use crate::proto::shard::{MAX_GAME_DATA, MAX_GAME_DATA_TO_CLIENT};

/// At most this many server message types (the kind is one byte).
pub const MAX_SERVER_TYPES: usize = 256;

/// How the client sends a registered type to its Game server (the shard connection's
/// channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Reflect)]
pub enum ServerChannel {
    /// Every message once, in order (commands, chat, purchases).
    Reliable,
    /// Fire and forget (inputs superseded by the next one).
    Unreliable,
}

#[derive(Debug, Clone)]
struct Registered {
    type_id: TypeId,
    name: &'static str,
    channel: ServerChannel,
}

/// The registered server message types, in registration order (the kind byte is the index).
#[derive(Resource, Debug, Default)]
pub struct ServerMessageRegistry {
    types: Vec<Registered>,
}

impl ServerMessageRegistry {
    /// The kind byte and channel of `T`, if registered.
    pub fn kind_of<T: 'static>(&self) -> Option<(u8, ServerChannel)> {
        let id = TypeId::of::<T>();
        self.types.iter().position(|r| r.type_id == id).map(|i| (i as u8, self.types[i].channel))
    }

    /// The registered types' names in kind order (to compare with the server's).
    pub fn names(&self) -> Vec<&'static str> {
        self.types.iter().map(|r| r.name).collect()
    }
}

/// Counters of messages from the Game server dropped on receipt.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq, Reflect)]
pub struct ServerTypedStats {
    /// Messages of a kind this app did not register (another build of the game?).
    pub unknown_kind: u64,
    /// Messages of a registered kind whose value did not decode (or empty ones).
    pub undecodable: u64,
}

/// A typed message from the game's logic on our Game server.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct FromServer<T> {
    /// The message.
    pub message: T,
}

pub(super) fn register<T: PeerMessage>(app: &mut App, channel: ServerChannel) {
    app.add_message::<ServerReceived>();
    if !app.world().contains_resource::<ServerMessageRegistry>() {
        app.add_systems(PreUpdate, count_unknown_kinds.in_set(Step::After));
    }
    let world = app.world_mut();
    world.init_resource::<ServerMessageRegistry>();
    world.init_resource::<ServerTypedStats>();
    let mut reg = world.resource_mut::<ServerMessageRegistry>();
    assert!(reg.kind_of::<T>().is_none(), "add_server_message::<{}>: registered twice", type_name::<T>());
    assert!(
        reg.types.len() < MAX_SERVER_TYPES,
        "add_server_message::<{}>: at most {MAX_SERVER_TYPES} server message types",
        type_name::<T>()
    );
    reg.types.push(Registered { type_id: TypeId::of::<T>(), name: type_name::<T>(), channel });
    app.add_message::<FromServer<T>>().add_systems(PreUpdate, receive_typed::<T>.in_set(Step::After));
}

/// Sends registered message types to the game's logic on our Game server. One parameter
/// sends every type.
#[derive(SystemParam)]
pub struct ServerSender<'w> {
    client: Res<'w, P2pClient>,
    registry: Res<'w, ServerMessageRegistry>,
}

impl ServerSender<'_> {
    /// Send `value` to our Game server on its registered channel. Errors: not in a zone yet
    /// ([`SendError::NotInGame`]), the shard unreachable ([`SendError::Offline`]), larger than
    /// the game message limit ([`SendError::TooLarge`]).
    ///
    /// # Panics
    /// When `T` was not registered with
    /// [`P2pAppExt::add_server_message`](super::P2pAppExt::add_server_message) (a programming error).
    pub fn send<T: PeerMessage>(&mut self, value: &T) -> Result<(), SendError> {
        let (kind, channel) = self.registry.kind_of::<T>().unwrap_or_else(|| {
            panic!(
                "ServerSender: call app.add_server_message::<{0}>() before sending a {0}",
                type_name::<T>()
            )
        });
        let mut data = vec![kind];
        match crate::codec::encode(value, MAX_GAME_DATA - 1) {
            Ok(b) => data.extend_from_slice(&b),
            Err(crate::codec::CodecError::TooLarge { len, .. }) => return Err(SendError::TooLarge(len + 1)),
            Err(e) => return Err(SendError::Encode(e.to_string())),
        }
        Ok(self.client.lock().send_to_game(channel == ServerChannel::Reliable, &data)?)
    }
}

/// [`ServerReceived`] of `T`'s kind → [`FromServer<T>`].
fn receive_typed<T: PeerMessage>(
    mut received: MessageReader<ServerReceived>,
    registry: Res<ServerMessageRegistry>,
    mut stats: ResMut<ServerTypedStats>,
    mut out: MessageWriter<FromServer<T>>,
) {
    let Some((kind, _)) = registry.kind_of::<T>() else { return };
    for m in received.read() {
        let Some((&k, body)) = m.data.split_first() else { continue };
        if k != kind {
            continue;
        }
        match crate::codec::decode::<T>(body, MAX_GAME_DATA_TO_CLIENT) {
            Ok(message) => {
                out.write(FromServer { message });
            }
            Err(_) => stats.undecodable += 1,
        }
    }
}

/// Messages of a kind nobody registered, and empty ones (counted once, here).
fn count_unknown_kinds(
    mut received: MessageReader<ServerReceived>,
    registry: Res<ServerMessageRegistry>,
    mut stats: ResMut<ServerTypedStats>,
) {
    for m in received.read() {
        match m.data.first() {
            None => stats.undecodable += 1,
            Some(k) if usize::from(*k) >= registry.types.len() => stats.unknown_kind += 1,
            Some(_) => {}
        }
    }
}
