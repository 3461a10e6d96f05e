//! An in-memory [`SpoolStore`] for the crate's tests (the bounded trees'
//! tests and the sink's model test): ids in push order, one map of trees,
//! the entries not yet flushed (lost by [`Memory::crash`]), and faults the
//! model test turns on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use tailrace_api::spool::{header, SpoolStore, SpoolTree, Usage};
use tailrace_api::StoreError;

/// Entries by tree name and id.
type Trees = BTreeMap<(&'static str, u64), Vec<u8>>;

/// What the store does wrong, when told to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Fault {
    #[default]
    None,
    /// Takes no new entry (`refuses_entries`, as below `min_free_bytes`).
    RefusesEntries,
    /// Every push fails.
    WritesFail,
    /// Every flush fails.
    FlushesFail,
}

/// An in-memory spool: the last id given, and the trees.
#[derive(Default)]
pub(crate) struct Memory(
    Mutex<(u64, Trees)>,
    Mutex<(BTreeSet<(&'static str, u64)>, Fault)>,
);

impl Memory {
    pub fn set_fault(&self, fault: Fault) {
        self.1.lock().unwrap().1 = fault;
    }

    /// The process dies: what was written and not flushed is gone.
    pub fn crash(&self) {
        let lost = std::mem::take(&mut self.1.lock().unwrap().0);
        let mut m = self.0.lock().unwrap();
        for key in lost {
            m.1.remove(&key);
        }
    }

    /// The entries of `tree` that are flushed.
    pub fn durable(&self, tree: SpoolTree) -> Vec<Vec<u8>> {
        let unflushed = &self.1.lock().unwrap().0;
        let m = self.0.lock().unwrap();
        m.1.range((tree.name(), 0)..=(tree.name(), u64::MAX))
            .filter(|(key, _)| !unflushed.contains(key))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn fault(&self) -> Fault {
        self.1.lock().unwrap().1
    }
}

fn failed(what: &str) -> StoreError {
    StoreError(format!("the model store fails every {what}"))
}

impl SpoolStore for Memory {
    fn push(&self, tree: SpoolTree, _: &str, entry: &[u8]) -> Result<u64, StoreError> {
        if self.fault() == Fault::WritesFail {
            return Err(failed("write"));
        }
        let mut m = self.0.lock().unwrap();
        m.0 += 1;
        let id = m.0;
        m.1.insert((tree.name(), id), entry.to_vec());
        self.1.lock().unwrap().0.insert((tree.name(), id));
        Ok(id)
    }
    fn scan(
        &self,
        tree: SpoolTree,
        _: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let m = self.0.lock().unwrap();
        let from = after.map_or(0, |a| a + 1);
        Ok(m.1
            .range((tree.name(), from)..=(tree.name(), u64::MAX))
            .take(limit)
            .map(|((_, id), v)| (*id, v.clone()))
            .collect())
    }
    fn remove(&self, tree: SpoolTree, _: &str, id: u64) -> Result<(), StoreError> {
        self.0.lock().unwrap().1.remove(&(tree.name(), id));
        Ok(())
    }
    fn replace(&self, t: SpoolTree, _: &str, id: u64, e: &[u8]) -> Result<(), StoreError> {
        self.0.lock().unwrap().1.insert((t.name(), id), e.to_vec());
        Ok(())
    }
    fn move_to(&self, from: SpoolTree, to: SpoolTree, _: &str, id: u64) -> Result<(), StoreError> {
        let mut m = self.0.lock().unwrap();
        if let Some(v) = m.1.remove(&(from.name(), id)) {
            m.1.insert((to.name(), id), v);
        }
        Ok(())
    }
    fn usage(&self, tree: SpoolTree, _: &str) -> Usage {
        let m = self.0.lock().unwrap();
        let mut u = Usage::default();
        for (_, v) in m.1.range((tree.name(), 0)..=(tree.name(), u64::MAX)) {
            u.entries += 1;
            u.events += header(v).map_or(0, |h| u64::from(h.events));
            u.bytes += v.len() as u64;
        }
        u
    }
    fn flush(&self) -> Result<(), StoreError> {
        let mut state = self.1.lock().unwrap();
        if state.1 == Fault::FlushesFail {
            return Err(failed("flush"));
        }
        state.0.clear();
        Ok(())
    }

    fn refuses_entries(&self) -> Option<String> {
        (self.fault() == Fault::RefusesEntries).then(|| "the model store is full".into())
    }
}
