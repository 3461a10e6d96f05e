//! The table from a component's `type` to the code that parses its config.
//!
//! Registration is explicit: every plugin is named here, once. An unknown
//! type is a config error that lists the known ones.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_yaml::Value;
use tailrace_api::{InterceptorConfig, SinkConfig, SourceConfig};

pub type ParseError = serde_path_to_error::Error<serde_yaml::Error>;
pub type SourceFactory = fn(Value) -> Result<Box<dyn SourceConfig>, ParseError>;
pub type SinkFactory = fn(Value) -> Result<Box<dyn SinkConfig>, ParseError>;
pub type InterceptorFactory = fn(Value) -> Result<Box<dyn InterceptorConfig>, ParseError>;

pub struct Registry {
    sources: BTreeMap<&'static str, SourceFactory>,
    sinks: BTreeMap<&'static str, SinkFactory>,
    interceptors: BTreeMap<&'static str, InterceptorFactory>,
}

fn interceptor<T: InterceptorConfig + DeserializeOwned + 'static>(
    v: Value,
) -> Result<Box<dyn InterceptorConfig>, ParseError> {
    serde_path_to_error::deserialize::<_, T>(v).map(|c| Box::new(c) as Box<dyn InterceptorConfig>)
}

fn source<T: SourceConfig + DeserializeOwned + 'static>(
    v: Value,
) -> Result<Box<dyn SourceConfig>, ParseError> {
    serde_path_to_error::deserialize::<_, T>(v).map(|c| Box::new(c) as Box<dyn SourceConfig>)
}

fn sink<T: SinkConfig + DeserializeOwned + 'static>(
    v: Value,
) -> Result<Box<dyn SinkConfig>, ParseError> {
    serde_path_to_error::deserialize::<_, T>(v).map(|c| Box::new(c) as Box<dyn SinkConfig>)
}

/// Registers the metric families every plugin built into this binary
/// declares, so they are exported (at 0) from the start.
pub fn declare_metrics(metrics: &mut tailrace_api::Metrics) {
    tailrace_file::declare_metrics(metrics);
    tailrace_journald::declare_metrics(metrics);
    tailrace_kafka::declare_metrics(metrics);
    tailrace_socket::declare_metrics(metrics);
    // The disk channel is the agent's own, built from the contract.
    metrics.declare::<tailrace_api::channel_disk::DiskFamilies>();
}

impl Registry {
    /// Every plugin built into this binary.
    pub fn builtin() -> Registry {
        let mut sources: BTreeMap<&'static str, SourceFactory> = BTreeMap::new();
        sources.insert("file", source::<tailrace_file::FileSourceConfig>);
        sources.insert("tcp", source::<tailrace_socket::TcpSourceConfig>);
        sources.insert("udp", source::<tailrace_socket::UdpSourceConfig>);
        sources.insert("unix", source::<tailrace_socket::UnixSourceConfig>);
        sources.insert("syslog", source::<tailrace_socket::SyslogSourceConfig>);
        sources.insert("relp", source::<tailrace_socket::RelpSourceConfig>);
        sources.insert(
            "journald",
            source::<tailrace_journald::JournaldSourceConfig>,
        );
        let mut sinks: BTreeMap<&'static str, SinkFactory> = BTreeMap::new();
        sinks.insert("kafka", sink::<tailrace_kafka::KafkaSinkConfig>);
        sinks.insert("console", sink::<tailrace_console::ConsoleSinkConfig>);
        sinks.insert("blackhole", sink::<tailrace_blackhole::BlackholeSinkConfig>);
        let mut interceptors: BTreeMap<&'static str, InterceptorFactory> = BTreeMap::new();
        interceptors.insert("host", interceptor::<tailrace_interceptors::HostConfig>);
        interceptors.insert("static", interceptor::<tailrace_interceptors::StaticConfig>);
        interceptors.insert(
            "regex_filter",
            interceptor::<tailrace_interceptors::RegexFilterConfig>,
        );
        interceptors.insert(
            "regex_extract",
            interceptor::<tailrace_interceptors::RegexExtractConfig>,
        );
        interceptors.insert(
            "timestamp",
            interceptor::<tailrace_interceptors::TimestampConfig>,
        );
        Registry {
            sources,
            sinks,
            interceptors,
        }
    }

    pub fn interceptor(&self, kind: &str) -> Option<InterceptorFactory> {
        self.interceptors.get(kind).copied()
    }

    pub fn interceptor_types(&self) -> Vec<&'static str> {
        self.interceptors.keys().copied().collect()
    }

    pub fn source(&self, kind: &str) -> Option<SourceFactory> {
        self.sources.get(kind).copied()
    }

    pub fn sink(&self, kind: &str) -> Option<SinkFactory> {
        self.sinks.get(kind).copied()
    }

    pub fn source_types(&self) -> Vec<&'static str> {
        self.sources.keys().copied().collect()
    }

    pub fn sink_types(&self) -> Vec<&'static str> {
        self.sinks.keys().copied().collect()
    }
}
