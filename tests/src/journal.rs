//! Real journal files for the journald tests: entries in journal export
//! format, written into `DIR/NAME.journal` by Debian's
//! `systemd-journal-remote` (which reads export text on stdin), and read
//! back by `journalctl --directory`, the second real reader.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::SeqLines;

/// systemd-journal-remote, as Debian installs it.
pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// The boot id of every test entry.
pub const BOOT_ID: &str = "0123456789abcdef0123456789abcdef";

/// One journal entry: `MESSAGE` and other fields, and its time.
#[derive(Clone, Debug)]
pub struct Entry {
    pub message: Vec<u8>,
    pub fields: Vec<(String, Vec<u8>)>,
    pub realtime_us: u64,
}

/// Entry `seq` of the tests: the [`SeqLines`] line as `MESSAGE`, unit
/// `app.service` (every fifth `db.service`), `PRIORITY` `seq % 8`, host
/// `host-{seq % 3}`, one second apart from a fixed start.
pub fn seq_entry(seq: u64) -> Entry {
    let unit = if seq % 5 == 4 {
        "db.service"
    } else {
        "app.service"
    };
    Entry {
        message: SeqLines::line(seq),
        fields: vec![
            ("_SYSTEMD_UNIT".into(), unit.into()),
            ("PRIORITY".into(), (seq % 8).to_string().into_bytes()),
            ("_HOSTNAME".into(), format!("host-{}", seq % 3).into_bytes()),
            ("SYSLOG_IDENTIFIER".into(), b"app".to_vec()),
        ],
        realtime_us: 1_764_000_000_000_000 + seq * 1_000,
    }
}

/// The entries in journal export format; a value with a newline or a
/// byte that is not printable is written in the binary form.
pub fn export(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        // Entries of one boot are ordered by their monotonic time, across
        // files too: it follows the realtime.
        let mono = e.realtime_us - 1_764_000_000_000_000 + 1;
        out.extend_from_slice(
            format!(
                "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={mono}\n_BOOT_ID={BOOT_ID}\n",
                e.realtime_us
            )
            .as_bytes(),
        );
        let message = ("MESSAGE".to_owned(), e.message.clone());
        for (name, value) in e.fields.iter().chain(std::iter::once(&message)) {
            if value.iter().all(|b| (b' '..=b'~').contains(b)) {
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value);
            } else {
                out.extend_from_slice(name.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// Appends `entries` to the journal file `path` (created if missing)
/// through systemd-journal-remote.
pub fn write_journal(path: &Path, entries: &[Entry]) {
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", path.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {JOURNAL_REMOTE}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(&export(entries))
        .expect("cannot write to systemd-journal-remote");
    let out = child.wait_with_output().expect("systemd-journal-remote");
    assert!(
        out.status.success(),
        "systemd-journal-remote failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Appends [`seq_entry`] entries to one journal file through one running
/// systemd-journal-remote, `batch` entries every `interval`, as a busy
/// host's journal grows. Dropping it stops the thread and the process.
pub struct JournalWriter {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<JoinHandle<u64>>,
}

impl JournalWriter {
    /// Writes entries numbered from `first` into `path`.
    pub fn start(path: &Path, first: u64, batch: u64, interval: Duration) -> JournalWriter {
        let mut child = Command::new(JOURNAL_REMOTE)
            .arg(format!("--output={}", path.display()))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {JOURNAL_REMOTE}: {e}"));
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(first));
        let thread = {
            let (stop, written) = (stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut next = first;
                while !stop.load(Ordering::SeqCst) {
                    let entries: Vec<Entry> = (next..next + batch).map(seq_entry).collect();
                    stdin
                        .write_all(&export(&entries))
                        .expect("cannot write to systemd-journal-remote");
                    stdin.flush().expect("flush");
                    next += batch;
                    written.store(next, Ordering::SeqCst);
                    std::thread::sleep(interval); // pacing, not synchronization
                }
                drop(stdin);
                let status = child.wait().expect("systemd-journal-remote");
                assert!(status.success(), "systemd-journal-remote failed: {status}");
                next
            })
        };
        JournalWriter {
            stop,
            written,
            thread: Some(thread),
        }
    }

    /// Entries handed to systemd-journal-remote: numbers below this.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until `n` more entries were written than now.
    pub fn wait_for_more(&self, n: u64) {
        let target = self.written() + n;
        let ok = crate::wait_until(Duration::from_secs(60), || self.written() >= target);
        assert!(ok, "the journal writer did not write {n} more entries");
    }

    /// Stops writing, waits until the journal file holds everything;
    /// returns the number of entries written (0..n).
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("the writer runs until stopped");
        thread.join().expect("journal writer thread panicked")
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A config with one journald source over `journal_dir` (`source_keys`
/// added to it, YAML indented by four), one memory channel and one kafka
/// sink (`sink_keys` added); checkpoints in `DIR/data`.
pub fn journald_to_kafka(
    dir: &Path,
    journal_dir: &Path,
    bootstrap: &str,
    topic: &str,
    source_keys: &str,
    sink_keys: &str,
) -> String {
    format!(
        r#"data_dir: {dir}/data
shutdown_grace_ms: 10000
log: {{ level: info, format: text }}
sources:
  journal:
    type: journald
    directory: {journal}
{source_keys}    channels: [main]
channels:
  main:
    type: memory
    capacity_events: 100000
sinks:
  kafka:
    type: kafka
    channel: main
    bootstrap_servers: {bootstrap}
    topic: {topic}
    compression: lz4
    delivery_timeout_ms: 300000
    librdkafka: {{ "queue.buffering.max.ms": "5" }}
{sink_keys}"#,
        dir = dir.display(),
        journal = journal_dir.display(),
    )
}

/// The journal files in `dir`, oldest first by name.
pub fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "journal"));
    files.sort();
    files
}

/// What `journalctl --directory DIR [MATCHES...] -o export` prints: the
/// `MESSAGE` of every entry, byte for byte.
pub fn journalctl_messages(dir: &Path, matches: &[&str]) -> Vec<Vec<u8>> {
    let out = Command::new("journalctl")
        .arg("--directory")
        .arg(dir)
        .args(["-o", "export", "--no-pager"])
        .args(matches)
        .output()
        .expect("cannot run journalctl");
    assert!(
        out.status.success(),
        "journalctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_export_messages(&out.stdout)
}

/// The `MESSAGE` values of export-format text.
fn parse_export_messages(mut text: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while !text.is_empty() {
        let nl = text.iter().position(|&b| b == b'\n').unwrap_or(text.len());
        let line = &text[..nl];
        let rest = text.get(nl + 1..).unwrap_or_default();
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            if &line[..eq] == b"MESSAGE" {
                messages.push(line[eq + 1..].to_vec());
            }
            text = rest;
        } else if line.is_empty() {
            text = rest;
        } else {
            // Binary form: NAME\n, le64 size, data, \n.
            let size = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            if line == b"MESSAGE" {
                messages.push(rest[8..8 + size].to_vec());
            }
            text = rest.get(8 + size + 1..).unwrap_or_default();
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_round_trips_text_and_binary_messages() {
        let mut binary = seq_entry(1);
        binary.message = b"line one\nline two\x00\xff".to_vec();
        let text = export(&[seq_entry(0), binary.clone()]);
        assert_eq!(
            parse_export_messages(&text),
            vec![SeqLines::line(0), binary.message]
        );
    }
}
