//! TCP and unix stream sources, in-process: framing, limits, connection
//! handling, backpressure and shutdown.

mod common;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, start};
use tailrace_socket::{SyslogSourceConfig, TcpSourceConfig, UnixSourceConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_lines_arrive_one_batch_per_read() {
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(&format!("address: 127.0.0.1:{port}"), 1000);
    let mut c = connect(port).await;
    c.write_all(b"a\nbb\n\nccc\npart").await.unwrap();
    s.wait_records(4).await;
    assert_eq!(s.payloads(), ["a", "bb", "", "ccc"]);
    assert_eq!(s.batches, 1, "one read, one batch");
    c.write_all(b"ial\r\n").await.unwrap();
    s.wait_records(5).await;
    assert_eq!(s.payloads()[4], "partial\r", "bytes are kept as sent");
    assert_eq!(
        s.metric("tailrace_source_events_total{source=\"sock\"}"),
        5.0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_what_was_read_and_stops_accepting() {
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(&format!("address: 127.0.0.1:{port}"), 1000);
    let mut c = connect(port).await;
    c.write_all(b"one\nheld without newline").await.unwrap();
    s.wait_records(1).await;
    s.stop().await;
    assert_eq!(s.payloads(), ["one", "held without newline"]);
    // The listener is gone: the connection was closed, a new one is refused.
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "connection closed: {n:?}"
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

/// At shutdown a connection in the accept backlog is drained when a slot
/// is free; one that finds every `max_connections` slot taken is closed
/// unread and counted (reason `max_connections`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_connection_without_a_slot_at_shutdown_is_counted() {
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, max_connections: 1}}"),
        1000,
    );
    let mut served = connect(port).await;
    served.write_all(b"served\n").await.unwrap();
    s.wait_records(1).await;
    let mut waiting = connect(port).await;
    waiting.write_all(b"never read\n").await.unwrap();
    served.write_all(b"drained\n").await.unwrap();
    s.stop().await;
    assert_eq!(s.payloads(), ["served", "drained"]);
    assert_eq!(
        s.metric(
            "tailrace_source_connections_refused_total{source=\"sock\",reason=\"max_connections\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_waits_and_idle_connections_are_closed() {
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, max_connections: 2, idle_timeout_ms: 300}}"),
        1000,
    );
    let mut silent1 = connect(port).await;
    let mut silent2 = connect(port).await;
    let t0 = Instant::now();
    let mut third = connect(port).await;
    third.write_all(b"third\n").await.unwrap();
    s.wait_records(1).await;
    assert_eq!(s.payloads(), ["third"]);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "the third connection is served only once an idle one is closed; it waited {waited:?}"
    );
    for c in [&mut silent1, &mut silent2] {
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0))),
            "idle connection closed by the source: {n:?}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_lines_split_or_truncated_and_counted() {
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, max_line_bytes: 4, max_line_policy: truncate}}"),
        1000,
    );
    let mut c = connect(port).await;
    c.write_all(b"abcdefgh\nij\n").await.unwrap();
    s.wait_records(2).await;
    assert_eq!(s.payloads(), ["abcd", "ij"]);
    assert_eq!(
        s.metric("tailrace_events_dropped_total{component=\"sock\",reason=\"line_truncated\"}"),
        1.0
    );
    s.stop().await;

    let port = free_port();
    let mut s = start::<TcpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, max_line_bytes: 4, framing: octet_counting}}"),
        1000,
    );
    let mut c = connect(port).await;
    c.write_all(b"3 abc10 0123456789garbage\n2 ok")
        .await
        .unwrap();
    s.wait_records(7).await;
    // the line after a bad count is over the limit too: split
    assert_eq!(
        s.payloads(),
        ["abc", "0123", "4567", "89", "garb", "age", "ok"]
    );
    assert_eq!(
        s.metric("tailrace_source_parse_errors_total{source=\"sock\"}"),
        1.0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_and_half_open_connections_leave_it_serving() {
    let port = free_port();
    let mut s = start::<SyslogSourceConfig>(
        &format!("{{mode: tcp, address: 127.0.0.1:{port}, max_line_bytes: 1024}}"),
        100_000,
    );
    let mut garbage = Vec::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        garbage.push(x as u8);
    }
    // a connection of random bytes, one that starts a frame and stalls
    let mut g = connect(port).await;
    g.write_all(&garbage).await.unwrap();
    drop(g);
    let mut half = connect(port).await;
    half.write_all(b"<13>1 - host app - - - unfinish")
        .await
        .unwrap();
    let mut good = connect(port).await;
    good.write_all(b"<13>1 - host app - - - good one\n")
        .await
        .unwrap();
    assert!(
        s.wait(|s| s.payloads().iter().any(|p| p.ends_with("good one")))
            .await,
        "the well-formed message arrived"
    );
    assert!(
        s.wait(|s| s.metric("tailrace_source_parse_errors_total{source=\"sock\"}") > 0.0)
            .await
    );
    let good = s
        .records
        .iter()
        .find(|r| r.payload.ends_with(b"good one"))
        .unwrap();
    assert_eq!(good.field("msg").unwrap().to_string(), "good one");
    // the half-open one is sent when the source stops
    s.stop().await;
    assert!(s.payloads().iter().any(|p| p.ends_with("unfinish")));
    drop(half);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_channel_stops_reading_the_socket() {
    const LINES: u64 = 200_000;
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(&format!("address: 127.0.0.1:{port}"), 100);
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, done) = (written.clone(), done.clone());
        std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            for i in 0..LINES {
                c.write_all(format!("{i:0>99}\n").as_bytes()).unwrap();
                written.store(i + 1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    // Nothing is taken from the channel: the writer must stall.
    let mut last = (0, Instant::now());
    let stalled = common::poll(Duration::from_secs(20), || {
        let now = written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
        now > 0 && last.1.elapsed() > Duration::from_millis(500)
    })
    .await;
    assert!(
        stalled,
        "the writer never stalled ({} lines written)",
        written.load(Ordering::SeqCst)
    );
    assert!(!done.load(Ordering::SeqCst));
    let read = s.metric("tailrace_source_events_total{source=\"sock\"}");
    let (held, _) = s.channel.fill();
    assert!(
        read <= 2.0 * 1400.0,
        "the source read {read} lines into a channel of 100 (it holds {held}): it kept reading"
    );
    // Taking from the channel lets everything through, in order.
    assert!(
        s.wait(|s| s.records.len() as u64 == LINES).await,
        "{} of {LINES}",
        s.records.len()
    );
    writer.join().unwrap();
    for (i, r) in s.records.iter().enumerate() {
        assert_eq!(&r.payload[..], format!("{i:0>99}").as_bytes());
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_stream_socket_replaces_a_stale_file_and_sets_its_mode() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.sock");
    // a socket file left by a process that is gone
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let yaml = format!("{{address: {}, socket_mode: '0620'}}", path.display());
    let mut s = start::<UnixSourceConfig>(&yaml, 1000);
    let md = std::fs::metadata(&path).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o620);

    // a second source on the same path is refused: it is in use
    let config: UnixSourceConfig = serde_yaml::from_str(&yaml).unwrap();
    let err = common::try_start(config, 10).err().expect("refused");
    assert!(err.contains("in use"), "{err}");

    let mut c = UnixStream::connect(&path).await.unwrap();
    c.write_all(b"over unix\n").await.unwrap();
    s.wait_records(1).await;
    assert_eq!(s.payloads(), ["over unix"]);
    s.stop().await;
    assert!(!path.exists(), "the socket file is removed at shutdown");

    // a regular file is never replaced
    std::fs::write(&path, b"data").unwrap();
    let config: UnixSourceConfig = serde_yaml::from_str(&yaml).unwrap();
    let err = common::try_start(config, 10).err().expect("refused");
    assert!(err.contains("not a socket"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_fails_the_build() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config: TcpSourceConfig =
        serde_yaml::from_str(&format!("address: 127.0.0.1:{port}")).unwrap();
    let err = common::try_start(config, 10).err().expect("refused");
    assert!(
        err.contains(&format!("cannot listen on tcp 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("in use"), "{err}");
}

/// Two connections each hold a partial line; together they go over the
/// source's `max_partial_bytes`: the one that went over is closed and its
/// partial line counted, the other goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frames_over_the_source_budget_close_the_connection_that_went_over() {
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, max_partial_bytes: 1000}}"),
        1000,
    );
    let over = "tailrace_events_dropped_total{component=\"sock\",reason=\"partial_frame_budget\"}";
    let mut a = connect(port).await;
    let mut b = connect(port).await;
    a.write_all(&[b'a'; 600]).await.unwrap();
    b.write_all(&[b'b'; 600]).await.unwrap();
    assert!(common::poll(Duration::from_secs(10), || s.metric(over) == 1.0).await);
    // The one closed reads end-of-file; the other completes its line.
    let a_closed = common::closed_by_the_source(&mut a, Duration::from_millis(500)).await;
    let (mut open, letter) = if a_closed { (b, b'b') } else { (a, b'a') };
    open.write_all(b"\n").await.unwrap();
    s.wait_records(1).await;
    assert_eq!(s.records[0].payload.len(), 600);
    assert_eq!(s.records[0].payload[0], letter);
    s.stop().await;
}

/// Connections that trickle a partial line slower than
/// `min_rate_bytes_per_second` are closed at the end of a window and
/// counted, so a new sender gets their slot; a connection that sends whole
/// lines, however rarely, is not closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_connections_are_closed_and_a_new_sender_is_served() {
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, max_connections: 4, min_rate_bytes_per_second: 100, min_rate_window_ms: 300}}"),
        1000,
    );
    let slow = "tailrace_events_dropped_total{component=\"sock\",reason=\"slow_connection\"}";
    let mut rare = connect(port).await;
    rare.write_all(b"rare 1\n").await.unwrap();
    s.wait_records(1).await;
    let mut tricklers = Vec::new();
    for _ in 0..3 {
        let mut t = connect(port).await;
        t.write_all(b"x").await.unwrap();
        tricklers.push(t);
    }
    // Every slot is taken; this one waits to be accepted.
    let mut new = connect(port).await;
    new.write_all(b"new sender\n").await.unwrap();
    s.wait_records(2).await;
    assert_eq!(s.payloads()[1], "new sender");
    // Each is closed at the end of its own window: the first makes room
    // for the new sender, the other two may come a moment later.
    assert!(
        common::poll(Duration::from_secs(5), || s.metric(slow) == 3.0).await,
        "the three tricklers were closed: {}",
        s.metric(slow)
    );
    for t in &mut tricklers {
        assert!(common::closed_by_the_source(t, Duration::from_secs(5)).await);
    }
    rare.write_all(b"rare 2\n").await.unwrap();
    s.wait_records(3).await;
    assert_eq!(s.payloads()[2], "rare 2", "whole lines are never too slow");
    s.stop().await;
}

/// `max_connections_per_address`: one more connection from an address is
/// closed at once; another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_limit_are_closed() {
    let port = free_port();
    let mut s = start::<TcpSourceConfig>(
        &format!("{{address: 0.0.0.0:{port}, max_connections_per_address: 2}}"),
        1000,
    );
    let _one = connect(port).await;
    let _two = connect(port).await;
    let mut three = connect(port).await;
    assert!(
        common::closed_by_the_source(&mut three, Duration::from_secs(5)).await,
        "the third from 127.0.0.1 is closed"
    );
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other
        .connect(format!("127.0.0.2:{port}").parse().unwrap())
        .await
        .unwrap();
    other.write_all(b"from another address\n").await.unwrap();
    s.wait_records(1).await;
    assert_eq!(s.payloads(), ["from another address"]);
    s.stop().await;
    assert_eq!(
        s.metric(
            "tailrace_source_connections_refused_total{source=\"sock\",reason=\"per_address\"}"
        ),
        1.0,
        "the closed one is counted"
    );
}
