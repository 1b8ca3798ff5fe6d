//! The game client's core ([`ClientCore`], sans-IO), re-exported from
//! [`p2pmodel_core::client`] at its old path, the blocking [`login`] request and
//! the [`directory`] query (which shards exist).

pub use p2pmodel_core::client::*;

pub mod directory;
pub mod login;
