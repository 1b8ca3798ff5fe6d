//! The directory (world list), sans-IO: shards register themselves with an authenticated
//! heartbeat, clients list them and pick one. The service (`p2pmodel directory`) and the
//! shard's heartbeat sender live in `p2pmodel-servers`; the blocking list query in
//! `bevy_p2pmodel::client::directory`.
//!
//! Every message is one frame on a TCP stream (byte layout in docs/PROTOCOL.md):
//!
//! ```text
//! frame:    length (u32 big-endian, of what follows) | "PMD1" | codec-encoded Request/Response
//! requests: at most MAX_REQUEST bytes after the length; answers: at most MAX_RESPONSE
//! ```
//!
//! A registration is authenticated with the shard's *directory key* ([`DirectoryKey`], derived
//! from the shard secret, or configured): `Register { body, mac }` where `body` is the encoded
//! [`Registration`] and `mac` = HMAC-SHA256(key, [`MAC_LABEL`] ‖ body). The directory holds the
//! keys, never a shard secret. Replay: the registration carries the shard's wall clock
//! (`unix_ms`); the directory refuses one more than `max_skew` away from its own clock, and one
//! not newer than the last it accepted from that shard. Listing is open and rate-limited per
//! source IP; so are refused registrations.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::codec::{self, CodecError};

/// First 4 bytes of every frame's payload (after the length).
pub const MAGIC: [u8; 4] = *b"PMD1";
/// Largest request payload (magic + encoded request), in bytes.
pub const MAX_REQUEST: usize = 1024;
/// Largest answer payload (magic + encoded answer), in bytes.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Longest shard name or region, in bytes.
pub const MAX_NAME: usize = 32;
/// Longest login address text (`KEY@HOST:PORT`), in bytes.
pub const MAX_LOGIN: usize = 160;
/// Most shards one directory lists (and most keys it holds).
pub const MAX_SHARDS: usize = 256;
/// What the HMAC of a registration starts with (domain separation).
pub const MAC_LABEL: &[u8] = b"p2pmodel directory registration v1";
/// HKDF info deriving a shard's directory key from its secret.
const KEY_INFO: &[u8] = b"p2pmodel directory key v1";

type HmacSha256 = Hmac<Sha256>;

/// A shard's directory key (32 bytes, 64 hex digits in text): authenticates its registrations.
/// The directory holds it; it reveals nothing of the shard secret it is derived from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DirectoryKey(pub [u8; 32]);

impl std::fmt::Debug for DirectoryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectoryKey(..)")
    }
}

impl DirectoryKey {
    /// The key derived from a shard secret (HKDF-SHA256, info `p2pmodel directory key v1`).
    pub fn derive(shard_secret: &[u8; 32]) -> DirectoryKey {
        let mut k = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, shard_secret)
            .expand(KEY_INFO, &mut k)
            .expect("32 bytes is a valid HKDF length");
        DirectoryKey(k)
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parse 64 hex digits (surrounding whitespace allowed).
    pub fn from_hex(s: &str) -> Option<DirectoryKey> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(DirectoryKey(k))
    }

    fn mac(&self, body: &[u8]) -> HmacSha256 {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(MAC_LABEL);
        m.update(body);
        m
    }
}

/// A shard's state as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// Serving and taking players.
    Ok,
    /// Serving, but something is wrong (e.g. its loop stalls): clients should prefer others.
    Degraded,
    /// Shutting down: keeps its players, takes no new ones.
    Draining,
    /// Gone (a clean shutdown): the directory drops it at once.
    Leaving,
}

/// What a shard says of itself in each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The shard's name (`shard.name`): selects the key the directory checks the MAC with.
    pub name: String,
    /// Its region (e.g. `eu`): clients may list one region.
    pub region: String,
    /// Where to log in: `KEY@HOST:PORT` (the login public key pinned by clients).
    pub login: String,
    /// Players connected now.
    pub population: u32,
    /// Players it takes at most.
    pub capacity: u32,
    /// Its state.
    pub health: Health,
    /// The shard's wall clock (ms since the Unix epoch): freshness and replay protection.
    pub unix_ms: u64,
}

impl Registration {
    /// The signed request carrying this registration.
    pub fn sign(&self, key: &DirectoryKey) -> Result<Request, CodecError> {
        let body = codec::encode(self, MAX_REQUEST - 64)?;
        let mac = key.mac(&body).finalize().into_bytes().into();
        Ok(Request::Register { body, mac })
    }
}

/// A request from a client or a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// List the live shards of `region` (empty: every region). Open to anyone, rate-limited.
    List {
        /// Region filter; empty for all.
        region: String,
    },
    /// A heartbeat: `body` is an encoded [`Registration`], `mac` its HMAC under the shard's key.
    Register {
        /// The encoded registration.
        body: Vec<u8>,
        /// HMAC-SHA256(key, MAC_LABEL ‖ body).
        mac: [u8; 32],
    },
}

/// One listed shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Shard name.
    pub name: String,
    /// Region.
    pub region: String,
    /// `KEY@HOST:PORT` to log in with.
    pub login: String,
    /// Players connected at the last heartbeat.
    pub population: u32,
    /// Most players it takes.
    pub capacity: u32,
    /// Its state at the last heartbeat.
    pub health: Health,
    /// Milliseconds since its last heartbeat.
    pub age_ms: u32,
}

impl ShardEntry {
    /// Taking new players: healthy (`Ok` or `Degraded`) and below capacity.
    pub fn open(&self) -> bool {
        matches!(self.health, Health::Ok | Health::Degraded) && self.population < self.capacity
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Not a request (bad magic, undecodable, too large).
    Malformed,
    /// No key for this shard name.
    UnknownShard,
    /// The MAC does not match the shard's key.
    BadMac,
    /// Not newer than the last registration accepted from this shard.
    Replay,
    /// The timestamp is too far from the directory's clock.
    Clock,
    /// A field is out of bounds (region, login address).
    Invalid,
    /// This source sent too many lists or refused registrations.
    RateLimited,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The live shards, sorted by region then name.
    Shards(Vec<ShardEntry>),
    /// The registration is accepted; the shard drops out after `expire_ms` without another.
    Registered {
        /// The directory's expiry, in ms.
        expire_ms: u32,
    },
    /// Refused, and why.
    Refused(Refusal),
}

/// Encode a request as a frame payload (magic + encoding; no length prefix).
pub fn encode_request(r: &Request) -> Result<Vec<u8>, CodecError> {
    with_magic(codec::encode(r, MAX_REQUEST - MAGIC.len())?)
}

/// Encode an answer as a frame payload.
pub fn encode_response(r: &Response) -> Result<Vec<u8>, CodecError> {
    with_magic(codec::encode(r, MAX_RESPONSE - MAGIC.len())?)
}

fn with_magic(body: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(MAGIC.len() + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    Ok(out)
}

fn strip_magic(payload: &[u8]) -> Result<&[u8], CodecError> {
    payload
        .strip_prefix(&MAGIC[..])
        .ok_or_else(|| CodecError::Malformed("not a directory frame (magic)".into()))
}

/// Decode a request frame payload; any input gives `Ok` or `Err`, never a panic.
pub fn decode_request(payload: &[u8]) -> Result<Request, CodecError> {
    codec::decode(strip_magic(payload)?, MAX_REQUEST)
}

/// Decode an answer frame payload.
pub fn decode_response(payload: &[u8]) -> Result<Response, CodecError> {
    codec::decode(strip_magic(payload)?, MAX_RESPONSE)
}

/// The 4-byte big-endian length prefix of a frame of `payload`.
pub fn frame_header(payload: &[u8]) -> [u8; 4] {
    (payload.len() as u32).to_be_bytes()
}

/// The payload length a frame header announces, if within `max` (else the frame is refused
/// unread and the connection closed).
pub fn frame_len(header: [u8; 4], max: usize) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(CodecError::TooLarge { len, limit: max });
    }
    Ok(len)
}

/// The shard a client should join: the open one (healthy, below capacity) with the lowest
/// population / capacity, `Ok` before `Degraded`; ties by name. `None` if none is open.
pub fn pick_least_loaded(shards: &[ShardEntry]) -> Option<&ShardEntry> {
    shards.iter().filter(|s| s.open()).min_by(|a, b| {
        let load = |s: &ShardEntry| s.population as f64 / s.capacity.max(1) as f64;
        (a.health != Health::Ok)
            .cmp(&(b.health != Health::Ok))
            .then(load(a).total_cmp(&load(b)))
            .then_with(|| a.name.cmp(&b.name))
    })
}

/// Is `s` a valid shard name or region: 1..=32 of letters, digits, `-`, `_`, `.`?
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Is `s` a well-formed `KEY@HOST:PORT` (64 hex digits, a host, a port)? Nothing is resolved.
pub fn valid_login(s: &str) -> bool {
    s.len() <= MAX_LOGIN
        && crate::login::ShardAddress::parse_with(s, |hp| {
            let (host, port) = hp.rsplit_once(':').ok_or_else(String::new)?;
            let ok_host =
                !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
            match (ok_host, port.parse::<u16>()) {
                (true, Ok(p)) if p != 0 => Ok(std::net::SocketAddr::from(([0, 0, 0, 0], p))),
                _ => Err(String::new()),
            }
        })
        .is_ok()
}

/// The directory's limits and timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DirectorySettings {
    /// A shard without a heartbeat for this long drops out of the list.
    pub expire_after: Duration,
    /// Largest accepted distance between a registration's clock and ours.
    pub max_skew: Duration,
    /// Lists (and refused registrations) per second per source IP, sustained.
    pub per_source_per_sec: f64,
    /// ... and in a burst.
    pub per_source_burst: f64,
    /// Source IPs tracked for rate limiting at most (beyond: idle ones are forgotten, else
    /// new sources are refused).
    pub max_sources: usize,
}

impl Default for DirectorySettings {
    fn default() -> Self {
        DirectorySettings {
            expire_after: Duration::from_secs(5),
            max_skew: Duration::from_secs(30),
            per_source_per_sec: 5.0,
            per_source_burst: 20.0,
            max_sources: 16_384,
        }
    }
}

#[derive(Debug)]
struct Live {
    reg: Registration,
    seen: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Counters of what the directory did (for logs and metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Registrations accepted.
    pub registered: u64,
    /// Lists answered.
    pub listed: u64,
    /// Requests refused (any reason).
    pub refused: u64,
    /// Shards dropped for a missed heartbeat.
    pub expired: u64,
}

/// The directory's state: keys, live shards, rate limits. Drive it with [`Directory::handle`].
#[derive(Debug)]
pub struct Directory {
    keys: HashMap<String, DirectoryKey>,
    live: HashMap<String, Live>,
    last_unix_ms: HashMap<String, u64>,
    sources: HashMap<IpAddr, Bucket>,
    settings: DirectorySettings,
    stats: DirectoryStats,
}

impl Directory {
    /// A directory accepting the shards named in `keys` (at most [`MAX_SHARDS`]; extra names
    /// are an error).
    pub fn new(
        keys: HashMap<String, DirectoryKey>,
        settings: DirectorySettings,
    ) -> Result<Directory, String> {
        if keys.len() > MAX_SHARDS {
            return Err(format!("{} shard keys; a directory holds at most {MAX_SHARDS}", keys.len()));
        }
        if let Some(bad) = keys.keys().find(|n| !valid_label(n)) {
            return Err(format!("{bad:?} is not a shard name (1-32 letters, digits, '-', '_', '.')"));
        }
        Ok(Directory {
            keys,
            live: HashMap::new(),
            last_unix_ms: HashMap::new(),
            sources: HashMap::new(),
            settings,
            stats: DirectoryStats::default(),
        })
    }

    /// What it did so far.
    pub fn stats(&self) -> DirectoryStats {
        self.stats
    }

    /// Shards listed now (after expiry at `now`).
    pub fn live(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.live.len()
    }

    /// One frame payload from `from` at `now` (`unix_ms`: our wall clock) → the answer's
    /// payload. Never panics; garbage gets `Refused(Malformed)`.
    pub fn handle(&mut self, now: Instant, unix_ms: u64, from: IpAddr, payload: &[u8]) -> Vec<u8> {
        let answer = match decode_request(payload) {
            Ok(r) => self.handle_request(now, unix_ms, from, r),
            Err(_) => self.refuse(now, from, Refusal::Malformed),
        };
        encode_response(&answer).unwrap_or_else(|_| {
            // A list always fits (MAX_SHARDS entries of bounded size); keep a fallback anyway.
            encode_response(&Response::Refused(Refusal::Malformed)).unwrap_or_default()
        })
    }

    /// A decoded request.
    pub fn handle_request(&mut self, now: Instant, unix_ms: u64, from: IpAddr, r: Request) -> Response {
        self.expire(now);
        match r {
            Request::List { region } => {
                if !self.allow(now, from) {
                    self.stats.refused += 1;
                    return Response::Refused(Refusal::RateLimited);
                }
                self.stats.listed += 1;
                Response::Shards(self.list(now, &region))
            }
            Request::Register { body, mac } => match self.register(now, unix_ms, &body, &mac) {
                Ok(()) => {
                    self.stats.registered += 1;
                    Response::Registered { expire_ms: self.settings.expire_after.as_millis() as u32 }
                }
                Err(why) => self.refuse(now, from, why),
            },
        }
    }

    fn refuse(&mut self, now: Instant, from: IpAddr, why: Refusal) -> Response {
        self.stats.refused += 1;
        if self.allow(now, from) { Response::Refused(why) } else { Response::Refused(Refusal::RateLimited) }
    }

    fn register(&mut self, now: Instant, unix_ms: u64, body: &[u8], mac: &[u8; 32]) -> Result<(), Refusal> {
        let reg: Registration = codec::decode(body, MAX_REQUEST).map_err(|_| Refusal::Malformed)?;
        let key = self.keys.get(&reg.name).ok_or(Refusal::UnknownShard)?;
        key.mac(body).verify_slice(mac).map_err(|_| Refusal::BadMac)?;
        if reg.unix_ms.abs_diff(unix_ms) > self.settings.max_skew.as_millis() as u64 {
            return Err(Refusal::Clock);
        }
        if self.last_unix_ms.get(&reg.name).is_some_and(|last| reg.unix_ms <= *last) {
            return Err(Refusal::Replay);
        }
        if !valid_label(&reg.region) || !valid_login(&reg.login) {
            return Err(Refusal::Invalid);
        }
        self.last_unix_ms.insert(reg.name.clone(), reg.unix_ms);
        if reg.health == Health::Leaving {
            self.live.remove(&reg.name);
        } else {
            self.live.insert(reg.name.clone(), Live { reg, seen: now });
        }
        Ok(())
    }

    /// The live shards of `region` (empty: all), sorted by region then name.
    pub fn list(&mut self, now: Instant, region: &str) -> Vec<ShardEntry> {
        self.expire(now);
        let mut out: Vec<ShardEntry> = self
            .live
            .values()
            .filter(|l| region.is_empty() || l.reg.region == region)
            .map(|l| ShardEntry {
                name: l.reg.name.clone(),
                region: l.reg.region.clone(),
                login: l.reg.login.clone(),
                population: l.reg.population,
                capacity: l.reg.capacity,
                health: l.reg.health,
                age_ms: now.saturating_duration_since(l.seen).as_millis().min(u32::MAX as u128) as u32,
            })
            .collect();
        out.sort_by(|a, b| (&a.region, &a.name).cmp(&(&b.region, &b.name)));
        out
    }

    fn expire(&mut self, now: Instant) {
        let limit = self.settings.expire_after;
        let before = self.live.len();
        self.live.retain(|_, l| now.saturating_duration_since(l.seen) < limit);
        self.stats.expired += (before - self.live.len()) as u64;
    }

    /// One token from `from`'s bucket, if it has one.
    fn allow(&mut self, now: Instant, from: IpAddr) -> bool {
        let s = self.settings;
        if !self.sources.contains_key(&from) && self.sources.len() >= s.max_sources {
            // Forget sources whose bucket has refilled: they lose nothing.
            let full = s.per_source_burst / s.per_source_per_sec;
            self.sources.retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() < full);
            if self.sources.len() >= s.max_sources {
                return false;
            }
        }
        let b = self.sources.entry(from).or_insert(Bucket { tokens: s.per_source_burst, at: now });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * s.per_source_per_sec).min(s.per_source_burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests;
