//! The on-disk store under `data_dir`: sled, one tree per component's
//! checkpoints and one per sink's spool, dead letters and corrupt entries.
//! This is the only module that knows sled.
//!
//! A store sled cannot open because its files are damaged is told apart
//! from one that is locked or not writable ([`OpenError::Damaged`]); the
//! `repair` submodule reads what is still readable out of such a store
//! (`tailrace store check` and `tailrace store repair`).

pub mod repair;

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tailrace_api::spool::{header, SpoolStore, SpoolTree, Usage};
use tailrace_api::{CheckpointStore, StoreError};

pub struct Store {
    db: sled::Db,
    path: PathBuf,
    /// What each spool tree holds, counted when first asked, then kept up
    /// to date by push and remove.
    usage: Mutex<HashMap<(SpoolTree, String), Usage>>,
    /// Faults a test asked for (debug builds only).
    #[cfg(debug_assertions)]
    faults: faults::Faults,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data_dir {0} is in use by another tailrace process (stop it, or give this one its own data_dir)")]
    Locked(PathBuf),
    #[error("cannot open the store in {path}: {source} (check that the directory exists and is writable)")]
    Io { path: PathBuf, source: sled::Error },
    #[error("the store in {path} is damaged ({detail}); stop here: `tailrace store check --config FILE` reports what is readable, `tailrace store repair --config FILE` copies it into a fresh store and sets the damaged one aside")]
    Damaged { path: PathBuf, detail: String },
}

/// Whether sled refused to open the files because of what is in them (a
/// checksum that fails, a config file it cannot parse), as opposed to the
/// file system refusing access.
fn is_damage(e: &sled::Error) -> bool {
    match e {
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => true,
        sled::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// What a panic carried, for a message.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// The sled settings of every store tailrace opens.
fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .flush_every_ms(Some(500))
        .cache_capacity(16 * 1024 * 1024)
}

/// Opens sled at `path` once, telling damage apart from other failures.
/// sled can panic on files damaged in ways it does not check for; that is
/// damage too.
fn open_sled(path: &Path) -> Result<sled::Db, OpenError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sled_config(path).open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) if is_damage(&e) => Err(OpenError::Damaged {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
        Ok(Err(e)) => Err(OpenError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        Err(panic) => Err(OpenError::Damaged {
            path: path.to_path_buf(),
            detail: format!("sled panicked while opening it: {}", panic_text(&*panic)),
        }),
    }
}

/// How long `Store::open` waits for a lock that a process which just
/// stopped (or a store just dropped) may still hold.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn is_lock_error(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.raw_os_error() == Some(11)
                || io.to_string().contains("lock")
        }
        _ => false,
    }
}

fn tree_name(component: &str) -> String {
    format!("checkpoints/{component}")
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, OpenError> {
        let path = data_dir.join("store");
        if let Err(e) = std::fs::create_dir_all(&path) {
            return Err(OpenError::Io {
                path,
                source: sled::Error::Io(e),
            });
        }
        // sled releases its lock only when its last background thread lets
        // go of the database, a moment after the previous holder dropped or
        // exited; a lock still held after LOCK_WAIT belongs to someone else.
        let started = std::time::Instant::now();
        let db = loop {
            match open_sled(&path) {
                Ok(db) => break db,
                Err(OpenError::Io { source, .. }) if is_lock_error(&source) => {
                    if started.elapsed() >= LOCK_WAIT {
                        return Err(OpenError::Locked(data_dir.to_path_buf()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Store {
            db,
            path,
            usage: Mutex::new(HashMap::new()),
            #[cfg(debug_assertions)]
            faults: faults::Faults::from_env(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store {
    fn spool_tree(&self, tree: SpoolTree, sink: &str) -> Result<sled::Tree, StoreError> {
        self.db
            .open_tree(format!("{}/{sink}", tree.name()))
            .map_err(err)
    }

    /// Runs `f` on the usage of a tree, counting it first if needed.
    fn with_usage<T>(&self, tree: SpoolTree, sink: &str, f: impl FnOnce(&mut Usage) -> T) -> T {
        let mut map = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let usage = map.entry((tree, sink.to_owned())).or_insert_with(|| {
            let mut u = Usage::default();
            if let Ok(t) = self.spool_tree(tree, sink) {
                for (_, v) in t.iter().flatten() {
                    count(&mut u, &v, 1);
                }
            }
            u
        });
        f(usage)
    }

    /// The sinks that have anything in a spool tree.
    pub fn spool_sinks(&self, tree: SpoolTree) -> Vec<String> {
        let prefix = format!("{}/", tree.name());
        self.db
            .tree_names()
            .into_iter()
            .filter_map(|n| String::from_utf8(n.to_vec()).ok())
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// Removes every entry of a tree; returns what was removed.
    pub fn purge(&self, tree: SpoolTree, sink: &str) -> Result<Usage, StoreError> {
        let t = self.spool_tree(tree, sink)?;
        let mut removed = Usage::default();
        for item in t.iter() {
            let (k, v) = item.map_err(err)?;
            t.remove(k).map_err(err)?;
            count(&mut removed, &v, 1);
        }
        self.with_usage(tree, sink, |u| *u = Usage::default());
        Ok(removed)
    }
}

/// Adds (`sign` 1) or subtracts (-1) one entry to a usage.
fn count(u: &mut Usage, entry: &[u8], sign: i64) {
    let events = header(entry).map(|h| h.events as u64).unwrap_or(0);
    let apply = |x: &mut u64, by: u64| {
        *x = if sign > 0 {
            *x + by
        } else {
            x.saturating_sub(by)
        }
    };
    apply(&mut u.entries, 1);
    apply(&mut u.events, events);
    apply(&mut u.bytes, entry.len() as u64);
}

impl SpoolStore for Store {
    fn push(&self, tree: SpoolTree, sink: &str, entry: &[u8]) -> Result<u64, StoreError> {
        let t = self.spool_tree(tree, sink)?;
        self.with_usage(tree, sink, |_| ()); // counted before it changes
        let id = self.db.generate_id().map_err(err)?;
        t.insert(id.to_be_bytes(), entry).map_err(err)?;
        self.with_usage(tree, sink, |u| count(u, entry, 1));
        Ok(id)
    }

    fn scan(
        &self,
        tree: SpoolTree,
        sink: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let t = self.spool_tree(tree, sink)?;
        let start = match after {
            Some(id) => Bound::Excluded(id.to_be_bytes()),
            None => Bound::Unbounded,
        };
        t.range::<[u8; 8], _>((start, Bound::Unbounded))
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(err)?;
                let id = u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| StoreError("malformed spool key".into()))?,
                );
                Ok((id, v.to_vec()))
            })
            .collect()
    }

    fn remove(&self, tree: SpoolTree, sink: &str, id: u64) -> Result<(), StoreError> {
        let t = self.spool_tree(tree, sink)?;
        self.with_usage(tree, sink, |_| ());
        if let Some(old) = t.remove(id.to_be_bytes()).map_err(err)? {
            self.with_usage(tree, sink, |u| count(u, &old, -1));
        }
        Ok(())
    }

    fn replace(
        &self,
        tree: SpoolTree,
        sink: &str,
        id: u64,
        entry: &[u8],
    ) -> Result<(), StoreError> {
        let t = self.spool_tree(tree, sink)?;
        self.with_usage(tree, sink, |_| ());
        if let Some(old) = t.insert(id.to_be_bytes(), entry).map_err(err)? {
            self.with_usage(tree, sink, |u| count(u, &old, -1));
        }
        self.with_usage(tree, sink, |u| count(u, entry, 1));
        Ok(())
    }

    fn move_to(
        &self,
        from: SpoolTree,
        to: SpoolTree,
        sink: &str,
        id: u64,
    ) -> Result<(), StoreError> {
        if from == to {
            // Inserting then removing from the same tree would delete it.
            return Ok(());
        }
        let src = self.spool_tree(from, sink)?;
        let Some(v) = src.get(id.to_be_bytes()).map_err(err)? else {
            return Ok(());
        };
        // Into the destination first: a crash in between leaves a copy in
        // both trees, never in neither.
        self.with_usage(to, sink, |_| ());
        self.spool_tree(to, sink)?
            .insert(id.to_be_bytes(), v.as_ref())
            .map_err(err)?;
        self.with_usage(to, sink, |u| count(u, &v, 1));
        self.remove(from, sink, id)
    }

    fn usage(&self, tree: SpoolTree, sink: &str) -> Usage {
        self.with_usage(tree, sink, |u| *u)
    }

    fn flush(&self) -> Result<(), StoreError> {
        #[cfg(debug_assertions)]
        self.faults.spool_flush()?;
        CheckpointStore::flush(self)
    }
}

/// Store faults for the e2e tests, which cannot make a real disk fail on
/// cue. Compiled only into debug builds; a release binary ignores the
/// variables.
#[cfg(debug_assertions)]
mod faults {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tailrace_api::StoreError;

    /// `TAILRACE_FAULT_SPOOL_FLUSH_FAILURES=N`: the first N spool flushes
    /// fail (after the entries were written).
    pub const SPOOL_FLUSH_FAILURES: &str = "TAILRACE_FAULT_SPOOL_FLUSH_FAILURES";

    #[derive(Default)]
    pub struct Faults {
        spool_flush_failures: AtomicU64,
    }

    impl Faults {
        pub fn from_env() -> Faults {
            let n = std::env::var(SPOOL_FLUSH_FAILURES)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Faults {
                spool_flush_failures: AtomicU64::new(n),
            }
        }

        pub fn spool_flush(&self) -> Result<(), StoreError> {
            let left =
                self.spool_flush_failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            match left {
                Ok(_) => Err(StoreError("injected fault: spool flush failed".into())),
                Err(_) => Ok(()),
            }
        }
    }
}

/// Set once any read or write of this process met a damaged page: a
/// failure after that is the store's damage, and `run` exits with
/// `EXIT_STORE_DAMAGED` instead of being restarted into it again.
static DAMAGE_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process met damage in the store (see [`DAMAGE_SEEN`]).
pub fn damage_seen() -> bool {
    DAMAGE_SEEN.load(std::sync::atomic::Ordering::Relaxed)
}

fn err(e: sled::Error) -> StoreError {
    if matches!(e, sled::Error::Corruption { .. }) {
        DAMAGE_SEEN.store(true, std::sync::atomic::Ordering::Relaxed);
        StoreError(format!(
            "{e}: the store is damaged (stop the agent, then run `tailrace store check --config FILE` and `tailrace store repair --config FILE`)"
        ))
    } else {
        StoreError(e.to_string())
    }
}

impl CheckpointStore for Store {
    fn load(&self, component: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let tree = self.db.open_tree(tree_name(component)).map_err(err)?;
        tree.iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
            .collect()
    }

    fn save(
        &self,
        component: &str,
        puts: &[(Vec<u8>, Vec<u8>)],
        removes: &[Vec<u8>],
    ) -> Result<(), StoreError> {
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
    fn a_store_held_open_is_locked_and_one_let_go_of_opens() {
        let dir = tempfile::tempdir().unwrap();
        let held = Store::open(dir.path()).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(OpenError::Locked(p)) if p == dir.path()
        ));
        // Let go of it while a second open waits: that one gets the store.
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let opened = Store::open(dir.path());
        letting_go.join().unwrap();
        assert!(opened.is_ok(), "{:?}", opened.err());
    }

    #[test]
    fn saved_entries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .save(
                    "app",
                    &[
                        (b"k1".to_vec(), b"v1".to_vec()),
                        (b"k2".to_vec(), b"v2".to_vec()),
                    ],
                    &[],
                )
                .unwrap();
            store.save("app", &[], &[b"k1".to_vec()]).unwrap();
            store
                .save("other", &[(b"k1".to_vec(), b"x".to_vec())], &[])
                .unwrap();
            CheckpointStore::flush(&store).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.load("app").unwrap(),
            vec![(b"k2".to_vec(), b"v2".to_vec())]
        );
        assert_eq!(store.load("other").unwrap().len(), 1);
    }

    fn entry(n: usize) -> Vec<u8> {
        let recs = (0..n).map(|_| tailrace_api::spool::EntryRecord {
            payload: b"line",
            ..Default::default()
        });
        tailrace_api::spool::encode(recs, "", 0)
    }

    #[test]
    fn spool_entries_come_back_oldest_first_and_usage_follows() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u64>;
        {
            let store = Store::open(dir.path()).unwrap();
            ids = (1..=3)
                .map(|n| store.push(SpoolTree::Pending, "k", &entry(n)).unwrap())
                .collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
            assert_eq!(store.usage(SpoolTree::Pending, "k").events, 6);
            store.remove(SpoolTree::Pending, "k", ids[0]).unwrap();
            store
                .move_to(SpoolTree::Pending, SpoolTree::Corrupt, "k", ids[1])
                .unwrap();
            SpoolStore::flush(&store).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let left = store.scan(SpoolTree::Pending, "k", None, 10).unwrap();
        assert_eq!(
            left.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![ids[2]]
        );
        assert_eq!(
            store.usage(SpoolTree::Pending, "k"),
            Usage {
                entries: 1,
                events: 3,
                bytes: entry(3).len() as u64
            }
        );
        assert_eq!(store.usage(SpoolTree::Corrupt, "k").events, 2);
        assert!(store
            .scan(SpoolTree::Pending, "k", Some(ids[2]), 10)
            .unwrap()
            .is_empty());
        assert_eq!(store.purge(SpoolTree::Pending, "k").unwrap().entries, 1);
        assert_eq!(store.usage(SpoolTree::Pending, "k"), Usage::default());
        assert_eq!(store.spool_sinks(SpoolTree::Corrupt), vec!["k".to_string()]);
    }
}
