//! What Kafka receives for a record: the topic and key from templates, the
//! value as the raw line or one JSON object, and metadata as headers.
//!
//! Templates are parsed once. Rendering writes into buffers the sink reuses
//! for every record, so a static topic, a raw value and no key cost no
//! allocation per record.

use bytes::Bytes;
use std::io::Write as _;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat};
use rdkafka::message::{Header, OwnedHeaders};
use serde::Deserialize;
use tailrace_api::{Batch, FieldValue, Record};

/// How the record's value is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// The line's bytes, exactly.
    #[default]
    Raw,
    /// One JSON object: `message`, `source`, `host`, `path` and `offset`
    /// for files, `timestamp`, and the fields at the top level. A line that
    /// is not UTF-8 is written base64-encoded, with
    /// `"message_encoding": "base64"`, so nothing is lost.
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Source,
    Host,
    Path,
    Offset,
    Field { name: String, default: String },
}

/// `logs-{source}`, `{user:-anonymous}`; `{{` and `}}` are literal braces.
/// Names: `source`, `host`, `path`, `offset`, or any field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Segment>);

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("unclosed {{ at character {} in {text:?}", i + 1))?;
                    let inner = &rest[..end];
                    for _ in 0..inner.chars().count() + 1 {
                        chars.next();
                    }
                    let (name, default) = match inner.split_once(":-") {
                        Some((n, d)) => (n, Some(d)),
                        None => (inner, None),
                    };
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '-')
                    {
                        return Err(format!("invalid name {name:?} in {{{inner}}} of {text:?}"));
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(match (name, default) {
                        ("source", None) => Segment::Source,
                        ("host", None) => Segment::Host,
                        ("path", None) => Segment::Path,
                        ("offset", None) => Segment::Offset,
                        (name, default) => Segment::Field {
                            name: name.into(),
                            default: default.unwrap_or("").into(),
                        },
                    });
                }
                '}' => {
                    return Err(format!(
                        "unmatched }} at character {} in {text:?} (write }}}} for a literal one)",
                        i + 1
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template(segments))
    }

    /// The text, when the template has no placeholder.
    pub fn as_static(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [Segment::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// The literal parts, for checking a topic's characters.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            _ => None,
        })
    }

    /// Appends the rendering to `out`. A missing field gives its default
    /// (empty unless given), never an error.
    pub fn render(&self, batch: &Batch, record: &Record, host: &str, out: &mut Vec<u8>) {
        for s in &self.0 {
            match s {
                Segment::Literal(l) => out.extend_from_slice(l.as_bytes()),
                Segment::Source => out.extend_from_slice(batch.meta.source.as_bytes()),
                Segment::Host => match batch.field(record, "host") {
                    Some(v) => write_value(v, out),
                    None => out.extend_from_slice(host.as_bytes()),
                },
                Segment::Path => {
                    if let Some(p) = &batch.meta.path {
                        out.extend_from_slice(p.as_os_str().as_encoded_bytes());
                    }
                }
                Segment::Offset => {
                    let _ = write!(out, "{}", record.offset);
                }
                Segment::Field { name, default } => match batch.field(record, name) {
                    Some(v) => write_value(v, out),
                    None => out.extend_from_slice(default.as_bytes()),
                },
            }
        }
    }
}

fn write_value(v: &FieldValue, out: &mut Vec<u8>) {
    match v {
        FieldValue::Text(b) => out.extend_from_slice(b),
        FieldValue::Int(i) => {
            let _ = write!(out, "{i}");
        }
    }
}

/// The event time in milliseconds: the `timestamp` field if an interceptor
/// set one, else the read time.
pub fn timestamp_ms(batch: &Batch, record: &Record) -> Option<i64> {
    match batch.field(record, "timestamp") {
        Some(FieldValue::Int(ms)) => Some(*ms),
        _ => batch
            .meta
            .read_at
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as i64),
    }
}

const CORE: &[&str] = &[
    "message",
    "message_encoding",
    "source",
    "host",
    "path",
    "offset",
    "timestamp",
];

/// Appends `s` as a JSON string, escaped as serde_json does it (public
/// for the benches only). Runs
/// with nothing to escape are found eight bytes at a time and copied with
/// one extend each; most lines have no byte to escape at all.
#[doc(hidden)]
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if !word_needs_escape(word) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            if needs_escape(b) {
                out.extend_from_slice(&bytes[run..i]);
                escape(out, b);
                run = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// A control character, `"` or `\`.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any of the eight bytes of `w` needs escaping: one below 0x20,
/// or one equal to `"` or `\` (the "has a byte less than" and "has a zero
/// byte" tests of Bit Twiddling Hacks; exact for any, not for which).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    below_space | zero(w ^ (ONES * b'"' as u64)) | zero(w ^ (ONES * b'\\' as u64)) != 0
}

fn escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

fn json_value(out: &mut Vec<u8>, v: &FieldValue) {
    match v {
        // Valid UTF-8 (almost always) is checked by the fast validator;
        // only what is not goes through the lossy one.
        FieldValue::Text(b) => match std::str::from_utf8(b) {
            Ok(text) => json_str(out, text),
            Err(_) => json_str(out, &String::from_utf8_lossy(b)),
        },
        FieldValue::Int(i) => {
            let _ = write!(out, "{i}");
        }
    }
}

thread_local! {
    /// The last millisecond formatted, as its quoted JSON string: records
    /// of a batch mostly share their millisecond, so most records copy it
    /// instead of formatting a date (which also allocated).
    static LAST_TIME: std::cell::RefCell<(Option<i64>, Vec<u8>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

/// Appends the JSON object of a record to `out`.
pub fn json(batch: &Batch, record: &Record, host: &str, out: &mut Vec<u8>) {
    out.push(b'{');
    out.extend_from_slice(b"\"message\":");
    match std::str::from_utf8(&record.payload) {
        Ok(text) => json_str(out, text),
        Err(_) => {
            json_str(
                out,
                &base64::engine::general_purpose::STANDARD.encode(&record.payload),
            );
            out.extend_from_slice(b",\"message_encoding\":\"base64\"");
        }
    }
    out.extend_from_slice(b",\"source\":");
    json_str(out, &batch.meta.source);
    out.extend_from_slice(b",\"host\":");
    match batch.field(record, "host") {
        Some(v) => json_value(out, v),
        None => json_str(out, host),
    }
    if let Some(path) = &batch.meta.path {
        out.extend_from_slice(b",\"path\":");
        json_str(out, &path.to_string_lossy());
        let _ = write!(out, ",\"offset\":{}", record.offset);
    }
    if let Some(ms) = timestamp_ms(batch, record) {
        LAST_TIME.with(|last| {
            let mut last = last.borrow_mut();
            if last.0 != Some(ms) {
                last.1.clear();
                if let Some(t) = DateTime::from_timestamp_millis(ms) {
                    let _ = write!(
                        last.1,
                        "\"{}\"",
                        t.to_rfc3339_opts(SecondsFormat::Millis, true)
                    );
                }
                last.0 = Some(ms);
            }
            if !last.1.is_empty() {
                out.extend_from_slice(b",\"timestamp\":");
                out.extend_from_slice(&last.1);
            }
        });
    }
    let own = record.fields.as_deref();
    let shared = batch.fields.as_deref();
    for (name, value) in shared
        .iter()
        .flat_map(|f| f.iter())
        .filter(|(n, _)| own.is_none_or(|o| o.get(n).is_none()))
        .chain(own.iter().flat_map(|f| f.iter()))
    {
        if CORE.contains(&name) {
            continue;
        }
        out.push(b',');
        json_str(out, name);
        out.push(b':');
        json_value(out, value);
    }
    out.push(b'}');
}

/// A record's Kafka headers, as produced and as kept in the spool.
pub type HeaderList = Vec<(String, Bytes)>;

/// The name of the event id header.
pub const EVENT_ID: &str = "tailrace.id";

/// Appends the record's metadata as headers: source, host, and for files
/// path and offset, with room for the event id after them. The values
/// the records of a batch share are made once (see [`SharedValues`]) and
/// cloned per record, which counts a reference instead of copying; a
/// `host` field is the record's own bytes.
pub fn headers(batch: &Batch, record: &Record, host: &str, out: &mut HeaderList) {
    out.reserve_exact(5);
    let (source, host_value, path) = SHARED_VALUES.with(|v| {
        let mut v = v.borrow_mut();
        let v = v.of(batch, host);
        (v.source.clone(), v.host.clone(), v.path.clone())
    });
    out.push(("source".into(), source));
    let host_value = match batch.field(record, "host") {
        Some(FieldValue::Text(b)) => b.clone(),
        Some(v) => {
            let mut b = Vec::new();
            write_value(v, &mut b);
            Bytes::from(b)
        }
        None => host_value,
    };
    out.push(("host".into(), host_value));
    if let Some(path) = path {
        out.push(("path".into(), path));
        let mut digits = [0u8; 20];
        out.push((
            "offset".into(),
            Bytes::copy_from_slice(decimal(record.offset, &mut digits)),
        ));
    }
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

thread_local! {
    /// The header values of the last batch headed on this thread.
    static SHARED_VALUES: std::cell::RefCell<SharedValues> =
        std::cell::RefCell::new(SharedValues::default());
}

/// Header values all the records of a batch have (its source and path,
/// the sink's host), kept while batches from the same place follow each
/// other; compared by content, so they are never stale.
#[derive(Default)]
struct SharedValues {
    source: Bytes,
    host: Bytes,
    path: Option<Bytes>,
}

impl SharedValues {
    fn of(&mut self, batch: &Batch, host: &str) -> &SharedValues {
        let source = batch.meta.source.as_bytes();
        if self.source != source {
            self.source = Bytes::copy_from_slice(source);
        }
        if self.host != host.as_bytes() {
            self.host = Bytes::copy_from_slice(host.as_bytes());
        }
        let path = batch
            .meta
            .path
            .as_deref()
            .map(|p| p.as_os_str().as_encoded_bytes());
        if self.path.as_deref() != path {
            self.path = path.map(Bytes::copy_from_slice);
        }
        self
    }
}

/// The headers as librdkafka takes them.
pub fn owned_headers(list: &[(String, Bytes)]) -> OwnedHeaders {
    list.iter().fold(
        OwnedHeaders::new_with_capacity(list.len()),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(&value[..]),
            })
        },
    )
}

/// Event ids: the same for a line each time it is produced again.
///
/// A record read from a file is `f` + its stream (device, inode, first
/// line) + its offset, in hex: reading the file again after a crash gives
/// the same id. A record of a source that cannot read it twice gets `s` +
/// this run's random number + a counter; the spool keeps the id, so a
/// replay sends the one first sent.
pub struct EventIds {
    run: u64,
    next: u64,
}

impl EventIds {
    pub fn new() -> EventIds {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded randomly per process.
        let run = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        EventIds { run, next: 0 }
    }

    pub fn next(&mut self, batch: &Batch, record: &Record) -> Bytes {
        let (kind, high, low) = match batch.meta.stream {
            Some(stream) => (b'f', stream, record.offset),
            None => {
                self.next += 1;
                (b's', self.run, self.next)
            }
        };
        // One allocation of the exact size, no formatting machinery.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; 33];
        id[0] = kind;
        for (i, n) in [high, low].into_iter().enumerate() {
            for d in 0..16 {
                id[1 + i * 16 + d] = HEX[(n >> (60 - 4 * d) & 0xf) as usize];
            }
        }
        Bytes::copy_from_slice(&id)
    }
}

impl Default for EventIds {
    fn default() -> Self {
        EventIds::new()
    }
}

/// What a sink with these settings sends for a record, rendered without
/// a producer (`tailrace test`).
pub fn render(
    topic: &str,
    key: Option<&str>,
    encoding: Encoding,
    batch: &Batch,
    record: &Record,
) -> tailrace_api::Rendered {
    let host = tailrace_api::hostname();
    let mut rendered = tailrace_api::Rendered::default();
    if let Ok(t) = Template::parse(topic) {
        let mut out = Vec::new();
        t.render(batch, record, &host, &mut out);
        rendered.topic = Some(String::from_utf8_lossy(&out).into_owned());
    }
    if let Some(Ok(k)) = key.map(Template::parse) {
        let mut out = Vec::new();
        k.render(batch, record, &host, &mut out);
        rendered.key = Some(out);
    }
    match encoding {
        Encoding::Raw => rendered.value = record.payload.to_vec(),
        Encoding::Json => json(batch, record, &host, &mut rendered.value),
    }
    rendered
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use tailrace_api::{Ack, BatchMeta, Fields};

    use super::*;

    fn batch(line: &[u8], fields: &[(&str, FieldValue)], shared: &[(&str, &str)]) -> Batch {
        let meta = Arc::new(BatchMeta {
            source: "app".into(),
            path: Some(Arc::from(std::path::Path::new("/var/log/app.log"))),
            stream: None,
            read_at: UNIX_EPOCH + Duration::from_millis(1_795_255_200_250),
        });
        let mut r = Record::new(Bytes::copy_from_slice(line), 42);
        for (k, v) in fields {
            r.fields_mut().set(*k, v.clone());
        }
        let mut b = Batch::new(meta, vec![r], Ack::none());
        if !shared.is_empty() {
            let mut f = Fields::default();
            for (k, v) in shared {
                f.set(*k, FieldValue::text(v.to_string()));
            }
            b.fields = Some(Arc::new(f));
        }
        b
    }

    fn render(template: &str, b: &Batch) -> String {
        let mut out = Vec::new();
        Template::parse(template)
            .unwrap()
            .render(b, &b.records[0], "web-1", &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn templates() {
        let b = batch(
            b"x",
            &[("user", FieldValue::text("ann")), ("n", FieldValue::Int(7))],
            &[("env", "prod")],
        );
        let check = |t: &str, want: &str| assert_eq!(render(t, &b), want, "{t}");
        check("logs", "logs");
        check("logs-{source}", "logs-app");
        check("{host}/{env}/{user}", "web-1/prod/ann");
        check("{missing}", "");
        check("{missing:-anon}", "anon");
        check("{user:-anon}", "ann");
        check("n{n}-{offset}", "n7-42");
        check("{{literal}}", "{literal}");
        check("{path}", "/var/log/app.log");
        assert_eq!(Template::parse("logs").unwrap().as_static(), Some("logs"));
        assert_eq!(Template::parse("logs-{source}").unwrap().as_static(), None);
        for bad in ["{unclosed", "a}b", "{}", "{a b}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    fn to_json(b: &Batch) -> serde_json::Value {
        let mut out = Vec::new();
        json(b, &b.records[0], "web-1", &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn json_carries_every_field() {
        let b = batch(
            b"hello \"world\"",
            &[
                ("user", FieldValue::text("ann")),
                ("timestamp", FieldValue::Int(1_795_255_200_000)),
            ],
            &[("env", "prod")],
        );
        assert_eq!(
            to_json(&b),
            serde_json::json!({
                "message": "hello \"world\"", "source": "app", "host": "web-1", "path": "/var/log/app.log",
                "offset": 42, "timestamp": "2026-11-21T10:00:00.000Z", "env": "prod", "user": "ann"
            })
        );
    }

    #[test]
    fn the_timestamp_cache_formats_each_millisecond_as_chrono_does() {
        let check = |ms: i64| {
            let b = batch(b"x", &[("timestamp", FieldValue::Int(ms))], &[]);
            let want = DateTime::from_timestamp_millis(ms)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
            assert_eq!(
                to_json(&b).get("timestamp").and_then(|v| v.as_str()),
                want.as_deref(),
                "{ms}"
            );
        };
        // Repeats hit the cache; a change, one out of chrono's range (no
        // timestamp at all) and the one before it again must not be stale.
        for ms in [
            1_795_255_200_000,
            1_795_255_200_000,
            1_795_255_200_001,
            0,
            -1,
            i64::MAX,
            i64::MAX,
            1_795_255_200_001,
        ] {
            check(ms);
        }
    }

    #[test]
    fn the_escaper_writes_what_serde_json_writes() {
        let mut cases: Vec<String> = (0u8..0x80)
            .map(|b| format!("ab{c}cdefghij{c}", c = b as char))
            .collect();
        for at in 0..17 {
            for c in ["\"", "\\", "\n", "\u{1f}", "é", "\u{7f}"] {
                let mut s = "x".repeat(17);
                s.replace_range(at..at + 1, c);
                cases.push(s);
            }
        }
        cases.extend(
            [
                "",
                "a",
                "plain ascii, longer than a word",
                "\u{2028}日本語\"\\\r\u{8}\u{c}",
            ]
            .map(String::from),
        );
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2_000 {
            let s: String = (0..(x % 40))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from_u32(
                        (x % 0x1_0000) as u32 % if x.is_multiple_of(3) { 0x80 } else { 0xd7ff },
                    )
                    .unwrap_or('?')
                })
                .collect();
            cases.push(s);
        }
        for s in cases {
            let mut out = b"prefix".to_vec();
            json_str(&mut out, &s);
            let want = format!("prefix{}", serde_json::to_string(&s).unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), want, "{s:?}");
        }
    }

    #[test]
    fn header_values_follow_the_batch_and_event_ids_keep_their_form() {
        let mut b = batch(b"x", &[], &[]);
        let mut list = HeaderList::new();
        headers(&b, &b.records[0], "web-1", &mut list);
        let text = |l: &HeaderList| -> Vec<(String, String)> {
            l.iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect()
        };
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            text(&list),
            pairs(&[
                ("source", "app"),
                ("host", "web-1"),
                ("path", "/var/log/app.log"),
                ("offset", "42")
            ])
        );
        // Another batch, host and offset on the same thread: nothing stale.
        b.meta = Arc::new(BatchMeta {
            source: "net".into(),
            path: None,
            stream: None,
            read_at: b.meta.read_at,
        });
        b.records[0]
            .fields_mut()
            .set("host", FieldValue::text("h2"));
        list.clear();
        headers(&b, &b.records[0], "web-2", &mut list);
        assert_eq!(text(&list), pairs(&[("source", "net"), ("host", "h2")]));
        let mut digits = [0; 20];
        for n in [0, 7, 10, 42, 1_000_001, u64::MAX] {
            assert_eq!(decimal(n, &mut digits), n.to_string().as_bytes());
        }

        let mut ids = EventIds::new();
        let s1 = ids.next(&b, &b.records[0]);
        assert_eq!(s1, format!("s{:016x}{:016x}", ids.run, 1).as_bytes());
        let stream = 0x0123_4567_89ab_cdefu64;
        b.meta = Arc::new(BatchMeta {
            source: "net".into(),
            path: None,
            stream: Some(stream),
            read_at: b.meta.read_at,
        });
        assert_eq!(
            ids.next(&b, &b.records[0]),
            format!("f{stream:016x}{:016x}", 42u64).as_bytes()
        );
    }

    #[test]
    fn json_is_lossless_for_non_utf8() {
        let line = [b'a', 0xff, 0xfe, b'\n', 0];
        let v = to_json(&batch(&line, &[], &[]));
        assert_eq!(v["message_encoding"], "base64");
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["message"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, line);
        assert_eq!(
            v["timestamp"], "2026-11-21T10:00:00.250Z",
            "read time when no timestamp field"
        );
    }

    #[test]
    fn record_fields_override_shared_ones_and_core_names_are_not_repeated() {
        let b = batch(
            b"x",
            &[
                ("env", FieldValue::text("dev")),
                ("host", FieldValue::text("h2")),
            ],
            &[("env", "prod")],
        );
        let v = to_json(&b);
        assert_eq!(v["env"], "dev");
        assert_eq!(v["host"], "h2");
        let mut out = Vec::new();
        json(&b, &b.records[0], "web-1", &mut out);
        assert_eq!(String::from_utf8_lossy(&out).matches("\"host\"").count(), 1);
    }
}
