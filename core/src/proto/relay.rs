//! Relay binding control datagrams (bind, bind-ack) and the relay token. Relayed data itself
//! is a peer datagram ([`super::peer`]) sent to the relay's address and forwarded unchanged.
//!
//! Byte layouts (all integers big-endian; `docs/RELAY.md` has the full specification):
//!
//! ```text
//! RelayToken (21 B)   key_id u8 | expiry_unix_secs u32 | mac 16 B
//!
//! Bind (0x30, 59 B)   kind | link u32 | side u8 | token 21 B | counter u64 | cookie 8 B | mac 16 B
//!                      mac = HMAC-SHA256(bind_key, bytes[0..43])[..16]
//!
//! BindAck (0x31, 46 B for IPv4, 58 B for IPv6 — never more than the 59 B Bind)
//!                      kind | link u32 | side u8 | counter u64 | flags u8 | cookie 8 B
//!                      | family u8 (4|6) | port u16 | ip 4|16 B | mac 16 B
//!                      mac = HMAC-SHA256(bind_key, everything before it)[..16]
//!
//! BindData (0x33)     a Bind (the same 59 B, kind 0x33, mac over bytes[0..43]) | len u16
//!                      | one peer datagram (len B) | zero padding, at most 1,472 B: the first
//!                      relayed datagrams of a link carry their own binding proof
//! ```
//!
//! `0x32` (`BindConfirm`) is reserved: return routability is proven by echoing the relay's
//! cookie in the next Bind instead (see `docs/RELAY.md`, "Why no BindConfirm"), so a relay
//! drops `0x32` datagrams.
//!
//! Every decoder here returns `Result` and never panics, whatever the input.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use super::DecodeError;
use super::peer::{LinkId, Side};

type HmacSha256 = Hmac<Sha256>;

/// The first byte of a relay control datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RelayKind {
    /// Client → relay: bind (or refresh) one side of a link with a shard-issued token.
    Bind = 0x30,
    /// Relay → client: binding accepted; carries the client's observed address.
    BindAck = 0x31,
    /// Reserved. Return routability is proven by echoing the cookie in the next
    /// [`RelayKind::Bind`] instead; relays drop this kind.
    BindConfirm = 0x32,
    /// Client → relay: a Bind with one peer datagram appended (zero-round-trip relay): the
    /// relay binds, then forwards the datagram to the other side, or holds it for a moment
    /// until the other side binds.
    BindData = 0x33,
}

impl RelayKind {
    /// Parse the first byte.
    pub fn from_byte(b: u8) -> Option<RelayKind> {
        Some(match b {
            0x30 => RelayKind::Bind,
            0x31 => RelayKind::BindAck,
            0x32 => RelayKind::BindConfirm,
            0x33 => RelayKind::BindData,
            _ => return None,
        })
    }
}

/// Length of the truncated HMAC-SHA256 tags used by relay control datagrams and tokens.
pub const MAC_LEN: usize = 16;
/// Length of a relay cookie (return-routability proof).
pub const COOKIE_LEN: usize = 8;
/// Length of an encoded [`RelayToken`].
pub const TOKEN_LEN: usize = 21;
/// Length of a bind key.
pub const BIND_KEY_LEN: usize = 32;
/// Length of a Bind datagram (fixed).
pub const BIND_LEN: usize = 1 + 4 + 1 + TOKEN_LEN + 8 + COOKIE_LEN + MAC_LEN;
/// A Bind may be followed by zero bytes up to this total length. A client pads its binds
/// until the relay has validated its address: the padding counts toward the relay's 1×
/// anti-amplification allowance (as QUIC pads its Initial packets), so the relay may
/// forward the first relayed data to it before the cookie round trip completes.
pub const MAX_PADDED_BIND: usize = 1200;
/// Length of a BindData's fixed part: the Bind fields and the `len u16` of the datagram.
pub const BIND_DATA_HEADER_LEN: usize = BIND_LEN + 2;
/// Longest BindData (an IPv4 path's 1,500-byte MTU less the IP and UDP headers): the peer
/// datagram it carries is at most `MAX_BIND_DATA - BIND_DATA_HEADER_LEN` = 1,411 bytes.
pub const MAX_BIND_DATA: usize = 1472;
/// Shortest peer datagram (header + tag) a BindData may carry.
const MIN_PEER_DATAGRAM: usize = 30;
/// Offset of the Bind's mac (= the length of the part it authenticates).
const BIND_MAC_AT: usize = BIND_LEN - MAC_LEN;
/// Length of the BindAck fields before the observed address.
const ACK_FIXED_LEN: usize = 1 + 4 + 1 + 8 + 1 + COOKIE_LEN;
/// Length of a BindAck carrying an IPv4 address.
pub const BIND_ACK_V4_LEN: usize = ACK_FIXED_LEN + 1 + 2 + 4 + MAC_LEN;
/// Length of a BindAck carrying an IPv6 address.
pub const BIND_ACK_V6_LEN: usize = ACK_FIXED_LEN + 1 + 2 + 16 + MAC_LEN;
/// The largest BindAck (IPv6).
pub const MAX_BIND_ACK_LEN: usize = BIND_ACK_V6_LEN;

// Anti-amplification, checked at compile time: a relay's answer to a Bind is never larger
// than the Bind, for either address family.
const _: () = assert!(BIND_ACK_V4_LEN <= BIND_LEN && BIND_ACK_V6_LEN <= BIND_LEN);

/// HMAC label of the token mac.
pub const TOKEN_LABEL: &[u8] = b"p2pm-relay-token";
/// HMAC label of the bind-key derivation.
pub const BIND_KEY_LABEL: &[u8] = b"p2pm-bind-key";
/// HMAC label of the relay cookie.
pub const COOKIE_LABEL: &[u8] = b"p2pm-relay-cookie";

/// BindAck flag: the other side of the link is bound, so relayed data can flow now.
pub const FLAG_PEER_BOUND: u8 = 0x01;
/// BindAck flag: the relay has verified this address (a valid cookie came back from it), so
/// it is no longer limited by anti-amplification; echoing cookies is optional from now on.
pub const FLAG_VALIDATED: u8 = 0x02;

/// A shard-issued capability that lets one side of one link use the relay until it expires.
///
/// The relay verifies it statelessly: `mac = HMAC-SHA256(secret[key_id], "p2pm-relay-token"
/// || link u32 || side u8 || key_id u8 || expiry u32)[..16]`. The token does not contain the
/// link and side: they come from the Bind that carries it and are covered by the mac.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RelayToken {
    /// Which of the shard's relay secrets minted it (rotation: see `relay::TokenKeys`).
    pub key_id: u8,
    /// Unix time (seconds) from which the token is no longer valid.
    pub expiry_unix_secs: u32,
    /// Truncated HMAC-SHA256 over the link, side, key id and expiry.
    pub mac: [u8; MAC_LEN],
}

impl RelayToken {
    /// The 21 wire bytes.
    pub fn to_bytes(&self) -> [u8; TOKEN_LEN] {
        let mut out = [0u8; TOKEN_LEN];
        out[0] = self.key_id;
        out[1..5].copy_from_slice(&self.expiry_unix_secs.to_be_bytes());
        out[5..].copy_from_slice(&self.mac);
        out
    }

    /// Parse exactly [`TOKEN_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<RelayToken, DecodeError> {
        if bytes.len() != TOKEN_LEN {
            return Err(DecodeError::Truncated);
        }
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&bytes[5..]);
        Ok(RelayToken { key_id: bytes[0], expiry_unix_secs: be_u32(&bytes[1..5]), mac })
    }
}

/// The per-token key a client authenticates its Binds with, and the relay its BindAcks:
/// `HMAC-SHA256(secret[key_id], "p2pm-bind-key" || token bytes || link u32 || side u8)`.
///
/// The shard gives it to the client next to the token (inside the encrypted shard channel);
/// the relay re-derives it from the token, so it stores nothing per token.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindKey(pub [u8; BIND_KEY_LEN]);

impl BindKey {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; BIND_KEY_LEN] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes can never fail.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }

    /// The truncated tag over `data`.
    pub(crate) fn tag(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.mac();
        m.update(data);
        truncate(m)
    }

    /// Constant-time check of a truncated tag over `data`.
    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.mac();
        m.update(data);
        m.verify_truncated_left(tag).is_ok()
    }
}

impl fmt::Debug for BindKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BindKey(<redacted>)")
    }
}

/// The relay's return-routability cookie, echoed by the client in its next Bind. All zeros
/// means "no cookie".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BindCookie(pub [u8; COOKIE_LEN]);

impl BindCookie {
    /// No cookie (first Bind from an address).
    pub const NONE: BindCookie = BindCookie([0; COOKIE_LEN]);

    /// Whether this is [`BindCookie::NONE`].
    pub fn is_none(&self) -> bool {
        self.0 == [0; COOKIE_LEN]
    }
}

/// Why a relay control datagram was refused by a client-side decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RelayProtoError {
    /// The bytes are not a well-formed datagram of the expected kind.
    #[error("malformed relay datagram: {0}")]
    Decode(#[from] DecodeError),
    /// The mac does not verify under the given bind key (forged, corrupted, or another
    /// link's acknowledgement).
    #[error("relay datagram mac does not verify")]
    BadMac,
}

/// A Bind (kind `0x30`): binds (or refreshes, or moves) one side of a link to the address it
/// was sent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindRequest {
    /// [`RelayKind::Bind`], or [`RelayKind::BindData`] when a peer datagram follows (the
    /// kind byte is authenticated: a Bind's mac never verifies as a BindData's).
    pub kind: RelayKind,
    /// The link to bind.
    pub link: LinkId,
    /// The sender's side of it.
    pub side: Side,
    /// The shard-issued token for (link, side).
    pub token: RelayToken,
    /// Strictly increasing per (link, side): a Bind whose counter is not above the last one
    /// the relay accepted is a replay.
    pub counter: u64,
    /// The latest cookie the relay sent to this address, or [`BindCookie::NONE`].
    pub cookie: BindCookie,
    /// Truncated HMAC-SHA256 under the bind key over all the bytes before it.
    pub mac: [u8; MAC_LEN],
}

impl BindRequest {
    /// Encode a Bind authenticated with `bind_key` (client side). Allocation-free.
    pub fn encode(
        link: LinkId,
        side: Side,
        token: &RelayToken,
        bind_key: &BindKey,
        counter: u64,
        cookie: BindCookie,
    ) -> [u8; BIND_LEN] {
        encode_kind(RelayKind::Bind, link, side, token, bind_key, counter, cookie)
    }

    /// Encode a BindData (kind `0x33`): a Bind authenticated with `bind_key` carrying the
    /// peer datagram `data` of the same link and side, zero-padded to `pad_to` bytes in all
    /// (a client pads until the relay has validated its address, as it pads Binds). `None`
    /// when `data` is not a peer datagram of `(link, side)` or does not fit
    /// [`MAX_BIND_DATA`] (send a Bind and the datagram separately then).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_with_data(
        link: LinkId,
        side: Side,
        token: &RelayToken,
        bind_key: &BindKey,
        counter: u64,
        cookie: BindCookie,
        data: &[u8],
        pad_to: usize,
    ) -> Option<Vec<u8>> {
        let total = BIND_DATA_HEADER_LEN + data.len();
        if total > MAX_BIND_DATA || !carries_route(data, link, side) {
            return None;
        }
        let mut out = Vec::with_capacity(total.max(pad_to.min(MAX_BIND_DATA)));
        out.extend_from_slice(&encode_kind(
            RelayKind::BindData,
            link,
            side,
            token,
            bind_key,
            counter,
            cookie,
        ));
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out.resize(total.max(pad_to.min(MAX_BIND_DATA)), 0);
        Some(out)
    }

    /// Parse a BindData without checking its mac or token: the Bind part and the range of
    /// the peer datagram it carries, which must name the Bind's own link and side.
    pub fn decode_with_data(bytes: &[u8]) -> Result<(BindRequest, std::ops::Range<usize>), DecodeError> {
        if bytes.len() < BIND_DATA_HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if bytes.len() > MAX_BIND_DATA {
            return Err(DecodeError::Invalid("bind-data longer than its limit"));
        }
        if bytes[0] != RelayKind::BindData as u8 {
            return Err(DecodeError::UnknownKind(bytes[0]));
        }
        let req = decode_body(bytes, RelayKind::BindData)?;
        let len = usize::from(u16::from_be_bytes([bytes[BIND_LEN], bytes[BIND_LEN + 1]]));
        let end = BIND_DATA_HEADER_LEN + len;
        if end > bytes.len() {
            return Err(DecodeError::Truncated);
        }
        if bytes[end..].iter().any(|b| *b != 0) {
            return Err(DecodeError::Invalid("bind-data padding must be zero bytes"));
        }
        if !carries_route(&bytes[BIND_DATA_HEADER_LEN..end], req.link, req.side) {
            return Err(DecodeError::Invalid("bind-data must carry a peer datagram of its link and side"));
        }
        Ok((req, BIND_DATA_HEADER_LEN..end))
    }

    /// Parse a Bind without checking its mac or token (the relay does that next).
    pub fn decode(bytes: &[u8]) -> Result<BindRequest, DecodeError> {
        if bytes.len() < BIND_LEN {
            return Err(DecodeError::Truncated);
        }
        if bytes.len() > MAX_PADDED_BIND {
            return Err(DecodeError::Invalid("bind longer than the padding limit"));
        }
        if bytes[BIND_LEN..].iter().any(|b| *b != 0) {
            return Err(DecodeError::Invalid("bind padding must be zero bytes"));
        }
        if bytes[0] != RelayKind::Bind as u8 {
            return Err(DecodeError::UnknownKind(bytes[0]));
        }
        decode_body(bytes, RelayKind::Bind)
    }

    /// Whether the mac verifies under `bind_key` (constant time). The encoding is canonical,
    /// so re-encoding the parsed fields gives back the authenticated bytes.
    pub fn verify_mac(&self, bind_key: &BindKey) -> bool {
        let mut body = [0u8; BIND_LEN];
        write_bind_body(&mut body, self.kind, self.link, self.side, &self.token, self.counter, self.cookie);
        bind_key.verify(&body[..BIND_MAC_AT], &self.mac)
    }
}

/// Whether `data` is long enough for a peer datagram and names `(link, side)`.
fn carries_route(data: &[u8], link: LinkId, side: Side) -> bool {
    data.len() >= MIN_PEER_DATAGRAM
        && (0x20..=0x25).contains(&data[0])
        && be_u32(&data[1..5]) == link.0
        && data[5] == side.to_byte()
}

fn encode_kind(
    kind: RelayKind,
    link: LinkId,
    side: Side,
    token: &RelayToken,
    bind_key: &BindKey,
    counter: u64,
    cookie: BindCookie,
) -> [u8; BIND_LEN] {
    let mut out = [0u8; BIND_LEN];
    write_bind_body(&mut out, kind, link, side, token, counter, cookie);
    let tag = bind_key.tag(&out[..BIND_MAC_AT]);
    out[BIND_MAC_AT..].copy_from_slice(&tag);
    out
}

/// The Bind fields of `bytes` (at least [`BIND_LEN`] long, first byte checked by the caller).
fn decode_body(bytes: &[u8], kind: RelayKind) -> Result<BindRequest, DecodeError> {
    let link = LinkId(be_u32(&bytes[1..5]));
    let side = Side::from_byte(bytes[5])?;
    let token = RelayToken::from_bytes(&bytes[6..27])?;
    let counter = be_u64(&bytes[27..35]);
    let mut cookie = [0u8; COOKIE_LEN];
    cookie.copy_from_slice(&bytes[35..43]);
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&bytes[BIND_MAC_AT..BIND_LEN]);
    Ok(BindRequest { kind, link, side, token, counter, cookie: BindCookie(cookie), mac })
}

fn write_bind_body(
    out: &mut [u8; BIND_LEN],
    kind: RelayKind,
    link: LinkId,
    side: Side,
    token: &RelayToken,
    counter: u64,
    cookie: BindCookie,
) {
    out[0] = kind as u8;
    out[1..5].copy_from_slice(&link.0.to_be_bytes());
    out[5] = side.to_byte();
    out[6..27].copy_from_slice(&token.to_bytes());
    out[27..35].copy_from_slice(&counter.to_be_bytes());
    out[35..43].copy_from_slice(&cookie.0);
}

/// A BindAck (kind `0x31`): the relay accepted a Bind, or (unsolicited, to the side that was
/// already bound) the other side just bound.
///
/// A client should accept one only if `decode_verified` succeeds with the bind key of its
/// current token for that link (which also authenticates `link` and `side`) and `counter` is
/// one it sent; `peer_bound` then means it may send relayed data now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAck {
    /// The link that was bound.
    pub link: LinkId,
    /// The side that was bound (the receiver's side).
    pub side: Side,
    /// The counter of the Bind being acknowledged (for an unsolicited ack: the last accepted
    /// one of this side).
    pub counter: u64,
    /// The other side of the link is bound: relayed data flows now.
    pub peer_bound: bool,
    /// The relay has verified the receiver's address (a valid cookie came back).
    pub validated: bool,
    /// A fresh cookie for the receiver's address; echo it in the next Bind to prove it.
    pub cookie: BindCookie,
    /// The receiver's address as the relay sees it (its public, server-reflexive address).
    /// An IPv4-mapped IPv6 address is sent as plain IPv4.
    pub observed: SocketAddr,
}

impl BindAck {
    /// Wire length of this ack: [`BIND_ACK_V4_LEN`] or [`BIND_ACK_V6_LEN`].
    pub fn encoded_len(&self) -> usize {
        match canonical(self.observed) {
            SocketAddr::V4(_) => BIND_ACK_V4_LEN,
            SocketAddr::V6(_) => BIND_ACK_V6_LEN,
        }
    }

    /// Encode into `out` with `bind_key`'s mac; returns the length written. Allocation-free.
    pub fn encode_into(&self, bind_key: &BindKey, out: &mut [u8; MAX_BIND_ACK_LEN]) -> usize {
        out[0] = RelayKind::BindAck as u8;
        out[1..5].copy_from_slice(&self.link.0.to_be_bytes());
        out[5] = self.side.to_byte();
        out[6..14].copy_from_slice(&self.counter.to_be_bytes());
        let mut flags = 0;
        if self.peer_bound {
            flags |= FLAG_PEER_BOUND;
        }
        if self.validated {
            flags |= FLAG_VALIDATED;
        }
        out[14] = flags;
        out[15..23].copy_from_slice(&self.cookie.0);
        let addr = canonical(self.observed);
        out[24..26].copy_from_slice(&addr.port().to_be_bytes());
        let mac_at = match addr.ip() {
            IpAddr::V4(ip) => {
                out[23] = 4;
                out[26..30].copy_from_slice(&ip.octets());
                30
            }
            IpAddr::V6(ip) => {
                out[23] = 6;
                out[26..42].copy_from_slice(&ip.octets());
                42
            }
        };
        let tag = bind_key.tag(&out[..mac_at]);
        out[mac_at..mac_at + MAC_LEN].copy_from_slice(&tag);
        mac_at + MAC_LEN
    }

    /// Encode into a new vector (convenience for tests and the simulator).
    pub fn encode(&self, bind_key: &BindKey) -> Vec<u8> {
        let mut buf = [0u8; MAX_BIND_ACK_LEN];
        let n = self.encode_into(bind_key, &mut buf);
        buf[..n].to_vec()
    }

    /// Parse an ack and check its mac under `bind_key` (client side). Unknown flag bits are
    /// ignored (they are authenticated, and reserved for future relays).
    pub fn decode_verified(bytes: &[u8], bind_key: &BindKey) -> Result<BindAck, RelayProtoError> {
        let first = *bytes.first().ok_or(DecodeError::Truncated)?;
        if first != RelayKind::BindAck as u8 {
            return Err(DecodeError::UnknownKind(first).into());
        }
        if bytes.len() < ACK_FIXED_LEN + 1 {
            return Err(DecodeError::Truncated.into());
        }
        let (expect, ip_len) = match bytes[ACK_FIXED_LEN] {
            4 => (BIND_ACK_V4_LEN, 4),
            6 => (BIND_ACK_V6_LEN, 16),
            _ => return Err(DecodeError::Invalid("address family must be 4 or 6").into()),
        };
        if bytes.len() < expect {
            return Err(DecodeError::Truncated.into());
        }
        if bytes.len() > expect {
            return Err(DecodeError::Invalid("bind-ack longer than its address family allows").into());
        }
        let mac_at = expect - MAC_LEN;
        if !bind_key.verify(&bytes[..mac_at], &bytes[mac_at..]) {
            return Err(RelayProtoError::BadMac);
        }
        let link = LinkId(be_u32(&bytes[1..5]));
        let side = Side::from_byte(bytes[5])?;
        let counter = be_u64(&bytes[6..14]);
        let flags = bytes[14];
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&bytes[15..23]);
        let port = u16::from_be_bytes([bytes[24], bytes[25]]);
        let ip_bytes = &bytes[26..26 + ip_len];
        let ip = if ip_len == 4 {
            IpAddr::V4(Ipv4Addr::new(ip_bytes[0], ip_bytes[1], ip_bytes[2], ip_bytes[3]))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(ip_bytes);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        Ok(BindAck {
            link,
            side,
            counter,
            peer_bound: flags & FLAG_PEER_BOUND != 0,
            validated: flags & FLAG_VALIDATED != 0,
            cookie: BindCookie(cookie),
            observed: SocketAddr::new(ip, port),
        })
    }
}

/// An IPv4-mapped IPv6 socket address (what a dual-stack socket reports for IPv4 peers) as
/// plain IPv4; anything else unchanged.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn truncate(m: HmacSha256) -> [u8; MAC_LEN] {
    let full = m.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// Big-endian u32 from a slice of at least 4 bytes (callers check lengths first).
fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// Big-endian u64 from a slice of at least 8 bytes (callers check lengths first).
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn key(b: u8) -> BindKey {
        BindKey([b; BIND_KEY_LEN])
    }

    fn token() -> RelayToken {
        RelayToken { key_id: 7, expiry_unix_secs: 1_900_000_000, mac: [0xab; MAC_LEN] }
    }

    #[test]
    fn relay_kind_bytes_are_fixed() {
        assert_eq!(RelayKind::Bind as u8, 0x30);
        assert_eq!(RelayKind::BindAck as u8, 0x31);
        assert_eq!(RelayKind::BindConfirm as u8, 0x32);
        assert_eq!(RelayKind::BindData as u8, 0x33);
        assert_eq!(RelayKind::from_byte(0x31), Some(RelayKind::BindAck));
        assert_eq!(RelayKind::from_byte(0x33), Some(RelayKind::BindData));
        assert_eq!(RelayKind::from_byte(0x34), None);
    }

    /// A peer datagram of (`link`, `side`) of `len` bytes.
    fn peer_datagram(link: u32, side: Side, len: usize) -> Vec<u8> {
        let mut d = vec![0x22];
        d.extend_from_slice(&link.to_be_bytes());
        d.push(side.to_byte());
        d.resize(len, 0x5a);
        d
    }

    #[test]
    fn relay_bind_data_layout_roundtrip_padding_and_limits() {
        let k = key(1);
        let data = peer_datagram(0x0102_0304, Side::B, 100);
        let enc = |data: &[u8], pad| {
            BindRequest::encode_with_data(
                LinkId(0x0102_0304),
                Side::B,
                &token(),
                &k,
                99,
                BindCookie([5; 8]),
                data,
                pad,
            )
        };
        let b = enc(&data, 0).unwrap();
        assert_eq!(b.len(), BIND_DATA_HEADER_LEN + 100);
        assert_eq!(b[0], 0x33);
        assert_eq!(&b[59..61], &100u16.to_be_bytes());
        assert_eq!(&b[61..], &data[..]);
        let (r, range) = BindRequest::decode_with_data(&b).unwrap();
        assert_eq!((r.kind, r.counter, r.side, range.clone()), (RelayKind::BindData, 99, Side::B, 61..161));
        assert!(r.verify_mac(&k) && !r.verify_mac(&key(2)));
        // Padded: the same datagram, zeros after it; a non-zero byte there is refused.
        let padded = enc(&data, MAX_PADDED_BIND).unwrap();
        assert_eq!(padded.len(), MAX_PADDED_BIND);
        assert_eq!(BindRequest::decode_with_data(&padded).unwrap().1, range);
        let mut junk = padded.clone();
        junk[MAX_PADDED_BIND - 1] = 1;
        assert!(BindRequest::decode_with_data(&junk).is_err());
        // Not carried: another link's or side's datagram, a runt, something too long.
        assert!(enc(&peer_datagram(7, Side::B, 100), 0).is_none());
        assert!(enc(&peer_datagram(0x0102_0304, Side::A, 100), 0).is_none());
        assert!(enc(&data[..29], 0).is_none());
        assert!(enc(&peer_datagram(0x0102_0304, Side::B, MAX_BIND_DATA - BIND_DATA_HEADER_LEN), 0).is_some());
        assert!(
            enc(&peer_datagram(0x0102_0304, Side::B, MAX_BIND_DATA - BIND_DATA_HEADER_LEN + 1), 0).is_none()
        );
        // A length beyond the datagram, and every truncation, fail to decode.
        let mut long = b.clone();
        long[59..61].copy_from_slice(&101u16.to_be_bytes());
        assert_eq!(BindRequest::decode_with_data(&long), Err(DecodeError::Truncated));
        for cut in 0..b.len() {
            assert!(BindRequest::decode_with_data(&b[..cut]).is_err(), "{cut}");
        }
        // The kind byte is authenticated: a Bind's mac does not make a BindData, nor back.
        let bind = BindRequest::encode(LinkId(0x0102_0304), Side::B, &token(), &k, 99, BindCookie([5; 8]));
        let mut forged = bind.to_vec();
        forged[0] = 0x33;
        forged.extend_from_slice(&100u16.to_be_bytes());
        forged.extend_from_slice(&data);
        assert!(!BindRequest::decode_with_data(&forged).unwrap().0.verify_mac(&k));
        let mut back = b[..BIND_LEN].to_vec();
        back[0] = 0x30;
        assert!(!BindRequest::decode(&back).unwrap().verify_mac(&k));
        assert!(BindRequest::decode(&b).is_err(), "a BindData is not a Bind");
    }

    #[test]
    fn relay_token_roundtrip_and_length() {
        let t = token();
        let b = t.to_bytes();
        assert_eq!(b.len(), 21);
        assert_eq!(b[0], 7);
        assert_eq!(&b[1..5], &1_900_000_000u32.to_be_bytes());
        assert_eq!(RelayToken::from_bytes(&b), Ok(t));
        assert_eq!(RelayToken::from_bytes(&b[..20]), Err(DecodeError::Truncated));
    }

    #[test]
    fn relay_bind_layout_roundtrip_and_mac() {
        let k = key(1);
        let b = BindRequest::encode(LinkId(0x0102_0304), Side::B, &token(), &k, 99, BindCookie([5; 8]));
        assert_eq!(b.len(), 59);
        assert_eq!(b[0], 0x30);
        assert_eq!(&b[1..5], &[1, 2, 3, 4]);
        assert_eq!(b[5], 1);
        assert_eq!(&b[6..27], &token().to_bytes());
        assert_eq!(&b[27..35], &99u64.to_be_bytes());
        assert_eq!(&b[35..43], &[5; 8]);
        let r = BindRequest::decode(&b).unwrap();
        assert_eq!(r.counter, 99);
        assert_eq!(r.side, Side::B);
        assert!(r.verify_mac(&k));
        assert!(!r.verify_mac(&key(2)));
        let mut bad = b;
        bad[30] ^= 1;
        assert!(!BindRequest::decode(&bad).unwrap().verify_mac(&k));
        assert_eq!(BindRequest::decode(&b[..58]), Err(DecodeError::Truncated));
        // zero padding up to MAX_PADDED_BIND is accepted and ignored; anything else is not
        let mut padded = b.to_vec();
        padded.resize(MAX_PADDED_BIND, 0);
        assert_eq!(BindRequest::decode(&padded).unwrap(), r);
        padded.push(0);
        assert!(BindRequest::decode(&padded).is_err());
        let mut junk = b.to_vec();
        junk.push(1);
        assert!(BindRequest::decode(&junk).is_err());
        let mut side = b;
        side[5] = 2;
        assert!(BindRequest::decode(&side).is_err());
    }

    #[test]
    fn relay_bind_ack_sizes_never_exceed_bind() {
        assert_eq!(BIND_LEN, 59);
        assert_eq!(BIND_ACK_V4_LEN, 46);
        assert_eq!(BIND_ACK_V6_LEN, 58);
        let k = key(3);
        for observed in [
            "203.0.113.9:40000".parse().unwrap(),
            "[2001:db8::1]:40000".parse().unwrap(),
            "[::ffff:203.0.113.9]:40000".parse().unwrap(),
        ] {
            let ack = BindAck {
                link: LinkId(9),
                side: Side::A,
                counter: u64::MAX,
                peer_bound: true,
                validated: false,
                cookie: BindCookie([0xff; 8]),
                observed,
            };
            let bytes = ack.encode(&k);
            assert!(bytes.len() <= BIND_LEN, "{} > {}", bytes.len(), BIND_LEN);
            assert_eq!(bytes.len(), ack.encoded_len());
            let back = BindAck::decode_verified(&bytes, &k).unwrap();
            assert_eq!(back.observed, canonical(observed));
            assert_eq!(back.counter, u64::MAX);
            assert!(back.peer_bound && !back.validated);
            assert_eq!(BindAck::decode_verified(&bytes, &key(4)), Err(RelayProtoError::BadMac));
            for cut in 0..bytes.len() {
                assert!(BindAck::decode_verified(&bytes[..cut], &k).is_err());
            }
        }
        assert_eq!(
            canonical("[::ffff:1.2.3.4]:5".parse().unwrap()),
            "1.2.3.4:5".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn relay_decoders_never_panic_on_random_bytes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
        let k = key(9);
        let mut buf = [0u8; 80];
        for _ in 0..100_000 {
            let n = rng.random_range(0..buf.len());
            rng.fill(&mut buf[..n]);
            if n > 0 && rng.random_bool(0.5) {
                buf[0] = rng.random_range(0x30..=0x33);
            }
            let _ = BindRequest::decode(&buf[..n]);
            let _ = BindRequest::decode_with_data(&buf[..n]);
            assert!(BindAck::decode_verified(&buf[..n], &k).is_err());
            let _ = RelayToken::from_bytes(&buf[..n]);
        }
    }

    #[test]
    fn bind_key_debug_is_redacted() {
        assert_eq!(format!("{:?}", key(0x41)), "BindKey(<redacted>)");
    }
}
