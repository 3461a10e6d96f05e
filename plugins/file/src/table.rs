//! The file source's core: every decision about the files of one source,
//! with no I/O of its own.
//!
//! [`FileTable`] tracks each file as a [`Tracked`]: its identity (device,
//! inode, first bytes), how far it was read, which of its batches are
//! unacknowledged, and its [`Life`]: named by an include glob, renamed away
//! or copied by a rotation, or unlinked; open (holding a descriptor permit)
//! or parked.
//!
//! The shell (`tailer`, or the model test, `model_tests`) gives it its
//! observations: the clock (every entry point takes `now`), the include
//! globs' scan with each file's stat ([`Seen`]), acknowledgements
//! ([`FileTable::apply_acks`]) and saves the store refused
//! ([`FileTable::save_failed`]). It returns what to do as data, in order
//! ([`Action`]: send a batch it cut, save positions), which the shell takes
//! with [`FileTable::take_actions`] and performs; it holds no checkpoint
//! store. What it still reads itself, through its [`World`] port, is the
//! files it decides about: opens, stats and reads of its descriptors, and
//! the listings of rotations.
//!
//! What this never does: save a position beyond acknowledged batches; close
//! a rotated or deleted file before it was read to its end and everything
//! read from it was acknowledged; resume a saved position in a file whose
//! content changed under it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tailrace_api::{BatchMeta, Ledger, Record, SourceMetrics};
use tracing::{debug, info, warn};

use crate::checkpoint::{FileId, Saved};
use crate::format::{Decoder, Format, Names};
use crate::identity::{self, ReadAt, Sibling, Tail};
use crate::life::{Budget, Life, Open, Place};
use crate::metrics::FileMetrics;
use crate::multiline::Multiline;
use crate::pool::BufferPool;
use crate::recovery::{self, Found};
use crate::split::{LinePolicy, Split, Splitter};
use crate::StartAt;

/// What a stat of a file says.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub id: FileId,
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime: i128,
    pub nlink: u64,
}

/// A file an include glob names, as the shell's scan found it (the stat
/// follows symlinks).
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: PathBuf,
    pub meta: Meta,
}

/// What the core asks the shell to do, in order.
pub enum Action {
    /// Send a batch it cut on the source's channel.
    Send(Outgoing),
    /// Write these positions to the checkpoint store and flush it; report
    /// a failure with [`FileTable::save_failed`].
    Save(Save),
}

/// Positions to write, and store keys to remove, in one flushed save.
pub struct Save {
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub removes: Vec<Vec<u8>>,
}

/// What the core still reads of files while it decides: opens, stats and
/// reads of the descriptors it holds, listings of rotations.
pub trait World {
    type File: ReadAt;
    /// Follows symlinks, as the scan does.
    fn stat(&self, path: &Path) -> io::Result<Meta>;
    fn fstat(&self, file: &Self::File) -> io::Result<Meta>;
    /// Opens a file an include glob named, by the symlink policy.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens a rotation of a tracked file.
    fn open_rotation(&self, path: &Path) -> io::Result<Self::File>;
    /// The files next to `origin` named like its rotations.
    fn siblings(&self, origin: &Path) -> Vec<Sibling>;
    /// Where an open file is named now; `None` once unlinked.
    fn current_path(&self, file: &Self::File) -> Option<PathBuf>;
    fn excludes(&self, path: &Path) -> bool;
}

/// A batch the core cut, for the shell to send.
pub struct Outgoing {
    pub meta: Arc<BatchMeta>,
    pub records: Vec<Record>,
    /// The ledger's id of the batch; `None`: its acknowledgement moves no
    /// position (lines of a file's content truncated away).
    pub batch: Option<u64>,
}

pub struct Settings {
    pub start_at: StartAt,
    pub poll_interval: Duration,
    pub scan_interval: Duration,
    pub read_buffer_bytes: usize,
    /// The most bytes the source's read buffers hold at once (see pool.rs).
    pub read_pool_bytes: usize,
    pub max_line_bytes: usize,
    pub max_line_policy: LinePolicy,
    pub fingerprint_bytes: usize,
    pub rotated_idle: Duration,
    pub checkpoint_interval: Duration,
    pub max_open_files: usize,
    pub expire_after: Duration,
    pub watch: bool,
    pub multiline: Option<Arc<Multiline>>,
    pub format: Format,
    pub field_names: Arc<Names>,
}

impl Settings {
    /// The splitter of a file read from `offset`.
    fn splitter(&self, offset: u64) -> Splitter {
        Splitter::new(self.max_line_bytes, self.max_line_policy, offset)
            .with_multiline(self.multiline.clone())
            .with_decoder(Decoder::new(
                self.format,
                self.max_line_bytes,
                self.max_line_policy,
                self.field_names.clone(),
            ))
    }
}

/// Where a batch of a file ends: the position the ledger commits.
#[derive(Clone, Copy)]
struct End {
    offset: u64,
    /// The bytes before `offset`, saved with it.
    check: Tail,
}

/// A file being read.
struct Tracked<F> {
    id: FileId,
    path: PathBuf,
    path_arc: Arc<Path>,
    /// The name it was read under; its rotations are named after it.
    origin: PathBuf,
    life: Life<F>,
    /// The unfinished line after the last read: a copy of its own, so a
    /// file between reads holds no read buffer.
    buf: Bytes,
    splitter: Splitter,
    /// Next byte to read.
    read_pos: u64,
    /// The bytes before `read_pos`, to notice a file written again from
    /// its start when it grows.
    recent: Tail,
    /// The first bytes of the file, up to `fingerprint_bytes`.
    fingerprint: Vec<u8>,
    /// Size and modification time when last looked at.
    size: u64,
    mtime: i128,
    /// The modification time when the last read found its end.
    looked: i128,
    /// Batches in flight; every byte before its committed offset was
    /// acknowledged.
    ledger: Ledger<End>,
    /// What the store holds for this file (`None`: nothing yet).
    persisted: Option<u64>,
    last_growth: Instant,
    lag: Gauge,
}

impl<F> Tracked<F> {
    /// Whether its descriptor can be closed now and the file opened again
    /// later without losing anything held in memory.
    fn parkable(&self) -> bool {
        self.life.at_eof()
            && self.life.place() != Place::Deleted
            && self.buf.is_empty()
            && self.splitter.held_since().is_none()
    }

    fn end(&self) -> u64 {
        self.size.max(self.read_pos)
    }

    /// Every byte before this was acknowledged.
    fn committed(&self) -> u64 {
        self.ledger.committed().offset
    }

    /// What a batch read from it now carries.
    fn meta(&self, source: &Arc<str>) -> Arc<BatchMeta> {
        Arc::new(BatchMeta {
            source: source.clone(),
            path: Some(self.path_arc.clone()),
            stream: Some(identity::stream_id(self.id, &self.fingerprint)),
            read_at: SystemTime::now(),
        })
    }
}

pub struct FileTable<W: World> {
    world: W,
    name: Arc<str>,
    metrics: SourceMetrics,
    settings: Settings,
    /// Files in the order they were found, so older files are read first.
    files: BTreeMap<u64, Tracked<W::File>>,
    by_id: HashMap<FileId, u64>,
    next_seq: u64,
    /// Which file each unacknowledged batch came from.
    owner: HashMap<u64, FileId>,
    next_batch: u64,
    /// The positions in the store, by file.
    known: HashMap<FileId, Saved>,
    /// Saved positions no tracked file holds, and since when.
    untracked: HashMap<FileId, Instant>,
    /// Store keys to remove with the next save.
    removes: Vec<Vec<u8>>,
    /// Files at startup whose saved position belongs to other content.
    replaced: HashSet<FileId>,
    /// `max_open_files`: every open file holds one of its permits.
    budget: Budget,
    /// Read buffers, shared by every file of the source.
    pool: BufferPool,
    file_metrics: FileMetrics,
    last_warning: HashMap<&'static str, Instant>,
    /// When the positions were last saved.
    last_persist: Instant,
    /// Files tracked since the last save. Saved at the end of the turn: a
    /// file whose position was never saved is not looked for among its
    /// rotations after a crash, so one rotated while the agent was down
    /// would be lost.
    new_files: bool,
    /// What the shell is to do, in order: batches to send, positions to
    /// save. Swapped with the shell's buffer, so neither reallocates.
    actions: Vec<Action>,
    /// Positions of files no longer tracked whose save failed: written
    /// with the next save.
    orphan_puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// The clock, as last observed.
    now: Instant,
}

/// What reading one chunk of a file did.
struct Turn {
    bytes: usize,
    /// A full chunk was read: the file may have more right away.
    more: bool,
}

/// Where reading a newly tracked file starts.
struct Start {
    offset: u64,
    /// The bytes before `offset`, when known.
    check: Option<Tail>,
}

impl<W: World> FileTable<W> {
    /// A table of no files yet; `known` are the positions in the store.
    pub fn new(
        world: W,
        name: Arc<str>,
        metrics: SourceMetrics,
        settings: Settings,
        known: HashMap<FileId, Saved>,
        now: Instant,
    ) -> FileTable<W> {
        let file_metrics = FileMetrics::of(&name, &metrics);
        let budget = Budget::new(settings.max_open_files, file_metrics.open_files());
        let pool = BufferPool::new(settings.read_pool_bytes, file_metrics.buffer_bytes());
        FileTable {
            world,
            name,
            metrics,
            settings,
            files: BTreeMap::new(),
            by_id: HashMap::new(),
            next_seq: 0,
            owner: HashMap::new(),
            next_batch: 0,
            known,
            untracked: HashMap::new(),
            removes: Vec::new(),
            replaced: HashSet::new(),
            budget,
            pool,
            file_metrics,
            last_warning: HashMap::new(),
            last_persist: now,
            new_files: false,
            actions: Vec::new(),
            orphan_puts: Vec::new(),
            now,
        }
    }

    pub fn world(&self) -> &W {
        &self.world
    }

    pub fn world_mut(&mut self) -> &mut W {
        &mut self.world
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Hands the shell what to do since the last call, in order, by
    /// swapping with `into` (which must be empty): both keep their
    /// capacity, so a round allocates no action list.
    pub fn take_actions(&mut self, into: &mut Vec<Action>) {
        debug_assert!(into.is_empty(), "every action taken was performed");
        std::mem::swap(&mut self.actions, into);
    }

    /// Whether there is something for the shell to do.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// A scan: `seen` is every file the include globs name now. Tracks new
    /// files, notices renamed, rotated, deleted and grown ones.
    pub fn scan(&mut self, now: Instant, seen: Vec<Seen>) {
        self.now = now;
        self.scan_with(seen, false, &HashSet::new());
    }

    /// The time saves are counted from (the loop's start).
    pub fn reset_persist_clock(&mut self, now: Instant) {
        self.now = now;
        self.last_persist = now;
    }

    /// The shell could not perform `save`: every position is saved again
    /// on the next try, and the keys it was to remove with it.
    pub fn save_failed(&mut self, save: Save, error: &dyn std::fmt::Display) {
        // A failing store refuses every try (every checkpoint interval)
        // until it is reopened: logged once per 10 s.
        if self.warning_due("persist") {
            warn!(source = %self.name, error = %error, "cannot save file positions; they will be saved on the next try");
        }
        for tf in self.files.values_mut() {
            tf.persisted = None;
        }
        let tracked: HashSet<Vec<u8>> = self.by_id.keys().map(|id| id.key()).collect();
        self.orphan_puts
            .extend(save.puts.into_iter().filter(|(k, _)| !tracked.contains(k)));
        let mut removes = save.removes;
        removes.append(&mut self.removes);
        self.removes = removes;
    }
    fn warn_limited(
        &mut self,
        kind: &'static str,
        path: &Path,
        what: &str,
        detail: &dyn std::fmt::Display,
    ) {
        if self.warning_due(kind) {
            warn!(source = %self.name, path = %path.display(), error = %detail, "{what}");
        }
    }

    /// Whether a warning of `kind` may be logged now: at most one per 10 s.
    fn warning_due(&mut self, kind: &'static str) -> bool {
        let now = self.now;
        let due = self
            .last_warning
            .get(kind)
            .is_none_or(|last| now.saturating_duration_since(*last) >= Duration::from_secs(10));
        if due {
            self.last_warning.insert(kind, now);
        }
        due
    }

    fn event(&self, event: &str, n: u64) {
        self.file_metrics.event(event, n);
    }

    // ---- finding files -------------------------------------------------

    /// The first scan, then the saved positions no file at an include path
    /// holds: their files were rotated (renamed or copied) while the agent
    /// was stopped, and are looked for among their rotations.
    pub fn startup(&mut self, now: Instant, seen: Vec<Seen>) {
        self.now = now;
        let saved_paths: HashSet<PathBuf> = self.known.values().map(|s| s.origin.clone()).collect();
        self.scan_with(seen, true, &saved_paths);
        let tracked: HashSet<FileId> = self.by_id.keys().copied().collect();
        let lost = recovery::lost(&self.known, &tracked, &self.replaced);
        let world = &self.world;
        let plan = recovery::plan(
            lost,
            &tracked,
            |origin| world.siblings(origin),
            |s, saved| open_holding(world, s, saved),
        );
        for r in plan.resume {
            let (s, saved) = (&r.sibling, &r.saved);
            match r.how {
                Found::Renamed => {
                    info!(source = %self.name, origin = %saved.origin.display(), path = %s.path.display(), offset = saved.offset, "file rotated while stopped, reading the rest of it");
                    self.event("rotated", 1);
                }
                Found::Copied => {
                    info!(source = %self.name, origin = %saved.origin.display(), copy = %s.path.display(), offset = saved.offset, "file copied and truncated while stopped, reading the rest of the copy");
                    self.event("copy_resumed", 1);
                }
            }
            let (file, md) = r.handle;
            self.track_rotated(s, file, md, saved);
        }
        for (id, saved, sibling) in plan.replaced {
            info!(source = %self.name, path = %sibling.path.display(), "saved position belongs to other content (inode reused, or file truncated and written again), reading it from its start");
            self.event("content_replaced", 1);
            self.known.remove(&id);
            self.removes.push(id.key());
            if !self.world.excludes(&sibling.path) {
                self.adopt(&sibling, &saved.origin);
            }
        }
        for (id, saved) in plan.missing {
            info!(source = %self.name, path = %saved.path.display(), offset = saved.offset, "file of a saved position not found; the position expires unless the file comes back");
            self.untracked.insert(id, self.now);
        }
        // A file saved while it was empty holds that position whatever
        // happened to it since: if it was copied and truncated while the
        // agent was down, the copy is a newer rotation nobody read.
        let empty_saves: Vec<(PathBuf, i128)> = self
            .known
            .iter()
            .filter(|(id, s)| s.fingerprint.is_empty() && self.by_id.contains_key(id))
            .map(|(_, s)| (s.origin.clone(), s.mtime as i128))
            .collect();
        for (origin, mtime) in plan.anchors.into_iter().chain(empty_saves) {
            self.adopt_newer_siblings(&origin, mtime);
        }
        self.replaced.clear();
    }

    fn track_rotated(&mut self, s: &Sibling, file: W::File, md: Meta, saved: &Saved) {
        let start = Start {
            offset: saved.offset,
            check: Some(Tail::from_slice(&saved.check)),
        };
        let persisted = self
            .known
            .get(&s.id)
            .filter(|k| *k == saved)
            .map(|k| k.offset);
        let seq = self.track(
            s.path.clone(),
            saved.origin.clone(),
            Place::Rotated,
            file,
            &md,
            start,
        );
        if let Some(tf) = seq.and_then(|seq| self.files.get_mut(&seq)) {
            tf.persisted = persisted;
        }
    }

    /// Reads rotations of `origin` modified after `mtime` that no one read:
    /// files rotated away before they were ever seen (several rotations
    /// while stopped, or while the source waited on a full channel).
    fn adopt_newer_siblings(&mut self, origin: &Path, mtime: i128) {
        for s in self.world.siblings(origin) {
            // Equal is newer: file systems stamp times in ticks of a few ms.
            if s.mtime < mtime
                || self.by_id.contains_key(&s.id)
                || self.known.contains_key(&s.id)
                || self.world.excludes(&s.path)
            {
                continue;
            }
            self.adopt(&s, origin);
        }
    }

    /// Reads a rotation of `origin` no one read from its start.
    fn adopt(&mut self, s: &Sibling, origin: &Path) {
        let Ok(file) = self.world.open_rotation(&s.path) else {
            return;
        };
        let Ok(md) = self.world.fstat(&file) else {
            return;
        };
        if md.id != s.id {
            return;
        }
        info!(source = %self.name, path = %s.path.display(), "rotated file never read, reading it from its start");
        self.event("adopted", 1);
        let start = Start {
            offset: 0,
            check: None,
        };
        self.track(
            s.path.clone(),
            origin.to_path_buf(),
            Place::Rotated,
            file,
            &md,
            start,
        );
    }

    /// Matches the globs again: tracks new files, notices renamed, rotated,
    /// deleted and grown ones.
    fn scan_with(&mut self, found: Vec<Seen>, initial: bool, saved_paths: &HashSet<PathBuf>) {
        let mut seen = HashSet::new();
        for Seen { path, meta: md } in found {
            let id = md.id;
            seen.insert(id);
            if let Some(&seq) = self.by_id.get(&id) {
                let tf = &self.files[&seq];
                // A parked file that changed may have been truncated (and
                // copied first) or, holding no descriptor, had its inode
                // freed and reused by a new file: either way it is read
                // again from its start, and a copy takes over the rest.
                if !tf.life.is_open() && md.mtime != tf.mtime && !self.still_holds(&path, seq) {
                    self.truncated(seq, md.size, "changed while parked");
                }
                let tf = self.files.get_mut(&seq).expect("by_id and files agree");
                if tf.path != path {
                    debug!(source = %self.name, from = %tf.path.display(), to = %path.display(), "file renamed");
                    self.rename(seq, path.clone());
                }
                let tf = self.files.get_mut(&seq).expect("by_id and files agree");
                tf.life.named();
                tf.origin = path;
                tf.size = md.size;
                tf.mtime = md.mtime;
                if md.size != tf.read_pos {
                    tf.life.set_wants_read(true);
                }
                continue;
            }
            self.discover(path, id, initial, saved_paths);
        }
        let moved: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, tf)| tf.life.place() == Place::Live && !seen.contains(&tf.id))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in moved {
            self.moved_away(seq);
        }
        let parked: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, tf)| tf.life.place() == Place::Rotated && !tf.life.is_open())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in parked {
            self.check_parked_rotated(seq);
        }
    }

    /// Whether the file at `path` still starts with the fingerprint of the
    /// tracked file `seq` and holds the bytes it read before its position
    /// (true when it cannot be opened: the next look decides).
    fn still_holds(&self, path: &Path, seq: u64) -> bool {
        let tf = &self.files[&seq];
        let Ok(file) = self.world.open(path) else {
            return true;
        };
        match self.world.fstat(&file) {
            Ok(md) if md.id == tf.id => identity::holds(
                &file,
                md.size,
                &tf.fingerprint,
                tf.recent.as_slice(),
                tf.read_pos,
            ),
            _ => true,
        }
    }

    fn discover(
        &mut self,
        path: PathBuf,
        id: FileId,
        initial: bool,
        saved_paths: &HashSet<PathBuf>,
    ) {
        let file = match self.world.open(&path) {
            Ok(f) => f,
            Err(e) => {
                self.warn_limited(
                    "open",
                    &path,
                    "cannot open file (check its permissions)",
                    &e,
                );
                return;
            }
        };
        let md = match self.world.fstat(&file) {
            Ok(now) if now.id == id => now,
            _ => return, // replaced between the scan and the open: next scan
        };
        let size = md.size;
        let mut resumed = false;
        let start = match self.known.get(&id) {
            Some(saved)
                if identity::holds(&file, size, &saved.fingerprint, &saved.check, saved.offset) =>
            {
                resumed = true;
                Start {
                    offset: saved.offset,
                    check: Some(Tail::from_slice(&saved.check)),
                }
            }
            Some(_) => {
                info!(source = %self.name, path = %path.display(), "saved position belongs to other content (inode reused, or file truncated and written again), reading it from its start");
                self.event("content_replaced", 1);
                self.replaced.insert(id);
                Start {
                    offset: 0,
                    check: None,
                }
            }
            // A file that took the name of a saved one continues its log.
            None if initial
                && self.settings.start_at == StartAt::End
                && !saved_paths.contains(&path) =>
            {
                Start {
                    offset: size,
                    check: identity::check_before(&file, size).ok(),
                }
            }
            None => Start {
                offset: 0,
                check: None,
            },
        };
        let origin = path.clone();
        if let Some(seq) = self.track(path, origin, Place::Live, file, &md, start) {
            if resumed {
                let tf = self.files.get_mut(&seq).expect("just tracked");
                tf.persisted = Some(tf.committed());
            }
        }
    }

    /// Starts tracking an opened file; parks it at once when no descriptor
    /// is free.
    fn track(
        &mut self,
        path: PathBuf,
        origin: PathBuf,
        place: Place,
        file: W::File,
        md: &Meta,
        start: Start,
    ) -> Option<u64> {
        let id = md.id;
        let size = md.size;
        let fp_len = (self.settings.fingerprint_bytes as u64).min(size) as usize;
        let fingerprint = match identity::read_at(&file, 0, fp_len) {
            Ok(fp) => fp,
            Err(e) => {
                self.warn_limited("read", &path, "cannot read file", &e);
                return None;
            }
        };
        let check = match start.check {
            Some(c) => c,
            None => identity::check_before(&file, start.offset).unwrap_or_default(),
        };
        debug!(source = %self.name, path = %path.display(), offset = start.offset, ?place, "file tracked");
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_id.insert(id, seq);
        self.untracked.remove(&id);
        self.new_files = true;
        let lag = self.file_metrics.lag(&path.to_string_lossy());
        self.files.insert(
            seq,
            Tracked {
                id,
                path_arc: Arc::from(path.as_path()),
                path,
                origin,
                life: Life::found(place),
                buf: Bytes::new(),
                splitter: self.settings.splitter(start.offset),
                read_pos: start.offset,
                recent: check,
                fingerprint,
                size,
                mtime: md.mtime,
                looked: md.mtime,
                ledger: Ledger::new(End {
                    offset: start.offset,
                    check,
                }),
                persisted: None,
                last_growth: self.now,
                lag,
            },
        );
        match self.free_slot(seq) {
            Some(permit) => self.attach(seq, Open::new(file, permit)),
            None => self.note_waiting(seq),
        }
        Some(seq)
    }

    fn rename(&mut self, seq: u64, to: PathBuf) {
        let tf = self.files.get_mut(&seq).expect("seq from files");
        self.file_metrics.forget_lag(&tf.path.to_string_lossy());
        tf.lag = self.file_metrics.lag(&to.to_string_lossy());
        tf.path_arc = Arc::from(to.as_path());
        tf.path = to;
    }

    /// A file no include glob names any more: renamed by a rotation, or
    /// deleted. Either way it is read to its end.
    fn moved_away(&mut self, seq: u64) {
        let tf = self.files.get_mut(&seq).expect("seq from files");
        let origin = tf.origin.clone();
        let anchor;
        if let Some(file) = tf.life.file() {
            let Ok(md) = self.world.fstat(file) else {
                return;
            };
            let now = self.world.current_path(file);
            anchor = md.mtime;
            tf.mtime = anchor;
            tf.size = md.size;
            if md.nlink == 0 {
                debug!(source = %self.name, path = %tf.path.display(), "file deleted, reading it to its end");
                tf.life.deleted();
                self.event("deleted", 1);
                return;
            }
            tf.life.rotated();
            info!(source = %self.name, from = %tf.path.display(), to = ?now, "file rotated, reading it to its end");
            if let Some(now) = now {
                self.rename(seq, now);
            }
        } else {
            anchor = tf.mtime;
            let id = tf.id;
            match self
                .world
                .siblings(&origin)
                .into_iter()
                .find(|s| s.id == id)
            {
                Some(s) => {
                    info!(source = %self.name, from = %tf.path.display(), to = %s.path.display(), "file rotated, reading it to its end");
                    tf.life.rotated();
                    if s.size != tf.read_pos {
                        tf.life.set_wants_read(true);
                    }
                    tf.size = s.size;
                    self.rename(seq, s.path);
                }
                None => {
                    // Copied and emptied, then deleted, while parked: the
                    // copy holds what was not read or not acknowledged.
                    if self.find_copy(seq).is_some() {
                        self.truncated(seq, 0, "copied, then deleted while parked");
                    }
                    self.vanished(seq);
                    return;
                }
            }
        }
        self.event("rotated", 1);
        self.adopt_newer_siblings(&origin, anchor);
    }

    /// A parked rotated file: still where it was parked, grown, moved on by
    /// the next rotation, or gone.
    fn check_parked_rotated(&mut self, seq: u64) {
        let tf = self.files.get_mut(&seq).expect("seq from files");
        if let Ok(md) = self.world.stat(&tf.path) {
            if md.id == tf.id {
                tf.size = md.size;
                if md.size != tf.read_pos {
                    tf.life.set_wants_read(true);
                }
                return;
            }
        }
        let id = tf.id;
        match self
            .world
            .siblings(&tf.origin)
            .into_iter()
            .find(|s| s.id == id)
        {
            Some(s) if s.size != tf.read_pos || tf.ledger.in_flight() > 0 => {
                tf.size = s.size;
                if s.size != tf.read_pos {
                    tf.life.set_wants_read(true);
                }
                self.rename(seq, s.path);
            }
            // Read to its end and moved on: nothing more will come.
            _ => self.vanished(seq),
        }
    }

    /// Stops tracking a parked file that cannot be found any more. Its
    /// saved position stays until it expires.
    fn vanished(&mut self, seq: u64) {
        let tf = self.files.remove(&seq).expect("seq from files");
        self.by_id.remove(&tf.id);
        self.file_metrics.forget_lag(&tf.path.to_string_lossy());
        if tf.size > tf.read_pos {
            let lost = tf.size - tf.read_pos;
            warn!(source = %self.name, path = %tf.path.display(), bytes = lost, "file removed while parked for want of a descriptor; its unread bytes are lost (raise max_open_files)");
            self.event("lost", 1);
        } else {
            debug!(source = %self.name, path = %tf.path.display(), "rotated file gone");
        }
        if tf.persisted != Some(tf.committed()) {
            self.persist_one_removed(&tf);
        }
        self.untracked.insert(tf.id, self.now);
    }

    fn persist_one_removed(&mut self, tf: &Tracked<W::File>) {
        let saved = saved_of(tf);
        self.actions.push(Action::Save(Save {
            puts: vec![(tf.id.key(), saved.encode())],
            removes: Vec::new(),
        }));
        self.known.insert(tf.id, saved);
    }

    /// Forgets saved positions of files not seen for `expire_after`.
    pub fn expire(&mut self, now: Instant) {
        self.now = now;
        for id in self.known.keys() {
            if !self.by_id.contains_key(id) {
                self.untracked.entry(*id).or_insert(now);
            }
        }
        let after = self.settings.expire_after;
        let expired: Vec<FileId> = self
            .untracked
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= after)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.untracked.remove(&id);
            if let Some(saved) = self.known.remove(&id) {
                debug!(source = %self.name, path = %saved.path.display(), "saved position of a vanished file expired");
                self.event("expired", 1);
                self.removes.push(id.key());
            }
        }
    }

    // ---- descriptors ---------------------------------------------------

    fn attach(&mut self, seq: u64, open: Open<W::File>) {
        let tf = self.files.get_mut(&seq).expect("seq from files");
        tf.life.attach(open);
    }

    fn park(&mut self, seq: u64) {
        let tf = self.files.get_mut(&seq).expect("seq from files");
        tf.life.park();
    }

    /// A permit for one more descriptor, parking the idle file that grew
    /// least recently if none is free; `None` if every open file is busy.
    fn free_slot(&mut self, except: u64) -> Option<crate::life::Permit> {
        if let Some(permit) = self.budget.try_acquire() {
            return Some(permit);
        }
        let mut idle: Vec<(Instant, u64)> = self
            .files
            .iter()
            .filter(|(seq, tf)| **seq != except && tf.parkable())
            .map(|(seq, tf)| (tf.last_growth, *seq))
            .collect();
        idle.sort();
        for (_, victim) in idle {
            // Unlinked since it was last looked at: its descriptor is all
            // that is left of it, so it is not parked but read to its end.
            let tf = self.files.get_mut(&victim).expect("seq from files");
            let unlinked = tf
                .life
                .file()
                .and_then(|f| self.world.fstat(f).ok())
                .is_some_and(|md| md.nlink == 0);
            if unlinked {
                debug!(source = %self.name, path = %tf.path.display(), "file deleted, reading it to its end");
                tf.life.deleted();
                self.event("deleted", 1);
                continue;
            }
            self.park(victim);
            return self.budget.try_acquire();
        }
        None
    }

    fn note_waiting(&mut self, seq: u64) {
        let tf = self.files.get_mut(&seq).expect("seq from files");
        if tf.life.start_waiting() {
            let path = tf.path.clone();
            self.event("open_limit", 1);
            let max = self.budget.max();
            self.warn_limited(
                "open_limit",
                &path,
                "every descriptor the source may hold is busy; the file waits (raise max_open_files)",
                &format_args!("max_open_files {max} reached"),
            );
        }
    }

    /// Opens a parked file again, if a descriptor is free and it is still
    /// the same file.
    fn reopen(&mut self, seq: u64) -> bool {
        let Some(permit) = self.free_slot(seq) else {
            self.note_waiting(seq);
            return false;
        };
        let tf = self.files.get_mut(&seq).expect("seq from files");
        let file = match self.world.open(&tf.path) {
            Ok(f) => f,
            Err(_) => {
                tf.life.set_wants_read(false); // the next scan finds where it went
                return false;
            }
        };
        if self.world.fstat(&file).map(|md| md.id).ok() != Some(tf.id) {
            tf.life.set_wants_read(false);
            return false;
        }
        // Reading resumes as after the end of the file: size and the bytes
        // before the position are checked first.
        let mut open = Open::new(file, permit);
        open.at_eof = true;
        self.attach(seq, open);
        true
    }

    // ---- reading -------------------------------------------------------

    /// A round of reading: every file gets a turn, oldest first, of up to
    /// [`CHUNKS_PER_TURN`] chunks ([`FileTable::read_next`]).
    pub fn round(&self) -> Round {
        Round {
            seqs: self.files.keys().copied().collect::<Vec<_>>().into_iter(),
            slots: true,
            turn: None,
        }
    }

    /// Reads the next chunk of `round`, cutting what it read into a batch
    /// to send (see [`FileTable::take_actions`]); returns the bytes read,
    /// or `None` once every file had its turn.
    pub fn read_next(&mut self, now: Instant, round: &mut Round) -> Option<usize> {
        self.now = now;
        loop {
            if let Some((seq, chunk)) = round.turn.take() {
                let turn = self.read_chunk(seq);
                if turn.more && chunk + 1 < CHUNKS_PER_TURN {
                    round.turn = Some((seq, chunk + 1));
                }
                return Some(turn.bytes);
            }
            let seq = self.next_in(round)?;
            round.turn = Some((seq, 0));
        }
    }

    /// The next file of `round` to read, opened again first if it is parked
    /// and has more to read.
    fn next_in(&mut self, round: &mut Round) -> Option<u64> {
        for seq in round.seqs.by_ref() {
            let Some(tf) = self.files.get(&seq) else {
                continue;
            };
            if !tf.life.is_open() {
                if !tf.life.wants_read() {
                    continue;
                }
                if !round.slots {
                    self.note_waiting(seq);
                    continue;
                }
                if !self.reopen(seq) {
                    // Once no descriptor could be freed, none will be this
                    // round.
                    round.slots = !self.budget.exhausted();
                    continue;
                }
            }
            return Some(seq);
        }
        None
    }

    /// Looks at a file that had no more to read: deleted? grown? Returns
    /// whether there may be more to read.
    fn grew(&mut self, seq: u64) -> bool {
        let tf = self.files.get_mut(&seq).expect("seq from files");
        let Some(file) = tf.life.file() else {
            return false;
        };
        let Ok(md) = self.world.fstat(file) else {
            return false;
        };
        tf.size = md.size;
        tf.mtime = md.mtime;
        let touched = std::mem::replace(&mut tf.looked, md.mtime) != md.mtime;
        if md.nlink == 0 && tf.life.place() != Place::Deleted {
            debug!(source = %self.name, path = %tf.path.display(), "file deleted, reading it to its end");
            tf.life.deleted();
            self.event("deleted", 1);
        }
        let tf = &self.files[&seq];
        // A rotated file that shrank is not followed: its writer moved on.
        // A deleted one that shrank was truncated first (copytruncate, then
        // deleted): its copy holds what was not read.
        // One written since at the same size may have been truncated and
        // written again: the bytes before the position tell (`still_same`).
        md.size > tf.read_pos
            || (md.size < tf.read_pos || touched && tf.read_pos > 0)
                && tf.life.place() != Place::Rotated
    }

    /// Before reading on at the position of a file named by an include
    /// glob, or deleted: are the bytes before it still the ones read? If not, the file
    /// was truncated (and perhaps written again past the position, which
    /// its size alone would not show). One small read per chunk.
    fn still_same(&mut self, seq: u64) -> bool {
        let tf = &self.files[&seq];
        if tf.life.place() == Place::Rotated || tf.read_pos == 0 {
            return true;
        }
        let Some(file) = tf.life.file() else {
            return true;
        };
        let same = match identity::check_before(file, tf.read_pos) {
            Ok(t) => t.as_slice() == tf.recent.as_slice(),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(_) => return true, // a read error shows on the read itself
        };
        if !same {
            let size = self.world.fstat(file).map_or(0, |md| md.size);
            let why = if size < tf.read_pos {
                "size shrank"
            } else {
                "the bytes before the position changed"
            };
            self.truncated(seq, size, why);
        }
        same
    }

    /// Reads one chunk of a file the round gave its turn to (see
    /// [`CHUNKS_PER_TURN`]), and cuts it into a batch.
    fn read_chunk(&mut self, seq: u64) -> Turn {
        let none = Turn {
            bytes: 0,
            more: false,
        };
        if !self.files.contains_key(&seq)
            || self.files[&seq].life.at_eof() && !self.grew(seq)
            || !self.still_same(seq)
        {
            return none;
        }
        let chunk = self.settings.read_buffer_bytes;
        let fp_max = self.settings.fingerprint_bytes;
        let tf = self.files.get_mut(&seq).expect("seq from files");
        let Some(open) = tf.life.open_mut() else {
            return none;
        };
        let file = &open.file;
        let old = tf.buf.len();
        let read_pos = tf.read_pos;
        let Some(res) = self.pool.read(&tf.buf, chunk, |b| file.pread(b, read_pos)) else {
            // Every buffer is out with batches in flight: read when
            // deliveries have given some back.
            return none;
        };
        let buf = match res {
            Ok(buf) => buf,
            Err(e) => {
                let path = tf.path.clone();
                self.warn_limited("read", &path, "cannot read file", &e);
                return none;
            }
        };
        let n = buf.len() - old;
        open.at_eof = n == 0;
        if n == 0 {
            return none;
        }
        tf.buf = buf;
        // The first bytes taken when the file was found may have been
        // replaced since (truncated and written again before any of them
        // was read): what is read now is the file's start.
        if tf.read_pos < tf.fingerprint.len() as u64 {
            tf.fingerprint.truncate(tf.read_pos as usize);
        }
        // Extend the fingerprint while reading the file's first bytes.
        let have = tf.fingerprint.len() as u64;
        if have < fp_max as u64 && tf.read_pos <= have && have < tf.read_pos + n as u64 {
            let from = old + (have - tf.read_pos) as usize;
            let to = old + n.min(fp_max - tf.read_pos as usize);
            if from < to {
                tf.fingerprint.extend_from_slice(&tf.buf[from..to]);
            }
        }
        tf.recent.push(&tf.buf[old..old + n]);
        tf.read_pos += n as u64;
        tf.size = tf.size.max(tf.read_pos);
        tf.last_growth = self.now;
        let mut records = Vec::with_capacity(n / 64 + 8);
        let split = tf.splitter.split(&mut tf.buf, &mut records);
        // The unfinished line must not keep the whole buffer.
        tf.buf = Bytes::copy_from_slice(&tf.buf);
        self.count_split(&split);
        self.send(seq, records, split.end_offset);
        Turn {
            bytes: n,
            more: n >= chunk / 2,
        }
    }

    fn count_split(&self, split: &Split) {
        if split.truncated_lines > 0 {
            self.metrics
                .dropped
                .add("line_truncated", split.truncated_lines);
        }
        if split.split_lines > 0 {
            self.event("line_split", split.split_lines);
        }
        if split.parse_errors > 0 {
            self.metrics.parse_errors.inc_by(split.parse_errors);
            debug!(source = %self.name, lines = split.parse_errors, format = self.settings.format.name(), "lines that do not parse forwarded as they were");
        }
    }

    fn send(&mut self, seq: u64, records: Vec<Record>, end: u64) {
        if records.is_empty() {
            return;
        }
        let tf = self.files.get_mut(&seq).expect("seq from files");
        let check = if end == tf.read_pos {
            tf.recent
        } else {
            tf.life
                .file()
                .and_then(|f| identity::check_before(f, end).ok())
                .unwrap_or_default()
        };
        let batch_id = self.next_batch;
        self.next_batch += 1;
        tf.ledger.sent(batch_id, End { offset: end, check });
        self.owner.insert(batch_id, tf.id);
        self.actions.push(Action::Send(Outgoing {
            meta: tf.meta(&self.name),
            records,
            batch: Some(batch_id),
        }));
    }

    /// Saves the positions when the checkpoint interval has passed.
    pub fn persist_if_due(&mut self, now: Instant) {
        self.now = now;
        let elapsed = now.saturating_duration_since(self.last_persist);
        if self.new_files || elapsed >= self.settings.checkpoint_interval {
            self.new_files = false;
            self.persist();
            self.last_persist = self.now;
        }
    }

    /// A file named by an include glob shrank, or its bytes before the
    /// position changed. If `copytruncate` made a copy first, the copy takes
    /// over what was unread or unacknowledged; the file is read again from
    /// its start.
    fn truncated(&mut self, seq: u64, size: u64, why: &str) {
        let tf = &self.files[&seq];
        warn!(source = %self.name, path = %tf.path.display(), size, position = tf.read_pos, reason = why, "file truncated, reading it again from its start");
        self.event("truncated", 1);
        let copy = self.find_copy(seq);
        let fresh = self.settings.splitter(0);
        let tf = self.files.get_mut(&seq).expect("seq from files");
        let mut old = Tracked {
            splitter: std::mem::replace(&mut tf.splitter, fresh),
            buf: std::mem::take(&mut tf.buf),
            ledger: std::mem::replace(
                &mut tf.ledger,
                Ledger::new(End {
                    offset: 0,
                    check: Tail::default(),
                }),
            ),
            fingerprint: std::mem::take(&mut tf.fingerprint),
            life: Life::found(Place::Live),
            lag: Gauge::default(),
            path: tf.path.clone(),
            path_arc: tf.path_arc.clone(),
            origin: tf.origin.clone(),
            ..*tf
        };
        tf.read_pos = 0;
        tf.recent.clear();
        tf.persisted = None;
        if let Some(open) = tf.life.open_mut() {
            open.at_eof = false;
        }
        tf.size = size;
        let Some((s, file, md)) = copy else {
            // No copy: what is held back are complete lines of the old
            // content; they are sent, and their acknowledgement no longer
            // moves this file's position.
            let mut records = Vec::new();
            let split = old.splitter.flush(&mut old.buf, &mut records);
            self.count_split(&split);
            if !records.is_empty() {
                self.actions.push(Action::Send(Outgoing {
                    meta: old.meta(&self.name),
                    records,
                    batch: None,
                }));
            }
            return;
        };
        info!(source = %self.name, copy = %s.path.display(), offset = old.committed(), "unread bytes of the truncated file found in its copy");
        self.event("copy_resumed", 1);
        let start = Start {
            offset: old.committed(),
            check: Some(old.ledger.committed().check),
        };
        let origin = old.origin.clone();
        let Some(cseq) = self.track(
            s.path.clone(),
            origin.clone(),
            Place::Rotated,
            file,
            &md,
            start,
        ) else {
            return;
        };
        let c = self.files.get_mut(&cseq).expect("just tracked");
        c.splitter = old.splitter;
        c.buf = old.buf;
        c.read_pos = old.read_pos;
        c.recent = old.recent;
        for batch in old.ledger.batches() {
            self.owner.insert(batch, c.id);
        }
        c.ledger = old.ledger;
        self.adopt_newer_siblings(&origin, s.mtime);
    }

    /// The copy `copytruncate` made of a tracked file: a rotation of it not
    /// tracked yet that starts with its fingerprint and holds the bytes
    /// before its acknowledged position.
    fn find_copy(&mut self, seq: u64) -> Option<(Sibling, W::File, Meta)> {
        let tf = &self.files[&seq];
        if tf.fingerprint.is_empty() {
            return None;
        }
        let want = Saved {
            offset: tf.committed(),
            fingerprint: tf.fingerprint.clone(),
            check: tf.ledger.committed().check.as_slice().to_vec(),
            mtime: 0,
            origin: tf.origin.clone(),
            path: tf.path.clone(),
        };
        let mut best: Option<(Sibling, W::File, Meta)> = None;
        for s in self.world.siblings(&tf.origin) {
            if self.by_id.contains_key(&s.id) {
                continue;
            }
            // Several copies of one content: the newest has the most.
            if best.as_ref().is_some_and(|b| b.0.mtime >= s.mtime) {
                continue;
            }
            if let Some((file, md)) = open_holding(&self.world, &s, &want) {
                best = Some((s, file, md));
            }
        }
        best
    }

    /// Sends multiline events that waited longer than their flush timeout.
    pub fn flush_timed_out(&mut self, now: Instant) {
        self.now = now;
        let Some(rule) = self.settings.multiline.clone() else {
            return;
        };
        let now = self.now;
        let due: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, tf)| {
                tf.splitter
                    .multiline_since()
                    .is_some_and(|t| now.saturating_duration_since(t) >= rule.flush_timeout)
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            let tf = self.files.get_mut(&seq).expect("seq from files");
            let mut records = Vec::with_capacity(1);
            let split = tf.splitter.flush_held(&mut records);
            self.send(seq, records, split.end_offset);
        }
    }

    // ---- acknowledgements and positions ----------------------------------

    pub fn apply_acks(&mut self, acks: Vec<u64>) {
        for batch in acks {
            let Some(id) = self.owner.remove(&batch) else {
                continue;
            };
            let Some(tf) = self.by_id.get(&id).and_then(|seq| self.files.get_mut(seq)) else {
                continue;
            };
            tf.ledger.acknowledged(batch);
        }
    }

    /// Writes the acknowledged positions that changed, and the lag gauges.
    pub fn persist(&mut self) {
        let mut puts = Vec::new();
        for tf in self.files.values_mut() {
            tf.lag.set(tf.end().saturating_sub(tf.committed()) as i64);
            if tf.persisted == Some(tf.committed()) {
                continue;
            }
            let saved = saved_of(tf);
            puts.push((tf.id.key(), saved.encode()));
            self.known.insert(tf.id, saved);
            tf.persisted = Some(tf.committed());
        }
        let removes = std::mem::take(&mut self.removes);
        // A file forgotten since its save failed is not saved again.
        let orphans = std::mem::take(&mut self.orphan_puts);
        puts.extend(orphans.into_iter().filter(|(k, _)| !removes.contains(k)));
        if puts.is_empty() && removes.is_empty() {
            return;
        }
        // The shell flushes it at once: a position that is only in the
        // store's memory is lost with the process, and everything after
        // the one before it is sent again.
        self.actions.push(Action::Save(Save { puts, removes }));
    }

    /// Closes what rotated and deleted files no longer need: a deleted file
    /// read to its end and acknowledged is closed and forgotten (its disk
    /// space is freed); a rotated one is parked once idle, and read again
    /// if it grows. An unterminated last line is sent once the file has
    /// been idle for `rotated_idle`: its writer moved on.
    pub fn release_finished(&mut self, now: Instant) {
        self.now = now;
        let idle = self.settings.rotated_idle;
        let now = self.now;
        let done: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, tf)| tf.life.place() != Place::Live && tf.life.at_eof())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in done {
            let tf = self.files.get_mut(&seq).expect("seq from files");
            let is_idle = now.saturating_duration_since(tf.last_growth) >= idle;
            if !tf.buf.is_empty() || tf.splitter.held_since().is_some() {
                if is_idle {
                    let mut records = Vec::with_capacity(2);
                    let split = tf.splitter.flush(&mut tf.buf, &mut records);
                    self.count_split(&split);
                    self.send(seq, records, split.end_offset);
                }
                continue;
            }
            if tf.ledger.in_flight() > 0 {
                continue;
            }
            if tf.persisted != Some(tf.committed()) {
                self.persist();
            }
            let tf = self.files.get(&seq).expect("seq from files");
            match tf.life.place() {
                Place::Deleted => {
                    // Dropping it closes the descriptor and returns its permit.
                    let tf = self.files.remove(&seq).expect("seq from files");
                    self.by_id.remove(&tf.id);
                    self.file_metrics.forget_lag(&tf.path.to_string_lossy());
                    self.known.remove(&tf.id);
                    self.removes.push(tf.id.key());
                    debug!(source = %self.name, path = %tf.path.display(), offset = tf.committed(), "deleted file read to its end and closed");
                }
                Place::Rotated if is_idle => {
                    // Watched at the name it has now (it may have moved on).
                    let now = tf.life.file().and_then(|f| self.world.current_path(f));
                    debug!(source = %self.name, path = ?now, offset = tf.committed(), "rotated file read to its end, closed");
                    if let Some(now) = now.filter(|p| *p != tf.path) {
                        self.rename(seq, now);
                    }
                    self.park(seq);
                }
                _ => {}
            }
        }
    }
}

fn saved_of<F>(tf: &Tracked<F>) -> Saved {
    Saved {
        offset: tf.committed(),
        fingerprint: tf.fingerprint.clone(),
        check: tf.ledger.committed().check.as_slice().to_vec(),
        mtime: tf.mtime.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        origin: tf.origin.clone(),
        path: tf.path.clone(),
    }
}

/// The positions a source's store holds, by file; an entry that does not
/// decode is skipped (and logged).
pub fn known_of(source: &str, entries: Vec<(Vec<u8>, Vec<u8>)>) -> HashMap<FileId, Saved> {
    let mut known = HashMap::new();
    for (k, v) in entries {
        match (FileId::from_key(&k), Saved::decode(&v)) {
            (Some(id), Some(saved)) => {
                known.insert(id, saved);
            }
            _ => warn!(source, "ignoring an unreadable saved position"),
        }
    }
    known
}

/// Opens `s` if it holds the content `saved` was saved for.
fn open_holding<W: World>(world: &W, s: &Sibling, saved: &Saved) -> Option<(W::File, Meta)> {
    let file = world.open_rotation(&s.path).ok()?;
    let md = world.fstat(&file).ok()?;
    if md.id != s.id
        || !identity::holds(
            &file,
            md.size,
            &saved.fingerprint,
            &saved.check,
            saved.offset,
        )
    {
        return None;
    }
    Some((file, md))
}

/// A round of reading (see [`FileTable::round`]).
pub struct Round {
    seqs: std::vec::IntoIter<u64>,
    /// A descriptor may still be freed this round.
    slots: bool,
    /// The file whose turn it is, and the chunk of its turn to read next.
    turn: Option<(u64, usize)>,
}

/// Chunks read from one file before the others get their turn.
const CHUNKS_PER_TURN: usize = 4;
