//! AWS MSK IAM: an OAUTHBEARER token that is a SigV4-presigned URL for the
//! action `kafka-cluster:Connect`, base64url-encoded, as Amazon's signers
//! (aws-msk-iam-sasl-signer for Java, Python, Go, Rust) make it. The
//! credentials come from aws-config's standard chain (environment, profile,
//! web identity, ECS, instance metadata); aws-sigv4 signs.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use base64::Engine;
use tailrace_api::Secret;

use super::{millis, Token, TokenError};

/// How long a signed URL is valid, as Amazon's signers sign it.
const EXPIRES: Duration = Duration::from_secs(900);
/// The longest the sink thread waits for the credential chain.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(30);
const SERVICE: &str = "kafka-cluster";
const USER_AGENT: &str = concat!("tailrace/", env!("CARGO_PKG_VERSION"));

/// A request to the credential thread: where to send its answer.
type Request = mpsc::Sender<Result<Credentials, String>>;

/// Signs tokens with credentials that a thread of its own fetches.
pub struct MskIam {
    region: String,
    /// Asks the credential thread; started on the first token.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    profile: Option<String>,
}

impl MskIam {
    pub fn new(region: String, profile: Option<String>) -> MskIam {
        MskIam {
            region,
            requests: Mutex::new(None),
            profile,
        }
    }

    pub fn token(&self) -> Result<Token, TokenError> {
        let credentials = self.credentials().map_err(TokenError::Aws)?;
        token(&self.region, &credentials, SystemTime::now())
    }

    /// Credentials from the chain, through the credential thread, which
    /// keeps the chain (and its HTTP connections) between refreshes.
    fn credentials(&self) -> Result<Credentials, String> {
        let (reply, answer) = mpsc::channel();
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let unsent = match requests.as_ref() {
            Some(tx) => tx.send(reply).err().map(|e| e.0),
            None => Some(reply),
        };
        if let Some(reply) = unsent {
            let tx = start(self.region.clone(), self.profile.clone())?;
            tx.send(reply)
                .map_err(|_| "the aws credential thread stopped".to_string())?;
            *requests = Some(tx);
        }
        drop(requests);
        answer.recv_timeout(CREDENTIALS_TIMEOUT).map_err(|_| {
            format!(
                "the aws credential chain gave no answer within {} s",
                CREDENTIALS_TIMEOUT.as_secs()
            )
        })?
    }
}

/// The credential thread: a small tokio runtime of its own, so the chain
/// works whether or not the caller is inside one. It ends when the
/// `MskIam` is dropped.
fn start(region: String, profile: Option<String>) -> Result<mpsc::Sender<Request>, String> {
    let (tx, rx) = mpsc::channel::<Request>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the aws credential runtime: {e}"))?;
    std::thread::Builder::new()
        .name("aws-credentials".into())
        .spawn(move || {
            runtime.block_on(async move {
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region))
                    .http_client(http);
                if let Some(p) = profile {
                    loader = loader.profile_name(p);
                }
                let chain = loader.load().await.credentials_provider();
                // Blocking receive between refreshes: nothing else runs here.
                while let Ok(reply) = rx.recv() {
                    let answer = match &chain {
                        Some(chain) => chain
                            .provide_credentials()
                            .await
                            .map_err(|e| format!("no aws credentials: {}", error_chain(&e))),
                        None => Err("aws-config found no credential provider".to_string()),
                    };
                    let _ = reply.send(answer);
                }
            })
        })
        .map_err(|e| format!("cannot start the aws credential thread: {e}"))?;
    Ok(tx)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The MSK IAM token for `region` signed at `now`. It expires with the
/// signature, or with the credentials when they expire sooner; librdkafka
/// asks for the next one when 80 % of that time has passed.
pub(super) fn token(
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<Token, TokenError> {
    let expires = credentials
        .expiry()
        .map_or(now + EXPIRES, |e| e.min(now + EXPIRES));
    if expires <= now {
        return Err(TokenError::Aws("the aws credentials have expired".into()));
    }
    let host = format!("kafka.{region}.amazonaws.com");
    let mut url = presign(
        &host,
        &[("Action", "kafka-cluster:Connect")],
        SERVICE,
        region,
        credentials,
        now,
        EXPIRES,
    )
    .map_err(TokenError::Aws)?;
    url.push_str("&User-Agent=");
    url.extend(form_urlencoded::byte_serialize(USER_AGENT.as_bytes()));
    Ok(Token {
        value: Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)),
        principal: credentials.access_key_id().to_string(),
        lifetime_ms: millis(expires),
    })
}

/// `https://{host}/?{params}` presigned with SigV4 (signature in the
/// query, empty payload, only `host` signed).
fn presign(
    host: &str,
    params: &[(&str, &str)],
    service: &str,
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
    expires: Duration,
) -> Result<String, String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(params);
    let url = format!("https://{host}/?{}", query.finish());
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    let identity = credentials.clone().into();
    let signing = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| format!("bad signing parameters: {e}"))?
        .into();
    let request = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::empty(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| format!("cannot sign {host}: {e}"))?;
    let (instructions, _) = sign(request, &signing)
        .map_err(|e| format!("cannot sign {host}: {e}"))?
        .into_parts();
    // The query starts after `?`: appended pairs are joined with `&`.
    let start = host.len() + "https://".len() + 2;
    let mut query = form_urlencoded::Serializer::for_suffix(url.clone(), start);
    for (name, value) in instructions.params() {
        query.append_pair(name, value);
    }
    Ok(query.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// 2015-08-30T12:36:00Z, the clock of the AWS signing test suite.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn query(url: &str) -> HashMap<String, String> {
        let q = url.split_once('?').unwrap().1;
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn presign_matches_the_aws_signing_test_suite() {
        // aws-sigv4's aws-signing-test-suite/v4/get-vanilla-query-order-key-case,
        // query-signature.txt: signature in the query, empty payload, 3600 s.
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let url = presign(
            "example.amazonaws.com",
            &[("Param2", "value2"), ("Param1", "value1")],
            "service",
            "us-east-1",
            &credentials,
            suite_time(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let q = query(&url);
        assert_eq!(
            q["X-Amz-Signature"],
            "86012e2c9ad4d77369f5d81c11f75158aae4f895a085212cc6d3f923d300bed5"
        );
        assert_eq!(
            q["X-Amz-Credential"],
            "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
        );
        assert_eq!(q["X-Amz-Date"], "20150830T123600Z");
        assert_eq!(q["X-Amz-SignedHeaders"], "host");
        assert!(
            url.starts_with("https://example.amazonaws.com/?Param2=value2&Param1=value1&"),
            "{url}"
        );
    }

    fn decode(token: &Token) -> String {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.value.expose())
            .unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn msk_token_is_a_presigned_connect_url() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("SESSION".into()),
            None,
            "test",
        );
        let t = token("eu-west-1", &credentials, suite_time()).unwrap();
        let url = decode(&t);
        assert!(
            url.starts_with(
                "https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect&"
            ),
            "{url}"
        );
        let q = query(&url);
        assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(
            q["X-Amz-Credential"],
            "AKIDEXAMPLE/20150830/eu-west-1/kafka-cluster/aws4_request"
        );
        assert_eq!(q["X-Amz-Expires"], "900");
        assert_eq!(q["X-Amz-Security-Token"], "SESSION");
        assert_eq!(q["User-Agent"], USER_AGENT);
        // Computed apart from aws-sigv4: SigV4 written out with Python's
        // hmac and hashlib, which also gives the test suite's answer above.
        assert_eq!(
            q["X-Amz-Signature"],
            "326c211753acb490a68678297709f397c7facc6f203503eaf40f06fd4c68ec20"
        );
        assert_eq!(t.principal, "AKIDEXAMPLE");
        assert_eq!(t.lifetime_ms, millis(suite_time() + EXPIRES));
    }

    #[test]
    fn token_expires_before_the_credentials_do() {
        let now = suite_time();
        let expiring = |at| Credentials::new("AK", "SK", None, Some(at), "test");
        let soon = expiring(now + Duration::from_secs(300));
        assert_eq!(
            token("us-east-1", &soon, now).unwrap().lifetime_ms,
            millis(now + Duration::from_secs(300))
        );
        let later = expiring(now + Duration::from_secs(3600));
        assert_eq!(
            token("us-east-1", &later, now).unwrap().lifetime_ms,
            millis(now + EXPIRES)
        );
        let gone = expiring(now);
        assert!(token("us-east-1", &gone, now)
            .err()
            .unwrap()
            .to_string()
            .contains("expired"));
    }

    #[test]
    fn refresh_signs_a_new_token_with_the_later_clock() {
        // librdkafka asks again at 80 % of the lifetime: 720 s on.
        let credentials = Credentials::new("AK", "SK", None, None, "test");
        let first = token("us-east-1", &credentials, suite_time()).unwrap();
        let at = suite_time() + Duration::from_secs(720);
        let second = token("us-east-1", &credentials, at).unwrap();
        assert_eq!(second.lifetime_ms, millis(at + EXPIRES));
        assert!(second.lifetime_ms > first.lifetime_ms);
        assert_eq!(query(&decode(&second))["X-Amz-Date"], "20150830T124800Z");
        assert_ne!(first.value.expose(), second.value.expose());
    }
}
