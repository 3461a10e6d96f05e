//! Acceptance tests of the foundation: one file source, one memory channel,
//! one kafka sink, at-least-once across appends, crashes, a missing broker
//! and a clean shutdown. Each starts its own broker and agent.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use tailrace_e2e::{
    scene, seq_of, wait_until, Agent, Broker, Checkpoint, Config, Consumer, Record, Report,
    SeqLines, Writer, LINE_LEN,
};

const TOPIC: &str = "logs";
/// Upper bound on what a background writer appends (100 MB).
const MAX_WRITTEN: u64 = 1_000_000;
/// shutdown_grace_ms in `Config::file_to_kafka`, plus time to start and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The saved position of `file`, or 0 if the agent saved none yet.
fn checkpoint_of(agent: &Agent, file: &Path) -> u64 {
    let wanted = file.canonicalize().expect("log file exists");
    let checkpoints = agent.checkpoints();
    let ours: Vec<&Checkpoint> = checkpoints
        .iter()
        .filter(|c| c.path.canonicalize().is_ok_and(|p| p == wanted))
        .collect();
    assert!(
        ours.len() <= 1,
        "one checkpoint per file, got {checkpoints:?}"
    );
    let Some(checkpoint) = ours.first() else {
        return 0;
    };
    let meta = std::fs::metadata(file).expect("log file exists");
    assert_eq!(
        (checkpoint.dev, checkpoint.inode),
        (meta.dev(), meta.ino()),
        "checkpoint identifies the file"
    );
    assert_eq!(checkpoint.source, "app");
    assert_eq!(
        checkpoint.offset % LINE_LEN as u64,
        0,
        "checkpoint at a line boundary: {checkpoint:?}"
    );
    checkpoint.offset
}

/// Lines `0..n` have all arrived.
fn prefix_arrived(records: &[Record], n: u64) -> bool {
    Report::new(n, records).missing.is_empty()
}

/// Waits until lines written up to now arrive (the restarted agent made
/// progress), then stops the writer and returns its file.
fn catch_up_and_stop(consumer: &mut Consumer, writer: Writer) -> SeqLines {
    let wanted = writer.written();
    let records = consumer.read_until(Duration::from_secs(120), |r| {
        highest_seq(r).is_some_and(|s| s + 1 >= wanted)
    });
    assert!(
        highest_seq(records).is_some_and(|s| s + 1 >= wanted),
        "no progress after the restart"
    );
    writer.stop()
}

/// The highest line number that arrived, if any.
fn highest_seq(records: &[Record]) -> Option<u64> {
    records.iter().filter_map(|r| seq_of(&r.payload)).max()
}

#[test]
fn lines_written_before_and_during_run_all_arrive_in_order() {
    const BEFORE: u64 = 50_000;
    const APPENDS: u64 = 5;
    const PER_APPEND: u64 = 30_000;
    let total = BEFORE + APPENDS * PER_APPEND;

    let (broker, dir, config) = scene(TOPIC);
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(BEFORE);
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);

    for _ in 0..APPENDS {
        // Append only once the agent has delivered part of what is there,
        // so appends land while it is reading.
        let seen = consumer.records().len();
        let progressed = consumer.read_count(seen + 1, Duration::from_secs(60)).len() > seen;
        assert!(
            progressed,
            "no progress from {seen} records; {} lines written",
            lines.written()
        );
        lines.append(PER_APPEND);
    }
    assert_eq!(lines.written(), total);

    consumer.read_count(usize::try_from(total).unwrap(), Duration::from_secs(180));
    assert!(agent.is_running(), "the agent exited");
    let report = lines.count(consumer.records());
    println!("{report}");
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    assert!(
        !report.out_of_order,
        "one partition keeps the file's order: {report}"
    );
    assert_eq!(
        report.duplicates, 0,
        "no restart, so no duplicates: {report}"
    );
}

#[test]
fn sigkill_mid_stream_loses_nothing() {
    let (broker, dir, config) = scene(TOPIC);
    let path = dir.path().join("logs/app.log");
    let mut lines = SeqLines::create(&path);
    lines.append(10_000);
    // About 20,000 lines/s, through the kill and the restart.
    let writer = lines.spawn_writer(200, Duration::from_millis(10), MAX_WRITTEN);

    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    // Kill once a good part arrived: the agent had time to save positions.
    let arrived = consumer.read_count(50_000, Duration::from_secs(60)).len();
    assert!(
        arrived >= 50_000,
        "only {arrived} lines arrived before the kill"
    );
    agent.kill();
    let written_at_kill = writer.written();
    assert!(
        writer.is_writing(),
        "the writer had finished: the kill was not mid-stream"
    );

    // Invariant 1: every line before the saved position was acknowledged by
    // Kafka, so it is there to read.
    let saved = checkpoint_of(&agent, &path);
    println!(
        "killed with {arrived} arrived, {written_at_kill} written; checkpoint at byte {saved}"
    );
    assert!(
        saved <= SeqLines::offset_of(written_at_kill),
        "checkpoint beyond what was written"
    );
    let saved_lines = saved / LINE_LEN as u64;
    let records = consumer.read_until(Duration::from_secs(30), |r| prefix_arrived(r, saved_lines));
    assert!(
        prefix_arrived(records, saved_lines),
        "a line before the checkpoint never reached Kafka"
    );

    agent.restart();
    let lines = catch_up_and_stop(&mut consumer, writer);
    consumer.read_until(Duration::from_secs(120), |r| {
        lines.count(r).missing.is_empty()
    });
    let report = lines.count(consumer.records());
    println!("{report}");
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    let early: Vec<u64> = report
        .duplicated
        .iter()
        .copied()
        .filter(|&seq| SeqLines::offset_of(seq) < saved)
        .collect();
    assert!(
        early.is_empty(),
        "lines before the checkpoint (byte {saved}) were sent twice: {early:?}"
    );
}

#[test]
fn broker_absent_at_start_then_appears() {
    let port = tailrace_e2e::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(1_000);
    let config = Config::file_to_kafka(dir.path(), &format!("127.0.0.1:{port}"), TOPIC);
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    lines.append(1_000);

    // Nothing to wait for: the agent must simply still be there.
    let exited = wait_until(Duration::from_secs(4), || !agent.is_running());
    assert!(!exited, "the agent exited while the broker was absent");

    let broker = Broker::start_on(port);
    broker.create_topic(TOPIC, 1);
    lines.append(1_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_until(Duration::from_secs(90), |r| {
        lines.count(r).missing.is_empty()
    });
    let report = lines.count(consumer.records());
    println!("{report}");
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    assert!(agent.is_running(), "the agent exited");
}

#[test]
fn non_utf8_lines_arrive_byte_for_byte() {
    let lines: [&[u8]; 12] = [
        b"plain ascii",
        b"\xff\xfe after a UTF-16 byte order mark",
        b"lone continuation bytes \x80\xbf\x80",
        b"latin-1 caf\xe9 na\xefve \xa3",
        b"",
        b"carriage return at the end\r",
        b"carriage\rreturn inside",
        b"truncated sequence \xe2\x82",
        b"nul \x00 byte",
        b"valid utf-8 \xc3\xa9\xe2\x82\xac\xf0\x9f\xa6\x80",
        b"overlong \xc0\xaf and surrogate \xed\xa0\x80",
        b"last line",
    ];
    let (broker, dir, config) = scene(TOPIC);
    let path = dir.path().join("logs/app.log");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let append = |part: &[&[u8]]| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        for line in part {
            file.write_all(line).unwrap();
            file.write_all(b"\n").unwrap();
        }
    };
    append(&lines[..6]);
    let _agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    assert!(
        !consumer.read_count(1, Duration::from_secs(60)).is_empty(),
        "nothing arrived"
    );
    append(&lines[6..]);

    let records = consumer.read_count(lines.len(), Duration::from_secs(60));
    let got: Vec<String> = records
        .iter()
        .map(|r| r.payload.escape_ascii().to_string())
        .collect();
    let want: Vec<String> = lines.iter().map(|l| l.escape_ascii().to_string()).collect();
    assert_eq!(got, want);
}

#[test]
fn sigterm_delivers_in_flight_and_exits_zero() {
    let (broker, dir, config) = scene(TOPIC);
    let path = dir.path().join("logs/app.log");
    let mut lines = SeqLines::create(&path);
    lines.append(10_000);
    // Lines keep coming, so there is something in flight at SIGTERM.
    let writer = lines.spawn_writer(200, Duration::from_millis(10), MAX_WRITTEN);

    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    assert!(
        consumer.read_count(10_000, Duration::from_secs(60)).len() >= 10_000,
        "too few lines arrived"
    );
    agent.terminate();
    let written_at_term = writer.written();
    let status = agent.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    // What was delivered is exactly what was saved: all lines before the
    // position, none after it.
    let saved_lines = checkpoint_of(&agent, &path) / LINE_LEN as u64;
    consumer.read_until(Duration::from_secs(30), |r| prefix_arrived(r, saved_lines));
    consumer.read_for(Duration::from_secs(2));
    let delivered = Report::new(saved_lines, consumer.records());
    let beyond = consumer
        .records()
        .iter()
        .filter(|r| seq_of(&r.payload).is_some_and(|s| s >= saved_lines))
        .count();
    println!(
        "SIGTERM with {written_at_term} written; checkpoint at line {saved_lines}; {delivered}"
    );
    assert!(
        delivered.missing.is_empty(),
        "lines before the checkpoint are missing: {delivered}"
    );
    assert_eq!(
        beyond, 0,
        "{beyond} lines after the checkpoint were delivered, so a restart sends them again"
    );

    // The rest arrives after a restart, without re-sending anything.
    agent.restart();
    let lines = catch_up_and_stop(&mut consumer, writer);
    consumer.read_until(Duration::from_secs(120), |r| {
        lines.count(r).missing.is_empty()
    });
    agent.terminate();
    assert_eq!(agent.wait_exit(EXIT_TIMEOUT).code(), Some(0));

    // Nothing new: a third run sends nothing. Only absence can be checked,
    // so give it a few seconds.
    agent.restart();
    consumer.read_for(Duration::from_secs(4));
    agent.terminate();
    assert_eq!(agent.wait_exit(EXIT_TIMEOUT).code(), Some(0));
    consumer.read_for(Duration::from_secs(1));

    let report = lines.count(consumer.records());
    println!("{report}");
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    assert_eq!(
        report.duplicates, 0,
        "a clean shutdown saves exact positions: {report}"
    );
}
