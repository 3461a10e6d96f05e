//! What the e2e tests (`tailrace-e2e`), the plugin tests and the benchmarks
//! share, kept light enough for a plugin crate to dev-depend on: no broker,
//! no Kafka client, no agent.
//!
//! - [`config`]: the typed config builder, so a test states what its scene
//!   changes and never patches YAML text.
//! - [`SeqLines`] writes fixed-length lines carrying sequence numbers, and
//!   [`Report`] compares what arrived with what was written: missing,
//!   duplicated, out of order, malformed. It is the one sequence check.
//!
//! This crate must never depend on the daemon's crates (only its tests do,
//! to check the builder's output with the agent's own loader).

pub mod config;
mod lines;

pub use config::{Channel, Config, Sink, Source};
pub use lines::{seq_of, Arrivals, Report, SeqLines, Writer, LINE_LEN};

/// A test's size knob: the environment variable `name` parsed, or
/// `default` when it is unset or does not parse (`TAILRACE_CUTS=20`,
/// `CAMPAIGN_ROUNDS=200`: the long runs README's testing section names).
pub fn size_knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
