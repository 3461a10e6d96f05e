//! Metric handles.
//!
//! The families live in one [`Metrics`] registry that the admin endpoint
//! encodes. Components look their labelled handles up once, when they are
//! built, and keep them: on the hot path a metric update is one atomic add
//! per batch, with no lookup and no lock.
//!
//! The families every source and sink has are here; a plugin declares its
//! own ([`Families`], [`Metrics::declare`]) and finds them again from its
//! context ([`SourceMetrics::families`], [`SinkMetrics::families`]), so the
//! contract knows none of them.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label sets: the same type for the contract's families and the plugins'.
pub type Labels = Vec<(&'static str, String)>;

/// A plugin's metric families: registered once, by [`Metrics::declare`],
/// before the registry is shared, then found by their type.
pub trait Families: Default + Clone + Send + Sync + 'static {
    fn register(&self, registry: &mut Registry);
}

/// Plugins' families, by type: made on first use, so that every handle of
/// one [`Metrics`] shares them (whether or not they were declared and are
/// exported).
type Declared = Arc<Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>;

/// The families of type `F` (made unexported if not yet declared: unit
/// tests, tools). Components ask once, when built.
fn declared<F: Families>(declared: &Declared) -> F {
    let mut map = declared.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(TypeId::of::<F>())
        .or_insert_with(|| Arc::new(F::default()))
        .downcast_ref::<F>()
        .expect("stored by its type")
        .clone()
}
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn batch_histogram() -> Histogram {
    // 1 .. ~65k events
    Histogram::new(exponential_buckets(1.0, 4.0, 9))
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric family of the process.
pub struct Metrics {
    registry: Registry,
    source_events: Family<Labels, Counter>,
    source_bytes: Family<Labels, Counter>,
    source_filtered: Family<Labels, Counter>,
    source_parse_errors: Family<Labels, Counter>,
    sink_delivered: Family<Labels, Counter>,
    sink_delivered_bytes: Family<Labels, Counter>,
    sink_batches: Family<Labels, Counter>,
    sink_failed: Family<Labels, Counter>,
    sink_retries: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    spool_events: Family<Labels, Gauge>,
    spool_bytes: Family<Labels, Gauge>,
    dead_letter_events: Family<Labels, Gauge>,
    spool_corrupt: Family<Labels, Counter>,
    channel_events: Family<Labels, Gauge>,
    channel_bytes: Family<Labels, Gauge>,
    channel_capacity: Family<Labels, Gauge>,
    channel_capacity_bytes: Family<Labels, Gauge>,
    latency: HistogramFamily,
    batch_events: HistogramFamily,
    declared: Declared,
    /// The plugins' families already in the registry.
    registered: HashSet<TypeId>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            source_events: Family::default(),
            source_bytes: Family::default(),
            source_filtered: Family::default(),
            source_parse_errors: Family::default(),
            sink_delivered: Family::default(),
            sink_delivered_bytes: Family::default(),
            sink_batches: Family::default(),
            sink_failed: Family::default(),
            sink_retries: Family::default(),
            dropped: Family::default(),
            spool_events: Family::default(),
            spool_bytes: Family::default(),
            dead_letter_events: Family::default(),
            spool_corrupt: Family::default(),
            channel_events: Family::default(),
            channel_bytes: Family::default(),
            channel_capacity: Family::default(),
            channel_capacity_bytes: Family::default(),
            latency: HistogramFamily::new_with_constructor(latency_histogram),
            batch_events: HistogramFamily::new_with_constructor(batch_histogram),
            declared: Declared::default(),
            registered: HashSet::new(),
            registry: Registry::default(),
        };
        // prometheus-client appends `_total` to counter names.
        let counters: [(&str, &str, &Family<Labels, Counter>); 11] = [
            (
                "tailrace_events_filtered",
                "Events filtered out by an interceptor, per source",
                &m.source_filtered,
            ),
            (
                "tailrace_spool_corrupt_entries",
                "Spool entries that failed their checksum and were set aside",
                &m.spool_corrupt,
            ),
            (
                "tailrace_source_events",
                "Events read by each source",
                &m.source_events,
            ),
            (
                "tailrace_source_bytes",
                "Payload bytes read by each source",
                &m.source_bytes,
            ),
            (
                "tailrace_source_parse_errors",
                "Malformed input forwarded as it was (bad framing, syslog that does not parse)",
                &m.source_parse_errors,
            ),
            (
                "tailrace_sink_events_delivered",
                "Events acknowledged by Kafka per sink",
                &m.sink_delivered,
            ),
            (
                "tailrace_sink_bytes_delivered",
                "Payload bytes acknowledged by Kafka per sink",
                &m.sink_delivered_bytes,
            ),
            (
                "tailrace_sink_batches",
                "Batches taken from the channel per sink",
                &m.sink_batches,
            ),
            (
                "tailrace_sink_events_failed",
                "Failed sends per sink, by reason",
                &m.sink_failed,
            ),
            (
                "tailrace_sink_retries",
                "Events produced again after a failed delivery",
                &m.sink_retries,
            ),
            (
                "tailrace_events_dropped",
                "Events discarded, by component and reason",
                &m.dropped,
            ),
        ];
        for (name, help, family) in counters {
            registry.register(name, help, family.clone());
        }
        let gauges: [(&str, &str, &Family<Labels, Gauge>); 7] = [
            (
                "tailrace_channel_capacity_events",
                "Events each channel holds at most (capacity_events; max_events of a disk channel, absent when it has none)",
                &m.channel_capacity,
            ),
            (
                "tailrace_channel_capacity_bytes",
                "Payload bytes each channel holds at most (capacity_bytes; max_bytes of a disk channel)",
                &m.channel_capacity_bytes,
            ),
            (
                "tailrace_dead_letter_events",
                "Events Kafka refused for good, kept in the dead-letter tree per sink",
                &m.dead_letter_events,
            ),
            (
                "tailrace_spool_events",
                "Events held in the spool per sink",
                &m.spool_events,
            ),
            (
                "tailrace_spool_bytes",
                "Bytes held in the spool per sink",
                &m.spool_bytes,
            ),
            (
                "tailrace_channel_events",
                "Events waiting in each channel",
                &m.channel_events,
            ),
            (
                "tailrace_channel_bytes",
                "Payload bytes waiting in each channel",
                &m.channel_bytes,
            ),
        ];
        for (name, help, family) in gauges {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "tailrace_delivery_latency_seconds",
            "Time from read to acknowledgement by Kafka, per batch",
            m.latency.clone(),
        );
        registry.register(
            "tailrace_sink_batch_events",
            "Events per batch taken from the channel, per sink",
            m.batch_events.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Registers a plugin's families, once per type: call before the
    /// registry is shared and components are built.
    pub fn declare<F: Families>(&mut self) {
        if self.registered.insert(TypeId::of::<F>()) {
            declared::<F>(&self.declared).register(&mut self.registry);
        }
    }

    /// The registry, for the admin endpoint to encode and to add
    /// process-level metrics to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn source(&self, name: &str) -> SourceMetrics {
        let l = vec![("source", name.to_owned())];
        // Series that alerts use exist from the start, at 0, so that
        // `increase()` sees the first event too.
        let dropped = Dropped::new(self.dropped.clone(), name);
        dropped.add("line_truncated", 0);
        SourceMetrics {
            events: self.source_events.get_or_create(&l).clone(),
            bytes: self.source_bytes.get_or_create(&l).clone(),
            filtered: self.source_filtered.get_or_create(&l).clone(),
            parse_errors: self.source_parse_errors.get_or_create(&l).clone(),
            dropped,
            declared: self.declared.clone(),
        }
    }

    pub fn sink(&self, name: &str) -> SinkMetrics {
        let l = vec![("sink", name.to_owned())];
        let failed = Arc::new(Labelled {
            family: self.sink_failed.clone(),
            fixed: ("sink", name.to_owned()),
            key: "reason",
        });
        // Each sink exports the reasons it knows at 0 itself.
        let dropped = Dropped::new(self.dropped.clone(), name);
        SinkMetrics {
            delivered: self.sink_delivered.get_or_create(&l).clone(),
            delivered_bytes: self.sink_delivered_bytes.get_or_create(&l).clone(),
            batches: self.sink_batches.get_or_create(&l).clone(),
            retries: self.sink_retries.get_or_create(&l).clone(),
            spool_events: self.spool_events.get_or_create(&l).clone(),
            spool_bytes: self.spool_bytes.get_or_create(&l).clone(),
            dead_letter_events: self.dead_letter_events.get_or_create(&l).clone(),
            spool_corrupt: self.spool_corrupt.get_or_create(&l).clone(),
            latency: self.latency.get_or_create(&l).clone(),
            batch_events: self.batch_events.get_or_create(&l).clone(),
            failed,
            dropped,
            declared: self.declared.clone(),
        }
    }

    /// Sets `tailrace_channel_capacity_events{channel}` (left out when
    /// `events` is None: a disk channel bounded by bytes only) and
    /// `tailrace_channel_capacity_bytes{channel}`.
    pub fn channel_capacity(&self, name: &str, events: Option<u64>, bytes: u64) {
        let l = vec![("channel", name.to_owned())];
        let gauge = |n: u64| n.min(i64::MAX as u64) as i64;
        match events {
            Some(n) => {
                self.channel_capacity.get_or_create(&l).set(gauge(n));
            }
            None => {
                self.channel_capacity.remove(&l);
            }
        }
        self.channel_capacity_bytes
            .get_or_create(&l)
            .set(gauge(bytes));
    }

    /// `tailrace_events_dropped_total{component}` for a component the
    /// agent builds itself (a disk channel).
    pub fn dropped(&self, component: &str) -> Dropped {
        Dropped::new(self.dropped.clone(), component)
    }

    /// The families of type `F`, for components the agent builds itself
    /// (the disk channel).
    pub fn families<F: Families>(&self) -> F {
        declared(&self.declared)
    }

    /// The (events, bytes) fill gauges of a channel.
    pub fn channel(&self, name: &str) -> (Gauge, Gauge) {
        let l = vec![("channel", name.to_owned())];
        (
            self.channel_events.get_or_create(&l).clone(),
            self.channel_bytes.get_or_create(&l).clone(),
        )
    }
}

/// A counter family with one fixed label and one chosen at the call, for
/// events that are rare (errors, drops), where a lookup per call is fine.
pub struct Labelled {
    family: Family<Labels, Counter>,
    fixed: (&'static str, String),
    key: &'static str,
}

impl Labelled {
    pub fn add(&self, value: &str, n: u64) {
        let labels = vec![self.fixed.clone(), (self.key, value.to_owned())];
        self.family.get_or_create(&labels).inc_by(n);
    }

    pub fn get(&self, value: &str) -> u64 {
        let labels = vec![self.fixed.clone(), (self.key, value.to_owned())];
        self.family.get_or_create(&labels).get()
    }
}

/// `tailrace_events_dropped_total{component, reason}` for one component.
#[derive(Clone)]
pub struct Dropped(Arc<Labelled>);

impl Dropped {
    fn new(family: Family<Labels, Counter>, component: &str) -> Dropped {
        Dropped(Arc::new(Labelled {
            family,
            fixed: ("component", component.to_owned()),
            key: "reason",
        }))
    }

    pub fn add(&self, reason: &str, n: u64) {
        self.0.add(reason, n)
    }

    /// The count of `reason` so far.
    pub fn get(&self, reason: &str) -> u64 {
        self.0.get(reason)
    }
}

#[derive(Clone)]
pub struct SourceMetrics {
    pub events: Counter,
    pub bytes: Counter,
    /// Events an interceptor filtered out (not dropped: filtering is asked for).
    pub filtered: Counter,
    /// Input that did not parse and was forwarded as it was.
    pub parse_errors: Counter,
    pub dropped: Dropped,
    declared: Declared,
}

impl SourceMetrics {
    /// Handles registered nowhere, for tests and tools.
    pub fn detached(name: &str) -> SourceMetrics {
        Metrics::new().source(name)
    }

    /// The families the source's plugin declared (see [`Families`]).
    pub fn families<F: Families>(&self) -> F {
        declared(&self.declared)
    }
}

#[derive(Clone)]
pub struct SinkMetrics {
    pub delivered: Counter,
    pub delivered_bytes: Counter,
    pub batches: Counter,
    pub retries: Counter,
    pub spool_events: Gauge,
    pub spool_bytes: Gauge,
    pub dead_letter_events: Gauge,
    pub spool_corrupt: Counter,
    pub latency: Histogram,
    pub batch_events: Histogram,
    /// `tailrace_sink_events_failed_total{sink, reason}`
    pub failed: Arc<Labelled>,
    pub dropped: Dropped,
    declared: Declared,
}

impl SinkMetrics {
    /// The families the sink's plugin declared (see [`Families`]).
    pub fn families<F: Families>(&self) -> F {
        declared(&self.declared)
    }
}
