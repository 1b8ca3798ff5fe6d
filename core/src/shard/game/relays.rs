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
    /// and of its standby (`RelayStandby`), valid until `expiry` (the relay's only
    /// `with_primary`).
    #[allow(clippy::too_many_arguments)]
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
            let gain = |from: u32, to: u32| {
                let g = from.saturating_sub(to);
                g >= MOVE_MARGIN_MS && g * 5 >= from
            };
            let better = gain(c_cur, c_best) && self.tick >= pair.moved_tick + every;
            if best != cur && (dead || better) {
                let standby = r.iter().copied().find(|x| *x != best);
                moves.push((*k, pair.link, best, standby, true));
                continue;
            }
            // The standby changes only for a clearly better one (or when it is unreachable or
            // missing): every change costs both sides a new binding.
            let alt = r.iter().copied().find(|x| *x != cur);
            let c = |x: u8| cost(a, b, usize::from(x));
            let replace = match (pair.standby.filter(|s| *s != cur), alt) {
                (None, Some(_)) => true,
                (Some(s), Some(x)) => x != s && (c(s) >= UNREACHABLE_COST && c(x) < c(s) || gain(c(s), c(x))),
                _ => false,
            };
            if replace {
                moves.push((*k, pair.link, cur, alt, false));
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

#[cfg(test)]
mod tests {
    use super::super::tests::to_clients;
    use super::*;
    use crate::proto::shard::{ClientMessage, InternalMessage};
    use crate::relay::verify_token;
    use crate::shard::game::GameConfig;

    const UNIX: u64 = 1_790_000_000;

    fn rules() -> GameRules {
        let relays = (0..3u8)
            .map(|id| ShardRelay {
                addr: SocketAddr::from(([198, 51, 100, 10 + id], 3478)),
                keys: KeySchedule::for_relay(&[7; 32], id, Duration::ZERO),
            })
            .collect();
        GameRules { cfg: GameConfig::default(), relays, heartbeat: Duration::from_millis(250) }
    }

    fn from(w: &mut GameWorld, bus: &mut Bus, r: &GameRules, client: u64, msg: ClientMessage) {
        w.handle(bus, r, InternalMessage::FromClient { client, msg });
    }

    fn report(w: &mut GameWorld, bus: &mut Bus, r: &GameRules, client: u64, rtts: &[(u8, u16)]) {
        from(w, bus, r, client, ClientMessage::RelayRtts { rtts: rtts.to_vec() });
        w.step(bus, r, UNIX);
    }

    /// `(client, relay address)` of every `RelayRefresh` (true) / `RelayStandby` (false).
    fn relay_msgs(out: &[(u64, ShardMessage)]) -> Vec<(u64, bool, SocketAddr)> {
        out.iter()
            .filter_map(|(c, m)| match m {
                ShardMessage::RelayRefresh { relay, .. } => Some((*c, true, relay.addr)),
                ShardMessage::RelayStandby { relay, .. } => Some((*c, false, relay.addr)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pairs_get_the_lowest_rtt_sum_hostile_reports_are_bounded_and_moves_have_hysteresis() {
        let r = rules();
        let addr = |i: usize| r.relays[i].addr;
        let mut bus = Bus::default();
        let mut w = GameWorld::new(1, 0, [1; 32]);
        for c in [1, 2] {
            let join = InternalMessage::Join {
                client: c,
                player: PlayerId(c),
                name: format!("p{c}"),
                zone: 0,
                x: c as f32,
                y: 0.0,
                candidates: Vec::new(),
                nat: None,
                party: None,
                ip: None,
            };
            w.handle(&mut bus, &r, join);
            from(&mut w, &mut bus, &r, c, ClientMessage::KeepLinks { links: Vec::new() });
        }
        let out = to_clients(&mut bus);
        let lists: Vec<_> = out.iter().filter(|(_, m)| matches!(m, ShardMessage::Relays { .. })).collect();
        assert_eq!(lists.len(), 2, "each player is told the relays: {out:?}");
        // Not introduced before both reported (or a second passed).
        w.step(&mut bus, &r, UNIX);
        assert_eq!(w.pairs().count(), 0);
        report(&mut w, &mut bus, &r, 1, &[(0, 10), (1, 100), (2, 40)]);
        assert_eq!(w.pairs().count(), 0, "still waiting for player 2");
        // Player 2's report is hostile: 10,000 entries, unknown indices, repeats (the first
        // of each index counts).
        let mut hostile: Vec<(u8, u16)> = vec![(9, 1); 10_000];
        hostile.splice(0..0, [(0, 90), (1, 10), (2, 40), (2, 1), (255, 0)]);
        report(&mut w, &mut bus, &r, 2, &hostile);
        let (_, pair) = w.pairs().next().expect("introduced");
        // Sums: relay 0 100, relay 1 110, relay 2 80: relay 2, though it is nobody's nearest.
        assert_eq!((pair.relay, pair.standby), (Some(2), Some(0)));
        let out = to_clients(&mut bus);
        for (c, m) in &out {
            if let ShardMessage::PeerIntro { params, .. } = m {
                let relay = params.relay.as_ref().expect("a relay");
                assert_eq!(relay.addr, addr(2), "client {c}");
                let side = params.side;
                let at = |i: usize| {
                    verify_token(&r.relays[i].keys.relay_keys(UNIX), params.link, side, &relay.token)
                };
                assert!(
                    at(2).is_ok() && at(0).is_err() && at(1).is_err(),
                    "relay 2's token, refused elsewhere"
                );
            }
        }
        let standby: Vec<_> = relay_msgs(&out).into_iter().filter(|m| !m.1).collect();
        assert_eq!(standby, vec![(1, false, addr(0)), (2, false, addr(0))]);
        // A gain below the margin moves nothing: relay 0's sum 70 against 80.
        report(&mut w, &mut bus, &r, 2, &[(0, 60), (1, 10), (2, 40)]);
        assert!(relay_msgs(&to_clients(&mut bus)).is_empty());
        // A big gain within MOVE_EVERY of the introduction waits for a report after it.
        report(&mut w, &mut bus, &r, 2, &[(0, 20), (1, 10), (2, 40)]);
        assert!(relay_msgs(&to_clients(&mut bus)).iter().all(|m| !m.1), "no move yet");
        for _ in 0..MOVE_EVERY.as_secs() * u64::from(r.cfg.tick_hz) {
            w.step(&mut bus, &r, UNIX);
        }
        to_clients(&mut bus);
        report(&mut w, &mut bus, &r, 2, &[(0, 20), (1, 10), (2, 40)]);
        let moved = relay_msgs(&to_clients(&mut bus));
        assert_eq!(
            moved,
            vec![(1, true, addr(0)), (2, true, addr(0)), (1, false, addr(2)), (2, false, addr(2))]
        );
        assert_eq!(w.stats.relay_moves, 1);
        // Relay 0 unreachable for player 1: the pair moves at once, hysteresis or not.
        report(&mut w, &mut bus, &r, 1, &[(0, RTT_UNREACHABLE), (1, 100), (2, 40)]);
        let moved = relay_msgs(&to_clients(&mut bus));
        assert_eq!(moved.iter().filter(|m| m.1).map(|m| m.2).collect::<Vec<_>>(), vec![addr(2), addr(2)]);
        assert_eq!(w.stats.relay_moves, 2);
        assert_eq!(w.pairs().next().map(|(_, p)| (p.relay, p.standby)), Some((Some(2), Some(1))));
    }
}
