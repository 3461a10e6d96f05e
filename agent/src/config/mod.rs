//! The YAML config: read, interpolated, parsed into typed structs,
//! validated without touching the system.
//!
//! Every error found is collected (serde stops at the first error inside
//! one component, so each component is parsed on its own) and reported with
//! the file, line and column it refers to.
//!
//! A config may be a set of files: `--config` names files or directories
//! (every `*.yaml` and `*.yml` in one, in name order), and the files are
//! merged. `sources`, `channels` and `sinks` combine; a component defined
//! in two files is an error naming both places; top-level settings may be
//! set in one file only.

mod interpolate;
mod locate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;
use tailrace_api::channel_disk::{DiskSettings, Fsync, MIN_MAX_BYTES};
use tailrace_api::{ConfigIssue, InterceptorConfig, SinkConfig, SourceConfig};

use crate::registry::Registry;
pub use interpolate::interpolate;
use locate::Positions;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file it is in (for problems of the whole set: every file).
    pub file: PathBuf,
    /// Keys and item indexes from the root.
    pub path: Vec<String>,
    pub message: String,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
}

/// Every problem found in a config.
#[derive(Debug)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", e.file.display())?;
            if let Some((line, col)) = e.position {
                write!(f, ":{line}:{col}")?;
            }
            write!(f, ": ")?;
            if !e.path.is_empty() {
                write!(f, "{}: ", display_path(&e.path))?;
            }
            write!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `sources.app.include[1]`
pub fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            s.push_str(&format!("[{seg}]"));
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            if seg.contains(['.', ' ']) || seg.is_empty() {
                s.push_str(&format!("{seg:?}"));
            } else {
                s.push_str(seg);
            }
        }
    }
    s
}

/// One file of a config, as written: top-level settings it does not set
/// are `None`, so that the merge can tell which file set what.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    data_dir: Option<PathBuf>,
    min_free_bytes: Option<u64>,
    store_give_up_after_ms: Option<u64>,
    admin: Option<AdminConfig>,
    log: Option<LogConfig>,
    shutdown_grace_ms: Option<u64>,
    summary_interval_ms: Option<u64>,
    #[serde(default)]
    sources: BTreeMap<String, Value>,
    #[serde(default)]
    channels: BTreeMap<String, Value>,
    #[serde(default)]
    sinks: BTreeMap<String, Value>,
}

/// The top-level settings, which only one file of a set may carry.
const TOP_LEVEL: &str =
    "data_dir, min_free_bytes, store_give_up_after_ms, admin, log, shutdown_grace_ms, summary_interval_ms";

/// Every file of a config, merged.
#[derive(Debug)]
struct RawConfig {
    data_dir: PathBuf,
    min_free_bytes: u64,
    store_give_up_after_ms: u64,
    admin: AdminConfig,
    log: LogConfig,
    shutdown_grace_ms: u64,
    summary_interval_ms: u64,
    sources: BTreeMap<String, Value>,
    channels: BTreeMap<String, Value>,
    sinks: BTreeMap<String, Value>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            data_dir: default_data_dir(),
            min_free_bytes: default_min_free_bytes(),
            store_give_up_after_ms: default_store_give_up_after_ms(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            summary_interval_ms: default_summary_interval_ms(),
            sources: BTreeMap::new(),
            channels: BTreeMap::new(),
            sinks: BTreeMap::new(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
/// 256 MiB: room for sled to finish what it has begun, and for whatever
/// else writes to the file system the logs are on.
fn default_min_free_bytes() -> u64 {
    256 * 1024 * 1024
}
/// Below this (except 0, which turns the check off), sled could fill the
/// disk with one segment before the check sees it.
const MIN_MIN_FREE_BYTES: u64 = 1024 * 1024;
/// 5 minutes of failed reopens (about 30 tries with backoff): longer than a
/// remount or an operator freeing space takes, short enough that a disk
/// that is gone is reported instead of retried for ever.
fn default_store_give_up_after_ms() -> u64 {
    300_000
}
/// Below this (except 0, never give up), the store would be given up on
/// after a reopen or two.
const MIN_STORE_GIVE_UP_AFTER_MS: u64 = 1_000;
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_summary_interval_ms() -> u64 {
    5_000
}

/// The local HTTP endpoint (health, readiness, metrics).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_address")]
    pub address: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// The admin endpoint listens on loopback port 8686 unless told otherwise.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:8686";

fn default_admin_address() -> String {
    DEFAULT_ADMIN_ADDRESS.into()
}
fn default_true() -> bool {
    true
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: default_admin_address(),
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `info,tailrace_file=debug`.
    /// `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    #[serde(rename = "type")]
    kind: ChannelKind,
    // memory
    capacity_events: Option<usize>,
    capacity_bytes: Option<usize>,
    // disk
    max_bytes: Option<u64>,
    max_events: Option<u64>,
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    fsync: Option<RawFsync>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChannelKind {
    Memory,
    Disk,
}

/// `fsync: batch` or `fsync: {interval_ms: N}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawFsync {
    Batch,
    IntervalMs(u64),
}

fn default_disk_max_bytes() -> u64 {
    10 << 30
}
fn default_disk_max_events() -> u64 {
    u64::MAX
}

fn default_capacity_events() -> usize {
    100_000
}
fn default_capacity_bytes() -> usize {
    64 * 1024 * 1024
}

pub struct SourceSpec {
    pub name: String,
    /// The component's YAML as written (secrets interpolated): a reload
    /// keeps a component running when this did not change.
    pub definition: Value,
    pub kind: String,
    pub channels: Vec<String>,
    pub interceptors: Vec<Box<dyn InterceptorConfig>>,
    pub config: Box<dyn SourceConfig>,
}

pub struct SinkSpec {
    pub name: String,
    /// As [`SourceSpec::definition`].
    pub definition: Value,
    pub kind: String,
    pub channel: String,
    pub config: Box<dyn SinkConfig>,
}

pub struct ChannelSpec {
    pub name: String,
    /// As [`SourceSpec::definition`].
    pub definition: Value,
    /// The bounds (for a disk channel: `max_events`, `max_bytes`).
    pub capacity_events: usize,
    pub capacity_bytes: usize,
    /// `Some` for `type: disk`.
    pub disk: Option<DiskSettings>,
}

/// A config that parsed and validated.
pub struct Config {
    /// What `--config` named (files and directories), read again on SIGHUP.
    pub paths: Vec<PathBuf>,
    /// The files that were read, in merge order.
    pub files: Vec<PathBuf>,
    pub data_dir: PathBuf,
    /// Below this much free space on `data_dir` the spool takes no new
    /// entries; 0: no check.
    pub min_free_bytes: u64,
    /// How long a store that fails every reopen is retried before the
    /// agent exits with `EXIT_STORE_FAILED`; `None`: for ever.
    pub store_give_up_after: Option<Duration>,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub shutdown_grace: Duration,
    pub summary_interval: Option<Duration>,
    pub sources: Vec<SourceSpec>,
    pub channels: Vec<ChannelSpec>,
    pub sinks: Vec<SinkSpec>,
}

impl Config {
    /// The files read, for messages: `a.yaml, conf.d/b.yaml`.
    pub fn describe(&self) -> String {
        describe(&self.files)
    }
}

/// `a.yaml, conf.d/b.yaml`
pub fn describe(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One file of the set, indexed for positions.
struct Indexed {
    file: PathBuf,
    positions: Positions,
}

/// Collects errors with their files and positions.
struct Errors<'a> {
    files: &'a [Indexed],
    /// Which file a top-level key (`["data_dir"]`) or a component
    /// (`["sources", "app"]`) came from.
    origins: &'a BTreeMap<Vec<String>, usize>,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn add(&mut self, path: Vec<String>, message: impl Into<String>) {
        let origin = (1..=path.len().min(2))
            .rev()
            .find_map(|n| self.origins.get(&path[..n]).copied())
            .or((self.files.len() == 1).then_some(0));
        let (file, position) = match origin {
            Some(i) => (
                self.files[i].file.clone(),
                self.files[i].positions.find(&path),
            ),
            None => (
                PathBuf::from(describe(
                    &self
                        .files
                        .iter()
                        .map(|f| f.file.clone())
                        .collect::<Vec<_>>(),
                )),
                None,
            ),
        };
        self.list.push(ConfigError {
            file,
            path,
            message: message.into(),
            position,
        });
    }
}

fn path(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn joined(base: &[String], rest: &[String]) -> Vec<String> {
    base.iter().chain(rest).cloned().collect()
}

fn whole_file(file: &Path, message: String) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        path: Vec::new(),
        message,
        position: None,
    }
}

/// The files `--config` names: a file as it is, a directory as every
/// `*.yaml` and `*.yml` in it, in name order (not its subdirectories). A
/// file named twice is read once.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigErrors> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(md) if md.is_dir() => match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| {
                            f.extension().is_some_and(|x| x == "yaml" || x == "yml")
                                && f.is_file()
                        })
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => errors.push(whole_file(
                    p,
                    format!("cannot list the config directory: {e}"),
                )),
            },
            Ok(_) => files.push(p.clone()),
            Err(e) => errors.push(whole_file(
                p,
                format!("cannot read the config file: {e} (give a file, or a directory of *.yaml files)"),
            )),
        }
    }
    let mut seen = BTreeSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ConfigErrors { errors })
    }
}

/// Reads, interpolates, parses, merges and validates the files and
/// directories `--config` named.
pub fn load(paths: &[PathBuf], registry: &Registry) -> Result<Config, ConfigErrors> {
    let files = expand(paths)?;
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for file in &files {
        match std::fs::read(file) {
            Err(e) => errors.push(whole_file(
                file,
                format!("cannot read the config file: {e}"),
            )),
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => texts.push((file.clone(), text)),
                Err(e) => errors.push(whole_file(
                    file,
                    format!(
                        "the config file is not UTF-8 (at byte {})",
                        e.utf8_error().valid_up_to()
                    ),
                )),
            },
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors { errors });
    }
    if texts.is_empty() {
        return Err(ConfigErrors {
            errors: vec![whole_file(
                Path::new(&describe(paths)),
                "no config file: the directories hold no *.yaml file".into(),
            )],
        });
    }
    let mut config = parse_set(&texts, &|name| std::env::var(name).ok(), registry)?;
    config.paths = paths.to_vec();
    Ok(config)
}

/// Parses and validates one file's text; `env` resolves `${VAR}`.
pub fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    registry: &Registry,
) -> Result<Config, ConfigErrors> {
    parse_set(&[(file.to_path_buf(), text.to_string())], env, registry)
}

/// One file: interpolated, parsed, indexed.
fn parse_file(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: &mut Vec<String>,
) -> Result<(RawFile, Positions), Vec<ConfigError>> {
    let interpolated = interpolate(text, env).map_err(|unresolved| {
        unresolved
            .into_iter()
            .map(|u| ConfigError {
                file: file.to_path_buf(),
                path: Vec::new(),
                message: u.message,
                position: Some((u.line, u.column)),
            })
            .collect::<Vec<_>>()
    })?;
    secrets.extend(interpolated.secrets);
    let text = interpolated.text;
    let tree = serde_yaml::from_str::<Value>(&text);
    if let Ok(tree) = &tree {
        secret_values(tree, false, secrets);
    }
    // A file of comments only (a conf.d placeholder) sets nothing.
    let empty = matches!(tree, Ok(Value::Null));
    let raw: RawFile = if empty {
        RawFile::default()
    } else {
        serde_yaml::from_str(&text).map_err(|e| {
            let position = e.location().map(|l| (l.line(), l.column()));
            let message = e.to_string();
            // serde_yaml appends " at line L column C"; the position says it.
            let message = match message.find(" at line ") {
                Some(i) if position.is_some() => message[..i].to_string(),
                _ => message,
            };
            vec![ConfigError {
                file: file.to_path_buf(),
                path: Vec::new(),
                message,
                position,
            }]
        })?
    };
    Ok((raw, Positions::index(&text)))
}

/// Records which file each top-level key and component comes from, and
/// the second definitions.
struct Merge<'a> {
    origins: &'a mut BTreeMap<Vec<String>, usize>,
    /// The files before this one.
    indexed: &'a [Indexed],
    /// (path, file, message) of each second definition.
    conflicts: &'a mut Vec<(Vec<String>, usize, String)>,
    file: usize,
}

impl Merge<'_> {
    /// Whether `key` is new; if not, records the conflict, with `message`
    /// followed by where the first definition is.
    fn claim(&mut self, key: Vec<String>, message: String) -> bool {
        match self.origins.get(&key) {
            None => {
                self.origins.insert(key, self.file);
                true
            }
            Some(&first) => {
                let f = &self.indexed[first];
                let at = match f.positions.find(&key) {
                    Some((l, c)) => format!("{}:{l}:{c}", f.file.display()),
                    None => f.file.display().to_string(),
                };
                self.conflicts
                    .push((key, self.file, format!("{message} {at}")));
                false
            }
        }
    }

    fn top<T>(&mut self, key: &str, also: &str, value: T, into: &mut T) {
        if self.claim(vec![key.to_string()], format!("{key} {also}")) {
            *into = value;
        }
    }
}

/// Parses, merges and validates the texts of a set of files, in order. No
/// message in the errors shows a secret: values read by `${file:}` and the
/// values of keys that name secrets (`password`, `key_password`,
/// `client_secret`, ...) are masked.
pub fn parse_set(
    texts: &[(PathBuf, String)],
    env: &dyn Fn(&str) -> Option<String>,
    registry: &Registry,
) -> Result<Config, ConfigErrors> {
    let mut secrets = Vec::new();
    parse_set_unmasked(texts, env, registry, &mut secrets).map_err(|mut errors| {
        for e in &mut errors.errors {
            e.message = tailrace_api::secret::mask(&e.message, &secrets);
        }
        errors
    })
}

/// The scalar values under keys that name secrets, anywhere in the tree.
fn secret_values(value: &Value, under_secret: bool, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let secret = under_secret
                    || k.as_str()
                        .is_some_and(tailrace_api::secret::is_sensitive_key);
                secret_values(v, secret, out);
            }
        }
        Value::Sequence(items) => {
            for v in items {
                secret_values(v, under_secret, out);
            }
        }
        Value::Tagged(t) => secret_values(&t.value, under_secret, out),
        Value::String(s) if under_secret => out.push(s.clone()),
        Value::Number(n) if under_secret => out.push(n.to_string()),
        Value::Bool(_) | Value::Null | Value::String(_) | Value::Number(_) => {}
    }
}

fn parse_set_unmasked(
    texts: &[(PathBuf, String)],
    env: &dyn Fn(&str) -> Option<String>,
    registry: &Registry,
    secrets: &mut Vec<String>,
) -> Result<Config, ConfigErrors> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in texts {
        match parse_file(file, text, env, secrets) {
            Ok(p) => parsed.push((file.clone(), p)),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors { errors });
    }
    let mut merged = RawConfig::default();
    let mut origins: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    let mut indexed = Vec::new();
    // (path, message) of conflicts between files, reported with the rest.
    let mut conflicts: Vec<(Vec<String>, usize, String)> = Vec::new();
    for (i, (file, (raw, positions))) in parsed.into_iter().enumerate() {
        let mut merge = Merge {
            origins: &mut origins,
            indexed: &indexed,
            conflicts: &mut conflicts,
            file: i,
        };
        let also = "is set in two files: here and in";
        if let Some(v) = raw.data_dir {
            merge.top("data_dir", also, v, &mut merged.data_dir);
        }
        if let Some(v) = raw.min_free_bytes {
            merge.top("min_free_bytes", also, v, &mut merged.min_free_bytes);
        }
        if let Some(v) = raw.store_give_up_after_ms {
            merge.top(
                "store_give_up_after_ms",
                also,
                v,
                &mut merged.store_give_up_after_ms,
            );
        }
        if let Some(v) = raw.admin {
            merge.top("admin", also, v, &mut merged.admin);
        }
        if let Some(v) = raw.log {
            merge.top("log", also, v, &mut merged.log);
        }
        if let Some(v) = raw.shutdown_grace_ms {
            merge.top("shutdown_grace_ms", also, v, &mut merged.shutdown_grace_ms);
        }
        if let Some(v) = raw.summary_interval_ms {
            merge.top(
                "summary_interval_ms",
                also,
                v,
                &mut merged.summary_interval_ms,
            );
        }
        for (section, what, from, into) in [
            ("sources", "source", raw.sources, &mut merged.sources),
            ("channels", "channel", raw.channels, &mut merged.channels),
            ("sinks", "sink", raw.sinks, &mut merged.sinks),
        ] {
            if positions.contains(&[section.to_string()]) {
                merge.origins.entry(vec![section.to_string()]).or_insert(i);
            }
            for (name, value) in from {
                let key = vec![section.to_string(), name.clone()];
                if merge.claim(key, format!("{what} {name} is defined twice: here and in")) {
                    into.insert(name, value);
                }
            }
        }
        indexed.push(Indexed {
            file: file.clone(),
            positions,
        });
    }
    let mut errors = Errors {
        files: &indexed,
        origins: &origins,
        list: Vec::new(),
    };
    for (path, i, message) in conflicts {
        let message = if path.len() == 1 {
            format!("{message}; the top-level settings ({TOP_LEVEL}) may be set in one file only")
        } else {
            message
        };
        // Reported where the second definition is.
        errors.list.push(ConfigError {
            file: indexed[i].file.clone(),
            position: indexed[i].positions.find(&path),
            path,
            message,
        });
    }
    let config = build(merged, registry, &mut errors);
    if errors.list.is_empty() {
        let mut config = config.expect("no errors means a config");
        config.files = indexed.iter().map(|f| f.file.clone()).collect();
        config.paths = config.files.clone();
        Ok(config)
    } else {
        let order = |f: &Path| {
            indexed
                .iter()
                .position(|x| x.file == f)
                .unwrap_or(usize::MAX)
        };
        errors
            .list
            .sort_by_key(|e| (order(&e.file), e.position.unwrap_or((usize::MAX, 0))));
        Err(ConfigErrors {
            errors: errors.list,
        })
    }
}

fn build(raw: RawConfig, registry: &Registry, errors: &mut Errors) -> Option<Config> {
    if raw.data_dir.as_os_str().is_empty() {
        errors.add(path(&["data_dir"]), "data_dir is empty");
    }
    // (key, value, its minimum unless 0, why, the minimum in words, what 0 does)
    let minimums = [
        (
            "min_free_bytes",
            raw.min_free_bytes,
            MIN_MIN_FREE_BYTES,
            "is too small to keep the store from filling the disk",
            " (1 MiB)",
            "turn the check off",
        ),
        (
            "store_give_up_after_ms",
            raw.store_give_up_after_ms,
            MIN_STORE_GIVE_UP_AFTER_MS,
            "leaves the store no time to be reopened",
            "",
            "retry for ever",
        ),
    ];
    for (key, value, min, why, words, zero) in minimums {
        if value != 0 && value < min {
            errors.add(
                path(&[key]),
                format!("{key} {value} {why}: give at least {min}{words}, or 0 to {zero}"),
            );
        }
    }
    if raw.admin.address.parse::<SocketAddr>().is_err() {
        errors.add(
            path(&["admin", "address"]),
            format!(
                "invalid address {:?}: expected ip:port, like {DEFAULT_ADMIN_ADDRESS}",
                raw.admin.address
            ),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
        errors.add(
            path(&["log", "level"]),
            format!("invalid log level {:?}: {e}", raw.log.level),
        );
    }

    let mut channels = Vec::new();
    for (name, value) in &raw.channels {
        let base = path(&["channels", name]);
        match serde_path_to_error::deserialize::<_, RawChannel>(value.clone()) {
            Ok(c) => {
                let at = |key: &str| joined(&base, &path(&[key]));
                let (memory_keys, disk_keys) = (
                    [
                        ("capacity_events", c.capacity_events.is_some()),
                        ("capacity_bytes", c.capacity_bytes.is_some()),
                    ],
                    [
                        ("max_bytes", c.max_bytes.is_some()),
                        ("max_events", c.max_events.is_some()),
                        ("fsync", c.fsync.is_some()),
                    ],
                );
                let (misplaced, kind, other): (&[(&str, bool)], _, _) = match c.kind {
                    ChannelKind::Memory => (&disk_keys, "memory", "disk"),
                    ChannelKind::Disk => (&memory_keys, "disk", "memory"),
                };
                for (key, _) in misplaced.iter().filter(|(_, set)| *set) {
                    errors.add(
                        at(key),
                        format!("{key} applies to type {other} channels only, not to type {kind}"),
                    );
                }
                let spec = match c.kind {
                    ChannelKind::Memory => {
                        let events = c.capacity_events.unwrap_or_else(default_capacity_events);
                        let bytes = c.capacity_bytes.unwrap_or_else(default_capacity_bytes);
                        for (key, v) in [("capacity_events", events), ("capacity_bytes", bytes)] {
                            if v == 0 {
                                errors.add(at(key), format!("{key} must be greater than 0"));
                            }
                        }
                        (events, bytes, None)
                    }
                    ChannelKind::Disk => {
                        let max_bytes = c.max_bytes.unwrap_or_else(default_disk_max_bytes);
                        let max_events = c.max_events.unwrap_or_else(default_disk_max_events);
                        if max_bytes < MIN_MAX_BYTES {
                            errors.add(
                                at("max_bytes"),
                                format!("max_bytes {max_bytes} is too small for a disk channel: give it at least {MIN_MAX_BYTES} (1 MiB)"),
                            );
                        }
                        if max_events == 0 {
                            errors.add(at("max_events"), "max_events must be greater than 0");
                        }
                        let fsync = match c.fsync {
                            None | Some(RawFsync::Batch) => Fsync::Batch,
                            Some(RawFsync::IntervalMs(0)) => {
                                errors.add(
                                    at("fsync"),
                                    "fsync interval_ms must be greater than 0 (or write fsync: batch)",
                                );
                                Fsync::Batch
                            }
                            Some(RawFsync::IntervalMs(ms)) => {
                                Fsync::Interval(Duration::from_millis(ms))
                            }
                        };
                        (
                            max_events.min(usize::MAX as u64) as usize,
                            max_bytes.min(usize::MAX as u64) as usize,
                            Some(DiskSettings {
                                max_bytes,
                                max_events,
                                fsync,
                                segment_bytes: DiskSettings::segment_for(max_bytes),
                            }),
                        )
                    }
                };
                channels.push(ChannelSpec {
                    name: name.clone(),
                    definition: value.clone(),
                    capacity_events: spec.0,
                    capacity_bytes: spec.1,
                    disk: spec.2,
                });
            }
            Err(e) => serde_error(errors, &base, e, "channel", &["memory", "disk"]),
        }
    }
    let channel_names: BTreeSet<&str> = raw.channels.keys().map(String::as_str).collect();
    let known_channels = || channel_names.iter().copied().collect::<Vec<_>>().join(", ");
    let mut writers: BTreeMap<&str, usize> = BTreeMap::new();
    let mut readers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();

    if raw.sources.is_empty() {
        errors.add(Vec::new(), "no sources: add at least one under `sources:`");
    }
    let mut sources = Vec::new();
    // What each component holds exclusively (a port, a socket path), by whom.
    let mut held: BTreeMap<String, String> = BTreeMap::new();
    if raw.admin.enabled {
        if let Ok(address) = raw.admin.address.parse::<SocketAddr>() {
            held.insert(format!("tcp {address}"), "the admin endpoint".into());
        }
    }
    for (name, value) in &raw.sources {
        let base = path(&["sources", name]);
        let Some(mut map) = component_map(errors, &base, value) else {
            continue;
        };
        let kind = take_type(errors, &base, &mut map);
        let chans = match map.remove("channels") {
            None => {
                errors.add(
                    base.clone(),
                    format!("source {name} has no `channels:` (the channels it writes to)"),
                );
                Vec::new()
            }
            Some(v) => match serde_yaml::from_value::<Vec<String>>(v) {
                Ok(list) if list.is_empty() => {
                    errors.add(joined(&base, &path(&["channels"])), "channels is empty");
                    list
                }
                Ok(list) => list,
                Err(_) => {
                    errors.add(
                        joined(&base, &path(&["channels"])),
                        "channels must be a list of channel names",
                    );
                    Vec::new()
                }
            },
        };
        for (i, c) in chans.iter().enumerate() {
            if let Some(&known) = channel_names.get(c.as_str()) {
                *writers.entry(known).or_default() += 1;
            } else {
                errors.add(
                    joined(&base, &path(&["channels", &i.to_string()])),
                    format!(
                        "unknown channel {c:?}; defined channels: {}",
                        known_channels()
                    ),
                );
            }
        }
        let interceptors = parse_interceptors(errors, &base, map.remove("interceptors"), registry);
        let Some(kind) = kind else { continue };
        let Some(factory) = registry.source(&kind) else {
            errors.add(
                joined(&base, &path(&["type"])),
                format!(
                    "unknown source type {kind:?}; known types: {}",
                    registry.source_types().join(", ")
                ),
            );
            continue;
        };
        match factory(Value::Mapping(map)) {
            Ok(config) => {
                issues(errors, &base, config.validate());
                for resource in config.resources() {
                    match held.get(&resource) {
                        Some(owner) => errors.add(
                            base.clone(),
                            format!("{resource} is already used by {owner}"),
                        ),
                        None => {
                            held.insert(resource, format!("source {name}"));
                        }
                    }
                }
                sources.push(SourceSpec {
                    name: name.clone(),
                    definition: value.clone(),
                    kind,
                    channels: chans,
                    interceptors,
                    config,
                });
            }
            Err(e) => serde_error(errors, &base, e, "", &[]),
        }
    }

    if raw.sinks.is_empty() {
        errors.add(Vec::new(), "no sinks: add at least one under `sinks:`");
    }
    let mut sinks = Vec::new();
    for (name, value) in &raw.sinks {
        let base = path(&["sinks", name]);
        let Some(mut map) = component_map(errors, &base, value) else {
            continue;
        };
        let kind = take_type(errors, &base, &mut map);
        let channel = match map.remove("channel") {
            Some(Value::String(c)) => {
                if channel_names.contains(c.as_str()) {
                    Some(c)
                } else {
                    errors.add(
                        joined(&base, &path(&["channel"])),
                        format!(
                            "unknown channel {c:?}; defined channels: {}",
                            known_channels()
                        ),
                    );
                    None
                }
            }
            Some(_) => {
                errors.add(
                    joined(&base, &path(&["channel"])),
                    "channel must be the name of one channel",
                );
                None
            }
            None => {
                errors.add(
                    base.clone(),
                    format!("sink {name} has no `channel:` (the channel it reads)"),
                );
                None
            }
        };
        if let Some(c) = &channel {
            if let Some(&c) = channel_names.get(c.as_str()) {
                readers.entry(c).or_default().push(name);
            }
        }
        let Some(kind) = kind else { continue };
        let Some(factory) = registry.sink(&kind) else {
            errors.add(
                joined(&base, &path(&["type"])),
                format!(
                    "unknown sink type {kind:?}; known types: {}",
                    registry.sink_types().join(", ")
                ),
            );
            continue;
        };
        match factory(Value::Mapping(map)) {
            Ok(config) => {
                issues(errors, &base, config.validate());
                if let Some(channel) = channel {
                    sinks.push(SinkSpec {
                        name: name.clone(),
                        definition: value.clone(),
                        kind,
                        channel,
                        config,
                    });
                }
            }
            Err(e) => serde_error(errors, &base, e, "", &[]),
        }
    }

    for name in &channel_names {
        let base = path(&["channels", name]);
        let written = writers.get(name).copied().unwrap_or(0) > 0;
        let read = readers.get(name).map_or(&[][..], Vec::as_slice);
        match (written, read.len()) {
            (false, 0) => errors.add(
                base,
                format!("channel {name:?} is not used by any source or sink"),
            ),
            (true, 0) => errors.add(
                base,
                format!("nothing reads channel {name:?}: add a sink with `channel: {name}`"),
            ),
            (false, _) => errors.add(
                base,
                format!("no source writes to channel {name:?}: name it in a source's `channels:`"),
            ),
            (true, 1) => {}
            (true, _) => errors.add(
                base,
                format!(
                    "channel {name:?} is read by several sinks ({}); a channel has one sink",
                    read.join(", ")
                ),
            ),
        }
    }

    fit_line_limits(errors, &mut sources, &sinks);

    if !errors.list.is_empty() {
        return None;
    }
    Some(Config {
        paths: Vec::new(),
        files: Vec::new(),
        data_dir: raw.data_dir,
        min_free_bytes: raw.min_free_bytes,
        store_give_up_after: (raw.store_give_up_after_ms > 0)
            .then(|| Duration::from_millis(raw.store_give_up_after_ms)),
        admin: raw.admin,
        log: raw.log,
        shutdown_grace: Duration::from_millis(raw.shutdown_grace_ms),
        summary_interval: (raw.summary_interval_ms > 0)
            .then(|| Duration::from_millis(raw.summary_interval_ms)),
        sources,
        channels,
        sinks,
    })
}

/// Holds every source's `max_line_bytes` to what the sinks it feeds can
/// deliver: a default above that is lowered to it, a value the config set
/// above it is refused (such a line would be dead-lettered, not delivered).
fn fit_line_limits(errors: &mut Errors, sources: &mut [SourceSpec], sinks: &[SinkSpec]) {
    for source in sources {
        let Some(line) = source.config.max_line_bytes() else {
            continue;
        };
        let smallest = sinks
            .iter()
            .filter(|s| source.channels.contains(&s.channel))
            .filter_map(|s| {
                s.config
                    .max_record_bytes()
                    .map(|(b, why)| (b, why, &s.name))
            })
            .min_by_key(|(bytes, _, _)| *bytes);
        let Some((deliverable, why, sink)) = smallest else {
            continue;
        };
        if line.bytes <= deliverable {
            continue;
        }
        if line.explicit {
            errors.add(
                path(&["sources", &source.name, "max_line_bytes"]),
                format!(
                    "max_line_bytes {} is more than sink {sink} can deliver as one record: {deliverable} ({why}); lower max_line_bytes, or raise message.max.bytes in the sink's librdkafka: (and the topic's max.message.bytes)",
                    line.bytes
                ),
            );
        } else {
            source.config.fit_max_line_bytes(deliverable);
        }
    }
}

/// Parses a source's `interceptors:` list, each item by its `type`.
fn parse_interceptors(
    errors: &mut Errors,
    base: &[String],
    value: Option<Value>,
    registry: &Registry,
) -> Vec<Box<dyn InterceptorConfig>> {
    let items = match value {
        None => return Vec::new(),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            errors.add(
                joined(base, &path(&["interceptors"])),
                "interceptors must be a list",
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = joined(base, &path(&["interceptors", &i.to_string()]));
        let Some(mut map) = component_map(errors, &at, item) else {
            continue;
        };
        let Some(kind) = take_type(errors, &at, &mut map) else {
            continue;
        };
        let Some(factory) = registry.interceptor(&kind) else {
            errors.add(
                joined(&at, &path(&["type"])),
                format!(
                    "unknown interceptor type {kind:?}; known types: {}",
                    registry.interceptor_types().join(", ")
                ),
            );
            continue;
        };
        match factory(Value::Mapping(map)) {
            Ok(config) => {
                issues(errors, &at, config.validate());
                out.push(config);
            }
            Err(e) => serde_error(errors, &at, e, "", &[]),
        }
    }
    out
}

fn component_map(
    errors: &mut Errors,
    base: &[String],
    value: &Value,
) -> Option<serde_yaml::Mapping> {
    match value {
        Value::Mapping(m) => Some(m.clone()),
        _ => {
            errors.add(base.to_vec(), "expected a mapping with at least `type:`");
            None
        }
    }
}

fn take_type(
    errors: &mut Errors,
    base: &[String],
    map: &mut serde_yaml::Mapping,
) -> Option<String> {
    match map.remove("type") {
        Some(Value::String(t)) => Some(t),
        Some(_) => {
            errors.add(joined(base, &path(&["type"])), "type must be a string");
            None
        }
        None => {
            errors.add(base.to_vec(), "`type:` is missing");
            None
        }
    }
}

fn issues(errors: &mut Errors, base: &[String], list: Vec<ConfigIssue>) {
    for issue in list {
        errors.add(joined(base, &issue.path), issue.message);
    }
}

/// Reports a serde error from a component, at the path it names.
fn serde_error(
    errors: &mut Errors,
    base: &[String],
    e: serde_path_to_error::Error<serde_yaml::Error>,
    _what: &str,
    _known: &[&str],
) {
    let mut at: Vec<String> = base.to_vec();
    for seg in e.path().iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => at.push(index.to_string()),
            serde_path_to_error::Segment::Map { key } => at.push(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => at.push(variant.clone()),
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    let message = e.into_inner().to_string();
    // An unknown key: point at the key itself.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            let mut key_at = at.clone();
            if key_at.last().map(String::as_str) != Some(&rest[..end]) {
                key_at.push(rest[..end].to_string());
            }
            errors.add(key_at, message);
            return;
        }
    }
    errors.add(at, message);
}

#[cfg(test)]
mod tests;
