//! SASL: the `sasl:` keys of the kafka sink, the librdkafka properties they
//! become, and the token sources of OAUTHBEARER and AWS MSK IAM.

use serde::Deserialize;
use tailrace_api::{ConfigIssue, Secret};

/// `sasl: { mechanism: SCRAM-SHA-512, username: ..., password: ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub mechanism: Mechanism,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
    #[serde(rename = "AWS_MSK_IAM")]
    AwsMskIam,
    #[serde(rename = "GSSAPI")]
    Gssapi,
}

impl SaslConfig {
    /// Every error of these keys; paths are relative to `sasl`.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if matches!(
            self.mechanism,
            Mechanism::Plain | Mechanism::ScramSha256 | Mechanism::ScramSha512
        ) {
            if self.username.as_deref().is_none_or(str::is_empty) {
                issues.push(ConfigIssue::new(
                    &["username"],
                    "username is required for this mechanism",
                ));
            }
            if self.password.as_ref().is_none_or(Secret::is_empty) {
                issues.push(ConfigIssue::new(
                    &["password"],
                    "password is required for this mechanism",
                ));
            }
        }
        issues
    }

    /// The librdkafka properties (`sasl.*`) these keys stand for.
    /// `security.protocol` is set by the caller from whether `tls:` is there.
    pub fn properties(&self) -> Vec<(String, String)> {
        let mechanism = match self.mechanism {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OAuthBearer | Mechanism::AwsMskIam => "OAUTHBEARER",
            Mechanism::Gssapi => "GSSAPI",
        };
        let mut p = vec![("sasl.mechanism".to_string(), mechanism.to_string())];
        if let Some(u) = &self.username {
            p.push(("sasl.username".into(), u.clone()));
        }
        if let Some(s) = &self.password {
            p.push(("sasl.password".into(), s.expose().to_string()));
        }
        p
    }
}
