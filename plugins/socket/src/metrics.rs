//! The socket sources' metric families, declared by this plugin:
//! `tailrace_source_connections_refused_total{source,reason}`, the
//! connections a stream source closed without reading them, and
//! `tailrace_relp_messages_answered_total{source}`, the messages a relp
//! source answered `200 OK` (the record was safe), and
//! `tailrace_source_buffer_bytes{source}`, the read buffers a stream
//! source's connections hold (`crate::pool`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tailrace_api::{Families, Labels, Metrics, SourceMetrics};

/// One more connection from an address that already holds
/// `max_connections_per_address`.
pub(crate) const PER_ADDRESS: &str = "per_address";
/// A TLS client that did not finish its handshake within
/// `tls_handshake_timeout_ms` (or, at shutdown, the drain deadline).
pub(crate) const TLS_HANDSHAKE_TIMEOUT: &str = "tls_handshake_timeout";
/// A TLS handshake that failed (no or a bad client certificate, not TLS).
pub(crate) const TLS_HANDSHAKE_FAILED: &str = "tls_handshake_failed";
/// At shutdown: a connection still in the accept backlog while every
/// `max_connections` slot was taken (it is closed unread).
pub(crate) const MAX_CONNECTIONS: &str = "max_connections";

/// Registers the socket sources' family (the agent calls it at start).
pub fn declare_metrics(metrics: &mut Metrics) {
    metrics.declare::<SocketFamilies>();
}

#[derive(Clone, Default)]
pub struct SocketFamilies {
    refused: Family<Labels, Counter>,
    answered: Family<Labels, Counter>,
    buffers: Family<Labels, Gauge>,
}

impl Families for SocketFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tailrace_source_connections_refused",
            "Connections a stream source closed without reading them, by reason (per_address, tls_handshake_timeout, tls_handshake_failed, max_connections)",
            self.refused.clone(),
        );
        registry.register(
            "tailrace_relp_messages_answered",
            "Messages a relp source answered 200 OK (written to the client once the record was safe)",
            self.answered.clone(),
        );
        registry.register(
            "tailrace_source_buffer_bytes",
            "Bytes of read buffers a stream source's connections hold, until their records are delivered (at most read_pool_bytes)",
            self.buffers.clone(),
        );
    }
}

/// `tailrace_source_buffer_bytes{source}` (at 0 from the start).
pub(crate) fn buffer_bytes(source: &str, metrics: &SourceMetrics) -> Gauge {
    let l = vec![("source", source.to_owned())];
    metrics
        .families::<SocketFamilies>()
        .buffers
        .get_or_create(&l)
        .clone()
}

/// `tailrace_relp_messages_answered_total{source}` (at 0 from the start).
pub(crate) fn relp_answered(source: &str, metrics: &SourceMetrics) -> Counter {
    let l = vec![("source", source.to_owned())];
    metrics
        .families::<SocketFamilies>()
        .answered
        .get_or_create(&l)
        .clone()
}

/// One stream source's refusal counts.
pub(crate) struct Refused {
    family: Family<Labels, Counter>,
    source: String,
}

impl Refused {
    /// The source's counts, with each of `reasons` (those that can happen
    /// to it) exported at 0.
    pub(crate) fn of(source: &str, metrics: &SourceMetrics, reasons: &[&str]) -> Refused {
        let r = Refused {
            family: metrics.families::<SocketFamilies>().refused,
            source: source.to_owned(),
        };
        for reason in reasons {
            r.add(reason, 0);
        }
        r
    }

    /// Adds `n` (refusals are rare: one lookup per call).
    pub(crate) fn add(&self, reason: &str, n: u64) {
        let l = vec![
            ("source", self.source.clone()),
            ("reason", reason.to_owned()),
        ];
        self.family.get_or_create(&l).inc_by(n);
    }
}
