//! The Punch/Relay role: `p2pmodel shard relay`.
//!
//! - [`server`]: the data plane — one thread per core, each with its own socket and its own
//!   sans-IO [`p2pmodel_core::relay::Relay`], batched I/O; [`RelayServer`] is its handle.
//! - [`steer`]: the reuseport group and the BPF program that steers by link id.
//! - [`batch`]: `recvmmsg` / `sendmmsg` buffers, allocated once.
//! - [`stun`]: the [`StunHook`] STUN datagrams are handed to, and a minimal Binding responder.
//! - [`metrics`]: the Prometheus endpoint; [`histogram`]: forwarding latency buckets.
//! - [`keys`]: the [`RelayKey`] (the relay's only secret) and the token keys derived from it
//!   per time epoch (rotation).
//! - [`app`]: the Bevy control plane (key rotation, stats log, health, signals).
//! - [`client`]: a blocking bind client for the bench and the tests.

pub mod app;
pub mod batch;
pub mod client;
pub mod histogram;
/// Relay token keys (moved to the core: the shard's minter and every relay share them).
pub use p2pmodel_core::relay::keys;
pub mod metrics;
pub mod server;
pub mod stats;
pub mod steer;
pub mod stun;

pub use app::{RelayControlPlugin, RelayRuntime, relay_app, run_relay};
pub use keys::{KeySchedule, RelayKey};
pub use server::{
    GSO_SEND_DEFAULT, PlaneStats, RelayServer, RelayServerOptions, ServerError, StatsSnapshot,
    StunHookFactory,
};
pub use stun::StunHook;
