//! Reading what is still readable out of a damaged store, and a fresh store
//! made of it: `tailrace store check` and `tailrace store repair`.
//!
//! It never writes to the damaged files: sled is opened on a scratch copy
//! (opening writes), in three ways, the first that opens wins:
//!
//! 1. as it is;
//! 2. without its `conf` file, which sled then writes again (a `conf` it
//!    cannot parse fails the open as "Unsupported");
//! 3. without `conf` and the `snap.*` snapshot: sled rebuilds its page
//!    table from the log, which it reads up to the first record whose
//!    checksum fails and takes for the end. Everything written after that
//!    record is lost, and sled cannot say how much that was.
//!
//! In a store that opens, a damaged page fails the reads that reach it:
//! sled's iterator then returns the same error for ever, so a tree is read
//! forwards up to the first error and backwards from its end down to the
//! last error; the entries between the two are what is lost.
//!
//! Spool entries' bodies are outside sled ([`super::bodies`]); they are
//! read from the damaged store's segment files as they are (never copied
//! to the scratch copy), and a reference whose body is gone is counted as
//! missing: the agent removes such references at its start too, since they
//! were never acknowledged.
//!
//! The fresh store keeps the checkpoint keys as they are; spool entries
//! get new ids from the fresh store's generator, in the order of their old
//! ids across the spool, dead-letter and corrupt trees, because sled's id
//! generator starts again at 0 in a new database and new entries must sort
//! after the recovered ones.

use std::path::{Path, PathBuf};

use tailrace_api::spool::{header, SpoolStore, SpoolTree};

use super::{open_sled, panic_text, OpenError};

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("there is no store in {0} (nothing to check)")]
    Missing(PathBuf),
    #[error(
        "the store in {0} is in use by a running tailrace (stop it first: systemctl stop tailrace)"
    )]
    Locked(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot write the fresh store in {path}: {source}")]
    Write { path: PathBuf, source: sled::Error },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepairError {
    let path = path.to_path_buf();
    move |source| RepairError::Io { what, path, source }
}

/// How the scratch copy was opened (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    AsIs,
    WithoutConfig,
    LogOnly,
}

impl Opened {
    pub fn name(self) -> &'static str {
        match self {
            Opened::AsIs => "as_is",
            Opened::WithoutConfig => "without_conf",
            Opened::LogOnly => "log_only",
        }
    }
}

/// What a store's data is for, from the name of its sled tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeKind {
    Checkpoints,
    Spool(SpoolTree),
    /// sled's own default tree, or a name tailrace does not write.
    Other,
}

impl TreeKind {
    pub fn of(name: &str) -> TreeKind {
        let prefix = name.split('/').next().unwrap_or_default();
        if prefix == "checkpoints" && name.len() > prefix.len() {
            return TreeKind::Checkpoints;
        }
        [
            SpoolTree::Pending,
            SpoolTree::DeadLetter,
            SpoolTree::Corrupt,
        ]
        .into_iter()
        .find(|t| t.name() == prefix && name.len() > prefix.len())
        .map_or(TreeKind::Other, TreeKind::Spool)
    }
}

/// What was read of one sled tree.
#[derive(Debug)]
pub struct TreeSalvage {
    pub name: String,
    pub kind: TreeKind,
    /// Every readable key and value, in key order; a spool entry's value
    /// is the entry itself, its body read.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Spool entries whose body is gone (see the module's text).
    pub missing_bodies: usize,
    /// Where the reads failed: the first error, and the last key read
    /// before it and the first read after it (forwards, backwards).
    pub damage: Option<Damage>,
}

#[derive(Debug)]
pub struct Damage {
    pub error: String,
    pub after: Option<Vec<u8>>,
    pub before: Option<Vec<u8>>,
}

impl TreeSalvage {
    /// Spool entries whose own checksum fails (readable, but the agent
    /// sets them aside instead of replaying them).
    pub fn failed_checksum(&self) -> usize {
        match self.kind {
            TreeKind::Spool(_) => self
                .entries
                .iter()
                .filter(|(_, v)| header(v).is_err())
                .count(),
            _ => 0,
        }
    }

    /// The events of the readable spool entries.
    pub fn events(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|(_, v)| header(v).ok())
            .map(|h| u64::from(h.events))
            .sum()
    }
}

/// What could be read of a store.
#[derive(Debug)]
pub struct Salvage {
    /// How the copy opened; `None` when no way did (nothing is readable).
    pub opened: Option<Opened>,
    /// Why each earlier way failed to open.
    pub open_errors: Vec<String>,
    pub trees: Vec<TreeSalvage>,
}

impl Salvage {
    /// Whether sled found damage (a failed open or a failed read).
    pub fn is_damaged(&self) -> bool {
        self.opened != Some(Opened::AsIs) || self.trees.iter().any(|t| t.damage.is_some())
    }
}

/// An exclusive lock on the store's `db` file, the one sled takes: held
/// while the store is read and replaced, so no agent opens it meanwhile.
struct StoreLock {
    _held: std::fs::File,
}

impl StoreLock {
    fn take(store: &Path) -> Result<StoreLock, RepairError> {
        let db = store.join("db");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => RepairError::Missing(store.to_path_buf()),
                _ => RepairError::Io {
                    what: "open",
                    path: db.clone(),
                    source: e,
                },
            })?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
                RepairError::Locked(store.to_path_buf())
            } else {
                RepairError::Io {
                    what: "lock",
                    path: db,
                    source: e,
                }
            });
        }
        Ok(StoreLock { _held: file })
    }
}

impl StoreLock {
    /// [`StoreLock::take`], waiting as `Store::open` does for a lock that a
    /// process which just stopped (or a store just dropped) may still hold.
    fn wait(store: &Path) -> Result<StoreLock, RepairError> {
        let started = std::time::Instant::now();
        loop {
            match StoreLock::take(store) {
                Err(RepairError::Locked(_)) if started.elapsed() < super::LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                taken => return taken,
            }
        }
    }
}

/// Copies the files of `from` into a new directory `to`.
pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<(), RepairError> {
    copy_dir_but(from, to, None)
}

/// [`copy_dir`], leaving out the entry of `from` named `but`.
fn copy_dir_but(from: &Path, to: &Path, but: Option<&str>) -> Result<(), RepairError> {
    std::fs::create_dir_all(to).map_err(io("create", to))?;
    for entry in std::fs::read_dir(from).map_err(io("read", from))? {
        let entry = entry.map_err(io("read", from))?;
        if but.is_some_and(|b| entry.file_name() == b) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(io("read", &src))?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io("copy", &src))?;
        }
    }
    Ok(())
}

fn remove_dir(path: &Path) -> Result<(), RepairError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Makes `scratch` a copy of `store` prepared for one way of opening.
fn prepare(store: &Path, scratch: &Path, way: Opened) -> Result<(), RepairError> {
    remove_dir(scratch)?;
    copy_dir_but(store, scratch, Some(super::bodies::DIR))?;
    let dropped = |name: &str| match way {
        Opened::AsIs => false,
        Opened::WithoutConfig => name == "conf",
        Opened::LogOnly => name == "conf" || name.starts_with("snap."),
    };
    for entry in std::fs::read_dir(scratch).map_err(io("read", scratch))? {
        let entry = entry.map_err(io("read", scratch))?;
        if dropped(&entry.file_name().to_string_lossy()) {
            std::fs::remove_file(entry.path()).map_err(io("remove", &entry.path()))?;
        }
    }
    Ok(())
}

/// Reads every tree of `db`, around its damaged pages.
fn read_trees(db: &sled::Db) -> Vec<TreeSalvage> {
    let mut trees = Vec::new();
    for raw in db.tree_names() {
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = TreeKind::of(&name);
        if kind == TreeKind::Other && raw.as_ref() == b"__sled__default" {
            continue;
        }
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tree = db.open_tree(&raw).map_err(|e| e.to_string())?;
            Ok::<_, String>(read_tree(&tree))
        }));
        let (entries, damage) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => (Vec::new(), Some((e, None, None))),
            Err(panic) => (
                Vec::new(),
                Some((
                    format!("sled panicked: {}", panic_text(&*panic)),
                    None,
                    None,
                )),
            ),
        };
        trees.push(TreeSalvage {
            name,
            kind,
            entries,
            missing_bodies: 0,
            damage: damage.map(|(error, after, before)| Damage {
                error,
                after,
                before,
            }),
        });
    }
    trees
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// The first error, the last key before it, the first key after it.
type ReadDamage = (String, Option<Vec<u8>>, Option<Vec<u8>>);

/// Forwards to the first error; then backwards down to it.
fn read_tree(tree: &sled::Tree) -> (Entries, Option<ReadDamage>) {
    let mut entries = Vec::new();
    let mut error = None;
    for item in tree.iter() {
        match item {
            Ok((k, v)) => entries.push((k.to_vec(), v.to_vec())),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let Some(error) = error else {
        return (entries, None);
    };
    let after = entries.last().map(|(k, _)| k.clone());
    let mut tail = Vec::new();
    for item in tree.iter().rev() {
        match item {
            Ok((k, v)) if after.as_ref().is_none_or(|a| k.as_ref() > a.as_slice()) => {
                tail.push((k.to_vec(), v.to_vec()))
            }
            _ => break,
        }
    }
    tail.reverse();
    let before = tail.first().map(|(k, _)| k.clone());
    entries.extend(tail);
    (entries, Some((error, after, before)))
}

/// Waits until sled's background threads let go of the store at `path`
/// (they take its lock with them), so its files can be moved or removed.
pub(super) fn wait_released(path: &Path) -> Result<(), RepairError> {
    StoreLock::wait(path).map(drop)
}

/// Reads what is readable of the store in `store`, on a copy in `scratch`
/// (removed again); the store itself is not written.
fn salvage_unlocked(store: &Path, scratch: &Path) -> Result<Salvage, RepairError> {
    let mut open_errors = Vec::new();
    for way in [Opened::AsIs, Opened::WithoutConfig, Opened::LogOnly] {
        prepare(store, scratch, way)?;
        match open_sled(scratch) {
            Ok(db) => {
                let mut trees = read_trees(&db);
                read_bodies(store, &mut trees)?;
                drop(db);
                wait_released(scratch)?;
                remove_dir(scratch)?;
                return Ok(Salvage {
                    opened: Some(way),
                    open_errors,
                    trees,
                });
            }
            Err(OpenError::Damaged { detail, .. }) => {
                open_errors.push(format!("{}: {detail}", way.name()))
            }
            Err(e) => {
                remove_dir(scratch)?;
                return Err(e.into());
            }
        }
    }
    remove_dir(scratch)?;
    Ok(Salvage {
        opened: None,
        open_errors,
        trees: Vec::new(),
    })
}

/// Puts each spool entry's body, read from the segment files of `store`,
/// in place of its reference; counts those whose body is gone.
fn read_bodies(store: &Path, trees: &mut [TreeSalvage]) -> Result<(), RepairError> {
    let dir = store.join(super::bodies::DIR);
    let log = super::bodies::inspect(store)
        .map_err(|e| io("read", &dir)(std::io::Error::other(e.to_string())))?;
    for tree in trees.iter_mut() {
        if !matches!(tree.kind, TreeKind::Spool(_)) {
            continue;
        }
        let before = tree.entries.len();
        tree.entries = std::mem::take(&mut tree.entries)
            .into_iter()
            .filter_map(|(k, v)| super::bodies::resolve_in(&log, &v).map(|v| (k, v)))
            .collect();
        tree.missing_bodies = before - tree.entries.len();
    }
    Ok(())
}

/// The store of `data_dir` and the scratch directory beside it.
fn paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join("store"), data_dir.join("store.scratch"))
}

/// `tailrace store check`: what is readable and what is damaged.
pub fn check(data_dir: &Path) -> Result<Salvage, RepairError> {
    let (store, scratch) = paths(data_dir);
    let _lock = StoreLock::wait(&store)?;
    salvage_unlocked(&store, &scratch)
}

/// What `repair` did.
#[derive(Debug)]
pub struct Repaired {
    pub salvage: Salvage,
    /// Where the damaged store now is; `None` when it was not damaged and
    /// nothing was done.
    pub set_aside: Option<PathBuf>,
}

/// `tailrace store repair`: a fresh store of everything readable, the
/// damaged one set aside as `store.damaged-<UTC time>`. A store that is not
/// damaged is left as it is.
pub fn repair(data_dir: &Path) -> Result<Repaired, RepairError> {
    let (store, scratch) = paths(data_dir);
    let lock = StoreLock::wait(&store)?;
    let salvage = salvage_unlocked(&store, &scratch)?;
    if !salvage.is_damaged() {
        return Ok(Repaired {
            salvage,
            set_aside: None,
        });
    }
    let fresh = data_dir.join("store.new");
    remove_dir(&fresh)?;
    write_fresh(&fresh, &salvage)?;
    let aside = data_dir.join(format!(
        "store.damaged-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    std::fs::rename(&store, &aside).map_err(io("set aside", &store))?;
    std::fs::rename(&fresh, &store).map_err(io("move into place", &fresh))?;
    // The renames are durable only once data_dir is synced.
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", data_dir))?;
    drop(lock);
    Ok(Repaired {
        salvage,
        set_aside: Some(aside),
    })
}

fn write_fresh(fresh: &Path, salvage: &Salvage) -> Result<(), RepairError> {
    let db = open_sled(fresh)?;
    let failed = |source| RepairError::Write {
        path: fresh.to_path_buf(),
        source,
    };
    let mut spooled: Vec<(u64, SpoolTree, &str, &[u8])> = Vec::new();
    for tree in &salvage.trees {
        let t = db.open_tree(&tree.name).map_err(failed)?;
        match tree.kind {
            TreeKind::Spool(kind) => {
                let sink = tree.name.split_once('/').map_or("", |(_, sink)| sink);
                for (k, v) in &tree.entries {
                    // A key that is not an id sorts first and gets one.
                    let old = k.as_slice().try_into().map_or(0, u64::from_be_bytes);
                    spooled.push((old, kind, sink, v));
                }
            }
            _ => {
                let mut batch = sled::Batch::default();
                for (k, v) in &tree.entries {
                    batch.insert(k.as_slice(), v.as_slice());
                }
                t.apply_batch(batch).map_err(failed)?;
            }
        }
    }
    db.flush().map_err(failed)?;
    drop(db);
    wait_released(fresh)?;
    // The spool through the store, so the bodies go to its segment files.
    let store = super::Store::open_dir(fresh.to_path_buf(), fresh)?;
    let refused = |e: tailrace_api::StoreError| RepairError::Write {
        path: fresh.to_path_buf(),
        source: sled::Error::Io(std::io::Error::other(e.0)),
    };
    spooled.sort_by_key(|(old, ..)| *old);
    for (_, kind, sink, entry) in spooled {
        store.push(kind, sink, entry).map_err(refused)?;
    }
    SpoolStore::flush(&store).map_err(refused)?;
    drop(store);
    wait_released(fresh)?;
    // On the platter before the damaged store is set aside for it.
    super::durable::Syncer::open(fresh).map_err(io("sync", fresh))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use tailrace_api::spool::{encode, EntryRecord, SpoolStore};
    use tailrace_api::CheckpointStore;

    const CHECKPOINTS: usize = 2000;
    const SPOOLED: usize = 300;
    const DEAD: usize = 20;

    /// A store with checkpoints of one source, spool entries and dead
    /// letters, flushed and let go of, then opened once more, as by an
    /// agent's restart: only then does it have a snapshot (`snap.*`), as a
    /// store an agent has run on has.
    fn filled() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..CHECKPOINTS {
            let key = format!("file{i:05}").into_bytes();
            store.save("app", &[(key, vec![b'c'; 100])], &[]).unwrap();
        }
        let payload = [b'x'; 300];
        let entry = || {
            let recs = (0..10).map(|_| EntryRecord {
                payload: &payload,
                ..Default::default()
            });
            encode(recs, "", 0)
        };
        for i in 0..SPOOLED {
            store.push(SpoolTree::Pending, "kafka", &entry()).unwrap();
            if i < DEAD {
                store
                    .push(SpoolTree::DeadLetter, "kafka", &entry())
                    .unwrap();
            }
        }
        CheckpointStore::flush(&store).unwrap();
        drop(store);
        drop(Store::open(dir.path()).unwrap());
        wait_released(&dir.path().join("store")).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("store"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(files.iter().any(|f| f.starts_with("snap.")), "{files:?}");
        dir
    }

    fn copy_of(dir: &Path) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&dir.join("store"), &copy.path().join("store")).unwrap();
        copy
    }

    fn smash(file: &Path, at: u64, len: usize) {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        f.seek(std::io::SeekFrom::Start(at)).unwrap();
        f.write_all(&vec![0xAB; len]).unwrap();
    }

    fn tree<'a>(s: &'a Salvage, name: &str) -> &'a TreeSalvage {
        s.trees
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tree {name} in {s:?}"))
    }

    /// The repaired store opens; its spool keeps the order of the old ids,
    /// and a new entry sorts after every recovered one.
    fn assert_repaired_store_works(dir: &Path, checkpoints: usize, spooled: usize) {
        let store = Store::open(dir).unwrap();
        assert_eq!(store.load("app").unwrap().len(), checkpoints);
        let pending = store
            .scan(SpoolTree::Pending, "kafka", None, usize::MAX)
            .unwrap();
        assert_eq!(pending.len(), spooled);
        let dead = store
            .scan(SpoolTree::DeadLetter, "kafka", None, usize::MAX)
            .unwrap();
        let newest = pending
            .iter()
            .chain(&dead)
            .map(|(id, _)| *id)
            .max()
            .unwrap();
        let id = store.push(SpoolTree::Pending, "kafka", b"new").unwrap();
        assert!(id > newest, "new id {id} after {newest}");
    }

    #[test]
    fn a_damaged_snapshot_fails_the_open_and_the_log_recovers_everything() {
        let dir = filled();
        for entry in std::fs::read_dir(dir.path().join("store")).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
            {
                let len = std::fs::metadata(&path).unwrap().len();
                smash(&path, len / 2, 16);
            }
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(OpenError::Damaged { .. })
        ));
        let checked = check(dir.path()).unwrap();
        assert!(checked.is_damaged());
        assert_eq!(checked.opened, Some(Opened::LogOnly), "{checked:?}");
        assert_eq!(checked.open_errors.len(), 2, "{checked:?}");
        let repaired = repair(dir.path()).unwrap();
        let aside = repaired.set_aside.expect("set aside");
        assert!(aside.join("db").is_file());
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("store.damaged-"));
        assert_repaired_store_works(dir.path(), CHECKPOINTS, SPOOLED);
        assert!(!check(dir.path()).unwrap().is_damaged());
    }

    #[test]
    fn an_unreadable_conf_is_written_again_and_nothing_is_lost() {
        let dir = filled();
        smash(&dir.path().join("store/conf"), 0, 8);
        assert!(matches!(
            Store::open(dir.path()),
            Err(OpenError::Damaged { .. })
        ));
        let repaired = repair(dir.path()).unwrap();
        assert_eq!(repaired.salvage.opened, Some(Opened::WithoutConfig));
        assert!(repaired.salvage.trees.iter().all(|t| t.damage.is_none()));
        assert_repaired_store_works(dir.path(), CHECKPOINTS, SPOOLED);
    }

    /// Bytes overwritten in the log where a page of the checkpoints lives:
    /// sled opens, the reads that reach the page fail, and both ends of
    /// the tree are recovered. Where such a page lies depends on sled's
    /// layout, so offsets are tried until one damages a page.
    #[test]
    fn a_damaged_page_loses_only_the_entries_on_it() {
        let dir = filled();
        let len = std::fs::metadata(dir.path().join("store/db"))
            .unwrap()
            .len();
        let found = (1..len / 10_000).find_map(|i| {
            let copy = copy_of(dir.path());
            smash(&copy.path().join("store/db"), i * 10_000, 2048);
            let checked = check(copy.path()).unwrap();
            (checked.opened == Some(Opened::AsIs)
                && tree(&checked, "checkpoints/app").damage.is_some())
            .then_some((copy, checked))
        });
        let (copy, checked) = found.expect("no offset damaged a page of the checkpoints");
        // The agent's own read of the damaged page says what to do, and
        // marks the process as having met damage (run then exits 65).
        {
            let store = Store::open(copy.path()).unwrap();
            let e = store.load("app").unwrap_err();
            assert!(e.to_string().contains("tailrace store repair"), "{e}");
            assert!(crate::store::damage_seen());
        }
        wait_released(&copy.path().join("store")).unwrap();
        let app = tree(&checked, "checkpoints/app");
        let recovered = app.entries.len();
        assert!(
            recovered > CHECKPOINTS / 2 && recovered < CHECKPOINTS,
            "recovered {recovered} of {CHECKPOINTS}"
        );
        let damage = app.damage.as_ref().unwrap();
        assert!(
            damage.after.is_some() || damage.before.is_some(),
            "{damage:?}"
        );
        let repaired = repair(copy.path()).unwrap();
        assert!(repaired.set_aside.is_some());
        let spooled = tree(&repaired.salvage, "spool/kafka").entries.len();
        assert_repaired_store_works(copy.path(), recovered, spooled);
    }

    #[test]
    fn an_undamaged_store_is_left_alone() {
        let dir = filled();
        let repaired = repair(dir.path()).unwrap();
        assert!(repaired.set_aside.is_none());
        assert!(!repaired.salvage.is_damaged());
        let spool = tree(&repaired.salvage, "spool/kafka");
        assert_eq!(spool.entries.len(), SPOOLED);
        assert_eq!(spool.events(), SPOOLED as u64 * 10);
        assert_eq!(spool.failed_checksum(), 0);
        assert_eq!(tree(&repaired.salvage, "dead/kafka").entries.len(), DEAD);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["store".to_string()]);
    }

    #[test]
    fn a_store_in_use_is_neither_checked_nor_repaired() {
        let dir = filled();
        let _open = Store::open(dir.path()).unwrap();
        assert!(matches!(check(dir.path()), Err(RepairError::Locked(_))));
        assert!(matches!(repair(dir.path()), Err(RepairError::Locked(_))));
    }

    #[test]
    fn tree_kinds_follow_the_names() {
        for (name, kind) in [
            ("checkpoints/app", TreeKind::Checkpoints),
            ("spool/kafka", TreeKind::Spool(SpoolTree::Pending)),
            ("dead/kafka", TreeKind::Spool(SpoolTree::DeadLetter)),
            ("corrupt/k/x", TreeKind::Spool(SpoolTree::Corrupt)),
            ("spool", TreeKind::Other),
            ("__sled__default", TreeKind::Other),
        ] {
            assert_eq!(TreeKind::of(name), kind, "{name}");
        }
    }
}
