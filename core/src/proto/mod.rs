//! Wire formats.
//!
//! One UDP socket per client carries STUN, probes, peer data, keepalives and relay traffic,
//! so every datagram is classified by its first byte (see `docs/PROTOCOL.md`):
//!
//! | first byte | meaning | module |
//! |---|---|---|
//! | `0x00..=0x03` + magic cookie | STUN (RFC 8489, RFC 7983 demultiplexing) | [`crate::stun`] |
//! | `0x20..=0x25` | peer datagram (probe, probe-ack, data, keepalive, keepalive-ack, control) | [`peer`] |
//! | `0x30..=0x32` | relay control (bind, bind-ack, bind-confirm) | [`relay`] |
//!
//! Every decoder returns `Result` and never panics, whatever the input.

pub mod intro;
pub mod peer;
pub mod relay;
pub mod shard;

use thiserror::Error;

/// Why a datagram could not be decoded. Dropped datagrams are counted by this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Shorter than its fixed header or a length field says.
    #[error("datagram truncated")]
    Truncated,
    /// The first byte names no known datagram kind.
    #[error("unknown datagram kind {0:#04x}")]
    UnknownKind(u8),
    /// A field holds a value the protocol does not allow.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// What a datagram on the mesh socket is, from its first bytes alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramClass {
    /// A STUN message (first two bits zero and the RFC 8489 magic cookie).
    Stun,
    /// An end-to-end encrypted datagram of one link ([`peer::PeerHeader`]).
    Peer(peer::PeerKind),
    /// Relay binding control ([`relay`]).
    Relay(relay::RelayKind),
}

/// The RFC 8489 magic cookie, bytes 4..8 of every STUN message.
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;

/// Classify a datagram by its header without decoding the rest.
pub fn classify(bytes: &[u8]) -> Result<DatagramClass, DecodeError> {
    let first = *bytes.first().ok_or(DecodeError::Truncated)?;
    match first {
        0x00..=0x03 => {
            if bytes.len() >= 20 && bytes[4..8] == STUN_MAGIC_COOKIE.to_be_bytes() {
                Ok(DatagramClass::Stun)
            } else {
                Err(DecodeError::Invalid("STUN-range byte without magic cookie"))
            }
        }
        _ => {
            if let Some(k) = peer::PeerKind::from_byte(first) {
                Ok(DatagramClass::Peer(k))
            } else if let Some(k) = relay::RelayKind::from_byte(first) {
                Ok(DatagramClass::Relay(k))
            } else {
                Err(DecodeError::UnknownKind(first))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_kind_and_rejects_garbage() {
        let mut stun = vec![0u8; 20];
        stun[0] = 0x01;
        stun[4..8].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        assert_eq!(classify(&stun), Ok(DatagramClass::Stun));
        stun[4] = 0;
        assert!(classify(&stun).is_err());
        assert_eq!(classify(&[]), Err(DecodeError::Truncated));
        assert_eq!(classify(&[0x20]), Ok(DatagramClass::Peer(peer::PeerKind::Probe)));
        assert_eq!(classify(&[0x30]), Ok(DatagramClass::Relay(relay::RelayKind::Bind)));
        assert_eq!(classify(&[0xff]), Err(DecodeError::UnknownKind(0xff)));
        for b in 0..=255u8 {
            let _ = classify(&[b]);
            let _ = classify(&[b; 40]);
        }
    }
}
