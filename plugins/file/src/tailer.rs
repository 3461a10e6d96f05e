//! The thread that tails the files of one source.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use notify::{EventKind, RecursiveMode, Watcher};
use tailrace_api::{
    Ack, AckReceiver, Batch, BatchMeta, BuildError, ComponentTask, Record, SourceContext,
};
use tracing::{debug, info, warn};

use crate::checkpoint::{FileId, Saved};
use crate::scan::Matcher;
use crate::split::{LinePolicy, Splitter};
use crate::StartAt;

pub(crate) struct Settings {
    pub start_at: StartAt,
    pub poll_interval: Duration,
    pub scan_interval: Duration,
    pub read_buffer_bytes: usize,
    pub max_line_bytes: usize,
    pub max_line_policy: LinePolicy,
    pub fingerprint_bytes: usize,
    pub rotated_idle: Duration,
    pub checkpoint_interval: Duration,
}

/// Chunks read from one file before the others get their turn.
const CHUNKS_PER_TURN: usize = 4;

/// Wakes the tailer: acknowledgements arrived, or the file system changed.
#[derive(Default)]
struct Wake {
    state: Mutex<WakeState>,
    cond: Condvar,
}

#[derive(Default)]
struct WakeState {
    acks: Vec<u64>,
    rescan: bool,
    poked: bool,
}

impl Wake {
    fn poke(&self, rescan: bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.rescan |= rescan;
        st.poked = true;
        self.cond.notify_one();
    }

    /// Waits for a poke or the timeout; returns the acks and whether a
    /// rescan was asked for.
    fn wait(&self, timeout: Duration) -> (Vec<u64>, bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.poked && !timeout.is_zero() {
            st = self
                .cond
                .wait_timeout(st, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.poked = false;
        let rescan = std::mem::take(&mut st.rescan);
        (std::mem::take(&mut st.acks), rescan)
    }
}

impl AckReceiver for Wake {
    fn acknowledged(&self, batch_id: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.acks.push(batch_id);
        st.poked = true;
        self.cond.notify_one();
    }
}

struct Pending {
    batch: u64,
    end: u64,
    done: bool,
}

/// A file being read.
struct Tracked {
    id: FileId,
    path: PathBuf,
    path_arc: Arc<Path>,
    file: File,
    buf: BytesMut,
    splitter: Splitter,
    /// Next byte to read.
    read_pos: u64,
    /// The first bytes of the file, up to `fingerprint_bytes`.
    fingerprint: Vec<u8>,
    pending: VecDeque<Pending>,
    /// Every byte before this was acknowledged.
    committed: u64,
    /// What the store holds for this file (`None`: nothing yet).
    persisted: Option<u64>,
    /// The path no longer names this file: it was rotated or deleted.
    gone: bool,
    last_growth: Instant,
}

/// The source was told to stop: its channel is closed.
struct Closed;

struct Tailer {
    cx: SourceContext,
    matcher: Matcher,
    settings: Settings,
    wake: Arc<Wake>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    /// Files in the order they were opened, so older files are read first.
    files: BTreeMap<u64, Tracked>,
    by_id: HashMap<FileId, u64>,
    next_open: u64,
    /// Which file each unacknowledged batch came from.
    owner: HashMap<u64, FileId>,
    next_batch: u64,
    /// The positions in the store, by file.
    known: HashMap<FileId, Saved>,
    last_warning: Option<Instant>,
}

pub(crate) fn spawn(
    cx: SourceContext,
    matcher: Matcher,
    settings: Settings,
) -> Result<ComponentTask, BuildError> {
    let mut known = HashMap::new();
    let entries = cx.checkpoints.load(&cx.name).map_err(|e| {
        BuildError(format!(
            "cannot load the positions of source {}: {e}",
            cx.name
        ))
    })?;
    for (k, v) in entries {
        match (FileId::from_key(&k), Saved::decode(&v)) {
            (Some(id), Some(saved)) => {
                known.insert(id, saved);
            }
            _ => warn!(source = %cx.name, "ignoring an unreadable saved position"),
        }
    }
    let wake = Arc::new(Wake::default());
    let watcher = {
        let wake = wake.clone();
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let rescan = ev.need_rescan()
                    || !matches!(
                        ev.kind,
                        EventKind::Modify(notify::event::ModifyKind::Data(_))
                            | EventKind::Access(_)
                    );
                wake.poke(rescan)
            }
            Err(_) => wake.poke(true),
        })
    };
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(source = %cx.name, error = %e, "file change notifications unavailable, polling only");
            None
        }
    };
    let name = cx.name.clone();
    let tailer = Tailer {
        cx,
        matcher,
        settings,
        wake,
        watcher,
        watched: HashSet::new(),
        files: BTreeMap::new(),
        by_id: HashMap::new(),
        next_open: 0,
        owner: HashMap::new(),
        next_batch: 0,
        known,
        last_warning: None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("file-{name}"))
        .spawn(move || {
            let _ = tx.send(tailer.run());
        })
        .map_err(|e| BuildError(format!("cannot start the thread of source {name}: {e}")))?;
    Ok(Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err("the file source thread panicked".into()))
    }))
}

impl Tailer {
    fn run(mut self) -> Result<(), String> {
        let name = self.cx.name.clone();
        self.scan(true);
        info!(source = %name, files = self.files.len(), "file source started");
        let mut last_scan = Instant::now();
        let mut last_persist = Instant::now();
        let mut rescan = false;
        while !self.cx.shutdown.is_triggered() {
            if rescan && last_scan.elapsed() >= Duration::from_millis(20)
                || last_scan.elapsed() >= self.settings.scan_interval
            {
                self.scan(false);
                last_scan = Instant::now();
                rescan = false;
            }
            let read = match self.read_round() {
                Ok(n) => n,
                Err(Closed) => break,
            };
            if self.release_finished().is_err() {
                break;
            }
            if last_persist.elapsed() >= self.settings.checkpoint_interval {
                self.persist();
                last_persist = Instant::now();
            }
            let timeout = if read > 0 {
                Duration::ZERO
            } else {
                self.settings.poll_interval
            };
            let (acks, asked) = self.wake.wait(timeout);
            self.apply_acks(acks);
            rescan |= asked;
        }
        self.cx.sent.trigger();
        debug!(source = %name, "file source stopped reading, waiting for the sinks");
        loop {
            let drained = self.cx.drained.wait_timeout(Duration::from_millis(50));
            let (acks, _) = self.wake.wait(Duration::ZERO);
            self.apply_acks(acks);
            self.persist();
            if drained {
                break;
            }
        }
        self.cx
            .checkpoints
            .flush()
            .map_err(|e| format!("cannot flush the positions of source {name}: {e}"))?;
        info!(source = %name, "file source stopped");
        Ok(())
    }

    fn warn_limited(&mut self, path: &Path, what: &str, err: &std::io::Error) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.last_warning = Some(now);
            warn!(source = %self.cx.name, path = %path.display(), error = %err, "{what}");
        }
    }

    fn watch_roots(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for root in self.matcher.roots() {
            if self.watched.contains(&root.dir) || !root.dir.is_dir() {
                continue;
            }
            let mode = if root.depth.is_none_or(|d| d > 1) {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match watcher.watch(&root.dir, mode) {
                Ok(()) => {
                    self.watched.insert(root.dir.clone());
                }
                Err(e) => {
                    debug!(dir = %root.dir.display(), error = %e, "cannot watch directory, polling it")
                }
            }
        }
    }

    /// Matches the globs again: opens new files, notices renamed and
    /// rotated ones.
    fn scan(&mut self, initial: bool) {
        self.watch_roots();
        let mut seen = HashSet::new();
        for path in self.matcher.scan() {
            let md = match std::fs::metadata(&path) {
                Ok(md) => md,
                Err(_) => continue,
            };
            let id = FileId {
                dev: md.dev(),
                ino: md.ino(),
            };
            seen.insert(id);
            if let Some(seq) = self.by_id.get(&id) {
                let tf = self.files.get_mut(seq).expect("by_id and files agree");
                if tf.path != path {
                    debug!(source = %self.cx.name, from = %tf.path.display(), to = %path.display(), "file renamed");
                    tf.path_arc = Arc::from(path.as_path());
                    tf.path = path;
                }
                tf.gone = false;
                continue;
            }
            self.open(path, md, id, initial);
        }
        for tf in self.files.values_mut() {
            if !seen.contains(&tf.id) && !tf.gone {
                debug!(source = %self.cx.name, path = %tf.path.display(), "file rotated away or deleted, reading it to its end");
                tf.gone = true;
            }
        }
    }

    fn open(&mut self, path: PathBuf, md: Metadata, id: FileId, initial: bool) {
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                self.warn_limited(&path, "cannot open file (check its permissions)", &e);
                return;
            }
        };
        let size = md.len();
        let fp_len = (self.settings.fingerprint_bytes as u64).min(size) as usize;
        let mut fingerprint = vec![0; fp_len];
        if let Err(e) = file.read_exact_at(&mut fingerprint, 0) {
            self.warn_limited(&path, "cannot read file", &e);
            return;
        }
        let start = match self.known.get(&id) {
            Some(saved)
                if fingerprint.len() >= saved.fingerprint.len()
                    && fingerprint[..saved.fingerprint.len()] == saved.fingerprint[..]
                    && saved.offset <= size =>
            {
                saved.offset
            }
            other => {
                if other.is_some() {
                    info!(source = %self.cx.name, path = %path.display(), "saved position belongs to other content (inode reused or file truncated), reading as a new file");
                }
                if initial && self.settings.start_at == StartAt::End {
                    size
                } else {
                    0
                }
            }
        };
        if let Err(e) = file.seek(SeekFrom::Start(start)) {
            self.warn_limited(&path, "cannot seek in file", &e);
            return;
        }
        debug!(source = %self.cx.name, path = %path.display(), offset = start, "file opened");
        let persisted = self
            .known
            .get(&id)
            .map(|s| s.offset)
            .filter(|&o| o == start);
        let seq = self.next_open;
        self.next_open += 1;
        self.by_id.insert(id, seq);
        self.files.insert(
            seq,
            Tracked {
                id,
                path_arc: Arc::from(path.as_path()),
                path,
                file,
                buf: BytesMut::new(),
                splitter: Splitter::new(
                    self.settings.max_line_bytes,
                    self.settings.max_line_policy,
                    start,
                ),
                read_pos: start,
                fingerprint,
                pending: VecDeque::new(),
                committed: start,
                persisted,
                gone: false,
                last_growth: Instant::now(),
            },
        );
    }

    /// Gives every file a turn; returns the bytes read.
    fn read_round(&mut self) -> Result<usize, Closed> {
        let seqs: Vec<u64> = self.files.keys().copied().collect();
        let mut total = 0;
        for seq in seqs {
            for _ in 0..CHUNKS_PER_TURN {
                let n = self.read_chunk(seq)?;
                total += n;
                if n < self.settings.read_buffer_bytes / 2 {
                    break;
                }
            }
        }
        Ok(total)
    }

    fn read_chunk(&mut self, seq: u64) -> Result<usize, Closed> {
        let chunk = self.settings.read_buffer_bytes;
        let fp_max = self.settings.fingerprint_bytes;
        let tf = self.files.get_mut(&seq).expect("seq from files");
        let old = tf.buf.len();
        tf.buf.reserve(chunk);
        tf.buf.resize(old + chunk, 0);
        let res = tf.file.read(&mut tf.buf[old..]);
        let n = *res.as_ref().unwrap_or(&0);
        tf.buf.truncate(old + n);
        if let Err(e) = res {
            let path = tf.path.clone();
            self.warn_limited(&path, "cannot read file", &e);
            return Ok(0);
        }
        if n == 0 {
            self.at_end(seq);
            return Ok(0);
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
        tf.read_pos += n as u64;
        tf.last_growth = Instant::now();
        let mut records = Vec::with_capacity(n / 64 + 8);
        let split = tf.splitter.split(&mut tf.buf, &mut records);
        if split.truncated_lines > 0 {
            self.cx
                .metrics
                .dropped
                .add("line_truncated", split.truncated_lines);
        }
        if split.split_lines > 0 {
            debug!(source = %self.cx.name, lines = split.split_lines, "over-long lines split");
        }
        self.send(seq, records, split.end_offset)?;
        Ok(n)
    }

    fn send(&mut self, seq: u64, records: Vec<Record>, end: u64) -> Result<(), Closed> {
        if records.is_empty() {
            return Ok(());
        }
        let tf = self.files.get_mut(&seq).expect("seq from files");
        let batch_id = self.next_batch;
        self.next_batch += 1;
        tf.pending.push_back(Pending {
            batch: batch_id,
            end,
            done: false,
        });
        self.owner.insert(batch_id, tf.id);
        let meta = Arc::new(BatchMeta {
            source: self.cx.name.clone(),
            path: Some(tf.path_arc.clone()),
            read_at: SystemTime::now(),
        });
        let ack = Ack::new(batch_id, records.len(), self.wake.clone());
        self.cx
            .send_blocking(Batch::new(meta, records, ack))
            .map_err(|_| Closed)
    }

    /// The file had nothing more to read: check for truncation, and emit
    /// the unterminated last line of a file that will not grow again.
    fn at_end(&mut self, seq: u64) {
        let tf = self.files.get_mut(&seq).expect("seq from files");
        let md = match tf.file.metadata() {
            Ok(md) => md,
            Err(_) => return,
        };
        if md.nlink() == 0 && !tf.gone {
            debug!(source = %self.cx.name, path = %tf.path.display(), "file deleted, reading it to its end");
            tf.gone = true;
        }
        if md.len() < tf.read_pos {
            warn!(source = %self.cx.name, path = %tf.path.display(), size = md.len(), position = tf.read_pos, "file truncated, reading it again from the start");
            let _ = tf.file.seek(SeekFrom::Start(0));
            tf.read_pos = 0;
            tf.buf.clear();
            tf.splitter = Splitter::new(
                self.settings.max_line_bytes,
                self.settings.max_line_policy,
                0,
            );
            tf.fingerprint.clear();
            tf.pending.clear();
            tf.committed = 0;
            tf.persisted = None;
        }
    }

    fn apply_acks(&mut self, acks: Vec<u64>) {
        for batch in acks {
            let Some(id) = self.owner.remove(&batch) else {
                continue;
            };
            let Some(tf) = self.by_id.get(&id).and_then(|seq| self.files.get_mut(seq)) else {
                continue;
            };
            if let Ok(i) = tf.pending.binary_search_by_key(&batch, |p| p.batch) {
                tf.pending[i].done = true;
            }
            while tf.pending.front().is_some_and(|p| p.done) {
                tf.committed = tf.pending.pop_front().expect("front exists").end;
            }
        }
    }

    /// Writes the acknowledged positions that changed.
    fn persist(&mut self) {
        let mut puts = Vec::new();
        for tf in self.files.values_mut() {
            if tf.persisted == Some(tf.committed) {
                continue;
            }
            let saved = Saved {
                offset: tf.committed,
                fingerprint: tf.fingerprint.clone(),
                path: tf.path.clone(),
            };
            puts.push((tf.id.key(), saved.encode()));
            self.known.insert(tf.id, saved);
            tf.persisted = Some(tf.committed);
        }
        if puts.is_empty() {
            return;
        }
        if let Err(e) = self.cx.checkpoints.save(&self.cx.name, &puts, &[]) {
            warn!(source = %self.cx.name, error = %e, "cannot save file positions; they will be saved on the next try");
            for tf in self.files.values_mut() {
                tf.persisted = None;
            }
        }
    }

    /// Closes rotated and deleted files that were read to their end and
    /// fully acknowledged, once they stopped growing.
    fn release_finished(&mut self) -> Result<(), Closed> {
        let idle = self.settings.rotated_idle;
        let done: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, tf)| tf.gone && tf.last_growth.elapsed() >= idle)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in done {
            let tf = self.files.get_mut(&seq).expect("seq from files");
            if !tf.buf.is_empty() {
                // The writer moved on; its unterminated last line is final.
                let mut records = Vec::with_capacity(1);
                let split = tf.splitter.flush(&mut tf.buf, &mut records);
                self.send(seq, records, split.end_offset)?;
                continue;
            }
            if !tf.pending.is_empty() {
                continue;
            }
            let tf = self.files.get(&seq).expect("seq from files");
            if tf.persisted != Some(tf.committed) {
                self.persist();
            }
            let tf = self.files.remove(&seq).expect("seq from files");
            self.by_id.remove(&tf.id);
            debug!(source = %self.cx.name, path = %tf.path.display(), offset = tf.committed, "rotated file finished and closed");
        }
        Ok(())
    }
}
