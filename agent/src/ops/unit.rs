//! `tailrace test`: unit tests of a config. Each test feeds one input line
//! to a source's interceptors, and the result to the encoding of the sink
//! that reads the source's channel, and compares fields, key, topic, value
//! and whether the line was filtered with what the test expects. No file,
//! socket or broker is opened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use tailrace_api::{Ack, Batch, BatchMeta, Record};

use crate::cli::ConfigArgs;
use crate::config::Config;

/// Run unit tests of a config: what interceptors and sinks make of a line
///
/// Each test in TESTS.yaml names a source and an input line, and what is
/// expected once the source's interceptors ran and the sink that reads the
/// source's channel encoded it: fields, key, topic, a part of the value,
/// and whether the line is filtered out. Nothing is opened: no file,
/// socket or broker. Prints one line per test; for each failing one the
/// expected and the actual value side by side. Exit status: 0 when every
/// test passes, 1 when one fails, 64 when the config or the tests file is
/// refused.
///
///   tests:
///     - name: the user becomes the key
///       source: app
///       input: "seq=1 user=alice action=login"
///       expect:
///         fields: { user: alice }
///         key: alice
///         topic: logs
///         value_contains: '"user":"alice"'
///         filtered: false
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TestArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The YAML file of tests.
    #[arg(long, value_name = "TESTS.yaml")]
    pub tests: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    source: String,
    input: String,
    /// The sink to render with, when the source's channels feed several.
    #[serde(default)]
    sink: Option<String>,
    /// A path for file sources (`{path}` in templates, the JSON `path`).
    #[serde(default)]
    path: Option<PathBuf>,
    expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    fields: BTreeMap<String, String>,
    key: Option<String>,
    topic: Option<String>,
    value_contains: Option<String>,
    #[serde(default)]
    filtered: bool,
}

/// One expectation that did not hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub what: String,
    pub expected: String,
    pub actual: String,
}

/// What one test found.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    /// Empty when the test passed.
    pub mismatches: Vec<Mismatch>,
}

pub fn main(args: TestArgs) -> ExitCode {
    let config = match crate::cli::load(&args.config.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let outcomes = match run_file(&config, &args.tests) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tailrace: {e}");
            return ExitCode::from(crate::cli::EXIT_CONFIG);
        }
    };
    let failed = outcomes.iter().filter(|o| !o.mismatches.is_empty()).count();
    for o in &outcomes {
        if o.mismatches.is_empty() {
            println!("ok    {}", o.name);
            continue;
        }
        println!("FAIL  {}", o.name);
        let width = o.mismatches.iter().map(|m| m.what.len()).max().unwrap_or(0);
        for m in &o.mismatches {
            println!(
                "      {:width$}  expected {:<24}  actual {}",
                m.what, m.expected, m.actual
            );
        }
    }
    println!(
        "{} tests, {} passed, {failed} failed ({})",
        outcomes.len(),
        outcomes.len() - failed,
        args.tests.display()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Reads a tests file and runs every test in it.
pub fn run_file(config: &Config, tests: &Path) -> Result<Vec<Outcome>, String> {
    let text = std::fs::read_to_string(tests)
        .map_err(|e| format!("cannot read the tests file {}: {e}", tests.display()))?;
    let file: TestFile = serde_yaml::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        format!("{}{at}: {e}", tests.display())
    })?;
    file.tests
        .iter()
        .map(|t| {
            run_one(config, t).map_err(|e| format!("{}: test {:?}: {e}", tests.display(), t.name))
        })
        .collect()
}

fn shown(v: Option<&str>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "(none)".into(),
    }
}

fn run_one(config: &Config, t: &TestCase) -> Result<Outcome, String> {
    let source = config
        .sources
        .iter()
        .find(|s| s.name == t.source)
        .ok_or_else(|| {
            let known: Vec<_> = config.sources.iter().map(|s| s.name.as_str()).collect();
            format!(
                "no source {:?}; the config has: {}",
                t.source,
                known.join(", ")
            )
        })?;
    let interceptors = source
        .interceptors
        .iter()
        .map(|i| i.build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "cannot build the interceptors of source {}: {e}",
                source.name
            )
        })?;
    let meta = Arc::new(BatchMeta {
        source: source.name.as_str().into(),
        path: t.path.as_deref().map(Arc::from),
        stream: None,
        read_at: SystemTime::now(),
    });
    let record = Record::new(t.input.clone().into_bytes().into(), 0);
    let mut batch = Batch::new(meta, vec![record], Ack::none());
    for i in &interceptors {
        i.intercept(&mut batch);
        if batch.is_empty() {
            break;
        }
    }
    let mut mismatches = Vec::new();
    let mut check = |what: &str, expected: String, actual: String| {
        if expected != actual {
            mismatches.push(Mismatch {
                what: what.into(),
                expected,
                actual,
            });
        }
    };
    let filtered = batch.is_empty();
    check(
        "filtered",
        t.expect.filtered.to_string(),
        filtered.to_string(),
    );
    if filtered {
        return Ok(Outcome {
            name: t.name.clone(),
            mismatches,
        });
    }
    let record = &batch.records[0];
    for (name, want) in &t.expect.fields {
        let got = batch.field(record, name).map(|v| v.to_string());
        check(
            &format!("fields.{name}"),
            shown(Some(want)),
            shown(got.as_deref()),
        );
    }
    let wants_sink =
        t.expect.key.is_some() || t.expect.topic.is_some() || t.expect.value_contains.is_some();
    if wants_sink {
        let sinks: Vec<_> = config
            .sinks
            .iter()
            .filter(|s| source.channels.contains(&s.channel))
            .filter(|s| t.sink.as_ref().is_none_or(|n| *n == s.name))
            .collect();
        let sink = match sinks.as_slice() {
            [one] => one,
            [] => {
                return Err(format!(
                    "no sink reads the channels of source {}{}",
                    source.name,
                    t.sink
                        .as_ref()
                        .map(|s| format!(" with the name {s:?}"))
                        .unwrap_or_default()
                ))
            }
            _ => {
                return Err(format!(
                    "several sinks read the channels of source {}: name one with `sink:`",
                    source.name
                ))
            }
        };
        let rendered = sink
            .config
            .render(&batch, record)
            .ok_or_else(|| format!("sink {} ({}) sends nothing to test", sink.name, sink.kind))?;
        if let Some(want) = &t.expect.key {
            let got = rendered
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned());
            check("key", shown(Some(want)), shown(got.as_deref()));
        }
        if let Some(want) = &t.expect.topic {
            check("topic", shown(Some(want)), shown(rendered.topic.as_deref()));
        }
        if let Some(want) = &t.expect.value_contains {
            let value = String::from_utf8_lossy(&rendered.value);
            if !value.contains(want.as_str()) {
                check("value_contains", shown(Some(want)), shown(Some(&value)));
            }
        }
    }
    Ok(Outcome {
        name: t.name.clone(),
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example config in config/ ships with tests in config/tests/
    /// under the same name, and they pass.
    #[test]
    fn every_example_config_passes_its_tests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut configs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        configs.sort();
        assert!(configs.len() >= 7, "{configs:?}");
        for config_path in configs {
            let tests = dir.join("tests").join(config_path.file_name().unwrap());
            assert!(
                tests.exists(),
                "{} has no {}",
                config_path.display(),
                tests.display()
            );
            let config = crate::config::load(
                std::slice::from_ref(&config_path),
                &crate::registry::Registry::builtin(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let outcomes = run_file(&config, &tests).unwrap_or_else(|e| panic!("{e}"));
            assert!(!outcomes.is_empty());
            for o in outcomes {
                assert!(
                    o.mismatches.is_empty(),
                    "{}: {}: {:?}",
                    tests.display(),
                    o.name,
                    o.mismatches
                );
            }
        }
    }

    #[test]
    fn a_failing_test_reports_both_values() {
        let text = "sources:\n  app:\n    type: tcp\n    address: 127.0.0.1:1\n    channels: [main]\n    interceptors:\n      - type: regex_extract\n        pattern: 'user=(?P<user>[a-z]+)'\nchannels:\n  main: { type: memory }\nsinks:\n  k:\n    type: kafka\n    channel: main\n    bootstrap_servers: embedded\n    topic: 'logs-{user}'\n    key: '{user}'\n";
        let config = crate::config::parse(
            Path::new("t.yaml"),
            text,
            &|_| None,
            &crate::registry::Registry::builtin(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let tests = dir.path().join("t.tests.yaml");
        std::fs::write(&tests, "tests:\n  - name: wrong\n    source: app\n    input: user=bob\n    expect:\n      fields: { user: alice }\n      key: alice\n      topic: logs-bob\n").unwrap();
        let o = run_file(&config, &tests).unwrap();
        assert_eq!(
            o[0].mismatches,
            vec![
                Mismatch {
                    what: "fields.user".into(),
                    expected: "\"alice\"".into(),
                    actual: "\"bob\"".into()
                },
                Mismatch {
                    what: "key".into(),
                    expected: "\"alice\"".into(),
                    actual: "\"bob\"".into()
                },
            ]
        );
    }
}
