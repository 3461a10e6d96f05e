//! Splitting read chunks into lines.
//!
//! Lines are slices of the chunk they were read in (no copy per line). The
//! newline is not part of the payload; a carriage return before it is kept,
//! so the bytes that arrive are exactly the bytes of the line. A multiline
//! event is the bytes of its lines and the newlines between them: a slice
//! too, unless it spans two reads.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tailrace_api::Record;

use crate::format::Decoder;
use crate::multiline::Multiline;

/// What to do with a line longer than `max_line_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinePolicy {
    /// Send it as several records of at most `max_line_bytes` each.
    #[default]
    Split,
    /// Send its first `max_line_bytes` and discard the rest (counted).
    Truncate,
}

/// Splits the complete lines out of a growing buffer, and joins them into
/// multiline events when a [`Multiline`] rule is set.
#[derive(Debug)]
pub struct Splitter {
    max_line_bytes: usize,
    policy: LinePolicy,
    /// Offset in the file of the first byte of `pending`.
    pub line_start: u64,
    /// Discarding the rest of a truncated line until its newline.
    skipping: bool,
    multiline: Option<Arc<Multiline>>,
    /// The multiline event being gathered.
    held: Option<Group>,
    /// Unwraps container runtime formats (`None`: raw lines).
    decoder: Option<Decoder>,
}

/// What one call to [`Splitter::split`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Offset just past the last byte consumed and sent: the position to
    /// checkpoint once the records are acknowledged. A multiline event
    /// still being gathered is not consumed: the offset is its start.
    pub end_offset: u64,
    /// Over-long lines (or multiline events) cut into pieces.
    pub split_lines: u64,
    /// Over-long lines (or multiline events) whose tail was discarded.
    pub truncated_lines: u64,
    /// Lines that did not parse in the file's format, forwarded as they were.
    pub parse_errors: u64,
}

/// A multiline event being gathered: complete lines, joined by their
/// newlines.
#[derive(Debug)]
struct Group {
    offset: u64,
    /// The event while it lies in one chunk: a slice of it, no copy.
    shared: Bytes,
    /// The event once it spans chunks: copied, once.
    owned: Option<BytesMut>,
    /// Where the event starts in the chunk being split, while it lies in it.
    in_chunk: Option<usize>,
    /// Lines were discarded by the truncate policy; the rest are too.
    truncated: bool,
    changed: bool,
    touched: Instant,
}

impl Group {
    fn new(offset: u64, chunk: &Bytes, start: usize, end: usize) -> Group {
        Group {
            offset,
            shared: chunk.slice(start..end),
            owned: None,
            in_chunk: Some(start),
            truncated: false,
            changed: true,
            touched: Instant::now(),
        }
    }

    fn len(&self) -> usize {
        self.owned.as_ref().map_or(self.shared.len(), |o| o.len())
    }

    /// Adds the line `chunk[start..end]`, which follows the group's last
    /// line in the file.
    fn append(&mut self, chunk: &Bytes, start: usize, end: usize) {
        self.changed = true;
        if let Some(first) = self.in_chunk {
            // Lines of one chunk are adjacent: the event is one slice.
            self.shared = chunk.slice(first..end);
            return;
        }
        let shared = &self.shared;
        let owned = self
            .owned
            .get_or_insert_with(|| BytesMut::from(&shared[..]));
        owned.extend_from_slice(b"\n");
        owned.extend_from_slice(&chunk[start..end]);
    }

    fn into_record(self) -> Record {
        Record::new(
            self.owned.map_or(self.shared, BytesMut::freeze),
            self.offset,
        )
    }
}

/// What lines are cut from: a file's read buffer (`Bytes` from the
/// source's pool) or a `BytesMut`. Every cut is a slice of it, no copy.
pub trait Buffer: AsRef<[u8]> {
    fn len(&self) -> usize;
    /// The first `at` bytes, taken off the front.
    fn cut(&mut self, at: usize) -> Bytes;
    fn clear(&mut self);
}

impl Buffer for Bytes {
    fn len(&self) -> usize {
        Bytes::len(self)
    }
    fn cut(&mut self, at: usize) -> Bytes {
        self.split_to(at)
    }
    fn clear(&mut self) {
        Bytes::clear(self)
    }
}

impl Buffer for BytesMut {
    fn len(&self) -> usize {
        BytesMut::len(self)
    }
    fn cut(&mut self, at: usize) -> Bytes {
        self.split_to(at).freeze()
    }
    fn clear(&mut self) {
        BytesMut::clear(self)
    }
}

impl Splitter {
    pub fn new(max_line_bytes: usize, policy: LinePolicy, line_start: u64) -> Splitter {
        Splitter {
            max_line_bytes: max_line_bytes.max(1),
            policy,
            line_start,
            skipping: false,
            multiline: None,
            held: None,
            decoder: None,
        }
    }

    pub(crate) fn with_decoder(mut self, decoder: Option<Decoder>) -> Splitter {
        self.decoder = decoder;
        self
    }

    pub fn with_multiline(mut self, rule: Option<Arc<Multiline>>) -> Splitter {
        self.multiline = rule;
        self
    }

    /// When the multiline event being gathered last grew, if there is one.
    pub fn held_since(&self) -> Option<Instant> {
        self.held
            .as_ref()
            .map(|g| g.touched)
            .or_else(|| self.decoder.as_ref().and_then(Decoder::held_since))
    }

    /// Whether a multiline event is being gathered (its flush timeout applies).
    pub fn multiline_since(&self) -> Option<Instant> {
        self.held.as_ref().map(|g| g.touched)
    }

    fn end_offset(&self) -> u64 {
        let end = self.held.as_ref().map_or(self.line_start, |g| g.offset);
        match self.decoder.as_ref().and_then(Decoder::held_offset) {
            Some(first_part) => end.min(first_part),
            None => end,
        }
    }

    /// Unwraps the lines this call added to `out`, if there is a format.
    fn decode(&mut self, out: &mut Vec<Record>, from: usize, report: &mut Split) {
        if let Some(d) = self.decoder.as_mut() {
            d.decode(out, from, report);
        }
    }

    /// Moves every complete line out of `buf` into `out`; the unterminated
    /// rest stays in `buf`, unless it is already longer than the limit.
    pub fn split(&mut self, buf: &mut impl Buffer, out: &mut Vec<Record>) -> Split {
        let mut report = Split::default();
        let from = out.len();
        if let Some(last_nl) = memchr::memrchr(b'\n', buf.as_ref()) {
            let chunk = buf.cut(last_nl + 1);
            let base = self.line_start;
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', &chunk) {
                if !self.skipping {
                    self.accept(&chunk, start, nl, base, out, &mut report);
                }
                self.skipping = false;
                start = nl + 1;
            }
            self.line_start += chunk.len() as u64;
        }
        if self.skipping {
            // The rest of a truncated line: discard it, counted already.
            self.line_start += buf.len() as u64;
            buf.clear();
        } else if buf.len() >= self.max_line_bytes {
            // An unterminated line already over the limit: do not hold it.
            self.emit_held(out);
            let max = self.max_line_bytes;
            let base = self.line_start;
            match self.policy {
                LinePolicy::Split => {
                    report.split_lines += 1;
                    let whole = buf.len() / max * max;
                    let chunk = buf.cut(whole);
                    for at in (0..whole).step_by(max) {
                        out.push(Record::new(chunk.slice(at..at + max), base + at as u64));
                    }
                    self.line_start += whole as u64;
                }
                LinePolicy::Truncate => {
                    report.truncated_lines += 1;
                    let len = buf.len();
                    let chunk = buf.cut(len);
                    out.push(Record::new(chunk.slice(..max), base));
                    self.line_start += len as u64;
                    self.skipping = true;
                }
            }
        }
        if let Some(g) = self.held.as_mut() {
            // The next chunk is another buffer.
            g.in_chunk = None;
            if std::mem::take(&mut g.changed) {
                g.touched = Instant::now();
            }
        }
        self.decode(out, from, &mut report);
        report.end_offset = self.end_offset();
        report
    }

    /// Emits whatever is held as a last line, and the multiline event it
    /// may belong to (a rotated or deleted file whose writer will not
    /// finish the line).
    pub fn flush(&mut self, buf: &mut impl Buffer, out: &mut Vec<Record>) -> Split {
        let mut report = Split::default();
        let from = out.len();
        if buf.len() > 0 {
            let len = buf.len();
            let chunk = buf.cut(len);
            let base = self.line_start;
            if !self.skipping {
                self.accept(&chunk, 0, len, base, out, &mut report);
            }
            self.line_start += len as u64;
        }
        self.skipping = false;
        self.emit_held(out);
        self.decode(out, from, &mut report);
        if let Some(d) = self.decoder.as_mut() {
            d.flush(out);
        }
        report.end_offset = self.line_start;
        report
    }

    /// Emits the multiline event being gathered (its flush timeout passed).
    pub fn flush_held(&mut self, out: &mut Vec<Record>) -> Split {
        self.emit_held(out);
        Split {
            end_offset: self.end_offset(),
            ..Split::default()
        }
    }

    fn emit_held(&mut self, out: &mut Vec<Record>) {
        if let Some(g) = self.held.take() {
            out.push(g.into_record());
        }
    }

    /// Takes the complete line `chunk[start..end]`: alone, or into the
    /// multiline event.
    fn accept(
        &mut self,
        chunk: &Bytes,
        start: usize,
        end: usize,
        base: u64,
        out: &mut Vec<Record>,
        report: &mut Split,
    ) {
        let Some(rule) = self.multiline.as_ref() else {
            self.line(chunk, start, end, base, out, report);
            return;
        };
        let len = end - start;
        if let Some(g) = self.held.as_mut() {
            if rule.joins(&chunk[start..end]) {
                if g.truncated {
                    return;
                }
                if g.len() + 1 + len <= self.max_line_bytes {
                    g.append(chunk, start, end);
                    return;
                }
                match self.policy {
                    LinePolicy::Truncate => {
                        g.truncated = true;
                        report.truncated_lines += 1;
                        return;
                    }
                    // The event so far goes alone; the line starts the next.
                    LinePolicy::Split => report.split_lines += 1,
                }
            }
        }
        self.emit_held(out);
        if len > self.max_line_bytes {
            self.line(chunk, start, end, base, out, report);
        } else {
            self.held = Some(Group::new(base + start as u64, chunk, start, end));
        }
    }

    fn line(
        &self,
        chunk: &Bytes,
        start: usize,
        end: usize,
        base: u64,
        out: &mut Vec<Record>,
        report: &mut Split,
    ) {
        let len = end - start;
        if len <= self.max_line_bytes {
            out.push(Record::new(chunk.slice(start..end), base + start as u64));
            return;
        }
        match self.policy {
            LinePolicy::Split => {
                report.split_lines += 1;
                let mut at = start;
                while at < end {
                    let to = (at + self.max_line_bytes).min(end);
                    out.push(Record::new(chunk.slice(at..to), base + at as u64));
                    at = to;
                }
            }
            LinePolicy::Truncate => {
                report.truncated_lines += 1;
                let to = start + self.max_line_bytes;
                out.push(Record::new(chunk.slice(start..to), base + start as u64));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one after another and compares the records (payload,
    /// offset) and the bytes still held.
    fn check(
        max: usize,
        policy: LinePolicy,
        pieces: &[&str],
        expected: &[(&str, u64)],
        held: &str,
    ) {
        let mut s = Splitter::new(max, policy, 0);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for p in pieces {
            buf.extend_from_slice(p.as_bytes());
            s.split(&mut buf, &mut out);
        }
        let got: Vec<(String, u64)> = out
            .iter()
            .map(|r| (String::from_utf8_lossy(&r.payload).into_owned(), r.offset))
            .collect();
        let want: Vec<(String, u64)> = expected.iter().map(|(l, o)| (l.to_string(), *o)).collect();
        assert_eq!(got, want, "pieces {pieces:?}");
        assert_eq!(&buf[..], held.as_bytes(), "held bytes for {pieces:?}");
    }

    #[test]
    fn splitting() {
        use LinePolicy::*;
        check(100, Split, &["a\nbb\n"], &[("a", 0), ("bb", 2)], "");
        check(100, Split, &["a\nb"], &[("a", 0)], "b");
        check(100, Split, &["a\nb", "c\n"], &[("a", 0), ("bc", 2)], "");
        check(100, Split, &["\n\n"], &[("", 0), ("", 1)], "");
        check(100, Split, &["x\r\n"], &[("x\r", 0)], "");
        check(100, Split, &["", "a", "", "\n"], &[("a", 0)], "");
        check(
            3,
            Split,
            &["abcdefg\nh\n"],
            &[("abc", 0), ("def", 3), ("g", 6), ("h", 8)],
            "",
        );
        check(3, Truncate, &["abcdefg\nh\n"], &[("abc", 0), ("h", 8)], "");
        // an unterminated over-long line is sent in whole pieces, the rest held
        check(3, Split, &["abcd"], &[("abc", 0)], "d");
        check(3, Split, &["abcd", "ef\n"], &[("abc", 0), ("def", 3)], "");
        check(
            4,
            Split,
            &["abcdef", "gh\nij\n"],
            &[("abcd", 0), ("efgh", 4), ("ij", 9)],
            "",
        );
        // truncation discards the tail across reads, up to the newline
        check(
            4,
            Truncate,
            &["abcdef", "gh", "\nij\n"],
            &[("abcd", 0), ("ij", 9)],
            "",
        );
    }

    #[test]
    fn end_offset_is_past_the_last_consumed_byte() {
        let mut s = Splitter::new(4, LinePolicy::Truncate, 10);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        let mut out = Vec::new();
        assert_eq!(s.split(&mut buf, &mut out).end_offset, 16);
        buf.extend_from_slice(b"gh\nij\nk");
        let r = s.split(&mut buf, &mut out);
        assert_eq!(r.end_offset, 22);
        assert_eq!(out.last().unwrap().offset, 19);
    }

    #[test]
    fn flush_emits_the_held_partial_line() {
        let mut s = Splitter::new(100, LinePolicy::Split, 0);
        let mut buf = BytesMut::from(&b"a\ntail"[..]);
        let mut out = Vec::new();
        s.split(&mut buf, &mut out);
        let r = s.flush(&mut buf, &mut out);
        assert_eq!(out.last().unwrap().payload, &b"tail"[..]);
        assert_eq!(out.last().unwrap().offset, 2);
        assert_eq!(r.end_offset, 6);
    }

    #[test]
    fn held_cri_parts_keep_the_position_at_the_first_part() {
        use crate::format::{Decoder, Format};
        let t = "2026-11-21T10:00:00.000000001Z";
        let decoder = Decoder::new(Format::Cri, 1000, LinePolicy::Split, Arc::default());
        let mut s = Splitter::new(1000, LinePolicy::Split, 0).with_decoder(decoder);
        let whole = format!("{t} stdout F one\n");
        let part = format!("{t} stdout P tw\n");
        let mut buf = BytesMut::from(format!("{whole}{part}").as_bytes());
        let mut out = Vec::new();
        let r = s.split(&mut buf, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(r.end_offset, whole.len() as u64, "not past the held part");
        assert!(s.held_since().is_some());
        // the last part completes the event: acknowledged up to its end
        let last = format!("{t} stdout F o\n");
        buf.extend_from_slice(last.as_bytes());
        let r = s.split(&mut buf, &mut out);
        assert_eq!(out[1].payload, &b"two"[..]);
        assert_eq!(out[1].offset, whole.len() as u64);
        assert_eq!(r.end_offset, (whole.len() + part.len() + last.len()) as u64);
        // a file that ends in parts sends them at its flush
        buf.extend_from_slice(part.as_bytes());
        s.split(&mut buf, &mut out);
        let r = s.flush(&mut buf, &mut out);
        assert_eq!(out[2].payload, &b"tw"[..]);
        assert_eq!(
            r.end_offset,
            (whole.len() + 2 * part.len() + last.len()) as u64
        );
    }

    fn rule(start: Option<&str>, cont: Option<&str>) -> Arc<Multiline> {
        let c = crate::MultilineConfig {
            start_pattern: start.map(str::to_owned),
            continuation_pattern: cont.map(str::to_owned),
            flush_timeout_ms: 1000,
        };
        Arc::new(c.compile().unwrap())
    }

    /// Like `check`, with a multiline rule; also compares the position to
    /// save after the last piece.
    fn check_joined(
        rule: &Arc<Multiline>,
        max: usize,
        policy: LinePolicy,
        pieces: &[&str],
        expected: &[(&str, u64)],
        end_offset: u64,
    ) -> Splitter {
        let mut s = Splitter::new(max, policy, 0).with_multiline(Some(rule.clone()));
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut last = Split::default();
        for p in pieces {
            buf.extend_from_slice(p.as_bytes());
            last = s.split(&mut buf, &mut out);
        }
        let got: Vec<(String, u64)> = out
            .iter()
            .map(|r| (String::from_utf8_lossy(&r.payload).into_owned(), r.offset))
            .collect();
        let want: Vec<(String, u64)> = expected.iter().map(|(l, o)| (l.to_string(), *o)).collect();
        assert_eq!(got, want, "pieces {pieces:?}");
        assert_eq!(last.end_offset, end_offset, "end offset for {pieces:?}");
        s
    }

    const TRACE: &str = "2026-11-21 ERROR boom\n\
java.lang.IllegalStateException: bad\n\
\tat a.B.c(B.java:1)\n\
Caused by: java.io.IOException: worse\n\
\t... 3 more\n\
2026-11-21 INFO next\n";

    #[test]
    fn multiline_joins_stack_traces() {
        use LinePolicy::*;
        let event = "2026-11-21 ERROR boom\njava.lang.IllegalStateException: bad\n\tat a.B.c(B.java:1)\nCaused by: java.io.IOException: worse\n\t... 3 more";
        let next_at = event.len() as u64 + 1;
        let start = rule(Some(r"^\d{4}-\d\d-\d\d "), None);
        let cont = rule(
            None,
            Some(r"^(\s|Caused by:|[a-z]+(\.[a-zA-Z]+)+(Exception|Error))"),
        );
        for r in [&start, &cont] {
            // the last event is held until something follows it
            check_joined(r, 1000, Split, &[TRACE], &[(event, 0)], next_at);
            // the same, read in pieces that cut lines and events
            let (a, b) = TRACE.split_at(50);
            check_joined(r, 1000, Split, &[a, b], &[(event, 0)], next_at);
            let pieces: Vec<String> = TRACE.chars().map(String::from).collect();
            let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
            check_joined(r, 1000, Split, &pieces, &[(event, 0)], next_at);
        }
        // a continuation line first: it starts an event of its own
        check_joined(
            &start,
            100,
            Split,
            &["\tat x\n2026-11-21 a\n\tat y\n"],
            &[("\tat x", 0)],
            6,
        );
    }

    #[test]
    fn multiline_events_obey_max_line_bytes() {
        use LinePolicy::*;
        let start = rule(Some("^S"), None);
        // split: the event so far goes alone, the line begins the next one
        check_joined(
            &start,
            8,
            Split,
            &["S1\nc2\nc3\nc4\nS5\n"],
            &[("S1\nc2\nc3", 0), ("c4", 9)],
            12,
        );
        // truncate: later continuation lines are dropped, counted once
        let mut s = Splitter::new(8, Truncate, 0).with_multiline(Some(start.clone()));
        let mut buf = BytesMut::from(&b"S1\nc2\nc3\nc4\nc5\nS6\nx"[..]);
        let mut out = Vec::new();
        let r = s.split(&mut buf, &mut out);
        assert_eq!(r.truncated_lines, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, &b"S1\nc2\nc3"[..]);
        assert_eq!(r.end_offset, 15, "S6 is held");
        // an over-long line is not joined: the event before it goes first
        check_joined(
            &start,
            4,
            Split,
            &["S1\nSabcdefg\nS2\n"],
            &[("S1", 0), ("Sabc", 3), ("defg", 7)],
            12,
        );
        check_joined(
            &start,
            4,
            Split,
            &["S1\nSabcdefg"],
            &[("S1", 0), ("Sabc", 3), ("defg", 7)],
            11,
        );
    }

    #[test]
    fn multiline_flushes() {
        let start = rule(Some("^S"), None);
        let mut s = Splitter::new(100, LinePolicy::Split, 0).with_multiline(Some(start));
        let mut buf = BytesMut::from(&b"S1\nc\nS2\nc"[..]);
        let mut out = Vec::new();
        let r = s.split(&mut buf, &mut out);
        assert_eq!(r.end_offset, 5);
        assert!(s.held_since().is_some());
        // the flush timeout: the held event goes, the partial line stays
        let r = s.flush_held(&mut out);
        assert_eq!(r.end_offset, 8);
        assert!(s.held_since().is_none());
        assert_eq!(out[1].payload, &b"S2"[..]);
        assert_eq!(&buf[..], b"c");
        // the final flush: the partial line goes as a line of its own event
        let r = s.flush(&mut buf, &mut out);
        assert_eq!(r.end_offset, 9);
        assert_eq!(out[2].payload, &b"c"[..]);
        assert_eq!(out[2].offset, 8);
        // a final partial continuation joins the held event
        let mut s =
            Splitter::new(100, LinePolicy::Split, 0).with_multiline(Some(rule(Some("^S"), None)));
        let mut buf = BytesMut::from(&b"S1\nc"[..]);
        let mut out = Vec::new();
        s.split(&mut buf, &mut out);
        assert!(out.is_empty());
        s.flush(&mut buf, &mut out);
        assert_eq!(out[0].payload, &b"S1\nc"[..]);
    }
}
