//! Durable key-value state for components (file positions).
//!
//! The daemon implements this over sled; plugins see only this trait, so no
//! plugin knows the storage engine.

/// The store failed; the text says on what.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

pub trait CheckpointStore: Send + Sync {
    /// Every entry a component saved.
    fn load(&self, component: &str) -> Result<Vec<Entry>, StoreError>;
    /// Writes and removes entries of one component in one atomic step.
    fn save(
        &self,
        component: &str,
        puts: &[(Vec<u8>, Vec<u8>)],
        removes: &[Vec<u8>],
    ) -> Result<(), StoreError>;
    /// Returns once everything saved so far is on disk.
    fn flush(&self) -> Result<(), StoreError>;
}

/// An in-memory store for unit tests.
#[derive(Default)]
pub struct MemoryStore(std::sync::Mutex<ByComponent>);

/// Values by component and key.
type ByComponent = std::collections::BTreeMap<(String, Vec<u8>), Vec<u8>>;

impl CheckpointStore for MemoryStore {
    fn load(&self, component: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let map = self.0.lock().unwrap();
        Ok(map
            .iter()
            .filter(|((c, _), _)| c == component)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn save(
        &self,
        component: &str,
        puts: &[(Vec<u8>, Vec<u8>)],
        removes: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut map = self.0.lock().unwrap();
        for k in removes {
            map.remove(&(component.to_owned(), k.clone()));
        }
        for (k, v) in puts {
            map.insert((component.to_owned(), k.clone()), v.clone());
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
