//! What makes a sled flush durable: on the platter, not only handed to the
//! disk.
//!
//! Read in sled 0.34.7's source: `Db::flush` writes the log's buffers with
//! `pwrite` and `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on
//! `db` (`pagecache/iobuf.rs`, `write_to_log`). That starts and waits for
//! the write-back of those pages, but it is not fsync: it does not flush
//! the disk's volatile cache and does not write the file's metadata (the
//! size of a `db` that grew), so a power cut can take back what a flush
//! returned for. sled calls `sync_all` (fsync) on `db` only from its
//! periodic flusher thread (every `flush_every_ms`, 500 ms here), when it
//! truncates a segment, and around snapshots and recovery. Items larger
//! than a quarter of a segment (about 128 KiB) go to `blobs/<lsn>` files,
//! written with `write_all` and never synced; `conf` is written at the
//! first open and never synced; no directory is ever synced, so new files
//! (`db`, `conf`, `blobs/*`, a renamed `snap.*`) may be gone after a power
//! cut even when their contents were written.
//!
//! [`Syncer`] closes those gaps after each flush: `fdatasync` on `db`
//! (once per flush, and one for all flushes that finished while another
//! sync was under way), `fdatasync` on each blob file it has not synced
//! before and `fsync` on `blobs/`, and `fsync` on the store's directory
//! whenever its list of names changed. At open it syncs every file of the
//! store and the directories above it once.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The sync state of one store directory (see the module's text).
pub struct Syncer {
    dir: PathBuf,
    db: File,
    /// Blob files already synced.
    blobs: HashSet<OsString>,
    /// The names in the store's directory when it was last synced.
    names: HashSet<OsString>,
}

/// fsync of a directory, so the names created or renamed in it stay.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The names in `dir`; an absent directory has none.
fn names(dir: &Path) -> io::Result<HashSet<OsString>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.file_name())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e),
    }
}

fn with_path(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("cannot sync {}: {e}", path.display()))
}

impl Syncer {
    /// Syncs every file of the store in `dir` (opened by sled already),
    /// the directory itself and the one above it.
    pub fn open(dir: &Path) -> io::Result<Syncer> {
        let db_path = dir.join("db");
        let db = File::open(&db_path).map_err(with_path(&db_path))?;
        let mut syncer = Syncer {
            dir: dir.to_path_buf(),
            db,
            blobs: HashSet::new(),
            names: HashSet::new(),
        };
        for name in names(dir)? {
            let path = dir.join(&name);
            if path.is_file() {
                File::open(&path)
                    .and_then(|f| f.sync_data())
                    .map_err(with_path(&path))?;
            }
        }
        syncer.sync()?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(with_path(parent))?;
        }
        Ok(syncer)
    }

    /// Makes what sled's flushes wrote so far durable (see the module's
    /// text). Call it after `Db::flush` returned.
    pub fn sync(&mut self) -> io::Result<()> {
        self.db
            .sync_data()
            .map_err(with_path(&self.dir.join("db")))?;
        let blobs_dir = self.dir.join("blobs");
        let blobs = names(&blobs_dir).map_err(with_path(&blobs_dir))?;
        let mut new_blobs = false;
        for name in blobs.difference(&self.blobs) {
            let path = blobs_dir.join(name);
            match File::open(&path) {
                Ok(f) => f.sync_data().map_err(with_path(&path))?,
                // Collected by sled meanwhile: nothing to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(with_path(&path)(e)),
            }
            new_blobs = true;
        }
        if new_blobs {
            sync_dir(&blobs_dir).map_err(with_path(&blobs_dir))?;
        }
        self.blobs = blobs;
        let names = names(&self.dir).map_err(with_path(&self.dir))?;
        if names != self.names {
            sync_dir(&self.dir).map_err(with_path(&self.dir))?;
            self.names = names;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_blobs_and_names_are_synced_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("blobs")).unwrap();
        std::fs::write(store.join("db"), b"log").unwrap();
        let mut syncer = Syncer::open(&store).unwrap();
        assert!(syncer.names.contains(&OsString::from("db")));
        std::fs::write(store.join("blobs/7"), b"blob").unwrap();
        std::fs::write(store.join("snap.1"), b"snap").unwrap();
        syncer.sync().unwrap();
        assert!(syncer.blobs.contains(&OsString::from("7")));
        assert!(syncer.names.contains(&OsString::from("snap.1")));
        // Gone blobs are forgotten, so the set stays as small as the dir.
        std::fs::remove_file(store.join("blobs/7")).unwrap();
        syncer.sync().unwrap();
        assert!(syncer.blobs.is_empty());
    }

    #[test]
    fn a_store_without_its_log_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = Syncer::open(dir.path()).err().expect("no db file");
        assert!(e.to_string().contains("db"), "{e}");
    }
}
