//! Interceptors: they shape the records of a batch between a source and its
//! channels, in the order the config lists them.
//!
//! Each works on a whole batch in place. Fields that are the same for the
//! whole batch (host, static) are set once on the batch, shared by its
//! records; per-record work allocates only for a record it changes, and
//! values cut out of a line are slices of the line's buffer, not copies.
//! Patterns are compiled once, when the interceptor is built.
//!
//! This crate depends on the contract only.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use regex::bytes::Regex;
use serde::Deserialize;
use tailrace_api::{
    Batch, BuildError, ConfigIssue, FieldValue, Fields, Interceptor, InterceptorConfig, Record,
};

/// The bytes a pattern is matched against: the line, or a field.
fn subject<'a>(batch: &'a Batch, record: &'a Record, field: &Option<String>) -> Option<Bytes> {
    match field {
        None => Some(record.payload.clone()),
        Some(name) => match batch.field(record, name)? {
            FieldValue::Text(b) => Some(b.clone()),
            FieldValue::Int(i) => Some(Bytes::from(i.to_string())),
        },
    }
}

fn compile(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("invalid regex: {e}"))
}

fn check_pattern(pattern: &str) -> Vec<ConfigIssue> {
    match compile(pattern) {
        Ok(_) => Vec::new(),
        Err(e) => vec![ConfigIssue::new(&["pattern"], e)],
    }
}

/// `type: host`: adds the machine's host name to every record.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default = "default_host_field")]
    pub field: String,
}

fn default_host_field() -> String {
    "host".into()
}

#[derive(Debug)]
struct Shared(Arc<Fields>);

impl Interceptor for Shared {
    fn intercept(&self, batch: &mut Batch) {
        match &mut batch.fields {
            None => batch.fields = Some(self.0.clone()),
            Some(_) => {
                let fields = batch.fields_mut();
                for (k, v) in self.0.iter() {
                    fields.set(k, v.clone());
                }
            }
        }
    }
}

impl InterceptorConfig for HostConfig {
    fn build(&self) -> Result<Box<dyn Interceptor>, BuildError> {
        let mut f = Fields::default();
        f.set(
            self.field.as_str(),
            FieldValue::text(tailrace_api::hostname()),
        );
        Ok(Box::new(Shared(Arc::new(f))))
    }
}

/// `type: static`: adds fixed fields to every record.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub fields: BTreeMap<String, String>,
}

impl InterceptorConfig for StaticConfig {
    fn validate(&self) -> Vec<ConfigIssue> {
        if self.fields.is_empty() {
            return vec![ConfigIssue::new(&["fields"], "fields is empty")];
        }
        Vec::new()
    }

    fn build(&self) -> Result<Box<dyn Interceptor>, BuildError> {
        let mut f = Fields::default();
        for (k, v) in &self.fields {
            f.set(k.as_str(), FieldValue::text(v.clone()));
        }
        Ok(Box::new(Shared(Arc::new(f))))
    }
}

/// `type: regex_filter`: keeps the records that match, or with
/// `exclude: true` removes them. Removed records are counted as filtered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexFilterConfig {
    pub pattern: String,
    #[serde(default)]
    pub exclude: bool,
    /// Match a field instead of the line.
    #[serde(default)]
    pub field: Option<String>,
}

#[derive(Debug)]
struct RegexFilter {
    regex: Regex,
    exclude: bool,
    field: Option<String>,
}

impl Interceptor for RegexFilter {
    fn intercept(&self, batch: &mut Batch) {
        let mut records = std::mem::take(&mut batch.records);
        records.retain(|r| {
            let matched = subject(batch, r, &self.field).is_some_and(|s| self.regex.is_match(&s));
            matched != self.exclude
        });
        batch.records = records;
    }
}

impl InterceptorConfig for RegexFilterConfig {
    fn validate(&self) -> Vec<ConfigIssue> {
        check_pattern(&self.pattern)
    }

    fn build(&self) -> Result<Box<dyn Interceptor>, BuildError> {
        Ok(Box::new(RegexFilter {
            regex: compile(&self.pattern).map_err(BuildError)?,
            exclude: self.exclude,
            field: self.field.clone(),
        }))
    }
}

/// `type: regex_extract`: the named groups of a match become fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexExtractConfig {
    pub pattern: String,
    #[serde(default)]
    pub field: Option<String>,
}

#[derive(Debug)]
struct RegexExtract {
    regex: Regex,
    names: Vec<(usize, Arc<str>)>,
    field: Option<String>,
}

impl Interceptor for RegexExtract {
    fn intercept(&self, batch: &mut Batch) {
        let mut records = std::mem::take(&mut batch.records);
        // One set of capture slots for the batch, not an allocation per
        // record; and each record's fields made once with room for these
        // and a couple more (a timestamp), so they do not grow.
        let mut slots = self.regex.capture_locations();
        for r in records.iter_mut() {
            let Some(s) = subject(batch, r, &self.field) else {
                continue;
            };
            if self.regex.captures_read(&mut slots, &s).is_none() {
                continue;
            }
            let fields = r
                .fields
                .get_or_insert_with(|| Box::new(Fields::with_capacity(self.names.len() + 2)));
            for (i, name) in &self.names {
                if let Some((start, end)) = slots.get(*i) {
                    // A slice of the line's own buffer: no copy.
                    fields.set(name.clone(), FieldValue::Text(s.slice(start..end)));
                }
            }
        }
        batch.records = records;
    }
}

impl InterceptorConfig for RegexExtractConfig {
    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = check_pattern(&self.pattern);
        if issues.is_empty()
            && compile(&self.pattern).is_ok_and(|r| r.capture_names().flatten().next().is_none())
        {
            issues.push(ConfigIssue::new(
                &["pattern"],
                "the pattern has no named group (?P<name>...) to extract",
            ));
        }
        issues
    }

    fn build(&self) -> Result<Box<dyn Interceptor>, BuildError> {
        let regex = compile(&self.pattern).map_err(BuildError)?;
        let names = regex
            .capture_names()
            .enumerate()
            .filter_map(|(i, n)| n.map(|n| (i, Arc::from(n))))
            .collect();
        Ok(Box::new(RegexExtract {
            regex,
            names,
            field: self.field.clone(),
        }))
    }
}

/// `type: timestamp`: sets the field `timestamp` (milliseconds since the
/// epoch; the Kafka message timestamp) to the read time, or parses it from
/// a field with a format: `rfc3339`, `unix`, `unix_ms`, or a chrono
/// strftime format (`%d/%b/%Y:%H:%M:%S %z`; without a zone it is UTC).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampConfig {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug)]
struct ReadTime;

impl Interceptor for ReadTime {
    fn intercept(&self, batch: &mut Batch) {
        let ms = batch
            .meta
            .read_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        batch.fields_mut().set("timestamp", FieldValue::Int(ms));
    }
}

#[derive(Debug)]
struct ParseTime {
    field: String,
    format: String,
    /// "timestamp", made once: a name per record would be an allocation.
    name: Arc<str>,
}

/// Parses a time; `None` when it does not match the format.
pub fn parse_time(text: &str, format: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDateTime};
    let text = text.trim();
    match format {
        "rfc3339" => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis()),
        "unix" => text.parse::<f64>().ok().map(|s| (s * 1000.0) as i64),
        "unix_ms" => text.parse::<i64>().ok(),
        f => DateTime::parse_from_str(text, f)
            .map(|t| t.timestamp_millis())
            .or_else(|_| {
                NaiveDateTime::parse_from_str(text, f).map(|t| t.and_utc().timestamp_millis())
            })
            .ok(),
    }
}

impl Interceptor for ParseTime {
    fn intercept(&self, batch: &mut Batch) {
        let mut records = std::mem::take(&mut batch.records);
        for r in records.iter_mut() {
            let parsed = match batch.field(r, &self.field) {
                Some(FieldValue::Text(b)) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|t| parse_time(t, &self.format)),
                Some(FieldValue::Int(i)) => Some(*i),
                None => None,
            };
            if let Some(ms) = parsed {
                r.fields_mut().set(self.name.clone(), FieldValue::Int(ms));
            }
        }
        batch.records = records;
    }
}

impl InterceptorConfig for TimestampConfig {
    fn validate(&self) -> Vec<ConfigIssue> {
        match (&self.field, &self.format) {
            (Some(_), None) => vec![ConfigIssue::new(&["format"], "a format is needed to parse the field (rfc3339, unix, unix_ms or a strftime format)")],
            (None, Some(_)) => vec![ConfigIssue::new(&["field"], "format is given but no field to parse")],
            _ => Vec::new(),
        }
    }

    fn build(&self) -> Result<Box<dyn Interceptor>, BuildError> {
        match (&self.field, &self.format) {
            (Some(field), Some(format)) => Ok(Box::new(ParseTime {
                field: field.clone(),
                format: format.clone(),
                name: "timestamp".into(),
            })),
            _ => Ok(Box::new(ReadTime)),
        }
    }
}

#[cfg(test)]
mod tests;
