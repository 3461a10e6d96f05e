//! The shapes the benchmark matrix sends besides raw lines, built around
//! the numbered lines of [`crate::lines`]: a line with an RFC 3339 time in
//! front (for `timestamp` to parse), an RFC 5424 syslog message, and where
//! a line's sequence number is in any of them.

use std::io::Write as _;

/// The time written in front of every shaped line: a fixed instant plus
/// a millisecond per 1,000 lines, so lines stay in order and parse.
fn time_of(seq: u64, out: &mut Vec<u8>) {
    let ms = seq / 1_000;
    let (s, ms) = (ms / 1_000, ms % 1_000);
    let (h, m, s) = ((s / 3_600) % 24, (s / 60) % 60, s % 60);
    let _ = write!(out, "2026-12-01T{h:02}:{m:02}:{s:02}.{ms:03}Z");
}

/// The fields scenario's `regex_extract` pattern, for the lines
/// [`timestamped`] writes: the time and three fields.
pub const FIELDS_PATTERN: &str = r"^(?P<ts>\S+) seq=\d+ (?P<level>[A-Z]+) user=(?P<user>[a-z]+) req=\S+ latency_ms=(?P<latency_ms>\d+)";

/// `line` (with its newline) with an RFC 3339 time and a space in front.
pub fn timestamped(seq: u64, line: &[u8], out: &mut Vec<u8>) {
    time_of(seq, out);
    out.push(b' ');
    out.extend_from_slice(line);
}

/// `line` (its newline dropped) as the MSG of an RFC 5424 message, framed
/// by octet counting (RFC 6587) or ended by a newline.
pub fn syslog5424(seq: u64, line: &[u8], octet_counting: bool, out: &mut Vec<u8>) {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let mut msg = Vec::with_capacity(body.len() + 64);
    msg.extend_from_slice(b"<134>1 ");
    time_of(seq, &mut msg);
    msg.extend_from_slice(b" bench-host app 4242 ID47 - ");
    msg.extend_from_slice(body);
    if octet_counting {
        let _ = write!(out, "{} ", msg.len());
        out.extend_from_slice(&msg);
    } else {
        out.extend_from_slice(&msg);
        out.push(b'\n');
    }
}

/// The sequence number of a numbered line anywhere in `payload`: a raw
/// line, a JSON object holding it, a syslog message.
pub fn seq_in(payload: &[u8]) -> Option<u64> {
    if let Some(seq) = crate::lines::seq_of(payload) {
        return Some(seq);
    }
    let at = payload.windows(4).position(|w| w == b"seq=")?;
    crate::lines::seq_of(&payload[at..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lines::{Generator, Sizes};

    fn line(seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        Generator::new(1, Sizes::Fixed(100)).line(seq, &mut out);
        out
    }

    #[test]
    fn shaped_lines_keep_their_number() {
        let l = line(1_234_567);
        let mut t = Vec::new();
        timestamped(1_234_567, &l, &mut t);
        assert!(t.starts_with(b"2026-12-01T00:00:01.234Z seq=0001234567 "));
        assert_eq!(seq_in(&t), Some(1_234_567));
        let json = format!(r#"{{"message":{:?}}}"#, std::str::from_utf8(&t).unwrap());
        assert_eq!(seq_in(json.as_bytes()), Some(1_234_567));
        assert_eq!(seq_in(b"no number here"), None);
    }

    #[test]
    fn syslog_frames_count_their_octets() {
        let l = line(7);
        let mut framed = Vec::new();
        syslog5424(7, &l, true, &mut framed);
        let text = std::str::from_utf8(&framed).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with(
            "<134>1 2026-12-01T00:00:00.000Z bench-host app 4242 ID47 - seq=0000000007 "
        ));
        assert!(!msg.ends_with('\n'));
        assert_eq!(seq_in(msg.as_bytes()), Some(7));
        let mut lined = Vec::new();
        syslog5424(7, &l, false, &mut lined);
        assert_eq!(lined, [msg.as_bytes(), b"\n"].concat());
    }
}
