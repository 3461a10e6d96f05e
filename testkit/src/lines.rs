//! [`SeqLines`]: a log file of numbered, fixed-length lines, and the
//! [`Report`] that compares what arrived with what was written.

use std::collections::{BTreeMap, BTreeSet};
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

/// What arrived, compared with lines `0..expected` ([`Report::new`]) or
/// with any set of line numbers ([`Report::of`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Payloads read.
    pub received: u64,
    /// Expected line numbers that never arrived, ascending.
    pub missing: Vec<u64>,
    /// Arrivals beyond the first, summed over all lines.
    pub duplicates: u64,
    /// Line numbers that arrived more than once, ascending.
    pub duplicated: Vec<u64>,
    /// A line arrived for the first time after a line with a higher number
    /// (re-sent duplicates do not count).
    pub out_of_order: bool,
    /// Payloads that are not a line written by `SeqLines`, or a number not
    /// expected: a sample of them (at most 10) and their count.
    pub malformed: Vec<Vec<u8>>,
    pub malformed_count: u64,
}

impl Report {
    /// Compares `payloads` (in the order consumed) with lines `0..expected`.
    pub fn new<I>(expected: u64, payloads: I) -> Report
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Report::compare(&Expected::Below(expected), payloads)
    }

    /// Compares `payloads` with the lines numbered by `expected` (a range
    /// that does not start at 0, or ranges chained).
    pub fn of<I>(expected: impl IntoIterator<Item = u64>, payloads: I) -> Report
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Report::compare(&Expected::Set(expected.into_iter().collect()), payloads)
    }

    fn compare<I>(expected: &Expected, payloads: I) -> Report
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
            let seq = seq_of(payload)
                .filter(|&seq| expected.contains(seq) && payload == SeqLines::line(seq));
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
        for seq in expected.iter() {
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
    /// Every line arrived exactly once, and nothing else did.
    pub fn is_exact(&self) -> bool {
        self.is_complete() && self.duplicates == 0
    }
}

/// Which of lines `0..expected` have arrived, fed payloads as a consumer
/// reads them: how many are missing, at the cost of one look per payload,
/// for waiting on a million lines without a [`Report`] per poll.
#[derive(Debug)]
pub struct Arrivals {
    seen: Vec<bool>,
    missing: u64,
}

impl Arrivals {
    pub fn new(expected: u64) -> Arrivals {
        let len = usize::try_from(expected).expect("expected fits in usize");
        Arrivals {
            seen: vec![false; len],
            missing: expected,
        }
    }

    /// Counts `payload` if it is the first arrival of an expected line.
    pub fn see(&mut self, payload: &[u8]) {
        let Some(seq) = seq_of(payload) else { return };
        let Some(seen) = usize::try_from(seq).ok().and_then(|i| self.seen.get_mut(i)) else {
            return;
        };
        if !*seen {
            *seen = true;
            self.missing -= 1;
        }
    }

    /// Expected lines that have not arrived yet.
    pub fn missing(&self) -> u64 {
        self.missing
    }
}

/// The line numbers a [`Report`] expects: `0..n` without a set of them in
/// memory (the e2e tests count up to millions), or any set.
enum Expected {
    Below(u64),
    Set(BTreeSet<u64>),
}

impl Expected {
    fn contains(&self, seq: u64) -> bool {
        match self {
            Expected::Below(n) => seq < *n,
            Expected::Set(set) => set.contains(&seq),
        }
    }

    /// Ascending.
    fn iter(&self) -> Box<dyn Iterator<Item = u64> + '_> {
        match self {
            Expected::Below(n) => Box::new(0..*n),
            Expected::Set(set) => Box::new(set.iter().copied()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// (missing, duplicated, out of order, malformed) of `arrived` against `expected`.
    fn check(expected: &[u64], arrived: &[u64], want: (&[u64], &[u64], bool, u64)) {
        let payloads = arrived.iter().map(|&s| SeqLines::line(s));
        let r = Report::of(expected.iter().copied(), payloads);
        let got = (
            &r.missing[..],
            &r.duplicated[..],
            r.out_of_order,
            r.malformed_count,
        );
        assert_eq!(got, want, "arrived {arrived:?}: {r}");
        assert_eq!(r.received, arrived.len() as u64);
    }

    #[test]
    fn reports_say_what_is_missing_repeated_reordered_or_foreign() {
        check(&[3, 4, 5], &[3, 4, 5], (&[], &[], false, 0));
        check(&[3, 4, 5], &[3, 5, 5], (&[4], &[5], false, 0));
        check(&[3, 4, 5], &[4, 3, 5], (&[], &[], true, 0));
        check(&[3, 4, 5], &[3, 4, 3, 5], (&[], &[3], false, 0));
        check(&[3, 4], &[2, 3, 4], (&[], &[], false, 1));
        check(&[1, 2, 7], &[], (&[1, 2, 7], &[], false, 0));
    }

    #[test]
    fn arrivals_count_each_expected_line_once() {
        let mut arrivals = Arrivals::new(3);
        for seq in [0, 0, 2, 7] {
            arrivals.see(&SeqLines::line(seq));
        }
        arrivals.see(b"not a numbered line");
        assert_eq!(arrivals.missing(), 1);
        arrivals.see(&SeqLines::line(1));
        assert_eq!(arrivals.missing(), 0);
    }

    #[test]
    fn a_line_with_its_number_but_other_bytes_is_malformed() {
        let mut line = SeqLines::line(7);
        *line.last_mut().unwrap() = b'!';
        let report = Report::new(8, [line]);
        assert_eq!((report.malformed_count, report.missing.len()), (1, 8));
        let all = || (0..8).map(SeqLines::line);
        assert_eq!(Report::new(8, all()), Report::of(0..8, all()));
        assert!(Report::new(8, all()).is_exact());
        assert!(!Report::new(8, all().chain(all())).is_exact());
    }
}
