//! The thread that reads the journal of one source.
//!
//! It opens the journal, seeks to the entry after the saved cursor (or the
//! start or end, the first time), and then loops: read up to
//! `batch_max_entries` entries into one batch, send it, note its last
//! cursor in the [`CursorBook`]; when there is nothing more, wait for the
//! journal to change. Acknowledgements arrive from the sinks' threads into
//! [`Acks`]; the book moves over them, and every `checkpoint_interval` the
//! acknowledged cursor is saved and flushed.
//!
//! What this never does: save a cursor past an entry that was not
//! acknowledged; skip an entry after a cursor that no longer exists (it
//! resumes at the oldest entry after it, counted).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tailrace_api::{
    Ack, AckReceiver, Batch, BatchMeta, BuildError, ComponentTask, FieldValue, Fields, Record,
    SourceContext,
};
use tracing::{debug, info, warn};

use crate::cursor::{CursorBook, Position};
use crate::metrics::JournaldMetrics;
use crate::sd::{Change, Journal, SdError, Where};
use crate::StartAt;

pub(crate) struct Settings {
    pub at: Where,
    /// `FIELD=value` matches given to sd-journal.
    pub include: Vec<Vec<u8>>,
    /// `FIELD=value` pairs that exclude an entry.
    pub exclude: HashSet<Vec<u8>>,
    pub start_at: StartAt,
    pub current_boot_only: bool,
    pub batch_max_entries: usize,
    pub checkpoint_interval: Duration,
    pub poll_interval: Duration,
}

/// The store key of the cursor (one per source).
const KEY: &[u8] = b"cursor";

/// Acknowledged batch ids, collected from the sinks' threads.
#[derive(Default)]
struct Acks(Mutex<Vec<u64>>);

impl AckReceiver for Acks {
    fn acknowledged(&self, batch_id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(batch_id);
    }
}

impl Acks {
    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A saved position: `realtime_us` as 8 bytes, then the cursor.
fn encode(p: &Position) -> Vec<u8> {
    let mut v = p.realtime_us.to_be_bytes().to_vec();
    v.extend_from_slice(p.cursor.as_bytes());
    v
}

fn decode(v: &[u8]) -> Option<Position> {
    let (t, c) = v.split_at_checked(8)?;
    Some(Position {
        realtime_us: u64::from_be_bytes(t.try_into().ok()?),
        cursor: String::from_utf8(c.to_vec()).ok()?,
    })
}

struct Reader {
    cx: SourceContext,
    settings: Settings,
    acks: Arc<Acks>,
    book: CursorBook,
    next_batch: u64,
    /// Field names, allocated once each.
    names: Names,
    host: Arc<str>,
    timestamp: Arc<str>,
    /// Where entries are copied to; records are slices of it.
    arena: BytesMut,
    /// The fields of the entry being read: name, start, end in `arena`.
    scratch: Vec<(Arc<str>, usize, usize)>,
    lag: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    metrics: JournaldMetrics,
    /// The journal is on an entry not read yet (after a missing cursor).
    on_unread: bool,
}

pub(crate) fn spawn(cx: SourceContext, settings: Settings) -> Result<ComponentTask, BuildError> {
    let saved = cx
        .checkpoints
        .load(&cx.name)
        .map_err(|e| BuildError(format!("cannot load the cursor of source {}: {e}", cx.name)))?
        .into_iter()
        .find(|(k, _)| k == KEY)
        .and_then(|(_, v)| {
            let p = decode(&v);
            if p.is_none() {
                warn!(source = %cx.name, "ignoring an unreadable saved cursor");
            }
            p
        });
    // Open once here so that a journal that cannot be opened fails the start.
    Journal::open(&settings.at).map_err(|e| BuildError(open_error(&cx.name, &settings.at, &e)))?;
    let name = cx.name.clone();
    let journald_metrics = JournaldMetrics::of(&cx.name, &cx.metrics);
    let lag = journald_metrics.lag();
    let reader = Reader {
        cx,
        settings,
        acks: Arc::default(),
        book: CursorBook::new(saved),
        next_batch: 0,
        names: Names::default(),
        host: "host".into(),
        timestamp: "timestamp".into(),
        arena: BytesMut::new(),
        scratch: Vec::new(),
        lag,
        metrics: journald_metrics,
        on_unread: false,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("journald-{name}"))
        .spawn(move || {
            let _ = tx.send(reader.run());
        })
        .map_err(|e| BuildError(format!("cannot start the thread of source {name}: {e}")))?;
    Ok(Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err("the journald source thread panicked".into()))
    }))
}

fn open_error(source: &str, at: &Where, e: &SdError) -> String {
    let what = match at {
        Where::System => "the system journal".to_owned(),
        Where::Directory(d) => format!("the journal directory {}", d.display()),
        Where::Files(f) => format!("the journal files {f:?}"),
    };
    format!("source {source}: cannot open {what}: {e} (run as root or as a user in group systemd-journal)")
}

impl Reader {
    fn run(mut self) -> Result<(), String> {
        let name = self.cx.name.clone();
        let mut journal = self
            .open()
            .map_err(|e| open_error(&name, &self.settings.at, &e))?;
        info!(source = %name, cursor = self.book.committed().is_some(), "journald source started");
        let mut last_persist = Instant::now();
        let mut failure = None;
        while !self.cx.shutdown.is_triggered() {
            self.cx.heartbeat.beat();
            let read = match self.read_batch(&mut journal) {
                Ok(n) => n,
                Err(ReadError::Closed) => break,
                Err(ReadError::Sd(e)) => {
                    failure = Some(format!("source {name}: cannot read the journal: {e}"));
                    break;
                }
            };
            self.apply_acks();
            if last_persist.elapsed() >= self.settings.checkpoint_interval {
                self.persist(&mut journal);
                last_persist = Instant::now();
            }
            if read == 0 {
                match journal.wait(self.settings.poll_interval) {
                    Ok(Change::Invalidated) => debug!(source = %name, "journal files changed"),
                    Ok(_) => {}
                    Err(e) => warn!(source = %name, error = %e, "cannot wait for the journal"),
                }
            }
        }
        self.cx.sent.trigger();
        debug!(source = %name, "journald source stopped reading, waiting for the sinks");
        loop {
            self.cx.heartbeat.beat();
            let drained = self.cx.drained.wait_timeout(Duration::from_millis(50));
            self.apply_acks();
            self.persist(&mut journal);
            if drained {
                break;
            }
        }
        self.cx
            .checkpoints
            .flush()
            .map_err(|e| format!("cannot flush the cursor of source {name}: {e}"))?;
        info!(source = %name, "journald source stopped");
        failure.map_or(Ok(()), Err)
    }

    /// Opens the journal, applies the matches and seeks to where reading
    /// goes on.
    fn open(&mut self) -> Result<Journal, SdError> {
        let mut j = Journal::open(&self.settings.at)?;
        for m in &self.settings.include {
            j.add_match(m)?;
        }
        if self.settings.current_boot_only {
            j.add_match(format!("_BOOT_ID={}", crate::sd::boot_id()?).as_bytes())?;
        }
        match self.book.committed().cloned() {
            Some(saved) => {
                j.seek_cursor(&saved.cursor)?;
                if j.next()? {
                    if j.test_cursor(&saved.cursor)? {
                        // The saved entry itself: go on after it.
                    } else {
                        // It was vacuumed or rotated away: the entry we are
                        // on is the oldest after it, and is read first.
                        self.metrics.event("cursor_missing", 1);
                        warn!(source = %self.cx.name, cursor = %saved.cursor, "the saved cursor is no longer in the journal, resuming at the oldest entry after it");
                        self.on_unread = true;
                    }
                }
            }
            None => match self.settings.start_at {
                StartAt::Beginning => j.seek_head()?,
                StartAt::End => {
                    j.seek_tail()?;
                    // On the newest entry: the next one is new.
                    j.previous()?;
                }
            },
        }
        Ok(j)
    }

    /// Reads and sends up to `batch_max_entries` entries; returns how many.
    fn read_batch(&mut self, j: &mut Journal) -> Result<usize, ReadError> {
        let max = self.settings.batch_max_entries;
        let mut records = Vec::with_capacity(max.min(1024));
        let mut entries = 0;
        let mut last_time = 0;
        let mut unreadable = 0u64;
        while entries < max && (std::mem::take(&mut self.on_unread) || j.next()?) {
            entries += 1;
            let realtime_us = j.realtime_us()?;
            last_time = realtime_us;
            if self.arena.capacity() - self.arena.len() < 64 * 1024 {
                self.arena.reserve(1 << 20);
            }
            let mut message = None;
            let mut excluded = false;
            let mut fields = std::mem::take(&mut self.scratch);
            fields.clear();
            let exclude = &self.settings.exclude;
            let (arena, names, host) = (&mut self.arena, &mut self.names, &self.host);
            let mut position = 0;
            unreadable += j.for_each_field(|data| {
                let Some(eq) = data.iter().position(|&b| b == b'=') else {
                    return;
                };
                if !exclude.is_empty() && exclude.contains(data) {
                    excluded = true;
                }
                let start = arena.len();
                arena.extend_from_slice(&data[eq + 1..]);
                let end = arena.len();
                match &data[..eq] {
                    b"MESSAGE" => message = Some((start, end)),
                    b"_HOSTNAME" => fields.push((host.clone(), start, end)),
                    name => fields.push((names.get(position, name), start, end)),
                }
                position += 1;
            })?;
            // The entry's values, one buffer; the arena keeps its capacity.
            let entry = self.arena.split().freeze();
            if excluded {
                self.scratch = fields;
                continue;
            }
            let record = self.record(&entry, message, &fields, realtime_us);
            self.scratch = fields;
            records.push(record);
        }
        if entries == 0 {
            return Ok(0);
        }
        if unreadable > 0 {
            self.cx.metrics.parse_errors.inc_by(unreadable);
            debug!(source = %self.cx.name, fields = unreadable, "journal fields that cannot be read were left out");
        }
        let last = Position {
            cursor: j.cursor()?,
            realtime_us: last_time,
        };
        let batch_id = self.next_batch;
        self.next_batch += 1;
        self.book.sent(batch_id, last);
        // A batch of only excluded entries is acknowledged at once.
        let ack = Ack::new(batch_id, records.len(), self.acks.clone());
        if records.is_empty() {
            return Ok(entries);
        }
        let meta = Arc::new(BatchMeta {
            source: self.cx.name.clone(),
            path: None,
            // Entries have no offset: their event ids are per run (a
            // journal cursor would make them stable; not done yet).
            stream: None,
            read_at: SystemTime::now(),
        });
        self.cx
            .send_blocking(Batch::new(meta, records, ack))
            .map_err(|_| ReadError::Closed)?;
        Ok(entries)
    }

    /// One entry's record: `MESSAGE` as the payload, the other fields as
    /// fields, slices of the entry's copy.
    fn record(
        &self,
        entry: &Bytes,
        message: Option<(usize, usize)>,
        names: &[(Arc<str>, usize, usize)],
        realtime_us: u64,
    ) -> Record {
        let payload = message.map_or_else(Bytes::new, |(s, e)| entry.slice(s..e));
        let mut r = Record::new(payload, 0);
        let mut fields = Fields::with_capacity(names.len() + 1);
        for (n, s, e) in names {
            fields.set(n.clone(), FieldValue::Text(entry.slice(*s..*e)));
        }
        fields.set(
            self.timestamp.clone(),
            FieldValue::Int((realtime_us / 1000) as i64),
        );
        r.fields = Some(Box::new(fields));
        r
    }

    fn apply_acks(&mut self) {
        for id in self.acks.take() {
            self.book.acknowledged(id);
        }
    }

    /// Writes the acknowledged cursor if it moved, and the lag.
    fn persist(&mut self, j: &mut Journal) {
        if let Some((oldest, newest)) = j.span_us() {
            // Nothing acknowledged yet: everything from where reading began.
            let done = match (self.book.committed(), self.settings.start_at) {
                (Some(p), _) => p.realtime_us,
                (None, StartAt::Beginning) => oldest,
                (None, StartAt::End) => newest,
            };
            self.lag.set(newest.saturating_sub(done) as f64 / 1e6);
        }
        let Some(p) = self.book.to_save() else {
            return;
        };
        let put = (KEY.to_vec(), encode(p));
        // Flushed at once: a cursor only in the store's memory is lost
        // with the process.
        let saved = self
            .cx
            .checkpoints
            .save(&self.cx.name, &[put], &[])
            .and_then(|()| self.cx.checkpoints.flush());
        match saved {
            Ok(()) => {
                debug!(source = %self.cx.name, cursor = %p.cursor, "journal cursor saved");
                self.book.saved()
            }
            Err(e) => {
                warn!(source = %self.cx.name, error = %e, "cannot save the journal cursor; it will be saved on the next try")
            }
        }
    }
}

/// Field names, each allocated the first time it is seen. Entries of one
/// service list their fields in the same order, so the name at each
/// position is remembered and compared first; the map is the fallback.
#[derive(Default)]
struct Names {
    by_name: HashMap<Vec<u8>, Arc<str>>,
    by_position: Vec<(Vec<u8>, Arc<str>)>,
}

impl Names {
    fn get(&mut self, position: usize, name: &[u8]) -> Arc<str> {
        if let Some((n, a)) = self.by_position.get(position) {
            if n == name {
                return a.clone();
            }
        }
        let a = match self.by_name.get(name) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = String::from_utf8_lossy(name).into();
                self.by_name.insert(name.to_vec(), a.clone());
                a
            }
        };
        if position < self.by_position.len() {
            self.by_position[position] = (name.to_vec(), a.clone());
        } else if position == self.by_position.len() {
            self.by_position.push((name.to_vec(), a.clone()));
        }
        a
    }
}

enum ReadError {
    /// The source was told to stop: its channel is closed.
    Closed,
    Sd(SdError),
}

impl From<SdError> for ReadError {
    fn from(e: SdError) -> Self {
        ReadError::Sd(e)
    }
}
