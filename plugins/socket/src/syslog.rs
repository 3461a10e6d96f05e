//! Parsing syslog messages (RFC 5424 and RFC 3164) into fields.
//!
//! The payload of a syslog record stays the raw message; the parsed parts
//! go into the record's fields: `facility` and `severity` (names, as in
//! syslog.conf), `timestamp`, `hostname`, `app_name`, `procid`, `msgid`,
//! `structured_data` (the raw `[...]` elements) and `message`. Parts a
//! message does not carry (`-` in RFC 5424) are left out. Text values are
//! slices of the payload: only a BSD timestamp, rewritten as
//! `YYYY-MM-DDTHH:MM:SS` with the year inferred, is a new string.
//!
//! A message that does not parse yields `None`; the caller forwards it raw
//! and counts it. Nothing here drops a message.

use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tailrace_api::{FieldValue, Fields};

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Field names, allocated once and shared by every record.
struct Names {
    facility: Arc<str>,
    severity: Arc<str>,
    timestamp: Arc<str>,
    hostname: Arc<str>,
    app_name: Arc<str>,
    procid: Arc<str>,
    msgid: Arc<str>,
    structured_data: Arc<str>,
    message: Arc<str>,
}

static NAMES: LazyLock<Names> = LazyLock::new(|| Names {
    facility: "facility".into(),
    severity: "severity".into(),
    timestamp: "syslog_timestamp".into(),
    hostname: "hostname".into(),
    app_name: "app_name".into(),
    procid: "procid".into(),
    msgid: "msgid".into(),
    structured_data: "structured_data".into(),
    message: "msg".into(),
});

/// A cursor over the message being parsed.
struct Cursor<'a> {
    raw: &'a Bytes,
    end: usize,
    at: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &[u8] {
        &self.raw[self.at..self.end]
    }

    fn peek(&self) -> Option<u8> {
        self.rest().first().copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek() == Some(b)).then(|| self.at += 1)
    }

    /// A run of 1..=max bytes up to the next space (or the end).
    fn token(&mut self, max: usize) -> Option<(usize, usize)> {
        let len = memchr::memchr(b' ', self.rest()).unwrap_or(self.rest().len());
        if len == 0 || len > max || !self.rest()[..len].iter().all(|b| (33..=126).contains(b)) {
            return None;
        }
        let start = self.at;
        self.at += len;
        Some((start, self.at))
    }

    fn text(&self, (start, end): (usize, usize)) -> FieldValue {
        FieldValue::Text(self.raw.slice(start..end))
    }
}

/// Parses `raw` as RFC 5424, or else as RFC 3164. Trailing newlines,
/// carriage returns and NULs are not part of the message.
pub fn parse(raw: &Bytes) -> Option<Fields> {
    let end = raw.len()
        - raw
            .iter()
            .rev()
            .take_while(|&&b| b == b'\n' || b == b'\r' || b == 0)
            .count();
    let mut c = Cursor { raw, end, at: 0 };
    let pri = priority(&mut c)?;
    let n = &*NAMES;
    // Room for every field of an RFC 5424 message, so it never grows; each
    // name is set once (`push_new`).
    let mut fields = Fields::with_capacity(10);
    fields.push_new(
        n.facility.clone(),
        FieldValue::Text(Bytes::from_static(FACILITIES[pri / 8].as_bytes())),
    );
    fields.push_new(
        n.severity.clone(),
        FieldValue::Text(Bytes::from_static(SEVERITIES[pri % 8].as_bytes())),
    );
    if c.rest().starts_with(b"1 ") {
        c.at += 2;
        rfc5424(&mut c, &mut fields)?;
    } else {
        rfc3164(&mut c, &mut fields)?;
    }
    Some(fields)
}

/// `<PRI>`, 0..=191.
fn priority(c: &mut Cursor) -> Option<usize> {
    c.eat(b'<')?;
    let digits = c
        .rest()
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) {
        return None;
    }
    let pri = c.rest()[..digits]
        .iter()
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    c.at += digits;
    c.eat(b'>')?;
    (pri <= 191).then_some(pri)
}

fn rfc5424(c: &mut Cursor, fields: &mut Fields) -> Option<()> {
    let n = &*NAMES;
    let ts = c.token(64)?;
    if &c.raw[ts.0..ts.1] != b"-" {
        rfc3339(&c.raw[ts.0..ts.1])?;
        fields.push_new(n.timestamp.clone(), c.text(ts));
    }
    for (name, max) in [
        (&n.hostname, 255),
        (&n.app_name, 48),
        (&n.procid, 128),
        (&n.msgid, 32),
    ] {
        c.eat(b' ')?;
        let t = c.token(max)?;
        if &c.raw[t.0..t.1] != b"-" {
            fields.push_new(name.clone(), c.text(t));
        }
    }
    c.eat(b' ')?;
    if c.eat(b'-').is_none() {
        let start = c.at;
        structured_data(c)?;
        fields.push_new(n.structured_data.clone(), c.text((start, c.at)));
    }
    if c.at < c.end {
        c.eat(b' ')?;
        if c.rest().starts_with(b"\xEF\xBB\xBF") {
            c.at += 3;
        }
        fields.push_new(n.message.clone(), c.text((c.at, c.end)));
    }
    Some(())
}

/// One or more `[ID PARAM="value" ...]`, with `\"`, `\\` and `\]` escapes.
fn structured_data(c: &mut Cursor) -> Option<()> {
    let name_byte = |b: &u8| (33..=126).contains(b) && !b"= ]\"".contains(b);
    let name = |c: &mut Cursor| {
        let len = c.rest().iter().take_while(|b| name_byte(b)).count();
        ((1..=32).contains(&len)).then(|| c.at += len)
    };
    loop {
        c.eat(b'[')?;
        name(c)?;
        while c.eat(b' ').is_some() {
            name(c)?;
            c.eat(b'=')?;
            c.eat(b'"')?;
            loop {
                match c.peek()? {
                    b'\\' if c.at + 1 < c.end => c.at += 2,
                    b'\\' => return None,
                    b'"' => break,
                    _ => c.at += 1,
                }
            }
            c.eat(b'"')?;
        }
        c.eat(b']')?;
        if c.peek() != Some(b'[') {
            return Some(());
        }
    }
}

/// Checks `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`.
fn rfc3339(t: &[u8]) -> Option<()> {
    let digits =
        |r: std::ops::Range<usize>| t.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, b: u8| t.get(i) == Some(&b);
    if !(digits(0..4) && at(4, b'-') && digits(5..7) && at(7, b'-') && digits(8..10))
        || !(at(10, b'T') || at(10, b't'))
        || !(digits(11..13) && at(13, b':') && digits(14..16) && at(16, b':') && digits(17..19))
    {
        return None;
    }
    let mut i = 19;
    if at(i, b'.') {
        let frac = t[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=9).contains(&frac) {
            return None;
        }
        i += 1 + frac;
    }
    match t.get(i)? {
        b'Z' | b'z' if i + 1 == t.len() => Some(()),
        b'+' | b'-'
            if i + 6 == t.len()
                && digits(i + 1..i + 3)
                && at(i + 3, b':')
                && digits(i + 4..i + 6) =>
        {
            Some(())
        }
        _ => None,
    }
}

fn rfc3164(c: &mut Cursor, fields: &mut Fields) -> Option<()> {
    let n = &*NAMES;
    // An RFC 3339 timestamp (rsyslog's high-precision format) or `Mmm dd hh:mm:ss`.
    let ts = if let Some(t) = c
        .rest()
        .split(|&b| b == b' ')
        .next()
        .filter(|t| rfc3339(t).is_some())
    {
        let range = (c.at, c.at + t.len());
        c.at += t.len();
        c.text(range)
    } else {
        let t = bsd_timestamp(c.rest().get(..15)?, SystemTime::now())?;
        c.at += 15;
        FieldValue::Text(Bytes::from(t))
    };
    fields.push_new(n.timestamp.clone(), ts);
    c.eat(b' ')?;
    while c.eat(b' ').is_some() {}
    // HOSTNAME is absent from what local programs send: then the first
    // word is the tag (`app:` or `app[pid]`).
    let first = c.rest().split(|&b| b == b' ').next().unwrap_or_default();
    if !first.is_empty() && !first.ends_with(b":") && !first.contains(&b'[') {
        let host = c.token(255)?;
        fields.push_new(n.hostname.clone(), c.text(host));
        while c.eat(b' ').is_some() {}
    }
    tag(c, fields);
    fields.push_new(n.message.clone(), c.text((c.at, c.end)));
    Some(())
}

/// `app[pid]: ` or `app: ` (a tag is up to 48 bytes); leaves the cursor
/// at the message. Without a tag the whole rest is the message.
fn tag(c: &mut Cursor, fields: &mut Fields) {
    let n = &*NAMES;
    let rest = c.rest();
    let word = rest.split(|&b| b == b' ').next().unwrap_or_default();
    let app_len = word.iter().take_while(|&&b| b != b'[' && b != b':').count();
    if app_len == 0 || app_len > 48 {
        return;
    }
    let after = &word[app_len..];
    let (procid, used) = if let Some(p) = after.strip_prefix(b"[") {
        match memchr::memchr(b']', p) {
            Some(close) if close > 0 => (
                Some((c.at + app_len + 1, c.at + app_len + 1 + close)),
                app_len + close + 2,
            ),
            _ => return,
        }
    } else {
        (None, app_len)
    };
    let used = match &word[used..] {
        b":" => used + 1,
        b"" if procid.is_some() => used,
        _ => return,
    };
    fields.push_new(n.app_name.clone(), c.text((c.at, c.at + app_len)));
    if let Some(p) = procid {
        fields.push_new(n.procid.clone(), c.text(p));
    }
    c.at += used;
    c.eat(b' ');
}

/// `Mmm dd hh:mm:ss` (day space-padded) as `YYYY-MM-DDTHH:MM:SS`, the year
/// the one in which that date most recently was (a December message read
/// in January is from last year).
fn bsd_timestamp(t: &[u8], now: SystemTime) -> Option<String> {
    let month = MONTHS.iter().position(|m| &t[..3] == *m)? + 1;
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = std::str::from_utf8(&t[r]).ok()?.trim_start();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    if t[3] != b' ' || t[6] != b' ' || t[9] != b':' || t[12] != b':' {
        return None;
    }
    let day = num(4..6)?;
    let (h, m, s) = (num(7..9)?, num(10..12)?, num(13..15)?);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = now.duration_since(UNIX_EPOCH).ok()?.as_secs() / 86_400;
    let (year, this_month) = civil_from_days(days as i64);
    let year = if month as u32 > this_month + 1 {
        year - 1
    } else {
        year
    };
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}"
    ))
}

/// The (year, month) of a day counted from 1970-01-01 (Howard Hinnant's
/// civil-from-days algorithm).
fn civil_from_days(z: i64) -> (i64, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Parses `raw` and compares every field, as `name=value` in order;
    /// `None` means it must not parse.
    fn check(raw: &str, expected: Option<&[&str]>) {
        let got = parse(&Bytes::copy_from_slice(raw.as_bytes())).map(|f| {
            f.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        });
        let want = expected.map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, want, "{raw:?}");
    }

    #[test]
    fn rfc5424() {
        check(
            "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \u{feff}'su root' failed",
            Some(&[
                "facility=auth",
                "severity=crit",
                "syslog_timestamp=2003-10-11T22:14:15.003Z",
                "hostname=mymachine.example.com",
                "app_name=su",
                "msgid=ID47",
                "msg='su root' failed",
            ]),
        );
        check(
            r#"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - [exampleSDID@32473 iut="3" eventSource="App\"lic]ation"][x@1] msg"#,
            Some(&[
                "facility=local4",
                "severity=notice",
                "syslog_timestamp=2003-08-24T05:14:15.000003-07:00",
                "hostname=192.0.2.1",
                "app_name=myproc",
                "procid=8710",
                r#"structured_data=[exampleSDID@32473 iut="3" eventSource="App\"lic]ation"][x@1]"#,
                "msg=msg",
            ]),
        );
        // nothing but the header; trailing newline not part of the message
        check(
            "<0>1 - - - - - -",
            Some(&["facility=kern", "severity=emerg"]),
        );
        check(
            "<13>1 - h a p m - hi\r\n",
            Some(&[
                "facility=user",
                "severity=notice",
                "hostname=h",
                "app_name=a",
                "procid=p",
                "msgid=m",
                "msg=hi",
            ]),
        );
        // malformed: bad timestamp, missing fields, bad structured data, no space before the message
        check("<13>1 2003-10-11 h a p m - x", None);
        check("<13>1 - h a p", None);
        check("<13>1 - h a p m [x a=\"1] msg", None);
        check("<13>1 - h a p m [x a=1] msg", None);
        check("<13>1 - h a p m -msg", None);
        check("<13>1 - h a p m [] msg", None);
        check("<13>1 - h a p m [x a=\"\\", None);
        check("<13>1 - h a p m [x a=\"\\\"]", None);
    }

    #[test]
    fn rfc3164() {
        check(
            "<13>2024-06-01T10:00:00.123456+02:00 myhost root: hello world",
            Some(&[
                "facility=user",
                "severity=notice",
                "syslog_timestamp=2024-06-01T10:00:00.123456+02:00",
                "hostname=myhost",
                "app_name=root",
                "msg=hello world",
            ]),
        );
        check(
            "<30>2024-06-01T10:00:00Z cron[123]: job done",
            Some(&[
                "facility=daemon",
                "severity=info",
                "syslog_timestamp=2024-06-01T10:00:00Z",
                "app_name=cron",
                "procid=123",
                "msg=job done",
            ]),
        );
        check(
            "<13>2024-06-01T10:00:00Z host just words",
            Some(&[
                "facility=user",
                "severity=notice",
                "syslog_timestamp=2024-06-01T10:00:00Z",
                "hostname=host",
                "msg=just words",
            ]),
        );
        check(
            "<13>2024-06-01T10:00:00Z host app[1] no colon",
            Some(&[
                "facility=user",
                "severity=notice",
                "syslog_timestamp=2024-06-01T10:00:00Z",
                "hostname=host",
                "app_name=app",
                "procid=1",
                "msg=no colon",
            ]),
        );
        // malformed: no priority, priority out of range, no timestamp
        check("hello", None);
        check("", None);
        check("<192>Oct 11 22:14:15 h a: b", None);
        check("<1234>Oct 11 22:14:15 h a: b", None);
        check("<13>", None);
        check("<13>hello there", None);
        check("<13>Oct 32 22:14:15 h a: b", None);
        check("<13>Oct 11 22:14 h a: b", None);
    }

    #[test]
    fn bsd_timestamps_get_a_year() {
        let at = |days: u64| UNIX_EPOCH + Duration::from_secs(days * 86_400);
        // 2024-06-15 is day 19889
        assert_eq!(civil_from_days(19_889), (2024, 6));
        assert_eq!(
            bsd_timestamp(b"Oct 11 22:14:15", at(19_889)).as_deref(),
            Some("2023-10-11T22:14:15")
        );
        assert_eq!(
            bsd_timestamp(b"Jun  1 01:02:03", at(19_889)).as_deref(),
            Some("2024-06-01T01:02:03")
        );
        assert_eq!(
            bsd_timestamp(b"Jul  1 01:02:03", at(19_889)).as_deref(),
            Some("2024-07-01T01:02:03")
        );
        // 2024-01-02 is day 19724: a December message is from last year
        assert_eq!(
            bsd_timestamp(b"Dec 31 23:59:59", at(19_724)).as_deref(),
            Some("2023-12-31T23:59:59")
        );
        assert_eq!(bsd_timestamp(b"Foo 11 22:14:15", at(19_724)), None);
        assert_eq!(bsd_timestamp(b"Oct 11 2a:14:15", at(19_724)), None);
    }

    #[test]
    fn bsd_message_with_a_bsd_timestamp() {
        let f = parse(&Bytes::from_static(
            b"<38>Feb  5 17:32:18 10.0.0.99 sshd[42]: Accepted",
        ))
        .unwrap();
        let ts = f.get("syslog_timestamp").unwrap().to_string();
        assert!(ts.ends_with("-02-05T17:32:18"), "{ts}");
        assert_eq!(f.get("hostname").unwrap().to_string(), "10.0.0.99");
        assert_eq!(f.get("app_name").unwrap().to_string(), "sshd");
        assert_eq!(f.get("procid").unwrap().to_string(), "42");
        assert_eq!(f.get("msg").unwrap().to_string(), "Accepted");
        assert_eq!(f.get("facility").unwrap().to_string(), "auth");
        assert_eq!(f.get("severity").unwrap().to_string(), "info");
    }
}

#[cfg(test)]
mod random_input {
    /// Mutations of valid messages and random bytes never panic the parser.
    #[test]
    fn mutated_messages_never_panic() {
        let seeds: [&[u8]; 3] = [
            b"<165>1 2003-08-24T05:14:15.000003-07:00 h app 8710 ID [a@1 x=\"y\\\"z\"][b@2] msg",
            b"<13>Oct 11 22:14:15 host app[12]: message",
            b"<13>2024-06-01T10:00:00Z host app: m",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let mut m = seeds[round % 3].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % (m.len() + 1);
                match next() % 3 {
                    0 if at < m.len() => m[at] = next() as u8,
                    1 if at < m.len() => {
                        m.truncate(at);
                    }
                    _ => m.insert(at, b"\\\"[] =-<>1"[(next() % 10) as usize]),
                }
            }
            let _ = super::parse(&bytes::Bytes::from(m));
        }
    }
}
