//! # bevy_p2pmodel
//!
//! Player-to-player networking for real-time games: UDP hole punching, automatic relay
//! fallback and a P2P mesh, with a sans-IO core (no sockets, threads or clocks) and Bevy
//! plugins that drive it.
//!
//! The sans-IO state machines live in [`p2pmodel_core`] (no Bevy, no sockets, no clock) and
//! the simulator in `p2pmodel_sim`; this crate adds the Bevy plugins that drive them and
//! re-exports the core's modules at their old paths, so `bevy_p2pmodel::link::Link` and
//! `p2pmodel_core::link::Link` are the same type.
//!
//! Table of contents:
//! - [`plugins`]: the Bevy plugins (mesh, shard client, diagnostics) that drive the core;
//!   [`prelude`] has what a game needs.
//! - [`client`]: the game client's core (`ClientCore`, from the core crate) and the blocking
//!   login request ([`client::login::request_token`]).
//! - Re-exported from [`p2pmodel_core`]: [`endpoint`], [`codec`], [`conditioner`], [`proto`], [`stun`], [`nat`],
//!   [`crypto`], [`config`], [`guard`], [`link`], [`mesh`], [`relay`].
//! - `sim` (feature `sim`, off by default: tests and examples enable it): the deterministic
//!   network simulator, `p2pmodel_sim`, and `plugins::sim`, its Bevy driver.
//!
//! ## Quick start
//!
//! Two plugins connect a game to a shard and to its peers; the game registers its own message
//! types (peer to peer, and to its logic on the shard's Game server) and sends them:
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_p2pmodel::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! /// Our state, 20 times a second to every peer: newest wins.
//! #[derive(Serialize, Deserialize)]
//! struct Pose {
//!     pos: [f32; 3],
//! }
//!
//! /// A command for the game's own logic on the Game server.
//! #[derive(Serialize, Deserialize)]
//! struct Buy {
//!     item: u32,
//! }
//!
//! fn main() {
//!     // KEY@HOST:PORT, as `p2pmodel shard all` prints it.
//!     let shard: ShardAddress = std::env::args().nth(1).unwrap_or_default().parse().expect("KEY@HOST:PORT");
//!     App::new()
//!         .add_plugins(MinimalPlugins)
//!         .add_plugins((P2pMeshPlugin::new("ana"), ShardClientPlugin::new(shard)))
//!         .add_peer_message::<Pose>(P2pChannel::UnreliableSequenced)
//!         .add_server_message::<Buy>(ServerChannel::Reliable)
//!         .add_systems(Update, (send_pose, report))
//!         .run();
//! }
//!
//! fn send_pose(mut peers: PeerSender) {
//!     let _ = peers.broadcast(&Pose { pos: [0.0, 1.0, 2.0] });
//! }
//!
//! fn report(mut poses: MessageReader<FromPeer<Pose>>, mut server: ServerSender) {
//!     for p in poses.read() {
//!         println!("{:?} is at {:?}", p.player, p.message.pos);
//!         let _ = server.send(&Buy { item: 1 }); // an error until we are in a zone
//!     }
//! }
//! ```

pub mod client;
pub mod plugins;

pub use p2pmodel_core::{
    codec, conditioner, config, crypto, endpoint, guard, link, mesh, nat, proto, relay, stun,
};
#[cfg(feature = "sim")]
pub use p2pmodel_sim as sim;

/// What a game needs: the plugins, their sets, messages, components and resources, and the
/// core types they carry.
pub mod prelude {
    pub use crate::client::login::{LoginKey, ShardAddress};
    pub use crate::client::{Channel, ClientConfig, DisconnectReason, PeerPath as PathKind, ShardNotice};
    pub use crate::conditioner::ConditionerConfig;
    pub use crate::nat::NatReport;
    pub use crate::plugins::diagnostics as p2p_diagnostics;
    pub use crate::plugins::{
        FromPeer, FromServer, LocalNat, LocalPlayer, MeshIo, MeshSocket, MeshSocketState, NatDiscovered,
        OpenMeshSocket, P2pAppExt, P2pChannel, P2pClient, P2pDecodeError, P2pDiagnosticsPlugin, P2pError,
        P2pMeshPlugin, P2pReceive, P2pReceived, P2pSend, P2pSender, Peer, PeerConnected, PeerDisconnected,
        PeerIndex, PeerMessageRegistry, PeerPath, PeerPathChanged, PeerSender, PeerStats, SendError,
        ServerChannel, ServerSender, ShardClientPlugin, ShardEvent, ShardLink, ShardRequest, ShardState,
        ShardTransport, TypedStats, UdpMeshIo,
    };
    pub use crate::proto::shard::PlayerId;
}
