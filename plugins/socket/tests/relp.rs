//! The relp source, in-process: answers only once a batch is acknowledged,
//! in order; bad frames close the connection; shutdown drains and answers.

mod common;

use std::time::Duration;

use common::{free_port, start, Source};
use tailrace_api::Batch;
use tailrace_socket::RelpSourceConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OFFERS: &str =
    "relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog";

/// A relp client that speaks one frame at a time.
struct Client {
    stream: TcpStream,
    read: Vec<u8>,
}

impl Client {
    async fn open(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut c = Client {
            stream,
            read: Vec::new(),
        };
        c.send(1, "open", OFFERS).await;
        let answer = c.answers(1).await;
        assert!(
            answer.starts_with("1 rsp ")
                && answer.contains(" 200 OK\nrelp_version=0\n")
                && answer.ends_with("commands=syslog\n"),
            "{answer:?}"
        );
        c
    }

    async fn send(&mut self, txnr: u32, command: &str, data: &str) {
        let frame = if data.is_empty() {
            format!("{txnr} {command} 0\n")
        } else {
            format!("{txnr} {command} {} {data}\n", data.len())
        };
        self.stream.write_all(frame.as_bytes()).await.unwrap();
    }

    /// Reads until `n` answers (frames ending in a line feed after their
    /// data) arrived, 10 s at most; returns them as text.
    async fn answers(&mut self, n: usize) -> String {
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while count_frames(&self.read) < n {
                let mut buf = [0u8; 4096];
                let got = self.stream.read(&mut buf).await.unwrap();
                assert!(
                    got > 0,
                    "closed before {n} answers: {:?}",
                    String::from_utf8_lossy(&self.read)
                );
                self.read.extend_from_slice(&buf[..got]);
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "{n} answers within 10 s; got {:?}",
            String::from_utf8_lossy(&self.read)
        );
        String::from_utf8(std::mem::take(&mut self.read)).unwrap()
    }

    /// Nothing more to read within `wait` (the source holds its answers).
    async fn silent_for(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 64];
        tokio::time::timeout(wait, self.stream.read(&mut buf))
            .await
            .is_err()
    }

    /// The source closed the connection (10 s at most).
    async fn closed(&mut self) -> bool {
        common::closed_by_the_source(&mut self.stream, Duration::from_secs(10)).await
    }
}

/// Whole `TXNR rsp LEN [DATA]\n` frames at the front of `bytes`.
fn count_frames(mut bytes: &[u8]) -> usize {
    let mut n = 0;
    loop {
        let text = String::from_utf8_lossy(bytes);
        let mut parts = text.splitn(4, ' ');
        let (Some(_), Some(_), Some(len)) = (parts.next(), parts.next(), parts.next()) else {
            return n;
        };
        let digits: String = len.chars().take_while(char::is_ascii_digit).collect();
        let Ok(len) = digits.parse::<usize>() else {
            return n;
        };
        let header = text.find(' ').unwrap()
            + 1
            + text[text.find(' ').unwrap() + 1..].find(' ').unwrap()
            + 1
            + digits.len();
        let end = if len == 0 {
            header + 1
        } else {
            header + 1 + len + 1
        };
        if bytes.len() < end {
            return n;
        }
        n += 1;
        bytes = &bytes[end..];
    }
}

/// Takes the next batch from the channel without acknowledging it.
async fn next_batch(s: &Source) -> Batch {
    for _ in 0..1000 {
        if let Some(b) = s.channel.recv_timeout(Duration::ZERO) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no batch within 10 s");
}

fn relp(port: u16) -> Source {
    start::<RelpSourceConfig>(&format!("address: 127.0.0.1:{port}"), 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_wait_for_the_acknowledgement_and_keep_txnr_order() {
    let port = free_port();
    let s = relp(port);
    let mut c = Client::open(port).await;
    c.send(2, "syslog", "<13>Dec  1 10:00:00 host app: first")
        .await;
    let first = next_batch(&s).await;
    c.send(3, "syslog", "<13>Dec  1 10:00:00 host app: second")
        .await;
    let second = next_batch(&s).await;
    assert_eq!(
        &first.records[0].payload[..],
        b"<13>Dec  1 10:00:00 host app: first"
    );
    assert!(first.records[0].fields.is_some(), "parsed as syslog");
    assert!(
        c.silent_for(Duration::from_millis(200)).await,
        "no answer before the acknowledgement"
    );
    // The later batch is safe first: its answer waits for the earlier one.
    second.ack.done(second.len());
    assert!(
        c.silent_for(Duration::from_millis(200)).await,
        "answers go in txnr order"
    );
    let answered = "tailrace_relp_messages_answered_total{source=\"sock\"}";
    assert_eq!(s.metric(answered), 0.0, "nothing answered yet");
    first.ack.done(first.len());
    assert_eq!(c.answers(2).await, "2 rsp 6 200 OK\n3 rsp 6 200 OK\n");
    assert!(
        common::poll(Duration::from_secs(10), || s.metric(answered) == 2.0).await,
        "the two messages are counted as answered (the open is not a message)"
    );
    c.send(4, "close", "").await;
    assert_eq!(c.answers(1).await, "4 rsp 0\n");
    assert!(c.closed().await, "closed after close");
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_the_connection_and_are_counted() {
    let port = free_port();
    let mut s = relp(port);
    let bad: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"1 syslog 3 abc\n",                           // before open
        b"1 open 15 commands=syslog\n3 syslog 1 a\n",  // txnr skips 2
        b"1 open 15 commands=syslog\n2 syslog 1 ab\n", // no trailer where it belongs
    ];
    for (i, input) in bad.iter().enumerate() {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c.write_all(input).await.unwrap();
        let mut client = Client {
            stream: c,
            read: Vec::new(),
        };
        assert!(client.closed().await, "case {i} closed");
        assert_eq!(
            s.metric("tailrace_source_parse_errors_total{source=\"sock\"}"),
            (i + 1) as f64
        );
    }
    // Still serving.
    let mut c = Client::open(port).await;
    c.send(2, "syslog", "ok").await;
    let batch = next_batch(&s).await;
    batch.ack.done(batch.len());
    assert_eq!(c.answers(1).await, "2 rsp 6 200 OK\n");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_get_500_and_over_long_messages_are_truncated() {
    let port = free_port();
    let s = start::<RelpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, max_line_bytes: 8}}"),
        1000,
    );
    let mut c = Client::open(port).await;
    c.send(2, "starttls", "").await;
    assert_eq!(
        c.answers(1).await,
        "2 rsp 34 500 command starttls not supported\n"
    );
    c.send(3, "syslog", "0123456789abcdef").await;
    let batch = next_batch(&s).await;
    assert_eq!(&batch.records[0].payload[..], b"01234567");
    batch.ack.done(batch.len());
    assert_eq!(c.answers(1).await, "3 rsp 6 200 OK\n");
    assert_eq!(
        s.metric("tailrace_events_dropped_total{component=\"sock\",reason=\"line_truncated\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reads_what_was_sent_and_answers_what_the_sinks_deliver() {
    let port = free_port();
    // Room for one event: the second batch waits, the third frame stays
    // in the kernel's receive buffer.
    let s = start::<RelpSourceConfig>(&format!("address: 127.0.0.1:{port}"), 1);
    let events = || s.metric("tailrace_source_events_total{source=\"sock\"}");
    let mut c = Client::open(port).await;
    c.send(2, "syslog", "first").await;
    assert!(common::poll(Duration::from_secs(10), || events() == 1.0).await);
    c.send(3, "syslog", "second").await;
    assert!(
        common::poll(Duration::from_secs(10), || events() == 2.0).await,
        "the second batch waits for room"
    );
    c.send(4, "syslog", "unread").await;
    s.shutdown.trigger();
    let mut batches = Vec::new();
    for _ in 0..3 {
        batches.push(next_batch(&s).await);
    }
    let payloads: Vec<&[u8]> = batches.iter().map(|b| &b.records[0].payload[..]).collect();
    assert_eq!(
        payloads,
        [&b"first"[..], b"second", b"unread"],
        "what the kernel held is read after shutdown"
    );
    let sent = s.sent.clone();
    assert!(
        common::poll(Duration::from_secs(5), || sent.is_triggered()).await,
        "sent everything"
    );
    // The sinks deliver during the grace period: answered, in order.
    for b in &batches {
        b.ack.done(1);
    }
    assert_eq!(
        c.answers(3).await,
        "2 rsp 6 200 OK\n3 rsp 6 200 OK\n4 rsp 6 200 OK\n"
    );
    s.drained.trigger();
    assert!(c.closed().await);
}

/// The idle timeout counts from the last answer, not from the last read:
/// a client that waited long for its answers is not closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_for_answers_is_not_idleness() {
    let port = free_port();
    let s = start::<RelpSourceConfig>(
        &format!("{{address: 127.0.0.1:{port}, idle_timeout_ms: 300}}"),
        1000,
    );
    let mut c = Client::open(port).await;
    c.send(2, "syslog", "waits").await;
    let batch = next_batch(&s).await;
    // Longer than the idle timeout: nothing to answer yet, so not idle.
    assert!(c.silent_for(Duration::from_millis(600)).await);
    batch.ack.done(1);
    assert_eq!(c.answers(1).await, "2 rsp 6 200 OK\n");
    c.send(3, "syslog", "right after").await;
    let batch = next_batch(&s).await;
    assert_eq!(&batch.records[0].payload[..], b"right after");
}
