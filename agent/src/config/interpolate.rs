//! `${VAR}` and `${VAR:-default}` in the config text, from the environment.
//!
//! Substitution happens on the text before YAML parsing, line by line, so
//! line numbers stay those of the file. `$$` is a literal `$`. Comments are
//! left alone.

/// A reference that could not be resolved, with its 1-based line and column.
#[derive(Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<Unresolved>> {
    let mut out = String::with_capacity(text.len());
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

fn interpolate_line(
    line: &str,
    n: usize,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    errors: &mut Vec<Unresolved>,
) {
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
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{input:?}"),
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
    }
}
