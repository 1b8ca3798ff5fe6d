//! Headless shard servers and operator tools for P2PModel.
//!
//! - [`udp_driver`]: runs any sans-IO [`bevy_p2pmodel::endpoint::Endpoint`] on real UDP sockets.
//! - [`netcheck`]: `p2pmodel netcheck` — learn the public address and NAT class from STUN servers.

pub mod netcheck;
pub mod udp_driver;
