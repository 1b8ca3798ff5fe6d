//! The Bevy plugins: thin drivers around the sans-IO [`ClientCore`](crate::client::ClientCore).
//!
//! - [`P2pMeshPlugin`]: the mesh socket ([`MeshIo`]), the [`P2pClient`] resource, one entity
//!   per introduced peer ([`Peer`], [`PeerPath`], [`PeerStats`]), Bevy messages
//!   ([`PeerConnected`], [`PeerPathChanged`], [`PeerDisconnected`], [`P2pReceived`],
//!   [`NatDiscovered`]) and sending with [`P2pSender`].
//! - [`ShardClientPlugin`]: login, the renet/netcode connection to the shard (or any
//!   [`ShardTransport`]), [`ShardState`], [`ShardRequest`] in and [`ShardEvent`] out.
//! - [`P2pDiagnosticsPlugin`]: registered Bevy diagnostics (RTT, loss, paths, bandwidth).
//! - `sim` (feature `sim`): the simulator as a [`MeshIo`], an in-memory shard and an app stepper, so the
//!   same systems run over simulated NATs in tests and examples.
//!
//! Every frame, like bevy_renet:
//!
//! ```text
//! PreUpdate  / P2pReceive : shard messages → core, mesh datagrams → core, timeouts,
//!                           core events → Bevy messages, peer entities, ShardState
//! Update                  : game code reads messages/components, writes with P2pSender
//! PostUpdate / P2pSend    : ShardRequests → core, core transmits → socket,
//!                           core shard messages → renet
//! ```

use bevy::prelude::*;

pub mod diagnostics;
mod io;
mod mesh;
mod sender;
mod shard;
#[cfg(feature = "sim")]
pub mod sim;

pub use diagnostics::P2pDiagnosticsPlugin;
pub use io::{MeshIo, MeshSocket, UdpMeshIo, UdpMeshStats};
pub use mesh::{
    LocalNat, NatDiscovered, P2pClient, P2pMeshPlugin, P2pReceived, Peer, PeerConnected, PeerDisconnected,
    PeerIndex, PeerPath, PeerPathChanged, PeerStats,
};
pub use sender::{P2pDecodeError, P2pSender, SendError, decode_message, encode_message};
pub use shard::{
    LocalPlayer, ShardClientPlugin, ShardEvent, ShardLink, ShardRequest, ShardState, ShardTransport,
};

/// Systems that feed the shard's messages and the mesh socket's datagrams into the core and
/// publish what happened (runs in `PreUpdate`, after bevy_renet's `RenetReceive`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct P2pReceive;

/// Systems that hand the core's datagrams to the mesh socket and its shard messages to
/// renet (runs in `PostUpdate`, before bevy_renet's `RenetSend`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct P2pSend;

/// The order of the plugins' own steps inside [`P2pReceive`] and [`P2pSend`] (both plugins
/// configure it, so either may be added alone).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    /// Shard transport → core.
    ShardIn,
    /// Mesh socket → core, timeouts.
    MeshIn,
    /// Core events → Bevy messages and entities.
    Events,
    /// State derived from the events (ShardState, auto zone, stats, diagnostics).
    After,
    /// Game requests → core.
    Requests,
    /// Core → mesh socket and shard transport.
    Out,
}

/// Configure the two sets and the steps inside them (idempotent).
pub(crate) fn configure_sets(app: &mut App) {
    app.configure_sets(PreUpdate, P2pReceive.after(bevy_renet::RenetReceive));
    app.configure_sets(PostUpdate, P2pSend.before(bevy_renet::RenetSend));
    app.configure_sets(
        PreUpdate,
        (Step::ShardIn, Step::MeshIn, Step::Events, Step::After).chain().in_set(P2pReceive),
    );
    app.configure_sets(PostUpdate, (Step::Requests, Step::Out).chain().in_set(P2pSend));
}
