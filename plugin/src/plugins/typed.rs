//! Typed peer messages a game registers, each with its own channel:
//!
//! ```ignore
//! app.add_peer_message::<PlayerState>(P2pChannel::UnreliableSequenced)
//!    .add_peer_message::<Hit>(P2pChannel::ReliableOrdered);
//! // a system sends:   mut tx: PeerSender  →  tx.broadcast(&state)?; tx.send(player, &hit)?
//! // a system reads:   mut rx: MessageReader<FromPeer<Hit>>
//! ```
//!
//! On the wire a typed message is `B7 | kind u8 | [seq u16 BE, sequenced kinds only] | value`
//! (the value encoded by [`crate::codec`], as [`encode_message`] does): `kind` is the type's
//! registration index, so both ends must register the same types in the same order (as with
//! bevy_replicon or lightyear). A frame of an unknown kind, a value that does not decode and
//! an old sequenced value are dropped and counted in [`TypedStats`]; nothing panics.

use std::any::{TypeId, type_name};
use std::collections::HashMap;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::P2pClient;
use super::mesh::{P2pReceived, PeerConnected};
use super::message::{SendError, decode_message};
use super::sets::Step;
use crate::client::{self, Channel};
use crate::proto::shard::PlayerId;

/// First byte of every typed message.
pub const TYPED_TAG: u8 = 0xB7;
/// At most this many peer message types per app (the kind is one byte).
pub const MAX_PEER_TYPES: usize = 255;

/// How a registered message type travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Reflect)]
pub enum P2pChannel {
    /// Every message once, in order (events, chat, inventory). Sent after the unreliable
    /// channel within a packet budget, so bulk data does not starve state updates.
    ReliableOrdered,
    /// Fire and forget; may arrive out of order or not at all.
    Unreliable,
    /// Fire and forget, newest wins: a message older than the newest already received from
    /// that peer (of that type) is dropped (per-tick state).
    UnreliableSequenced,
}

impl P2pChannel {
    fn core(self) -> Channel {
        match self {
            P2pChannel::ReliableOrdered => Channel::Reliable,
            P2pChannel::Unreliable | P2pChannel::UnreliableSequenced => Channel::Unreliable,
        }
    }
}

/// What a type needs to be a peer message: serde both ways, sendable between threads.
pub trait PeerMessage: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> PeerMessage for T {}

/// One registered type.
#[derive(Debug, Clone)]
struct Registered {
    type_id: TypeId,
    name: &'static str,
    channel: P2pChannel,
}

/// The registered peer message types, in registration order (the kind byte is the index).
#[derive(Resource, Debug, Default)]
pub struct PeerMessageRegistry {
    types: Vec<Registered>,
}

impl PeerMessageRegistry {
    /// The kind byte and channel of `T`, if registered.
    pub fn kind_of<T: 'static>(&self) -> Option<(u8, P2pChannel)> {
        let id = TypeId::of::<T>();
        self.types.iter().position(|r| r.type_id == id).map(|i| (i as u8, self.types[i].channel))
    }

    /// The registered types' names in kind order (to compare two builds of a game).
    pub fn names(&self) -> Vec<&'static str> {
        self.types.iter().map(|r| r.name).collect()
    }
}

/// Counters of typed messages dropped on receipt.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq, Reflect)]
pub struct TypedStats {
    /// Typed frames whose kind this app did not register (another build of the game?).
    pub unknown_kind: u64,
    /// Frames of a registered kind whose value did not decode.
    pub undecodable: u64,
    /// Sequenced messages older than the newest received (dropped by design).
    pub stale: u64,
}

/// Sequence state of sequenced kinds: our next number per kind, the newest received per
/// (peer, kind).
#[derive(Resource, Debug, Default)]
struct Sequences {
    next: HashMap<u8, u16>,
    newest: HashMap<(PlayerId, u8), u16>,
}

/// A typed message from a peer (registered with [`P2pAppExt::add_peer_message`]).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct FromPeer<T> {
    /// The sender.
    pub player: PlayerId,
    /// The sender's entity (`Entity::PLACEHOLDER` if it was already despawned).
    pub entity: Entity,
    /// The message.
    pub message: T,
    /// `true` over the mesh, `false` through the Game server.
    pub p2p: bool,
}

/// Registering message types on an [`App`].
pub trait P2pAppExt {
    /// Register `T` as a peer message sent on `channel`: read with
    /// `MessageReader<FromPeer<T>>`, send with [`PeerSender`]. Needs [`super::P2pMeshPlugin`]
    /// first; both ends register the same types in the same order.
    ///
    /// # Panics
    /// At app build, when `T` is registered twice or more than [`MAX_PEER_TYPES`] types are.
    fn add_peer_message<T: PeerMessage>(&mut self, channel: P2pChannel) -> &mut Self;

    /// Register `T` as a message between this game and its own logic on the Game server,
    /// sent on `channel`: read with `MessageReader<FromServer<T>>`, send with
    /// [`super::ServerSender`]. The server registers the same types in the same order
    /// (`add_game_message` of the shard's game API).
    ///
    /// # Panics
    /// At app build, when `T` is registered twice or more than
    /// [`super::MAX_SERVER_TYPES`] types are.
    fn add_server_message<T: PeerMessage>(&mut self, channel: super::ServerChannel) -> &mut Self;
}

impl P2pAppExt for App {
    fn add_server_message<T: PeerMessage>(&mut self, channel: super::ServerChannel) -> &mut Self {
        super::server_typed::register::<T>(self, channel);
        self
    }

    fn add_peer_message<T: PeerMessage>(&mut self, channel: P2pChannel) -> &mut Self {
        // Whatever the order of `add_plugins`: the messages these systems read exist.
        self.add_message::<P2pReceived>().add_message::<PeerConnected>();
        if !self.world().contains_resource::<PeerMessageRegistry>() {
            self.add_systems(PreUpdate, (reset_sequences, count_unknown_kinds).chain().in_set(Step::After));
        }
        let world = self.world_mut();
        world.init_resource::<PeerMessageRegistry>();
        world.init_resource::<TypedStats>();
        world.init_resource::<Sequences>();
        let mut reg = world.resource_mut::<PeerMessageRegistry>();
        assert!(reg.kind_of::<T>().is_none(), "add_peer_message::<{}>: registered twice", type_name::<T>());
        assert!(
            reg.types.len() < MAX_PEER_TYPES,
            "add_peer_message::<{}>: at most {MAX_PEER_TYPES} peer message types",
            type_name::<T>()
        );
        reg.types.push(Registered { type_id: TypeId::of::<T>(), name: type_name::<T>(), channel });
        self.add_message::<FromPeer<T>>()
            .add_systems(PreUpdate, receive_typed::<T>.in_set(Step::After).after(reset_sequences))
    }
}

/// Frame a value of kind `kind`: tag, kind, sequence (sequenced kinds), value.
fn frame<T: Serialize>(kind: u8, seq: Option<u16>, value: &T) -> Result<Bytes, SendError> {
    let mut out = vec![TYPED_TAG, kind];
    if let Some(s) = seq {
        out.extend_from_slice(&s.to_be_bytes());
    }
    let room = client::MAX_APP_MESSAGE.saturating_sub(out.len());
    match crate::codec::encode(value, room) {
        Ok(b) => out.extend_from_slice(&b),
        Err(crate::codec::CodecError::TooLarge { len, .. }) => return Err(SendError::TooLarge(len + 2)),
        Err(e) => return Err(SendError::Encode(e.to_string())),
    }
    Ok(Bytes::from(out))
}

/// Whether `seq` is newer than `newest` (16-bit wrapping: within half the range ahead).
fn is_newer(seq: u16, newest: u16) -> bool {
    let d = seq.wrapping_sub(newest);
    d != 0 && d < 0x8000
}

/// Sends registered message types to peers, each on its registered channel: over the mesh
/// when the peer has a path, through the Game server otherwise (as [`super::P2pSender`]). One
/// parameter sends every type, so one system may send several.
#[derive(SystemParam)]
pub struct PeerSender<'w> {
    client: Res<'w, P2pClient>,
    registry: Res<'w, PeerMessageRegistry>,
    sequences: ResMut<'w, Sequences>,
}

impl PeerSender<'_> {
    fn framed<T: PeerMessage>(&mut self, value: &T) -> Result<(Bytes, Channel), SendError> {
        let (kind, channel) = self.registry.kind_of::<T>().unwrap_or_else(|| {
            panic!("PeerSender: call app.add_peer_message::<{0}>() before sending a {0}", type_name::<T>())
        });
        let seq = (channel == P2pChannel::UnreliableSequenced).then(|| {
            let s = self.sequences.next.entry(kind).or_insert(0);
            *s = s.wrapping_add(1);
            *s
        });
        Ok((frame(kind, seq, value)?, channel.core()))
    }

    /// Send to one peer. `Ok(true)`: it went over the mesh.
    ///
    /// # Panics
    /// When `T` was not registered with [`P2pAppExt::add_peer_message`] (a programming error).
    pub fn send<T: PeerMessage>(&mut self, player: PlayerId, value: &T) -> Result<bool, SendError> {
        let (data, channel) = self.framed(value)?;
        Ok(self.client.send(player, channel, data)?)
    }

    /// Send to every introduced peer. Returns how many went over the mesh.
    ///
    /// # Panics
    /// When `T` was not registered with [`P2pAppExt::add_peer_message`].
    pub fn broadcast<T: PeerMessage>(&mut self, value: &T) -> Result<usize, SendError> {
        let (data, channel) = self.framed(value)?;
        Ok(self.client.broadcast(channel, data)?)
    }
}

/// [`P2pReceived`] frames of `T`'s kind → [`FromPeer<T>`] (sequenced: only newer ones).
fn receive_typed<T: PeerMessage>(
    mut received: MessageReader<P2pReceived>,
    registry: Res<PeerMessageRegistry>,
    mut sequences: ResMut<Sequences>,
    mut stats: ResMut<TypedStats>,
    mut out: MessageWriter<FromPeer<T>>,
) {
    let Some((kind, channel)) = registry.kind_of::<T>() else { return };
    for m in received.read() {
        let Some((&TYPED_TAG, rest)) = m.data.split_first() else { continue };
        let Some((&k, mut body)) = rest.split_first() else { continue };
        if k != kind {
            continue;
        }
        if channel == P2pChannel::UnreliableSequenced {
            let Some((s, b)) = body.split_first_chunk::<2>() else {
                stats.undecodable += 1;
                continue;
            };
            let seq = u16::from_be_bytes(*s);
            body = b;
            let newest = sequences.newest.get(&(m.player, kind)).copied();
            if newest.is_some_and(|n| !is_newer(seq, n)) {
                stats.stale += 1;
                continue;
            }
            sequences.newest.insert((m.player, kind), seq);
        }
        match decode_message::<T>(body) {
            Ok(message) => {
                out.write(FromPeer { player: m.player, entity: m.entity, message, p2p: m.p2p });
            }
            Err(_) => stats.undecodable += 1,
        }
    }
}

/// A peer introduced (again) starts its sequences afresh: it may be a restarted game whose
/// counters began at zero.
fn reset_sequences(mut connected: MessageReader<PeerConnected>, mut sequences: ResMut<Sequences>) {
    for c in connected.read() {
        sequences.newest.retain(|(p, _), _| *p != c.player);
    }
}

/// Typed frames of a kind nobody registered (counted once, here).
fn count_unknown_kinds(
    mut received: MessageReader<P2pReceived>,
    registry: Res<PeerMessageRegistry>,
    mut stats: ResMut<TypedStats>,
) {
    for m in received.read() {
        if let [TYPED_TAG, k, ..] = m.data[..]
            && usize::from(k) >= registry.types.len()
        {
            stats.unknown_kind += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_tag_kind_and_sequence_and_sequence_numbers_wrap() {
        let f = frame(3, Some(0x0102), &7u32).unwrap();
        assert_eq!(&f[..], &[TYPED_TAG, 3, 1, 2, 7]);
        let f = frame(0, None, &"hi").unwrap();
        assert_eq!(&f[..], &[TYPED_TAG, 0, 2, b'h', b'i']);
        assert!(is_newer(1, 0) && is_newer(0, 0xffff) && is_newer(0x7fff, 0));
        assert!(!is_newer(0, 0) && !is_newer(0xffff, 0) && !is_newer(0x8000, 0));
        let big = vec![0u8; client::MAX_APP_MESSAGE];
        assert!(matches!(frame(0, None, &big), Err(SendError::TooLarge(_))));
    }
}
