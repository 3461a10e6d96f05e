//! SASL/GSSAPI as far as it can go without a Kerberos-speaking broker
//! (tansu has none): a real MIT KDC (krb5kdc, on a free port of 127.0.0.1)
//! and the agent configured with `sasl: { mechanism: GSSAPI, ... }`.
//! librdkafka must log in with the keytab (kinit, AS-REQ), ask the KDC for
//! a ticket for `kafka/BROKER-HOST` (TGS-REQ) and send a Kerberos AP-REQ in
//! SaslAuthenticate, which the SASL proxy checks and then refuses: the
//! proxy cannot accept a security context, so mutual authentication and
//! delivery over GSSAPI are not tested here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tailrace_e2e::sasl_proxy::{SaslProxy, TokenCheck};
use tailrace_e2e::{free_port, wait_until, Agent, Broker, Config, SeqLines};

const REALM: &str = "TAILRACE.TEST";
const CLIENT: &str = "tailrace/localhost@TAILRACE.TEST";

/// A KDC of realm TAILRACE.TEST with the client principal (its keys in a
/// keytab) and the broker's service principal `kafka/127.0.0.1`.
struct Kdc {
    dir: PathBuf,
    child: Child,
}

impl Kdc {
    fn start(dir: &Path) -> Kdc {
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("krb5.conf"),
            format!(
                "[libdefaults]\n  default_realm = {REALM}\n  dns_lookup_kdc = false\n  \
                 dns_lookup_realm = false\n  dns_canonicalize_hostname = false\n  rdns = false\n  \
                 udp_preference_limit = 1\n[realms]\n  {REALM} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("kdc.conf"),
            format!(
                "[kdcdefaults]\n  kdc_ports = {port}\n  kdc_tcp_ports = {port}\n[realms]\n  {REALM} = {{\n    \
                 database_name = {d}/principal\n    key_stash_file = {d}/stash\n    acl_file = {d}/kadm5.acl\n  }}\n\
                 [logging]\n  kdc = FILE:{d}/kdc.log\n"
            ),
        )
        .unwrap();
        run(
            dir,
            "kdb5_util",
            &["create", "-s", "-r", REALM, "-P", "master-password"],
        );
        for principal in [CLIENT, "kafka/127.0.0.1@TAILRACE.TEST"] {
            run(
                dir,
                "kadmin.local",
                &["-r", REALM, "-q", &format!("addprinc -randkey {principal}")],
            );
        }
        let keytab = format!("ktadd -k {d}/tailrace.keytab {CLIENT}");
        run(dir, "kadmin.local", &["-r", REALM, "-q", &keytab]);
        let child = krb5(dir, "krb5kdc")
            .arg("-n")
            .spawn()
            .expect("cannot start krb5kdc (apt-get install krb5-kdc)");
        let kdc = Kdc {
            dir: dir.to_path_buf(),
            child,
        };
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "krb5kdc did not listen on {port}"
        );
        kdc
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kdc.log")).unwrap_or_default()
    }
}

/// A Kerberos tool with the realm's config files of `dir`.
fn krb5(dir: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("KRB5_CONFIG", dir.join("krb5.conf"))
        .env("KRB5_KDC_PROFILE", dir.join("kdc.conf"));
    cmd
}

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = krb5(dir, program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} (apt-get install krb5-kdc krb5-admin-server): {e}")
    });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Kdc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- kdc.log ----\n{}\n----", self.log());
        }
    }
}

/// Counts SaslAuthenticate messages that are a GSS-API initial context
/// token of the Kerberos V5 mechanism carrying an AP-REQ (RFC 2743 3.1,
/// RFC 4121 4.1), then refuses them.
#[derive(Default)]
struct ApReqCheck(AtomicU64);

/// DER of the Kerberos V5 mechanism OID 1.2.840.113554.1.2.2.
const KRB5_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02,
];

impl TokenCheck for ApReqCheck {
    fn check(&self, _token: &str) -> Result<(), String> {
        Err("no bearer tokens here".into())
    }

    fn mechanism(&self) -> &str {
        "GSSAPI"
    }

    fn check_message(&self, m: &[u8]) -> Result<(), String> {
        // [APPLICATION 0] with a DER length, the mechanism OID, then the
        // krb5 token id 01 00 (AP-REQ) and the AP-REQ ([APPLICATION 14]).
        let header = match m.get(1) {
            Some(&l) if l < 0x80 => 2,
            Some(&l) => 2 + usize::from(l & 0x7f),
            None => return Err("empty message".into()),
        };
        let rest = m.get(header..).unwrap_or_default();
        if m[0] == 0x60
            && rest.starts_with(KRB5_OID)
            && rest[KRB5_OID.len()..].starts_with(&[0x01, 0x00, 0x6e])
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Err("this proxy cannot accept a GSSAPI security context".into())
    }
}

#[test]
fn gssapi_logs_in_with_the_keytab_and_sends_a_kerberos_ap_req() {
    let dir = tempfile::tempdir().unwrap();
    let kdc = Kdc::start(dir.path());
    let check = Arc::new(ApReqCheck::default());
    let port = free_port();
    let proxy = SaslProxy::start(&format!("127.0.0.1:{port}"), check.clone(), 0);
    let broker = Broker::start_behind(port, proxy.port());
    broker.create_topic("logs", 1);
    let yaml = Config::file_to_kafka(dir.path(), &proxy.address(), "logs")
        .edit_sink("kafka", |k| {
            k.sasl("mechanism", "GSSAPI")
                .sasl("kerberos_principal", CLIENT)
                .sasl("kerberos_keytab", dir.path().join("tailrace.keytab"))
        })
        .to_yaml();
    let cache = format!("FILE:{}/ccache", dir.path().display());
    let krb5_conf = dir.path().join("krb5.conf");
    let env = [
        ("KRB5_CONFIG", krb5_conf.to_str().unwrap()),
        ("KRB5CCNAME", cache.as_str()),
    ];
    let agent = Agent::start_with_env(dir.path(), &yaml, &env);
    let mut lines = SeqLines::create(dir.path().join("logs/app.log"));
    lines.append(10);

    assert!(
        wait_until(Duration::from_secs(60), || check.0.load(Ordering::SeqCst)
            >= 1),
        "no Kerberos AP-REQ reached the proxy: {:?}\n{}",
        proxy.stats(),
        agent.log_tail(30)
    );
    let stats = proxy.stats();
    assert!(stats.mechanisms.iter().all(|m| m == "GSSAPI"), "{stats:?}");
    assert_eq!(
        (stats.produce_requests, stats.unauthenticated_writes),
        (0, 0),
        "{stats:?}"
    );
    let log = kdc.log();
    assert!(
        log.contains("AS_REQ") && log.contains(CLIENT),
        "no keytab login in the KDC's log:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("TGS_REQ")
            && l.contains("ISSUE")
            && l.contains("kafka/127.0.0.1@TAILRACE.TEST")),
        "no service ticket for kafka/127.0.0.1 in the KDC's log:\n{log}"
    );
}
