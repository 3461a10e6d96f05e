//! The disk channel: batches kept in a segment log ([`crate::channel_log`])
//! between the sources and the sink, so that what the channel acknowledged
//! survives a kill -9 (and, with `fsync: batch`, a power cut).
//!
//! Sources and the sink see two memory [`Channel`]s, so neither changes and
//! the memory channel's path stays as it is: sources send into a small
//! `input` channel; the writer thread takes its batches, writes them into
//! the log, syncs per the policy and only then completes each batch's
//! [`Ack`] (for a socket source that is the moment the record is safe; for
//! a file source its position may move). The reader thread reads the log
//! in order into the `output` channel the sink takes from; each batch it
//! reads carries an [`Ack`] of the channel's own, which releases the batch
//! from the log when the sink completes it (Kafka acknowledged it, or it
//! was dead-lettered: the kafka sink keeps no copy of a disk channel's
//! batches in its spool). A batch the sink gives up on stays unreleased;
//! [`Redeliver::redeliver`] ([`DiskChannel::redelivery`]) moves the reader
//! back to the first unreleased batch and drops what it had read ahead,
//! so it comes again from disk, in order. After a restart the reader
//! starts at the first unreleased batch, so what the channel holds is
//! delivered first, in order, then what arrives.
//!
//! Bounds: the log holds at most `max_events` events and `max_bytes`
//! payload bytes unreleased; when a batch would pass them the writer waits,
//! `input` fills, and sources wait exactly as on a full memory channel.
//!
//! A batch is written as a spool entry (the same LZ4 and CRC-32): the
//! record's payload as the payload, its offset in the entry's timestamp
//! slot, its fields as headers whose value starts with a type byte (`t`
//! text, `i` a little-endian i64; `T` and `I` on the first record are the
//! batch's shared fields), and the batch's source, stream and path in the
//! entry's reason (`source \x1f stream \x1f path`), its read time as the
//! entry's creation time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{error, warn};

use crate::channel_log::{Damage, Held, LogError, Mode, SegmentLog, MAX_CORRUPT_SEGMENTS};
use crate::metrics::Dropped;
use crate::spool::{self, EntryError, EntryRecord};
use crate::{
    Ack, AckReceiver, Batch, BatchMeta, Channel, Families, FieldValue, Fields, Labels, Record,
    Redeliver,
};

/// When the writer syncs before it acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// fdatasync after every group of batches, before their acks.
    Batch,
    /// fdatasync at least this often; acks wait for it.
    Interval(Duration),
}

/// A disk channel's settings, as validated from the config.
#[derive(Clone, Debug)]
pub struct DiskSettings {
    pub max_bytes: u64,
    pub max_events: u64,
    pub fsync: Fsync,
    pub segment_bytes: u64,
}

/// The smallest `max_bytes` a disk channel takes.
pub const MIN_MAX_BYTES: u64 = 1 << 20;
/// Segments are this large at most (smaller for a small `max_bytes`).
pub const SEGMENT_BYTES: u64 = 64 << 20;

impl DiskSettings {
    /// The segment size for a `max_bytes`: 64 MiB, or an eighth of a small
    /// channel, so that released segments go while it fills.
    pub fn segment_for(max_bytes: u64) -> u64 {
        SEGMENT_BYTES.min(max_bytes / 8).max(64 << 10)
    }
}

/// Where a disk channel named `name` keeps its log under `data_dir`.
pub fn channel_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("channels").join(name)
}

/// The disk channel's metric families: `tailrace_channel_disk_bytes`,
/// `tailrace_channel_corrupt_batches_total{channel,reason}` (`torn_tail`,
/// `checksum`, each exported at 0 for every channel, memory ones too, see
/// [`declare_corrupt`]) and
/// `tailrace_channel_corrupt_segments_deleted_total{channel}`.
#[derive(Clone, Default)]
pub struct DiskFamilies {
    disk_bytes: Family<Labels, Gauge>,
    corrupt: Family<Labels, Counter>,
    corrupt_deleted: Family<Labels, Counter>,
}

/// The reason a batch the writer never found room for, and that no source
/// will send again, is counted with in `tailrace_events_dropped_total`.
pub const DROPPED_AT_SHUTDOWN: &str = "shutdown_channel_full";

/// `tailrace_channel_corrupt_batches_total{channel, reason}` of channel
/// `name`, (torn_tail, checksum), made (at 0) if new: the agent declares
/// them for every channel so that alerts need not know its type.
pub fn declare_corrupt(families: &DiskFamilies, name: &str) -> (Counter, Counter) {
    let corrupt = |reason: &str| {
        families
            .corrupt
            .get_or_create(&vec![
                ("channel", name.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .clone()
    };
    (corrupt("torn_tail"), corrupt("checksum"))
}

impl Families for DiskFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tailrace_channel_disk_bytes",
            "Bytes a disk channel's segments take on disk",
            self.disk_bytes.clone(),
        );
        registry.register(
            "tailrace_channel_corrupt_batches",
            "Batches a disk channel found damaged and set aside, by reason (torn_tail, checksum)",
            self.corrupt.clone(),
        );
        registry.register(
            "tailrace_channel_corrupt_segments_deleted",
            "Set-aside (*.seg.corrupt) segments a disk channel deleted, oldest first, to keep at most 4",
            self.corrupt_deleted.clone(),
        );
    }
}

/// One disk channel's metric handles.
#[derive(Clone)]
pub struct DiskMetrics {
    pub events: Gauge,
    pub bytes: Gauge,
    pub disk_bytes: Gauge,
    pub torn: Counter,
    pub checksum: Counter,
    pub corrupt_deleted: Counter,
    /// `tailrace_events_dropped_total{component=<channel>}`.
    pub dropped: Dropped,
}

impl DiskMetrics {
    /// The handles of channel `name`; `events` and `bytes` are its
    /// `tailrace_channel_events` and `_bytes` gauges, `dropped` its drop
    /// counter ([`DROPPED_AT_SHUTDOWN`] is exported at 0).
    pub fn new(
        families: &DiskFamilies,
        name: &str,
        events: Gauge,
        bytes: Gauge,
        dropped: Dropped,
    ) -> DiskMetrics {
        let (torn, checksum) = declare_corrupt(families, name);
        let l = vec![("channel", name.to_owned())];
        dropped.add(DROPPED_AT_SHUTDOWN, 0);
        DiskMetrics {
            events,
            bytes,
            disk_bytes: families.disk_bytes.get_or_create(&l).clone(),
            torn,
            checksum,
            corrupt_deleted: families.corrupt_deleted.get_or_create(&l).clone(),
            dropped,
        }
    }

    pub fn unmetered() -> DiskMetrics {
        DiskMetrics::new(
            &DiskFamilies::default(),
            "",
            Gauge::default(),
            Gauge::default(),
            crate::Metrics::new().dropped(""),
        )
    }
}

/// Encodes a batch as one spool entry (see the module's doc).
pub fn encode(batch: &Batch) -> Vec<u8> {
    let mut headers: Vec<Vec<(String, Bytes)>> = Vec::new();
    // `shared`: the batch's fields (upper case type byte).
    let typed = |shared: bool, v: &FieldValue| -> Bytes {
        let mut b = Vec::with_capacity(9);
        let case = |c: u8| if shared { c.to_ascii_uppercase() } else { c };
        match v {
            FieldValue::Text(t) => {
                b.push(case(b't'));
                b.extend_from_slice(t);
            }
            FieldValue::Int(i) => {
                b.push(case(b'i'));
                b.extend_from_slice(&i.to_le_bytes());
            }
        }
        Bytes::from(b)
    };
    let shared = batch.fields.as_ref().filter(|f| !f.is_empty());
    let any_fields = shared.is_some() || batch.records.iter().any(|r| r.fields.is_some());
    if any_fields {
        for (i, r) in batch.records.iter().enumerate() {
            let mut h: Vec<(String, Bytes)> = Vec::new();
            if i == 0 {
                if let Some(f) = shared {
                    h.extend(f.iter().map(|(n, v)| (n.to_owned(), typed(true, v))));
                }
            }
            if let Some(f) = &r.fields {
                h.extend(f.iter().map(|(n, v)| (n.to_owned(), typed(false, v))));
            }
            headers.push(h);
        }
    }
    let meta = &batch.meta;
    let reason = format!(
        "{}\x1f{}\x1f{}",
        meta.source,
        meta.stream.map(|s| s.to_string()).unwrap_or_default(),
        meta.path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let created_ms = meta
        .read_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let records = batch.records.iter().enumerate().map(|(i, r)| EntryRecord {
        payload: &r.payload,
        key: None,
        timestamp_ms: (r.offset != 0).then_some(r.offset as i64),
        topic: None,
        headers: headers.get(i).map_or(&[][..], |h| &h[..]),
    });
    spool::encode(records, &reason, created_ms)
}

/// Decodes an entry [`encode`] wrote into a batch carrying `ack`.
pub fn decode(entry: &[u8], ack: impl FnOnce(usize) -> Ack) -> Result<Batch, EntryError> {
    let (header, records) = spool::decode(entry)?;
    let mut parts = header.reason.splitn(3, '\x1f');
    let source = parts.next().unwrap_or_default();
    let stream = parts.next().and_then(|s| s.parse().ok());
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .map(|p| Arc::from(Path::new(p)));
    let meta = Arc::new(BatchMeta {
        source: source.into(),
        path,
        stream,
        read_at: UNIX_EPOCH + Duration::from_millis(header.created_ms.max(0) as u64),
    });
    let mut shared: Option<Fields> = None;
    let records: Vec<Record> = records
        .into_iter()
        .map(|r| {
            let mut record = Record::new(r.payload, r.timestamp_ms.map_or(0, |t| t as u64));
            for (name, value) in r.headers {
                let Some(&kind) = value.first() else { continue };
                let body = value.slice(1..);
                let v = match kind.to_ascii_lowercase() {
                    b'i' if body.len() == 8 => {
                        FieldValue::Int(i64::from_le_bytes(body[..].try_into().expect("8 bytes")))
                    }
                    _ => FieldValue::Text(body),
                };
                if kind.is_ascii_uppercase() {
                    shared.get_or_insert_with(Fields::default).set(name, v);
                } else {
                    record.fields_mut().set(name, v);
                }
            }
            record
        })
        .collect();
    let ack = ack(records.len());
    let mut batch = Batch::new(meta, records, ack);
    batch.fields = shared.map(Arc::new);
    Ok(batch)
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk channel {channel}: {source}")]
    Log { channel: String, source: LogError },
}

struct Inner {
    log: SegmentLog,
    /// The next batch the reader hands on.
    next_deliver: u64,
    /// The writer took everything `input` had after it was closed.
    writer_done: bool,
    /// Stop now: the sink is gone.
    abandon: bool,
}

struct Shared {
    name: String,
    settings: DiskSettings,
    inner: Mutex<Inner>,
    /// Wakes the writer (room), the reader (a batch) and [`DiskChannel::finish`].
    cond: Condvar,
    metrics: DiskMetrics,
    /// Moved by each [`Redeliver::redeliver`]: a batch the reader read
    /// before it is not handed on.
    epoch: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, inner: &mut Inner) {
        let (files, bytes) = inner.log.take_corrupt_deleted();
        if files > 0 {
            self.metrics.corrupt_deleted.inc_by(files);
            warn!(channel = %self.name, files, bytes, kept = MAX_CORRUPT_SEGMENTS, "disk channel deleted its oldest set-aside segments (*.seg.corrupt) to keep at most {MAX_CORRUPT_SEGMENTS}");
        }
        let held = inner.log.held();
        self.metrics.events.set(held.events as i64);
        self.metrics.bytes.set(held.bytes as i64);
        self.metrics.disk_bytes.set(held.disk_bytes as i64);
        self.cond.notify_all();
    }
}

/// Releases a batch from the log when the sink completes its ack.
struct Releaser(Arc<Shared>);

impl AckReceiver for Releaser {
    fn acknowledged(&self, seq: u64) {
        let mut inner = self.0.lock();
        inner.log.release(seq);
        self.0.changed(&mut inner);
    }
}

/// Rewinds the reader to the first unreleased batch.
struct Rewind {
    shared: Arc<Shared>,
    output: Arc<Channel>,
}

impl Redeliver for Rewind {
    fn redeliver(&self) {
        let (from, dropped) = {
            let mut inner = self.shared.lock();
            // Under the lock the reader reads under: a batch it read
            // before carries the old epoch, and is not handed on.
            self.shared.epoch.fetch_add(1, Ordering::AcqRel);
            let from = inner.log.cursor();
            inner.next_deliver = from;
            // What the reader handed on before goes (it comes again from
            // the log, in order); cleared before the lock is let go, or a
            // batch read again meanwhile (the new epoch's first) would be
            // cleared with them and never handed on.
            let dropped = self.output.clear();
            self.shared.changed(&mut inner);
            (from, dropped)
        };
        tracing::debug!(channel = %self.shared.name, from, dropped_read_ahead = dropped, "disk channel reads again from its first unacknowledged batch");
    }
}

/// A running disk channel: its log and its writer and reader threads.
pub struct DiskChannel {
    input: Arc<Channel>,
    output: Arc<Channel>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// What the channel keeps in memory on each side of the log: the writer's
/// group of batches, and what the reader read ahead of the sink.
const INPUT_EVENTS: usize = 16_384;
const INPUT_BYTES: usize = 4 << 20;
const OUTPUT_EVENTS: usize = 32_768;
const OUTPUT_BYTES: usize = 8 << 20;
/// At most this much goes into one sync with `fsync: batch`.
const GROUP_BATCHES: usize = 64;
/// How often the cursor is written while it moves.
const CURSOR_EVERY: Duration = Duration::from_millis(200);

impl DiskChannel {
    /// Opens the log in `dir` (repairing a torn tail, counting damage) and
    /// starts the writer and the reader.
    pub fn open(
        name: &str,
        dir: &Path,
        settings: DiskSettings,
        metrics: DiskMetrics,
    ) -> Result<DiskChannel, DiskError> {
        let (log, damage) =
            SegmentLog::open(dir, settings.segment_bytes, Mode::Owner).map_err(|source| {
                DiskError::Log {
                    channel: name.to_owned(),
                    source,
                }
            })?;
        let Damage { torn, corrupt } = damage;
        metrics.torn.inc_by(torn);
        metrics.checksum.inc_by(corrupt);
        if torn + corrupt > 0 {
            warn!(channel = %name, torn, corrupt, dir = %dir.display(), "disk channel found damaged batches at open; torn tails were cut off, damaged segments are set aside");
        }
        let held = log.held();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            settings,
            inner: Mutex::new(Inner {
                next_deliver: log.cursor(),
                log,
                writer_done: false,
                abandon: false,
            }),
            cond: Condvar::new(),
            metrics,
            epoch: AtomicU64::new(0),
        });
        shared.changed(&mut shared.lock());
        if held.batches > 0 {
            tracing::info!(channel = %name, batches = held.batches, events = held.events, "disk channel delivers what it holds first");
        }
        let input = Arc::new(Channel::unmetered(name, INPUT_EVENTS, INPUT_BYTES));
        let output = Arc::new(Channel::unmetered(name, OUTPUT_EVENTS, OUTPUT_BYTES));
        let spawn = |what: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("chan-{what}-{name}"))
                .spawn(f)
                .expect("cannot start a disk channel thread")
        };
        let threads = vec![
            spawn("w", {
                let (shared, input) = (shared.clone(), input.clone());
                Box::new(move || write_loop(&shared, &input))
            }),
            spawn("r", {
                let (shared, output) = (shared.clone(), output.clone());
                Box::new(move || read_loop(&shared, &output))
            }),
        ];
        Ok(DiskChannel {
            input,
            output,
            shared,
            threads,
        })
    }

    /// What sources send into.
    pub fn input(&self) -> Arc<Channel> {
        self.input.clone()
    }

    /// What the sink takes from.
    pub fn output(&self) -> Arc<Channel> {
        self.output.clone()
    }

    /// The sink's handle to have what it gave up on read again from the
    /// log (see [`Redeliver`]).
    pub fn redelivery(&self) -> Arc<dyn Redeliver> {
        Arc::new(Rewind {
            shared: self.shared.clone(),
            output: self.output.clone(),
        })
    }

    /// What the log holds.
    pub fn held(&self) -> Held {
        self.shared.lock().log.held()
    }

    /// Takes no more batches: the writer writes what `input` holds, then
    /// the reader closes `output` (what the log holds stays for the next
    /// start).
    pub fn close(&self) {
        self.input.close();
    }

    /// Stops both threads (after the sink is gone) and waits for them. Until
    /// then (the grace period) the writer waits for room as the sink
    /// releases batches; a batch it still had no room for, and what `input`
    /// still holds, is not written: not acknowledged (its source sends it
    /// again) or, from a source that keeps no position, counted as dropped
    /// ([`DROPPED_AT_SHUTDOWN`]).
    pub fn finish(self) {
        {
            let mut inner = self.shared.lock();
            inner.abandon = true;
            self.shared.changed(&mut inner);
        }
        self.input.close();
        self.output.close();
        for t in self.threads {
            let _ = t.join();
        }
        // The sink's last acks (what it delivered or spooled in its grace
        // period) came after the writer's last cursor.
        write_cursor(&self.shared);
    }
}

/// Syncs what was appended and completes the acks waiting for it. A failed
/// sync acknowledges nothing (it is tried again with the next batch).
fn sync(shared: &Shared, pending: &mut Vec<(Ack, usize)>) {
    if pending.is_empty() {
        return;
    }
    let handle = shared.lock().log.sync_handle();
    if let Some(file) = handle {
        if let Err(e) = file.sync_data() {
            error!(channel = %shared.name, error = %e, "disk channel cannot sync its segment; the batches are not acknowledged");
            return;
        }
    }
    for (ack, n) in pending.drain(..) {
        ack.done(n);
    }
}

/// Waits until `batch` fits (or the channel is abandoned: false).
fn wait_for_room(shared: &Shared, batch: &Batch) -> bool {
    let s = &shared.settings;
    let mut inner = shared.lock();
    while !inner.abandon
        && !inner.log.admits(
            batch.len() as u64,
            batch.bytes as u64,
            s.max_events,
            s.max_bytes,
        )
    {
        inner = shared
            .cond
            .wait_timeout(inner, Duration::from_millis(100))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    !inner.abandon
}

fn write_loop(shared: &Shared, input: &Channel) {
    let mut pending: Vec<(Ack, usize)> = Vec::new();
    let mut last_sync = Instant::now();
    let mut last_cursor = Instant::now();
    let mut not_written = Vec::new();
    loop {
        let timeout = match shared.settings.fsync {
            Fsync::Interval(every) if !pending.is_empty() => {
                every.saturating_sub(last_sync.elapsed())
            }
            _ => CURSOR_EVERY,
        };
        let mut took = 0;
        let mut next = input.recv_timeout(timeout);
        while let Some(batch) = next.take() {
            if !shared.lock().log.admits(
                batch.len() as u64,
                batch.bytes as u64,
                shared.settings.max_events,
                shared.settings.max_bytes,
            ) {
                // Full: what is written is acknowledged before the wait.
                sync(shared, &mut pending);
                last_sync = Instant::now();
                if !wait_for_room(shared, &batch) {
                    not_written.push(batch);
                    continue;
                }
            }
            let entry = encode(&batch);
            let appended = {
                let mut inner = shared.lock();
                let r = inner
                    .log
                    .append(&entry, batch.len() as u32, batch.bytes as u64);
                shared.changed(&mut inner);
                r
            };
            match appended {
                Ok(_) => pending.push((batch.ack.clone(), batch.len())),
                Err(e) => {
                    // Not acknowledged: a file source reads it again.
                    error!(channel = %shared.name, error = %e, events = batch.len(), "disk channel cannot write a batch; it is not acknowledged");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            took += 1;
            if shared.settings.fsync == Fsync::Batch && took < GROUP_BATCHES {
                next = input.recv_timeout(Duration::ZERO);
            }
        }
        let due = match shared.settings.fsync {
            Fsync::Batch => true,
            Fsync::Interval(every) => last_sync.elapsed() >= every,
        };
        if due {
            sync(shared, &mut pending);
            last_sync = Instant::now();
        }
        if last_cursor.elapsed() >= CURSOR_EVERY {
            write_cursor(shared);
            last_cursor = Instant::now();
        }
        if input.is_drained() || shared.lock().abandon {
            break;
        }
    }
    sync(shared, &mut pending);
    write_cursor(shared);
    // Abandoned (the sink is gone): what `input` still holds is not
    // written either. A source that waits for its ack sends it again (a
    // file is read again, a relp client re-sends); from one that does not,
    // it is lost, and counted.
    while let Some(batch) = input.recv_timeout(Duration::ZERO) {
        not_written.push(batch);
    }
    let (mut unacknowledged, mut dropped) = (0usize, 0usize);
    for batch in &not_written {
        if batch.ack.remaining() > 0 {
            unacknowledged += batch.len();
        } else {
            dropped += batch.len();
        }
    }
    if unacknowledged > 0 {
        warn!(channel = %shared.name, events = unacknowledged, "disk channel stopped with batches it had no room for; they were not acknowledged and their sources send them again");
    }
    if dropped > 0 {
        shared
            .metrics
            .dropped
            .add(DROPPED_AT_SHUTDOWN, dropped as u64);
        warn!(channel = %shared.name, events = dropped, reason = DROPPED_AT_SHUTDOWN, "disk channel stopped with batches it had no room for, from sources that cannot send them again; dropped (counted in tailrace_events_dropped_total)");
    }
    let mut inner = shared.lock();
    inner.writer_done = true;
    shared.changed(&mut inner);
}

fn write_cursor(shared: &Shared) {
    if let Err(e) = shared.lock().log.write_cursor() {
        warn!(channel = %shared.name, error = %e, "disk channel cannot write its cursor; a restart repeats more batches");
    }
}

fn read_loop(shared: &Arc<Shared>, output: &Channel) {
    let releaser: Arc<dyn AckReceiver> = Arc::new(Releaser(shared.clone()));
    loop {
        let (seq, read, epoch) = {
            let mut inner = shared.lock();
            loop {
                if inner.writer_done || inner.abandon {
                    drop(inner);
                    output.close();
                    return;
                }
                if let Some(seq) = inner.log.next_from(inner.next_deliver) {
                    inner.next_deliver = seq + 1;
                    break (
                        seq,
                        inner.log.read(seq),
                        shared.epoch.load(Ordering::Acquire),
                    );
                }
                inner = shared
                    .cond
                    .wait_timeout(inner, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        let batch = read.map_err(|e| e.to_string()).and_then(|entry| {
            decode(&entry, |n| Ack::new(seq, n, releaser.clone())).map_err(|e| e.to_string())
        });
        match batch {
            Ok(batch) => {
                // Read before a redelivery: dropped; the log has it.
                let stale = || shared.epoch.load(Ordering::Acquire) != epoch;
                let sent = output.send_unless(batch, Duration::from_secs(3600), &mut || {}, &stale);
                if sent.is_err() {
                    return;
                }
            }
            Err(reason) => {
                shared.metrics.checksum.inc();
                warn!(channel = %shared.name, batch = seq, %reason, "disk channel batch is damaged; it is skipped and its segment set aside");
                let mut inner = shared.lock();
                inner.log.release_corrupt(seq);
                shared.changed(&mut inner);
            }
        }
    }
}

/// What `tailrace channel stats` shows of a disk channel's directory,
/// read without changing it (also while the agent runs: a batch being
/// appended may show as a torn tail).
pub fn stats(dir: &Path) -> Result<(Held, Option<SystemTime>, Damage), LogError> {
    let (log, damage) = SegmentLog::open(dir, SEGMENT_BYTES, Mode::Inspect)?;
    let oldest = log
        .oldest_ms()
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    Ok((log.held(), oldest, damage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel_log::segment_name;
    use std::fs::OpenOptions;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn batch(first: u64, n: usize, ack: Ack) -> Batch {
        let meta = Arc::new(BatchMeta {
            source: "net".into(),
            path: Some(Arc::from(Path::new("/var/log/app.log"))),
            stream: Some(42),
            read_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        });
        let records = (0..n as u64)
            .map(|i| Record::new(Bytes::from(format!("line {}", first + i)), (first + i) * 10))
            .collect();
        Batch::new(meta, records, ack)
    }

    fn lines(b: &Batch) -> Vec<String> {
        b.records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect()
    }

    fn entry(first: u64, n: usize) -> Vec<u8> {
        encode(&batch(first, n, Ack::none()))
    }

    fn open(dir: &Path, segment: u64) -> (SegmentLog, Damage) {
        SegmentLog::open(dir, segment, Mode::Owner).unwrap()
    }

    fn segments(dir: &Path, suffix: &str) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(suffix)
            })
            .count()
    }

    #[test]
    fn a_batch_round_trips_with_its_fields_offsets_and_meta() {
        let mut b = batch(0, 3, Ack::none());
        b.records[1]
            .fields_mut()
            .set("app", FieldValue::text("web"));
        b.records[1].fields_mut().set("pid", FieldValue::Int(-7));
        b.fields_mut().set("host", FieldValue::text("h1"));
        let back = decode(&encode(&b), |_| Ack::none()).unwrap();
        assert_eq!(lines(&back), lines(&b));
        assert_eq!(
            back.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![0, 10, 20]
        );
        assert_eq!(back.records[1].fields, b.records[1].fields);
        assert!(back.records[0].fields.is_none());
        assert_eq!(back.fields, b.fields);
        assert_eq!(&*back.meta.source, "net");
        assert_eq!(back.meta.stream, Some(42));
        assert_eq!(back.meta.path, b.meta.path);
        assert_eq!(back.meta.read_at, b.meta.read_at);
        assert_eq!(back.bytes, b.bytes);
    }

    #[test]
    fn batches_read_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), 1 << 20);
        for i in 0..10 {
            assert_eq!(log.append(&entry(i * 5, 5), 5, 50).unwrap(), i);
        }
        drop(log);
        let (log, damage) = open(dir.path(), 1 << 20);
        assert_eq!(damage, Damage::default());
        assert_eq!(log.held().batches, 10);
        assert_eq!(log.held().events, 50);
        let mut seq = 0;
        let mut seen = Vec::new();
        while let Some(s) = log.next_from(seq) {
            seen.extend(lines(
                &decode(&log.read(s).unwrap(), |_| Ack::none()).unwrap(),
            ));
            seq = s + 1;
        }
        assert_eq!(
            seen,
            (0..50).map(|i| format!("line {i}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn released_batches_free_their_segments_and_stay_released_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(0, 20);
        // Three frames per segment.
        let segment = 8 + 3 * (24 + e.len() as u64);
        let (mut log, _) = open(dir.path(), segment);
        for _ in 0..9 {
            log.append(&e, 20, 200).unwrap();
        }
        assert_eq!(segments(dir.path(), ".seg"), 3);
        let before = log.held().disk_bytes;
        // Out of order, as acks may come.
        for seq in [1, 0, 4] {
            log.release(seq);
        }
        assert_eq!(
            segments(dir.path(), ".seg"),
            3,
            "seq 2 still holds the first segment"
        );
        log.release(2);
        assert_eq!(segments(dir.path(), ".seg"), 2);
        assert!(log.held().disk_bytes < before);
        assert_eq!(log.held().batches, 5);
        assert_eq!(log.cursor(), 3);
        log.write_cursor().unwrap();
        drop(log);
        let (log, _) = open(dir.path(), segment);
        // Seq 4 was released after the cursor: it comes again (a repeat,
        // never a loss).
        assert_eq!(log.next_from(0), Some(3));
        assert_eq!(log.held().batches, 6);
        let mut log = log;
        log.append(&e, 20, 200).unwrap();
        assert_eq!(log.next_from(9), Some(9), "numbering goes on after reopen");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), 1 << 20);
        for i in 0..3 {
            log.append(&entry(i, 1), 1, 6).unwrap();
        }
        drop(log);
        let seg = dir.path().join(segment_name(0));
        let len = std::fs::metadata(&seg).unwrap().len();
        // Half of the last frame made it to the disk.
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(len - 10).unwrap();
        let (mut log, damage) = open(dir.path(), 1 << 20);
        assert_eq!(
            damage,
            Damage {
                torn: 1,
                corrupt: 0
            }
        );
        assert_eq!(log.held().batches, 2);
        assert_eq!(
            log.append(&entry(9, 1), 1, 6).unwrap(),
            2,
            "the torn batch's number is used again"
        );
        drop(log);
        let (log, damage) = open(dir.path(), 1 << 20);
        assert_eq!(damage, Damage::default(), "the cut is clean");
        assert_eq!(log.held().batches, 3);
    }

    #[test]
    fn a_flipped_byte_is_detected_counted_and_its_segment_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        // Entries of one size: two frames per segment.
        let e = entry(100, 4);
        let segment = 8 + 2 * (24 + e.len() as u64);
        let (mut log, _) = open(dir.path(), segment);
        for _ in 0..4 {
            log.append(&e, 4, 24).unwrap();
        }
        drop(log);
        // A byte in the body of batch 1 (the first segment's second frame).
        let seg = dir.path().join(segment_name(0));
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = 8 + (24 + e.len()) + 24 + e.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&seg, &bytes).unwrap();
        let (mut log, _) = open(dir.path(), segment);
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let mut seq = 0;
        while let Some(s) = log.next_from(seq) {
            match decode(&log.read(s).unwrap(), |_| Ack::none()) {
                Ok(b) => {
                    good.extend(lines(&b));
                    log.release(s);
                }
                Err(EntryError::Checksum { .. }) => {
                    bad.push(s);
                    log.release_corrupt(s);
                }
                Err(e) => panic!("unexpected {e}"),
            }
            seq = s + 1;
        }
        assert_eq!(bad, vec![1]);
        assert_eq!(good.len(), 12);
        assert_eq!(segments(dir.path(), ".seg.corrupt"), 1);
        // A damaged header in a sealed segment: the rest of it is counted.
        let (mut log, _) = open(dir.path(), segment);
        for _ in 0..4 {
            log.append(&e, 4, 24).unwrap();
        }
        drop(log);
        let first = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| {
                e.unwrap()
                    .file_name()
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse::<u64>()
                    .ok()
            })
            .min()
            .unwrap();
        let seg = dir.path().join(segment_name(first));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[8 + 24 + e.len() + 5] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();
        let (log, damage) = open(dir.path(), segment);
        assert_eq!(damage.corrupt, 1);
        assert!(log.held().batches >= 1);
    }

    #[derive(Default)]
    struct Count(AtomicU64);
    impl AckReceiver for Count {
        fn acknowledged(&self, _: u64) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn settings(max_events: u64) -> DiskSettings {
        DiskSettings {
            max_bytes: 1 << 30,
            max_events,
            fsync: Fsync::Batch,
            segment_bytes: 1 << 20,
        }
    }

    #[test]
    fn the_source_is_acknowledged_on_the_write_and_a_restart_delivers_what_was_held_first() {
        let dir = tempfile::tempdir().unwrap();
        let acked = Arc::new(Count::default());
        let ch = DiskChannel::open("d", dir.path(), settings(1 << 20), DiskMetrics::unmetered())
            .unwrap();
        for i in 0..5 {
            ch.input()
                .send_blocking(batch(i * 2, 2, Ack::new(i, 2, acked.clone())))
                .unwrap();
        }
        let out = ch.output();
        let first = out.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(lines(&first), vec!["line 0", "line 1"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while acked.0.load(Ordering::SeqCst) < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            acked.0.load(Ordering::SeqCst),
            5,
            "every batch is acknowledged once written, before the sink's ack"
        );
        // The sink acknowledges the first batch only at the end of its
        // grace period, after the writer stopped, and not the rest.
        ch.close();
        while out.recv_timeout(Duration::from_secs(5)).is_some() {}
        first.ack.done(first.len());
        ch.finish();
        let ch = DiskChannel::open("d", dir.path(), settings(1 << 20), DiskMetrics::unmetered())
            .unwrap();
        assert_eq!(ch.held().batches, 4);
        ch.input()
            .send_blocking(batch(100, 1, Ack::none()))
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.extend(lines(
                &ch.output().recv_timeout(Duration::from_secs(5)).unwrap(),
            ));
        }
        let want: Vec<String> = (2..10).chain([100]).map(|i| format!("line {i}")).collect();
        assert_eq!(got, want);
        ch.close();
        ch.finish();
    }

    /// The sink gave up on batch 1 (taken, not acknowledged) while the
    /// reader had read 2 and 3 ahead: a redelivery hands on 1, 2, 3 again
    /// from the log, each once, in order; 0, acknowledged, stays released.
    #[test]
    fn redeliver_reads_again_from_the_first_unreleased_batch_and_drops_the_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let ch = DiskChannel::open("d", dir.path(), settings(1 << 20), DiskMetrics::unmetered())
            .unwrap();
        for i in 0..4 {
            ch.input()
                .send_blocking(batch(i * 2, 2, Ack::none()))
                .unwrap();
        }
        let out = ch.output();
        let first = out.recv_timeout(Duration::from_secs(5)).unwrap();
        let given_up = out.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(lines(&given_up), vec!["line 2", "line 3"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.fill().0 < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.fill().0, 4, "2 and 3 were read ahead");
        first.ack.done(first.len());
        drop(given_up);
        ch.redelivery().redeliver();
        let mut again = Vec::new();
        while let Some(b) = out.recv_timeout(Duration::from_millis(500)) {
            again.extend(lines(&b));
            b.ack.done(b.len());
        }
        let want: Vec<String> = (2..8).map(|i| format!("line {i}")).collect();
        assert_eq!(again, want, "from the first unreleased, each once");
        assert_eq!(ch.held().batches, 0);
        ch.close();
        ch.finish();
    }

    /// A redelivery cleared the read-ahead after it let go of the log's
    /// lock: a batch the reader read again meanwhile (the first
    /// unreleased one) was cleared too and never handed on, so the sink
    /// waited for it for ever (seen in the e2e test of the one-copy rule,
    /// 8,509 lines held and never delivered). After every redelivery the
    /// first batch handed on is the first unreleased one.
    #[test]
    fn after_each_redelivery_the_first_unreleased_batch_is_handed_on() {
        let dir = tempfile::tempdir().unwrap();
        let ch = DiskChannel::open("d", dir.path(), settings(1 << 20), DiskMetrics::unmetered())
            .unwrap();
        for i in 0..8 {
            ch.input()
                .send_blocking(batch(i * 2, 2, Ack::none()))
                .unwrap();
        }
        let out = ch.output();
        let rewind = ch.redelivery();
        for round in 0..500 {
            rewind.redeliver();
            let first = out
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|| panic!("round {round}: nothing handed on after a redelivery"));
            assert_eq!(lines(&first)[0], "line 0", "round {round}");
        }
        ch.close();
        ch.finish();
    }

    #[test]
    fn a_full_disk_channel_holds_its_sender_until_the_sink_acknowledges() {
        let dir = tempfile::tempdir().unwrap();
        let ch =
            DiskChannel::open("d", dir.path(), settings(10), DiskMetrics::unmetered()).unwrap();
        let out = ch.output();
        let acked = Arc::new(Count::default());
        for i in 0..2 {
            ch.input()
                .send_blocking(batch(i * 5, 5, Ack::new(i, 5, acked.clone())))
                .unwrap();
        }
        let taken: Vec<Batch> = (0..2)
            .map(|_| out.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        ch.input()
            .send_blocking(batch(10, 5, Ack::new(2, 5, acked.clone())))
            .unwrap();
        // Room for the third batch comes only with the sink's ack.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(ch.held().events, 10);
        assert!(out.recv_timeout(Duration::ZERO).is_none());
        assert_eq!(acked.0.load(Ordering::SeqCst), 2);
        taken[0].ack.done(5);
        let third = out.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(lines(&third)[0], "line 10");
        ch.close();
        ch.finish();
    }

    /// A channel of at most 10 events holding two batches of 5 (from a
    /// source that keeps no position) that the sink took and has not
    /// acknowledged: full. Its drop counter and the taken batches.
    fn full_channel(dir: &Path) -> (DiskChannel, Dropped, Vec<Batch>) {
        let metrics = DiskMetrics::unmetered();
        let dropped = metrics.dropped.clone();
        let ch = DiskChannel::open("d", dir, settings(10), metrics).unwrap();
        for i in 0..2 {
            ch.input()
                .send_blocking(batch(i * 5, 5, Ack::none()))
                .unwrap();
        }
        let out = ch.output();
        let taken = (0..2)
            .map(|_| out.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        (ch, dropped, taken)
    }

    /// At shutdown the sink is gone and the log is full: a batch from a
    /// source that keeps no position is counted as dropped; one whose
    /// source waits for its ack is left unacknowledged (sent again).
    #[test]
    fn batches_without_room_at_shutdown_are_counted_or_left_to_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let (ch, dropped, _taken) = full_channel(dir.path());
        let acked = Arc::new(Count::default());
        let tracked = Ack::new(7, 3, acked.clone());
        ch.input().send_blocking(batch(10, 4, Ack::none())).unwrap();
        ch.input()
            .send_blocking(batch(14, 3, tracked.clone()))
            .unwrap();
        ch.close();
        ch.finish();
        assert_eq!(dropped.get(DROPPED_AT_SHUTDOWN), 4);
        assert_eq!(acked.0.load(Ordering::SeqCst), 0);
        assert_eq!(tracked.remaining(), 3, "left to its source");
        let (log, _) = SegmentLog::open(dir.path(), 1 << 20, Mode::Inspect).unwrap();
        assert_eq!(log.held().events, 10, "only what had room was written");
    }

    /// After the stop began (input closed) the writer still waits for room
    /// while the sink drains: a batch that waited is written once the sink
    /// releases one, not dropped.
    #[test]
    fn a_batch_waiting_for_room_at_the_stop_is_written_when_the_sink_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let (ch, dropped, taken) = full_channel(dir.path());
        let acked = Arc::new(Count::default());
        ch.input()
            .send_blocking(batch(10, 5, Ack::new(2, 5, acked.clone())))
            .unwrap();
        ch.close();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(acked.0.load(Ordering::SeqCst), 0, "no room yet");
        taken[0].ack.done(5);
        let deadline = Instant::now() + Duration::from_secs(5);
        while acked.0.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            acked.0.load(Ordering::SeqCst),
            1,
            "written and acknowledged"
        );
        ch.finish();
        assert_eq!(dropped.get(DROPPED_AT_SHUTDOWN), 0);
        let (log, _) = SegmentLog::open(dir.path(), 1 << 20, Mode::Inspect).unwrap();
        assert_eq!(log.held().events, 10, "the second batch and the third");
    }

    /// Set-aside segments are kept up to MAX_CORRUPT_SEGMENTS; the oldest
    /// go first, counted.
    #[test]
    fn set_aside_segments_are_bounded_oldest_deleted_first() {
        let dir = tempfile::tempdir().unwrap();
        let aside = |first: u64| dir.path().join(format!("{}.corrupt", segment_name(first)));
        for first in 1..=MAX_CORRUPT_SEGMENTS as u64 {
            std::fs::write(aside(first), b"damaged earlier").unwrap();
        }
        // A segment whose magic is damaged: set aside at open.
        let bad = dir.path().join(segment_name(100));
        std::fs::write(&bad, b"NOTASEGMENT-----").unwrap();
        let families = DiskFamilies::default();
        let metrics = DiskMetrics::new(
            &families,
            "d",
            Gauge::default(),
            Gauge::default(),
            crate::Metrics::new().dropped("d"),
        );
        let deleted = metrics.corrupt_deleted.clone();
        let checksum = metrics.checksum.clone();
        let ch = DiskChannel::open("d", dir.path(), settings(10), metrics).unwrap();
        assert_eq!(checksum.get(), 1);
        assert_eq!(deleted.get(), 1, "one over the bound");
        assert!(!aside(1).exists(), "the oldest went first");
        for first in (2..=MAX_CORRUPT_SEGMENTS as u64).chain([100]) {
            assert!(aside(first).exists(), "{first} is kept");
        }
        assert_eq!(segments(dir.path(), ".seg.corrupt"), MAX_CORRUPT_SEGMENTS);
        ch.close();
        ch.finish();
    }

    #[test]
    fn a_data_dir_that_cannot_be_written_is_refused_naming_the_channel_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        // A file where data_dir should be: root cannot write under it
        // either.
        let data_dir = dir.path().join("data");
        std::fs::write(&data_dir, b"").unwrap();
        let err = DiskChannel::open(
            "d",
            &channel_dir(&data_dir, "d"),
            settings(10),
            DiskMetrics::unmetered(),
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(
            err.starts_with("disk channel d: cannot create disk channel directory"),
            "{err}"
        );
        assert!(err.contains(&*data_dir.to_string_lossy()), "{err}");
        assert!(
            err.contains("data_dir must be a directory the agent's user can write"),
            "{err}"
        );
    }

    #[test]
    fn with_fsync_interval_the_acks_come_after_the_timed_sync() {
        let dir = tempfile::tempdir().unwrap();
        let acked = Arc::new(Count::default());
        let settings = DiskSettings {
            fsync: Fsync::Interval(Duration::from_millis(50)),
            ..settings(1 << 20)
        };
        let ch = DiskChannel::open("d", dir.path(), settings, DiskMetrics::unmetered()).unwrap();
        for i in 0..3 {
            ch.input()
                .send_blocking(batch(i, 1, Ack::new(i, 1, acked.clone())))
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while acked.0.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(acked.0.load(Ordering::SeqCst), 3);
        ch.close();
        ch.finish();
        let (log, _) = SegmentLog::open(dir.path(), 1 << 20, Mode::Inspect).unwrap();
        assert_eq!(log.held().batches, 3);
    }
}
