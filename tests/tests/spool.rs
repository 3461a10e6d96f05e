//! Acceptance tests of the spool (issue 5): failed sends are kept on disk
//! and replayed, through broker outages longer than the delivery timeout,
//! cut connections, crashes of the agent, injected protocol errors and a
//! damaged entry. Each starts its own broker and agent.
//!
//! The spool is read from the outside only: `tailrace spool`, the agent's
//! log, and (agent stopped) the sled store itself, whose entries are
//! decoded here from the documented format (plugins/api/src/spool.rs).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tailrace_e2e::config::{Sink, MAIN};
use tailrace_e2e::rng::Rng;
use tailrace_e2e::tmpfs::Tmpfs;
use tailrace_e2e::{
    free_port, seq_of, wait_until, Agent, Arrivals, Broker, Config, Consumer, Proxy, Record,
    Report, SeqLines, LINE_LEN,
};

const TOPIC: &str = "logs";
/// The sink's name in `Config::file_to_kafka`.
const SINK: &str = "kafka";
/// Small, so that an outage of a few seconds outlasts it.
const DELIVERY_TIMEOUT_MS: u64 = 3_000;
/// For runs against tansu's sqlite storage, which is slower.
const SQLITE_DELIVERY_TIMEOUT_MS: u64 = 5_000;
/// Longer than any test waits.
const PATIENT_DELIVERY_TIMEOUT_MS: u64 = 60_000;
/// shutdown_grace_ms in `Config::file_to_kafka` (10 s), plus time to start and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long everything may take to arrive once the broker is back.
const CATCH_UP: Duration = Duration::from_secs(180);
/// Upper bound on what a background writer appends.
const MAX_WRITTEN: u64 = 1_000_000;

/// `Config::file_to_kafka` with `delivery_timeout_ms`, and summaries every
/// 10 s, so the tail of the log shows what happened.
fn config(dir: &Path, bootstrap: &str, delivery_timeout_ms: u64) -> Config {
    Config::file_to_kafka(dir, bootstrap, TOPIC)
        .summary_interval_ms(10_000)
        .edit_sink(SINK, |k| k.delivery_timeout_ms(delivery_timeout_ms))
}

/// How many lines of the log contain `message`.
fn logged(agent: &Agent, message: &str) -> usize {
    agent.log().lines().filter(|l| l.contains(message)).count()
}

/// The sum of the `events=N` fields of the log lines containing `message`.
fn logged_events(agent: &Agent, message: &str) -> u64 {
    tailrace_e2e::logged_events(&agent.log(), message)
}

/// Asserts that the agent logged `message` within `timeout`.
fn wait_for_log(agent: &Agent, message: &str, timeout: Duration) {
    assert!(
        wait_until(timeout, || logged(agent, message) > 0),
        "the agent did not log {message:?} within {timeout:?}\n{}",
        agent.log_tail(40)
    );
}

/// SIGTERM and a clean exit.
fn stop_cleanly(agent: &mut Agent) {
    agent.terminate();
    let status = agent.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

/// Reads until at most `allowed` of the lines of `lines` are missing, or
/// `timeout`. Checks only the records read since the last poll, so a
/// million records cost no more than reading them.
fn read_until_missing_at_most(
    consumer: &mut Consumer,
    lines: &SeqLines,
    allowed: u64,
    timeout: Duration,
) {
    let mut arrivals = Arrivals::new(lines.written());
    let mut checked = 0;
    consumer.read_until(timeout, |records| {
        for record in &records[checked..] {
            arrivals.see(&record.payload);
        }
        checked = records.len();
        arrivals.missing() <= allowed
    });
}

/// Reads until every line of `lines` arrived, and returns the report.
fn read_all(consumer: &mut Consumer, lines: &SeqLines, timeout: Duration) -> Report {
    read_until_missing_at_most(consumer, lines, 0, timeout);
    let report = lines.count(consumer.records());
    println!("{report}");
    report
}

/// [`read_all`], then two seconds more: a line sent twice arrives close
/// after its first copy.
fn read_all_and_the_duplicates_after(consumer: &mut Consumer, lines: &SeqLines) -> Report {
    read_all(consumer, lines, CATCH_UP);
    consumer.read_for(Duration::from_secs(2));
    lines.count(consumer.records())
}

/// Reads until a line numbered `from` or later has arrived (or `timeout`),
/// and asserts that one did.
fn arrives_from(consumer: &mut Consumer, from: u64, timeout: Duration, what: &str) {
    let records = consumer.read_until(timeout, |r| seqs(r).range(from..).next().is_some());
    assert!(seqs(records).range(from..).next().is_some(), "{what}");
}

/// How many lines arrived (for the first time) while an older line had not
/// arrived yet: the lines that overtook it.
fn overtaking(records: &[Record]) -> u64 {
    let mut seen = BTreeSet::new();
    let mut lowest_missing = 0;
    let mut early = 0;
    for seq in records.iter().filter_map(|r| seq_of(&r.payload)) {
        if !seen.insert(seq) {
            continue;
        }
        if seq > lowest_missing {
            early += 1;
        }
        while seen.contains(&lowest_missing) {
            lowest_missing += 1;
        }
    }
    early
}

/// Runs of consecutive lines as they arrived: "first..=last@offset".
fn runs(records: &[Record]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u64, u64, i64)> = None;
    for r in records {
        let Some(seq) = seq_of(&r.payload) else {
            continue;
        };
        match run {
            Some((a, b, at)) if seq == b + 1 => run = Some((a, seq, at)),
            Some((a, b, at)) => {
                out.push(format!("{a}..={b}@{at}"));
                run = Some((seq, seq, r.offset));
            }
            None => run = Some((seq, seq, r.offset)),
        }
    }
    if let Some((a, b, at)) = run {
        out.push(format!("{a}..={b}@{at}"));
    }
    out.join(" ")
}

/// The line number of each record, for sets of what arrived.
fn seqs(records: &[Record]) -> BTreeSet<u64> {
    records.iter().filter_map(|r| seq_of(&r.payload)).collect()
}

/// The saved position of the only file, in lines (0 when none is saved).
fn saved_lines(agent: &Agent) -> u64 {
    let checkpoints = agent.checkpoints();
    assert!(checkpoints.len() <= 1, "one file, got {checkpoints:?}");
    checkpoints
        .first()
        .map_or(0, |c| c.offset / LINE_LEN as u64)
}

// ---- the spool on disk, read with sled while the agent is stopped ----

/// The entries of a spool tree (`spool`, `dead`, `corrupt`) of the sink,
/// oldest first, as (id, entry bytes). sled holds a reference per entry
/// (magic "TRSB", then the body's number; see plugins/api/src/spool.rs)
/// and the bodies are in the segment files of `data/store/bodies`; an
/// entry held inline (magic "TRSP") is its own body.
fn spool_entries(dir: &Path, tree: &str) -> Vec<(u64, Vec<u8>)> {
    use tailrace_api::channel_log::{Mode, SegmentLog};
    let store = dir.join("data/store");
    let db = sled::open(&store).expect("cannot open the agent's store");
    let (bodies, _) = SegmentLog::open(&store.join("bodies"), 64 << 20, Mode::Inspect)
        .expect("cannot read the spool's bodies");
    let tree = db
        .open_tree(format!("{tree}/{SINK}"))
        .expect("cannot open a spool tree");
    tree.iter()
        .map(|item| {
            let (k, v) = item.expect("cannot read the spool");
            let id = u64::from_be_bytes(k.as_ref().try_into().expect("spool keys are u64"));
            let entry = match tailrace_api::spool::BodyRef::decode(&v) {
                Some(r) => bodies.read(r.seq).expect("an entry's body is there"),
                None => v.to_vec(),
            };
            (id, entry)
        })
        .collect()
}

/// Flips byte `at` of `entry` where it is stored, in one of the segment
/// files in `dir`.
fn flip_byte_of(dir: &Path, entry: &[u8], at: usize) {
    for file in std::fs::read_dir(dir).unwrap() {
        let path = file.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(start) = bytes.windows(entry.len()).position(|w| w == entry) {
            bytes[start + at] ^= 0x20;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!("the entry is in no segment file of {}", dir.display());
}

/// Offset of the reason's length, and of the reason, in an entry (see
/// plugins/api/src/spool.rs): magic 4, version 1, crc 4, created 8,
/// events 4, raw_len 4, reason_len 2.
const REASON_LEN_AT: usize = 25;
const HEADER: usize = 27;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The payloads of a spool entry; panics if it is not a good entry.
fn decode_entry(entry: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(&entry[..4], b"TRSP", "spool entry magic");
    assert_eq!(u32_at(entry, 5), crc32(&entry[9..]), "spool entry checksum");
    let events = u32_at(entry, 17) as usize;
    let raw_len = u32_at(entry, 21) as usize;
    let reason_len = u16::from_le_bytes([entry[REASON_LEN_AT], entry[REASON_LEN_AT + 1]]) as usize;
    let raw = lz4_flex::block::decompress(&entry[HEADER + reason_len..], raw_len)
        .expect("spool entry decompresses");
    let mut payloads = Vec::with_capacity(events);
    let mut at = 0;
    while at < raw.len() {
        let flags = raw[at];
        at += 1;
        if flags & 1 != 0 {
            at += 8;
        }
        if flags & 2 != 0 {
            at += 4 + u32_at(&raw, at) as usize;
        }
        let len = u32_at(&raw, at) as usize;
        at += 4;
        payloads.push(raw[at..at + len].to_vec());
        at += len;
    }
    assert_eq!(payloads.len(), events, "spool entry's event count");
    payloads
}

/// CRC-32 (IEEE), as the spool computes it; bitwise, tests only.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The line numbers held in a spool tree.
fn spooled_seqs(dir: &Path, tree: &str) -> BTreeSet<u64> {
    spool_entries(dir, tree)
        .iter()
        .flat_map(|(_, e)| decode_entry(e))
        .map(|p| seq_of(&p).expect("spooled payloads are numbered lines"))
        .collect()
}

/// Lines `0..n` are each in Kafka or in the spool: the position was saved
/// only past what was acknowledged or spooled and flushed.
fn assert_covered(n: u64, in_kafka: &BTreeSet<u64>, in_spool: &BTreeSet<u64>) {
    let uncovered: Vec<u64> = (0..n)
        .filter(|s| !in_kafka.contains(s) && !in_spool.contains(s))
        .collect();
    assert!(
        uncovered.is_empty(),
        "{} lines before the saved position (line {n}) are neither in Kafka nor in the spool, e.g. {:?}",
        uncovered.len(),
        &uncovered[..uncovered.len().min(10)]
    );
}

/// For a failure message: where the missing lines are, from the stopped
/// agent's saved position and spool.
fn where_are_they(agent: &Agent, dir: &Path, report: &Report) -> String {
    let saved = saved_lines(agent);
    let in_spool = spooled_seqs(dir, "spool");
    let missing_in_spool = report
        .missing
        .iter()
        .filter(|s| in_spool.contains(s))
        .count();
    let missing_before_saved = report.missing.iter().filter(|&&s| s < saved).count();
    format!(
        "saved position: line {saved}; spool: {:?} holding {} lines; of {} missing lines, {missing_in_spool} are in the spool and {missing_before_saved} are before the saved position",
        agent.spool_usage(SINK, "spool"),
        in_spool.len(),
        report.missing.len(),
    )
}

// ---- the tests ----

#[test]
fn broker_down_beyond_delivery_timeout_then_sigkill_with_spool_loses_nothing() {
    const TOTAL: u64 = 150_000;
    let mut broker = Broker::start_persistent();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(10_000);
    // About 10,000 lines/s: the 150,000 take some 15 s, most of them while
    // the broker is down.
    let writer = lines.spawn_writer(100, Duration::from_millis(10), TOTAL);
    let bootstrap = broker.bootstrap();
    let config = config(dir.path(), &bootstrap, SQLITE_DELIVERY_TIMEOUT_MS).to_yaml();
    let mut agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    assert!(
        consumer.read_count(10_000, Duration::from_secs(60)).len() >= 10_000,
        "too few lines arrived before the outage"
    );

    broker.kill();
    let down_at = Instant::now();
    // What was delivered before the outage is at most what was written.
    let written_at_outage = writer.written();
    wait_for_log(
        &agent,
        "the sink cannot reach its broker",
        Duration::from_secs(30),
    );
    wait_for_log(&agent, "events spooled", Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(60), || !writer.is_writing()),
        "the writer did not finish"
    );
    let lines = writer.stop();
    assert_eq!(lines.written(), TOTAL);
    // Let the agent read on into the spool (new lines wait behind it):
    // at least what was written during the outage.
    let spooled_enough = wait_until(Duration::from_secs(60), || {
        logged_events(&agent, "events spooled") >= TOTAL - written_at_outage
    });
    assert!(
        spooled_enough,
        "the agent did not spool what was written during the outage: {} spooled, {} written since",
        logged_events(&agent, "events spooled"),
        TOTAL - written_at_outage
    );
    assert!(agent.is_running(), "the agent exited during the outage");
    agent.kill();
    let outage = down_at.elapsed();

    // The spool holds data, and every line before the saved position is in
    // Kafka (read once the broker is back, before the agent is) or in the
    // spool.
    let held = agent.spool_usage(SINK, "spool");
    println!("killed after an outage of {outage:?}: spool holds {held:?}");
    assert!(
        held.entries > 0 && held.events > 0,
        "the spool is empty: {held:?}"
    );
    let saved = saved_lines(&agent);
    let in_spool = spooled_seqs(dir.path(), "spool");
    assert!(
        in_spool.iter().any(|&s| s < saved),
        "the position did not move past spooled lines (saved at line {saved})"
    );
    broker.start_again();
    let covered = |records: &[Record]| {
        let in_kafka = seqs(records);
        (0..saved).all(|s| in_kafka.contains(&s) || in_spool.contains(&s))
    };
    consumer.read_until(Duration::from_secs(60), covered);
    assert_covered(saved, &seqs(consumer.records()), &in_spool);

    // The same 5 s delivery timeout while the spool is replayed into the
    // slow sqlite broker: the timeout runs only while nothing is
    // acknowledged.
    agent.restart();
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    wait_for_log(&agent, "spool replayed in full", Duration::from_secs(60));
    stop_cleanly(&mut agent);
    let left = agent.spool_usage(SINK, "spool");
    assert_eq!(
        left.entries, 0,
        "the spool is not empty afterwards: {left:?}"
    );
    assert_eq!(agent.spool_usage(SINK, "corrupt").entries, 0);
    assert_eq!(agent.spool_usage(SINK, "dead").entries, 0);
}

/// Network cuts at random instants, every fourth outlasting the delivery
/// timeout, with SIGKILLs during and after some. `TAILRACE_CUTS` sets how
/// many (10 in CI; the random fault campaign, tests/tests/campaign.rs, mixes
/// cuts and kills with the other faults; 20 or more for a longer run).
#[test]
fn network_cuts_and_random_sigkills_lose_nothing() {
    let cuts: usize = tailrace_e2e::size_knob("TAILRACE_CUTS", 10);
    let broker_port = free_port();
    let proxy = Proxy::start(&format!("127.0.0.1:{broker_port}"));
    let broker = Broker::start_behind(broker_port, proxy.port());
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(5_000);
    // About 5,000 lines/s throughout.
    let writer = lines.spawn_writer(50, Duration::from_millis(10), MAX_WRITTEN);
    let config = config(dir.path(), &proxy.address(), DELIVERY_TIMEOUT_MS).to_yaml();
    let mut agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&proxy.address(), TOPIC);
    assert!(
        consumer.read_count(5_000, Duration::from_secs(60)).len() >= 5_000,
        "too few lines arrived before the first cut"
    );

    let mut rng = Rng::from_env_or_clock("TAILRACE_SEED");
    let mut kills = 0;
    for cut in 0..cuts {
        // Connected for a while, at a random instant cut off; every fourth
        // cut outlasts the delivery timeout, so sends fail and are spooled.
        std::thread::sleep(rng.millis(300, 2_500)); // a random instant, not a wait for anything
        proxy.cut();
        let cut_for = if cut % 4 == 1 {
            rng.millis(DELIVERY_TIMEOUT_MS + 1_000, DELIVERY_TIMEOUT_MS + 3_000)
        } else {
            rng.millis(100, DELIVERY_TIMEOUT_MS + 2_000)
        };
        let until = Instant::now() + cut_for;
        if rng.chance(40) {
            // Killed at a random point of the cut, restarted still cut off.
            std::thread::sleep(rng.millis(0, cut_for.as_millis() as u64 + 1));
            agent.kill();
            agent.restart();
            kills += 1;
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        proxy.restore();
        assert!(agent.is_running(), "the agent exited after cut {cut}");
        if rng.chance(25) {
            // Killed while connected (and maybe replaying).
            std::thread::sleep(rng.millis(0, 1_500));
            agent.kill();
            agent.restart();
            kills += 1;
        }
        println!("cut {cut}: {cut_for:?}; {kills} kills so far");
    }
    assert!(
        proxy.refused() > 0,
        "no connection attempt during a cut: the agent was never cut off"
    );
    assert!(
        logged(&agent, "events spooled") > 0,
        "nothing was spooled: the cuts never outlasted the delivery timeout"
    );

    let lines = writer.stop();
    println!("{cuts} cuts, {kills} kills, {} lines", lines.written());
    // A consumer that was never cut off reads the topic.
    drop(consumer);
    let mut consumer = Consumer::new(&proxy.address(), TOPIC);
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    if !report.missing.is_empty() {
        agent.kill();
        println!("{}", where_are_they(&agent, dir.path(), &report));
    }
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    wait_for_log(&agent, "spool replayed in full", Duration::from_secs(60));
    stop_cleanly(&mut agent);
    let left = agent.spool_usage(SINK, "spool");
    assert_eq!(
        left.entries, 0,
        "the spool is not empty afterwards: {left:?}"
    );
}

/// A connection cut longer than the delivery timeout, against tansu: the
/// sink takes back what librdkafka holds and starts a new producer. (When
/// librdkafka timed messages out itself, it bumped the idempotent
/// producer's epoch and tansu answered PRODUCER_FENCED to every later send,
/// so the spool was replayed into that refusal forever.)
#[test]
fn cut_beyond_delivery_timeout_against_tansu_loses_nothing() {
    let broker_port = free_port();
    let proxy = Proxy::start(&format!("127.0.0.1:{broker_port}"));
    let broker = Broker::start_behind(broker_port, proxy.port());
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(5_000);
    let writer = lines.spawn_writer(50, Duration::from_millis(10), MAX_WRITTEN);
    let config = config(dir.path(), &proxy.address(), DELIVERY_TIMEOUT_MS).to_yaml();
    let mut agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&proxy.address(), TOPIC);
    assert!(
        consumer.read_count(5_000, Duration::from_secs(60)).len() >= 5_000,
        "too few lines arrived before the cut"
    );

    proxy.cut();
    wait_for_log(&agent, "events spooled", Duration::from_secs(60));
    proxy.restore();
    let lines = {
        let resumed_from = writer.written();
        arrives_from(
            &mut consumer,
            resumed_from,
            CATCH_UP,
            "nothing written after the cut arrived",
        );
        writer.stop()
    };
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert!(agent.is_running(), "the agent exited");
    wait_for_log(&agent, "spool replayed in full", Duration::from_secs(60));
    stop_cleanly(&mut agent);
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
}

/// librdkafka's mock cluster with the topic, in this process: it must stay
/// on this thread.
fn mock_cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("cannot start the mock cluster");
    cluster
        .create_topic(TOPIC, 1, 1)
        .expect("cannot create the topic in the mock cluster");
    cluster
}

#[test]
fn retriable_produce_errors_end_delivered() {
    let cluster = mock_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(20_000);
    // Enough errors that librdkafka's retries (backing off up to 1 s) last
    // longer than the delivery timeout: the records fail, are spooled, and
    // replay meets the rest of the errors.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 60],
    );
    let bootstrap = cluster.bootstrap_servers();
    let config = config(dir.path(), &bootstrap, DELIVERY_TIMEOUT_MS).to_yaml();
    let mut agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&bootstrap, TOPIC);
    wait_for_log(&agent, "events spooled", Duration::from_secs(60));
    lines.append(10_000);

    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    wait_for_log(&agent, "spool replayed in full", Duration::from_secs(60));
    assert_eq!(
        logged(&agent, "kafka refused events for good"),
        0,
        "a retriable error was taken for a permanent one"
    );
    stop_cleanly(&mut agent);
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
    assert_eq!(agent.spool_usage(SINK, "dead").entries, 0);
}

/// A broker that turns slow, but keeps answering: each message waits in
/// librdkafka's queue for longer than the delivery timeout, yet something
/// is acknowledged all the time, so nothing is given up on and spooled.
/// (While librdkafka timed messages out itself, counted from when each was
/// queued, such a backlog went to the spool, and replaying it met the same
/// wait.)
#[test]
fn slow_broker_that_keeps_acknowledging_is_not_given_up_on() {
    const FIRST: u64 = 1_000;
    const SLOW: u64 = 50_000;
    let cluster = mock_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(FIRST);
    let bootstrap = cluster.bootstrap_servers();
    let config = config(dir.path(), &bootstrap, 1_000)
        .edit_sink(SINK, |k| k.librdkafka("batch.num.messages", "1000"));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&bootstrap, TOPIC);
    assert!(
        consumer
            .read_count(FIRST as usize, Duration::from_secs(60))
            .len()
            >= FIRST as usize,
        "the first lines did not arrive"
    );

    // Requests of 1,000 messages, each answered after 400 ms: a few
    // thousand messages a second, so the last of the 50,000 waits many
    // seconds, far beyond the 1 s timeout, while acknowledgements come at
    // least every 400 ms.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(400))
        .expect("cannot slow the broker down");
    lines.append(SLOW);
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    stop_cleanly(&mut agent);
    assert_eq!(
        logged_events(&agent, "events spooled"),
        0,
        "a broker that kept acknowledging was given up on: {}",
        agent.log_tail(20)
    );
    assert_eq!(report.duplicates, 0, "{report}");
}

#[test]
fn permanent_produce_error_goes_to_dead_letters_and_replays_from_there() {
    let cluster = mock_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(20_000);
    // The first produce request is refused for good.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let bootstrap = cluster.bootstrap_servers();
    let config = config(dir.path(), &bootstrap, DELIVERY_TIMEOUT_MS).to_yaml();
    let mut agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&bootstrap, TOPIC);
    wait_for_log(
        &agent,
        "kafka refused events for good",
        Duration::from_secs(60),
    );
    // Everything else keeps flowing: wait for the last line (one
    // partition, so all before it was settled by then), then stop.
    lines.append(10_000);
    let last = lines.written() - 1;
    let records = consumer.read_until(CATCH_UP, |r| seqs(r).contains(&last));
    assert!(
        seqs(records).contains(&last),
        "the last line did not arrive"
    );
    assert!(agent.is_running(), "the agent exited");
    // Issue 14, bug 9: dead letters were not counted as dropped.
    let dropped = tailrace_e2e::sockets::metric(
        agent.admin_address(),
        "tailrace_events_dropped_total{component=\"kafka\",reason=\"dead_letter\"}",
    );
    stop_cleanly(&mut agent);

    let dead = agent.spool_usage(SINK, "dead");
    assert!(dead.entries > 0, "no dead letters: {dead:?}");
    assert_eq!(
        dropped, dead.events as f64,
        "dead letters counted as dropped"
    );
    let listed = agent.spool_json(&["list", "--dead-letter"]);
    assert!(
        listed.iter().all(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.to_lowercase().contains("too large"))),
        "dead letters keep the error: {listed:?}"
    );
    let in_dead = spooled_seqs(dir.path(), "dead");
    assert_eq!(in_dead.len() as u64, dead.events, "{dead:?}");
    consumer.read_for(Duration::from_secs(1));
    let report = lines.count(consumer.records());
    println!("{report}; {} lines dead-lettered", in_dead.len());
    // Exactly the dead letters are missing: nothing else was lost, and
    // nothing refused for good was taken for delivered.
    let missing: BTreeSet<u64> = report.missing.iter().copied().collect();
    assert_eq!(missing, in_dead, "missing lines are the dead letters");
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);

    // The operator replays the dead letters once the cause is fixed (here:
    // the injected error is used up).
    let replayed = agent.spool_json(&["replay", "--dead-letter", "--timeout-secs", "60"]);
    println!("{replayed:?}");
    assert_eq!(replayed[0]["failed_entries"], 0, "{replayed:?}");
    assert_eq!(
        replayed[0]["events"].as_u64(),
        Some(dead.events),
        "{replayed:?}"
    );
    let report = read_all(&mut consumer, &lines, Duration::from_secs(60));
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(agent.spool_usage(SINK, "dead").entries, 0);
}

/// The mock cluster's broker goes down while lines are written, for longer
/// than the delivery timeout, and comes back: every line arrives and the
/// spool ends empty. Returns what the consumer read, and how many new
/// events the agent spooled to keep them behind the spool.
fn mock_broker_down_and_up(ordering: &str) -> (Vec<Record>, u64) {
    let cluster = mock_cluster();
    let dir = tempfile::tempdir().unwrap();
    let lines = SeqLines::create(dir.path().join("logs/app.log"));
    let writer = lines.spawn_writer(100, Duration::from_millis(10), MAX_WRITTEN);
    let bootstrap = cluster.bootstrap_servers();
    let config = config(dir.path(), &bootstrap, DELIVERY_TIMEOUT_MS)
        .edit_sink(SINK, |k| k.spool("ordering", ordering));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&bootstrap, TOPIC);
    assert!(
        consumer.read_count(5_000, Duration::from_secs(60)).len() >= 5_000,
        "too few lines arrived before the outage"
    );

    cluster.broker_down(1).expect("cannot take the broker down");
    wait_for_log(
        &agent,
        "the sink cannot reach its broker",
        Duration::from_secs(30),
    );
    wait_for_log(&agent, "events spooled", Duration::from_secs(60));
    cluster.broker_up(1).expect("cannot bring the broker up");
    let resumed_from = writer.written();
    arrives_from(
        &mut consumer,
        resumed_from,
        Duration::from_secs(120),
        "nothing written after the outage arrived",
    );

    let lines = writer.stop();
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    wait_for_log(&agent, "spool replayed in full", Duration::from_secs(60));
    stop_cleanly(&mut agent);
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
    let behind = logged_events(&agent, "reason=behind_spool");
    println!("{behind} new events were spooled behind older ones");
    (consumer.records().to_vec(), behind)
}

#[test]
fn mock_broker_down_beyond_delivery_timeout_then_up_loses_nothing() {
    let (records, behind) = mock_broker_down_and_up("strict");
    assert!(behind > 0, "no new event waited behind the spool");
    // Strict: no line arrives while an older one is still missing. (Before
    // the sink took back everything librdkafka held at once, lines it
    // still held overtook the spooled ones: 95,700 in a run here, and
    // later one ~100-line batch that librdkafka timed out after a newer one
    // went through.)
    let early = overtaking(&records);
    assert_eq!(
        early,
        0,
        "{early} lines overtook older spooled lines under strict ordering; runs of lines as they arrived: {}",
        runs(&records)
    );
}

#[test]
fn relaxed_ordering_loses_nothing_through_an_outage() {
    let (records, behind) = mock_broker_down_and_up("relaxed");
    // New events do not wait for the replay. (Whether one arrives before
    // an older spooled one is timing: after a fail-over, new events are
    // produced first and the replay waits for one to be acknowledged, but
    // a broker that takes longer than the delivery timeout to come back
    // sends all of them to the spool, in order.)
    println!(
        "{} lines overtook older spooled lines",
        overtaking(&records)
    );
    assert_eq!(
        behind, 0,
        "relaxed ordering spooled {behind} new events to keep them behind the spool"
    );
}

/// Starts an agent whose broker (`127.0.0.1:port`) is not there yet, and
/// stops it (SIGTERM) once it has spooled every line of `lines`. Returns
/// the stopped agent.
fn spool_while_broker_absent(
    dir: &Path,
    port: u16,
    spool: impl FnOnce(Sink) -> Sink,
    lines: &SeqLines,
) -> Agent {
    let bootstrap = format!("127.0.0.1:{port}");
    let config = config(dir, &bootstrap, DELIVERY_TIMEOUT_MS).edit_sink(SINK, spool);
    let mut agent = Agent::start(dir, &config.to_yaml());
    wait_for_log(
        &agent,
        "the sink cannot reach its broker",
        Duration::from_secs(30),
    );
    wait_all_spooled(&agent, lines);
    stop_cleanly(&mut agent);
    agent
}

/// Waits until the agent logged every line of `lines` as spooled.
fn wait_all_spooled(agent: &Agent, lines: &SeqLines) {
    let all_spooled = wait_until(Duration::from_secs(60), || {
        logged_events(agent, "events spooled") >= lines.written()
    });
    assert!(
        all_spooled,
        "the agent did not spool every line: {} of {}",
        logged_events(agent, "events spooled"),
        lines.written()
    );
}

/// [`spool_while_broker_absent`] of `n` lines written first, with the
/// default spool, in a new directory: (broker port, dir, lines, agent).
fn spooled_while_broker_absent(n: u64) -> (u16, tempfile::TempDir, SeqLines, Agent) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(n);
    let agent = spool_while_broker_absent(dir.path(), port, |k| k, &lines);
    (port, dir, lines, agent)
}

/// The broker arrives, on the port the agent was configured with.
fn broker_arrives(port: u16) -> Broker {
    let broker = Broker::start_on(port);
    broker.create_topic(TOPIC, 1);
    broker
}

#[test]
fn corrupt_spool_entry_is_set_aside_with_a_report() {
    let (port, dir, mut lines, mut agent) = spooled_while_broker_absent(30_000);
    let entries = spool_entries(dir.path(), "spool");
    assert!(
        entries.len() >= 2,
        "want several spool entries, got {}",
        entries.len()
    );

    // Flip one byte in the middle of the second entry's body, where it
    // is on disk (a segment file of data/store/bodies).
    let (bad_id, bad) = entries[1].clone();
    let lost: BTreeSet<u64> = decode_entry(&bad)
        .iter()
        .map(|p| seq_of(p).unwrap())
        .collect();
    flip_byte_of(&dir.path().join("data/store/bodies"), &bad, bad.len() / 2);
    let listed = agent.spool_json(&["list"]);
    let listed_bad = listed
        .iter()
        .find(|e| e["id"] == bad_id)
        .expect("the damaged entry is listed");
    assert!(
        listed_bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("checksum")),
        "spool list reports the damage: {listed_bad}"
    );

    let broker = broker_arrives(port);
    agent.restart();
    wait_for_log(&agent, "spool entry is damaged", Duration::from_secs(60));
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    lines.append(5_000);
    read_until_missing_at_most(&mut consumer, &lines, lost.len() as u64, CATCH_UP);
    assert!(agent.is_running(), "the damaged entry stopped the agent");
    consumer.read_for(Duration::from_secs(1));
    let report = lines.count(consumer.records());
    println!("{report}; {} lines in the damaged entry", lost.len());
    let missing: BTreeSet<u64> = report.missing.iter().copied().collect();
    assert_eq!(
        missing, lost,
        "exactly the damaged entry's lines are missing"
    );
    wait_for_log(&agent, "spool replayed in full", Duration::from_secs(60));
    stop_cleanly(&mut agent);

    let corrupt = agent.spool_usage(SINK, "corrupt");
    assert_eq!(
        corrupt.entries, 1,
        "the damaged entry is set aside: {corrupt:?}"
    );
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
    let aside = agent.spool_json(&["list", "--corrupt"]);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(aside[0]["id"], bad_id, "{aside:?}");

    // Issue 14, bug 7: replaying the corrupt tree "moved" a damaged entry
    // onto the tree it was in, which deleted it. It stays where it is.
    let replayed = agent.spool(&["replay", "--corrupt"]);
    assert_eq!(
        agent.spool_usage(SINK, "corrupt").entries,
        1,
        "a replay of the corrupt tree deleted the damaged entry: {replayed:?}"
    );
    assert!(
        String::from_utf8_lossy(&replayed.stderr).contains("left in the corrupt tree"),
        "{replayed:?}"
    );

    // The operator purges it: without --yes only says what would go.
    let dry = agent.spool(&["purge", "--corrupt"]);
    assert!(dry.status.success(), "{dry:?}");
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would purge 1 entries"),
        "{dry:?}"
    );
    assert_eq!(agent.spool_usage(SINK, "corrupt").entries, 1);
    let purged = agent.spool_json(&["purge", "--corrupt", "--yes"]);
    assert_eq!(purged[0]["purged_entries"], 1, "{purged:?}");
    assert_eq!(agent.spool_usage(SINK, "corrupt").entries, 0);
}

/// Issue 14, bug 6: a spool flush that failed after its entries were
/// written put them back to be written again, so the spool held them twice
/// and every one of them arrived twice.
#[test]
fn a_failed_spool_flush_does_not_write_its_entries_twice() {
    let (port, dir, lines, mut agent) =
        with_store_faults(&[("TAILRACE_FAULT_SPOOL_FLUSH_FAILURES", "3")]);
    wait_for_log(&agent, "cannot flush the spool", Duration::from_secs(60));
    wait_all_spooled(&agent, &lines);
    stop_cleanly(&mut agent);

    let spooled: Vec<u64> = spool_entries(dir.path(), "spool")
        .iter()
        .flat_map(|(_, e)| decode_entry(e))
        .map(|p| seq_of(&p).unwrap())
        .collect();
    let distinct: BTreeSet<u64> = spooled.iter().copied().collect();
    assert_eq!(
        spooled.len() - distinct.len(),
        0,
        "records spooled twice ({} records, {} distinct)",
        spooled.len(),
        distinct.len()
    );
    assert_eq!(distinct.len() as u64, lines.written());

    agent.clear_env();
    let broker = broker_arrives(port);
    agent.restart();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let report = read_all_and_the_duplicates_after(&mut consumer, &lines);
    println!("{report}");
    assert!(report.is_complete() && report.duplicates == 0, "{report}");
    stop_cleanly(&mut agent);
}

/// `tailrace_file_lag_bytes` of source `app`'s file, if exported yet.
fn file_lag(agent: &Agent) -> Option<u64> {
    let body = tailrace_e2e::http::get(agent.admin_address(), "/metrics")
        .ok()?
        .body;
    body.lines()
        .filter(|l| l.starts_with("tailrace_file_lag_bytes{") && l.contains("source=\"app\""))
        .find_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// An agent started with the store faults `env` over 30,000 lines, its
/// broker absent (to come on the port returned).
fn with_store_faults(env: &[(&str, &str)]) -> (u16, tempfile::TempDir, SeqLines, Agent) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(30_000);
    let bootstrap = format!("127.0.0.1:{port}");
    let agent = Agent::start_with_env(
        dir.path(),
        &config(dir.path(), &bootstrap, DELIVERY_TIMEOUT_MS).to_yaml(),
        env,
    );
    (port, dir, lines, agent)
}

/// Issue 14, bug 5: the file source saved its acknowledged positions only
/// between read rounds, and a source with a long backlog sat in its send
/// on a full channel the whole time, so a kill -9 repeated everything the
/// spool had acknowledged (111,611 of 200,000 lines, once). The positions
/// are saved while it waits.
#[test]
fn positions_are_saved_while_the_source_waits_on_a_full_channel() {
    const N: u64 = 200_000;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(N);
    let bootstrap = format!("127.0.0.1:{port}");
    // A small channel that the backlog keeps full, and a spool that fills
    // and then blocks: acknowledgements come, then stop.
    let small = config(dir.path(), &bootstrap, DELIVERY_TIMEOUT_MS)
        .edit_sink(SINK, |k| {
            k.spool("max_bytes", 262_144).spool("when_full", "block")
        })
        .edit_channel(MAIN, |c| c.capacity_events(2_000));
    let mut agent = Agent::start(dir.path(), &small.to_yaml());
    wait_for_log(&agent, "events spooled", Duration::from_secs(60));
    let file_len = N * LINE_LEN as u64;
    let spooled = || {
        tailrace_e2e::sockets::metric(
            agent.admin_address(),
            "tailrace_spool_events{sink=\"kafka\"}",
        ) as u64
    };
    // The lag is set where the positions are saved. Everything acknowledged
    // went to the spool (there is no broker), and the source never leaves
    // its read round (the backlog keeps the channel full): the saved
    // position reaches what the spool holds only if it is saved meanwhile.
    // (A lag of 0 is a gauge never set: with no broker and a full spool,
    // not every line can have been acknowledged. Positions complete per
    // batch, and the spool takes part of a batch when it fills up.)
    const BATCH_SLACK: u64 = 5_000;
    let saved_while_blocked = wait_until(Duration::from_secs(60), || {
        let Some(lag) = file_lag(&agent).filter(|&l| l > 0 && l < file_len) else {
            return false;
        };
        let committed_lines = (file_len - lag) / LINE_LEN as u64;
        let n = spooled();
        n >= 20_000 && committed_lines + BATCH_SLACK >= n
    });
    assert!(
        saved_while_blocked,
        "the saved position did not reach the spooled lines while the source waited: lag {:?} of {file_len} bytes, {} events spooled; {}",
        file_lag(&agent),
        spooled(),
        agent.log_tail(20)
    );
    let committed = file_len - file_lag(&agent).unwrap();
    agent.kill();
    let saved = saved_lines(&agent);
    assert!(
        saved * LINE_LEN as u64 >= committed,
        "the store holds line {saved}, the source had saved up to byte {committed}"
    );
    // What a restart reads again: spooled lines at or after the position.
    let in_spool = spooled_seqs(dir.path(), "spool");
    let repeatable = in_spool.iter().filter(|&&s| s >= saved).count() as u64;

    let broker = broker_arrives(port);
    agent.restart();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let report = read_all_and_the_duplicates_after(&mut consumer, &lines);
    println!(
        "{report}; saved at line {saved}, {} lines spooled, {repeatable} of them at or after it",
        in_spool.len()
    );
    assert!(report.is_complete(), "{report}");
    assert!(
        report.duplicates <= repeatable,
        "more duplicates than spooled lines past the saved position: {report}, {repeatable}"
    );
    stop_cleanly(&mut agent);
}

#[test]
fn sigterm_spools_what_is_unacknowledged_within_the_grace_period() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(20_000);
    // A delivery timeout far beyond the grace period: at SIGTERM the
    // records are still in librdkafka, neither delivered nor failed.
    let bootstrap = format!("127.0.0.1:{port}");
    let config = config(dir.path(), &bootstrap, PATIENT_DELIVERY_TIMEOUT_MS)
        .shutdown_grace_ms(2_000)
        .summary_interval_ms(200);
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    wait_for_log(
        &agent,
        "the sink cannot reach its broker",
        Duration::from_secs(30),
    );
    let read_all_lines = format!("total={}", lines.written());
    let read = wait_until(Duration::from_secs(30), || {
        agent
            .log()
            .lines()
            .any(|l| l.contains("source read") && l.contains(&read_all_lines))
    });
    assert!(read, "the source did not read every line");
    assert_eq!(
        logged(&agent, "events spooled"),
        0,
        "spooled before SIGTERM"
    );

    let stopping = Instant::now();
    stop_cleanly(&mut agent);
    println!("stopped in {:?}", stopping.elapsed());
    assert!(logged(&agent, "grace period over with events unacknowledged") > 0);
    assert_eq!(logged_events(&agent, "events spooled"), lines.written());
    let saved = saved_lines(&agent);
    assert_eq!(
        saved,
        lines.written(),
        "the position is saved past the spooled lines"
    );
    assert_covered(saved, &BTreeSet::new(), &spooled_seqs(dir.path(), "spool"));

    // They arrive after a restart, once each.
    let broker = broker_arrives(port);
    agent.restart();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.duplicates, 0, "{report}");
    wait_for_log(&agent, "spool replayed in full", Duration::from_secs(60));
    stop_cleanly(&mut agent);
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
}

#[test]
fn spool_replay_while_the_agent_is_stopped() {
    let (port, dir, mut lines, mut agent) = spooled_while_broker_absent(20_000);

    // A clean stop saved the position past every spooled line.
    let saved = saved_lines(&agent);
    let in_spool = spooled_seqs(dir.path(), "spool");
    assert_covered(saved, &BTreeSet::new(), &in_spool);
    let held = agent.spool_usage(SINK, "spool");
    assert_eq!(held.events, in_spool.len() as u64, "{held:?}");
    assert!(saved > 0, "nothing was spooled");

    // With the broker unreachable, offline replay fails and keeps the spool.
    let output = agent.spool(&["replay", "--timeout-secs", "5"]);
    assert!(
        !output.status.success(),
        "replay into a stopped broker succeeded"
    );
    assert_eq!(
        agent.spool_usage(SINK, "spool"),
        held,
        "a failed replay changed the spool"
    );

    let broker = broker_arrives(port);
    let replayed = agent.spool_json(&["replay", "--timeout-secs", "60"]);
    println!("{replayed:?}");
    assert_eq!(
        replayed[0]["replayed_entries"].as_u64(),
        Some(held.entries),
        "{replayed:?}"
    );
    assert_eq!(replayed[0]["failed_entries"], 0, "{replayed:?}");
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let records = consumer.read_until(Duration::from_secs(60), |r| {
        Report::new(saved, r).missing.is_empty()
    });
    let report = Report::new(saved, records);
    assert!(report.missing.is_empty(), "replayed lines lost: {report}");

    // The agent goes on after the saved position: what was replayed
    // offline is not sent again.
    lines.append(5_000);
    agent.restart();
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    let again: Vec<u64> = report
        .duplicated
        .iter()
        .copied()
        .filter(|&s| s < saved)
        .collect();
    assert!(
        again.is_empty(),
        "replayed lines were sent again: {again:?}"
    );
    stop_cleanly(&mut agent);
}

#[test]
fn full_spool_blocks_the_source_and_loses_nothing() {
    const MAX_BYTES: u64 = 200_000;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(100_000);
    let bootstrap = format!("127.0.0.1:{port}");
    let config = config(dir.path(), &bootstrap, DELIVERY_TIMEOUT_MS).edit_sink(SINK, |k| {
        k.spool("max_bytes", MAX_BYTES).spool("when_full", "block")
    });
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    wait_for_log(
        &agent,
        "spool full; holding the sources back",
        Duration::from_secs(60),
    );
    stop_cleanly(&mut agent);
    let held = agent.spool_usage(SINK, "spool");
    assert!(
        held.bytes <= MAX_BYTES,
        "the spool holds {} bytes, more than max_bytes {MAX_BYTES}",
        held.bytes
    );
    let saved = saved_lines(&agent);
    assert!(
        saved < lines.written(),
        "the source was not held back: saved at line {saved} of {}",
        lines.written()
    );
    assert_covered(saved, &BTreeSet::new(), &spooled_seqs(dir.path(), "spool"));

    let broker = broker_arrives(port);
    agent.restart();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(logged(&agent, "dropped its oldest entry"), 0);
    stop_cleanly(&mut agent);
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
}

#[test]
fn full_spool_drops_oldest_and_counts_it() {
    const MAX_BYTES: u64 = 200_000;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(100_000);
    let spool = |k: Sink| {
        k.spool("max_bytes", MAX_BYTES)
            .spool("when_full", "drop_oldest")
    };
    let mut agent = spool_while_broker_absent(dir.path(), port, spool, &lines);
    let dropped = logged_events(&agent, "dropped its oldest entry");
    assert!(dropped > 0, "nothing was dropped");
    let held = agent.spool_usage(SINK, "spool");
    assert!(
        held.bytes <= MAX_BYTES,
        "{held:?} exceeds max_bytes {MAX_BYTES}"
    );
    // The source went on: all was read, spooled or dropped.
    assert_eq!(saved_lines(&agent), lines.written());
    let in_spool = spooled_seqs(dir.path(), "spool");
    assert_eq!(in_spool.len() as u64 + dropped, lines.written());

    let broker = broker_arrives(port);
    agent.restart();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_until(CATCH_UP, |r| seqs(r).len() >= in_spool.len());
    consumer.read_for(Duration::from_secs(1));
    let report = lines.count(consumer.records());
    println!("{report}; {dropped} dropped");
    // Exactly what was logged as dropped is missing, and it is the oldest.
    assert_eq!(report.missing.len() as u64, dropped, "{report}");
    let newest_missing = *report.missing.last().unwrap();
    assert!(
        in_spool.iter().all(|&s| s > newest_missing),
        "a newer entry was dropped before an older one"
    );
    stop_cleanly(&mut agent);
}

/// Issue 13's event id and issue 14's bug 4: with `headers: true` and
/// `event_id: true`, records that went through the spool arrived without
/// their headers (the entry format could not keep them). Now every record
/// arrives with them, whether it was delivered at once, spooled during an
/// outage and replayed, or read again after a SIGKILL; and every copy of a
/// line carries the same `tailrace.id`, while different lines never share
/// one.
#[test]
fn headers_and_event_ids_survive_the_spool_and_a_sigkill() {
    let cluster = mock_cluster();
    let dir = tempfile::tempdir().unwrap();
    let lines = SeqLines::create(dir.path().join("logs/app.log"));
    let writer = lines.spawn_writer(100, Duration::from_millis(10), MAX_WRITTEN);
    let bootstrap = cluster.bootstrap_servers();
    let config = config(dir.path(), &bootstrap, DELIVERY_TIMEOUT_MS)
        .edit_sink(SINK, |k| k.set("headers", true).set("event_id", true));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&bootstrap, TOPIC);
    assert!(
        consumer.read_count(5_000, Duration::from_secs(60)).len() >= 5_000,
        "too few lines arrived before the outage"
    );
    cluster.broker_down(1).expect("cannot take the broker down");
    wait_for_log(&agent, "events spooled", Duration::from_secs(60));
    cluster.broker_up(1).expect("cannot bring the broker up");
    // In strict order new lines wait behind the spool: it empties once
    // the writer stops.
    let lines = writer.stop();
    wait_for_log(&agent, "spool replayed in full", Duration::from_secs(120));
    // A crash while lines are written repeats what was read after the
    // last saved position.
    let before = lines.written();
    let writer = lines.spawn_writer(100, Duration::from_millis(10), MAX_WRITTEN);
    arrives_from(
        &mut consumer,
        before + 5_000,
        Duration::from_secs(60),
        "nothing new arrived",
    );
    agent.kill();
    agent.restart();
    let restarted_at = writer.written();
    arrives_from(
        &mut consumer,
        restarted_at,
        Duration::from_secs(60),
        "nothing arrived after the restart",
    );
    let lines = writer.stop();
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert!(
        report.duplicates > 0,
        "the SIGKILL repeated nothing, so ids of repeats went unchecked: {report}"
    );

    let mut id_of: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    let mut seq_of_id: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
    for r in consumer.records() {
        let seq = seq_of(&r.payload).expect("numbered lines");
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| {
                    panic!("line {seq} arrived without header {name}: {:?}", r.headers)
                })
        };
        for name in ["source", "host", "path", "offset"] {
            header(name);
        }
        assert_eq!(
            header("offset"),
            SeqLines::offset_of(seq).to_string().into_bytes()
        );
        let id = header("tailrace.id");
        if let Some(first) = id_of.insert(seq, id.clone()) {
            assert_eq!(first, id, "line {seq} was sent again with another id");
        }
        if let Some(other) = seq_of_id.insert(id.clone(), seq) {
            assert_eq!(other, seq, "lines {other} and {seq} share an id");
        }
    }
    assert!(
        logged_events(&agent, "events spooled") > 0,
        "nothing went through the spool"
    );
}

/// Issue 14, bug 3: a record spooled while Kafka was unreachable that Kafka
/// (here librdkafka, by its default `message.max.bytes`) then refuses for
/// good was retried forever, and the whole entry with it, so its other
/// records were sent again, as duplicates, every second. Now the refused
/// record goes to the dead-letter tree, the entry is rewritten with what
/// is left, and every other line arrives once.
/// Spools 2,000 lines with a 1.5 MB line among them (with a
/// `message.max.bytes` that lets it through) while the broker on `port` is
/// absent, and stops. Returns the agent, the line file, and the config
/// with librdkafka's default `message.max.bytes`, which the big line is
/// over.
fn spool_a_line_too_big_for_kafka(dir: &Path, port: u16) -> (Agent, SeqLines, Config) {
    let mut lines = SeqLines::create(dir.join("logs/app.log"));
    lines.append(1_000);
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(lines.path())
            .unwrap();
        let mut big = b"big ".to_vec();
        big.resize(1_500_000, b'x');
        big.push(b'\n');
        f.write_all(&big).unwrap();
    }
    lines.append(1_000);
    let bootstrap = format!("127.0.0.1:{port}");
    // The second run's config: librdkafka's default message.max.bytes, and
    // the max_line_bytes that fits it (a larger one is refused, issue 16).
    let base = config(dir, &bootstrap, DELIVERY_TIMEOUT_MS);
    let large = base
        .clone()
        .edit_sink(SINK, |k| k.librdkafka("message.max.bytes", "5000000"))
        .edit_source("app", |s| s.max_line_bytes(2_000_000));
    let mut agent = Agent::start(dir, &large.to_yaml());
    let all_spooled = wait_until(Duration::from_secs(60), || {
        logged_events(&agent, "events spooled") > lines.written()
    });
    assert!(
        all_spooled,
        "not everything was spooled:\n{}",
        agent.log_tail(20)
    );
    stop_cleanly(&mut agent);
    let base = base.admin_address(agent.admin_address());
    (agent, lines, base)
}

/// Issue 14's one replayer: `tailrace spool replay` (the agent stopped)
/// replays record by record as the running sink does. It used to keep the
/// whole entry when one record failed, so each later replay sent the
/// entry's other records again.
#[test]
fn an_offline_replay_dead_letters_what_kafka_refuses_and_sends_the_rest_once() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (agent, lines, base) = spool_a_line_too_big_for_kafka(dir.path(), port);
    let _broker = broker_arrives(port);
    std::fs::write(agent.config_path(), base.to_yaml()).unwrap();
    let first = agent.spool_json(&["replay", "--timeout-secs", "60"]);
    println!("{first:?}");
    assert_eq!(first[0]["dead_lettered_events"], 1, "{first:?}");
    assert_eq!(first[0]["failed_entries"], 0, "{first:?}");
    // Again: nothing is left to send.
    let second = agent.spool_json(&["replay", "--timeout-secs", "60"]);
    assert_eq!(second[0]["events"], 0, "{second:?}");
    let mut consumer = Consumer::new(&format!("127.0.0.1:{port}"), TOPIC);
    let report = read_all_and_the_duplicates_after(&mut consumer, &lines);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.duplicates, 0, "lines sent twice: {report}");
    assert_eq!(agent.spool_usage(SINK, "dead").events, 1);
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
}

#[test]
fn a_spooled_record_kafka_refuses_is_dead_lettered_and_the_rest_arrive_once() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, lines, base) = spool_a_line_too_big_for_kafka(dir.path(), port);
    // The broker arrives; the agent starts again with librdkafka's default
    // message.max.bytes, which the big line is over.
    let _broker = broker_arrives(port);
    std::fs::write(agent.config_path(), base.to_yaml()).unwrap();
    agent.restart();
    wait_for_log(
        &agent,
        "kafka refused events for good",
        Duration::from_secs(60),
    );
    wait_for_log(&agent, "spool replayed in full", Duration::from_secs(60));
    let mut consumer = Consumer::new(&format!("127.0.0.1:{port}"), TOPIC);
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(
        report.duplicates, 0,
        "the entry's other records were sent again: {report}"
    );
    stop_cleanly(&mut agent);
    let dead = agent.spool_usage(SINK, "dead");
    assert_eq!(
        dead.events, 1,
        "the big line is the one dead letter: {dead:?}"
    );
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
}

// ---- a damaged store (issue 16) ----

/// Overwrites `len` bytes in the middle of `file`.
fn overwrite_middle(file: &Path, len: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len().saturating_sub(len) / 2;
    let end = (at + len).min(bytes.len());
    bytes[at..end].fill(0xAB);
    std::fs::write(file, bytes).unwrap();
}

/// The files of the agent's store whose name starts with `prefix`.
fn store_files(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("data/store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

/// `tailrace store ACTION --config CONFIG`: its exit code and JSON lines.
fn store_command(agent: &Agent, action: &str) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let output = tailrace_e2e::run_tailrace([
        std::ffi::OsStr::new("store"),
        std::ffi::OsStr::new(action),
        std::ffi::OsStr::new("--config"),
        agent.config_path().as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (
        output.status.code(),
        tailrace_e2e::json_lines(&output.stdout),
        stderr,
    )
}

/// The line of `tree` in the output of `tailrace store`.
fn tree_line<'a>(lines: &'a [serde_json::Value], tree: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["tree"] == tree)
        .unwrap_or_else(|| panic!("no line for {tree} in {lines:?}"))
}

/// Starts the agent on a damaged store: it must exit 65 at once, naming
/// the commands that help.
fn assert_run_refuses_damaged_store(agent: &mut Agent) {
    agent.restart();
    let status = agent.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(65),
        "exit status on a damaged store: {status}\n{}",
        agent.log_tail(20)
    );
    let log = agent.log_tail(5);
    assert!(
        log.contains("is damaged")
            && log.contains("tailrace store check --config")
            && log.contains("tailrace store repair --config"),
        "the message names the way out:\n{log}"
    );
}

#[test]
fn a_damaged_store_at_start_exits_65_naming_store_check_and_repair() {
    let (_port, dir, _lines, mut agent) = spooled_while_broker_absent(1_000);
    // sled's `conf` file holds its storage parameters; one it cannot parse
    // fails every open.
    let conf = dir.path().join("data/store/conf");
    overwrite_middle(&conf, 8);
    assert_run_refuses_damaged_store(&mut agent);
    // The store is left as it was for `store repair`.
    assert!(conf.is_file());
    let (code, lines_out, stderr) = store_command(&agent, "check");
    assert_eq!(
        code,
        Some(65),
        "store check on a damaged store: {lines_out:?} {stderr}"
    );
}

/// Issue 16: a store damaged on purpose (bytes overwritten in sled's
/// snapshot, so that it no longer opens) is reported by `store check`;
/// `store repair` recovers its checkpoints and spool entries into a fresh
/// store, and the agent delivers the recovered entries from it: every
/// line arrives at the consumer.
#[test]
fn store_repair_recovers_a_damaged_store_and_the_agent_delivers_its_spool() {
    let (port, dir, mut lines, mut agent) = spooled_while_broker_absent(30_000);
    let spooled = spooled_seqs(dir.path(), "spool");
    assert_eq!(
        spooled.len() as u64,
        lines.written(),
        "every line is spooled"
    );
    let entries = spool_entries(dir.path(), "spool").len();
    let checkpoints = agent.checkpoints();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    let snapshots = store_files(dir.path(), "snap.");
    assert!(!snapshots.is_empty(), "sled wrote no snapshot to damage");
    for snap in &snapshots {
        overwrite_middle(snap, 64);
    }

    assert_run_refuses_damaged_store(&mut agent);
    let (code, checked, stderr) = store_command(&agent, "check");
    assert_eq!(code, Some(65), "store check: {checked:?} {stderr}");
    let summary = checked.last().unwrap();
    assert_eq!(summary["damaged"], true, "{summary}");
    assert_eq!(
        summary["open_errors"].as_array().map(Vec::len),
        Some(2),
        "{summary}"
    );
    println!("store check: {checked:?}");

    let (code, repaired, stderr) = store_command(&agent, "repair");
    assert_eq!(code, Some(0), "store repair: {repaired:?} {stderr}");
    println!("store repair: {repaired:?}");
    assert_eq!(tree_line(&repaired, "spool/kafka")["recovered"], entries);
    assert_eq!(
        tree_line(&repaired, "spool/kafka")["events"],
        lines.written()
    );
    assert_eq!(tree_line(&repaired, "checkpoints/app")["recovered"], 1);
    let aside = repaired.last().unwrap()["set_aside"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        Path::new(&aside).join("db").is_file() && aside.contains("store.damaged-"),
        "the damaged store is set aside: {aside}"
    );
    let (code, rechecked, _) = store_command(&agent, "check");
    assert_eq!(
        code,
        Some(0),
        "the repaired store checks clean: {rechecked:?}"
    );
    assert_eq!(
        agent.checkpoints(),
        checkpoints,
        "the saved position survives"
    );
    assert_eq!(
        spooled_seqs(dir.path(), "spool"),
        spooled,
        "the spooled lines survive"
    );

    let broker = broker_arrives(port);
    agent.restart();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    lines.append(2_000);
    let report = read_all(&mut consumer, &lines, CATCH_UP);
    assert!(report.missing.is_empty(), "{report}");
    // The file is read from the saved position: only the spool brings
    // the first 30,000 lines.
    assert_eq!(report.duplicates, 0, "{report}");
    stop_cleanly(&mut agent);
    assert_eq!(agent.spool_usage(SINK, "spool").entries, 0);
}

/// Issue 16: with the defaults, a 1,000,100-byte line (over librdkafka's
/// default message.max.bytes of 1,000,000, under the old default
/// max_line_bytes of 1 MiB) was acknowledged and put in the dead-letter
/// tree instead of Kafka. Now max_line_bytes defaults to what the sink can
/// deliver: the line is split, and every byte of it arrives.
#[test]
fn a_line_over_message_max_bytes_is_split_and_delivered_not_dead_lettered() {
    const BIG: usize = 1_000_100;
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(500);
    let mut big = b"big ".to_vec();
    big.resize(BIG, b'x');
    big.push(b'\n');
    std::fs::write(dir.path().join("logs/big.log"), &big).unwrap();
    lines.append(500);
    let mut agent = Agent::start(
        dir.path(),
        &config(dir.path(), &broker.bootstrap(), PATIENT_DELIVERY_TIMEOUT_MS).to_yaml(),
    );
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let pieces_bytes = |records: &[Record]| -> usize {
        records
            .iter()
            .filter(|r| seq_of(&r.payload).is_none())
            .map(|r| r.payload.len())
            .sum()
    };
    consumer.read_until(CATCH_UP, |records| {
        pieces_bytes(records) >= BIG && lines.count(records).missing.is_empty()
    });
    let records = consumer.records();
    let pieces: Vec<usize> = records
        .iter()
        .filter(|r| seq_of(&r.payload).is_none())
        .map(|r| r.payload.len())
        .collect();
    assert_eq!(pieces.iter().sum::<usize>(), BIG, "pieces {pieces:?}");
    assert!(pieces.len() >= 2, "the line was split: {pieces:?}");
    let joined: Vec<u8> = records
        .iter()
        .filter(|r| seq_of(&r.payload).is_none())
        .flat_map(|r| r.payload.iter().copied())
        .collect();
    assert_eq!(joined, big[..BIG], "the pieces make the line");
    let report = Report::new(
        lines.written(),
        records
            .iter()
            .filter(|r| seq_of(&r.payload).is_some())
            .map(|r| &r.payload),
    );
    assert!(report.is_complete(), "{report}");
    stop_cleanly(&mut agent);
    assert_eq!(
        agent.spool_usage(SINK, "dead").entries,
        0,
        "nothing dead-lettered"
    );
}

/// A metric of the running agent, 0 when not exported yet.
fn metric(agent: &Agent, name: &str) -> u64 {
    tailrace_e2e::http::get(agent.admin_address(), "/metrics")
        .ok()
        .and_then(|r| tailrace_e2e::http::sample(&r.body, name))
        .unwrap_or(0.0) as u64
}

/// `/ready`'s status and body.
fn ready(agent: &Agent) -> (u16, String) {
    tailrace_e2e::http::get(agent.admin_address(), "/ready")
        .map(|r| (r.status, r.body))
        .unwrap_or((0, String::new()))
}

/// Once the backlog has arrived, the sink delivers nothing more: the spool
/// is not replayed again and again. Returns the delivered count.
fn assert_delivered_stays_flat(agent: &Agent, consumer: &mut Consumer) -> u64 {
    let delivered = "tailrace_sink_events_delivered_total{sink=\"kafka\"}";
    let before = metric(agent, delivered);
    let records = consumer.records().len();
    consumer.read_for(Duration::from_secs(3));
    assert_eq!(
        (metric(agent, delivered), consumer.records().len()),
        (before, records),
        "the sink kept delivering after the backlog was gone"
    );
    before
}

/// The broker arrives: every line reaches the consumer, duplicates at
/// most [`ENTRY_RECORDS`], `/ready` turns 200, and once the backlog is
/// gone the sink delivers nothing more. Then a clean stop.
fn the_broker_returns_and_everything_arrives_once(agent: &mut Agent, port: u16, lines: &SeqLines) {
    let broker = broker_arrives(port);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let report = read_all(&mut consumer, lines, CATCH_UP);
    assert!(report.is_complete(), "{report}");
    assert!(report.duplicates <= ENTRY_RECORDS, "{report}");
    assert!(
        wait_until(Duration::from_secs(60), || ready(agent).0 == 200),
        "{:?}",
        ready(agent)
    );
    assert_delivered_stays_flat(agent, &mut consumer);
    stop_cleanly(agent);
}

/// One spool entry's worth of records (the sink's ENTRY_RECORDS): what a
/// store reopened after a failure may hold twice, at most.
const ENTRY_RECORDS: u64 = 10_000;

/// Issue 16: with free space on data_dir below `min_free_bytes`, the
/// spool takes no new entry (the source waits), `/ready` says why, and
/// once space is back and the broker returns every line arrives, with no
/// replay storm.
#[test]
fn disk_below_min_free_bytes_stops_the_spool_and_everything_arrives_once_space_is_back() {
    const MIN_FREE: u64 = 8 * 1024 * 1024;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tmpfs = Tmpfs::mount(&data, "24m");
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(20_000);
    let bootstrap = format!("127.0.0.1:{port}");
    let yaml = config(dir.path(), &bootstrap, DELIVERY_TIMEOUT_MS).min_free_bytes(MIN_FREE);
    let mut agent = Agent::start(dir.path(), &yaml.to_yaml());
    // The broker is away: the first lines go to the spool.
    let spooled = wait_until(Duration::from_secs(60), || {
        logged_events(&agent, "events spooled") >= lines.written()
    });
    assert!(spooled, "nothing spooled\n{}", agent.log_tail(30));
    assert!(
        !ready(&agent).1.contains("\"store\""),
        "{:?}",
        ready(&agent)
    );

    // Something else fills the disk to below min_free_bytes.
    let filler = data.join("filler");
    let fill = tmpfs.free() - MIN_FREE / 2;
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    wait_for_log(
        &agent,
        "data_dir is low on free space",
        Duration::from_secs(10),
    );
    lines.append(20_000);
    wait_for_log(
        &agent,
        "the store takes no new spool entries",
        Duration::from_secs(60),
    );
    let (status, body) = ready(&agent);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("store") && body.contains("below min_free_bytes"),
        "{body}"
    );
    let spool_events = "tailrace_spool_events{sink=\"kafka\"}";
    let held = metric(&agent, spool_events);
    assert_eq!(
        held, 20_000,
        "the spool holds the lines written before the disk filled"
    );
    // Logged again once per interval with a count; meanwhile the spool
    // has not grown.
    wait_for_log(
        &agent,
        "the store still refuses writes",
        Duration::from_secs(30),
    );
    assert_eq!(
        metric(&agent, spool_events),
        held,
        "the spool grew below min_free_bytes"
    );
    assert!(tmpfs.free() > 0, "the disk itself filled up");

    // Space comes back, then the broker.
    std::fs::remove_file(&filler).unwrap();
    wait_for_log(
        &agent,
        "the store takes writes again",
        Duration::from_secs(10),
    );
    the_broker_returns_and_everything_arrives_once(&mut agent, port, &lines);
}

/// Issue 16: a store write that fails (sled then fails every later one
/// until a reopen) is reopened with backoff: `/ready` says why meanwhile,
/// the spool and the positions are written again afterwards, nothing is
/// lost and the spool is not replayed over and over.
#[test]
fn a_failed_store_write_is_reopened_and_positions_and_spool_recover() {
    let (port, _dir, lines, mut agent) = with_store_faults(&[
        // The first spool flush, after its entries were written: however
        // many entries the spool cut the events into.
        ("TAILRACE_FAULT_STORE_FAILURE_AT_SPOOL_FLUSH_AFTER", "0"),
        ("TAILRACE_FAULT_STORE_REOPEN_FAILURES", "4"),
    ]);
    wait_for_log(&agent, "a store write failed", Duration::from_secs(60));
    let not_ready = wait_until(Duration::from_secs(20), || {
        let (status, body) = ready(&agent);
        status == 503 && body.contains("failed a write")
    });
    assert!(not_ready, "{:?}", ready(&agent));
    wait_for_log(&agent, "the store was reopened", Duration::from_secs(60));
    wait_for_log(
        &agent,
        "the store takes writes again",
        Duration::from_secs(10),
    );
    let all_spooled = wait_until(Duration::from_secs(60), || {
        logged_events(&agent, "events spooled") >= lines.written()
    });
    assert!(all_spooled, "{}", agent.log_tail(40));
    // The failure met the spool's flush after its entries were written.
    assert!(
        logged(&agent, "cannot flush the spool") >= 1,
        "{}",
        agent.log_tail(40)
    );
    // At most one log line per kind of store error per 10 s.
    assert!(
        logged(&agent, "cannot write the spool") <= 2,
        "{}",
        agent.log_tail(40)
    );

    the_broker_returns_and_everything_arrives_once(&mut agent, port, &lines);
    // The positions were saved again after the reopen.
    assert_eq!(saved_lines(&agent), lines.written());
    assert_eq!(agent.spool_usage(SINK, "spool").events, 0);
}
