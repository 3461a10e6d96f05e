//! Container runtime log formats: unwrapping the lines a runtime wrote.
//!
//! `cri` (containerd, CRI-O) writes `<RFC3339Nano time> <stdout|stderr>
//! <P|F> <message>`; a message the runtime cut is written as `P` (partial)
//! records up to one `F` (full). `docker` (the json-file driver) writes one
//! JSON object per line, `{"log":"...\n","stream":"stdout","time":"..."}`;
//! a `log` without its trailing newline is a part of a longer message (the
//! 16 KiB splits). `auto` decides per file from its first line.
//!
//! The [`Decoder`] works on the lines the splitter cut, in order. Joined
//! parts become one record at the offset of the first part; while parts are
//! held, [`Decoder::held_offset`] keeps the position to save at that first
//! part, so a restart reads the parts again and joins them again. A line
//! that does not parse is forwarded as it was and counted, never dropped.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tailrace_api::{FieldValue, Record};

use crate::split::{LinePolicy, Split};

/// How the lines of a file are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Each line is a record as it is.
    #[default]
    Raw,
    /// containerd and CRI-O: `time stream P|F message`.
    Cri,
    /// Docker's json-file driver: `{"log","stream","time"}` per line.
    Docker,
    /// `cri` or `docker`, recognised from the first line of each file;
    /// `raw` if it is neither.
    Auto,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Cri => "cri",
            Format::Docker => "docker",
            Format::Auto => "auto",
        }
    }
}

/// A line unwrapped.
struct Parsed<'a> {
    message: Message<'a>,
    /// `stdout`, `stderr`, or empty when the line does not say.
    stream: &'static [u8],
    time_ms: Option<i64>,
    /// More parts of the same message follow.
    partial: bool,
}

enum Message<'a> {
    /// A slice of the line.
    Slice(usize, usize),
    /// Unescaped from JSON.
    Owned(std::borrow::Cow<'a, str>),
}

/// The parts of a message gathered so far.
struct Held {
    offset: u64,
    message: BytesMut,
    stream: &'static [u8],
    time_ms: Option<i64>,
    /// Parts past `max_line_bytes` are discarded (truncate policy).
    truncated: bool,
    touched: std::time::Instant,
}

/// Unwraps the lines of one file.
pub(crate) struct Decoder {
    /// `Auto` until the first line decided.
    format: Format,
    max_line_bytes: usize,
    policy: LinePolicy,
    held: Option<Held>,
    names: Arc<Names>,
}

/// Field names, allocated once per source.
pub(crate) struct Names {
    stream: Arc<str>,
    timestamp: Arc<str>,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            stream: "stream".into(),
            timestamp: "timestamp".into(),
        }
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("format", &self.format)
            .field("held", &self.held.as_ref().map(|h| h.offset))
            .finish()
    }
}

impl Decoder {
    /// `None` for `raw`: nothing to unwrap.
    pub(crate) fn new(
        format: Format,
        max_line_bytes: usize,
        policy: LinePolicy,
        names: Arc<Names>,
    ) -> Option<Decoder> {
        (format != Format::Raw).then(|| Decoder {
            format,
            max_line_bytes: max_line_bytes.max(1),
            policy,
            held: None,
            names,
        })
    }

    /// Where the first held part starts: the position may not pass it.
    pub(crate) fn held_offset(&self) -> Option<u64> {
        self.held.as_ref().map(|h| h.offset)
    }

    pub(crate) fn held_since(&self) -> Option<std::time::Instant> {
        self.held.as_ref().map(|h| h.touched)
    }

    /// Unwraps `lines[from..]` in place (joined parts become one record).
    pub(crate) fn decode(&mut self, lines: &mut Vec<Record>, from: usize, report: &mut Split) {
        if from == lines.len() {
            return;
        }
        let raw: Vec<Record> = lines.drain(from..).collect();
        for line in raw {
            self.line(line, lines, report);
        }
        if let Some(h) = &mut self.held {
            h.touched = std::time::Instant::now();
        }
    }

    /// Sends the parts held so far as one record (the file ends without
    /// the final part).
    pub(crate) fn flush(&mut self, out: &mut Vec<Record>) {
        if let Some(h) = self.held.take() {
            out.push(self.record(h));
        }
    }

    fn line(&mut self, line: Record, out: &mut Vec<Record>, report: &mut Split) {
        if self.format == Format::Auto {
            self.format = if parse_docker(&line.payload).is_some() {
                Format::Docker
            } else if parse_cri(&line.payload).is_some() {
                Format::Cri
            } else {
                Format::Raw
            };
        }
        let parsed = match self.format {
            Format::Cri => parse_cri(&line.payload),
            Format::Docker => parse_docker(&line.payload),
            Format::Raw | Format::Auto => {
                out.push(line);
                return;
            }
        };
        let Some(p) = parsed else {
            // Forwarded as it was, after what was held before it.
            report.parse_errors += 1;
            self.flush(out);
            out.push(line);
            return;
        };
        let message: &[u8] = match &p.message {
            Message::Slice(a, b) => &line.payload[*a..*b],
            Message::Owned(s) => s.as_bytes(),
        };
        if let Some(h) = self.held.as_mut() {
            if h.truncated {
                // Discarding the rest of a message cut by the truncate policy.
            } else if h.message.len() + message.len() <= self.max_line_bytes {
                h.message.extend_from_slice(message);
            } else {
                match self.policy {
                    LinePolicy::Truncate => {
                        let room = self.max_line_bytes - h.message.len();
                        h.message.extend_from_slice(&message[..room]);
                        h.truncated = true;
                        report.truncated_lines += 1;
                    }
                    LinePolicy::Split => {
                        // The message so far goes alone; this part begins
                        // the next record.
                        report.split_lines += 1;
                        let done = self.held.take().expect("held");
                        out.push(self.record(done));
                        self.hold(&line, &p, message);
                    }
                }
            }
            if !p.partial {
                let done = self.held.take().expect("held");
                out.push(self.record(done));
            }
            return;
        }
        if p.partial {
            self.hold(&line, &p, message);
            return;
        }
        let payload = match p.message {
            Message::Slice(a, b) => line.payload.slice(a..b),
            Message::Owned(s) => Bytes::from(s.into_owned()),
        };
        let mut r = Record::new(payload, line.offset);
        self.set_fields(&mut r, p.stream, p.time_ms);
        out.push(r);
    }

    fn hold(&mut self, line: &Record, p: &Parsed, message: &[u8]) {
        let mut buf = BytesMut::with_capacity(message.len() * 2);
        buf.extend_from_slice(&message[..message.len().min(self.max_line_bytes)]);
        self.held = Some(Held {
            offset: line.offset,
            message: buf,
            stream: p.stream,
            time_ms: p.time_ms,
            truncated: false,
            touched: std::time::Instant::now(),
        });
    }

    fn record(&self, h: Held) -> Record {
        let mut r = Record::new(h.message.freeze(), h.offset);
        self.set_fields(&mut r, h.stream, h.time_ms);
        r
    }

    fn set_fields(&self, r: &mut Record, stream: &'static [u8], time_ms: Option<i64>) {
        let f = r.fields_mut();
        if !stream.is_empty() {
            f.set(
                self.names.stream.clone(),
                FieldValue::Text(Bytes::from_static(stream)),
            );
        }
        if let Some(ms) = time_ms {
            f.set(self.names.timestamp.clone(), FieldValue::Int(ms));
        }
    }
}

/// `2026-11-21T10:00:00.123456789Z stdout F message`
fn parse_cri(line: &[u8]) -> Option<Parsed<'static>> {
    let sp1 = memchr::memchr(b' ', line)?;
    let time_ms = rfc3339_ms(&line[..sp1])?;
    let rest = &line[sp1 + 1..];
    let sp2 = memchr::memchr(b' ', rest)?;
    let stream = &rest[..sp2];
    if stream != b"stdout" && stream != b"stderr" {
        return None;
    }
    let rest = &rest[sp2 + 1..];
    // The tag is a list of `:`-separated tags; the first is P or F. An
    // empty message may lose the space after the tag.
    let tag_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    let partial = match rest[..tag_end].split(|&b| b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return None,
    };
    let start = (sp1 + 1 + sp2 + 1 + tag_end + 1).min(line.len());
    Some(Parsed {
        message: Message::Slice(start, line.len()),
        stream: stream_name(stream),
        time_ms: Some(time_ms),
        partial,
    })
}

/// Milliseconds since the epoch of an RFC 3339 time. The runtimes' own
/// form, `2026-11-21T10:00:00.123456789Z`, is read directly (once per
/// line, so it is on the hot path); any other offset or form goes through
/// chrono.
fn rfc3339_ms(t: &[u8]) -> Option<i64> {
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        t.get(r)?.iter().try_fold(0i64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let fast = t.len() >= 20
        && t[4] == b'-'
        && t[7] == b'-'
        && t[10] == b'T'
        && t[13] == b':'
        && t[16] == b':'
        && t.last() == Some(&b'Z');
    if !fast {
        let text = std::str::from_utf8(t).ok()?;
        return chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|d| d.timestamp_millis());
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, sec) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let frac = &t[19..t.len() - 1];
    let ms = match frac {
        [] => 0,
        [b'.', rest @ ..] if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) => (0..3)
            .map(|i| rest.get(i).map_or(0, |&b| i64::from(b - b'0')))
            .fold(0, |n, d| n * 10 + d),
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

/// The stream name as one of two static strings: its field costs no copy.
fn stream_name(stream: &[u8]) -> &'static [u8] {
    if stream == b"stdout" {
        b"stdout"
    } else {
        b"stderr"
    }
}

#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    stream: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    time: Option<std::borrow::Cow<'a, str>>,
}

/// `{"log":"message\n","stream":"stdout","time":"2026-11-21T10:00:00.1Z"}`
fn parse_docker(line: &[u8]) -> Option<Parsed<'_>> {
    if line.first() != Some(&b'{') {
        return None;
    }
    let d: DockerLine = serde_json::from_slice(line).ok()?;
    let mut log = d.log;
    let partial = !log.ends_with('\n');
    if !partial {
        match &mut log {
            std::borrow::Cow::Borrowed(s) => *s = &s[..s.len() - 1],
            std::borrow::Cow::Owned(s) => {
                s.pop();
            }
        }
    }
    let stream: &'static [u8] = match d.stream.as_deref() {
        Some("stdout") => b"stdout",
        Some("stderr") => b"stderr",
        _ => b"",
    };
    let time_ms = d.time.as_deref().and_then(|t| rfc3339_ms(t.as_bytes()));
    Some(Parsed {
        message: Message::Owned(log),
        stream,
        time_ms,
        partial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `input` into lines, decodes them in `format` and compares
    /// (payload, line number of its first part, stream field, timestamp
    /// field), the parse errors and the line the position may not pass.
    fn check(
        format: Format,
        max: usize,
        policy: LinePolicy,
        input: &str,
        expected: &[(&str, u64, &str, Option<i64>)],
        parse_errors: u64,
        held_at: Option<u64>,
    ) {
        let mut d = Decoder::new(format, max, policy, Arc::default()).expect("not raw");
        let mut lines = Vec::new();
        let mut offsets = Vec::new();
        let mut at = 0u64;
        for l in input.split_inclusive('\n') {
            let body = l.strip_suffix('\n').unwrap_or(l);
            lines.push(Record::new(Bytes::copy_from_slice(body.as_bytes()), at));
            offsets.push(at);
            at += l.len() as u64;
        }
        let line_of = |offset: u64| offsets.iter().position(|&o| o == offset).unwrap() as u64;
        let mut report = Split::default();
        d.decode(&mut lines, 0, &mut report);
        let got: Vec<(String, u64, String, Option<i64>)> = lines
            .iter()
            .map(|r| {
                (
                    String::from_utf8_lossy(&r.payload).into_owned(),
                    line_of(r.offset),
                    r.field("stream").map(|v| v.to_string()).unwrap_or_default(),
                    match r.field("timestamp") {
                        Some(FieldValue::Int(ms)) => Some(*ms),
                        _ => None,
                    },
                )
            })
            .collect();
        let want: Vec<(String, u64, String, Option<i64>)> = expected
            .iter()
            .map(|(p, o, s, t)| (p.to_string(), *o, s.to_string(), *t))
            .collect();
        assert_eq!(got, want, "{format:?} {input:?}");
        assert_eq!(
            report.parse_errors, parse_errors,
            "parse errors in {input:?}"
        );
        assert_eq!(d.held_offset().map(line_of), held_at, "held in {input:?}");
    }

    const T: &str = "2026-11-21T10:00:00.123456789Z";
    const MS: Option<i64> = Some(1_795_255_200_123);

    #[test]
    fn cri() {
        use LinePolicy::*;
        let c = |s: &str| s.replace("@T", T);
        // whole records, both streams, an empty message
        let input = c("@T stdout F hello world\n@T stderr F oops\n@T stdout F \n@T stdout F\n");
        check(
            Format::Cri,
            100,
            Split,
            &input,
            &[
                ("hello world", 0, "stdout", MS),
                ("oops", 1, "stderr", MS),
                ("", 2, "stdout", MS),
                ("", 3, "stdout", MS),
            ],
            0,
            None,
        );
        // three partial records joined at the offset of the first
        let input = c("@T stdout P ab\n@T stdout P cd\n@T stdout F ef\n@T stdout F next\n");
        check(
            Format::Cri,
            100,
            Split,
            &input,
            &[("abcdef", 0, "stdout", MS), ("next", 3, "stdout", MS)],
            0,
            None,
        );
        // parts still waiting for their F: the position stays at the first
        let input = c("@T stdout F one\n@T stdout P ab\n@T stdout P cd\n");
        check(
            Format::Cri,
            100,
            Split,
            &input,
            &[("one", 0, "stdout", MS)],
            0,
            Some(1),
        );
        // lines that do not parse are forwarded raw and counted, after the
        // parts held before them
        let input = c("garbage\n@T stdout P ab\n@T stdlog F x\n2026-13-99T00:00:00Z stdout F x\n@T stdout X y\n");
        check(
            Format::Cri,
            100,
            Split,
            &input,
            &[
                ("garbage", 0, "", None),
                ("ab", 1, "stdout", MS),
                (&c("@T stdlog F x"), 2, "", None),
                ("2026-13-99T00:00:00Z stdout F x", 3, "", None),
                (&c("@T stdout X y"), 4, "", None),
            ],
            4,
            None,
        );
        // tags after the first are allowed
        check(
            Format::Cri,
            100,
            Split,
            &c("@T stdout F:x y\n"),
            &[("y", 0, "stdout", MS)],
            0,
            None,
        );
        // joins are bounded by max_line_bytes
        let input = c("@T stdout P abcd\n@T stdout P efgh\n@T stdout F ij\n");
        check(
            Format::Cri,
            6,
            Split,
            &input,
            &[("abcd", 0, "stdout", MS), ("efghij", 1, "stdout", MS)],
            0,
            None,
        );
        check(
            Format::Cri,
            6,
            Truncate,
            &input,
            &[("abcdef", 0, "stdout", MS)],
            0,
            None,
        );
    }

    #[test]
    fn docker() {
        use LinePolicy::*;
        let t = "2026-11-21T10:00:00.123456789Z";
        let line = |log: &str, stream: &str| {
            format!(
                "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"{t}\"}}\n",
                serde_json::to_string(log).unwrap()
            )
        };
        // unwrapped exactly: escapes, quotes, unicode, the newline removed
        let msg = "say \"hi\"\t\\ to ünïcode \u{1}";
        let input = line(&format!("{msg}\n"), "stdout") + &line("\n", "stderr");
        check(
            Format::Docker,
            100,
            Split,
            &input,
            &[(msg, 0, "stdout", MS), ("", 1, "stderr", MS)],
            0,
            None,
        );
        // a 16 KiB split: parts without a newline are joined
        let a = "x".repeat(16384);
        let input = line(&a, "stdout") + &line(&a, "stdout") + &line("end\n", "stdout");
        let joined = format!("{a}{a}end");
        check(
            Format::Docker,
            1 << 20,
            Split,
            &input,
            &[(&joined, 0, "stdout", MS)],
            0,
            None,
        );
        check(
            Format::Docker,
            1 << 20,
            Split,
            &line(&a, "stdout"),
            &[],
            0,
            Some(0),
        );
        // not JSON, or JSON without a log: forwarded raw and counted
        check(
            Format::Docker,
            100,
            Split,
            "plain\n{\"msg\":\"x\"}\n{\"log\":\n",
            &[
                ("plain", 0, "", None),
                ("{\"msg\":\"x\"}", 1, "", None),
                ("{\"log\":", 2, "", None),
            ],
            3,
            None,
        );
    }

    #[test]
    fn runtime_times_read_directly_agree_with_chrono() {
        for t in [
            "2026-11-21T10:00:00.123456789Z",
            "2026-11-21T10:00:00Z",
            "2026-11-21T10:00:00.1Z",
            "1970-01-01T00:00:00.000Z",
            "2000-02-29T23:59:59.999999Z",
            "2024-12-31T00:00:00.5Z",
            "1969-12-31T23:59:59.900Z",
        ] {
            let want = chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis();
            assert_eq!(rfc3339_ms(t.as_bytes()), Some(want), "{t}");
        }
        // other offsets go through chrono; nonsense is refused
        assert_eq!(
            rfc3339_ms(b"2026-11-21T11:00:00.123+01:00"),
            Some(1_795_255_200_123)
        );
        for bad in ["2026-13-21T10:00:00Z", "2026-11-21T10:00:00.Z", "x"] {
            assert_eq!(rfc3339_ms(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn auto_decides_per_file_from_its_first_line() {
        use LinePolicy::*;
        let cri = format!("{T} stdout F a\n");
        check(
            Format::Auto,
            100,
            Split,
            &cri,
            &[("a", 0, "stdout", MS)],
            0,
            None,
        );
        let docker = "{\"log\":\"a\\n\",\"stream\":\"stderr\"}\n";
        check(
            Format::Auto,
            100,
            Split,
            docker,
            &[("a", 0, "stderr", None)],
            0,
            None,
        );
        // a raw file stays raw: nothing is counted as a parse error
        let raw = format!("plain\n{T} stdout F a\n");
        check(
            Format::Auto,
            100,
            Split,
            &raw,
            &[("plain", 0, "", None), (&cri[..cri.len() - 1], 1, "", None)],
            0,
            None,
        );
    }
}
