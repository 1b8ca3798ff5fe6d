//! The clear header of every peer datagram (direct, or forwarded unchanged by the relay).
//!
//! ```text
//!  0      1        5      6                14                       len-16   len
//!  +------+--------+------+----------------+------------------------+--------+
//!  | kind | linkid | side | packet number  | ChaCha20-Poly1305 ciphertext | tag |
//!  |  u8  | u32 BE |  u8  |     u64 BE     |                        | 16 B   |
//!  +------+--------+------+----------------+------------------------+--------+
//! ```
//! The 14 header bytes are the AEAD's associated data; `side` is the sender's side, so the
//! two directions of a link never share a nonce. The relay reads `kind`, `linkid` and `side`
//! only, to route; it cannot read or forge the rest.

use super::DecodeError;

/// Length of the clear peer header.
pub const PEER_HEADER_LEN: usize = 14;
/// Length of the Poly1305 tag that ends every peer datagram.
pub const TAG_LEN: usize = 16;

/// Identifies one link (one pair of peers) within a shard; issued by the Game server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct LinkId(pub u32);

/// Which end of a link: the shard makes one peer `A` (it probes first and nominates) and the
/// other `B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Side {
    /// The controlling end.
    A,
    /// The controlled end.
    B,
}

impl Side {
    /// Wire value: 0 for A, 1 for B.
    pub fn to_byte(self) -> u8 {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
    /// Parse the wire value.
    pub fn from_byte(b: u8) -> Result<Side, DecodeError> {
        match b {
            0 => Ok(Side::A),
            1 => Ok(Side::B),
            _ => Err(DecodeError::Invalid("side must be 0 or 1")),
        }
    }
    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// What a peer datagram carries (its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PeerKind {
    /// Connectivity check sent to a candidate address.
    Probe = 0x20,
    /// Answer to a probe, echoing its id and the address it came from.
    ProbeAck = 0x21,
    /// One renet packet (reliable and unreliable channels ride inside).
    Data = 0x22,
    /// Liveness ping on an idle path; keeps NAT bindings open.
    Keepalive = 0x23,
    /// Answer to a keepalive.
    KeepaliveAck = 0x24,
    /// Link control (candidate updates, close).
    Control = 0x25,
}

impl PeerKind {
    /// Parse the first byte.
    pub fn from_byte(b: u8) -> Option<PeerKind> {
        Some(match b {
            0x20 => PeerKind::Probe,
            0x21 => PeerKind::ProbeAck,
            0x22 => PeerKind::Data,
            0x23 => PeerKind::Keepalive,
            0x24 => PeerKind::KeepaliveAck,
            0x25 => PeerKind::Control,
            _ => return None,
        })
    }
}

/// The clear header of a peer datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHeader {
    /// What the datagram carries.
    pub kind: PeerKind,
    /// The link it belongs to.
    pub link: LinkId,
    /// The sender's side.
    pub side: Side,
    /// Per-direction packet number: the AEAD nonce and the replay-window index.
    pub pn: u64,
}

impl PeerHeader {
    /// Write the 14 header bytes.
    pub fn encode(&self) -> [u8; PEER_HEADER_LEN] {
        let mut out = [0u8; PEER_HEADER_LEN];
        out[0] = self.kind as u8;
        out[1..5].copy_from_slice(&self.link.0.to_be_bytes());
        out[5] = self.side.to_byte();
        out[6..14].copy_from_slice(&self.pn.to_be_bytes());
        out
    }

    /// Parse the header of a whole datagram; checks that a tag can follow.
    pub fn decode(bytes: &[u8]) -> Result<PeerHeader, DecodeError> {
        if bytes.len() < PEER_HEADER_LEN + TAG_LEN {
            return Err(DecodeError::Truncated);
        }
        let kind = PeerKind::from_byte(bytes[0]).ok_or(DecodeError::UnknownKind(bytes[0]))?;
        let link = LinkId(u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")));
        let side = Side::from_byte(bytes[5])?;
        let pn = u64::from_be_bytes(bytes[6..14].try_into().expect("8 bytes"));
        Ok(PeerHeader { kind, link, side, pn })
    }

    /// Only the routing fields (kind, link, side), as the relay reads them; needs 6 bytes.
    pub fn decode_route(bytes: &[u8]) -> Result<(PeerKind, LinkId, Side), DecodeError> {
        if bytes.len() < 6 {
            return Err(DecodeError::Truncated);
        }
        let kind = PeerKind::from_byte(bytes[0]).ok_or(DecodeError::UnknownKind(bytes[0]))?;
        let link = LinkId(u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")));
        Ok((kind, link, Side::from_byte(bytes[5])?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_truncation() {
        let h = PeerHeader { kind: PeerKind::Data, link: LinkId(0xdead_beef), side: Side::B, pn: 42 };
        let mut d = h.encode().to_vec();
        assert_eq!(PeerHeader::decode(&d), Err(DecodeError::Truncated));
        d.extend_from_slice(&[0u8; TAG_LEN]);
        assert_eq!(PeerHeader::decode(&d), Ok(h));
        assert_eq!(PeerHeader::decode_route(&d[..6]), Ok((PeerKind::Data, LinkId(0xdead_beef), Side::B)));
        d[5] = 7;
        assert!(PeerHeader::decode(&d).is_err());
    }
}
