//! The file source's metric families, declared by this plugin:
//! `tailrace_file_events_total{source,event}`,
//! `tailrace_file_open_files{source}`, `tailrace_file_lag_bytes{source,path}`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tailrace_api::{Families, Labels, Metrics, SourceMetrics};

/// Every event a file source counts: each is exported at 0 from the
/// source's start, so `increase()` sees its first occurrence.
pub const EVENTS: &[&str] = &[
    "adopted",
    "content_replaced",
    "copy_resumed",
    "deleted",
    "expired",
    "line_split",
    "lost",
    "open_limit",
    "rotated",
    "symlink_not_followed",
    "symlink_special_target",
    "truncated",
];

/// Registers the file source's families (the agent calls it at start).
pub fn declare_metrics(metrics: &mut Metrics) {
    metrics.declare::<FileFamilies>();
}

#[derive(Clone, Default)]
pub struct FileFamilies {
    events: Family<Labels, Counter>,
    open: Family<Labels, Gauge>,
    lag: Family<Labels, Gauge>,
    buffers: Family<Labels, Gauge>,
}

impl Families for FileFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tailrace_file_events",
            "What happened to the files of a file source, by event (rotated, truncated, open_limit, ...)",
            self.events.clone(),
        );
        registry.register(
            "tailrace_file_open_files",
            "Descriptors a file source holds open",
            self.open.clone(),
        );
        registry.register(
            "tailrace_file_lag_bytes",
            "Bytes between the acknowledged position of a file and its size",
            self.lag.clone(),
        );
        registry.register(
            "tailrace_file_buffer_bytes",
            "Bytes the read buffers of a file source hold (bounded by read_pool_bytes)",
            self.buffers.clone(),
        );
    }
}

/// The handles of one file source.
#[derive(Clone)]
pub struct FileMetrics {
    families: FileFamilies,
    source: String,
}

impl FileMetrics {
    /// The source's handles, with every event and the open-files gauge
    /// exported at 0.
    pub fn of(source: &str, metrics: &SourceMetrics) -> FileMetrics {
        let m = FileMetrics {
            families: metrics.families::<FileFamilies>(),
            source: source.to_owned(),
        };
        for event in EVENTS {
            m.event(event, 0);
        }
        m.open_files();
        m
    }

    /// Adds `n` to `tailrace_file_events_total{source, event}` (rare events:
    /// one lookup per call).
    pub fn event(&self, event: &str, n: u64) {
        debug_assert!(EVENTS.contains(&event), "undeclared file event {event}");
        let l = vec![("source", self.source.clone()), ("event", event.to_owned())];
        self.families.events.get_or_create(&l).inc_by(n);
    }

    /// The count of one event so far.
    pub fn event_count(&self, event: &str) -> u64 {
        let l = vec![("source", self.source.clone()), ("event", event.to_owned())];
        self.families.events.get(&l).map_or(0, |c| c.get())
    }

    /// `tailrace_file_open_files{source}`.
    pub fn open_files(&self) -> Gauge {
        let l = vec![("source", self.source.clone())];
        self.families.open.get_or_create(&l).clone()
    }

    /// `tailrace_file_buffer_bytes{source}`.
    pub fn buffer_bytes(&self) -> Gauge {
        let l = vec![("source", self.source.clone())];
        self.families.buffers.get_or_create(&l).clone()
    }

    /// `tailrace_file_lag_bytes{source, path}`: keep the handle, and
    /// [`FileMetrics::forget_lag`] it when the file is closed.
    pub fn lag(&self, path: &str) -> Gauge {
        let l = vec![("source", self.source.clone()), ("path", path.to_owned())];
        self.families.lag.get_or_create(&l).clone()
    }

    pub fn forget_lag(&self, path: &str) {
        let l = vec![("source", self.source.clone()), ("path", path.to_owned())];
        self.families.lag.remove(&l);
    }
}
