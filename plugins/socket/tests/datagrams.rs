//! UDP and unix datagram sources, in-process.

mod common;

use std::time::Duration;

use common::{free_udp_port, start};
use tailrace_socket::{SyslogSourceConfig, UdpSourceConfig, UnixSourceConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_per_datagram_or_per_line() {
    let port = free_udp_port();
    let mut s = start::<UdpSourceConfig>(&format!("address: 127.0.0.1:{port}"), 1000);
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in ["a b\nc", "with newline\n", ""] {
        c.send_to(d.as_bytes(), ("127.0.0.1", port)).unwrap();
    }
    s.wait_records(3).await;
    assert_eq!(s.payloads(), ["a b\nc", "with newline", ""]);
    s.stop().await;

    let port = free_udp_port();
    let mut s = start::<UdpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, framing: newline, receive_buffer_bytes: 1048576}}"),
        1000,
    );
    c.send_to(b"x\ny\n\nz", ("127.0.0.1", port)).unwrap();
    s.wait_records(4).await;
    assert_eq!(s.payloads(), ["x", "y", "", "z"]);
    s.stop().await;
}

/// The source is kept from reading (the test holds the only runtime
/// thread) while a flood overflows its small receive buffer: the kernel's
/// drops are counted, declared at 0 before, and every datagram sent is
/// either read or counted.
#[tokio::test(flavor = "current_thread")]
async fn kernel_receive_buffer_drops_are_counted() {
    const FLOOD: usize = 2_000;
    let port = free_udp_port();
    let mut s = start::<UdpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, receive_buffer_bytes: 4096}}"),
        100_000,
    );
    let kernel =
        "tailrace_events_dropped_total{component=\"sock\",reason=\"kernel_receive_buffer\"}";
    let read = "tailrace_source_events_total{source=\"sock\"}";
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"first", ("127.0.0.1", port)).unwrap();
    s.wait_records(1).await;
    assert!(
        common::export(&s).contains(kernel),
        "declared at 0 before any drop"
    );
    assert_eq!(s.metric(kernel), 0.0);
    // No await: the source cannot run while the flood is sent.
    let datagram = [b'x'; 512];
    for _ in 0..FLOOD {
        c.send_to(&datagram, ("127.0.0.1", port)).unwrap();
    }
    // What the buffer held is read; the next datagram tells the count.
    assert!(common::poll(Duration::from_secs(10), || s.metric(read) > 1.0).await);
    c.send_to(b"after", ("127.0.0.1", port)).unwrap();
    let sent = (FLOOD + 2) as f64;
    assert!(
        common::poll(Duration::from_secs(10), || s.metric(read)
            + s.metric(kernel)
            == sent)
        .await,
        "read {} + dropped by the kernel {} = sent {sent}",
        s.metric(read),
        s.metric(kernel)
    );
    assert!(s.metric(kernel) > 0.0, "a 4 KiB buffer overflows");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_drops_datagrams_and_counts_them() {
    const SENT: usize = 200;
    let port = free_udp_port();
    // One event of room: the first batch fills it, nothing is taken.
    let mut s = start::<UdpSourceConfig>(&format!("address: 127.0.0.1:{port}"), 1);
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..SENT {
        c.send_to(format!("d{i}").as_bytes(), ("127.0.0.1", port))
            .unwrap();
        if i % 20 == 19 {
            // let the source see several wakeups, so several batches
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let read = "tailrace_source_events_total{source=\"sock\"}";
    assert!(
        common::poll(Duration::from_secs(10), || s.metric(read) == SENT as f64).await,
        "read {} of {SENT}",
        s.metric(read)
    );
    let dropped =
        s.metric("tailrace_events_dropped_total{component=\"sock\",reason=\"channel_full\"}");
    let (held, _) = s.channel.fill();
    assert!(dropped > 0.0, "nothing dropped with a full channel");
    assert_eq!(
        dropped as usize + held,
        SENT,
        "every datagram is held or counted"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_udp_parses_and_counts_what_does_not_parse() {
    let port = free_udp_port();
    let mut s =
        start::<SyslogSourceConfig>(&format!("{{mode: udp, address: 127.0.0.1:{port}}}"), 1000);
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(
        b"<165>1 2003-10-11T22:14:15.003Z host app 42 ID7 [a@1 x=\"y\"] hello",
        ("127.0.0.1", port),
    )
    .unwrap();
    c.send_to(b"not syslog at all", ("127.0.0.1", port))
        .unwrap();
    s.wait_records(2).await;
    let parsed = &s.records[0];
    for (k, v) in [
        ("facility", "local4"),
        ("severity", "notice"),
        ("syslog_timestamp", "2003-10-11T22:14:15.003Z"),
        ("hostname", "host"),
        ("app_name", "app"),
        ("procid", "42"),
        ("msgid", "ID7"),
        ("structured_data", "[a@1 x=\"y\"]"),
        ("msg", "hello"),
    ] {
        assert_eq!(
            parsed.field(k).map(|f| f.to_string()).as_deref(),
            Some(v),
            "{k}"
        );
    }
    assert_eq!(
        &s.records[1].payload[..],
        b"not syslog at all",
        "forwarded raw"
    );
    assert!(s.records[1].fields.is_none());
    assert_eq!(
        s.metric("tailrace_source_parse_errors_total{source=\"sock\"}"),
        1.0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_datagram_socket_waits_for_room_and_is_removed_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let mut s = start::<UnixSourceConfig>(
        &format!("{{address: {}, socket_type: datagram}}", path.display()),
        1,
    );
    let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // More than fits anywhere at once: the sender waits, nothing is lost.
    let sender = {
        let path = path.clone();
        std::thread::spawn(move || {
            for i in 0..2000 {
                c.send_to(format!("m{i}").as_bytes(), &path).unwrap();
            }
        })
    };
    assert!(
        s.wait(|s| s.records.len() == 2000).await,
        "{} of 2000",
        s.records.len()
    );
    sender.join().unwrap();
    let expected: Vec<String> = (0..2000).map(|i| format!("m{i}")).collect();
    assert_eq!(s.payloads(), expected);
    assert_eq!(
        s.metric("tailrace_events_dropped_total{component=\"sock\",reason=\"channel_full\"}"),
        0.0
    );
    s.stop().await;
    assert!(!path.exists());
}
