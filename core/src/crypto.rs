//! Per-link authenticated encryption with replay protection.
//!
//! Every peer datagram is sealed with ChaCha20-Poly1305 under the 32-byte link key the shard
//! issued. The nonce is `side (1 byte) || 3 zero bytes || packet number (u64 BE)`, so the two
//! directions of a link never reuse a nonce; the 14-byte clear header is the associated data.
//! A 1024-packet sliding window (as in WireGuard / RFC 6479) rejects replays while tolerating
//! the reordering that a relay-to-direct path switch causes.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use thiserror::Error;

use crate::proto::DecodeError;
pub use crate::proto::intro::LinkKey;
use crate::proto::peer::{LinkId, PEER_HEADER_LEN, PeerHeader, PeerKind, Side, TAG_LEN};

/// Why an incoming peer datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OpenError {
    /// The header did not parse.
    #[error("malformed peer datagram: {0}")]
    Malformed(#[from] DecodeError),
    /// Not for this link, or claims to come from our own side.
    #[error("datagram is not from this link's peer")]
    WrongLink,
    /// Packet number already seen or older than the replay window.
    #[error("replayed or too old packet number")]
    Replay,
    /// The AEAD tag did not verify (wrong key, forged or corrupted).
    #[error("authentication failed")]
    Auth,
}

/// Packets older than this many packet numbers behind the newest are refused.
pub const REPLAY_WINDOW: u64 = 1024;

/// Sliding-window replay filter over 64-bit packet numbers.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    newest: Option<u64>,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self { newest: None, bits: [0; (REPLAY_WINDOW / 64) as usize] }
    }
}

impl ReplayWindow {
    fn bit(&self, pn: u64) -> (usize, u64) {
        let idx = (pn % REPLAY_WINDOW) as usize;
        (idx / 64, 1u64 << (idx % 64))
    }

    /// Would `pn` be accepted? (Does not record it.)
    pub fn check(&self, pn: u64) -> bool {
        match self.newest {
            None => true,
            Some(n) if pn > n => true,
            Some(n) if n - pn >= REPLAY_WINDOW => false,
            Some(_) => {
                let (w, m) = self.bit(pn);
                self.bits[w] & m == 0
            }
        }
    }

    /// Record `pn` as seen; call only after the datagram authenticated.
    pub fn record(&mut self, pn: u64) {
        match self.newest {
            Some(n) if pn <= n => {}
            Some(n) => {
                let advance = pn - n;
                if advance >= REPLAY_WINDOW {
                    self.bits = [0; (REPLAY_WINDOW / 64) as usize];
                } else {
                    for p in n + 1..=pn {
                        let (w, m) = self.bit(p);
                        self.bits[w] &= !m;
                    }
                }
                self.newest = Some(pn);
            }
            None => self.newest = Some(pn),
        }
        let (w, m) = self.bit(pn);
        self.bits[w] |= m;
    }
}

/// Seals outgoing and opens incoming datagrams of one link.
pub struct LinkCrypto {
    cipher: ChaCha20Poly1305,
    link: LinkId,
    side: Side,
    next_pn: u64,
    replay: ReplayWindow,
}

impl std::fmt::Debug for LinkCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkCrypto").field("link", &self.link).field("side", &self.side).finish()
    }
}

fn nonce(side: Side, pn: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = side.to_byte();
    n[4..].copy_from_slice(&pn.to_be_bytes());
    Nonce::from(n)
}

impl LinkCrypto {
    /// Crypto state for our `side` of `link`.
    pub fn new(key: &LinkKey, link: LinkId, side: Side) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key.0)),
            link,
            side,
            next_pn: 0,
            replay: ReplayWindow::default(),
        }
    }

    /// Encrypt `plaintext` into a complete peer datagram of `kind`.
    pub fn seal(&mut self, kind: PeerKind, plaintext: &[u8]) -> Vec<u8> {
        let pn = self.next_pn;
        self.next_pn += 1;
        let header = PeerHeader { kind, link: self.link, side: self.side, pn }.encode();
        let mut out = Vec::with_capacity(PEER_HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(self.side, pn), &header, &mut out[PEER_HEADER_LEN..])
            .expect("ChaCha20-Poly1305 encrypts any length below 256 GiB");
        out.extend_from_slice(&tag);
        out
    }

    /// Authenticate, replay-check and decrypt a datagram from the peer.
    pub fn open(&mut self, datagram: &[u8]) -> Result<(PeerHeader, Vec<u8>), OpenError> {
        let mut body = Vec::new();
        let header = self.open_into(datagram, &mut body)?;
        Ok((header, body))
    }

    /// [`LinkCrypto::open`] into a caller's buffer (replaced by the plaintext; its capacity is
    /// reused, so a long-lived buffer means no allocation per datagram). On error the buffer's
    /// content is unspecified.
    pub fn open_into(&mut self, datagram: &[u8], body: &mut Vec<u8>) -> Result<PeerHeader, OpenError> {
        let header = PeerHeader::decode(datagram)?;
        if header.link != self.link || header.side == self.side {
            return Err(OpenError::WrongLink);
        }
        if !self.replay.check(header.pn) {
            return Err(OpenError::Replay);
        }
        let body_end = datagram.len() - TAG_LEN;
        body.clear();
        body.extend_from_slice(&datagram[PEER_HEADER_LEN..body_end]);
        let tag = Tag::from_slice(&datagram[body_end..]);
        self.cipher
            .decrypt_in_place_detached(
                &nonce(header.side, header.pn),
                &datagram[..PEER_HEADER_LEN],
                body,
                tag,
            )
            .map_err(|_| OpenError::Auth)?;
        self.replay.record(header.pn);
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (LinkCrypto, LinkCrypto) {
        let key = LinkKey([7; 32]);
        (LinkCrypto::new(&key, LinkId(9), Side::A), LinkCrypto::new(&key, LinkId(9), Side::B))
    }

    #[test]
    fn seal_open_roundtrip_and_replay_rejected() {
        let (mut a, mut b) = pair();
        let d = a.seal(PeerKind::Data, b"hello");
        let (h, body) = b.open(&d).unwrap();
        assert_eq!(h.kind, PeerKind::Data);
        assert_eq!(body, b"hello");
        assert_eq!(b.open(&d), Err(OpenError::Replay));
        // our own datagram reflected back is refused
        let mine = b.seal(PeerKind::Data, b"x");
        assert_eq!(b.open(&mine), Err(OpenError::WrongLink));
    }

    #[test]
    fn tampering_and_wrong_key_fail_auth() {
        let (mut a, mut b) = pair();
        let mut d = a.seal(PeerKind::Probe, b"probe");
        let last = d.len() - 1;
        d[last] ^= 1;
        assert_eq!(b.open(&d), Err(OpenError::Auth));
        let mut d = a.seal(PeerKind::Probe, b"probe");
        d[0] = PeerKind::Data as u8; // header is authenticated too
        assert_eq!(b.open(&d), Err(OpenError::Auth));
        let mut other = LinkCrypto::new(&LinkKey([8; 32]), LinkId(9), Side::B);
        let d = a.seal(PeerKind::Probe, b"probe");
        assert_eq!(other.open(&d), Err(OpenError::Auth));
        // a failed datagram does not burn its packet number
        assert!(b.open(&d).is_ok());
    }

    #[test]
    fn window_accepts_reordering_and_refuses_old() {
        let mut w = ReplayWindow::default();
        for pn in [5u64, 3, 4, 1000, 10, 1030] {
            assert!(w.check(pn), "pn {pn}");
            w.record(pn);
        }
        assert!(!w.check(3), "already seen");
        assert!(!w.check(5), "too old (1030 - 5 >= 1024)");
        assert!(w.check(7), "inside window, unseen");
        w.record(5000);
        assert!(!w.check(1030));
        assert!(w.check(4999));
    }
}
