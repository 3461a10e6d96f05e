//! TLS on TCP sources, with certificates made by the test (rcgen) and a
//! rustls client.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, start};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tailrace_socket::{SyslogSourceConfig, TcpSourceConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A CA, a server certificate for localhost and a client certificate,
/// written as PEM files into `dir`.
struct Pki {
    ca: CertificateDer<'static>,
    client_cert: String,
    client_key: String,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["client".to_string()]).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();

    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    Pki {
        ca: ca.der().clone(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn connector(pki: &Pki, with_client_cert: bool) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = if with_client_cert {
        let cert = CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).unwrap();
        builder.with_client_auth_cert(vec![cert], key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    TlsConnector::from(Arc::new(config))
}

fn tls_yaml(kind_keys: &str, port: u16, dir: &Path, client_ca: bool) -> String {
    let d = dir.display();
    let ca = if client_ca {
        format!(", client_ca_path: {d}/ca.pem")
    } else {
        String::new()
    };
    format!("{{{kind_keys}address: 127.0.0.1:{port}, tls: {{cert_path: {d}/server.pem, key_path: {d}/server.key{ca}}}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_lines_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(&tls_yaml("", port, dir.path(), false), 1000);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut c = connector(&pki, false)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    c.write_all(b"secret one\nsecret two\n").await.unwrap();
    c.flush().await.unwrap();
    s.wait_records(2).await;
    assert_eq!(s.payloads(), ["secret one", "secret two"]);
    // plain text on the TLS port is not read as lines
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain.write_all(b"plain text\n").await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await;
    s.stop().await;
    assert_eq!(s.payloads(), ["secret one", "secret two"]);
    assert_eq!(s.metric(&refused("tls_handshake_failed")), 1.0);
    assert_eq!(s.metric(&refused("tls_handshake_timeout")), 0.0);
}

/// `tailrace_source_connections_refused_total{source="sock",reason}`.
fn refused(reason: &str) -> String {
    format!("tailrace_source_connections_refused_total{{source=\"sock\",reason=\"{reason}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_requires_a_client_certificate_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let port = free_port();
    let mut s = start::<SyslogSourceConfig>(&tls_yaml("mode: tcp, ", port, dir.path(), true), 1000);

    // Without a certificate the server ends the connection, reads nothing.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let refused = match connector(&pki, false)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        Err(_) => true,
        Ok(mut c) => {
            // TLS 1.3: the client learns of the refusal on its next read.
            let _ = c.write_all(b"<13>1 - h app - - - no certificate\n").await;
            let _ = c.flush().await;
            let mut buf = [0u8; 16];
            let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
            matches!(r, Ok(Err(_)) | Ok(Ok(0)))
        }
    };
    assert!(refused, "a client without a certificate was served");

    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut c = connector(&pki, true)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    // octet counting, detected
    let msg = b"<13>1 - h app - - - with certificate";
    c.write_all(format!("{} ", msg.len()).as_bytes())
        .await
        .unwrap();
    c.write_all(msg).await.unwrap();
    c.flush().await.unwrap();
    s.wait_records(1).await;
    s.stop().await;
    assert_eq!(s.payloads(), [String::from_utf8_lossy(msg)]);
    assert_eq!(
        s.records[0].field("msg").unwrap().to_string(),
        "with certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_certificates_fail_the_build_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config: TcpSourceConfig =
        serde_yaml::from_str(&tls_yaml("", port, dir.path(), false)).unwrap();
    let err = common::try_start(config, 10).err().expect("refused");
    assert!(err.contains("server.pem"), "{err}");
}

/// A client that never finishes its handshake is closed after
/// `tls_handshake_timeout_ms`, although the only connection slot is held by
/// a served client: a handshake holds no slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_handshake_times_out_without_a_connection_slot() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(
        &tls_yaml(
            // Two per address: both clients come from 127.0.0.1 (with the
            // default, max_connections, the silent one was refused as the
            // second from its address, not timed out).
            "max_connections: 1, max_connections_per_address: 2, tls_handshake_timeout_ms: 300, ",
            port,
            dir.path(),
            false,
        ),
        1000,
    );
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut served = connector(&pki, false)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    served.write_all(b"holds the slot\n").await.unwrap();
    served.flush().await.unwrap();
    s.wait_records(1).await;
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(
        common::closed_by_the_source(&mut silent, Duration::from_secs(10)).await,
        "the silent client is closed by its handshake timeout"
    );
    served.write_all(b"still served\n").await.unwrap();
    served.flush().await.unwrap();
    s.wait_records(2).await;
    s.stop().await;
    assert_eq!(s.payloads(), ["holds the slot", "still served"]);
    assert_eq!(s.metric(&refused("tls_handshake_timeout")), 1.0);
    assert_eq!(s.metric(&refused("tls_handshake_failed")), 0.0);
    assert_eq!(s.metric(&refused("per_address")), 0.0);
}

/// A TLS client whose connection waits in the accept backlog or in its
/// handshake when shutdown comes finishes the handshake within the drain
/// deadline and its lines are read, as a plain connection's are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_caught_in_its_handshake_by_shutdown_is_drained() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(&tls_yaml("", port, dir.path(), false), 1000);
    // Connected (the kernel accepted it), not one TLS byte sent yet.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.shutdown.trigger();
    let connector = connector(&pki, false);
    let client = tokio::spawn(async move {
        let mut c = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        c.write_all(b"caught by shutdown\nstill read\n").await?;
        c.shutdown().await
    });
    s.stop().await;
    client
        .await
        .unwrap()
        .expect("the handshake is finished during the drain");
    assert_eq!(s.payloads(), ["caught by shutdown", "still read"]);
    assert_eq!(s.metric(&refused("tls_handshake_timeout")), 0.0);
}

/// RELP over TLS: the same acceptor as tcp; answers after the batch is
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relp_over_tls_is_answered_once_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let port = free_port();
    let s =
        start::<tailrace_socket::RelpSourceConfig>(&tls_yaml("", port, dir.path(), false), 1000);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut c = connector(&pki, false)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    c.write_all(b"1 open 15 commands=syslog\n2 syslog 6 secret\n")
        .await
        .unwrap();
    c.flush().await.unwrap();
    let mut batch = None;
    assert!(
        common::poll(Duration::from_secs(10), || {
            batch = s.channel.recv_timeout(Duration::ZERO);
            batch.is_some()
        })
        .await
    );
    let batch = batch.unwrap();
    assert_eq!(&batch.records[0].payload[..], b"secret");
    batch.ack.done(1);
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&got).contains("2 rsp 6 200 OK\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("answers within 10 s")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("1 rsp "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}
