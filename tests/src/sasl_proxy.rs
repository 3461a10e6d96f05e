//! [`SaslProxy`]: a Kafka-protocol proxy that terminates SASL/OAUTHBEARER
//! in front of a plaintext tansu (0.6.0 speaks SCRAM only), and
//! [`TokenEndpoint`], a fake OIDC token endpoint.
//!
//! The proxy reads each request frame of a client and either answers it
//! itself (SaslHandshake, api key 17; SaslAuthenticate, 36) or forwards it
//! to tansu and copies the response back, one request at a time. It
//! rewrites tansu's ApiVersions response so that clients use the SASL
//! versions it speaks (17 v0-1, 36 v0-1). Like a cluster whose ACLs let
//! anyone read and only an authenticated principal write, it refuses
//! Produce and InitProducerId on a connection that has not authenticated
//! (and closes it), and forwards everything else, so the harness consumer
//! reads without SASL. A failed authentication gets
//! SASL_AUTHENTICATION_FAILED and a closed connection, as from a broker.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

const PRODUCE: i16 = 0;
const SASL_HANDSHAKE: i16 = 17;
const API_VERSIONS: i16 = 18;
const INIT_PRODUCER_ID: i16 = 22;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// What the proxy has seen, for the test to assert on.
#[derive(Clone, Debug, Default)]
pub struct SaslStats {
    /// Successful authentications, by token.
    pub accepted: BTreeMap<String, u64>,
    /// Authentications refused (a token not accepted, a bad message).
    pub refused: u64,
    /// Produce or InitProducerId requests on an unauthenticated connection.
    pub unauthenticated_writes: u64,
    /// Produce requests forwarded on authenticated connections.
    pub produce_requests: u64,
    /// Requests forwarded on authenticated connections, by api key
    /// (32: DescribeConfigs).
    pub authenticated_requests: BTreeMap<i16, u64>,
    /// The SASL extensions of the last successful authentication.
    pub extensions: BTreeMap<String, String>,
    /// The mechanisms clients asked for in SaslHandshake, in order.
    pub mechanisms: Vec<String>,
    /// The token each open connection last authenticated with, by
    /// connection number.
    pub sessions: BTreeMap<u64, String>,
}

/// How the proxy checks a client: by default the bearer token of an
/// OAUTHBEARER client-first message.
pub trait TokenCheck: Send + Sync {
    /// Ok, or why the token is refused.
    fn check(&self, token: &str) -> Result<(), String>;

    /// The one SASL mechanism the proxy offers.
    fn mechanism(&self) -> &str {
        "OAUTHBEARER"
    }

    /// The first SaslAuthenticate message of a mechanism other than
    /// OAUTHBEARER.
    fn check_message(&self, _message: &[u8]) -> Result<(), String> {
        Err("only OAUTHBEARER is spoken here".into())
    }

    /// For a mechanism of several messages (SCRAM): the server side of one
    /// connection's exchange. `None`: one message decides.
    fn conversation(&self) -> Option<Box<dyn Conversation>> {
        None
    }
}

/// One connection's SASL exchange of several messages.
pub trait Conversation: Send {
    /// The server's answer to a client message, or why it is refused.
    fn step(&mut self, message: &[u8]) -> Result<Step, String>;
}

pub enum Step {
    /// Send these bytes; the client answers.
    Challenge(Vec<u8>),
    /// Authenticated; send these last bytes.
    Done(Vec<u8>),
}

/// SCRAM-SHA-256 (RFC 5802, RFC 7677), which tansu 0.6.0 refuses: the
/// server side for one user, computed with `ring`.
pub struct ScramSha256Check {
    pub user: String,
    pub password: String,
}

impl TokenCheck for ScramSha256Check {
    fn check(&self, _: &str) -> Result<(), String> {
        Err("SCRAM has no token".into())
    }

    fn mechanism(&self) -> &str {
        "SCRAM-SHA-256"
    }

    fn conversation(&self) -> Option<Box<dyn Conversation>> {
        Some(Box::new(Scram {
            user: self.user.clone(),
            password: self.password.clone(),
            state: None,
        }))
    }
}

struct Scram {
    user: String,
    password: String,
    /// After the client-first message: (client-first-bare, server-first,
    /// salted password).
    state: Option<(String, String, [u8; 32])>,
}

fn hmac256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut out = [0; 32];
    out.copy_from_slice(ring::hmac::sign(&key, data).as_ref());
    out
}

impl Conversation for Scram {
    fn step(&mut self, message: &[u8]) -> Result<Step, String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = std::str::from_utf8(message).map_err(|_| "not UTF-8".to_string())?;
        match self.state.take() {
            None => {
                let bare = text
                    .strip_prefix("n,,")
                    .ok_or_else(|| format!("bad gs2 header in {text:?}"))?;
                let attr = |k: &str| {
                    bare.split(',')
                        .find_map(|kv| kv.strip_prefix(k))
                        .map(str::to_string)
                };
                let user = attr("n=").ok_or("no n=")?;
                let nonce = attr("r=").ok_or("no r=")?;
                if user != self.user {
                    return Err(format!("unknown user {user:?}"));
                }
                let salt = b"tailrace-test-salt";
                let iterations = 4096;
                let mut salted = [0u8; 32];
                ring::pbkdf2::derive(
                    ring::pbkdf2::PBKDF2_HMAC_SHA256,
                    std::num::NonZeroU32::new(iterations).unwrap(),
                    salt,
                    self.password.as_bytes(),
                    &mut salted,
                );
                let server_first = format!(
                    "r={nonce}server-nonce-{},s={},i={iterations}",
                    std::process::id(),
                    b64.encode(salt)
                );
                self.state = Some((bare.to_string(), server_first.clone(), salted));
                Ok(Step::Challenge(server_first.into_bytes()))
            }
            Some((client_first_bare, server_first, salted)) => {
                let (without_proof, proof) = text
                    .rsplit_once(",p=")
                    .ok_or_else(|| format!("no proof in {text:?}"))?;
                let proof = b64.decode(proof).map_err(|e| format!("proof: {e}"))?;
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let client_key = hmac256(&salted, b"Client Key");
                let stored_key = ring::digest::digest(&ring::digest::SHA256, &client_key);
                let signature = hmac256(stored_key.as_ref(), auth_message.as_bytes());
                let expected: Vec<u8> = client_key
                    .iter()
                    .zip(signature)
                    .map(|(a, b)| a ^ b)
                    .collect();
                if proof != expected {
                    return Err("wrong password (the client proof does not verify)".into());
                }
                let server_key = hmac256(&salted, b"Server Key");
                let server_signature = hmac256(&server_key, auth_message.as_bytes());
                Ok(Step::Done(
                    format!("v={}", b64.encode(server_signature)).into_bytes(),
                ))
            }
        }
    }
}

/// SASL/PLAIN (RFC 4616), which tansu 0.6.0 refuses: accepts the one
/// user and password given (`authzid NUL user NUL password`, the authzid
/// empty or the user).
pub struct PlainCheck {
    pub user: String,
    pub password: String,
}

impl TokenCheck for PlainCheck {
    fn check(&self, _: &str) -> Result<(), String> {
        Err("PLAIN has no token".into())
    }

    fn mechanism(&self) -> &str {
        "PLAIN"
    }

    fn check_message(&self, message: &[u8]) -> Result<(), String> {
        let mut parts = message.split(|&b| b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not authzid NUL user NUL password".into());
        };
        if !authzid.is_empty() && authzid != user {
            return Err("the authzid is another user".into());
        }
        if user == self.user.as_bytes() && password == self.password.as_bytes() {
            Ok(())
        } else {
            Err("wrong user or password".into())
        }
    }
}

/// Accepts exactly the tokens in its set, which a test may change.
#[derive(Default)]
pub struct TokenSet(Mutex<HashSet<String>>);

impl TokenSet {
    pub fn new(tokens: &[&str]) -> Arc<TokenSet> {
        Arc::new(TokenSet(Mutex::new(
            tokens.iter().map(|t| t.to_string()).collect(),
        )))
    }

    /// From now on only `tokens` are accepted.
    pub fn replace(&self, tokens: &[&str]) {
        *lock(&self.0) = tokens.iter().map(|t| t.to_string()).collect();
    }
}

impl TokenCheck for TokenSet {
    fn check(&self, token: &str) -> Result<(), String> {
        if lock(&self.0).contains(token) {
            Ok(())
        } else {
            Err("token not accepted".into())
        }
    }
}

struct Shared {
    check: Arc<dyn TokenCheck>,
    /// `session_lifetime_ms` of SaslAuthenticate v1: the client must
    /// re-authenticate before it passes (KIP-368). 0: never.
    session_lifetime_ms: i64,
    upstream: String,
    stats: Mutex<SaslStats>,
    open: Mutex<Vec<TcpStream>>,
}

/// Listens on a free port of 127.0.0.1; dropping it stops it and closes
/// every connection.
pub struct SaslProxy {
    shared: Arc<Shared>,
    acceptor: Acceptor,
}

impl SaslProxy {
    /// A proxy in front of `upstream` (`host:port`, need not listen yet).
    pub fn start(
        upstream: &str,
        check: Arc<dyn TokenCheck>,
        session_lifetime_ms: i64,
    ) -> SaslProxy {
        let shared = Arc::new(Shared {
            check,
            session_lifetime_ms,
            upstream: upstream.to_string(),
            stats: Mutex::default(),
            open: Mutex::default(),
        });
        let acceptor = {
            let shared = shared.clone();
            Acceptor::start("sasl-proxy", move |client| {
                if let Ok(c) = client.try_clone() {
                    lock(&shared.open).push(c);
                }
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(client, &shared);
                });
            })
        };
        SaslProxy { shared, acceptor }
    }

    pub fn port(&self) -> u16 {
        self.acceptor.port
    }

    /// The value for `bootstrap_servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.acceptor.port)
    }

    pub fn stats(&self) -> SaslStats {
        lock(&self.shared.stats).clone()
    }
}

impl Drop for SaslProxy {
    /// Closes every connection; then the acceptor stops.
    fn drop(&mut self) {
        for s in lock(&self.shared.open).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A thread that hands every connection made to a free port of 127.0.0.1
/// to `handle`; dropping it stops the thread.
struct Acceptor {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn start(name: &str, mut handle: impl FnMut(TcpStream) + Send + 'static) -> Acceptor {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("bound socket has an address")
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{port}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Ok(conn) = conn {
                            handle(conn);
                        }
                    }
                })
                .expect("cannot start an acceptor thread")
        };
        Acceptor {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the thread, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client connection, until either side closes.
fn serve(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let connection = NEXT.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let mut upstream: Option<TcpStream> = None;
    let mut authenticated = false;
    let mut mechanism_ok = false;
    let mut conversation: Option<Box<dyn Conversation>> = None;
    let result = (|| loop {
        let frame = read_frame(&mut client)?;
        let mut r = Reader(&frame);
        let (api_key, version, correlation) = (r.i16()?, r.i16()?, r.i32()?);
        match api_key {
            SASL_HANDSHAKE => {
                r.nullable_string()?; // client id
                let mechanism = r.string()?;
                let offered = shared.check.mechanism();
                mechanism_ok = version >= 1 && mechanism == offered;
                conversation = shared.check.conversation();
                lock(&shared.stats).mechanisms.push(mechanism.to_string());
                let mut body = Vec::new();
                put_i16(
                    &mut body,
                    if mechanism_ok {
                        0
                    } else {
                        UNSUPPORTED_SASL_MECHANISM
                    },
                );
                put_i32(&mut body, 1);
                put_string(&mut body, offered);
                write_frame(&mut client, correlation, &body)?;
                if !mechanism_ok {
                    return Ok(());
                }
            }
            SASL_AUTHENTICATE => {
                r.nullable_string()?;
                let message = r.bytes()?;
                // (the verdict, the server's bytes, whether the exchange goes on)
                let (verdict, server_bytes, more) = match (&mut conversation, mechanism_ok) {
                    (_, false) => (
                        Err((ILLEGAL_SASL_STATE, "no SaslHandshake first".to_string())),
                        Vec::new(),
                        false,
                    ),
                    (Some(c), true) => match c.step(message) {
                        Ok(Step::Challenge(b)) => (Ok(()), b, true),
                        Ok(Step::Done(b)) => (Ok(()), b, false),
                        Err(why) => {
                            lock(&shared.stats).refused += 1;
                            (Err((SASL_AUTHENTICATION_FAILED, why)), Vec::new(), false)
                        }
                    },
                    (None, true) => (authenticate(message, shared, connection), Vec::new(), false),
                };
                let mut body = Vec::new();
                match &verdict {
                    Ok(()) => {
                        put_i16(&mut body, 0);
                        put_i16(&mut body, -1);
                    }
                    Err((code, why)) => {
                        put_i16(&mut body, *code);
                        put_string(&mut body, why);
                    }
                }
                put_i32(&mut body, server_bytes.len() as i32);
                body.extend_from_slice(&server_bytes);
                if version >= 1 {
                    body.extend_from_slice(&shared.session_lifetime_ms.to_be_bytes());
                }
                write_frame(&mut client, correlation, &body)?;
                if more {
                    continue;
                }
                authenticated = verdict.is_ok();
                mechanism_ok = false;
                conversation = None;
                if !authenticated {
                    return Ok(());
                }
            }
            PRODUCE | INIT_PRODUCER_ID if !authenticated => {
                lock(&shared.stats).unauthenticated_writes += 1;
                return Ok(());
            }
            _ => {
                if authenticated {
                    let mut stats = lock(&shared.stats);
                    *stats.authenticated_requests.entry(api_key).or_default() += 1;
                    if api_key == PRODUCE {
                        stats.produce_requests += 1;
                    }
                }
                if upstream.is_none() {
                    let s = TcpStream::connect(&shared.upstream)?;
                    let _ = s.set_nodelay(true);
                    if let Ok(c) = s.try_clone() {
                        lock(&shared.open).push(c);
                    }
                    upstream = Some(s);
                }
                let server = upstream.as_mut().expect("connected above");
                server.write_all(&(frame.len() as u32).to_be_bytes())?;
                server.write_all(&frame)?;
                let mut response = read_frame(server)?;
                if api_key == API_VERSIONS {
                    response = rewrite_api_versions(&response, version).unwrap_or(response);
                }
                client.write_all(&(response.len() as u32).to_be_bytes())?;
                client.write_all(&response)?;
            }
        }
    })();
    let _ = client.shutdown(Shutdown::Both);
    if let Some(s) = upstream {
        let _ = s.shutdown(Shutdown::Both);
    }
    lock(&shared.stats).sessions.remove(&connection);
    result
}

/// Checks an OAUTHBEARER client-first message (RFC 7628):
/// `n,[a=authzid],` 0x01 `auth=Bearer TOKEN` 0x01 (`key=value` 0x01)* 0x01.
fn authenticate(message: &[u8], shared: &Shared, connection: u64) -> Result<(), (i16, String)> {
    let refuse = |why: String| {
        lock(&shared.stats).refused += 1;
        Err((SASL_AUTHENTICATION_FAILED, why))
    };
    if shared.check.mechanism() != "OAUTHBEARER" {
        return shared.check.check_message(message).or_else(refuse);
    }
    let Ok(text) = std::str::from_utf8(message) else {
        return refuse("the client message is not UTF-8".into());
    };
    let Some(body) = text.strip_suffix("\u{1}\u{1}") else {
        return refuse("the client message does not end with two 0x01".into());
    };
    let mut parts = body.split('\u{1}');
    let gs2 = parts.next().unwrap_or_default();
    if !gs2.starts_with("n,") {
        return refuse(format!("bad gs2 header {gs2:?}"));
    }
    let mut token = None;
    let mut extensions = BTreeMap::new();
    for kv in parts {
        let Some((k, v)) = kv.split_once('=') else {
            return refuse(format!("bad key=value {kv:?}"));
        };
        if k == "auth" {
            token = v.strip_prefix("Bearer ");
        } else {
            extensions.insert(k.to_string(), v.to_string());
        }
    }
    let Some(token) = token else {
        return refuse("no auth=Bearer".into());
    };
    if let Err(why) = shared.check.check(token) {
        return refuse(why);
    }
    let mut stats = lock(&shared.stats);
    *stats.accepted.entry(token.to_string()).or_default() += 1;
    stats.sessions.insert(connection, token.to_string());
    stats.extensions = extensions;
    Ok(())
}

/// tansu's ApiVersions response with the SASL entries replaced by the
/// versions this proxy speaks; None when it cannot be parsed (or is an
/// error, which the client answers with a lower version).
fn rewrite_api_versions(response: &[u8], version: i16) -> Option<Vec<u8>> {
    let flexible = version >= 3;
    let mut r = Reader(response);
    let correlation = r.i32().ok()?;
    let error = r.i16().ok()?;
    if error != 0 {
        return None;
    }
    let count = if flexible {
        r.uvarint().ok()?.checked_sub(1)? as usize
    } else {
        r.i32().ok()? as usize
    };
    let mut apis = Vec::with_capacity(count + 2);
    for _ in 0..count {
        let entry = (r.i16().ok()?, r.i16().ok()?, r.i16().ok()?);
        if flexible {
            r.skip_tags().ok()?;
        }
        if entry.0 != SASL_HANDSHAKE && entry.0 != SASL_AUTHENTICATE {
            apis.push(entry);
        }
    }
    apis.push((SASL_HANDSHAKE, 0, 1));
    apis.push((SASL_AUTHENTICATE, 0, 1));
    let mut out = Vec::new();
    put_i32(&mut out, correlation);
    put_i16(&mut out, 0);
    if flexible {
        put_uvarint(&mut out, apis.len() as u64 + 1);
    } else {
        put_i32(&mut out, apis.len() as i32);
    }
    for (key, min, max) in apis {
        put_i16(&mut out, key);
        put_i16(&mut out, min);
        put_i16(&mut out, max);
        if flexible {
            out.push(0);
        }
    }
    out.extend_from_slice(r.0); // throttle time, tagged fields
    Some(out)
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 128 << 20 {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut frame = vec![0u8; len];
    s.read_exact(&mut frame)?;
    Ok(frame)
}

/// A response with header v0 (the correlation id only).
fn write_frame(s: &mut TcpStream, correlation: i32, body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(8 + body.len());
    put_i32(&mut frame, (4 + body.len()) as i32);
    put_i32(&mut frame, correlation);
    frame.extend_from_slice(body);
    s.write_all(&frame)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(std::io::Error::other("short kafka frame"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self) -> std::io::Result<i16> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn i32(&mut self) -> std::io::Result<i32> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn uvarint(&mut self) -> std::io::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(std::io::Error::other("varint too long"))
    }
    fn skip_tags(&mut self) -> std::io::Result<()> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
    fn nullable_string(&mut self) -> std::io::Result<Option<&'a str>> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        std::str::from_utf8(self.take(len as usize)?)
            .map(Some)
            .map_err(std::io::Error::other)
    }
    fn string(&mut self) -> std::io::Result<&'a str> {
        Ok(self.nullable_string()?.unwrap_or_default())
    }
    fn bytes(&mut self) -> std::io::Result<&'a [u8]> {
        let len = self.i32()?;
        self.take(len.max(0) as usize)
    }
}

fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_string(out: &mut Vec<u8>, s: &str) {
    put_i16(out, s.len() as i16);
    out.extend_from_slice(s.as_bytes());
}
fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// What the fake OIDC endpoint saw.
#[derive(Clone, Debug, Default)]
pub struct EndpointStats {
    /// Requests with the right client credentials and grant type.
    pub issued: u64,
    /// Requests refused, with why.
    pub refused: Vec<String>,
    /// The `scope` of the last request.
    pub scope: Option<String>,
}

/// An OAuth 2 token endpoint on 127.0.0.1 for the client credentials grant
/// (RFC 6749 4.4): it checks the client's Basic credentials and issues
/// `access_token`, a JWT whose `exp` and `sub` librdkafka reads.
pub struct TokenEndpoint {
    stats: Arc<Mutex<EndpointStats>>,
    acceptor: Acceptor,
}

impl TokenEndpoint {
    /// Issues `token` to `client_id`:`client_secret`.
    pub fn start(client_id: &str, client_secret: &str, token: &str) -> TokenEndpoint {
        let stats = Arc::new(Mutex::new(EndpointStats::default()));
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{client_id}:{client_secret}"))
        );
        let body =
            format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#);
        let acceptor = {
            let stats = stats.clone();
            Acceptor::start("token-endpoint", move |conn| {
                let _ = answer(conn, &basic, &body, &stats);
            })
        };
        TokenEndpoint { stats, acceptor }
    }

    /// The value for `token_endpoint_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/oauth2/token", self.acceptor.port)
    }

    pub fn stats(&self) -> EndpointStats {
        lock(&self.stats).clone()
    }
}

/// One HTTP/1.1 request: `POST` with a form body, then the token or 401.
fn answer(
    mut conn: TcpStream,
    basic: &str,
    body: &str,
    stats: &Mutex<EndpointStats>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, mut form) = loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (
                String::from_utf8_lossy(&buf[..end]).into_owned(),
                buf[end + 4..].to_vec(),
            );
        }
    };
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while form.len() < length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        form.extend_from_slice(&chunk[..n]);
    }
    let form = String::from_utf8_lossy(&form).into_owned();
    let fields: BTreeMap<&str, &str> = form
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let problem = if !head.starts_with("POST ") {
        Some("not a POST".to_string())
    } else if header("authorization").as_deref() != Some(basic) {
        Some("wrong client credentials".to_string())
    } else if fields.get("grant_type") != Some(&"client_credentials") {
        Some(format!("grant_type is not client_credentials: {form:?}"))
    } else {
        None
    };
    let response = match problem {
        None => {
            let mut s = lock(stats);
            s.issued += 1;
            s.scope = fields
                .get("scope")
                .map(|v| v.replace("%20", " ").replace('+', " "));
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        }
        Some(why) => {
            lock(stats).refused.push(why);
            let e = r#"{"error":"invalid_client"}"#;
            format!("HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{e}", e.len())
        }
    };
    conn.write_all(response.as_bytes())
}

/// An unsigned JWT (`alg: none`) with `sub` and `exp` (seconds since the
/// epoch): what an identity provider's token looks like to the client,
/// which reads but never verifies it.
pub fn jwt(sub: &str, exp: u64) -> String {
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"{sub}","exp":{exp},"iat":{}}}"#,
            exp.saturating_sub(3600)
        ))
    )
}

/// Checks an AWS MSK IAM token the way MSK does, with the test's own
/// credentials: the token is a base64url `https://kafka.REGION.amazonaws.com/`
/// URL presigned with SigV4 for `Action=kafka-cluster:Connect`; the
/// signature is computed again here (ring's HMAC-SHA256, written apart from
/// the agent's aws-sigv4) and must match, and the URL must not have expired.
pub struct MskIamCheck {
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl TokenCheck for MskIamCheck {
    fn check(&self, token: &str) -> Result<(), String> {
        let url = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| format!("not base64url: {e}"))?;
        let url = String::from_utf8(url).map_err(|_| "not UTF-8".to_string())?;
        let host = format!("kafka.{}.amazonaws.com", self.region);
        let query = url
            .strip_prefix(&format!("https://{host}/?"))
            .ok_or_else(|| format!("not a URL of {host}: {url}"))?;
        let params: Vec<(String, String)> = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let want = |name: &str, value: &str| match get(name) {
            Some(v) if v == value => Ok(()),
            other => Err(format!("{name} is {other:?}, not {value:?}")),
        };
        want("Action", "kafka-cluster:Connect")?;
        want("X-Amz-Algorithm", "AWS4-HMAC-SHA256")?;
        want("X-Amz-SignedHeaders", "host")?;
        if let Some(session) = &self.session_token {
            want("X-Amz-Security-Token", session)?;
        }
        let date = get("X-Amz-Date").ok_or("no X-Amz-Date")?;
        let scope = format!(
            "{}/{}/kafka-cluster/aws4_request",
            date.get(..8).ok_or("short date")?,
            self.region
        );
        want(
            "X-Amz-Credential",
            &format!("{}/{scope}", self.access_key_id),
        )?;
        let expires: u64 = get("X-Amz-Expires")
            .and_then(|v| v.parse().ok())
            .ok_or("no X-Amz-Expires")?;
        // Canonical request: every parameter but the signature and the
        // user agent (added after signing), sorted, encoded per SigV4.
        let mut canonical: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "X-Amz-Signature" && k != "User-Agent")
            .map(|(k, v)| (sigv4_encode(k), sigv4_encode(v)))
            .collect();
        canonical.sort();
        let canonical_query = canonical
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let empty = hex(ring::digest::digest(&ring::digest::SHA256, b"").as_ref());
        let request = format!("GET\n/\n{canonical_query}\nhost:{host}\n\nhost\n{empty}");
        let hashed = hex(ring::digest::digest(&ring::digest::SHA256, request.as_bytes()).as_ref());
        let to_sign = format!("AWS4-HMAC-SHA256\n{date}\n{scope}\n{hashed}");
        let mac = |key: &[u8], data: &str| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            ring::hmac::sign(&key, data.as_bytes()).as_ref().to_vec()
        };
        let mut key = mac(
            format!("AWS4{}", self.secret_access_key).as_bytes(),
            &date[..8],
        );
        for part in [self.region.as_str(), "kafka-cluster", "aws4_request"] {
            key = mac(&key, part);
        }
        want("X-Amz-Signature", &hex(&mac(&key, &to_sign)))?;
        let signed_at = parse_amz_date(date).ok_or("bad X-Amz-Date")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if now > signed_at + expires || signed_at > now + 300 {
            return Err(format!(
                "signed at {signed_at}, valid {expires} s, now {now}"
            ));
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SigV4's URI encoding: everything but A-Z a-z 0-9 - _ . ~ as %XX.
fn sigv4_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let v = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(v.unwrap_or(b'%'));
                i += if v.is_some() { 3 } else { 1 };
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `20150830T123600Z` as seconds since the epoch.
fn parse_amz_date(d: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| d.get(r)?.parse::<u64>().ok();
    let (y, m, day, h, min, s) = (
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(9..11)?,
        n(11..13)?,
        n(13..15)?,
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + min * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msk_check_verifies_a_known_signature() {
        // The agent's known answer (plugins/kafka/src/auth/msk.rs): the
        // signature checks, then the clock refuses a URL signed in 2015.
        let url = "https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect\
            &X-Amz-Algorithm=AWS4-HMAC-SHA256\
            &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Feu-west-1%2Fkafka-cluster%2Faws4_request\
            &X-Amz-Date=20150830T123600Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
            &X-Amz-Security-Token=SESSION\
            &X-Amz-Signature=326c211753acb490a68678297709f397c7facc6f203503eaf40f06fd4c68ec20\
            &User-Agent=tailrace%2F0.1.0";
        let check = MskIamCheck {
            region: "eu-west-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("SESSION".into()),
        };
        let e = check.check(&URL_SAFE_NO_PAD.encode(url)).unwrap_err();
        assert!(e.starts_with("signed at 1440938160, valid 900 s"), "{e}");
        let tampered = url.replace("Expires=900", "Expires=999999999");
        let e = check.check(&URL_SAFE_NO_PAD.encode(tampered)).unwrap_err();
        assert!(e.starts_with("X-Amz-Signature is"), "{e}");
    }
}
