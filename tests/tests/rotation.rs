//! Acceptance tests of the file source around what real log files do:
//! rotation by the real logrotate binary in each mode while lines are being
//! written, SIGKILL before, during and after rotations, rotations and
//! copytruncate while the agent is stopped, inode reuse, truncation,
//! deletion, new files, 2,000 files, multiline. Every test counts
//! sequence-numbered lines at a real consumer: nothing may be lost;
//! duplicates are counted, printed, and allowed only next to a kill.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tailrace_e2e::config::{Source, MAIN};
use tailrace_e2e::rotation::{
    agent_pid, is_cut_line, open_fds_under, replace_on_same_inode, seq_lines, seqs_on_disk,
    write_file, AppWriter, Logrotate, RotateMode,
};
use tailrace_e2e::{
    scene, seq_of, wait_until, Agent, Broker, Config, Consumer, Record, Report, SeqLines,
};

const TOPIC: &str = "logs";
/// shutdown_grace_ms in `Config::file_to_kafka`, plus time to start and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long everything written may take to arrive at the end of a test.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines per write and pause between writes of the application: about
/// 8,000 lines (800 KB) a second.
const BATCH: u64 = 40;
const PACE: Duration = Duration::from_millis(5);
/// A restarted agent repeats what was read after its last saved position:
/// the checkpoint interval (200 ms) plus acknowledgement time. At the
/// writer's pace, lines written more than this many before the kill were
/// saved, and must not come twice. Rotated files are larger than this, so
/// a file sent again whole fails the test.
const REPEAT_WINDOW: u64 = 8_000;

/// The file source over every `*.log` under `DIR/logs`, at any depth.
fn deep(dir: &tempfile::TempDir, source: Source) -> Source {
    source.include(&[logs(dir).join("**/*.log")])
}

fn logs(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("logs")
}

/// The highest line number that arrived, if any.
fn highest_seq(records: &[Record]) -> Option<u64> {
    records.iter().filter_map(|r| seq_of(&r.payload)).max()
}

/// Waits until a line written after this call arrives: the agent is
/// reading what is written now.
fn catch_up(consumer: &mut Consumer, writer: &AppWriter) {
    let wanted = writer.written();
    let records = consumer.read_until(Duration::from_secs(60), |r| {
        highest_seq(r).is_some_and(|s| s >= wanted)
    });
    assert!(
        highest_seq(records).is_some_and(|s| s >= wanted),
        "line {wanted} did not arrive within 60 s"
    );
}

/// A SIGKILL: the highest line seen at the consumer then, and the lines
/// written by then.
type Kill = (u64, u64);

fn kill(agent: &mut Agent, consumer: &Consumer, writer: &AppWriter) -> Kill {
    agent.kill();
    (
        highest_seq(consumer.records()).unwrap_or(0),
        writer.written(),
    )
}

/// Everything written arrived (and nothing else); no line came twice
/// unless it was read just before a kill: after the last saved position
/// ([`REPEAT_WINDOW`] lines before the last line seen), and written before
/// the kill.
fn assert_all_arrived(consumer: &mut Consumer, written: u64, kills: &[Kill]) -> Report {
    consumer.read_until(DELIVERY_TIMEOUT, |r| {
        Report::new(written, r).missing.is_empty()
    });
    let report = Report::new(written, consumer.records());
    println!("{written} lines written, {} kills: {report}", kills.len());
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    assert_repeats_near_kills(&report, kills);
    report
}

fn assert_repeats_near_kills(report: &Report, kills: &[Kill]) {
    let far: Vec<u64> = report
        .duplicated
        .iter()
        .copied()
        .filter(|&seq| {
            !kills
                .iter()
                .any(|&(seen, written)| seq + REPEAT_WINDOW >= seen && seq < written)
        })
        .collect();
    assert!(
        far.is_empty(),
        "lines repeated far from any kill (kills after line {kills:?}): {} of them, first {:?}",
        far.len(),
        &far[..far.len().min(10)]
    );
}

/// For copytruncate: every line that is on disk in some rotation arrived.
/// Lines written between logrotate's copy and its truncation are on disk
/// nowhere (logrotate's documented loss); those are counted and printed.
/// A copy that ends mid-line leaves a cut last line: allowed, counted, at
/// most one per rotation.
fn assert_disk_lines_arrived(
    consumer: &mut Consumer,
    written: u64,
    log_dir: &Path,
    rotations: u64,
    kills: &[Kill],
) {
    let on_disk = seqs_on_disk(log_dir, "app.log");
    let arrived = |r: &[Record]| -> BTreeSet<u64> {
        r.iter()
            .filter_map(|r| seq_of(&r.payload).filter(|&s| r.payload == SeqLines::line(s)))
            .collect()
    };
    consumer.read_until(DELIVERY_TIMEOUT, |r| on_disk.is_subset(&arrived(r)));
    let got = arrived(consumer.records());
    let missing: Vec<u64> = on_disk.difference(&got).copied().collect();
    let never_on_disk = (0..written)
        .filter(|s| !on_disk.contains(s) && !got.contains(s))
        .count();
    let cut = consumer
        .records()
        .iter()
        .filter(|r| is_cut_line(&r.payload))
        .count() as u64;
    let report = Report::new(written, consumer.records());
    println!(
        "{written} lines written, {} on disk after the rotations, {never_on_disk} dropped by copytruncate between its copy and its truncation, {cut} cut lines; {report}",
        on_disk.len()
    );
    assert!(
        missing.is_empty(),
        "{} lines on disk never arrived, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        cut <= rotations,
        "{cut} cut lines from {rotations} rotations"
    );
    assert_eq!(
        report.malformed_count, cut,
        "payloads that are neither lines nor cut lines: {report}"
    );
    assert_repeats_near_kills(&report, kills);
}

fn agent_log(agent: &Agent) -> String {
    std::fs::read_to_string(agent.log_path()).unwrap_or_default()
}

/// Renames like logrotate's `create`: app.log.N -> app.log.N+1, app.log ->
/// app.log.1, a new app.log, then tells the writer to reopen.
fn rotate_by_hand(log_dir: &Path, rotations_so_far: u32) {
    let name = |n: u32| log_dir.join(format!("app.log.{n}"));
    for n in (1..=rotations_so_far).rev() {
        std::fs::rename(name(n), name(n + 1)).expect("cannot shift a rotated file");
    }
    let log = log_dir.join("app.log");
    std::fs::rename(&log, name(1)).expect("cannot rename app.log");
    std::fs::File::create(&log).expect("cannot create the new app.log");
    std::fs::File::create(tailrace_e2e::rotation::reopen_marker(&log))
        .expect("cannot create the reopen marker");
}

#[test]
fn rename_rotation_loses_nothing() {
    let (broker, dir, config) = scene(TOPIC);
    let log = logs(&dir).join("app.log");
    let writer = AppWriter::start(&log, 0, BATCH, PACE);
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    for n in 0..3 {
        writer.wait_for_more(10_000);
        catch_up(&mut consumer, &writer);
        rotate_by_hand(&logs(&dir), n);
    }
    writer.wait_for_more(2_000);
    let written = writer.stop();
    let report = assert_all_arrived(&mut consumer, written, &[]);
    assert_eq!(report.duplicates, 0, "no restart, no repeats: {report}");
    assert_eq!(
        agent_log(&agent)
            .matches("file rotated, reading it to its end")
            .count(),
        3
    );
}

fn logrotate_while_writing(mode: RotateMode) {
    let (broker, dir, config) = scene(TOPIC);
    let log = logs(&dir).join("app.log");
    let writer = AppWriter::start(&log, 0, BATCH, PACE);
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let mut logrotate = Logrotate::new(dir.path(), &log, mode);
    const ROTATIONS: u64 = 3;
    for _ in 0..ROTATIONS {
        writer.wait_for_more(10_000);
        logrotate.rotate();
    }
    writer.wait_for_more(2_000);
    let written = writer.stop();
    if mode == RotateMode::CopyTruncate {
        assert_disk_lines_arrived(&mut consumer, written, &logs(&dir), ROTATIONS, &[]);
        assert!(agent_log(&agent).contains("file truncated"));
    } else {
        assert_all_arrived(&mut consumer, written, &[]);
    }
    let report = Report::new(written, consumer.records());
    assert_eq!(report.duplicates, 0, "no restart, no repeats: {report}");
    assert!(agent.is_running(), "the agent exited");
}

#[test]
fn logrotate_create_while_writing_loses_nothing() {
    logrotate_while_writing(RotateMode::Create);
}

#[test]
fn logrotate_dateext_while_writing_loses_nothing() {
    logrotate_while_writing(RotateMode::Dateext);
}

#[test]
fn logrotate_delaycompress_while_writing_loses_nothing() {
    logrotate_while_writing(RotateMode::DelayCompress);
}

#[test]
fn logrotate_copytruncate_while_writing_loses_nothing() {
    logrotate_while_writing(RotateMode::CopyTruncate);
}

/// Kill, rotate twice while the agent is stopped, restart: the file read
/// last is found by its inode two rotations away and its unread tail
/// delivered; the file rotated in between, which the agent never saw, is
/// read whole.
fn rotations_while_stopped(mode: RotateMode) {
    let (broker, dir, config) = scene(TOPIC);
    let log = logs(&dir).join("app.log");
    let writer = AppWriter::start(&log, 0, BATCH, PACE);
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let mut logrotate = Logrotate::new(dir.path(), &log, mode);
    writer.wait_for_more(10_000);
    catch_up(&mut consumer, &writer);
    let kill = kill(&mut agent, &consumer, &writer);
    let rotations = 2;
    for _ in 0..rotations {
        writer.wait_for_more(REPEAT_WINDOW + 2_000);
        logrotate.rotate();
    }
    writer.wait_for_more(2_000);
    agent.restart();
    catch_up(&mut consumer, &writer);
    let written = writer.stop();
    if mode == RotateMode::CopyTruncate {
        assert_disk_lines_arrived(&mut consumer, written, &logs(&dir), rotations, &[kill]);
        assert!(agent_log(&agent).contains("file copied and truncated while stopped"));
    } else {
        assert_all_arrived(&mut consumer, written, &[kill]);
        assert!(agent_log(&agent).contains("file rotated while stopped"));
    }
    assert!(agent_log(&agent).contains("rotated file never read, reading it from its start"));
}

#[test]
fn rotation_during_restart_keeps_rotated_tail() {
    rotations_while_stopped(RotateMode::Create);
}

#[test]
fn dateext_rotations_during_restart_keep_rotated_tails() {
    rotations_while_stopped(RotateMode::Dateext);
}

#[test]
fn copytruncate_during_restart_delivers_the_unread_tail_from_the_copy() {
    rotations_while_stopped(RotateMode::CopyTruncate);
}

/// SIGKILL before a rotation (it happens while the agent is stopped),
/// during one (while logrotate runs) and just after one (while the agent
/// reads the rotated file).
fn sigkill_around_logrotate(mode: RotateMode) {
    let (broker, dir, config) = scene(TOPIC);
    let log = logs(&dir).join("app.log");
    let writer = AppWriter::start(&log, 0, BATCH, PACE);
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let mut logrotate = Logrotate::new(dir.path(), &log, mode);
    let mut kills = Vec::new();

    // before
    writer.wait_for_more(10_000);
    catch_up(&mut consumer, &writer);
    kills.push(kill(&mut agent, &consumer, &writer));
    logrotate.rotate();
    agent.restart();

    // during: logrotate renamed the log and created the new one; the
    // application has not reopened yet (copytruncate: the copy is being made)
    writer.wait_for_more(10_000);
    catch_up(&mut consumer, &writer);
    if mode == RotateMode::CopyTruncate {
        let copy = logs(&dir).join("app.log.1");
        let before = std::fs::metadata(&copy).map(|m| m.ino()).ok();
        let mut rotating = logrotate.spawn();
        let copying = wait_until(Duration::from_secs(10), || {
            std::fs::metadata(&copy).map(|m| m.ino()).ok() != before
        });
        assert!(copying, "logrotate made no copy");
        kills.push(kill(&mut agent, &consumer, &writer));
        let status = rotating.wait().expect("waitpid failed");
        assert!(status.success(), "logrotate failed: {status}");
        agent.restart();
    } else {
        let held = logrotate.hold();
        kills.push(kill(&mut agent, &consumer, &writer));
        agent.restart();
        writer.wait_for_more(2_000);
        held.release();
    }

    // after
    writer.wait_for_more(10_000);
    catch_up(&mut consumer, &writer);
    logrotate.rotate();
    kills.push(kill(&mut agent, &consumer, &writer));
    agent.restart();

    writer.wait_for_more(2_000);
    catch_up(&mut consumer, &writer);
    let written = writer.stop();
    if mode == RotateMode::CopyTruncate {
        assert_disk_lines_arrived(&mut consumer, written, &logs(&dir), 3, &kills);
    } else {
        assert_all_arrived(&mut consumer, written, &kills);
    }
}

#[test]
fn sigkill_before_during_and_after_logrotate_create_loses_nothing() {
    sigkill_around_logrotate(RotateMode::Create);
}

#[test]
fn sigkill_before_during_and_after_logrotate_dateext_loses_nothing() {
    sigkill_around_logrotate(RotateMode::Dateext);
}

#[test]
fn sigkill_before_during_and_after_logrotate_delaycompress_loses_nothing() {
    sigkill_around_logrotate(RotateMode::DelayCompress);
}

#[test]
fn sigkill_before_during_and_after_logrotate_copytruncate_loses_nothing() {
    sigkill_around_logrotate(RotateMode::CopyTruncate);
}

#[test]
fn inode_reuse_while_stopped_is_read_as_a_new_file() {
    let (broker, dir, config) = scene(TOPIC);
    let log = logs(&dir).join("app.log");
    write_file(&log, &seq_lines(0..1_000));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(1_000, Duration::from_secs(60));
    agent.terminate();
    assert_eq!(agent.wait_exit(EXIT_TIMEOUT).code(), Some(0));

    // A longer file with other lines on the same inode.
    let old = std::fs::metadata(&log).unwrap().ino();
    let reused = replace_on_same_inode(&log, &seq_lines(1_000..3_000));
    assert!(
        reused,
        "the file system did not hand inode {old} to a new file; this test needs one that does (ext4)"
    );
    assert_eq!(std::fs::metadata(&log).unwrap().ino(), old);
    agent.restart();
    let report = assert_all_arrived(&mut consumer, 3_000, &[]);
    assert_eq!(report.duplicates, 0, "{report}");
    assert!(agent_log(&agent).contains("saved position belongs to other content"));
}

#[test]
fn truncation_in_place_restarts_from_zero() {
    let (broker, dir, config) = scene(TOPIC);
    let log = logs(&dir).join("app.log");
    write_file(&log, &seq_lines(0..1_000));
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(1_000, Duration::from_secs(60));
    // Truncated in place (same inode), then written again.
    write_file(&log, &seq_lines(1_000..1_200));
    let report = assert_all_arrived(&mut consumer, 1_200, &[]);
    assert_eq!(report.duplicates, 0, "{report}");
    assert!(agent_log(&agent).contains("file truncated, reading it again from its start"));
}

#[test]
fn deleted_file_is_read_to_its_end_and_its_space_freed() {
    let (broker, dir, config) = scene(TOPIC);
    // A small channel: the agent reads at the broker's pace, so most of the
    // file is unread when it is deleted.
    let config = config.edit_channel(MAIN, |c| c.capacity_events(2_000));
    let log = logs(&dir).join("app.log");
    const LINES: u64 = 60_000;
    write_file(&log, &seq_lines(0..LINES));
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let arrived = consumer.read_count(1, Duration::from_secs(60)).len();
    std::fs::remove_file(&log).unwrap();
    assert!(
        (arrived as u64) < LINES / 2,
        "{arrived} lines had arrived at the deletion: it did not happen mid-file"
    );
    let report = assert_all_arrived(&mut consumer, LINES, &[]);
    assert_eq!(report.duplicates, 0, "{report}");
    let pid = agent_pid(agent.config_path()).expect("the agent runs");
    let closed = wait_until(Duration::from_secs(10), || {
        open_fds_under(pid, &logs(&dir)).is_empty()
    });
    assert!(
        closed,
        "the deleted file is still open: {:?}",
        open_fds_under(pid, &logs(&dir))
    );
}

fn new_file_arrives_within(
    config: &Config,
    dir: &tempfile::TempDir,
    broker: &Broker,
    limit: Duration,
) {
    write_file(&logs(dir).join("first.log"), &seq_lines(0..10));
    let _agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    assert_eq!(consumer.read_count(10, Duration::from_secs(60)).len(), 10);
    // A new file in a directory that did not exist when the agent started.
    let created = Instant::now();
    write_file(&logs(dir).join("a/b/c/new.log"), &seq_lines(10..20));
    consumer.read_count(20, limit + Duration::from_secs(10));
    let took = created.elapsed();
    let report = assert_all_arrived(&mut consumer, 20, &[]);
    assert_eq!(report.duplicates, 0, "{report}");
    println!("a new file's lines arrived {took:?} after it was created");
    assert!(
        took <= limit,
        "a new file's lines took {took:?} to arrive (limit {limit:?})"
    );
}

#[test]
fn new_files_are_picked_up_within_a_second() {
    // No polling to speak of: only a notification can be this fast. The
    // limit is the second the issue asks for, plus one for delivery to
    // Kafka and the consumer.
    let (broker, dir, config) = scene(TOPIC);
    let config = config.edit_source("app", |s| deep(&dir, s).scan_interval_ms(60_000));
    new_file_arrives_within(&config, &dir, &broker, Duration::from_secs(2));
}

#[test]
fn polling_finds_new_files_without_notifications() {
    let (broker, dir, config) = scene(TOPIC);
    let config = config.edit_source("app", |s| {
        deep(&dir, s).set("watch", false).scan_interval_ms(500)
    });
    new_file_arrives_within(&config, &dir, &broker, Duration::from_secs(3));
}

#[test]
fn two_thousand_files_with_bounded_descriptors() {
    const FILES: u64 = 2_000;
    const MAX_OPEN: usize = 100;
    let (broker, dir, config) = scene(TOPIC);
    let config = config.edit_source("app", |s| deep(&dir, s).max_open_files(MAX_OPEN as u64));
    let path = |f: u64| logs(&dir).join(format!("d{}/f{f}.log", f % 20));
    // 5 lines per file now, one more later: line numbers f*5.. and 10_000+f.
    for f in 0..FILES {
        write_file(&path(f), &seq_lines(f * 5..f * 5 + 5));
    }
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let pid = agent_pid(agent.config_path()).expect("the agent runs");
    let most = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (most, stop, dir) = (most.clone(), stop.clone(), logs(&dir));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                most.fetch_max(open_fds_under(pid, &dir).len(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_until(DELIVERY_TIMEOUT, |r| {
        Report::new(FILES * 5, r).missing.is_empty()
    });
    for f in 0..FILES {
        let mut line = SeqLines::line(FILES * 5 + f);
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(f))
            .and_then(|mut file| std::io::Write::write_all(&mut file, &line))
            .unwrap();
    }
    let report = assert_all_arrived(&mut consumer, FILES * 6, &[]);
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let most = most.load(Ordering::SeqCst);
    println!("at most {most} descriptors on log files for {FILES} files");
    assert_eq!(report.duplicates, 0, "{report}");
    // One more than the limit: a file is opened to be identified before a
    // descriptor is known to be free.
    assert!(
        most <= MAX_OPEN + 1,
        "{most} descriptors open, max_open_files is {MAX_OPEN}"
    );
    assert!(agent_log(&agent).contains("every descriptor the source may hold is busy"));
}

#[test]
fn java_stack_traces_arrive_as_one_event() {
    let (broker, dir, config) = scene(TOPIC);
    let config = config.edit_source("app", |s| {
        s.set("multiline.start_pattern", "^\\d{4}-\\d{2}-\\d{2} ")
            .set("multiline.flush_timeout_ms", 500)
    });
    let trace = |n: u64| {
        format!(
            "2026-11-21 12:00:{:02} ERROR request {n} failed\n\
             java.lang.IllegalStateException: state {n}\n\
             \tat com.example.Service.handle(Service.java:{n})\n\
             \tat com.example.Main.main(Main.java:3)\n\
             Caused by: java.io.IOException: disk {n}\n\
             \t... 2 more",
            n % 60
        )
    };
    const TRACES: u64 = 200;
    let text: String = (0..TRACES).map(|n| trace(n) + "\n").collect();
    write_file(&logs(&dir).join("app.log"), text.as_bytes());
    let _agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    // The last trace has no line after it: it goes after the flush timeout.
    consumer.read_count(TRACES as usize, Duration::from_secs(60));
    consumer.read_for(Duration::from_secs(1));
    let got: Vec<String> = consumer
        .records()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    let want: Vec<String> = (0..TRACES).map(trace).collect();
    assert_eq!(got.len(), want.len(), "one event per trace");
    assert_eq!(got, want);
}
