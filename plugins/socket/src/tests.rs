//! Config resolution and validation, as data.

use super::*;

fn settings(yaml: &str) -> Settings {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

/// `expected` is a list of (key, part of the message); empty means valid.
fn check(kind: Kind, yaml: &str, expected: &[(&str, &str)]) {
    let issues = settings(yaml).validate_as(kind);
    let got: Vec<(String, String)> = issues
        .iter()
        .map(|i| (i.path.join("."), i.message.clone()))
        .collect();
    assert_eq!(got.len(), expected.len(), "{kind:?} {yaml}: {got:?}");
    for (key, part) in expected {
        assert!(
            got.iter().any(|(k, m)| k == key && m.contains(part)),
            "{kind:?} {yaml}: no issue at {key} containing {part:?} in {got:?}"
        );
    }
}

#[test]
fn valid_configs() {
    use Kind::*;
    check(Tcp, "address: 127.0.0.1:5140", &[]);
    check(
        Tcp,
        "{address: '[::1]:5140', framing: octet_counting, max_connections: 4, idle_timeout_ms: 0}",
        &[],
    );
    check(Tcp, "{address: 0.0.0.0:6514, tls: {cert_path: /c.pem, key_path: /k.pem, client_ca_path: /ca.pem}}", &[]);
    check(
        Udp,
        "{address: 127.0.0.1:5140, framing: newline, receive_buffer_bytes: 4194304}",
        &[],
    );
    check(Unix, "{address: /run/app.sock, socket_mode: '0660'}", &[]);
    check(
        Unix,
        "{address: /run/app.sock, socket_type: datagram, framing: datagram}",
        &[],
    );
    check(Syslog, "{mode: udp, address: 127.0.0.1:5514}", &[]);
    check(
        Syslog,
        "{mode: tcp, address: 127.0.0.1:5514, framing: auto, max_line_policy: truncate}",
        &[],
    );
    check(
        Syslog,
        "{mode: unix, address: /dev/log, socket_type: stream}",
        &[],
    );
}

#[test]
fn invalid_configs() {
    use Kind::*;
    check(
        Tcp,
        "address: localhost",
        &[("address", "expected ip:port")],
    );
    check(
        Tcp,
        "{address: 127.0.0.1:1, mode: tcp}",
        &[("mode", "syslog sources")],
    );
    check(
        Tcp,
        "{address: 127.0.0.1:1, framing: datagram}",
        &[("framing", "does not apply to a stream")],
    );
    check(
        Tcp,
        "{address: 127.0.0.1:1, framing: auto}",
        &[("framing", "newline or octet_counting")],
    );
    check(
        Tcp,
        "{address: 127.0.0.1:1, socket_mode: '0600'}",
        &[("socket_mode", "unix sockets only")],
    );
    check(
        Tcp,
        "{address: 127.0.0.1:1, max_line_bytes: 0, max_connections: 0}",
        &[
            ("max_line_bytes", "greater than 0"),
            ("max_connections", "greater than 0"),
        ],
    );
    check(
        Tcp,
        "{address: 127.0.0.1:1, tls: {cert_path: '', key_path: /k}}",
        &[("tls.cert_path", "empty")],
    );
    check(
        Udp,
        "{address: 127.0.0.1:1, tls: {cert_path: /c, key_path: /k}, max_connections: 3}",
        &[
            ("tls", "stream sockets only"),
            ("max_connections", "stream sockets only"),
        ],
    );
    check(
        Udp,
        "{address: 127.0.0.1:1, framing: octet_counting}",
        &[("framing", "does not apply to datagrams")],
    );
    check(
        Udp,
        "{address: 127.0.0.1:1, socket_type: stream}",
        &[("socket_type", "unix sockets only")],
    );
    check(
        Unix,
        "address: relative.sock",
        &[("address", "absolute path")],
    );
    check(
        Unix,
        &format!("address: /{}", "x".repeat(120)),
        &[("address", "the system allows 107")],
    );
    check(
        Unix,
        "{address: /a.sock, socket_mode: '0999'}",
        &[("socket_mode", "octal")],
    );
    check(
        Unix,
        "{address: /a.sock, socket_mode: '01777'}",
        &[("socket_mode", "octal")],
    );
    check(
        Unix,
        "{address: /a.sock, tls: {cert_path: /c, key_path: /k}}",
        &[("tls", "TCP only")],
    );
    check(Syslog, "address: 127.0.0.1:514", &[("mode", "needs `mode")]);
    check(
        Syslog,
        "{mode: udp, address: /dev/log}",
        &[("address", "expected ip:port")],
    );
}

#[test]
fn unknown_keys_are_refused() {
    let e = serde_yaml::from_str::<TcpSourceConfig>("{address: 127.0.0.1:1, max_conections: 3}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `max_conections`"), "{e}");
}

#[test]
fn resources_name_what_is_held() {
    let r = |kind, yaml| settings(yaml).resources_as(kind);
    assert_eq!(
        r(Kind::Tcp, "address: 127.0.0.1:5140"),
        ["tcp 127.0.0.1:5140"]
    );
    assert_eq!(
        r(Kind::Syslog, "{mode: udp, address: '[::1]:514'}"),
        ["udp [::1]:514"]
    );
    assert_eq!(
        r(Kind::Syslog, "{mode: unix, address: /dev/log}"),
        ["unix /dev/log"]
    );
    assert_eq!(
        r(Kind::Unix, "{address: /a.sock, socket_type: datagram}"),
        ["unix /a.sock"]
    );
    assert!(
        r(Kind::Tcp, "address: 127.0.0.1:0").is_empty(),
        "port 0 claims nothing"
    );
    assert!(r(Kind::Tcp, "address: nonsense").is_empty());
}

#[test]
fn defaults_per_type() {
    let p = settings("{mode: unix, address: /dev/log}")
        .plan(Kind::Syslog)
        .unwrap();
    assert_eq!(p.transport, Transport::UnixDatagram("/dev/log".into()));
    assert!(p.syslog);
    let p = settings("address: /a.sock").plan(Kind::Unix).unwrap();
    assert_eq!(p.transport, Transport::UnixStream("/a.sock".into()));
    assert_eq!(p.stream_framing, StreamFraming::Newline);
    let p = settings("{mode: tcp, address: 127.0.0.1:1}")
        .plan(Kind::Syslog)
        .unwrap();
    assert_eq!(p.stream_framing, StreamFraming::Detect);
    assert_eq!(
        p.idle_timeout,
        Some(Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS))
    );
    let p = settings("{address: 127.0.0.1:1, framing: newline}")
        .plan(Kind::Udp)
        .unwrap();
    assert!(p.split_datagrams);
    let p = settings("{address: /a, socket_mode: '0o640'}")
        .plan(Kind::Unix)
        .unwrap();
    assert_eq!(p.socket_mode, Some(0o640));
}

#[test]
fn relp_and_hostile_load_keys() {
    use Kind::*;
    check(Relp, "address: 127.0.0.1:2514", &[]);
    check(
        Relp,
        "{address: 127.0.0.1:2514, max_connections: 8, max_line_policy: truncate, tls: {cert_path: /c.pem, key_path: /k.pem}, tls_handshake_timeout_ms: 2000}",
        &[],
    );
    check(
        Relp,
        "{address: 127.0.0.1:2514, framing: newline, max_line_policy: split}",
        &[
            ("framing", "relp, which frames its own"),
            ("max_line_policy", "truncates"),
        ],
    );
    check(
        Relp,
        "{address: /r.sock}",
        &[("address", "expected ip:port")],
    );
    check(
        Tcp,
        "{address: 127.0.0.1:1, max_connections_per_address: 4, max_partial_bytes: 1048576, min_rate_bytes_per_second: 0, min_rate_window_ms: 5000}",
        &[],
    );
    check(
        Unix,
        "{address: /a.sock, max_connections_per_address: 4}",
        &[("max_connections_per_address", "TCP only")],
    );
    check(
        Udp,
        "{address: 127.0.0.1:1, max_partial_bytes: 1, min_rate_bytes_per_second: 1}",
        &[
            ("max_partial_bytes", "stream sockets only"),
            ("min_rate_bytes_per_second", "stream sockets only"),
        ],
    );
    check(
        Tcp,
        "{address: 127.0.0.1:1, tls_handshake_timeout_ms: 100}",
        &[("tls_handshake_timeout_ms", "with tls only")],
    );
    check(
        Tcp,
        "{address: 127.0.0.1:1, max_partial_bytes: 0, max_connections_per_address: 0, min_rate_window_ms: 0}",
        &[
            ("max_partial_bytes", "greater than 0"),
            ("max_connections_per_address", "greater than 0"),
            ("min_rate_window_ms", "greater than 0"),
        ],
    );
    check(
        Udp,
        "{address: 127.0.0.1:1, receive_buffer_bytes: 1073741825}",
        &[("receive_buffer_bytes", "at most 1073741824")],
    );
    let p = settings("address: 127.0.0.1:1").plan(Relp).unwrap();
    assert!(p.relp && p.syslog);
    assert_eq!(p.limit.policy, LinePolicy::Truncate);
    assert_eq!(p.max_connections_per_address, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(p.max_partial_bytes, DEFAULT_MAX_PARTIAL_BYTES);
    assert_eq!(
        p.min_rate,
        Some(limits::MinRate {
            bytes_per_second: DEFAULT_MIN_RATE_BYTES_PER_SECOND,
            window: Duration::from_millis(DEFAULT_MIN_RATE_WINDOW_MS)
        })
    );
    assert_eq!(
        p.tls_handshake_timeout,
        Duration::from_millis(DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS)
    );
    let p = settings("{address: 127.0.0.1:1, min_rate_bytes_per_second: 0}")
        .plan(Tcp)
        .unwrap();
    assert_eq!(p.min_rate, None, "0 turns the rule off");
}
