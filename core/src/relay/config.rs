//! Every protocol constant of the relay, in one place, with the reason for its default.

use std::time::Duration;

/// A rate limit: a token bucket on packets and one on bytes; a packet passes only if both
/// have room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Sustained packets per second.
    pub packets_per_sec: u64,
    /// Sustained bytes (UDP payload) per second.
    pub bytes_per_sec: u64,
}

/// Relay configuration. Build with `RelayConfig::default()` and override fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// A binding without any datagram from its client (data, keepalive or a refreshing Bind)
    /// for this long is removed.
    ///
    /// Default 60 s: the link keeps an idle path alive with keepalives every few seconds
    /// (RFC 4787 REQ-5 asks NATs for 2 min mapping timers, but many home routers use ~30 s,
    /// so clients must send well inside that), so 60 s tolerates many lost keepalives, yet
    /// frees a dead player's binding within a minute.
    pub idle_timeout: Duration,
    /// Limit on what one side of one link may send through the relay.
    ///
    /// Default 2,000 packets/s and 2 MB/s: about 30× a fast-paced game's 60 Hz tick and
    /// 10× a heavy snapshot stream, so no game hits it, while one flooding client cannot
    /// take more than a small share of a relay's uplink.
    pub link_quota: Quota,
    /// Limit on what one source address (one client mesh socket, all its links together)
    /// may send through the relay.
    ///
    /// Default 10,000 packets/s and 10 MB/s: a player relays a handful of links at most
    /// (most links go direct), so 5 links at the per-link maximum still fit; a client
    /// that binds many links to multiply its quota is capped here. Keyed by full address
    /// (IP and port), not IP, because many players share one carrier-grade NAT IP.
    pub source_quota: Quota,
    /// Bucket depth of both quotas, as time at the sustained rate (e.g. 250 ms at 2 MB/s =
    /// 500 kB may pass at once).
    ///
    /// Default 250 ms: absorbs a burst of a few frames (a large snapshot split in
    /// fragments), yet a flood is cut within a quarter of a second.
    pub quota_burst: Duration,
    /// Width of the cookie time bucket. A cookie is accepted in its own bucket and the
    /// next, so it is valid for between one and two bucket widths after it was sent.
    ///
    /// Default 30 s: far longer than any client round trip plus retries, short enough that
    /// a cookie observed on the path is soon useless.
    pub cookie_bucket: Duration,
    /// A token whose expiry is further than this in the future is refused.
    ///
    /// Default 24 h: shards issue tokens for minutes to hours and refresh them; a longer one
    /// is a shard bug or a leaked secret, and the relay keeps a replay floor for every
    /// (link, side) until its token expires, so this bounds how long that state lives.
    pub max_token_lifetime: Duration,
    /// How many (link, side) entries (live bindings and replay floors) the relay keeps at
    /// most; a Bind that needs a new entry beyond it is refused.
    ///
    /// Default 1,048,576: about 200 MB, 500k concurrently relayed links. Bounds memory:
    /// entries are only created by Binds with valid tokens.
    pub max_bindings: usize,
    /// How often expired bindings are swept ([`crate::endpoint::Endpoint::poll_timeout`]).
    /// Expiry is also checked on every datagram, so this only bounds how long memory and
    /// the `active_bindings` gauge lag behind.
    ///
    /// Default 1 s: a sweep is O(bindings); once a second keeps it far below 1% of a core.
    pub sweep_interval: Duration,
    /// How long a peer datagram that arrived in a BindData before the other side was bound
    /// is held for that side (zero-round-trip relay: the two sides of a new link bind at
    /// about the same time, and the first to arrive must not lose its first message).
    ///
    /// Default 2 s: both sides get the introduction within a shard round trip of each
    /// other, so their binds reach the relay well within it; renet re-sends anything older.
    pub early_hold: Duration,
    /// Most bytes of such held datagrams, over all bindings (at most 4 datagrams / 4 kB per
    /// side; beyond it new ones are dropped and counted, and renet re-sends them).
    ///
    /// Default 8 MiB: ~2,000 links starting within `early_hold` of each other.
    pub max_early_bytes: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            idle_timeout: Duration::from_secs(60),
            link_quota: Quota { packets_per_sec: 2_000, bytes_per_sec: 2_000_000 },
            source_quota: Quota { packets_per_sec: 10_000, bytes_per_sec: 10_000_000 },
            quota_burst: Duration::from_millis(250),
            cookie_bucket: Duration::from_secs(30),
            max_token_lifetime: Duration::from_secs(24 * 3600),
            max_bindings: 1 << 20,
            sweep_interval: Duration::from_secs(1),
            early_hold: Duration::from_secs(2),
            max_early_bytes: 8 << 20,
        }
    }
}
