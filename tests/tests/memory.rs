//! Memory that does not grow with the number of files: the file source's
//! read buffers come from one bounded pool (`read_pool_bytes`), checked
//! through `tailrace_file_buffer_bytes` while 2,000 open files are read,
//! and every line still arrives exactly once; and the same for the
//! connections of a tcp source and the sessions of a relp source
//! (`tailrace_source_buffer_bytes`), whose idle connections hold no read
//! buffer.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tailrace_e2e::http::{get, sample};
use tailrace_e2e::{Agent, Broker, Config, Consumer, Report, SeqLines};

/// Files, and lines in each (`TAILRACE_MEMORY_LINES_PER_FILE` for a longer run).
const FILES: u64 = 2_000;
const POOL_BYTES: u64 = 256 * 1024;

#[test]
fn two_thousand_open_files_never_hold_more_than_the_read_pool() {
    let per_file: u64 = tailrace_e2e::size_knob("TAILRACE_MEMORY_LINES_PER_FILE", 20);
    let broker = Broker::start();
    broker.create_topic("logs", 1);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // Sequence numbers unique across files: file f holds f, f + FILES, ...
    for f in 0..FILES {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(logs.join(format!("app-{f:04}.log"))).unwrap(),
        );
        for i in 0..per_file {
            file.write_all(&SeqLines::line(f + i * FILES)).unwrap();
            file.write_all(b"\n").unwrap();
        }
    }
    let config =
        Config::file_to_kafka(dir.path(), &broker.bootstrap(), "logs").edit_source("app", |s| {
            s.max_open_files(4096)
                .set("read_buffer_bytes", 16384)
                .set("read_pool_bytes", POOL_BYTES)
        });
    let agent = Agent::start(dir.path(), &config.to_yaml());

    // Scrape the gauge the whole time the agent reads.
    let stop = Arc::new(AtomicBool::new(false));
    let admin = agent.admin_address().to_string();
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut highest, mut samples, mut open_max) = (0f64, 0u64, 0f64);
            while !stop.load(Ordering::Acquire) {
                if let Ok(r) = get(&admin, "/metrics") {
                    let m = r.body;
                    if let Some(v) = sample(&m, "tailrace_file_buffer_bytes{source=\"app\"}") {
                        highest = highest.max(v);
                        samples += 1;
                    }
                    if let Some(v) = sample(&m, "tailrace_file_open_files{source=\"app\"}") {
                        open_max = open_max.max(v);
                    }
                }
            }
            (highest, samples, open_max)
        })
    };

    let expected = FILES * per_file;
    let mut consumer = Consumer::new(&broker.bootstrap(), "logs");
    let records = consumer
        .read_count(expected as usize, Duration::from_secs(120))
        .to_vec();
    stop.store(true, Ordering::Release);
    let (highest, samples, open_max) = scraper.join().unwrap();

    let report = Report::new(expected, records.iter().map(|r| &r.payload[..]));
    assert!(report.is_complete(), "{report:?}\n{}", agent.log_tail(30));
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert!(samples > 0, "tailrace_file_buffer_bytes was never exported");
    assert!(
        open_max >= FILES as f64,
        "the files were not all open at once (at most {open_max})"
    );
    assert!(
        highest > 0.0,
        "the pool never held a buffer while {expected} lines were read"
    );
    assert!(
        highest <= POOL_BYTES as f64,
        "the read buffers held {highest} bytes, over read_pool_bytes {POOL_BYTES}"
    );
}

/// Idle connections, and lines from each of the active ones
/// (`TAILRACE_MEMORY_LINES_PER_CONNECTION` for a longer run).
const IDLE_CONNECTIONS: u64 = 1_000;
const ACTIVE_CONNECTIONS: u64 = 4;
const SOCKET_POOL_BYTES: u64 = 256 * 1024;

/// A stream source `name` (built by `source` on the address given) on a
/// pool of `SOCKET_POOL_BYTES`, into Kafka topic `logs`: the agent, the
/// source's address, and a scraper of its `tailrace_source_buffer_bytes`.
fn stream_source_scene(
    broker: &Broker,
    dir: &std::path::Path,
    name: &str,
    source: impl FnOnce(&str) -> tailrace_e2e::config::Source,
) -> (Agent, String, Scraper) {
    use tailrace_e2e::config::{Channel, Sink, MAIN};
    let address = format!("127.0.0.1:{}", tailrace_e2e::free_port());
    let config = Config::new(dir.join("data"))
        .source(
            name,
            source(&address)
                .set("max_connections", 2_048)
                .set("read_buffer_bytes", 16_384)
                .set("read_pool_bytes", SOCKET_POOL_BYTES),
        )
        .channel(MAIN, Channel::memory())
        .sink(
            "kafka",
            Sink::kafka(&broker.bootstrap(), "logs").librdkafka("queue.buffering.max.ms", "5"),
        );
    let agent = Agent::start(dir, &config.to_yaml());
    let scraper = Scraper::start(
        agent.admin_address().to_string(),
        format!("tailrace_source_buffer_bytes{{source=\"{name}\"}}"),
    );
    let listening = tailrace_e2e::wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(&address).is_ok()
    });
    assert!(listening, "source {name} never listened on {address}");
    (agent, address, scraper)
}

/// Scrapes a gauge and the agent's resident memory until stopped: the
/// gauge's highest value, how often it was seen, the highest RSS.
struct Scraper {
    admin: String,
    gauge: String,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(f64, u64, f64)>,
}

impl Scraper {
    fn start(admin: String, gauge: String) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, admin, gauge) = (stop.clone(), admin.clone(), gauge.clone());
            std::thread::spawn(move || {
                let (mut highest, mut samples, mut rss) = (0f64, 0u64, 0f64);
                while !stop.load(Ordering::Acquire) {
                    if let Ok(r) = get(&admin, "/metrics") {
                        if let Some(v) = sample(&r.body, &gauge) {
                            highest = highest.max(v);
                            samples += 1;
                        }
                        if let Some(v) = sample(&r.body, "process_resident_memory_bytes") {
                            rss = rss.max(v);
                        }
                    }
                }
                (highest, samples, rss)
            })
        };
        Scraper {
            admin,
            gauge,
            stop,
            thread,
        }
    }

    /// The gauge now, if exported.
    fn now(&self) -> Option<f64> {
        get(&self.admin, "/metrics")
            .ok()
            .and_then(|r| sample(&r.body, &self.gauge))
    }

    /// Waits up to 30 s for the gauge to fall to 0 (every buffer back);
    /// whether it did.
    fn released(&self) -> bool {
        tailrace_e2e::wait_until(Duration::from_secs(30), || self.now() == Some(0.0))
    }

    fn stop(self) -> (f64, u64, f64) {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }

    /// Once every one of `expected` lines was read back as `records`,
    /// with `open` connections still open: each arrived once, the pool
    /// held buffers but never more than `SOCKET_POOL_BYTES`, and holds
    /// none now. Stops the scraper; returns its peak RSS.
    fn check(
        self,
        agent: &Agent,
        expected: u64,
        records: &[tailrace_e2e::Record],
        open: usize,
    ) -> f64 {
        let released = self.released();
        let gauge_now = self.now();
        let (highest, samples, rss) = self.stop();
        eprintln!(
            "{open} connections: read buffers at most {highest} bytes, peak RSS {:.1} MiB",
            rss / 1048576.0
        );
        let report = Report::new(expected, records.iter().map(|r| &r.payload[..]));
        assert!(report.is_complete(), "{report:?}\n{}", agent.log_tail(30));
        assert_eq!(report.duplicates, 0, "{report:?}");
        assert!(
            samples > 0,
            "tailrace_source_buffer_bytes was never exported"
        );
        assert!(
            highest > 0.0,
            "the pool never held a buffer while {expected} lines were read"
        );
        assert!(
            highest <= SOCKET_POOL_BYTES as f64,
            "the read buffers held {highest} bytes, over read_pool_bytes {SOCKET_POOL_BYTES}"
        );
        assert!(
            released,
            "with every line delivered, {open} open connections still hold read buffers: {gauge_now:?} bytes"
        );
        rss
    }
}

/// Memory that does not grow with the number of connections: a tcp
/// source's read buffers come from one bounded pool, so 1,000 connections
/// that each sent a line and then went quiet hold none once their lines
/// are delivered, while a few busy ones stream through the pool; the
/// gauge never shows more than `read_pool_bytes`, and every line arrives
/// exactly once.
#[test]
fn a_thousand_idle_connections_hold_no_read_buffer() {
    use std::net::TcpStream;
    fn line(seq: u64) -> Vec<u8> {
        let mut line = SeqLines::line(seq);
        line.push(b'\n');
        line
    }
    idle_and_busy_connections_hold_no_read_buffer(
        "net",
        tailrace_e2e::config::Source::tcp,
        IDLE_CONNECTIONS,
        |address, seq| {
            let mut s = TcpStream::connect(address)
                .unwrap_or_else(|e| panic!("connection {seq} to {address}: {e}"));
            s.write_all(&line(seq)).unwrap();
            s
        },
        |address, seqs| {
            let mut s = std::io::BufWriter::new(TcpStream::connect(address).unwrap());
            for seq in seqs {
                s.write_all(&line(seq)).unwrap();
            }
            s.into_inner().unwrap()
        },
    );
}

/// The scene of both pool tests: a stream source `name`, `idle`
/// connections opened by `open_idle` (each sends line `seq` and goes
/// quiet), then `ACTIVE_CONNECTIONS` busy ones on threads (`busy` sends
/// its sequence numbers, the rest interleaved over them); once every line
/// is read back, [`Scraper::check`] with every connection still open.
fn idle_and_busy_connections_hold_no_read_buffer<C: Send + 'static>(
    name: &str,
    source: impl FnOnce(&str) -> tailrace_e2e::config::Source,
    idle: u64,
    open_idle: impl Fn(&str, u64) -> C,
    busy: fn(&str, Vec<u64>) -> C,
) {
    let per_active: u64 = tailrace_e2e::size_knob("TAILRACE_MEMORY_LINES_PER_CONNECTION", 5_000);
    let broker = Broker::start();
    broker.create_topic("logs", 1);
    let dir = tempfile::tempdir().unwrap();
    // The source listens once its pipeline started, after the admin
    // endpoint: the scene waits for it.
    let (agent, address, scraper) = stream_source_scene(&broker, dir.path(), name, source);
    let idle: Vec<C> = (0..idle).map(|seq| open_idle(&address, seq)).collect();
    let first_busy = idle.len() as u64;
    let senders: Vec<_> = (0..ACTIVE_CONNECTIONS)
        .map(|c| {
            let address = address.clone();
            let seqs = (0..per_active)
                .map(|i| first_busy + c + i * ACTIVE_CONNECTIONS)
                .collect();
            std::thread::spawn(move || busy(&address, seqs))
        })
        .collect();
    let active: Vec<C> = senders.into_iter().map(|t| t.join().unwrap()).collect();

    let expected = first_busy + ACTIVE_CONNECTIONS * per_active;
    let mut consumer = Consumer::new(&broker.bootstrap(), "logs");
    let records = consumer
        .read_count(expected as usize, Duration::from_secs(120))
        .to_vec();
    // Every line delivered, every connection still open: nothing held.
    scraper.check(&agent, expected, &records, idle.len() + active.len());
    drop((idle, active));
}

/// Idle RELP sessions, each of which sent one message and had it answered.
const IDLE_RELP_SESSIONS: u64 = 300;

/// A RELP client, as far as the test needs: `open`, then `syslog` frames
/// whose answers a reader thread counts.
mod relp_client {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;

    /// Connects and opens a session (txnr 1); the next frame is txnr 2.
    pub fn open(address: &str) -> TcpStream {
        let mut s = TcpStream::connect(address).unwrap_or_else(|e| panic!("{address}: {e}"));
        let offers = "relp_version=0\nrelp_software=tailrace-test\ncommands=syslog";
        writeln!(s, "1 open {} {offers}", offers.len()).unwrap();
        let (txnr, text) = answer(&mut BufReader::new(&s));
        assert_eq!(txnr, 1);
        assert!(text.starts_with("200 OK"), "open answered {text:?}");
        s
    }

    /// A `syslog` frame carrying `message`.
    pub fn syslog(txnr: u64, message: &[u8]) -> Vec<u8> {
        let mut frame = format!("{txnr} syslog {} ", message.len()).into_bytes();
        frame.extend_from_slice(message);
        frame.push(b'\n');
        frame
    }

    /// The next `rsp` frame: its txnr and text.
    pub fn answer(r: &mut impl BufRead) -> (u64, String) {
        let mut word = || {
            let mut w = Vec::new();
            r.read_until(b' ', &mut w).unwrap();
            assert_eq!(
                w.pop(),
                Some(b' '),
                "the connection closed inside an answer"
            );
            String::from_utf8(w).unwrap()
        };
        let txnr: u64 = word().parse().unwrap();
        assert_eq!(word(), "rsp");
        let len: usize = word().parse().unwrap();
        let mut data = vec![0; len + 1];
        r.read_exact(&mut data).unwrap();
        assert_eq!(data[len], b'\n', "an answer ends with a line feed");
        (txnr, String::from_utf8_lossy(&data[..len]).into_owned())
    }

    /// Sends `frames` on `s` while a second thread reads `count` answers;
    /// returns the stream once every answer came.
    pub fn send_all(mut s: TcpStream, frames: Vec<u8>, count: u64) -> TcpStream {
        let reader = s.try_clone().unwrap();
        let answers = std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            for _ in 0..count {
                let (_, text) = answer(&mut r);
                assert!(text.starts_with("200"), "answered {text:?}");
            }
        });
        s.write_all(&frames).unwrap();
        answers.join().unwrap();
        s
    }
}

/// The same bound for a relp source: its sessions read into the source's
/// pool too, so 300 sessions kept open after their one message was
/// answered hold no read buffer, while 4 busy ones stream through a pool
/// the gauge never shows over `read_pool_bytes`; every message arrives
/// exactly once.
#[test]
fn idle_relp_sessions_hold_no_read_buffer() {
    idle_and_busy_connections_hold_no_read_buffer(
        "relp",
        tailrace_e2e::config::Source::relp,
        IDLE_RELP_SESSIONS,
        |address, seq| {
            let s = relp_client::open(address);
            relp_client::send_all(s, relp_client::syslog(2, &SeqLines::line(seq)), 1)
        },
        |address, seqs| {
            let s = relp_client::open(address);
            let mut frames = Vec::new();
            for (txnr, seq) in (2..).zip(&seqs) {
                frames.extend(relp_client::syslog(txnr, &SeqLines::line(*seq)));
            }
            relp_client::send_all(s, frames, seqs.len() as u64)
        },
    );
}
