//! The dead-letter and corrupt trees kept under their `max_bytes`: a
//! [`SpoolStore`] that, before an entry goes into one of them, removes that
//! tree's oldest entries until the new one fits, and counts their events in
//! `tailrace_events_dropped_total{reason="dead_letter_evicted"|"corrupt_evicted"}`.
//! The pending tree is bounded by the sink itself (`when_full`), which
//! knows which entries are being replayed.

use std::sync::Arc;

use tracing::warn;

use tailrace_api::metrics::Dropped;
use tailrace_api::spool::{header, SpoolStore, SpoolTree, Usage};
use tailrace_api::StoreError;

use crate::config::SpoolConfig;

/// The reason evictions from `tree` are counted under.
pub(crate) fn evicted_reason(tree: SpoolTree) -> &'static str {
    match tree {
        SpoolTree::DeadLetter => "dead_letter_evicted",
        SpoolTree::Corrupt => "corrupt_evicted",
        SpoolTree::Pending => "spool_full",
    }
}

pub(crate) struct Bounded {
    inner: Arc<dyn SpoolStore>,
    dead_letter_max_bytes: u64,
    corrupt_max_bytes: u64,
    dropped: Dropped,
}

impl Bounded {
    pub(crate) fn wrap(
        inner: Arc<dyn SpoolStore>,
        config: &SpoolConfig,
        dropped: Dropped,
    ) -> Arc<dyn SpoolStore> {
        // Exported at 0 from the start, so `increase()` sees the first.
        for tree in [SpoolTree::DeadLetter, SpoolTree::Corrupt] {
            dropped.add(evicted_reason(tree), 0);
        }
        Arc::new(Bounded {
            inner,
            dead_letter_max_bytes: config.dead_letter_max_bytes,
            corrupt_max_bytes: config.corrupt_max_bytes,
            dropped,
        })
    }

    fn limit(&self, tree: SpoolTree) -> Option<u64> {
        match tree {
            SpoolTree::Pending => None,
            SpoolTree::DeadLetter => Some(self.dead_letter_max_bytes),
            SpoolTree::Corrupt => Some(self.corrupt_max_bytes),
        }
    }

    /// Removes the oldest entries of `tree` until `size` more bytes fit
    /// (an entry larger than the limit still goes into an empty tree).
    fn make_room(&self, tree: SpoolTree, sink: &str, size: u64) -> Result<(), StoreError> {
        let Some(max_bytes) = self.limit(tree) else {
            return Ok(());
        };
        let (mut entries, mut events) = (0u64, 0u64);
        loop {
            let usage = self.inner.usage(tree, sink);
            if usage.entries == 0 || usage.bytes + size <= max_bytes {
                break;
            }
            let Some((id, oldest)) = self.inner.scan(tree, sink, None, 1)?.pop() else {
                break;
            };
            self.inner.remove(tree, sink, id)?;
            entries += 1;
            // A corrupt entry's header may not read; it still held events.
            events += header(&oldest).map_or(0, |h| u64::from(h.events));
        }
        if entries > 0 {
            let reason = evicted_reason(tree);
            self.dropped.add(reason, events);
            warn!(
                sink,
                tree = tree.name(),
                entries,
                events,
                max_bytes,
                reason,
                "tree full; removed its oldest entries"
            );
        }
        Ok(())
    }
}

impl SpoolStore for Bounded {
    fn push(&self, tree: SpoolTree, sink: &str, entry: &[u8]) -> Result<u64, StoreError> {
        self.make_room(tree, sink, entry.len() as u64)?;
        self.inner.push(tree, sink, entry)
    }

    fn scan(
        &self,
        tree: SpoolTree,
        sink: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.scan(tree, sink, after, limit)
    }

    fn remove(&self, tree: SpoolTree, sink: &str, id: u64) -> Result<(), StoreError> {
        self.inner.remove(tree, sink, id)
    }

    fn replace(
        &self,
        tree: SpoolTree,
        sink: &str,
        id: u64,
        entry: &[u8],
    ) -> Result<(), StoreError> {
        self.inner.replace(tree, sink, id, entry)
    }

    fn move_to(
        &self,
        from: SpoolTree,
        to: SpoolTree,
        sink: &str,
        id: u64,
    ) -> Result<(), StoreError> {
        if from != to && self.limit(to).is_some() {
            let moving = self.inner.scan(from, sink, id.checked_sub(1), 1)?;
            if let Some((_, entry)) = moving.iter().find(|(found, _)| *found == id) {
                self.make_room(to, sink, entry.len() as u64)?;
            }
        }
        self.inner.move_to(from, to, sink, id)
    }

    fn usage(&self, tree: SpoolTree, sink: &str) -> Usage {
        self.inner.usage(tree, sink)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn refuses_entries(&self) -> Option<String> {
        self.inner.refuses_entries()
    }

    fn generation(&self) -> u64 {
        self.inner.generation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Memory;
    use tailrace_api::spool::{encode, EntryRecord};

    fn entry(events: usize) -> Vec<u8> {
        let recs = (0..events).map(|_| EntryRecord {
            payload: &[b'x'; 100],
            ..Default::default()
        });
        encode(recs, "", 0)
    }

    /// A bounded spool over memory, with room for `fits` entries of
    /// `entry(1)` in each of the dead-letter and corrupt trees.
    fn bounded(fits: u64) -> (Arc<dyn SpoolStore>, tailrace_api::Metrics) {
        let metrics = tailrace_api::Metrics::new();
        let config = SpoolConfig {
            dead_letter_max_bytes: fits * entry(1).len() as u64,
            corrupt_max_bytes: fits * entry(1).len() as u64,
            ..SpoolConfig::default()
        };
        let dropped = metrics.sink("k").dropped.clone();
        (
            Bounded::wrap(Arc::new(Memory::default()), &config, dropped),
            metrics,
        )
    }

    fn ids(spool: &dyn SpoolStore, tree: SpoolTree) -> Vec<u64> {
        let all = spool.scan(tree, "k", None, usize::MAX).unwrap();
        all.into_iter().map(|(id, _)| id).collect()
    }

    fn dropped(metrics: &tailrace_api::Metrics, reason: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, metrics.registry()).unwrap();
        let line = format!("tailrace_events_dropped_total{{component=\"k\",reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn dead_letters_beyond_max_bytes_evict_the_oldest_and_count_them() {
        let (spool, metrics) = bounded(3);
        assert_eq!(dropped(&metrics, "dead_letter_evicted"), 0, "declared at 0");
        let pushed: Vec<u64> = (0..5)
            .map(|_| spool.push(SpoolTree::DeadLetter, "k", &entry(1)).unwrap())
            .collect();
        assert_eq!(ids(&*spool, SpoolTree::DeadLetter), pushed[2..]);
        assert_eq!(dropped(&metrics, "dead_letter_evicted"), 2);
        // The pending tree is the sink's to bound, not this wrapper's.
        for _ in 0..5 {
            spool.push(SpoolTree::Pending, "k", &entry(1)).unwrap();
        }
        assert_eq!(ids(&*spool, SpoolTree::Pending).len(), 5);
    }

    #[test]
    fn an_entry_moved_into_a_full_corrupt_tree_evicts_by_its_size() {
        let (spool, metrics) = bounded(2);
        assert_eq!(dropped(&metrics, "corrupt_evicted"), 0, "declared at 0");
        let pending: Vec<u64> = (0..4)
            .map(|_| spool.push(SpoolTree::Pending, "k", &entry(1)).unwrap())
            .collect();
        for id in &pending[..2] {
            spool
                .move_to(SpoolTree::Pending, SpoolTree::Corrupt, "k", *id)
                .unwrap();
        }
        assert_eq!(dropped(&metrics, "corrupt_evicted"), 0);
        spool
            .move_to(SpoolTree::Pending, SpoolTree::Corrupt, "k", pending[2])
            .unwrap();
        assert_eq!(ids(&*spool, SpoolTree::Corrupt), pending[1..3]);
        assert_eq!(dropped(&metrics, "corrupt_evicted"), 1);
        // A damaged entry whose header does not read is evicted too (its
        // events unknown: counted as 0).
        let mut bad = entry(1);
        bad[0] = b'X';
        let id = spool.push(SpoolTree::Pending, "k", &bad).unwrap();
        spool
            .move_to(SpoolTree::Pending, SpoolTree::Corrupt, "k", id)
            .unwrap();
        assert_eq!(ids(&*spool, SpoolTree::Corrupt), vec![pending[2], id]);
    }

    #[test]
    fn an_entry_larger_than_the_limit_still_goes_into_an_empty_tree() {
        let (spool, _) = bounded(1);
        spool.push(SpoolTree::DeadLetter, "k", &entry(1)).unwrap();
        let big = spool.push(SpoolTree::DeadLetter, "k", &entry(50)).unwrap();
        assert_eq!(ids(&*spool, SpoolTree::DeadLetter), vec![big]);
    }
}
