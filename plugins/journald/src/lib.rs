//! The journald source: reads the systemd journal through libsystemd's
//! sd-journal and sends one record per entry, resuming after a restart from
//! the cursor of the last entry that Kafka acknowledged.
//!
//! One thread per source opens the journal (the system's, a directory or
//! files), applies the matches, steps through entries in batches and sends
//! each batch with one acknowledgement; [`cursor::CursorBook`] decides which
//! cursor may be saved. `MESSAGE` is the payload, byte for byte; the other
//! fields are record fields under their journal names (`_HOSTNAME` becomes
//! `host`, the entry's realtime `timestamp`).
//!
//! This crate must never depend on another plugin, nor know how cursors
//! are stored (it sees the `CheckpointStore` trait) or where records go.

pub mod cursor;
mod metrics;
mod reader;
mod sd;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
pub use tailrace_api::StartAt;
use tailrace_api::{BuildError, ComponentTask, ConfigIssue, SourceConfig, SourceContext};

pub use metrics::declare_metrics;
pub use sd::Where;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournaldSourceConfig {
    /// A directory of journal files (`journalctl --directory`); default:
    /// the system journal.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// Journal files to read (`journalctl --file`); new files are not
    /// noticed.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Units whose entries to read (`_SYSTEMD_UNIT`); a name without a
    /// suffix gets `.service`.
    #[serde(default)]
    pub units: Vec<String>,
    /// Entries to read, by field: values of one field are alternatives, all
    /// fields must match. `N..M` stands for every integer from N to M
    /// (`PRIORITY: ["0..3"]`).
    #[serde(default)]
    pub include_matches: BTreeMap<String, Vec<String>>,
    /// Entries to skip: any one of these field values excludes an entry.
    #[serde(default)]
    pub exclude_matches: BTreeMap<String, Vec<String>>,
    /// For the first start, when no cursor was saved.
    #[serde(default)]
    pub start_at: StartAt,
    /// Only entries of the running boot.
    #[serde(default)]
    pub current_boot_only: bool,
    /// Entries read and sent as one batch, at most.
    #[serde(default = "default_batch_max_entries")]
    pub batch_max_entries: usize,
    /// How often the acknowledged cursor is written to the store.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// How long to wait for new entries before looking at
    /// acknowledgements and shutdown again.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_batch_max_entries() -> usize {
    4096
}
fn default_checkpoint_interval_ms() -> u64 {
    200
}
fn default_poll_interval_ms() -> u64 {
    250
}

/// A journal field name: upper-case letters, digits and `_`, not starting
/// with a digit (what `journalctl` accepts in a match).
fn valid_field(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// `N..M` as every integer from N to M; anything else as itself.
fn expand(value: &str) -> Result<Vec<String>, String> {
    let Some((a, b)) = value.split_once("..") else {
        return Ok(vec![value.to_owned()]);
    };
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b && b - a < 1024 => Ok((a..=b).map(|n| n.to_string()).collect()),
        (Ok(_), Ok(_)) => Err(format!(
            "range {value:?} must go upwards and span fewer than 1024 values"
        )),
        _ => Ok(vec![value.to_owned()]),
    }
}

/// `FIELD=value` byte strings of a match map, or the issues found.
fn matches(
    key: &str,
    map: &BTreeMap<String, Vec<String>>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (field, values) in map {
        if !valid_field(field) {
            issues.push(ConfigIssue::new(
                &[key, field],
                format!("{field:?} is not a journal field name (upper-case letters, digits and _, as in _SYSTEMD_UNIT)"),
            ));
            continue;
        }
        if values.is_empty() {
            issues.push(ConfigIssue::new(
                &[key, field],
                "give at least one value (a field with no values matches nothing)",
            ));
        }
        for (i, v) in values.iter().enumerate() {
            match expand(v) {
                Ok(vs) => out.extend(vs.into_iter().map(|v| format!("{field}={v}").into_bytes())),
                Err(e) => issues.push(ConfigIssue::new(&[key, field, &i.to_string()], e)),
            }
        }
    }
    out
}

/// What a config asks for, resolved.
struct Plan {
    at: Where,
    /// `FIELD=value` matches for sd-journal, the units folded in.
    include: Vec<Vec<u8>>,
    /// `FIELD=value` pairs that exclude an entry.
    exclude: Vec<Vec<u8>>,
    issues: Vec<ConfigIssue>,
}

impl JournaldSourceConfig {
    fn plan(&self) -> Plan {
        let mut issues = Vec::new();
        let at = match (&self.directory, self.files.is_empty()) {
            (Some(_), false) => {
                issues.push(ConfigIssue::new(
                    &["files"],
                    "directory and files exclude each other (set one)",
                ));
                Where::System
            }
            (Some(d), true) => Where::Directory(d.clone()),
            (None, false) => Where::Files(self.files.clone()),
            (None, true) => Where::System,
        };
        let paths = self.directory.iter().map(|d| ("directory", d, None));
        let files = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| ("files", f, Some(i.to_string())));
        for (key, p, i) in paths.chain(files) {
            if !p.is_absolute() {
                let mut path = vec![key];
                path.extend(i.as_deref());
                issues.push(ConfigIssue::new(
                    &path,
                    format!(
                        "{} must be an absolute path (it would depend on the working directory)",
                        p.display()
                    ),
                ));
            }
        }
        let mut include = matches("include_matches", &self.include_matches, &mut issues);
        for (i, u) in self.units.iter().enumerate() {
            if u.is_empty() || u.contains(['/', '=']) {
                issues.push(ConfigIssue::new(
                    &["units", &i.to_string()],
                    format!("{u:?} is not a unit name (such as nginx.service)"),
                ));
                continue;
            }
            let unit = if u.contains('.') {
                u.clone()
            } else {
                format!("{u}.service")
            };
            include.push(format!("_SYSTEMD_UNIT={unit}").into_bytes());
        }
        let exclude = matches("exclude_matches", &self.exclude_matches, &mut issues);
        for (key, v) in [
            ("batch_max_entries", self.batch_max_entries as u64),
            ("poll_interval_ms", self.poll_interval_ms),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
        ] {
            if v == 0 {
                issues.push(ConfigIssue::new(
                    &[key],
                    format!("{key} must be greater than 0"),
                ));
            }
        }
        Plan {
            at,
            include,
            exclude,
            issues,
        }
    }
}

impl SourceConfig for JournaldSourceConfig {
    fn validate(&self) -> Vec<ConfigIssue> {
        self.plan().issues
    }

    fn build(&self, cx: SourceContext) -> Result<ComponentTask, BuildError> {
        let Plan {
            at,
            include,
            exclude,
            issues,
        } = self.plan();
        if let Some(i) = issues.first() {
            return Err(BuildError(format!("{}: {}", i.path.join("."), i.message)));
        }
        reader::spawn(
            cx,
            reader::Settings {
                at,
                include,
                exclude: exclude.into_iter().collect(),
                start_at: self.start_at,
                current_boot_only: self.current_boot_only,
                batch_max_entries: self.batch_max_entries,
                checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms),
                poll_interval: Duration::from_millis(self.poll_interval_ms),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `yaml` and compares the validation messages (path: message).
    fn check(yaml: &str, expected: &[&str]) {
        let c: JournaldSourceConfig = serde_yaml::from_str(yaml).expect("parses");
        let got: Vec<String> = c
            .validate()
            .iter()
            .map(|i| format!("{}: {}", i.path.join("."), i.message))
            .collect();
        let got: Vec<&str> = got.iter().map(String::as_str).collect();
        assert_eq!(got, expected, "{yaml}");
    }

    #[test]
    fn validation() {
        check("{}", &[]);
        check(
            "{ directory: /var/log/journal, units: [nginx, cron.service], include_matches: { PRIORITY: ['0..3'] } }",
            &[],
        );
        check(
            "{ directory: rel, files: [/a] }",
            &[
                "files: directory and files exclude each other (set one)",
                "directory: rel must be an absolute path (it would depend on the working directory)",
            ],
        );
        check(
            "{ include_matches: { unit: [x], PRIORITY: ['5..1'], _PID: [] }, units: ['a=b'], batch_max_entries: 0 }",
            &[
                "include_matches.PRIORITY.0: range \"5..1\" must go upwards and span fewer than 1024 values",
                "include_matches._PID: give at least one value (a field with no values matches nothing)",
                "include_matches.unit: \"unit\" is not a journal field name (upper-case letters, digits and _, as in _SYSTEMD_UNIT)",
                "units.0: \"a=b\" is not a unit name (such as nginx.service)",
                "batch_max_entries: batch_max_entries must be greater than 0",
            ],
        );
        assert!(serde_yaml::from_str::<JournaldSourceConfig>("{ unit: x }").is_err());
    }

    #[test]
    fn units_and_ranges_become_matches() {
        let c: JournaldSourceConfig = serde_yaml::from_str(
            "{ units: [nginx, cron.timer], include_matches: { PRIORITY: ['0..2', 'x..y'] }, exclude_matches: { SYSLOG_IDENTIFIER: [sshd] } }",
        )
        .unwrap();
        let Plan {
            at,
            include,
            exclude,
            issues,
        } = c.plan();
        assert!(issues.is_empty());
        assert_eq!(at, Where::System);
        let s = |v: Vec<Vec<u8>>| -> Vec<String> {
            v.into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        };
        assert_eq!(
            s(include),
            [
                "PRIORITY=0",
                "PRIORITY=1",
                "PRIORITY=2",
                "PRIORITY=x..y",
                "_SYSTEMD_UNIT=nginx.service",
                "_SYSTEMD_UNIT=cron.timer"
            ]
        );
        assert_eq!(s(exclude), ["SYSLOG_IDENTIFIER=sshd"]);
    }
}
