//! Each interceptor as data: lines in, lines and fields out.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tailrace_api::{Ack, Batch, BatchMeta, FieldValue, InterceptorConfig, Record};

use super::*;

fn batch(lines: &[&str]) -> Batch {
    let meta = Arc::new(BatchMeta {
        source: "app".into(),
        path: None,
        stream: None,
        read_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
    });
    let records = lines
        .iter()
        .enumerate()
        .map(|(i, l)| Record::new(Bytes::copy_from_slice(l.as_bytes()), i as u64))
        .collect();
    Batch::new(meta, records, Ack::none())
}

/// Runs `config` over `lines`; compares each kept line with the fields it
/// has (as `name=value` text, batch fields included).
fn check(config: &dyn InterceptorConfig, lines: &[&str], expected: &[(&str, &[&str])]) {
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let i = config.build().unwrap();
    let mut b = batch(lines);
    i.intercept(&mut b);
    let got: Vec<(String, Vec<String>)> = b
        .records
        .iter()
        .map(|r| {
            let mut fields: Vec<String> = b
                .fields
                .iter()
                .flat_map(|f| f.iter())
                .chain(r.fields.iter().flat_map(|f| f.iter()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            fields.sort();
            fields.dedup();
            (String::from_utf8_lossy(&r.payload).into_owned(), fields)
        })
        .collect();
    let want: Vec<(String, Vec<String>)> = expected
        .iter()
        .map(|(l, f)| (l.to_string(), f.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn static_and_host() {
    let fields = [
        ("env".to_string(), "prod".to_string()),
        ("team".to_string(), "core".to_string()),
    ]
    .into_iter()
    .collect();
    check(
        &StaticConfig { fields },
        &["a", "b"],
        &[
            ("a", &["env=prod", "team=core"]),
            ("b", &["env=prod", "team=core"]),
        ],
    );
    let host = format!("host={}", tailrace_api::hostname());
    check(
        &HostConfig {
            field: "host".into(),
        },
        &["a"],
        &[("a", &[host.as_str()])],
    );
}

#[test]
fn regex_filter() {
    let keep = RegexFilterConfig {
        pattern: "ERROR|WARN".into(),
        exclude: false,
        field: None,
    };
    check(
        &keep,
        &["INFO x", "ERROR y", "WARN z"],
        &[("ERROR y", &[]), ("WARN z", &[])],
    );
    let drop = RegexFilterConfig {
        pattern: "DEBUG".into(),
        exclude: true,
        field: None,
    };
    check(&drop, &["DEBUG a", "INFO b", "DEBUG c"], &[("INFO b", &[])]);
    check(&drop, &["DEBUG a"], &[]);
}

#[test]
fn regex_extract() {
    let ex = RegexExtractConfig {
        pattern: "user=(?P<user>[a-z]+)( id=(?P<id>[0-9]+))?".into(),
        field: None,
    };
    check(
        &ex,
        &["login user=ann id=7", "logout user=bob", "no user here"],
        &[
            ("login user=ann id=7", &["id=7", "user=ann"]),
            ("logout user=bob", &["user=bob"]),
            ("no user here", &[]),
        ],
    );
}

#[test]
fn extracted_values_share_the_line_buffer() {
    let i = RegexExtractConfig {
        pattern: "u=(?P<u>[a-z]+)".into(),
        field: None,
    }
    .build()
    .unwrap();
    let mut b = batch(&["x u=abc"]);
    i.intercept(&mut b);
    let FieldValue::Text(v) = b.records[0].field("u").unwrap() else {
        panic!()
    };
    let line = &b.records[0].payload;
    assert_eq!(
        v.as_ptr(),
        line[4..].as_ptr(),
        "the value points into the line, not a copy"
    );
}

#[test]
fn timestamps() {
    check(
        &TimestampConfig {
            field: None,
            format: None,
        },
        &["a"],
        &[("a", &["timestamp=1700000000123"])],
    );
    let extract = RegexExtractConfig {
        pattern: r"^(?P<ts>\S+) ".into(),
        field: None,
    }
    .build()
    .unwrap();
    let parse = TimestampConfig {
        field: Some("ts".into()),
        format: Some("rfc3339".into()),
    }
    .build()
    .unwrap();
    let mut b = batch(&["2026-11-21T10:00:00.250Z hello", "garbage hello"]);
    extract.intercept(&mut b);
    parse.intercept(&mut b);
    assert_eq!(
        b.records[0].field("timestamp"),
        Some(&FieldValue::Int(1_795_255_200_250))
    );
    assert_eq!(
        b.records[1].field("timestamp"),
        None,
        "an unparsable time leaves the read time in charge"
    );
}

#[test]
fn time_formats() {
    let check = |text: &str, format: &str, want: Option<i64>| {
        assert_eq!(parse_time(text, format), want, "{text} {format}")
    };
    check("2026-11-21T10:00:00Z", "rfc3339", Some(1_795_255_200_000));
    check("1795255200", "unix", Some(1_795_255_200_000));
    check("1795255200.5", "unix", Some(1_795_255_200_500));
    check("1795255200123", "unix_ms", Some(1_795_255_200_123));
    check(
        "21/Nov/2026:10:00:00 +0100",
        "%d/%b/%Y:%H:%M:%S %z",
        Some(1_795_251_600_000),
    );
    check(
        "2026-11-21 10:00:00",
        "%Y-%m-%d %H:%M:%S",
        Some(1_795_255_200_000),
    );
    check("yesterday", "%Y-%m-%d %H:%M:%S", None);
}

#[test]
fn bad_patterns_are_config_errors() {
    let issues = RegexFilterConfig {
        pattern: "(unclosed".into(),
        exclude: false,
        field: None,
    }
    .validate();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].path, vec!["pattern".to_string()]);
    assert!(
        issues[0].message.contains("invalid regex"),
        "{}",
        issues[0].message
    );
    let issues = RegexExtractConfig {
        pattern: "no groups".into(),
        field: None,
    }
    .validate();
    assert!(issues[0].message.contains("no named group"));
    assert!(!TimestampConfig {
        field: Some("ts".into()),
        format: None
    }
    .validate()
    .is_empty());
    let _ = SystemTime::now();
}
