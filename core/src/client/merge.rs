//! One reliable stream per peer out of two routes: the link and the Game server.
//!
//! While a peer's link has no path (connecting, or a path that went silent), a reliable
//! message goes through the Game server (`ToPeer`) *and* into the link, which holds it until
//! it has a path. The server copy carries its index in the link's reliable stream
//! ([`LinkSeq`](crate::proto::shard::LinkSeq)); the receiver delivers each index once, in
//! order, from whichever route brings it first. So a message inside a shard that dies still
//! arrives (by the link), a server copy that overtakes a link copy is not delivered twice,
//! and a route switch does not reorder the stream.
//!
//! Indices count the reliable messages handed to one link (sender) and delivered by it
//! (receiver), both from 0 when the link is created, so the link itself needs no extra bytes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Server copies held ahead of a gap (per peer) before they are delivered anyway.
pub const HOLD_MAX: usize = 64;
/// How long a server copy waits for the link to fill the gap before it, before it is
/// delivered anyway (about a link's failure timeout: a link that has not delivered by then
/// is not going to).
pub const HOLD_TIME: Duration = Duration::from_secs(5);

/// The reliable stream to and from one peer over one link.
#[derive(Debug, Default)]
pub struct RouteMerge {
    /// Reliable messages we handed to the link: the index of the next one.
    sent: u32,
    /// Reliable messages the link delivered to us: the index of the next one.
    link_received: u32,
    /// Index of the next reliable message the game gets.
    next: u32,
    /// Server copies that arrived ahead of `next`, waiting for the link to fill the gap.
    held: BTreeMap<u32, Bytes>,
    /// When the oldest held copy arrived.
    held_since: Option<Instant>,
    /// Copies dropped because the other route had delivered them.
    pub duplicates: u64,
    /// Gaps given up on: held copies delivered although the messages before them never came.
    pub gaps: u64,
}

impl RouteMerge {
    /// A reliable message was queued on the link: its index (`None` once the u32 index space
    /// is used up, after 4 billion messages on one link: from then on the server copies are
    /// delivered as they come, like unreliable ones).
    pub fn sent_on_link(&mut self) -> Option<u32> {
        let i = self.sent;
        self.sent = self.sent.checked_add(1)?;
        Some(i)
    }

    /// A reliable message the link delivered: appended to `out` unless the server route
    /// brought it already (then with whatever held copies follow it).
    pub fn on_link(&mut self, data: Bytes, out: &mut Vec<Bytes>) {
        let i = self.link_received;
        self.link_received = self.link_received.saturating_add(1);
        if i < self.next {
            self.duplicates += 1;
            return;
        }
        // The link is complete and in order, so `i == next` here.
        out.push(data);
        self.next = i.saturating_add(1);
        self.release(out);
    }

    /// A server copy with index `seq`. `link_alive`: the link may still deliver (it exists and
    /// is not broken); if not, nothing will fill a gap, so the copy is delivered at once.
    pub fn on_server(&mut self, now: Instant, seq: u32, data: Bytes, link_alive: bool, out: &mut Vec<Bytes>) {
        if seq < self.next || self.held.contains_key(&seq) {
            self.duplicates += 1;
            return;
        }
        if seq == self.next {
            out.push(data);
            self.next = seq.saturating_add(1);
            self.release(out);
            return;
        }
        self.held.insert(seq, data);
        self.held_since.get_or_insert(now);
        if !link_alive || self.held.len() > HOLD_MAX {
            self.flush(out);
        }
    }

    /// Deliver every held copy in order, giving up on the gaps before them (the link broke,
    /// or they waited [`HOLD_TIME`]).
    pub fn flush(&mut self, out: &mut Vec<Bytes>) {
        for (seq, data) in std::mem::take(&mut self.held) {
            if seq >= self.next {
                if seq > self.next {
                    self.gaps += 1;
                }
                out.push(data);
                self.next = seq.saturating_add(1);
            }
        }
        self.held_since = None;
    }

    /// When held copies stop waiting for the link.
    pub fn deadline(&self) -> Option<Instant> {
        self.held_since.map(|t| t + HOLD_TIME)
    }

    /// Held copies that `next` has reached go out, stale ones are dropped.
    fn release(&mut self, out: &mut Vec<Bytes>) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let (seq, data) = entry.remove_entry();
            if seq == self.next {
                out.push(data);
                self.next = seq.saturating_add(1);
            } else {
                self.duplicates += 1;
            }
        }
        if self.held.is_empty() {
            self.held_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(i: u32) -> Bytes {
        Bytes::from(i.to_le_bytes().to_vec())
    }

    fn ids(out: &[Bytes]) -> Vec<u32> {
        out.iter().map(|d| u32::from_le_bytes(d[..4].try_into().unwrap())).collect()
    }

    #[test]
    fn each_index_is_delivered_once_in_order_whichever_route_brings_it_first() {
        let now = Instant::now();
        let mut m = RouteMerge::default();
        let mut out = Vec::new();
        // Server copies 0, 1 arrive; 2 and 3 died with the shard; 4 waits for the gap.
        m.on_server(now, 0, b(0), true, &mut out);
        m.on_server(now, 1, b(1), true, &mut out);
        m.on_server(now, 4, b(4), true, &mut out);
        assert_eq!(ids(&out), [0, 1]);
        assert_eq!(m.deadline(), Some(now + HOLD_TIME));
        // The link comes up and delivers its whole stream 0..6.
        for i in 0..6 {
            m.on_link(b(i), &mut out);
        }
        assert_eq!(ids(&out), [0, 1, 2, 3, 4, 5]);
        assert_eq!((m.duplicates, m.gaps), (3, 0), "link 0, 1 and the held 4's link copy");
        assert_eq!(m.deadline(), None);
        // A late server copy of anything delivered is dropped.
        m.on_server(now, 3, b(3), true, &mut out);
        assert_eq!(ids(&out).len(), 6);
    }

    #[test]
    fn a_server_copy_that_overtakes_the_link_or_lags_behind_it_is_not_repeated() {
        let now = Instant::now();
        let mut m = RouteMerge::default();
        let mut out = Vec::new();
        m.on_link(b(0), &mut out);
        m.on_link(b(1), &mut out);
        m.on_server(now, 0, b(0), true, &mut out);
        m.on_server(now, 2, b(2), true, &mut out);
        m.on_link(b(2), &mut out);
        m.on_link(b(3), &mut out);
        m.on_server(now, 3, b(3), true, &mut out);
        assert_eq!(ids(&out), [0, 1, 2, 3]);
        assert_eq!(m.duplicates, 3);
    }

    #[test]
    fn without_a_live_link_or_after_the_hold_the_server_copies_go_out_and_the_gap_is_counted() {
        let now = Instant::now();
        let mut m = RouteMerge::default();
        let mut out = Vec::new();
        m.on_server(now, 0, b(0), true, &mut out);
        m.on_server(now, 2, b(2), false, &mut out);
        assert_eq!(ids(&out), [0, 2]);
        assert_eq!(m.gaps, 1);
        // Held then flushed at the deadline: in order, the link's late copies are stale.
        m.on_server(now, 5, b(5), true, &mut out);
        m.on_server(now, 4, b(4), true, &mut out);
        assert_eq!(ids(&out), [0, 2]);
        m.flush(&mut out);
        assert_eq!(ids(&out), [0, 2, 4, 5]);
        // A flood of held copies never holds more than HOLD_MAX.
        let mut m = RouteMerge::default();
        let mut out = Vec::new();
        for i in 1..=(HOLD_MAX as u32 + 1) {
            m.on_server(now, i, b(i), true, &mut out);
        }
        assert_eq!(out.len(), HOLD_MAX + 1);
        assert_eq!(m.held.len(), 0);
    }

    #[test]
    fn the_sender_numbers_what_it_queues_on_the_link_from_zero() {
        let mut m = RouteMerge::default();
        assert_eq!((m.sent_on_link(), m.sent_on_link()), (Some(0), Some(1)));
        m.sent = u32::MAX;
        assert_eq!(m.sent_on_link(), None);
    }
}
