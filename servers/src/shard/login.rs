//! The login service: a client that knows the shard's login address and pinned login key
//! sends a name and a credential and gets a connect token for the Agent (the netcode.io
//! model: a login backend mints tokens with the shard's key).
//!
//! The exchange is one encrypted UDP round trip, a Noise `NK` handshake (wire format in the
//! core module [`p2pmodel_core::login`] and docs/PROTOCOL.md): the shard's static
//! login key pair derives from the shard secret ([`login_private_key`]), clients pin its
//! public half ([`login_public_key`], printed by `p2pmodel secret` and `shard all`).
//!
//! Hardening, in the order a datagram meets it ([`LoginService::handle`]):
//! 1. a request is exactly [`REQUEST_LEN`] bytes, answers never larger: no amplification;
//!    anything else is dropped unanswered (`too_small`, `malformed`);
//! 2. per-source-IP and global token buckets ([`LoginLimits`]), excess dropped unanswered;
//! 3. a request whose ephemeral key was seen recently is a replay: dropped;
//! 4. a request that does not decrypt gets a 40-byte key notice (the client reports a key
//!    mismatch instead of timing out);
//! 5. the [`AccountCheck`] gets the name, the credential and the source IP; the per-IP cap
//!    on concurrent sessions ([`OnlineNames`]) applies to every check.
//!
//! Tokens are bound to the name (user data) and to a client id derived from it. A game with
//! real accounts implements [`AccountCheck`] (or mints tokens in its own backend with
//! [`super::keys::TokenMinter`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::keys::{TokenMinter, client_id_for, valid_name};
use crate::config::SHARD_SECRET_LEN;

// The wire format and the client's handshake live in the core, the blocking client in the
// plugin (games link them without the servers).
pub use bevy_p2pmodel::client::login::request_token;
use p2pmodel_core::login::{ANSWER_MAGIC, request_id};
pub use p2pmodel_core::login::{
    LoginAnswer, LoginError, LoginKey, LoginRequest, NOISE_PARAMS, PROLOGUE, REQUEST_LEN, REQUEST_MAGIC,
    ShardAddress, key_notice,
};
use p2pmodel_core::relay::quota::TokenBucket;

/// Label of the login key derivation (change it and every client's pinned key changes).
const LOGIN_KEY_LABEL: &[u8] = b"p2pmodel login key v1";

/// The shard's static login private key (X25519): `HMAC-SHA256(shard_secret, label)`, the
/// same in every process of the shard (X25519 clamps it when used).
pub fn login_private_key(secret: &[u8; SHARD_SECRET_LEN]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    m.update(LOGIN_KEY_LABEL);
    m.finalize().into_bytes().into()
}

/// The shard's login public key: what clients pin (`KEY@HOST:PORT`).
pub fn login_public_key(secret: &[u8; SHARD_SECRET_LEN]) -> LoginKey {
    LoginKey(curve25519_dalek::MontgomeryPoint::mul_base_clamped(login_private_key(secret)).to_bytes())
}

/// Decides who may log in. Returns the client id to mint for, or a reason for the user.
pub trait AccountCheck: Send + Sync + 'static {
    /// Check a login: `name` (already a valid name), the client's opaque `credential` and the
    /// source IP of the request.
    fn check(&self, name: &str, credential: &[u8], source: IpAddr) -> Result<u64, String>;
}

/// Names online and where from, shared by the Agent (which fills it) and the login service;
/// enforces the per-IP cap on concurrent sessions (`agent.max_clients_per_ip`).
#[derive(Debug, Clone)]
pub struct OnlineNames(Arc<Mutex<Online>>);

#[derive(Debug, Default)]
struct Online {
    names: HashMap<String, IpAddr>,
    per_ip: HashMap<IpAddr, usize>,
    cap: usize,
}

impl Default for OnlineNames {
    fn default() -> Self {
        OnlineNames::with_cap_per_ip(usize::MAX)
    }
}

impl OnlineNames {
    /// At most `cap` concurrent sessions per source IP.
    pub fn with_cap_per_ip(cap: usize) -> OnlineNames {
        OnlineNames(Arc::new(Mutex::new(Online { cap, ..Online::default() })))
    }
    /// Is `name` online?
    pub fn contains(&self, name: &str) -> bool {
        self.0.lock().map(|s| s.names.contains_key(name)).unwrap_or(false)
    }
    /// Has `ip` reached the cap on concurrent sessions?
    pub fn ip_full(&self, ip: IpAddr) -> bool {
        self.0.lock().map(|s| s.per_ip.get(&ip).copied().unwrap_or(0) >= s.cap).unwrap_or(true)
    }
    /// Mark `name` online from `ip`; `false` (nothing recorded) if `ip` is at the cap.
    pub fn connect(&self, name: &str, ip: IpAddr) -> bool {
        let Ok(mut s) = self.0.lock() else { return false };
        let s = &mut *s;
        if s.names.contains_key(name) {
            return true;
        }
        let n = s.per_ip.entry(ip).or_insert(0);
        if *n >= s.cap {
            return false;
        }
        *n += 1;
        s.names.insert(name.to_string(), ip);
        true
    }
    /// Mark `name` offline.
    pub fn disconnect(&self, name: &str) {
        let Ok(mut s) = self.0.lock() else { return };
        if let Some(ip) = s.names.remove(name)
            && let Some(n) = s.per_ip.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_ip.remove(&ip);
            }
        }
    }
}

/// Open (guest) mode, `agent.accounts = "open"`: any valid name that is not online logs in,
/// whatever the credential. For development and demos; the shard logs a warning.
pub struct OpenAccounts {
    secret: [u8; SHARD_SECRET_LEN],
    online: OnlineNames,
}

impl OpenAccounts {
    /// A check against the Agent's set of online names.
    pub fn new(secret: [u8; SHARD_SECRET_LEN], online: OnlineNames) -> OpenAccounts {
        OpenAccounts { secret, online }
    }
}

impl AccountCheck for OpenAccounts {
    fn check(&self, name: &str, _credential: &[u8], _source: IpAddr) -> Result<u64, String> {
        if self.online.contains(name) {
            return Err(format!("{name} is already online"));
        }
        Ok(client_id_for(&self.secret, name))
    }
}

/// Accounts from a file, `agent.accounts = "file:accounts.toml"`: a TOML table
/// `name = "<argon2 PHC hash>"` (make hashes with `p2pmodel secret --hash-password`). The
/// credential is the password (UTF-8 bytes).
pub struct FileAccounts {
    secret: [u8; SHARD_SECRET_LEN],
    online: OnlineNames,
    hashes: HashMap<String, String>,
}

impl FileAccounts {
    /// Read the accounts file; every hash must parse as a PHC string.
    pub fn load(
        path: &Path,
        secret: [u8; SHARD_SECRET_LEN],
        online: OnlineNames,
    ) -> Result<FileAccounts, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, secret, online).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// [`FileAccounts::load`] from text.
    pub fn parse(
        text: &str,
        secret: [u8; SHARD_SECRET_LEN],
        online: OnlineNames,
    ) -> Result<FileAccounts, String> {
        let hashes: HashMap<String, String> = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, h) in &hashes {
            if !valid_name(name) {
                return Err(format!("account {name:?}: names are 1-32 letters, digits, '-' or '_'"));
            }
            argon2::PasswordHash::new(h).map_err(|e| format!("account {name:?}: not a PHC hash ({e})"))?;
        }
        Ok(FileAccounts { secret, online, hashes })
    }
}

impl AccountCheck for FileAccounts {
    fn check(&self, name: &str, credential: &[u8], _source: IpAddr) -> Result<u64, String> {
        use argon2::PasswordVerifier;
        let bad = || "unknown name or wrong password".to_string();
        let hash = self.hashes.get(name).ok_or_else(bad)?;
        let parsed = argon2::PasswordHash::new(hash).map_err(|_| bad())?;
        argon2::Argon2::default().verify_password(credential, &parsed).map_err(|_| bad())?;
        if self.online.contains(name) {
            return Err(format!("{name} is already online"));
        }
        Ok(client_id_for(&self.secret, name))
    }
}

/// An argon2id PHC hash of `password` with a random salt (for an accounts file).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::generate(&mut rand_core06::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Counters of the login service, by what happened to each datagram.
#[derive(Debug, Default)]
pub struct LoginStats {
    /// Tokens minted.
    pub minted: AtomicU64,
    /// Requests refused (account check, per-IP cap), answered with a reason.
    pub refused: AtomicU64,
    /// Full-size datagrams that are not login requests, oversize ones, and decrypted
    /// payloads that do not parse (dropped).
    pub malformed: AtomicU64,
    /// Datagrams shorter than a request (dropped: a request must be as large as the answer).
    pub too_small: AtomicU64,
    /// Requests over the per-source-IP rate (dropped).
    pub rate_limited_source: AtomicU64,
    /// Requests over the global rate, or with the source table full (dropped).
    pub rate_limited_global: AtomicU64,
    /// Requests that did not decrypt with the shard's key (answered with a key notice).
    pub decrypt_failed: AtomicU64,
    /// Requests whose ephemeral key was seen recently (dropped).
    pub replayed: AtomicU64,
    /// Datagram bytes received.
    pub bytes_in: AtomicU64,
    /// Datagram bytes sent.
    pub bytes_out: AtomicU64,
}

impl LoginStats {
    /// `(reason, count)` of every outcome, for metrics.
    pub fn outcomes(&self) -> [(&'static str, u64); 8] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("minted", l(&self.minted)),
            ("refused", l(&self.refused)),
            ("malformed", l(&self.malformed)),
            ("too_small", l(&self.too_small)),
            ("rate_limited_source", l(&self.rate_limited_source)),
            ("rate_limited_global", l(&self.rate_limited_global)),
            ("decrypt_failed", l(&self.decrypt_failed)),
            ("replayed", l(&self.replayed)),
        ]
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Rate limits of the login service (`[agent]` login_* keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoginLimits {
    /// Requests per second one source IP may make (`agent.login_per_source_per_sec`, 5).
    pub per_source_per_sec: f64,
    /// Burst of one source IP (`agent.login_per_source_burst`, 10).
    pub per_source_burst: f64,
    /// Requests per second over all sources (`agent.login_per_sec`, 200).
    pub global_per_sec: f64,
    /// Global burst (`agent.login_burst`, 400).
    pub global_burst: f64,
    /// Source IPs tracked at most; when full (and none idle), new sources are dropped.
    pub max_sources: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_source_per_sec: 5.0,
            per_source_burst: 10.0,
            global_per_sec: 200.0,
            global_burst: 400.0,
            max_sources: 65_536,
        }
    }
}

/// Requests are counted in thousandths, so fractional rates (`0.5` per second) fit the
/// relay's integer [`TokenBucket`].
const REQUEST: u64 = 1000;

/// A full bucket of `burst` requests refilling at `rate` requests per second.
fn bucket(now: Instant, rate: f64, burst: f64) -> TokenBucket {
    let rate = rate.max(1e-3);
    TokenBucket::new(now, (rate * REQUEST as f64).round() as u64, Duration::from_secs_f64(burst / rate))
}

/// Why the limiter dropped a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Its source IP is over its rate.
    Source,
    /// All sources together are over the global rate (or the table is full).
    Global,
}

/// Per-source and global token buckets, sans-IO (time is a parameter); the source table is
/// bounded and idle sources (bucket refilled) are swept.
#[derive(Debug)]
pub struct RateLimiter {
    limits: LoginLimits,
    /// Per source: its bucket and when it last asked (for sweeping idle sources).
    sources: HashMap<IpAddr, (TokenBucket, Instant)>,
    global: Option<TokenBucket>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new(limits: LoginLimits) -> RateLimiter {
        RateLimiter { limits, sources: HashMap::new(), global: None, last_sweep: None }
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// May a request from `ip` go on at `now`?
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> Result<(), Limited> {
        let l = self.limits;
        let refill = Duration::from_secs_f64(l.per_source_burst / l.per_source_per_sec.max(1e-9));
        // Sweep once a second, or (table full) at most every 50 ms: a flood of new spoofed
        // sources must not make every datagram pay for a scan of the table.
        let since = self.last_sweep.map(|t| now.saturating_duration_since(t));
        let full = self.sources.len() >= l.max_sources && !self.sources.contains_key(&ip);
        if since.is_none_or(|d| d >= Duration::from_secs(1) || (full && d >= Duration::from_millis(50))) {
            self.sources.retain(|_, (_, at)| now.saturating_duration_since(*at) < refill);
            self.last_sweep = Some(now);
        }
        if self.sources.len() >= l.max_sources && !self.sources.contains_key(&ip) {
            return Err(Limited::Global);
        }
        let (b, at) = self
            .sources
            .entry(ip)
            .or_insert_with(|| (bucket(now, l.per_source_per_sec, l.per_source_burst), now));
        *at = now;
        if !b.try_take(now, REQUEST) {
            return Err(Limited::Source);
        }
        let g = self.global.get_or_insert_with(|| bucket(now, l.global_per_sec, l.global_burst));
        if !g.try_take(now, REQUEST) {
            return Err(Limited::Global);
        }
        Ok(())
    }
}

/// Recently seen request ephemeral keys (a bounded FIFO): a replayed request is dropped.
#[derive(Debug, Default)]
struct ReplayCache {
    seen: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

const REPLAY_CACHE: usize = 1 << 16;

impl ReplayCache {
    /// Record `e` (the oldest key is forgotten beyond [`REPLAY_CACHE`] keys).
    fn insert(&mut self, e: [u8; 32]) {
        if !self.seen.insert(e) {
            return;
        }
        self.order.push_back(e);
        if self.order.len() > REPLAY_CACHE
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
    }
}

/// The login service, sans-IO: [`LoginService::handle`] turns one datagram into at most one
/// answer no larger than it.
pub struct LoginService {
    private: [u8; 32],
    minter: TokenMinter,
    check: Box<dyn AccountCheck>,
    online: OnlineNames,
    limiter: RateLimiter,
    replays: ReplayCache,
    /// Counters.
    pub stats: Arc<LoginStats>,
}

impl LoginService {
    /// A service for the shard with this secret. `online` carries the per-IP session cap.
    pub fn new(
        secret: &[u8; SHARD_SECRET_LEN],
        minter: TokenMinter,
        check: Box<dyn AccountCheck>,
        online: OnlineNames,
        limits: LoginLimits,
    ) -> LoginService {
        LoginService {
            private: login_private_key(secret),
            minter,
            check,
            online,
            limiter: RateLimiter::new(limits),
            replays: ReplayCache::default(),
            stats: Arc::new(LoginStats::default()),
        }
    }

    /// One datagram from `from` at `now`: the answer to send back to `from`, if any.
    pub fn handle(&mut self, d: &[u8], from: SocketAddr, now: Instant) -> Option<Vec<u8>> {
        let st = self.stats.clone();
        st.bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
        let out = self.answer(d, from, now);
        if let Some(o) = &out {
            debug_assert!(o.len() <= d.len());
            st.bytes_out.fetch_add(o.len() as u64, Ordering::Relaxed);
        }
        out
    }

    fn answer(&mut self, d: &[u8], from: SocketAddr, now: Instant) -> Option<Vec<u8>> {
        let st = &*self.stats;
        if d.len() < REQUEST_LEN {
            inc(&st.too_small);
            return None;
        }
        if d.len() > REQUEST_LEN || &d[..8] != REQUEST_MAGIC {
            inc(&st.malformed);
            return None;
        }
        let ip = from.ip();
        match self.limiter.allow(ip, now) {
            Ok(()) => {}
            Err(Limited::Source) => {
                inc(&st.rate_limited_source);
                return None;
            }
            Err(Limited::Global) => {
                inc(&st.rate_limited_global);
                return None;
            }
        }
        let e: [u8; 32] = d[8..40].try_into().ok()?;
        if self.replays.seen.contains(&e) {
            inc(&st.replayed);
            return None;
        }
        let mut hs = match responder(&self.private) {
            Ok(hs) => hs,
            Err(e) => {
                tracing::error!("login: cannot build the Noise responder: {e}");
                return None;
            }
        };
        let mut plain = vec![0u8; REQUEST_LEN];
        let n = match hs.read_message(&d[8..], &mut plain) {
            Ok(n) => n,
            Err(_) => {
                inc(&st.decrypt_failed);
                return key_notice(d).map(|k| k.to_vec());
            }
        };
        // Recorded only once it decrypted, so a garbled copy cannot block the genuine one.
        self.replays.insert(e);
        let Some(req) = LoginRequest::decode(&plain[..n]) else {
            inc(&st.malformed);
            return None;
        };
        let answer = self.decide(&req, ip);
        let plaintext = match answer.encode() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("login: cannot encode the answer: {e}");
                inc(&st.refused);
                LoginAnswer::Refused(format!("server error: {e}")).encode().ok()?
            }
        };
        let mut out = vec![0u8; REQUEST_LEN];
        out[..8].copy_from_slice(ANSWER_MAGIC);
        out[8..16].copy_from_slice(&request_id(d)?);
        let n = hs.write_message(&plaintext, &mut out[16..]).ok()?;
        out.truncate(16 + n);
        Some(out)
    }

    fn decide(&self, req: &LoginRequest, ip: IpAddr) -> LoginAnswer {
        let st = &*self.stats;
        let refuse = |r: String| {
            inc(&st.refused);
            LoginAnswer::Refused(r)
        };
        if !valid_name(&req.name) {
            return refuse("names are 1-32 letters, digits, '-' or '_'".into());
        }
        if self.online.ip_full(ip) {
            return refuse("too many sessions from your address".into());
        }
        match self.check.check(&req.name, &req.credential, ip) {
            Ok(id) => match self.minter.mint(id, &req.name) {
                Ok(t) => {
                    inc(&st.minted);
                    LoginAnswer::Token(Box::new(t))
                }
                Err(e) => refuse(format!("cannot mint a token: {e}")),
            },
            Err(reason) => refuse(reason),
        }
    }
}

fn responder(private: &[u8; 32]) -> Result<snow::HandshakeState, snow::Error> {
    snow::Builder::new(NOISE_PARAMS.parse()?)
        .prologue(PROLOGUE)?
        .local_private_key(private)?
        .build_responder()
}

/// Every live login service's counters (for the Prometheus endpoint).
fn live_stats() -> &'static Mutex<Vec<Weak<LoginStats>>> {
    static L: std::sync::OnceLock<Mutex<Vec<Weak<LoginStats>>>> = std::sync::OnceLock::new();
    L.get_or_init(|| Mutex::new(Vec::new()))
}

/// The login counters of this process in the Prometheus text format (empty without a login
/// service): `p2pmodel_login_requests_total{outcome="..."}` and bytes in/out.
pub fn render_metrics() -> String {
    use std::fmt::Write as _;
    let Ok(mut live) = live_stats().lock() else { return String::new() };
    live.retain(|w| w.strong_count() > 0);
    let all: Vec<Arc<LoginStats>> = live.iter().filter_map(Weak::upgrade).collect();
    if all.is_empty() {
        return String::new();
    }
    let mut o = String::new();
    let name = "p2pmodel_login_requests_total";
    let _ = writeln!(o, "# HELP {name} Login datagrams, by outcome.\n# TYPE {name} counter");
    for (i, (reason, _)) in all[0].outcomes().iter().enumerate() {
        let v: u64 = all.iter().map(|s| s.outcomes()[i].1).sum();
        let _ = writeln!(o, "{name}{{outcome=\"{reason}\"}} {v}");
    }
    let total =
        |f: fn(&LoginStats) -> &AtomicU64| all.iter().map(|s| f(s).load(Ordering::Relaxed)).sum::<u64>();
    let bytes: [(&str, &str, u64); 2] = [
        ("p2pmodel_login_received_bytes_total", "Login datagram bytes received.", total(|s| &s.bytes_in)),
        ("p2pmodel_login_sent_bytes_total", "Login datagram bytes sent.", total(|s| &s.bytes_out)),
    ];
    for (name, help, v) in bytes {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    o
}

/// The running login service (one thread around a [`LoginService`]).
pub struct LoginServer {
    addr: SocketAddr,
    key: LoginKey,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Counters.
    pub stats: Arc<LoginStats>,
}

impl LoginServer {
    /// Bind `addr` and serve until dropped.
    pub fn start(addr: SocketAddr, service: LoginService, key: LoginKey) -> io::Result<LoginServer> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = service.stats.clone();
        if let Ok(mut l) = live_stats().lock() {
            l.push(Arc::downgrade(&stats));
        }
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("p2pm-login".into())
            .spawn(move || serve(socket, service, s2))?;
        Ok(LoginServer { addr, key, stop, thread: Some(thread), stats })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The login public key clients pin.
    pub fn key(&self) -> LoginKey {
        self.key
    }
}

impl Drop for LoginServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: UdpSocket, mut service: LoginService, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        if let Some(answer) = service.handle(&buf[..n], from, Instant::now()) {
            let _ = socket.send_to(&answer, from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pmodel_core::login::{ClientEvent, ClientLogin, KEY_NOTICE_LEN};

    const SECRET: [u8; 32] = [7; 32];

    fn minter(addrs: usize) -> TokenMinter {
        let addrs = (0..addrs)
            .map(|i| SocketAddr::from(([0x2001u16, 0xdb8, 0, 0, 0, 0, 0, i as u16], 7000)))
            .collect();
        TokenMinter::new(&SECRET, 1, addrs, Duration::from_secs(60), 5)
    }

    fn service(online: OnlineNames, limits: LoginLimits) -> LoginService {
        let check = Box::new(OpenAccounts::new(SECRET, online.clone()));
        LoginService::new(&SECRET, minter(1), check, online, limits)
    }

    fn req(name: &str) -> LoginRequest {
        LoginRequest { name: name.into(), credential: b"x".to_vec() }
    }

    fn src(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i], 40000))
    }

    #[test]
    fn the_right_key_gets_a_token_and_a_wrong_key_a_small_notice() {
        let mut s = service(OnlineNames::default(), LoginLimits::default());
        let now = Instant::now();
        let key = login_public_key(&SECRET);
        let (mut c, bytes) = ClientLogin::start(&key, &req("ana")).unwrap();
        let answer = s.handle(&bytes, src(1), now).expect("answered");
        assert!(answer.len() <= bytes.len(), "{} > {}", answer.len(), bytes.len());
        // 16-byte header, 32-byte e, kind byte, 1,184-byte token (one IPv6 address), tag.
        assert_eq!(answer.len(), 16 + 32 + 1 + 1184 + 16, "the size docs/PROTOCOL.md gives");
        let ClientEvent::Answer(LoginAnswer::Token(t)) = c.read(&answer) else { panic!("no token") };
        assert_eq!(t.client_id, client_id_for(&SECRET, "ana"));
        assert_eq!(s.stats.minted.load(Ordering::Relaxed), 1);
        // A shard with another secret cannot read the request: a 40-byte notice.
        let (mut c, bytes) = ClientLogin::start(&login_public_key(&[8; 32]), &req("bob")).unwrap();
        let notice = s.handle(&bytes, src(1), now).expect("notice");
        assert_eq!(notice.len(), KEY_NOTICE_LEN);
        assert!(matches!(c.read(&notice), ClientEvent::KeyMismatch));
        assert_eq!(s.stats.decrypt_failed.load(Ordering::Relaxed), 1);
        // Keys are stable and depend on the secret.
        assert_eq!(login_public_key(&SECRET), key);
        assert_ne!(login_public_key(&[8; 32]), key);
    }

    #[test]
    fn short_oversize_garbled_and_replayed_requests_are_dropped_unanswered() {
        let mut s = service(OnlineNames::default(), LoginLimits::default());
        let now = Instant::now();
        let (_, bytes) = ClientLogin::start(&login_public_key(&SECRET), &req("ana")).unwrap();
        for n in [0, 1, 12, 100, REQUEST_LEN - 1] {
            assert_eq!(s.handle(&bytes[..n], src(2), now), None);
        }
        assert_eq!(s.stats.too_small.load(Ordering::Relaxed), 5);
        let mut big = bytes.clone();
        big.push(0);
        assert_eq!(s.handle(&big, src(2), now), None);
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] ^= 1;
        assert_eq!(s.handle(&wrong_magic, src(2), now), None);
        assert_eq!(s.stats.malformed.load(Ordering::Relaxed), 2);
        // Garbled ciphertext: decrypt fails (a notice, no token).
        let mut garbled = bytes.clone();
        garbled[700] ^= 0x40;
        assert_eq!(s.handle(&garbled, src(2), now).map(|a| a.len()), Some(KEY_NOTICE_LEN));
        assert!(s.handle(&bytes, src(2), now).is_some(), "a garbled copy does not block the genuine request");
        // The same request again is a replay.
        assert_eq!(s.handle(&bytes, src(3), now), None);
        assert_eq!(s.stats.replayed.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.minted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn every_answer_kind_fits_in_a_request() {
        // Refusal with a long reason.
        let online = OnlineNames::default();
        let mut s = service(online.clone(), LoginLimits::default());
        let now = Instant::now();
        let key = login_public_key(&SECRET);
        online.connect("ana", src(9).ip());
        let (mut c, bytes) = ClientLogin::start(&key, &req("ana")).unwrap();
        let a = s.handle(&bytes, src(4), now).unwrap();
        assert!(a.len() <= REQUEST_LEN);
        assert!(
            matches!(c.read(&a), ClientEvent::Answer(LoginAnswer::Refused(r)) if r.contains("already online"))
        );
        // A token listing 32 IPv6 addresses (the most netcode allows) is trimmed to fit.
        let check = Box::new(OpenAccounts::new(SECRET, online.clone()));
        let mut s = LoginService::new(&SECRET, minter(32), check, online, LoginLimits::default());
        let (mut c, bytes) = ClientLogin::start(&key, &req("bob")).unwrap();
        let a = s.handle(&bytes, src(4), now).unwrap();
        assert!(a.len() <= REQUEST_LEN, "{}", a.len());
        let ClientEvent::Answer(LoginAnswer::Token(t)) = c.read(&a) else { panic!("no token") };
        let kept = t.server_addresses.iter().flatten().count();
        assert!((1..32).contains(&kept), "{kept} addresses kept");
        assert_eq!(
            t.server_addresses[0],
            Some(SocketAddr::from(([0x2001u16, 0xdb8, 0, 0, 0, 0, 0, 0], 7000)))
        );
    }

    #[test]
    fn the_per_ip_session_cap_refuses_logins_and_connections() {
        let online = OnlineNames::with_cap_per_ip(2);
        let mut s = service(online.clone(), LoginLimits::default());
        let ip = src(5).ip();
        assert!(online.connect("a", ip) && online.connect("b", ip));
        assert!(!online.connect("c", ip), "third session from one IP");
        assert!(online.connect("c", src(6).ip()));
        let (mut c, bytes) = ClientLogin::start(&login_public_key(&SECRET), &req("d")).unwrap();
        let a = s.handle(&bytes, src(5), Instant::now()).unwrap();
        assert!(matches!(c.read(&a), ClientEvent::Answer(LoginAnswer::Refused(r)) if r.contains("too many")));
        online.disconnect("a");
        assert!(!online.ip_full(ip));
        assert!(online.connect("d", ip));
    }

    #[test]
    fn rate_limits_per_source_and_global_with_virtual_time() {
        let limits = LoginLimits { global_per_sec: 5.0, global_burst: 20.0, ..LoginLimits::default() };
        let mut r = RateLimiter::new(limits);
        let t0 = Instant::now();
        let a = src(1).ip();
        let ok = (0..100).filter(|_| r.allow(a, t0).is_ok()).count();
        assert_eq!(ok, 10, "burst of one source");
        assert_eq!(r.allow(a, t0), Err(Limited::Source));
        // 1 s later: 5 more (the per-source rate); the global bucket refilled 5 (15 left).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| r.allow(a, t1).is_ok()).count(), 5);
        // Another source still gets in while the first is limited, until the global bucket
        // (10 left) runs out.
        assert!(r.allow(src(2).ip(), t1).is_ok());
        let res: Vec<_> = (0..10).map(|_| r.allow(src(3).ip(), t1)).collect();
        assert_eq!(res.iter().filter(|x| x.is_ok()).count(), 9);
        assert_eq!(res[9], Err(Limited::Global));
    }

    #[test]
    fn the_source_table_is_bounded_and_idle_sources_expire() {
        let mut r = RateLimiter::new(LoginLimits { max_sources: 2, ..LoginLimits::default() });
        let t0 = Instant::now();
        assert!(r.allow(src(1).ip(), t0).is_ok() && r.allow(src(2).ip(), t0).is_ok());
        assert_eq!(r.allow(src(3).ip(), t0), Err(Limited::Global), "table full");
        assert_eq!(r.tracked(), 2);
        let t1 = t0 + Duration::from_secs(3);
        assert!(r.allow(src(3).ip(), t1).is_ok(), "idle sources were swept");
        assert_eq!(r.tracked(), 1);
        // Spoofed sources by the hundred thousand: the table stays bounded, and the global
        // bucket (400) caps what gets through.
        let mut r = RateLimiter::new(LoginLimits::default());
        let ok = (0..100_000u32).filter(|i| r.allow(IpAddr::from(i.to_be_bytes()), t0).is_ok()).count();
        assert_eq!(ok, 400);
        assert!(r.tracked() <= LoginLimits::default().max_sources);
    }

    #[test]
    fn a_flood_from_one_source_is_limited_and_another_still_logs_in() {
        let mut s = service(OnlineNames::default(), LoginLimits::default());
        let key = login_public_key(&SECRET);
        let now = Instant::now();
        let mut answered = 0;
        for i in 0..1000 {
            let (_, bytes) = ClientLogin::start(&key, &req(&format!("f{i}"))).unwrap();
            answered += s.handle(&bytes, src(7), now).is_some() as usize;
        }
        assert_eq!(answered, 10);
        assert_eq!(s.stats.rate_limited_source.load(Ordering::Relaxed), 990);
        let (mut c, bytes) = ClientLogin::start(&key, &req("ana")).unwrap();
        let a = s.handle(&bytes, src(8), now).unwrap();
        assert!(matches!(c.read(&a), ClientEvent::Answer(LoginAnswer::Token(_))));
        let st = &s.stats;
        assert!(st.bytes_out.load(Ordering::Relaxed) <= st.bytes_in.load(Ordering::Relaxed));
    }

    #[test]
    fn file_accounts_check_the_password() {
        let online = OnlineNames::default();
        let h = hash_password("hunter2").unwrap();
        let f = FileAccounts::parse(&format!("ana = \"{h}\"\n"), SECRET, online.clone()).unwrap();
        let ip = src(1).ip();
        assert_eq!(f.check("ana", b"hunter2", ip), Ok(client_id_for(&SECRET, "ana")));
        assert!(f.check("ana", b"hunter3", ip).is_err());
        assert!(f.check("bob", b"hunter2", ip).is_err());
        online.connect("ana", ip);
        assert!(f.check("ana", b"hunter2", ip).unwrap_err().contains("online"));
        assert!(FileAccounts::parse("ana = \"plain\"\n", SECRET, online.clone()).is_err());
        assert!(FileAccounts::parse("\"a b\" = \"x\"\n", SECRET, online).is_err());
    }

    #[test]
    fn login_counters_are_on_the_metrics_page() {
        let svc = service(OnlineNames::default(), LoginLimits::default());
        let server =
            LoginServer::start("127.0.0.1:0".parse().unwrap(), svc, login_public_key(&SECRET)).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.send_to(b"P2PM-LOGIN1ana", server.local_addr()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.stats.too_small.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let page = render_metrics();
        assert!(page.contains("p2pmodel_login_requests_total{outcome=\"too_small\"}"), "{page}");
        assert!(page.contains("p2pmodel_login_sent_bytes_total"), "{page}");
    }
}
