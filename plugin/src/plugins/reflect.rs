//! Reflection of the core's types the plugin's public components carry (the core has no Bevy),
//! so inspectors show `Peer`, `PeerPath` and `PeerStats` whole. (`LocalPlayer`, a resource
//! holding an `Option<PlayerId>`, is not reflected yet: a remote wrapper cannot sit inside an
//! `Option` field.)

use bevy::reflect::reflect_remote;

use crate::client;
use crate::proto::peer::LinkId;
use crate::proto::shard::PlayerId;

/// `PlayerId`, reflected.
#[reflect_remote(PlayerId)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlayerIdReflect(pub u64);

/// `LinkId`, reflected.
#[reflect_remote(LinkId)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkIdReflect(pub u32);

/// `client::PeerPath`, reflected.
#[reflect_remote(client::PeerPath)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerPathKindReflect {
    /// Introduced; no mesh path yet.
    Connecting,
    /// Through the shard's relay.
    Relayed,
    /// Straight to the peer.
    Direct,
    /// The peer went silent.
    Lost,
    /// P2P is off.
    Server,
}
