//! Joining lines into multiline events (stack traces).
//!
//! Exactly one pattern decides: with `start_pattern`, a line that matches
//! begins an event and every other line joins the event before it; with
//! `continuation_pattern`, a line that matches joins the event before it
//! and every other line begins one. An event still being gathered is sent
//! once `flush_timeout_ms` passed without a new line. Patterns are compiled
//! once, when the config is checked and when the source is built; a line is
//! matched as bytes, so invalid UTF-8 is no error.

use std::time::Duration;

use regex::bytes::Regex;
use serde::Deserialize;
use tailrace_api::ConfigIssue;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A line matching this begins an event.
    #[serde(default)]
    pub start_pattern: Option<String>,
    /// A line matching this joins the event before it.
    #[serde(default)]
    pub continuation_pattern: Option<String>,
    /// An event still being gathered is sent after this long without a new
    /// line.
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
}

fn default_flush_timeout_ms() -> u64 {
    1000
}

/// A compiled rule.
#[derive(Debug)]
pub struct Multiline {
    pattern: Regex,
    /// The pattern names continuation lines (else: start lines).
    continuation: bool,
    pub flush_timeout: Duration,
}

impl Multiline {
    /// Whether `line` joins the event gathered before it.
    pub fn joins(&self, line: &[u8]) -> bool {
        self.pattern.is_match(line) == self.continuation
    }
}

impl MultilineConfig {
    /// Compiles the rule, or says what is wrong, with the key it is under.
    pub fn compile(&self) -> Result<Multiline, ConfigIssue> {
        let (key, pattern, continuation) = match (&self.start_pattern, &self.continuation_pattern) {
            (Some(p), None) => ("start_pattern", p, false),
            (None, Some(p)) => ("continuation_pattern", p, true),
            _ => {
                return Err(ConfigIssue::new(
                    &["multiline"],
                    "set exactly one of start_pattern and continuation_pattern",
                ))
            }
        };
        let pattern = Regex::new(pattern).map_err(|e| {
            ConfigIssue::new(
                &["multiline", key],
                format!("invalid regular expression {pattern:?}: {e}"),
            )
        })?;
        if self.flush_timeout_ms == 0 {
            return Err(ConfigIssue::new(
                &["multiline", "flush_timeout_ms"],
                "flush_timeout_ms must be greater than 0",
            ));
        }
        Ok(Multiline {
            pattern,
            continuation,
            flush_timeout: Duration::from_millis(self.flush_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(start: Option<&str>, cont: Option<&str>) -> MultilineConfig {
        MultilineConfig {
            start_pattern: start.map(str::to_owned),
            continuation_pattern: cont.map(str::to_owned),
            flush_timeout_ms: 1000,
        }
    }

    #[test]
    fn compiling() {
        assert!(config(Some(r"^\d{4}-"), None).compile().is_ok());
        assert!(config(None, Some(r"^\s")).compile().is_ok());
        let err = |c: MultilineConfig| c.compile().unwrap_err();
        assert_eq!(err(config(None, None)).path, ["multiline"]);
        assert_eq!(err(config(Some("a"), Some("b"))).path, ["multiline"]);
        let bad = err(config(Some("(unclosed"), None));
        assert_eq!(bad.path, ["multiline", "start_pattern"]);
        assert!(bad.message.contains("(unclosed"), "{}", bad.message);
        let mut zero = config(Some("a"), None);
        zero.flush_timeout_ms = 0;
        assert_eq!(err(zero).path, ["multiline", "flush_timeout_ms"]);
    }

    #[test]
    fn joining() {
        let start = config(Some(r"^\d{4}-"), None).compile().unwrap();
        assert!(!start.joins(b"2026-11-21 ERROR boom"));
        assert!(start.joins(b"\tat com.example.Main.main(Main.java:3)"));
        assert!(start.joins(b"\xff not utf-8"));
        let cont = config(None, Some(r"^(\s|Caused by:)")).compile().unwrap();
        assert!(cont.joins(b"\tat com.example.Main.main(Main.java:3)"));
        assert!(cont.joins(b"Caused by: java.io.IOException"));
        assert!(!cont.joins(b"2026-11-21 INFO fine"));
    }
}
