//! The relay state machine: token checks, bindings, forwarding, quotas, anti-amplification.
//!
//! [`Relay::process`] is the zero-allocation hot path the data plane calls for every
//! datagram; [`super::RelayEndpoint`] wraps it in the [`crate::endpoint::Endpoint`] loop for
//! the simulator.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use foldhash::fast::RandomState;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::RelayConfig;
use super::quota::{FlowLimiter, SharedLimits, SourceLimiter};
use super::stats::{DropReason, RelayStats};
use super::token::{TokenError, TokenKeys, check_expiry, verify_token};
use crate::proto::peer::{LinkId, PEER_HEADER_LEN, PeerHeader, Side, TAG_LEN};
use crate::proto::relay::{
    BindAck, BindCookie, BindKey, BindRequest, COOKIE_LABEL, COOKIE_LEN, MAX_BIND_ACK_LEN, RelayKind,
};

/// Most datagrams held for one side of a link until its peer binds (zero-round-trip relay).
pub const EARLY_MAX_DATAGRAMS: usize = 4;
/// Most bytes held for one side of a link until its peer binds.
pub const EARLY_MAX_BYTES: usize = 4096;

type HmacSha256 = Hmac<Sha256>;

/// Length of the relay's own cookie secret.
pub const COOKIE_SECRET_LEN: usize = 32;

pub use crate::endpoint::ClockAnchor;

/// Where [`Relay::process`] writes the datagrams it answers with. Lives on the caller's
/// stack or in its batch buffers; the relay never allocates for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyBuf {
    /// The BindAck to the Bind's sender: `reply[..len]` of [`Action::Reply`].
    pub reply: [u8; MAX_BIND_ACK_LEN],
    /// The peer-bound notification: `notify[..n.len]` of [`Action::Reply`]'s `notify`.
    pub notify: [u8; MAX_BIND_ACK_LEN],
    /// Datagrams the other side sent before this side was bound, delivered to the Bind's
    /// sender after its ack: the first `early` of [`ReplyBuf::early_datagrams`].
    pub early: [u8; EARLY_MAX_BYTES],
    /// Their lengths, in order.
    pub early_lens: [u16; EARLY_MAX_DATAGRAMS],
}

impl Default for ReplyBuf {
    fn default() -> Self {
        ReplyBuf {
            reply: [0; MAX_BIND_ACK_LEN],
            notify: [0; MAX_BIND_ACK_LEN],
            early: [0; EARLY_MAX_BYTES],
            early_lens: [0; EARLY_MAX_DATAGRAMS],
        }
    }
}

impl ReplyBuf {
    /// The first `n` early datagrams of an [`Action::Reply`] (`n` = its `early`).
    pub fn early_datagrams(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        self.early_lens[..n.min(EARLY_MAX_DATAGRAMS)].iter().map(move |l| {
            let d = &self.early[at..at + usize::from(*l)];
            at += usize::from(*l);
            d
        })
    }
}

/// The peer datagram a BindData carried, to forward to the other side: bytes
/// `start..start + len` of the datagram handed to [`Relay::process`], unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedded {
    /// The other side's bound address.
    pub to: SocketAddr,
    /// Offset of the peer datagram in the BindData.
    pub start: usize,
    /// Its length.
    pub len: usize,
}

/// A second datagram produced by a Bind: the unsolicited BindAck to the side that was
/// already bound, telling it its peer is now bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify {
    /// The already-bound side's address.
    pub to: SocketAddr,
    /// Its bytes are `ReplyBuf::notify[..len]`.
    pub len: usize,
}

/// What to do with a datagram, as decided by [`Relay::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the very same bytes, unchanged, to `to` (from the address they arrived on).
    Forward {
        /// The other side's bound address.
        to: SocketAddr,
    },
    /// Send `ReplyBuf::reply[..len]` to `to`, then the `early` datagrams of
    /// [`ReplyBuf::early_datagrams`] to `to`, the notification if there is one, and the
    /// BindData's peer datagram if it is forwarded (in that order).
    Reply {
        /// The Bind's source address.
        to: SocketAddr,
        /// Length of the BindAck in `ReplyBuf::reply`.
        len: usize,
        /// The peer-bound notification, if this Bind made the link usable.
        notify: Option<Notify>,
        /// A BindData's peer datagram, forwarded to the other side.
        forward: Option<Embedded>,
        /// How many datagrams the other side sent early are delivered to `to` (0 mostly).
        early: usize,
    },
    /// Send nothing; the reason is counted in [`RelayStats`].
    Drop(DropReason),
}

/// A read-only view of one binding (for operators and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingInfo {
    /// The address data for this side comes from and is forwarded to.
    pub addr: SocketAddr,
    /// Whether the address proved it receives (cookie returned); unvalidated addresses are
    /// never sent more bytes than received from them.
    pub validated: bool,
    /// Expiry (unix seconds) of the token it was last bound with.
    pub token_expiry_unix_secs: u64,
    /// The last accepted Bind counter (the replay floor).
    pub last_counter: u64,
    /// Bytes received from `addr` since it was bound there.
    pub bytes_from: u64,
    /// Bytes sent to `addr` since it was bound there.
    pub bytes_to: u64,
}

/// Per-source state: the address's quota and how many live bindings use it.
struct SourceState {
    limiter: SourceLimiter,
    refs: u32,
}

/// One (link, side): a live binding, or (when `active` is false) only a replay floor kept
/// until every token it saw has expired.
struct Binding {
    addr: SocketAddr,
    active: bool,
    validated: bool,
    token_expiry: u64,
    floor_until: u64,
    last_counter: u64,
    last_seen: Instant,
    bind_key: BindKey,
    rx: u64,
    tx: u64,
    limiter: FlowLimiter,
    /// Datagrams this side sent in BindData before its peer was bound, held for the peer.
    early: Option<Box<Early>>,
}

/// Peer datagrams held for the other side of a link until it binds.
struct Early {
    since: Instant,
    data: Vec<u8>,
    lens: [u16; EARLY_MAX_DATAGRAMS],
    count: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Inactive,
    Idle,
    TokenExpired,
    Live,
}

impl Binding {
    fn state(&self, now: Instant, unix: u64, cfg: &RelayConfig) -> State {
        if !self.active {
            State::Inactive
        } else if self.token_expiry <= unix {
            State::TokenExpired
        } else if now.saturating_duration_since(self.last_seen) >= cfg.idle_timeout {
            State::Idle
        } else {
            State::Live
        }
    }

    /// The unvalidated-address budget allows sending `len` more bytes.
    fn may_send(&self, len: usize) -> bool {
        self.validated || self.tx.saturating_add(len as u64) <= self.rx
    }
}

fn route_key(link: LinkId, side: Side) -> u64 {
    (u64::from(link.0) << 1) | u64::from(side.to_byte())
}

fn acquire_source(
    sources: &mut HashMap<SocketAddr, SourceState, RandomState>,
    shared: Option<&SharedLimits>,
    addr: SocketAddr,
    now: Instant,
    cfg: &RelayConfig,
) {
    sources
        .entry(addr)
        .or_insert_with(|| SourceState {
            limiter: match shared {
                Some(s) => {
                    SourceLimiter::Shared(s.acquire_source(addr, now, cfg.source_quota, cfg.quota_burst))
                }
                None => SourceLimiter::Local(FlowLimiter::new(now, cfg.source_quota, cfg.quota_burst)),
            },
            refs: 0,
        })
        .refs += 1;
}

fn release_source(
    sources: &mut HashMap<SocketAddr, SourceState, RandomState>,
    shared: Option<&SharedLimits>,
    addr: SocketAddr,
) {
    if let Some(s) = sources.get_mut(&addr) {
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 {
            sources.remove(&addr);
            if let Some(sh) = shared {
                sh.release_source(addr);
            }
        }
    }
}

/// The relay: verifies tokens and binds, forwards peer datagrams between the two bound
/// sides of a link, and counts everything it drops. Sans-IO: time comes in as `now`.
pub struct Relay {
    config: RelayConfig,
    keys: TokenKeys,
    cookie_key: HmacSha256,
    clock: ClockAnchor,
    bindings: HashMap<u64, Binding, RandomState>,
    sources: HashMap<SocketAddr, SourceState, RandomState>,
    shared: Option<Arc<SharedLimits>>,
    stats: RelayStats,
    next_sweep: Instant,
    /// Bytes held in all bindings' early data.
    early_bytes: usize,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .field("keys", &self.keys)
            .field("clock", &self.clock)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay with the shard's token keys, a clock anchor for token expiry, and its own
    /// random cookie secret (the driver draws it, e.g. from `rand::rng()`; it never leaves
    /// the relay and may change on restart).
    pub fn new(
        config: RelayConfig,
        keys: TokenKeys,
        clock: ClockAnchor,
        cookie_secret: [u8; COOKIE_SECRET_LEN],
    ) -> Relay {
        let cookie_key = match HmacSha256::new_from_slice(&cookie_secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        let next_sweep = clock.at + config.sweep_interval;
        Relay {
            config,
            keys,
            cookie_key,
            clock,
            bindings: HashMap::default(),
            sources: HashMap::default(),
            shared: None,
            stats: RelayStats::default(),
            next_sweep,
            early_bytes: 0,
        }
    }

    /// Share the per-source quotas and the `max_bindings` bound with the other relays of a
    /// multi-threaded data plane (one relay per thread, datagrams steered by link id), so
    /// they hold over all threads together. Call before the first datagram.
    pub fn with_shared_limits(mut self, shared: Arc<SharedLimits>) -> Relay {
        debug_assert!(self.bindings.is_empty(), "share limits before any binding exists");
        self.shared = Some(shared);
        self
    }

    /// Whether one more table entry may be created (and, when shared, reserve it).
    fn reserve_entry(&self) -> bool {
        match &self.shared {
            Some(s) => s.reserve_entry(self.config.max_bindings),
            None => self.bindings.len() < self.config.max_bindings,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// The token keys, e.g. to [`TokenKeys::rotate`] them when the shard does.
    pub fn keys_mut(&mut self) -> &mut TokenKeys {
        &mut self.keys
    }

    /// Unix seconds at `now`, by the clock anchor.
    pub fn unix_secs_at(&self, now: Instant) -> u64 {
        self.clock.unix_secs_at(now)
    }

    /// The live binding of (`link`, `side`) at `now`, if any.
    pub fn binding(&self, link: LinkId, side: Side, now: Instant) -> Option<BindingInfo> {
        let unix = self.clock.unix_secs_at(now);
        let b = self.bindings.get(&route_key(link, side))?;
        (b.state(now, unix, &self.config) == State::Live).then_some(BindingInfo {
            addr: b.addr,
            validated: b.validated,
            token_expiry_unix_secs: b.token_expiry,
            last_counter: b.last_counter,
            bytes_from: b.rx,
            bytes_to: b.tx,
        })
    }

    /// Decide what to do with one datagram that arrived from `from`. Allocation-free except
    /// when a Bind creates a new table entry.
    ///
    /// Peer datagrams (`0x20..=0x25`) are forwarded or dropped; Binds (`0x30`) and
    /// BindData (`0x33`) are answered (into `reply`) or dropped; anything else is dropped.
    /// A BindData whose peer datagram must be held (the other side is not bound yet)
    /// allocates too. A driver that also serves STUN
    /// on the same socket classifies first ([`crate::proto::classify`]) and hands STUN
    /// elsewhere.
    pub fn process(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        reply: &mut ReplyBuf,
    ) -> Action {
        self.stats.received_packets += 1;
        self.stats.received_bytes += datagram.len() as u64;
        let action = match datagram.first() {
            None => Action::Drop(DropReason::Malformed),
            Some(0x20..=0x25) => self.forward(now, from, datagram),
            Some(&b) if b == RelayKind::Bind as u8 || b == RelayKind::BindData as u8 => {
                self.bind(now, from, datagram, reply)
            }
            Some(_) => Action::Drop(DropReason::UnexpectedKind),
        };
        if let Action::Drop(reason) = action {
            self.stats.count_drop(reason);
        }
        action
    }

    fn forward(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Action {
        if data.len() < PEER_HEADER_LEN + TAG_LEN {
            return Action::Drop(DropReason::Malformed);
        }
        let Ok((_, link, side)) = PeerHeader::decode_route(data) else {
            return Action::Drop(DropReason::Malformed);
        };
        let len = data.len();
        let unix = self.clock.unix_secs_at(now);
        let cfg = &self.config;

        let Some(b) = self.bindings.get_mut(&route_key(link, side)) else {
            return Action::Drop(DropReason::UnknownBinding);
        };
        match b.state(now, unix, cfg) {
            State::Live => {}
            State::TokenExpired => return Action::Drop(DropReason::ExpiredToken),
            State::Inactive | State::Idle => return Action::Drop(DropReason::UnknownBinding),
        }
        if b.addr != from {
            return Action::Drop(DropReason::WrongSource);
        }
        b.last_seen = now;
        b.rx = b.rx.saturating_add(len as u64);
        if !b.limiter.allow(now, len) {
            return Action::Drop(DropReason::LinkQuota);
        }
        if let Some(s) = self.sources.get_mut(&from)
            && !s.limiter.allow(now, len)
        {
            return Action::Drop(DropReason::SourceQuota);
        }

        let Some(p) = self.bindings.get_mut(&route_key(link, side.other())) else {
            return Action::Drop(DropReason::PeerNotBound);
        };
        if p.state(now, unix, cfg) != State::Live {
            return Action::Drop(DropReason::PeerNotBound);
        }
        if !p.may_send(len) {
            return Action::Drop(DropReason::Amplification);
        }
        p.tx = p.tx.saturating_add(len as u64);
        self.stats.forwarded_packets += 1;
        self.stats.forwarded_bytes += len as u64;
        Action::Forward { to: p.addr }
    }

    fn cookie_bucket(&self, now: Instant) -> u64 {
        let width = self.config.cookie_bucket.as_nanos().max(1);
        (now.saturating_duration_since(self.clock.at).as_nanos() / width) as u64
    }

    fn cookie_mac(&self, bucket: u64, addr: SocketAddr, link: LinkId, side: Side) -> HmacSha256 {
        let mut m = self.cookie_key.clone();
        m.update(COOKIE_LABEL);
        match addr {
            SocketAddr::V4(a) => {
                m.update(&[4]);
                m.update(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                m.update(&[6]);
                m.update(&a.ip().octets());
            }
        }
        m.update(&addr.port().to_be_bytes());
        m.update(&link.0.to_be_bytes());
        m.update(&[side.to_byte()]);
        m.update(&bucket.to_be_bytes());
        m
    }

    /// The cookie for (`addr`, `link`, `side`) in the current time bucket.
    fn make_cookie(&self, now: Instant, addr: SocketAddr, link: LinkId, side: Side) -> BindCookie {
        let full = self.cookie_mac(self.cookie_bucket(now), addr, link, side).finalize().into_bytes();
        let mut c = [0u8; COOKIE_LEN];
        c.copy_from_slice(&full[..COOKIE_LEN]);
        BindCookie(c)
    }

    /// Whether `cookie` was made for (`addr`, `link`, `side`) in this bucket or the one
    /// before (constant-time compare).
    fn cookie_valid(
        &self,
        now: Instant,
        addr: SocketAddr,
        link: LinkId,
        side: Side,
        cookie: &BindCookie,
    ) -> bool {
        let bucket = self.cookie_bucket(now);
        let ok = |b: u64| self.cookie_mac(b, addr, link, side).verify_truncated_left(&cookie.0).is_ok();
        ok(bucket) || (bucket > 0 && ok(bucket - 1))
    }

    fn bind(&mut self, now: Instant, from: SocketAddr, data: &[u8], buf: &mut ReplyBuf) -> Action {
        let decoded = if data[0] == RelayKind::BindData as u8 {
            BindRequest::decode_with_data(data).map(|(r, range)| (r, Some(range)))
        } else {
            BindRequest::decode(data).map(|r| (r, None))
        };
        let Ok((req, embedded)) = decoded else {
            return Action::Drop(DropReason::Malformed);
        };
        let unix = self.clock.unix_secs_at(now);
        let max_life = self.config.max_token_lifetime.as_secs();
        let checked = check_expiry(&req.token, unix, max_life)
            .and_then(|()| verify_token(&self.keys, req.link, req.side, &req.token));
        let bind_key = match checked {
            Ok(k) => k,
            Err(TokenError::Expired) => return Action::Drop(DropReason::ExpiredToken),
            Err(TokenError::TooLong) => return Action::Drop(DropReason::TokenTooLong),
            Err(TokenError::UnknownKey(_)) => return Action::Drop(DropReason::UnknownKey),
            Err(TokenError::BadMac | TokenError::DuplicateKeyId(_)) => {
                return Action::Drop(DropReason::BadToken);
            }
        };
        if !req.verify_mac(&bind_key) {
            return Action::Drop(DropReason::BadMac);
        }
        let key = route_key(req.link, req.side);
        match self.bindings.get(&key) {
            Some(b) if req.counter <= b.last_counter => return Action::Drop(DropReason::Replay),
            None if !self.reserve_entry() => {
                return Action::Drop(DropReason::TableFull);
            }
            _ => {}
        }

        // Accepted.
        let cookie_ok = if req.cookie.is_none() {
            false
        } else {
            let ok = self.cookie_valid(now, from, req.link, req.side, &req.cookie);
            if !ok {
                self.stats.stale_cookies += 1;
            }
            ok
        };
        let fresh_cookie = self.make_cookie(now, from, req.link, req.side);
        let peer_key = route_key(req.link, req.side.other());
        let peer_live =
            self.bindings.get(&peer_key).is_some_and(|p| p.state(now, unix, &self.config) == State::Live);

        let cfg = &self.config;
        let stats = &mut self.stats;
        let sources = &mut self.sources;
        let shared = self.shared.as_deref();
        let b = self.bindings.entry(key).or_insert_with(|| {
            stats.table_entries += 1;
            Binding {
                addr: from,
                active: false,
                validated: false,
                token_expiry: 0,
                floor_until: 0,
                last_counter: 0,
                last_seen: now,
                bind_key: bind_key.clone(),
                rx: 0,
                tx: 0,
                limiter: FlowLimiter::new(now, cfg.link_quota, cfg.quota_burst),
                early: None,
            }
        });
        let was_live = b.state(now, unix, cfg) == State::Live;
        if was_live {
            if b.addr != from {
                release_source(sources, shared, b.addr);
                acquire_source(sources, shared, from, now, cfg);
                b.addr = from;
                b.validated = false;
                b.rx = 0;
                b.tx = 0;
                stats.bindings_moved += 1;
            }
        } else {
            if b.active {
                // Expired but not swept yet.
                release_source(sources, shared, b.addr);
                stats.active_bindings -= 1;
                stats.bindings_expired += 1;
            }
            acquire_source(sources, shared, from, now, cfg);
            b.active = true;
            b.addr = from;
            b.validated = false;
            b.rx = 0;
            b.tx = 0;
            stats.active_bindings += 1;
        }
        if cookie_ok && !b.validated {
            b.validated = true;
            stats.addresses_validated += 1;
        }
        b.last_counter = req.counter;
        b.token_expiry = u64::from(req.token.expiry_unix_secs);
        b.floor_until = b.floor_until.max(b.token_expiry);
        b.bind_key = bind_key;
        b.last_seen = now;
        b.rx = b.rx.saturating_add(data.len() as u64);
        stats.binds_accepted += 1;

        let ack = BindAck {
            link: req.link,
            side: req.side,
            counter: req.counter,
            peer_bound: peer_live,
            validated: b.validated,
            cookie: fresh_cookie,
            observed: from,
        };
        // Never more than received: the ack (≤ 58 B) is smaller than the Bind (59 B) that was
        // just added to `rx`, so this holds by construction; checked anyway.
        if !b.may_send(ack.encoded_len()) {
            return Action::Drop(DropReason::Amplification);
        }
        let len = ack.encode_into(&b.bind_key, &mut buf.reply);
        b.tx = b.tx.saturating_add(len as u64);
        stats.bind_acks_sent += 1;

        let notify = if !was_live && peer_live {
            self.notify_peer(now, peer_key, req.link, req.side.other(), buf)
        } else {
            None
        };
        let early = if peer_live { self.deliver_early(now, key, peer_key, buf) } else { 0 };
        let forward = match embedded {
            Some(range) => self.carried(now, from, key, peer_key, peer_live, data, range),
            None => None,
        };
        Action::Reply { to: from, len, notify, forward, early }
    }

    /// The peer datagram `data[range]` of an accepted BindData from `from` (side `key`):
    /// forwarded when the other side is live and may be sent it, else held for it.
    #[allow(clippy::too_many_arguments)]
    fn carried(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: u64,
        peer_key: u64,
        peer_live: bool,
        data: &[u8],
        range: std::ops::Range<usize>,
    ) -> Option<Embedded> {
        let len = range.len();
        let within_quota = self.bindings.get_mut(&key).is_some_and(|b| b.limiter.allow(now, len))
            && self.sources.get_mut(&from).is_none_or(|s| s.limiter.allow(now, len));
        if !within_quota {
            self.stats.early_dropped += 1;
            return None;
        }
        if peer_live {
            let p = self.bindings.get_mut(&peer_key)?;
            if !p.may_send(len) {
                self.stats.early_dropped += 1;
                return None;
            }
            p.tx = p.tx.saturating_add(len as u64);
            self.stats.bind_data_forwarded += 1;
            return Some(Embedded { to: p.addr, start: range.start, len });
        }
        // The other side has not bound yet: hold it for a moment (bounded per side and in all).
        let over_cap = self.early_bytes + len > self.config.max_early_bytes;
        let b = self.bindings.get_mut(&key)?;
        let e = b.early.get_or_insert_with(|| {
            Box::new(Early { since: now, data: Vec::new(), lens: [0; EARLY_MAX_DATAGRAMS], count: 0 })
        });
        if over_cap || e.count == EARLY_MAX_DATAGRAMS || e.data.len() + len > EARLY_MAX_BYTES {
            self.stats.early_dropped += 1;
            return None;
        }
        e.data.extend_from_slice(&data[range]);
        e.lens[e.count] = len as u16;
        e.count += 1;
        self.early_bytes += len;
        self.stats.early_held += 1;
        None
    }

    /// Hand the datagrams the other side (`peer_key`) held for side `key` to `buf`, within
    /// `key`'s anti-amplification budget; returns how many.
    fn deliver_early(&mut self, now: Instant, key: u64, peer_key: u64, buf: &mut ReplyBuf) -> usize {
        let Some(early) = self.bindings.get_mut(&peer_key).and_then(|p| p.early.take()) else { return 0 };
        self.early_bytes = self.early_bytes.saturating_sub(early.data.len());
        if now.saturating_duration_since(early.since) >= self.config.early_hold {
            self.stats.early_dropped += early.count as u64;
            return 0;
        }
        let Some(b) = self.bindings.get_mut(&key) else { return 0 };
        let (mut at, mut out, mut n) = (0usize, 0usize, 0usize);
        for &l in &early.lens[..early.count] {
            let l = usize::from(l);
            let d = &early.data[at..at + l];
            at += l;
            if !b.may_send(l) {
                self.stats.early_dropped += 1;
                continue;
            }
            b.tx = b.tx.saturating_add(l as u64);
            buf.early[out..out + l].copy_from_slice(d);
            buf.early_lens[n] = l as u16;
            out += l;
            n += 1;
        }
        self.stats.early_delivered += n as u64;
        n
    }

    /// Tell the already-bound side of a link that its peer just bound.
    fn notify_peer(
        &mut self,
        now: Instant,
        peer_key: u64,
        link: LinkId,
        side: Side,
        buf: &mut ReplyBuf,
    ) -> Option<Notify> {
        let (addr, counter, validated) = {
            let p = self.bindings.get(&peer_key)?;
            (p.addr, p.last_counter, p.validated)
        };
        let cookie = self.make_cookie(now, addr, link, side);
        let p = self.bindings.get_mut(&peer_key)?;
        let ack = BindAck { link, side, counter, peer_bound: true, validated, cookie, observed: addr };
        if !p.may_send(ack.encoded_len()) {
            self.stats.peer_notifications_suppressed += 1;
            return None;
        }
        let len = ack.encode_into(&p.bind_key, &mut buf.notify);
        p.tx = p.tx.saturating_add(len as u64);
        self.stats.peer_notifications_sent += 1;
        Some(Notify { to: addr, len })
    }

    /// Sweep expired bindings (idle or token expired) and replay floors whose tokens have
    /// all expired. Calling it early or often is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + self.config.sweep_interval;
        let unix = self.clock.unix_secs_at(now);
        let cfg = &self.config;
        let stats = &mut self.stats;
        let sources = &mut self.sources;
        let shared = self.shared.as_deref();
        let early_bytes = &mut self.early_bytes;
        self.bindings.retain(|_, b| {
            if let Some(e) = b.early.as_ref()
                && (!b.active || now.saturating_duration_since(e.since) >= cfg.early_hold)
            {
                *early_bytes = early_bytes.saturating_sub(e.data.len());
                stats.early_dropped += e.count as u64;
                b.early = None;
            }
            if b.active && b.state(now, unix, cfg) != State::Live {
                b.active = false;
                release_source(sources, shared, b.addr);
                stats.active_bindings -= 1;
                stats.bindings_expired += 1;
            }
            let keep = b.active || b.floor_until > unix;
            if !keep {
                stats.table_entries -= 1;
                if let Some(s) = shared {
                    s.release_entry();
                }
            }
            keep
        });
    }

    /// When [`Relay::handle_timeout`] should next run; `None` while the table is empty.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.bindings.is_empty()).then_some(self.next_sweep)
    }
}
