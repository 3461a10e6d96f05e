//! The random fault campaign of issue 16: `CAMPAIGN_ROUNDS` rounds (20 by
//! default), each applying one fault chosen at random while lines are
//! written at a steady rate (500 a second each) to two files and a tcp
//! source, every line with a sequence number. The seed is printed first;
//! `CAMPAIGN_SEED=N` replays a run (`CAMPAIGN_ROUNDS=200` is the long run).
//!
//! The faults: the agent killed with SIGKILL and started again on the same
//! data_dir; SIGHUP with a changed config (the file group's batch size, or
//! a side group of its own added or removed); the network to the broker cut
//! and restored through a [`Proxy`]; the broker (sqlite storage) killed
//! with SIGKILL and started again; logrotate `create` and `copytruncate` of
//! one of the files; the data_dir's tmpfs filled below `min_free_bytes`
//! (with the network cut beyond the delivery timeout, so that the spool is
//! needed and must refuse) and then freed; a burst of over-long lines to a
//! file and over tcp (`max_line_policy: truncate`).
//!
//! What is checked at the end, at a real consumer:
//! - every line of the two files that is on disk arrives (lines that
//!   logrotate's `copytruncate` itself dropped, written between its copy
//!   and its truncation, are not on disk and are counted apart);
//! - tcp has no application acknowledgement, so a SIGKILL of the agent
//!   loses what it had read but not yet delivered or spooled. A tcp line
//!   may therefore be missing only if it had not arrived when the agent was
//!   killed and was written before the sender's first connection to the
//!   restarted agent (the sender writes each batch again on a new
//!   connection when a write fails); such lines are counted as lost to the
//!   kill. Every other tcp line, whatever the other faults, must arrive;
//! - duplicates: at most `REPEAT_BOUND` (one sink batch or spool entry,
//!   10,000 lines) per round whose fault may send a line again (agent
//!   kill, network cut, broker kill, full disk); none are allowed when no
//!   such round ran;
//! - every over-long line arrives once or more, truncated to
//!   `max_line_bytes`, and is counted as `line_truncated` in the round it
//!   was written (one sent over tcp may be lost by a later kill, by the
//!   rule above: it had not arrived when the agent was killed); nothing
//!   else arrives;
//! - a reload leaves the tcp source's group running with its connection;
//! - afterwards both spools are empty, nothing was dead-lettered, `/ready`
//!   is 200, and SIGTERM exits 0.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tailrace_e2e::config::{Channel, Sink, Source, MAIN};
use tailrace_e2e::paced::Paced;
use tailrace_e2e::rng::Rng;
use tailrace_e2e::rotation::{is_cut_line, seqs_on_disk, AppWriter, Logrotate, RotateMode};
use tailrace_e2e::tmpfs::Tmpfs;
use tailrace_e2e::{
    free_port, seq_of, wait_until, Agent, Broker, Config, Consumer, Proxy, SeqLines,
};

const TOPIC: &str = "logs";
const SIDE_TOPIC: &str = "side";
/// The three counted streams number their lines from these.
const FIRSTS: [u64; 3] = [0, 1_000_000_000, 2_000_000_000];
const STREAMS: [&str; 3] = ["file a", "file b", "tcp"];
const TCP: usize = 2;
/// Lines per write, and the pace: 500 lines a second per stream.
const BATCH: u64 = 10;
const PACE: Duration = Duration::from_millis(20);
/// Small, so that a cut of a few seconds outlasts it (5 s: the broker's
/// sqlite storage is slow).
const DELIVERY_TIMEOUT_MS: u64 = 5_000;
const MIN_FREE_BYTES: u64 = 12 * 1024 * 1024;
const MAX_LINE_BYTES: usize = 2_000;
const LONG_LINE_BYTES: usize = 5_000;
const LONG_LINES: usize = 20;
/// One sink batch (max_events) or spool entry: what one fault may send again.
const REPEAT_BOUND: u64 = 10_000;
const CATCH_UP: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillAgent,
    Reload,
    CutNetwork,
    KillBroker,
    RotateCreate,
    RotateCopytruncate,
    DiskFull,
    LongLines,
}

const FAULTS: [Fault; 8] = [
    Fault::KillAgent,
    Fault::Reload,
    Fault::CutNetwork,
    Fault::KillBroker,
    Fault::RotateCreate,
    Fault::RotateCopytruncate,
    Fault::DiskFull,
    Fault::LongLines,
];

impl Fault {
    /// Whether the fault may make the agent send a line again.
    fn repeats(self) -> bool {
        matches!(
            self,
            Fault::KillAgent | Fault::CutNetwork | Fault::KillBroker | Fault::DiskFull
        )
    }
}

/// Writes lines numbered from `first` to the tcp source at a pace, one
/// write per batch; a batch whose write fails is written again on a new
/// connection. Remembers the first line of every connection.
struct TcpWriter {
    paced: Paced,
    connections: Arc<Mutex<Vec<u64>>>,
}

impl TcpWriter {
    fn start(port: u16, first: u64) -> TcpWriter {
        let connections = Arc::new(Mutex::new(Vec::new()));
        let firsts = connections.clone();
        let mut stream: Option<TcpStream> = None;
        let mut buf = Vec::new();
        let paced = Paced::start(first, BATCH, PACE, move |seqs| {
            buf.clear();
            for seq in seqs.clone() {
                buf.extend_from_slice(&SeqLines::line(seq));
                buf.push(b'\n');
            }
            loop {
                let conn = match stream.as_mut() {
                    Some(conn) => conn,
                    None => match TcpStream::connect(("127.0.0.1", port)) {
                        Ok(conn) => {
                            firsts.lock().unwrap().push(seqs.start);
                            stream.insert(conn)
                        }
                        Err(_) => {
                            std::thread::sleep(PACE); // retry pacing, the agent is down
                            continue;
                        }
                    },
                };
                if conn.write_all(&buf).is_ok() {
                    break;
                }
                stream = None;
            }
        });
        TcpWriter { paced, connections }
    }

    fn connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// The first line written on connection `i` (0-based).
    fn first_on(&self, i: usize) -> u64 {
        self.connections.lock().unwrap()[i]
    }
}

/// What the config can be changed to by a reload.
#[derive(Clone, Copy)]
struct Variant {
    /// A side group (its own file source, channel and sink) exists.
    side: bool,
    /// The file group's sink's batch.max_events.
    batch_events: u64,
}

fn config(dir: &Path, bootstrap: &str, admin: &str, tcp_port: u16, v: Variant) -> String {
    let sink = |channel: &str| {
        Sink::kafka(bootstrap, TOPIC)
            .channel(channel)
            .delivery_timeout_ms(DELIVERY_TIMEOUT_MS)
    };
    let truncated = |s: Source| {
        s.max_line_bytes(MAX_LINE_BYTES as u64)
            .max_line_policy("truncate")
    };
    let config = Config::new(dir.join("data"))
        .min_free_bytes(MIN_FREE_BYTES)
        .summary_interval_ms(10_000)
        .admin_address(admin)
        .source("app", truncated(Source::file(dir.join("logs/*.log"))))
        .source(
            "net",
            truncated(Source::tcp(&format!("127.0.0.1:{tcp_port}"))).channels(&["net"]),
        )
        .channel(MAIN, Channel::memory())
        .channel("net", Channel::memory())
        .sink("kafka", sink(MAIN).set("batch.max_events", v.batch_events))
        .sink("net_kafka", sink("net"));
    let config = if v.side {
        config
            .source(
                "side",
                Source::file(dir.join("side/*.log")).channels(&["side"]),
            )
            .channel("side", Channel::memory())
            .sink("side_kafka", sink("side").topic(SIDE_TOPIC))
    } else {
        config
    };
    config.to_yaml()
}

/// One round: its fault, what it did, and the next line number of each
/// stream when it started.
struct Round {
    fault: Fault,
    detail: String,
    start: [u64; 3],
}

/// Everything the campaign runs against.
struct Scene {
    dir: tempfile::TempDir,
    tmpfs: Tmpfs,
    broker: Broker,
    proxy: Proxy,
    agent: Agent,
    consumer: Consumer,
    files: [AppWriter; 2],
    tcp: TcpWriter,
    tcp_port: u16,
    admin: String,
    /// logrotate for (file, mode): create, copytruncate.
    rotators: Vec<[Logrotate; 2]>,
    variant: Variant,
    /// Tcp lines a kill may have lost.
    at_risk: BTreeSet<u64>,
    /// The over-long lines written, as they must arrive (truncated).
    long_lines: BTreeSet<Vec<u8>>,
    /// Over-long tcp lines a kill may have lost (the same rule as for
    /// numbered tcp lines: not arrived when the agent was killed).
    long_at_risk: BTreeSet<Vec<u8>>,
}

impl Scene {
    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn written(&self) -> [u64; 3] {
        [
            self.files[0].written(),
            self.files[1].written(),
            self.tcp.paced.written(),
        ]
    }

    fn write_config(&self) {
        std::fs::write(
            self.agent.config_path(),
            config(
                self.dir.path(),
                &self.proxy.address(),
                &self.admin,
                self.tcp_port,
                self.variant,
            ),
        )
        .unwrap();
    }

    fn metric(&self, name: &str) -> f64 {
        tailrace_e2e::http::get(&self.admin, "/metrics")
            .ok()
            .and_then(|r| tailrace_e2e::http::sample(&r.body, name))
            .unwrap_or(0.0)
    }

    fn ready(&self) -> (u16, String) {
        tailrace_e2e::http::get(&self.admin, "/ready")
            .map(|r| (r.status, r.body))
            .unwrap_or((0, String::new()))
    }

    fn logged(&self, message: &str) -> usize {
        self.agent.log().matches(message).count()
    }

    /// Tcp lines read by the consumer so far.
    fn tcp_arrived(&self) -> BTreeSet<u64> {
        self.consumer
            .records()
            .iter()
            .filter_map(|r| seq_of(&r.payload))
            .filter(|&s| s >= FIRSTS[TCP])
            .collect()
    }

    /// Applies one fault; returns what it did, for the summary.
    fn apply(&mut self, fault: Fault, round: usize, rng: &mut Rng) -> String {
        match fault {
            Fault::KillAgent => {
                // What had arrived cannot be lost by the kill.
                self.consumer.read_for(Duration::from_millis(300));
                let arrived = self.tcp_arrived();
                let arrived_long: BTreeSet<&[u8]> = self
                    .consumer
                    .records()
                    .iter()
                    .map(|r| r.payload.as_slice())
                    .filter(|p| p.starts_with(b"long-"))
                    .collect();
                let long_at_risk: Vec<Vec<u8>> = self
                    .long_lines
                    .iter()
                    .filter(|l| is_tcp_long_line(l) && !arrived_long.contains(l.as_slice()))
                    .cloned()
                    .collect();
                self.long_at_risk.extend(long_at_risk);
                let connections = self.tcp.connections();
                self.agent.kill();
                let down = rng.millis(0, 1_000);
                std::thread::sleep(down); // the agent stays down a random while
                self.agent.restart();
                assert!(
                    wait_until(Duration::from_secs(30), || self.tcp.connections()
                        > connections),
                    "the tcp sender did not reconnect to the restarted agent"
                );
                let first_new = self.tcp.first_on(connections);
                let before = self.at_risk.len();
                self.at_risk
                    .extend((FIRSTS[TCP]..first_new).filter(|s| !arrived.contains(s)));
                format!(
                    "down {} ms; {} tcp lines at risk",
                    down.as_millis(),
                    self.at_risk.len() - before
                )
            }
            Fault::Reload => {
                let what = if rng.chance(50) {
                    self.variant.side = !self.variant.side;
                    if self.variant.side {
                        "side group added"
                    } else {
                        "side group removed"
                    }
                    .to_string()
                } else {
                    self.variant.batch_events = if self.variant.batch_events == 10_000 {
                        2_000
                    } else {
                        10_000
                    };
                    format!("file sink batch.max_events {}", self.variant.batch_events)
                };
                let connections = self.tcp.connections();
                self.write_config();
                self.agent.reload_and_wait();
                self.tcp.paced.wait_for_more(5 * BATCH);
                assert_eq!(
                    self.tcp.connections(),
                    connections,
                    "a reload that did not change the tcp group closed its connection ({what})"
                );
                what
            }
            Fault::CutNetwork => {
                self.proxy.cut();
                let cut = rng.millis(300, DELIVERY_TIMEOUT_MS + 3_000);
                std::thread::sleep(cut); // the length of the outage
                self.proxy.restore();
                format!("cut {} ms", cut.as_millis())
            }
            Fault::KillBroker => {
                self.broker.kill();
                let down = rng.millis(100, 3_000);
                std::thread::sleep(down); // the length of the outage
                self.broker.start_again();
                format!("down {} ms", down.as_millis())
            }
            Fault::RotateCreate | Fault::RotateCopytruncate => {
                let file = rng.below(2) as usize;
                let mode = usize::from(fault == Fault::RotateCopytruncate);
                self.rotators[file][mode].rotate();
                STREAMS[file].to_string()
            }
            Fault::DiskFull => {
                let filler = self.dir.path().join("data/filler");
                let fill = self.tmpfs.free().saturating_sub(MIN_FREE_BYTES / 2);
                std::fs::write(&filler, vec![0u8; usize::try_from(fill).unwrap()]).unwrap();
                let refused = self.logged("the store takes no new spool entries");
                // The broker out of reach beyond the delivery timeout: the
                // sinks need the spool, which must refuse.
                self.proxy.cut();
                assert!(
                    wait_until(Duration::from_secs(60), || self
                        .logged("the store takes no new spool entries")
                        > refused),
                    "the spool did not refuse entries below min_free_bytes\n{}",
                    self.agent.log_tail(30)
                );
                let (status, body) = self.ready();
                assert!(
                    status == 503 && body.contains("min_free_bytes"),
                    "/ready during a full disk: {status} {body}"
                );
                std::fs::remove_file(&filler).unwrap();
                self.proxy.restore();
                format!("filled {} MiB", fill >> 20)
            }
            Fault::LongLines => {
                let truncated = |c: &str| {
                    format!("tailrace_events_dropped_total{{component=\"{c}\",reason=\"line_truncated\"}}")
                };
                let before = (
                    self.metric(&truncated("app")),
                    self.metric(&truncated("net")),
                );
                let mut file_burst = Vec::new();
                let mut tcp_burst = Vec::new();
                for i in 0..LONG_LINES {
                    for (burst, via) in [(&mut file_burst, "file"), (&mut tcp_burst, "tcp")] {
                        let mut line = format!("long-{round:04}-{via}-{i:03} ").into_bytes();
                        line.resize(LONG_LINE_BYTES, b'x');
                        self.long_lines.insert(line[..MAX_LINE_BYTES].to_vec());
                        burst.extend_from_slice(&line);
                        burst.push(b'\n');
                    }
                }
                let mut long = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.logs().join("long.log"))
                    .unwrap();
                long.write_all(&file_burst).unwrap();
                let mut conn = TcpStream::connect(("127.0.0.1", self.tcp_port)).unwrap();
                conn.write_all(&tcp_burst).unwrap();
                drop(conn);
                let n = LONG_LINES as f64;
                let counted = wait_until(Duration::from_secs(30), || {
                    self.metric(&truncated("app")) >= before.0 + n
                        && self.metric(&truncated("net")) >= before.1 + n
                });
                assert!(
                    counted,
                    "the over-long lines were not counted as truncated: app {} -> {}, net {} -> {}",
                    before.0,
                    self.metric(&truncated("app")),
                    before.1,
                    self.metric(&truncated("net"))
                );
                format!("{LONG_LINES} to a file, {LONG_LINES} over tcp")
            }
        }
    }
}

/// The faults to choose from: `CAMPAIGN_FAULTS=KillAgent,DiskFull` (the
/// names above) narrows a run down to some; default all.
fn faults() -> Vec<Fault> {
    let Ok(names) = std::env::var("CAMPAIGN_FAULTS") else {
        return FAULTS.to_vec();
    };
    names
        .split(',')
        .map(|name| {
            *FAULTS
                .iter()
                .find(|f| format!("{f:?}") == name.trim())
                .unwrap_or_else(|| panic!("CAMPAIGN_FAULTS: no fault {name:?} in {FAULTS:?}"))
        })
        .collect()
}

/// Whether an over-long line was sent over tcp (see `Fault::LongLines`).
fn is_tcp_long_line(line: &[u8]) -> bool {
    line.get(..20)
        .is_some_and(|head| head.windows(5).any(|w| w == b"-tcp-"))
}

fn rounds() -> usize {
    tailrace_e2e::size_knob("CAMPAIGN_ROUNDS", 20)
}

#[test]
fn random_fault_campaign_loses_nothing_and_bounds_duplicates() {
    let mut rng = Rng::from_env_or_clock("CAMPAIGN_SEED");
    let rounds = rounds();
    let faults = faults();
    println!("CAMPAIGN_ROUNDS={rounds} CAMPAIGN_FAULTS={faults:?}");

    let broker_port = free_port();
    let proxy = Proxy::start(&format!("127.0.0.1:{broker_port}"));
    let broker = Broker::start_persistent_behind(broker_port, proxy.port());
    broker.create_topic(TOPIC, 1);
    broker.create_topic(SIDE_TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("data"), "48m");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(dir.path().join("side")).unwrap();
    std::fs::write(dir.path().join("side/side.log"), b"side line\n").unwrap();
    let rotators = ["a.log", "b.log"]
        .iter()
        .map(|name| {
            [RotateMode::Create, RotateMode::CopyTruncate].map(|mode| {
                let conf = dir.path().join(format!("rotate/{name}-{mode:?}"));
                std::fs::create_dir_all(&conf).unwrap();
                Logrotate::new(&conf, &logs.join(name), mode)
            })
        })
        .collect();
    let files = [
        AppWriter::start(&logs.join("a.log"), FIRSTS[0], BATCH, PACE),
        AppWriter::start(&logs.join("b.log"), FIRSTS[1], BATCH, PACE),
    ];
    let admin = format!("127.0.0.1:{}", free_port());
    let tcp_port = free_port();
    let variant = Variant {
        side: false,
        batch_events: 10_000,
    };
    let config_path = dir.path().join("tailrace.yaml");
    std::fs::write(
        &config_path,
        config(dir.path(), &proxy.address(), &admin, tcp_port, variant),
    )
    .unwrap();
    let agent = Agent::start_config(dir.path(), &config_path, &admin);
    let tcp = TcpWriter::start(tcp_port, FIRSTS[TCP]);
    let consumer = Consumer::new(&proxy.address(), TOPIC);
    let mut scene = Scene {
        dir,
        tmpfs,
        broker,
        proxy,
        agent,
        consumer,
        files,
        tcp,
        tcp_port,
        admin,
        rotators,
        variant,
        at_risk: BTreeSet::new(),
        long_lines: BTreeSet::new(),
        long_at_risk: BTreeSet::new(),
    };
    // Every stream arrives before the first fault.
    let streams_arrive = |records: &[tailrace_e2e::Record]| {
        let seqs: BTreeSet<u64> = records.iter().filter_map(|r| seq_of(&r.payload)).collect();
        FIRSTS
            .iter()
            .all(|&f| seqs.range(f..f + 1_000_000_000).next().is_some())
    };
    scene
        .consumer
        .read_until(Duration::from_secs(60), streams_arrive);
    assert!(
        streams_arrive(scene.consumer.records()),
        "not every stream arrived before the first fault"
    );

    let mut log: Vec<Round> = Vec::new();
    for round in 0..rounds {
        let fault = faults[rng.below(faults.len() as u64) as usize];
        let start = scene.written();
        let detail = scene.apply(fault, round, &mut rng);
        // Steady writing between faults, read meanwhile, so that what a
        // kill may lose is known closely.
        scene.consumer.read_for(rng.millis(300, 1_500));
        assert!(
            scene.agent.is_running(),
            "the agent exited in round {round} ({fault:?})"
        );
        println!("round {round}: {fault:?}: {detail}");
        log.push(Round {
            fault,
            detail,
            start,
        });
    }

    let Scene {
        dir,
        mut agent,
        mut consumer,
        files: [a, b],
        tcp,
        at_risk,
        long_lines,
        long_at_risk,
        admin,
        proxy,
        broker,
        tmpfs,
        ..
    } = scene;
    let end = [a.stop(), b.stop(), tcp.paced.stop()];
    let on_disk = seqs_on_disk(&dir.path().join("logs"), "");
    let mut must_arrive = BTreeSet::new();
    let mut not_on_disk = BTreeSet::new();
    for stream in 0..2 {
        for seq in FIRSTS[stream]..end[stream] {
            if on_disk.contains(&seq) {
                must_arrive.insert(seq);
            } else {
                not_on_disk.insert(seq);
            }
        }
    }
    must_arrive.extend((FIRSTS[TCP]..end[TCP]).filter(|s| !at_risk.contains(s)));

    // Reads until every line that must arrive did (checking only what is
    // new at each poll), then two seconds more for late copies.
    let mut waiting = must_arrive.clone();
    let mut checked = 0;
    consumer.read_until(CATCH_UP, |records| {
        for r in &records[checked..] {
            if let Some(seq) = seq_of(&r.payload) {
                waiting.remove(&seq);
            }
        }
        checked = records.len();
        waiting.is_empty()
    });
    consumer.read_for(Duration::from_secs(2));

    let mut arrivals: BTreeMap<u64, u64> = BTreeMap::new();
    let mut long_arrived = BTreeSet::new();
    let mut cut_by_copytruncate = 0;
    let mut unexpected = Vec::new();
    for r in consumer.records() {
        let p = &r.payload;
        match seq_of(p) {
            Some(seq) if *p == SeqLines::line(seq) => *arrivals.entry(seq).or_insert(0) += 1,
            Some(_) if is_cut_line(p) => cut_by_copytruncate += 1,
            _ if long_lines.contains(p) => {
                long_arrived.insert(p.clone());
            }
            _ => unexpected.push(String::from_utf8_lossy(&p[..p.len().min(120)]).into_owned()),
        }
    }

    // The summary, one row per round: lines written in the round, of them
    // arrived, arrivals beyond the first, tcp lines lost to a kill, lines
    // not on disk (dropped by copytruncate). Lines count in the round they
    // were written in, so a fault's repeats and losses can show in the
    // rounds before it (lines still unacknowledged when it struck).
    println!(
        "{:>5} | {:<20} | {:<40} | {:>7} | {:>7} | {:>5} | {:>8} | {:>7}",
        "round", "fault", "detail", "written", "arrived", "dups", "tcp lost", "no disk"
    );
    let mut repeating_rounds = 0;
    let mut total_dups = 0;
    let mut total_lost_at_kill = 0;
    for (i, round) in log.iter().enumerate() {
        let next = log.get(i + 1).map_or(end, |r| r.start);
        let seqs = (0..3).flat_map(|s| round.start[s]..next[s]);
        let (mut written, mut arrived, mut dups, mut lost, mut no_disk) = (0, 0, 0, 0, 0);
        for seq in seqs {
            written += 1;
            match arrivals.get(&seq) {
                Some(&n) => {
                    arrived += 1;
                    dups += n - 1;
                }
                None if at_risk.contains(&seq) => lost += 1,
                None if not_on_disk.contains(&seq) => no_disk += 1,
                None => {}
            }
        }
        repeating_rounds += u64::from(round.fault.repeats());
        total_dups += dups;
        total_lost_at_kill += lost;
        println!(
            "{i:>5} | {:<20} | {:<40} | {written:>7} | {arrived:>7} | {dups:>5} | {lost:>8} | {no_disk:>7}",
            format!("{:?}", round.fault),
            round.detail,
        );
    }
    let all_dups: u64 = arrivals.values().map(|n| n - 1).sum();
    let written: u64 = (0..3).map(|s| end[s] - FIRSTS[s]).sum();
    println!(
        "{rounds} rounds, {written} lines written, {} arrived, {all_dups} duplicates ({total_dups} of them in rounds), \
         {total_lost_at_kill} tcp lines lost to kills ({} at risk), {} not on disk after copytruncate, \
         {cut_by_copytruncate} lines cut by copytruncate, {} of {} over-long lines arrived ({} over tcp at risk from a kill)",
        arrivals.len(),
        at_risk.len(),
        not_on_disk.len(),
        long_arrived.len(),
        long_lines.len(),
        long_at_risk.len()
    );

    let missing: Vec<u64> = must_arrive
        .iter()
        .copied()
        .filter(|s| !arrivals.contains_key(s))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lines lost, the first {:?} (streams from {FIRSTS:?})",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        unexpected.is_empty(),
        "{} payloads that were never written, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    let long_missing: Vec<_> = long_lines
        .difference(&long_arrived)
        .filter(|l| !long_at_risk.contains(*l))
        .map(|l| String::from_utf8_lossy(&l[..24]).into_owned())
        .collect();
    assert!(
        long_missing.is_empty(),
        "over-long lines lost: {long_missing:?}"
    );
    assert!(
        all_dups <= repeating_rounds * REPEAT_BOUND,
        "{all_dups} duplicates, more than {REPEAT_BOUND} for each of the {repeating_rounds} rounds that may repeat"
    );

    // The spools drain and the agent is ready.
    let spooled = |sink: &str| {
        tailrace_e2e::http::get(&admin, "/metrics")
            .ok()
            .and_then(|r| {
                tailrace_e2e::http::sample(
                    &r.body,
                    &format!("tailrace_spool_events{{sink=\"{sink}\"}}"),
                )
            })
            .unwrap_or(f64::NAN)
    };
    assert!(
        wait_until(Duration::from_secs(60), || spooled("kafka") == 0.0
            && spooled("net_kafka") == 0.0),
        "the spools did not drain: {} and {}",
        spooled("kafka"),
        spooled("net_kafka")
    );
    let ready = || {
        tailrace_e2e::http::get(&admin, "/ready")
            .map(|r| (r.status, r.body))
            .unwrap_or((0, String::new()))
    };
    assert!(
        wait_until(Duration::from_secs(60), || ready().0 == 200),
        "/ready: {:?}",
        ready()
    );
    agent.terminate();
    let status = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    for sink in ["kafka", "net_kafka"] {
        assert_eq!(
            agent.spool_usage(sink, "spool").entries,
            0,
            "{sink}'s spool"
        );
        assert_eq!(
            agent.spool_usage(sink, "dead").entries,
            0,
            "{sink}'s dead letters"
        );
    }
    drop((proxy, broker, tmpfs));
}
