//! SIGHUP reloads the config: a source added takes effect while the old
//! source loses and repeats nothing; an invalid config is refused and the
//! running one goes on; systemd hears READY, RELOADING and STOPPING.

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tailrace_e2e::{file_to_kafka, wait_until, Agent, Broker, Consumer, Report, SeqLines};

const TOPIC: &str = "logs";

/// The standard config, plus (when `extra`) a second file source on
/// DIR/extra/*.log into the same channel.
fn config(dir: &std::path::Path, bootstrap: &str, extra: bool) -> String {
    let mut c = file_to_kafka(dir, bootstrap, TOPIC);
    if extra {
        let src = format!(
            "  extra:\n    type: file\n    include: [\"{}/extra/*.log\"]\n    channels: [main]\n",
            dir.display()
        );
        c = c.replacen("channels:\n  main:", &format!("{src}channels:\n  main:"), 1);
    }
    c
}

fn extra_line(i: u64) -> String {
    format!("extra-{i:06}")
}

#[test]
fn sighup_adds_a_source_while_the_old_one_loses_and_repeats_nothing() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    std::fs::create_dir_all(dir.path().join("extra")).unwrap();
    let agent = Agent::start(dir.path(), &config(dir.path(), &broker.bootstrap(), false));
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(20_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(20_000, Duration::from_secs(60));

    // Lines of the extra file exist before the reload; the new source must
    // read them from the start (a file it never saw, found at startup).
    const E: u64 = 3_000;
    let mut extra = std::fs::File::create(dir.path().join("extra/extra.log")).unwrap();
    for i in 0..E {
        writeln!(extra, "{}", extra_line(i)).unwrap();
    }
    lines.append(10_000);
    std::fs::write(
        agent.config_path(),
        config(dir.path(), &broker.bootstrap(), true),
    )
    .unwrap();
    agent.reload_and_wait();
    lines.append(10_000);

    let total = 40_000 + E as usize;
    consumer.read_count(total, Duration::from_secs(60));
    let records = consumer.read_for(Duration::from_secs(2)).to_vec();
    let (app, rest): (Vec<_>, Vec<_>) =
        records.iter().partition(|r| r.payload.starts_with(b"seq="));
    let report = Report::new(40_000, app.iter().map(|r| r.payload.clone()));
    assert!(
        report.missing.is_empty(),
        "the old source lost lines: {report}"
    );
    assert_eq!(
        report.duplicates, 0,
        "the old source repeated lines: {report}"
    );
    let extras: Vec<String> = rest
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    for i in 0..E {
        let n = extras.iter().filter(|l| **l == extra_line(i)).count();
        assert_eq!(n, 1, "extra line {i} arrived {n} times");
    }
    assert_eq!(extras.len() as u64, E, "nothing else arrived");
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_running_one() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let mut agent = Agent::start(dir.path(), &config(dir.path(), &broker.bootstrap(), false));
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(5_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(5_000, Duration::from_secs(60));
    let good = std::fs::read_to_string(agent.config_path()).unwrap();
    std::fs::write(agent.config_path(), good.replace("type: file", "type: fil")).unwrap();
    agent.reload();
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .log_tail(50)
            .contains("the new config is refused")),
        "{}",
        agent.log_tail(50)
    );
    assert!(
        agent.log_tail(50).contains("unknown source type \"fil\""),
        "the refusal says why: {}",
        agent.log_tail(50)
    );
    lines.append(5_000);
    let got: Vec<Vec<u8>> = consumer
        .read_count(10_000, Duration::from_secs(60))
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    let report = Report::new(10_000, &got);
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert!(agent.is_running());
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let socket = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut agent = Agent::start_with_env(
        dir.path(),
        &config(dir.path(), &broker.bootstrap(), false),
        &[("NOTIFY_SOCKET", socket.to_str().unwrap())],
    );
    let next = || {
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    agent.reload();
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    agent.terminate();
    assert_eq!(next(), "STOPPING=1");
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
}
