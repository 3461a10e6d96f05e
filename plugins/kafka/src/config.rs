//! The kafka sink's configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use tailrace_api::spool::{SpoolStore, SpoolTree};
use tailrace_api::Secret;
use tailrace_api::{
    BatchLimits, BuildError, ComponentTask, ConfigIssue, ReplayReport, SinkConfig, SinkContext,
};

/// The value of `bootstrap_servers` that starts librdkafka's mock cluster
/// in the process.
pub const EMBEDDED: &str = "embedded";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port…]`, or `embedded`.
    pub bootstrap_servers: String,
    /// A template: `logs`, `logs-{source}`, `{team:-misc}`.
    pub topic: String,
    /// A template for the message key; records with the same key go to the
    /// same partition. No key by default.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub encoding: crate::encode::Encoding,
    /// Source, host, path and offset as Kafka headers.
    #[serde(default)]
    pub headers: bool,
    /// A `tailrace.id` header whose value is the same each time the same
    /// line is produced again: what consumers deduplicate on.
    #[serde(default)]
    pub event_id: bool,
    #[serde(default)]
    pub compression: Compression,
    /// How long the sink waits for Kafka to acknowledge anything while it
    /// has messages in flight; then everything unacknowledged goes to the
    /// spool. It plays the part of librdkafka's message.timeout.ms, which
    /// the sink enforces itself so that no message can be given up while a
    /// later one still goes through. 0 means forever.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    #[serde(default)]
    pub batch: BatchLimits,
    /// Other librdkafka producer properties, passed through.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, Scalar>,
    /// TLS to the brokers: enabled when present.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// SASL authentication; see `auth`.
    #[serde(default)]
    pub sasl: Option<crate::auth::SaslConfig>,
    #[serde(default)]
    pub spool: SpoolConfig,
}

fn default_delivery_timeout_ms() -> u64 {
    60_000
}

/// Kafka's own codecs, so any consumer reads what tailrace wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    pub fn codec(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// `tls: { ca_file, cert_file, key_file, key_password, verify_hostname }`.
/// `tls: {}` trusts the system's certificate authorities.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the authorities that signed the brokers' certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one (mTLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub key_password: Option<Secret>,
    /// Check that the broker's certificate names the host connected to.
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

fn default_true() -> bool {
    true
}

impl TlsConfig {
    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => issues.push(ConfigIssue::new(
                &["key_file"],
                "cert_file needs key_file (the client certificate's private key)",
            )),
            (None, Some(_)) => issues.push(ConfigIssue::new(
                &["cert_file"],
                "key_file needs cert_file (the client certificate)",
            )),
            _ => {}
        }
        if self.key_password.is_some() && self.key_file.is_none() {
            issues.push(ConfigIssue::new(
                &["key_password"],
                "key_password is the passphrase of key_file, which is not set",
            ));
        }
        for (key, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                issues.push(ConfigIssue::new(&[key], format!("{key} is empty")));
            }
        }
        issues
    }
}

/// A YAML scalar given to librdkafka as text.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Text(s) => write!(f, "{s}"),
        }
    }
}

/// librdkafka's default `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// What a record adds to its payload against `message.max.bytes`:
/// librdkafka counts 36 bytes of varints and attributes
/// (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`) plus the key and the headers; the
/// rest is room for a key and the headers tailrace adds (the event id, a
/// source's fields), so a line of `max_line_bytes` is never refused for
/// its size on its first send. Keys and headers larger than that, or JSON
/// encoding that escapes much of a line, can still push a record over; it
/// is then dead-lettered and counted.
const RECORD_OVERHEAD_BYTES: usize = 36 + 988;

/// Where failed sends go, and how they come back.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The most the spool may hold on disk (compressed).
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    #[serde(default)]
    pub when_full: WhenFull,
    /// The most the dead-letter tree may hold; its oldest entries go first
    /// (counted as dropped, reason `dead_letter_evicted`).
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: u64,
    /// The most the tree of entries that failed their checksum may hold;
    /// its oldest entries go first (reason `corrupt_evicted`).
    #[serde(default = "default_corrupt_max_bytes")]
    pub corrupt_max_bytes: u64,
    #[serde(default)]
    pub ordering: SpoolOrdering,
    /// How long a send may wait for room in librdkafka's queue before its
    /// records go to the spool instead.
    #[serde(default = "default_queue_full_timeout_ms")]
    pub queue_full_timeout_ms: u64,
    /// Spool entries being replayed at once (librdkafka is handed no more
    /// than 50,000 replayed records at once whatever this says). Entries
    /// of new events behind the spool hold up to 96 KiB of payload, about
    /// 1,000 lines of 100 bytes: 64 keep a drain's pipeline full.
    #[serde(default = "default_replay_entries")]
    pub replay_entries_in_flight: usize,
}

fn default_queue_full_timeout_ms() -> u64 {
    5_000
}
fn default_replay_entries() -> usize {
    64
}

/// Whether new events wait behind the spool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolOrdering {
    /// While the spool holds anything, new events are spooled behind it, so
    /// the order of a partition holds.
    #[default]
    Strict,
    /// New events are produced at once; replay interleaves with them.
    Relaxed,
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
}
/// 256 MiB: a remote sender of over-long lines must not fill the disk.
fn default_dead_letter_max_bytes() -> u64 {
    256 << 20
}
fn default_corrupt_max_bytes() -> u64 {
    64 << 20
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: default_spool_max_bytes(),
            when_full: WhenFull::default(),
            dead_letter_max_bytes: default_dead_letter_max_bytes(),
            corrupt_max_bytes: default_corrupt_max_bytes(),
            ordering: SpoolOrdering::default(),
            queue_full_timeout_ms: default_queue_full_timeout_ms(),
            replay_entries_in_flight: default_replay_entries(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    #[default]
    Block,
    DropOldest,
}

/// Checks `host:port[,host:port…]`.
pub fn check_brokers(list: &str) -> Result<(), String> {
    if list.trim().is_empty() {
        return Err("bootstrap_servers is empty".into());
    }
    for part in list.split(',') {
        let part = part.trim();
        let (host, port) = part
            .rsplit_once(':')
            .ok_or_else(|| format!("invalid broker address {part:?}: expected host:port"))?;
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(format!(
                    "invalid broker address {part:?}: {port:?} is not a port number"
                ))
            }
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!(
                "invalid broker address {part:?}: the host is missing or has spaces"
            ));
        }
    }
    Ok(())
}

impl SinkConfig for KafkaSinkConfig {
    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.bootstrap_servers != EMBEDDED {
            if let Err(e) = check_brokers(&self.bootstrap_servers) {
                issues.push(ConfigIssue::new(
                    &["bootstrap_servers"],
                    format!("{e} (or \"embedded\" for an in-process test cluster)"),
                ));
            }
        }
        let legal = |t: &str| {
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        match crate::encode::Template::parse(&self.topic) {
            Err(e) => issues.push(ConfigIssue::new(
                &["topic"],
                format!("invalid topic template: {e}"),
            )),
            Ok(t) => match t.as_static() {
                Some(name) => {
                    if name.is_empty()
                        || name.len() > 249
                        || name == "."
                        || name == ".."
                        || !legal(name)
                    {
                        issues.push(ConfigIssue::new(
                            &["topic"],
                            format!("invalid topic name {name:?}: use 1 to 249 of the characters a-z A-Z 0-9 . _ -"),
                        ));
                    }
                }
                None => {
                    if !t.literals().all(legal) {
                        issues.push(ConfigIssue::new(
                            &["topic"],
                            format!("invalid topic template {:?}: its fixed parts may use only a-z A-Z 0-9 . _ -", self.topic),
                        ));
                    }
                    if self.bootstrap_servers == EMBEDDED {
                        // The embedded cluster creates topics on first use.
                    }
                }
            },
        }
        if let Some(key) = &self.key {
            if let Err(e) = crate::encode::Template::parse(key) {
                issues.push(ConfigIssue::new(
                    &["key"],
                    format!("invalid key template: {e}"),
                ));
            }
        }
        let mut key_issues = Vec::new();
        if let Some(tls) = &self.tls {
            key_issues.extend(tls.validate().into_iter().map(|i| i.under("tls")));
        }
        if let Some(sasl) = &self.sasl {
            key_issues.extend(sasl.validate().into_iter().map(|i| i.under("sasl")));
        }
        let keys_sound = key_issues.is_empty();
        issues.extend(key_issues);
        if keys_sound {
            // librdkafka's own parser, on what the keys above stand for and
            // on the pass-through, once those keys are sound.
            issues.extend(crate::properties::check(self, "validate"));
        }
        let limits: [(&str, u64); 3] = [
            ("max_events", self.batch.max_events as u64),
            ("max_bytes", self.batch.max_bytes as u64),
            ("linger_ms", self.batch.linger_ms + 1),
        ];
        for (key, v) in limits {
            if v == 0 {
                issues.push(ConfigIssue::new(
                    &["batch", key],
                    format!("{key} must be greater than 0"),
                ));
            }
        }
        for (key, v) in [
            ("max_bytes", self.spool.max_bytes),
            ("dead_letter_max_bytes", self.spool.dead_letter_max_bytes),
            ("corrupt_max_bytes", self.spool.corrupt_max_bytes),
        ] {
            if v == 0 {
                issues.push(ConfigIssue::new(
                    &["spool", key],
                    format!("{key} must be greater than 0"),
                ));
            }
        }
        if self.spool.replay_entries_in_flight == 0 {
            issues.push(ConfigIssue::new(
                &["spool", "replay_entries_in_flight"],
                "replay_entries_in_flight must be greater than 0",
            ));
        }
        issues
    }

    fn build(&self, cx: SinkContext) -> Result<ComponentTask, BuildError> {
        crate::sink::spawn(self, cx)
    }

    fn max_record_bytes(&self) -> Option<(usize, String)> {
        let (max, from) = match self.librdkafka.get("message.max.bytes") {
            // One that does not parse is refused by librdkafka's own check.
            Some(v) => (v.to_string().parse::<usize>().ok()?, "message.max.bytes"),
            None => (
                LIBRDKAFKA_MESSAGE_MAX_BYTES,
                "librdkafka's default message.max.bytes",
            ),
        };
        Some((
            max.saturating_sub(RECORD_OVERHEAD_BYTES),
            format!("{from} {max} less {RECORD_OVERHEAD_BYTES} bytes for the record's framing, key and headers"),
        ))
    }

    fn check(&self, name: &str, timeout: std::time::Duration) -> tailrace_api::CheckReport {
        crate::check::check(self, name, timeout)
    }

    fn render(
        &self,
        batch: &tailrace_api::Batch,
        record: &tailrace_api::Record,
    ) -> Option<tailrace_api::Rendered> {
        let (topic, key) = (&self.topic, self.key.as_deref());
        Some(crate::encode::render(
            topic,
            key,
            self.encoding,
            batch,
            record,
        ))
    }

    fn replay_spool(
        &self,
        name: &str,
        spool: std::sync::Arc<dyn SpoolStore>,
        tree: SpoolTree,
        timeout: std::time::Duration,
    ) -> Result<ReplayReport, String> {
        let metrics = tailrace_api::Metrics::new().sink(name);
        let spool = crate::bounded::Bounded::wrap(spool, &self.spool, metrics.dropped.clone());
        crate::replay::replay_offline(self, name, spool, tree, metrics, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_lists() {
        for ok in [
            "127.0.0.1:9092",
            "a:1,b:2",
            "kafka-1.example:9093, kafka-2:9093",
            "[::1]:9092",
        ] {
            assert_eq!(check_brokers(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("localhost", "expected host:port"),
            (":9092", "host is missing"),
            ("h:0", "not a port"),
            ("h:99999", "not a port"),
            ("not an address:", "not a port"),
        ] {
            let e = check_brokers(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?} gave {e:?}");
        }
    }
}
