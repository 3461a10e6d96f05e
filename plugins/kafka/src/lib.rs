//! The Kafka sink: produces every record it takes from its channel with
//! acks=all and the idempotent producer, and acknowledges a batch back to
//! its source only when Kafka confirmed every record of it.
//!
//! It runs on a thread of its own that both produces and polls, so delivery
//! reports are handled where the producer lives: one reference-counted
//! handle per channel batch is the delivery opaque of its records (no
//! allocation per record), and metrics move once per batch.
//!
//! This is the only crate that knows rdkafka. It must never turn off
//! acks=all or idempotence, whatever the pass-through properties say.

pub mod auth;
mod bounded;
pub mod check;
mod config;
pub mod encode;
#[cfg(test)]
mod memory;
mod metrics;
#[cfg(test)]
mod model_tests;
mod partition;
mod properties;
mod replay;
mod sink;

pub use config::{Compression, KafkaSinkConfig, SpoolConfig, SpoolOrdering, TlsConfig, WhenFull};
pub use encode::{Encoding, Template};
pub use metrics::{declare_metrics, TopicDurability};
pub use replay::{replay_offline, OfflineReplay};
