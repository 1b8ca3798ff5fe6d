//! # bevy_p2pmodel
//!
//! Player-to-player networking for real-time games: UDP hole punching, automatic relay
//! fallback and a P2P mesh, with a sans-IO core (no sockets, threads or clocks) and Bevy
//! plugins that drive it.
//!
//! Table of contents:
//! - [`endpoint`]: the `handle_datagram / handle_timeout / poll_transmit / poll_timeout` loop
//!   every state machine here offers.
//! - [`proto`]: wire formats — the mesh socket's datagram header and the shard messages.
//! - [`stun`]: RFC 8489 Binding client and server (sans-IO).
//! - [`nat`]: NAT behaviour discovery (RFC 4787 / RFC 5780 terms).
//! - [`crypto`]: per-link AEAD with replay protection.
//! - [`config`]: every timing constant of the link, with its reason.
//! - [`guard`]: panic containment where a dependency processes network input.
//! - [`link`]: one peer pair: relay-first, probing, direct path, keepalive, failover.
//! - [`mesh`]: many links over one socket, routed by link id.
//! - [`relay`]: the relay's token check and forwarding logic (sans-IO).
//! - [`client`]: the game client's core (mesh + shard protocol), sans-IO.
//! - [`sim`]: a deterministic network simulator with RFC 4787 NAT models.
//! - [`plugins`]: the Bevy plugins (mesh, shard client, diagnostics) that drive the core;
//!   [`prelude`] has what a game needs.

pub mod client;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod guard;
pub mod link;
pub mod mesh;
pub mod nat;
pub mod plugins;
pub mod proto;
pub mod relay;
pub mod sim;
pub mod stun;

/// What a game needs: the plugins, their sets, messages, components and resources, and the
/// core types they carry.
pub mod prelude {
    pub use crate::client::{Channel, ClientConfig, PeerPath as PathKind};
    pub use crate::nat::NatReport;
    pub use crate::plugins::diagnostics as p2p_diagnostics;
    pub use crate::plugins::{
        LocalNat, LocalPlayer, MeshIo, MeshSocket, NatDiscovered, P2pClient, P2pDecodeError,
        P2pDiagnosticsPlugin, P2pMeshPlugin, P2pReceive, P2pReceived, P2pSend, P2pSender, Peer,
        PeerConnected, PeerDisconnected, PeerIndex, PeerPath, PeerPathChanged, PeerStats, SendError,
        ShardClientPlugin, ShardEvent, ShardLink, ShardRequest, ShardState, ShardTransport, UdpMeshIo,
    };
    pub use crate::proto::shard::{NpcState, PlayerId};
}
