//! Config parsing and validation, as data: one `check` per case.

use std::path::Path;

use super::*;

const GOOD: &str = r#"data_dir: /tmp/tr
sources:
  app:
    type: file
    include: ["/var/log/app/*.log"]
    channels: [main]
channels:
  main:
    type: memory
sinks:
  kafka:
    type: kafka
    channel: main
    bootstrap_servers: 127.0.0.1:9092
    topic: logs
"#;

fn env(name: &str) -> Option<String> {
    (name == "BROKER").then(|| "10.0.0.1:9092".to_string())
}

/// Parses `text`; when `expected` is empty it must be valid, otherwise each
/// (line, message part) must be among the errors, and nothing else.
fn check(text: &str, expected: &[(Option<usize>, &str)]) {
    let result = parse(Path::new("t.yaml"), text, &env, &Registry::builtin());
    match (result, expected.is_empty()) {
        (Ok(_), true) => {}
        (Ok(_), false) => panic!("expected errors {expected:?}, the config was accepted:\n{text}"),
        (Err(e), true) => panic!("expected a valid config, got:\n{e}"),
        (Err(e), false) => {
            let shown = e.to_string();
            assert_eq!(e.errors.len(), expected.len(), "errors:\n{shown}");
            for (line, part) in expected {
                assert!(
                    e.errors.iter().any(|err| err.message.contains(part)
                        && (line.is_none() || err.position.map(|p| p.0) == *line)),
                    "no error on line {line:?} containing {part:?} in:\n{shown}"
                );
            }
        }
    }
}

fn with(find: &str, replace: &str) -> String {
    assert!(GOOD.contains(find), "{find:?}");
    GOOD.replacen(find, replace, 1)
}

#[test]
fn the_base_config_is_valid() {
    check(GOOD, &[]);
}

#[test]
fn invalid_configs() {
    check(
        &with("data_dir: /tmp/tr", "data_dir: /tmp/tr\nbogus: 1"),
        &[(Some(2), "unknown field `bogus`")],
    );
    check(
        &with("    type: file\n", "    type: file\n    inclued: []\n"),
        &[(Some(5), "unknown field `inclued`")],
    );
    check(
        &with("type: file", "type: fil"),
        &[(
            Some(4),
            "unknown source type \"fil\"; known types: file, journald, syslog, tcp, udp, unix",
        )],
    );
    check(
        &with("type: kafka", "type: kafak"),
        &[(Some(12), "unknown sink type \"kafak\"; known types: kafka")],
    );
    check(
        &with("channels: [main]", "channels: [mian]"),
        &[
            (Some(6), "unknown channel \"mian\""),
            (Some(8), "no source writes to channel"),
        ],
    );
    check(
        &with(
            "include: [\"/var/log/app/*.log\"]",
            "include: [\"/var/log/[\"]",
        ),
        &[(Some(5), "invalid glob")],
    );
    check(
        &with("127.0.0.1:9092", "\"not an address:\""),
        &[(Some(14), "invalid broker address")],
    );
    check(
        &with("127.0.0.1:9092", "not an address:"),
        &[(Some(14), "mapping values are not allowed")],
    );
    check(
        &with("topic: logs", "topic: \"bad topic\""),
        &[(Some(15), "invalid topic name")],
    );
    check(
        &with("include:", "start_at: middle\n    include:"),
        &[(Some(5), "unknown variant `middle`")],
    );
    check(
        &with(
            "data_dir: /tmp/tr",
            "data_dir: /tmp/tr\nadmin: {address: \"localhost\"}",
        ),
        &[(Some(2), "invalid address")],
    );
    check(
        &with(
            "    topic: logs\n",
            "    topic: logs\n    librdkafka: {acks: \"1\"}\n",
        ),
        &[(Some(16), "acks=all is always on")],
    );
    check(
        &with(
            "    type: memory\n",
            "    type: memory\n  spare:\n    type: memory\n",
        ),
        &[(Some(10), "not used by any source or sink")],
    );
    check(
        &with(
            "    type: memory\n",
            "    type: memory\n    capacity_events: 0\n",
        ),
        &[(Some(10), "capacity_events must be greater than 0")],
    );
    check(
        &with("channel: main", "channel: nope"),
        &[
            (Some(13), "unknown channel \"nope\""),
            (Some(8), "nothing reads channel"),
        ],
    );
    check("sources: [\n", &[(None, "")]);
}

#[test]
fn interceptor_configs() {
    let with_interceptors = |list: &str| {
        with(
            "    channels: [main]\n",
            &format!("    channels: [main]\n    interceptors:\n{list}"),
        )
    };
    check(
        &with_interceptors(
            "      - type: host\n      - type: static\n        fields: {env: prod}\n",
        ),
        &[],
    );
    check(
        &with_interceptors("      - type: regex_filter\n        pattern: \"(unclosed\"\n"),
        &[(Some(9), "invalid regex")],
    );
    check(
        &with_interceptors("      - type: regex_extract\n        pattern: \"no groups\"\n"),
        &[(Some(9), "no named group")],
    );
    check(&with_interceptors("      - type: grep\n"), &[(Some(8), "unknown interceptor type \"grep\"; known types: host, regex_extract, regex_filter, static, timestamp")]);
    check(
        &with_interceptors("      - type: static\n        fields: {env: prod}\n        extra: 1\n"),
        &[(Some(10), "unknown field `extra`")],
    );
    check(
        &with("topic: logs", "topic: \"logs-{source\""),
        &[(Some(15), "invalid topic template")],
    );
    check(
        &with("topic: logs", "topic: \"logs {source}\""),
        &[(Some(15), "fixed parts may use only")],
    );
    check(&with("topic: logs", "topic: \"logs-{source}\"\n    key: \"{user:-anon}\"\n    encoding: json\n    headers: true"), &[]);
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let text = with("type: file", "type: fil")
        .replace("topic: logs", "topic: \"\"")
        .replace("127.0.0.1:9092", "x");
    check(
        &text,
        &[
            (Some(4), "unknown source type"),
            (Some(14), "invalid broker address"),
            (Some(15), "invalid topic name"),
        ],
    );
}

#[test]
fn interpolation_from_the_environment() {
    check(&with("127.0.0.1:9092", "${BROKER}"), &[]);
    check(&with("127.0.0.1:9092", "${NOT_SET:-127.0.0.1:9092}"), &[]);
    check(
        &with("127.0.0.1:9092", "${NOT_SET}"),
        &[(Some(14), "NOT_SET is not set")],
    );
    let c = parse(
        Path::new("t.yaml"),
        &with("127.0.0.1:9092", "${BROKER}"),
        &env,
        &Registry::builtin(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.sinks.len(), 1);
}

#[test]
fn errors_print_as_file_line_column() {
    let e = parse(
        Path::new("conf.yaml"),
        &with("type: file", "type: fil"),
        &env,
        &Registry::builtin(),
    )
    .err()
    .unwrap();
    assert_eq!(
        e.to_string(),
        "conf.yaml:4:5: sources.app.type: unknown source type \"fil\"; known types: file, journald, syslog, tcp, udp, unix"
    );
}
