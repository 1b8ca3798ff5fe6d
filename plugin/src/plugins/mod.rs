//! The Bevy plugins: thin drivers around the sans-IO [`ClientCore`](crate::client::ClientCore).
//!
//! - [`P2pMeshPlugin`]: the mesh socket ([`MeshIo`], on its own I/O thread when it is a real
//!   socket), the [`P2pClient`] resource, one entity
//!   per introduced peer ([`Peer`], [`PeerPath`], [`PeerStats`]), Bevy messages
//!   ([`PeerConnected`], [`PeerPathChanged`], [`PeerDisconnected`], [`P2pReceived`],
//!   [`NatDiscovered`]) and sending with [`P2pSender`]; typed messages a game registers
//!   ([`P2pAppExt::add_peer_message`], read as [`FromPeer<T>`], sent with [`PeerSender`]).
//! - [`ShardClientPlugin`]: login, the renet/netcode connection to the shard (or any
//!   [`ShardTransport`]), [`ShardState`], [`ShardRequest`] in and [`ShardEvent`] out.
//! - [`P2pDiagnosticsPlugin`]: registered Bevy diagnostics (RTT, loss, paths, bandwidth).
//! - `sim` (feature `sim`): the simulator as a [`MeshIo`], an in-memory shard and an app stepper, so the
//!   same systems run over simulated NATs in tests and examples.
//!
//! Every frame, like bevy_renet:
//!
//! ```text
//! PreUpdate  / P2pReceive : shard messages → core, [mesh datagrams → core, timeouts],
//!                           core events → Bevy messages, peer entities, ShardState
//! Update                  : game code reads messages/components, writes with P2pSender
//! PostUpdate / P2pSend    : ShardRequests → core, [core transmits → socket],
//!                           core shard messages → renet
//! ```
//!
//! The bracketed steps run in the frames only for a socket driven there (the simulator,
//! `io_thread: false`); a real socket's I/O thread does them as datagrams arrive and timers
//! fall due, whatever the frame rate.

mod client;
pub mod diagnostics;
mod io;
mod io_thread;
mod mesh;
mod message;
pub mod reflect;
mod sender;
mod server_typed;
mod sets;
mod shard;
#[cfg(feature = "sim")]
pub mod sim;
mod typed;

pub use client::{ClientGuard, MeshIoStats, P2pClient};
pub use diagnostics::P2pDiagnosticsPlugin;
pub use io::{MeshIo, MeshSocket, MeshSocketState, UdpMeshIo, UdpMeshStats};
pub use io_thread::SEND_COALESCE;
pub use mesh::{
    LocalNat, NatDiscovered, OpenMeshSocket, P2pError, P2pMeshPlugin, P2pReceived, Peer, PeerConnected,
    PeerDisconnected, PeerIndex, PeerPath, PeerPathChanged, PeerStats, ServerReceived,
};
pub use message::{P2pDecodeError, SendError, decode_message, encode_message};
pub use sender::P2pSender;
pub use server_typed::{
    FromServer, MAX_SERVER_TYPES, ServerChannel, ServerMessageRegistry, ServerSender, ServerTypedStats,
};
pub use sets::{P2pReceive, P2pSend};
pub use shard::{
    LocalPlayer, ShardClientPlugin, ShardEvent, ShardLink, ShardRequest, ShardState, ShardTransport,
};
pub use typed::{
    FromPeer, MAX_PEER_TYPES, P2pAppExt, P2pChannel, PeerMessage, PeerMessageRegistry, PeerSender, TYPED_TAG,
    TypedStats,
};
