//! The disk channel end to end: a tcp sender writes sequence-numbered
//! lines while Kafka is absent, the channel holds them, the agent is
//! killed with SIGKILL, the broker starts, the agent starts again, and a
//! real consumer counts what arrived. The same scene with the memory
//! channel loses the lines, which shows that the channel is what keeps
//! them.
//!
//! One copy, not two: with a delivery timeout short enough that the sink
//! gives up on what it sent during the outage, what it gave up on stays in
//! the channel's log and its sled spool stays empty.
//!
//! `TAILRACE_DISKCHAN_LINES` sets the number of lines (50,000 by default,
//! the scene).

use std::io::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use tailrace_e2e::config::{Channel, Sink, Source, MAIN};
use tailrace_e2e::http::sample;
use tailrace_e2e::sockets::metric;
use tailrace_e2e::{
    free_port, run_tailrace, wait_until, Agent, Broker, Config, Consumer, Report, SeqLines,
};

const TOPIC: &str = "logs";

fn lines() -> u64 {
    tailrace_e2e::size_knob("TAILRACE_DISKCHAN_LINES", 50_000)
}

fn send(port: u16, seqs: std::ops::Range<u64>) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut text = Vec::new();
    for seq in seqs {
        text.extend_from_slice(&SeqLines::line(seq));
        text.push(b'\n');
    }
    c.write_all(&text).unwrap();
}

/// What happened in the scene: the consumer's report over `n` lines (the
/// marker, line `n`, sent after the restart, is counted as malformed), and
/// what `tailrace channel stats` printed while the agent was down.
struct Scene {
    report: Report,
    stats: String,
    /// `tailrace_channel_corrupt_batches_total{reason="checksum"}` after
    /// the restart.
    checksum_errors: f64,
    /// `tailrace_channel_capacity_events` and `_bytes` of `main` while it
    /// held the lines (None: no such series).
    capacity: (Option<f64>, Option<f64>),
    /// A disk channel: the summary log said the channel holds all `n`.
    summary_held: bool,
    /// `tailrace_sink_spool_events` and the sink's failed deliveries
    /// (`tailrace_sink_events_failed_total`, all reasons) once the channel
    /// held the lines, before the interruption.
    spooled_while_held: f64,
    failed_while_held: f64,
    /// The sink's failed deliveries once every line arrived: after a
    /// SIGKILL, those of the restarted agent only.
    failed_at_end: f64,
}

/// `n` lines over tcp into channel `main` (`channel` is its YAML body)
/// while Kafka is absent; once the channel holds them (`held` reads
/// /metrics), SIGKILL; then the broker, the agent again, and a marker line
/// sent after the restart: the consumer reads until the marker arrived.
/// What interrupts the agent once the channel holds the lines.
enum Break<'a> {
    /// SIGKILL; the function gets the data_dir while the agent is down;
    /// then the agent starts again.
    Kill(&'a dyn Fn(&Path)),
    /// A SIGHUP that moves the tcp source to another port (so the group
    /// with the channel is stopped and built again).
    Reload,
}

/// The disk channel the tests use, `fsync: batch` (the default).
fn disk() -> Channel {
    Channel::disk(64 << 20)
}

/// The channel holds all `n` lines.
fn disk_holds(n: u64) -> impl Fn(&str) -> bool {
    move |admin| metric(admin, "tailrace_channel_events{channel=\"main\"}") >= n as f64
}

/// The kafka sink of the scenes. With `gives_up_after_ms`, the delivery
/// timeout and the wait for room in librdkafka's queue; without, nothing
/// is given up on while the broker is absent: what the agent read stays
/// in the channel (and librdkafka's queue).
fn kafka(bootstrap: &str, gives_up_after_ms: Option<u64>) -> Sink {
    let ms = gives_up_after_ms.unwrap_or(600_000);
    Sink::kafka(bootstrap, TOPIC)
        .delivery_timeout_ms(ms)
        .spool("queue_full_timeout_ms", ms)
}

/// The scene with [`disk`], interrupted once the channel holds all `n`
/// lines.
fn disk_scene(n: u64, interruption: Break) -> Scene {
    interrupted_while_kafka_is_absent(disk(), None, n, disk_holds(n), interruption)
}

fn interrupted_while_kafka_is_absent(
    channel: Channel,
    gives_up_after_ms: Option<u64>,
    n: u64,
    held: impl Fn(&str) -> bool,
    interruption: Break,
) -> Scene {
    let port = free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let tcp = free_port();
    let is_disk = channel.to_value()["type"] == "disk";
    let config = Config::new(dir.path().join("data"))
        // A reload waits this long for the absent broker.
        .shutdown_grace_ms(2_000)
        .source("net", Source::tcp(&format!("127.0.0.1:{tcp}")))
        .channel(MAIN, channel)
        .sink("kafka", kafka(&bootstrap, gives_up_after_ms));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    assert!(wait_until(Duration::from_secs(20), || TcpStream::connect(
        ("127.0.0.1", tcp)
    )
    .is_ok()));
    send(tcp, 0..n);
    assert!(
        wait_until(Duration::from_secs(60), || held(&admin)),
        "the channel did not take the {n} lines:\n{}",
        agent.log_tail(20)
    );
    let body = tailrace_e2e::http::get(&admin, "/metrics").unwrap().body;
    let capacity = (
        sample(&body, "tailrace_channel_capacity_events{channel=\"main\"}"),
        sample(&body, "tailrace_channel_capacity_bytes{channel=\"main\"}"),
    );
    let spooled_while_held = metric(&admin, "tailrace_sink_spool_events{sink=\"kafka\"}");
    let failed_while_held = failed(&admin);
    let summary_held = is_disk
        && wait_until(Duration::from_secs(20), || {
            agent.log().lines().any(|l| {
                l.contains("channel holds")
                    && l.contains("channel=main")
                    && l.contains(&format!("events={n} "))
            })
        });
    let mut stats = String::new();
    let mut tcp = tcp;
    let broker = match interruption {
        Break::Kill(between) => {
            agent.kill();
            let out = run_tailrace(
                ["channel", "stats", "--config"]
                    .iter()
                    .copied()
                    .chain([agent.config_path().to_str().unwrap()]),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stats = String::from_utf8_lossy(&out.stdout).into_owned();
            between(&dir.path().join("data"));
            let broker = Broker::start_on(port);
            broker.create_topic(TOPIC, 1);
            agent.restart();
            broker
        }
        Break::Reload => {
            let moved = free_port();
            let config =
                config.edit_source("net", |s| s.set("address", format!("127.0.0.1:{moved}")));
            std::fs::write(agent.config_path(), config.to_yaml()).unwrap();
            tcp = moved;
            agent.reload_and_wait();
            let broker = Broker::start_on(port);
            broker.create_topic(TOPIC, 1);
            broker
        }
    };
    assert!(wait_until(Duration::from_secs(20), || TcpStream::connect(
        ("127.0.0.1", tcp)
    )
    .is_ok()));
    send(tcp, n..n + 1);
    let marker = SeqLines::line(n);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let records = consumer.read_until(Duration::from_secs(120), |r| {
        r.iter().any(|r| r.payload == marker)
    });
    assert!(
        records.iter().any(|r| r.payload == marker),
        "the line sent after the restart did not arrive:\n{}",
        agent.log_tail(30)
    );
    let report = Report::new(n, records.iter().map(|r| &r.payload));
    let checksum_errors = metric(
        &admin,
        "tailrace_channel_corrupt_batches_total{channel=\"main\",reason=\"checksum\"}",
    );
    let failed_at_end = failed(&admin);
    agent.terminate();
    agent.wait_exit(Duration::from_secs(30));
    Scene {
        failed_at_end,
        report,
        stats,
        checksum_errors,
        capacity,
        summary_held,
        spooled_while_held,
        failed_while_held,
    }
}

/// The sink's failed deliveries, all reasons.
fn failed(admin: &str) -> f64 {
    let body = tailrace_e2e::http::get(admin, "/metrics").unwrap().body;
    body.lines()
        .filter(|l| {
            l.starts_with("tailrace_sink_events_failed_total{") && l.contains("sink=\"kafka\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn lines_a_disk_channel_held_survive_sigkill_and_arrive_in_order_once_kafka_is_up() {
    let n = lines();
    let scene = disk_scene(n, Break::Kill(&|_| {}));
    let stats: serde_json::Value = serde_json::from_str(scene.stats.trim())
        .unwrap_or_else(|e| panic!("channel stats printed {:?}: {e}", scene.stats));
    assert_eq!(stats["channel"], "main");
    assert_eq!(stats["events"], n, "channel stats while stopped: {stats}");
    assert_eq!(stats["torn"], 0, "{stats}");
    assert!(stats["oldest_unacknowledged_ms"].is_u64(), "{stats}");
    let r = &scene.report;
    assert!(r.missing.is_empty(), "lines lost: {r}");
    assert!(
        !r.out_of_order,
        "what the channel held came first, in order: {r}"
    );
    // Nothing reached Kafka before the kill: no line can have arrived twice.
    assert_eq!(r.duplicates, 0, "{r}");
    assert_eq!(
        r.malformed_count, 1,
        "only the marker is beyond the lines: {r}"
    );
    assert_eq!(scene.checksum_errors, 0.0);
    assert_eq!(
        scene.capacity,
        (None, Some(67_108_864.0)),
        "no max_events: no events capacity; max_bytes is the bytes capacity"
    );
    assert!(
        scene.summary_held,
        "the summary log shows what the log holds ({n} events)"
    );
}

/// Flips one byte in the body of the middle frame of the channel's first
/// segment (frames: len u32, seq u64, events u32, bytes u32, crc u32,
/// then the entry), as a bad sector would.
fn damage_one_batch(data_dir: &Path) {
    let dir = data_dir.join("channels/main");
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .min()
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut frames = Vec::new();
    let mut at = 8;
    while at + 24 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        frames.push((at + 24, len));
        at += 24 + len;
    }
    assert!(frames.len() >= 3, "{} frames", frames.len());
    let (body, len) = frames[frames.len() / 2];
    bytes[body + len / 2] ^= 0x5a;
    std::fs::write(&seg, &bytes).unwrap();
}

#[test]
fn a_damaged_batch_in_a_disk_channel_is_counted_and_skipped_and_every_other_line_arrives() {
    let n = lines();
    let scene = disk_scene(n, Break::Kill(&damage_one_batch));
    let r = &scene.report;
    assert_eq!(scene.checksum_errors, 1.0, "{r}");
    // Exactly one batch is lost: a run of consecutive lines.
    assert!(!r.missing.is_empty(), "{r}");
    let (first, last) = (r.missing[0], *r.missing.last().unwrap());
    assert_eq!(last - first + 1, r.missing.len() as u64, "one run: {r}");
    assert!(r.missing.len() < n as usize / 2, "{r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(!r.out_of_order, "{r}");
}

#[test]
fn the_same_scene_with_the_memory_channel_loses_the_lines() {
    let n = lines();
    let scene = interrupted_while_kafka_is_absent(
        Channel::of_type("memory"),
        None,
        n,
        |admin| metric(admin, "tailrace_source_events_total{source=\"net\"}") >= n as f64,
        Break::Kill(&|_| {}),
    );
    assert_eq!(scene.stats.trim(), "", "a memory channel has no stats");
    let r = &scene.report;
    assert_eq!(
        r.missing.len() as u64,
        n,
        "a memory channel keeps nothing through SIGKILL: {r}"
    );
}

#[test]
fn a_reload_that_rebuilds_the_disk_channel_loses_and_repeats_nothing() {
    let n = lines();
    let scene = disk_scene(n, Break::Reload);
    let r = &scene.report;
    // The old sink spooled what it held at the end of its grace period
    // (released from the channel); the channel kept the rest: each line
    // comes from one of them.
    assert!(r.missing.is_empty(), "lines lost: {r}");
    assert_eq!(r.duplicates, 0, "{r}");
}

/// One copy, not two: the sink gives up on what it sent while the broker
/// is absent (a 1 s delivery timeout, again and again), and what it gave up
/// on stays in the channel's log, the only copy: its sled spool stays
/// empty while the channel holds every line. After SIGKILL and the broker's
/// start every line arrives, in order; nothing reached Kafka before the
/// kill, so a line can only repeat when it is given up on after the
/// restart (a timed-out record the broker wrote after all) and read again.
#[test]
fn what_the_sink_gives_up_on_stays_in_the_disk_channel_not_in_its_spool() {
    let n = lines();
    let both_held = disk_holds(n);
    let scene = interrupted_while_kafka_is_absent(
        disk(),
        Some(1_000),
        n,
        |admin| both_held(admin) && failed(admin) > 0.0,
        Break::Kill(&|_| {}),
    );
    assert!(
        scene.failed_while_held > 0.0,
        "the sink gave up at least once"
    );
    assert_eq!(
        scene.spooled_while_held, 0.0,
        "the sink's spool holds nothing of a disk channel"
    );
    let stats: serde_json::Value = serde_json::from_str(scene.stats.trim())
        .unwrap_or_else(|e| panic!("channel stats printed {:?}: {e}", scene.stats));
    assert_eq!(stats["events"], n, "the channel holds every line: {stats}");
    let r = &scene.report;
    assert!(r.missing.is_empty(), "lines lost: {r}");
    assert!(!r.out_of_order, "{r}");
    // A line repeats only when its batch was given up on and read again
    // (a delivery timeout can hit a record the broker wrote after all):
    // after the restart nothing had reached Kafka, so every repeat is a
    // record the restarted sink gave up on.
    assert!(
        r.duplicates as f64 <= scene.failed_at_end,
        "repeats are bounded by what the restarted sink gave up on ({}): {r}",
        scene.failed_at_end
    );
    eprintln!("one copy: {r}");
}
