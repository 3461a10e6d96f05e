//! Real journal files for the journald tests: entries in journal export
//! format, written into `DIR/NAME.journal` by Debian's
//! `systemd-journal-remote` (which reads export text on stdin), and read
//! back by `journalctl --directory`, the second real reader.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::config::Source;
use crate::paced::Paced;
use crate::{Config, SeqLines};

/// systemd-journal-remote, as Debian installs it.
pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// The running boot's id, as `_BOOT_ID` writes it (32 hex digits).
pub fn this_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("cannot read the boot id")
        .trim()
        .replace('-', "")
}

/// The boot id of every test entry that does not set `_BOOT_ID`.
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
                "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={mono}\n",
                e.realtime_us
            )
            .as_bytes(),
        );
        if !e.fields.iter().any(|(n, _)| n == "_BOOT_ID") {
            out.extend_from_slice(format!("_BOOT_ID={BOOT_ID}\n").as_bytes());
        }
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

/// systemd-journal-remote writing what it reads on stdin into `path`.
fn journal_remote(path: &Path) -> Child {
    Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", path.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {JOURNAL_REMOTE}: {e}"))
}

/// Closes its input and waits until everything is in the file.
fn finish(child: Child) {
    let out = child.wait_with_output().expect("systemd-journal-remote");
    assert!(
        out.status.success(),
        "systemd-journal-remote failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Appends `entries` to the journal file `path` (created if missing)
/// through systemd-journal-remote.
pub fn write_journal(path: &Path, entries: &[Entry]) {
    let mut child = journal_remote(path);
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(&export(entries))
        .expect("cannot write to systemd-journal-remote");
    finish(child);
}

/// Appends [`seq_entry`] entries to one journal file through one running
/// systemd-journal-remote, `batch` entries every `interval`, as a busy
/// host's journal grows. Dropping it stops the thread and the process.
pub struct JournalWriter(Paced);

/// The running systemd-journal-remote of a [`JournalWriter`]; dropped
/// when the writer stops, which closes its input and waits for it.
struct Remote {
    input: Option<std::process::ChildStdin>,
    child: Option<Child>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        drop(self.input.take());
        if let Some(child) = self.child.take() {
            finish(child);
        }
    }
}

impl JournalWriter {
    /// Writes entries numbered from `first` into `path`.
    pub fn start(path: &Path, first: u64, batch: u64, interval: Duration) -> JournalWriter {
        let mut child = journal_remote(path);
        let mut remote = Remote {
            input: child.stdin.take(),
            child: Some(child),
        };
        JournalWriter(Paced::start(first, batch, interval, move |seqs| {
            let entries: Vec<Entry> = seqs.map(seq_entry).collect();
            let w = remote.input.as_mut().expect("open until the writer stops");
            w.write_all(&export(&entries))
                .expect("cannot write to systemd-journal-remote");
            w.flush().expect("flush");
        }))
    }

    /// Stops writing, waits until the journal file holds everything;
    /// returns the number of entries written (0..n).
    pub fn stop(self) -> u64 {
        self.0.stop()
    }
}

impl std::ops::Deref for JournalWriter {
    type Target = Paced;
    fn deref(&self) -> &Paced {
        &self.0
    }
}

/// [`Config::file_to_kafka`] with its file source replaced by the journald
/// source `journal` over `journal_dir`.
pub fn journald_to_kafka(dir: &Path, journal_dir: &Path, bootstrap: &str, topic: &str) -> Config {
    let journal = Source::of_type("journald").set("directory", journal_dir);
    Config::file_to_kafka(dir, bootstrap, topic)
        .unset("sources.app")
        .source("journal", journal)
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
