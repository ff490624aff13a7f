//! Binlog positions, and which one a group may store: never past a change that was delivered
//! and not acked yet, whatever order the acks come in.
//!
//! A row change cannot be resumed from on its own: a rows event needs the table map event
//! before it, in the same transaction. So a change's place is its transaction's start
//! (`file`, `pos`) and how many changes of the topic's table come before it in that
//! transaction (`skip`); reading again from a stored [`Position`] starts at the transaction and
//! skips that many changes.

use std::collections::BTreeMap;

/// A place in the binlog to read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The binlog file.
    pub file: String,
    /// The offset in `file` of the transaction's first event.
    pub pos: u64,
    /// Changes of the topic's table in that transaction to skip (already acked).
    pub skip: u64,
}

impl Position {
    /// The position of the change after this one.
    pub fn next(&self) -> Position {
        Position {
            skip: self.skip + 1,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if self.skip > 0 {
            write!(f, "+{}", self.skip)?;
        }
        Ok(())
    }
}

/// The changes of one subscription in flight, in delivery order.
#[derive(Debug, Default)]
pub struct Window {
    /// Delivery number to the change's position and whether it was acked.
    in_flight: BTreeMap<u64, (Position, bool)>,
    next_seq: u64,
    /// The position to store when nothing is in flight: after the last acked change.
    after_acked: Option<Position>,
}

impl Window {
    /// A change at `at` was delivered; returns its delivery number for [`Window::acked`].
    pub fn delivered(&mut self, at: Position) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(seq, (at, false));
        seq
    }

    /// The change `seq` was acked; returns the position to store now (where to read from
    /// after a restart: the first change still unacked, or after the last one), or `None` when
    /// the ack does not move it (an earlier change is still unacked).
    pub fn acked(&mut self, seq: u64) -> Option<Position> {
        match self.in_flight.get_mut(&seq) {
            Some(entry) => entry.1 = true,
            None => return None,
        }
        let mut moved = false;
        while let Some(entry) = self.in_flight.first_entry() {
            if !entry.get().1 {
                break;
            }
            let (at, _) = entry.remove();
            self.after_acked = Some(at.next());
            moved = true;
        }
        if !moved {
            return None;
        }
        self.resume_point()
    }

    /// Whether no delivered change waits for its ack.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Where to read from again so that nothing unacked is missed: the first unacked change,
    /// else after the last acked one; `None` if nothing was delivered yet.
    pub fn resume_point(&self) -> Option<Position> {
        match self.in_flight.first_key_value() {
            Some((_, (at, _))) => Some(at.clone()),
            None => self.after_acked.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pos: u64, skip: u64) -> Position {
        Position {
            file: "bin.000001".into(),
            pos,
            skip,
        }
    }

    #[test]
    fn in_order_acks_store_the_next_change() {
        let mut w = Window::default();
        let a = w.delivered(at(100, 0));
        assert_eq!(w.acked(a), Some(at(100, 1)));
        let b = w.delivered(at(100, 1));
        assert_eq!(w.acked(b), Some(at(100, 2)));
        let c = w.delivered(at(300, 0));
        assert_eq!(w.acked(c), Some(at(300, 1)));
        assert!(w.is_empty());
    }

    #[test]
    fn never_past_an_unacked_change() {
        let mut w = Window::default();
        let a = w.delivered(at(100, 0));
        let b = w.delivered(at(200, 0));
        let c = w.delivered(at(200, 1));
        assert_eq!(w.acked(c), None, "a is still unacked");
        assert_eq!(w.acked(a), Some(at(200, 0)), "up to b, the first unacked");
        assert_eq!(w.resume_point(), Some(at(200, 0)));
        assert_eq!(w.acked(b), Some(at(200, 2)), "b and c done");
        assert_eq!(w.acked(b), None, "a second ack is ignored");
    }

    #[test]
    fn resume_point_before_anything_is_none() {
        let w = Window::default();
        assert_eq!(w.resume_point(), None);
        assert_eq!(at(5, 2).to_string(), "bin.000001:5+2");
    }
}
