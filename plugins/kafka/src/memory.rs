//! An in-memory [`SpoolStore`] for the crate's tests (the bounded trees'
//! tests and the sink's model test): ids in push order, one map of trees.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tailrace_api::spool::{header, SpoolStore, SpoolTree, Usage};
use tailrace_api::StoreError;

/// Entries by tree name and id.
type Trees = BTreeMap<(&'static str, u64), Vec<u8>>;

/// An in-memory spool: the last id given, and the trees.
#[derive(Default)]
pub(crate) struct Memory(Mutex<(u64, Trees)>);

impl SpoolStore for Memory {
    fn push(&self, tree: SpoolTree, _: &str, entry: &[u8]) -> Result<u64, StoreError> {
        let mut m = self.0.lock().unwrap();
        m.0 += 1;
        let id = m.0;
        m.1.insert((tree.name(), id), entry.to_vec());
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
        Ok(())
    }
}
