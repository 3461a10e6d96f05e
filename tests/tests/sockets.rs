//! Acceptance tests of the socket sources: the real binary, a real broker,
//! real clients (util-linux `logger`, rsyslogd), and hostile input.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tailrace_e2e::config::{Source, MAIN};
use tailrace_e2e::sockets::{metric, random_bytes, Rsyslog};
use tailrace_e2e::{
    free_port, run_tailrace, wait_until, Agent, Broker, Config, Consumer, Report, SeqLines,
    LINE_LEN,
};

const TOPIC: &str = "logs";

/// When the kafka sink has `encoding: json` (one JSON object per event,
/// fields at the top level), set this to `Some("json")` and the tests
/// check every field end to end as well.
const JSON_ENCODING: Option<&str> = Some("json");

/// The socket scene (no source yet) to `bootstrap`, topic [`TOPIC`].
fn to_kafka(dir: &Path, bootstrap: &str) -> Config {
    Config::sockets_to_kafka(dir, bootstrap, TOPIC)
}

/// [`to_kafka`] with the sink's encoding at [`JSON_ENCODING`].
fn to_kafka_encoded(dir: &Path, bootstrap: &str) -> Config {
    let config = to_kafka(dir, bootstrap);
    match JSON_ENCODING {
        Some(encoding) => config.edit_sink("kafka", |k| k.encoding(encoding)),
        None => config,
    }
}

/// `127.0.0.1:port`.
fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn setup() -> (Broker, tempfile::TempDir) {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    (
        broker,
        tempfile::tempdir().expect("cannot create a temp dir"),
    )
}

/// A connection to `127.0.0.1:port`, once the agent listens there (20 s).
fn connect_when_listening(port: u16) -> TcpStream {
    let mut connected = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            connected = TcpStream::connect(("127.0.0.1", port)).ok();
            connected.is_some()
        }),
        "nothing listens on 127.0.0.1:{port}"
    );
    connected.expect("connected")
}

/// Whether `/metrics` has a sample named exactly `name` (with labels).
fn http_has(admin: &str, name: &str) -> bool {
    tailrace_e2e::http::get(admin, "/metrics")
        .is_ok_and(|r| tailrace_e2e::http::sample(&r.body, name).is_some())
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn logger(args: &[&str], message: &str) {
    let out = std::process::Command::new("logger")
        .args(args)
        .args([
            "-t",
            "e2e",
            "-p",
            "local3.warning",
            "--id=77",
            "--",
            message,
        ])
        .output()
        .expect("cannot run logger (util-linux)");
    assert!(
        out.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The payload (or with JSON encoding, the `message` field) of each record.
fn texts(records: &[tailrace_e2e::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let raw = String::from_utf8_lossy(&r.payload).into_owned();
            match JSON_ENCODING {
                None => raw,
                Some(_) => serde_json::from_str::<serde_json::Value>(&raw)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or(raw),
            }
        })
        .collect()
}

/// The payloads as text, JSON or not.
fn raw_payloads(records: &[tailrace_e2e::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

/// With JSON encoding on, checks the syslog fields of the event whose
/// message ends with `message`.
fn check_fields(payloads: &[String], message: &str, app: &str) {
    if JSON_ENCODING.is_none() {
        return;
    }
    let event = payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.ends_with(message)))
        .unwrap_or_else(|| panic!("no event with message {message:?}"));
    for key in [
        "facility",
        "severity",
        "syslog_timestamp",
        "hostname",
        "app_name",
        "msg",
        "message",
        "timestamp",
    ] {
        assert!(event.get(key).is_some(), "{key} missing in {event}");
    }
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .ends_with(event["msg"].as_str().unwrap()),
        "msg is the end of the line: {event}"
    );
    assert_eq!(event["app_name"], app, "{event}");
}

#[test]
fn logger_rfc3164_and_rfc5424_over_tcp_udp_unix_and_octet_counting_arrive() {
    let (broker, dir) = setup();
    let (tcp, udp) = (free_port(), free_udp_port());
    let sock = dir.path().join("log.sock");
    let config = to_kafka_encoded(dir.path(), &broker.bootstrap())
        .source("st", Source::syslog("tcp", local(tcp)))
        .source("su", Source::syslog("udp", local(udp)))
        .source("sx", Source::syslog("unix", &sock));
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || sock.exists()),
        "socket not created"
    );
    let (tcp_s, udp_s, sock_s) = (tcp.to_string(), udp.to_string(), sock.display().to_string());

    let mut sent = Vec::new();
    for (format, name) in [("--rfc5424", "5424"), ("--rfc3164", "3164")] {
        let transports: [(&str, Vec<&str>); 4] = [
            ("tcp", vec!["--tcp", "-n", "127.0.0.1", "-P", &tcp_s]),
            (
                "octet",
                vec!["--tcp", "--octet-count", "-n", "127.0.0.1", "-P", &tcp_s],
            ),
            ("udp", vec!["--udp", "-n", "127.0.0.1", "-P", &udp_s]),
            ("unix", vec!["--socket-errors=on", "-u", &sock_s]),
        ];
        for (transport, mut args) in transports {
            let message = format!("{transport} {name} message");
            args.push(format);
            logger(&args, &message);
            sent.push(message);
        }
    }
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(sent.len(), Duration::from_secs(60));
    let payloads = texts(consumer.records());
    let raw = raw_payloads(consumer.records());
    for message in &sent {
        let n = payloads
            .iter()
            .filter(|p| p.contains(message.as_str()))
            .count();
        assert_eq!(n, 1, "{message:?} arrived {n} times in {payloads:#?}");
        check_fields(&raw, message, "e2e");
    }
    assert_eq!(payloads.len(), sent.len(), "{payloads:#?}");
    // Each arrived as sent: a syslog header, the message at the end.
    assert!(
        payloads.iter().all(|p| p.starts_with("<156>")),
        "{payloads:#?}"
    );
    for source in ["st", "su", "sx"] {
        assert_eq!(
            metric(
                &admin,
                &format!("tailrace_source_parse_errors_total{{source=\"{source}\"}}")
            ),
            0.0
        );
    }
    assert_eq!(
        metric(&admin, "tailrace_source_events_total{source=\"st\"}"),
        4.0
    );
    assert_eq!(
        metric(&admin, "tailrace_source_events_total{source=\"su\"}"),
        2.0
    );
    assert_eq!(
        metric(&admin, "tailrace_source_events_total{source=\"sx\"}"),
        2.0
    );
}

#[test]
fn rsyslog_forwards_to_tailrace_over_tcp() {
    let (broker, dir) = setup();
    let (octet, plain) = (free_port(), free_port());
    let config = to_kafka_encoded(dir.path(), &broker.bootstrap())
        .source("octet", Source::syslog("tcp", local(octet)))
        .source("plain", Source::syslog("tcp", local(plain)));
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    drop(connect_when_listening(plain));
    let rsyslog = Rsyslog::start(&[
        format!("action(type=\"omfwd\" Target=\"127.0.0.1\" Port=\"{octet}\" Protocol=\"tcp\" TCP_Framing=\"octet-counted\" Template=\"RSYSLOG_SyslogProtocol23Format\")"),
        format!("action(type=\"omfwd\" Target=\"127.0.0.1\" Port=\"{plain}\" Protocol=\"tcp\" Template=\"RSYSLOG_ForwardFormat\")"),
    ]);
    let input = rsyslog.input_socket().display().to_string();
    const N: usize = 20;
    for i in 0..N {
        logger(&["-u", &input], &format!("via rsyslog {i:03}"));
    }
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(2 * N, Duration::from_secs(60));
    let payloads = texts(consumer.records());
    let raw = raw_payloads(consumer.records());
    for i in 0..N {
        let message = format!("via rsyslog {i:03}");
        let n = payloads
            .iter()
            .filter(|p| p.trim_end().ends_with(&message))
            .count();
        assert_eq!(
            n, 2,
            "{message:?} arrived {n} times (once per forwarding action) in {payloads:#?}"
        );
        check_fields(&raw, &message, "e2e");
    }
    assert!(
        payloads.iter().any(|p| p.starts_with("<156>1 ")),
        "RFC 5424 from the octet-counted action"
    );
    assert!(
        payloads.iter().any(|p| p.starts_with("<156>2")),
        "RFC 3164 with an ISO timestamp from the other"
    );
    for source in ["octet", "plain"] {
        assert_eq!(
            metric(
                &admin,
                &format!("tailrace_source_events_total{{source=\"{source}\"}}")
            ),
            N as f64
        );
        assert_eq!(
            metric(
                &admin,
                &format!("tailrace_source_parse_errors_total{{source=\"{source}\"}}")
            ),
            0.0
        );
    }
}

/// Well-formed line `i` for listener `name`, recognisable among garbage.
fn good(name: &str, i: usize) -> String {
    format!("well-formed {name} {i:04}")
}

#[test]
fn random_bytes_over_long_frames_and_half_open_connections_on_every_listener() {
    const GOOD: usize = 50;
    let (broker, dir) = setup();
    let (tcp, stcp, sudp, udp) = (free_port(), free_port(), free_udp_port(), free_udp_port());
    let unix = dir.path().join("lines.sock");
    let sunix = dir.path().join("syslog.sock");
    let limits = |s: Source| s.max_line_bytes(1024).max_line_policy("truncate");
    let stream = |s: Source| limits(s).idle_timeout_ms(1000).max_connections(8);
    let config = to_kafka(dir.path(), &broker.bootstrap())
        .source("tcp", stream(Source::tcp(&local(tcp))))
        .source("stcp", stream(Source::syslog("tcp", local(stcp))))
        .source("sudp", limits(Source::syslog("udp", local(sudp))))
        .source("udp", limits(Source::udp(&local(udp))))
        .source("unix", stream(Source::unix(&unix)))
        .source("sunix", limits(Source::syslog("unix", &sunix)));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    assert!(wait_until(Duration::from_secs(20), || sunix.exists() && unix.exists()));
    let garbage = random_bytes(256 * 1024, 7);
    let long = vec![b'x'; 5000];

    // Streams: garbage, an over-long line, more half-open connections than
    // max_connections (each starts a line and stalls), then good lines.
    let mut half_open = Vec::new();
    type Connect = Box<dyn Fn() -> Box<dyn std::io::Write>>;
    let streams: [(&str, Connect, bool); 3] = [
        (
            "tcp",
            Box::new(move || Box::new(TcpStream::connect(("127.0.0.1", tcp)).unwrap())),
            false,
        ),
        (
            "stcp",
            Box::new(move || Box::new(TcpStream::connect(("127.0.0.1", stcp)).unwrap())),
            true,
        ),
        (
            "unix",
            Box::new({
                let p = unix.clone();
                move || Box::new(UnixStream::connect(&p).unwrap())
            }),
            false,
        ),
    ];
    for (name, connect, syslog) in &streams {
        let mut g = connect();
        g.write_all(&garbage).unwrap();
        drop(g);
        let mut l = connect();
        l.write_all(&long).unwrap();
        l.write_all(b"\n").unwrap();
        drop(l);
        for _ in 0..10 {
            let mut h = connect();
            h.write_all(b"<13>1 - h a - - - half a li").unwrap();
            half_open.push(h);
        }
        let mut c = connect();
        for i in 0..GOOD {
            let line = if *syslog {
                format!("<13>1 - host app - - - {}\n", good(name, i))
            } else {
                format!("{}\n", good(name, i))
            };
            c.write_all(line.as_bytes()).unwrap();
        }
    }
    // Datagrams: garbage, over-long, good ones.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = UnixDatagram::unbound().unwrap();
    let send = |name: &str, payload: &[u8]| match name {
        "udp" => drop(u.send_to(payload, ("127.0.0.1", udp)).unwrap()),
        "sudp" => drop(u.send_to(payload, ("127.0.0.1", sudp)).unwrap()),
        _ => drop(d.send_to(payload, &sunix).unwrap()),
    };
    for name in ["udp", "sudp", "sunix"] {
        for chunk in garbage.chunks(60_000).take(3) {
            send(name, chunk);
        }
        send(name, &long);
        for i in 0..GOOD {
            let line = if name == "udp" {
                good(name, i)
            } else {
                format!("<13>1 - host app - - - {}", good(name, i))
            };
            send(name, line.as_bytes());
            if i % 10 == 9 {
                std::thread::sleep(Duration::from_millis(2)); // pacing, no burst over the socket buffer
            }
        }
    }

    let names = ["tcp", "stcp", "unix", "udp", "sudp", "sunix"];
    let arrived = |payloads: &[String]| {
        names
            .iter()
            .all(|n| (0..GOOD).all(|i| payloads.iter().any(|p| p.ends_with(&good(n, i)))))
    };
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_until(Duration::from_secs(90), |r| arrived(&texts(r)));
    let payloads = texts(consumer.records());
    for n in names {
        let missing: Vec<usize> = (0..GOOD)
            .filter(|&i| !payloads.iter().any(|p| p.ends_with(&good(n, i))))
            .collect();
        assert!(
            missing.is_empty(),
            "{n}: well-formed lines lost: {missing:?}"
        );
    }
    assert!(agent.is_running(), "the agent exited");
    for n in ["stcp", "sudp", "sunix"] {
        assert!(
            metric(
                &admin,
                &format!("tailrace_source_parse_errors_total{{source=\"{n}\"}}")
            ) > 0.0,
            "{n}: garbage not counted"
        );
    }
    for n in names {
        assert!(
            metric(
                &admin,
                &format!(
                    "tailrace_events_dropped_total{{component=\"{n}\",reason=\"line_truncated\"}}"
                )
            ) >= 1.0,
            "{n}: the over-long frame was not counted as truncated"
        );
    }
    let longest = consumer
        .records()
        .iter()
        .map(|r| r.payload.len())
        .max()
        .unwrap_or(0);
    assert!(
        longest <= 1024,
        "a record of {longest} bytes, over max_line_bytes"
    );
    // The half-open connections are closed after idle_timeout_ms; their
    // partial lines are sent, not dropped.
    let closed = consumer.read_until(Duration::from_secs(30), |r| {
        texts(r).iter().filter(|p| p.ends_with("half a li")).count() >= 30
    });
    assert_eq!(
        texts(closed)
            .iter()
            .filter(|p| p.ends_with("half a li"))
            .count(),
        30
    );
    for mut h in half_open {
        // the agent closed its end: writing fails sooner or later, or reads EOF
        let _ = h.flush();
    }
    assert!(agent.is_running());
    agent.terminate();
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn tcp_backpressure_keeps_memory_bounded_while_the_broker_is_down() {
    let port = free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let tcp = free_port();
    let config = to_kafka(dir.path(), &bootstrap)
        .source("net", Source::tcp(&local(tcp)))
        .edit_channel(MAIN, |c| c.capacity_events(2000).capacity_bytes(1048576))
        .edit_sink("kafka", |k| {
            k.spool("max_bytes", 2097152)
                .spool("when_full", "block")
                .spool("queue_full_timeout_ms", 500)
                .delivery_timeout_ms(5000)
                .librdkafka("queue.buffering.max.messages", "2000")
                .librdkafka("queue.buffering.max.kbytes", "1024")
        });
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    drop(connect_when_listening(tcp));

    // A client keeps writing numbered lines until told to stop.
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, stop) = (written.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
            c.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut seq = 0u64;
            let mut pending: Vec<u8> = Vec::new();
            while !stop.load(Ordering::SeqCst) && seq < 5_000_000 {
                if pending.is_empty() {
                    for s in seq..seq + 100 {
                        pending.extend_from_slice(&SeqLines::line(s));
                        pending.push(b'\n');
                    }
                    seq += 100;
                }
                match c.write(&pending) {
                    Ok(n) => {
                        pending.drain(..n);
                        if pending.is_empty() {
                            written.store(seq, Ordering::SeqCst);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("write failed: {e}"),
                }
            }
            // finish the lines begun
            c.set_write_timeout(None).unwrap();
            c.write_all(&pending).unwrap();
            written.store(seq, Ordering::SeqCst);
            seq
        })
    };

    // The writer must stall: the agent stops reading once everything
    // downstream is full.
    let mut last = (0, Instant::now());
    let stalled = wait_until(Duration::from_secs(120), || {
        let now = written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
        now > 0 && last.1.elapsed() > Duration::from_secs(3)
    });
    let at_stall = written.load(Ordering::SeqCst);
    assert!(
        stalled,
        "the writer never stalled: {at_stall} lines written"
    );
    let rss = metric(&admin, "process_resident_memory_bytes");
    // Keep pushing for a while: neither the writer nor memory moves.
    std::thread::sleep(Duration::from_secs(3)); // the condition is that nothing happens
    let rss_later = metric(&admin, "process_resident_memory_bytes");
    let read = metric(&admin, "tailrace_source_events_total{source=\"net\"}");
    println!(
        "stalled at {at_stall} lines written ({} MB), {read} read; rss {} MB then {} MB",
        at_stall * LINE_LEN as u64 / 1_000_000,
        rss / 1e6,
        rss_later / 1e6
    );
    assert!(rss > 0.0);
    assert!(rss_later < 256e6, "resident memory {} MB", rss_later / 1e6);
    assert!(
        rss_later < rss + 16e6,
        "memory grew from {} MB to {} MB while stalled",
        rss / 1e6,
        rss_later / 1e6
    );
    assert!(
        written.load(Ordering::SeqCst) <= at_stall + 100,
        "the writer made progress while stalled"
    );

    // The broker comes: everything written arrives.
    let broker = Broker::start_on(port);
    broker.create_topic(TOPIC, 1);
    stop.store(true, Ordering::SeqCst);
    let total = writer.join().unwrap();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_until(Duration::from_secs(240), |r| {
        Report::new(total, r).missing.is_empty()
    });
    let report = Report::new(total, consumer.records());
    assert!(
        report.missing.is_empty() && report.malformed_count == 0,
        "{report}"
    );
    drop(agent);
}

#[test]
fn sigterm_delivers_what_every_listener_read() {
    const N: usize = 300;
    let (broker, dir) = setup();
    let (tcp, udp) = (free_port(), free_udp_port());
    let unix = dir.path().join("in.sock");
    let config = to_kafka(dir.path(), &broker.bootstrap())
        .source("tcp", Source::tcp(&local(tcp)))
        .source("udp", Source::udp(&local(udp)))
        .source("unix", Source::unix(&unix));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    assert!(wait_until(Duration::from_secs(20), || unix.exists()));
    let mut t = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    let mut x = UnixStream::connect(&unix).unwrap();
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..N {
        t.write_all(format!("{}\n", good("tcp", i)).as_bytes())
            .unwrap();
        x.write_all(format!("{}\n", good("unix", i)).as_bytes())
            .unwrap();
        u.send_to(good("udp", i).as_bytes(), ("127.0.0.1", udp))
            .unwrap();
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2)); // pacing, no burst over the socket buffer
        }
    }
    // Held without its newline when SIGTERM comes.
    t.write_all(b"last line without newline").unwrap();
    for s in ["tcp", "udp", "unix"] {
        let name = format!("tailrace_source_events_total{{source=\"{s}\"}}");
        assert!(
            wait_until(Duration::from_secs(20), || metric(&admin, &name)
                >= N as f64),
            "{s} read {}",
            metric(&admin, &name)
        );
    }
    agent.terminate();
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let mut buf = [0u8; 1];
    assert_eq!(t.read(&mut buf).unwrap_or(0), 0, "the connection is closed");
    assert!(!unix.exists(), "the socket file is removed");

    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(3 * N, Duration::from_secs(60));
    let payloads = texts(consumer.read_for(Duration::from_secs(1)));
    for s in ["tcp", "udp", "unix"] {
        let got = (0..N).filter(|&i| payloads.contains(&good(s, i))).count();
        assert_eq!(got, N, "{s}: {got} of {N} arrived");
    }
    // The partial line a connection held is sent when the source stops:
    // the channels stay open until every source has sent what it held.
    assert!(
        payloads.iter().any(|p| p == "last line without newline"),
        "the held partial line did not arrive; log:\n{}",
        agent.log_tail(40)
    );
    assert_eq!(payloads.len(), 3 * N + 1, "{payloads:#?}");
}

/// A sender writes its lines over TCP and stops; SIGTERM comes at once,
/// while much of what it wrote still sits in the kernel's buffers (a
/// small channel keeps the agent behind): the connection is read until it
/// would block before it is closed, so every line arrives.
#[test]
fn sigterm_right_after_a_tcp_sender_stops_delivers_every_line_it_wrote() {
    const N: u64 = 50_000;
    let (broker, dir) = setup();
    let tcp = free_port();
    let config = to_kafka(dir.path(), &broker.bootstrap())
        .source("tcp", Source::tcp(&local(tcp)))
        .edit_channel(MAIN, |c| c.capacity_events(1000));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    let mut t = connect_when_listening(tcp);
    let mut all = Vec::with_capacity(N as usize * LINE_LEN);
    for seq in 0..N {
        all.extend_from_slice(&SeqLines::line(seq));
        all.push(b'\n');
    }
    t.write_all(&all).unwrap();
    let read_at_sigterm = metric(&admin, "tailrace_source_events_total{source=\"tcp\"}");
    agent.terminate();
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    eprintln!("read when SIGTERM came: {read_at_sigterm} of {N}");
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(N as usize, Duration::from_secs(60));
    consumer.read_for(Duration::from_secs(1));
    let report = Report::new(N, consumer.records().iter().map(|r| &r.payload));
    assert!(
        report.is_complete() && report.duplicates == 0,
        "{report} (read when SIGTERM came: {read_at_sigterm})\n{}",
        agent.log_tail(30)
    );
}

/// A reload moves a tcp source to another port while a sender writes
/// throughout: the new port is bound before the old listener is released
/// (the log says so, in that order), every line written before the reload
/// arrives, and after its connection is closed the sender goes on on the
/// new port and every line it writes there arrives too.
#[test]
fn a_reload_that_moves_a_tcp_port_binds_the_new_one_first_and_loses_nothing_written_before() {
    const CHUNK: u64 = 100;
    /// Lines the sender writes on the new port before it stops.
    const AFTER_MOVE: u64 = 5_000;
    let (broker, dir) = setup();
    let (old_port, new_port) = (free_port(), free_port());
    let config =
        |port| to_kafka(dir.path(), &broker.bootstrap()).source("tcp", Source::tcp(&local(port)));
    let agent = Agent::start(dir.path(), &config(old_port).to_yaml());
    let admin = agent.admin_address().to_string();
    drop(connect_when_listening(old_port));
    // Lines written (write_all returned) so far, and the first line sent
    // on the new port.
    let written = Arc::new(AtomicU64::new(0));
    let moved_at = Arc::new(AtomicU64::new(u64::MAX));
    let sender = {
        let (written, moved_at) = (written.clone(), moved_at.clone());
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(("127.0.0.1", old_port)).unwrap();
            let mut seq = 0;
            while seq < moved_at.load(Ordering::SeqCst).saturating_add(AFTER_MOVE) {
                let mut chunk = Vec::with_capacity(CHUNK as usize * LINE_LEN);
                for s in seq..seq + CHUNK {
                    chunk.extend_from_slice(&SeqLines::line(s));
                    chunk.push(b'\n');
                }
                match stream.write_all(&chunk) {
                    Ok(()) => {
                        seq += CHUNK;
                        written.store(seq, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5)); // pacing
                    }
                    Err(_) if moved_at.load(Ordering::SeqCst) == u64::MAX => {
                        // Closed by the reload: go on on the new port, from
                        // the chunk that failed.
                        moved_at.store(seq, Ordering::SeqCst);
                        stream = TcpStream::connect(("127.0.0.1", new_port))
                            .expect("the new port is open");
                    }
                    Err(e) => panic!("write to the new port failed: {e}"),
                }
            }
        })
    };
    assert!(wait_until(Duration::from_secs(30), || metric(
        &admin,
        "tailrace_source_events_total{source=\"tcp\"}"
    ) >= 3_000.0));
    let before = written.load(Ordering::SeqCst);
    std::fs::write(
        agent.config_path(),
        config(new_port).admin_address(&admin).to_yaml(),
    )
    .unwrap();
    let log_before = agent.log().len();
    agent.reload_and_wait();
    sender.join().expect("the sender finished");
    let moved = moved_at.load(Ordering::SeqCst);
    let total = written.load(Ordering::SeqCst);
    let log = agent.log()[log_before..].to_string();
    let bound = log
        .find("bound ahead of the reload")
        .unwrap_or_else(|| panic!("no early bind in\n{log}"));
    let stopped = log
        .find("pipeline stopped")
        .unwrap_or_else(|| panic!("old group not stopped in\n{log}"));
    assert!(
        bound < stopped,
        "the new port is bound before the old listener is released:\n{log}"
    );

    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_until(Duration::from_secs(120), |r| {
        let report = Report::new(total, r.iter().map(|r| &r.payload));
        report.missing.iter().all(|&s| s >= before && s < moved)
    });
    let report = Report::new(total, consumer.records().iter().map(|r| &r.payload));
    assert!(
        report.missing.iter().all(|&s| s >= before && s < moved),
        "nothing written before the reload ({before} lines) nor on the new port (from {moved}) is lost: {report}"
    );
    eprintln!("moved a port under a sender: {before} written before the reload, new port from {moved}: {report}");
}

/// A reload that changes a tcp and a udp source but keeps their ports:
/// the changed sources take the running ones' sockets over, so while a
/// client opens a new connection every few milliseconds through the
/// reload, none is refused (before, the port was closed from the old
/// source's stop until the new one bound it), every line written on an
/// accepted connection arrives, and so does every datagram sent meanwhile.
#[test]
fn a_reload_that_changes_sources_on_the_same_ports_hands_their_sockets_over() {
    let (broker, dir) = setup();
    let (tcp, udp) = (free_port(), free_port());
    let config = |max_line_bytes: u64| {
        to_kafka(dir.path(), &broker.bootstrap())
            .source(
                "tcp",
                Source::tcp(&local(tcp)).set("max_line_bytes", max_line_bytes),
            )
            .source(
                "udp",
                Source::udp(&local(udp)).set("max_line_bytes", max_line_bytes),
            )
    };
    let agent = Agent::start(dir.path(), &config(8192).to_yaml());
    let admin = agent.admin_address().to_string();
    drop(connect_when_listening(tcp));

    // TCP: one line per connection; UDP: one line per datagram. Sequence
    // numbers: even for tcp, odd for udp.
    let stop = Arc::new(AtomicBool::new(false));
    let tcp_client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut sent, mut refused, mut seq) = (Vec::new(), 0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                match TcpStream::connect(("127.0.0.1", tcp)) {
                    Ok(mut s) => {
                        let mut line = SeqLines::line(seq);
                        line.push(b'\n');
                        if s.write_all(&line).is_ok() {
                            sent.push(seq);
                        }
                        seq += 2;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                    Err(e) => panic!("connect to {tcp}: {e}"),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (sent, refused)
        })
    };
    let udp_client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut seq = 1u64;
            let mut sent = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                // A refused datagram (the port closed) comes back as an
                // error on the next send: not counted as sent.
                if socket
                    .send_to(&SeqLines::line(seq), ("127.0.0.1", udp))
                    .is_ok()
                {
                    sent.push(seq);
                }
                seq += 2;
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        })
    };
    assert!(wait_until(Duration::from_secs(30), || metric(
        &admin,
        "tailrace_source_events_total{source=\"tcp\"}"
    ) >= 100.0));
    std::fs::write(
        agent.config_path(),
        config(16384).admin_address(&admin).to_yaml(),
    )
    .unwrap();
    let log_before = agent.log().len();
    agent.reload_and_wait();
    // Clients go on a while against the new sources.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (tcp_sent, refused) = tcp_client.join().unwrap();
    let udp_sent = udp_client.join().unwrap();
    let log = agent.log()[log_before..].to_string();
    assert_eq!(
        refused,
        0,
        "connections refused during the reload ({} accepted)",
        tcp_sent.len()
    );

    let expected: Vec<u64> = tcp_sent.iter().chain(&udp_sent).copied().collect();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_until(Duration::from_secs(60), |r| {
        Report::of(expected.iter().copied(), r.iter().map(|r| &r.payload)).is_complete()
    });
    let report = Report::of(
        expected.iter().copied(),
        consumer.records().iter().map(|r| &r.payload),
    );
    assert!(
        report.is_complete(),
        "every line of {} tcp connections and {} datagrams arrives: {report}\n{}",
        tcp_sent.len(),
        udp_sent.len(),
        agent.log_tail(30)
    );
    assert_eq!(
        log.matches("takes the running one's listening socket over")
            .count(),
        2,
        "both changed sources take their socket over:\n{log}"
    );
    eprintln!(
        "hand-over: {} connections, {} datagrams, 0 refused: {report}",
        tcp_sent.len(),
        udp_sent.len()
    );
}

/// Hostile load: 1,000 connections each send one byte of a line and then
/// nothing (slowloris) to a source with 200 slots. The minimum-rate rule
/// closes them window by window and counts them, a sender that comes after
/// all of them is served, resident memory stays bounded, the agent stays up.
#[test]
fn a_thousand_trickling_connections_do_not_stop_a_new_sender() {
    const TRICKLERS: usize = 1_000;
    const SLOTS: usize = 200;
    let (broker, dir) = setup();
    let tcp = free_port();
    let tcp_source = Source::tcp(&local(tcp))
        .max_connections(SLOTS as u64)
        .set("min_rate_window_ms", 1000);
    let config = to_kafka(dir.path(), &broker.bootstrap()).source("tcp", tcp_source);
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    drop(connect_when_listening(tcp));
    let rss_before = metric(&admin, "process_resident_memory_bytes");
    let tricklers: Vec<TcpStream> = (0..TRICKLERS)
        .map(|_| {
            let mut t = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
            t.write_all(b"x").unwrap();
            t
        })
        .collect();
    let mut sender = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    sender.write_all(b"the new sender\n").unwrap();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let served = |r: &[tailrace_e2e::Record]| texts(r).iter().any(|t| t == "the new sender");
    assert!(
        served(consumer.read_until(Duration::from_secs(60), served)),
        "the new sender is served; log:\n{}",
        agent.log_tail(20)
    );
    let slow = "tailrace_events_dropped_total{component=\"tcp\",reason=\"slow_connection\"}";
    // It was accepted after every trickler, with at most SLOTS - 1 of
    // them still holding a slot.
    assert!(
        metric(&admin, slow) >= (TRICKLERS - SLOTS + 1) as f64,
        "{}",
        metric(&admin, slow)
    );
    assert!(
        wait_until(Duration::from_secs(30), || metric(&admin, slow)
            == TRICKLERS as f64),
        "every trickler is closed and counted: {}",
        metric(&admin, slow)
    );
    // All come from 127.0.0.1 with max_connections_per_address at its
    // default (max_connections): a connection accepted into a freed slot
    // never finds the address still claimed by the one that left.
    assert_eq!(
        metric(
            &admin,
            "tailrace_source_connections_refused_total{source=\"tcp\",reason=\"per_address\"}"
        ),
        0.0
    );
    let rss_after = metric(&admin, "process_resident_memory_bytes");
    assert!(
        rss_after < rss_before + 64e6,
        "resident memory {} MB before, {} MB after",
        rss_before / 1e6,
        rss_after / 1e6
    );
    assert!(agent.is_running());
    drop(tricklers);
}

/// UDP loss in the kernel made visible: while the agent is stopped
/// (SIGSTOP) a flood overflows a small receive buffer; after SIGCONT every
/// datagram sent is either read or counted as
/// `reason="kernel_receive_buffer"`. A receive buffer above
/// net.core.rmem_max is logged with what the kernel granted.
#[test]
fn udp_datagrams_the_kernel_dropped_are_counted() {
    const FLOOD: usize = 3_000;
    let (broker, dir) = setup();
    let (small, big) = (free_udp_port(), free_udp_port());
    let config = to_kafka(dir.path(), &broker.bootstrap())
        .source(
            "small",
            Source::udp(&local(small)).receive_buffer_bytes(8192),
        )
        .source(
            "big",
            Source::udp(&local(big)).receive_buffer_bytes(1073741824),
        );
    let agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    let kernel =
        "tailrace_events_dropped_total{component=\"small\",reason=\"kernel_receive_buffer\"}";
    let read = "tailrace_source_events_total{source=\"small\"}";
    assert!(
        wait_until(Duration::from_secs(20), || http_has(&admin, kernel)),
        "declared at 0 from the start"
    );
    assert!(
        agent
            .log()
            .contains("the kernel capped receive_buffer_bytes"),
        "{}",
        agent.log_tail(20)
    );
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    agent.pause();
    for i in 0..FLOOD {
        u.send_to(format!("flood {i:0200}").as_bytes(), ("127.0.0.1", small))
            .unwrap();
    }
    agent.resume();
    assert!(wait_until(Duration::from_secs(20), || metric(&admin, read) > 0.0));
    // The next datagram carries the kernel's count.
    u.send_to(b"after the flood", ("127.0.0.1", small)).unwrap();
    let sent = (FLOOD + 1) as f64;
    assert!(
        wait_until(Duration::from_secs(20), || metric(&admin, read)
            + metric(&admin, kernel)
            == sent),
        "read {} + dropped by the kernel {} = sent {sent}",
        metric(&admin, read),
        metric(&admin, kernel)
    );
    assert!(metric(&admin, kernel) > 0.0, "an 8 KiB buffer overflows");
}

#[test]
fn a_port_in_use_fails_the_start_and_a_shared_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = to_kafka(dir.path(), "127.0.0.1:9").source("net", Source::tcp(&local(port)));
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = agent.log_tail(20);
    assert!(
        log.contains(&format!("cannot listen on tcp 127.0.0.1:{port}")) && log.contains("in use"),
        "{log}"
    );

    let clash = to_kafka(dir.path(), "127.0.0.1:9")
        .source("a", Source::tcp(&local(port)))
        .source("b", Source::syslog("tcp", local(port)))
        .source("c", Source::udp(&local(port)));
    let path = dir.path().join("clash.yaml");
    std::fs::write(&path, clash.to_yaml()).unwrap();
    let out = run_tailrace([Path::new("validate"), Path::new("--config"), &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("tcp 127.0.0.1:{port} is already used by source a")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("already used").count(),
        1,
        "udp on the same port number is another socket: {stderr}"
    );
}

/// Issue 14, bug 1: with Kafka unreachable and librdkafka's queue full when
/// the grace period ended, the sink returned from inside its loop over the
/// channel batches it had taken: the rest of the batch and the batches
/// after it were neither produced nor spooled, and nothing counted them.
/// A file source reads such lines again; socket records were gone (one run:
/// 48,030 of 50,000 in the spool).
#[test]
fn sigterm_with_kafka_unreachable_spools_every_record_a_tcp_source_read() {
    const N: u64 = 50_000;
    let bootstrap = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let tcp = free_port();
    // Nothing gives up before SIGTERM: the queue stays full, the sink waits.
    let config = to_kafka(dir.path(), &bootstrap)
        .shutdown_grace_ms(2000)
        .source("net", Source::tcp(&local(tcp)))
        .edit_sink("kafka", |k| {
            k.delivery_timeout_ms(600000)
                .spool("queue_full_timeout_ms", 600000)
                .librdkafka("queue.buffering.max.messages", "10000")
        });
    let mut agent = Agent::start(dir.path(), &config.to_yaml());
    let admin = agent.admin_address().to_string();
    let mut c = connect_when_listening(tcp);
    let mut text = Vec::new();
    for seq in 0..N {
        text.extend_from_slice(&SeqLines::line(seq));
        text.push(b'\n');
    }
    c.write_all(&text).unwrap();
    drop(c);
    let read = wait_until(Duration::from_secs(60), || {
        metric(&admin, "tailrace_source_events_total{source=\"net\"}") >= N as f64
    });
    assert!(
        read,
        "the agent did not read the {N} records:\n{}",
        agent.log_tail(20)
    );
    agent.terminate();
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", agent.log_tail(20));
    let held = agent.spool_usage("kafka", "spool");
    assert_eq!(
        held.events,
        N,
        "every record read is in the spool after SIGTERM: {held:?}\n{}",
        agent.log_tail(20)
    );
}
