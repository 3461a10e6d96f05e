//! The kafka sink's metric families, declared by this plugin:
//! `tailrace_sink_topic_replication_factor{sink,topic}` and
//! `tailrace_sink_topic_min_insync_replicas{sink,topic}`.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tailrace_api::{Families, Labels, Metrics, SinkMetrics};

/// Registers the kafka sink's families (the agent calls it at start).
pub fn declare_metrics(metrics: &mut Metrics) {
    metrics.declare::<TopicFamilies>();
}

#[derive(Clone, Default)]
pub struct TopicFamilies {
    replication: Family<Labels, Gauge>,
    min_insync: Family<Labels, Gauge>,
}

impl Families for TopicFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tailrace_sink_topic_replication_factor",
            "Replicas of each partition of a topic a sink writes to, as the cluster reports it",
            self.replication.clone(),
        );
        registry.register(
            "tailrace_sink_topic_min_insync_replicas",
            "min.insync.replicas of a topic a sink writes to: acks=all waits for this many copies",
            self.min_insync.clone(),
        );
    }
}

/// How durable one sink's topics are, as the cluster reports; set when the
/// sink learns it (rare: a lookup per call).
#[derive(Clone)]
pub struct TopicDurability {
    families: TopicFamilies,
    sink: String,
}

impl TopicDurability {
    pub fn of(sink: &str, metrics: &SinkMetrics) -> TopicDurability {
        TopicDurability {
            families: metrics.families::<TopicFamilies>(),
            sink: sink.to_owned(),
        }
    }

    pub fn set(&self, topic: &str, replication_factor: i64, min_insync_replicas: i64) {
        let l = vec![("sink", self.sink.clone()), ("topic", topic.to_owned())];
        self.families
            .replication
            .get_or_create(&l)
            .set(replication_factor);
        self.families
            .min_insync
            .get_or_create(&l)
            .set(min_insync_replicas);
    }
}
