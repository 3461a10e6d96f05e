//! The librdkafka session of a sink: the producer behind a port
//! ([`ProducerPort`]) that the model test replaces with a fake, its
//! delivery reports, its progress (is Kafka acknowledging anything?), the
//! take-back of everything it holds, and its replacement, with backoff when
//! producers keep failing fatally.
//!
//! The session decides nothing about records: what to send, where a failed
//! record goes and when to fail over are the sink's ([`super::Sink`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext, PurgeConfig,
};
use tailrace_api::{Readiness, SinkContext, SinkMetrics};
use tracing::{debug, info, warn};

use super::{Failure, InFlight, Settings};
use crate::encode;

/// How long take-back waits for librdkafka to report what it purged.
const TAKE_BACK_WAIT: Duration = Duration::from_secs(2);
/// How far repeated fail-overs stretch the delivery timeout.
const MAX_STALL_BACKOFF: u32 = 8;
/// The first wait before a fatally failed producer is replaced again; it
/// doubles with each replacement that delivers nothing.
const REPLACE_BACKOFF: Duration = Duration::from_millis(500);
const MAX_REPLACE_BACKOFF: Duration = Duration::from_secs(60);

/// The sink's clock: `Instant::now` in the agent, a hand-moved clock in
/// the model test.
pub(crate) type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Failed deliveries, as the producer reports them, until the sink takes
/// them.
pub(crate) type Failures = Arc<Mutex<Vec<Failure>>>;

/// One record to hand to the producer.
pub(crate) struct Outgoing<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub timestamp: Option<i64>,
    pub headers: &'a [(String, Bytes)],
}

/// What the sink needs of a Kafka producer. Delivery reports settle the
/// record's [`InFlight`] when acknowledged and go to the session's
/// [`Failures`] when not.
pub(crate) trait ProducerPort {
    /// Takes one record, or refuses it at once: `QueueFull` (poll, then
    /// try again) or an error of the record itself.
    fn send(&self, m: &Outgoing<'_>, opaque: &Arc<InFlight>) -> Result<(), KafkaError>;
    /// Serves delivery reports, waiting up to `timeout` for one.
    fn poll(&self, timeout: Duration);
    /// Records taken and not yet reported.
    fn in_flight_count(&self) -> usize;
    /// Gives up everything held: each comes back as a failed delivery
    /// (`PurgeQueue`, `PurgeInflight`) in the polls after.
    fn purge(&self);
    fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)>;
    /// Records this producer has had acknowledged.
    fn acks(&self) -> u64;
}

/// Makes a new producer that reports failures to the given list.
pub(crate) type Connect<P> = Box<dyn FnMut(&Failures) -> Result<P, String>>;

/// The producer of a fatal error, for the log and `/ready`.
pub(crate) enum Fatal {
    Error(RDKafkaErrorCode, String),
    Fenced,
}

/// One producer at a time, replaced on fail-over or a fatal error.
pub(crate) struct Session<P> {
    producer: P,
    connect: Connect<P>,
    failed: Failures,
    clock: Clock,
    /// The producer's count of acknowledged messages last seen, and since
    /// when it has not moved.
    progress: (u64, Instant),
    /// The delivery timeout is multiplied by this: it doubles (up to
    /// `MAX_STALL_BACKOFF`) with each fail-over until something is
    /// acknowledged, so a broker slower to answer a new producer than the
    /// timeout is still reached.
    stall_backoff: u32,
    /// The broker fenced the producer's epoch: replace the producer.
    fenced: bool,
    /// Fatal replacements since Kafka last acknowledged anything, and when
    /// the next one may happen: a producer that keeps failing fatally (an
    /// idempotent producer not allowed, say) is recreated with exponential
    /// backoff, never in a tight loop.
    replacements: u32,
    replace_not_before: Option<Instant>,
    /// When the sink last took back what the producer held.
    failed_over_at: Option<Instant>,
}

impl<P: ProducerPort> Session<P> {
    pub fn new(mut connect: Connect<P>, clock: Clock) -> Result<Session<P>, String> {
        let failed = Failures::default();
        let producer = connect(&failed)?;
        let now = clock();
        Ok(Session {
            producer,
            connect,
            failed,
            clock,
            progress: (0, now),
            stall_backoff: 1,
            fenced: false,
            replacements: 0,
            replace_not_before: None,
            failed_over_at: None,
        })
    }

    pub fn now(&self) -> Instant {
        (self.clock)()
    }

    pub fn send(&self, m: &Outgoing<'_>, opaque: &Arc<InFlight>) -> Result<(), KafkaError> {
        self.producer.send(m, opaque)
    }

    pub fn poll(&self, timeout: Duration) {
        self.producer.poll(timeout)
    }

    pub fn in_flight_count(&self) -> usize {
        self.producer.in_flight_count()
    }

    /// Records the current producer has had acknowledged.
    pub fn acks(&self) -> u64 {
        self.producer.acks()
    }

    pub fn take_failures(&self) -> Vec<Failure> {
        std::mem::take(&mut *self.failed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn has_failures(&self) -> bool {
        !self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Failures handed back, to be settled with the take-back that follows.
    pub fn put_back(&self, failures: Vec<Failure>) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(failures);
    }

    /// How long Kafka has acknowledged nothing while the producer held
    /// records, once that is `timeout` (stretched by repeated fail-overs)
    /// or more.
    pub fn stalled(&mut self, timeout: Duration) -> Option<Duration> {
        let acks = self.acks();
        let now = self.now();
        if acks != self.progress.0 {
            self.stall_backoff = 1;
        }
        if acks != self.progress.0 || self.in_flight_count() == 0 {
            self.progress = (acks, now);
            return None;
        }
        let waited = now.saturating_duration_since(self.progress.1);
        (waited >= timeout * self.stall_backoff).then_some(waited)
    }

    /// A fail-over for a delivery timeout: the next one waits longer.
    pub fn stretch_timeout(&mut self) {
        self.stall_backoff = (self.stall_backoff * 2).min(MAX_STALL_BACKOFF);
    }

    /// Since when new events have gone first after a fail-over, while the
    /// new producer has delivered nothing.
    pub fn failed_over_and_silent(&self) -> Option<Instant> {
        self.failed_over_at.filter(|_| self.acks() == 0)
    }

    pub fn note_fenced(&mut self, code: Option<RDKafkaErrorCode>) {
        self.fenced |= matches!(
            code,
            Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        );
    }

    /// Takes back everything the producer holds, with the failures already
    /// reported: each comes back as a failed delivery.
    pub fn take_back_all(&mut self) -> Vec<Failure> {
        self.producer.purge();
        let until = self.now() + TAKE_BACK_WAIT;
        while self.in_flight_count() > 0 && self.now() < until {
            self.producer.poll(Duration::from_millis(20));
        }
        self.take_failures()
    }

    /// Starts a new producer in place of the current one (which should
    /// hold nothing: take it back first).
    pub fn replace(&mut self) -> Result<(), String> {
        self.producer = (self.connect)(&self.failed)?;
        self.progress = (0, self.now());
        self.fenced = false;
        Ok(())
    }

    /// A take-back and replacement, for the stall backoff and the
    /// relaxed order's "new events first".
    pub fn note_fail_over(&mut self) {
        self.failed_over_at = Some(self.now());
    }

    /// The producer failed fatally or was fenced, and its replacement is
    /// due (the backoff since the last one has passed): what the caller
    /// should log before it hands over.
    pub fn fatal_due(&mut self) -> Option<(Fatal, u32)> {
        let fatal = self.producer.fatal_error();
        if fatal.is_none() && !self.fenced {
            return None;
        }
        if self.acks() > 0 {
            // The producer being replaced delivered: not a failing loop.
            self.replacements = 0;
        }
        let now = self.now();
        if self.replace_not_before.is_some_and(|t| now < t) {
            return None;
        }
        let backoff = REPLACE_BACKOFF
            .saturating_mul(1 << self.replacements.min(6))
            .min(MAX_REPLACE_BACKOFF);
        let replacements = self.replacements;
        self.replacements += 1;
        self.replace_not_before = Some(now + backoff);
        let fatal = match fatal {
            Some((code, reason)) => Fatal::Error(code, reason),
            None => Fatal::Fenced,
        };
        Some((fatal, replacements))
    }
}

/// The librdkafka producer, as the port.
pub(crate) struct Librdkafka {
    producer: BaseProducer<Delivery>,
    acks: Arc<AtomicU64>,
    /// Keyed records get Kafka's murmur2 partition here, so librdkafka
    /// runs no partitioner for them (`crate::partition`).
    partitions: std::cell::RefCell<crate::partition::Partitions>,
}

impl ProducerPort for Librdkafka {
    fn send(&self, m: &Outgoing<'_>, opaque: &Arc<InFlight>) -> Result<(), KafkaError> {
        let mut record =
            BaseRecord::<[u8], [u8], Arc<InFlight>>::with_opaque_to(m.topic, opaque.clone())
                .payload(m.payload);
        if let Some(key) = m.key {
            record = record.key(key);
            let partition =
                self.partitions
                    .borrow_mut()
                    .pick(self.producer.client(), m.topic, Some(key));
            if let Some(p) = partition {
                record = record.partition(p);
            }
        }
        if let Some(ts) = m.timestamp {
            record = record.timestamp(ts);
        }
        if !m.headers.is_empty() {
            record = record.headers(encode::owned_headers(m.headers));
        }
        self.producer.send(record).map_err(|(e, _)| e)
    }

    fn poll(&self, timeout: Duration) {
        self.producer.poll(timeout);
    }

    fn in_flight_count(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    fn purge(&self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }

    fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.producer.client().fatal_error()
    }

    fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }
}

/// How the sink makes its librdkafka producers.
pub(crate) fn connect(
    cx: &SinkContext,
    settings: &Settings,
    reachable: Arc<AtomicBool>,
) -> Connect<Librdkafka> {
    let (name, metrics, readiness) = (cx.name.clone(), cx.metrics.clone(), cx.readiness.clone());
    let bootstrap = settings.bootstrap_servers.clone();
    let config = client_config(settings);
    let properties = settings.properties.clone();
    let token = settings.token.clone();
    Box::new(move |failed: &Failures| {
        let mut context = Delivery::new(
            name.clone(),
            metrics.clone(),
            failed.clone(),
            reachable.clone(),
            readiness.clone(),
            bootstrap.clone(),
        );
        context.token = token.clone();
        let acks = context.acks.clone();
        let producer = producer_of(&config, &properties, context)?;
        let partitions = crate::partition::Partitions::for_properties(&properties).into();
        Ok(Librdkafka {
            producer,
            acks,
            partitions,
        })
    })
}

/// The producer's context: receives delivery reports and client errors.
pub(crate) struct Delivery {
    sink: Arc<str>,
    metrics: SinkMetrics,
    failed: Arc<Mutex<Vec<Failure>>>,
    /// Messages acknowledged so far: the sink watches it for progress.
    acks: Arc<AtomicU64>,
    reachable: Arc<AtomicBool>,
    readiness: Readiness,
    bootstrap: String,
    last_warning: Mutex<Option<Instant>>,
    /// Where OAUTHBEARER tokens come from, when librdkafka does not fetch them.
    token: Option<Arc<crate::auth::TokenSource>>,
    /// The last authentication, authorization or TLS failure, until a
    /// broker is reached: readiness names it.
    refused: Mutex<Option<String>>,
}

/// Why a client error means the cluster refuses this client (rather than
/// being unreachable), as said in /ready and the log.
fn refusal(code: Option<RDKafkaErrorCode>) -> Option<&'static str> {
    match code? {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            Some("authentication failed")
        }
        RDKafkaErrorCode::SSL => Some("TLS failed"),
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => Some("not authorized"),
        _ => None,
    }
}

/// The part of librdkafka's statistics that says which brokers are up.
#[derive(serde::Deserialize)]
struct Stats {
    #[serde(default)]
    brokers: std::collections::HashMap<String, BrokerStats>,
}

#[derive(serde::Deserialize)]
struct BrokerStats {
    state: String,
    nodeid: i32,
}

impl Delivery {
    pub(crate) fn new(
        sink: Arc<str>,
        metrics: SinkMetrics,
        failed: Arc<Mutex<Vec<Failure>>>,
        reachable: Arc<AtomicBool>,
        readiness: Readiness,
        bootstrap: String,
    ) -> Delivery {
        Delivery {
            sink,
            metrics,
            failed,
            acks: Arc::default(),
            reachable,
            readiness,
            bootstrap,
            last_warning: Mutex::new(None),
            token: None,
            refused: Mutex::new(None),
        }
    }

    fn unreachable(&self, why: &str) {
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let why = match refused {
            Some(refused) => format!("{refused} ({why})"),
            None => why.to_string(),
        };
        let why = why.as_str();
        self.readiness.set_not_ready(format!(
            "cannot reach a broker of {}: {why}",
            self.bootstrap
        ));
        if self.reachable.swap(false, Ordering::AcqRel) {
            warn!(sink = %self.sink, reason = why, "the sink cannot reach its broker; failed sends go to the spool");
        }
    }

    fn reached(&self) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.readiness.set_ready();
        if !self.reachable.swap(true, Ordering::AcqRel) {
            info!(sink = %self.sink, "the sink reached its broker");
        }
    }

    fn warn_limited(&self, what: &str, detail: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            warn!(sink = %self.sink, detail, "{what}");
        }
    }
}

impl ClientContext for Delivery {
    // librdkafka's builtin OIDC method still fetches its own tokens: it
    // forces its refresh op to its own callback (rdkafka.c, rd_kafka_new).
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        crate::auth::oauth_token(self.token.as_deref()).map_err(|e| {
            self.warn_limited("cannot get an oauthbearer token", &e.to_string());
            e.into()
        })
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                self.warn_limited("librdkafka error", &format!("{fac}: {message}"))
            }
            _ => debug!(sink = %self.sink, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.unreachable(reason);
            return;
        }
        if let Some(what) = refusal(error.rdkafka_error_code()) {
            // librdkafka's reason names the broker and the cause
            // ("SASL authentication error: ...", "certificate verify
            // failed"), never a credential.
            let refused = format!("{what}: {reason}");
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(refused.clone());
            self.unreachable("the cluster refuses this client");
            self.warn_limited("the cluster refuses the sink; what is read is held or spooled until a reload fixes the config", &refused);
            return;
        }
        self.warn_limited("kafka client error", &format!("{error}: {reason}"));
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<Stats>(statistics) else {
            return;
        };
        // Bootstrap entries have negative node ids; a known broker that is
        // UP means the cluster is reachable.
        if stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP")
        {
            self.reached();
        } else {
            let mut states: Vec<String> = stats
                .brokers
                .iter()
                .map(|(name, b)| format!("{name} {}", b.state))
                .collect();
            states.sort();
            self.unreachable(&format!("no broker is up ({})", states.join(", ")));
        }
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Arc<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, inflight: Arc<InFlight>) {
        match result {
            Ok(_) => {
                self.acks.fetch_add(1, Ordering::Relaxed);
                if !self.reachable.load(Ordering::Relaxed) {
                    self.reached();
                }
                inflight.settle(&self.metrics);
            }
            Err((error, message)) => {
                let failure = Failure {
                    inflight,
                    payload: message
                        .payload()
                        .map(Bytes::copy_from_slice)
                        .unwrap_or_default(),
                    key: message.key().map(Bytes::copy_from_slice),
                    headers: message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    topic: message.topic().to_string(),
                    timestamp: message.timestamp().to_millis(),
                    error: error.clone(),
                };
                self.failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(failure);
            }
        }
    }
}

/// The sink's brokers and producer properties, as librdkafka takes them.
pub(crate) fn client_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.bootstrap_servers);
    for (k, v) in &settings.properties {
        config.set(k, v);
    }
    config
}

pub(crate) fn create_producer(
    settings: &Settings,
    mut context: Delivery,
) -> Result<BaseProducer<Delivery>, String> {
    context.token = settings.token.clone();
    producer_of(&client_config(settings), &settings.properties, context)
}

/// A producer with `context`, its promises (acks=all, idempotence)
/// checked; errors name the sink with secrets masked.
fn producer_of(
    config: &ClientConfig,
    properties: &[(String, String)],
    context: Delivery,
) -> Result<BaseProducer<Delivery>, String> {
    let sink = context.sink.clone();
    let producer: BaseProducer<Delivery> = config.create_with_context(context).map_err(|e| {
        let e = crate::properties::mask(&e.to_string(), properties);
        format!("cannot create the kafka producer of sink {sink}: {e}")
    })?;
    crate::properties::verify_promises(&producer).map_err(|e| format!("sink {sink}: {e}"))?;
    Ok(producer)
}
