//! Cutting byte streams and datagrams into records.
//!
//! A stream is cut by newlines or by octet counting (RFC 6587: `LEN SP
//! MSG`), chosen by config or detected from the first byte of the
//! connection. Records are slices of the chunk they were read in: one scan
//! records the frame boundaries, then the consumed bytes are frozen once and
//! sliced, so no record is copied.
//!
//! A frame longer than `max_line_bytes` is split into pieces or truncated,
//! as for files, and nothing longer than the limit is ever held. Bytes that
//! are not valid framing (an octet count that is not a number) are not
//! dropped: the frame is taken up to the next newline and counted as
//! malformed.

use bytes::Bytes;
use serde::Deserialize;
use tailrace_api::Record;

/// What to do with a frame longer than `max_line_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinePolicy {
    /// Send it as several records of at most `max_line_bytes` each.
    #[default]
    Split,
    /// Send its first `max_line_bytes` and discard the rest (counted).
    Truncate,
}

/// How a stream is cut into frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFraming {
    Newline,
    OctetCounting,
    /// Octet counting if the connection's first byte is a digit, else
    /// newlines (RFC 6587 section 3.4: a syslog frame otherwise starts
    /// with `<`).
    Detect,
}

#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub max_line_bytes: usize,
    pub policy: LinePolicy,
}

/// What one call found besides records; added to the metrics per batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cuts {
    /// Over-long frames cut into pieces.
    pub split: u64,
    /// Over-long frames whose tail was discarded.
    pub truncated: u64,
    /// Frames with invalid framing (forwarded as they were).
    pub malformed: u64,
    /// Datagrams the kernel dropped since the last batch (its receive
    /// buffer was full).
    pub kernel_dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first byte, with [`StreamFraming::Detect`].
    Undecided,
    /// At a frame boundary of an octet-counted stream.
    Header,
    /// Inside a newline-terminated frame. `long`: part of it was already
    /// sent or discarded, so it was counted; `skipping`: discard up to the
    /// newline (truncation).
    Line { skipping: bool, long: bool },
    /// Inside an octet-counted frame, `remaining` bytes still to come;
    /// `skipping`: discard them (truncation).
    Counted { remaining: usize, skipping: bool },
}

/// The framing state of one connection.
#[derive(Debug)]
pub struct StreamFramer {
    octet: bool,
    state: State,
    limit: Limit,
    /// Frame boundaries of the current scan, reused across reads.
    ranges: Vec<(usize, usize)>,
}

enum Head {
    Complete { len: usize, used: usize },
    Incomplete,
    Invalid,
}

/// Parses `LEN SP` at the start of `rest` (non-empty).
fn header(rest: &[u8]) -> Head {
    const MAX_DIGITS: usize = 10;
    if !(b'1'..=b'9').contains(&rest[0]) {
        return Head::Invalid;
    }
    for (i, &b) in rest.iter().enumerate().take(MAX_DIGITS + 1) {
        if b == b' ' {
            let len = rest[..i]
                .iter()
                .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            return Head::Complete { len, used: i + 1 };
        }
        if !b.is_ascii_digit() {
            return Head::Invalid;
        }
    }
    if rest.len() > MAX_DIGITS {
        Head::Invalid
    } else {
        Head::Incomplete
    }
}

/// Adds the frame `start..end` to `ranges`, cut to the limit.
fn limited(
    ranges: &mut Vec<(usize, usize)>,
    start: usize,
    end: usize,
    limit: Limit,
    counted: bool,
    cuts: &mut Cuts,
) {
    let max = limit.max_line_bytes;
    if end - start <= max {
        ranges.push((start, end));
        return;
    }
    match limit.policy {
        LinePolicy::Split => {
            if !counted {
                cuts.split += 1;
            }
            let mut at = start;
            while at < end {
                let to = (at + max).min(end);
                ranges.push((at, to));
                at = to;
            }
        }
        LinePolicy::Truncate => {
            if !counted {
                cuts.truncated += 1;
            }
            ranges.push((start, start + max));
        }
    }
}

impl StreamFramer {
    pub fn new(framing: StreamFraming, limit: Limit) -> StreamFramer {
        let limit = Limit {
            max_line_bytes: limit.max_line_bytes.max(1),
            ..limit
        };
        let (octet, state) = match framing {
            StreamFraming::Newline => (
                false,
                State::Line {
                    skipping: false,
                    long: false,
                },
            ),
            StreamFraming::OctetCounting => (true, State::Header),
            StreamFraming::Detect => (false, State::Undecided),
        };
        StreamFramer {
            octet,
            state,
            limit,
            ranges: Vec::new(),
        }
    }

    /// Moves every complete frame of `chunk` into `out` as slices of it
    /// (all of it when `eof`); returns how many bytes are consumed: the
    /// rest is an incomplete frame, for the caller to carry into the
    /// next read, unless it is already longer than the limit.
    pub fn cut_chunk(
        &mut self,
        chunk: &Bytes,
        eof: bool,
        out: &mut Vec<Record>,
        cuts: &mut Cuts,
    ) -> usize {
        let consumed = self.scan(chunk, eof, cuts);
        out.extend(
            self.ranges
                .drain(..)
                .map(|(a, b)| Record::new(chunk.slice(a..b), 0)),
        );
        consumed
    }

    fn boundary(&self) -> State {
        if self.octet {
            State::Header
        } else {
            State::Line {
                skipping: false,
                long: false,
            }
        }
    }

    /// Records frame boundaries in `self.ranges`; returns how many bytes of
    /// `data` are consumed.
    fn scan(&mut self, data: &[u8], eof: bool, cuts: &mut Cuts) -> usize {
        let limit = self.limit;
        let max = limit.max_line_bytes;
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            match self.state {
                State::Undecided => {
                    let Some(&first) = rest.first() else {
                        return pos;
                    };
                    self.octet = first.is_ascii_digit();
                    self.state = self.boundary();
                }
                State::Header => {
                    if rest.is_empty() {
                        return pos;
                    }
                    match header(rest) {
                        Head::Complete { len, used } => {
                            pos += used;
                            if len > max {
                                match limit.policy {
                                    LinePolicy::Split => cuts.split += 1,
                                    LinePolicy::Truncate => cuts.truncated += 1,
                                }
                            }
                            self.state = State::Counted {
                                remaining: len,
                                skipping: false,
                            };
                        }
                        Head::Incomplete if eof => {
                            cuts.malformed += 1;
                            self.ranges.push((pos, data.len()));
                            return data.len();
                        }
                        Head::Incomplete => return pos,
                        Head::Invalid => {
                            // Lost sync: take this frame up to its newline.
                            cuts.malformed += 1;
                            self.state = State::Line {
                                skipping: false,
                                long: false,
                            };
                        }
                    }
                }
                State::Line { skipping, long } => match memchr::memchr(b'\n', rest) {
                    Some(nl) => {
                        if !skipping {
                            limited(&mut self.ranges, pos, pos + nl, limit, long, cuts);
                        }
                        pos += nl + 1;
                        self.state = self.boundary();
                    }
                    None if eof => {
                        if !skipping && !rest.is_empty() {
                            limited(&mut self.ranges, pos, data.len(), limit, long, cuts);
                        }
                        self.state = self.boundary();
                        return data.len();
                    }
                    None if skipping => return data.len(),
                    None if rest.len() >= max => match limit.policy {
                        LinePolicy::Split => {
                            if !long {
                                cuts.split += 1;
                            }
                            let whole = rest.len() / max * max;
                            for at in (pos..pos + whole).step_by(max) {
                                self.ranges.push((at, at + max));
                            }
                            self.state = State::Line {
                                skipping: false,
                                long: true,
                            };
                            return pos + whole;
                        }
                        LinePolicy::Truncate => {
                            if !long {
                                cuts.truncated += 1;
                            }
                            self.ranges.push((pos, pos + max));
                            self.state = State::Line {
                                skipping: true,
                                long: true,
                            };
                            return data.len();
                        }
                    },
                    None => return pos,
                },
                State::Counted {
                    remaining,
                    skipping: true,
                } => {
                    let n = remaining.min(rest.len());
                    pos += n;
                    if n == remaining {
                        self.state = State::Header;
                    } else {
                        self.state = State::Counted {
                            remaining: remaining - n,
                            skipping: true,
                        };
                        return pos;
                    }
                }
                State::Counted { remaining, .. } => {
                    let want = remaining.min(max);
                    if rest.len() >= want {
                        self.ranges.push((pos, pos + want));
                        pos += want;
                        self.state = match remaining - want {
                            0 => State::Header,
                            left => State::Counted {
                                remaining: left,
                                skipping: limit.policy == LinePolicy::Truncate,
                            },
                        };
                    } else if eof {
                        cuts.malformed += 1;
                        if !rest.is_empty() {
                            self.ranges.push((pos, data.len()));
                        }
                        self.state = State::Header;
                        return data.len();
                    } else {
                        return pos;
                    }
                }
            }
        }
    }
}

/// Adds the records of one datagram, `data[start..end]`, to `ranges`:
/// the whole datagram less one trailing newline, or each of its lines.
pub fn datagram(
    data: &[u8],
    start: usize,
    end: usize,
    split_lines: bool,
    limit: Limit,
    ranges: &mut Vec<(usize, usize)>,
    cuts: &mut Cuts,
) {
    let limit = Limit {
        max_line_bytes: limit.max_line_bytes.max(1),
        ..limit
    };
    if !split_lines {
        let end = if end > start && data[end - 1] == b'\n' {
            end - 1
        } else {
            end
        };
        limited(ranges, start, end, limit, false, cuts);
        return;
    }
    let mut at = start;
    for nl in memchr::memchr_iter(b'\n', &data[start..end]) {
        limited(ranges, at, start + nl, limit, false, cuts);
        at = start + nl + 1;
    }
    if at < end {
        limited(ranges, at, end, limit, false, cuts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One read as the connection does it: what was carried, then
    /// `buf`'s new bytes, cut; the rest is carried in `buf`.
    pub(super) fn cut(
        f: &mut StreamFramer,
        buf: &mut Vec<u8>,
        eof: bool,
        out: &mut Vec<Record>,
        cuts: &mut Cuts,
    ) {
        let chunk = Bytes::from(std::mem::take(buf));
        let consumed = f.cut_chunk(&chunk, eof, out, cuts);
        *buf = chunk[consumed..].to_vec();
    }

    fn payloads(out: &[Record]) -> Vec<String> {
        out.iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect()
    }

    /// Feeds `pieces` one read at a time (then the end of the stream when
    /// `eof`), and compares the records, the bytes still held and the counts.
    #[allow(clippy::too_many_arguments)]
    fn check(
        framing: StreamFraming,
        max: usize,
        policy: LinePolicy,
        pieces: &[&str],
        eof: bool,
        expected: &[&str],
        held: &str,
        want: Cuts,
    ) {
        let mut f = StreamFramer::new(
            framing,
            Limit {
                max_line_bytes: max,
                policy,
            },
        );
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut cuts = Cuts::default();
        for p in pieces {
            buf.extend_from_slice(p.as_bytes());
            cut(&mut f, &mut buf, false, &mut out, &mut cuts);
        }
        if eof {
            cut(&mut f, &mut buf, true, &mut out, &mut cuts);
        }
        assert_eq!(payloads(&out), expected, "{framing:?} {pieces:?}");
        assert_eq!(&buf[..], held.as_bytes(), "held for {framing:?} {pieces:?}");
        assert_eq!(cuts, want, "counts for {framing:?} {pieces:?}");
    }

    const NONE: Cuts = Cuts {
        split: 0,
        truncated: 0,
        malformed: 0,
        kernel_dropped: 0,
    };
    const SPLIT: Cuts = Cuts { split: 1, ..NONE };
    const TRUNC: Cuts = Cuts {
        truncated: 1,
        ..NONE
    };
    const BAD: Cuts = Cuts {
        malformed: 1,
        ..NONE
    };

    #[test]
    fn newline_framing() {
        use LinePolicy::*;
        use StreamFraming::Newline as N;
        check(N, 100, Split, &["a\nbb\n"], false, &["a", "bb"], "", NONE);
        check(N, 100, Split, &["a\nb"], false, &["a"], "b", NONE);
        check(
            N,
            100,
            Split,
            &["a\nb", "c\n"],
            false,
            &["a", "bc"],
            "",
            NONE,
        );
        check(N, 100, Split, &["a\nb"], true, &["a", "b"], "", NONE);
        check(N, 100, Split, &["x\r\n\n"], false, &["x\r", ""], "", NONE);
        check(
            N,
            3,
            Split,
            &["abcdefg\nh\n"],
            false,
            &["abc", "def", "g", "h"],
            "",
            SPLIT,
        );
        check(
            N,
            3,
            Truncate,
            &["abcdefg\nh\n"],
            false,
            &["abc", "h"],
            "",
            TRUNC,
        );
        // an unterminated over-long line is sent in whole pieces, counted once
        check(
            N,
            3,
            Split,
            &["abcd", "efgh", "i\n"],
            false,
            &["abc", "def", "ghi"],
            "",
            SPLIT,
        );
        check(
            N,
            4,
            Truncate,
            &["abcdef", "gh", "\nij\n"],
            false,
            &["abcd", "ij"],
            "",
            TRUNC,
        );
        check(
            N,
            4,
            Truncate,
            &["abcdef", "gh"],
            true,
            &["abcd"],
            "",
            TRUNC,
        );
        // a digit first means nothing to newline framing
        check(N, 100, Split, &["12 ab\n"], false, &["12 ab"], "", NONE);
    }

    #[test]
    fn octet_counting() {
        use LinePolicy::*;
        use StreamFraming::OctetCounting as O;
        check(
            O,
            100,
            Split,
            &["3 abc2 de"],
            false,
            &["abc", "de"],
            "",
            NONE,
        );
        check(
            O,
            100,
            Split,
            &["3 a", "bc1", "0 0123456789"],
            false,
            &["abc", "0123456789"],
            "",
            NONE,
        );
        // frames may contain newlines
        check(O, 100, Split, &["5 a\nb\nc"], false, &["a\nb\nc"], "", NONE);
        // the count is consumed, the frame waits for its bytes
        check(O, 100, Split, &["5 abc"], false, &[], "abc", NONE);
        check(
            O,
            3,
            Split,
            &["7 abcdefg1 x"],
            false,
            &["abc", "def", "g", "x"],
            "",
            SPLIT,
        );
        check(
            O,
            3,
            Split,
            &["7 abcd", "efg"],
            false,
            &["abc", "def", "g"],
            "",
            SPLIT,
        );
        check(
            O,
            3,
            Truncate,
            &["7 abcd", "efg1 x"],
            false,
            &["abc", "x"],
            "",
            TRUNC,
        );
        // invalid count: the frame is taken to its newline, counted
        check(
            O,
            100,
            Split,
            &["<13>hi\n2 ok"],
            false,
            &["<13>hi", "ok"],
            "",
            BAD,
        );
        check(O, 100, Split, &["12x4 y\n"], false, &["12x4 y"], "", BAD);
        check(O, 100, Split, &["0 \n"], false, &["0 "], "", BAD);
        check(
            O,
            100,
            Split,
            &["12345678901 \n"],
            false,
            &["12345678901 "],
            "",
            BAD,
        );
        // the stream ends inside a frame or a count: sent as it is, counted
        check(O, 100, Split, &["5 abc"], true, &["abc"], "", BAD);
        check(O, 100, Split, &["2 ab12"], true, &["ab", "12"], "", BAD);
        check(O, 100, Split, &["2 ab"], true, &["ab"], "", NONE);
    }

    #[test]
    fn detection_uses_the_first_byte_of_the_connection() {
        use LinePolicy::*;
        use StreamFraming::Detect as D;
        check(
            D,
            100,
            Split,
            &["<13>a\n<14>b\n"],
            false,
            &["<13>a", "<14>b"],
            "",
            NONE,
        );
        check(
            D,
            100,
            Split,
            &["5 <13>a5 <14>b"],
            false,
            &["<13>a", "<14>b"],
            "",
            NONE,
        );
        check(D, 100, Split, &["", "5 <13>a"], false, &["<13>a"], "", NONE);
    }

    fn check_datagram(d: &str, split_lines: bool, max: usize, expected: &[&str], want: Cuts) {
        let mut ranges = Vec::new();
        let mut cuts = Cuts::default();
        let limit = Limit {
            max_line_bytes: max,
            policy: LinePolicy::Truncate,
        };
        // a datagram in the middle of a buffer
        let data = format!("xx{d}yy");
        datagram(
            data.as_bytes(),
            2,
            2 + d.len(),
            split_lines,
            limit,
            &mut ranges,
            &mut cuts,
        );
        let got: Vec<&str> = ranges.iter().map(|&(a, b)| &data[a..b]).collect();
        assert_eq!(got, expected, "{d:?}");
        assert_eq!(cuts, want, "{d:?}");
    }

    #[test]
    fn datagrams() {
        check_datagram("a b\nc", false, 100, &["a b\nc"], NONE);
        check_datagram("abc\n", false, 100, &["abc"], NONE);
        check_datagram("", false, 100, &[""], NONE);
        check_datagram("a\nb\n", true, 100, &["a", "b"], NONE);
        check_datagram("a\n\nb", true, 100, &["a", "", "b"], NONE);
        check_datagram("abcdef", false, 4, &["abcd"], TRUNC);
    }
}

#[cfg(test)]
mod random_input {
    use super::tests::cut;
    use super::*;

    /// Random bytes cut at random points, under every framing and policy:
    /// no panic, nothing longer than the limit, and every byte either in a
    /// record, consumed as framing, or still held.
    #[test]
    fn random_bytes_never_panic_and_respect_the_limit() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let framing = [
                StreamFraming::Newline,
                StreamFraming::OctetCounting,
                StreamFraming::Detect,
            ][round % 3];
            let policy = [LinePolicy::Split, LinePolicy::Truncate][round / 3 % 2];
            let max = 1 + (next() % 64) as usize;
            let mut f = StreamFramer::new(
                framing,
                Limit {
                    max_line_bytes: max,
                    policy,
                },
            );
            let mut buf = Vec::new();
            let mut out = Vec::new();
            let mut cuts = Cuts::default();
            for _ in 0..20 {
                let n = (next() % 100) as usize;
                // mostly digits, spaces and newlines, to exercise the framing
                let bytes: Vec<u8> = (0..n)
                    .map(|_| match next() % 8 {
                        0..=3 => b'0' + (next() % 10) as u8,
                        4 => b' ',
                        5 => b'\n',
                        _ => next() as u8,
                    })
                    .collect();
                buf.extend_from_slice(&bytes);
                cut(&mut f, &mut buf, false, &mut out, &mut cuts);
                assert!(
                    buf.len() <= max + 11 || framing != StreamFraming::Newline,
                    "held {} over {max}",
                    buf.len()
                );
            }
            cut(&mut f, &mut buf, true, &mut out, &mut cuts);
            assert!(buf.is_empty(), "finish leaves nothing held");
            assert!(
                out.iter().all(|r| r.payload.len() <= max),
                "a record over {max}"
            );
            for r in &out {
                let _ = crate::syslog::parse(&r.payload);
            }
        }
    }
}
