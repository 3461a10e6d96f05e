//! SASL/OAUTHBEARER end to end: the agent authenticates to a SASL proxy in
//! front of tansu (tests/src/sasl_proxy.rs; tansu 0.6.0 speaks SCRAM only)
//! with a token from a file that is replaced while it runs, with OIDC
//! client credentials from a token endpoint, and with a wrong token that is
//! refused until the file is fixed. What arrived is read back with the
//! harness consumer and counted by sequence number.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tailrace_e2e::config::Sink;
use tailrace_e2e::sasl_proxy::{
    jwt, PlainCheck, SaslProxy, ScramSha256Check, TokenCheck, TokenEndpoint, TokenSet,
};
use tailrace_e2e::{
    free_port, http, run_tailrace, wait_until, Agent, Broker, Config, Consumer, SeqLines,
};

const TOPIC: &str = "logs";
const WAIT: Duration = Duration::from_secs(60);

/// tansu behind a SASL proxy, which tansu advertises, so that every
/// connection of the agent goes through the proxy.
fn broker_behind_proxy(
    tokens: Arc<dyn TokenCheck>,
    session_lifetime_ms: i64,
) -> (Broker, SaslProxy) {
    let port = free_port();
    let proxy = SaslProxy::start(&format!("127.0.0.1:{port}"), tokens, session_lifetime_ms);
    let broker = Broker::start_behind(port, proxy.port());
    broker.create_topic(TOPIC, 1);
    (broker, proxy)
}

/// The standard config against the proxy, its sink's `sasl` keys set by
/// `sasl`.
fn sasl_config(dir: &Path, proxy: &SaslProxy, sasl: impl FnOnce(Sink) -> Sink) -> Config {
    Config::file_to_kafka(dir, &proxy.address(), TOPIC).edit_sink("kafka", sasl)
}

/// A JWT that expires in an hour.
fn token(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jwt(sub, now + 3600)
}

/// Replaces the file at once, as the kubelet or Vault agent do.
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An agent whose token is DIR/token (holding `token`), checked every 500 ms.
fn agent_with_token_file(dir: &Path, proxy: &SaslProxy, token: &str) -> (Agent, PathBuf) {
    let token_file = dir.join("token");
    write_token(&token_file, token);
    let sasl = |k: Sink| {
        k.sasl("mechanism", "OAUTHBEARER")
            .sasl("token_file", &token_file)
            .sasl("token_file_check_ms", 500)
    };
    (
        Agent::start(dir, &sasl_config(dir, proxy, sasl).to_yaml()),
        token_file,
    )
}

/// Reads until `lines` all arrived (or WAIT), then asserts none is missing
/// and none repeated.
fn assert_all_arrived(consumer: &mut Consumer, lines: &SeqLines, agent: &Agent) {
    let n = lines.written() as usize;
    let report = lines.count(
        consumer
            .read_count(n, WAIT)
            .iter()
            .map(|r| r.payload.clone()),
    );
    assert!(report.is_complete(), "{report}\n{}", agent.log_tail(40));
    assert_eq!(report.duplicates, 0, "{report}");
}

#[test]
fn token_file_replaced_while_running_is_used_after_a_refresh() {
    let (first, second) = (token("svc-first"), token("svc-second"));
    let tokens = TokenSet::new(&[&first]);
    // The proxy asks for re-authentication (KIP-368) every 2 s, so the
    // token in use shows on the wire.
    let (broker, proxy) = broker_behind_proxy(tokens.clone(), 2_000);
    let dir = tempfile::tempdir().unwrap();
    let (agent, token_file) = agent_with_token_file(dir.path(), &proxy, &first);
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(2_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(2_000, WAIT);
    assert!(
        proxy.stats().accepted.contains_key(&first),
        "{:?}",
        proxy.stats()
    );

    // Both are valid while the issuer rotates, as with a real one.
    tokens.replace(&[&first, &second]);
    write_token(&token_file, &second);
    // Every open connection (the producer's, the durability watch's admin
    // client's) has re-authenticated with the new token.
    assert!(
        wait_until(WAIT, || {
            let s = proxy.stats();
            !s.sessions.is_empty() && s.sessions.values().all(|t| *t == second)
        }),
        "the agent does not use the new token everywhere: {:?}\n{}",
        proxy.stats(),
        agent.log_tail(40)
    );
    // The old token is revoked: every later authentication must use the new one.
    tokens.replace(&[&second]);
    let before = proxy.stats().accepted[&second];
    lines.append(2_000);
    assert_all_arrived(&mut consumer, &lines, &agent);
    assert!(
        wait_until(WAIT, || {
            let s = proxy.stats();
            s.refused > 0 || s.accepted[&second] > before
        }),
        "no re-authentication after the revocation: {:?}",
        proxy.stats()
    );
    let stats = proxy.stats();
    assert_eq!(
        stats.refused, 0,
        "an authentication used the revoked token: {stats:?}"
    );
    assert_eq!(stats.unauthenticated_writes, 0, "{stats:?}");
    let log = agent.log();
    assert!(
        !log.contains(&first) && !log.contains(&second),
        "a token is in the agent's log"
    );
}

#[test]
fn oidc_client_credentials_from_a_token_endpoint() {
    let issued = token("svc-oidc");
    let endpoint = TokenEndpoint::start("tailrace-client", "oidc-s3cret", &issued);
    let (broker, proxy) = broker_behind_proxy(TokenSet::new(&[&issued]), 0);
    let dir = tempfile::tempdir().unwrap();
    let sasl = |k: Sink| {
        k.sasl("mechanism", "OAUTHBEARER")
            .sasl("token_endpoint_url", endpoint.url())
            .sasl("client_id", "tailrace-client")
            .sasl("client_secret", "oidc-s3cret")
            .sasl("scope", "kafka.write")
            .sasl("extensions.logicalCluster", "lkc-test")
    };
    let agent = Agent::start(dir.path(), &sasl_config(dir.path(), &proxy, sasl).to_yaml());
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(3_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    assert_all_arrived(&mut consumer, &lines, &agent);

    let got = endpoint.stats();
    assert!(got.issued >= 1 && got.refused.is_empty(), "{got:?}");
    assert_eq!(got.scope.as_deref(), Some("kafka.write"));
    let stats = proxy.stats();
    assert!(stats.accepted.contains_key(&issued), "{stats:?}");
    assert_eq!(
        stats.extensions.get("logicalCluster").map(String::as_str),
        Some("lkc-test")
    );
    assert_eq!(
        (stats.refused, stats.unauthenticated_writes),
        (0, 0),
        "{stats:?}"
    );
    let log = agent.log();
    assert!(
        !log.contains("oidc-s3cret") && !log.contains(&issued),
        "a secret is in the agent's log"
    );
}

#[test]
fn wrong_token_is_refused_and_nothing_is_lost_once_it_is_fixed() {
    let (good, wrong) = (token("svc-good"), token("svc-wrong"));
    let (broker, proxy) = broker_behind_proxy(TokenSet::new(&[&good]), 0);
    let dir = tempfile::tempdir().unwrap();
    let (agent, token_file) = agent_with_token_file(dir.path(), &proxy, &wrong);
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(1_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    // Read while the agent is refused again and again.
    consumer.read_until(WAIT, |_| proxy.stats().refused >= 3);
    let stats = proxy.stats();
    assert!(stats.refused >= 3, "{stats:?}\n{}", agent.log_tail(40));
    assert!(
        stats.accepted.is_empty() && stats.produce_requests == 0,
        "{stats:?}"
    );
    assert_eq!(
        stats.unauthenticated_writes, 0,
        "the agent wrote without authenticating"
    );
    assert!(
        consumer.records().is_empty(),
        "lines arrived with a refused token"
    );
    let ready = http::get(agent.admin_address(), "/ready").unwrap();
    assert_eq!(ready.status, 503, "{ready:?}");

    write_token(&token_file, &good);
    lines.append(1_000);
    assert_all_arrived(&mut consumer, &lines, &agent);
    assert!(proxy.stats().accepted.contains_key(&good));
    let log = agent.log();
    assert!(
        !log.contains(&wrong) && !log.contains(&good),
        "a token is in the agent's log"
    );
}

/// Needs a tailrace built with the cargo feature msk-iam (tests/run builds
/// both this test and the binary with it).
#[cfg(feature = "msk-iam")]
#[test]
fn aws_msk_iam_token_from_the_credential_chain_passes_a_signature_check() {
    use tailrace_e2e::sasl_proxy::MskIamCheck;
    let check = MskIamCheck {
        region: "eu-west-1".into(),
        access_key_id: "AKIDTAILRACETEST".into(),
        secret_access_key: "tailrace/test+secret/KEY".into(),
        session_token: Some("tailrace-session-token".into()),
    };
    let (broker, proxy) = broker_behind_proxy(Arc::new(check), 0);
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("no-such-file");
    let none = none.to_str().unwrap();
    // The environment is the first link of the standard chain; the files
    // and the instance metadata must not be asked.
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDTAILRACETEST"),
        ("AWS_SECRET_ACCESS_KEY", "tailrace/test+secret/KEY"),
        ("AWS_SESSION_TOKEN", "tailrace-session-token"),
        ("AWS_CONFIG_FILE", none),
        ("AWS_SHARED_CREDENTIALS_FILE", none),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let yaml = sasl_config(dir.path(), &proxy, |k| {
        k.sasl("mechanism", "AWS_MSK_IAM")
            .sasl("region", "eu-west-1")
    })
    .to_yaml();
    let agent = Agent::start_with_env(dir.path(), &yaml, &env);
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(2_000);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    assert_all_arrived(&mut consumer, &lines, &agent);
    let stats = proxy.stats();
    assert!(!stats.accepted.is_empty(), "{stats:?}");
    assert_eq!(
        (stats.refused, stats.unauthenticated_writes),
        (0, 0),
        "{stats:?}"
    );
    assert!(
        !agent.log().contains("tailrace/test+secret/KEY"),
        "the secret key is in the agent's log"
    );
}

/// `tailrace check` authenticates with the sink's token source too.
#[test]
fn check_authenticates_with_the_token_file() {
    let good = token("svc-check");
    let (_broker, proxy) = broker_behind_proxy(TokenSet::new(&[&good]), 0);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let sasl = |k: Sink| {
        k.sasl("mechanism", "OAUTHBEARER")
            .sasl("token_file", &token_file)
    };
    let config = dir.path().join("check.yaml");
    std::fs::write(&config, sasl_config(dir.path(), &proxy, sasl).to_yaml()).unwrap();
    let check = || {
        let out = run_tailrace([
            "check",
            "--config",
            config.to_str().unwrap(),
            "--timeout-s",
            "10",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    write_token(&token_file, &token("svc-wrong"));
    let (code, text) = check();
    assert_ne!(code, Some(0), "{text}");
    assert!(proxy.stats().refused >= 1, "{:?}", proxy.stats());

    write_token(&token_file, &good);
    let (code, text) = check();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("authenticated: ok"), "{text}");
    assert!(text.contains("replication factor 1"), "{text}");
    // The topic's configs come from an admin client, which is given the
    // token directly (nobody polls its refresh events): DescribeConfigs
    // went over an authenticated connection.
    let describe = proxy.stats().authenticated_requests.get(&32).copied();
    assert!(describe >= Some(1), "{:?}", proxy.stats());
    assert!(
        proxy.stats().accepted.contains_key(&good),
        "{:?}",
        proxy.stats()
    );
    assert!(!text.contains(&good), "the token is in check's output");
}

/// SASL/PLAIN, which tansu 0.6.0 refuses, through the proxy: the agent
/// delivers every line with the right password, and with a wrong one it is
/// refused (the proxy counts it), keeps running and loses nothing until a
/// SIGHUP brings the right one.
#[test]
fn plain_delivers_every_line_and_a_wrong_password_is_refused_until_a_reload() {
    let check = Arc::new(PlainCheck {
        user: "tailrace".into(),
        password: "plain-secret-4711".into(),
    });
    let (broker, proxy) = broker_behind_proxy(check, 0);
    let dir = tempfile::tempdir().unwrap();
    let plain = |password: &str| {
        sasl_config(dir.path(), &proxy, |k| {
            k.sasl("mechanism", "PLAIN")
                .sasl("username", "tailrace")
                .sasl("password", password)
        })
    };
    let wrong = plain("not-the-password").to_yaml();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(5_000);
    let agent = Agent::start(dir.path(), &wrong);
    assert!(
        wait_until(WAIT, || proxy.stats().refused > 0),
        "the wrong password was not refused: {:?}\n{}",
        proxy.stats(),
        agent.log_tail(30)
    );
    let fixed = plain("plain-secret-4711").admin_address(agent.admin_address());
    std::fs::write(agent.config_path(), fixed.to_yaml()).unwrap();
    agent.reload();
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    assert_all_arrived(&mut consumer, &lines, &agent);
    for secret in ["not-the-password", "plain-secret-4711"] {
        assert!(!agent.log().contains(secret), "{secret} is in the log");
    }
}

/// SCRAM-SHA-256, which tansu 0.6.0 refuses, through the proxy's SCRAM
/// server: every line arrives.
#[test]
fn scram_sha_256_delivers_every_line() {
    let check = Arc::new(ScramSha256Check {
        user: "tailrace".into(),
        password: "scram-256-secret".into(),
    });
    let (broker, proxy) = broker_behind_proxy(check, 0);
    let dir = tempfile::tempdir().unwrap();
    let config = sasl_config(dir.path(), &proxy, |k| {
        k.sasl("mechanism", "SCRAM-SHA-256")
            .sasl("username", "tailrace")
            .sasl("password", "scram-256-secret")
    })
    .to_yaml();
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(5_000);
    let agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    assert_all_arrived(&mut consumer, &lines, &agent);
    assert_eq!(proxy.stats().refused, 0, "{:?}", proxy.stats());
    assert!(
        proxy
            .stats()
            .mechanisms
            .iter()
            .all(|m| m == "SCRAM-SHA-256"),
        "{:?}",
        proxy.stats()
    );
}
