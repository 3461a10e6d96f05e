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
            "unknown source type \"fil\"; known types: file, journald, relp, syslog, tcp, udp, unix",
        )],
    );
    check(
        &with("type: kafka", "type: kafak"),
        &[(
            Some(12),
            "unknown sink type \"kafak\"; known types: blackhole, console, kafka",
        )],
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
        "conf.yaml:4:5: sources.app.type: unknown source type \"fil\"; known types: file, journald, relp, syslog, tcp, udp, unix"
    );
}

/// Parses files given as (name, text), in order; returns the config or
/// the printed errors.
fn set(files: &[(&str, &str)]) -> Result<Config, String> {
    let texts: Vec<(std::path::PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (n.into(), t.to_string()))
        .collect();
    parse_set(&texts, &env, &Registry::builtin()).map_err(|e| e.to_string())
}

const MAIN: &str = "data_dir: /tmp/tr\nchannels:\n  main:\n    type: memory\n";
const SOURCE: &str =
    "sources:\n  app:\n    type: file\n    include: [\"/var/log/app/*.log\"]\n    channels: [main]\n";
const SINK: &str = "sinks:\n  out:\n    type: console\n    channel: main\n";

#[test]
fn components_from_several_files_combine() {
    let c = set(&[
        ("main.yaml", MAIN),
        ("app.yaml", SOURCE),
        ("out.yaml", SINK),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.sources.len(), c.channels.len(), c.sinks.len()),
        (1, 1, 1)
    );
    assert_eq!(c.data_dir, Path::new("/tmp/tr"));
    assert_eq!(c.files.len(), 3);
}

#[test]
fn a_component_defined_twice_names_both_places() {
    let again = "\n\nsinks:\n  out:\n    type: blackhole\n    channel: main\n";
    let e = set(&[
        ("main.yaml", MAIN),
        ("app.yaml", SOURCE),
        ("out.yaml", SINK),
        ("again.yaml", again),
    ])
    .err()
    .unwrap();
    assert_eq!(
        e,
        "again.yaml:4:3: sinks.out: sink out is defined twice: here and in out.yaml:2:3"
    );
}

#[test]
fn top_level_settings_belong_to_one_file() {
    let e = set(&[
        ("main.yaml", MAIN),
        (
            "app.yaml",
            &format!("log:\n  level: debug\ndata_dir: /x\n{SOURCE}"),
        ),
        ("out.yaml", SINK),
    ])
    .err()
    .unwrap();
    assert_eq!(
        e,
        "app.yaml:3:1: data_dir: data_dir is set in two files: here and in main.yaml:1:1; \
         the top-level settings (data_dir, min_free_bytes, store_give_up_after_ms, admin, log, \
         shutdown_grace_ms, summary_interval_ms) \
         may be set in one file only"
    );
}

#[test]
fn errors_point_into_the_file_they_are_in() {
    let bad_sink = "sinks:\n  out:\n    type: console\n    channel: main\n    format: yaml\n";
    let e = set(&[
        ("main.yaml", MAIN),
        ("app.yaml", SOURCE),
        ("out.yaml", bad_sink),
    ])
    .err()
    .unwrap();
    assert!(
        e.starts_with("out.yaml:5:5: sinks.out.format: unknown variant `yaml`"),
        "{e}"
    );
    // A file of comments only sets nothing.
    set(&[
        ("main.yaml", MAIN),
        ("app.yaml", SOURCE),
        ("out.yaml", SINK),
        ("x.yaml", "# nothing\n"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_directory_is_its_yaml_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("10-main.yaml", MAIN),
        ("20-app.yml", SOURCE),
        ("30-out.yaml", SINK),
        ("notes.txt", "x"),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let c =
        load(&[dir.path().to_path_buf()], &Registry::builtin()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = c
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["10-main.yaml", "20-app.yml", "30-out.yaml"]);
    assert_eq!(c.paths, [dir.path().to_path_buf()]);
    // The same file named again, directly, is read once.
    let again = [dir.path().join("30-out.yaml"), dir.path().to_path_buf()];
    assert_eq!(
        load(&again, &Registry::builtin())
            .map(|c| c.files.len())
            .ok(),
        Some(3)
    );
    let missing = load(&[dir.path().join("nope")], &Registry::builtin())
        .err()
        .unwrap()
        .to_string();
    assert!(
        missing.contains("nope: cannot read the config file"),
        "{missing}"
    );
}

#[test]
fn kafka_properties_are_checked_by_librdkafka() {
    let sink = |extra: &str| with("    topic: logs\n", &format!("    topic: logs\n{extra}"));
    check(&sink("    compression: zstd\n"), &[]);
    check(
        &sink("    librdkafka: {socket.keepalive.enable: true}\n"),
        &[],
    );
    check(
        &sink("    compression: brotli\n"),
        &[(Some(16), "unknown variant `brotli`")],
    );
    check(
        &sink("    librdkafka: {no.such.property: 1}\n"),
        &[(Some(16), "unknown property")],
    );
    check(
        &sink("    librdkafka: {linger.ms: soon}\n"),
        &[(Some(16), "value refused")],
    );
    check(
        &sink("    librdkafka: {sasl.mechanism: SCRAM-SHA-999}\n"),
        &[(Some(16), "unknown SASL mechanism \"SCRAM-SHA-999\"")],
    );
    check(
        &sink("    librdkafka: {topic.message.timeout.ms: 1000}\n"),
        &[(Some(16), "use delivery_timeout_ms")],
    );
    check(
        &sink("    librdkafka: {request.required.acks: 1}\n"),
        &[(
            Some(16),
            "librdkafka's name for acks): acks=all is always on",
        )],
    );
    check(
        &sink("    librdkafka: {transactional.id: tx}\n"),
        &[(Some(16), "does not use transactions")],
    );
    check(
        &sink("    tls: {cert_file: /etc/tailrace/client.pem}\n"),
        &[(Some(16), "cert_file needs key_file")],
    );
    check(
        &sink("    tls:\n      ca_file: /nonexistent/ca.pem\n"),
        &[(Some(17), "ssl.ca.location")],
    );
    check(
        &sink("    sasl: {mechanism: SCRAM-SHA-512, username: u, password: p}\n    librdkafka: {sasl.password: q}\n"),
        &[(Some(17), "already set by the sink's tls: or sasl: keys")],
    );
    check(
        &sink("    sasl: {mechanism: SCRAM-SHA-512, username: u}\n"),
        &[(Some(16), "password is required")],
    );
}

#[test]
fn no_error_shows_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cr3t-from-file\n").unwrap();
    let text = with(
        "    topic: logs\n",
        &format!(
            "    topic: logs\n    sasl: {{mechanism: SCRAM-SHA-512, username: u, password: 987654}}\n    tls: {{key_password: \"${{file:{}}}\"}}\n",
            file.display()
        ),
    );
    let Err(e) = parse(Path::new("t.yaml"), &text, &env, &Registry::builtin()) else {
        panic!("the config was accepted:\n{text}");
    };
    let shown = e.to_string();
    assert!(shown.contains("sasl"), "{shown}");
    for secret in ["987654", "s3cr3t-from-file"] {
        assert!(!shown.contains(secret), "{secret} is shown in:\n{shown}");
    }
}

/// Issue 16: a line of the default `max_line_bytes` (1 MiB) was over
/// librdkafka's default `message.max.bytes` (1,000,000), so a long line was
/// dead-lettered for its size instead of delivered. The default is now what
/// the sink can deliver; a value set above it is refused.
#[test]
fn max_line_bytes_fits_what_the_sink_can_deliver() {
    let line_limit = |text: &str| {
        let config = parse(Path::new("t.yaml"), text, &env, &Registry::builtin())
            .unwrap_or_else(|e| panic!("{e}"));
        config.sources[0].config.max_line_bytes().unwrap()
    };
    let deliverable = 1_000_000 - 1024;
    assert_eq!(
        line_limit(GOOD),
        tailrace_api::MaxLineBytes {
            bytes: deliverable,
            explicit: false
        }
    );
    let raised = with(
        "    topic: logs\n",
        "    topic: logs\n    librdkafka: {\"message.max.bytes\": \"4000000\"}\n",
    );
    assert_eq!(
        line_limit(&raised).bytes,
        1024 * 1024,
        "the default, which now fits"
    );
    let set = |bytes: usize| {
        with(
            "include:",
            &format!("max_line_bytes: {bytes}\n    include:"),
        )
    };
    assert_eq!(line_limit(&set(deliverable)).bytes, deliverable);
    check(
        &set(1_048_576),
        &[(
            Some(5),
            "max_line_bytes 1048576 is more than sink kafka can deliver as one record: 998976 (librdkafka's default message.max.bytes 1000000",
        )],
    );
    // A sink without a limit leaves the default as it is.
    let console = with("    type: kafka\n", "    type: console\n").replace(
        "    bootstrap_servers: 127.0.0.1:9092\n    topic: logs\n",
        "",
    );
    assert_eq!(line_limit(&console).bytes, 1024 * 1024);
    // A tcp source is fitted the same way.
    let tcp = with(
        "    type: file\n    include: [\"/var/log/app/*.log\"]\n",
        "    type: tcp\n    address: 127.0.0.1:5140\n",
    );
    assert_eq!(line_limit(&tcp).bytes, deliverable);
}

#[test]
fn min_free_bytes_and_store_give_up_after_ms_are_zero_or_at_least_their_minimum() {
    for (key, value, valid) in [
        ("min_free_bytes", "0", true),
        ("min_free_bytes", "1048576", true),
        ("min_free_bytes", "268435456", true),
        ("min_free_bytes", "1048575", false),
        ("min_free_bytes", "1", false),
        ("store_give_up_after_ms", "0", true),
        ("store_give_up_after_ms", "1000", true),
        ("store_give_up_after_ms", "300000", true),
        ("store_give_up_after_ms", "999", false),
    ] {
        let text = with(
            "data_dir: /tmp/tr\n",
            &format!("data_dir: /tmp/tr\n{key}: {value}\n"),
        );
        if valid {
            check(&text, &[]);
        } else {
            check(&text, &[(Some(2), key)]);
        }
    }
    check(
        &with(
            "data_dir: /tmp/tr\n",
            "data_dir: /tmp/tr\nmin_free_bytes: -1\n",
        ),
        &[(Some(2), "min_free_bytes")],
    );
}

#[test]
fn disk_channels_are_checked_key_by_key() {
    let disk = |keys: &str| with("    type: memory\n", &format!("    type: disk\n{keys}"));
    check(&disk(""), &[]);
    check(&disk("    max_bytes: 10737418240\n    fsync: batch\n"), &[]);
    check(
        &disk("    fsync: {interval_ms: 100}\n    max_events: 5000000\n"),
        &[],
    );
    check(
        &disk("    max_bytes: 1000\n"),
        &[(
            Some(10),
            "max_bytes 1000 is too small for a disk channel: give it at least 1048576",
        )],
    );
    check(
        &disk("    fsync: {interval_ms: 0}\n"),
        &[(Some(10), "fsync interval_ms must be greater than 0")],
    );
    check(
        &disk("    fsync: often\n"),
        &[(Some(10), "unknown variant `often`")],
    );
    check(
        &disk("    max_byte: 5\n"),
        &[(Some(10), "unknown field `max_byte`")],
    );
    check(
        &disk("    capacity_events: 5\n"),
        &[(
            Some(10),
            "capacity_events applies to type memory channels only, not to type disk",
        )],
    );
    check(
        &with(
            "    type: memory\n",
            "    type: memory\n    max_bytes: 10485760\n",
        ),
        &[(Some(10), "max_bytes applies to type disk channels only")],
    );
    check(
        &with("    type: memory\n", "    type: tape\n"),
        &[(Some(9), "expected `memory` or `disk`")],
    );
}
