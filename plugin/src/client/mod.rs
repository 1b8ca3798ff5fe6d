//! The game client's core ([`ClientCore`], sans-IO), re-exported from
//! [`p2pmodel_core::client`] at its old path, and the blocking [`login`] request.

pub use p2pmodel_core::client::*;

pub mod login;
