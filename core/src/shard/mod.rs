//! The shard's role logic, sans-IO: the Agent's routing, the Lobby, the Game world and the
//! introduction of peers, as state machines that take `now` (and an rng where they draw keys)
//! and return messages on a [`Bus`]. No socket, no clock, no thread, no engine.
//!
//! The roles never call each other: they exchange [`InternalMessage`](crate::proto::shard::InternalMessage)s,
//! encoded, through a [`Bus`] (one queue per destination role), exactly what a cross-process
//! internal link carries. Drivers around them:
//! - `p2pmodel-servers`: Bevy apps that run each role over real sockets (renet/netcode for
//!   clients, Noise-encrypted TCP links between roles), in one process or split;
//! - [`LocalShard`]: every role of one shard in one sans-IO value, for the simulator, tests
//!   and benchmarks (clients attach with bytes in, bytes out).
//!
//! - [`agent`]: sessions, per-client rate limit, `MeshInfo` cleaning, routing by phase;
//! - [`lobby`]: characters, zones, Game placement, parties, Game failure detection;
//! - [`game`]: the world of a zone: movement validation, interest and mesh membership, chat,
//!   server-routed peer messages, NPCs, relay token refresh;
//! - [`intro`]: **the** peer introduction (link ids, keys, candidate scoping, relay tokens);
//! - [`party`]: parties by invitation;
//! - [`bus`]: the queues between roles.

pub mod agent;
pub mod bus;
pub mod game;
pub mod intro;
pub mod lobby;
pub mod local;
pub mod party;
pub mod resume;

pub use agent::{AgentRouter, Session};
pub use bus::{Bus, BusObserver};
pub use game::{GameConfig, GameEvent, GameRules, GameStats, GameWorld, Interest, Movement, Pair};
pub use intro::{IntroRefusals, IntroSide, Introduction, introduce};
pub use lobby::RECONNECT_MAX;
pub use lobby::{CharacterStore, Lobby, LobbySettings, MemoryStore, StoredCharacter};
pub use local::{LocalShard, LocalShardConfig};
pub use party::{Parties, PartyError, PartyRules};
