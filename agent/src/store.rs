//! The on-disk store under `data_dir`: sled, one tree per component's
//! checkpoints and one per sink's spool, dead letters and corrupt entries.
//! This is the only module that knows sled.
//!
//! A store sled cannot open because its files are damaged is told apart
//! from one that is locked or not writable ([`OpenError::Damaged`]); the
//! `repair` submodule reads what is still readable out of such a store
//! (`tailrace store check` and `tailrace store repair`).

pub mod bodies;
pub mod durable;
pub mod health;
pub mod repair;

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tailrace_api::spool::{held_size, BodyRef, SpoolStore, SpoolTree, Usage};
use tailrace_api::{CheckpointStore, Readiness, StoreError};
use tracing::{error, info, warn};

use bodies::Bodies;
use health::{Health, Log, Problem};

pub struct Store {
    /// `None` only while a failed database is being reopened.
    db: RwLock<Option<sled::Db>>,
    /// The spool entries' bodies; sled's spool trees hold references.
    /// Locked after `db` and `synced`, never before.
    bodies: Mutex<Bodies>,
    path: PathBuf,
    /// What each spool tree holds, counted when first asked, then kept up
    /// to date by push and remove.
    usage: Mutex<HashMap<(SpoolTree, String), Usage>>,
    /// Free space and write failures; see [`health`].
    health: Mutex<Health>,
    /// Ready unless [`Health`] names a problem.
    readiness: Readiness,
    min_free_bytes: AtomicU64,
    /// How long a failing store is reopened before it is given up on, in
    /// ms; 0: for ever.
    give_up_after_ms: AtomicU64,
    /// Set once the store was given up on (see [`Store::gave_up`]).
    gave_up: tokio::sync::watch::Sender<Option<GaveUp>>,
    /// Bumped by each reopen (see [`SpoolStore::generation`]).
    generation: AtomicU64,
    /// Flushes finished so far; see [`Store::sync_flushed`].
    flushes: AtomicU64,
    /// What makes a flush durable, and up to which flush it did.
    synced: Mutex<Synced>,
    watching: AtomicBool,
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

/// A store that failed a write and every reopen for the configured
/// `store_give_up_after_ms`: `run` stops and exits with
/// `EXIT_STORE_FAILED`, which the unit does not restart on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the store in {data_dir} could not be written or opened for {failing_s} s (last error: {error}); giving up. Nothing acknowledged is lost: files are read again from their saved positions at the next start. Before starting again: look at the file system of {data_dir} (free space, a read-only remount, I/O errors in the kernel log), then run `tailrace store check --config FILE`, and `tailrace store repair --config FILE` if it reports damage")]
pub struct GaveUp {
    pub data_dir: String,
    pub error: String,
    pub failing_s: u64,
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
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(panic) => Err(OpenError::Damaged {
            path: path.to_path_buf(),
            detail: format!("sled panicked while opening it: {}", panic_text(&*panic)),
        }),
    }
}

/// What a failure while opening the store at `path` is: damage, or the
/// file system's refusal.
fn open_error(path: &Path, e: sled::Error) -> OpenError {
    if is_damage(&e) {
        OpenError::Damaged {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    } else {
        OpenError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// The [`durable::Syncer`] of the open database, and the last of the
/// counted flushes it made durable.
struct Synced {
    syncer: durable::Syncer,
    upto: u64,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> OpenError + '_ {
    move |e| OpenError::Io {
        path: path.to_path_buf(),
        source: sled::Error::Io(e),
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

/// Opens sled at `path`, waiting for a lock that a process which just
/// stopped (or a store just dropped) may still hold.
fn open_waiting(path: &Path, data_dir: &Path) -> Result<sled::Db, OpenError> {
    // sled releases its lock only when its last background thread lets
    // go of the database, a moment after the previous holder dropped or
    // exited; a lock still held after LOCK_WAIT belongs to someone else.
    let started = Instant::now();
    loop {
        match open_sled(path) {
            Ok(db) => return Ok(db),
            Err(OpenError::Io { source, .. }) if is_lock_error(&source) => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(OpenError::Locked(data_dir.to_path_buf()));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
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
        Store::open_dir(path, data_dir)
    }

    /// Opens the store in `path` (`data_dir/store`, or a fresh one that
    /// `repair` writes).
    fn open_dir(path: PathBuf, data_dir: &Path) -> Result<Store, OpenError> {
        let db = open_waiting(&path, data_dir)?;
        let mut bodies = Bodies::open(&path).map_err(|e| OpenError::Io {
            path: path.clone(),
            source: log_error(e),
        })?;
        reconcile(&db, &mut bodies).map_err(|e| open_error(&path, e))?;
        let syncer = durable::Syncer::open(&path).map_err(io_error(&path))?;
        Ok(Store {
            db: RwLock::new(Some(db)),
            bodies: Mutex::new(bodies),
            path,
            usage: Mutex::new(HashMap::new()),
            health: Mutex::new(Health::default()),
            readiness: Readiness::ready(),
            min_free_bytes: AtomicU64::new(0),
            give_up_after_ms: AtomicU64::new(0),
            gave_up: tokio::sync::watch::Sender::new(None),
            generation: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            synced: Mutex::new(Synced { syncer, upto: 0 }),
            watching: AtomicBool::new(false),
            #[cfg(debug_assertions)]
            faults: faults::Faults::from_env(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Not ready while the store refuses writes (low space, a failure),
    /// with the reason; for `/ready`.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Starts watching the store (once; later calls only change the
    /// settings): free space on `data_dir` is read every
    /// [`health::DISK_CHECK_INTERVAL`], a failed database is reopened with
    /// backoff and given up on after `give_up_after` (`None`: never; see
    /// [`Store::gave_up`]), readiness follows, and a lasting problem is
    /// logged once per [`health::LOG_INTERVAL`] with a count. The thread
    /// ends with the store.
    pub fn watch(
        self: &Arc<Self>,
        min_free_bytes: u64,
        give_up_after: Option<std::time::Duration>,
    ) -> std::io::Result<()> {
        self.min_free_bytes.store(min_free_bytes, Ordering::Relaxed);
        let ms = give_up_after.map_or(0, |d| d.as_millis().max(1) as u64);
        self.give_up_after_ms.store(ms, Ordering::Relaxed);
        if self.watching.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let store = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("store-watch".into())
            .spawn(move || {
                while let Some(s) = store.upgrade() {
                    s.check();
                    drop(s);
                    std::thread::sleep(health::DISK_CHECK_INTERVAL);
                }
            })
            .map(|_| ())
    }

    /// One round of the watch: read the free space, reopen if due, then
    /// readiness and the log.
    fn check(&self) {
        let min = self.min_free_bytes.load(Ordering::Relaxed);
        if let Ok(free) = health::free_bytes(&self.path) {
            self.health().observe_disk(free, min);
        }
        let now = Instant::now();
        let due = self.health().reopen_due(now);
        if due {
            match self.reopen() {
                Ok(()) => self.health().reopened(),
                Err(e) => self.health().reopen_failed(e.0, now),
            }
        }
        let (problem, log) = {
            let mut h = self.health();
            (h.problem(), h.log(now))
        };
        let data_dir = self.data_dir();
        self.give_up_if_due(now, &data_dir);
        match &problem {
            None => self.readiness.set_ready(),
            Some(p) => self.readiness.set_not_ready(p.reason(&data_dir)),
        }
        match log {
            None => {}
            Some(Log::Began(Problem::DiskLow {
                free_bytes,
                min_free_bytes,
            })) => warn!(data_dir, free_bytes, min_free_bytes, "data_dir is low on free space; the spool takes no new entries until space is freed"),
            Some(Log::Began(Problem::Failing { error, .. })) => error!(data_dir, error, "a store write failed; the store refuses writes and is reopened with backoff"),
            Some(Log::Lasts { problem, refused }) => warn!(data_dir, refused, reason = %problem.reason(&data_dir), "the store still refuses writes"),
            Some(Log::Over { refused }) => info!(data_dir, refused, "the store takes writes again"),
        }
    }

    /// Gives the store up (once) when it has failed for `give_up_after`.
    fn give_up_if_due(&self, now: Instant, data_dir: &str) {
        if self.gave_up.borrow().is_some() {
            return;
        }
        let after = match self.give_up_after_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        };
        let gave_up = {
            let h = self.health();
            h.given_up(now, after).map(|failing| GaveUp {
                data_dir: data_dir.to_string(),
                error: h.failing_error().unwrap_or_default().to_string(),
                failing_s: failing.as_secs(),
            })
        };
        if let Some(g) = gave_up {
            error!(data_dir, error = %g.error, failing_s = g.failing_s, "the store cannot be reopened; giving up and stopping the agent (see `tailrace store check --config FILE`)");
            self.gave_up.send_replace(Some(g));
        }
    }

    /// Becomes `Some` once the store was given up on: every reopen failed
    /// for `give_up_after` (see [`Store::watch`]).
    pub fn gave_up(&self) -> tokio::sync::watch::Receiver<Option<GaveUp>> {
        self.gave_up.subscribe()
    }

    fn data_dir(&self) -> String {
        self.path
            .parent()
            .unwrap_or(&self.path)
            .display()
            .to_string()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bodies(&self) -> std::sync::MutexGuard<'_, Bodies> {
        self.bodies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `entry`'s body and returns the reference a tree holds (see
    /// [`bodies`]).
    fn append_body(&self, entry: &[u8]) -> Result<BodyRef, sled::Error> {
        self.bodies().append(entry).map_err(log_error)
    }

    /// Inserts `entry` into `tree` under `id` by reference; returns the
    /// value it replaced and the reference (to count it by: the entry's
    /// header was read once, for it). A body whose reference could not be
    /// inserted goes again at once.
    fn insert_entry(
        &self,
        tree: &sled::Tree,
        id: u64,
        entry: &[u8],
    ) -> Result<(Option<sled::IVec>, BodyRef), sled::Error> {
        let body = self.append_body(entry)?;
        tree.insert(id.to_be_bytes(), &body.encode())
            .map(|old| (old, body))
            .inspect_err(|_| self.bodies().release_now(body))
    }

    /// `value` left `tree`: its body goes after the next flush, and it
    /// leaves the tree's usage.
    fn forget(&self, tree: SpoolTree, sink: &str, value: &[u8]) {
        self.bodies().unreferenced(value);
        self.with_usage(tree, sink, |u| count(u, value, -1));
    }

    /// Lets go of the failed database and opens it again: sled makes a
    /// failed write sticky, and only a fresh open resets it. What was
    /// written but not flushed before the failure may be gone, so the
    /// usage is counted again and the generation moves on.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        drop(db.take());
        #[cfg(debug_assertions)]
        self.faults.reopen()?;
        let data_dir = self.path.parent().unwrap_or(&self.path).to_path_buf();
        let reopened = open_waiting(&self.path, &data_dir).map_err(|e| {
            if matches!(e, OpenError::Damaged { .. }) {
                DAMAGE_SEEN.store(true, Ordering::Relaxed);
            }
            StoreError(e.to_string())
        })?;
        reconcile(&reopened, &mut self.bodies()).map_err(err)?;
        let syncer = durable::Syncer::open(&self.path)
            .map_err(|e| StoreError(io_error(&self.path)(e).to_string()))?;
        *self.synced.lock().unwrap_or_else(|e| e.into_inner()) = Synced { syncer, upto: 0 };
        self.flushes.store(0, Ordering::Release);
        *db = Some(reopened);
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        info!(data_dir = %data_dir.display(), "the store was reopened");
        Ok(())
    }

    /// Runs `f` on the database, unless the store is failing. A failed
    /// write (`write`) makes it fail until the watch reopens it.
    fn with_db<T>(
        &self,
        write: bool,
        f: impl FnOnce(&sled::Db) -> Result<T, sled::Error>,
    ) -> Result<T, StoreError> {
        let refused = |h: &mut Health| {
            h.refused();
            StoreError(
                h.problem()
                    .map(|p| p.reason(&self.data_dir()))
                    .unwrap_or_else(|| "the store is being reopened".into()),
            )
        };
        if self.health().is_failing() {
            return Err(refused(&mut self.health()));
        }
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let Some(db) = db.as_ref() else {
            return Err(refused(&mut self.health()));
        };
        #[cfg(debug_assertions)]
        if write {
            self.failed_as_a_write(self.faults.write())?;
        }
        f(db).map_err(|e| {
            let e = err(e);
            if write {
                self.health().write_failed(e.0.clone(), Instant::now());
            }
            e
        })
    }

    /// An injected write fault, if any, taken as sled's sticky write
    /// failure: the store refuses everything until it is reopened.
    #[cfg(debug_assertions)]
    fn failed_as_a_write(&self, fault: Result<(), StoreError>) -> Result<(), StoreError> {
        fault.inspect_err(|e| self.health().write_failed(e.0.clone(), Instant::now()))
    }

    /// Runs `f` on a spool tree (see [`Store::with_db`]).
    fn with_tree<T>(
        &self,
        write: bool,
        tree: SpoolTree,
        sink: &str,
        f: impl FnOnce(&sled::Tree) -> Result<T, sled::Error>,
    ) -> Result<T, StoreError> {
        self.with_db(write, |db| {
            f(&db.open_tree(format!("{}/{sink}", tree.name()))?)
        })
    }

    /// Runs `f` on the usage of a tree, counting it first if needed.
    fn with_usage<T>(&self, tree: SpoolTree, sink: &str, f: impl FnOnce(&mut Usage) -> T) -> T {
        let mut map = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tree, sink.to_owned());
        if !map.contains_key(&key) {
            let counted = self.with_tree(false, tree, sink, |t| {
                let mut u = Usage::default();
                for (_, v) in t.iter().flatten() {
                    count(&mut u, &v, 1);
                }
                Ok(u)
            });
            // Not kept when it could not be counted: counted next time.
            let Ok(u) = counted else {
                return f(&mut Usage::default());
            };
            map.insert(key.clone(), u);
        }
        f(map.get_mut(&key).expect("inserted above"))
    }

    /// The sinks that have anything in a spool tree.
    pub fn spool_sinks(&self, tree: SpoolTree) -> Vec<String> {
        let prefix = format!("{}/", tree.name());
        self.with_db(false, |db| Ok(db.tree_names()))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| String::from_utf8(n.to_vec()).ok())
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// Removes every entry of a tree; returns what was removed.
    pub fn purge(&self, tree: SpoolTree, sink: &str) -> Result<Usage, StoreError> {
        let removed = self.with_tree(true, tree, sink, |t| {
            let mut removed = Usage::default();
            for item in t.iter() {
                let (k, v) = item?;
                t.remove(k)?;
                self.bodies().unreferenced(&v);
                count(&mut removed, &v, 1);
            }
            Ok(removed)
        })?;
        self.with_usage(tree, sink, |u| *u = Usage::default());
        Ok(removed)
    }

    /// Refuses a new entry while free space is below `min_free_bytes`.
    fn room_for_entries(&self) -> Result<(), StoreError> {
        let mut h = self.health();
        match h.problem() {
            Some(p @ Problem::DiskLow { .. }) => {
                h.refused();
                Err(StoreError(p.reason(&self.data_dir())))
            }
            _ => Ok(()),
        }
    }
}

/// Matches the bodies with the references in every spool tree of `db`
/// (see [`bodies`]): references whose body is gone are removed (never
/// acknowledged: a flush syncs the bodies first), bodies nothing refers to
/// are released.
fn reconcile(db: &sled::Db, bodies: &mut Bodies) -> Result<(), sled::Error> {
    let mut referenced = Vec::new();
    let mut trees = Vec::new();
    for name in db.tree_names() {
        let kind = repair::TreeKind::of(&String::from_utf8_lossy(&name));
        if !matches!(kind, repair::TreeKind::Spool(_)) {
            continue;
        }
        let tree = db.open_tree(&name)?;
        for item in tree.iter() {
            let (k, v) = item?;
            if let Some(r) = BodyRef::decode(&v) {
                referenced.push(r);
                trees.push((tree.clone(), k));
            }
        }
    }
    let dangling: std::collections::HashSet<u64> = bodies
        .reconcile(&referenced)
        .iter()
        .map(|r| r.seq)
        .collect();
    if dangling.is_empty() {
        return Ok(());
    }
    for (r, (tree, key)) in referenced.iter().zip(&trees) {
        if dangling.contains(&r.seq) {
            tree.remove(key)?;
        }
    }
    db.flush()?;
    warn!(
        entries = dangling.len(),
        "spool entries written just before the agent stopped had no body on disk (they were never acknowledged); removed"
    );
    Ok(())
}

/// What the segment log's error is to the store: an I/O failure, with
/// the path it names.
fn log_error(e: tailrace_api::channel_log::LogError) -> sled::Error {
    sled::Error::Io(std::io::Error::other(e.to_string()))
}

/// Adds (`sign` 1) or subtracts (-1) one entry, as a tree holds it, to a
/// usage.
fn count(u: &mut Usage, value: &[u8], sign: i64) {
    let (events, bytes) = held_size(value);
    let apply = |x: &mut u64, by: u64| {
        *x = if sign > 0 {
            *x + by
        } else {
            x.saturating_sub(by)
        }
    };
    apply(&mut u.entries, 1);
    apply(&mut u.events, events);
    apply(&mut u.bytes, bytes);
}

impl SpoolStore for Store {
    fn push(&self, tree: SpoolTree, sink: &str, entry: &[u8]) -> Result<u64, StoreError> {
        self.room_for_entries()?;
        self.with_usage(tree, sink, |_| ()); // counted before it changes
        let (id, body) = self.with_db(true, |db| {
            let id = db.generate_id()?;
            let (_, body) =
                self.insert_entry(&db.open_tree(format!("{}/{sink}", tree.name()))?, id, entry)?;
            Ok((id, body))
        })?;
        self.with_usage(tree, sink, |u| count(u, &body.encode(), 1));
        Ok(id)
    }

    fn scan(
        &self,
        tree: SpoolTree,
        sink: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = match after {
            Some(id) => Bound::Excluded(id.to_be_bytes()),
            None => Bound::Unbounded,
        };
        let found = self.with_tree(false, tree, sink, |t| {
            t.range::<[u8; 8], _>((start, Bound::Unbounded))
                .take(limit)
                .collect::<Result<Vec<_>, _>>()
        })?;
        let bodies = self.bodies();
        found
            .into_iter()
            .map(|(k, v)| {
                let id = u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| StoreError("malformed spool key".into()))?,
                );
                Ok((id, bodies.resolve(&v)))
            })
            .collect()
    }

    fn remove(&self, tree: SpoolTree, sink: &str, id: u64) -> Result<(), StoreError> {
        self.with_usage(tree, sink, |_| ());
        let old = self.with_tree(true, tree, sink, |t| t.remove(id.to_be_bytes()))?;
        if let Some(old) = old {
            self.forget(tree, sink, &old);
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
        self.with_usage(tree, sink, |_| ());
        let (old, body) = self.with_tree(true, tree, sink, |t| self.insert_entry(t, id, entry))?;
        if let Some(old) = old {
            self.forget(tree, sink, &old);
        }
        self.with_usage(tree, sink, |u| count(u, &body.encode(), 1));
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
        let Some(v) = self.with_tree(false, from, sink, |t| t.get(id.to_be_bytes()))? else {
            return Ok(());
        };
        // The body is copied, so the destination (dead letters kept for
        // long) does not hold the source's segment files.
        let entry = self.bodies().resolve(&v);
        // Into the destination first: a crash in between leaves a copy in
        // both trees, never in neither.
        self.with_usage(to, sink, |_| ());
        let old = self.with_tree(true, to, sink, |t| {
            if entry.is_empty() {
                // Its body is gone: kept as the empty (damaged) entry.
                t.insert(id.to_be_bytes(), entry.as_slice())
            } else {
                self.insert_entry(t, id, &entry).map(|(old, _)| old)
            }
        })?;
        if let Some(old) = old {
            self.forget(to, sink, &old);
        }
        self.with_usage(to, sink, |u| count(u, &entry, 1));
        self.remove(from, sink, id)
    }

    fn usage(&self, tree: SpoolTree, sink: &str) -> Usage {
        self.with_usage(tree, sink, |u| *u)
    }

    fn flush(&self) -> Result<(), StoreError> {
        #[cfg(debug_assertions)]
        {
            self.faults.spool_flush()?;
            self.failed_as_a_write(self.faults.spool_flush_write())?;
        }
        CheckpointStore::flush(self)
    }

    fn refuses_entries(&self) -> Option<String> {
        let mut h = self.health();
        let problem = h.problem()?;
        h.refused();
        Some(problem.reason(&self.data_dir()))
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
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
    /// fail (after the entries were written); the store itself is fine.
    pub const SPOOL_FLUSH_FAILURES: &str = "TAILRACE_FAULT_SPOOL_FLUSH_FAILURES";
    /// `TAILRACE_FAULT_STORE_WRITE_FAILURE_AFTER=N`: the write after the
    /// first N fails, and the store then fails as sled does after an I/O
    /// error: every operation until a reopen.
    pub const STORE_WRITE_FAILURE_AFTER: &str = "TAILRACE_FAULT_STORE_WRITE_FAILURE_AFTER";
    /// `TAILRACE_FAULT_STORE_FAILURE_AT_SPOOL_FLUSH_AFTER=N`: the spool
    /// flush after the first N fails as a store write does (every
    /// operation until a reopen), whatever number of entries it follows.
    pub const STORE_FAILURE_AT_SPOOL_FLUSH_AFTER: &str =
        "TAILRACE_FAULT_STORE_FAILURE_AT_SPOOL_FLUSH_AFTER";
    /// `TAILRACE_FAULT_STORE_REOPEN_FAILURES=M`: the first M reopens fail
    /// (the cause has not gone away yet).
    pub const STORE_REOPEN_FAILURES: &str = "TAILRACE_FAULT_STORE_REOPEN_FAILURES";

    /// Off: no more faults of that kind.
    const OFF: u64 = u64::MAX;

    pub struct Faults {
        spool_flush_failures: AtomicU64,
        writes_before_failure: AtomicU64,
        spool_flushes_before_failure: AtomicU64,
        reopen_failures: AtomicU64,
    }

    fn var(name: &str, unset: u64) -> AtomicU64 {
        AtomicU64::new(
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(unset),
        )
    }

    /// Takes one from `n` while it is above 0; whether it was.
    fn take_one(n: &AtomicU64) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    impl Faults {
        pub fn from_env() -> Faults {
            Faults {
                spool_flush_failures: var(SPOOL_FLUSH_FAILURES, 0),
                writes_before_failure: var(STORE_WRITE_FAILURE_AFTER, OFF),
                spool_flushes_before_failure: var(STORE_FAILURE_AT_SPOOL_FLUSH_AFTER, OFF),
                reopen_failures: var(STORE_REOPEN_FAILURES, 0),
            }
        }

        pub fn spool_flush(&self) -> Result<(), StoreError> {
            if take_one(&self.spool_flush_failures) {
                return Err(StoreError("injected fault: spool flush failed".into()));
            }
            Ok(())
        }

        /// Before each write: the one after the first N fails, once.
        pub fn write(&self) -> Result<(), StoreError> {
            fail_after(&self.writes_before_failure)
        }

        /// Before each spool flush: the one after the first N fails as a
        /// write does, once.
        pub fn spool_flush_write(&self) -> Result<(), StoreError> {
            fail_after(&self.spool_flushes_before_failure)
        }

        pub fn reopen(&self) -> Result<(), StoreError> {
            if take_one(&self.reopen_failures) {
                return Err(StoreError("injected fault: reopen failed".into()));
            }
            Ok(())
        }
    }

    /// Counts `n` down; the call after it reached 0 fails, once.
    fn fail_after(n: &AtomicU64) -> Result<(), StoreError> {
        if n.load(Ordering::SeqCst) == OFF || take_one(n) {
            return Ok(());
        }
        if n.compare_exchange(0, OFF, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Err(StoreError(
                "injected fault: write failed (No space left on device)".into(),
            ));
        }
        Ok(())
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
        self.with_db(false, |db| {
            db.open_tree(tree_name(component))?
                .iter()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect()
        })
    }

    fn save(
        &self,
        component: &str,
        puts: &[(Vec<u8>, Vec<u8>)],
        removes: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in removes {
            batch.remove(k.as_slice());
        }
        for (k, v) in puts {
            batch.insert(k.as_slice(), v.as_slice());
        }
        self.with_db(true, |db| {
            db.open_tree(tree_name(component))?.apply_batch(batch)
        })
    }

    /// sled's flush, then the sync that makes it durable (see
    /// [`durable`]): a position or spool entry counts as stored only once
    /// this returned.
    fn flush(&self) -> Result<(), StoreError> {
        // Bodies whose references this flush removes for good go after it.
        let free = self.bodies().freed_by_flush();
        let flushed = self.with_db(true, |db| {
            db.flush()?;
            self.sync_flushed().map_err(sled::Error::Io)
        });
        self.bodies().flushed(flushed.is_ok(), free);
        flushed
    }
}

impl Store {
    /// Makes every flush that finished so far durable, with one sync for
    /// all the flushes that finished while another thread's sync ran
    /// (group commit): a flush is counted once it returned, and a sync
    /// covers every flush counted before it started.
    fn sync_flushed(&self) -> std::io::Result<()> {
        let flush = self.flushes.fetch_add(1, Ordering::AcqRel) + 1;
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if synced.upto >= flush {
            return Ok(());
        }
        let upto = self.flushes.load(Ordering::Acquire);
        // The bodies first, then sled: each flush counted so far wrote its
        // bodies before it was counted.
        let segment = self.bodies().to_sync();
        if let Some(segment) = segment {
            segment
                .sync_data()
                .inspect_err(|_| self.bodies().sync_failed())?;
        }
        synced.syncer.sync()?;
        synced.upto = upto;
        Ok(())
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

    #[test]
    fn a_failed_write_is_refused_until_the_watch_reopens_the_store() {
        // One process per test (nextest): the variables are this test's.
        std::env::set_var(faults::STORE_WRITE_FAILURE_AFTER, "2");
        std::env::set_var(faults::STORE_REOPEN_FAILURES, "1");
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let put = |k: &[u8]| store.save("app", &[(k.to_vec(), b"v".to_vec())], &[]);
        put(b"k1").unwrap();
        CheckpointStore::flush(&*store).unwrap();
        let failed = put(b"k2").unwrap_err();
        assert!(failed.0.contains("injected"), "{failed}");
        // Sticky, as sled's is: reads and writes refused until a reopen.
        assert!(put(b"k3").is_err());
        assert!(store.load("app").is_err());
        assert!(store.refuses_entries().is_some());
        store.watch(0, None).unwrap();
        assert!(until(|| !store.readiness().is_ready()));
        assert!(until(|| store.readiness().is_ready()), "never reopened");
        assert_eq!(SpoolStore::generation(&*store), 1);
        put(b"k4").unwrap();
        let keys: Vec<_> = store
            .load("app")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k4".to_vec()]);
    }

    /// Why the spool and the positions share one store (ARCHITECTURE.md,
    /// "One store"): sled recovers a prefix of its log, and a position is
    /// written after the spool entries it depends on, so a store cut short
    /// anywhere never keeps a position without the entries before it.
    #[test]
    fn a_store_cut_short_never_keeps_a_position_past_a_lost_spool_entry() {
        const ROUNDS: u64 = 300;
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 0..ROUNDS {
                store.push(SpoolTree::Pending, "k", &entry(20)).unwrap();
                SpoolStore::flush(&store).unwrap();
                store
                    .save("app", &[(b"pos".to_vec(), i.to_be_bytes().to_vec())], &[])
                    .unwrap();
                CheckpointStore::flush(&store).unwrap();
            }
        }
        repair::wait_released(&dir.path().join("store")).unwrap();
        let db = dir.path().join("store/db");
        let len = std::fs::metadata(&db).unwrap().len();
        let (mut opened, mut positions) = (0, 0);
        for cut in (1..=20).map(|n| len * n / 21) {
            let copy = tempfile::tempdir().unwrap();
            repair::copy_dir(&dir.path().join("store"), &copy.path().join("store")).unwrap();
            // Without the snapshot, as after a crash before it was written:
            // sled rebuilds from the log alone, up to where it was cut.
            for f in std::fs::read_dir(copy.path().join("store")).unwrap() {
                let f = f.unwrap().path();
                if f.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("snap.")
                {
                    std::fs::remove_file(f).unwrap();
                }
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(copy.path().join("store/db"))
                .unwrap()
                .set_len(cut)
                .unwrap();
            let Ok(store) = Store::open(copy.path()) else {
                continue;
            };
            opened += 1;
            let spooled = store.usage(SpoolTree::Pending, "k").entries;
            let kept = store.load("app").unwrap();
            if let Some((_, v)) = kept.first() {
                let position = u64::from_be_bytes(v.as_slice().try_into().unwrap());
                println!("cut at {cut} of {len}: position {position}, {spooled} entries");
                positions += 1;
                assert!(
                    spooled > position,
                    "cut at {cut} of {len}: position {position} kept with {spooled} entries"
                );
            }
        }
        assert!(opened > 10, "sled opened {opened} of 20 cut stores");
        assert!(positions > 10, "{positions} of them kept a position");
    }

    /// This process's resident memory, from /proc.
    fn rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    /// Issue 16's outage soak: sled keeps every value it was given in
    /// memory, so a spool of entries held in sled grows the agent with
    /// the outage. Entry bodies live in files of their own; the store's
    /// memory stays flat while the spool grows.
    #[test]
    fn a_growing_spool_is_not_held_in_memory() {
        const ENTRY: usize = 96 << 10;
        const ENTRIES: usize = 2_000; // 192 MiB
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Incompressible payloads: the entry is as large as its records.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut payload = vec![0u8; ENTRY];
        let before = rss_bytes();
        for _ in 0..ENTRIES {
            for b in payload.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let rec = tailrace_api::spool::EntryRecord {
                payload: &payload,
                ..Default::default()
            };
            let entry = tailrace_api::spool::encode([rec], "", 0);
            store.push(SpoolTree::Pending, "k", &entry).unwrap();
        }
        SpoolStore::flush(&store).unwrap();
        let grew = rss_bytes().saturating_sub(before);
        assert_eq!(store.usage(SpoolTree::Pending, "k").entries, ENTRIES as u64);
        assert!(
            grew < 48 << 20,
            "the store grew by {} MiB holding {} MiB of spool",
            grew >> 20,
            (ENTRY * ENTRIES) >> 20
        );
        // And every entry reads back whole.
        let back = store
            .scan(SpoolTree::Pending, "k", None, usize::MAX)
            .unwrap();
        assert_eq!(back.len(), ENTRIES);
        assert!(back
            .iter()
            .all(|(_, e)| tailrace_api::spool::decode(e).is_ok()));
    }

    /// A power cut can leave a reference whose body is gone (sled's own
    /// flusher wrote the reference; the body was not synced yet): it was
    /// never acknowledged, and the next open removes it instead of
    /// replaying it as damage; a new entry then reads back as itself.
    #[test]
    fn a_reference_without_its_body_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, lost);
        {
            let store = Store::open(dir.path()).unwrap();
            kept = store.push(SpoolTree::Pending, "k", &entry(1)).unwrap();
            SpoolStore::flush(&store).unwrap();
            lost = store.push(SpoolTree::Pending, "k", &entry(2)).unwrap();
            // sled writes the reference on its own; the body's write is
            // taken back below, as a power cut takes unsynced pages.
            store.with_db(false, |db| db.flush()).unwrap();
        }
        repair::wait_released(&dir.path().join("store")).unwrap();
        let segment = dir
            .path()
            .join("store")
            .join(bodies::DIR)
            .join("00000000000000000000.seg");
        let len = std::fs::metadata(&segment).unwrap().len();
        let cut = len - (24 + entry(2).len() as u64) + 10;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let left = store.scan(SpoolTree::Pending, "k", None, 10).unwrap();
        assert_eq!(left, vec![(kept, entry(1))], "entry {lost} was not removed");
        assert_eq!(store.usage(SpoolTree::Pending, "k").entries, 1);
        let id = store.push(SpoolTree::Pending, "k", &entry(3)).unwrap();
        assert_eq!(
            store.scan(SpoolTree::Pending, "k", Some(kept), 10).unwrap(),
            vec![(id, entry(3))]
        );
    }

    /// Whether `cond` became true within 10 s.
    fn until(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }
}
