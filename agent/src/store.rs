//! The on-disk store under `data_dir`: sled, one tree per component's
//! checkpoints. This is the only module that knows sled.

use std::path::{Path, PathBuf};

use tailrace_api::{CheckpointStore, StoreError};

pub struct Store {
    db: sled::Db,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data_dir {0} is in use by another tailrace process (stop it, or give this one its own data_dir)")]
    Locked(PathBuf),
    #[error("cannot open the store in {path}: {source} (check that the directory exists and is writable)")]
    Io { path: PathBuf, source: sled::Error },
}

fn tree_name(component: &str) -> String {
    format!("checkpoints/{component}")
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, OpenError> {
        let path = data_dir.join("store");
        if let Err(e) = std::fs::create_dir_all(&path) {
            return Err(OpenError::Io { path, source: sled::Error::Io(e) });
        }
        let db = sled::Config::new().path(&path).flush_every_ms(Some(500)).open().map_err(|e| match &e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.raw_os_error() == Some(11) => {
                OpenError::Locked(data_dir.to_path_buf())
            }
            sled::Error::Io(io) if io.to_string().contains("lock") => OpenError::Locked(data_dir.to_path_buf()),
            _ => OpenError::Io { path: path.clone(), source: e },
        })?;
        Ok(Store { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn err(e: sled::Error) -> StoreError {
    StoreError(e.to_string())
}

impl CheckpointStore for Store {
    fn load(&self, component: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let tree = self.db.open_tree(tree_name(component)).map_err(err)?;
        tree.iter().map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err)).collect()
    }

    fn save(&self, component: &str, puts: &[(Vec<u8>, Vec<u8>)], removes: &[Vec<u8>]) -> Result<(), StoreError> {
        let tree = self.db.open_tree(tree_name(component)).map_err(err)?;
        let mut batch = sled::Batch::default();
        for k in removes {
            batch.remove(k.as_slice());
        }
        for (k, v) in puts {
            batch.insert(k.as_slice(), v.as_slice());
        }
        tree.apply_batch(batch).map_err(err)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_entries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save("app", &[(b"k1".to_vec(), b"v1".to_vec()), (b"k2".to_vec(), b"v2".to_vec())], &[]).unwrap();
            store.save("app", &[], &[b"k1".to_vec()]).unwrap();
            store.save("other", &[(b"k1".to_vec(), b"x".to_vec())], &[]).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load("app").unwrap(), vec![(b"k2".to_vec(), b"v2".to_vec())]);
        assert_eq!(store.load("other").unwrap().len(), 1);
    }
}
