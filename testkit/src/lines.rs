//! [`SeqLines`]: a log file of numbered, fixed-length lines, and the
//! [`Report`] that compares what arrived with what was written.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes per line, newline included. Line `seq` starts at byte `seq * LINE_LEN`.
pub const LINE_LEN: usize = 100;

const PREFIX: &[u8] = b"seq=";
const DIGITS: usize = 10;

/// Appends lines `seq=0000000042 <filler>\n`, numbered from 0, each exactly
/// [`LINE_LEN`] bytes. The filler depends on the number, so a line that
/// arrives with the right number but wrong bytes is caught too.
#[derive(Debug)]
pub struct SeqLines {
    path: PathBuf,
    written: u64,
}

impl SeqLines {
    /// Creates (or truncates) the file, and its parent directories.
    pub fn create(path: impl Into<PathBuf>) -> SeqLines {
        let path = path.into();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(&path, b"")
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        SeqLines { path, written: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many lines were written: their numbers are `0..written()`.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends the next `n` lines, built in memory and written at once.
    pub fn append(&mut self, n: u64) {
        let mut buf = Vec::with_capacity(LINE_LEN * usize::try_from(n).expect("n fits in usize"));
        for seq in self.written..self.written + n {
            buf.extend_from_slice(&SeqLines::line(seq));
            buf.push(b'\n');
        }
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.path.display()));
        file.write_all(&buf)
            .unwrap_or_else(|e| panic!("cannot append to {}: {e}", self.path.display()));
        self.written += n;
    }

    /// Line `seq` as it must arrive: without its newline.
    pub fn line(seq: u64) -> Vec<u8> {
        let mut line = format!("seq={seq:0DIGITS$} ").into_bytes();
        let filler = (0..).map(|i| b'a' + u8::try_from((seq + i) % 26).expect("below 26"));
        line.extend(filler.take(LINE_LEN - 1 - line.len()));
        line
    }

    /// The byte offset at which line `seq` starts in the file.
    pub fn offset_of(seq: u64) -> u64 {
        seq * LINE_LEN as u64
    }

    /// Keeps appending `batch` lines every `interval` on a thread, until
    /// [`Writer::stop`] or `max` lines in all.
    pub fn spawn_writer(mut self, batch: u64, interval: Duration, max: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(self.written));
        let thread = {
            let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) && self.written < max {
                    self.append(batch.min(max - self.written));
                    written.store(self.written, Ordering::SeqCst);
                    std::thread::sleep(interval); // pacing, not synchronization
                }
                self
            })
        };
        Writer {
            stop,
            written,
            thread: Some(thread),
        }
    }

    /// Compares `payloads` (in the order consumed) with lines `0..written()`.
    pub fn count<I>(&self, payloads: I) -> Report
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Report::new(self.written, payloads)
    }
}

/// A [`SeqLines`] being appended to by a background thread. Dropping it
/// stops the thread.
pub struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<JoinHandle<SeqLines>>,
}

impl Writer {
    /// Lines completely written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Whether the writer is still appending.
    pub fn is_writing(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops appending and hands the file back.
    pub fn stop(mut self) -> SeqLines {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("the writer runs until stopped");
        thread.join().expect("writer thread panicked")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // A panic of the writer is reported by `stop`; here the test
            // already failed or finished.
            let _ = thread.join();
        }
    }
}

/// The number in a payload written by [`SeqLines`], if it is one.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    let digits = payload.strip_prefix(PREFIX)?.get(..DIGITS)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What arrived, compared with lines `0..expected`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Payloads read.
    pub received: u64,
    /// Line numbers below `expected` that never arrived, ascending.
    pub missing: Vec<u64>,
    /// Arrivals beyond the first, summed over all lines.
    pub duplicates: u64,
    /// Line numbers that arrived more than once, ascending.
    pub duplicated: Vec<u64>,
    /// A line arrived for the first time after a line with a higher number
    /// (re-sent duplicates do not count).
    pub out_of_order: bool,
    /// Payloads that are not a line written by `SeqLines`, or a number at or
    /// beyond `expected`: a sample of them (at most 10) and their count.
    pub malformed: Vec<Vec<u8>>,
    pub malformed_count: u64,
}

impl Report {
    pub fn new<I>(expected: u64, payloads: I) -> Report
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut report = Report::default();
        let mut arrivals: BTreeMap<u64, u64> = BTreeMap::new();
        let mut highest: Option<u64> = None;
        for payload in payloads {
            let payload = payload.as_ref();
            report.received += 1;
            let seq =
                seq_of(payload).filter(|&seq| seq < expected && payload == SeqLines::line(seq));
            let Some(seq) = seq else {
                report.malformed_count += 1;
                if report.malformed.len() < 10 {
                    report.malformed.push(payload.to_vec());
                }
                continue;
            };
            let count = arrivals.entry(seq).or_insert(0);
            *count += 1;
            if *count == 1 {
                report.out_of_order |= highest.is_some_and(|h| seq < h);
                highest = highest.max(Some(seq));
            }
        }
        for (&seq, &count) in &arrivals {
            if count > 1 {
                report.duplicates += count - 1;
                report.duplicated.push(seq);
            }
        }
        let mut arrived = arrivals.keys().copied().peekable();
        for seq in 0..expected {
            if arrived.next_if_eq(&seq).is_none() {
                report.missing.push(seq);
            }
        }
        report
    }

    /// Every line arrived, and nothing else did.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.malformed_count == 0
    }
}

/// One paragraph for assertion messages: counts plus the first few numbers.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {}, missing {} {:?}, duplicates {} (lines {:?}), out of order {}, malformed {}",
            self.received,
            self.missing.len(),
            Sample(&self.missing),
            self.duplicates,
            Sample(&self.duplicated),
            self.out_of_order,
            self.malformed_count,
        )?;
        for payload in &self.malformed {
            write!(f, "\n  malformed: {:?}", String::from_utf8_lossy(payload))?;
        }
        Ok(())
    }
}

/// Prints the first 10 numbers of a list and how many more there are.
struct Sample<'a>(&'a [u64]);

impl fmt::Debug for Sample<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(10)];
        write!(f, "{shown:?}")?;
        if self.0.len() > shown.len() {
            write!(f, " and {} more", self.0.len() - shown.len())?;
        }
        Ok(())
    }
}
