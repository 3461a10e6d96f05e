//! Self-tests of the harness: if these fail, the end-to-end tests prove
//! nothing. They need tansu but not tailrace.

use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::ClientConfig;
use tailrace_e2e::{seq_of, wait_until, Broker, Consumer, Report, SeqLines, LINE_LEN};

fn lines(seqs: &[u64]) -> Vec<Vec<u8>> {
    seqs.iter().map(|&seq| SeqLines::line(seq)).collect()
}

/// Produces with the settings the agent's sink must use: acks=all,
/// idempotence, lz4.
fn produce(bootstrap: &str, topic: &str, payloads: &[Vec<u8>]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        // Keyless records to a random partition each, not one sticky
        // partition per batch, so the consumer is shown to read them all.
        .set("sticky.partitioning.linger.ms", "0")
        .create()
        .expect("cannot create a producer");
    for payload in payloads {
        let record = BaseRecord::<(), [u8]>::to(topic).payload(payload);
        producer
            .send(record)
            .map_err(|(e, _)| e)
            .expect("cannot enqueue a record");
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("records were not acknowledged within 30 s");
}

#[test]
fn seq_line_is_fixed_length_and_numbered() {
    for seq in [0, 1, 42, 9_999_999_999] {
        let line = SeqLines::line(seq);
        assert_eq!(line.len(), LINE_LEN - 1, "line {seq} without its newline");
        assert_eq!(seq_of(&line), Some(seq));
    }
    assert!(SeqLines::line(42).starts_with(b"seq=0000000042 "));
    assert_ne!(
        SeqLines::line(1)[15..],
        SeqLines::line(2)[15..],
        "filler differs per line"
    );
    assert_eq!(seq_of(b"seq=12"), None);
    assert_eq!(seq_of(b"hello"), None);
}

#[test]
fn seq_lines_file_has_lines_at_fixed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = SeqLines::create(dir.path().join("logs/app.log"));
    file.append(3);
    file.append(2);
    assert_eq!(file.written(), 5);
    let bytes = std::fs::read(file.path()).unwrap();
    assert_eq!(bytes.len(), 5 * LINE_LEN);
    for seq in 0..5u64 {
        let start = usize::try_from(SeqLines::offset_of(seq)).unwrap();
        assert_eq!(bytes[start..start + LINE_LEN - 1], SeqLines::line(seq)[..]);
        assert_eq!(bytes[start + LINE_LEN - 1], b'\n');
    }
}

#[test]
fn report_finds_missing_duplicates_disorder_and_strangers() {
    // (what arrived, how many were written, expected report fields)
    let check = |arrived: &[u64],
                 expected: u64,
                 missing: &[u64],
                 duplicated: &[u64],
                 duplicates: u64,
                 out_of_order: bool| {
        let report = Report::new(expected, lines(arrived));
        assert_eq!(report.missing, missing, "arrived {arrived:?}: {report}");
        assert_eq!(
            report.duplicated, duplicated,
            "arrived {arrived:?}: {report}"
        );
        assert_eq!(
            report.duplicates, duplicates,
            "arrived {arrived:?}: {report}"
        );
        assert_eq!(
            report.out_of_order, out_of_order,
            "arrived {arrived:?}: {report}"
        );
        assert_eq!(report.received, arrived.len() as u64);
    };
    check(&[0, 1, 2, 3], 4, &[], &[], 0, false);
    check(&[], 3, &[0, 1, 2], &[], 0, false);
    check(&[0, 2, 3], 4, &[1], &[], 0, false);
    check(&[0, 1, 2, 1, 2, 3], 4, &[], &[1, 2], 2, false); // a re-send is not disorder
    check(&[0, 1, 1, 1], 2, &[], &[1], 2, false);
    check(&[0, 2, 1, 3], 4, &[], &[], 0, true);
    check(&[1, 0], 2, &[], &[], 0, true);

    let mut payloads = lines(&[0, 1]);
    payloads.push(b"not a numbered line".to_vec());
    payloads.push(SeqLines::line(1)[..50].to_vec()); // truncated
    let mut wrong_filler = SeqLines::line(0);
    *wrong_filler.last_mut().unwrap() = b'#';
    payloads.push(wrong_filler);
    payloads.push(SeqLines::line(7)); // beyond what was written
    let report = Report::new(2, &payloads);
    assert_eq!(report.malformed_count, 4, "{report}");
    assert!(
        report.missing.is_empty() && !report.is_complete(),
        "{report}"
    );
}

#[test]
fn wait_until_polls_until_true_or_timeout() {
    let mut calls = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        calls += 1;
        calls == 3
    }));
    assert_eq!(calls, 3);
    assert!(!wait_until(Duration::from_millis(100), || false));
}

#[test]
fn broker_round_trip_with_idempotent_lz4_producer() {
    let broker = Broker::start();
    broker.create_topic("round-trip", 3);
    assert_eq!(broker.topic_partitions("round-trip"), Some(3));

    let sent = lines(&(0..2_000).collect::<Vec<_>>());
    produce(&broker.bootstrap(), "round-trip", &sent);

    let mut consumer = Consumer::new(&broker.bootstrap(), "round-trip");
    let records = consumer.read_count(sent.len(), Duration::from_secs(30));
    let report = Report::new(sent.len() as u64, records);
    assert!(report.is_complete() && report.duplicates == 0, "{report}");
    let partitions: std::collections::BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
    assert!(
        partitions.len() > 1,
        "keyless records spread over partitions: {partitions:?}"
    );

    // Nothing beyond what was produced.
    assert_eq!(consumer.read_for(Duration::from_secs(1)).len(), sent.len());
}

#[test]
fn persistent_broker_keeps_topics_and_records_across_restart() {
    let mut broker = Broker::start_persistent();
    let port = broker.port();
    broker.create_topic("kept", 1);
    produce(
        &broker.bootstrap(),
        "kept",
        &lines(&(0..100).collect::<Vec<_>>()),
    );

    broker.stop();
    broker.start_again();
    assert_eq!(broker.port(), port);
    assert_eq!(
        broker.topic_partitions("kept"),
        Some(1),
        "topic survived the restart"
    );
    produce(
        &broker.bootstrap(),
        "kept",
        &lines(&(100..200).collect::<Vec<_>>()),
    );

    let mut consumer = Consumer::new(&broker.bootstrap(), "kept");
    let records = consumer.read_count(200, Duration::from_secs(30));
    let report = Report::new(200, records);
    assert!(
        report.is_complete() && report.duplicates == 0 && !report.out_of_order,
        "{report}"
    );
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets increase: {offsets:?}"
    );
}

#[test]
fn broker_started_on_a_chosen_port_answers_there() {
    let port = tailrace_e2e::free_port();
    let broker = Broker::start_on(port);
    assert_eq!(broker.bootstrap(), format!("127.0.0.1:{port}"));
    broker.create_topic("chosen", 1);
    produce(&broker.bootstrap(), "chosen", &lines(&[0]));
    let mut consumer = Consumer::new(&broker.bootstrap(), "chosen");
    assert_eq!(consumer.read_count(1, Duration::from_secs(30)).len(), 1);
}
