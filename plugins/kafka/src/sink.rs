//! The sink thread: take batches, produce them, handle delivery reports,
//! spool what fails, replay the spool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use tailrace_api::spool::{encode, EntryHeader, EntryRecord, SpoolRecord, SpoolStore, SpoolTree};
use tailrace_api::{
    next_batch, Ack, Batch, BatchLimits, BuildError, ComponentTask, Record, SinkContext,
    SinkMetrics,
};
use tracing::{debug, error, info, warn};

mod order;
mod replayer;
pub(crate) mod session;
mod spool_writer;
use order::Policy;
pub(crate) use replayer::{Replayer, Taken};
pub(crate) use session::{create_producer, Delivery};
use session::{Fatal, Outgoing, ProducerPort, Session};
use spool_writer::{Flush, SpoolWriter, BEHIND_SPOOL};

use crate::config::{KafkaSinkConfig, SpoolConfig, EMBEDDED};
use crate::encode::{self, Encoding, Template};

/// How long the sink waits for a batch before polling the producer again.
const IDLE_WAIT: Duration = Duration::from_millis(10);
/// After a replay failed, how long before the spool is tried again.
const REPLAY_BACKOFF: Duration = Duration::from_secs(1);
/// Records per spool entry at most.
const ENTRY_RECORDS: usize = 10_000;
/// `tailrace_sink_events_failed_total{reason}` of the sink's own decisions
/// (librdkafka's error codes add their own names as they occur).
const FAILURE_REASONS: &[&str] = &[
    "delivery_timeout",
    "queue_full",
    "shutdown",
    "producer_replaced",
    "message_size_too_large",
];
/// `tailrace_events_dropped_total{component=<sink>,reason}`.
/// (The eviction reasons are the spool wrapper's, in `bounded`.)
const DROP_REASONS: &[&str] = &["dead_letter", "spool_full", "spool_full_at_shutdown"];
/// Replay waits while librdkafka holds more than this many messages.
const REPLAY_QUEUE_ROOM: usize = 50_000;

pub(crate) struct Settings {
    pub bootstrap_servers: String,
    /// None: wait for the broker forever.
    pub delivery_timeout: Option<Duration>,
    pub topic: String,
    pub properties: Vec<(String, String)>,
    pub limits: BatchLimits,
    pub spool: SpoolConfig,
    pub encoder: Arc<Encoder>,
    /// OAUTHBEARER tokens that the producer context hands to librdkafka.
    pub token: Option<Arc<crate::auth::TokenSource>>,
}

/// The producer settings of a sink; its properties come from
/// `properties::assemble`, in their fixed order.
pub(crate) fn settings(config: &KafkaSinkConfig, name: &str) -> Settings {
    let properties = crate::properties::assemble(config, name)
        .into_iter()
        .map(|p| (p.key, p.value))
        .collect();
    Settings {
        bootstrap_servers: config.bootstrap_servers.clone(),
        delivery_timeout: (config.delivery_timeout_ms > 0)
            .then(|| Duration::from_millis(config.delivery_timeout_ms)),
        topic: config.topic.clone(),
        properties,
        limits: config.batch.clone(),
        spool: config.spool.clone(),
        encoder: Arc::new(Encoder {
            // validate() has checked both templates.
            topic: Template::parse(&config.topic)
                .unwrap_or_else(|_| Template::parse("invalid-topic-template").expect("literal")),
            key: config.key.as_deref().and_then(|k| Template::parse(k).ok()),
            encoding: config.encoding,
            headers: config.headers,
            event_id: config.event_id,
            host: tailrace_api::hostname(),
        }),
        token: config
            .sasl
            .as_ref()
            .and_then(|s| s.token_source())
            .map(Arc::new),
    }
}

pub(crate) fn spawn(
    config: &KafkaSinkConfig,
    cx: SinkContext,
) -> Result<ComponentTask, BuildError> {
    let settings = settings(config, &cx.name);
    let name = cx.name.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("kafka-{name}"))
        .spawn(move || {
            let _ = tx.send(run(cx, settings));
        })
        .map_err(|e| BuildError(format!("cannot start the thread of sink {name}: {e}")))?;
    Ok(Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err("the kafka sink thread panicked".into()))
    }))
}

/// Where the records of an in-flight group came from, and whom to tell.
pub(crate) enum Origin {
    /// A channel batch: its source waits for the ack.
    Channel(Ack),
    /// A spool entry being replayed: removed once every record is delivered.
    Spool {
        id: u64,
        done: Arc<Mutex<Vec<(u64, bool)>>>,
    },
}

/// A group of records on their way to Kafka; the delivery opaque of each.
pub(crate) struct InFlight {
    /// Creation order: failures are spooled in this order.
    seq: u64,
    origin: Origin,
    remaining: AtomicUsize,
    /// Records settled without being delivered (spooled, dead-lettered, a
    /// failed replay).
    diverted: AtomicUsize,
    /// A replayed record failed: keep the entry.
    failed: AtomicBool,
    events: usize,
    bytes: usize,
    read_at: SystemTime,
}

impl InFlight {
    pub(crate) fn new(
        origin: Origin,
        events: usize,
        bytes: usize,
        read_at: SystemTime,
    ) -> Arc<InFlight> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Arc::new(InFlight {
            seq: NEXT.fetch_add(1, Ordering::Relaxed),
            origin,
            remaining: AtomicUsize::new(events),
            diverted: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            events,
            bytes,
            read_at,
        })
    }

    /// The records of spool entry `id` on their way back to Kafka; `done`
    /// hears, once, whether all of them were delivered.
    pub(crate) fn for_entry(
        id: u64,
        done: Arc<Mutex<Vec<(u64, bool)>>>,
        header: &EntryHeader,
        records: &[SpoolRecord],
    ) -> Arc<InFlight> {
        let bytes = records.iter().map(|r| r.payload.len()).sum();
        let created = UNIX_EPOCH + Duration::from_millis(header.created_ms.max(0) as u64);
        InFlight::new(Origin::Spool { id, done }, records.len(), bytes, created)
    }

    fn for_batch(batch: &Batch) -> Arc<InFlight> {
        InFlight::new(
            Origin::Channel(batch.ack.clone()),
            batch.len(),
            batch.bytes,
            batch.meta.read_at,
        )
    }

    /// One record delivered.
    pub(crate) fn settle(&self, metrics: &SinkMetrics) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.complete(metrics);
        }
    }

    /// One record settled without delivery (it is safe elsewhere, or a
    /// replay failed).
    fn divert(&self, metrics: &SinkMetrics) {
        self.diverted.fetch_add(1, Ordering::AcqRel);
        self.settle(metrics);
    }

    fn complete(&self, metrics: &SinkMetrics) {
        let delivered = self.events - self.diverted.load(Ordering::Acquire);
        if delivered > 0 {
            metrics.delivered.inc_by(delivered as u64);
            metrics
                .delivered_bytes
                .inc_by((self.bytes * delivered / self.events.max(1)) as u64);
            if let Ok(age) = self.read_at.elapsed() {
                metrics.latency.observe(age.as_secs_f64());
            }
        }
        match &self.origin {
            Origin::Channel(ack) => ack.done(self.events),
            Origin::Spool { id, done } => done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((*id, self.failed.load(Ordering::Acquire))),
        }
    }

    fn is_replay(&self) -> bool {
        matches!(self.origin, Origin::Spool { .. })
    }

    /// The spool entry these records were replayed from.
    fn entry(&self) -> Option<u64> {
        match self.origin {
            Origin::Spool { id, .. } => Some(id),
            Origin::Channel(_) => None,
        }
    }
}

/// A record whose delivery failed.
pub(crate) struct Failure {
    pub(crate) inflight: Arc<InFlight>,
    pub(crate) payload: Bytes,
    pub(crate) key: Option<Bytes>,
    pub(crate) headers: encode::HeaderList,
    pub(crate) topic: String,
    pub(crate) timestamp: Option<i64>,
    pub(crate) error: KafkaError,
}

impl Failure {
    /// The record on its way to the spool or the dead-letter tree; its
    /// topic is kept only when it is not the sink's.
    fn into_diverted(self, sink_topic: &str, reason: String) -> Diverted {
        Diverted {
            topic: (self.topic != sink_topic).then_some(self.topic),
            inflight: self.inflight,
            payload: self.payload,
            key: self.key,
            headers: self.headers,
            timestamp: self.timestamp,
            reason,
        }
    }
}

/// A record on its way to the spool or the dead-letter tree.
#[derive(Clone)]
pub(crate) struct Diverted {
    inflight: Arc<InFlight>,
    payload: Bytes,
    key: Option<Bytes>,
    headers: encode::HeaderList,
    /// Only when the topic is chosen per event.
    topic: Option<String>,
    timestamp: Option<i64>,
    reason: String,
}

/// The topic a spooled record goes back to: its own, or the sink's.
pub(crate) fn topic_of<'a>(
    record: &'a SpoolRecord,
    sink_topic: &'a str,
) -> std::borrow::Cow<'a, str> {
    match &record.topic {
        Some(t) => String::from_utf8_lossy(t),
        None => std::borrow::Cow::Borrowed(sink_topic),
    }
}

/// One spool entry of diverted records; the first one's reason stands for
/// all.
impl Diverted {
    /// A spooled record being replayed that was not handed to librdkafka.
    fn unsent(
        inflight: &Arc<InFlight>,
        r: &tailrace_api::spool::SpoolRecord,
        reason: &str,
    ) -> Diverted {
        Diverted {
            inflight: inflight.clone(),
            payload: r.payload.clone(),
            key: r.key.clone(),
            headers: r.headers.clone(),
            topic: r
                .topic
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
            timestamp: r.timestamp_ms,
            reason: reason.into(),
        }
    }
}

/// Dead letters the store did not take.
#[derive(Default)]
pub(crate) struct NotStored {
    /// Not written: write them again.
    pub unwritten: Vec<Diverted>,
    /// Written, but the flush failed: durable once a later flush succeeds
    /// (writing them again would keep them twice).
    pub unflushed: Vec<Diverted>,
}

/// Keeps records Kafka refused for good in the dead-letter tree, with the
/// error, and settles them (counted as dropped: not delivered, though
/// kept). What cannot be stored stays unsettled and is returned: its
/// source reads it again after a restart.
pub(crate) fn store_dead_letters(
    spool: &dyn SpoolStore,
    sink: &str,
    metrics: &SinkMetrics,
    records: Vec<Diverted>,
) -> NotStored {
    let mut not_stored = NotStored::default();
    for chunk in records.chunks(ENTRY_RECORDS) {
        let entry = entry_of(chunk);
        if let Err(e) = spool.push(SpoolTree::DeadLetter, sink, &entry) {
            error!(sink = %sink, error = %e, "cannot write the dead-letter tree; the events will be read again after a restart");
            not_stored.unwritten.extend(chunk.iter().cloned());
            continue;
        }
        if let Err(e) = spool.flush() {
            error!(sink = %sink, error = %e, "cannot flush the dead-letter tree; the events will be read again after a restart unless a later flush succeeds");
            not_stored.unflushed.extend(chunk.iter().cloned());
            continue;
        }
        settle_dead_letters(sink, metrics, chunk);
    }
    not_stored
}

/// Dead letters now durable: settled, counted as dropped.
fn settle_dead_letters(sink: &str, metrics: &SinkMetrics, chunk: &[Diverted]) {
    metrics.dropped.add("dead_letter", chunk.len() as u64);
    error!(sink = %sink, events = chunk.len(), error = %chunk[0].reason, "kafka refused events for good; kept in the dead-letter tree (see `tailrace spool list --dead-letter`)");
    for d in chunk {
        d.inflight.divert(metrics);
    }
}

fn entry_of(chunk: &[Diverted]) -> Vec<u8> {
    let records = chunk.iter().map(|d| EntryRecord {
        payload: &d.payload,
        key: d.key.as_deref(),
        timestamp_ms: d.timestamp,
        topic: d.topic.as_deref(),
        headers: &d.headers,
    });
    encode(records, &chunk[0].reason, now_ms())
}

/// Errors that producing again cannot fix: the records go to the
/// dead-letter tree. (`KafkaError::Nul`, a NUL byte in the topic, is one
/// too: see `refused_for_good`.)
pub(crate) fn is_permanent(code: Option<RDKafkaErrorCode>) -> bool {
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
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::UnsupportedForMessageFormat
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::InvalidTimestamp
                | RDKafkaErrorCode::PolicyViolation
        )
    )
}

/// Whether producing `error` again cannot succeed.
pub(crate) fn refused_for_good(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Nul(_)) || is_permanent(error.rdkafka_error_code())
}

/// A metric label for an error: `message_timed_out`.
pub(crate) fn reason(error: &KafkaError) -> String {
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

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How records become Kafka messages; shared, read-only.
pub(crate) struct Encoder {
    pub topic: Template,
    pub key: Option<Template>,
    pub encoding: Encoding,
    pub headers: bool,
    /// A `tailrace.id` header on every record.
    pub event_id: bool,
    pub host: String,
}

/// Scratch space reused for every record of a batch.
#[derive(Default)]
struct Buffers {
    topic: Vec<u8>,
    topic_text: String,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// One record ready to produce.
struct Prepared<'a> {
    topic: &'a str,
    /// The topic was rendered for this record (it is not the sink's).
    dynamic_topic: bool,
    key: Option<&'a [u8]>,
    value: &'a [u8],
    timestamp: Option<i64>,
}

fn prepare<'a>(
    enc: &'a Encoder,
    batch: &'a Batch,
    record: &'a Record,
    bufs: &'a mut Buffers,
) -> Prepared<'a> {
    let dynamic_topic = enc.topic.as_static().is_none();
    if dynamic_topic {
        bufs.topic.clear();
        enc.topic.render(batch, record, &enc.host, &mut bufs.topic);
        bufs.topic_text.clear();
        bufs.topic_text
            .push_str(&String::from_utf8_lossy(&bufs.topic));
    }
    if let Some(k) = &enc.key {
        bufs.key.clear();
        k.render(batch, record, &enc.host, &mut bufs.key);
    }
    if enc.encoding == Encoding::Json {
        bufs.value.clear();
        encode::json(batch, record, &enc.host, &mut bufs.value);
    }
    let bufs: &'a Buffers = bufs;
    Prepared {
        topic: if dynamic_topic {
            &bufs.topic_text
        } else {
            enc.topic.as_static().unwrap_or_default()
        },
        dynamic_topic,
        key: enc.key.as_ref().map(|_| &bufs.key[..]),
        value: if enc.encoding == Encoding::Json {
            &bufs.value
        } else {
            &record.payload
        },
        timestamp: encode::timestamp_ms(batch, record),
    }
}

/// Why a record was not handed to librdkafka.
enum Unsent {
    /// Its queue stayed full for `queue_full_timeout_ms`.
    QueueFull,
    /// Shutdown's grace period is over.
    OutOfTime,
    /// The sink gave up on records of its durable input: the rest of what
    /// it took is dropped, and comes again from the channel's log.
    Rewound,
}

/// The sink's life. `Running` until shutdown is first seen; then
/// `Draining` until the grace period ends: it takes what the sources still
/// send and delivers what it can, and at the deadline everything not
/// acknowledged goes to the spool; `Closed` once that is done (nothing is
/// produced after it). Fail-over (a new producer) happens only while
/// `Running`: a reason for one while draining ends the drain at once.
///
/// The phase is a value the sink owns; each transition is a function of
/// the phase it leaves that returns the one it enters, so the sink's loop
/// cannot, say, drain without a deadline or start a drain over once it is
/// closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining { deadline: Instant },
    Closed,
}

impl Phase {
    /// Shutdown is seen: the grace period starts (only from `Running`).
    fn on_shutdown(self, now: Instant, grace: Duration) -> Phase {
        match self {
            Phase::Running => Phase::Draining {
                deadline: now + grace,
            },
            p => p,
        }
    }

    /// The input ended, or the loop is done: drain what is in flight,
    /// within the deadline a shutdown set, or a grace period from now
    /// (a reload closed the input). A closed sink stays closed.
    fn drain(self, now: Instant, grace: Duration) -> Phase {
        match self {
            Phase::Running => Phase::Draining {
                deadline: now + grace,
            },
            p => p,
        }
    }

    /// A reason to fail over while draining: the drain ends now (no
    /// producer is started on the way out). Running and closed stay.
    fn cut_short(self, now: Instant) -> Phase {
        match self {
            Phase::Draining { .. } => Phase::Draining { deadline: now },
            p => p,
        }
    }

    /// The grace period is over (or the sink is closed).
    fn out_of_time(self, now: Instant) -> bool {
        match self {
            Phase::Running => false,
            Phase::Draining { deadline } => now >= deadline,
            Phase::Closed => true,
        }
    }

    /// The drain is done: nothing is produced after this.
    fn close(self) -> Phase {
        Phase::Closed
    }
}

pub(crate) struct Sink<P> {
    cx: SinkContext,
    settings: Settings,
    /// The producer, its progress and its replacement.
    session: Session<P>,
    /// Where the sink is in its life; see [`Phase`].
    phase: Phase,
    spool: Arc<dyn SpoolStore>,
    /// Records on their way to the spool.
    writer: SpoolWriter,
    /// Dead letters the store would not take, unsettled: tried again at
    /// shutdown, then counted as dropped.
    dead_unstored: Vec<Diverted>,
    /// Dead letters written whose flush failed: settled by the next flush
    /// that succeeds, counted as dropped at shutdown if none does.
    dead_unflushed: Vec<Diverted>,
    /// Records of a durable input were given up on (left in its log): it
    /// reads them again before the sink takes anything newer.
    rewind: bool,
    /// No batch is taken from a durable input before this (after a
    /// redelivery).
    take_not_before: Instant,
    /// Replays the spool, record by record.
    replay: Replayer,
    /// No replay before this (after a failed one).
    replay_not_before: Instant,
    ids: encode::EventIds,
    /// How long a turn waits for a batch before polling again.
    pub(crate) idle_wait: Duration,
}

/// What one turn of the sink's loop ([`Sink::step`]) leaves to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Call `step` again.
    More,
    /// The input is drained or the grace period is over: call `finish`.
    Done,
}

fn run(cx: SinkContext, mut settings: Settings) -> Result<(), String> {
    // The embedded cluster lives on this thread for as long as the sink.
    let _cluster = if settings.bootstrap_servers == EMBEDDED {
        let cluster = MockCluster::new(1)
            .map_err(|e| format!("cannot start the embedded kafka cluster: {e}"))?;
        // A templated topic is created by the cluster on first use.
        if let Some(topic) = settings.encoder.topic.as_static() {
            cluster
                .create_topic(topic, 1, 1)
                .map_err(|e| format!("cannot create topic {topic} in the embedded cluster: {e}"))?;
        }
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
    let reachable = Arc::new(AtomicBool::new(true));
    let session = Session::new(
        session::connect(&cx, &settings, reachable),
        Arc::new(Instant::now),
    )?;
    let spool = crate::bounded::Bounded::wrap(
        cx.spool.clone(),
        &settings.spool,
        cx.metrics.dropped.clone(),
    );
    let held = spool.usage(SpoolTree::Pending, &cx.name);
    info!(
        sink = %cx.name,
        bootstrap_servers = %settings.bootstrap_servers,
        topic = %settings.topic,
        spooled_events = held.events,
        "kafka sink started"
    );
    let watch_stop = Arc::new(AtomicBool::new(false));
    if _cluster.is_none() {
        // The watch's admin client reads no statistics.
        let mut config = session::client_config(&settings);
        config.remove("statistics.interval.ms");
        let interval = settings
            .properties
            .iter()
            .find(|(k, _)| k == "topic.metadata.refresh.interval.ms")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(300_000u64);
        let token = settings.token.clone();
        let (name, topic, metrics, stop) = (
            cx.name.clone(),
            settings.encoder.topic.as_static().map(str::to_string),
            cx.metrics.clone(),
            watch_stop.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("durability-{name}"))
            .spawn(move || {
                crate::check::watch(
                    config,
                    token,
                    name,
                    topic,
                    metrics,
                    Duration::from_millis(interval),
                    stop,
                )
            });
        if let Err(e) = spawned {
            warn!(sink = %cx.name, error = %e, "cannot start the topic durability check");
        }
    }
    let mut sink = Sink::new(cx, settings, session, spool);
    let result = sink.run();
    sink.finish();
    watch_stop.store(true, Ordering::Release);
    result
}

impl<P: ProducerPort> Sink<P> {
    /// A sink over `session` and `spool` (already bounded), in `Running`.
    pub(crate) fn new(
        cx: SinkContext,
        settings: Settings,
        session: Session<P>,
        spool: Arc<dyn SpoolStore>,
    ) -> Sink<P> {
        let now = session.now();
        let writer = SpoolWriter::new(cx.name.clone(), cx.metrics.clone(), &settings.spool);
        let sink = Sink {
            cx,
            settings,
            session,
            phase: Phase::Running,
            spool,
            writer,
            dead_unstored: Vec::new(),
            dead_unflushed: Vec::new(),
            ids: encode::EventIds::new(),
            replay: Replayer::new(SpoolTree::Pending),
            replay_not_before: now,
            rewind: false,
            take_not_before: now,
            idle_wait: IDLE_WAIT,
        };
        sink.update_gauges();
        // The reasons this sink counts under, exported at 0 from the start so
        // that an alert on increase() sees the first failure or drop.
        for reason in FAILURE_REASONS {
            sink.cx.metrics.failed.add(reason, 0);
        }
        for reason in DROP_REASONS {
            sink.cx.metrics.dropped.add(reason, 0);
        }
        if sink.durable() {
            sink.warn_unused_spool_keys();
        }
        sink
    }

    /// Whether what is not delivered stays in the input's log (a disk
    /// channel, which keeps it across a crash): see [`order`].
    fn durable(&self) -> bool {
        self.policy().leaves_undelivered_in_input()
    }

    /// With a durable input the sled spool keeps only dead letters (and
    /// replays what an earlier configuration left in it): the keys that
    /// bound or order the spool's backlog do not apply, the channel's
    /// `max_bytes` and log order do. Said once, at the start.
    fn warn_unused_spool_keys(&self) {
        let (set, default) = (&self.settings.spool, SpoolConfig::default());
        let unused: Vec<&str> = [
            ("spool.max_bytes", set.max_bytes != default.max_bytes),
            ("spool.when_full", set.when_full != default.when_full),
            ("spool.ordering", set.ordering != default.ordering),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !unused.is_empty() {
            warn!(sink = %self.cx.name, keys = ?unused, "these spool keys do not apply to a sink whose channel is a disk channel: what Kafka does not acknowledge stays in the channel's log, bounded by its max_bytes, and is sent again in log order; remove them");
        }
    }

    /// A record that is not delivered now (it failed, its queue stayed
    /// full, the grace period ended): into the spool, or, taken from a
    /// durable input, dropped without completing its batch's ack, so the
    /// batch stays in the channel's log (one copy, not two) and is read
    /// again ([`Sink::take_from_durable`]).
    fn give_up(&mut self, d: Diverted) {
        if self.durable() && !d.inflight.is_replay() {
            self.rewind = true;
            return;
        }
        self.writer.push(d);
    }

    /// A record failed and may yet succeed: take back what the producer
    /// holds (a fail-over) so nothing overtakes it. Always with a durable
    /// input: it is sent again in log order.
    fn takes_back_on_failure(&self) -> bool {
        self.policy().takes_back_on_failure()
    }

    /// Whether to take a batch from a durable input now: after records
    /// were given up, the channel first reads again from its first
    /// unacknowledged batch (the producer holds nothing of it: every give
    /// up while running follows a take-back), then the sink waits one
    /// backoff; while the new producer has had nothing acknowledged, one
    /// batch at a time is in flight (a probe, not the backlog). Called
    /// only while running when records were given up on.
    fn take_from_durable(&mut self) -> bool {
        let Some(input) = self.cx.durable_input.clone() else {
            return true;
        };
        if self.rewind {
            // Dead letters of the log's batches not yet stored come again
            // with their batches: kept, they would settle a batch that is
            // then read a second time (acknowledged twice).
            self.dead_unstored.retain(|d| d.inflight.is_replay());
            self.dead_unflushed.retain(|d| d.inflight.is_replay());
            input.redeliver();
            self.rewind = false;
            self.take_not_before = self.now() + REPLAY_BACKOFF;
            info!(sink = %self.cx.name, "kafka did not acknowledge events of the disk channel; they stay in its log and are sent again from the first unacknowledged batch");
        }
        self.now() >= self.take_not_before
            && !(self.session.failed_over_and_silent().is_some()
                && self.session.in_flight_count() > 0)
    }

    fn now(&self) -> Instant {
        self.session.now()
    }

    fn run(&mut self) -> Result<(), String> {
        while self.step()? == Step::More {}
        Ok(())
    }

    /// One turn of the loop: delivery reports, replay, fail-over when
    /// stalled, the spool written, and the next batch taken and sent.
    pub(crate) fn step(&mut self) -> Result<Step, String> {
        self.cx.heartbeat.beat();
        self.session.poll(Duration::ZERO);
        self.handle_failures();
        self.finish_replays();
        self.recover_if_fatal()?;
        if self.stalled() {
            self.fail_over("delivery_timeout");
        }
        if self.out_of_time() {
            // What is still in the channel goes to the spool in `finish`.
            return Ok(Step::Done);
        }
        if !self.flush_to_spool() {
            // The spool is full and blocks: take nothing new until
            // replay makes room.
            self.replay_more();
            self.session.poll(Duration::from_millis(50));
            return Ok(if self.out_of_time() {
                Step::Done
            } else {
                Step::More
            });
        }
        self.replay_more();
        self.writer.log_spooled(false);
        if self.rewind && self.phase() != Phase::Running {
            // Given up on while draining: anything taken now would
            // overtake it; what is in flight has till the deadline.
            return Ok(Step::Done);
        }
        if !self.take_from_durable() {
            self.session.poll(Duration::from_millis(50));
            return Ok(Step::More);
        }
        let batch = next_batch(&self.cx.input, &self.settings.limits, self.idle_wait);
        if batch.is_empty() {
            return Ok(if self.cx.input.is_drained() {
                Step::Done
            } else {
                Step::More
            });
        }
        self.cx.metrics.batches.inc();
        self.cx.metrics.batch_events.observe(batch.events as f64);
        let mut batches = batch.batches.into_iter();
        while let Some(b) = batches.next() {
            match self.send_batch(b) {
                Ok(()) => {}
                // Given up on: the rest stays in the durable input's log.
                Err(Unsent::Rewound) => return Ok(Step::More),
                Err(Unsent::OutOfTime | Unsent::QueueFull) => {
                    // The grace period is over: what was taken from the
                    // channel goes to the spool, never nowhere.
                    for rest in batches {
                        self.divert_batch(rest, "shutdown");
                    }
                    return Ok(Step::Done);
                }
            }
        }
        self.flush_to_spool();
        Ok(Step::More)
    }

    /// The phase now: shutdown, when first seen, starts the grace period.
    fn phase(&mut self) -> Phase {
        if self.cx.shutdown.is_triggered() {
            self.phase = self.phase.on_shutdown(self.now(), self.cx.grace);
        }
        self.phase
    }

    /// The grace period is over: what is not acknowledged goes to the
    /// spool now.
    fn out_of_time(&mut self) -> bool {
        let now = self.now();
        self.phase().out_of_time(now)
    }

    /// The ordering and durable-input policy; see [`order`].
    fn policy(&self) -> Policy {
        Policy::new(
            self.settings.spool.ordering,
            self.cx.durable_input.is_some(),
        )
    }

    /// New events wait behind the spool (strict order; never with a
    /// durable input: the spool holds none of its records). Not only
    /// until every entry is handed to librdkafka: a replayed record that
    /// then times out is overtaken by new events already delivered (98
    /// lines in one CI run), so they wait until the spool is empty.
    fn behind_spool(&self) -> bool {
        self.policy().behind_spool(|| {
            self.writer.unstored() > 0
                || self.spool.usage(SpoolTree::Pending, &self.cx.name).entries > 0
        })
    }

    fn send_batch(&mut self, batch: Batch) -> Result<(), Unsent> {
        let enc = self.settings.encoder.clone();
        let inflight = InFlight::for_batch(&batch);
        let mut bufs = Buffers::default();
        let order = self.policy();
        let mut diverting = self.behind_spool().then_some(BEHIND_SPOOL);
        let mut out_of_time = false;
        let mut tap = self.cx.tap.begin();
        for record in &batch.records {
            if self.rewind {
                // A record of this batch was given up on: the batch and
                // what follows come again from the log.
                return Err(Unsent::Rewound);
            }
            if diverting.is_none() && order.rest_follows_to_spool() && self.writer.has_waiting() {
                // A record of this batch failed at once: the rest go
                // behind it.
                diverting = Some(BEHIND_SPOOL);
            }
            let p = prepare(&enc, &batch, record, &mut bufs);
            let headers = self.headers_of(&enc, &batch, record);
            if let Some(t) = &mut tap {
                t.offer(&batch, record, || {
                    Some(tailrace_api::Rendered::route(p.topic, p.key))
                });
            }
            if let Some(reason) = diverting {
                self.divert(&inflight, &p, headers, reason.into());
                continue;
            }
            match self.produce(&inflight, p.topic, p.value, p.key, p.timestamp, &headers) {
                Ok(()) => {}
                Err(Unsent::QueueFull) => {
                    warn!(sink = %self.cx.name, "librdkafka's queue stayed full; spooling new events");
                    if self.takes_back_on_failure() {
                        // What librdkafka holds goes to the spool first.
                        self.fail_over("queue_full");
                    }
                    self.divert(&inflight, &p, headers, "queue_full".into());
                    diverting = Some("queue_full");
                }
                Err(Unsent::OutOfTime) => {
                    // This record and the rest of the batch go to the
                    // spool; the caller spools the batches after it.
                    self.divert(&inflight, &p, headers, "shutdown".into());
                    diverting = Some("shutdown");
                    out_of_time = true;
                }
                // (`produce` gives up on nothing itself.)
                Err(Unsent::Rewound) => return Err(Unsent::Rewound),
            }
        }
        if out_of_time {
            Err(Unsent::OutOfTime)
        } else {
            Ok(())
        }
    }

    /// Every record of `batch` to the spool, for `reason` (with a durable
    /// input it stays in the log instead).
    fn divert_batch(&mut self, batch: Batch, reason: &str) {
        if self.durable() {
            return;
        }
        let enc = self.settings.encoder.clone();
        let mut bufs = Buffers::default();
        let inflight = InFlight::for_batch(&batch);
        for r in &batch.records {
            let p = prepare(&enc, &batch, r, &mut bufs);
            let headers = self.headers_of(&enc, &batch, r);
            self.divert(&inflight, &p, headers, reason.into());
        }
    }

    /// Hands one record to librdkafka, waiting a bounded time while its
    /// queue is full.
    fn produce(
        &mut self,
        inflight: &Arc<InFlight>,
        topic: &str,
        payload: &[u8],
        key: Option<&[u8]>,
        timestamp: Option<i64>,
        headers: &[(String, Bytes)],
    ) -> Result<(), Unsent> {
        let message = Outgoing {
            topic,
            payload,
            key,
            timestamp,
            headers,
        };
        let mut full_since = None;
        loop {
            match self.session.send(&message, inflight) {
                Ok(()) => return Ok(()),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    self.cx.heartbeat.beat();
                    let since = *full_since.get_or_insert_with(|| self.now());
                    self.session.poll(Duration::from_millis(5));
                    if self.out_of_time() {
                        return Err(Unsent::OutOfTime);
                    }
                    if self.now().saturating_duration_since(since)
                        >= Duration::from_millis(self.settings.spool.queue_full_timeout_ms)
                    {
                        return Err(Unsent::QueueFull);
                    }
                }
                Err(error) => {
                    let why = reason(&error);
                    self.cx.metrics.failed.add(&why, 1);
                    let topic = (topic != self.settings.topic).then(|| topic.to_string());
                    let diverted = Diverted {
                        inflight: inflight.clone(),
                        payload: Bytes::copy_from_slice(payload),
                        key: key.map(Bytes::copy_from_slice),
                        headers: headers.to_vec(),
                        topic,
                        timestamp,
                        reason: why,
                    };
                    if refused_for_good(&error) {
                        self.dead_letter(vec![Diverted {
                            reason: error.to_string(),
                            ..diverted
                        }]);
                    } else if inflight.is_replay() {
                        self.replay.keep(diverted, &self.cx.metrics);
                    } else {
                        if self.takes_back_on_failure() {
                            self.fail_over(&diverted.reason.clone());
                        }
                        self.give_up(diverted);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// The headers a record is produced with (none unless `headers` or
    /// `event_id` is on: no allocation then).
    fn headers_of(&mut self, enc: &Encoder, batch: &Batch, record: &Record) -> encode::HeaderList {
        let mut headers = encode::HeaderList::new();
        if enc.headers {
            encode::headers(batch, record, &enc.host, &mut headers);
        }
        if enc.event_id {
            headers.push((encode::EVENT_ID.into(), self.ids.next(batch, record)));
        }
        headers
    }

    fn divert(
        &mut self,
        inflight: &Arc<InFlight>,
        p: &Prepared<'_>,
        headers: encode::HeaderList,
        reason: String,
    ) {
        if self.durable() {
            // Left in the log: no copy to make.
            self.rewind = true;
            return;
        }
        self.writer.push(Diverted {
            inflight: inflight.clone(),
            payload: Bytes::copy_from_slice(p.value),
            key: p.key.map(Bytes::copy_from_slice),
            headers,
            topic: p.dynamic_topic.then(|| p.topic.to_string()),
            timestamp: p.timestamp,
            reason,
        });
    }

    /// Sorts failed deliveries: replays are retried later from the spool,
    /// permanent failures go to the dead-letter tree, the rest to the spool.
    fn handle_failures(&mut self) {
        let failures = self.session.take_failures();
        if failures.is_empty() {
            return;
        }
        let retry_later = failures
            .iter()
            .any(|f| !is_permanent(f.error.rdkafka_error_code()));
        if retry_later && self.takes_back_on_failure() {
            // What librdkafka still holds (new events, later spool
            // entries) was produced after the failed records: once the
            // broker is back it would overtake them. It goes to the spool
            // behind them instead, before any new batch is spooled.
            self.session.put_back(failures);
            self.fail_over("failed");
            return;
        }
        self.settle_failures(failures, None);
    }

    /// Kafka acknowledged nothing for `delivery_timeout_ms` while
    /// librdkafka held messages.
    fn stalled(&mut self) -> bool {
        let Some(timeout) = self.settings.delivery_timeout else {
            return false;
        };
        match self.session.stalled(timeout) {
            Some(waited) => {
                warn!(sink = %self.cx.name, waited_ms = waited.as_millis() as u64, events = self.session.in_flight_count(), "kafka acknowledged nothing within the delivery timeout; spooling what is unacknowledged");
                self.session.stretch_timeout();
                true
            }
            None => false,
        }
    }

    /// Takes back everything librdkafka holds, in the order it was
    /// produced, into the spool (or the dead-letter tree, for what failed
    /// for good), and starts a new producer: nothing the old one held can
    /// be delivered later and overtake what is spooled now. Only while
    /// running: when draining, the drain ends here instead.
    fn fail_over(&mut self, why: &str) {
        match self.phase() {
            Phase::Running => {
                self.session.note_fail_over();
                if let Err(e) = self.hand_over(why) {
                    error!(sink = %self.cx.name, error = %e, "cannot start a new kafka producer; keeping the old one");
                }
            }
            Phase::Draining { .. } => self.end_drain(why),
            Phase::Closed => {}
        }
    }

    /// A fail-over while draining would start a producer only to stop it:
    /// the grace period ends now, and what the producer holds goes to the
    /// spool (nothing more is handed to it).
    fn end_drain(&mut self, why: &str) {
        warn!(sink = %self.cx.name, reason = why, events = self.session.in_flight_count(), "kafka is failing during shutdown; spooling what is unacknowledged now");
        let failures = self.session.take_back_all();
        self.settle_failures(failures, Some(why));
        self.phase = self.phase.cut_short(self.now());
    }

    /// Spools (or dead-letters) everything the producer holds, counted as
    /// failed for `why`, and starts a new producer.
    fn hand_over(&mut self, why: &str) -> Result<(), String> {
        let failures = self.session.take_back_all();
        self.settle_failures(failures, Some(why));
        self.session.replace()
    }

    /// Settles failed deliveries in the order their records were produced.
    /// Records taken back by a purge are counted as failed for `purged`.
    fn settle_failures(&mut self, mut failures: Vec<Failure>, purged: Option<&str>) {
        if failures.is_empty() {
            return;
        }
        // Stable: within a group, librdkafka reports in produce order.
        failures.sort_by_key(|f| f.inflight.seq);
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let mut dead = Vec::new();
        for f in failures {
            let code = f.error.rdkafka_error_code();
            self.session.note_fenced(code);
            let why = match (code, purged) {
                (
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight),
                    Some(purged),
                ) => purged.to_string(),
                _ => reason(&f.error),
            };
            *reasons.entry(why.clone()).or_default() += 1;
            if refused_for_good(&f.error) {
                let reason = f.error.to_string();
                dead.push(f.into_diverted(&self.settings.topic, reason));
            } else if f.inflight.is_replay() {
                let d = f.into_diverted(&self.settings.topic, why);
                self.replay.keep(d, &self.cx.metrics);
            } else {
                let d = f.into_diverted(&self.settings.topic, why);
                self.give_up(d);
            }
        }
        for (why, n) in &reasons {
            self.cx.metrics.failed.add(why, *n);
        }
        warn!(sink = %self.cx.name, failures = ?reasons, "deliveries failed");
        if !dead.is_empty() {
            self.dead_letter(dead);
        }
    }

    /// Keeps records Kafka refused for good, with the error, and settles them.
    fn dead_letter(&mut self, records: Vec<Diverted>) {
        let not_stored = store_dead_letters(&*self.spool, &self.cx.name, &self.cx.metrics, records);
        self.dead_unstored.extend(not_stored.unwritten);
        self.dead_unflushed.extend(not_stored.unflushed);
        self.update_gauges();
    }

    /// Writes what waits for the spool, flushes, and settles it. Returns
    /// false when the spool is full and blocks.
    fn flush_to_spool(&mut self) -> bool {
        if !self.dead_unflushed.is_empty() && self.spool.flush().is_ok() {
            let dead = std::mem::take(&mut self.dead_unflushed);
            settle_dead_letters(&self.cx.name, &self.cx.metrics, &dead);
            self.update_gauges();
        }
        if self.writer.unstored() == 0 {
            // Nothing to write (the common case, every turn): no gauges
            // to read from the store either.
            return true;
        }
        let mode = match self.phase() {
            Phase::Running => Flush::Gathering(self.now()),
            Phase::Draining { .. } | Phase::Closed => Flush::All,
        };
        let replay = &self.replay;
        let flushed = self
            .writer
            .flush(&*self.spool, &|id| replay.is_in_flight(id), mode);
        self.update_gauges();
        flushed
    }

    /// In relaxed ordering, new events go first after a fail-over: the
    /// replay waits until Kafka acknowledges one of them, or, when none
    /// come, for one delivery timeout.
    fn new_events_first(&self) -> bool {
        let since = self
            .session
            .failed_over_and_silent()
            .map(|at| self.now().saturating_duration_since(at));
        let wait = self.settings.delivery_timeout.unwrap_or(REPLAY_BACKOFF);
        self.policy().new_events_first(since, wait)
    }

    /// Hands the next spool entries to librdkafka, oldest first.
    fn replay_more(&mut self) {
        let name = self.cx.name.clone();
        if self.now() < self.replay_not_before
            || self.writer.has_unflushed()
            || self.new_events_first()
            || self.spool.usage(SpoolTree::Pending, &name).entries == 0
        {
            return;
        }
        while self.replay.in_flight() < self.settings.spool.replay_entries_in_flight
            && self.session.in_flight_count() < REPLAY_QUEUE_ROOM
            && !(self.policy().replay_waits_for_failed() && self.replay.holds_failed())
        {
            let metrics = self.cx.metrics.clone();
            let taken = self.replay.take(&*self.spool, &name, &mut |id, e| {
                error!(sink = %name, entry = id, error = %e, "spool entry is damaged; set aside (see `tailrace spool stats`)");
                metrics.spool_corrupt.inc();
            });
            let taken = match taken {
                Ok(Some(t)) => t,
                Ok(None) => {
                    if self.replay.in_flight() == 0 {
                        self.replay.rewind();
                    }
                    return;
                }
                Err(e) => {
                    self.writer.store_error("cannot read the spool", &e);
                    self.replay_not_before = self.now() + REPLAY_BACKOFF;
                    return;
                }
            };
            let replayer::Taken {
                id,
                inflight,
                records,
            } = taken;
            self.cx.metrics.retries.inc_by(records.len() as u64);
            debug!(sink = %name, entry = id, events = records.len(), "replaying spool entry");
            let sink_topic = self.settings.topic.clone();
            for (i, r) in records.iter().enumerate() {
                let topic = topic_of(r, &sink_topic);
                let sent = self.produce(
                    &inflight,
                    &topic,
                    &r.payload,
                    r.key.as_deref(),
                    r.timestamp_ms,
                    &r.headers,
                );
                // A record refused at the send is kept for the rewritten
                // entry: in strict order the rest of the entry waits with
                // it rather than overtake it.
                let rest = match sent {
                    Err(_) => i,
                    Ok(())
                        if self.policy().replay_waits_for_failed()
                            && inflight.failed.load(Ordering::Acquire) =>
                    {
                        i + 1
                    }
                    Ok(()) => continue,
                };
                // Not handed to librdkafka: kept for the rewritten entry.
                for r in &records[rest..] {
                    self.replay.keep(
                        Diverted::unsent(&inflight, r, "replay_unsent"),
                        &self.cx.metrics,
                    );
                }
                return;
            }
        }
    }

    /// Removes replayed entries that Kafka acknowledged in full, and
    /// rewrites those some of whose records failed.
    fn finish_replays(&mut self) {
        let name = self.cx.name.clone();
        let finished = self.replay.finish(&*self.spool, &name);
        if finished.removed == 0 && finished.rewritten == 0 && finished.kept_whole == 0 {
            return;
        }
        if finished.rewritten > 0 || finished.kept_whole > 0 {
            // Only what failed and may yet succeed is replayed again (or
            // the whole entry, when it could not be rewritten), from the
            // oldest entry: no later entry goes first.
            self.replay_not_before = self.now() + REPLAY_BACKOFF;
            self.replay.rewind();
        }
        let left = self.spool.usage(SpoolTree::Pending, &name);
        if left.entries == 0 && self.replay.in_flight() == 0 {
            info!(sink = %name, "spool replayed in full");
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let pending = self.spool.usage(SpoolTree::Pending, &self.cx.name);
        self.cx.metrics.spool_events.set(pending.events as i64);
        self.cx.metrics.spool_bytes.set(pending.bytes as i64);
        let dead = self.spool.usage(SpoolTree::DeadLetter, &self.cx.name);
        self.cx.metrics.dead_letter_events.set(dead.events as i64);
    }

    /// The idempotent producer can hit a fatal error (its sequence numbers
    /// no longer line up), or be fenced: a broker that does not take
    /// librdkafka's epoch bump answers every later send with
    /// PRODUCER_FENCED. Then what it holds is spooled and a new producer,
    /// with a new producer id, takes over.
    fn recover_if_fatal(&mut self) -> Result<(), String> {
        let Some((fatal, replacements)) = self.session.fatal_due() else {
            return Ok(());
        };
        if self.phase() != Phase::Running {
            self.end_drain("producer_replaced");
            return Ok(());
        }
        match fatal {
            Fatal::Error(code, reason) => {
                error!(sink = %self.cx.name, code = ?code, reason, replacements, "the kafka producer failed fatally, replacing it");
                self.cx.readiness.set_not_ready(format!(
                    "the kafka producer failed fatally ({code:?}: {reason}); recreated with backoff"
                ));
            }
            Fatal::Fenced => {
                warn!(sink = %self.cx.name, "the broker fenced the kafka producer, replacing it")
            }
        }
        self.hand_over("producer_replaced")
    }

    /// After the input is drained or the grace period is over: wait for
    /// what is in flight within the grace period, then spool the rest.
    pub(crate) fn finish(&mut self) {
        // The input ended without a shutdown (a reload closed it): the
        // grace period starts now.
        self.phase = self.phase().drain(self.now(), self.cx.grace);
        let Phase::Draining { deadline } = self.phase else {
            // Closed: finished already.
            return;
        };
        loop {
            self.cx.heartbeat.beat();
            self.session.poll(Duration::from_millis(20));
            self.handle_failures();
            self.finish_replays();
            self.flush_to_spool();
            let failed = self.session.has_failures();
            if self.session.in_flight_count() == 0 && !failed && self.writer.unstored() == 0 {
                break;
            }
            if self.now() >= deadline {
                break;
            }
        }
        let unacknowledged = self.session.in_flight_count();
        if unacknowledged > 0 || self.session.has_failures() {
            warn!(sink = %self.cx.name, events = unacknowledged, "grace period over with events unacknowledged; spooling them");
            // Settled here, not by handle_failures: in strict mode that
            // would start a new producer on the way out.
            let failures = self.session.take_back_all();
            self.settle_failures(failures, Some("shutdown"));
        }
        // A durable input keeps what the sink did not take.
        while let Some(batch) = (!self.durable())
            .then(|| self.cx.input.recv_timeout(Duration::ZERO))
            .flatten()
        {
            self.divert_batch(batch, "shutdown");
        }
        self.finish_replays();
        // Dead letters the store would not take: a last try. (A replayed
        // one is still in its spool entry, which stays.)
        let dead: Vec<Diverted> = std::mem::take(&mut self.dead_unstored)
            .into_iter()
            .filter(|d| !d.inflight.is_replay())
            .collect();
        if !dead.is_empty() {
            self.dead_letter(dead);
            self.dead_unstored.retain(|d| !d.inflight.is_replay());
        }
        let flushed = self.flush_to_spool();
        // A replayed record is still in its spool entry, which stays.
        self.dead_unflushed.retain(|d| !d.inflight.is_replay());
        if self.durable() {
            // Unsettled, so their batches are still in the channel's log:
            // refused again after the restart, not lost.
            self.dead_unstored.clear();
            self.dead_unflushed.clear();
        }
        let dead = self.dead_unstored.len() + self.dead_unflushed.len();
        if !flushed || dead > 0 {
            // Not acknowledged: a file source reads them again after the
            // restart, but a socket's records are gone, so they count.
            let n = (self.writer.unstored() + dead) as u64;
            self.cx.metrics.dropped.add("spool_full_at_shutdown", n);
            error!(sink = %self.cx.name, events = n, "spool full at shutdown: these events are not stored; file sources read them again after the restart, records from sockets are lost (counted in tailrace_events_dropped_total)");
        }
        self.writer.log_spooled(true);
        self.phase = self.phase.close();
        let spooled = self.spool.usage(SpoolTree::Pending, &self.cx.name);
        info!(sink = %self.cx.name, spooled_events = spooled.events, "kafka sink stopped");
    }
}

#[cfg(test)]
mod phase_tests {
    use super::Phase;
    use std::time::{Duration, Instant};

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn shutdown_starts_the_grace_period_once_and_a_cut_short_drain_is_out_of_time() {
        let t0 = Instant::now();
        let draining = Phase::Running.on_shutdown(t0, GRACE);
        assert_eq!(
            draining,
            Phase::Draining {
                deadline: t0 + GRACE
            }
        );
        // Seen again later: the deadline does not move.
        assert_eq!(draining.on_shutdown(t0 + GRACE, GRACE), draining);
        assert!(!draining.out_of_time(t0));
        assert!(draining.out_of_time(t0 + GRACE));
        // A fail-over reason while draining ends the drain at once.
        let cut = draining.cut_short(t0 + Duration::from_secs(1));
        assert!(cut.out_of_time(t0 + Duration::from_secs(1)));
        // Running is not cut short (it fails over instead).
        assert_eq!(Phase::Running.cut_short(t0), Phase::Running);
        assert!(!Phase::Running.out_of_time(t0 + GRACE * 100));
    }

    #[test]
    fn a_drain_keeps_its_deadline_and_closed_is_final() {
        let t0 = Instant::now();
        let draining = Phase::Running.on_shutdown(t0, GRACE);
        assert_eq!(draining.drain(t0 + GRACE, GRACE), draining);
        // The input ended without a shutdown: a grace period from now.
        assert_eq!(
            Phase::Running.drain(t0, GRACE),
            Phase::Draining {
                deadline: t0 + GRACE
            }
        );
        let closed = draining.close();
        assert_eq!(closed.on_shutdown(t0, GRACE), Phase::Closed);
        assert_eq!(closed.drain(t0, GRACE), Phase::Closed);
        assert_eq!(closed.cut_short(t0), Phase::Closed);
        assert!(closed.out_of_time(t0));
    }
}
