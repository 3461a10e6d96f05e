//! [`Paced`]: numbered records written from a thread at a pace, as an
//! application or a busy host writes them; what the writers of log files
//! ([`crate::rotation::AppWriter`]) and journals
//! ([`crate::journal::JournalWriter`]) share.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Calls a writer with the next `batch` numbers every `interval` on a
/// thread, from `first`, until stopped; the writer is dropped when the
/// thread ends. Dropping it stops the thread.
pub struct Paced {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<JoinHandle<u64>>,
}

impl Paced {
    pub fn start(
        first: u64,
        batch: u64,
        interval: Duration,
        mut write: impl FnMut(Range<u64>) + Send + 'static,
    ) -> Paced {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(first));
        let thread = {
            let (stop, written) = (stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut next = first;
                while !stop.load(Ordering::SeqCst) {
                    write(next..next + batch);
                    next += batch;
                    written.store(next, Ordering::SeqCst);
                    std::thread::sleep(interval); // pacing, not synchronization
                }
                drop(write);
                next
            })
        };
        Paced {
            stop,
            written,
            thread: Some(thread),
        }
    }

    /// Records completely written so far: numbers below this.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until `n` more records were written than now.
    pub fn wait_for_more(&self, n: u64) {
        let target = self.written() + n;
        let ok = crate::wait_until(Duration::from_secs(30), || self.written() >= target);
        assert!(ok, "the writer did not write {n} more records");
    }

    /// Stops writing, once the writer is done with what it has; returns
    /// the number of records written (0..n).
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("the writer runs until stopped");
        thread.join().expect("writer thread panicked")
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // A panic of the writer is reported by `stop`; here the test
            // already failed or finished.
            let _ = thread.join();
        }
    }
}
