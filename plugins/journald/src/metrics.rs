//! The journald source's metric families, declared by this plugin:
//! `tailrace_journald_lag_seconds{source}` and
//! `tailrace_journald_events_total{source,event}`.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tailrace_api::{Families, Labels, Metrics, SourceMetrics};

/// Every event a journald source counts, exported at 0 from its start.
pub const EVENTS: &[&str] = &["cursor_missing"];

/// Registers the journald source's families (the agent calls it at start).
pub fn declare_metrics(metrics: &mut Metrics) {
    metrics.declare::<JournaldFamilies>();
}

#[derive(Clone, Default)]
pub struct JournaldFamilies {
    lag: Family<Labels, Gauge<f64, AtomicU64>>,
    events: Family<Labels, Counter>,
}

impl Families for JournaldFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tailrace_journald_lag_seconds",
            "The newest journal entry's time minus the time of the last entry Kafka acknowledged",
            self.lag.clone(),
        );
        registry.register(
            "tailrace_journald_events",
            "What happened to a journald source's position, by event (cursor_missing, ...)",
            self.events.clone(),
        );
    }
}

/// The handles of one journald source.
#[derive(Clone)]
pub struct JournaldMetrics {
    families: JournaldFamilies,
    source: String,
}

impl JournaldMetrics {
    /// The source's handles, with every event exported at 0.
    pub fn of(source: &str, metrics: &SourceMetrics) -> JournaldMetrics {
        let m = JournaldMetrics {
            families: metrics.families::<JournaldFamilies>(),
            source: source.to_owned(),
        };
        for event in EVENTS {
            m.event(event, 0);
        }
        m
    }

    /// `tailrace_journald_lag_seconds{source}`.
    pub fn lag(&self) -> Gauge<f64, AtomicU64> {
        let l = vec![("source", self.source.clone())];
        self.families.lag.get_or_create(&l).clone()
    }

    /// Adds `n` to `tailrace_journald_events_total{source, event}`.
    pub fn event(&self, event: &str, n: u64) {
        let l = vec![("source", self.source.clone()), ("event", event.to_owned())];
        self.families.events.get_or_create(&l).inc_by(n);
    }
}
