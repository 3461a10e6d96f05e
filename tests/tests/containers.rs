//! Acceptance tests of the file source on container runtime log files:
//! CRI (containerd, CRI-O) with partial records joined, a CRI log rotated
//! by the real logrotate while it is written, Docker's json-file with its
//! 16 KiB splits, `format: auto` telling them apart per file. Payloads
//! carry sequence numbers, counted at a real consumer.

use std::io::Write as _;
use std::time::Duration;

use tailrace_e2e::rotation::{AppWriter, Logrotate, RotateMode};
use tailrace_e2e::sockets::metric;
use tailrace_e2e::{scene, seq_of, Agent, Broker, Config, Consumer, Report, SeqLines};

const TOPIC: &str = "pods";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
const TIME: &str = "2026-11-21T10:00:00.123456789Z";

/// The common scene, the file source reading `format` (if given) and,
/// with `json`, the sink writing JSON records.
fn setup(format: Option<&str>, json: bool) -> (Broker, tempfile::TempDir, Config) {
    let (broker, dir, mut config) = scene(TOPIC);
    if let Some(format) = format {
        config = config.edit_source("app", |s| s.set("format", format));
    }
    if json {
        config = config.edit_sink("kafka", |k| k.set("encoding", "json"));
    }
    (broker, dir, config)
}

/// Line `seq` as containerd writes it.
fn cri_line(seq: u64, buf: &mut Vec<u8>) {
    buf.extend_from_slice(TIME.as_bytes());
    buf.extend_from_slice(if seq.is_multiple_of(2) {
        b" stdout F "
    } else {
        b" stderr F "
    });
    buf.extend_from_slice(&SeqLines::line(seq));
    buf.push(b'\n');
}

fn docker_line(log: &str, stream: &str) -> String {
    format!(
        "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"{TIME}\"}}\n",
        serde_json::to_string(log).unwrap()
    )
}

fn json(r: &tailrace_e2e::Record) -> serde_json::Value {
    serde_json::from_slice(&r.payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.payload)))
}

#[test]
fn cri_partials_are_joined_whole_records_arrive_one_to_one_and_bad_lines_go_raw() {
    let (broker, dir, config) = setup(Some("cri"), true);
    const N: u64 = 5_000;
    let mut file = Vec::new();
    // The first event, cut by the runtime into three records.
    for (tag, part) in [
        ("P", "first part, "),
        ("P", "second part, "),
        ("F", "last part"),
    ] {
        file.extend_from_slice(format!("{TIME} stdout {tag} {part}\n").as_bytes());
    }
    for seq in 0..N {
        cri_line(seq, &mut file);
        if seq == N / 2 {
            file.extend_from_slice(b"not a cri line\n");
        }
    }
    std::fs::write(dir.path().join("logs/pod.log"), &file).unwrap();
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let records = consumer
        .read_count(N as usize + 2, DELIVERY_TIMEOUT)
        .to_vec();
    assert_eq!(records.len() as u64, N + 2, "{}", agent.log_tail(20));
    let first = json(&records[0]);
    assert_eq!(first["message"], "first part, second part, last part");
    assert_eq!(first["offset"], 0, "a joined event is at its first part");
    assert_eq!(first["stream"], "stdout");
    assert_eq!(
        first["timestamp"], "2026-11-21T10:00:00.123Z",
        "the runtime's time"
    );
    let mut messages = Vec::new();
    let mut raw = Vec::new();
    for r in &records[1..] {
        let v = json(r);
        let m = v["message"].as_str().unwrap().to_owned();
        match seq_of(m.as_bytes()) {
            Some(seq) => {
                let stream = if seq % 2 == 0 { "stdout" } else { "stderr" };
                assert_eq!(v["stream"], stream, "entry {seq}");
                messages.push(m.into_bytes());
            }
            None => raw.push((m, v.get("stream").cloned())),
        }
    }
    assert_eq!(
        raw,
        [("not a cri line".to_owned(), None)],
        "a bad line arrives as it was"
    );
    let report = Report::new(N, &messages);
    assert!(report.is_complete() && report.duplicates == 0, "{report}");
    let parse_errors = metric(
        agent.admin_address(),
        "tailrace_source_parse_errors_total{source=\"app\"}",
    );
    assert_eq!(parse_errors, 1.0, "the bad line is counted");
}

#[test]
fn cri_log_rotated_by_logrotate_while_written_loses_nothing() {
    let (broker, dir, config) = setup(Some("cri"), false);
    let log = dir.path().join("logs/pod.log");
    let writer = AppWriter::start_as(&log, 0, 40, Duration::from_millis(5), cri_line);
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let mut logrotate = Logrotate::new(dir.path(), &log, RotateMode::Create);
    for _ in 0..3 {
        writer.wait_for_more(5_000);
        logrotate.rotate();
    }
    writer.wait_for_more(2_000);
    let written = writer.stop();
    consumer.read_until(DELIVERY_TIMEOUT, |r| {
        Report::new(written, r).missing.is_empty()
    });
    let report = Report::new(written, consumer.records());
    println!("{written} CRI lines, 3 rotations: {report}");
    assert!(report.is_complete(), "{report}\n{}", agent.log_tail(20));
    assert_eq!(report.duplicates, 0, "{report}");
    assert_eq!(
        metric(
            agent.admin_address(),
            "tailrace_source_parse_errors_total{source=\"app\"}"
        ),
        0.0
    );
}

#[test]
fn docker_json_is_unwrapped_16k_splits_are_joined_and_auto_tells_the_formats_apart() {
    let (broker, dir, config) = setup(Some("auto"), true);
    const N: u64 = 3_000;
    let tricky = "say \"hi\"\t\\ to ünïcode \u{1}";
    let long: String = (0..40_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut docker = String::new();
    docker.push_str(&docker_line(&format!("{tricky}\n"), "stderr"));
    // dockerd cuts a long message into 16 KiB parts without a newline.
    for part in [
        &long[..16_384],
        &long[16_384..32_768],
        &format!("{}\n", &long[32_768..]),
    ] {
        docker.push_str(&docker_line(part, "stdout"));
    }
    for seq in 0..N {
        let line = String::from_utf8(SeqLines::line(seq)).unwrap();
        docker.push_str(&docker_line(&format!("{line}\n"), "stdout"));
    }
    std::fs::write(dir.path().join("logs/docker.log"), docker).unwrap();
    let mut cri = Vec::new();
    for seq in N..2 * N {
        cri_line(seq, &mut cri);
    }
    std::fs::File::create(dir.path().join("logs/cri.log"))
        .unwrap()
        .write_all(&cri)
        .unwrap();
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let records = consumer
        .read_count(2 * N as usize + 2, DELIVERY_TIMEOUT)
        .to_vec();
    assert_eq!(records.len() as u64, 2 * N + 2, "{}", agent.log_tail(20));
    let values: Vec<serde_json::Value> = records.iter().map(json).collect();
    let by_message = |m: &str| values.iter().find(|v| v["message"] == m);
    let t = by_message(tricky).expect("the escaped message arrives unwrapped");
    assert_eq!(t["stream"], "stderr");
    let l = by_message(&long).expect("the split message arrives joined");
    assert_eq!(l["stream"], "stdout");
    assert_eq!(l["timestamp"], "2026-11-21T10:00:00.123Z");
    let messages: Vec<Vec<u8>> = values
        .iter()
        .filter_map(|v| v["message"].as_str())
        .filter(|m| seq_of(m.as_bytes()).is_some())
        .map(|m| m.as_bytes().to_vec())
        .collect();
    let report = Report::new(2 * N, &messages);
    assert!(report.is_complete() && report.duplicates == 0, "{report}");
    assert_eq!(
        metric(
            agent.admin_address(),
            "tailrace_source_parse_errors_total{source=\"app\"}"
        ),
        0.0
    );
}

/// Issue 16: symlinks by policy. kubelet's /var/log/containers holds only
/// symlinks into /var/log/pods, so they are followed by default; a symlink
/// into /proc is refused and counted. With `follow_symlinks: false` a
/// symlink is not read at all, and counted. What each agent read is its
/// saved positions: one file each.
#[test]
fn symlinks_are_followed_by_policy_and_never_into_proc() {
    let (broker, dir, config) = setup(None, false);
    let d = dir.path();
    std::fs::create_dir_all(d.join("pods")).unwrap();
    let mut lines = SeqLines::create(d.join("pods/app-0.log"));
    lines.append(1_000);
    std::os::unix::fs::symlink(d.join("pods/app-0.log"), d.join("logs/app.log")).unwrap();
    std::os::unix::fs::symlink("/proc/self/status", d.join("logs/status.log")).unwrap();
    let mut agent = Agent::start(d, &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(1_000, DELIVERY_TIMEOUT);
    let report = lines.count(consumer.records());
    assert!(report.is_complete(), "{report}");
    let refused = "tailrace_file_events_total{source=\"app\",event=\"symlink_special_target\"}";
    let admin = agent.admin_address().to_string();
    assert!(
        tailrace_e2e::wait_until(Duration::from_secs(30), || metric(&admin, refused) == 1.0),
        "{refused} = {}",
        metric(&admin, refused)
    );
    agent.terminate();
    agent.wait_exit(Duration::from_secs(30));
    let read: Vec<_> = agent.checkpoints().into_iter().map(|c| c.path).collect();
    assert_eq!(read, vec![d.join("logs/app.log")]);

    // Not followed: a second agent, its own data_dir, on a directory with a
    // regular file and a symlink beside it.
    let off = d.join("off");
    std::fs::create_dir_all(off.join("logs")).unwrap();
    let mut plain = SeqLines::create(off.join("logs/plain.log"));
    plain.append(1_000);
    std::os::unix::fs::symlink(d.join("pods/app-0.log"), off.join("logs/app.log")).unwrap();
    let config = Config::file_to_kafka(&off, &broker.bootstrap(), "unfollowed")
        .edit_source("app", |s| s.set("follow_symlinks", false));
    broker.create_topic("unfollowed", 1);
    let mut agent = Agent::start(&off, &config.to_yaml());
    let mut consumer = Consumer::new(&broker.bootstrap(), "unfollowed");
    consumer.read_count(1_000, DELIVERY_TIMEOUT);
    let not_followed = "tailrace_file_events_total{source=\"app\",event=\"symlink_not_followed\"}";
    let admin = agent.admin_address().to_string();
    assert!(
        tailrace_e2e::wait_until(Duration::from_secs(30), || metric(&admin, not_followed)
            == 1.0),
        "{not_followed} = {}",
        metric(&admin, not_followed)
    );
    agent.terminate();
    agent.wait_exit(Duration::from_secs(30));
    let read: Vec<_> = agent.checkpoints().into_iter().map(|c| c.path).collect();
    assert_eq!(
        read,
        vec![off.join("logs/plain.log")],
        "the symlink was not read"
    );
    let report = plain.count(consumer.records());
    assert!(report.is_complete(), "{report}");
}
