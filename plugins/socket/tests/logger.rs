//! The real `logger` (util-linux) sends RFC 3164 and RFC 5424 messages over
//! tcp, udp and a unix socket, with and without octet counting; every
//! message arrives with its fields.

mod common;

use std::process::Command;

use common::{free_port, free_udp_port, start};
use tailrace_api::Record;
use tailrace_socket::SyslogSourceConfig;

/// Runs `logger ARGS -- MESSAGE` and checks it succeeded.
fn logger(args: &[&str], message: &str) {
    let out = Command::new("logger")
        .args(args)
        .args([
            "-t",
            "tailtest",
            "-p",
            "local3.warning",
            "--id=4242",
            "--",
            message,
        ])
        .output()
        .expect("cannot run logger (util-linux)");
    assert!(
        out.status.success(),
        "logger {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn field(r: &Record, name: &str) -> Option<String> {
    r.field(name).map(|v| v.to_string())
}

/// The fields every message sent by `logger` above must carry.
fn check_fields(r: &Record, message: &str, rfc5424: bool, with_host: bool) {
    let payload = String::from_utf8_lossy(&r.payload);
    let f = |n| field(r, n);
    assert_eq!(f("msg").as_deref(), Some(message), "{payload}");
    assert_eq!(f("facility").as_deref(), Some("local3"), "{payload}");
    assert_eq!(f("severity").as_deref(), Some("warning"), "{payload}");
    assert_eq!(f("app_name").as_deref(), Some("tailtest"), "{payload}");
    assert_eq!(f("procid").as_deref(), Some("4242"), "{payload}");
    let ts = f("syslog_timestamp").unwrap_or_default();
    assert!(
        ts.len() >= 19 && ts.as_bytes()[10] == b'T',
        "timestamp {ts:?} in {payload}"
    );
    if with_host {
        assert!(f("hostname").is_some_and(|h| !h.is_empty()), "{payload}");
    }
    if rfc5424 {
        assert_eq!(f("msgid").as_deref(), Some("MID"), "{payload}");
        let sd = f("structured_data").unwrap_or_default();
        assert!(
            sd.contains("[ours@32473 k=\"v\"]"),
            "structured data {sd:?} in {payload}"
        );
    }
}

const RFC5424: &[&str] = &[
    "--rfc5424",
    "--msgid",
    "MID",
    "--sd-id",
    "ours@32473",
    "--sd-param",
    "k=\"v\"",
];
const RFC3164: &[&str] = &["--rfc3164"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_over_tcp_udp_and_unix() {
    let tcp = free_port();
    let udp = free_udp_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let mut t =
        start::<SyslogSourceConfig>(&format!("{{mode: tcp, address: 127.0.0.1:{tcp}}}"), 1000);
    let mut t_octet = {
        let port = free_port();
        (
            start::<SyslogSourceConfig>(&format!("{{mode: tcp, address: 127.0.0.1:{port}}}"), 1000),
            port,
        )
    };
    let mut u =
        start::<SyslogSourceConfig>(&format!("{{mode: udp, address: 127.0.0.1:{udp}}}"), 1000);
    let mut x = start::<SyslogSourceConfig>(
        &format!("{{mode: unix, address: {}}}", path.display()),
        1000,
    );
    let tcp_s = tcp.to_string();
    let udp_s = udp.to_string();
    let octet_s = t_octet.1.to_string();
    let path_s = path.display().to_string();

    // (source, logger transport args, format, message, hostname expected)
    for (rfc5424, format) in [(true, RFC5424), (false, RFC3164)] {
        let tag = if rfc5424 { "5424" } else { "3164" };
        fn args<'a>(transport: &[&'a str], format: &[&'a str]) -> Vec<&'a str> {
            [transport, format].concat()
        }
        logger(
            &args(&["--tcp", "-n", "127.0.0.1", "-P", &tcp_s], format),
            &format!("tcp {tag} hello"),
        );
        logger(
            &args(
                &["--tcp", "--octet-count", "-n", "127.0.0.1", "-P", &octet_s],
                format,
            ),
            &format!("octet {tag} hello"),
        );
        logger(
            &args(&["--udp", "-n", "127.0.0.1", "-P", &udp_s], format),
            &format!("udp {tag} hello"),
        );
        logger(
            &args(&["--socket-errors=on", "-u", &path_s], format),
            &format!("unix {tag} hello"),
        );
    }

    for (source, what, host) in [
        (&mut t, "tcp", true),
        (&mut t_octet.0, "octet", true),
        (&mut u, "udp", true),
        (&mut x, "unix", false),
    ] {
        source.wait_records(2).await;
        source.stop().await;
        assert_eq!(source.records.len(), 2, "{what}: {:?}", source.payloads());
        check_fields(
            &source.records[0],
            &format!("{what} 5424 hello"),
            true,
            host,
        );
        check_fields(
            &source.records[1],
            &format!("{what} 3164 hello"),
            false,
            host,
        );
        assert_eq!(
            source.metric("tailrace_source_parse_errors_total{source=\"sock\"}"),
            0.0,
            "{what}"
        );
    }
    // octet counting was used where asked, and newlines elsewhere
    assert!(t_octet
        .0
        .payloads()
        .iter()
        .all(|p| p.starts_with('<') && !p.ends_with('\n')));
}
