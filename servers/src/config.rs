//! `shard.toml`: the configuration of every shard role, in one file.
//!
//! ```toml
//! [shard]          # identity and secrets shared by every role of the shard
//! [relay]          # the Punch/Relay role: ports, quotas, token key rotation
//! [relay.link_quota] / [relay.source_quota]
//! [agent]          # the DMZ gateway: client port, login port, token lifetime, rate limit
//! [lobby]          # character store, zones, failure detection
//! [game]           # tick rate, servers per zone, movement and interest management
//! [directory]      # optional: heartbeat to a directory (world list) so clients find the shard
//! ```
//!
//! `assets/shard.toml` is the documented example. Every key has a default except
//! `shard.name` and the shard secret. Loading is strict: an unknown key, a wrong type or an
//! out-of-range value is an error that names the key (`relay.link_quota.packets_per_sec`)
//! and the problem, so a typo never silently falls back to a default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2pmodel_core::relay::{Quota, RelayConfig};
use serde::Deserialize;
use thiserror::Error;

use crate::relay::RelayKey;

pub use p2pmodel_core::relay::SHARD_SECRET_LEN;

/// Why `shard.toml` could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type. The message
    /// from the TOML parser names the key and the line.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// What is wrong, and where.
        message: String,
    },
    /// A key is present and well-typed but its value is not allowed.
    #[error("{path}: `{key}` {problem}")]
    Invalid {
        /// The file (or `<string>`).
        path: String,
        /// The dotted key, e.g. `relay.idle_timeout_secs`.
        key: &'static str,
        /// What is wrong with it and what to do.
        problem: String,
    },
}

impl ConfigError {
    /// The dotted key at fault, for [`ConfigError::Invalid`].
    pub fn key(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The whole `shard.toml`, validated.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// `[shard]`.
    pub shard: ShardSection,
    /// `[relay]`.
    pub relay: RelaySection,
    /// `[agent]`.
    pub agent: AgentSection,
    /// `[lobby]`.
    pub lobby: LobbySection,
    /// `[game]`.
    pub game: GameSection,
    /// `[directory]` (optional): register with a directory.
    pub directory: Option<DirectorySection>,
}

/// `[directory]`: the shard registers itself with a directory (world list) by heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectorySection {
    /// `address` (required): the directory, `HOST:PORT` (TCP, resolved at each connection).
    pub address: String,
    /// `region` (required): the region clients see (letters, digits, `-`, `_`, `.`).
    pub region: String,
    /// `key` / `key_file` (default: derived from the shard secret, printed by
    /// `p2pmodel directory-key`): authenticates the heartbeats.
    pub key: Option<p2pmodel_core::directory::DirectoryKey>,
    /// `heartbeat_ms` (default 1000, 100..=10000): how often the shard reports itself.
    pub heartbeat: Duration,
    /// `capacity` (default `agent.max_clients`): the players the shard advertises it takes.
    pub capacity: u32,
    /// `advertise` (default: the login service's public address): the `HOST:PORT` clients log
    /// in at, when it is a DNS name or differs from `shard.public_addresses`.
    pub advertise: Option<String>,
}

/// `[agent]`: the DMZ gateway, the only endpoint clients reach.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSection {
    /// `port` (default 7000): the netcode (renet, secure mode) UDP port, `shard.bind:port`.
    pub addr: SocketAddr,
    /// `login_port` (default 7001; 0 = no login service): UDP port of the login service that
    /// mints connect tokens for a name.
    pub login: Option<SocketAddr>,
    /// `protocol_id` (default 0x5032504d2d763031, "P2PM-v01"): netcode protocol id; a client
    /// built for another protocol cannot connect.
    pub protocol_id: u64,
    /// `max_clients` (default 1024, at most 32,768): above 1,024 (netcode's limit per
    /// socket) the Agent opens `ceil(max_clients / 1024)` netcode sockets on consecutive
    /// ports from `port` (skipping `login_port`); see `shard::agent`.
    pub max_clients: usize,
    /// `token_expire_secs` (default 300): how long a minted connect token can be used to
    /// connect.
    pub token_expire: Duration,
    /// `client_timeout_secs` (default 10): a silent client is dropped after this long.
    pub client_timeout_secs: i32,
    /// `max_messages_per_sec` (default 120): per-client message budget; excess messages are
    /// dropped and counted (a 20 Hz client sends ~25).
    pub max_messages_per_sec: u32,
    /// `accounts` (default `"open"`): who may log in: `"open"` (any free name, no password:
    /// development and demos; logged as a warning) or `"file:PATH"` (name -> argon2 hash,
    /// relative to the config file; see `shard::login::FileAccounts`).
    pub accounts: Accounts,
    /// `max_clients_per_ip` (default 16): concurrent sessions one IP may hold.
    pub max_clients_per_ip: usize,
    /// `login_per_source_per_sec` (5), `login_per_source_burst` (10), `login_per_sec` (200),
    /// `login_burst` (400): the login service's rate limits.
    pub login_limits: crate::shard::login::LoginLimits,
    /// `io_threads` (default 1, at most 32): threads that own the netcode sockets (decrypt,
    /// renet, encrypt, syscalls), off the frame that runs the Game tick; the sockets are
    /// split over them. 0 runs that work in the frame (the pre-#16 Agent).
    pub io_threads: usize,
}

/// `agent.accounts`: the login's account check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accounts {
    /// Any free valid name logs in (guests).
    Open,
    /// Names and argon2 password hashes from this TOML file.
    File(PathBuf),
}

/// `[lobby]`: login, characters, zones, failure detection.
#[derive(Debug, Clone, PartialEq)]
pub struct LobbySection {
    /// `store` (default none = in memory): the character store file (JSON map), relative to
    /// the config file's folder.
    pub store: Option<PathBuf>,
    /// `zones` (default 2): how many zones the shard runs.
    pub zones: u32,
    /// `internal` (default `127.0.0.1:7110`): where the Lobby listens for internal links from
    /// the Agent and the Game servers when the roles run as separate processes (keep it on
    /// the internal network; links are Noise-encrypted and keyed by the shard secret).
    pub internal: SocketAddr,
    /// `heartbeat_ms` (default 250): internal heartbeat interval.
    pub heartbeat: Duration,
    /// `heartbeat_timeout_ms` (default 1500; at most 3000): a role silent this long is dead.
    pub heartbeat_timeout: Duration,
    /// `guest_ttl_secs` (default 604800 = 7 days; 0 = forever): with `agent.accounts =
    /// "open"`, characters not seen for this long are forgotten (names free again).
    pub guest_ttl: Option<Duration>,
    /// `open_parties` (default false: joining needs the owner's invitation; true: parties
    /// are rooms anyone joins while they have room) and `max_party_size` (default 32).
    pub parties: p2pmodel_core::shard::PartyRules,
}

/// `[game]`: the authoritative world (the struct lives with the Game role in the core).
pub use p2pmodel_core::shard::GameConfig as GameSection;

/// `[shard]`: what every role of one shard shares.
#[derive(Clone)]
pub struct ShardSection {
    /// `name`: the shard's name, used in logs and metrics labels.
    pub name: String,
    /// The shard secret (from `secret` or `secret_file`): 32 bytes from which the netcode key,
    /// client ids, the internal link PSK and the relay key are derived. The Agent, Lobby and
    /// Game servers hold it; a relay can do with the relay key ([`RelayRoleConfig`]).
    pub secret: [u8; SHARD_SECRET_LEN],
    /// `bind`: the local IP the roles' sockets bind to by default (`0.0.0.0`).
    pub bind: IpAddr,
    /// `public_addresses`: the IPs clients reach this host at (given to clients in
    /// introductions). Empty: the bind address, if it is not unspecified.
    pub public_addresses: Vec<IpAddr>,
    /// `metrics`: where the Prometheus endpoint listens (`None`: no endpoint).
    pub metrics: Option<SocketAddr>,
    /// `relays`: the public addresses (`IP:port`) of the shard's relays, by relay id (the
    /// index; each relay process has its `[relay] id`). At most 16. Empty (default): one
    /// relay, the shard's own (`[relay] port` at the public address). With several, each
    /// introduced pair gets the relay with the lowest RTT sum over its two players, and the
    /// second best as a warm standby (docs/RELAY.md §9).
    pub relays: Vec<SocketAddr>,
}

impl std::fmt::Debug for ShardSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSection")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("bind", &self.bind)
            .field("public_addresses", &self.public_addresses)
            .field("metrics", &self.metrics)
            .field("relays", &self.relays)
            .finish()
    }
}

/// `[relay]`: the Punch/Relay role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySection {
    /// `id` (default 0; below the length of `[shard] relays` when that is set): which of
    /// the shard's relays this process is. Its key is relay `id`'s (`p2pmodel relay-key
    /// --id N`) and it accepts only tokens minted for it.
    pub id: u8,
    /// `port` (default 3478): the primary address `shard.bind:port`, where clients bind and
    /// relay data, and where STUN is answered.
    pub primary: SocketAddr,
    /// `alternate_port` (default 3479; 0 = none): a second socket for STUN only (RFC 5780
    /// style NAT classification). Relay datagrams arriving there are dropped and counted.
    pub alternate: Option<SocketAddr>,
    /// `alternate_ip`: an optional second local IP; STUN is then also answered on
    /// `alternate_ip:port` and `alternate_ip:alternate_port`.
    pub alternate_ip: Option<IpAddr>,
    /// `socket_buffer_bytes` (default 4 MiB): SO_RCVBUF / SO_SNDBUF of each socket.
    pub socket_buffer_bytes: usize,
    /// `batch` (default 64): datagrams per recvmmsg / sendmmsg call.
    pub batch: usize,
    /// `threads` (default 0 = one per CPU; at most 256): data-plane threads, each with its own
    /// socket on the relay port and its own relay state, steered by link id in the kernel
    /// (Linux; elsewhere 1). `p2pmodel shard relay --threads N` overrides it.
    pub threads: usize,
    /// `gso` (default true): send runs of same-size forwarded datagrams to one destination
    /// as one `UDP_SEGMENT` message (Linux ≥ 4.18). Cuts the relay's CPU per datagram for
    /// bursty flows (docs/BENCHMARKS.md); no effect on the wire. A kernel or route that
    /// refuses it is noticed at the first refusal and that thread sends datagram by datagram.
    pub gso: bool,
    /// `token_key_rotation_secs` (default 86 400; 0 = never): the token key epoch length.
    /// Must be at least `max_token_lifetime_secs` so a token outlives at most one rotation.
    pub token_key_rotation: Duration,
    /// `stats_log_interval_secs` (default 60; 0 = never): how often a one-line summary is
    /// logged.
    pub stats_log_interval: Duration,
    /// Everything the sans-IO relay core reads (timeouts, quotas, table size).
    pub core: RelayConfig,
}

impl RelaySection {
    /// Every local address the data plane opens a socket on: the primary first.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mut v = vec![self.primary];
        v.extend(self.alternate);
        if let Some(ip) = self.alternate_ip {
            v.push(SocketAddr::new(ip, self.primary.port()));
            if let Some(a) = self.alternate {
                v.push(SocketAddr::new(ip, a.port()));
            }
        }
        v
    }
}

/// What the relay role (`p2pmodel shard relay`) reads from `shard.toml`: the relay key
/// instead of the shard secret, so a relay host never holds the secret. Built from a file
/// with `[relay] key` (or `key_file`), or derived from a full [`ShardConfig`].
#[derive(Debug, Clone)]
pub struct RelayRoleConfig {
    /// `shard.name`.
    pub name: String,
    /// `[relay] key` / `key_file`, or derived from the shard secret.
    pub key: RelayKey,
    /// `shard.metrics`.
    pub metrics: Option<SocketAddr>,
    /// `[relay]`.
    pub relay: RelaySection,
}

impl From<&ShardConfig> for RelayRoleConfig {
    fn from(c: &ShardConfig) -> RelayRoleConfig {
        RelayRoleConfig {
            name: c.shard.name.clone(),
            key: RelayKey::derive_for(&c.shard.secret, c.relay.id),
            metrics: c.shard.metrics,
            relay: c.relay.clone(),
        }
    }
}

impl From<&RelayRoleConfig> for RelayRoleConfig {
    fn from(c: &RelayRoleConfig) -> RelayRoleConfig {
        c.clone()
    }
}

impl RelayRoleConfig {
    /// Read and validate a relay's `shard.toml`: it needs `[relay] key`/`key_file` or the
    /// shard secret (then the key is derived and the secret dropped). Relative files are
    /// relative to the config file's folder.
    pub fn load(path: &Path) -> Result<RelayRoleConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let path_s = path.display().to_string();
        Parts::parse(&text, &path_s, path.parent())?.into_relay(&Ctx { path: &path_s })
    }

    /// [`Self::load`] from a string (files relative to the current folder).
    pub fn parse(text: &str) -> Result<RelayRoleConfig, ConfigError> {
        Parts::parse(text, "<string>", None)?.into_relay(&Ctx { path: "<string>" })
    }
}

/// A validated file before we know which role reads it (the secret may be absent).
struct Parts {
    secret: Option<[u8; SHARD_SECRET_LEN]>,
    relay_key: Option<RelayKey>,
    config: ShardConfig,
}

impl Parts {
    fn parse(text: &str, path: &str, base: Option<&Path>) -> Result<Parts, ConfigError> {
        let (secret, relay_key, config) = ShardConfig::parse_parts(text, path, base)?;
        let parts = Parts { secret, relay_key, config };
        if let (Some(s), Some(k)) = (&parts.secret, &parts.relay_key)
            && RelayKey::derive_for(s, parts.config.relay.id) != *k
        {
            return Err(Ctx { path }.invalid(
                "relay.key",
                "does not match the shard secret for this relay.id (print the right one with `p2pmodel relay-key --config FILE --id N`, or remove it)",
            ));
        }
        Ok(parts)
    }

    fn into_shard(self, cx: &Ctx) -> Result<ShardConfig, ConfigError> {
        let mut c = self.config;
        c.shard.secret = self.secret.ok_or_else(|| {
            cx.invalid(
                "shard.secret",
                "is missing: set secret = \"<64 hex digits>\" or secret_file (make one with `openssl rand -hex 32`)",
            )
        })?;
        Ok(c)
    }

    fn into_relay(self, cx: &Ctx) -> Result<RelayRoleConfig, ConfigError> {
        let key = match (self.relay_key, &self.secret) {
            (Some(k), _) => k,
            (None, Some(s)) => RelayKey::derive_for(s, self.config.relay.id),
            (None, None) => {
                return Err(cx.invalid(
                    "relay.key",
                    "is missing: a relay needs `[relay] key`/`key_file` (print it with `p2pmodel relay-key --config FILE` where the shard secret is) or the shard secret",
                ));
            }
        };
        let c = self.config;
        Ok(RelayRoleConfig { name: c.shard.name, key, metrics: c.shard.metrics, relay: c.relay })
    }
}

/// Read a 32-byte hex value given inline (`key`) or in a file (`file_key`); `None` if both
/// are absent.
fn hex32(
    cx: &Ctx,
    inline: Option<String>,
    file: Option<PathBuf>,
    base: Option<&Path>,
    key: &'static str,
    file_key: &'static str,
    make: &str,
) -> Result<Option<[u8; SHARD_SECRET_LEN]>, ConfigError> {
    let text = match (inline, file) {
        (Some(s), None) => s,
        (None, Some(f)) => {
            let f = match base {
                Some(b) if f.is_relative() => b.join(f),
                _ => f,
            };
            std::fs::read_to_string(&f)
                .map_err(|e| cx.invalid(file_key, format!("cannot be read ({}): {e}", f.display())))?
        }
        (Some(_), Some(_)) => return Err(cx.invalid(key, format!("and {file_key} are both set; keep one"))),
        (None, None) => return Ok(None),
    };
    let v =
        parse_hex_secret(&text).ok_or_else(|| cx.invalid(key, "must be exactly 64 hex digits (32 bytes)"))?;
    if v == [0u8; SHARD_SECRET_LEN] {
        return Err(cx.invalid(key, format!("is all zeros; {make}")));
    }
    Ok(Some(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    shard: Option<RawShard>,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    lobby: RawLobby,
    #[serde(default)]
    game: RawGame,
    directory: Option<RawDirectory>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    address: Option<String>,
    region: Option<String>,
    key: Option<String>,
    key_file: Option<PathBuf>,
    heartbeat_ms: Option<i64>,
    capacity: Option<i64>,
    advertise: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    port: Option<i64>,
    login_port: Option<i64>,
    protocol_id: Option<i64>,
    max_clients: Option<i64>,
    token_expire_secs: Option<i64>,
    client_timeout_secs: Option<i64>,
    max_messages_per_sec: Option<i64>,
    accounts: Option<String>,
    max_clients_per_ip: Option<i64>,
    login_per_source_per_sec: Option<f64>,
    login_per_source_burst: Option<f64>,
    login_per_sec: Option<f64>,
    login_burst: Option<f64>,
    io_threads: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLobby {
    store: Option<PathBuf>,
    internal: Option<String>,
    zones: Option<i64>,
    heartbeat_ms: Option<i64>,
    heartbeat_timeout_ms: Option<i64>,
    guest_ttl_secs: Option<i64>,
    open_parties: Option<bool>,
    max_party_size: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGame {
    tick_hz: Option<i64>,
    servers_per_zone: Option<i64>,
    max_speed: Option<f64>,
    interest_radius: Option<f64>,
    hysteresis: Option<f64>,
    max_peers: Option<i64>,
    max_intros_per_min: Option<i64>,
    relay_token_secs: Option<i64>,
    capacity: Option<i64>,
    interest: Option<String>,
    movement: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShard {
    name: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    bind: Option<String>,
    #[serde(default)]
    public_addresses: Vec<String>,
    metrics: Option<String>,
    #[serde(default)]
    relays: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    id: Option<i64>,
    key: Option<String>,
    key_file: Option<PathBuf>,
    port: Option<i64>,
    alternate_port: Option<i64>,
    alternate_ip: Option<String>,
    socket_buffer_bytes: Option<i64>,
    batch: Option<i64>,
    threads: Option<i64>,
    gso: Option<bool>,
    token_key_rotation_secs: Option<i64>,
    stats_log_interval_secs: Option<i64>,
    idle_timeout_secs: Option<i64>,
    max_token_lifetime_secs: Option<i64>,
    max_bindings: Option<i64>,
    quota_burst_ms: Option<i64>,
    cookie_bucket_secs: Option<i64>,
    sweep_interval_ms: Option<i64>,
    link_quota: Option<RawQuota>,
    source_quota: Option<RawQuota>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    packets_per_sec: Option<i64>,
    bytes_per_sec: Option<i64>,
}

struct Ctx<'a> {
    path: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, key: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.path.to_string(), key, problem: problem.into() }
    }

    /// An integer in `lo..=hi`, or `default` when absent.
    fn int(
        &self,
        v: Option<i64>,
        key: &'static str,
        lo: i64,
        hi: i64,
        default: i64,
    ) -> Result<u64, ConfigError> {
        let v = v.unwrap_or(default);
        if v < lo || v > hi {
            return Err(self.invalid(key, format!("is {v}; it must be between {lo} and {hi}")));
        }
        Ok(v as u64)
    }

    /// A float in `lo..=hi`, or `default` when absent.
    fn float(
        &self,
        v: Option<f64>,
        key: &'static str,
        lo: f64,
        hi: f64,
        default: f64,
    ) -> Result<f32, ConfigError> {
        let v = v.unwrap_or(default);
        if !(lo..=hi).contains(&v) {
            return Err(self.invalid(key, format!("is {v}; it must be between {lo} and {hi}")));
        }
        Ok(v as f32)
    }

    fn ip(&self, s: &str, key: &'static str) -> Result<IpAddr, ConfigError> {
        s.parse().map_err(|_| self.invalid(key, format!("is {s:?}, not an IP address (e.g. \"0.0.0.0\")")))
    }
}

/// The secret published in `assets/shard.toml` (refused: everyone knows it).
pub const EXAMPLE_SECRET: &str = "5f0e8b7a1c2d3e4f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7";

/// Why `secret` must not be used, if it must not: the published example, or low entropy
/// (fewer than 8 distinct bytes: all zeros, all the same, short repeated patterns).
pub fn weak_secret(secret: &[u8; SHARD_SECRET_LEN]) -> Option<&'static str> {
    if parse_hex_secret(EXAMPLE_SECRET).as_ref() == Some(secret) {
        return Some("is the published example secret of assets/shard.toml");
    }
    if secret.iter().all(|b| *b == 0) {
        return Some("is all zeros");
    }
    let distinct = secret.iter().collect::<std::collections::HashSet<_>>().len();
    if distinct < 8 {
        return Some("has too little entropy (fewer than 8 distinct bytes)");
    }
    None
}

/// A fresh shard secret from the OS random number generator (`p2pmodel secret`); never
/// weak (drawn again in the astronomically unlikely case).
pub fn random_secret() -> [u8; SHARD_SECRET_LEN] {
    use rand_core06::RngCore;
    loop {
        let mut s = [0u8; SHARD_SECRET_LEN];
        rand_core06::OsRng.fill_bytes(&mut s);
        if weak_secret(&s).is_none() {
            return s;
        }
    }
}

/// Parse 64 hex digits (surrounding whitespace allowed) into a shard secret.
pub fn parse_hex_secret(s: &str) -> Option<[u8; SHARD_SECRET_LEN]> {
    let s = s.trim();
    if s.len() != SHARD_SECRET_LEN * 2 {
        return None;
    }
    let mut out = [0u8; SHARD_SECRET_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ShardConfig {
    /// Move every role's sockets to `ip` (the `--bind` flag), keeping the ports.
    pub fn set_bind(&mut self, ip: IpAddr) {
        self.shard.bind = ip;
        self.relay.primary.set_ip(ip);
        if let Some(a) = &mut self.relay.alternate {
            a.set_ip(ip);
        }
        self.agent.addr.set_ip(ip);
        if let Some(l) = &mut self.agent.login {
            l.set_ip(ip);
        }
    }

    /// Read and validate a `shard.toml`. A relative `secret_file` is relative to the
    /// config file's folder.
    pub fn load(path: &Path) -> Result<ShardConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse_with_base(&text, &path.display().to_string(), path.parent())
    }

    /// Validate a `shard.toml` given as a string (`secret_file` relative to the current
    /// folder).
    pub fn parse(text: &str) -> Result<ShardConfig, ConfigError> {
        Self::parse_with_base(text, "<string>", None)
    }

    fn parse_with_base(text: &str, path: &str, base: Option<&Path>) -> Result<ShardConfig, ConfigError> {
        Parts::parse(text, path, base)?.into_shard(&Ctx { path })
    }

    /// Everything validated; the shard secret and the relay key as found (either may be
    /// absent: the role decides). The returned config's `shard.secret` is zeros. Sections are
    /// checked in file order, so the first error reported is the first in the file.
    #[allow(clippy::type_complexity)]
    fn parse_parts(
        text: &str,
        path: &str,
        base: Option<&Path>,
    ) -> Result<(Option<[u8; SHARD_SECRET_LEN]>, Option<RelayKey>, ShardConfig), ConfigError> {
        let cx = Ctx { path };
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_string(), message: e.to_string() })?;
        let shard = raw.shard.ok_or_else(|| cx.invalid("shard", "is missing: add a [shard] section"))?;
        let (shard, secret, relay_key) = shard_section(&cx, shard, &raw.relay, base)?;
        let (relay, max_life) = relay_section(&cx, &raw.relay, shard.bind)?;
        if !shard.relays.is_empty() && usize::from(relay.id) >= shard.relays.len() {
            return Err(cx.invalid(
                "relay.id",
                format!(
                    "is {}, but shard.relays lists {} relays (ids 0..{})",
                    relay.id,
                    shard.relays.len(),
                    shard.relays.len()
                ),
            ));
        }
        let agent = agent_section(&cx, raw.agent, shard.bind, base)?;
        let lobby = lobby_section(&cx, raw.lobby, base)?;
        let game = game_section(&cx, raw.game, max_life)?;
        let directory = match raw.directory {
            Some(d) => Some(directory_section(&cx, d, &agent, base)?),
            None => None,
        };
        Ok((secret, relay_key, ShardConfig { shard, relay, agent, lobby, game, directory }))
    }
}

/// The `[shard]` section, with the shard secret and the relay key (`[relay] key`) as found;
/// the section's `secret` is zeros.
#[allow(clippy::type_complexity)]
fn shard_section(
    cx: &Ctx,
    shard: RawShard,
    relay: &RawRelay,
    base: Option<&Path>,
) -> Result<(ShardSection, Option<[u8; SHARD_SECRET_LEN]>, Option<RelayKey>), ConfigError> {
    let name = shard.name.ok_or_else(|| cx.invalid("shard.name", "is missing"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(cx.invalid("shard.name", format!("is {name:?}; use letters, digits, '-', '_' or '.'")));
    }
    let secret = hex32(
        cx,
        shard.secret,
        shard.secret_file,
        base,
        "shard.secret",
        "shard.secret_file",
        "generate one with `p2pmodel secret`",
    )?;
    if let Some(why) = secret.as_ref().and_then(weak_secret) {
        return Err(cx.invalid(
            "shard.secret",
            format!("{why}: anyone could mint tokens and read logins; generate one with `p2pmodel secret`"),
        ));
    }
    let relay_key = hex32(
        cx,
        relay.key.clone(),
        relay.key_file.clone(),
        base,
        "relay.key",
        "relay.key_file",
        "print the shard's with `p2pmodel relay-key --config FILE`",
    )?
    .map(RelayKey::from_bytes);
    let bind = match &shard.bind {
        Some(s) => cx.ip(s, "shard.bind")?,
        None => IpAddr::from([0, 0, 0, 0]),
    };
    let public_addresses = shard
        .public_addresses
        .iter()
        .map(|s| cx.ip(s, "shard.public_addresses"))
        .collect::<Result<Vec<_>, _>>()?;
    let metrics = match &shard.metrics {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
            cx.invalid("shard.metrics", format!("is {s:?}, not an IP:port (e.g. \"127.0.0.1:9100\")"))
        })?),
    };
    let mut relays = Vec::new();
    for s in &shard.relays {
        let a = s.parse::<SocketAddr>().map_err(|_| {
            cx.invalid("shard.relays", format!("has {s:?}, not an IP:port (e.g. \"198.51.100.7:3478\")"))
        })?;
        if relays.contains(&a) {
            return Err(cx.invalid("shard.relays", format!("lists {a} twice")));
        }
        relays.push(a);
    }
    if relays.len() > p2pmodel_core::proto::shard::MAX_RELAYS {
        return Err(cx.invalid("shard.relays", "lists more than 16 relays"));
    }
    let section =
        ShardSection { name, secret: [0; SHARD_SECRET_LEN], bind, public_addresses, metrics, relays };
    Ok((section, secret, relay_key))
}

/// The `[relay]` section (sockets bound on `bind`), and the longest token lifetime it allows.
fn relay_section(cx: &Ctx, r: &RawRelay, bind: IpAddr) -> Result<(RelaySection, u64), ConfigError> {
    let port = cx.int(r.port, "relay.port", 0, 65535, 3478)? as u16;
    let alt_port = cx.int(r.alternate_port, "relay.alternate_port", 0, 65535, 3479)? as u16;
    if alt_port != 0 && alt_port == port {
        return Err(cx.invalid("relay.alternate_port", "must differ from relay.port (or be 0 for none)"));
    }
    let alternate_ip = match &r.alternate_ip {
        Some(s) => Some(cx.ip(s, "relay.alternate_ip")?),
        None => None,
    };
    if alternate_ip.is_some_and(|ip| ip == bind) {
        return Err(cx.invalid("relay.alternate_ip", "must differ from shard.bind"));
    }
    let socket_buffer_bytes =
        cx.int(r.socket_buffer_bytes, "relay.socket_buffer_bytes", 65_536, 1 << 30, 4 << 20)? as usize;
    let batch = cx.int(r.batch, "relay.batch", 1, 1024, 64)? as usize;
    let max_threads = crate::relay::steer::MAX_THREADS as i64;
    let threads = cx.int(r.threads, "relay.threads", 0, max_threads, 0)? as usize;
    let day = 86_400;
    let max_life = cx.int(r.max_token_lifetime_secs, "relay.max_token_lifetime_secs", 1, 30 * day, day)?;
    let rotation = cx.int(r.token_key_rotation_secs, "relay.token_key_rotation_secs", 0, 365 * day, day)?;
    if rotation != 0 && rotation < max_life {
        return Err(cx.invalid(
            "relay.token_key_rotation_secs",
            format!(
                "is {rotation}, shorter than relay.max_token_lifetime_secs ({max_life}): a token would \
                 outlive two rotations and be refused early"
            ),
        ));
    }
    let core = relay_core(cx, r, max_life)?;
    let stats_log_interval = Duration::from_secs(cx.int(
        r.stats_log_interval_secs,
        "relay.stats_log_interval_secs",
        0,
        day,
        60,
    )?);
    let id = cx.int(r.id, "relay.id", 0, p2pmodel_core::proto::shard::MAX_RELAYS as i64 - 1, 0)? as u8;
    let relay = RelaySection {
        id,
        primary: SocketAddr::new(bind, port),
        alternate: (alt_port != 0).then(|| SocketAddr::new(bind, alt_port)),
        alternate_ip,
        socket_buffer_bytes,
        batch,
        threads,
        gso: r.gso.unwrap_or(crate::relay::GSO_SEND_DEFAULT),
        token_key_rotation: Duration::from_secs(rotation),
        stats_log_interval,
        core,
    };
    Ok((relay, max_life))
}

/// The relay core's settings from `[relay]` (timeouts, quotas, limits).
fn relay_core(cx: &Ctx, r: &RawRelay, max_life: u64) -> Result<RelayConfig, ConfigError> {
    let defaults = RelayConfig::default();
    let quota = |q: Option<&RawQuota>, which: &'static str, d: Quota| -> Result<Quota, ConfigError> {
        let (pk, bk) = match which {
            "link" => ("relay.link_quota.packets_per_sec", "relay.link_quota.bytes_per_sec"),
            _ => ("relay.source_quota.packets_per_sec", "relay.source_quota.bytes_per_sec"),
        };
        let (p, b) = q.map(|q| (q.packets_per_sec, q.bytes_per_sec)).unwrap_or((None, None));
        Ok(Quota {
            packets_per_sec: cx.int(p, pk, 1, i64::MAX, d.packets_per_sec as i64)?,
            bytes_per_sec: cx.int(b, bk, 1500, i64::MAX, d.bytes_per_sec as i64)?,
        })
    };
    Ok(RelayConfig {
        idle_timeout: Duration::from_secs(cx.int(
            r.idle_timeout_secs,
            "relay.idle_timeout_secs",
            5,
            3600,
            60,
        )?),
        link_quota: quota(r.link_quota.as_ref(), "link", defaults.link_quota)?,
        source_quota: quota(r.source_quota.as_ref(), "source", defaults.source_quota)?,
        quota_burst: Duration::from_millis(cx.int(
            r.quota_burst_ms,
            "relay.quota_burst_ms",
            10,
            10_000,
            250,
        )?),
        cookie_bucket: Duration::from_secs(cx.int(
            r.cookie_bucket_secs,
            "relay.cookie_bucket_secs",
            5,
            3600,
            30,
        )?),
        max_token_lifetime: Duration::from_secs(max_life),
        max_bindings: cx.int(r.max_bindings, "relay.max_bindings", 2, 1 << 26, 1 << 20)? as usize,
        sweep_interval: Duration::from_millis(cx.int(
            r.sweep_interval_ms,
            "relay.sweep_interval_ms",
            10,
            60_000,
            1000,
        )?),
        early_hold: defaults.early_hold,
        max_early_bytes: defaults.max_early_bytes,
    })
}

/// The `[agent]` section (sockets bound on `bind`; an accounts file relative to `base`).
fn agent_section(
    cx: &Ctx,
    a: RawAgent,
    bind: IpAddr,
    base: Option<&Path>,
) -> Result<AgentSection, ConfigError> {
    let day = 86_400;
    let agent_port = cx.int(a.port, "agent.port", 0, 65535, 7000)? as u16;
    let login_port = cx.int(a.login_port, "agent.login_port", 0, 65535, 7001)? as u16;
    if login_port != 0 && login_port == agent_port {
        return Err(cx.invalid("agent.login_port", "must differ from agent.port (or be 0 for none)"));
    }
    let agent = AgentSection {
        addr: SocketAddr::new(bind, agent_port),
        login: (login_port != 0).then(|| SocketAddr::new(bind, login_port)),
        protocol_id: cx.int(a.protocol_id, "agent.protocol_id", 0, i64::MAX, 0x5032504d2d763031)?,
        max_clients: cx.int(a.max_clients, "agent.max_clients", 1, 32_768, 1024)? as usize,
        token_expire: Duration::from_secs(cx.int(
            a.token_expire_secs,
            "agent.token_expire_secs",
            5,
            day,
            300,
        )?),
        client_timeout_secs: cx.int(a.client_timeout_secs, "agent.client_timeout_secs", 1, 600, 10)? as i32,
        max_messages_per_sec: cx.int(a.max_messages_per_sec, "agent.max_messages_per_sec", 1, 100_000, 120)?
            as u32,
        accounts: accounts(cx, a.accounts.as_deref(), base)?,
        max_clients_per_ip: cx.int(a.max_clients_per_ip, "agent.max_clients_per_ip", 1, 32_768, 16)? as usize,
        login_limits: login_limits(cx, &a)?,
        io_threads: cx.int(a.io_threads, "agent.io_threads", 0, 32, 1)? as usize,
    };
    Ok(agent)
}

/// `agent.accounts`: `"open"` (or absent) or `"file:PATH"` (relative to `base`).
fn accounts(cx: &Ctx, accounts: Option<&str>, base: Option<&Path>) -> Result<Accounts, ConfigError> {
    Ok(match accounts {
        None | Some("open") => Accounts::Open,
        Some(f) if f.starts_with("file:") && f.len() > 5 => {
            let f = PathBuf::from(&f[5..]);
            Accounts::File(match base {
                Some(b) if f.is_relative() => b.join(f),
                _ => f,
            })
        }
        Some(other) => {
            return Err(
                cx.invalid("agent.accounts", format!("is {other:?}; use \"open\" or \"file:accounts.toml\""))
            );
        }
    })
}

/// The login service's rate limits from `[agent]`.
fn login_limits(cx: &Ctx, a: &RawAgent) -> Result<crate::shard::login::LoginLimits, ConfigError> {
    let d = crate::shard::login::LoginLimits::default();
    Ok(crate::shard::login::LoginLimits {
        per_source_per_sec: cx.float(
            a.login_per_source_per_sec,
            "agent.login_per_source_per_sec",
            0.01,
            1e6,
            d.per_source_per_sec,
        )? as f64,
        per_source_burst: cx.float(
            a.login_per_source_burst,
            "agent.login_per_source_burst",
            1.0,
            1e6,
            d.per_source_burst,
        )? as f64,
        global_per_sec: cx.float(a.login_per_sec, "agent.login_per_sec", 0.01, 1e7, d.global_per_sec)? as f64,
        global_burst: cx.float(a.login_burst, "agent.login_burst", 1.0, 1e7, d.global_burst)? as f64,
        max_sources: d.max_sources,
    })
}

/// The `[lobby]` section (a store file relative to `base`).
fn lobby_section(cx: &Ctx, l: RawLobby, base: Option<&Path>) -> Result<LobbySection, ConfigError> {
    let day = 86_400;
    let heartbeat = Duration::from_millis(cx.int(l.heartbeat_ms, "lobby.heartbeat_ms", 10, 1000, 250)?);
    let heartbeat_timeout = Duration::from_millis(cx.int(
        l.heartbeat_timeout_ms,
        "lobby.heartbeat_timeout_ms",
        50,
        3000,
        1500,
    )?);
    if heartbeat_timeout < heartbeat * 2 {
        return Err(cx.invalid(
            "lobby.heartbeat_timeout_ms",
            "must be at least twice lobby.heartbeat_ms, or one late heartbeat kills a healthy role",
        ));
    }
    let lobby = LobbySection {
        store: l.store.map(|f| match base {
            Some(b) if f.is_relative() => b.join(f),
            _ => f,
        }),
        zones: cx.int(l.zones, "lobby.zones", 1, 1000, 2)? as u32,
        internal: match &l.internal {
            None => SocketAddr::from(([127, 0, 0, 1], 7110)),
            Some(s) => s.parse().map_err(|_| {
                cx.invalid("lobby.internal", format!("is {s:?}, not an IP:port (e.g. \"10.0.0.2:7110\")"))
            })?,
        },
        heartbeat,
        heartbeat_timeout,
        guest_ttl: match cx.int(l.guest_ttl_secs, "lobby.guest_ttl_secs", 0, 100 * 365 * day, 7 * day)? {
            0 => None,
            s => Some(Duration::from_secs(s)),
        },
        parties: p2pmodel_core::shard::PartyRules {
            open: l.open_parties.unwrap_or(false),
            max_members: cx.int(l.max_party_size, "lobby.max_party_size", 2, 10_000, 32)? as usize,
        },
    };
    Ok(lobby)
}

/// The `[directory]` section (a key file relative to `base`).
fn directory_section(
    cx: &Ctx,
    d: RawDirectory,
    agent: &AgentSection,
    base: Option<&Path>,
) -> Result<DirectorySection, ConfigError> {
    let host_port = |s: &str| {
        s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
    };
    let address = d.address.ok_or_else(|| {
        cx.invalid(
            "directory.address",
            "is missing (HOST:PORT of the directory, e.g. \"directory.example.com:7200\")",
        )
    })?;
    if !host_port(&address) {
        return Err(cx.invalid("directory.address", format!("is {address:?}, not HOST:PORT")));
    }
    let region = d.region.ok_or_else(|| cx.invalid("directory.region", "is missing (e.g. \"eu\")"))?;
    if !p2pmodel_core::directory::valid_label(&region) {
        return Err(cx.invalid(
            "directory.region",
            format!("is {region:?}; use 1-32 letters, digits, '-', '_' or '.'"),
        ));
    }
    if agent.login.is_none() {
        return Err(cx.invalid("directory.address", "is set but agent.login_port = 0: clients found in the directory log in through the login service"));
    }
    let key = hex32(
        cx,
        d.key,
        d.key_file,
        base,
        "directory.key",
        "directory.key_file",
        "remove it to derive one from the shard secret",
    )?
    .map(p2pmodel_core::directory::DirectoryKey);
    let advertise = match d.advertise {
        Some(a) if host_port(&a) && a.len() <= 90 => Some(a),
        Some(a) => {
            return Err(cx.invalid(
                "directory.advertise",
                format!("is {a:?}, not HOST:PORT (the login service as clients reach it)"),
            ));
        }
        None => None,
    };
    Ok(DirectorySection {
        address,
        region,
        key,
        heartbeat: Duration::from_millis(cx.int(
            d.heartbeat_ms,
            "directory.heartbeat_ms",
            100,
            10_000,
            1000,
        )?),
        capacity: cx.int(d.capacity, "directory.capacity", 0, u32::MAX as i64, agent.max_clients as i64)?
            as u32,
        advertise,
    })
}

/// The `[game]` section; relay tokens must not outlive `max_life` (the relay's limit).
fn game_section(cx: &Ctx, g: RawGame, max_life: u64) -> Result<GameSection, ConfigError> {
    let day = 86_400;
    let interest_radius = cx.float(g.interest_radius, "game.interest_radius", 1.0, 1e6, 50.0)?;
    let tick_hz = cx.int(g.tick_hz, "game.tick_hz", 1, 240, 20)? as u32;
    let game = GameSection {
        tick_hz,
        servers_per_zone: cx.int(g.servers_per_zone, "game.servers_per_zone", 1, 64, 2)? as u32,
        max_speed: cx.float(g.max_speed, "game.max_speed", 0.1, 1e6, 10.0)?,
        interest_radius,
        hysteresis: cx.float(g.hysteresis, "game.hysteresis", 0.0, interest_radius as f64, 10.0)?,
        max_peers: cx.int(g.max_peers, "game.max_peers", 1, 256, 16)? as usize,
        max_intros_per_min: cx.int(g.max_intros_per_min, "game.max_intros_per_min", 1, 10_000, 120)? as usize,
        capacity: cx.int(g.capacity, "game.capacity", 1, 100_000, 200)? as usize,
        relay_token_secs: cx.int(g.relay_token_secs, "game.relay_token_secs", 60, day, 3600)? as u32,
        interest: match g.interest.as_deref() {
            None | Some("distance") => p2pmodel_core::shard::Interest::Distance,
            Some("groups") => p2pmodel_core::shard::Interest::Groups,
            Some(other) => {
                return Err(cx.invalid(
                    "game.interest",
                    format!(
                        "is {other:?}: \"distance\" (an open world) or \"groups\" (party members only: rooms)"
                    ),
                ));
            }
        },
        movement: match g.movement.as_deref() {
            None | Some("client") => p2pmodel_core::shard::Movement::Client,
            Some("server") => p2pmodel_core::shard::Movement::Server,
            Some(other) => {
                return Err(cx.invalid(
                    "game.movement",
                    format!(
                        "is {other:?}: \"client\" (clients report moves, speed-checked) or \"server\" \
                         (only the game's server logic moves players)"
                    ),
                ));
            }
        },
    };
    if game.relay_token_secs as u64 > max_life {
        return Err(cx.invalid(
            "game.relay_token_secs",
            format!("is {}, longer than relay.max_token_lifetime_secs ({max_life}): relays would refuse the tokens", game.relay_token_secs),
        ));
    }
    Ok(game)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn minimal() -> String {
        format!("[shard]\nname = \"eu-1\"\nsecret = \"{SECRET}\"\n")
    }

    fn err_key(text: &str) -> &'static str {
        match ShardConfig::parse(text) {
            Err(e) => e.key().unwrap_or_else(|| panic!("expected an Invalid error, got {e}")),
            Ok(_) => panic!("config should have been refused:\n{text}"),
        }
    }

    #[test]
    fn config_minimal_file_gets_documented_defaults() {
        let c = ShardConfig::parse(&minimal()).unwrap();
        assert_eq!(c.shard.name, "eu-1");
        assert_eq!(c.shard.secret[0], 0x01);
        assert_eq!(c.relay.primary, "0.0.0.0:3478".parse().unwrap());
        assert_eq!(c.relay.alternate, Some("0.0.0.0:3479".parse().unwrap()));
        assert_eq!(c.relay.core, RelayConfig::default());
        assert_eq!(c.relay.token_key_rotation, Duration::from_secs(86_400));
        assert_eq!(c.relay.listen_addrs().len(), 2);
        assert_eq!(c.relay.threads, 0, "one data-plane thread per CPU");
        let c = ShardConfig::parse(&format!("{}[relay]\nthreads = 4\n", minimal())).unwrap();
        assert_eq!(c.relay.threads, 4);
        assert!(c.relay.gso, "GSO on by default");
        let c = ShardConfig::parse(&format!("{}[relay]\ngso = false\n", minimal())).unwrap();
        assert!(!c.relay.gso);
        let e = ShardConfig::parse(&format!("{}[relay]\ngso = 1\n", minimal())).unwrap_err().to_string();
        assert!(e.contains("gso"), "{e}");
        assert!(!format!("{:?}", c.shard).contains("0123456789abcdef"));
    }

    #[test]
    fn config_example_asset_parses_with_a_fresh_secret_and_refuses_its_own() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/shard.toml");
        let e = ShardConfig::load(&path).unwrap_err();
        assert_eq!(e.key(), Some("shard.secret"));
        assert!(e.to_string().contains("p2pmodel secret"), "{e}");
        let fresh: String = random_secret().iter().map(|b| format!("{b:02x}")).collect();
        let text = std::fs::read_to_string(&path).unwrap().replace(EXAMPLE_SECRET, &fresh);
        let c = ShardConfig::parse(&text).unwrap();
        assert_eq!(c.shard.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.agent.accounts, Accounts::Open);
        assert_eq!(c.agent.max_clients_per_ip, 16);
        assert_eq!(c.agent.io_threads, 1);
    }

    #[test]
    fn weak_secrets_are_refused_naming_shard_secret() {
        for weak in [EXAMPLE_SECRET.to_string(), "00".repeat(32), "ab".repeat(32), "0102".repeat(16)] {
            let e = ShardConfig::parse(&format!("[shard]\nname = \"x\"\nsecret = \"{weak}\"\n")).unwrap_err();
            assert_eq!(e.key(), Some("shard.secret"), "{weak}");
            assert!(e.to_string().contains("p2pmodel secret"), "{e}");
        }
        assert!(weak_secret(&random_secret()).is_none());
        let m = minimal();
        assert_eq!(err_key(&format!("{m}[agent]\naccounts = \"ldap\"\n")), "agent.accounts");
        assert_eq!(err_key(&format!("{m}[agent]\nmax_clients_per_ip = 0\n")), "agent.max_clients_per_ip");
        assert_eq!(err_key(&format!("{m}[agent]\nio_threads = 33\n")), "agent.io_threads");
        assert_eq!(err_key(&format!("{m}[agent]\nlogin_per_sec = 0\n")), "agent.login_per_sec");
        let c = ShardConfig::parse(&format!("{m}[agent]\naccounts = \"file:/etc/acc.toml\"\n")).unwrap();
        assert_eq!(c.agent.accounts, Accounts::File("/etc/acc.toml".into()));
        let c = ShardConfig::parse(&format!("{m}[agent]\nlogin_per_sec = 300\n")).unwrap();
        assert_eq!(c.agent.login_limits.global_per_sec, 300.0, "integers are accepted");
    }

    #[test]
    fn config_max_intros_per_min_defaults_to_120_within_1_to_10000() {
        let m = minimal();
        assert_eq!(ShardConfig::parse(&m).unwrap().game.max_intros_per_min, 120);
        let c = ShardConfig::parse(&format!("{m}[game]\nmax_intros_per_min = 10000\n")).unwrap();
        assert_eq!(c.game.max_intros_per_min, 10_000);
        for bad in ["0", "10001", "-1"] {
            let text = format!("{m}[game]\nmax_intros_per_min = {bad}\n");
            assert_eq!(err_key(&text), "game.max_intros_per_min");
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let m = minimal();
        assert_eq!(err_key("[relay]\nport = 1\n"), "shard");
        assert_eq!(err_key(&format!("[shard]\nsecret = \"{SECRET}\"\n")), "shard.name");
        assert_eq!(err_key("[shard]\nname = \"x\"\n"), "shard.secret");
        assert_eq!(err_key("[shard]\nname = \"x\"\nsecret = \"abc\"\n"), "shard.secret");
        assert_eq!(err_key(&format!("{m}bind = \"nope\"\n")), "shard.bind");
        assert_eq!(err_key(&format!("{m}metrics = \"localhost\"\n")), "shard.metrics");
        assert_eq!(err_key(&format!("{m}public_addresses = [\"1.2.3\"]\n")), "shard.public_addresses");
        assert_eq!(err_key(&format!("{m}[relay]\nport = 70000\n")), "relay.port");
        assert_eq!(
            err_key(&format!("{m}[relay]\nport = 5000\nalternate_port = 5000\n")),
            "relay.alternate_port"
        );
        assert_eq!(err_key(&format!("{m}[relay]\nbatch = 0\n")), "relay.batch");
        assert_eq!(err_key(&format!("{m}[relay]\nthreads = -1\n")), "relay.threads");
        assert_eq!(err_key(&format!("{m}[relay]\nthreads = 257\n")), "relay.threads");
        assert_eq!(err_key(&format!("{m}[relay]\nidle_timeout_secs = 1\n")), "relay.idle_timeout_secs");
        assert_eq!(
            err_key(&format!("{m}[relay]\ntoken_key_rotation_secs = 60\n")),
            "relay.token_key_rotation_secs"
        );
        assert_eq!(
            err_key(&format!("{m}[relay.link_quota]\npackets_per_sec = 0\n")),
            "relay.link_quota.packets_per_sec"
        );
        assert_eq!(
            err_key(&format!("{m}[relay.source_quota]\nbytes_per_sec = -5\n")),
            "relay.source_quota.bytes_per_sec"
        );
        let e = ShardConfig::parse(&format!("{m}[relay]\nport = 70000\n")).unwrap_err().to_string();
        assert!(e.contains("relay.port") && e.contains("70000") && e.contains("65535"), "{e}");
    }

    #[test]
    fn config_parse_errors_name_unknown_and_mistyped_keys() {
        let m = minimal();
        let e = ShardConfig::parse(&format!("{m}[relay]\nprot = 1\n")).unwrap_err().to_string();
        assert!(e.contains("prot"), "{e}");
        let e = ShardConfig::parse(&format!("{m}[relay]\nport = \"x\"\n")).unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        let e = ShardConfig::parse("[shard\n").unwrap_err().to_string();
        assert!(e.contains("<string>"), "{e}");
    }

    #[test]
    fn config_role_sections_have_defaults_and_name_bad_keys() {
        let m = minimal();
        let c = ShardConfig::parse(&format!("{m}[game]\ntick_hz = 30\n[agent]\n")).unwrap();
        assert_eq!(c.game.tick_hz, 30);
        assert_eq!(c.agent.addr, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(c.agent.login, Some("0.0.0.0:7001".parse().unwrap()));
        assert_eq!(c.lobby.heartbeat_timeout, Duration::from_millis(1500));
        assert_eq!(err_key(&format!("{m}[agent]\nport = 7001\n")), "agent.login_port");
        assert_eq!(err_key(&format!("{m}[agent]\nmax_clients = 40000\n")), "agent.max_clients");
        assert_eq!(
            err_key(&format!("{m}[lobby]\nheartbeat_timeout_ms = 5000\n")),
            "lobby.heartbeat_timeout_ms"
        );
        assert_eq!(err_key(&format!("{m}[lobby]\nzones = 0\n")), "lobby.zones");
        assert_eq!(err_key(&format!("{m}[lobby]\ninternal = \"lobby\"\n")), "lobby.internal");
        assert_eq!(err_key(&format!("{m}[game]\nmax_speed = -1.0\n")), "game.max_speed");
        assert_eq!(err_key(&format!("{m}[game]\nhysteresis = 500.0\n")), "game.hysteresis");
        // NPCs are the demo world's (p2pmodel-mmo-world), not the shard's: an old key is named.
        let e = ShardConfig::parse(&format!("{m}[game]\nnpcs = 0\n")).unwrap_err().to_string();
        assert!(e.contains("npcs"), "{e}");
        let e = ShardConfig::parse(&format!("{m}[game]\ntick = 5\n")).unwrap_err().to_string();
        assert!(e.contains("tick"), "{e}");
        // Rooms: party members only, anyone joins a room while it has room.
        let c = ShardConfig::parse(&format!(
            "{m}[game]\ninterest = \"groups\"\n[lobby]\nopen_parties = true\nmax_party_size = 8\n"
        ))
        .unwrap();
        assert_eq!(c.game.interest, p2pmodel_core::shard::Interest::Groups);
        assert_eq!(c.lobby.parties, p2pmodel_core::shard::PartyRules { open: true, max_members: 8 });
        assert_eq!(err_key(&format!("{m}[game]\ninterest = \"rooms\"\n")), "game.interest");
        let c = ShardConfig::parse(&format!("{m}[game]\nmovement = \"server\"\n")).unwrap();
        assert_eq!(c.game.movement, p2pmodel_core::shard::Movement::Server);
        assert_eq!(err_key(&format!("{m}[game]\nmovement = \"both\"\n")), "game.movement");
        assert_eq!(err_key(&format!("{m}[lobby]\nmax_party_size = 1\n")), "lobby.max_party_size");
    }

    #[test]
    fn config_secret_file_is_read_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("p2pm-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret.hex"), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.join("shard.toml"), "[shard]\nname = \"a\"\nsecret_file = \"secret.hex\"\n")
            .unwrap();
        let c = ShardConfig::load(&dir.join("shard.toml")).unwrap();
        assert_eq!(c.shard.secret[31], 0xef);
        std::fs::write(dir.join("shard.toml"), "[shard]\nname = \"a\"\nsecret_file = \"missing\"\n").unwrap();
        assert_eq!(ShardConfig::load(&dir.join("shard.toml")).unwrap_err().key(), Some("shard.secret_file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_relay_role_takes_the_relay_key_instead_of_the_secret() {
        let secret: [u8; 32] = parse_hex_secret(SECRET).unwrap();
        let key = RelayKey::derive(&secret);
        // A relay host's file: the relay key only.
        let relay_only =
            format!("[shard]\nname = \"eu-1\"\n[relay]\nkey = \"{}\"\nport = 4000\n", key.to_hex());
        let r = RelayRoleConfig::parse(&relay_only).unwrap();
        assert_eq!((r.key.clone(), r.relay.primary.port(), r.name.as_str()), (key.clone(), 4000, "eu-1"));
        // The shard roles cannot run from it.
        assert_eq!(err_key(&relay_only), "shard.secret");
        // A full file works for both; the relay derives the same key and keeps no secret.
        let full = ShardConfig::parse(&minimal()).unwrap();
        assert_eq!(RelayRoleConfig::parse(&minimal()).unwrap().key, key);
        assert_eq!(RelayRoleConfig::from(&full).key, key);
        // Both given: they must match.
        let both = format!("{}[relay]\nkey = \"{}\"\n", minimal(), key.to_hex());
        assert!(ShardConfig::parse(&both).is_ok());
        let wrong = format!("{}[relay]\nkey = \"{}\"\n", minimal(), "ab".repeat(32));
        assert_eq!(err_key(&wrong), "relay.key");
        // Neither: the relay says what it needs.
        let e = RelayRoleConfig::parse("[shard]\nname = \"x\"\n").unwrap_err();
        assert_eq!(e.key(), Some("relay.key"));
        assert!(e.to_string().contains("p2pmodel relay-key"), "{e}");
        let e = RelayRoleConfig::parse("[shard]\nname = \"x\"\n[relay]\nkey = \"12\"\n").unwrap_err();
        assert_eq!(e.key(), Some("relay.key"));
        assert!(!format!("{r:?}").contains(&key.to_hex()), "the key is redacted in Debug");
    }

    #[test]
    fn config_several_relays_by_id_each_with_its_own_key() {
        let secret: [u8; 32] = parse_hex_secret(SECRET).unwrap();
        let relays = "relays = [\"198.51.100.7:3478\", \"203.0.113.20:3478\"]\n";
        let m = format!("{}{relays}", minimal());
        let c = ShardConfig::parse(&m).unwrap();
        assert_eq!(c.shard.relays.len(), 2);
        assert_eq!(c.relay.id, 0, "default id");
        // Relay 1's process: its key is relay 1's (not relay 0's), derived or given.
        let one = format!("{m}[relay]\nid = 1\n");
        let key1 = RelayKey::derive_for(&secret, 1);
        assert_ne!(key1, RelayKey::derive(&secret));
        assert_eq!(RelayRoleConfig::parse(&one).unwrap().key, key1);
        assert_eq!(RelayRoleConfig::from(&ShardConfig::parse(&one).unwrap()).key, key1);
        assert!(ShardConfig::parse(&format!("{one}key = \"{}\"\n", key1.to_hex())).is_ok());
        let relay0_key = format!("{one}key = \"{}\"\n", RelayKey::derive(&secret).to_hex());
        assert_eq!(err_key(&relay0_key), "relay.key", "relay 0's key on relay 1");
        // Ids within the list; addresses valid and distinct; at most 16.
        assert_eq!(err_key(&format!("{m}[relay]\nid = 2\n")), "relay.id");
        assert_eq!(err_key(&format!("{}[relay]\nid = 16\n", minimal())), "relay.id");
        let bad = format!("{}relays = [\"relay.example:3478\"]\n", minimal());
        assert_eq!(err_key(&bad), "shard.relays");
        let twice = format!("{}relays = [\"198.51.100.7:3478\", \"198.51.100.7:3478\"]\n", minimal());
        assert_eq!(err_key(&twice), "shard.relays");
        let many: Vec<String> = (0..17).map(|i| format!("\"198.51.100.{i}:3478\"")).collect();
        let many = format!("{}relays = [{}]\n", minimal(), many.join(", "));
        assert_eq!(err_key(&many), "shard.relays");
    }

    #[test]
    fn config_directory_section_is_optional_validated_and_defaults_from_the_agent() {
        assert_eq!(ShardConfig::parse(&minimal()).unwrap().directory, None);
        let m = format!(
            "{}[agent]\nmax_clients = 500\n[directory]\naddress = \"dir.example.com:7200\"\nregion = \"eu\"\n",
            minimal()
        );
        let d = ShardConfig::parse(&m).unwrap().directory.unwrap();
        assert_eq!(
            (d.address.as_str(), d.region.as_str(), d.capacity, d.key, d.advertise),
            ("dir.example.com:7200", "eu", 500, None, None)
        );
        assert_eq!(d.heartbeat, Duration::from_secs(1));
        let full = format!(
            "{m}heartbeat_ms = 200\ncapacity = 80\nadvertise = \"play.example.com:7001\"\nkey = \"{}\"\n",
            "ab".repeat(32)
        );
        let d = ShardConfig::parse(&full).unwrap().directory.unwrap();
        assert_eq!(
            (d.heartbeat, d.capacity, d.advertise.as_deref()),
            (Duration::from_millis(200), 80, Some("play.example.com:7001"))
        );
        assert_eq!(d.key, Some(p2pmodel_core::directory::DirectoryKey([0xab; 32])));
        let dir = |body: &str| format!("{}[directory]\n{body}", minimal());
        assert_eq!(err_key(&dir("region = \"eu\"\n")), "directory.address");
        assert_eq!(err_key(&dir("address = \"nohost\"\nregion = \"eu\"\n")), "directory.address");
        assert_eq!(err_key(&dir("address = \"d:7200\"\n")), "directory.region");
        assert_eq!(err_key(&dir("address = \"d:7200\"\nregion = \"e u\"\n")), "directory.region");
        assert_eq!(
            err_key(&dir("address = \"d:7200\"\nregion = \"eu\"\nheartbeat_ms = 50\n")),
            "directory.heartbeat_ms"
        );
        assert_eq!(err_key(&dir("address = \"d:7200\"\nregion = \"eu\"\nkey = \"00\"\n")), "directory.key");
        assert_eq!(
            err_key(&dir("address = \"d:7200\"\nregion = \"eu\"\nadvertise = \"x\"\n")),
            "directory.advertise"
        );
        let no_login = format!(
            "{}[agent]\nlogin_port = 0\n[directory]\naddress = \"d:7200\"\nregion = \"eu\"\n",
            minimal()
        );
        assert_eq!(err_key(&no_login), "directory.address");
        assert!(ShardConfig::parse(&dir("address = \"d:7200\"\nregion = \"eu\"\ntypo = 1\n")).is_err());
    }
}
