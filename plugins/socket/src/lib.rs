//! The socket sources: `tcp`, `udp`, `unix` and `syslog` (over tcp, udp or
//! a unix socket).
//!
//! Each source binds when it is built, so a port in use fails the start
//! with a clear error, then runs as tokio tasks: a listener that accepts up
//! to `max_connections` connections, one task per connection that reads a
//! chunk, cuts it into records (slices of the chunk) and sends them as one
//! batch. A stream source waits while its channel is full and stops reading
//! its sockets meanwhile, so a slow sink slows the senders (TCP
//! backpressure). A UDP source cannot slow its senders: when the channel is
//! full it drops the batch and counts the drop. A syslog source parses each
//! message into the record's fields and forwards a message that does not
//! parse as it is, counted.
//!
//! This crate must never depend on another plugin, and never holds more
//! than one read chunk and one frame of `max_line_bytes` per connection.

mod early;
mod framing;
mod limits;
mod listen;
mod metrics;
mod output;
mod pool;
mod relp;
mod relp_conn;
mod syslog;
mod tls;
mod unix;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tailrace_api::{
    BuildError, ComponentTask, ConfigIssue, EarlyBinding, MaxLineBytes, SourceConfig, SourceContext,
};

pub use framing::{LinePolicy, StreamFraming};
pub use metrics::{declare_metrics, SocketFamilies};
pub use syslog::parse as parse_syslog;

/// Which source type a config is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
    Unix,
    Syslog,
    Relp,
}

/// For `syslog` sources: the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogMode {
    Tcp,
    Udp,
    Unix,
}

/// For unix sockets: a stream (connections) or a datagram socket (as
/// `/dev/log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketType {
    Stream,
    Datagram,
}

/// How records are cut out of what arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Streams: one record per line. Datagrams: one per line of a datagram.
    Newline,
    /// Streams: `LEN SP MSG` frames (RFC 6587).
    OctetCounting,
    /// Streams (syslog only): octet counting if a connection starts with a
    /// digit, else newlines.
    Auto,
    /// Datagrams: one record per datagram.
    Datagram,
}

/// TLS for stream sockets over TCP.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server's certificate chain.
    pub cert_path: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// PEM: when set, clients must present a certificate signed by one of
    /// these authorities.
    #[serde(default)]
    pub client_ca_path: Option<PathBuf>,
}

/// The settings of every socket source; which apply depends on the type
/// (see [`Settings::plan`]), and setting one that does not apply is an
/// error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `ip:port`, or for unix sockets an absolute path.
    pub address: String,
    /// syslog only: tcp | udp | unix.
    #[serde(default)]
    pub mode: Option<SyslogMode>,
    /// unix only: stream (default for `unix`) | datagram (default for syslog).
    #[serde(default)]
    pub socket_type: Option<SocketType>,
    #[serde(default)]
    pub framing: Option<Framing>,
    /// Longer lines are split or truncated (`max_line_policy`). Default:
    /// 1 MiB, or less when a sink this source feeds cannot deliver that
    /// (a kafka sink: `message.max.bytes` less the record's overhead).
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
    /// What the config loader lowered the default to.
    #[serde(skip)]
    pub fitted_max_line_bytes: Option<usize>,
    /// split (the default) | truncate; a relp source always truncates.
    #[serde(default)]
    pub max_line_policy: Option<LinePolicy>,
    /// Streams: connections served at once; more wait to be accepted.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// TCP streams: connections one peer address may hold at once; more
    /// from it are closed as they come. Default: max_connections (no
    /// limit of its own: local senders all come from 127.0.0.1); set it on
    /// a listener that faces the network.
    #[serde(default)]
    pub max_connections_per_address: Option<usize>,
    /// Streams: bytes of partial frames (a line not yet ended) all the
    /// connections of the source may hold together; the connection that
    /// goes over is closed and its partial frame counted as dropped.
    #[serde(default)]
    pub max_partial_bytes: Option<usize>,
    /// Streams: a connection holding a partial frame at the end of a
    /// `min_rate_window_ms` window in which it sent less than this is
    /// closed (slowloris); 0 turns the rule off.
    #[serde(default)]
    pub min_rate_bytes_per_second: Option<u64>,
    #[serde(default)]
    pub min_rate_window_ms: Option<u64>,
    /// TLS: how long a client may take to finish its handshake. Handshakes
    /// do not hold a connection slot.
    #[serde(default)]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Streams: a connection that sends nothing for this long is closed;
    /// 0 never closes one.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Streams: bytes read from a connection at a time.
    #[serde(default)]
    pub read_buffer_bytes: Option<usize>,
    /// Streams: bytes of read buffers all the connections of the source
    /// hold together, until their records are delivered
    /// (`tailrace_source_buffer_bytes`). A connection holds one only while
    /// it is being read; when they are all taken, reads wait.
    #[serde(default)]
    pub read_pool_bytes: Option<usize>,
    /// The socket's kernel receive buffer (SO_RCVBUF); the system default
    /// when unset.
    #[serde(default)]
    pub receive_buffer_bytes: Option<usize>,
    /// Unix sockets: the socket file's permissions, an octal string ("0660").
    #[serde(default)]
    pub socket_mode: Option<String>,
    /// TCP streams: serve TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

fn default_max_line_bytes() -> usize {
    1024 * 1024
}
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const DEFAULT_MAX_PARTIAL_BYTES: usize = 64 * 1024 * 1024;
const DEFAULT_MIN_RATE_BYTES_PER_SECOND: u64 = 16;
const DEFAULT_MIN_RATE_WINDOW_MS: u64 = 10_000;
const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 600_000;
const DEFAULT_READ_BUFFER_BYTES: usize = 64 * 1024;
const DEFAULT_READ_POOL_BYTES: usize = 32 * 1024 * 1024;
const MAX_RECEIVE_BUFFER_BYTES: usize = 1 << 30;
/// The longest unix socket path (sun_path less its NUL).
const MAX_UNIX_PATH: usize = 107;

/// Where a source listens.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Transport {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    UnixStream(PathBuf),
    UnixDatagram(PathBuf),
}

impl Transport {
    fn is_stream(&self) -> bool {
        matches!(self, Transport::Tcp(_) | Transport::UnixStream(_))
    }

    /// What the source holds exclusively: "tcp 127.0.0.1:5140". Port 0
    /// (any free port) claims nothing.
    fn resource(&self) -> Option<String> {
        match self {
            Transport::Tcp(a) if a.port() != 0 => Some(format!("tcp {a}")),
            Transport::Udp(a) if a.port() != 0 => Some(format!("udp {a}")),
            Transport::UnixStream(p) | Transport::UnixDatagram(p) => {
                Some(format!("unix {}", p.display()))
            }
            _ => None,
        }
    }
}

/// A config resolved for one source type: everything the tasks need.
#[derive(Clone, Debug)]
struct Plan {
    transport: Transport,
    /// Streams only.
    stream_framing: StreamFraming,
    /// Datagrams only: one record per line rather than per datagram.
    split_datagrams: bool,
    syslog: bool,
    /// A relp source: RELP frames, answered once their records are safe.
    relp: bool,
    limit: framing::Limit,
    max_connections: usize,
    max_connections_per_address: usize,
    max_partial_bytes: usize,
    min_rate: Option<limits::MinRate>,
    tls_handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
    read_buffer_bytes: usize,
    read_pool_bytes: usize,
    receive_buffer_bytes: Option<usize>,
    socket_mode: Option<u32>,
    tls: Option<TlsConfig>,
}

impl Settings {
    /// Resolves the settings for `kind`, or lists every problem.
    fn plan(&self, kind: Kind) -> Result<Plan, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut refuse =
            |key: &str, message: String| issues.push(ConfigIssue::new(&[key], message));
        let type_name = match kind {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Unix => "unix",
            Kind::Syslog => "syslog",
            Kind::Relp => "relp",
        };

        let mode = match (kind, self.mode) {
            (Kind::Syslog, None) => {
                refuse(
                    "mode",
                    "a syslog source needs `mode: tcp | udp | unix`".into(),
                );
                SyslogMode::Udp
            }
            (Kind::Syslog, Some(m)) => m,
            (_, Some(_)) => {
                refuse(
                    "mode",
                    format!("mode applies to syslog sources, not to {type_name}"),
                );
                SyslogMode::Udp
            }
            (Kind::Tcp | Kind::Relp, None) => SyslogMode::Tcp,
            (Kind::Udp, None) => SyslogMode::Udp,
            (Kind::Unix, None) => SyslogMode::Unix,
        };
        let unix = mode == SyslogMode::Unix;
        if !unix && self.socket_type.is_some() {
            refuse(
                "socket_type",
                "socket_type applies to unix sockets only".into(),
            );
        }
        let socket_type = self.socket_type.unwrap_or(if kind == Kind::Syslog {
            SocketType::Datagram
        } else {
            SocketType::Stream
        });

        let transport = if unix {
            let path = PathBuf::from(&self.address);
            if !path.is_absolute() {
                refuse(
                    "address",
                    format!(
                        "unix socket address {:?} must be an absolute path",
                        self.address
                    ),
                );
            } else if self.address.len() > MAX_UNIX_PATH {
                refuse(
                    "address",
                    format!(
                        "unix socket path {:?} is {} bytes long; the system allows {MAX_UNIX_PATH}",
                        self.address,
                        self.address.len()
                    ),
                );
            }
            match socket_type {
                SocketType::Stream => Transport::UnixStream(path),
                SocketType::Datagram => Transport::UnixDatagram(path),
            }
        } else {
            let addr = self.address.parse::<SocketAddr>().unwrap_or_else(|_| {
                refuse(
                    "address",
                    format!(
                        "invalid address {:?}: expected ip:port, like 127.0.0.1:5140 or [::1]:5140",
                        self.address
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            });
            match mode {
                SyslogMode::Tcp => Transport::Tcp(addr),
                _ => Transport::Udp(addr),
            }
        };
        let stream = transport.is_stream();

        if kind == Kind::Relp && self.framing.is_some() {
            refuse(
                "framing",
                "framing does not apply to relp, which frames its own messages".into(),
            );
        }
        if kind == Kind::Relp && self.max_line_policy == Some(LinePolicy::Split) {
            refuse(
                "max_line_policy",
                "a relp source truncates a message longer than max_line_bytes (one answer per message); remove max_line_policy or set truncate".into(),
            );
        }
        let framing = self.framing.filter(|_| kind != Kind::Relp);
        let (stream_framing, split_datagrams) = match (stream, framing) {
            (true, None) if kind == Kind::Syslog => (StreamFraming::Detect, false),
            (true, None | Some(Framing::Newline)) => (StreamFraming::Newline, false),
            (true, Some(Framing::OctetCounting)) => (StreamFraming::OctetCounting, false),
            (true, Some(Framing::Auto)) if kind == Kind::Syslog => (StreamFraming::Detect, false),
            (false, None | Some(Framing::Datagram)) => (StreamFraming::Newline, false),
            (false, Some(Framing::Newline)) => (StreamFraming::Newline, true),
            (true, Some(f)) => {
                refuse(
                    "framing",
                    format!(
                        "framing {} does not apply to a stream; use newline or octet_counting{}",
                        framing_name(f),
                        if kind == Kind::Syslog { " or auto" } else { "" }
                    ),
                );
                (StreamFraming::Newline, false)
            }
            (false, Some(f)) => {
                refuse(
                    "framing",
                    format!(
                        "framing {} does not apply to datagrams; use datagram or newline",
                        framing_name(f)
                    ),
                );
                (StreamFraming::Newline, false)
            }
        };

        let stream_only: [(&str, bool); 8] = [
            ("max_connections", self.max_connections.is_some()),
            ("max_partial_bytes", self.max_partial_bytes.is_some()),
            (
                "min_rate_bytes_per_second",
                self.min_rate_bytes_per_second.is_some(),
            ),
            ("min_rate_window_ms", self.min_rate_window_ms.is_some()),
            ("idle_timeout_ms", self.idle_timeout_ms.is_some()),
            ("read_buffer_bytes", self.read_buffer_bytes.is_some()),
            ("read_pool_bytes", self.read_pool_bytes.is_some()),
            ("tls", self.tls.is_some()),
        ];
        if !stream {
            for (key, set) in stream_only {
                if set {
                    refuse(key, format!("{key} applies to stream sockets only"));
                }
            }
        }
        if self.tls.is_some() && matches!(transport, Transport::UnixStream(_)) {
            refuse("tls", "tls applies to TCP only".into());
        }
        if self.max_connections_per_address.is_some() && !matches!(transport, Transport::Tcp(_)) {
            refuse(
                "max_connections_per_address",
                "max_connections_per_address applies to TCP only".into(),
            );
        }
        if self.tls_handshake_timeout_ms.is_some() && self.tls.is_none() {
            refuse(
                "tls_handshake_timeout_ms",
                "tls_handshake_timeout_ms applies with tls only".into(),
            );
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("cert_path", &tls.cert_path), ("key_path", &tls.key_path)] {
                if path.as_os_str().is_empty() {
                    issues.push(ConfigIssue::new(&["tls", key], format!("{key} is empty")));
                }
            }
        }
        let mut refuse =
            |key: &str, message: String| issues.push(ConfigIssue::new(&[key], message));
        let socket_mode = match &self.socket_mode {
            None => None,
            Some(_) if !unix => {
                refuse(
                    "socket_mode",
                    "socket_mode applies to unix sockets only".into(),
                );
                None
            }
            Some(text) => {
                let digits = text.strip_prefix("0o").unwrap_or(text);
                match u32::from_str_radix(digits, 8) {
                    Ok(mode) if mode <= 0o777 && !digits.is_empty() => Some(mode),
                    _ => {
                        refuse(
                            "socket_mode",
                            format!("invalid socket_mode {text:?}: expected octal permissions like \"0660\""),
                        );
                        None
                    }
                }
            }
        };
        let positive: [(&str, Option<u64>); 9] = [
            ("max_line_bytes", Some(self.max_line().bytes as u64)),
            ("max_connections", self.max_connections.map(|v| v as u64)),
            (
                "max_connections_per_address",
                self.max_connections_per_address.map(|v| v as u64),
            ),
            (
                "max_partial_bytes",
                self.max_partial_bytes.map(|v| v as u64),
            ),
            ("min_rate_window_ms", self.min_rate_window_ms),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            (
                "read_buffer_bytes",
                self.read_buffer_bytes.map(|v| v as u64),
            ),
            ("read_pool_bytes", self.read_pool_bytes.map(|v| v as u64)),
            (
                "receive_buffer_bytes",
                self.receive_buffer_bytes.map(|v| v as u64),
            ),
        ];
        for (key, value) in positive {
            if value == Some(0) {
                refuse(key, format!("{key} must be greater than 0"));
            }
        }
        if self
            .receive_buffer_bytes
            .is_some_and(|n| n > MAX_RECEIVE_BUFFER_BYTES)
        {
            refuse(
                "receive_buffer_bytes",
                format!("receive_buffer_bytes is at most {MAX_RECEIVE_BUFFER_BYTES} (the kernel takes an int and doubles it)"),
            );
        }

        if !issues.is_empty() {
            return Err(issues);
        }
        let idle_ms = self.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS);
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let min_rate = self
            .min_rate_bytes_per_second
            .unwrap_or(DEFAULT_MIN_RATE_BYTES_PER_SECOND);
        Ok(Plan {
            transport,
            stream_framing,
            split_datagrams,
            syslog: matches!(kind, Kind::Syslog | Kind::Relp),
            relp: kind == Kind::Relp,
            limit: framing::Limit {
                max_line_bytes: self.max_line().bytes,
                policy: match kind {
                    Kind::Relp => LinePolicy::Truncate,
                    _ => self.max_line_policy.unwrap_or_default(),
                },
            },
            max_connections,
            max_connections_per_address: self
                .max_connections_per_address
                .unwrap_or(max_connections),
            max_partial_bytes: self.max_partial_bytes.unwrap_or(DEFAULT_MAX_PARTIAL_BYTES),
            min_rate: (min_rate > 0).then(|| limits::MinRate {
                bytes_per_second: min_rate,
                window: Duration::from_millis(
                    self.min_rate_window_ms
                        .unwrap_or(DEFAULT_MIN_RATE_WINDOW_MS),
                ),
            }),
            tls_handshake_timeout: Duration::from_millis(
                self.tls_handshake_timeout_ms
                    .unwrap_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS),
            ),
            idle_timeout: (idle_ms > 0).then(|| Duration::from_millis(idle_ms)),
            read_buffer_bytes: self
                .read_buffer_bytes
                .unwrap_or(DEFAULT_READ_BUFFER_BYTES)
                .max(512),
            read_pool_bytes: self.read_pool_bytes.unwrap_or(DEFAULT_READ_POOL_BYTES),
            receive_buffer_bytes: self.receive_buffer_bytes,
            socket_mode,
            tls: self.tls.clone(),
        })
    }

    fn validate_as(&self, kind: Kind) -> Vec<ConfigIssue> {
        self.plan(kind).err().unwrap_or_default()
    }

    fn max_line(&self) -> MaxLineBytes {
        MaxLineBytes::of(
            self.max_line_bytes,
            self.fitted_max_line_bytes,
            default_max_line_bytes(),
        )
    }

    fn resources_as(&self, kind: Kind) -> Vec<String> {
        self.plan(kind)
            .ok()
            .and_then(|p| p.transport.resource())
            .into_iter()
            .collect()
    }

    fn build_as(&self, kind: Kind, cx: SourceContext) -> Result<ComponentTask, BuildError> {
        let plan = self.plan(kind).map_err(|issues| {
            BuildError(
                issues
                    .iter()
                    .map(|i| format!("{}: {}", i.path.join("."), i.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        listen::start(plan, cx)
    }
}

fn framing_name(f: Framing) -> &'static str {
    match f {
        Framing::Newline => "newline",
        Framing::OctetCounting => "octet_counting",
        Framing::Auto => "auto",
        Framing::Datagram => "datagram",
    }
}

macro_rules! source_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Settings);

        impl SourceConfig for $name {
            fn validate(&self) -> Vec<ConfigIssue> {
                self.0.validate_as($kind)
            }

            fn resources(&self) -> Vec<String> {
                self.0.resources_as($kind)
            }

            fn max_line_bytes(&self) -> Option<MaxLineBytes> {
                Some(self.0.max_line())
            }

            fn fit_max_line_bytes(&mut self, bytes: usize) {
                self.0.fitted_max_line_bytes = Some(bytes);
            }

            fn build(&self, cx: SourceContext) -> Result<ComponentTask, BuildError> {
                self.0.build_as($kind, cx)
            }

            fn bind_early(&self) -> Option<EarlyBinding> {
                listen::bind_early(&self.0.plan($kind).ok()?)
            }
        }
    };
}

source_type!(
    /// `type: tcp`: newline-delimited (or octet-counted) lines over TCP, optionally TLS.
    TcpSourceConfig,
    Kind::Tcp
);
source_type!(
    /// `type: udp`: one record per datagram, or per line of a datagram.
    UdpSourceConfig,
    Kind::Udp
);
source_type!(
    /// `type: unix`: a unix stream or datagram socket.
    UnixSourceConfig,
    Kind::Unix
);
source_type!(
    /// `type: syslog`: RFC 5424 and RFC 3164 over tcp, udp or a unix socket.
    SyslogSourceConfig,
    Kind::Syslog
);
source_type!(
    /// `type: relp`: RELP (rsyslog's omrelp) over TCP, optionally TLS; each
    /// message is answered once it is safe.
    RelpSourceConfig,
    Kind::Relp
);

#[cfg(test)]
mod tests;
