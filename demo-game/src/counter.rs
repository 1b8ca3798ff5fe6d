//! Per-peer accounting of the bot's sequence-numbered reliable stream: how many sequence
//! numbers are missing (`gaps`) and how many arrived twice (`dups`).
//!
//! Messages may arrive out of order: a message sent through the Game server while a link
//! was connecting can be overtaken by a later one on the fresh mesh path. So a hole below
//! the highest number seen is a gap only until the late message fills it; `gaps()` is the
//! number of holes *now*. At the end of a run (after the senders stopped and the network
//! drained) it is the number of messages lost.

use std::collections::BTreeSet;

/// Gap and duplicate counter for one sender's sequence numbers (starting at 0).
#[derive(Debug, Clone, Default)]
pub struct SeqCounter {
    /// Every number below this one has arrived.
    contiguous: u64,
    /// Numbers above `contiguous` that have arrived (out of order).
    ahead: BTreeSet<u64>,
    /// Distinct numbers received.
    distinct: u64,
    /// Numbers received again.
    dups: u64,
}

impl SeqCounter {
    /// Record sequence number `seq`. Returns `false` when it is a duplicate.
    pub fn record(&mut self, seq: u64) -> bool {
        if seq < self.contiguous || !self.ahead.insert(seq) {
            self.dups += 1;
            return false;
        }
        self.distinct += 1;
        while self.ahead.remove(&self.contiguous) {
            self.contiguous += 1;
        }
        true
    }

    /// Missing numbers below the highest one received.
    pub fn gaps(&self) -> u64 {
        match self.ahead.last() {
            Some(&max) => max + 1 - self.distinct,
            None => self.contiguous - self.distinct,
        }
    }

    /// Numbers received more than once (each extra copy counts).
    pub fn dups(&self) -> u64 {
        self.dups
    }

    /// Distinct numbers received.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_gaps_or_dups() {
        let mut c = SeqCounter::default();
        for s in 0..100 {
            assert!(c.record(s));
        }
        assert_eq!((c.gaps(), c.dups(), c.distinct()), (0, 0, 100));
    }

    #[test]
    fn a_missing_number_is_a_gap_until_it_arrives() {
        let mut c = SeqCounter::default();
        for s in [0, 1, 3, 4, 7] {
            c.record(s);
        }
        assert_eq!(c.gaps(), 3, "2, 5 and 6 are missing");
        c.record(5);
        assert_eq!(c.gaps(), 2);
        c.record(2);
        c.record(6);
        assert_eq!((c.gaps(), c.dups()), (0, 0));
        assert_eq!(c.distinct(), 8);
    }

    #[test]
    fn a_stream_that_starts_late_counts_the_missing_head() {
        let mut c = SeqCounter::default();
        c.record(3);
        assert_eq!(c.gaps(), 3, "0, 1, 2 never arrived");
    }

    #[test]
    fn duplicates_below_and_above_the_contiguous_mark_are_counted() {
        let mut c = SeqCounter::default();
        for s in [0, 1, 1, 5, 5, 0] {
            c.record(s);
        }
        assert_eq!(c.dups(), 3);
        assert_eq!(c.gaps(), 3, "2, 3, 4");
        assert!(!c.record(5));
        assert!(c.record(2));
    }
}
