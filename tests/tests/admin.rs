//! The admin endpoint: health, readiness that follows the broker, metrics
//! that promtool accepts and that agree with what a consumer received, and
//! an endpoint that stays up under a burst of scrapes and bad requests.

use std::io::Write as _;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use tailrace_e2e::http::{get, raw, sample};
use tailrace_e2e::{scene, wait_until, Agent, Broker, Consumer, Report, SeqLines};

const TOPIC: &str = "logs";

/// The common scene, its agent started.
fn setup() -> (Broker, tempfile::TempDir, Agent) {
    let (broker, dir, config) = scene(TOPIC);
    let agent = Agent::start(dir.path(), &config.to_yaml());
    (broker, dir, agent)
}

fn status(address: &str, path: &str) -> u16 {
    get(address, path).map(|r| r.status).unwrap_or(0)
}

fn promtool(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; tests/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn metrics_pass_promtool_and_agree_with_the_consumer() {
    let (broker, dir, agent) = setup();
    let admin = agent.admin_address().to_string();
    const N: u64 = 50_000;
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(N);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let got: Vec<Vec<u8>> = consumer
        .read_count(N as usize, Duration::from_secs(60))
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    let report = Report::new(N, &got);
    assert!(report.is_complete(), "{report}");
    // The delivered counter moves when the acks are processed; wait for it
    // rather than sleeping.
    let delivered = "tailrace_sink_events_delivered_total{sink=\"kafka\"}";
    assert!(
        wait_until(Duration::from_secs(10), || {
            get(&admin, "/metrics")
                .ok()
                .and_then(|r| sample(&r.body, delivered))
                == Some(N as f64)
        }),
        "delivered counter never reached {N}"
    );
    let metrics = get(&admin, "/metrics").expect("scrape").body;
    let (ok, said) = promtool(&metrics);
    assert!(ok, "promtool refused the exposition:\n{said}\n{metrics}");
    assert_eq!(
        sample(&metrics, "tailrace_source_events_total{source=\"app\"}"),
        Some(N as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "tailrace_source_bytes_total{source=\"app\"}"),
        Some((N * 99) as f64)
    );
    assert_eq!(
        sample(&metrics, delivered),
        Some(report.received as f64),
        "delivered equals what the consumer received"
    );
    assert_eq!(
        sample(&metrics, "tailrace_spool_events{sink=\"kafka\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "tailrace_channel_events{channel=\"main\"}"),
        Some(0.0)
    );
    assert!(sample(
        &metrics,
        "tailrace_delivery_latency_seconds_count{sink=\"kafka\"}"
    )
    .is_some_and(|c| c > 0.0));
    assert!(metrics.contains("tailrace_build_info{version="));
    // Scrapers that ask for OpenMetrics get it.
    let om = raw(&admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(om.status, 200);
    assert!(
        om.body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    drop(broker);
}

#[test]
fn ready_follows_the_broker() {
    let (mut broker, _dir, agent) = setup();
    let admin = agent.admin_address().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || status(&admin, "/ready") == 200),
        "never ready: {}",
        agent.log_tail(20)
    );
    broker.stop();
    assert!(
        wait_until(Duration::from_secs(30), || status(&admin, "/ready") == 503),
        "still ready with the broker stopped"
    );
    let body = get(&admin, "/ready").unwrap().body;
    assert!(
        body.contains("sink kafka") && body.contains("not_ready"),
        "{body}"
    );
    assert_eq!(
        status(&admin, "/health"),
        200,
        "health stays 200: the process runs"
    );
    broker.start_again();
    assert!(
        wait_until(Duration::from_secs(40), || status(&admin, "/ready") == 200),
        "not ready again after the broker came back: {}",
        agent.log_tail(20)
    );
}

#[test]
fn burst_of_scrapes_and_bad_requests_leave_it_healthy() {
    let (broker, dir, agent) = setup();
    let admin = agent.admin_address().to_string();
    assert!(wait_until(Duration::from_secs(20), || status(
        &admin, "/health"
    ) == 200));
    // A half-open connection that never sends a request.
    let idle = TcpStream::connect(&admin).unwrap();
    let scrapers: Vec<_> = (0..300)
        .map(|_| {
            let admin = admin.clone();
            std::thread::spawn(move || get(&admin, "/metrics").map(|r| r.status).unwrap_or(0))
        })
        .collect();
    let statuses: Vec<u16> = scrapers.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|&s| s == 200),
        "statuses: {:?}",
        statuses.iter().filter(|&&s| s != 200).collect::<Vec<_>>()
    );
    let garbage =
        raw(&admin, b"\x00\x01\x02 NOT HTTP AT ALL\r\n\r\n").expect("an answer to garbage");
    assert_eq!(garbage.status, 400);
    assert_eq!(status(&admin, "/nope"), 404);
    let post = raw(
        &admin,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(status(&admin, "/health"), 200);
    // And the pipeline kept moving.
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(1000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let got: Vec<Vec<u8>> = consumer
        .read_count(1000, Duration::from_secs(30))
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    let report = Report::new(1000, &got);
    assert!(report.is_complete(), "{report}");
    drop(idle);
}

/// Issue 14, bug 9: labelled counters appeared only at their first
/// increment, so `increase()` in an alert missed the first failure or drop.
/// The reasons known in advance are exported at 0 from the start.
#[test]
fn labelled_counters_are_exported_at_zero_from_the_start() {
    let (_broker, _dir, agent) = setup();
    let admin = agent.admin_address().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || status(&admin, "/metrics")
            == 200),
        "no /metrics: {}",
        agent.log_tail(20)
    );
    let want = [
        "tailrace_sink_events_failed_total{sink=\"kafka\",reason=\"delivery_timeout\"}",
        "tailrace_sink_events_failed_total{sink=\"kafka\",reason=\"queue_full\"}",
        "tailrace_events_dropped_total{component=\"kafka\",reason=\"dead_letter\"}",
        "tailrace_events_dropped_total{component=\"kafka\",reason=\"spool_full\"}",
        "tailrace_events_dropped_total{component=\"app\",reason=\"line_truncated\"}",
        "tailrace_events_dropped_total{component=\"kafka\",reason=\"dead_letter_evicted\"}",
        "tailrace_events_dropped_total{component=\"kafka\",reason=\"corrupt_evicted\"}",
        "tailrace_file_events_total{source=\"app\",event=\"symlink_not_followed\"}",
        "tailrace_file_events_total{source=\"app\",event=\"symlink_special_target\"}",
        // Declared by the file plugin itself, every event up front.
        "tailrace_file_events_total{source=\"app\",event=\"rotated\"}",
        "tailrace_file_events_total{source=\"app\",event=\"truncated\"}",
        "tailrace_file_events_total{source=\"app\",event=\"open_limit\"}",
        "tailrace_file_events_total{source=\"app\",event=\"lost\"}",
        // The disk channel's damage counters exist for a memory channel too.
        "tailrace_channel_corrupt_batches_total{channel=\"main\",reason=\"checksum\"}",
        "tailrace_channel_corrupt_batches_total{channel=\"main\",reason=\"torn_tail\"}",
    ];
    let mut body = String::new();
    let all_there = wait_until(Duration::from_secs(20), || {
        body = get(&admin, "/metrics").map(|r| r.body).unwrap_or_default();
        want.iter().all(|name| sample(&body, name).is_some())
    });
    assert!(all_there, "not all exported: {want:?}\n{body}");
    for name in want {
        assert_eq!(sample(&body, name), Some(0.0), "{name}");
    }
}
