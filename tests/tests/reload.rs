//! SIGHUP reloads the config: a source added takes effect while the old
//! source loses and repeats nothing; an invalid config is refused and the
//! running one goes on; systemd hears READY, RELOADING and STOPPING, and
//! WATCHDOG=1 only while no component is stuck.

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tailrace_e2e::config::{Channel, Sink, Source, MAIN};
use tailrace_e2e::sockets::metric;
use tailrace_e2e::{
    free_port, scene, wait_until, Agent, Broker, Config, Consumer, Report, SeqLines,
};

const TOPIC: &str = "logs";

/// The standard config, plus (when `extra`) a second file source on
/// DIR/extra/*.log into the same channel.
fn config(dir: &std::path::Path, bootstrap: &str, extra: bool) -> Config {
    let config = Config::file_to_kafka(dir, bootstrap, TOPIC);
    if extra {
        config.source("extra", Source::file(dir.join("extra/*.log")))
    } else {
        config
    }
}

fn extra_line(i: u64) -> String {
    format!("extra-{i:06}")
}

#[test]
fn sighup_adds_a_source_while_the_old_one_loses_and_repeats_nothing() {
    let (broker, dir, _) = scene(TOPIC);
    std::fs::create_dir_all(dir.path().join("extra")).unwrap();
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &broker.bootstrap(), false).to_yaml(),
    );
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
        config(dir.path(), &broker.bootstrap(), true).to_yaml(),
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

/// A broker, and the standard config's agent whose first 5,000 lines
/// arrived at the consumer returned.
fn running_with_5000_lines() -> (Broker, tempfile::TempDir, Agent, SeqLines, Consumer) {
    let (broker, dir, _) = scene(TOPIC);
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &broker.bootstrap(), false).to_yaml(),
    );
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(5_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(5_000, Duration::from_secs(60));
    (broker, dir, agent, lines, consumer)
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_running_one() {
    let (broker, dir, mut agent, mut lines, mut consumer) = running_with_5000_lines();
    let bad = config(dir.path(), &broker.bootstrap(), false)
        .admin_address(agent.admin_address())
        .edit_source("app", |s| s.set("type", "fil"));
    std::fs::write(agent.config_path(), bad.to_yaml()).unwrap();
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
    let (broker, dir, _) = scene(TOPIC);
    let socket = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut agent = Agent::start_with_env(
        dir.path(),
        &config(dir.path(), &broker.bootstrap(), false).to_yaml(),
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

/// Asserts that the agent logs `text` within `timeout`.
fn wait_for_log(agent: &Agent, text: &str, timeout: Duration) {
    assert!(
        wait_until(timeout, || agent.log().contains(text)),
        "the agent did not log {text:?} within {timeout:?}: {}",
        agent.log_tail(50)
    );
}

/// systemd's watchdog interval for the watchdog tests: the agent pings every
/// 2 s and calls a component stuck after 2 s of silence.
const WATCHDOG_USEC: &str = "4000000";
const PING_EVERY: Duration = Duration::from_secs(2);

/// What the agent tells systemd, read from the notify socket.
struct Notifications {
    socket: UnixDatagram,
}

impl Notifications {
    fn bind(path: &std::path::Path) -> Notifications {
        let socket = UnixDatagram::bind(path).unwrap();
        Notifications { socket }
    }

    /// The next datagram within `within`, if one comes.
    fn next(&self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 256];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for READY=1, past the pings before it.
    fn ready(&self, agent: &Agent) {
        while let Some(s) = self.next(Duration::from_secs(30)) {
            if s == "READY=1" {
                return;
            }
        }
        panic!("no READY=1 within 30 s: {}", agent.log_tail(30));
    }

    /// Waits for `n` more WATCHDOG=1 pings, each within three ping periods
    /// of the one before; panics naming what came instead.
    fn pings(&self, n: usize, agent: &Agent) {
        let mut got = 0;
        while got < n {
            match self.next(3 * PING_EVERY) {
                Some(s) if s == "WATCHDOG=1" => got += 1,
                Some(_) => {}
                None => panic!(
                    "ping {} of {n} did not come within {:?}: {}",
                    got + 1,
                    3 * PING_EVERY,
                    agent.log_tail(30)
                ),
            }
        }
    }

    /// Everything already sent, without waiting.
    fn drain(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        while let Ok(n) = self.socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.socket.set_nonblocking(false).unwrap();
        got
    }
}

/// Issue 16: nothing noticed a hung thread. The agent runs as systemd
/// runs it with `WatchdogSec=`; its broker is absent and its spool tiny,
/// so the sink blocks and the file source waits on a full channel: both
/// are held back, neither is hung, and the pings go on. Then the debug
/// fault hook hangs `who`'s loop: the log names it and the pings stop.
fn watchdog_pings_while_held_back_and_stops_for(who: &str, stuck: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    const LINES: u64 = 100_000;
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(LINES);
    let absent = format!("127.0.0.1:{}", free_port());
    let yaml = Config::file_to_kafka(dir.path(), &absent, TOPIC)
        .edit_channel(MAIN, |c| c.capacity_events(1_000))
        .edit_sink("kafka", |k| {
            k.spool("max_bytes", 65_536)
                .spool("when_full", "block")
                .spool("queue_full_timeout_ms", 200)
                .librdkafka("queue.buffering.max.messages", "1000")
        })
        .to_yaml();
    let socket = dir.path().join("notify.sock");
    let notes = Notifications::bind(&socket);
    let trigger = dir.path().join("hang-now");
    let agent = Agent::start_with_env(
        dir.path(),
        &yaml,
        &[
            ("NOTIFY_SOCKET", socket.to_str().unwrap()),
            ("WATCHDOG_USEC", WATCHDOG_USEC),
            ("TAILRACE_FAULT_HANG", who),
            ("TAILRACE_FAULT_HANG_WHEN", trigger.to_str().unwrap()),
        ],
    );
    notes.pings(2, &agent);

    // Held back: the spool is full, the sink takes nothing, the source
    // has read only what the channel and the spool took.
    wait_for_log(
        &agent,
        "spool full; holding the sources back",
        Duration::from_secs(60),
    );
    let admin = agent.admin_address().to_string();
    let read = || metric(&admin, r#"tailrace_source_events_total{source="app"}"#);
    let before = read();
    notes.drain();
    notes.pings(3, &agent);
    let after = read();
    assert_eq!(
        before, after,
        "the source read on while the pings were counted: it was not held back"
    );
    assert!(
        after < LINES as f64,
        "the source read all {LINES} lines ({after}): it was never held back"
    );
    assert!(
        metric(&admin, r#"tailrace_channel_events{channel="main"}"#) > 0.0,
        "the channel is not full"
    );

    std::fs::write(&trigger, b"").unwrap();
    let named = format!("component stuck: its loop has not run; no longer telling systemd the agent is alive, so it restarts the agent component={stuck}");
    wait_for_log(&agent, &named, Duration::from_secs(30));
    // What was sent before the watchdog saw the hang is in the socket
    // already; after it, five ping periods pass without one.
    notes.drain();
    let heard = notes.next(5 * PING_EVERY);
    assert_eq!(
        heard,
        None,
        "the agent still tells systemd it is alive: {}",
        agent.log_tail(30)
    );
    assert_eq!(
        agent.log().matches(&named).count(),
        1,
        "the stuck component is named once"
    );
}

#[test]
fn watchdog_stops_pinging_when_the_sink_hangs() {
    watchdog_pings_while_held_back_and_stops_for("sink", "sink kafka");
}

#[test]
fn watchdog_stops_pinging_when_the_file_source_hangs() {
    watchdog_pings_while_held_back_and_stops_for("source", "source app");
}

/// A client that connected, sent a line and then says nothing is waited
/// for, not stuck: the pings go on while its connection task waits.
#[test]
fn watchdog_pings_while_a_tcp_client_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let absent = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let socket = dir.path().join("notify.sock");
    let notes = Notifications::bind(&socket);
    let agent = Agent::start_with_env(
        dir.path(),
        &with_tcp_source(dir.path(), &absent, port).to_yaml(),
        &[
            ("NOTIFY_SOCKET", socket.to_str().unwrap()),
            ("WATCHDOG_USEC", WATCHDOG_USEC),
        ],
    );
    notes.ready(&agent);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(b"one line, then silence\n").unwrap();
    let admin = agent.admin_address().to_string();
    assert!(
        wait_until(Duration::from_secs(30), || metric(
            &admin,
            r#"tailrace_source_events_total{source="net"}"#
        ) >= 1.0),
        "the line did not arrive: {}",
        agent.log_tail(30)
    );
    // Three ping periods: longer than a connection may stay silent.
    notes.pings(3, &agent);
    assert!(
        !agent.log().contains("component stuck"),
        "{}",
        agent.log_tail(30)
    );
    drop(client);
}

/// The standard config plus a tcp source on `port` into the same channel:
/// one group, so the reload stops it and builds its replacement.
fn with_tcp_source(dir: &std::path::Path, bootstrap: &str, port: u16) -> Config {
    config(dir, bootstrap, false).source("net", Source::tcp(&format!("127.0.0.1:{port}")))
}

/// Issue 14, bug 2: a reload that validates but cannot start (the new
/// source's port is held by another program) stopped the old pipeline,
/// then exited 1 without its final flush.
#[test]
fn sighup_whose_new_source_cannot_listen_keeps_the_agent_and_loses_nothing() {
    let (broker, dir, mut agent, mut lines, mut consumer) = running_with_5000_lines();

    // Another program holds the port the new source wants.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    std::fs::write(
        agent.config_path(),
        with_tcp_source(dir.path(), &broker.bootstrap(), port).to_yaml(),
    )
    .unwrap();
    agent.reload();
    wait_for_log(
        &agent,
        "the new config cannot start",
        Duration::from_secs(30),
    );
    assert!(
        agent
            .log()
            .contains(&format!("cannot listen on tcp 127.0.0.1:{port}")),
        "the refusal says why: {}",
        agent.log_tail(50)
    );
    assert!(
        agent.is_running(),
        "the agent exited: {}",
        agent.log_tail(50)
    );

    // The old pipeline goes on: every line, once.
    lines.append(5_000);
    consumer.read_count(10_000, Duration::from_secs(60));
    let got: Vec<Vec<u8>> = consumer
        .read_for(Duration::from_secs(2))
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    let report = Report::new(10_000, &got);
    assert!(report.is_complete() && report.duplicates == 0, "{report}");
    let ready = tailrace_e2e::http::get(agent.admin_address(), "/ready").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    drop(held);
}

/// Issue 14, "reload builds before it stops": a changed group whose
/// replacement adds a second listener on a port another program holds was
/// stopped, then put back (its connections closed, what they sent after
/// lost). Now the port is bound before the stop, and failing to bind it
/// leaves the group running: the sender on the old listener sees no error,
/// every line arrives once, nothing is stopped and `/ready` stays 200.
#[test]
fn sighup_whose_changed_group_cannot_bind_a_new_port_leaves_it_running_with_its_connections() {
    use std::io::Write as _;
    const LINES: u64 = 2_000;
    let (broker, dir, _) = scene(TOPIC);
    let port = free_port();
    // No log file: every record on the topic is the sender's.
    let agent = Agent::start(
        dir.path(),
        &with_tcp_source(dir.path(), &broker.bootstrap(), port).to_yaml(),
    );
    let mut sender = None;
    assert!(wait_until(Duration::from_secs(20), || {
        sender = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        sender.is_some()
    }));
    let mut sender = sender.unwrap();
    let send = |sender: &mut std::net::TcpStream, seqs: std::ops::Range<u64>| {
        for seq in seqs {
            let mut line = SeqLines::line(seq);
            line.push(b'\n');
            sender
                .write_all(&line)
                .unwrap_or_else(|e| panic!("the reload closed the connection at line {seq}: {e}"));
        }
        sender.flush().unwrap();
    };
    send(&mut sender, 0..LINES / 2);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(LINES as usize / 2, Duration::from_secs(60));
    // The sink's readiness can lag its first deliveries: ready before the reload.
    let ready = || tailrace_e2e::http::get(agent.admin_address(), "/ready").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || ready().status == 200),
        "{}",
        ready().body
    );

    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let second = with_tcp_source(dir.path(), &broker.bootstrap(), port)
        .source("net2", Source::tcp(&format!("127.0.0.1:{held_port}")));
    std::fs::write(agent.config_path(), second.to_yaml()).unwrap();
    agent.reload();
    wait_for_log(
        &agent,
        "the running one goes on unchanged",
        Duration::from_secs(30),
    );
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "source net2 cannot listen on tcp 127.0.0.1:{held_port}"
        )),
        "the refusal says why: {}",
        agent.log_tail(50)
    );
    assert!(
        !log.contains("pipeline stopped"),
        "the refused reload stopped the running group: {}",
        agent.log_tail(50)
    );

    send(&mut sender, LINES / 2..LINES);
    drop(sender);
    every_line_once(&mut consumer, LINES, Duration::from_secs(60));
    let ready = tailrace_e2e::http::get(agent.admin_address(), "/ready").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    drop(held);
}

/// The agent on [`two_groups`] (without the extra source) and a sender
/// connected to its tcp source.
fn two_groups_with_a_sender() -> (Broker, tempfile::TempDir, u16, Agent, std::net::TcpStream) {
    let (broker, dir, _) = scene(TOPIC);
    broker.create_topic("net", 1);
    std::fs::create_dir_all(dir.path().join("extra")).unwrap();
    let port = tailrace_e2e::free_port();
    let agent = Agent::start(
        dir.path(),
        &two_groups(dir.path(), &broker.bootstrap(), port, false).to_yaml(),
    );
    let mut sender = None;
    assert!(wait_until(Duration::from_secs(20), || {
        sender = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        sender.is_some()
    }));
    (broker, dir, port, agent, sender.unwrap())
}

/// A file group and a tcp group (own channel, sink and topic).
fn two_groups(dir: &std::path::Path, bootstrap: &str, port: u16, extra: bool) -> Config {
    let net = Sink::kafka(bootstrap, "net")
        .channel("netc")
        .unset("delivery_timeout_ms");
    config(dir, bootstrap, extra)
        .source("net", tcp_into(port, "netc"))
        .channel("netc", Channel::of_type("memory"))
        .sink("kafka_net", net)
}

/// A tcp source on `port` into `channel`.
fn tcp_into(port: u16, channel: &str) -> Source {
    Source::tcp(&format!("127.0.0.1:{port}")).channels(&[channel])
}

/// A reload that changes only the file group leaves the tcp group running:
/// the sender's connection stays open and every line it writes, before
/// and after, arrives once.
#[test]
fn sighup_keeps_unchanged_components_running_with_their_connections() {
    use std::io::Write as _;
    let (broker, dir, port, agent, mut sender) = two_groups_with_a_sender();
    let net_line = |i: u64| format!("net-{i:06}\n");
    for i in 0..1_000 {
        sender.write_all(net_line(i).as_bytes()).unwrap();
    }
    let mut net = Consumer::new(&broker.bootstrap(), "net");
    net.read_count(1_000, Duration::from_secs(60));

    std::fs::write(
        agent.config_path(),
        two_groups(dir.path(), &broker.bootstrap(), port, true).to_yaml(),
    )
    .unwrap();
    agent.reload_and_wait();
    // The extra file source is running.
    std::fs::write(
        dir.path().join("extra/extra.log"),
        format!("{}\n", extra_line(0)),
    )
    .unwrap();
    let mut logs = Consumer::new(&broker.bootstrap(), TOPIC);
    let got = logs.read_count(1, Duration::from_secs(60));
    assert_eq!(
        got.first().map(|r| r.payload.clone()),
        Some(extra_line(0).into_bytes())
    );

    for i in 1_000..2_000 {
        sender
            .write_all(net_line(i).as_bytes())
            .unwrap_or_else(|e| panic!("the reload closed the connection at line {i}: {e}"));
    }
    sender.flush().unwrap();
    net.read_count(2_000, Duration::from_secs(60));
    let got: Vec<String> = net
        .read_for(Duration::from_secs(2))
        .iter()
        .map(|r| format!("{}\n", String::from_utf8_lossy(&r.payload)))
        .collect();
    for i in 0..2_000 {
        let n = got.iter().filter(|l| **l == net_line(i)).count();
        assert_eq!(n, 1, "net line {i} arrived {n} times");
    }
    let log = agent.log();
    let stopped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pipeline stopped"))
        .collect();
    assert!(
        stopped.iter().all(|l| !l.contains("source net")),
        "the tcp group was stopped by the reload: {stopped:?}"
    );

    // A new group that cannot start (its port is held) touches nothing.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let more = Sink::of_type("kafka")
        .channel("morec")
        .bootstrap_servers(&broker.bootstrap())
        .topic("more");
    let with_third = two_groups(dir.path(), &broker.bootstrap(), port, true)
        .source("more", tcp_into(held_port, "morec"))
        .channel("morec", Channel::of_type("memory"))
        .sink("kafka_more", more);
    std::fs::write(agent.config_path(), with_third.to_yaml()).unwrap();
    agent.reload();
    assert!(
        wait_until(Duration::from_secs(30), || agent
            .log()
            .contains("the running one goes on unchanged")),
        "{}",
        agent.log_tail(50)
    );
    for i in 2_000..3_000 {
        sender
            .write_all(net_line(i).as_bytes())
            .unwrap_or_else(|e| {
                panic!("the refused reload closed the connection at line {i}: {e}")
            });
    }
    net.read_count(3_000, Duration::from_secs(60));
    // Only what the refused config built was stopped again.
    let log = agent.log();
    let stopped_after: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pipeline stopped"))
        .skip(stopped.len())
        .collect();
    assert!(
        stopped_after
            .iter()
            .all(|l| !l.contains("source net") && !l.contains("source app")),
        "a refused reload stopped a running group: {stopped_after:?}"
    );
    drop(held);
}

/// The issue's scene: one TCP connection stays open while its sender writes
/// 200,000 sequence-numbered lines at a steady pace, through two SIGHUPs
/// that change the file group (the first adds a source, the second takes
/// it away again): no write fails, and every line arrives once.
#[test]
fn one_tcp_connection_writes_200000_lines_through_two_sighups_without_an_error() {
    const LINES: u64 = 200_000;
    let (broker, dir, port, agent, mut sender) = two_groups_with_a_sender();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            // 1,000 lines every 40 ms (about 8 s in all): the two reloads
            // happen mid-stream.
            for chunk in 0..LINES / 1_000 {
                let mut buf = Vec::with_capacity(1_000 * 101);
                for seq in chunk * 1_000..(chunk + 1) * 1_000 {
                    buf.extend_from_slice(&SeqLines::line(seq));
                    buf.push(b'\n');
                }
                if let Err(e) = sender.write_all(&buf) {
                    return Err(format!("write of lines from {} failed: {e}", chunk * 1_000));
                }
                written.fetch_add(1_000, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(40));
            }
            Ok(sender)
        })
    };
    let mut net = Consumer::new(&broker.bootstrap(), "net");
    for (round, extra) in [(1, true), (2, false)] {
        // Each reload comes once a fresh part of the stream is on its way.
        let at = written.load(std::sync::atomic::Ordering::Relaxed) + 30_000;
        assert!(
            wait_until(Duration::from_secs(60), || written
                .load(std::sync::atomic::Ordering::Relaxed)
                >= at),
            "the sender stalled before reload {round}"
        );
        std::fs::write(
            agent.config_path(),
            two_groups(dir.path(), &broker.bootstrap(), port, extra).to_yaml(),
        )
        .unwrap();
        agent.reload_and_wait();
        assert!(
            written.load(std::sync::atomic::Ordering::Relaxed) < LINES,
            "reload {round} came after the sender finished: the scene proves nothing"
        );
    }
    let sender = writer.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    drop(sender);
    every_line_once(&mut net, LINES, Duration::from_secs(120));
}

/// Reads until `lines` records arrived (within `within`), then 2 s more:
/// sequence lines `0..lines`, each once.
fn every_line_once(consumer: &mut Consumer, lines: u64, within: Duration) {
    consumer.read_count(lines as usize, within);
    let got: Vec<Vec<u8>> = consumer
        .read_for(Duration::from_secs(2))
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    let report = Report::new(lines, &got);
    assert!(report.is_complete() && report.duplicates == 0, "{report}");
}
