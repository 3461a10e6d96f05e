//! The producer's librdkafka properties: assembled in a fixed order,
//! checked by librdkafka's own parser, read back once the client exists.
//!
//! The order is tailrace's defaults, then what the first-class keys (`tls:`,
//! `sasl:`) stand for, then the `librdkafka:` pass-through, then the
//! promises (acks=all, idempotence, compression, the timeout the sink holds,
//! the statistics readiness needs), so nothing given earlier can undo a
//! promise. Pass-through keys are normalised first (librdkafka's aliases,
//! the `topic.` prefix), and each is also set on its own on a native config
//! and refused if it changes a promise, so an alias this table does not
//! know cannot bypass one either.

use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::types::RDKafkaConfRes;
use tailrace_api::ConfigIssue;

use crate::config::{KafkaSinkConfig, EMBEDDED};

/// Where a property came from, so an error points at what the operator wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// tailrace's default; the pass-through may change it.
    Default,
    /// Derived from a first-class key at this path in the sink's config.
    Key(Vec<String>),
    /// `librdkafka.<name>` as the operator wrote it.
    PassThrough(String),
    /// Set last; nothing else may change it.
    Promise,
}

#[derive(Clone, Debug)]
pub(crate) struct Property {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

impl Property {
    fn new(key: &str, value: impl Into<String>, origin: Origin) -> Property {
        Property {
            key: key.into(),
            value: value.into(),
            origin,
        }
    }

    /// The path of the config key this property came from, relative to the
    /// sink.
    pub(crate) fn path(&self) -> Vec<String> {
        match &self.origin {
            Origin::Key(path) => path.clone(),
            Origin::PassThrough(name) => vec!["librdkafka".into(), name.clone()],
            Origin::Default | Origin::Promise => Vec::new(),
        }
    }
}

/// Properties tailrace holds, by librdkafka's canonical name, and why.
pub(crate) const PROMISES: &[(&str, &str)] = &[
    ("acks", "acks=all is always on"),
    ("enable.idempotence", "the idempotent producer is always on"),
    ("bootstrap.servers", "use bootstrap_servers"),
    ("compression.codec", "use compression"),
    (
        "message.timeout.ms",
        "the sink holds the delivery timeout itself: use delivery_timeout_ms",
    ),
    (
        "statistics.interval.ms",
        "readiness follows the brokers through librdkafka's statistics",
    ),
    (
        "transactional.id",
        "tailrace does not use transactions (at-least-once, deduplicate on the event id)",
    ),
    ("dr_msg_cb", "tailrace handles delivery reports"),
    ("dr_cb", "tailrace handles delivery reports"),
];

/// librdkafka's aliases, to their canonical names.
const ALIASES: &[(&str, &str)] = &[
    ("request.required.acks", "acks"),
    ("metadata.broker.list", "bootstrap.servers"),
    ("compression.type", "compression.codec"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("sasl.mechanism", "sasl.mechanisms"),
    ("max.in.flight", "max.in.flight.requests.per.connection"),
];

/// SASL mechanisms librdkafka knows.
const SASL_MECHANISMS: &[&str] = &[
    "GSSAPI",
    "PLAIN",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "OAUTHBEARER",
];

/// librdkafka's canonical name for a property name as written.
pub(crate) fn canonical(key: &str) -> &str {
    let key = match key.strip_prefix("topic.") {
        // `topic.metadata.refresh.interval.ms` and the like are global
        // properties whose names start with `topic.`; only a prefix in
        // front of a topic-level property is librdkafka's topic prefix.
        Some(rest) if is_topic_level(rest) => rest,
        _ => key,
    };
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key, |(_, canonical)| canonical)
}

fn is_topic_level(key: &str) -> bool {
    matches!(
        key,
        "acks"
            | "request.required.acks"
            | "request.timeout.ms"
            | "message.timeout.ms"
            | "delivery.timeout.ms"
            | "queuing.strategy"
            | "produce.offset.report"
            | "partitioner"
            | "partitioner_cb"
            | "msg_order_cmp"
            | "opaque"
            | "compression.codec"
            | "compression.type"
            | "compression.level"
            | "auto.commit.enable"
            | "enable.auto.commit"
            | "auto.commit.interval.ms"
            | "auto.offset.reset"
            | "offset.store.path"
            | "offset.store.sync.interval.ms"
            | "offset.store.method"
            | "consume.callback.max.messages"
    )
}

/// Whether a property's value must never be shown.
pub(crate) fn is_sensitive(key: &str) -> bool {
    tailrace_api::secret::is_sensitive_key(key)
}

/// `text` without the value of any secret property.
pub(crate) fn mask(text: &str, props: &[(String, String)]) -> String {
    let secrets: Vec<String> = props
        .iter()
        .filter(|(k, _)| is_sensitive(k))
        .map(|(_, v)| v.clone())
        .collect();
    tailrace_api::secret::mask(text, &secrets)
}

/// The producer's properties, in the order they are applied.
pub(crate) fn assemble(config: &KafkaSinkConfig, name: &str) -> Vec<Property> {
    use Origin::*;
    let mut props = vec![
        Property::new("client.id", format!("tailrace-{name}"), Default),
        Property::new("queue.buffering.max.ms", "20", Default),
        Property::new("batch.num.messages", "10000", Default),
        Property::new("batch.size", "1000000", Default),
        Property::new("queue.buffering.max.messages", "100000", Default),
        Property::new("queue.buffering.max.kbytes", "32768", Default),
        // The Java client's default: keys land where a Java producer puts
        // them; the sink picks keyed partitions itself with the same hash
        // (partition.rs).
        Property::new("partitioner", "murmur2_random", Default),
    ];
    props.extend(derived(config));
    for (k, v) in &config.librdkafka {
        props.push(Property::new(
            canonical(k),
            v.to_string(),
            PassThrough(k.clone()),
        ));
    }
    props.extend([
        Property::new("acks", "all", Promise),
        Property::new("enable.idempotence", "true", Promise),
        Property::new("compression.codec", config.compression.codec(), Promise),
        // librdkafka gives up on messages one by one, and a later message
        // of a partition may still be delivered after an earlier one gave
        // up, which would overtake the spool. So librdkafka keeps trying,
        // and the sink enforces delivery_timeout_ms itself: when nothing is
        // acknowledged for that long, it takes back everything at once.
        Property::new("message.timeout.ms", "0", Promise),
        // Statistics tell whether a broker is up, for readiness.
        Property::new("statistics.interval.ms", "1000", Promise),
    ]);
    if config.bootstrap_servers != EMBEDDED {
        props.push(Property::new(
            "bootstrap.servers",
            config.bootstrap_servers.clone(),
            Promise,
        ));
    }
    props
}

/// What `tls:` and `sasl:` stand for.
fn derived(config: &KafkaSinkConfig) -> Vec<Property> {
    let key = |path: &[&str]| Origin::Key(path.iter().map(|s| s.to_string()).collect());
    let mut props = Vec::new();
    let protocol = match (&config.tls, &config.sasl) {
        (None, None) => None,
        (Some(_), None) => Some("SSL"),
        (None, Some(_)) => Some("SASL_PLAINTEXT"),
        (Some(_), Some(_)) => Some("SASL_SSL"),
    };
    if let Some(protocol) = protocol {
        let from = if config.tls.is_some() { "tls" } else { "sasl" };
        props.push(Property::new("security.protocol", protocol, key(&[from])));
    }
    if let Some(tls) = &config.tls {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        if let Some(ca) = &tls.ca_file {
            props.push(Property::new(
                "ssl.ca.location",
                path(ca),
                key(&["tls", "ca_file"]),
            ));
        }
        if let Some(cert) = &tls.cert_file {
            props.push(Property::new(
                "ssl.certificate.location",
                path(cert),
                key(&["tls", "cert_file"]),
            ));
        }
        if let Some(k) = &tls.key_file {
            props.push(Property::new(
                "ssl.key.location",
                path(k),
                key(&["tls", "key_file"]),
            ));
        }
        if let Some(p) = &tls.key_password {
            props.push(Property::new(
                "ssl.key.password",
                p.expose(),
                key(&["tls", "key_password"]),
            ));
        }
        props.push(Property::new(
            "ssl.endpoint.identification.algorithm",
            if tls.verify_hostname { "https" } else { "none" },
            key(&["tls", "verify_hostname"]),
        ));
    }
    if let Some(sasl) = &config.sasl {
        for (k, v) in sasl.properties() {
            let k = canonical(&k).to_string();
            props.push(Property {
                key: k,
                value: v,
                origin: key(&["sasl"]),
            });
        }
    }
    props
}

/// The properties as librdkafka takes them: later ones replace earlier
/// ones of the same (canonical) name.
pub(crate) fn client_config(props: &[Property]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for p in props {
        config.set(&p.key, &p.value);
    }
    config
}

/// A value fit for a message: masked when the property is a secret.
fn shown(key: &str, value: &str) -> String {
    if is_sensitive(key) {
        tailrace_api::secret::MASK.into()
    } else {
        format!("{value:?}")
    }
}

/// librdkafka's own verdict on one property, set on a native config
/// beside `acks=all` (which makes the default topic config exist, so that
/// topic-level promises compare like for like).
fn set_alone(key: &str, value: &str) -> Result<rdkafka::config::NativeClientConfig, String> {
    let mut config = ClientConfig::new();
    config.set("acks", "all");
    config.set(key, value);
    config.create_native_config().map_err(|e| match e {
        rdkafka::error::KafkaError::ClientConfig(res, description, _, _) => {
            let what = match res {
                RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN => "unknown property",
                _ => "value refused",
            };
            // librdkafka's description quotes the value: keep it out when
            // it is a secret.
            let description = if is_sensitive(key) {
                description.replace(value, tailrace_api::secret::MASK)
            } else {
                description
            };
            format!("librdkafka: {what}: {description}")
        }
        other => format!("librdkafka: {other}"),
    })
}

/// Every problem librdkafka (or a promise) finds in the properties, at the
/// config key each came from. Makes native configs and, if they are all
/// accepted, a client without brokers: it reads the TLS files, connects
/// nowhere.
pub(crate) fn check(config: &KafkaSinkConfig, name: &str) -> Vec<ConfigIssue> {
    let props = assemble(config, name);
    let mut issues = Vec::new();
    let issue = |p: &Property, message: String| ConfigIssue {
        path: p.path(),
        message,
    };
    let derived_keys: Vec<String> = props
        .iter()
        .filter(|p| matches!(p.origin, Origin::Key(_)))
        .map(|p| p.key.clone())
        .collect();
    let baseline = set_alone("acks", "all").ok();
    for p in &props {
        let Origin::PassThrough(written) = &p.origin else {
            if matches!(p.origin, Origin::Key(_)) {
                if let Err(e) = set_alone(&p.key, &p.value) {
                    issues.push(issue(p, e));
                }
            }
            continue;
        };
        if let Some((_, why)) = PROMISES.iter().find(|(k, _)| *k == p.key) {
            let alias = if *written != p.key {
                format!(" ({written} is librdkafka's name for {})", p.key)
            } else {
                String::new()
            };
            issues.push(issue(
                p,
                format!("{written} cannot be set here{alias}: {why}"),
            ));
            continue;
        }
        if derived_keys.contains(&p.key) {
            issues.push(issue(
                p,
                format!(
                    "{written} is already set by the sink's tls: or sasl: keys; set it in one place"
                ),
            ));
            continue;
        }
        if p.key == "sasl.mechanisms" && !SASL_MECHANISMS.contains(&p.value.as_str()) {
            issues.push(issue(
                p,
                format!(
                    "unknown SASL mechanism {:?}: use one of {}",
                    p.value,
                    SASL_MECHANISMS.join(", ")
                ),
            ));
            continue;
        }
        match set_alone(&p.key, &p.value) {
            Err(e) => issues.push(issue(p, e)),
            Ok(native) => {
                // An alias this module does not know still shows: the
                // promise's value moved.
                let Some(baseline) = &baseline else { continue };
                for (promise, why) in PROMISES {
                    if baseline.get(promise).ok() != native.get(promise).ok() {
                        issues.push(issue(
                            p,
                            format!(
                                "{written} = {} would change {promise}: {why}",
                                shown(written, &p.value)
                            ),
                        ));
                    }
                }
            }
        }
    }
    if issues.is_empty() {
        if let Err(e) = connectionless(&props) {
            let at = props
                .iter()
                .rev()
                .find(|p| !p.path().is_empty() && e.contains(p.key.as_str()))
                .map(Property::path)
                .unwrap_or_default();
            issues.push(ConfigIssue {
                path: at,
                message: format!("librdkafka refuses the producer's properties: {e}"),
            });
        }
    }
    issues
}

/// Creates a producer with every property but the brokers, so librdkafka
/// runs all of its checks (SASL mechanism, TLS files and key password,
/// features not built in) without a connection, then destroys it.
fn connectionless(props: &[Property]) -> Result<(), String> {
    let props: Vec<Property> = props
        .iter()
        .filter(|p| p.key != "bootstrap.servers")
        .cloned()
        .collect();
    let config = client_config(&props);
    config
        .create_with_context::<_, BaseProducer<Preflight>>(Preflight)
        .map(drop)
        .map_err(|e| {
            let pairs: Vec<(String, String)> = props
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect();
            mask(&e.to_string(), &pairs)
        })
}

/// The context of the connectionless check: it never receives anything.
struct Preflight;

impl ClientContext for Preflight {
    // The sink's context supplies tokens itself; so must this one, or
    // librdkafka would refuse OAUTHBEARER without a token source.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        Err("the configuration check has no token".into())
    }
}

impl ProducerContext for Preflight {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// After the producer was built: the promises as librdkafka holds them.
/// An error names the first one that does not hold.
pub(crate) fn verify_promises<C: ProducerContext>(
    producer: &BaseProducer<C>,
) -> Result<(), String> {
    use rdkafka::producer::Producer;
    let expected = [
        ("acks", "-1"),
        ("enable.idempotence", "true"),
        ("message.timeout.ms", "0"),
        ("statistics.interval.ms", "1000"),
        ("transactional.id", ""),
    ];
    let rk = producer.client().native_ptr();
    for (key, want) in expected {
        let have = effective(rk, key).unwrap_or_default();
        if have != want {
            return Err(format!(
                "the producer was built with {key}={have:?}, not {want:?}: refusing to run without that promise"
            ));
        }
    }
    Ok(())
}

/// The value librdkafka holds for a property of a running client.
fn effective(rk: *mut rdkafka::bindings::rd_kafka_t, key: &str) -> Option<String> {
    use rdkafka::bindings as rd;
    let name = std::ffi::CString::new(key).ok()?;
    let mut buf = vec![0u8; 512];
    let mut size = buf.len();
    // SAFETY: rk is a live client; rd_kafka_conf returns its configuration,
    // owned by the client and valid while it lives. rd_kafka_conf_get
    // writes at most `size` bytes into buf and sets size to what it needs.
    let res = unsafe {
        let conf = rd::rd_kafka_conf(rk);
        rd::rd_kafka_conf_get(conf, name.as_ptr(), buf.as_mut_ptr().cast(), &mut size)
    };
    if res != rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        for (written, canonical_name) in [
            ("request.required.acks", "acks"),
            ("topic.request.required.acks", "acks"),
            ("topic.message.timeout.ms", "message.timeout.ms"),
            ("delivery.timeout.ms", "message.timeout.ms"),
            (
                "topic.metadata.refresh.interval.ms",
                "topic.metadata.refresh.interval.ms",
            ),
            ("linger.ms", "queue.buffering.max.ms"),
            ("sasl.mechanism", "sasl.mechanisms"),
            ("socket.keepalive.enable", "socket.keepalive.enable"),
        ] {
            assert_eq!(canonical(written), canonical_name, "{written}");
        }
    }
}
