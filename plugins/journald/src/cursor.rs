//! Which journal cursor may be saved: the one of the last entry of the
//! longest prefix of sent batches that Kafka acknowledged.
//!
//! [`CursorBook`] is the contract's [`Ledger`] over journal positions
//! (`None`: nothing committed yet), with the names the reader uses.

use tailrace_api::Ledger;

/// A position in the journal: the cursor of an entry and its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub cursor: String,
    /// `__REALTIME_TIMESTAMP` of the entry, in microseconds.
    pub realtime_us: u64,
}

#[derive(Debug)]
pub struct CursorBook(Ledger<Option<Position>>);

impl CursorBook {
    /// Starts from a saved position (`None`: nothing saved yet).
    pub fn new(saved: Option<Position>) -> CursorBook {
        CursorBook(Ledger::new(saved))
    }

    /// A batch whose last entry is `last` was sent. Batch ids increase.
    pub fn sent(&mut self, batch: u64, last: Position) {
        self.0.sent(batch, Some(last));
    }

    /// Every record of `batch` is safe; moves the committed position over
    /// the acknowledged prefix.
    pub fn acknowledged(&mut self, batch: u64) {
        self.0.acknowledged(batch);
    }

    /// The position to write to the store, if it changed since the last
    /// [`CursorBook::saved`].
    pub fn to_save(&self) -> Option<&Position> {
        self.0.to_save().and_then(Option::as_ref)
    }

    /// The store holds what [`CursorBook::to_save`] returned.
    pub fn saved(&mut self) {
        self.0.mark_saved();
    }

    pub fn committed(&self) -> Option<&Position> {
        self.0.committed().as_ref()
    }

    /// Batches sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u64) -> Position {
        Position {
            cursor: format!("c{n}"),
            realtime_us: n,
        }
    }

    /// Sends batches 0..sent (batch i ends at entry i), acknowledges in
    /// the order given, and checks the committed entry after each.
    fn check(sent: u64, acks: &[u64], committed: &[Option<u64>]) {
        let mut book = CursorBook::new(None);
        for b in 0..sent {
            book.sent(b, at(b));
        }
        for (a, want) in acks.iter().zip(committed) {
            book.acknowledged(*a);
            assert_eq!(
                book.committed().map(|p| p.realtime_us),
                *want,
                "after ack {a} of {acks:?}"
            );
        }
    }

    #[test]
    fn commits_only_an_acknowledged_prefix() {
        check(3, &[0, 1, 2], &[Some(0), Some(1), Some(2)]);
        check(3, &[2, 1, 0], &[None, None, Some(2)]);
        check(3, &[1, 0, 2], &[None, Some(1), Some(2)]);
        // unknown and repeated acknowledgements change nothing
        check(2, &[7, 1, 1, 0], &[None, None, None, Some(1)]);
    }

    #[test]
    fn saves_each_new_position_once() {
        let mut book = CursorBook::new(Some(at(9)));
        assert_eq!(book.to_save(), None, "the loaded position is in the store");
        book.sent(0, at(10));
        book.sent(1, at(11));
        assert_eq!(book.in_flight(), 2);
        book.acknowledged(0);
        assert_eq!(book.to_save(), Some(&at(10)));
        book.saved();
        assert_eq!(book.to_save(), None);
        book.acknowledged(1);
        assert_eq!(book.to_save(), Some(&at(11)));
        assert_eq!(book.in_flight(), 0);
    }
}
