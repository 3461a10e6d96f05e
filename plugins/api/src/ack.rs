//! One acknowledgement per batch.
//!
//! A source creates an [`Ack`] for each batch it sends, saying how many
//! record deliveries make the batch safe (records times the channels the
//! batch fans out to). Sinks call [`Ack::done`] as records become safe; the
//! call that brings the count to zero tells the source's [`AckReceiver`] the
//! batch id, once. The source then advances its checkpoint past every batch
//! that is acknowledged along with all batches before it.
//!
//! An acknowledgement that never completes (the process dies, a batch is
//! dropped on shutdown) leaves the checkpoint where it was: the records are
//! read again after a restart. That is the at-least-once contract.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Told, once per batch, that every record of the batch is safe.
pub trait AckReceiver: Send + Sync {
    fn acknowledged(&self, batch_id: u64);
}

/// A shared handle on one batch's outstanding deliveries. Cloning it is an
/// atomic increment; it allocates once, when the batch is made.
#[derive(Clone)]
pub struct Ack(Option<Arc<Inner>>);

struct Inner {
    remaining: AtomicUsize,
    batch_id: u64,
    receiver: Arc<dyn AckReceiver>,
}

impl Ack {
    /// An acknowledgement that completes after `deliveries` calls' worth of
    /// [`Ack::done`]. A batch with no deliveries is acknowledged at once.
    pub fn new(batch_id: u64, deliveries: usize, receiver: Arc<dyn AckReceiver>) -> Ack {
        if deliveries == 0 {
            receiver.acknowledged(batch_id);
            return Ack(None);
        }
        Ack(Some(Arc::new(Inner {
            remaining: AtomicUsize::new(deliveries),
            batch_id,
            receiver,
        })))
    }

    /// For sources that keep no position (UDP): nothing waits for it.
    pub fn none() -> Ack {
        Ack(None)
    }

    /// Marks `n` deliveries done.
    pub fn done(&self, n: usize) {
        if let Some(inner) = &self.0 {
            let before = inner.remaining.fetch_sub(n, Ordering::AcqRel);
            debug_assert!(
                before >= n,
                "batch {} acknowledged too often",
                inner.batch_id
            );
            if before == n {
                inner.receiver.acknowledged(inner.batch_id);
            }
        }
    }

    /// Deliveries still outstanding.
    pub fn remaining(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |i| i.remaining.load(Ordering::Acquire))
    }

    /// Adds deliveries before the batch is handed on (used when a batch
    /// fans out to several channels).
    pub fn add(&self, n: usize) {
        if let Some(inner) = &self.0 {
            inner.remaining.fetch_add(n, Ordering::AcqRel);
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(i) => write!(f, "Ack(batch {}, {} left)", i.batch_id, self.remaining()),
            None => write!(f, "Ack(none)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<u64>>);
    impl AckReceiver for Log {
        fn acknowledged(&self, id: u64) {
            self.0.lock().unwrap().push(id);
        }
    }

    #[test]
    fn fires_once_when_the_last_delivery_is_done() {
        let log = Arc::new(Log::default());
        let ack = Ack::new(7, 3, log.clone());
        let copy = ack.clone();
        ack.done(1);
        copy.done(1);
        assert!(log.0.lock().unwrap().is_empty());
        ack.done(1);
        assert_eq!(*log.0.lock().unwrap(), vec![7]);
    }

    #[test]
    fn empty_batch_is_acknowledged_at_once() {
        let log = Arc::new(Log::default());
        let _ = Ack::new(1, 0, log.clone());
        assert_eq!(*log.0.lock().unwrap(), vec![1]);
    }
}
