//! Which offset of a partition may be committed: never past a message that was delivered and
//! not acked yet, whatever order the acks come in.

use std::collections::{BTreeSet, HashMap};

/// The delivered-but-unacked offsets of each partition of one subscription, and the highest
/// acked one.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    pending: BTreeSet<i64>,
    /// One past the highest offset acked so far.
    next: Option<i64>,
}

impl Offsets {
    /// `offset` of `partition` was handed to the consumer.
    pub fn delivered(&mut self, partition: i32, offset: i64) {
        self.partitions
            .entry(partition)
            .or_default()
            .pending
            .insert(offset);
    }

    /// `offset` of `partition` was acked; returns the offset to commit now (the next one to
    /// read after a restart): the lowest still unacked, or one past the highest acked when
    /// nothing is pending. `None` when the ack does not move it (an earlier message is
    /// still unacked) or the partition was revoked since the delivery.
    pub fn acked(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        let before = p.commit_point();
        p.pending.remove(&offset);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        let after = p.commit_point();
        (after != before).then_some(after).flatten()
    }

    /// The partition is no longer this consumer's (a rebalance): forget it, so acks of its
    /// in-flight messages commit nothing.
    pub fn revoked(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

impl Partition {
    fn commit_point(&self) -> Option<i64> {
        match self.pending.first() {
            Some(&lowest) => self.next.map(|n| n.min(lowest)),
            None => self.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_acks_commit_one_past_each() {
        let mut o = Offsets::default();
        o.delivered(0, 5);
        assert_eq!(o.acked(0, 5), Some(6));
        o.delivered(0, 6);
        assert_eq!(o.acked(0, 6), Some(7));
    }

    #[test]
    fn never_past_an_unacked_message_of_the_same_partition() {
        let mut o = Offsets::default();
        for off in 10..13 {
            o.delivered(0, off);
        }
        o.delivered(1, 3);
        // 11 and 12 acked before 10: nothing may be committed past 10.
        assert_eq!(o.acked(0, 12), Some(10));
        assert_eq!(o.acked(0, 11), None, "still 10");
        // Another partition is independent.
        assert_eq!(o.acked(1, 3), Some(4));
        assert_eq!(o.acked(0, 10), Some(13));
    }

    #[test]
    fn a_gap_held_by_a_later_unacked_message_commits_up_to_it() {
        let mut o = Offsets::default();
        o.delivered(0, 1);
        o.delivered(0, 2);
        assert_eq!(o.acked(0, 1), Some(2));
        o.delivered(0, 3);
        assert_eq!(o.acked(0, 3), None, "2 is still unacked");
        assert_eq!(o.acked(0, 2), Some(4));
    }

    #[test]
    fn a_revoked_partition_is_forgotten() {
        let mut o = Offsets::default();
        o.delivered(2, 7);
        o.revoked(2);
        assert_eq!(
            o.acked(2, 7),
            None,
            "nothing committed for a partition not ours"
        );
    }
}
