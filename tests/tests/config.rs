//! `tailrace validate`: bad configs are refused before anything starts, with
//! exit status 64 and each error as `FILE:LINE:COL: message` (or
//! `FILE: message` when the error has no single position).

use std::path::{Path, PathBuf};
use std::process::Output;

use tailrace_e2e::tailrace;

/// A valid config; the cases below edit it, so its line numbers matter.
const BASE: &str = r#"data_dir: /var/lib/tailrace
sources:
  app:
    type: file
    include: ["/var/log/app/*.log"]
    exclude: ["*.gz"]
    start_at: beginning
    channels: [main]
channels:
  main:
    type: memory
    capacity_events: 100000
sinks:
  kafka:
    type: kafka
    channel: main
    bootstrap_servers: 127.0.0.1:9092
    topic: logs
"#;

const EX_USAGE: i32 = 64;

/// Writes `yaml` to a temp file and runs `tailrace validate` on it, with the
/// test variables set as given and every other `TAILRACE_TEST_*` unset.
fn validate(yaml: &str, env: &[(&str, &str)]) -> (PathBuf, Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tailrace.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = tailrace();
    cmd.arg("validate").arg("--config").arg(&path);
    for (key, _) in
        std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("TAILRACE_TEST_"))
    {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied());
    let output = cmd.output().expect("cannot run tailrace validate");
    (path, output, dir)
}

/// `BASE` with one edit; panics if `from` is not in it, so a case cannot
/// silently test the unedited config.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} is not in the base config");
    BASE.replacen(from, to, 1)
}

/// `word` occurs in `text` not as part of a longer word ("fil" is not in "file").
fn contains_word(text: &str, word: &str) -> bool {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(word).any(|(at, _)| {
        !is_word(text[..at].chars().next_back()) && !is_word(text[at + word.len()..].chars().next())
    })
}

/// Checks that `yaml` is refused with status 64, that every word appears in
/// an error line `FILE: ...`, and that the line with the first word carries
/// the position `FILE:LINE:COL: ` when `line` is given.
fn check_refused(name: &str, yaml: &str, line: Option<u32>, words: &[&str]) {
    let (path, output, _dir) = validate(yaml, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("case {name:?}: status {}, stderr:\n{stderr}", output.status);
    assert_eq!(output.status.code(), Some(EX_USAGE), "{context}");

    let file = path.display().to_string();
    // Each error line with its `FILE:` prefix removed.
    let errors: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&file)?.strip_prefix(':'))
        .collect();
    for word in words {
        assert!(
            errors.iter().any(|e| contains_word(e, word)),
            "{context}\nno error line `{file}: ...` mentions {word:?}"
        );
    }
    if let Some(line) = line {
        let positioned = errors
            .iter()
            .filter(|e| contains_word(e, words[0]))
            .any(|e| {
                let Some(rest) = e.strip_prefix(&format!("{line}:")) else {
                    return false;
                };
                let col_len = rest.chars().take_while(char::is_ascii_digit).count();
                col_len > 0 && rest[col_len..].starts_with(": ")
            });
        assert!(
            positioned,
            "{context}\nexpected the error at `{file}:{line}:COL: ...`"
        );
    }
}

#[test]
fn base_config_is_valid() {
    let (_, output, _dir) = validate(BASE, &[]);
    assert!(
        output.status.success(),
        "{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn invalid_configs_are_refused_with_position() {
    // (what is wrong, the config, the line the error must point at, words the message must contain)
    let cases: &[(&str, String, Option<u32>, &[&str])] = &[
        (
            "unknown top-level key",
            edit(
                "data_dir: /var/lib/tailrace\n",
                "data_dir: /var/lib/tailrace\ncolour: blue\n",
            ),
            Some(2),
            &["unknown field", "colour"],
        ),
        (
            "unknown key inside a file source",
            edit(
                "    start_at: beginning\n",
                "    start_at: beginning\n    follow: true\n",
            ),
            Some(8),
            &["unknown field", "follow"],
        ),
        (
            "unknown source type, listing the known ones",
            edit("type: file", "type: fil"),
            Some(4),
            &["fil", "file"],
        ),
        (
            "source naming an undefined channel",
            edit("channels: [main]", "channels: [mian]"),
            Some(8),
            &["mian"],
        ),
        (
            "channel no one uses",
            edit(
                "channels:\n  main:\n",
                "channels:\n  spare:\n    type: memory\n  main:\n",
            ),
            Some(10),
            &["spare"],
        ),
        (
            "bad glob",
            edit("/var/log/app/*.log", "/var/log/app/[.log"),
            Some(5),
            &["/var/log/app/[.log"],
        ),
        (
            "bad bootstrap address",
            edit(
                "bootstrap_servers: 127.0.0.1:9092",
                r#"bootstrap_servers: "not an address:""#,
            ),
            Some(17),
            &["not an address:"],
        ),
        (
            "unset variable without a default",
            edit("topic: logs", "topic: ${TAILRACE_TEST_UNSET}"),
            Some(18),
            &["TAILRACE_TEST_UNSET"],
        ),
        (
            "start_at neither beginning nor end",
            edit("start_at: beginning", "start_at: middle"),
            Some(7),
            &["middle"],
        ),
        (
            "YAML syntax error",
            edit("topic: logs", "topic: logs: extra"),
            Some(18),
            &["mapping values"],
        ),
        (
            "every error is listed, not just the first",
            edit("channels: [main]", "channels: [mian]").replacen(
                "127.0.0.1:9092",
                r#""not an address:""#,
                1,
            ),
            Some(8),
            &["mian", "not an address:"],
        ),
    ];
    for (name, yaml, line, words) in cases {
        check_refused(name, yaml, *line, words);
    }
}

#[test]
fn every_config_in_config_dir_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    configs.sort();
    assert!(
        !configs.is_empty(),
        "no example configs in {}",
        dir.display()
    );

    let failures: Vec<String> = configs
        .iter()
        .filter_map(|config| {
            let output = tailrace()
                .arg("validate")
                .arg("--config")
                .arg(config)
                .output()
                .unwrap();
            (!output.status.success()).then(|| {
                format!(
                    "{} ({}):\n{}",
                    config.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "example configs refused:\n{}",
        failures.join("\n")
    );
}

#[test]
fn interpolation_uses_env_and_default() {
    type Env = &'static [(&'static str, &'static str)];
    // (the start_at line, the environment, whether it is valid)
    let cases: &[(&str, Env, bool)] = &[
        ("start_at: ${TAILRACE_TEST_START_AT:-beginning}", &[], true),
        (
            "start_at: ${TAILRACE_TEST_START_AT:-beginning}",
            &[("TAILRACE_TEST_START_AT", "end")],
            true,
        ),
        // The variable wins over the default...
        (
            "start_at: ${TAILRACE_TEST_START_AT:-beginning}",
            &[("TAILRACE_TEST_START_AT", "middle")],
            false,
        ),
        (
            "start_at: ${TAILRACE_TEST_START_AT:-middle}",
            &[("TAILRACE_TEST_START_AT", "end")],
            true,
        ),
        // ...and the default is used when it is unset.
        ("start_at: ${TAILRACE_TEST_START_AT:-middle}", &[], false),
        (
            "start_at: ${TAILRACE_TEST_START_AT}",
            &[("TAILRACE_TEST_START_AT", "end")],
            true,
        ),
    ];
    for (start_at, env, valid) in cases {
        let (_, output, _dir) = validate(&edit("start_at: beginning", start_at), env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let context = format!(
            "{start_at:?} with {env:?}: status {}, stderr:\n{stderr}",
            output.status
        );
        if *valid {
            assert!(output.status.success(), "{context}");
        } else {
            assert_eq!(output.status.code(), Some(EX_USAGE), "{context}");
            assert!(contains_word(&stderr, "middle"), "{context}");
        }
    }
}

#[test]
fn version_names_the_release() {
    let output = tailrace().arg("--version").output().unwrap();
    assert!(output.status.success(), "{}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "tailrace --version printed {stdout:?}"
    );
}
