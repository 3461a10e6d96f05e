//! SASL: the `sasl:` keys of the kafka sink, the librdkafka properties they
//! become, and the token sources of OAUTHBEARER and AWS MSK IAM.
//!
//! PLAIN, SCRAM, GSSAPI and OAUTHBEARER from an OIDC token endpoint are
//! librdkafka's own: they become `sasl.*` properties. A token file and AWS
//! MSK IAM are token sources that librdkafka asks through the producer
//! context's refresh callback (`TokenSource::token`). Secrets are
//! [`Secret`]s and never appear in an error or a log line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::Deserialize;
use tailrace_api::{ConfigIssue, Secret};

#[cfg(feature = "msk-iam")]
mod msk;

/// `sasl: { mechanism: SCRAM-SHA-512, username: ..., password: ... }`.
///
/// One flat set of keys, so that `validate` can name a key that does not
/// belong to the chosen mechanism instead of failing on the first one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub mechanism: Mechanism,
    /// PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// GSSAPI: the broker's Kerberos service name (`kafka` by default).
    #[serde(default)]
    pub kerberos_service_name: Option<String>,
    /// GSSAPI: this client's principal, `tailrace/host.example.com@REALM`.
    #[serde(default)]
    pub kerberos_principal: Option<String>,
    /// GSSAPI: the keytab librdkafka's `kinit` logs in with.
    #[serde(default)]
    pub kerberos_keytab: Option<PathBuf>,
    /// OAUTHBEARER: a file holding the token, re-read every
    /// `token_file_check_ms` (Kubernetes projected tokens, Vault agent).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub token_file_check_ms: Option<u64>,
    /// OAUTHBEARER: an OIDC token endpoint, client credentials grant,
    /// through librdkafka's builtin `sasl.oauthbearer.method=oidc`.
    #[serde(default)]
    pub token_endpoint_url: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub scope: Option<String>,
    /// SASL extensions (RFC 7628) sent with the token: `{ logicalCluster: lkc-1 }`.
    #[serde(default)]
    pub extensions: Option<BTreeMap<String, String>>,
    /// AWS_MSK_IAM: the cluster's region, `eu-west-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// AWS_MSK_IAM: a profile of ~/.aws/config instead of the default chain's.
    #[serde(default)]
    pub aws_profile: Option<String>,
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

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::AwsMskIam => "AWS_MSK_IAM",
            Mechanism::Gssapi => "GSSAPI",
        }
    }
}

/// How often a token file is read again unless the key says otherwise.
const DEFAULT_TOKEN_FILE_CHECK_MS: u64 = 60_000;
/// The principal librdkafka is told when a token names none (the broker
/// takes the principal from the token itself).
const DEFAULT_PRINCIPAL: &str = "tailrace";

/// Which keys each way of authenticating takes.
const USER_KEYS: &[&str] = &["username", "password"];
const KERBEROS_KEYS: &[&str] = &[
    "kerberos_service_name",
    "kerberos_principal",
    "kerberos_keytab",
];
const FILE_KEYS: &[&str] = &["token_file", "token_file_check_ms"];
const OIDC_KEYS: &[&str] = &[
    "token_endpoint_url",
    "client_id",
    "client_secret",
    "scope",
    "extensions",
];
const AWS_KEYS: &[&str] = &["region", "aws_profile"];

impl SaslConfig {
    /// The optional keys that are set, by name.
    fn present(&self) -> Vec<&'static str> {
        let set: [(&'static str, bool); 14] = [
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            (
                "kerberos_service_name",
                self.kerberos_service_name.is_some(),
            ),
            ("kerberos_principal", self.kerberos_principal.is_some()),
            ("kerberos_keytab", self.kerberos_keytab.is_some()),
            ("token_file", self.token_file.is_some()),
            ("token_file_check_ms", self.token_file_check_ms.is_some()),
            ("token_endpoint_url", self.token_endpoint_url.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("scope", self.scope.is_some()),
            ("extensions", self.extensions.is_some()),
            ("region", self.region.is_some()),
            ("aws_profile", self.aws_profile.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect()
    }

    /// The keys the chosen mechanism takes.
    fn allowed(&self) -> Vec<&'static str> {
        match self.mechanism {
            Mechanism::Plain | Mechanism::ScramSha256 | Mechanism::ScramSha512 => USER_KEYS.into(),
            Mechanism::Gssapi => KERBEROS_KEYS.into(),
            Mechanism::OAuthBearer => [FILE_KEYS, OIDC_KEYS].concat(),
            Mechanism::AwsMskIam => AWS_KEYS.into(),
        }
    }

    /// Every error of these keys; paths are relative to `sasl`.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mechanism = self.mechanism.name();
        let allowed = self.allowed();
        for key in self.present() {
            if !allowed.contains(&key) {
                issues.push(ConfigIssue::new(
                    &[key],
                    format!(
                        "{key} does not belong to mechanism {mechanism} (it takes {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let mut require = |key: &str, missing: bool| {
            if missing {
                issues.push(ConfigIssue::new(
                    &[key],
                    format!("{key} is required for mechanism {mechanism}"),
                ));
            }
        };
        let blank = |s: &Option<String>| s.as_deref().is_none_or(|s| s.trim().is_empty());
        match self.mechanism {
            Mechanism::Plain | Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                require("username", blank(&self.username));
                require(
                    "password",
                    self.password.as_ref().is_none_or(Secret::is_empty),
                );
            }
            Mechanism::Gssapi => {
                require("kerberos_principal", blank(&self.kerberos_principal));
                require(
                    "kerberos_keytab",
                    self.kerberos_keytab
                        .as_deref()
                        .is_none_or(|p| p.as_os_str().is_empty()),
                );
                issues.extend(set_but_empty(
                    "kerberos_service_name",
                    &self.kerberos_service_name,
                    "the default, kafka",
                ));
            }
            Mechanism::OAuthBearer => self.validate_oauthbearer(&mut issues),
            Mechanism::AwsMskIam => {
                require("region", blank(&self.region));
                if let Some(region) = self.region.as_deref().filter(|r| !r.trim().is_empty()) {
                    if !region
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    {
                        issues.push(ConfigIssue::new(
                            &["region"],
                            format!(
                                "region {region:?} is not an AWS region name such as eu-west-1"
                            ),
                        ));
                    }
                }
                issues.extend(set_but_empty(
                    "aws_profile",
                    &self.aws_profile,
                    "the default credential chain",
                ));
                if !cfg!(feature = "msk-iam") {
                    issues.push(ConfigIssue::new(
                        &["mechanism"],
                        "AWS_MSK_IAM needs a tailrace built with the cargo feature msk-iam (the .deb and .rpm packages have it)",
                    ));
                }
            }
        }
        issues
    }

    fn validate_oauthbearer(&self, issues: &mut Vec<ConfigIssue>) {
        match (&self.token_file, &self.token_endpoint_url) {
            (None, None) => issues.push(ConfigIssue::new(
                &["mechanism"],
                "OAUTHBEARER needs one token source: token_file, or token_endpoint_url with client_id and client_secret",
            )),
            (Some(_), Some(_)) => issues.push(ConfigIssue::new(
                &["token_endpoint_url"],
                "token_file and token_endpoint_url are two token sources: keep one",
            )),
            (Some(file), None) => {
                for key in self.present().into_iter().filter(|k| OIDC_KEYS.contains(k)) {
                    issues.push(ConfigIssue::new(
                        &[key],
                        format!("{key} belongs to token_endpoint_url, not to token_file"),
                    ));
                }
                if file.as_os_str().is_empty() {
                    issues.push(ConfigIssue::new(&["token_file"], "token_file is empty"));
                }
                if self.token_file_check_ms == Some(0) {
                    issues.push(ConfigIssue::new(
                        &["token_file_check_ms"],
                        "token_file_check_ms must be greater than 0",
                    ));
                }
            }
            (None, Some(url)) => {
                if self.token_file_check_ms.is_some() {
                    issues.push(ConfigIssue::new(
                        &["token_file_check_ms"],
                        "token_file_check_ms belongs to token_file, not to token_endpoint_url",
                    ));
                }
                if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(char::is_whitespace) {
                    issues.push(ConfigIssue::new(
                        &["token_endpoint_url"],
                        format!("token_endpoint_url {url:?} is not an http:// or https:// URL"),
                    ));
                }
                if self.client_id.as_deref().is_none_or(|s| s.trim().is_empty()) {
                    issues.push(ConfigIssue::new(
                        &["client_id"],
                        "client_id is required with token_endpoint_url",
                    ));
                }
                if self.client_secret.as_ref().is_none_or(Secret::is_empty) {
                    issues.push(ConfigIssue::new(
                        &["client_secret"],
                        "client_secret is required with token_endpoint_url",
                    ));
                }
                for (key, value) in self.extensions.iter().flatten() {
                    // librdkafka joins them as k=v,k=v; RFC 7628 keys are letters.
                    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) || key == "auth" {
                        issues.push(ConfigIssue::new(
                            &["extensions", key],
                            format!("extension name {key:?} must be letters only, and not auth (RFC 7628)"),
                        ));
                    }
                    if value.contains([',', '\u{1}']) {
                        issues.push(ConfigIssue::new(
                            &["extensions", key],
                            format!("the value of extension {key} may not contain a comma"),
                        ));
                    }
                }
            }
        }
    }

    /// The librdkafka properties (`sasl.*`) these keys stand for.
    /// `security.protocol` is set by the caller from whether `tls:` is there.
    pub fn properties(&self) -> Vec<(String, String)> {
        let mechanism = match self.mechanism {
            Mechanism::OAuthBearer | Mechanism::AwsMskIam => "OAUTHBEARER",
            m => m.name(),
        };
        let mut p = vec![("sasl.mechanism", mechanism.to_string())];
        let mut set = |key: &'static str, value: Option<&str>| {
            if let Some(v) = value {
                p.push((key, v.to_string()));
            }
        };
        match self.mechanism {
            Mechanism::Plain | Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                set("sasl.username", self.username.as_deref());
                set("sasl.password", self.password.as_ref().map(Secret::expose));
            }
            Mechanism::Gssapi => {
                set(
                    "sasl.kerberos.service.name",
                    Some(self.kerberos_service_name.as_deref().unwrap_or("kafka")),
                );
                set(
                    "sasl.kerberos.principal",
                    self.kerberos_principal.as_deref(),
                );
                set(
                    "sasl.kerberos.keytab",
                    self.kerberos_keytab.as_deref().and_then(Path::to_str),
                );
            }
            Mechanism::OAuthBearer if self.token_endpoint_url.is_some() => {
                set("sasl.oauthbearer.method", Some("oidc"));
                set(
                    "sasl.oauthbearer.token.endpoint.url",
                    self.token_endpoint_url.as_deref(),
                );
                set("sasl.oauthbearer.client.id", self.client_id.as_deref());
                set(
                    "sasl.oauthbearer.client.secret",
                    self.client_secret.as_ref().map(Secret::expose),
                );
                set("sasl.oauthbearer.scope", self.scope.as_deref());
                let extensions = self
                    .extensions
                    .iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"));
                let extensions = extensions.collect::<Vec<_>>().join(",");
                set(
                    "sasl.oauthbearer.extensions",
                    Some(&extensions)
                        .filter(|e| !e.is_empty())
                        .map(String::as_str),
                );
            }
            // A token file and MSK IAM: the refresh callback gives the token.
            Mechanism::OAuthBearer | Mechanism::AwsMskIam => {}
        }
        p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The source librdkafka's refresh callback asks for tokens, when the
    /// token does not come from librdkafka itself. Call after `validate`.
    pub fn token_source(&self) -> Option<TokenSource> {
        match self.mechanism {
            Mechanism::OAuthBearer => self.token_file.as_ref().map(|path| {
                TokenSource::File(FileToken {
                    path: path.clone(),
                    check: Duration::from_millis(
                        self.token_file_check_ms
                            .unwrap_or(DEFAULT_TOKEN_FILE_CHECK_MS),
                    ),
                })
            }),
            #[cfg(feature = "msk-iam")]
            Mechanism::AwsMskIam => Some(TokenSource::MskIam(msk::MskIam::new(
                self.region.clone().unwrap_or_default(),
                self.aws_profile.clone(),
            ))),
            _ => None,
        }
    }
}

/// An optional key given as blank, which is never what was meant.
fn set_but_empty(key: &str, value: &Option<String>, default: &str) -> Option<ConfigIssue> {
    value.as_ref().filter(|v| v.trim().is_empty()).map(|_| {
        ConfigIssue::new(
            &[key],
            format!("{key} is empty: leave it out for {default}"),
        )
    })
}

/// A token for librdkafka: the value, who it names, when it expires.
pub struct Token {
    pub value: Secret,
    pub principal: String,
    /// Milliseconds since the Unix epoch. librdkafka asks for the next token
    /// when 80 % of the time to this instant has passed.
    pub lifetime_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the oauthbearer token file {path}: {error} (check that the file exists and that the user tailrace may read it)")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the oauthbearer token file {path} is empty (the process that writes it may not have run yet)")]
    Empty { path: PathBuf },
    #[error("the token in {path} expired at {expired_ms} ms since the epoch: whatever renews it has not written a new one")]
    Expired { path: PathBuf, expired_ms: i64 },
    #[error("cannot sign an AWS MSK IAM token: {0}")]
    Aws(String),
    #[error("no oauthbearer token source: set sasl.token_file or sasl.token_endpoint_url")]
    NoSource,
    #[error("librdkafka refused the oauthbearer token: {0}")]
    Refused(String),
}

/// Where OAUTHBEARER tokens come from when librdkafka does not fetch them.
pub enum TokenSource {
    File(FileToken),
    #[cfg(feature = "msk-iam")]
    MskIam(msk::MskIam),
}

impl TokenSource {
    /// A token now; blocks for file or network I/O (the sink thread calls
    /// it from librdkafka's refresh event, a few times an hour).
    pub fn token(&self) -> Result<Token, TokenError> {
        match self {
            TokenSource::File(f) => f.token(SystemTime::now()),
            #[cfg(feature = "msk-iam")]
            TokenSource::MskIam(m) => m.token(),
        }
    }
}

/// Hands a token of `source` to `client` at once, and says when to hand
/// it the next (after 80 % of the token's lifetime, as librdkafka does).
/// For clients whose main queue nobody polls, so that librdkafka's refresh
/// event never reaches the context (rdkafka's `AdminClient` polls only its
/// own queue).
pub(crate) fn set_token<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    source: &TokenSource,
) -> Result<Duration, TokenError> {
    use std::ffi::{CStr, CString};
    let t = source.token()?;
    let invalid = |what: &str| TokenError::Refused(format!("the {what} holds a NUL byte"));
    let value = CString::new(t.value.expose()).map_err(|_| invalid("token"))?;
    let principal = CString::new(t.principal).map_err(|_| invalid("principal"))?;
    let mut error = [0 as std::ffi::c_char; 512];
    // SAFETY: the client's pointer is valid while `client` lives; both
    // strings are NUL-terminated and outlive the call, which copies them;
    // no extensions (null, 0); `error` is writable for its length.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            value.as_ptr(),
            t.lifetime_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        let left_ms = (t.lifetime_ms - millis(SystemTime::now())).max(0) as u64;
        return Ok(Duration::from_millis(left_ms * 4 / 5));
    }
    // SAFETY: librdkafka wrote a NUL-terminated message into `error`.
    let message = unsafe { CStr::from_ptr(error.as_ptr()) };
    Err(TokenError::Refused(message.to_string_lossy().into_owned()))
}

/// What a client context's `generate_oauth_token` answers: a token of
/// `source`, or why there is none.
pub(crate) fn oauth_token(
    source: Option<&TokenSource>,
) -> Result<rdkafka::client::OAuthToken, TokenError> {
    let t = source.ok_or(TokenError::NoSource)?.token()?;
    Ok(rdkafka::client::OAuthToken {
        token: t.value.expose().to_string(),
        principal_name: t.principal,
        lifetime_ms: t.lifetime_ms,
    })
}

/// A token kept in a file by someone else.
pub struct FileToken {
    path: PathBuf,
    /// How long until the file is read again.
    check: Duration,
}

impl FileToken {
    fn token(&self, now: SystemTime) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(&self.path).map_err(|error| TokenError::Read {
            path: self.path.clone(),
            error,
        })?;
        let value = text.trim();
        if value.is_empty() {
            return Err(TokenError::Empty {
                path: self.path.clone(),
            });
        }
        file_token(&self.path, value, self.check, millis(now))
    }
}

/// The token of a file read at `now_ms`: it names the JWT's subject, and is
/// asked for again after `check` (librdkafka refreshes at 80 % of the
/// lifetime), or before the JWT expires when that comes first.
fn file_token(path: &Path, value: &str, check: Duration, now_ms: i64) -> Result<Token, TokenError> {
    let claims = jwt_claims(value);
    let next_check_ms = now_ms + (check.as_millis() as i64) * 5 / 4;
    let lifetime_ms = match claims.exp {
        Some(exp_s) if exp_s * 1000 <= now_ms => {
            return Err(TokenError::Expired {
                path: path.to_path_buf(),
                expired_ms: exp_s * 1000,
            })
        }
        Some(exp_s) => next_check_ms.min(exp_s * 1000),
        None => next_check_ms,
    };
    Ok(Token {
        value: Secret::new(value),
        principal: claims
            .sub
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_PRINCIPAL.into()),
        lifetime_ms,
    })
}

#[derive(Default, Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    sub: Option<String>,
}

/// The `exp` and `sub` claims of a JWT, unverified (the broker verifies);
/// nothing for an opaque token.
fn jwt_claims(token: &str) -> Claims {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Claims::default();
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default()
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> SaslConfig {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    /// validate() of `yaml` gives exactly these (path, part of message).
    fn check(yaml: &str, expected: &[(&str, &str)]) {
        let issues = parse(yaml).validate();
        let got: Vec<(String, String)> = issues
            .iter()
            .map(|i| (i.path.join("."), i.message.clone()))
            .collect();
        assert_eq!(got.len(), expected.len(), "{yaml}: {got:#?}");
        for ((path, message), (want_path, want)) in got.iter().zip(expected) {
            assert_eq!(path, want_path, "{yaml}: {got:#?}");
            assert!(message.contains(want), "{yaml}: {message:?} lacks {want:?}");
        }
    }

    #[test]
    fn valid_configs_of_every_mechanism() {
        for yaml in [
            "{mechanism: PLAIN, username: u, password: p}",
            "{mechanism: SCRAM-SHA-256, username: u, password: p}",
            "{mechanism: SCRAM-SHA-512, username: u, password: p}",
            "{mechanism: GSSAPI, kerberos_principal: tailrace/h@EX, kerberos_keytab: /etc/tailrace/krb5.keytab}",
            "{mechanism: GSSAPI, kerberos_service_name: kafka2, kerberos_principal: p, kerberos_keytab: k}",
            "{mechanism: OAUTHBEARER, token_file: /var/run/secrets/token}",
            "{mechanism: OAUTHBEARER, token_file: /t, token_file_check_ms: 5000}",
            "{mechanism: OAUTHBEARER, token_endpoint_url: 'https://idp/token', client_id: c, client_secret: s}",
            "{mechanism: OAUTHBEARER, token_endpoint_url: 'http://127.0.0.1:1/t', client_id: c, client_secret: s, scope: kafka, extensions: {logicalCluster: lkc-1}}",
        ] {
            check(yaml, &[]);
        }
    }

    #[test]
    fn missing_and_misplaced_keys_are_all_reported() {
        check(
            "{mechanism: SCRAM-SHA-512}",
            &[
                ("username", "required for mechanism SCRAM-SHA-512"),
                ("password", "required"),
            ],
        );
        check(
            "{mechanism: PLAIN, username: ' ', password: '', region: eu-west-1, token_file: /t}",
            &[
                ("token_file", "does not belong to mechanism PLAIN"),
                (
                    "region",
                    "does not belong to mechanism PLAIN (it takes username, password)",
                ),
                ("username", "required"),
                ("password", "required"),
            ],
        );
        check(
            "{mechanism: GSSAPI, username: u, kerberos_service_name: ''}",
            &[
                ("username", "does not belong to mechanism GSSAPI"),
                ("kerberos_principal", "required"),
                ("kerberos_keytab", "required"),
                ("kerberos_service_name", "leave it out"),
            ],
        );
    }

    #[test]
    fn oauthbearer_takes_exactly_one_token_source() {
        check(
            "{mechanism: OAUTHBEARER}",
            &[("mechanism", "needs one token source")],
        );
        check(
            "{mechanism: OAUTHBEARER, token_file: /t, token_endpoint_url: 'https://i/t', client_id: c, client_secret: s}",
            &[("token_endpoint_url", "two token sources")],
        );
        check(
            "{mechanism: OAUTHBEARER, token_file: /t, client_secret: s, scope: x, token_file_check_ms: 0}",
            &[
                ("client_secret", "belongs to token_endpoint_url"),
                ("scope", "belongs to token_endpoint_url"),
                ("token_file_check_ms", "greater than 0"),
            ],
        );
        check(
            "{mechanism: OAUTHBEARER, token_endpoint_url: 'ftp://x', token_file_check_ms: 5, extensions: {'a=b': x, ok: 'a,b'}}",
            &[
                ("token_file_check_ms", "belongs to token_file"),
                ("token_endpoint_url", "not an http:// or https:// URL"),
                ("client_id", "required with token_endpoint_url"),
                ("client_secret", "required with token_endpoint_url"),
                ("extensions.a=b", "letters only"),
                ("extensions.ok", "comma"),
            ],
        );
    }

    #[test]
    fn aws_msk_iam_needs_a_region() {
        let feature: &[(&str, &str)] = if cfg!(feature = "msk-iam") {
            &[]
        } else {
            &[("mechanism", "cargo feature msk-iam")]
        };
        check(
            "{mechanism: AWS_MSK_IAM, region: eu-west-1, aws_profile: prod}",
            feature,
        );
        let mut want = vec![("username", "does not belong"), ("region", "required")];
        want.extend_from_slice(feature);
        check("{mechanism: AWS_MSK_IAM, username: u}", &want);
        let mut want = vec![
            ("region", "not an AWS region"),
            ("aws_profile", "leave it out"),
        ];
        want.extend_from_slice(feature);
        check(
            "{mechanism: AWS_MSK_IAM, region: EU West, aws_profile: ''}",
            &want,
        );
    }

    #[test]
    fn unknown_keys_and_mechanisms_are_refused_by_the_parser() {
        for (yaml, says) in [
            (
                "{mechanism: SCRAM-SHA-999, username: u, password: p}",
                "unknown variant",
            ),
            ("{mechanism: PLAIN, user: u}", "unknown field `user`"),
        ] {
            let e = serde_yaml::from_str::<SaslConfig>(yaml)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{yaml}: {e}");
        }
    }

    fn props(yaml: &str) -> Vec<(String, String)> {
        parse(yaml).properties()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn properties_of_every_mechanism() {
        for (yaml, expected) in [
            (
                "{mechanism: SCRAM-SHA-256, username: u, password: p}",
                &[("sasl.mechanism", "SCRAM-SHA-256"), ("sasl.username", "u"), ("sasl.password", "p")][..],
            ),
            (
                "{mechanism: GSSAPI, kerberos_principal: tr@EX, kerberos_keytab: /k}",
                &[
                    ("sasl.mechanism", "GSSAPI"),
                    ("sasl.kerberos.service.name", "kafka"),
                    ("sasl.kerberos.principal", "tr@EX"),
                    ("sasl.kerberos.keytab", "/k"),
                ],
            ),
            (
                "{mechanism: OAUTHBEARER, token_endpoint_url: 'https://i/t', client_id: c, client_secret: s, scope: 'a b', extensions: {b: '2', a: '1'}}",
                &[
                    ("sasl.mechanism", "OAUTHBEARER"),
                    ("sasl.oauthbearer.method", "oidc"),
                    ("sasl.oauthbearer.token.endpoint.url", "https://i/t"),
                    ("sasl.oauthbearer.client.id", "c"),
                    ("sasl.oauthbearer.client.secret", "s"),
                    ("sasl.oauthbearer.scope", "a b"),
                    ("sasl.oauthbearer.extensions", "a=1,b=2"),
                ],
            ),
            ("{mechanism: OAUTHBEARER, token_file: /t}", &[("sasl.mechanism", "OAUTHBEARER")]),
            ("{mechanism: AWS_MSK_IAM, region: eu-west-1}", &[("sasl.mechanism", "OAUTHBEARER")]),
        ] {
            assert_eq!(props(yaml), pairs(expected), "{yaml}");
        }
    }

    #[test]
    fn librdkafka_has_every_mechanism_built_in() {
        // Setting builtin.features checks that librdkafka has them all.
        let mut config = rdkafka::ClientConfig::new();
        config.set(
            "builtin.features",
            "ssl,sasl_plain,sasl_scram,sasl_gssapi,sasl_oauthbearer,http,oidc",
        );
        if let Err(e) = config.create_native_config() {
            panic!("{e}");
        }
    }

    #[test]
    fn librdkafka_accepts_the_properties() {
        // librdkafka's own parser, built with this crate's features: a
        // property it does not know or a mechanism not built in fails here.
        for yaml in [
            "{mechanism: SCRAM-SHA-512, username: u, password: p}",
            "{mechanism: GSSAPI, kerberos_principal: tr@EX, kerberos_keytab: /k}",
            "{mechanism: OAUTHBEARER, token_endpoint_url: 'https://i/t', client_id: c, client_secret: s, scope: x, extensions: {a: '1'}}",
            "{mechanism: OAUTHBEARER, token_file: /t}",
        ] {
            let mut config = rdkafka::ClientConfig::new();
            config.set("security.protocol", "SASL_SSL");
            for (k, v) in props(yaml) {
                config.set(k, v);
            }
            if let Err(e) = config.create_native_config() {
                panic!("{yaml}: {e}");
            }
        }
    }

    #[test]
    fn token_sources() {
        assert!(parse("{mechanism: OAUTHBEARER, token_endpoint_url: 'https://i', client_id: c, client_secret: s}").token_source().is_none());
        assert!(
            parse("{mechanism: SCRAM-SHA-512, username: u, password: p}")
                .token_source()
                .is_none()
        );
        assert!(matches!(
            parse("{mechanism: OAUTHBEARER, token_file: /t}").token_source(),
            Some(TokenSource::File(_))
        ));
    }

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2ln", b64(r#"{"alg":"none"}"#), b64(claims))
    }

    #[test]
    fn file_token_lifetime_is_the_next_check_or_the_expiry() {
        let path = Path::new("/t");
        let minute = Duration::from_secs(60);
        let now = 1_700_000_000_000;
        // Opaque token: asked again 1.25 checks on (librdkafka refreshes at 80 %).
        let t = file_token(path, "opaque", minute, now).unwrap();
        assert_eq!(
            (t.principal.as_str(), t.lifetime_ms),
            ("tailrace", now + 75_000)
        );
        assert_eq!(t.value.expose(), "opaque");
        // A JWT that expires later than the next check.
        let token = jwt(r#"{"sub":"svc-logs","exp":1700003600}"#);
        let t = file_token(path, &token, minute, now).unwrap();
        assert_eq!(
            (t.principal.as_str(), t.lifetime_ms),
            ("svc-logs", now + 75_000)
        );
        // One that expires sooner: its expiry.
        let token = jwt(r#"{"sub":"svc","exp":1700000030}"#);
        assert_eq!(
            file_token(path, &token, minute, now).unwrap().lifetime_ms,
            1_700_000_030_000
        );
        // Expired: refused, without the token in the message.
        let token = jwt(r#"{"exp":1699999999}"#);
        let e = file_token(path, &token, minute, now)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("expired") && !e.contains(&token), "{e}");
    }

    #[test]
    fn token_file_is_read_again_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = FileToken {
            path: path.clone(),
            check: Duration::from_secs(1),
        };
        let e = source.token(SystemTime::now()).err().unwrap().to_string();
        assert!(e.contains("cannot read") && e.contains("token"), "{e}");
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(
            source.token(SystemTime::now()).unwrap().value.expose(),
            "first"
        );
        std::fs::write(&path, "second").unwrap();
        assert_eq!(
            source.token(SystemTime::now()).unwrap().value.expose(),
            "second"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(source
            .token(SystemTime::now())
            .err()
            .unwrap()
            .to_string()
            .contains("is empty"));
    }
}
