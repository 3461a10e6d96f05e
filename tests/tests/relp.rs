//! The relp source against real rsyslog (imfile reads a file of numbered
//! lines, omrelp forwards them) and a real broker, read back with a real
//! consumer: every line arrives although the agent is killed -9 while
//! Kafka is cut off, and the repeats are bounded by omrelp's window.

use std::time::Duration;

use tailrace_e2e::config::{Channel, Source, MAIN};
use tailrace_e2e::sockets::Rsyslog;
use tailrace_e2e::{
    free_port, wait_until, Agent, Broker, Config, Consumer, Proxy, Report, SeqLines,
};

const TOPIC: &str = "logs";
/// librelp's window: at most this many frames are unanswered at once, so
/// at most this many are sent again after a broken connection.
const OMRELP_WINDOW: u64 = 128;

/// A relp source on `127.0.0.1:port`.
fn relp_on(port: u16) -> Source {
    Source::relp(&format!("127.0.0.1:{port}"))
}

/// Lines written; `TAILRACE_RELP_LINES` for a longer run.
fn lines_to_write() -> u64 {
    tailrace_e2e::size_knob("TAILRACE_RELP_LINES", 20_000)
}

/// rsyslogd reading `file` with imfile and forwarding each line as it is
/// (template `%msg%`) with omrelp to `127.0.0.1:port`, retrying forever;
/// `tls` are omrelp's TLS parameters, if any.
fn rsyslog_imfile_to_omrelp(file: &std::path::Path, port: u16, tls: &str) -> Rsyslog {
    Rsyslog::with_config(&format!(
        r#"module(load="imfile" mode="polling" PollingInterval="1")
module(load="omrelp" tls.tlslib="openssl")
template(name="raw" type="string" string="%msg%")
input(type="imfile" File="{}" Tag="seq:")
action(type="omrelp" target="127.0.0.1" port="{port}" template="raw" {tls}
       action.resumeRetryCount="-1" action.resumeInterval="1"
       queue.type="LinkedList" queue.size="1000000")
"#,
        file.display()
    ))
}

/// A sample from the agent's `/metrics`; 0 while the agent (just
/// restarted) does not answer yet, or the sample is absent.
fn metric(admin: &str, name: &str) -> f64 {
    tailrace_e2e::http::get(admin, "/metrics")
        .ok()
        .and_then(|r| tailrace_e2e::http::sample(&r.body, name))
        .unwrap_or(0.0)
}

/// Reads the topic until every line of `lines` arrived (3 minutes at
/// most), then 2 s more for late repeats; asserts that none is missing.
fn every_line_arrives(
    broker: &Broker,
    lines: &SeqLines,
    agent: &Agent,
    rsyslog: &Rsyslog,
) -> Report {
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_until(Duration::from_secs(180), |r| {
        lines.count(r.iter().map(|r| &r.payload)).is_complete()
    });
    consumer.read_for(Duration::from_secs(2));
    let report = lines.count(consumer.records().iter().map(|r| &r.payload));
    assert!(
        report.is_complete(),
        "every one of {} lines arrives: {report}\nagent:\n{}\nrsyslog:\n{}",
        lines.written(),
        agent.log_tail(40),
        rsyslog.log()
    );
    report
}

#[test]
fn rsyslog_omrelp_loses_nothing_when_the_agent_is_killed_while_kafka_is_cut() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&broker.bootstrap());
    let port = free_port();
    let config =
        Config::sockets_to_kafka(dir.path(), &proxy.address(), TOPIC).source("relp", relp_on(port));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    let total = lines_to_write();
    let lines = SeqLines::create(dir.path().join("app.log"));
    let rsyslog = rsyslog_imfile_to_omrelp(lines.path(), port, "");
    let writer = lines.spawn_writer(200, Duration::from_millis(10), total);

    let read = || metric(&admin, "tailrace_source_events_total{source=\"relp\"}");
    let delivered = || {
        metric(
            &admin,
            "tailrace_sink_events_delivered_total{sink=\"kafka\"}",
        )
    };
    let kills = 2;
    for round in 0..kills {
        // Each run reads a share of the lines, then Kafka is cut off and
        // the agent is killed while it holds records it has not answered.
        let share = total * (round + 1) / (kills + 2);
        assert!(
            wait_until(Duration::from_secs(120), || read() >= (share / 4) as f64),
            "run {round}: the agent reads from rsyslog ({} read)\nagent:\n{}\nrsyslog:\n{}",
            read(),
            agent.log_tail(30),
            rsyslog.log()
        );
        proxy.cut();
        assert!(
            wait_until(Duration::from_secs(30), || read() > delivered()),
            "run {round}: records read but not delivered while Kafka is cut"
        );
        let unanswered = read() - delivered();
        agent.kill();
        eprintln!("run {round}: killed with {unanswered} records read and not delivered");
        proxy.restore();
        agent.restart();
    }
    assert!(
        wait_until(Duration::from_secs(120), || !writer.is_writing()),
        "the writer finishes"
    );
    let lines = writer.stop();
    let report = every_line_arrives(&broker, &lines, &agent, &rsyslog);
    assert!(
        report.duplicates <= kills * OMRELP_WINDOW,
        "repeats are bounded by omrelp's window ({OMRELP_WINDOW}) per kill: {report}"
    );
    eprintln!("relp through {kills} kills: {report}");
}

/// RELP over TLS with rsyslog's omrelp (librelp with OpenSSL), checking
/// the agent's certificate by name: every line arrives.
#[test]
fn rsyslog_omrelp_over_tls_delivers_every_line() {
    const LINES: u64 = 2_000;
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let pki = tailrace_e2e::secure::Pki::new();
    let port = free_port();
    let relp = relp_on(port).tls(pki.path("server.pem"), pki.path("server.key"));
    let config =
        Config::sockets_to_kafka(dir.path(), &broker.bootstrap(), TOPIC).source("relp", relp);
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let mut lines = SeqLines::create(dir.path().join("app.log"));
    lines.append(LINES);
    let tls = format!(
        r#"tls="on" tls.caCert="{}" tls.authMode="name" tls.permittedPeer=["localhost"]"#,
        pki.ca().display()
    );
    assert!(wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let rsyslog = rsyslog_imfile_to_omrelp(lines.path(), port, &tls);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(LINES as usize, Duration::from_secs(60));
    consumer.read_for(Duration::from_secs(1));
    let report = lines.count(consumer.records().iter().map(|r| &r.payload));
    assert!(
        // A session that breaks before its answers arrive is sent again
        // (seen once when rsyslog connected while the agent was starting).
        report.is_complete() && report.duplicates <= OMRELP_WINDOW,
        "{report}\nagent:\n{}\nrsyslog:\n{}",
        agent.log_tail(20),
        rsyslog.log()
    );
}

/// Lines of the disk channel scene; `TAILRACE_RELP_DISK_LINES` for a
/// longer run.
fn disk_lines() -> u64 {
    tailrace_e2e::size_knob("TAILRACE_RELP_DISK_LINES", 20_000)
}

/// omrelp into a disk channel while Kafka is absent: each message is
/// answered once the channel wrote (and synced) it, so once rsyslog has
/// every answer the agent can be killed -9 and rsyslog has nothing to send
/// again; when the broker and the agent start, every line arrives, once.
#[test]
fn rsyslog_omrelp_into_a_disk_channel_loses_and_repeats_nothing_through_sigkill() {
    let n = disk_lines();
    let broker_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Nothing is given up on or spooled while the broker is absent.
    let config = Config::sockets_to_kafka(dir.path(), &format!("127.0.0.1:{broker_port}"), TOPIC)
        .source("relp", relp_on(port))
        .channel(MAIN, Channel::disk(67108864))
        .edit_sink("kafka", |k| {
            k.delivery_timeout_ms(600000)
                .spool("queue_full_timeout_ms", 600000)
        });
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    let mut lines = SeqLines::create(dir.path().join("app.log"));
    lines.append(n);
    let rsyslog = rsyslog_imfile_to_omrelp(lines.path(), port, "");
    let answered = || {
        metric(
            &admin,
            "tailrace_relp_messages_answered_total{source=\"relp\"}",
        )
    };
    assert!(
        wait_until(Duration::from_secs(120), || answered() >= n as f64),
        "the agent answers all {n} messages ({} answered)\nagent:\n{}\nrsyslog:\n{}",
        answered(),
        agent.log_tail(30),
        rsyslog.log()
    );
    assert_eq!(answered(), n as f64, "one answer per message");
    let held = metric(&admin, "tailrace_channel_events{channel=\"main\"}");
    assert_eq!(held, n as f64, "the disk channel holds every answered line");
    assert_eq!(
        metric(
            &admin,
            "tailrace_sink_events_delivered_total{sink=\"kafka\"}"
        ),
        0.0,
        "Kafka is absent"
    );
    agent.kill();
    let broker = Broker::start_on(broker_port);
    broker.create_topic(TOPIC, 1);
    agent.restart();
    let report = every_line_arrives(&broker, &lines, &agent, &rsyslog);
    assert_eq!(
        report.duplicates, 0,
        "rsyslog had every answer: it sent nothing again: {report}"
    );
    assert!(!report.out_of_order, "{report}");
    assert_eq!(
        tailrace_e2e::sockets::metric(&admin, "tailrace_source_events_total{source=\"relp\"}"),
        0.0,
        "the restarted agent read nothing from rsyslog"
    );
}
