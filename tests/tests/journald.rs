//! Acceptance tests of the journald source on real journal files: written
//! by Debian's systemd-journal-remote from export text, read by the real
//! agent, delivered to a real broker and read back by a real consumer;
//! `journalctl --directory` is the second reader the delivered set is
//! compared with. Entries carry sequence numbers: nothing may be lost, and
//! repeats are allowed only next to a kill.

use std::collections::BTreeSet;
use std::time::Duration;

use tailrace_e2e::journal::{
    journal_files, journalctl_messages, journald_to_kafka, seq_entry, this_boot_id, write_journal,
    Entry, JournalWriter,
};
use tailrace_e2e::sockets::metric;
use tailrace_e2e::{seq_of, wait_until, Agent, Broker, Consumer, Report};

const TOPIC: &str = "journal";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// A restarted agent repeats what was read after its last saved cursor:
/// one checkpoint interval (200 ms) plus acknowledgement time. At the
/// writer's pace (about 10,000 entries a second) entries read more than
/// this many before the kill were saved and must not come twice.
const REPEAT_WINDOW: u64 = 8_000;
const LAG: &str = "tailrace_journald_lag_seconds{source=\"journal\"}";

fn setup() -> (Broker, tempfile::TempDir, std::path::PathBuf) {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().expect("cannot create a temp dir");
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    (broker, dir, journal)
}

fn highest(consumer: &Consumer) -> Option<u64> {
    consumer
        .records()
        .iter()
        .filter_map(|r| seq_of(&r.payload))
        .max()
}

/// Waits until an entry written after this call arrives.
fn catch_up(consumer: &mut Consumer, writer: &JournalWriter) {
    let wanted = writer.written();
    consumer.read_until(Duration::from_secs(60), |r| {
        r.iter().filter_map(|r| seq_of(&r.payload)).max() >= Some(wanted)
    });
    assert!(
        highest(consumer) >= Some(wanted),
        "entry {wanted} did not arrive within 60 s"
    );
}

/// Catches up with the writer, waits until the acknowledged cursor is
/// close to the newest entry (entries are 1 ms apart, so the lag in
/// seconds is thousands of entries), so that what a restart resumes after
/// is known, and kills the agent; returns the highest entry seen then.
fn kill_once_saved(agent: &mut Agent, consumer: &mut Consumer, writer: &JournalWriter) -> u64 {
    catch_up(consumer, writer);
    let admin = agent.admin_address().to_owned();
    let saved_near_the_end = wait_until(Duration::from_secs(60), || metric(&admin, LAG) <= 2.0);
    assert!(
        saved_near_the_end,
        "the lag did not come down: {}",
        agent.log_tail(20)
    );
    agent.kill();
    highest(consumer).expect("entries arrived")
}

/// Every entry `0..written` arrives; repeats only within
/// [`REPEAT_WINDOW`] before the kill.
fn assert_all_arrived(
    consumer: &mut Consumer,
    written: u64,
    seen_at_kill: u64,
    agent: &Agent,
    journal: &std::path::Path,
) {
    consumer.read_until(DELIVERY_TIMEOUT, |r| {
        Report::new(written, r).missing.is_empty()
    });
    let report = Report::new(written, consumer.records());
    println!(
        "{written} entries in {} files, one kill after entry {seen_at_kill}: {report}",
        journal_files(journal).len()
    );
    assert!(
        report.missing.is_empty(),
        "entries lost: {report}\n{}",
        agent.log_tail(30)
    );
    assert_eq!(report.malformed_count, 0, "{report}");
    let far: Vec<u64> = report
        .duplicated
        .iter()
        .copied()
        .filter(|&s| s + REPEAT_WINDOW < seen_at_kill)
        .collect();
    assert!(
        far.is_empty(),
        "entries repeated far before the kill: {} of them, first {:?}\n{}",
        far.len(),
        &far[..far.len().min(10)],
        agent.log_tail(30)
    );
}

#[test]
fn sigkill_mid_stream_and_new_journal_files_lose_nothing_and_match_journalctl() {
    let (broker, dir, journal) = setup();
    // A journal with history, then one that grows while the agent runs.
    let first: Vec<Entry> = (0..20_000).map(seq_entry).collect();
    write_journal(&journal.join("old.journal"), &first);
    let config = journald_to_kafka(dir.path(), &journal, &broker.bootstrap(), TOPIC).to_yaml();
    let mut agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    let writer = JournalWriter::start(
        &journal.join("live.journal"),
        20_000,
        100,
        Duration::from_millis(10),
    );
    writer.wait_for_more(10_000);
    let seen_at_kill = kill_once_saved(&mut agent, &mut consumer, &writer);
    // Written while the agent is down, and a new file besides.
    writer.wait_for_more(10_000);
    let writer_end = writer.stop();
    let extra: Vec<Entry> = (writer_end..writer_end + 5_000).map(seq_entry).collect();
    write_journal(&journal.join("new.journal"), &extra);
    agent.restart();
    // And a file added while it runs.
    let late_from = writer_end + 5_000;
    let late: Vec<Entry> = (late_from..late_from + 5_000).map(seq_entry).collect();
    write_journal(&journal.join("zlate.journal"), &late);
    let written = late_from + 5_000;
    assert_all_arrived(&mut consumer, written, seen_at_kill, &agent, &journal);

    // journalctl reads the same journal: the same set of messages.
    let delivered: BTreeSet<Vec<u8>> = consumer
        .records()
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    let printed: BTreeSet<Vec<u8>> = journalctl_messages(&journal, &[]).into_iter().collect();
    assert_eq!(
        printed.len() as u64,
        written,
        "journalctl sees every entry written"
    );
    assert!(
        delivered == printed,
        "tailrace delivered {} distinct messages, journalctl printed {}",
        delivered.len(),
        printed.len()
    );
}

#[test]
fn journal_rotated_by_its_writer_while_read_and_killed_loses_nothing() {
    let (broker, dir, journal) = setup();
    let config = journald_to_kafka(dir.path(), &journal, &broker.bootstrap(), TOPIC).to_yaml();
    let mut agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    // systemd-journal-remote rotates its file as journald does (renamed to
    // NAME@...journal, a new NAME.journal begun) when its header is full,
    // after some 170,000 of these entries.
    let writer = JournalWriter::start(
        &journal.join("remote.journal"),
        0,
        1_000,
        Duration::from_millis(10),
    );
    let rotated = || {
        journal_files(&journal)
            .iter()
            .any(|p| p.to_string_lossy().contains('@'))
    };
    assert!(
        wait_until(Duration::from_secs(120), rotated),
        "the journal did not rotate"
    );
    writer.wait_for_more(10_000);
    let seen_at_kill = kill_once_saved(&mut agent, &mut consumer, &writer);
    writer.wait_for_more(10_000);
    let written = writer.stop();
    agent.restart();
    assert_all_arrived(&mut consumer, written, seen_at_kill, &agent, &journal);
}

#[test]
fn a_vacuumed_cursor_resumes_at_the_oldest_entry_after_it_and_is_counted() {
    let (broker, dir, journal) = setup();
    let a: Vec<Entry> = (0..3_000).map(seq_entry).collect();
    write_journal(&journal.join("a.journal"), &a);
    let config = journald_to_kafka(dir.path(), &journal, &broker.bootstrap(), TOPIC).to_yaml();
    let mut agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_count(3_000, DELIVERY_TIMEOUT);
    agent.terminate();
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    // The file holding the saved cursor is vacuumed away while stopped;
    // newer entries are in another file.
    let b: Vec<Entry> = (3_000..6_000).map(seq_entry).collect();
    write_journal(&journal.join("b.journal"), &b);
    std::fs::remove_file(journal.join("a.journal")).unwrap();
    agent.restart();
    consumer.read_until(DELIVERY_TIMEOUT, |r| {
        Report::new(6_000, r).missing.is_empty()
    });
    let report = Report::new(6_000, consumer.records());
    assert!(
        report.missing.is_empty(),
        "{report}\n{}",
        agent.log_tail(30)
    );
    assert_eq!(report.duplicates, 0, "SIGTERM saved the cursor: {report}");
    assert!(agent
        .log()
        .contains("the saved cursor is no longer in the journal"));
    let admin = agent.admin_address().to_owned();
    let counted = wait_until(Duration::from_secs(10), || {
        metric(
            &admin,
            "tailrace_journald_events_total{source=\"journal\",event=\"cursor_missing\"}",
        ) == 1.0
    });
    assert!(counted, "cursor_missing counted once");
    let caught_up = wait_until(Duration::from_secs(10), || metric(&admin, LAG) == 0.0);
    assert!(
        caught_up,
        "the lag is 0 once the newest entry is acknowledged"
    );
    assert_eq!(
        metric(&admin, "tailrace_source_events_total{source=\"journal\"}"),
        3_000.0
    );
}

#[test]
fn fields_arrive_in_json_and_matches_select_what_journalctl_selects() {
    let (broker, dir, journal) = setup();
    // Sequence entries, "noisy" ones to exclude among them, and a binary
    // MESSAGE that must arrive byte for byte.
    let mut entries: Vec<Entry> = Vec::new();
    for seq in 0..4_000 {
        entries.push(seq_entry(seq));
        if seq % 100 == 0 {
            let mut noisy = seq_entry(seq);
            noisy.message = format!("noisy {seq}").into_bytes();
            noisy.fields[1].1 = b"1".to_vec();
            noisy.fields[0].1 = b"app.service".to_vec();
            noisy.fields[3].1 = b"noisy".to_vec();
            entries.push(noisy);
        }
    }
    let mut binary = seq_entry(4_000);
    binary.message = b"two\nlines and \x00\xff bytes".to_vec();
    binary.fields[0].1 = b"app.service".to_vec();
    binary.fields[1].1 = b"2".to_vec();
    entries.push(binary.clone());
    write_journal(&journal.join("fields.journal"), &entries);
    let config = journald_to_kafka(dir.path(), &journal, &broker.bootstrap(), TOPIC)
        .edit_source("journal", |s| {
            s.set("units", ["app"])
                .set("include_matches.PRIORITY", ["0..3"])
                .set("exclude_matches.SYSLOG_IDENTIFIER", ["noisy"])
        })
        .edit_sink("kafka", |k| k.set("encoding", "json"))
        .to_yaml();
    let agent = Agent::start(dir.path(), &config);
    let selected = |seq: u64| seq % 5 != 4 && seq % 8 <= 3;
    let expected = (0..4_000).filter(|&s| selected(s)).count() + 1;
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    // The binary entry is the last one: once it is here, all before it are.
    consumer.read_until(DELIVERY_TIMEOUT, |r| {
        r.iter()
            .any(|r| r.payload.windows(7).any(|w| w == b"base64\""))
    });
    let records = consumer.records().to_vec();
    assert_eq!(records.len(), expected, "{}", agent.log_tail(20));
    let mut delivered = BTreeSet::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["source"], "journal");
        assert_eq!(v["_SYSTEMD_UNIT"], "app.service");
        assert_eq!(
            v["SYSLOG_IDENTIFIER"], "app",
            "excluded entries do not arrive"
        );
        assert!(
            v.get("MESSAGE").is_none() && v.get("_HOSTNAME").is_none(),
            "MESSAGE is the message, _HOSTNAME the host: {v}"
        );
        let message = v["message"].as_str().unwrap();
        if v["message_encoding"] == "base64" {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(message)
                .unwrap();
            assert_eq!(bytes, binary.message, "binary MESSAGE byte for byte");
            assert_eq!(v["PRIORITY"], "2");
            delivered.insert(binary.message.clone());
            continue;
        }
        let seq = seq_of(message.as_bytes()).unwrap();
        assert!(selected(seq), "entry {seq} does not match");
        assert_eq!(v["host"], format!("host-{}", seq % 3));
        assert_eq!(v["PRIORITY"], (seq % 8).to_string());
        let ms = (seq_entry(seq).realtime_us / 1000) as i64;
        let ts = rfc3339_ms(ms);
        assert_eq!(v["timestamp"], ts, "__REALTIME_TIMESTAMP is the timestamp");
        assert!(
            delivered.insert(message.as_bytes().to_vec()),
            "entry {seq} twice"
        );
    }
    // journalctl with the same matches, less the excluded identifier.
    let mut args = vec!["_SYSTEMD_UNIT=app.service".to_string()];
    args.extend((0..=3).map(|p| format!("PRIORITY={p}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let printed: BTreeSet<Vec<u8>> = journalctl_messages(&journal, &args)
        .into_iter()
        .filter(|m| !m.starts_with(b"noisy"))
        .collect();
    assert!(
        delivered == printed,
        "delivered {} messages, journalctl selected {}",
        delivered.len(),
        printed.len()
    );
}

#[test]
fn current_boot_only_reads_the_running_boot() {
    let (broker, dir, journal) = setup();
    // Even entries from an earlier boot, odd ones from this one.
    let boot = this_boot_id();
    let entries: Vec<Entry> = (0..2_000)
        .map(|seq| {
            let mut e = seq_entry(seq);
            if seq % 2 == 1 {
                e.fields
                    .push(("_BOOT_ID".into(), boot.clone().into_bytes()));
            }
            e
        })
        .collect();
    write_journal(&journal.join("boots.journal"), &entries);
    let config = journald_to_kafka(dir.path(), &journal, &broker.bootstrap(), TOPIC)
        .edit_source("journal", |s| s.set("current_boot_only", true))
        .to_yaml();
    let agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    // The last entry is of this boot: once it is here, all before it are.
    consumer.read_until(DELIVERY_TIMEOUT, |r| {
        r.iter().any(|r| seq_of(&r.payload) == Some(1_999))
    });
    let seqs: Vec<u64> = consumer
        .records()
        .iter()
        .filter_map(|r| seq_of(&r.payload))
        .collect();
    let odd: Vec<u64> = (0..2_000).filter(|s| s % 2 == 1).collect();
    assert_eq!(
        seqs,
        odd,
        "only this boot's entries, each once: {}",
        agent.log_tail(10)
    );
}

#[test]
fn files_reads_only_the_journal_files_named() {
    let (broker, dir, journal) = setup();
    let a: Vec<Entry> = (0..1_000).map(seq_entry).collect();
    let b: Vec<Entry> = (1_000..2_000).map(seq_entry).collect();
    write_journal(&journal.join("a.journal"), &a);
    write_journal(&journal.join("b.journal"), &b);
    let config = journald_to_kafka(dir.path(), &journal, &broker.bootstrap(), TOPIC)
        .edit_source("journal", |s| {
            s.unset("directory")
                .set("files", [journal.join("a.journal")])
        })
        .to_yaml();
    let agent = Agent::start(dir.path(), &config);
    let mut consumer = Consumer::new(&broker.bootstrap(), TOPIC);
    consumer.read_until(DELIVERY_TIMEOUT, |r| {
        r.iter().any(|r| seq_of(&r.payload) == Some(999))
    });
    // b.journal's entries are newer: had they been read, they would have
    // come after entry 999.
    let tail = consumer.read_for(Duration::from_secs(1)).to_vec();
    let report = Report::new(1_000, &tail);
    assert!(
        report.is_complete() && report.duplicates == 0,
        "{report}\n{}",
        agent.log_tail(10)
    );
}

/// Milliseconds since the epoch as the JSON encoding writes them.
fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
