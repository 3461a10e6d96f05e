//! The disk channel's storage, measured both ways it could be built: the
//! segment log it uses (`tailrace_api::channel_log`) and sled (the store
//! the agent already has). Per batch of 1,000 records of 100 bytes: encode
//! (the spool entry the channel writes), write, sync (`fsync: batch`: one
//! fdatasync, or one sled flush, per batch), read back, decode, release.
//! Before the timed runs it prints, for each, the bytes the process wrote
//! to the disk per payload byte over 1,000 batches (a million events):
//! the write amplification, read from /proc/self/io.
//!
//! cargo bench -p tailrace-benchmarks --bench disk_channel
//! (the files go under $CARGO_TARGET_DIR or target/: on the disk, not tmpfs)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tailrace_api::channel_disk::{decode, encode, DiskChannel, DiskMetrics, DiskSettings, Fsync};
use tailrace_api::channel_log::{Mode, SegmentLog};
use tailrace_api::{Ack, Batch, BatchMeta, Record};

const RECORDS: usize = 1000;
const LINE: usize = 100;
/// Batches per timed iteration: 100,000 events.
const BATCHES: u64 = 100;
/// The segment log writes its cursor every this many batches.
const CURSOR_EVERY: u64 = 64;

fn batch(n: u64) -> Batch {
    let meta = Arc::new(BatchMeta {
        source: "app".into(),
        path: None,
        stream: None,
        read_at: SystemTime::now(),
    });
    let records = (0..RECORDS as u64)
        .map(|i| {
            let mut line = format!(
                "seq={:010} INFO user=ann req=1234abcd latency_ms=12 ",
                n * 1000 + i
            )
            .into_bytes();
            line.resize(LINE, b'x');
            Record::new(Bytes::from(line), 0)
        })
        .collect();
    Batch::new(meta, records, Ack::none())
}

fn scratch(name: &str) -> tempfile::TempDir {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(base)
        .unwrap()
}

/// Bytes this process has had written to storage so far.
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

trait Store {
    fn write_sync(&mut self, seq: u64, entry: &[u8]);
    fn read(&mut self, seq: u64) -> Vec<u8>;
    fn release(&mut self, seq: u64);
}

struct Log(SegmentLog);

impl Store for Log {
    fn write_sync(&mut self, _: u64, entry: &[u8]) {
        self.0
            .append(entry, RECORDS as u32, (RECORDS * LINE) as u64)
            .unwrap();
        self.0.sync_handle().unwrap().sync_data().unwrap();
    }
    fn read(&mut self, seq: u64) -> Vec<u8> {
        self.0.read(seq).unwrap()
    }
    fn release(&mut self, seq: u64) {
        self.0.release(seq);
        // As the channel does: the cursor every 200 ms, i.e. every so many
        // batches at the rates measured here.
        if seq.is_multiple_of(CURSOR_EVERY) {
            self.0.write_cursor().unwrap();
        }
    }
}

struct Sled(sled::Db);

impl Store for Sled {
    fn write_sync(&mut self, seq: u64, entry: &[u8]) {
        self.0.insert(seq.to_be_bytes(), entry).unwrap();
        self.0.flush().unwrap();
    }
    fn read(&mut self, seq: u64) -> Vec<u8> {
        self.0.get(seq.to_be_bytes()).unwrap().unwrap().to_vec()
    }
    fn release(&mut self, seq: u64) {
        // Made durable by the next batch's flush.
        self.0.remove(seq.to_be_bytes()).unwrap();
    }
}

/// One batch through the store: encode, write and sync, read, decode,
/// release.
fn round(store: &mut dyn Store, seq: u64, b: &Batch) -> usize {
    let entry = encode(b);
    store.write_sync(seq, &entry);
    let back = decode(&store.read(seq), |_| Ack::none()).unwrap();
    store.release(seq);
    back.len()
}

fn log_store(dir: &tempfile::TempDir) -> Log {
    Log(SegmentLog::open(dir.path(), 64 << 20, Mode::Owner)
        .unwrap()
        .0)
}

fn sled_store(dir: &tempfile::TempDir) -> Sled {
    Sled(sled::open(dir.path()).unwrap())
}

fn amplification(name: &str, store: &mut dyn Store, batches: &[Batch]) {
    let before = written();
    let started = std::time::Instant::now();
    for (seq, b) in (0u64..).zip(batches.iter().cycle()).take(1000) {
        round(store, seq, b);
    }
    let took = started.elapsed();
    let entry = batches.iter().map(|b| encode(b).len()).sum::<usize>() / batches.len();
    let bytes = written() - before;
    let payload = (1000 * RECORDS * LINE) as f64;
    eprintln!(
        "disk_channel/{name}: 1,000,000 events in {:.2} s ({:.0} events/s), {:.1} MB written to disk for {:.1} MB of payload ({:.1} MB as entries): {:.2} bytes written per payload byte, {:.2} per entry byte",
        took.as_secs_f64(),
        1e6 / took.as_secs_f64(),
        bytes as f64 / 1e6,
        payload / 1e6,
        (entry * 1000) as f64 / 1e6,
        bytes as f64 / payload,
        bytes as f64 / (entry * 1000) as f64
    );
}

fn disk_channel(c: &mut Criterion) {
    let batches: Vec<Batch> = (0..16).map(batch).collect();
    {
        let dir = scratch("dc-log");
        amplification("segment_log", &mut log_store(&dir), &batches);
        let dir = scratch("dc-sled");
        amplification("sled", &mut sled_store(&dir), &batches);
    }
    let mut g = c.benchmark_group("disk_channel");
    g.throughput(Throughput::Elements(BATCHES * RECORDS as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    type Open = fn(&tempfile::TempDir) -> Box<dyn Store>;
    let stores: [(&str, Open); 2] = [
        ("segment_log", |d| Box::new(log_store(d))),
        ("sled", |d| Box::new(sled_store(d))),
    ];
    for (name, open) in stores {
        let dir = scratch(name);
        let mut store = open(&dir);
        let mut seq = 0u64;
        g.bench_function(format!("{name}/1000x100B_batches_fsync_batch"), |b| {
            b.iter(|| {
                let mut events = 0;
                for _ in 0..BATCHES {
                    events += round(&mut *store, seq, &batches[(seq % 16) as usize]);
                    seq += 1;
                }
                events
            })
        });
    }
    // The channel as the agent runs it: sources' batches queue while a
    // sync runs, so one fdatasync covers every batch that arrived meanwhile
    // (up to 64).
    let dir = scratch("channel");
    let settings = DiskSettings {
        max_bytes: 1 << 30,
        max_events: u64::MAX,
        fsync: Fsync::Batch,
        segment_bytes: 64 << 20,
    };
    let ch = DiskChannel::open("bench", dir.path(), settings, DiskMetrics::unmetered()).unwrap();
    let (input, output) = (ch.input(), ch.output());
    g.bench_function("channel/1000x100B_batches_fsync_batch_group_commit", |b| {
        b.iter(|| {
            let sender = {
                let input = input.clone();
                let batches: Vec<Batch> = (0..BATCHES).map(batch).collect();
                std::thread::spawn(move || {
                    for b in batches {
                        input.send_blocking(b).unwrap();
                    }
                })
            };
            let mut events = 0;
            while events < BATCHES as usize * RECORDS {
                let b = output.recv_timeout(Duration::from_secs(10)).unwrap();
                events += b.len();
                b.ack.done(b.len());
            }
            sender.join().unwrap();
            events
        })
    });
    ch.close();
    ch.finish();
    g.finish();
}

criterion_group!(benches, disk_channel);
criterion_main!(benches);
