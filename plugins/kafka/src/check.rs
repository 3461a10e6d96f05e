//! What a sink meets at its cluster: is a broker reachable, is TLS verified,
//! is the client authenticated, do its topics exist and how durable are
//! they, may it use the idempotent producer. `tailrace check` prints all of
//! it; the running sink checks its topics' durability at start and on every
//! metadata refresh, warns once per topic, and sets the topic gauges.
//!
//! acks=all waits for `min.insync.replicas` copies, no more: a topic with
//! one replica, or with `min.insync.replicas=1`, or with unclean leader
//! election on, can lose what Kafka acknowledged. That is what makes "loses
//! no line" true beyond the agent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::{Client, ClientContext, OAuthToken};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use tailrace_api::{CheckLine, CheckReport, SinkMetrics};
use tracing::{debug, warn};

use crate::config::{KafkaSinkConfig, EMBEDDED};
use crate::encode::Template;
use crate::properties;

/// How durable one topic is, as the cluster says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durability {
    pub topic: String,
    pub partitions: usize,
    /// The fewest replicas of any partition.
    pub replication_factor: usize,
    /// `None` when the broker does not answer DescribeConfigs.
    pub min_insync_replicas: Option<i64>,
    pub unclean_leader_election: Option<bool>,
}

impl Durability {
    /// What falls short of a topic that keeps what acks=all acknowledged.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.replication_factor < 3 {
            w.push(format!(
                "replication factor {} (below 3: a broker lost can lose acknowledged records)",
                self.replication_factor
            ));
        }
        match self.min_insync_replicas {
            Some(n) if n < 2 => w.push(format!(
                "min.insync.replicas={n} (below 2: acks=all is then satisfied by one copy)"
            )),
            _ => {}
        }
        if self.unclean_leader_election == Some(true) {
            w.push("unclean.leader.election.enable=true (an out-of-sync replica may become leader and drop acknowledged records)".into());
        }
        w
    }

    fn summary(&self) -> String {
        let mis = self
            .min_insync_replicas
            .map_or("unknown".to_string(), |n| n.to_string());
        let unclean = self
            .unclean_leader_election
            .map_or("unknown".to_string(), |b| b.to_string());
        format!(
            "{} partitions, replication factor {}, min.insync.replicas {mis}, unclean.leader.election.enable {unclean}",
            self.partitions, self.replication_factor
        )
    }
}

/// (error code, librdkafka's reason) of each client error.
type Errors = Vec<(Option<RDKafkaErrorCode>, String)>;

/// Client errors seen while checking, for telling TLS from authentication
/// from an unreachable broker.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Errors>>);

impl Seen {
    fn find(&self, codes: &[RDKafkaErrorCode]) -> Option<String> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter()
            .find(|(c, _)| c.is_some_and(|c| codes.contains(&c)))
            .map(|(_, r)| r.clone())
    }

    fn idempotence(&self) -> Option<String> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter()
            .find(|(c, _)| {
                matches!(
                    c,
                    Some(
                        RDKafkaErrorCode::Fatal
                            | RDKafkaErrorCode::ClusterAuthorizationFailed
                            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                    )
                )
            })
            .map(|(_, r)| r.clone())
    }
}

/// The context of the checking clients: it remembers errors and reads the
/// idempotent producer's state from the statistics.
#[derive(Clone, Default)]
struct Probe {
    seen: Seen,
    idempotence: Arc<Mutex<Option<String>>>,
    /// The sink's OAUTHBEARER token source (a token file, MSK IAM).
    token: Option<Arc<crate::auth::TokenSource>>,
}

impl Probe {
    fn new(token: Option<Arc<crate::auth::TokenSource>>) -> Probe {
        Probe {
            token,
            ..Probe::default()
        }
    }

    fn of(config: &KafkaSinkConfig) -> Probe {
        Probe::new(
            config
                .sasl
                .as_ref()
                .and_then(|s| s.token_source())
                .map(Arc::new),
        )
    }
}

impl ClientContext for Probe {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        debug!(facility = fac, "librdkafka: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.seen
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((error.rdkafka_error_code(), reason.to_string()));
    }

    fn stats_raw(&self, statistics: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Stats {
            eos: Option<Eos>,
        }
        #[derive(serde::Deserialize)]
        struct Eos {
            idemp_state: String,
        }
        if let Ok(Stats { eos: Some(eos) }) = serde_json::from_slice::<Stats>(statistics) {
            *self.idempotence.lock().unwrap_or_else(|e| e.into_inner()) = Some(eos.idemp_state);
        }
    }

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        Ok(crate::auth::oauth_token(self.token.as_deref())?)
    }
}

impl ProducerContext for Probe {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// The durability of `topic` through `client` (metadata) and `admin`
/// (DescribeConfigs).
fn durability<C: ClientContext, A: ClientContext>(
    client: &Client<C>,
    admin: &AdminClient<A>,
    topic: &str,
    timeout: Duration,
) -> Result<Durability, String> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("cannot fetch metadata: {e}"))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| format!("topic {topic} is not in the metadata"))?;
    if let Some(e) = t.error() {
        return Err(format!("topic {topic}: {}", RDKafkaErrorCode::from(e)));
    }
    if t.partitions().is_empty() {
        return Err(format!(
            "topic {topic} does not exist (create it, or let the cluster auto-create it)"
        ));
    }
    let replication_factor = t
        .partitions()
        .iter()
        .map(|p| p.replicas().len())
        .min()
        .unwrap_or(0);
    let (min_insync_replicas, unclean_leader_election) = topic_configs(admin, topic, timeout);
    Ok(Durability {
        topic: topic.to_string(),
        partitions: t.partitions().len(),
        replication_factor,
        min_insync_replicas,
        unclean_leader_election,
    })
}

/// `min.insync.replicas` and `unclean.leader.election.enable` of a topic;
/// `None` for what the broker does not say.
fn topic_configs<A: ClientContext>(
    admin: &AdminClient<A>,
    topic: &str,
    timeout: Duration,
) -> (Option<i64>, Option<bool>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return (None, None);
    };
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let result = runtime.block_on(async {
        tokio::time::timeout(
            timeout + Duration::from_secs(1),
            admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options),
        )
        .await
    });
    let Ok(Ok(results)) = result else {
        debug!(topic, "no DescribeConfigs answer");
        return (None, None);
    };
    let Some(Ok(resource)) = results.into_iter().next() else {
        return (None, None);
    };
    let value = |name: &str| {
        resource
            .entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    (
        value("min.insync.replicas").and_then(|v| v.parse().ok()),
        value("unclean.leader.election.enable").map(|v| v == "true"),
    )
}

/// The properties for checking clients: the sink's, brokers included.
fn client_config(config: &KafkaSinkConfig, name: &str, stats: bool) -> ClientConfig {
    let mut cc = properties::client_config(&properties::assemble(config, name));
    // Replaces the sink's interval: the probe reads the idempotent state.
    cc.set("statistics.interval.ms", if stats { "200" } else { "0" });
    cc
}

/// `tailrace check`: connects with the sink's real properties and says
/// what it meets. Deliverable when a broker answered, the client was
/// authenticated, the topic exists and the idempotent producer got its id.
pub fn check(config: &KafkaSinkConfig, name: &str, timeout: Duration) -> CheckReport {
    let mut report = CheckReport::default();
    if config.bootstrap_servers == EMBEDDED {
        report.lines.push(CheckLine::ok(
            "cluster",
            "embedded (an in-process test cluster): nothing to check",
        ));
        return report;
    }
    let tls = config.tls.is_some()
        || config
            .librdkafka
            .get("security.protocol")
            .is_some_and(|p| p.to_string().to_ascii_uppercase().ends_with("SSL"));
    let sasl = config.sasl.is_some()
        || config
            .librdkafka
            .get("security.protocol")
            .is_some_and(|p| p.to_string().to_ascii_uppercase().starts_with("SASL"));
    let probe = Probe::of(config);
    let producer: BaseProducer<Probe> =
        match client_config(config, name, true).create_with_context(probe.clone()) {
            Ok(p) => p,
            Err(e) => {
                report.lines.push(CheckLine::fail(
                    "client",
                    format!("librdkafka refuses the properties: {e}"),
                ));
                return report;
            }
        };
    // Serves librdkafka's first token refresh event (a token file, MSK IAM)
    // before anything waits for an authenticated connection.
    producer.poll(Duration::ZERO);
    let metadata = producer.client().fetch_metadata(None, timeout);
    let broker_count = match &metadata {
        Ok(m) => m.brokers().len(),
        Err(_) => 0,
    };
    if broker_count == 0 {
        // Why: TLS, authentication, or nothing answering.
        producer.poll(Duration::from_millis(200));
        let tls_error = probe.seen.find(&[RDKafkaErrorCode::SSL]);
        let auth_error = probe.seen.find(&[
            RDKafkaErrorCode::Authentication,
            RDKafkaErrorCode::SaslAuthenticationFailed,
        ]);
        let why = match (&tls_error, &auth_error, &metadata) {
            (Some(t), _, _) => {
                report
                    .lines
                    .push(CheckLine::fail("TLS", format!("verification failed: {t}")));
                return report;
            }
            (_, Some(a), _) => {
                report.lines.push(CheckLine::ok(
                    "broker reachable",
                    config.bootstrap_servers.clone(),
                ));
                if tls {
                    report.lines.push(CheckLine::ok("TLS", "verified"));
                }
                report
                    .lines
                    .push(CheckLine::fail("authenticated", format!("no: {a}")));
                return report;
            }
            (_, _, Err(e)) => e.to_string(),
            _ => "no broker in the metadata".into(),
        };
        report.lines.push(CheckLine::fail(
            "broker reachable",
            format!("no broker of {} answered: {why}", config.bootstrap_servers),
        ));
        return report;
    }
    report.lines.push(CheckLine::ok(
        "broker reachable",
        format!(
            "{} ({broker_count} brokers in the cluster)",
            config.bootstrap_servers
        ),
    ));
    if tls {
        report.lines.push(CheckLine::ok("TLS", "verified"));
    }
    if sasl {
        report.lines.push(CheckLine::ok("authenticated", "yes"));
    }
    let admin: Option<AdminClient<Probe>> = client_config(config, name, false)
        .create_with_context(Probe::new(probe.token.clone()))
        .ok();
    if let (Some(admin), Some(token)) = (&admin, &probe.token) {
        if let Err(e) = crate::auth::set_token(admin.inner(), token) {
            debug!(error = %e, "cannot give the admin client a token");
        }
    }
    let topics: Vec<String> = match Template::parse(&config.topic)
        .ok()
        .and_then(|t| t.as_static().map(str::to_string))
    {
        Some(t) => vec![t],
        None => {
            // A template: the topics whose names fit its fixed parts.
            let literals: Vec<String> = Template::parse(&config.topic)
                .map(|t| t.literals().map(str::to_string).collect())
                .unwrap_or_default();
            let all = metadata.as_ref().map(|m| {
                m.topics()
                    .iter()
                    .map(|t| t.name().to_string())
                    .filter(|n| fits(n, &literals))
                    .collect::<Vec<_>>()
            });
            let found = all.unwrap_or_default();
            report.lines.push(CheckLine::ok(
                "topic template",
                format!(
                    "{}: {} existing topics fit its fixed parts",
                    config.topic,
                    found.len()
                ),
            ));
            found
        }
    };
    for topic in &topics {
        let what = format!("topic {topic}");
        let Some(admin) = &admin else { break };
        match durability(producer.client(), admin, topic, timeout) {
            Ok(d) => {
                let warnings = d.warnings();
                if warnings.is_empty() {
                    report.lines.push(CheckLine::ok(&what, d.summary()));
                } else {
                    report.lines.push(CheckLine::warn(
                        &what,
                        format!("{}; {}", d.summary(), warnings.join("; ")),
                    ));
                }
            }
            Err(e) => report.lines.push(CheckLine::fail(&what, e)),
        }
    }
    // The idempotent producer asks for its id as soon as it is created.
    let deadline = Instant::now() + timeout;
    let state = loop {
        producer.poll(Duration::from_millis(100));
        let state = probe
            .idempotence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if state.as_deref() == Some("Assigned") || Instant::now() >= deadline {
            break state;
        }
        if let Some(e) = probe.seen.idempotence() {
            report.lines.push(CheckLine::fail(
                "idempotent producer",
                format!("refused: {e}"),
            ));
            return report;
        }
    };
    match state.as_deref() {
        Some("Assigned") => report.lines.push(CheckLine::ok(
            "idempotent producer",
            "allowed (InitProducerId answered)",
        )),
        other => report.lines.push(CheckLine::fail(
            "idempotent producer",
            format!(
                "no producer id within {timeout:?} (state {})",
                other.unwrap_or("unknown")
            ),
        )),
    }
    report
}

/// Whether `name` holds `literals` in order.
fn fits(name: &str, literals: &[String]) -> bool {
    let mut rest = name;
    for l in literals {
        match rest.find(l.as_str()) {
            Some(i) => rest = &rest[i + l.len()..],
            None => return false,
        }
    }
    true
}

/// The running sink's durability watch: checks the sink's static topic at
/// start and every `interval`, warns once per topic and problem, and sets
/// the topic gauges. Runs on its own thread until `stop` is set.
pub(crate) fn watch(
    config: ClientConfig,
    token: Option<Arc<crate::auth::TokenSource>>,
    sink: Arc<str>,
    topic: Option<String>,
    metrics: SinkMetrics,
    interval: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let Some(topic) = topic else {
        debug!(sink = %sink, "the topic is a template: its topics are checked by `tailrace check`");
        return;
    };
    let Ok(admin) = config.create_with_context::<_, AdminClient<Probe>>(Probe::new(token.clone()))
    else {
        return;
    };
    let mut warned: HashSet<String> = HashSet::new();
    let mut next = Instant::now();
    let mut token_due = Instant::now();
    while !stop.load(Ordering::Acquire) {
        // Nobody polls the admin client's main queue, so its OAUTHBEARER
        // token (a token file, MSK IAM) is renewed here.
        if let Some(token) = token.as_ref().filter(|_| Instant::now() >= token_due) {
            token_due = Instant::now()
                + crate::auth::set_token(admin.inner(), token).unwrap_or_else(|e| {
                    debug!(sink = %sink, error = %e, "cannot give the durability check a token");
                    Duration::from_secs(10)
                });
        }
        if Instant::now() >= next {
            next = Instant::now() + interval;
            match durability(admin.inner(), &admin, &topic, Duration::from_secs(10)) {
                Ok(d) => {
                    crate::metrics::TopicDurability::of(&sink, &metrics).set(
                        &topic,
                        d.replication_factor as i64,
                        d.min_insync_replicas.unwrap_or(-1),
                    );
                    for w in d.warnings() {
                        if warned.insert(w.clone()) {
                            warn!(sink = %sink, topic = %topic, problem = %w, "the topic is less durable than acks=all promises");
                        }
                    }
                }
                Err(e) => {
                    debug!(sink = %sink, topic = %topic, error = %e, "cannot check the topic's durability")
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(rf: usize, mis: Option<i64>, unclean: Option<bool>) -> Durability {
        Durability {
            topic: "logs".into(),
            partitions: 3,
            replication_factor: rf,
            min_insync_replicas: mis,
            unclean_leader_election: unclean,
        }
    }

    #[test]
    fn durability_warnings() {
        assert!(d(3, Some(2), Some(false)).warnings().is_empty());
        assert!(d(3, None, None).warnings().is_empty());
        let w = d(1, Some(1), Some(true)).warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("replication factor 1"));
        assert!(w[1].contains("min.insync.replicas=1"));
        assert!(w[2].contains("unclean"));
    }

    #[test]
    fn template_fits() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(fits("logs-app", &l(&["logs-"])));
        assert!(fits("a-x-b", &l(&["a-", "-b"])));
        assert!(!fits("metrics", &l(&["logs-"])));
    }
}
