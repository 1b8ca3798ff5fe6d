//! What the relay did with every datagram: forwarded, answered, or dropped by reason.

use thiserror::Error;

/// Why the relay dropped a datagram. Every drop is counted in [`RelayStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[repr(u8)]
pub enum DropReason {
    /// Too short, too long or with an invalid field (e.g. side not 0/1, a peer datagram
    /// shorter than header + tag).
    #[error("malformed")]
    Malformed = 0,
    /// Not a datagram a relay accepts: STUN, BindAck, the reserved BindConfirm, or an
    /// unknown first byte.
    #[error("unexpected kind")]
    UnexpectedKind,
    /// Data for a (link, side) with no live binding (never bound, idle-expired, or only a
    /// replay floor left).
    #[error("unknown binding")]
    UnknownBinding,
    /// Data for a bound (link, side) from another address than the bound one.
    #[error("wrong source address")]
    WrongSource,
    /// Data from a bound side while the other side is not bound.
    #[error("peer not bound")]
    PeerNotBound,
    /// A Bind whose token has expired, or data on a binding whose token has expired.
    #[error("expired token")]
    ExpiredToken,
    /// A Bind whose token expires further ahead than `max_token_lifetime`.
    #[error("token lifetime too long")]
    TokenTooLong,
    /// A Bind whose token names a key id the relay does not hold.
    #[error("unknown token key")]
    UnknownKey,
    /// A Bind whose token mac does not verify for its link and side (forged token, or a
    /// token of another link or side).
    #[error("bad token")]
    BadToken,
    /// A Bind whose own mac does not verify under the token's bind key.
    #[error("bad bind mac")]
    BadMac,
    /// A Bind whose counter is not above the last accepted one for its (link, side).
    #[error("replayed bind")]
    Replay,
    /// The sending side of the link exceeded its packet or byte quota.
    #[error("link quota exceeded")]
    LinkQuota,
    /// The sending address exceeded its packet or byte quota (all its links together).
    #[error("source quota exceeded")]
    SourceQuota,
    /// Forwarding would send an unvalidated address more bytes than received from it.
    #[error("anti-amplification limit")]
    Amplification,
    /// A Bind needed a new entry while the binding table is full.
    #[error("binding table full")]
    TableFull,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 15;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::UnexpectedKind,
        DropReason::UnknownBinding,
        DropReason::WrongSource,
        DropReason::PeerNotBound,
        DropReason::ExpiredToken,
        DropReason::TokenTooLong,
        DropReason::UnknownKey,
        DropReason::BadToken,
        DropReason::BadMac,
        DropReason::Replay,
        DropReason::LinkQuota,
        DropReason::SourceQuota,
        DropReason::Amplification,
        DropReason::TableFull,
    ];

    /// A stable metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnexpectedKind => "unexpected_kind",
            DropReason::UnknownBinding => "unknown_binding",
            DropReason::WrongSource => "wrong_source",
            DropReason::PeerNotBound => "peer_not_bound",
            DropReason::ExpiredToken => "expired_token",
            DropReason::TokenTooLong => "token_too_long",
            DropReason::UnknownKey => "unknown_key",
            DropReason::BadToken => "bad_token",
            DropReason::BadMac => "bad_mac",
            DropReason::Replay => "replay",
            DropReason::LinkQuota => "link_quota",
            DropReason::SourceQuota => "source_quota",
            DropReason::Amplification => "amplification",
            DropReason::TableFull => "table_full",
        }
    }
}

/// Counters of one relay (plain integers: read them, diff them, export them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams handed to the relay.
    pub received_packets: u64,
    /// Their bytes.
    pub received_bytes: u64,
    /// Peer datagrams forwarded.
    pub forwarded_packets: u64,
    /// Their bytes (equal in and out: the relay adds nothing).
    pub forwarded_bytes: u64,
    /// Binds accepted (new, refreshed or moved bindings).
    pub binds_accepted: u64,
    /// BindAcks sent in answer to a Bind.
    pub bind_acks_sent: u64,
    /// Unsolicited BindAcks sent to an already-bound side when its peer bound.
    pub peer_notifications_sent: u64,
    /// Such notifications not sent because the receiver is unvalidated and out of budget
    /// (it learns `peer_bound` from its next BindAck instead).
    pub peer_notifications_suppressed: u64,
    /// Binds that moved a live binding to a new address.
    pub bindings_moved: u64,
    /// Bindings that ended by idle timeout or token expiry.
    pub bindings_expired: u64,
    /// Addresses validated by a returned cookie.
    pub addresses_validated: u64,
    /// Binds carrying a non-zero cookie that did not verify (stale or for another address;
    /// the Bind itself is still accepted, the address just stays unvalidated).
    pub stale_cookies: u64,
    /// Gauge: live bindings now.
    pub active_bindings: u64,
    /// Gauge: (link, side) entries kept, live or replay floor.
    pub table_entries: u64,
    /// Peer datagrams carried by an accepted BindData and forwarded at once (the other side
    /// was bound). Not in `forwarded_*`: the BindData itself counts as answered.
    pub bind_data_forwarded: u64,
    /// Peer datagrams carried by a BindData while the other side was not bound yet, held
    /// for it (`RelayConfig::early_hold`).
    pub early_held: u64,
    /// Held datagrams delivered when the other side bound.
    pub early_delivered: u64,
    /// Datagrams carried by a BindData that went nowhere: over a quota, the
    /// anti-amplification budget or the hold's size, or held past `early_hold`.
    pub early_dropped: u64,
    dropped: [u64; DropReason::COUNT],
}

impl RelayStats {
    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    /// Datagrams dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// `(reason, count)` for every reason.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.dropped(r)))
    }

    /// Number of counters in [`RelayStats::counters`].
    pub const COUNTERS: usize = 18;

    /// Every counter except the drops, in field order: what a driver publishes (e.g. into
    /// atomics for another thread) and rebuilds with [`RelayStats::from_counters`].
    pub fn counters(&self) -> [u64; Self::COUNTERS] {
        [
            self.received_packets,
            self.received_bytes,
            self.forwarded_packets,
            self.forwarded_bytes,
            self.binds_accepted,
            self.bind_acks_sent,
            self.peer_notifications_sent,
            self.peer_notifications_suppressed,
            self.bindings_moved,
            self.bindings_expired,
            self.addresses_validated,
            self.stale_cookies,
            self.active_bindings,
            self.table_entries,
            self.bind_data_forwarded,
            self.early_held,
            self.early_delivered,
            self.early_dropped,
        ]
    }

    /// Stats from [`RelayStats::counters`] and drops indexed like [`DropReason::ALL`].
    pub fn from_counters(c: [u64; Self::COUNTERS], dropped: [u64; DropReason::COUNT]) -> RelayStats {
        let [
            received_packets,
            received_bytes,
            forwarded_packets,
            forwarded_bytes,
            binds_accepted,
            bind_acks_sent,
            peer_notifications_sent,
            peer_notifications_suppressed,
            bindings_moved,
            bindings_expired,
            addresses_validated,
            stale_cookies,
            active_bindings,
            table_entries,
            bind_data_forwarded,
            early_held,
            early_delivered,
            early_dropped,
        ] = c;
        RelayStats {
            received_packets,
            received_bytes,
            forwarded_packets,
            forwarded_bytes,
            binds_accepted,
            bind_acks_sent,
            peer_notifications_sent,
            peer_notifications_suppressed,
            bindings_moved,
            bindings_expired,
            addresses_validated,
            stale_cookies,
            active_bindings,
            table_entries,
            bind_data_forwarded,
            early_held,
            early_delivered,
            early_dropped,
            dropped,
        }
    }

    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_from_counters() {
        let mut s = RelayStats { forwarded_bytes: 7, table_entries: 3, ..RelayStats::default() };
        s.count_drop(DropReason::ALL[1]);
        let back =
            RelayStats::from_counters(s.counters(), std::array::from_fn(|i| s.dropped(DropReason::ALL[i])));
        assert_eq!(back, s);
    }

    #[test]
    fn relay_drop_reasons_index_their_own_counter() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut s = RelayStats::default();
        s.count_drop(DropReason::Replay);
        s.count_drop(DropReason::Replay);
        assert_eq!(s.dropped(DropReason::Replay), 2);
        assert_eq!(s.dropped_total(), 2);
        assert_eq!(s.drops().filter(|(_, n)| *n > 0).count(), 1);
    }
}
