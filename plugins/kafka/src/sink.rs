//! The sink thread: take batches, produce them, handle delivery reports.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::message::Message;
use tailrace_api::{next_batch, Ack, Batch, BatchLimits, BuildError, ComponentTask, SinkContext, SinkMetrics};
use tracing::{debug, error, info, warn};

use crate::config::{KafkaSinkConfig, EMBEDDED};

/// How long the sink waits for a batch before polling the producer again.
const IDLE_WAIT: Duration = Duration::from_millis(10);

struct Settings {
    bootstrap_servers: String,
    topic: String,
    properties: Vec<(String, String)>,
    limits: BatchLimits,
}

pub(crate) fn spawn(config: &KafkaSinkConfig, cx: SinkContext) -> Result<ComponentTask, BuildError> {
    let mut properties: Vec<(String, String)> = vec![
        ("acks".into(), "all".into()),
        ("enable.idempotence".into(), "true".into()),
        ("compression.codec".into(), config.compression.codec().into()),
        ("message.timeout.ms".into(), config.delivery_timeout_ms.to_string()),
        ("client.id".into(), format!("tailrace-{}", cx.name)),
        ("linger.ms".into(), "5".into()),
        ("batch.num.messages".into(), "10000".into()),
        ("batch.size".into(), "1000000".into()),
        ("queue.buffering.max.messages".into(), "200000".into()),
        ("queue.buffering.max.kbytes".into(), "65536".into()),
    ];
    for (k, v) in &config.librdkafka {
        properties.retain(|(key, _)| key != k);
        properties.push((k.clone(), v.to_string()));
    }
    if config.spool.max_bytes > 0 {
        debug!(sink = %cx.name, "spool settings accepted; failed sends are produced again until delivered");
    }
    let settings = Settings {
        bootstrap_servers: config.bootstrap_servers.clone(),
        topic: config.topic.clone(),
        properties,
        limits: config.batch.clone(),
    };
    let name = cx.name.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("kafka-{name}"))
        .spawn(move || {
            let _ = tx.send(run(cx, settings));
        })
        .map_err(|e| BuildError(format!("cannot start the thread of sink {name}: {e}")))?;
    Ok(Box::pin(async move { rx.await.unwrap_or_else(|_| Err("the kafka sink thread panicked".into())) }))
}

/// One channel batch on its way to Kafka; the delivery opaque of each of
/// its records.
struct InFlight {
    ack: Ack,
    remaining: AtomicUsize,
    dropped: AtomicUsize,
    events: usize,
    bytes: usize,
    read_at: SystemTime,
}

impl InFlight {
    /// One record is settled: delivered, or dropped for good and counted.
    fn settle(&self, metrics: &SinkMetrics) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let delivered = self.events - self.dropped.load(Ordering::Acquire);
            metrics.delivered.inc_by(delivered as u64);
            metrics.delivered_bytes.inc_by(self.bytes as u64);
            if let Ok(age) = self.read_at.elapsed() {
                metrics.latency.observe(age.as_secs_f64());
            }
            self.ack.done(self.events);
        }
    }
}

/// A record whose delivery failed, kept to be produced again.
struct Failure {
    inflight: Arc<InFlight>,
    payload: Bytes,
    timestamp: Option<i64>,
    error: KafkaError,
}

/// The producer's context: receives delivery reports and client errors.
struct Delivery {
    sink: Arc<str>,
    metrics: SinkMetrics,
    failed: Arc<Mutex<Vec<Failure>>>,
    reachable: Arc<AtomicBool>,
    last_warning: Mutex<Option<Instant>>,
}

impl Delivery {
    fn warn_limited(&self, what: &str, detail: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            warn!(sink = %self.sink, detail, "{what}");
        }
    }
}

impl ClientContext for Delivery {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                self.warn_limited("librdkafka error", &format!("{fac}: {message}"))
            }
            _ => debug!(sink = %self.sink, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if self.reachable.swap(false, Ordering::AcqRel) {
                warn!(sink = %self.sink, reason, "the sink cannot reach its broker; events wait and are retried");
                return;
            }
        }
        self.warn_limited("kafka client error", &format!("{error}: {reason}"));
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Arc<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, inflight: Arc<InFlight>) {
        match result {
            Ok(_) => {
                if !self.reachable.load(Ordering::Relaxed) && !self.reachable.swap(true, Ordering::AcqRel) {
                    info!(sink = %self.sink, "the sink reached its broker");
                }
                inflight.settle(&self.metrics);
            }
            Err((error, message)) => {
                let payload = message.payload().map(Bytes::copy_from_slice).unwrap_or_default();
                let timestamp = message.timestamp().to_millis();
                self.failed.lock().unwrap_or_else(|e| e.into_inner()).push(Failure {
                    inflight,
                    payload,
                    timestamp,
                    error: error.clone(),
                });
            }
        }
    }
}

/// Errors that producing again cannot fix.
fn is_permanent(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidArgument
        )
    )
}

fn reason(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("{code:?}").chars().fold(String::new(), |mut s, c| {
            if c.is_uppercase() && !s.is_empty() {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
            s
        }),
        None => "other".into(),
    }
}

/// The sink was told to stop and its grace period is over.
struct OutOfTime;

struct Sink {
    cx: SinkContext,
    settings: Settings,
    producer: BaseProducer<Delivery>,
    failed: Arc<Mutex<Vec<Failure>>>,
    reachable: Arc<AtomicBool>,
    /// Set when shutdown is first seen: the end of the grace period.
    deadline: std::cell::Cell<Option<Instant>>,
}

fn create_producer(
    cx: &SinkContext,
    settings: &Settings,
    failed: &Arc<Mutex<Vec<Failure>>>,
    reachable: &Arc<AtomicBool>,
) -> Result<BaseProducer<Delivery>, String> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.bootstrap_servers);
    for (k, v) in &settings.properties {
        config.set(k, v);
    }
    let context = Delivery {
        sink: cx.name.clone(),
        metrics: cx.metrics.clone(),
        failed: failed.clone(),
        reachable: reachable.clone(),
        last_warning: Mutex::new(None),
    };
    config
        .create_with_context(context)
        .map_err(|e| format!("cannot create the kafka producer of sink {}: {e}", cx.name))
}

fn run(cx: SinkContext, mut settings: Settings) -> Result<(), String> {
    // The embedded cluster lives on this thread for as long as the sink.
    let _cluster = if settings.bootstrap_servers == EMBEDDED {
        let cluster = MockCluster::new(1).map_err(|e| format!("cannot start the embedded kafka cluster: {e}"))?;
        cluster
            .create_topic(&settings.topic, 1, 1)
            .map_err(|e| format!("cannot create topic {} in the embedded cluster: {e}", settings.topic))?;
        settings.bootstrap_servers = cluster.bootstrap_servers();
        info!(
            sink = %cx.name,
            bootstrap_servers = %settings.bootstrap_servers,
            topic = %settings.topic,
            "embedded kafka cluster started (in memory, for trying tailrace out: what it holds is gone on exit)"
        );
        Some(cluster)
    } else {
        None
    };
    let failed = Arc::new(Mutex::new(Vec::new()));
    let reachable = Arc::new(AtomicBool::new(true));
    let producer = create_producer(&cx, &settings, &failed, &reachable)?;
    info!(sink = %cx.name, bootstrap_servers = %settings.bootstrap_servers, topic = %settings.topic, "kafka sink started");
    let mut sink = Sink { cx, settings, producer, failed, reachable, deadline: Default::default() };
    let result = sink.run();
    sink.finish();
    result
}

impl Sink {
    fn run(&mut self) -> Result<(), String> {
        loop {
            self.producer.poll(Duration::ZERO);
            self.check_deadline();
            if self.retry_failed().is_err() {
                return Ok(());
            }
            self.recover_if_fatal()?;
            let batch = next_batch(&self.cx.input, &self.settings.limits, IDLE_WAIT);
            if batch.is_empty() {
                if self.cx.input.is_drained() {
                    return Ok(());
                }
                continue;
            }
            self.cx.metrics.batches.inc();
            for b in batch.batches {
                if self.produce_batch(b).is_err() {
                    return Ok(());
                }
            }
        }
    }

    fn check_deadline(&self) {
        if self.deadline.get().is_none() && self.cx.shutdown.is_triggered() {
            self.deadline.set(Some(Instant::now() + self.cx.grace));
        }
    }

    fn out_of_time(&self) -> bool {
        self.check_deadline();
        self.deadline.get().is_some_and(|d| Instant::now() >= d)
    }

    fn produce_batch(&mut self, batch: Batch) -> Result<(), OutOfTime> {
        let timestamp = batch.meta.read_at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).ok();
        let inflight = Arc::new(InFlight {
            ack: batch.ack.clone(),
            remaining: AtomicUsize::new(batch.len()),
            dropped: AtomicUsize::new(0),
            events: batch.len(),
            bytes: batch.bytes,
            read_at: batch.meta.read_at,
        });
        for record in &batch.records {
            self.produce(&inflight, &record.payload, timestamp)?;
        }
        Ok(())
    }

    /// Hands one record to librdkafka, waiting while its queue is full.
    fn produce(&self, inflight: &Arc<InFlight>, payload: &[u8], timestamp: Option<i64>) -> Result<(), OutOfTime> {
        let mut record = BaseRecord::<(), [u8], Arc<InFlight>>::with_opaque_to(&self.settings.topic, inflight.clone()).payload(payload);
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(5));
                    if self.out_of_time() {
                        return Err(OutOfTime);
                    }
                }
                Err((error, _)) => {
                    self.give_up(inflight, &error);
                    return Ok(());
                }
            }
        }
    }

    /// A record that cannot be delivered: counted, logged, and settled so
    /// that it does not hold back the position of its source forever.
    fn give_up(&self, inflight: &Arc<InFlight>, error: &KafkaError) {
        let why = reason(error);
        error!(sink = %self.cx.name, error = %error, "event cannot be delivered and is dropped");
        self.cx.metrics.failed.add(&why, 1);
        self.cx.metrics.dropped.add(&why, 1);
        inflight.dropped.fetch_add(1, Ordering::AcqRel);
        inflight.settle(&self.cx.metrics);
    }

    /// Produces again what failed; gives up on what cannot succeed.
    fn retry_failed(&mut self) -> Result<(), OutOfTime> {
        let failures = std::mem::take(&mut *self.failed.lock().unwrap_or_else(|e| e.into_inner()));
        if failures.is_empty() {
            return Ok(());
        }
        let mut retried = 0u64;
        let mut first_reason = None;
        for f in failures {
            if is_permanent(f.error.rdkafka_error_code()) {
                self.give_up(&f.inflight, &f.error);
                continue;
            }
            let why = reason(&f.error);
            self.cx.metrics.failed.add(&why, 1);
            first_reason.get_or_insert(why);
            retried += 1;
            self.produce(&f.inflight, &f.payload, f.timestamp)?;
        }
        if retried > 0 {
            self.cx.metrics.retries.inc_by(retried);
            warn!(sink = %self.cx.name, events = retried, reason = first_reason.unwrap_or_default(), "deliveries failed, producing them again");
        }
        Ok(())
    }

    /// The idempotent producer can hit a fatal error (its sequence numbers
    /// no longer line up). Then the producer is replaced and what it held is
    /// produced again by the new one.
    fn recover_if_fatal(&mut self) -> Result<(), String> {
        let Some((code, reason)) = self.producer.client().fatal_error() else { return Ok(()) };
        error!(sink = %self.cx.name, code = ?code, reason, "the kafka producer failed fatally, replacing it");
        self.producer.purge(PurgeConfig::default().queue().inflight());
        self.producer.poll(Duration::from_millis(100));
        self.producer = create_producer(&self.cx, &self.settings, &self.failed, &self.reachable)?;
        Ok(())
    }

    /// After the input is drained or the grace period is over: wait for
    /// what is in flight, within the grace period.
    fn finish(&mut self) {
        self.check_deadline();
        let deadline = self.deadline.get().unwrap_or_else(|| Instant::now() + self.cx.grace);
        loop {
            self.producer.poll(Duration::from_millis(20));
            let failed = !self.failed.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
            if failed {
                let _ = self.retry_failed();
            }
            let in_flight = self.producer.in_flight_count();
            if in_flight == 0 && !failed {
                info!(sink = %self.cx.name, "kafka sink stopped, everything delivered");
                return;
            }
            if Instant::now() >= deadline {
                warn!(
                    sink = %self.cx.name,
                    events = in_flight,
                    "grace period over with events unacknowledged; they will be read again after the restart"
                );
                return;
            }
        }
    }
}
