//! Splitting read chunks into lines.
//!
//! Lines are slices of the chunk they were read in (no copy per line). The
//! newline is not part of the payload; a carriage return before it is kept,
//! so the bytes that arrive are exactly the bytes of the line.

use bytes::{Bytes, BytesMut};
use tailrace_api::Record;

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

/// Splits the complete lines out of a growing buffer.
#[derive(Debug)]
pub struct Splitter {
    max_line_bytes: usize,
    policy: LinePolicy,
    /// Offset in the file of the first byte of `pending`.
    pub line_start: u64,
    /// Discarding the rest of a truncated line until its newline.
    skipping: bool,
}

/// What one call to [`Splitter::split`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Offset just past the last byte consumed: the position to checkpoint
    /// once the records are acknowledged.
    pub end_offset: u64,
    /// Over-long lines cut into pieces.
    pub split_lines: u64,
    /// Over-long lines whose tail was discarded.
    pub truncated_lines: u64,
}

impl Splitter {
    pub fn new(max_line_bytes: usize, policy: LinePolicy, line_start: u64) -> Splitter {
        Splitter {
            max_line_bytes: max_line_bytes.max(1),
            policy,
            line_start,
            skipping: false,
        }
    }

    /// Moves every complete line out of `buf` into `out`; the unterminated
    /// rest stays in `buf`, unless it is already longer than the limit.
    pub fn split(&mut self, buf: &mut BytesMut, out: &mut Vec<Record>) -> Split {
        let mut report = Split::default();
        if let Some(last_nl) = memchr::memrchr(b'\n', buf) {
            let chunk = buf.split_to(last_nl + 1).freeze();
            let base = self.line_start;
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', &chunk) {
                self.line(&chunk, start, nl, base, out, &mut report);
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
            let max = self.max_line_bytes;
            let base = self.line_start;
            match self.policy {
                LinePolicy::Split => {
                    report.split_lines += 1;
                    let whole = buf.len() / max * max;
                    let chunk = buf.split_to(whole).freeze();
                    for at in (0..whole).step_by(max) {
                        out.push(Record::new(chunk.slice(at..at + max), base + at as u64));
                    }
                    self.line_start += whole as u64;
                }
                LinePolicy::Truncate => {
                    report.truncated_lines += 1;
                    let len = buf.len();
                    let chunk = buf.split_to(len).freeze();
                    out.push(Record::new(chunk.slice(..max), base));
                    self.line_start += len as u64;
                    self.skipping = true;
                }
            }
        }
        report.end_offset = self.line_start;
        report
    }

    /// Emits whatever is held as a last line (a rotated or deleted file
    /// whose writer will not finish the line).
    pub fn flush(&mut self, buf: &mut BytesMut, out: &mut Vec<Record>) -> Split {
        let mut report = Split::default();
        if !buf.is_empty() {
            let len = buf.len();
            let chunk = buf.split_to(len).freeze();
            let base = self.line_start;
            self.line(&chunk, 0, len, base, out, &mut report);
            self.line_start += len as u64;
        }
        self.skipping = false;
        report.end_offset = self.line_start;
        report
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
        if self.skipping {
            return;
        }
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
}
