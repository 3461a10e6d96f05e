//! RELP, the Reliable Event Logging Protocol of rsyslog's omrelp and
//! librelp: the frame parser and the session rules, without I/O.
//!
//! A frame is `TXNR SP COMMAND SP DATALEN [SP DATA] LF`. A client opens a
//! session with `open` (its offers), sends `syslog` frames with increasing
//! transaction numbers, and ends with `close`; the server answers each
//! with an `rsp` frame of the same number, `200 OK` or `500 reason`. The
//! client keeps every frame not yet answered (its window) and sends them
//! again after a broken connection, so an answer is a promise: the source
//! sends `200 OK` for a `syslog` frame only once the record is safe (see
//! `serve` in listen.rs), and answers in the order the frames came.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest transaction number; the next one is 1.
const MAX_TXNR: u32 = 999_999_999;
const MAX_DIGITS: usize = 9;
const MAX_COMMAND: usize = 32;
/// `TXNR SP COMMAND SP DATALEN SP`.
const MAX_HEADER: usize = MAX_DIGITS + 1 + MAX_COMMAND + 1 + MAX_DIGITS + 1;

/// The most kept of a frame other than `syslog` (an `open`'s offers).
const MAX_OFFERS: usize = 16 * 1024;

/// What the source says it speaks, in its answer to `open`.
const SERVER_OFFERS: &str = concat!(
    "relp_version=0\nrelp_software=tailrace,",
    env!("CARGO_PKG_VERSION"),
    "\ncommands=syslog"
);

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Open,
    Syslog,
    Close,
    /// Well formed but not one a server handles (`rsp`, `serverclose`,
    /// or unknown): answered with 500.
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) txnr: u32,
    pub(crate) command: Command,
    pub(crate) data: Bytes,
    /// The data was longer than the limit; `data` is its beginning.
    pub(crate) truncated: bool,
}

/// A frame that is not RELP: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("bad transaction number {0:?}: expected 1 to 999999999")]
    Txnr(String),
    #[error("bad command {0:?}: expected up to 32 lowercase letters")]
    Command(String),
    #[error("bad data length {0:?}: expected a number of up to 9 digits")]
    Length(String),
    #[error("frame {txnr}: expected a line feed after the data, found byte {found:#04x}")]
    Trailer { txnr: u32, found: u8 },
    #[error("a header longer than {MAX_HEADER} bytes: {0:?}")]
    Header(String),
}

/// Cuts frames out of what a connection sent; holds at most one header
/// and `max_data` bytes of data between calls (the rest of an over-long
/// frame is discarded as it arrives).
pub(crate) struct Parser {
    max_data: usize,
    state: State,
}

enum State {
    Header,
    Data {
        txnr: u32,
        command: Command,
        /// Data bytes still to come.
        left: usize,
        /// What is kept of them so far (empty while the whole frame can
        /// still be cut from the buffer at once).
        kept: BytesMut,
        /// The most of the data kept: `max_data` for a message.
        limit: usize,
        truncated: bool,
    },
}

impl Parser {
    pub(crate) fn new(max_data: usize) -> Parser {
        Parser {
            max_data,
            state: State::Header,
        }
    }

    /// The next whole frame at the front of `buf`, consuming it; `None`
    /// when more bytes are needed.
    pub(crate) fn next(&mut self, buf: &mut Bytes) -> Result<Option<Frame>, FrameError> {
        loop {
            match &mut self.state {
                State::Header => {
                    let Some((txnr, command, len, used, has_data)) = header(buf)? else {
                        return Ok(None);
                    };
                    buf.advance(used);
                    if !has_data {
                        return Ok(Some(Frame {
                            txnr,
                            command,
                            data: Bytes::new(),
                            truncated: false,
                        }));
                    }
                    let limit = match command {
                        Command::Syslog => self.max_data,
                        _ => MAX_OFFERS,
                    };
                    self.state = State::Data {
                        txnr,
                        command,
                        left: len,
                        kept: BytesMut::new(),
                        limit,
                        truncated: len > limit,
                    };
                }
                State::Data {
                    txnr,
                    left,
                    kept,
                    limit,
                    truncated,
                    ..
                } => {
                    if kept.is_empty() && !*truncated && buf.len() > *left {
                        // The usual case: the whole frame is here.
                        let data = buf.split_to(*left);
                        *left = 0;
                        let txnr = *txnr;
                        return self.trailer(buf, txnr, data).map(Some);
                    }
                    if *left > 0 {
                        let n = buf.len().min(*left);
                        let keep = n.min(*limit - kept.len());
                        kept.put_slice(&buf[..keep]);
                        buf.advance(n);
                        *left -= n;
                        if *left > 0 {
                            return Ok(None);
                        }
                    }
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let (txnr, data) = (*txnr, std::mem::take(kept).freeze());
                    return self.trailer(buf, txnr, data).map(Some);
                }
            }
        }
    }

    /// Checks the line feed after the data and ends the frame.
    fn trailer(&mut self, buf: &mut Bytes, txnr: u32, data: Bytes) -> Result<Frame, FrameError> {
        if buf[0] != b'\n' {
            return Err(FrameError::Trailer {
                txnr,
                found: buf[0],
            });
        }
        buf.advance(1);
        let State::Data {
            command, truncated, ..
        } = std::mem::replace(&mut self.state, State::Header)
        else {
            unreachable!("trailer is called in the data state")
        };
        Ok(Frame {
            txnr,
            command,
            data,
            truncated,
        })
    }

    /// Bytes of a frame begun and kept outside the read buffer (the
    /// source's partial-frame budget counts them).
    pub(crate) fn holding(&self) -> usize {
        match &self.state {
            State::Header => 0,
            State::Data { kept, .. } => kept.len(),
        }
    }
}

/// A header at the front of `buf`: (txnr, command, data length, bytes
/// used, whether data follows). `None` when it is not complete yet.
#[allow(clippy::type_complexity)]
fn header(buf: &[u8]) -> Result<Option<(u32, Command, usize, usize, bool)>, FrameError> {
    let window = &buf[..buf.len().min(MAX_HEADER)];
    let shown = || String::from_utf8_lossy(window).into_owned();
    let Some(sp1) = window.iter().position(|&b| b == b' ') else {
        return if window.len() > MAX_DIGITS || !window.iter().all(u8::is_ascii_digit) {
            Err(FrameError::Txnr(shown()))
        } else {
            Ok(None)
        };
    };
    let txnr = number(&window[..sp1])
        .filter(|n| (1..=MAX_TXNR as usize).contains(n))
        .ok_or_else(|| FrameError::Txnr(String::from_utf8_lossy(&window[..sp1]).into()))?
        as u32;
    let rest = &window[sp1 + 1..];
    let Some(sp2) = rest.iter().position(|&b| b == b' ') else {
        return if rest.len() > MAX_COMMAND || !rest.iter().all(u8::is_ascii_lowercase) {
            Err(FrameError::Command(String::from_utf8_lossy(rest).into()))
        } else {
            Ok(None)
        };
    };
    let name = &rest[..sp2];
    if name.is_empty() || name.len() > MAX_COMMAND || !name.iter().all(u8::is_ascii_lowercase) {
        return Err(FrameError::Command(String::from_utf8_lossy(name).into()));
    }
    let command = match name {
        b"open" => Command::Open,
        b"syslog" => Command::Syslog,
        b"close" => Command::Close,
        other => Command::Other(String::from_utf8_lossy(other).into()),
    };
    let rest = &rest[sp2 + 1..];
    let Some(end) = rest.iter().position(|&b| b == b' ' || b == b'\n') else {
        return if rest.len() > MAX_DIGITS || !rest.iter().all(u8::is_ascii_digit) {
            Err(FrameError::Length(String::from_utf8_lossy(rest).into()))
        } else if window.len() == MAX_HEADER {
            Err(FrameError::Header(shown()))
        } else {
            Ok(None)
        };
    };
    let len = number(&rest[..end])
        .ok_or_else(|| FrameError::Length(String::from_utf8_lossy(&rest[..end]).into()))?;
    let used = sp1 + 1 + sp2 + 1 + end + 1;
    match (rest[end], len) {
        // `0 close 0\n`: no data, no space.
        (b'\n', 0) => Ok(Some((txnr, command, 0, used, false))),
        (b'\n', _) => Err(FrameError::Trailer { txnr, found: b'\n' }),
        // Some senders write `0 close 0 \n`: the empty data, then the trailer.
        (_, 0) => match buf.get(used) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((txnr, command, 0, used + 1, false))),
            Some(&found) => Err(FrameError::Trailer { txnr, found }),
        },
        (_, len) => Ok(Some((txnr, command, len, used, true))),
    }
}

fn number(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Appends the answer `TXNR rsp LEN DATA LF` to `out`.
pub(crate) fn answer(out: &mut BytesMut, txnr: u32, data: &str) {
    if data.is_empty() {
        out.put_slice(format!("{txnr} rsp 0\n").as_bytes());
    } else {
        out.put_slice(format!("{txnr} rsp {} {data}\n", data.len()).as_bytes());
    }
}

/// What the connection does with a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Answer this, in order (after what came before is answered).
    Answer(String),
    /// A record: answer `200 OK` once it is safe.
    Record(Bytes, bool),
    /// Answer this, then close the connection.
    AnswerAndClose(String),
}

/// The session rules: `open` first, numbers in sequence, `syslog` only
/// when offered.
#[derive(Default)]
pub(crate) struct Session {
    opened: bool,
    last_txnr: Option<u32>,
}

/// A frame that breaks the session rules: answered with 500, then the
/// connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("transaction number {got} out of sequence: expected {expected}")]
    Sequence { got: u32, expected: u32 },
    #[error("the client offers no `commands=syslog` in its open")]
    NoSyslog,
    #[error("a {0} frame before the session was opened")]
    NotOpen(&'static str),
    #[error("a second open in one session")]
    Reopened,
}

impl Session {
    pub(crate) fn on_frame(&mut self, frame: Frame) -> Result<Step, SessionError> {
        if let Some(last) = self.last_txnr {
            let expected = if last == MAX_TXNR { 1 } else { last + 1 };
            if frame.txnr != expected {
                return Err(SessionError::Sequence {
                    got: frame.txnr,
                    expected,
                });
            }
        }
        self.last_txnr = Some(frame.txnr);
        match frame.command {
            Command::Open if self.opened => Err(SessionError::Reopened),
            Command::Open => {
                let offers_syslog = frame
                    .data
                    .split(|&b| b == b'\n')
                    .filter_map(|offer| offer.strip_prefix(b"commands="))
                    .any(|list| list.split(|&b| b == b',').any(|c| c == b"syslog"));
                if !offers_syslog {
                    return Err(SessionError::NoSyslog);
                }
                self.opened = true;
                Ok(Step::Answer(format!("200 OK\n{SERVER_OFFERS}")))
            }
            Command::Syslog if !self.opened => Err(SessionError::NotOpen("syslog")),
            Command::Syslog => Ok(Step::Record(frame.data, frame.truncated)),
            Command::Close => Ok(Step::AnswerAndClose(String::new())),
            Command::Other(name) => Ok(Step::Answer(format!("500 command {name} not supported"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a parser in pieces of `piece` bytes; returns the
    /// frames and the error that ended it, if any.
    fn parse(input: &[u8], piece: usize, max_data: usize) -> (Vec<Frame>, Option<FrameError>) {
        let mut parser = Parser::new(max_data);
        // As a connection reads: each read is what was left of the one
        // before, then the new bytes.
        let mut carry = Vec::new();
        let mut frames = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            let mut buf = Bytes::from([&carry[..], chunk].concat());
            loop {
                match parser.next(&mut buf) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => return (frames, Some(e)),
                }
            }
            carry = buf.to_vec();
        }
        (frames, None)
    }

    fn frame(txnr: u32, command: Command, data: &str) -> Frame {
        Frame {
            txnr,
            command,
            data: Bytes::copy_from_slice(data.as_bytes()),
            truncated: false,
        }
    }

    /// What omrelp's librelp offers.
    const OFFERS: &str =
        "relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog";

    fn open_frame() -> String {
        format!("1 open {} {OFFERS}\n", OFFERS.len())
    }

    #[test]
    fn frames_parse_whole_and_byte_by_byte() {
        let input = format!(
            "{}2 syslog 11 <13>hello 1\n3 syslog 0\n4 close 0\n",
            open_frame()
        );
        let expected = vec![
            frame(1, Command::Open, OFFERS),
            frame(2, Command::Syslog, "<13>hello 1"),
            frame(3, Command::Syslog, ""),
            frame(4, Command::Close, ""),
        ];
        for piece in [1, 2, 3, 7, 64, input.len()] {
            assert_eq!(
                parse(input.as_bytes(), piece, 1024),
                (expected.clone(), None),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn data_may_hold_line_feeds_and_spaces() {
        let (frames, err) = parse(b"7 syslog 4 a\n b\n", 3, 1024);
        assert_eq!(
            (frames, err),
            (vec![frame(7, Command::Syslog, "a\n b")], None)
        );
    }

    #[test]
    fn over_long_data_is_truncated_and_the_rest_discarded() {
        let input = b"2 syslog 10 0123456789\n3 syslog 2 ab\n";
        for piece in [1, 4, input.len()] {
            let (frames, err) = parse(input, piece, 4);
            assert_eq!(err, None);
            assert_eq!(frames.len(), 2, "pieces of {piece}");
            assert_eq!(&frames[0].data[..], b"0123");
            assert!(frames[0].truncated);
            assert_eq!(frames[1], frame(3, Command::Syslog, "ab"));
        }
    }

    #[test]
    fn bad_frames_are_errors_never_panics() {
        let cases: &[(&[u8], FrameError)] = &[
            (b"x syslog 1 a\n", FrameError::Txnr("x".into())),
            (b"0 syslog 1 a\n", FrameError::Txnr("0".into())),
            (b"1234567890 syslog", FrameError::Txnr("1234567890".into())),
            (b"1 SYSLOG 1 a\n", FrameError::Command("SYSLOG".into())),
            (b"1  1 a\n", FrameError::Command("".into())),
            (b"1 syslog x a\n", FrameError::Length("x".into())),
            (
                b"1 syslog 1234567890 a",
                FrameError::Length("1234567890".into()),
            ),
            (
                b"1 syslog 1 ab\n",
                FrameError::Trailer {
                    txnr: 1,
                    found: b'b',
                },
            ),
            (
                b"1 syslog 3\n",
                FrameError::Trailer {
                    txnr: 1,
                    found: b'\n',
                },
            ),
            (
                b"1 close 0 x",
                FrameError::Trailer {
                    txnr: 1,
                    found: b'x',
                },
            ),
            (b"GET / HTTP/1.1\r\n", FrameError::Txnr("GET".into())),
        ];
        for (input, expected) in cases {
            for piece in [1, input.len()] {
                let (frames, err) = parse(input, piece, 1024);
                assert!(frames.is_empty(), "{input:?}");
                // Byte by byte, a bad field is seen at its first bad
                // byte: the same error, with less of the field shown.
                let err = err.unwrap_or_else(|| panic!("no error for {input:?}"));
                assert_eq!(
                    std::mem::discriminant(&err),
                    std::mem::discriminant(expected),
                    "{:?} in pieces of {piece}: {err}",
                    String::from_utf8_lossy(input)
                );
                if piece == input.len() {
                    assert_eq!(&err, expected);
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let input: Vec<u8> = (0..(round % 97))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly digits, spaces, letters and line feeds.
                    b"0123456789 syslogopenclose\n\xff"[(x % 28) as usize]
                })
                .collect();
            let _ = parse(&input, 1 + round % 5, 8);
        }
    }

    fn session_steps(frames: Vec<Frame>) -> Vec<Result<Step, SessionError>> {
        let mut session = Session::default();
        frames.into_iter().map(|f| session.on_frame(f)).collect()
    }

    #[test]
    fn a_session_opens_takes_records_and_closes() {
        let (frames, _) = parse(
            format!("{}2 syslog 1 a\n3 rsp 0\n4 close 0\n", open_frame()).as_bytes(),
            100,
            1024,
        );
        let steps = session_steps(frames);
        assert!(
            matches!(&steps[0], Ok(Step::Answer(a)) if a.starts_with("200 OK\nrelp_version=0\n") && a.ends_with("commands=syslog")),
            "{steps:?}"
        );
        assert_eq!(steps[1], Ok(Step::Record(Bytes::from_static(b"a"), false)));
        assert_eq!(
            steps[2],
            Ok(Step::Answer("500 command rsp not supported".into()))
        );
        assert_eq!(steps[3], Ok(Step::AnswerAndClose(String::new())));
    }

    #[test]
    fn session_rules_are_enforced() {
        let open = || frame(1, Command::Open, "relp_version=0\ncommands=syslog");
        assert_eq!(
            session_steps(vec![frame(1, Command::Syslog, "a")]),
            vec![Err(SessionError::NotOpen("syslog"))]
        );
        assert_eq!(
            session_steps(vec![frame(
                1,
                Command::Open,
                "relp_version=0\ncommands=foo"
            )]),
            vec![Err(SessionError::NoSyslog)]
        );
        assert_eq!(
            session_steps(vec![open(), frame(3, Command::Syslog, "a")])[1],
            Err(SessionError::Sequence {
                got: 3,
                expected: 2
            })
        );
        assert_eq!(
            session_steps(vec![open(), frame(2, Command::Open, "commands=syslog")])[1],
            Err(SessionError::Reopened)
        );
        // After 999999999 comes 1.
        let mut session = Session::default();
        session
            .on_frame(frame(MAX_TXNR - 1, Command::Open, "commands=syslog"))
            .unwrap();
        session
            .on_frame(frame(MAX_TXNR, Command::Syslog, "a"))
            .unwrap();
        assert!(session.on_frame(frame(1, Command::Syslog, "b")).is_ok());
    }

    #[test]
    fn answers_are_encoded_as_librelp_reads_them() {
        let mut out = BytesMut::new();
        answer(&mut out, 2, "200 OK");
        answer(&mut out, 3, "");
        assert_eq!(&out[..], b"2 rsp 6 200 OK\n3 rsp 0\n");
    }
}
