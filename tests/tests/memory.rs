//! Memory that does not grow with the number of files: the file source's
//! read buffers come from one bounded pool (`read_pool_bytes`), checked
//! through `tailrace_file_buffer_bytes` while 2,000 open files are read,
//! and every line still arrives exactly once.

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
