//! What demo clients send each other over the P2P mesh (or through the Game server while a
//! link is connecting): bincode-encoded by the plugin's `P2pSender`.

use serde::{Deserialize, Serialize};

/// A message between two demo clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Unreliable, every tick (20 Hz): where the sender is. The newest `seq` wins.
    State(PlayerState),
    /// Reliable, 10 per second per peer: a sequence number, counted by the receiver
    /// (`gaps`, `dups`) to check the reliable channel end to end.
    Seq {
        /// 0, 1, 2, ... per (sender, receiver) pair.
        seq: u64,
    },
}

/// A player's state, as its own client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlayerState {
    /// Per-sender sequence number (one per tick).
    pub seq: u64,
    /// World x.
    pub x: f32,
    /// World y.
    pub y: f32,
    /// Velocity x (units per second), for extrapolation between ticks.
    pub vx: f32,
    /// Velocity y.
    pub vy: f32,
}
