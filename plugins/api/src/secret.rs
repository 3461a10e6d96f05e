//! A configuration value that must never be shown.

use serde::{Deserialize, Deserializer};

/// A password, a key's passphrase, a client secret or a token: printed as
/// `***` by `Debug` and `Display`, so it cannot reach a log line, an error
/// message or `validate` output by accident. `expose()` is the one way to
/// the text, for the library that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What a secret looks like wherever it is shown.
pub const MASK: &str = "***";

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Whether a config key or librdkafka property names a secret:
/// `password`, `sasl.password`, `key_password`, `client_secret`,
/// `ssl.key.pem`, tokens.
pub fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("token")
        || key.ends_with(".pem")
        || key == "sasl.oauthbearer.config"
}

/// `text` with every occurrence of each secret replaced by [`MASK`].
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    // Longest first, so a secret that contains another is masked whole.
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), MASK);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shown() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn keys_and_masking() {
        for key in ["sasl.password", "key_password", "ssl.key.pem", "client_secret", "sasl.oauthbearer.client.secret", "token_file"] {
            assert!(is_sensitive_key(key), "{key}");
        }
        for key in ["sasl.username", "ca_file", "mechanism"] {
            assert!(!is_sensitive_key(key), "{key}");
        }
        let secrets = ["abc".to_string(), "abcdef".to_string()];
        assert_eq!(mask("x abcdef y abc", &secrets), "x *** y ***");
    }
}
