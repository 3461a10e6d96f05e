//! Secured clusters: TLS (stunnel in front of tansu), SASL/SCRAM (tansu's
//! own), mutual TLS, every codec, and the failures a secured cluster
//! brings (a wrong password, a wrong CA) with the recovery by SIGHUP. Every
//! line carries a sequence number and is counted at a real consumer that
//! logs in with the same credentials.

use std::path::Path;
use std::time::Duration;

use tailrace_e2e::config::{Channel, Sink, Source};
use tailrace_e2e::http::get;
use tailrace_e2e::secure::{SecureCluster, CLIENT_KEY_PASSWORD};
use tailrace_e2e::{wait_until, Agent, Broker, Config, Consumer, Report, SeqLines};

const TOPIC: &str = "logs";
const LINES: u64 = 20_000;
const USER: &str = "agent";
const PASSWORD: &str = "correct-horse-battery-staple";
// tansu 0.6.0 answers the SCRAM-SHA-512 handshake only: it refuses
// SCRAM-SHA-256 and PLAIN with NoSharedMechanism (see tests/tests/oauth.rs
// for the mechanisms tested through a SASL-terminating proxy).
const USERS: &[(&str, &str, &str)] = &[(USER, PASSWORD, "scram512")];

/// `Config::file_to_kafka` with the kafka sink's keys changed by `sink`.
fn secured(dir: &Path, bootstrap: &str, sink: impl FnOnce(Sink) -> Sink) -> Config {
    Config::file_to_kafka(dir, bootstrap, TOPIC).edit_sink("kafka", sink)
}

/// Writes `secret` to DIR/NAME, readable by the owner only, and returns the
/// `${file:}` reference to it.
fn secret_file(dir: &Path, name: &str, secret: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("${{file:{}}}", path.display())
}

/// Reads until `lines` has arrived (or three minutes passed) and checks:
/// nothing lost, and at most `max_duplicates` repeated.
fn all_arrive(consumer: &mut Consumer, lines: &SeqLines, max_duplicates: u64) -> Report {
    let total = usize::try_from(lines.written()).unwrap();
    consumer.read_until(Duration::from_secs(180), |r| {
        lines.count(r).missing.is_empty()
    });
    let report = lines.count(consumer.records());
    println!("{report}");
    assert!(report.missing.is_empty(), "lines lost: {report}");
    assert_eq!(report.malformed_count, 0, "{report}");
    assert!(report.duplicates <= max_duplicates, "{report}");
    assert!(consumer.records().len() >= total);
    report
}

fn status(admin: &str, path: &str) -> u16 {
    get(admin, path).map_or(0, |r| r.status)
}

/// `Config::file_to_kafka` against the SCRAM cluster over TLS: trusting
/// `ca`, logging in as USER with `password`.
fn scram_over_tls(dir: &Path, cluster: &SecureCluster, ca: &Path, password: &str) -> Config {
    secured(dir, &cluster.tls.bootstrap(), |k| {
        k.set("tls.ca_file", ca)
            .sasl("mechanism", "SCRAM-SHA-512")
            .sasl("username", USER)
            .sasl("password", password)
    })
}

/// A consumer of TOPIC that logs in as USER over TLS.
fn scram_consumer(cluster: &SecureCluster) -> Consumer {
    Consumer::with_properties(
        &cluster.tls.bootstrap(),
        TOPIC,
        &cluster.consumer_properties("SCRAM-SHA-512", USER, PASSWORD),
    )
}

/// Waits until `/ready` answers 503 with `words` (lower case) in its body.
fn refused_with(admin: &str, words: &str) -> bool {
    wait_until(Duration::from_secs(60), || {
        get(admin, "/ready")
            .is_ok_and(|r| r.status == 503 && r.body.to_ascii_lowercase().contains(words))
    })
}

#[test]
fn scram_sha_512_over_tls_delivers_every_line() {
    let cluster = SecureCluster::scram(USERS, &[(TOPIC, 2)]);
    let dir = tempfile::tempdir().unwrap();
    let password = secret_file(dir.path(), "kafka.password", PASSWORD);
    // The password comes from a file: ${file:...}.
    let config = scram_over_tls(dir.path(), &cluster, &cluster.pki.ca(), &password).to_yaml();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(LINES);
    let agent = Agent::start(dir.path(), &config);
    let mut consumer = scram_consumer(&cluster);
    let report = all_arrive(&mut consumer, &lines, 0);
    assert_eq!(report.duplicates, 0, "no restart, no duplicates: {report}");
    assert!(
        !agent.log().contains(PASSWORD),
        "the password is in the log"
    );
}

#[test]
fn mutual_tls_with_an_encrypted_client_key_delivers_every_line() {
    let cluster = SecureCluster::mutual_tls(&[(TOPIC, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let key_password = secret_file(dir.path(), "key.password", CLIENT_KEY_PASSWORD);
    let config = secured(dir.path(), &cluster.tls.bootstrap(), |k| {
        k.set("tls.ca_file", cluster.pki.ca())
            .set("tls.cert_file", cluster.pki.client_cert())
            .set("tls.key_file", cluster.pki.client_key())
            .set("tls.key_password", &key_password)
    })
    .to_yaml();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(LINES);
    let agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::with_properties(
        &cluster.tls.bootstrap(),
        TOPIC,
        &cluster.consumer_properties("none", "", ""),
    );
    all_arrive(&mut consumer, &lines, 0);
    assert!(!agent.log().contains(CLIENT_KEY_PASSWORD));
}

#[test]
fn every_codec_delivers_to_a_real_consumer() {
    const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
    let broker = Broker::start();
    for codec in CODECS {
        broker.create_topic(codec, 1);
    }
    let dir = tempfile::tempdir().unwrap();
    // One channel and one sink per codec, with the agent's defaults else.
    let source = Source::of_type("file")
        .include(&[dir.path().join("logs/*.log")])
        .channels(&CODECS);
    let mut config = Config::empty()
        .set("data_dir", dir.path().join("data"))
        .source("app", source);
    for codec in CODECS {
        let sink = Sink::of_type("kafka")
            .channel(codec)
            .bootstrap_servers(&broker.bootstrap())
            .topic(codec)
            .compression(codec);
        config = config
            .channel(codec, Channel::of_type("memory"))
            .sink(codec, sink);
    }
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(LINES);
    let _agent = Agent::start(dir.path(), &config.to_yaml());
    for codec in CODECS {
        let mut consumer = Consumer::new(&broker.bootstrap(), codec);
        let report = all_arrive(&mut consumer, &lines, 0);
        println!("{codec}: {report}");
    }
}

#[test]
fn wrong_password_keeps_the_agent_running_not_ready_and_a_sighup_with_the_right_one_delivers_everything(
) {
    const WRONG: &str = "wrong-password-7731";
    let cluster = SecureCluster::scram(USERS, &[(TOPIC, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster.pki.ca();
    let with_password = |p: &str| scram_over_tls(dir.path(), &cluster, &ca, p);
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(LINES);
    let mut agent = Agent::start(dir.path(), &with_password(WRONG).to_yaml());
    let admin = agent.admin_address().to_string();
    let refused = refused_with(&admin, "authentication");
    let ready = get(&admin, "/ready").map(|r| r.body).unwrap_or_default();
    assert!(
        refused,
        "/ready does not say authentication failed: {ready}\n{}",
        agent.log_tail(30)
    );
    assert!(agent.is_running(), "the agent exited on a wrong password");
    let metrics = get(&admin, "/metrics").unwrap().body;
    for (what, text) in [
        ("log", agent.log()),
        ("/ready", ready),
        ("/metrics", metrics),
    ] {
        assert!(!text.contains(WRONG), "the password is in the {what}");
    }

    let fixed = with_password(PASSWORD).admin_address(&admin);
    std::fs::write(agent.config_path(), fixed.to_yaml()).unwrap();
    agent.reload();
    let mut consumer = scram_consumer(&cluster);
    all_arrive(&mut consumer, &lines, 0);
    assert!(
        wait_until(Duration::from_secs(30), || status(&admin, "/ready") == 200),
        "not ready after the fix: {}",
        agent.log_tail(20)
    );
    assert!(agent.is_running());
    assert!(!agent.log().contains(WRONG), "the password is in the log");
}

#[test]
fn wrong_ca_is_refused_with_a_tls_error_and_nothing_is_lost() {
    let cluster = SecureCluster::scram(USERS, &[(TOPIC, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let with_ca = |ca: &Path| scram_over_tls(dir.path(), &cluster, ca, PASSWORD);
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(LINES);
    let agent = Agent::start(dir.path(), &with_ca(&cluster.pki.other_ca()).to_yaml());
    let admin = agent.admin_address().to_string();
    let refused = refused_with(&admin, "certificate verify failed");
    assert!(
        refused,
        "/ready does not name the TLS failure: {:?}\n{}",
        get(&admin, "/ready").map(|r| r.body),
        agent.log_tail(30)
    );
    assert!(
        agent
            .log()
            .to_ascii_lowercase()
            .contains("certificate verify failed"),
        "the log does not name the TLS failure:\n{}",
        agent.log_tail(30)
    );
    let fixed = with_ca(&cluster.pki.ca()).admin_address(&admin);
    std::fs::write(agent.config_path(), fixed.to_yaml()).unwrap();
    agent.reload();
    let mut consumer = scram_consumer(&cluster);
    all_arrive(&mut consumer, &lines, 0);
}

#[test]
fn check_reports_tls_authentication_and_a_weak_topic_and_the_agent_warns_of_it() {
    let cluster = SecureCluster::scram(USERS, &[(TOPIC, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster.pki.ca();
    let with_password = |p: &str| scram_over_tls(dir.path(), &cluster, &ca, p);
    let check = |yaml: &str| {
        let path = dir.path().join("check.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = tailrace_e2e::run_tailrace([
            "check",
            "--config",
            path.to_str().unwrap(),
            "--timeout-s",
            "15",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };

    let (code, text) = check(&with_password(PASSWORD).to_yaml());
    println!("{text}");
    assert_eq!(code, Some(0), "{text}");
    for expected in [
        "broker reachable: ok",
        "TLS: ok: verified",
        "authenticated: ok",
        "topic logs: warning: 1 partitions, replication factor 1",
        "idempotent producer: ok",
        "sink kafka: can deliver",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }

    let (code, text) = check(&with_password("not-the-password").to_yaml());
    println!("{text}");
    assert_eq!(code, Some(69), "{text}");
    assert!(text.contains("authenticated: FAILED"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");

    let agent = Agent::start(dir.path(), &with_password(PASSWORD).to_yaml());
    let admin = agent.admin_address().to_string();
    let warned = wait_until(Duration::from_secs(60), || {
        agent.log().contains("less durable than acks=all promises")
    });
    assert!(warned, "no durability warning:\n{}", agent.log_tail(30));
    assert!(
        agent.log().contains("replication factor 1"),
        "{}",
        agent.log_tail(30)
    );
    let metrics = get(&admin, "/metrics").unwrap().body;
    assert_eq!(
        tailrace_e2e::http::sample(
            &metrics,
            "tailrace_sink_topic_replication_factor{sink=\"kafka\",topic=\"logs\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// Seconds since midnight of a log line's timestamp
/// (`2026-12-01T09:38:02.653884Z  WARN ...`).
fn logged_at(line: &str) -> Option<f64> {
    let time = line.split('T').nth(1)?.split('Z').next()?;
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// librdkafka's InitProducerId refused with CLUSTER_AUTHORIZATION_FAILED is
/// fatal for an idempotent producer. The sink replaces the producer, but
/// with a doubling wait between replacements (0.5 s, 1 s, 2 s, ...), not
/// in a tight loop, and nothing read is lost meanwhile.
#[test]
fn a_producer_refused_its_idempotent_id_is_recreated_with_backoff_and_nothing_is_lost() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    const REFUSALS: usize = 4;
    let cluster = MockCluster::new(1).expect("cannot start the mock cluster");
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED; REFUSALS],
    );
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(LINES);
    let agent = Agent::start(
        dir.path(),
        &Config::file_to_kafka(dir.path(), &bootstrap, TOPIC).to_yaml(),
    );
    let mut consumer = Consumer::new(&bootstrap, TOPIC);
    all_arrive(&mut consumer, &lines, LINES);
    let log = agent.log();
    let replaced: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("the kafka producer failed fatally"))
        .filter_map(logged_at)
        .collect();
    // librdkafka may spend more than one refusal on one producer.
    assert!(
        (2..=REFUSALS).contains(&replaced.len()),
        "{} replacements for {REFUSALS} refusals:\n{}",
        replaced.len(),
        agent.log_tail(40)
    );
    for (k, pair) in replaced.windows(2).enumerate() {
        let wanted = 0.5 * f64::from(1u32 << k);
        assert!(
            pair[1] - pair[0] >= wanted - 0.01,
            "replacement {} came {:.3} s after the one before, not after the {wanted} s backoff:\n{}",
            k + 2,
            pair[1] - pair[0],
            agent.log_tail(40)
        );
    }
}
