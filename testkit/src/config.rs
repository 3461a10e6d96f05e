//! The typed config builder: a test states what its scene changes, and
//! [`Config::to_yaml`] writes the YAML the agent reads.
//!
//! ```
//! use tailrace_testkit::config::{Config, Source};
//! let dir = std::path::Path::new("/tmp/scene");
//! let yaml = Config::file_to_kafka(dir, "127.0.0.1:9092", "logs")
//!     .shutdown_grace_ms(2_000)
//!     .edit_sink("kafka", |k| k.delivery_timeout_ms(3_000).spool("when_full", "block"))
//!     .source("net", Source::tcp("127.0.0.1:5140"))
//!     .to_yaml();
//! assert!(yaml.contains("delivery_timeout_ms: 3000"));
//! ```
//!
//! The typed methods cover the keys the tests change; `set("a.b.c", value)`
//! on any part is the escape hatch for a key the builder does not name yet
//! (a dotted path, the mappings on the way created). Nothing here checks a
//! config: the agent does, and a test that wants a refused config writes one.

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_yaml::{Mapping, Value};

/// The name of the channel [`Source::file`], [`Source::tcp`] and
/// [`Sink::kafka`] are connected to, and [`Config::file_to_kafka`] declares.
pub const MAIN: &str = "main";

/// A whole agent config: top-level keys and the named sources, channels
/// and sinks, in the order they were added.
#[derive(Clone, Debug, PartialEq)]
pub struct Config(Mapping);

/// One source: its `type`, its `channels` and its own keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Source(Mapping);

/// One channel: its `type` and its own keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Channel(Mapping);

/// One sink: its `type`, its `channel` and its own keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Sink(Mapping);

/// One interceptor of a source: its `type` and its own keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Interceptor(Mapping);

/// `set`/`unset` for every part, and the typed setters, each a key of the
/// part's mapping.
macro_rules! keys {
    ($part:ident { $($(#[$doc:meta])* $key:ident: $ty:ty),* $(,)? }) => {
        impl $part {
            /// Sets the key at the dotted `path` (`spool.max_bytes`) to
            /// `value`, creating the mappings on the way.
            pub fn set(mut self, path: &str, value: impl Serialize) -> Self {
                set_path(&mut self.0, path, to_value(value));
                self
            }

            /// Removes the key at the dotted `path`, if it is there.
            pub fn unset(mut self, path: &str) -> Self {
                unset_path(&mut self.0, path);
                self
            }

            /// The part as the YAML tree it is written as.
            pub fn to_value(&self) -> Value {
                Value::Mapping(self.0.clone())
            }

            $(
                $(#[$doc])*
                pub fn $key(self, value: $ty) -> Self {
                    self.set(stringify!($key), value)
                }
            )*
        }
    };
}

keys!(Config {
    shutdown_grace_ms: u64,
    summary_interval_ms: u64,
    /// Free bytes the data dir keeps (spool and disk channels).
    min_free_bytes: u64,
});

keys!(Source {
    start_at: &str,
    max_open_files: u64,
    fingerprint_bytes: u64,
    expire_after_ms: u64,
    max_line_bytes: u64,
    poll_interval_ms: u64,
    scan_interval_ms: u64,
    checkpoint_interval_ms: u64,
    rotated_idle_ms: u64,
    read_buffer_bytes: u64,
    /// What a socket source does with a longer line (`truncate`, `split`, ...).
    max_line_policy: &str,
    idle_timeout_ms: u64,
    max_connections: u64,
    max_partial_bytes: u64,
    /// A stream source's `framing` (`newline`, `octet_counting`, `auto`).
    framing: &str,
    receive_buffer_bytes: u64,
});

keys!(Channel {
    capacity_events: u64,
    capacity_bytes: u64,
    /// A disk channel's bound on its log.
    max_bytes: u64,
    /// When a disk channel syncs (`batch`, `interval`, ...).
    fsync: &str,
});

keys!(Interceptor {
    /// The regex of `regex_filter` and `regex_extract`.
    pattern: &str,
    /// `regex_filter`: drop the matching records rather than keep them.
    exclude: bool,
    /// The field `timestamp` parses.
    field: &str,
    /// `timestamp`'s format (`rfc3339`, ...).
    format: &str,
});

keys!(Sink {
    /// The channel the sink takes from.
    channel: &str,
    bootstrap_servers: &str,
    topic: &str,
    compression: &str,
    delivery_timeout_ms: u64,
    /// What the sink writes for a record (`raw`, `json`).
    encoding: &str,
    /// The record key's template (`"{user}"`).
    key: &str,
    /// Whether records carry the event's fields as headers.
    headers: bool,
});

impl Config {
    /// No key at all, for a test that states every key itself.
    pub fn empty() -> Config {
        Config(Mapping::new())
    }

    /// An agent with no component yet: data in `data_dir`, a 10 s grace
    /// period, a summary line every second, text logs at info.
    pub fn new(data_dir: impl AsRef<Path>) -> Config {
        Config::empty()
            .set("data_dir", data_dir.as_ref())
            .shutdown_grace_ms(10_000)
            .summary_interval_ms(1_000)
            .set("log.level", "info")
            .set("log.format", "text")
    }

    /// The scene most tests use: one file source `app` over
    /// `DIR/logs/*.log`, the memory channel [`MAIN`], the kafka sink
    /// `kafka`; checkpoints and spool in `DIR/data`.
    pub fn file_to_kafka(dir: &Path, bootstrap: &str, topic: &str) -> Config {
        Config::new(dir.join("data"))
            .source("app", Source::file(dir.join("logs/*.log")))
            .channel(MAIN, Channel::memory())
            .sink("kafka", Sink::kafka(bootstrap, topic))
    }

    /// The scene of the socket tests: no source yet (add them with
    /// [`Config::source`]), the memory channel [`MAIN`] at its default
    /// capacity, the kafka sink `kafka` at the sink's default delivery
    /// timeout; data in `DIR/data`.
    pub fn sockets_to_kafka(dir: &Path, bootstrap: &str, topic: &str) -> Config {
        Config::new(dir.join("data"))
            .channel(MAIN, Channel::of_type("memory"))
            .sink(
                "kafka",
                Sink::kafka(bootstrap, topic).unset("delivery_timeout_ms"),
            )
    }

    /// The admin endpoint's address (without it, the e2e harness's
    /// `Agent::start` picks a free port).
    pub fn admin_address(self, address: &str) -> Config {
        self.set("admin.address", address)
    }

    /// Adds the source `name`, or replaces the one of that name.
    pub fn source(self, name: &str, source: Source) -> Config {
        self.component("sources", name, source.0)
    }

    /// Adds the channel `name`, or replaces the one of that name.
    pub fn channel(self, name: &str, channel: Channel) -> Config {
        self.component("channels", name, channel.0)
    }

    /// Adds the sink `name`, or replaces the one of that name.
    pub fn sink(self, name: &str, sink: Sink) -> Config {
        self.component("sinks", name, sink.0)
    }

    /// Changes the source `name`, which must be there.
    pub fn edit_source(self, name: &str, edit: impl FnOnce(Source) -> Source) -> Config {
        self.edit("sources", name, |m| edit(Source(m)).0)
    }

    /// Changes the channel `name`, which must be there.
    pub fn edit_channel(self, name: &str, edit: impl FnOnce(Channel) -> Channel) -> Config {
        self.edit("channels", name, |m| edit(Channel(m)).0)
    }

    /// Changes the sink `name`, which must be there.
    pub fn edit_sink(self, name: &str, edit: impl FnOnce(Sink) -> Sink) -> Config {
        self.edit("sinks", name, |m| edit(Sink(m)).0)
    }

    /// The YAML the agent reads.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.0).expect("a YAML tree serialises")
    }

    fn component(mut self, section: &str, name: &str, keys: Mapping) -> Config {
        let components = mapping_at(&mut self.0, section);
        components.insert(name.into(), Value::Mapping(keys));
        self
    }

    fn edit(mut self, section: &str, name: &str, edit: impl FnOnce(Mapping) -> Mapping) -> Config {
        let components = mapping_at(&mut self.0, section);
        let known: Vec<String> = components
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        let Some(Value::Mapping(keys)) = components.get_mut(name) else {
            panic!("the config has no {section}.{name} to edit (it has {known:?}); add it first");
        };
        *keys = edit(std::mem::take(keys));
        self
    }
}

/// The YAML, so a config can be given where text is wanted.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_yaml())
    }
}

impl Source {
    /// A source of `kind` into the channel [`MAIN`], with no other key.
    pub fn of_type(kind: &str) -> Source {
        Source(Mapping::new()).set("type", kind).channels(&[MAIN])
    }

    /// A file source over `glob`, from the beginning of the files.
    pub fn file(glob: impl AsRef<Path>) -> Source {
        Source::of_type("file")
            .include(&[glob])
            .start_at("beginning")
    }

    /// A tcp source listening on `address`.
    pub fn tcp(address: &str) -> Source {
        Source::of_type("tcp").set("address", address)
    }

    /// A udp source listening on `address`.
    pub fn udp(address: &str) -> Source {
        Source::of_type("udp").set("address", address)
    }

    /// A unix stream source listening on the socket file `path`.
    pub fn unix(path: impl AsRef<Path>) -> Source {
        Source::of_type("unix").set("address", path.as_ref())
    }

    /// A relp source listening on `address`.
    pub fn relp(address: &str) -> Source {
        Source::of_type("relp").set("address", address)
    }

    /// A syslog source in `mode` (`tcp`, `udp`, `unix`) on `address` (an
    /// address, or a socket file's path).
    pub fn syslog(mode: &str, address: impl Serialize) -> Source {
        Source::of_type("syslog")
            .set("mode", mode)
            .set("address", address)
    }

    /// TLS on a stream source: its certificate and key files.
    pub fn tls(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Source {
        self.set("tls.cert_path", cert.as_ref())
            .set("tls.key_path", key.as_ref())
    }

    /// Appends `interceptor` to the source's chain.
    pub fn interceptor(mut self, interceptor: Interceptor) -> Source {
        let slot = self
            .0
            .entry("interceptors".into())
            .or_insert_with(|| Value::Sequence(Vec::new()));
        if !slot.is_sequence() {
            *slot = Value::Sequence(Vec::new());
        }
        slot.as_sequence_mut()
            .expect("made a sequence above")
            .push(Value::Mapping(interceptor.0));
        self
    }

    /// The channels the source sends to.
    pub fn channels(self, names: &[&str]) -> Source {
        self.set("channels", names)
    }

    /// The keys the source's own plugin reads: all but `type` and
    /// `channels`, which the agent takes (for a plugin's tests, which
    /// deserialise its config type from them).
    pub fn plugin_keys(&self) -> Value {
        self.clone().unset("type").unset("channels").to_value()
    }

    /// The globs a file source tails.
    pub fn include(self, globs: &[impl AsRef<Path>]) -> Source {
        let globs: Vec<&Path> = globs.iter().map(AsRef::as_ref).collect();
        self.set("include", globs)
    }
}

impl Interceptor {
    /// An interceptor of `kind`, with no other key.
    pub fn of_type(kind: &str) -> Interceptor {
        Interceptor(Mapping::new()).set("type", kind)
    }
}

impl Channel {
    /// A channel of `kind`, with no other key.
    pub fn of_type(kind: &str) -> Channel {
        Channel(Mapping::new()).set("type", kind)
    }

    /// A disk channel whose log holds at most `max_bytes`, synced per batch.
    pub fn disk(max_bytes: u64) -> Channel {
        Channel::of_type("disk").max_bytes(max_bytes).fsync("batch")
    }

    /// A memory channel of 100,000 events and 64 MiB.
    pub fn memory() -> Channel {
        Channel::of_type("memory")
            .capacity_events(100_000)
            .capacity_bytes(64 << 20)
    }
}

impl Sink {
    /// A sink of `kind` taking from the channel [`MAIN`], with no other key.
    pub fn of_type(kind: &str) -> Sink {
        Sink(Mapping::new()).set("type", kind).channel(MAIN)
    }

    /// A kafka sink to `topic`: lz4, a 300 s delivery timeout (longer than
    /// any test waits, so nothing is spooled unless the test asks) and
    /// librdkafka's linger at 5 ms.
    pub fn kafka(bootstrap: &str, topic: &str) -> Sink {
        Sink::of_type("kafka")
            .bootstrap_servers(bootstrap)
            .topic(topic)
            .compression("lz4")
            .delivery_timeout_ms(300_000)
            .librdkafka("queue.buffering.max.ms", "5")
    }

    /// One librdkafka property (its name has dots, so it is not a path).
    pub fn librdkafka(mut self, property: &str, value: &str) -> Sink {
        mapping_at(&mut self.0, "librdkafka").insert(property.into(), value.into());
        self
    }

    /// One key of the sink's `spool` block.
    pub fn spool(self, key: &str, value: impl Serialize) -> Sink {
        self.set(&format!("spool.{key}"), value)
    }

    /// One key of the sink's `sasl` block.
    pub fn sasl(self, key: &str, value: impl Serialize) -> Sink {
        self.set(&format!("sasl.{key}"), value)
    }
}

fn to_value(value: impl Serialize) -> Value {
    serde_yaml::to_value(value).expect("a config value serialises to YAML")
}

/// The mapping under `key`, created (replacing a scalar) if it is not one.
fn mapping_at<'a>(map: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let slot = map
        .entry(key.into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !slot.is_mapping() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot.as_mapping_mut().expect("made a mapping above")
}

fn set_path(map: &mut Mapping, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.into(), value);
        }
        Some((head, rest)) => set_path(mapping_at(map, head), rest, value),
    }
}

fn unset_path(map: &mut Mapping, path: &str) {
    match path.split_once('.') {
        None => {
            map.shift_remove(path);
        }
        Some((head, rest)) => {
            if let Some(Value::Mapping(inner)) = map.get_mut(head) {
                unset_path(inner, rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use tailrace::config::parse;
    use tailrace::registry::Registry;

    const DIR: &str = "/tmp/tailrace-testkit";

    fn scene() -> Config {
        Config::file_to_kafka(Path::new(DIR), "127.0.0.1:9092", "logs")
    }

    /// The agent's own loader accepts `config` (or, with `refused`, names it).
    fn check(config: &Config, refused: Option<&str>) {
        let yaml = config.to_yaml();
        let result = parse(Path::new("t.yaml"), &yaml, &|_| None, &Registry::builtin());
        match (result, refused) {
            (Ok(_), None) => {}
            (Err(e), None) => panic!("the agent refused the builder's config:\n{e}\n{yaml}"),
            (Ok(_), Some(what)) => panic!("the agent accepted a config with {what}:\n{yaml}"),
            (Err(e), Some(what)) => assert!(e.to_string().contains(what), "{e}"),
        }
    }

    #[test]
    fn every_shape_parses_with_the_agents_loader() {
        let tuned_file = Source::file(format!("{DIR}/logs/**/*.log"))
            .max_open_files(8)
            .max_line_bytes(100_000)
            .poll_interval_ms(10)
            .scan_interval_ms(50)
            .checkpoint_interval_ms(10)
            .rotated_idle_ms(100)
            .read_buffer_bytes(4096)
            .start_at("end");
        for config in [
            Config::new(format!("{DIR}/data"))
                .source("app", Source::file(format!("{DIR}/*.log")))
                .channel(MAIN, Channel::memory())
                .sink("out", Sink::of_type("blackhole")),
            scene(),
            scene()
                .shutdown_grace_ms(2_000)
                .summary_interval_ms(200)
                .min_free_bytes(1 << 20)
                .admin_address("127.0.0.1:9100"),
            scene().source("app", tuned_file),
            scene().edit_channel(MAIN, |c| c.capacity_events(2_000).capacity_bytes(1 << 20)),
            scene().edit_sink("kafka", |k| {
                k.delivery_timeout_ms(3_000)
                    .librdkafka("message.max.bytes", "5000000")
                    .spool("max_bytes", 262_144)
                    .spool("when_full", "block")
                    .spool("ordering", "strict")
            }),
            scene().edit_sink("kafka", |k| {
                k.sasl("mechanism", "SCRAM-SHA-512")
                    .sasl("username", "agent")
                    .sasl("password", "s3cret")
            }),
            scene()
                .source("net", Source::tcp("127.0.0.1:5140").channels(&["net"]))
                .channel("net", Channel::memory())
                .sink("console", Sink::of_type("console").channel("net")),
            scene().edit_source("app", |s| s.set("multiline.continuation_pattern", "^\\s")),
            Config::sockets_to_kafka(Path::new(DIR), "127.0.0.1:9092", "logs")
                .source(
                    "tcp",
                    Source::tcp("127.0.0.1:5140")
                        .max_line_bytes(1024)
                        .max_line_policy("truncate")
                        .idle_timeout_ms(1000)
                        .max_connections(8)
                        .max_partial_bytes(1 << 20)
                        .framing("octet_counting"),
                )
                .source(
                    "udp",
                    Source::udp("127.0.0.1:5141").receive_buffer_bytes(8192),
                )
                .source("unix", Source::unix(format!("{DIR}/in.sock")))
                .source("st", Source::syslog("tcp", "127.0.0.1:5142"))
                .source(
                    "sx",
                    Source::syslog("unix", Path::new(DIR).join("log.sock")),
                )
                .source(
                    "relp",
                    Source::relp("127.0.0.1:2514").tls("/etc/c.pem", "/etc/c.key"),
                )
                .channel(MAIN, Channel::disk(64 << 20))
                .edit_sink("kafka", |k| k.encoding("json").key("{user}").headers(true)),
            scene().edit_source("app", |s| {
                s.interceptor(Interceptor::of_type("host"))
                    .interceptor(Interceptor::of_type("static").set("fields.env", "prod"))
                    .interceptor(
                        Interceptor::of_type("regex_filter")
                            .pattern("DEBUG")
                            .exclude(true),
                    )
                    .interceptor(
                        Interceptor::of_type("timestamp")
                            .field("ts")
                            .format("rfc3339"),
                    )
            }),
        ] {
            check(&config, None);
        }
    }

    #[test]
    fn a_key_the_agent_does_not_know_is_refused() {
        check(
            &scene().edit_sink("kafka", |k| k.set("delivery_timeout", 5)),
            Some("delivery_timeout"),
        );
        check(
            &scene().edit_source("app", |s| s.set("type", "fil")),
            Some("fil"),
        );
    }

    #[test]
    fn set_makes_the_path_and_unset_removes_it() {
        let c = scene().set("a.b.c", 1).set("a.b.d", "x").unset("a.b.c");
        let tree = serde_yaml::to_value(&c.0).unwrap();
        assert_eq!(
            tree["a"]["b"],
            serde_yaml::from_str::<Value>("{ d: x }").unwrap()
        );
        assert_eq!(
            tree["sinks"]["kafka"]["librdkafka"]["queue.buffering.max.ms"],
            "5"
        );
    }

    #[test]
    fn plugin_keys_leave_out_what_the_agent_takes() {
        let keys = Source::file("/x/*.log").max_open_files(4).plugin_keys();
        let want = "{ include: [/x/*.log], start_at: beginning, max_open_files: 4 }";
        assert_eq!(keys, serde_yaml::from_str::<Value>(want).unwrap());
    }

    #[test]
    fn editing_an_absent_component_names_the_ones_there() {
        let panic = std::panic::catch_unwind(|| scene().edit_sink("kafak", |k| k))
            .expect_err("editing an absent sink panics");
        let text = panic.downcast_ref::<String>().unwrap();
        assert!(
            text.contains("sinks.kafak") && text.contains("\"kafka\""),
            "{text}"
        );
    }
}
