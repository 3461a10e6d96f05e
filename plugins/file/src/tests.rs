//! Tests of the running source: a real tailer thread over files in a temp
//! dir, a memory store that outlives restarts, and a consumer thread that
//! acknowledges batches (or holds them, like a Kafka that does not answer).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tailrace_api::store::MemoryStore;
use tailrace_api::{
    Batch, Channel, CheckpointStore, Shutdown, SourceConfig, SourceContext, SourceMetrics,
};
use tailrace_testkit::{config, Report, SeqLines, LINE_LEN};

use crate::checkpoint::{FileId, Saved};
use crate::FileSourceConfig;

/// The source over `DIR/**/*.log`, quick to poll, scan and save, with
/// what `edit` changes.
fn config(dir: &Path, edit: impl FnOnce(config::Source) -> config::Source) -> FileSourceConfig {
    let source = config::Source::file(dir.join("**/*.log"))
        .poll_interval_ms(10)
        .scan_interval_ms(50)
        .checkpoint_interval_ms(10)
        .rotated_idle_ms(100)
        .read_buffer_bytes(4096);
    serde_yaml::from_value(edit(source).plugin_keys()).expect("test config parses")
}

/// The keys of [`config`] unchanged.
fn plain(source: config::Source) -> config::Source {
    source
}

/// Lines `range` of a test log: numbered, [`LINE_LEN`] bytes each.
fn lines(range: impl IntoIterator<Item = u64>) -> String {
    let mut text = String::new();
    for seq in range {
        text.push_str(std::str::from_utf8(&SeqLines::line(seq)).expect("lines are ASCII"));
        text.push('\n');
    }
    text
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// What arrived, in order, with the file each line came from.
#[derive(Default)]
struct Got {
    lines: Vec<(String, PathBuf)>,
}

impl Got {
    /// What arrived, compared with the lines numbered `expected`.
    fn report(&self, expected: impl IntoIterator<Item = u64>) -> Report {
        Report::of(expected, self.lines.iter().map(|(l, _)| l))
    }

    fn has_all(&self, expected: impl IntoIterator<Item = u64>) -> bool {
        self.report(expected).missing.is_empty()
    }
}

struct Source {
    shutdown: Shutdown,
    drained: Shutdown,
    channel: Arc<Channel>,
    got: Arc<Mutex<Got>>,
    acking: Arc<AtomicBool>,
    /// Taking batches from the channel (false: it fills, the source blocks).
    receiving: Arc<AtomicBool>,
    consumer: Option<JoinHandle<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
    metrics: SourceMetrics,
}

impl Source {
    fn start(cfg: &FileSourceConfig, store: &Arc<MemoryStore>, capacity_events: usize) -> Source {
        Source::start_with(cfg, store, capacity_events, true, true)
    }

    fn start_with(
        cfg: &FileSourceConfig,
        store: &Arc<MemoryStore>,
        capacity_events: usize,
        receiving: bool,
        acking: bool,
    ) -> Source {
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        let channel = Arc::new(Channel::unmetered("t", capacity_events, 1 << 30));
        let shutdown = Shutdown::new();
        let drained = Shutdown::new();
        let metrics = SourceMetrics::detached("app");
        let cx = SourceContext {
            name: "app".into(),
            outputs: vec![channel.clone()],
            checkpoints: store.clone() as Arc<dyn CheckpointStore>,
            shutdown: shutdown.clone(),
            drained: drained.clone(),
            sent: Shutdown::new(),
            metrics: metrics.clone(),
            readiness: tailrace_api::Readiness::ready(),
            interceptors: Vec::new().into(),
            tap: tailrace_api::Tap::none(),
            heartbeat: tailrace_api::Heartbeat::none(),
        };
        let task = cfg.build(cx).expect("source builds");
        let task = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(task)
        });
        let got = Arc::new(Mutex::new(Got::default()));
        let acking = Arc::new(AtomicBool::new(acking));
        let receiving = Arc::new(AtomicBool::new(receiving));
        let consumer = {
            let (channel, got, acking, receiving) = (
                channel.clone(),
                got.clone(),
                acking.clone(),
                receiving.clone(),
            );
            std::thread::spawn(move || {
                let mut held: Vec<Batch> = Vec::new();
                loop {
                    if acking.load(Ordering::SeqCst) {
                        for b in held.drain(..) {
                            b.ack.done(b.len());
                        }
                    }
                    if !receiving.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    let Some(batch) = channel.recv_timeout(Duration::from_millis(5)) else {
                        if channel.is_drained() {
                            return;
                        }
                        continue;
                    };
                    let path = batch.meta.path.as_deref().unwrap().to_path_buf();
                    let mut g = got.lock().unwrap();
                    for r in &batch.records {
                        g.lines.push((
                            String::from_utf8_lossy(&r.payload).into_owned(),
                            path.clone(),
                        ));
                    }
                    drop(g);
                    held.push(batch);
                }
            })
        };
        Source {
            shutdown,
            drained,
            channel,
            got,
            acking,
            receiving,
            consumer: Some(consumer),
            task: Some(task),
            metrics,
        }
    }

    fn wait(&self, what: &str, cond: impl Fn(&Got) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond(&self.got.lock().unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let g = self.got.lock().unwrap();
        panic!(
            "timed out waiting for {what}; got {} lines: {:?}",
            g.lines.len(),
            g.lines.iter().map(|(l, _)| l).collect::<Vec<_>>()
        );
    }

    fn wait_all(&self, range: std::ops::Range<u64>) {
        let r = range.clone();
        self.wait(&format!("lines {range:?}"), move |g| g.has_all(r.clone()));
    }

    /// Stops like the daemon does: stop reading, close the channel, let the
    /// consumer drain it, then tell the source the sinks are done.
    fn stop(mut self) -> Got {
        self.acking.store(true, Ordering::SeqCst);
        self.receiving.store(true, Ordering::SeqCst);
        self.shutdown.trigger();
        self.channel.close();
        self.consumer.take().unwrap().join().unwrap();
        self.drained.trigger();
        self.task
            .take()
            .unwrap()
            .join()
            .unwrap()
            .expect("source ends without error");
        std::mem::take(&mut *self.got.lock().unwrap())
    }

    /// Starts with the consumer not taking batches: returns once the
    /// source filled the channel and is blocked.
    fn start_blocked(cfg: &FileSourceConfig, store: &Arc<MemoryStore>) -> Source {
        let src = Source::start_with(cfg, store, 1, false, true);
        src.wait("a full channel", |_| src.channel.fill().0 > 0);
        src
    }

    fn event(&self, name: &str) -> u64 {
        crate::FileMetrics::of("app", &self.metrics).event_count(name)
    }
}

/// Every line of `expected` arrived exactly once, and nothing else.
fn exactly(got: &Got, expected: impl IntoIterator<Item = u64>) {
    let report = got.report(expected);
    assert!(report.is_exact(), "{report}");
}

fn saved(store: &MemoryStore) -> Vec<(FileId, Saved)> {
    store
        .load("app")
        .unwrap()
        .into_iter()
        .map(|(k, v)| (FileId::from_key(&k).unwrap(), Saved::decode(&v).unwrap()))
        .collect()
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn rename_rotation_reads_the_old_file_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    append(&log, &lines(0..100));
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(dir.path(), plain), &store, 100_000);
    src.wait_all(0..100);
    append(&log, &lines(100..150));
    std::fs::rename(&log, dir.path().join("a.log.1")).unwrap();
    // the writer still holds the old file for a moment
    append(&dir.path().join("a.log.1"), &lines(150..200));
    append(&log, &lines(200..300));
    src.wait_all(0..300);
    assert!(src.event("rotated") >= 1);
    // the rotated file is closed once idle, and read again if it grows
    src.wait("the rotated file parked", |_| {
        crate::FileMetrics::of("app", &src.metrics)
            .open_files()
            .get()
            == 1
    });
    append(&dir.path().join("a.log.1"), &lines(300..310));
    src.wait_all(0..310);
    exactly(&src.stop(), 0..310);
}

#[test]
fn rotations_while_stopped_are_found_by_inode_and_newer_ones_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("a.log");
    append(&log, &lines(0..100));
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(d, plain), &store, 100_000);
    src.wait_all(0..100);
    exactly(&src.stop(), 0..100);

    append(&log, &lines(100..150));
    std::fs::rename(&log, d.join("a.log.1")).unwrap();
    append(&log, &lines(150..200));
    std::fs::rename(d.join("a.log.1"), d.join("a.log.2")).unwrap();
    std::fs::rename(&log, d.join("a.log.1")).unwrap();
    append(&log, &lines(200..250));
    // an old rotation, older than the file read last: not read again
    let old = d.join("a.log.3");
    append(&old, &lines(900..910));
    let t = std::fs::File::open(&old).unwrap();
    t.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();

    let src = Source::start(&config(d, plain), &store, 100_000);
    src.wait_all(100..250);
    assert_eq!(src.event("rotated"), 1);
    assert_eq!(src.event("adopted"), 1);
    let got = src.stop();
    exactly(&got, 100..250);
}

#[test]
fn file_compressed_while_stopped_still_leads_to_the_rotations_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("a.log");
    append(&log, &lines(0..100));
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(d, plain), &store, 100_000);
    src.wait_all(0..100);
    src.stop();

    // Two rotations with compress (no delaycompress) while stopped: the file
    // read last is gzip now, and its unread tail (100..150) cannot be read.
    append(&log, &lines(100..150));
    std::fs::rename(&log, d.join("a.log.1")).unwrap();
    append(&log, &lines(150..200));
    std::fs::remove_file(d.join("a.log.1")).unwrap();
    std::fs::write(d.join("a.log.2.gz"), b"\x1f\x8b compressed").unwrap();
    std::fs::rename(&log, d.join("a.log.1")).unwrap();
    append(&log, &lines(200..250));

    let src = Source::start(&config(d, plain), &store, 100_000);
    src.wait_all(150..250);
    assert_eq!(src.event("adopted"), 1);
    exactly(&src.stop(), 150..250);
}

#[test]
fn copytruncate_while_stopped_resumes_in_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("a.log");
    append(&log, &lines(0..100));
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(d, plain), &store, 100_000);
    src.wait_all(0..100);
    exactly(&src.stop(), 0..100);

    // twice: the first copy holds the unread tail, the second is newer
    append(&log, &lines(100..150));
    std::fs::copy(&log, d.join("a.log.1")).unwrap();
    std::fs::File::create(&log).unwrap();
    append(&log, &lines(150..200));
    std::fs::rename(d.join("a.log.1"), d.join("a.log.2")).unwrap();
    std::fs::copy(&log, d.join("a.log.1")).unwrap();
    std::fs::File::create(&log).unwrap();
    append(&log, &lines(200..220));

    let src = Source::start(&config(d, plain), &store, 100_000);
    src.wait_all(100..220);
    assert_eq!(src.event("copy_resumed"), 1);
    assert_eq!(src.event("content_replaced"), 1);
    assert_eq!(src.event("adopted"), 1);
    exactly(&src.stop(), 100..220);
}

#[test]
fn copytruncate_while_running_finishes_the_unread_bytes_in_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("a.log");
    append(&log, &lines(0..1000));
    let store = Arc::new(MemoryStore::default());
    // A channel of one batch, not drained: the source blocks while most of
    // the file is unread.
    let src = Source::start_blocked(&config(d, plain), &store);
    std::fs::copy(&log, d.join("a.log.1")).unwrap();
    std::fs::File::create(&log).unwrap();
    append(&log, &lines(1000..1010));
    src.receiving.store(true, Ordering::SeqCst);
    src.wait_all(0..1010);
    assert_eq!(src.event("truncated"), 1);
    assert_eq!(src.event("copy_resumed"), 1);
    exactly(&src.stop(), 0..1010);
}

#[test]
fn a_copy_in_progress_at_restart_is_not_read_again_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("a.log");
    append(&log, &lines(0..100));
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(d, plain), &store, 100_000);
    src.wait_all(0..100);
    src.stop();

    // Stopped while copytruncate copies: the file still holds its saved
    // content, so it is resumed; the copy is taken up only once the file is
    // truncated, where reading was.
    append(&log, &lines(100..150));
    let whole = std::fs::read(&log).unwrap();
    std::fs::write(d.join("a.log.1"), &whole[..1000]).unwrap();
    let src = Source::start(&config(d, plain), &store, 100_000);
    src.wait_all(100..150);
    assert_eq!(src.event("adopted"), 0);
    // The copy completes, the file is truncated and written again.
    append(&log, &lines(150..160));
    std::fs::copy(&log, d.join("a.log.1")).unwrap();
    std::fs::File::create(&log).unwrap();
    append(&log, &lines(160..170));
    src.wait_all(100..170);
    exactly(&src.stop(), 100..170);
}

#[test]
fn truncation_in_place_restarts_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    append(&log, &lines(0..100));
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(dir.path(), plain), &store, 100_000);
    src.wait_all(0..100);
    // shorter than before
    std::fs::File::create(&log).unwrap();
    append(&log, &lines(100..110));
    src.wait_all(100..110);
    assert_eq!(src.event("truncated"), 1);
    // written again from the start without shrinking (as if truncated and
    // rewritten past the position between two looks)
    let f = OpenOptions::new().write(true).open(&log).unwrap();
    f.write_all_at(lines(200..300).as_bytes(), 0).unwrap();
    src.wait_all(200..300);
    assert_eq!(src.event("truncated"), 2);
    exactly(&src.stop(), (0..110).chain(200..300));
}

#[test]
fn inode_reuse_while_stopped_is_read_as_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    append(&log, &lines(0..100));
    let old_ino = ino(&log);
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(dir.path(), plain), &store, 100_000);
    src.wait_all(0..100);
    exactly(&src.stop(), 0..100);

    // Deleted, and a longer file in its place on the same inode: a new file
    // takes the lowest free inode of its group, so files are made until one
    // gets it, and that one is renamed into place.
    std::fs::remove_file(&log).unwrap();
    let mut reused = false;
    for i in 0..10_000 {
        let candidate = dir.path().join(format!("reuse-{i}"));
        std::fs::File::create(&candidate).unwrap();
        if ino(&candidate) == old_ino {
            append(&candidate, &lines(100..300));
            std::fs::rename(&candidate, &log).unwrap();
            reused = true;
            break;
        }
    }
    assert!(
        reused,
        "the file system did not hand inode {old_ino} to a new file"
    );
    let src = Source::start(&config(dir.path(), plain), &store, 100_000);
    src.wait_all(100..300);
    assert_eq!(src.event("content_replaced"), 1);
    exactly(&src.stop(), 100..300);
}

#[test]
fn same_first_bytes_but_other_bytes_before_the_position_is_new_content() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    // The fingerprint (first 64 bytes here) survives the rewrite; the bytes
    // before the saved position do not.
    append(&log, &lines(0..100));
    let store = Arc::new(MemoryStore::default());
    let cfg = config(dir.path(), |s| s.fingerprint_bytes(64));
    let src = Source::start(&cfg, &store, 100_000);
    src.wait_all(0..100);
    src.stop();
    std::fs::File::create(&log).unwrap();
    append(&log, &(lines(0..10) + &lines(500..700)));
    let src = Source::start(&cfg, &store, 100_000);
    src.wait_all(500..700);
    // all of the new content, once
    exactly(&src.stop(), (0..10).chain(500..700));
}

#[test]
fn short_files_are_recognised_by_a_short_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    append(&log, &lines(0..3)); // 300 bytes, shorter than the fingerprint
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(dir.path(), plain), &store, 100_000);
    src.wait_all(0..3);
    src.stop();
    append(&log, &lines(3..5));
    let src = Source::start(&config(dir.path(), plain), &store, 100_000);
    src.wait_all(3..5);
    exactly(&src.stop(), 3..5);
    let s = saved(&store);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].1.offset, 5 * LINE_LEN as u64);
    assert_eq!(
        s[0].1.fingerprint.len(),
        5 * LINE_LEN,
        "the fingerprint grew with the file"
    );
}

#[test]
fn deleted_file_is_read_to_its_end_then_closed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    append(&log, &lines(0..2000));
    let store = Arc::new(MemoryStore::default());
    let src = Source::start_blocked(&config(dir.path(), plain), &store);
    std::fs::remove_file(&log).unwrap();
    src.receiving.store(true, Ordering::SeqCst);
    src.wait_all(0..2000);
    src.wait("the deleted file closed", |_| {
        crate::FileMetrics::of("app", &src.metrics)
            .open_files()
            .get()
            == 0
    });
    assert!(
        !open_fds()
            .iter()
            .any(|l| l.starts_with(&log.to_string_lossy().into_owned())),
        "the deleted file is still open: {:?}",
        open_fds()
    );
    assert_eq!(src.event("deleted"), 1);
    exactly(&src.stop(), 0..2000);
    assert!(
        saved(&store).is_empty(),
        "a deleted file's position is forgotten"
    );
}

fn open_fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn descriptors_stay_within_max_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in 0..40 {
        append(
            &d.join(format!("sub{}/f{f}.log", f % 3)).tap_mkdir(),
            &lines(f * 100..f * 100 + 50),
        );
    }
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(d, |s| s.max_open_files(4)), &store, 100_000);
    let max_seen = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let watch = {
        let (g, m) = (
            crate::FileMetrics::of("app", &src.metrics).open_files(),
            max_seen.clone(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        (
            std::thread::spawn(move || {
                while !s2.load(Ordering::SeqCst) {
                    m.fetch_max(g.get(), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }),
            stop,
        )
    };
    let all = |got: &Got, upto: u64| (0..40).all(|f| got.has_all(f * 100..f * 100 + upto));
    src.wait("the first 50 lines of every file", |g| all(g, 50));
    for f in 0..40 {
        append(
            &d.join(format!("sub{}/f{f}.log", f % 3)),
            &lines(f * 100 + 50..f * 100 + 60),
        );
    }
    src.wait("10 more lines of every file", |g| all(g, 60));
    assert!(src.event("open_limit") > 0);
    watch.1.store(true, Ordering::SeqCst);
    watch.0.join().unwrap();
    let got = src.stop();
    assert!(
        max_seen.load(Ordering::SeqCst) <= 4,
        "{max_seen:?} descriptors"
    );
    exactly(&got, (0..40).flat_map(|f| f * 100..f * 100 + 60));
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(self.parent().unwrap()).unwrap();
        self
    }
}

#[test]
fn lag_is_the_bytes_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    append(&log, &lines(0..10));
    let store = Arc::new(MemoryStore::default());
    let src = Source::start_with(&config(dir.path(), plain), &store, 100_000, true, false);
    src.wait_all(0..10);
    let lag = crate::FileMetrics::of("app", &src.metrics).lag(&log.to_string_lossy());
    let unacknowledged = 10 * LINE_LEN as i64;
    src.wait("a lag of the 10 lines", |_| lag.get() == unacknowledged);
    src.acking.store(true, Ordering::SeqCst);
    src.wait("no lag", |_| lag.get() == 0);
    src.stop();
}

#[test]
fn multiline_java_traces_are_joined_and_the_last_flushed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    let trace = |n: u64| {
        format!(
            "2026-11-21 12:00:{n:02} ERROR request {n} failed\n\
             java.lang.IllegalStateException: state {n}\n\
             \tat com.example.Service.handle(Service.java:{n})\n\
             \tat com.example.Main.main(Main.java:3)\n\
             Caused by: java.io.IOException: disk {n}\n\
             \t... 2 more\n"
        )
    };
    for n in 0..20 {
        append(&log, &trace(n));
    }
    let store = Arc::new(MemoryStore::default());
    let cfg = config(dir.path(), |s| {
        s.set("multiline.start_pattern", "^\\d{4}-\\d{2}-\\d{2} ")
            .set("multiline.flush_timeout_ms", 300)
    });
    let src = Source::start(&cfg, &store, 100_000);
    let started = Instant::now();
    src.wait("20 events", |g| g.lines.len() == 20);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the last event waited for its timeout"
    );
    let got = src.stop();
    for (n, (event, _)) in got.lines.iter().enumerate() {
        assert_eq!(format!("{event}\n"), trace(n as u64));
    }
    // the position covers the last event only once it was sent
    let s = saved(&store);
    assert_eq!(s[0].1.offset, std::fs::metadata(&log).unwrap().len());
}

#[test]
fn over_long_lines_are_split_or_truncated_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    append(&log, "short\n0123456789abcdefghij\nend\n");
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(
        &config(dir.path(), |s| s.max_line_bytes(8)),
        &store,
        100_000,
    );
    src.wait("5 records", |g| g.lines.len() == 5);
    assert_eq!(src.event("line_split"), 1);
    let got: Vec<String> = src.stop().lines.into_iter().map(|(l, _)| l).collect();
    assert_eq!(got, ["short", "01234567", "89abcdef", "ghij", "end"]);

    let dir = tempfile::tempdir().unwrap();
    append(
        &dir.path().join("a.log"),
        "short\n0123456789abcdefghij\nend\n",
    );
    let cfg = config(dir.path(), |s| {
        s.max_line_bytes(8).set("max_line_policy", "truncate")
    });
    let src = Source::start(&cfg, &Arc::new(MemoryStore::default()), 100_000);
    src.wait("3 records", |g| g.lines.len() == 3);
    let got: Vec<String> = src.stop().lines.into_iter().map(|(l, _)| l).collect();
    assert_eq!(got, ["short", "01234567", "end"]);
}

#[test]
fn positions_of_vanished_files_expire() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    append(&log, &lines(0..10));
    let store = Arc::new(MemoryStore::default());
    let src = Source::start(&config(dir.path(), plain), &store, 100_000);
    src.wait_all(0..10);
    src.stop();
    assert_eq!(saved(&store).len(), 1);
    std::fs::remove_file(&log).unwrap();
    let src = Source::start(
        &config(dir.path(), |s| s.expire_after_ms(100)),
        &store,
        100_000,
    );
    src.wait("the position expired", |_| saved(&store).is_empty());
    assert_eq!(src.event("expired"), 1);
    src.stop();
}

#[test]
fn invalid_multiline_pattern_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), |s| s.set("multiline.start_pattern", "(oops"));
    let issues = cfg.validate();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, ["multiline", "start_pattern"]);
    let cfg = config(dir.path(), |s| s.max_open_files(0));
    assert_eq!(cfg.validate()[0].path, ["max_open_files"]);
}
