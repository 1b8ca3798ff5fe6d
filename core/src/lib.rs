//! # p2pmodel-core
//!
//! The sans-IO core of P2PModel: player-to-player networking for real-time games (UDP hole
//! punching, automatic relay fallback, a P2P mesh) as state machines that take `now` and
//! bytes and return datagrams, events and deadlines. No engine, no socket, no clock, no thread:
//! `bevy_p2pmodel` (Bevy plugins), `p2pmodel-sim` (the simulator) and `p2pmodel-servers`
//! drive it.
//!
//! Table of contents:
//! - [`endpoint`]: the `handle_datagram / handle_timeout / poll_transmit / poll_timeout` loop
//!   every state machine here offers.
//! - [`codec`]: the serializer behind every serde wire format, with size limits and our own
//!   error type.
//! - [`conditioner`]: delay, jitter, loss and duplication for a real socket's datagrams.
//! - [`proto`]: wire formats — the mesh socket's datagram header and the shard messages.
//! - [`stun`]: RFC 8489 Binding client and server (sans-IO).
//! - [`nat`]: NAT behaviour discovery (RFC 4787 / RFC 5780 terms).
//! - [`crypto`]: per-link AEAD with replay protection.
//! - [`directory`]: the world list (shards register with an authenticated heartbeat, clients
//!   list them and pick one), sans-IO.
//! - [`config`]: every timing constant of the link, with its reason.
//! - [`guard`]: panic containment where a dependency processes network input.
//! - [`link`]: one peer pair: relay-first, probing, direct path, keepalive, failover.
//! - [`mesh`]: many links over one socket, routed by link id.
//! - [`relay`]: the relay's token check and forwarding logic (sans-IO).
//! - [`client`]: the game client's core (mesh + shard protocol), sans-IO.
//! - [`login`]: the login service's wire format and the client's Noise handshake (sans-IO;
//!   the blocking request lives in `bevy_p2pmodel::client::login::request_token`).

pub mod client;
pub mod codec;
pub mod conditioner;
pub mod config;
pub mod crypto;
pub mod directory;
pub mod endpoint;
pub mod guard;
pub mod link;
pub mod login;
pub mod mesh;
pub mod nat;
pub mod proto;
pub mod relay;
pub mod shard;
pub mod stun;
