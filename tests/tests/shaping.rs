//! Shaping and routing end to end: interceptors add, extract and filter;
//! the sink keys by a field, so every key stays on one partition, and
//! writes JSON that carries every field.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::Duration;

use tailrace_e2e::config::{Channel, Interceptor, Sink, Source, MAIN};
use tailrace_e2e::http::{get, sample};
use tailrace_e2e::{wait_until, Agent, Broker, Config, Consumer};

const USERS: [&str; 5] = ["ann", "bob", "cid", "dee", "eve"];

/// Line `i`: a sequence number, a user, and DEBUG on every seventh line.
fn line(i: u64) -> String {
    let level = if i % 7 == 3 { "DEBUG" } else { "INFO" };
    format!(
        "seq={i:010} {level} user={} ts=2026-11-21T10:00:{:02}.000Z work done",
        USERS[(i % 5) as usize],
        i % 60
    )
}

#[test]
fn keys_stay_on_one_partition_and_json_carries_every_field() {
    let broker = Broker::start();
    broker.create_topic("logs-app", 4);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    const N: u64 = 7_000;
    let mut file = std::fs::File::create(logs.join("app.log")).unwrap();
    for i in 0..N {
        writeln!(file, "{}", line(i)).unwrap();
    }
    drop(file);
    let app = Source::file(logs.join("*.log"))
        .interceptor(Interceptor::of_type("host"))
        .interceptor(Interceptor::of_type("static").set("fields.env", "prod"))
        .interceptor(
            Interceptor::of_type("regex_filter")
                .pattern("DEBUG")
                .exclude(true),
        )
        .interceptor(
            Interceptor::of_type("regex_extract").pattern(r"user=(?P<user>[a-z]+) ts=(?P<ts>\S+)"),
        )
        .interceptor(
            Interceptor::of_type("timestamp")
                .field("ts")
                .format("rfc3339"),
        );
    let kafka = Sink::of_type("kafka")
        .bootstrap_servers(&broker.bootstrap())
        .topic("logs-{source}")
        .key("{user}")
        .encoding("json")
        .headers(true);
    let config = Config::new(dir.path().join("data"))
        .source("app", app)
        .channel(MAIN, Channel::of_type("memory"))
        .sink("kafka", kafka);
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let debug_lines = (0..N).filter(|i| i % 7 == 3).count() as u64;
    let expected = N - debug_lines;
    let mut consumer = Consumer::new(&broker.bootstrap(), "logs-app");
    let records = consumer
        .read_count(expected as usize, Duration::from_secs(60))
        .to_vec();
    assert_eq!(records.len() as u64, expected, "{}", agent.log_tail(30));

    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let mut partitions_of: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.payload)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.payload)));
        let message = v["message"].as_str().expect("message is a string");
        let seq: u64 = message[4..14].parse().unwrap();
        assert!(seen.insert(seq), "seq {seq} arrived twice");
        assert_eq!(message, line(seq), "the line is the message");
        assert!(!message.contains("DEBUG"), "filtered lines do not arrive");
        let user = USERS[(seq % 5) as usize];
        assert_eq!(v["user"], user);
        assert_eq!(v["env"], "prod");
        assert_eq!(v["host"], host.as_str());
        assert_eq!(v["source"], "app");
        assert!(v["path"].as_str().unwrap().ends_with("/logs/app.log"));
        assert!(v["offset"].as_u64().is_some());
        assert_eq!(
            v["timestamp"],
            format!("2026-11-21T10:00:{:02}.000Z", seq % 60),
            "parsed from the line"
        );
        assert_eq!(r.key.as_deref(), Some(user.as_bytes()), "keyed by user");
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("source").as_deref(), Some("app"));
        assert_eq!(header("host").as_deref(), Some(host.as_str()));
        assert_eq!(
            header("offset"),
            v["offset"].as_u64().map(|o| o.to_string())
        );
        partitions_of
            .entry(user.to_string())
            .or_default()
            .insert(r.partition);
    }
    assert_eq!(seen.len() as u64, expected);
    for (user, parts) in &partitions_of {
        assert_eq!(
            parts.len(),
            1,
            "user {user} spread over partitions {parts:?}"
        );
    }
    let used: BTreeSet<i32> = partitions_of.values().flatten().copied().collect();
    assert!(
        used.len() > 1,
        "five keys over four partitions should use more than one: {used:?}"
    );
    // Filtered lines are counted as filtered, not dropped.
    let admin = agent.admin_address().to_string();
    let filtered = "tailrace_events_filtered_total{source=\"app\"}";
    assert!(
        wait_until(Duration::from_secs(10), || get(&admin, "/metrics")
            .ok()
            .and_then(|r| sample(&r.body, filtered))
            == Some(debug_lines as f64)),
        "filtered counter is not {debug_lines}"
    );
    // The dropped series exist from the start (at 0, for alerts); none
    // may have counted anything.
    let metrics = get(&admin, "/metrics").unwrap().body;
    let dropped: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tailrace_events_dropped_total{"))
        .collect();
    assert!(
        dropped.iter().all(|l| l.ends_with(" 0")),
        "nothing counted as dropped:\n{metrics}"
    );
}
