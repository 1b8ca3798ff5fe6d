//! What the shard hands a peer to open a link (sent in a `PeerIntro` or `RelayRefresh`):
//! candidate addresses, the NAT hint, the link key and the relay binding. Plain wire types;
//! the link and mesh state machines re-export them under their old paths.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::proto::peer::{LinkId, Side};
use crate::proto::relay::{BindKey, RelayToken};

/// The per-link secret the shard issues to both peers of a link.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkKey(pub [u8; 32]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

/// Where a candidate address came from; also its probing priority (higher first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CandidateKind {
    /// A port guessed from a sequential allocator's last mapping.
    Predicted,
    /// The address the relay forwards through (never probed; listed for completeness).
    Relayed,
    /// Learned from a STUN server or the relay: the peer's public mapping.
    ServerReflexive,
    /// Learned from an authenticated datagram that arrived from an unlisted address.
    PeerReflexive,
    /// An address of the peer's own interfaces (works on a shared LAN).
    Host,
}

/// One address at which a peer may be reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// How it was learned.
    pub kind: CandidateKind,
    /// The address.
    pub addr: SocketAddr,
}

impl Candidate {
    /// Shorthand constructor.
    pub fn new(kind: CandidateKind, addr: SocketAddr) -> Self {
        Self { kind, addr }
    }
}

/// Largest port step a NAT hint may carry: real sequential allocators step by 1 or 2 (a few
/// more with concurrent users); anything beyond this is treated as unknown (`None`), so a
/// hostile hint cannot aim predicted probes far from the peer's mapping.
pub const MAX_PORT_DELTA: i32 = 64;

/// What the shard knows of a peer's NAT, for port prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NatHint {
    /// The peer's NAT maps per destination (ADM/APDM): its srflx port toward us is unknown.
    pub dependent_mapping: bool,
    /// Port step of a sequential allocator (`None` for random or preserving).
    pub port_delta: Option<i32>,
}

impl NatHint {
    /// The hint with a `port_delta` outside `-MAX_PORT_DELTA..=MAX_PORT_DELTA` (or 0)
    /// replaced by `None` (unknown): what a shard and a link apply to a hint from a player.
    pub fn sanitized(self) -> NatHint {
        NatHint { port_delta: clamp_port_delta(self.port_delta), ..self }
    }
}

/// A reported port step if it is plausible (non-zero, within ±[`MAX_PORT_DELTA`]), else `None`.
pub fn clamp_port_delta(delta: Option<i32>) -> Option<i32> {
    delta.filter(|d| *d != 0 && d.unsigned_abs() <= MAX_PORT_DELTA.unsigned_abs())
}

/// Everything a peer needs to open a link; the shard sends it in a `PeerIntro`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkParams {
    /// The link's id, unique within the shard.
    pub link: LinkId,
    /// Our side of the link.
    pub side: Side,
    /// The shared per-link key.
    pub key: LinkKey,
    /// The peer's candidate addresses.
    pub remote: Vec<Candidate>,
    /// What the shard knows of the peer's NAT (for port prediction).
    pub remote_nat: NatHint,
    /// The relay to use until (and besides) a direct path, if the shard runs one.
    pub relay: Option<RelayParams>,
}

/// Where and how to bind at the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayParams {
    /// The relay's public address.
    pub addr: SocketAddr,
    /// The shard-issued token for our side of the link.
    pub token: RelayToken,
    /// Key that authenticates our binds and the relay's acks.
    pub bind_key: BindKey,
}
