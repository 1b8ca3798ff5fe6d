//! The relays of one link: the one it sends through (`Link::relay`), and spares — a warm
//! standby the shard named (`ShardMessage::RelayStandby`), or the relay a move goes to
//! (`RelayRefresh` with another address) until both sides are bound there, or the one it
//! leaves until then. Every spare is bound and refreshed like the relay in use, so
//! switching is one datagram away:
//!
//! - the shard's primary (its last `RelayRefresh`) is used as soon as the relay confirmed
//!   both sides bound on it and it is not suspect;
//! - the relay in use goes *suspect* when our sends through it went unanswered for
//!   [`Link::relay_suspect_timeout`] (or the peer's data arrives through another relay while
//!   none came through ours for `path_ping_after`): we bind it again at once and send
//!   through a confirmed spare (the standby first); only a BindAck from it — an answer to
//!   our own datagram — clears the suspicion;
//! - nothing is lost or duplicated by a switch: renet re-sends what the old relay lost, and
//!   drops duplicates.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Link, Liveness, RelayParams};
use crate::proto::relay::BindCookie;

/// How long after a relay was given to the link its relayed path counts as usable before
/// the relay confirmed both sides bound (zero-round-trip relay: data goes out at once in
/// BindData datagrams). The relay holds such data up to its `early_hold` (2 s) for a peer
/// that binds later; a peer that never binds (P2P off, gone) no longer looks reachable.
const ZERO_RTT_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub(super) struct BindAttempt {
    /// Counter of the attempt's first Bind; retransmissions carry fresh, higher counters.
    pub(super) first_counter: u64,
    pub(super) tries: u32,
    pub(super) next_retry: Instant,
}

#[derive(Debug)]
pub(super) struct RelayState {
    pub(super) params: RelayParams,
    pub(super) last_counter: u64,
    pub(super) bound: bool,
    pub(super) peer_bound: bool,
    /// The relay has seen our cookie come back: it no longer caps what it sends us.
    pub(super) validated: bool,
    pub(super) cookie: BindCookie,
    pub(super) attempt: Option<BindAttempt>,
    pub(super) next_refresh: Instant,
    pub(super) observed: Option<SocketAddr>,
    pub(super) live: Liveness,
    /// When we last bound again because the relayed path went silent.
    pub(super) last_rescue: Option<Instant>,
    /// Until when the relayed path counts as usable before the relay confirmed it (both
    /// sides bound): data goes out in BindData datagrams meanwhile.
    pub(super) optimistic_until: Option<Instant>,
    /// Our sends through it went unanswered (or the peer left it) at this instant: not used
    /// while a confirmed spare is, until a BindAck from it answers one of our Binds.
    pub(super) suspected_at: Option<Instant>,
    /// The peer's last data datagram that came through it.
    pub(super) last_peer_data: Option<Instant>,
    /// When the link switched away from it (a spare the shard no longer names lingers).
    pub(super) left_at: Option<Instant>,
}

/// How often a silent relayed path re-binds (a restarted relay lost our binding).
const RELAY_RESCUE_EVERY: Duration = Duration::from_secs(1);

impl RelayState {
    /// Not bound yet; the first bind goes out at once.
    pub(super) fn new(now: Instant, params: RelayParams, last_counter: u64) -> Self {
        RelayState {
            params,
            last_counter,
            bound: false,
            peer_bound: false,
            validated: false,
            cookie: BindCookie::NONE,
            attempt: None,
            next_refresh: now,
            observed: None,
            live: Liveness::new(now),
            last_rescue: None,
            optimistic_until: Some(now + ZERO_RTT_WINDOW),
            suspected_at: None,
            last_peer_data: None,
            left_at: None,
        }
    }

    /// The relay confirmed both sides bound: plain data flows through it.
    pub(super) fn confirmed(&self) -> bool {
        self.bound && self.peer_bound
    }

    /// Data may go to the relay: confirmed, or within the zero-round-trip window.
    pub(super) fn usable(&self) -> bool {
        self.confirmed() || self.optimistic_until.is_some()
    }

    /// When a silent relayed path should bind again: the relay may have restarted and lost
    /// our binding. Only while bound, idle (no attempt running) and unanswered for `timeout`.
    pub(super) fn rescue_at(&self, timeout: Duration) -> Option<Instant> {
        if !self.bound || self.attempt.is_some() {
            return None;
        }
        let u = self.live.unanswered_since? + timeout;
        Some(self.last_rescue.map_or(u, |t| u.max(t + RELAY_RESCUE_EVERY)))
    }
}

/// How long a relay the link switched away from stays bound (when the shard names it
/// neither primary nor standby), so datagrams still in flight through it are recognised as
/// relayed rather than taken for the peer's own address.
const RELAY_LINGER: Duration = Duration::from_secs(5);
/// Most relays a link keeps bound (in use, primary, standby, and one it is leaving).
const MAX_RELAYS: usize = 4;

/// The relay at `addr` among `relay` (in use) and `spares`, mutably (a function of the two
/// fields, so the rest of the link stays borrowable).
pub(super) fn slot<'a>(
    relay: &'a mut Option<RelayState>,
    spares: &'a mut [RelayState],
    addr: SocketAddr,
) -> Option<&'a mut RelayState> {
    relay.iter_mut().chain(spares.iter_mut()).find(|r| r.params.addr == addr)
}

impl Link {
    /// The relay at `addr`, in use or spare.
    pub(super) fn relay_ref(&self, addr: SocketAddr) -> Option<&RelayState> {
        self.relay.iter().chain(self.spares.iter()).find(|r| r.params.addr == addr)
    }

    /// The relay at `addr`, in use or spare, mutably.
    pub(super) fn relay_mut(&mut self, addr: SocketAddr) -> Option<&mut RelayState> {
        self.relay.iter_mut().chain(self.spares.iter_mut()).find(|r| r.params.addr == addr)
    }

    /// Every relay's address (the one in use first).
    pub(super) fn relay_addrs(&self) -> Vec<SocketAddr> {
        self.relay.iter().chain(self.spares.iter()).map(|r| r.params.addr).collect()
    }

    /// The shard issued a fresh relay token (tokens expire; the shard refreshes them over the
    /// client's shard connection before they do), or moves the link: this relay is the one
    /// to use. Re-binds at once with the new token; the bind counter carries on, so the relay
    /// sees no replay. A relay the link does not use yet is bound beside the one in use, and
    /// the link moves to it once the relay confirms both sides bound there; the old one
    /// carries the traffic until then (nothing is lost or duplicated: renet re-sends).
    pub fn update_relay(&mut self, now: Instant, params: RelayParams) {
        self.primary = Some(params.addr);
        self.add_relay(now, params);
        self.trim_relays(now);
        self.select_relay(now);
        self.flush(now);
    }

    /// The shard named a standby relay for this link (or refreshed its token): keep it bound
    /// beside the one in use, and send through it when that one stops answering.
    pub fn update_standby(&mut self, now: Instant, params: RelayParams) {
        self.standby = Some(params.addr);
        self.add_relay(now, params);
        self.trim_relays(now);
        self.select_relay(now);
        self.flush(now);
    }

    /// The relays this link keeps bound: the one in use first, then its spares.
    pub fn relays(&self) -> Vec<SocketAddr> {
        self.relay_addrs()
    }

    fn add_relay(&mut self, now: Instant, params: RelayParams) {
        let addr = params.addr;
        match self.relay_mut(addr) {
            Some(r) => {
                r.params = params;
                r.left_at = None;
            }
            None => {
                let last = self.relay.iter().chain(self.spares.iter()).map(|r| r.last_counter).max();
                let mut r = RelayState::new(now, params, last.unwrap_or(0));
                if self.relay.is_none() {
                    self.relay = Some(r);
                } else {
                    // Not used before the relay confirms it: the one in use carries on.
                    r.optimistic_until = None;
                    self.spares.push(r);
                }
            }
        }
        self.start_bind_at(now, addr);
    }

    /// Forget spares the shard no longer names, once they have lingered (and the oldest
    /// beyond [`MAX_RELAYS`]).
    pub(super) fn trim_relays(&mut self, now: Instant) {
        let (primary, standby) = (self.primary, self.standby);
        let named = |r: &RelayState| Some(r.params.addr) == primary || Some(r.params.addr) == standby;
        self.spares.retain(|r| named(r) || r.left_at.is_some_and(|t| now < t + RELAY_LINGER));
        while self.spares.len() + 1 > MAX_RELAYS {
            let i = self.spares.iter().position(|r| !named(r)).unwrap_or(0);
            self.spares.remove(i);
        }
    }

    /// Use spare `i` from now on; the relay in use becomes a spare.
    fn switch_relay(&mut self, now: Instant, i: usize) {
        let Some(active) = self.relay.as_mut() else { return };
        std::mem::swap(active, &mut self.spares[i]);
        self.spares[i].left_at = Some(now);
        if let Some(r) = self.relay.as_mut() {
            r.left_at = None;
        }
        self.stats.relay_switches += 1;
        self.dirty = true;
    }

    /// Send through the best relay that works (see the module docs): the shard's primary if
    /// confirmed and not suspect, else the one in use if it is, else the standby, else any.
    pub(super) fn select_relay(&mut self, now: Instant) {
        if self.spares.is_empty() {
            return;
        }
        let ok = |r: &RelayState| r.confirmed() && r.suspected_at.is_none();
        let spare =
            |want: Option<SocketAddr>| self.spares.iter().position(|r| Some(r.params.addr) == want && ok(r));
        let pick = match spare(self.primary) {
            Some(i) => Some(i),
            None if self.relay.as_ref().is_some_and(ok) => None,
            None => spare(self.standby).or_else(|| self.spares.iter().position(ok)),
        };
        if let Some(i) = pick {
            self.switch_relay(now, i);
        }
    }

    /// How long our sends through the relay in use may go unanswered before it is suspect
    /// (only with a spare to turn to): two RTTs plus the peer's ack delay, at least twice
    /// `path_suspect_after` — a relay on a path we share with many is not dropped for a late
    /// answer, yet a dead one is left within ~0.3–0.4 s.
    pub(super) fn relay_suspect_timeout(&self) -> Duration {
        let rtt = self.rtt().unwrap_or(Duration::ZERO);
        (self.cfg.path_suspect_after * 2).max(rtt * 2 + self.cfg.ack_delay)
    }

    /// When the relay in use turns suspect if nothing answers, while it carries the traffic
    /// and a spare could take over.
    pub(super) fn relay_suspect_at(&self) -> Option<Instant> {
        if self.spares.is_empty() || !matches!(self.path(), super::Path::Relayed { .. }) {
            return None;
        }
        let r = self.relay.as_ref().filter(|r| r.suspected_at.is_none())?;
        Some(r.live.unanswered_since? + self.relay_suspect_timeout())
    }

    /// Suspect the relay in use when our sends through it went unanswered too long: ask it
    /// (a Bind) and turn to a spare meanwhile.
    pub(super) fn relay_suspicion(&mut self, now: Instant) {
        if self.relay_suspect_at().is_some_and(|t| now >= t) {
            self.suspect_relay(now);
        }
    }

    fn suspect_relay(&mut self, now: Instant) {
        let Some(r) = self.relay.as_mut() else { return };
        r.suspected_at = Some(now);
        self.stats.relay_suspicions += 1;
        if r.attempt.is_none() {
            self.start_bind(now);
        }
        self.select_relay(now);
    }

    /// The peer's data came through the relay at `from`: if that is not the relay we use
    /// and none of its data came through ours for `path_ping_after`, the peer left ours
    /// (it found it dead, or moved): follow it at once.
    pub(super) fn follow_peer_relay(&mut self, now: Instant, from: SocketAddr) {
        let Some(active) = self.relay.as_ref().filter(|r| r.params.addr != from) else { return };
        let left = active.last_peer_data.is_some_and(|t| now >= t + self.cfg.path_ping_after);
        let Some(i) = self.spares.iter().position(|r| r.params.addr == from) else { return };
        let target = &self.spares[i];
        if !left || !target.bound || target.suspected_at.is_some() {
            return;
        }
        if let Some(r) = self.relay.as_mut() {
            r.suspected_at = Some(now);
            self.stats.relay_suspicions += 1;
            if r.attempt.is_none() {
                self.start_bind(now);
            }
        }
        if let Some(i) = self.spares.iter().position(|r| r.params.addr == from) {
            self.switch_relay(now, i);
        }
    }

    /// Bind retries and refreshes of the relay at `addr` (in use or spare).
    pub(super) fn bind_timer(&mut self, now: Instant, addr: SocketAddr) {
        let (keepalive, tries_max, rto) =
            (self.cfg.keepalive, self.cfg.relay_bind_tries, self.cfg.relay_bind_rto);
        let Some(r) = self.relay_mut(addr) else { return };
        match r.attempt {
            Some(a) if now >= a.next_retry => {
                if a.tries >= tries_max {
                    // This attempt failed; the relay binding is presumed gone.
                    r.attempt = None;
                    r.bound = false;
                    r.optimistic_until = None;
                    r.next_refresh = now + rto * 8;
                } else {
                    let tries = a.tries + 1;
                    r.attempt = Some(BindAttempt {
                        first_counter: a.first_counter,
                        tries,
                        next_retry: now + rto * 2u32.pow(tries.min(6)),
                    });
                    self.send_bind_at(now, addr);
                }
            }
            None if (keepalive || !r.bound) && now >= r.next_refresh => self.start_bind_at(now, addr),
            _ => {}
        }
    }

    /// The earliest bind retry or refresh of the spares.
    pub(super) fn spares_timeout(&self) -> Option<Instant> {
        self.spares
            .iter()
            .filter_map(|r| match r.attempt {
                Some(a) => Some(a.next_retry),
                None if self.cfg.keepalive || !r.bound => Some(r.next_refresh),
                None => None,
            })
            .min()
    }
}
