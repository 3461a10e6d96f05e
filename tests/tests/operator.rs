//! What an operator reaches for: a config split over a directory, `tailrace
//! tap`, `tailrace top` in a terminal, `tailrace test`, the console and
//! blackhole sinks, and the packaged dashboard and alerting rules checked
//! against the metrics a running agent exports.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tailrace_e2e::config::{Channel, Interceptor, Sink, Source, MAIN};
use tailrace_e2e::{
    free_port, http, run_tailrace, seq_of, tailrace, wait_until, Agent, Broker, Config, Consumer,
    Report, SeqLines,
};

const TOPIC: &str = "logs";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A config over three files in DIR/conf.d: settings and the channel, the
/// file source on DIR/logs, the kafka sink. Returns the directory and the
/// admin address.
fn split_config(dir: &Path, bootstrap: &str) -> (PathBuf, String) {
    let conf = dir.join("conf.d");
    let admin = format!("127.0.0.1:{}", free_port());
    let main = Config::empty()
        .set("data_dir", dir.join("data"))
        .admin_address(&admin)
        .summary_interval_ms(1000)
        .channel(MAIN, Channel::of_type("memory"));
    let app = Config::empty().source("app", Source::file(dir.join("logs/*.log")));
    let kafka = Config::empty().sink("kafka", kafka_to(bootstrap));
    write(&conf.join("10-main.yaml"), &main.to_yaml());
    write(&conf.join("20-app.yaml"), &app.to_yaml());
    write(&conf.join("30-kafka.yaml"), &kafka.to_yaml());
    (conf, admin)
}

/// A kafka sink to [`TOPIC`] at librdkafka's linger of 5 ms, nothing else set.
fn kafka_to(bootstrap: &str) -> Sink {
    Sink::of_type("kafka")
        .bootstrap_servers(bootstrap)
        .topic(TOPIC)
        .librdkafka("queue.buffering.max.ms", "5")
}

#[test]
fn config_split_over_three_files_runs_and_sighup_picks_up_a_new_file() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let (conf, admin) = split_config(dir.path(), &broker.bootstrap());
    let out = run_tailrace(["validate".as_ref(), "--config".as_ref(), conf.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("valid (1 sources, 1 channels, 1 sinks)"),
        "{out:?}"
    );
    let agent = Agent::start_config(dir.path(), &conf, &admin);
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(10_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(10_000, Duration::from_secs(60));

    // A fourth file, dropped into the directory as configuration
    // management would, adds a source; lines of its file exist already.
    const E: usize = 2_000;
    let extra: String = (0..E).map(|i| format!("extra-{i:06}\n")).collect();
    write(&dir.path().join("extra/extra.log"), &extra);
    let extra_source = Source::file(dir.path().join("extra/*.log"));
    write(
        &conf.join("40-extra.yaml"),
        &Config::empty().source("extra", extra_source).to_yaml(),
    );
    agent.reload_and_wait();
    lines.append(10_000);
    consumer.read_count(20_000 + E, Duration::from_secs(60));
    let records = consumer.read_for(Duration::from_secs(2)).to_vec();
    let (app, rest): (Vec<_>, Vec<_>) =
        records.iter().partition(|r| r.payload.starts_with(b"seq="));
    let report = Report::new(20_000, app.iter().map(|r| r.payload.clone()));
    assert!(report.is_complete(), "the first source: {report}");
    assert_eq!(report.duplicates, 0, "the first source: {report}");
    let extras: BTreeSet<_> = rest.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(rest.len(), E, "lines of the new source, with repeats");
    assert_eq!(extras.len(), E, "distinct lines of the new source");
}

#[test]
fn a_sink_defined_twice_across_files_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, _) = split_config(dir.path(), "127.0.0.1:9092");
    write(
        &conf.join("40-again.yaml"),
        "# the same sink, again\nsinks:\n  kafka:\n    type: blackhole\n    channel: main\n",
    );
    let out = run_tailrace(["validate".as_ref(), "--config".as_ref(), conf.as_os_str()]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = conf.join("30-kafka.yaml");
    let second = conf.join("40-again.yaml");
    let expected = format!(
        "{}:3:3: sinks.kafka: sink kafka is defined twice: here and in {}:2:3",
        second.display(),
        first.display()
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    // Several --config flags merge the same way.
    let out = run_tailrace([
        "validate".as_ref(),
        "--config".as_ref(),
        conf.join("10-main.yaml").as_os_str(),
        "--config".as_ref(),
        conf.join("20-app.yaml").as_os_str(),
        "--config".as_ref(),
        first.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A config whose source extracts `user` and whose sink keys by it.
fn keyed_config(dir: &Path, bootstrap: &str, admin: &str) -> PathBuf {
    let path = dir.join("tailrace.yaml");
    let app = Source::file(dir.join("logs/*.log"))
        .interceptor(Interceptor::of_type("regex_extract").pattern("user=(?P<user>u[0-9]+)"));
    let config = Config::empty()
        .set("data_dir", dir.join("data"))
        .admin_address(admin)
        .summary_interval_ms(0)
        .source("app", app)
        .channel(MAIN, Channel::of_type("memory"))
        .sink("kafka", kafka_to(bootstrap).key("{user}"));
    write(&path, &config.to_yaml());
    path
}

fn append_users(path: &Path, from: u64, n: u64) {
    use std::io::Write as _;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let text: String = (from..from + n)
        .map(|i| format!("seq={i:010} user=u{} action=login\n", i % 7))
        .collect();
    f.write_all(text.as_bytes()).unwrap();
}

/// `tailrace tap ARGS`, its stdout lines collected by a thread.
struct Tap {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    fn start(config: &Path, args: &[&str]) -> Tap {
        let mut child = tailrace()
            .arg("tap")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tailrace tap");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Tap {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Waits for the tap to exit by itself; its status and every line.
    fn finish(
        mut self,
        timeout: Duration,
    ) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
        let exited = wait_until(timeout, || self.child.try_wait().unwrap().is_some());
        assert!(exited, "tailrace tap did not exit within {timeout:?}");
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        let lines = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (status, lines, stderr)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tap_shows_lines_appended_after_it_attached_with_fields_topic_and_key() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = keyed_config(dir.path(), &broker.bootstrap(), &admin);
    let agent = Agent::start_config(dir.path(), &config, &admin);
    let log = dir.path().join("logs/app.log");
    append_users(&log, 0, 1_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(1_000, Duration::from_secs(60));

    let attached = |n: usize| agent.log().matches("tap attached").count() >= n;
    let tap = Tap::start(&config, &["--sink", "kafka", "--limit", "200"]);
    assert!(
        wait_until(Duration::from_secs(20), || attached(1)),
        "{}",
        agent.log_tail(20)
    );
    append_users(&log, 1_000, 1_000);
    let (status, lines, stderr) = tap.finish(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert_eq!(lines.len(), 200, "{stderr}");
    for l in &lines {
        assert_eq!(l["component"], "sink kafka", "{l}");
        let payload = l["payload"].as_str().unwrap();
        let seq = seq_of(payload.as_bytes()).unwrap_or_else(|| panic!("{l}"));
        assert!(seq >= 1_000, "a line from before the tap attached: {l}");
        let user = format!("u{}", seq % 7);
        assert_eq!(l["fields"]["user"], user.as_str(), "{l}");
        assert_eq!(l["key"], user.as_str(), "{l}");
        assert_eq!(l["topic"], TOPIC, "{l}");
    }

    // A source's tap shows the fields after its interceptors, no topic.
    let tap = Tap::start(&config, &["--source", "app", "--limit", "5"]);
    assert!(
        wait_until(Duration::from_secs(20), || attached(2)),
        "{}",
        agent.log_tail(20)
    );
    append_users(&log, 2_000, 10);
    let (status, lines, stderr) = tap.finish(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert_eq!(lines.len(), 5);
    assert!(
        lines.iter().all(|l| l["component"] == "source app"
            && l.get("topic").is_none()
            && l["fields"]["user"].is_string()),
        "{lines:?}"
    );

    // Every line went on to Kafka once, tapped or not.
    consumer.read_count(2_010, Duration::from_secs(60));
    let seqs: Vec<u64> = consumer
        .read_for(Duration::from_secs(1))
        .iter()
        .filter_map(|r| seq_of(&r.payload))
        .collect();
    let distinct: HashSet<_> = seqs.iter().collect();
    assert_eq!((seqs.len(), distinct.len()), (2_010, 2_010));

    // An unknown component is refused with the known ones.
    let out = run_tailrace([
        "tap".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--sink".as_ref(),
        "nope".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no sink nope") && stderr.contains("source app, sink kafka"),
        "{stderr}"
    );
    let metrics = http::get(&admin, "/metrics").unwrap().body;
    assert!(
        metrics.contains("tailrace_tap_events_dropped_total"),
        "{metrics}"
    );
}

/// A tmux session running a command, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn start(command: &str) -> Tmux {
        let name = format!("tailrace-top-{}-{}", std::process::id(), free_port());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "200",
                "-y",
                "50",
                command,
            ])
            .status()
            .expect("tmux is needed for this test (apt-get install tmux)");
        assert!(ok.success());
        Tmux(name)
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// The cells of the table row that starts with `name`.
fn row(screen: &str, name: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|l| {
        let cells: Vec<String> = l
            .replace('│', " ")
            .split_whitespace()
            .map(String::from)
            .collect();
        (cells.first().map(String::as_str) == Some(name)).then_some(cells)
    })
}

#[test]
fn top_in_tmux_shows_the_source_the_channel_and_the_sink_moving() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let (conf, admin) = split_config(dir.path(), &broker.bootstrap());
    let _agent = Agent::start_config(dir.path(), &conf, &admin);
    let writer = SeqLines::create(dir.path().join("logs/app.log")).spawn_writer(
        200,
        Duration::from_millis(20),
        10_000_000,
    );
    let top = Tmux::start(&format!(
        "{} top --config {}",
        tailrace_e2e::tailrace_bin().display(),
        conf.display()
    ));
    let moving = |cells: Option<Vec<String>>, at: &[usize]| {
        cells.is_some_and(|c| at.iter().all(|&i| c.get(i).is_some_and(|v| v != "0")))
    };
    let mut screen = String::new();
    let shown = wait_until(Duration::from_secs(30), || {
        screen = top.screen();
        // app file EVENTS/s ..; main IN/s OUT/s ..; kafka kafka OUT/s ..
        moving(row(&screen, "app"), &[2])
            && moving(row(&screen, "main"), &[1, 2])
            && moving(row(&screen, "kafka"), &[2])
            && row(&screen, "kafka").is_some_and(|c| c.last().map(String::as_str) == Some("ready"))
    });
    assert!(
        shown,
        "no moving source, channel and ready sink on the screen:\n{screen}"
    );
    drop(writer);
    Command::new("tmux")
        .args(["send-keys", "-t", &top.0, "q"])
        .status()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !top.alive()),
        "q did not quit:\n{}",
        top.screen()
    );
}

#[test]
fn tailrace_test_passes_and_fails_showing_both_values() {
    let config = repo().join("config/interceptors.yaml");
    let tests = repo().join("config/tests/interceptors.yaml");
    let out = run_tailrace([
        "test".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--tests".as_ref(),
        tests.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 tests, 3 passed, 0 failed"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing.tests.yaml");
    write(
        &failing,
        "tests:\n  - name: the key is the user\n    source: app\n    input: \"seq=1 user=alice\"\n    expect:\n      key: bob\n      topic: logs-app\n",
    );
    let out = run_tailrace([
        "test".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--tests".as_ref(),
        failing.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("key"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("expected \"bob\"") && line.contains("actual \"alice\""),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL  the key is the user"), "{stdout}");
}

#[test]
fn console_sink_prints_every_line_once_and_blackhole_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::empty()
        .set("data_dir", dir.path().join("data"))
        .summary_interval_ms(0)
        .source(
            "app",
            Source::file(dir.path().join("logs/*.log")).channels(&[MAIN, "measured"]),
        )
        .channel(MAIN, Channel::of_type("memory"))
        .channel("measured", Channel::of_type("memory"))
        .sink("out", Sink::of_type("console"))
        .sink("hole", Sink::of_type("blackhole").channel("measured"));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(5_000);
    let printed = |agent: &Agent| -> Vec<serde_json::Value> {
        agent
            .log()
            .lines()
            .filter(|l| l.starts_with("{\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || printed(&agent).len() >= 5_000),
        "{}",
        agent.log_tail(20)
    );
    let delivered =
        |m: &str| http::sample(m, "tailrace_sink_events_delivered_total{sink=\"hole\"}");
    assert!(
        wait_until(Duration::from_secs(30), || delivered(
            &http::get(agent.admin_address(), "/metrics").unwrap().body
        ) == Some(5_000.0)),
        "the blackhole did not count 5000"
    );
    agent.terminate();
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
    let json = printed(&agent);
    let report = Report::new(
        5_000,
        json.iter()
            .map(|v| v["message"].as_str().unwrap().as_bytes().to_vec()),
    );
    assert!(report.is_complete() && report.duplicates == 0, "{report}");
    assert!(json
        .iter()
        .all(|v| v["source"] == "app" && v["path"].is_string()));
    // Both sinks acknowledged everything: the position is at the end.
    let cp = agent.checkpoints();
    assert_eq!(
        cp[0].offset,
        5_000 * tailrace_e2e::LINE_LEN as u64,
        "{cp:?}"
    );
}

/// Metric names in a text: `tailrace_...` and `process_...` tokens.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["tailrace_", "process_"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let start = from + i;
            let word_start = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |e| start + e);
            if word_start {
                names.insert(text[start..end].to_string());
            }
            from = end;
        }
    }
    names
}

#[test]
fn dashboard_and_alert_rules_use_only_metrics_a_running_agent_exports() {
    let dashboard_path = repo().join("packaging/grafana/tailrace.json");
    let rules_path = repo().join("packaging/prometheus/tailrace.rules.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules_path)
        .output()
        .expect("promtool (apt-get install prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = std::fs::read_to_string(&rules_path).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(
        alerts,
        [
            "TailraceEventsDropped",
            "TailraceEventsFailed",
            "TailraceSpoolGrowing",
            "TailraceDeadLetters",
            "TailraceSinkNotReady",
            "TailraceFileLagging",
            "TailraceTopicNotDurable"
        ]
    );

    // The dashboard has Grafana's structure: panels with a type, a title, a
    // place on the grid and Prometheus queries.
    let text = std::fs::read_to_string(&dashboard_path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let panels = dashboard["panels"].as_array().unwrap();
    let mut exprs = String::new();
    for p in panels {
        assert!(
            p["id"].is_u64() && p["type"].is_string() && p["title"].is_string(),
            "{p}"
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "{p}");
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            let e = t["expr"].as_str().unwrap();
            assert!(!e.is_empty() && t["refId"].is_string(), "{p}");
            exprs.push_str(e);
            exprs.push('\n');
        }
    }
    for wanted in [
        "tailrace_source_events_total", "tailrace_sink_events_delivered_total", "tailrace_channel_events",
        "tailrace_file_lag_bytes", "tailrace_spool_events", "tailrace_dead_letter_events",
        "histogram_quantile(0.99, sum by (le, instance, sink) (rate(tailrace_delivery_latency_seconds_bucket",
        "tailrace_component_ready",
    ] {
        assert!(exprs.contains(wanted), "no panel uses {wanted}");
    }

    // A running agent, with a file read and delivered, exports every name.
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let (conf, admin) = split_config(dir.path(), &broker.bootstrap());
    let _agent = Agent::start_config(dir.path(), &conf, &admin);
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(100);
    Consumer::new(&broker.bootstrap(), TOPIC).read_count(100, Duration::from_secs(60));
    let mut exported = BTreeSet::new();
    assert!(wait_until(Duration::from_secs(20), || {
        let body = http::get(&admin, "/metrics")
            .map(|r| r.body)
            .unwrap_or_default();
        exported = metric_names(&body);
        exported.contains("tailrace_file_lag_bytes")
            && exported.contains("tailrace_delivery_latency_seconds_bucket")
            // Set by the sink's durability watch once it asked the broker.
            && exported.contains("tailrace_sink_topic_replication_factor")
    }));
    let used: BTreeSet<String> = metric_names(&exprs)
        .into_iter()
        .chain(metric_names(&rules))
        .collect();
    assert!(used.len() >= 12, "{used:?}");
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
}
