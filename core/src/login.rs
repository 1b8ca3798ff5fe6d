//! The shard's login service, sans-IO: the wire format both sides share (the servers'
//! `shard::login` module serves it) and the client's handshake ([`ClientLogin`]): one
//! encrypted UDP round trip that turns a name and a credential into a netcode connect token
//! for the Agent. The blocking client (a UDP socket, 3 tries) is
//! `bevy_p2pmodel::client::login::request_token`.
//!
//! The exchange is a Noise `NK` handshake (`Noise_NK_25519_ChaChaPoly_SHA256`, prologue
//! [`PROLOGUE`]): the client pins the shard's static login key ([`LoginKey`], printed by
//! `p2pmodel secret` and `p2pmodel shard all`), so the token, its netcode session keys and
//! the credential are never in clear, and only the real shard can answer.
//!
//! ```text
//! request (exactly REQUEST_LEN = 1400 bytes, smaller or larger ones are dropped unanswered):
//!   0..8     "P2PMLGQ1"
//!   8..40    client ephemeral public key e              (Noise message 1: e, es)
//!   40..1400 ChaCha20-Poly1305(payload, 1344 bytes) + 16-byte tag
//!   payload: name length n (1..=32), name UTF-8, credential length c (u16 BE, <= 1024),
//!            credential bytes, zeros up to 1344 bytes
//! answer (at most REQUEST_LEN bytes):
//!   0..8     "P2PMLGA1"
//!   8..16    e[0..8] of the request it answers
//!   16..48   server ephemeral public key                (Noise message 2: e, ee)
//!   48..     ChaCha20-Poly1305(0x01 connect-token | 0x02 reason-utf8) + 16-byte tag
//! key notice (40 bytes; the request could not be decrypted: the client pinned a wrong key):
//!   0..8     "P2PMLGK1"
//!   8..16    e[0..8] of the request
//!   16..40   zeros
//! ```
//! The answer never exceeds the request (no amplification); the token's public address list
//! is trimmed to fit (the private part, which the Agent checks, keeps every address).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;

use renetcode::ConnectToken;

/// Size of every login request, in bytes; answers are never larger.
pub const REQUEST_LEN: usize = 1400;
/// First 8 bytes of a request.
pub const REQUEST_MAGIC: &[u8; 8] = b"P2PMLGQ1";
/// First 8 bytes of an (encrypted) answer.
pub const ANSWER_MAGIC: &[u8; 8] = b"P2PMLGA1";
/// First 8 bytes of a key notice (the request did not decrypt with the shard's key).
pub const KEY_NOTICE_MAGIC: &[u8; 8] = b"P2PMLGK1";
/// Size of a key notice.
pub const KEY_NOTICE_LEN: usize = 40;
/// The Noise protocol of the login.
pub const NOISE_PARAMS: &str = "Noise_NK_25519_ChaChaPoly_SHA256";
/// Noise prologue: binds the handshake to this protocol and version.
pub const PROLOGUE: &[u8] = b"p2pmodel login v1";
/// Longest credential, in bytes.
pub const MAX_CREDENTIAL: usize = 1024;
/// Longest player name, in bytes.
pub const MAX_NAME: usize = 32;
/// Plaintext size of the request payload.
pub const PAYLOAD_LEN: usize = REQUEST_LEN - 8 - 32 - TAG_LEN;
/// Longest plaintext of an answer (`kind` byte + token or reason).
pub const MAX_ANSWER_PLAINTEXT: usize = REQUEST_LEN - ANSWER_HEADER - 32 - TAG_LEN;
/// Longest refusal reason sent, in bytes (longer ones are cut).
pub const MAX_REASON: usize = 200;
const ANSWER_HEADER: usize = 16;
const TAG_LEN: usize = 16;
const KIND_TOKEN: u8 = 1;
const KIND_REFUSED: u8 = 2;

/// The shard's static login public key (X25519, 32 bytes; 64 hex digits in text). Clients
/// pin it: an answer from anyone without the matching private key cannot be decrypted.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginKey(pub [u8; 32]);

impl fmt::Display for LoginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoginKey({self})")
    }
}

impl FromStr for LoginKey {
    type Err = String;
    fn from_str(s: &str) -> Result<LoginKey, String> {
        let s = s.trim();
        let bad = || format!("a login key is 64 hex digits (`p2pmodel secret --show-public`), not {s:?}");
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(LoginKey(k))
    }
}

/// Where and how to log in to a shard: the login service's address and its pinned key.
/// Text form: `<key-hex>@HOST:PORT` (e.g. `3f…a1@play.example.com:7001`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardAddress {
    /// The login service (UDP).
    pub login: SocketAddr,
    /// The shard's login public key.
    pub key: LoginKey,
}

impl ShardAddress {
    /// The login service at `login`, pinned to `key`.
    pub fn new(login: SocketAddr, key: LoginKey) -> ShardAddress {
        ShardAddress { login, key }
    }
}

impl fmt::Display for ShardAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.key, self.login)
    }
}

impl fmt::Debug for ShardAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardAddress({self})")
    }
}

impl ShardAddress {
    /// Parse `<key-hex>@HOST:PORT`, turning `HOST:PORT` into an address with `resolve` (the
    /// core does no I/O: a driver passes a DNS lookup, [`FromStr`] accepts IP literals only).
    pub fn parse_with(
        s: &str,
        resolve: impl FnOnce(&str) -> Result<SocketAddr, String>,
    ) -> Result<ShardAddress, String> {
        let Some((key, addr)) = s.trim().split_once('@') else {
            return Err(format!(
                "{s:?} is not KEY@HOST:PORT (the shard's login key, printed by `p2pmodel shard all` \
                 and `p2pmodel secret --show-public`, then @ and the login address)"
            ));
        };
        let key: LoginKey = key.parse()?;
        Ok(ShardAddress { login: resolve(addr)?, key })
    }
}

impl FromStr for ShardAddress {
    type Err = String;
    /// `<key-hex>@IP:PORT` (an IP literal; names need a resolver: [`ShardAddress::parse_with`]).
    fn from_str(s: &str) -> Result<ShardAddress, String> {
        ShardAddress::parse_with(s, |addr| {
            addr.parse::<SocketAddr>().map_err(|_| {
                format!("{addr:?} is not IP:PORT (a host name needs resolving: ShardAddress::parse_with)")
            })
        })
    }
}

/// Why a login failed (client side).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Socket trouble, or no answer in time.
    #[error("login service unreachable: {0}")]
    Io(#[from] io::Error),
    /// The shard refused.
    #[error("login refused: {0}")]
    Refused(String),
    /// The shard could not decrypt the request: the pinned key is not the shard's.
    #[error(
        "the shard's login key does not match (the server at {0} has another key; check the key after `@`)"
    )]
    KeyMismatch(SocketAddr),
    /// The answer was not a token.
    #[error("malformed login answer")]
    Malformed,
    /// The request cannot be built (name or credential too long, crypto failure).
    #[error("bad login request: {0}")]
    BadRequest(String),
}

/// What a request carries, once decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// Player name (1..=32 bytes).
    pub name: String,
    /// Opaque credential for the shard's account check (password, ticket...; may be empty).
    pub credential: Vec<u8>,
}

impl LoginRequest {
    /// The fixed-size plaintext payload (see the module doc).
    pub fn encode(&self) -> Result<[u8; PAYLOAD_LEN], String> {
        let (n, c) = (self.name.as_bytes(), &self.credential);
        if n.is_empty() || n.len() > MAX_NAME {
            return Err(format!("names are 1-{MAX_NAME} bytes"));
        }
        if c.len() > MAX_CREDENTIAL {
            return Err(format!("credentials are at most {MAX_CREDENTIAL} bytes"));
        }
        let mut p = [0u8; PAYLOAD_LEN];
        p[0] = n.len() as u8;
        p[1..1 + n.len()].copy_from_slice(n);
        let at = 1 + n.len();
        p[at..at + 2].copy_from_slice(&(c.len() as u16).to_be_bytes());
        p[at + 2..at + 2 + c.len()].copy_from_slice(c);
        Ok(p)
    }

    /// Parse a decrypted payload (`None` if malformed).
    pub fn decode(p: &[u8]) -> Option<LoginRequest> {
        let n = *p.first()? as usize;
        if n == 0 || n > MAX_NAME {
            return None;
        }
        let name = std::str::from_utf8(p.get(1..1 + n)?).ok()?.to_string();
        let at = 1 + n;
        let c = u16::from_be_bytes(p.get(at..at + 2)?.try_into().ok()?) as usize;
        if c > MAX_CREDENTIAL {
            return None;
        }
        let credential = p.get(at + 2..at + 2 + c)?.to_vec();
        Some(LoginRequest { name, credential })
    }
}

/// What the shard answers, once decrypted.
#[derive(Debug)]
pub enum LoginAnswer {
    /// A connect token for the Agent (boxed: it is 2 KB in memory).
    Token(Box<ConnectToken>),
    /// Refused, with a reason for the user.
    Refused(String),
}

impl LoginAnswer {
    /// The answer plaintext, at most [`MAX_ANSWER_PLAINTEXT`] bytes: a token's public address
    /// list is trimmed from the end until it fits, a reason is cut to [`MAX_REASON`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        match self {
            LoginAnswer::Token(t) => {
                let mut t = (**t).clone();
                loop {
                    let mut out = vec![KIND_TOKEN];
                    t.write(&mut out).map_err(|e| e.to_string())?;
                    if out.len() <= MAX_ANSWER_PLAINTEXT {
                        return Ok(out);
                    }
                    let Some(last) = t.server_addresses.iter().rposition(Option::is_some) else {
                        return Err("connect token too large".into());
                    };
                    if last == 0 {
                        return Err("connect token too large".into());
                    }
                    t.server_addresses[last] = None;
                }
            }
            LoginAnswer::Refused(r) => {
                let mut end = r.len().min(MAX_REASON);
                while !r.is_char_boundary(end) {
                    end -= 1;
                }
                Ok([&[KIND_REFUSED], &r.as_bytes()[..end]].concat())
            }
        }
    }

    /// Parse a decrypted answer (`None` if malformed).
    pub fn decode(p: &[u8]) -> Option<LoginAnswer> {
        match p.split_first()? {
            (&KIND_TOKEN, t) => ConnectToken::read(&mut &t[..]).ok().map(|t| LoginAnswer::Token(Box::new(t))),
            (&KIND_REFUSED, r) => Some(LoginAnswer::Refused(String::from_utf8_lossy(r).into_owned())),
            _ => None,
        }
    }
}

/// The 8-byte id an answer echoes: the first bytes of the request's ephemeral key.
pub fn request_id(request: &[u8]) -> Option<[u8; 8]> {
    request.get(8..16)?.try_into().ok()
}

/// A key notice for `request` (sent by the server when it cannot decrypt it).
pub fn key_notice(request: &[u8]) -> Option<[u8; KEY_NOTICE_LEN]> {
    let mut n = [0u8; KEY_NOTICE_LEN];
    n[..8].copy_from_slice(KEY_NOTICE_MAGIC);
    n[8..16].copy_from_slice(&request_id(request)?);
    Some(n)
}

/// One login attempt, sans-IO: [`ClientLogin::start`] builds the request, [`ClientLogin::read`]
/// decrypts the answer.
pub struct ClientLogin {
    state: snow::HandshakeState,
    id: [u8; 8],
}

impl fmt::Debug for ClientLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLogin").field("id", &self.id).finish_non_exhaustive()
    }
}

/// What a datagram from the login service means to the attempt it was read by.
#[derive(Debug)]
pub enum ClientEvent {
    /// Not for this attempt (other id, garbage, spoofed): ignore it and keep waiting.
    Ignored,
    /// The shard could not decrypt the request: the pinned key is wrong.
    KeyMismatch,
    /// The decrypted answer.
    Answer(LoginAnswer),
}

impl ClientLogin {
    /// A request for `req`, encrypted to `key` (a fresh ephemeral key each time).
    pub fn start(key: &LoginKey, req: &LoginRequest) -> Result<(ClientLogin, Vec<u8>), LoginError> {
        let bad = |e: snow::Error| LoginError::BadRequest(e.to_string());
        let params = NOISE_PARAMS.parse().map_err(bad)?;
        let mut state = snow::Builder::new(params)
            .prologue(PROLOGUE)
            .map_err(bad)?
            .remote_public_key(&key.0)
            .map_err(bad)?
            .build_initiator()
            .map_err(bad)?;
        let payload = req.encode().map_err(LoginError::BadRequest)?;
        let mut out = vec![0u8; REQUEST_LEN];
        out[..8].copy_from_slice(REQUEST_MAGIC);
        let n = state.write_message(&payload, &mut out[8..]).map_err(bad)?;
        debug_assert_eq!(8 + n, REQUEST_LEN);
        let id = request_id(&out).ok_or_else(|| LoginError::BadRequest("short request".into()))?;
        Ok((ClientLogin { state, id }, out))
    }

    /// Read a datagram that came from the login service.
    pub fn read(&mut self, d: &[u8]) -> ClientEvent {
        if d.len() < 16 || d[8..16] != self.id {
            return ClientEvent::Ignored;
        }
        if d.len() == KEY_NOTICE_LEN && &d[..8] == KEY_NOTICE_MAGIC {
            return ClientEvent::KeyMismatch;
        }
        if &d[..8] != ANSWER_MAGIC || d.len() > REQUEST_LEN {
            return ClientEvent::Ignored;
        }
        let mut plain = vec![0u8; d.len()];
        match self.state.read_message(&d[ANSWER_HEADER..], &mut plain) {
            Ok(n) => match LoginAnswer::decode(&plain[..n]) {
                Some(a) => ClientEvent::Answer(a),
                None => ClientEvent::Ignored,
            },
            Err(_) => ClientEvent::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_payloads_roundtrip_and_hostile_ones_are_refused() {
        let r = LoginRequest { name: "ana".into(), credential: b"pw".to_vec() };
        assert_eq!(LoginRequest::decode(&r.encode().unwrap()), Some(r));
        let long = LoginRequest { name: "x".repeat(33), credential: vec![] };
        assert!(long.encode().is_err());
        let big = LoginRequest { name: "a".into(), credential: vec![0; MAX_CREDENTIAL + 1] };
        assert!(big.encode().is_err());
        assert_eq!(LoginRequest::decode(&[]), None);
        assert_eq!(LoginRequest::decode(&[0; PAYLOAD_LEN]), None);
        let mut p = [0u8; 8];
        p[0] = 3;
        p[1..4].copy_from_slice(b"ana");
        p[4..6].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(LoginRequest::decode(&p), None, "credential longer than allowed");
        assert_eq!(LoginRequest::decode(&[5, b'a']), None, "truncated");
    }

    #[test]
    fn keys_and_addresses_parse() {
        let k: LoginKey = format!("{}ff", "00".repeat(31)).parse().unwrap();
        assert_eq!(k.0[31], 0xff);
        assert_eq!(k.to_string().parse::<LoginKey>().unwrap(), k);
        assert!("abc".parse::<LoginKey>().is_err());
        assert!("zz".repeat(32).parse::<LoginKey>().is_err());
        let a: ShardAddress = format!("{k}@127.0.0.1:7001").parse().unwrap();
        assert_eq!(a.login, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(a.to_string().parse::<ShardAddress>().unwrap(), a);
        assert!("127.0.0.1:7001".parse::<ShardAddress>().unwrap_err().contains("KEY@HOST:PORT"));
        // The core does no DNS: a name needs the driver's resolver.
        let named = format!("{k}@shard.example:7001");
        assert!(named.parse::<ShardAddress>().unwrap_err().contains("IP:PORT"));
        let at = ShardAddress::parse_with(&named, |h| {
            assert_eq!(h, "shard.example:7001");
            Ok("192.0.2.7:7001".parse().unwrap())
        });
        assert_eq!(at.unwrap(), ShardAddress::new("192.0.2.7:7001".parse().unwrap(), k));
    }

    #[test]
    fn refusals_are_cut_to_fit() {
        let a = LoginAnswer::Refused("é".repeat(500));
        let e = a.encode().unwrap();
        assert!(e.len() <= 1 + MAX_REASON);
        assert!(matches!(LoginAnswer::decode(&e), Some(LoginAnswer::Refused(r)) if r.starts_with('é')));
        assert!(LoginAnswer::decode(&[9, 1, 2]).is_none());
        assert!(LoginAnswer::decode(&[]).is_none());
    }

    #[test]
    fn a_request_is_full_size_and_answers_for_other_requests_are_ignored() {
        let (mut c, bytes) =
            ClientLogin::start(&LoginKey([9; 32]), &LoginRequest { name: "ana".into(), credential: vec![] })
                .unwrap();
        assert_eq!(bytes.len(), REQUEST_LEN);
        assert_eq!(&bytes[..8], REQUEST_MAGIC);
        assert!(matches!(c.read(&[0; 10]), ClientEvent::Ignored));
        let mut notice = key_notice(&bytes).unwrap();
        assert!(matches!(c.read(&notice), ClientEvent::KeyMismatch));
        notice[9] ^= 1;
        assert!(matches!(c.read(&notice), ClientEvent::Ignored), "a notice for another request");
        let mut garbage = vec![0u8; 300];
        garbage[..8].copy_from_slice(ANSWER_MAGIC);
        garbage[8..16].copy_from_slice(&bytes[8..16]);
        assert!(matches!(c.read(&garbage), ClientEvent::Ignored), "undecryptable answer");
    }
}
