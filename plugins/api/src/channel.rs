//! The memory channel: a queue of batches bounded by events and by bytes.
//!
//! Sources put batches in, one sink takes them out. When either bound would
//! be exceeded the sender waits, which is how pressure flows back: a file
//! source stops reading, a TCP source stops reading its socket. The channel
//! never drops. One lock is taken per batch, never per event.
//!
//! A batch larger than the whole capacity is still admitted when the channel
//! is empty, so an oversized batch cannot wedge its source.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::Batch;

/// The channel was closed; the batch that could not be sent comes back.
#[derive(Debug)]
pub struct ChannelClosed(pub Batch);

/// A sink's input that keeps what it holds across a crash (a disk
/// channel's log), told to the sink by the runtime in its context. A batch
/// the sink gives up on (Kafka is away) needs no copy of its own: the sink
/// drops it without completing its [`crate::Ack`], so it stays in the log,
/// and asks for it again.
pub trait Redeliver: Send + Sync {
    /// Discards what was read ahead of the sink and reads again, in the
    /// log's order, from the first batch not yet acknowledged. The sink
    /// calls it once nothing it took is still on its way (it took back
    /// what its producer held): from then on every batch not acknowledged
    /// comes again, each once, before anything newer.
    fn redeliver(&self);
}

pub struct Channel {
    name: String,
    capacity_events: usize,
    capacity_bytes: usize,
    state: Mutex<State>,
    /// Wakes blocked threads, senders and receivers alike.
    cond: Condvar,
    /// Wakes waiting async tasks.
    notify: Notify,
    fill_events: Gauge,
    fill_bytes: Gauge,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Batch>,
    events: usize,
    bytes: usize,
    closed: bool,
}

impl State {
    fn admits(&self, batch: &Batch, cap_events: usize, cap_bytes: usize) -> bool {
        self.queue.is_empty()
            || (self.events + batch.len() <= cap_events && self.bytes + batch.bytes <= cap_bytes)
    }
}

impl Channel {
    pub fn new(
        name: impl Into<String>,
        capacity_events: usize,
        capacity_bytes: usize,
        fill_events: Gauge,
        fill_bytes: Gauge,
    ) -> Channel {
        Channel {
            name: name.into(),
            capacity_events: capacity_events.max(1),
            capacity_bytes: capacity_bytes.max(1),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            notify: Notify::new(),
            fill_events,
            fill_bytes,
        }
    }

    /// A channel with no metrics attached, for tests and tools.
    pub fn unmetered(name: &str, capacity_events: usize, capacity_bytes: usize) -> Channel {
        Channel::new(
            name,
            capacity_events,
            capacity_bytes,
            Gauge::default(),
            Gauge::default(),
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, state: &State) {
        self.fill_events.set(state.events as i64);
        self.fill_bytes.set(state.bytes as i64);
        self.cond.notify_all();
        self.notify.notify_waiters();
    }

    fn push(&self, state: &mut State, batch: Batch) {
        state.events += batch.len();
        state.bytes += batch.bytes;
        state.queue.push_back(batch);
        self.changed(state);
    }

    /// Sends from a thread, waiting while the channel is full.
    pub fn send_blocking(&self, batch: Batch) -> Result<(), ChannelClosed> {
        // Nothing to do meanwhile: an hour is as good as for ever.
        self.send_waiting(batch, Duration::from_secs(3600), &mut || {})
    }

    /// [`Channel::send_blocking`], calling `meanwhile` every `every` while
    /// the channel stays full: a source blocked here still processes its
    /// acknowledgements, saves its positions and beats its heartbeat. Also
    /// while the sink trickles batches out without making enough room: it
    /// is the time since the last call that counts, not a quiet wait.
    pub fn send_waiting(
        &self,
        batch: Batch,
        every: Duration,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<(), ChannelClosed> {
        self.send_unless(batch, every, meanwhile, &|| false)
            .map(|_| ())
    }

    /// Sends from a thread, waiting while the channel is full, unless
    /// `stale` says (under the channel's lock, so that a [`Channel::clear`]
    /// after what made it true also removes a batch sent before) that the
    /// batch is no longer wanted: then it is dropped and `Ok(false)`
    /// returned. A `clear` wakes the waiting sender.
    pub fn send_unless(
        &self,
        batch: Batch,
        every: Duration,
        meanwhile: &mut dyn FnMut(),
        stale: &dyn Fn() -> bool,
    ) -> Result<bool, ChannelClosed> {
        let mut state = self.lock();
        let mut last = Instant::now();
        loop {
            if state.closed {
                return Err(ChannelClosed(batch));
            }
            if stale() {
                return Ok(false);
            }
            if state.admits(&batch, self.capacity_events, self.capacity_bytes) {
                self.push(&mut state, batch);
                return Ok(true);
            }
            let wait = every.saturating_sub(last.elapsed());
            state = self
                .cond
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if last.elapsed() >= every {
                drop(state);
                meanwhile();
                last = Instant::now();
                state = self.lock();
            }
        }
    }

    /// Sends from an async task, waiting while the channel is full.
    pub async fn send(&self, batch: Batch) -> Result<(), ChannelClosed> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(ChannelClosed(batch));
                }
                if state.admits(&batch, self.capacity_events, self.capacity_bytes) {
                    self.push(&mut state, batch);
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Sends only if there is room now; gives the batch back otherwise.
    /// For sources that cannot wait (UDP).
    pub fn try_send(&self, batch: Batch) -> Result<(), Batch> {
        let mut state = self.lock();
        if state.closed || !state.admits(&batch, self.capacity_events, self.capacity_bytes) {
            return Err(batch);
        }
        self.push(&mut state, batch);
        Ok(())
    }

    /// Takes the oldest batch, waiting up to `timeout` for one. `None` means
    /// nothing arrived in time, or the channel is closed and empty (see
    /// [`Channel::is_drained`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Batch> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(batch) = state.queue.pop_front() {
                state.events -= batch.len();
                state.bytes -= batch.bytes;
                self.changed(&state);
                return Some(batch);
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = self
                .cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Drops every batch waiting (their acks are not completed) and wakes
    /// blocked senders; returns the events dropped.
    pub fn clear(&self) -> usize {
        let mut state = self.lock();
        let events = state.events;
        state.queue.clear();
        state.events = 0;
        state.bytes = 0;
        self.changed(&state);
        events
    }

    /// Refuses further sends and wakes everyone waiting. Batches already in
    /// the channel can still be received.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.changed(&state);
    }

    /// Closed and nothing left to receive.
    pub fn is_drained(&self) -> bool {
        let state = self.lock();
        state.closed && state.queue.is_empty()
    }

    /// Events and bytes waiting.
    pub fn fill(&self) -> (usize, usize) {
        let state = self.lock();
        (state.events, state.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ack, BatchMeta, Record};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn batch(events: usize, size: usize) -> Batch {
        let meta = Arc::new(BatchMeta {
            source: "t".into(),
            path: None,
            stream: None,
            read_at: SystemTime::now(),
        });
        let records = (0..events)
            .map(|i| Record::new(Bytes::from(vec![b'x'; size]), i as u64))
            .collect();
        Batch::new(meta, records, Ack::none())
    }

    #[test]
    fn bounded_by_events() {
        let ch = Channel::unmetered("c", 10, 1 << 20);
        assert!(ch.try_send(batch(6, 1)).is_ok());
        assert!(ch.try_send(batch(4, 1)).is_ok());
        assert!(ch.try_send(batch(1, 1)).is_err());
        assert_eq!(ch.fill(), (10, 10));
    }

    #[test]
    fn bounded_by_bytes() {
        let ch = Channel::unmetered("c", 1000, 100);
        assert!(ch.try_send(batch(1, 60)).is_ok());
        assert!(ch.try_send(batch(1, 60)).is_err());
        ch.recv_timeout(Duration::ZERO).unwrap();
        assert!(ch.try_send(batch(1, 60)).is_ok());
    }

    #[test]
    fn oversized_batch_passes_an_empty_channel() {
        let ch = Channel::unmetered("c", 2, 2);
        assert!(ch.try_send(batch(5, 5)).is_ok());
        assert!(ch.try_send(batch(1, 1)).is_err());
    }

    #[test]
    fn blocked_sender_resumes_when_the_receiver_takes() {
        let ch = Arc::new(Channel::unmetered("c", 1, 1 << 20));
        ch.send_blocking(batch(1, 1)).unwrap();
        let sender = {
            let ch = ch.clone();
            std::thread::spawn(move || ch.send_blocking(batch(1, 1)).is_ok())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !sender.is_finished(),
            "sender must wait while the channel is full"
        );
        assert!(ch.recv_timeout(Duration::from_secs(1)).is_some());
        assert!(sender.join().unwrap());
        assert_eq!(ch.fill().0, 1);
    }

    #[test]
    fn clear_empties_the_queue_and_a_blocked_sender_whose_batch_went_stale_gives_up() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let ch = Arc::new(Channel::unmetered("c", 1, 1 << 20));
        ch.send_blocking(batch(1, 1)).unwrap();
        let stale = Arc::new(AtomicBool::new(false));
        let sender = {
            let (ch, stale) = (ch.clone(), stale.clone());
            std::thread::spawn(move || {
                ch.send_unless(batch(1, 1), Duration::from_secs(3600), &mut || {}, &|| {
                    stale.load(Ordering::SeqCst)
                })
            })
        };
        stale.store(true, Ordering::SeqCst);
        assert_eq!(ch.clear(), 1);
        assert!(!sender.join().unwrap().unwrap(), "dropped, not sent");
        assert_eq!(ch.fill(), (0, 0));
    }

    #[test]
    fn close_returns_the_batch_to_a_blocked_sender_and_keeps_the_queue() {
        let ch = Arc::new(Channel::unmetered("c", 1, 1 << 20));
        ch.send_blocking(batch(1, 1)).unwrap();
        let sender = {
            let ch = ch.clone();
            std::thread::spawn(move || ch.send_blocking(batch(1, 1)).is_err())
        };
        ch.close();
        assert!(sender.join().unwrap());
        assert!(!ch.is_drained());
        assert!(ch.recv_timeout(Duration::ZERO).is_some());
        assert!(ch.is_drained());
    }
}
