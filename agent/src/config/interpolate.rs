//! `${VAR}` and `${VAR:-default}` in the config text, from the environment,
//! and `${file:/path}` from a file (a secret kept out of the config, such as
//! a password readable only by the agent).
//!
//! Substitution happens on the text before YAML parsing, line by line, so
//! line numbers stay those of the file. `$$` is a literal `$`. Comments are
//! left alone. What a `${file:}` reference brought in is returned too, so
//! that no message about the config can show it.

/// A reference that could not be resolved, with its 1-based line and column.
#[derive(Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The text with every reference replaced, and the values that came from
/// files (secrets, to be masked wherever the config is shown).
#[derive(Debug, PartialEq, Eq)]
pub struct Interpolated {
    pub text: String,
    pub secrets: Vec<String>,
}

pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, Vec<Unresolved>> {
    let mut out = Interpolated {
        text: String::with_capacity(text.len()),
        secrets: Vec::new(),
    };
    let mut errors = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        interpolate_line(line, n + 1, env, &mut out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The one-line value of a `${file:PATH}` reference: the file's text
/// without its final line break.
fn read_value(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "${{file:{path}}}: the path must be absolute, like ${{file:/etc/tailrace/kafka.password}}"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                " (make it readable by the user tailrace runs as, e.g. root:tailrace 0640)"
            }
            _ => "",
        };
        format!("cannot read {path} for ${{file:{path}}}: {e}{hint}")
    })?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{path} is not UTF-8 text"))?;
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if value.contains('\n') {
        return Err(format!(
            "{path} holds more than one line; ${{file:}} takes a one-line value"
        ));
    }
    Ok(value.to_string())
}

fn interpolate_line(
    line: &str,
    n: usize,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut Interpolated,
    errors: &mut Vec<Unresolved>,
) {
    let Interpolated { text: out, secrets } = out;
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let c = bytes[i];
        match (c, quote) {
            (b'"' | b'\'', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            (b'#', None) if i == 0 || bytes[i - 1].is_ascii_whitespace() => {
                out.push_str(&line[i..]);
                return;
            }
            _ => {}
        }
        if c == b'$' && bytes.get(i + 1) == Some(&b'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c == b'$' && bytes.get(i + 1) == Some(&b'{') {
            let Some(len) = line[i + 2..].find('}') else {
                errors.push(Unresolved {
                    line: n,
                    column: i + 1,
                    message: "unclosed ${ (write $$ for a literal $)".into(),
                });
                out.push_str(&line[i..]);
                return;
            };
            let inner = &line[i + 2..i + 2 + len];
            if let Some(path) = inner.strip_prefix("file:") {
                match read_value(path) {
                    Ok(value) => {
                        out.push_str(&value);
                        if !value.is_empty() {
                            secrets.push(value);
                        }
                    }
                    Err(message) => errors.push(Unresolved {
                        line: n,
                        column: i + 1,
                        message,
                    }),
                }
                i += 2 + len + 1;
                continue;
            }
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                errors.push(Unresolved {
                    line: n,
                    column: i + 1,
                    message: format!("invalid variable name {name:?} in ${{{inner}}}"),
                });
            } else {
                match (env(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => errors.push(Unresolved {
                        line: n,
                        column: i + 1,
                        message: format!("environment variable {name} is not set (set it, or give a default: ${{{name}:-value}})"),
                    }),
                }
            }
            i += 2 + len + 1;
            continue;
        }
        let ch_len = line[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&line[i..i + ch_len]);
        i += ch_len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("kafka-1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn check(input: &str, expected: Result<&str, &[(usize, usize, &str)]>) {
        let got = interpolate(input, &env);
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g.text, e, "{input:?}"),
            (Err(g), Err(e)) => {
                assert_eq!(g.len(), e.len(), "{input:?}: {g:?}");
                for (g, (line, col, says)) in g.iter().zip(e) {
                    assert_eq!((g.line, g.column), (*line, *col), "{input:?}");
                    assert!(g.message.contains(says), "{input:?}: {}", g.message);
                }
            }
            (g, e) => panic!("{input:?}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn interpolation() {
        check("a: ${HOST}:9092\n", Ok("a: kafka-1:9092\n"));
        check("a: ${NOPE:-fallback}\n", Ok("a: fallback\n"));
        check("a: ${HOST:-fallback}\n", Ok("a: kafka-1\n"));
        check("a: ${EMPTY:-x}\n", Ok("a: \n"));
        check("a: $$HOME ${HOST}\n", Ok("a: $HOME kafka-1\n"));
        check("a: ünï ${HOST}\n", Ok("a: ünï kafka-1\n"));
        check("a: 1 # ${NOPE}\n", Ok("a: 1 # ${NOPE}\n"));
        check("a: \"x # ${HOST}\"\n", Ok("a: \"x # kafka-1\"\n"));
        check("x: 1\na: ${NOPE}\n", Err(&[(2, 4, "NOPE is not set")]));
        check(
            "a: ${NOPE} ${ALSO}\n",
            Err(&[(1, 4, "NOPE"), (1, 12, "ALSO")]),
        );
        check("a: ${BAD-NAME}\n", Err(&[(1, 4, "invalid variable name")]));
        check("a: ${HOST\n", Err(&[(1, 4, "unclosed")]));
        check("a: ${file:relative}\n", Err(&[(1, 4, "must be absolute")]));
        check("a: ${file:/nonexistent/x}\n", Err(&[(1, 4, "cannot read /nonexistent/x")]));
    }

    #[test]
    fn file_references_are_read_and_kept_as_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("password");
        std::fs::write(&one, "hunter2\n").unwrap();
        let two = dir.path().join("two-lines");
        std::fs::write(&two, "a\nb\n").unwrap();
        let got = interpolate(&format!("p: ${{file:{}}}\n", one.display()), &env).unwrap();
        assert_eq!(got.text, "p: hunter2\n");
        assert_eq!(got.secrets, vec!["hunter2".to_string()]);
        let e = interpolate(&format!("p: ${{file:{}}}\n", two.display()), &env).unwrap_err();
        assert!(e[0].message.contains("more than one line"), "{e:?}");
    }
}
