//! A secured cluster as production runs it: a test PKI made by the real
//! `openssl`, and Debian's `stunnel4` terminating TLS (optionally requiring
//! a client certificate) in front of a tansu broker, which itself requires
//! SASL/SCRAM when asked ([`crate::Broker::start_authenticating`]). tansu
//! 0.6.0's own TLS flags do not work, so the broker advertises the stunnel
//! port and every client connection goes through TLS.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use tempfile::TempDir;

use crate::process;

/// The password of the client key (`client.key` is encrypted with it).
pub const CLIENT_KEY_PASSWORD: &str = "client-key-passphrase";

/// A certificate authority, a server certificate for 127.0.0.1 and
/// localhost, a client certificate with an encrypted key, and a second,
/// unrelated authority (for "wrong CA" tests).
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("pki-")
            .tempdir()
            .expect("cannot create a temp dir");
        let pki = Pki { dir };
        pki.authority("ca", "tailrace test CA");
        pki.authority("other-ca", "an unrelated CA");
        std::fs::write(
            pki.path("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("cannot write server.ext");
        std::fs::write(pki.path("client.ext"), "extendedKeyUsage=clientAuth\n")
            .expect("cannot write client.ext");
        pki.leaf("server", "localhost", "server.ext");
        pki.leaf("client-plain", "tailrace-agent", "client.ext");
        std::fs::rename(pki.path("client-plain.pem"), pki.path("client.pem"))
            .expect("cannot rename the client certificate");
        openssl(
            pki.dir.path(),
            &[
                "pkey",
                "-in",
                "client-plain.key",
                "-aes256",
                "-passout",
                &format!("pass:{CLIENT_KEY_PASSWORD}"),
                "-out",
                "client.key",
            ],
        );
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The authority that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// An authority that signed nothing here.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.path("client.pem")
    }

    /// Encrypted with [`CLIENT_KEY_PASSWORD`].
    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }

    fn authority(&self, name: &str, cn: &str) {
        openssl(
            self.dir.path(),
            &[
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "2", "-subj", &format!("/CN={cn}"),
                "-keyout", &format!("{name}.key"), "-out", &format!("{name}.pem"),
            ],
        );
    }

    fn leaf(&self, name: &str, cn: &str, ext: &str) {
        openssl(
            self.dir.path(),
            &[
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", &format!("/CN={cn}"), "-keyout", &format!("{name}.key"),
                "-out", &format!("{name}.csr"),
            ],
        );
        openssl(
            self.dir.path(),
            &[
                "x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem", "-CAkey",
                "ca.key", "-CAcreateserial", "-days", "2", "-extfile", ext,
                "-out", &format!("{name}.pem"),
            ],
        );
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("cannot run openssl (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// stunnel on 127.0.0.1:`port`, with the PKI's server certificate,
/// forwarding to 127.0.0.1:`target`. With `require_client_cert`, a client
/// must present a certificate signed by the PKI's authority (mTLS).
pub struct Stunnel {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Stunnel {
    pub fn start(pki: &Pki, port: u16, target: u16, require_client_cert: bool) -> Stunnel {
        let dir = tempfile::Builder::new()
            .prefix("stunnel-")
            .tempdir()
            .expect("cannot create a temp dir");
        let mut conf = format!(
            "foreground = yes\npid =\ndebug = notice\n\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target}\ncert = {}\nkey = {}\n",
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
        );
        if require_client_cert {
            conf.push_str(&format!("verify = 2\nCAfile = {}\n", pki.ca().display()));
        }
        let conf_path = dir.path().join("stunnel.conf");
        std::fs::write(&conf_path, conf).expect("cannot write stunnel.conf");
        let bin = ["stunnel4", "stunnel"]
            .into_iter()
            .find(|b| Command::new(b).arg("-version").output().is_ok())
            .expect("no stunnel (apt-get install stunnel4)");
        let log = dir.path().join("stunnel.log");
        let child = process::spawn_logged(Command::new(bin).arg(&conf_path), &log);
        let mut tunnel = Stunnel {
            port,
            dir,
            child: Some(child),
        };
        let listening = crate::wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            listening,
            "stunnel does not listen on {port}\n{}",
            process::tail(&tunnel.log_path(), 20)
        );
        let _ = tunnel.child.as_mut().map(Child::try_wait);
        tunnel
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("stunnel.log")
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- stunnel on port {} ----\n{}\n----",
                self.port,
                process::tail(&self.log_path(), 30)
            );
        }
    }
}

/// A broker behind TLS: `tls` is what clients connect to.
pub struct SecureCluster {
    pub pki: Pki,
    pub tls: Stunnel,
    pub broker: crate::Broker,
}

impl SecureCluster {
    /// tansu requiring SCRAM (`users`: name, password, `scram256` |
    /// `scram512`) behind TLS.
    pub fn scram(users: &[(&str, &str, &str)], topics: &[(&str, i32)]) -> SecureCluster {
        let pki = Pki::new();
        let tls_port = crate::free_port();
        let broker = crate::Broker::start_authenticating(Some(tls_port), users, topics);
        let tls = Stunnel::start(&pki, tls_port, broker.port(), false);
        SecureCluster { pki, tls, broker }
    }

    /// tansu without SASL behind TLS that requires a client certificate.
    pub fn mutual_tls(topics: &[(&str, i32)]) -> SecureCluster {
        let pki = Pki::new();
        let tls_port = crate::free_port();
        let broker = crate::Broker::start_behind(crate::free_port(), tls_port);
        for (topic, partitions) in topics {
            broker.create_topic(topic, *partitions);
        }
        let tls = Stunnel::start(&pki, tls_port, broker.port(), true);
        SecureCluster { pki, tls, broker }
    }

    /// Client properties for a consumer that logs in as `user` over TLS.
    pub fn consumer_properties(&self, mechanism: &str, user: &str, password: &str) -> Vec<(String, String)> {
        let mut p = vec![
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("ssl.ca.location".into(), self.pki.ca().display().to_string()),
            ("sasl.mechanism".into(), mechanism.into()),
            ("sasl.username".into(), user.into()),
            ("sasl.password".into(), password.into()),
        ];
        if mechanism == "none" {
            p.retain(|(k, _)| !k.starts_with("sasl."));
            p[0].1 = "SSL".into();
            p.extend([
                ("ssl.certificate.location".to_string(), self.pki.client_cert().display().to_string()),
                ("ssl.key.location".into(), self.pki.client_key().display().to_string()),
                ("ssl.key.password".into(), CLIENT_KEY_PASSWORD.into()),
            ]);
        }
        p
    }
}
