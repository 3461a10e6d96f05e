//! The acknowledgement ledger of a positioned source.
//!
//! A source that keeps a position (a file's offset, a journal cursor) sends
//! batches in order and learns, in any order, that each one is safe. The
//! position it may save is the end of the longest run of sent batches that
//! are all acknowledged: never past a batch still in flight, or a crash
//! would lose it. [`Ledger`] is that rule and nothing else, with no I/O:
//! the source tells it what it sent ([`Ledger::sent`]) and what was
//! acknowledged ([`Ledger::acknowledged`]), and asks what to save
//! ([`Ledger::to_save`]). The model test below checks it against a plain
//! list of sent and acknowledged batches over random interleavings.

use std::collections::VecDeque;

#[derive(Debug)]
struct InFlight<P> {
    batch: u64,
    end: P,
    done: bool,
}

/// Sent batches with the position each ends at, and the committed
/// position: where everything before it was acknowledged.
#[derive(Debug)]
pub struct Ledger<P> {
    in_flight: VecDeque<InFlight<P>>,
    committed: P,
    /// `committed` changed since [`Ledger::mark_saved`].
    unsaved: bool,
}

impl<P> Ledger<P> {
    /// Starts at `committed` (a saved position, or where reading starts),
    /// which needs no saving.
    pub fn new(committed: P) -> Ledger<P> {
        Ledger {
            in_flight: VecDeque::new(),
            committed,
            unsaved: false,
        }
    }

    /// A batch ending at `end` was sent. Batch ids increase.
    pub fn sent(&mut self, batch: u64, end: P) {
        debug_assert!(
            self.in_flight.back().is_none_or(|p| p.batch < batch),
            "batch ids increase"
        );
        self.in_flight.push_back(InFlight {
            batch,
            end,
            done: false,
        });
    }

    /// Every record of `batch` is safe: moves the committed position over
    /// the acknowledged prefix. Returns whether it moved. A batch this
    /// ledger does not hold (acknowledged twice, or sent by another) is
    /// ignored.
    pub fn acknowledged(&mut self, batch: u64) -> bool {
        if let Ok(i) = self.in_flight.binary_search_by_key(&batch, |p| p.batch) {
            self.in_flight[i].done = true;
        }
        let mut moved = false;
        while self.in_flight.front().is_some_and(|p| p.done) {
            let p = self.in_flight.pop_front().expect("front exists");
            self.committed = p.end;
            moved = true;
        }
        self.unsaved |= moved;
        moved
    }

    /// Everything before this was acknowledged.
    pub fn committed(&self) -> &P {
        &self.committed
    }

    /// The committed position, if it changed since it was last saved.
    pub fn to_save(&self) -> Option<&P> {
        self.unsaved.then_some(&self.committed)
    }

    /// The store holds the committed position.
    pub fn mark_saved(&mut self) {
        self.unsaved = false;
    }

    /// Batches sent and not yet acknowledged along with all before them.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The ids of those batches, oldest first.
    pub fn batches(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_flight.iter().map(|p| p.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Send a batch of this many records.
        Send(u64),
        /// Acknowledge the in-flight batch at this index (modulo).
        Ack(usize),
        /// Acknowledge a batch again, or one never sent.
        Stray(u64),
        /// The store saved what `to_save` returned.
        Save,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..100).prop_map(Op::Send),
            4 => any::<usize>().prop_map(Op::Ack),
            1 => (0u64..1000).prop_map(Op::Stray),
            1 => Just(Op::Save),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// After every step: the committed position is the end of the
        /// longest acknowledged prefix of what was sent (never past a batch
        /// in flight), it only moves forward, and it asks to be saved
        /// exactly when it moved since the last save.
        #[test]
        fn committed_is_the_end_of_the_acknowledged_prefix(
            start in 0u64..1000,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut ledger = Ledger::new(start);
            // The model: every batch sent, its end, and whether acknowledged.
            let mut sent: Vec<(u64, u64, bool)> = Vec::new();
            let mut end = start;
            let mut saved = start;
            for op in ops {
                let before = *ledger.committed();
                match op {
                    Op::Send(n) => {
                        end += n;
                        let id = sent.len() as u64;
                        sent.push((id, end, false));
                        ledger.sent(id, end);
                    }
                    Op::Ack(i) => {
                        let open: Vec<usize> =
                            (0..sent.len()).filter(|&j| !sent[j].2).collect();
                        if !open.is_empty() {
                            let j = open[i % open.len()];
                            sent[j].2 = true;
                            ledger.acknowledged(sent[j].0);
                        }
                    }
                    Op::Stray(k) => {
                        // A batch acknowledged already, or one never sent.
                        let acked: Vec<u64> =
                            sent.iter().filter(|s| s.2).map(|s| s.0).collect();
                        let id = if !acked.is_empty() && k % 2 == 0 {
                            acked[k as usize % acked.len()]
                        } else {
                            sent.len() as u64 + k
                        };
                        prop_assert!(!ledger.acknowledged(id), "a stray ack moved the position");
                    }
                    Op::Save => {
                        if let Some(&p) = ledger.to_save() {
                            saved = p;
                        }
                        ledger.mark_saved();
                    }
                }
                let prefix = sent.iter().take_while(|s| s.2).last().map_or(start, |s| s.1);
                prop_assert_eq!(*ledger.committed(), prefix);
                prop_assert!(*ledger.committed() >= before);
                let first_open = sent.iter().find(|s| !s.2).map(|s| s.1);
                if let Some(open_end) = first_open {
                    prop_assert!(*ledger.committed() < open_end, "past a batch in flight");
                }
                prop_assert_eq!(ledger.in_flight(), sent.iter().skip_while(|s| s.2).count());
                prop_assert_eq!(ledger.to_save().is_some(), *ledger.committed() != saved);
            }
        }
    }
}
