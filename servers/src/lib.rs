//! Headless shard servers and operator tools for P2PModel.
//!
//! - [`config`]: `shard.toml`, validated, with errors that name the key.
//! - [`directory`]: `p2pmodel directory` (the world list) and the shards' heartbeat to it.
//! - [`relay`]: the Punch/Relay role (`p2pmodel shard relay`): data plane and control plane.
//! - [`shard`]: the Agent, Lobby and Game roles (`p2pmodel shard all`), login and tokens.
//! - [`bench`](mod@bench): `p2pmodel bench relay` — our relay against coturn and a raw forwarder.
//! - [`udp_driver`]: runs any sans-IO [`p2pmodel_core::endpoint::Endpoint`] on real UDP sockets.
//! - [`fuzz`]: `p2pmodel fuzz` — structure-aware fuzzing of every decoder and network entry point.
//! - [`netcheck`]: `p2pmodel netcheck` — learn the public address and NAT class from STUN servers.
//! - `agones` (cargo feature `agones`): `p2pmodel shard game --agones`, Game servers as an
//!   Agones GameServer (Ready, Health, allocation, players Counter, Shutdown).

#[cfg(feature = "agones")]
pub mod agones;
pub mod bench;
pub mod config;
pub mod directory;
pub mod embedded;
pub mod fuzz;
pub mod netcheck;
pub mod relay;
pub mod shard;
pub mod udp_driver;
