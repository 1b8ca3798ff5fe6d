//! Resume tickets: what lets a client that lost its shard connection come back to the same
//! session — same player, zone and party — without anybody else being able to take it over.
//!
//! The Lobby issues a ticket at login and whenever the session changes (zone, party), and
//! renews it every [`TICKET_RENEW`]; the client keeps the newest and presents it in
//! `ClientMessage::Resume` after reconnecting. A ticket is
//!
//! ```text
//! player u64 | zone u32 (u32::MAX: none) | issued unix u64 | nonce u64 | party len u8 | party
//! | HMAC-SHA256(resume_key, everything before)[..16]
//! ```
//!
//! (big-endian, at most 77 bytes). It is **bound** to the player (the Lobby checks it
//! against the player of the connection's name, itself bound to the login credential),
//! **expiring** ([`TICKET_TTL`]) and **single-use**: the Lobby accepts only the nonce it
//! issued last to that player and issues a new one at once (after a Lobby restart, with no
//! record yet, the first valid ticket of a player is accepted). Tickets travel only inside
//! the encrypted netcode connection.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::proto::shard::PlayerId;

/// How long a ticket can be used after it was issued.
pub const TICKET_TTL: Duration = Duration::from_secs(15 * 60);
/// How often the Lobby renews a connected player's ticket (well within [`TICKET_TTL`]).
pub const TICKET_RENEW: Duration = Duration::from_secs(5 * 60);
/// Longest ticket, in bytes.
pub const MAX_TICKET: usize = 8 + 4 + 8 + 8 + 1 + 32 + MAC_LEN;
const MAC_LEN: usize = 16;

/// The session a ticket restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The player.
    pub player: PlayerId,
    /// Its zone, if it was in one.
    pub zone: Option<u32>,
    /// Its party, if any (at most 32 bytes).
    pub party: Option<String>,
    /// Unix second it was issued.
    pub issued: u64,
    /// Which issue this is (single use: only the newest is accepted).
    pub nonce: u64,
}

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not a ticket (length, layout).
    #[error("malformed ticket")]
    Malformed,
    /// The MAC does not match: forged, or from another shard.
    #[error("ticket not issued by this shard")]
    Forged,
    /// Older than the TTL (or from the future).
    #[error("ticket expired")]
    Expired,
}

/// The key tickets are sealed with (derived from the shard secret by the servers).
#[derive(Clone)]
pub struct ResumeKey(pub [u8; 32]);

impl std::fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeKey(<redacted>)")
    }
}

impl ResumeKey {
    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        m.update(b"p2pm-resume-v1");
        m.update(body);
        let full: [u8; 32] = m.finalize().into_bytes().into();
        full[..MAC_LEN].try_into().expect("16 of 32 bytes")
    }

    /// Seal `t` into ticket bytes. A party name longer than 32 bytes is cut at a char
    /// boundary.
    pub fn seal(&self, t: &Ticket) -> Vec<u8> {
        let mut party = t.party.as_deref().unwrap_or("");
        while party.len() > 32 {
            let mut end = 32;
            while !party.is_char_boundary(end) {
                end -= 1;
            }
            party = &party[..end];
        }
        let mut b = Vec::with_capacity(MAX_TICKET);
        b.extend_from_slice(&t.player.0.to_be_bytes());
        b.extend_from_slice(&t.zone.unwrap_or(u32::MAX).to_be_bytes());
        b.extend_from_slice(&t.issued.to_be_bytes());
        b.extend_from_slice(&t.nonce.to_be_bytes());
        b.push(party.len() as u8);
        b.extend_from_slice(party.as_bytes());
        let mac = self.mac(&b);
        b.extend_from_slice(&mac);
        b
    }

    /// Check and read a ticket at Unix second `unix`.
    pub fn open(&self, bytes: &[u8], unix: u64) -> Result<Ticket, TicketError> {
        if bytes.len() < MAX_TICKET - 32 || bytes.len() > MAX_TICKET {
            return Err(TicketError::Malformed);
        }
        let (body, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        let party_len = usize::from(body[28]);
        if body.len() != 29 + party_len {
            return Err(TicketError::Malformed);
        }
        // Constant-time comparison through the MAC crate.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        m.update(b"p2pm-resume-v1");
        m.update(body);
        m.verify_truncated_left(mac).map_err(|_| TicketError::Forged)?;
        let u64_at = |i: usize| u64::from_be_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let zone = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes"));
        let issued = u64_at(12);
        if issued > unix + 60 || unix.saturating_sub(issued) > TICKET_TTL.as_secs() {
            return Err(TicketError::Expired);
        }
        let party = std::str::from_utf8(&body[29..]).map_err(|_| TicketError::Malformed)?;
        Ok(Ticket {
            player: PlayerId(u64_at(0)),
            zone: (zone != u32::MAX).then_some(zone),
            party: (!party.is_empty()).then(|| party.to_string()),
            issued,
            nonce: u64_at(20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_refuse_forgery_other_keys_expiry_and_garbage() {
        let k = ResumeKey([7; 32]);
        let t = Ticket {
            player: PlayerId(42),
            zone: Some(3),
            party: Some("wolves".into()),
            issued: 1_000,
            nonce: 9,
        };
        let b = k.seal(&t);
        assert!(b.len() <= MAX_TICKET);
        assert_eq!(k.open(&b, 1_000 + 60), Ok(t.clone()));
        let none = Ticket { zone: None, party: None, ..t.clone() };
        assert_eq!(k.open(&k.seal(&none), 1_001), Ok(none));
        assert_eq!(ResumeKey([8; 32]).open(&b, 1_001), Err(TicketError::Forged), "another shard's key");
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 1;
            assert!(k.open(&x, 1_001).is_err(), "bit flip at {i} accepted");
        }
        assert_eq!(k.open(&b, 1_000 + TICKET_TTL.as_secs() + 1), Err(TicketError::Expired));
        for junk in [&[][..], &[0; 10], &[0xff; 200], &b[..b.len() - 1]] {
            assert!(k.open(junk, 1_001).is_err());
        }
        let long = Ticket { party: Some("é".repeat(40)), ..t };
        let opened = k.open(&k.seal(&long), 1_001).unwrap();
        assert_eq!(opened.party.unwrap().len(), 32, "cut at a char boundary");
    }
}
