//! Replaying a spool tree one record at a time, for the running sink and
//! for `tailrace spool replay` alike.
//!
//! The replayer hands out entries oldest first ([`Replayer::take`]), keeps
//! what of each failed and may yet succeed ([`Replayer::failed`]; what
//! Kafka refuses for good comes back as a dead letter instead), and once
//! every record of an entry is settled, removes the entry or rewrites it
//! with only the kept records ([`Replayer::finish`]), so a record Kafka
//! acknowledged is never sent again from the spool.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use rdkafka::error::KafkaError;
use tailrace_api::spool::{decode, EntryError, SpoolRecord, SpoolStore, SpoolTree};
use tailrace_api::{SinkMetrics, StoreError};
use tracing::error;

use super::{entry_of, reason, refused_for_good, Diverted, Failure, InFlight};

/// An entry being replayed: its records, and what settles them.
pub(crate) struct Taken {
    pub id: u64,
    pub inflight: Arc<InFlight>,
    pub records: Vec<SpoolRecord>,
}

/// What [`Replayer::finish`] did.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    /// Entries whose every record was delivered (or dead-lettered).
    pub removed: u64,
    /// Entries rewritten with the records that failed and may yet succeed.
    pub rewritten: u64,
    /// Entries that could not be rewritten or removed: replayed whole
    /// again.
    pub kept_whole: u64,
}

pub(crate) struct Replayer {
    tree: SpoolTree,
    in_flight: HashSet<u64>,
    /// Per entry in flight: its records that failed and may yet succeed.
    kept: HashMap<u64, Vec<Diverted>>,
    done: Arc<Mutex<Vec<(u64, bool)>>>,
    /// The last entry handed out; the next one is after it.
    cursor: Option<u64>,
}

impl Replayer {
    pub fn new(tree: SpoolTree) -> Replayer {
        Replayer {
            tree,
            in_flight: HashSet::new(),
            kept: HashMap::new(),
            done: Arc::default(),
            cursor: None,
        }
    }

    /// Entries handed out and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_in_flight(&self, id: u64) -> bool {
        self.in_flight.contains(&id)
    }

    /// Some entry in flight holds records to be tried again: in strict
    /// order no later entry may go before them.
    pub fn holds_failed(&self) -> bool {
        !self.kept.is_empty()
    }

    /// Starts again from the oldest entry (after a pass, or a rewrite).
    pub fn rewind(&mut self) {
        self.cursor = None;
    }

    /// The next entry after the last one handed out, or `None` at the end
    /// of the tree. A damaged entry is reported to `damaged` and set aside
    /// in the corrupt tree (or left where it is, when that is the tree
    /// being replayed: moving it onto itself would delete it); an empty
    /// one is removed.
    pub fn take(
        &mut self,
        spool: &dyn SpoolStore,
        sink: &str,
        damaged: &mut dyn FnMut(u64, &EntryError),
    ) -> Result<Option<Taken>, StoreError> {
        loop {
            let Some((id, entry)) = spool.scan(self.tree, sink, self.cursor, 1)?.pop() else {
                return Ok(None);
            };
            self.cursor = Some(id);
            if self.in_flight.contains(&id) {
                continue;
            }
            let (header, records) = match decode(&entry) {
                Ok(decoded) => decoded,
                Err(e) => {
                    damaged(id, &e);
                    if self.tree != SpoolTree::Corrupt {
                        spool.move_to(self.tree, SpoolTree::Corrupt, sink, id)?;
                    }
                    continue;
                }
            };
            if records.is_empty() {
                spool.remove(self.tree, sink, id)?;
                continue;
            }
            let inflight = InFlight::for_entry(id, self.done.clone(), &header, &records);
            self.in_flight.insert(id);
            return Ok(Some(Taken {
                id,
                inflight,
                records,
            }));
        }
    }

    /// A replayed record that may yet succeed: it stays in its entry, which
    /// is rewritten with such records once every record is settled.
    pub fn keep(&mut self, d: Diverted, metrics: &SinkMetrics) {
        let Some(id) = d.inflight.entry() else {
            return;
        };
        let inflight = d.inflight.clone();
        inflight
            .failed
            .store(true, std::sync::atomic::Ordering::Release);
        self.kept.entry(id).or_default().push(d);
        inflight.divert(metrics);
    }

    /// A replayed record whose delivery failed: kept for another try, or,
    /// when Kafka refused it for good, returned to go to the dead-letter
    /// tree (whoever stores it settles it).
    pub fn failed(
        &mut self,
        f: Failure,
        sink_topic: &str,
        metrics: &SinkMetrics,
    ) -> Option<Diverted> {
        if refused_for_good(&f.error) {
            let why = f.error.to_string();
            return Some(f.into_diverted(sink_topic, why));
        }
        let why = reason(&f.error);
        self.keep(f.into_diverted(sink_topic, why), metrics);
        None
    }

    /// A replayed record librdkafka would not take (for a reason other
    /// than a full queue): as [`Replayer::failed`].
    pub fn unsent(
        &mut self,
        inflight: &Arc<InFlight>,
        r: &SpoolRecord,
        error: &KafkaError,
        metrics: &SinkMetrics,
    ) -> Option<Diverted> {
        if refused_for_good(error) {
            return Some(Diverted::unsent(inflight, r, &error.to_string()));
        }
        self.keep(Diverted::unsent(inflight, r, &reason(error)), metrics);
        None
    }

    /// Removes the entries whose every record was acknowledged, and
    /// rewrites in place (keeping its place in the order) each one some
    /// of whose records failed with just those.
    pub fn finish(&mut self, spool: &dyn SpoolStore, sink: &str) -> Finished {
        let done = std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()));
        let mut finished = Finished::default();
        for (id, failed) in done {
            self.in_flight.remove(&id);
            let kept = self.kept.remove(&id).unwrap_or_default();
            if failed && !kept.is_empty() {
                let kept = in_entry_order(spool, self.tree, sink, id, kept);
                let rewritten = spool
                    .replace(self.tree, sink, id, &entry_of(&kept))
                    .and_then(|()| spool.flush());
                match rewritten {
                    Ok(()) => finished.rewritten += 1,
                    Err(e) => {
                        finished.kept_whole += 1;
                        error!(sink = %sink, entry = id, error = %e, "cannot rewrite a partly replayed spool entry; it will be replayed whole again")
                    }
                }
            } else {
                match spool.remove(self.tree, sink, id) {
                    Ok(()) => finished.removed += 1,
                    Err(e) => {
                        finished.kept_whole += 1;
                        error!(sink = %sink, entry = id, error = %e, "cannot remove a replayed spool entry; it will be replayed again")
                    }
                }
            }
        }
        finished
    }
}

/// `kept` in the order its records have in entry `id`: records come back
/// in the order they failed (an unsent tail may be kept before the head
/// that was sent and taken back later), and the rewritten entry must keep
/// the order they were read in. Records are matched by payload and key;
/// equal records are interchangeable. When the entry cannot be read, the
/// order is left as it is.
fn in_entry_order(
    spool: &dyn SpoolStore,
    tree: SpoolTree,
    sink: &str,
    id: u64,
    kept: Vec<Diverted>,
) -> Vec<Diverted> {
    let original = match spool.scan(tree, sink, id.checked_sub(1), 1) {
        Ok(found) => found.into_iter().find(|(at, _)| *at == id),
        Err(_) => None,
    };
    let Some(Ok((_, records))) = original.map(|(_, entry)| decode(&entry)) else {
        return kept;
    };
    let mut at: HashMap<(Bytes, Option<Bytes>), VecDeque<usize>> = HashMap::new();
    for (i, r) in records.into_iter().enumerate() {
        at.entry((r.payload, r.key)).or_default().push_back(i);
    }
    let mut keyed: Vec<(usize, Diverted)> = kept
        .into_iter()
        .map(|d| {
            let p = at.get_mut(&(d.payload.clone(), d.key.clone()));
            (p.and_then(|p| p.pop_front()).unwrap_or(usize::MAX), d)
        })
        .collect();
    keyed.sort_by_key(|(p, _)| *p);
    keyed.into_iter().map(|(_, d)| d).collect()
}
