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
//! - [`link`]: one peer pair: relay-first, probing, direct path, keepalive, failover.
//! - [`mesh`]: many links over one socket, routed by link id.
//! - [`relay`]: the relay's token check and forwarding logic (sans-IO).
//! - [`client`]: the game client's core (mesh + shard protocol), sans-IO.
//! - [`sim`]: a deterministic network simulator with RFC 4787 NAT models.

pub mod client;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod link;
pub mod mesh;
pub mod nat;
pub mod proto;
pub mod relay;
pub mod sim;
pub mod stun;
