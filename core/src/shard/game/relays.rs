//! Several relays per shard (issue #15): which relay each introduced pair uses.
//!
//! Each client times its round trip to every relay of the shard ([`ShardMessage::Relays`],
//! answered by [`ClientMessage::RelayRtts`]). For a pair the Game server picks the relay
//! with the lowest `RTT(A→R) + RTT(R→B)` — the relayed path's round trip, not each client's
//! nearest — and names the second lowest as the link's warm standby
//! ([`ShardMessage::RelayStandby`]), which both sides keep bound and fail over to on their
//! own when the relay in use stops answering (within ~0.3–0.4 s, see `link::relays`).
//!
//! When a player's report arrives, its pairs are weighed again: a pair moves to a better
//! relay (`RelayRefresh` naming it) when the sum drops by [`MOVE_MARGIN_MS`] or a fifth,
//! at most once per [`MOVE_EVERY`] (hysteresis against RTT noise), and at once when one of
//! its players cannot reach the relay. The link keeps the old relay until both sides are
//! bound on the new one, so a move loses and duplicates nothing.
//!
//! A player that never reported (an older client, or before its first round) counts
//! [`UNKNOWN_RTT_MS`] for every relay, so the other player's times decide; without any
//! report the pair gets relay 0, the shard's first.
//!
//! [`ShardMessage::Relays`]: crate::proto::shard::ShardMessage::Relays
//! [`ClientMessage::RelayRtts`]: crate::proto::shard::ClientMessage::RelayRtts
//! [`ShardMessage::RelayStandby`]: crate::proto::shard::ShardMessage::RelayStandby

use std::net::SocketAddr;
use std::time::Duration;

use super::{GamePlayer, GameRules, GameWorld};
use crate::proto::peer::{LinkId, Side};
use crate::proto::shard::{MAX_RELAYS, PlayerId, RTT_UNREACHABLE, ShardMessage};
use crate::relay::KeySchedule;
use crate::shard::bus::Bus;
use crate::shard::intro::IntroRelay;

/// The RTT a player that has not reported counts for every relay.
pub const UNKNOWN_RTT_MS: u32 = 500;
/// What an unreachable relay costs (above any real sum).
const UNREACHABLE_COST: u32 = 100_000;
/// A pair moves only when its sum improves by this much (and by a fifth).
pub const MOVE_MARGIN_MS: u32 = 20;
/// A pair moves at most this often unless its relay became unreachable.
pub const MOVE_EVERY: Duration = Duration::from_secs(10);

/// One relay of the shard: where clients bind, and the key schedule its tokens are minted
/// with ([`KeySchedule::for_relay`]; relay 0's is the single-relay schedule).
#[derive(Debug, Clone)]
pub struct ShardRelay {
    /// Its public address (relay datagrams and STUN).
    pub addr: SocketAddr,
    /// Its token keys.
    pub keys: KeySchedule,
}

/// One player's cost of relay `r`: its reported RTT, [`UNKNOWN_RTT_MS`] if it has none.
fn side_cost(g: &GamePlayer, r: usize) -> u32 {
    match g.relay_rtts.get(r).copied().flatten() {
        Some(RTT_UNREACHABLE) => UNREACHABLE_COST,
        Some(ms) => u32::from(ms),
        None => UNKNOWN_RTT_MS,
    }
}

/// A pair's cost of relay `r`: the relayed path's round trip, A → R → B and back.
fn cost(a: &GamePlayer, b: &GamePlayer, r: usize) -> u32 {
    side_cost(a, r) + side_cost(b, r)
}

/// The relays by cost for the pair, cheapest first (ties: lower index).
fn ranked(a: &GamePlayer, b: &GamePlayer, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n.min(MAX_RELAYS) as u8).collect();
    v.sort_by_key(|r| (cost(a, b, usize::from(*r)), *r));
    v
}

impl GameWorld {
    /// A client's `RelayRtts`: kept by relay index (at most the shard's relays; unknown
    /// indices and repeats ignored), and its pairs weighed again on the next tick.
    pub(super) fn relay_rtts(&mut self, rules: &GameRules, p: PlayerId, rtts: &[(u8, u16)]) {
        let n = rules.relays.len().min(MAX_RELAYS);
        let Some(g) = self.players.get_mut(&p) else { return };
        let mut v = vec![None; n];
        for &(i, ms) in rtts.iter().take(MAX_RELAYS) {
            if let Some(slot) = v.get_mut(usize::from(i)) {
                slot.get_or_insert(ms);
            }
        }
        g.relay_rtts = v;
        g.rtt_reported = true;
        g.reweigh = true;
    }

    /// Tell a player the shard's relays (with more than one), so it measures them.
    pub(super) fn send_relays(bus: &mut Bus, rules: &GameRules, client: u64) {
        if rules.relays.len() > 1 {
            let relays = rules.relays.iter().take(MAX_RELAYS).map(|r| r.addr).collect();
            Self::to_client(bus, client, ShardMessage::Relays { relays });
        }
    }

    /// The relay and the standby for the pair `k` (`None`: the shard has no relay).
    pub(super) fn choose_relays(
        &self,
        rules: &GameRules,
        k: (PlayerId, PlayerId),
    ) -> Option<(u8, Option<u8>)> {
        if rules.relays.is_empty() {
            return None;
        }
        let (Some(a), Some(b)) = (self.players.get(&k.0), self.players.get(&k.1)) else {
            return Some((0, (rules.relays.len() > 1).then_some(1)));
        };
        let r = ranked(a, b, rules.relays.len());
        Some((r[0], r.get(1).copied()))
    }

    /// Mint `relay`'s tokens for both sides of `link`, valid until `expiry`.
    fn relay_intro<'k>(
        rules: &GameRules,
        keys: &'k crate::relay::TokenKeys,
        relay: u8,
        expiry: u64,
    ) -> IntroRelay<'k> {
        IntroRelay { addr: rules.relays[usize::from(relay)].addr, keys, expiry_unix: expiry as u32 }
    }

    /// Send both sides of the pair `k` on `link` the tokens of its relay (`RelayRefresh`)
    /// and of its standby (`RelayStandby`), valid until `expiry`.
    pub(super) fn send_pair_relays(
        &self,
        bus: &mut Bus,
        rules: &GameRules,
        k: (PlayerId, PlayerId),
        link: LinkId,
        (relay, standby): (u8, Option<u8>),
        unix: u64,
        expiry: u64,
        with_primary: bool,
    ) {
        for (r, primary) in [(Some(relay), true), (standby, false)] {
            let Some(r) = r.filter(|_| with_primary || !primary) else { continue };
            let minting = rules.relays[usize::from(r)].keys.minting_keys(unix);
            let intro = Self::relay_intro(rules, &minting, r, expiry);
            for (p, side) in [(k.0, Side::A), (k.1, Side::B)] {
                let Some(g) = self.players.get(&p) else { continue };
                let relay = intro.params(link, side);
                let msg = if primary {
                    ShardMessage::RelayRefresh { link, relay }
                } else {
                    ShardMessage::RelayStandby { link, relay }
                };
                Self::to_client(bus, g.client, msg);
            }
        }
    }

    /// Weigh the pairs of players whose RTT report arrived again; move those that gain
    /// enough (see the module docs).
    pub(super) fn reweigh_pairs(&mut self, bus: &mut Bus, rules: &GameRules, unix: u64) {
        if rules.relays.len() < 2 || !self.players.values().any(|g| g.reweigh) {
            return;
        }
        let every = MOVE_EVERY.as_secs() * u64::from(rules.cfg.tick_hz.max(1));
        let life = u64::from(rules.cfg.relay_token_secs);
        let mut moves = Vec::new();
        for (k, pair) in &self.pairs {
            let (Some(a), Some(b)) = (self.players.get(&k.0), self.players.get(&k.1)) else { continue };
            let Some(cur) = pair.relay.filter(|_| a.reweigh || b.reweigh) else { continue };
            let r = ranked(a, b, rules.relays.len());
            let (best, c_best, c_cur) = (r[0], cost(a, b, usize::from(r[0])), cost(a, b, usize::from(cur)));
            let dead = c_cur >= UNREACHABLE_COST && c_best < c_cur;
            let gain = c_cur.saturating_sub(c_best);
            let better = gain >= MOVE_MARGIN_MS && gain * 5 >= c_cur && self.tick >= pair.moved_tick + every;
            let standby = r.iter().copied().find(|x| *x != best);
            if best != cur && (dead || better) {
                moves.push((*k, pair.link, best, standby, true));
            } else if pair.standby != r.iter().copied().find(|x| *x != cur) {
                let standby = r.iter().copied().find(|x| *x != cur);
                moves.push((*k, pair.link, cur, standby, false));
            }
        }
        for g in self.players.values_mut() {
            g.reweigh = false;
        }
        for (k, link, relay, standby, moved) in moves {
            let expiry = unix + life;
            self.send_pair_relays(bus, rules, k, link, (relay, standby), unix, expiry, moved);
            if let Some(pair) = self.pairs.get_mut(&k) {
                (pair.relay, pair.standby) = (Some(relay), standby);
                if moved {
                    pair.moved_tick = self.tick;
                    pair.token_expiry = expiry;
                    self.stats.relay_moves += 1;
                }
            }
        }
    }
}
