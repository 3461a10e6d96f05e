//! The spool writer of a sink: records diverted from Kafka wait here
//! until they are written to the pending tree and flushed, and are settled
//! (their source acknowledged) only then. It makes room when the spool is
//! full (`when_full`), writes again what a reopened store lost, and logs
//! what it spooled at most once a second.
//!
//! New events that only wait behind the spool (strict order) are gathered
//! while the sink runs, up to [`ENTRY_RECORDS`] records or [`GATHER_BYTES`]
//! bytes, for at most [`GATHER_WAIT`], and written with one flush (one
//! fdatasync): one flush per channel batch bounded the drain after an
//! outage. An entry holds at most [`ENTRY_PAYLOAD_BYTES`] of payload, so
//! that sled keeps it inline in its log: larger values go to sled's blob
//! files, which it rewrites with their whole node and frees late (a soak
//! with 10,000-record entries took 2.24 × the lz4 payload on disk).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tailrace_api::spool::{SpoolStore, SpoolTree};
use tailrace_api::SinkMetrics;
use tracing::{error, info, warn};

use super::{entry_of, Diverted, ENTRY_RECORDS};
use crate::config::{SpoolConfig, WhenFull};

/// The reason of records diverted only because older ones are in the
/// spool (strict order).
pub(crate) const BEHIND_SPOOL: &str = "behind_spool";
/// Payload bytes gathered before they are written, at most.
const GATHER_BYTES: usize = 4 << 20;
/// How long records behind the spool wait to be gathered at most (their
/// sources' acknowledgements wait as long).
const GATHER_WAIT: Duration = Duration::from_millis(200);
/// Payload bytes of one entry at most (a single larger record makes an
/// entry alone): with its framing, even incompressible, an entry stays
/// under sled's blob threshold (a quarter of its 512 KiB segment).
const ENTRY_PAYLOAD_BYTES: usize = 96 << 10;

/// `records` cut into entries of at most [`ENTRY_RECORDS`] records and
/// [`ENTRY_PAYLOAD_BYTES`] of payload, in order.
fn entries(records: &[Diverted]) -> impl Iterator<Item = &[Diverted]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < ENTRY_RECORDS {
            bytes += rest[n].payload.len();
            if n > 0 && bytes > ENTRY_PAYLOAD_BYTES {
                break;
            }
            n += 1;
        }
        let (entry, after) = rest.split_at(n);
        rest = after;
        Some(entry)
    })
}

/// How [`SpoolWriter::flush`] treats records that wait behind the spool.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Flush {
    /// Everything waiting is written (shutdown, the grace period).
    All,
    /// While running, at `now`: records behind the spool may wait until
    /// they make a whole entry or [`GATHER_WAIT`] passed.
    Gathering(Instant),
}

pub(crate) struct SpoolWriter {
    name: std::sync::Arc<str>,
    metrics: SinkMetrics,
    max_bytes: u64,
    when_full: WhenFull,
    /// Records to be spooled, waiting for room when the spool is full.
    to_spool: Vec<Diverted>,
    /// The payload bytes of `to_spool`, whether any of it is there for
    /// another reason than [`BEHIND_SPOOL`], and since when a flush saw it
    /// waiting.
    waiting_bytes: usize,
    waiting_urgent: bool,
    waiting_since: Option<Instant>,
    /// Records written to the spool whose flush has not yet succeeded:
    /// settled by the next flush that does, never written again.
    unflushed: Vec<Diverted>,
    /// The store's generation when `unflushed` was written: a store
    /// reopened since may have lost them, so they are written again.
    unflushed_generation: u64,
    /// The id and record count of each entry `unflushed` was written as,
    /// in order.
    unflushed_entries: Vec<(u64, usize)>,
    /// When a store error was last logged, and how many since.
    store_warning: Option<Instant>,
    store_errors: u64,
    last_full_warning: Option<Instant>,
    /// Events spooled but not logged yet, by reason, and when the last
    /// "events spooled" line was written: at most one a second.
    spooled_unlogged: BTreeMap<String, u64>,
    spool_logged_at: Option<Instant>,
}

impl SpoolWriter {
    pub fn new(
        name: std::sync::Arc<str>,
        metrics: SinkMetrics,
        config: &SpoolConfig,
    ) -> SpoolWriter {
        SpoolWriter {
            name,
            metrics,
            max_bytes: config.max_bytes,
            when_full: config.when_full,
            to_spool: Vec::new(),
            waiting_bytes: 0,
            waiting_urgent: false,
            waiting_since: None,
            unflushed: Vec::new(),
            unflushed_generation: 0,
            unflushed_entries: Vec::new(),
            store_warning: None,
            store_errors: 0,
            last_full_warning: None,
            spooled_unlogged: BTreeMap::new(),
            spool_logged_at: None,
        }
    }

    /// A record for the spool, after those already waiting.
    pub fn push(&mut self, d: Diverted) {
        self.waiting_bytes += d.payload.len();
        self.waiting_urgent |= d.reason != BEHIND_SPOOL;
        self.to_spool.push(d);
    }

    /// Whether what waits may wait longer, to be written with one flush:
    /// only records behind the spool, fewer than an entry holds, for less
    /// than [`GATHER_WAIT`], and nothing written but unflushed.
    fn may_gather(&mut self, mode: Flush) -> bool {
        let Flush::Gathering(now) = mode else {
            return false;
        };
        if self.to_spool.is_empty() || self.waiting_urgent || !self.unflushed.is_empty() {
            return false;
        }
        let since = *self.waiting_since.get_or_insert(now);
        self.to_spool.len() < ENTRY_RECORDS
            && self.waiting_bytes < GATHER_BYTES
            && now.saturating_duration_since(since) < GATHER_WAIT
    }

    /// `to_spool` changed other than by `push`: its tallies again.
    fn recount_waiting(&mut self) {
        self.waiting_bytes = self.to_spool.iter().map(|d| d.payload.len()).sum();
        self.waiting_urgent = self.to_spool.iter().any(|d| d.reason != BEHIND_SPOOL);
        self.waiting_since = None;
    }

    /// Records wait to be written (a record diverted in strict order puts
    /// the rest of its batch behind it).
    pub fn has_waiting(&self) -> bool {
        !self.to_spool.is_empty()
    }

    /// Entries written whose flush has not yet succeeded: the replay
    /// leaves the spool alone until they are durable (a record delivered
    /// from such an entry would still be counted as unstored).
    pub fn has_unflushed(&self) -> bool {
        !self.unflushed.is_empty()
    }

    /// Entry `id` was written and its flush has not yet succeeded: its
    /// records are not settled, so `drop_oldest` may not evict it (they
    /// would be counted twice, as evicted and as unstored).
    fn is_unflushed(&self, id: u64) -> bool {
        self.unflushed_entries.iter().any(|(at, _)| *at == id)
    }

    /// Records not yet stored for good (waiting, or written and not
    /// flushed).
    pub fn unstored(&self) -> usize {
        self.to_spool.len() + self.unflushed.len()
    }

    /// Writes what waits for the spool (but what may still be gathered,
    /// see [`Flush`]), flushes, and settles it. Returns false when the
    /// spool is full and blocks.
    pub fn flush(
        &mut self,
        spool: &dyn SpoolStore,
        in_flight: &dyn Fn(u64) -> bool,
        mode: Flush,
    ) -> bool {
        if (self.to_spool.is_empty() && self.unflushed.is_empty()) || self.may_gather(mode) {
            return true;
        }
        let name = self.name.clone();
        let generation = spool.generation();
        if !self.unflushed.is_empty() && generation != self.unflushed_generation {
            self.rewrite_lost_entries(spool);
        }
        self.unflushed_generation = generation;
        let mut pending = std::mem::take(&mut self.to_spool);
        let mut written = 0;
        let mut blocked = false;
        for chunk in entries(&pending) {
            let entry = entry_of(chunk);
            if !self.make_room(spool, entry.len() as u64, in_flight) {
                blocked = true;
                break;
            }
            match spool.push(SpoolTree::Pending, &name, &entry) {
                Ok(id) => self.unflushed_entries.push((id, chunk.len())),
                Err(e) => {
                    self.store_error(
                        "cannot write the spool; holding new events back and retrying",
                        &e,
                    );
                    blocked = true;
                    break;
                }
            }
            written += chunk.len();
        }
        self.to_spool = pending.split_off(written);
        self.recount_waiting();
        self.unflushed.append(&mut pending);
        if !self.unflushed.is_empty() {
            if let Err(e) = spool.flush() {
                // Written but maybe not durable: settle nothing and flush
                // again next time (writing them again would store them
                // twice).
                self.store_error("cannot flush the spool; retrying", &e);
                return false;
            }
            self.unflushed_entries.clear();
            for d in std::mem::take(&mut self.unflushed) {
                d.inflight.divert(&self.metrics);
                *self.spooled_unlogged.entry(d.reason).or_default() += 1;
            }
            self.log_spooled(false);
        }
        !blocked
    }

    /// The store was reopened after a failure: an entry written to it but
    /// never flushed may be gone. Those that are go back to be written
    /// again; those still there wait for their flush (never written
    /// twice).
    fn rewrite_lost_entries(&mut self, spool: &dyn SpoolStore) {
        let name = self.name.clone();
        let mut records = std::mem::take(&mut self.unflushed).into_iter();
        let mut lost = Vec::new();
        for (id, n) in std::mem::take(&mut self.unflushed_entries) {
            let chunk: Vec<Diverted> = records.by_ref().take(n).collect();
            let survived = spool
                .scan(SpoolTree::Pending, &name, id.checked_sub(1), 1)
                .is_ok_and(|found| found.first().is_some_and(|(at, _)| *at == id));
            if survived {
                self.unflushed.extend(chunk);
                self.unflushed_entries.push((id, n));
            } else {
                lost.extend(chunk);
            }
        }
        if !lost.is_empty() {
            info!(sink = %name, events = lost.len(), "the store was reopened without spool entries it had not flushed; writing them again");
            lost.append(&mut self.to_spool);
            self.to_spool = lost;
            self.recount_waiting();
        }
    }

    /// Logs a store error at once, then at most once per 10 s with how
    /// many there were: a failing store is retried every loop.
    pub fn store_error(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.store_errors += 1;
        if self
            .store_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            error!(sink = %self.name, error = %e, errors = self.store_errors, "{what}");
            self.store_warning = Some(Instant::now());
            self.store_errors = 0;
        }
    }

    /// Logs what was spooled since the last time, at most once a second
    /// unless `now`.
    pub fn log_spooled(&mut self, now: bool) {
        if self.spooled_unlogged.is_empty()
            || !(now
                || self
                    .spool_logged_at
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1)))
        {
            return;
        }
        for (reason, events) in std::mem::take(&mut self.spooled_unlogged) {
            info!(sink = %self.name, events, reason = %reason, "events spooled");
        }
        self.spool_logged_at = Some(Instant::now());
    }

    /// Whether an entry of `size` bytes fits, dropping the oldest entries
    /// first when so configured.
    fn make_room(
        &mut self,
        spool: &dyn SpoolStore,
        size: u64,
        in_flight: &dyn Fn(u64) -> bool,
    ) -> bool {
        let name = self.name.clone();
        if let Some(why) = spool.refuses_entries() {
            // Dropping old entries would not give sled its space back:
            // hold the sources back whatever `when_full` says.
            if self
                .last_full_warning
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                self.last_full_warning = Some(Instant::now());
                warn!(sink = %name, reason = %why, "the store takes no new spool entries; holding the sources back until it does");
            }
            return false;
        }
        loop {
            let usage = spool.usage(SpoolTree::Pending, &name);
            if usage.entries == 0 || usage.bytes + size <= self.max_bytes {
                return true;
            }
            match self.when_full {
                WhenFull::Block => {
                    if self
                        .last_full_warning
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                    {
                        self.last_full_warning = Some(Instant::now());
                        warn!(sink = %name, bytes = usage.bytes, max_bytes = self.max_bytes, "spool full; holding the sources back until replay makes room");
                    }
                    return false;
                }
                WhenFull::DropOldest => {
                    let oldest = spool
                        .scan(SpoolTree::Pending, &name, None, 16)
                        .unwrap_or_default();
                    let Some((id, entry)) = oldest
                        .into_iter()
                        .find(|(id, _)| !in_flight(*id) && !self.is_unflushed(*id))
                    else {
                        return false;
                    };
                    let events = tailrace_api::spool::header(&entry)
                        .map(|h| h.events as u64)
                        .unwrap_or(0);
                    if spool.remove(SpoolTree::Pending, &name, id).is_err() {
                        return false;
                    }
                    self.metrics.dropped.add("spool_full", events);
                    warn!(sink = %name, events, "spool full; dropped its oldest entry (when_full: drop_oldest)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;
    use tailrace_api::spool::{SpoolStore, SpoolTree};
    use tailrace_api::{Ack, Metrics};

    use super::*;
    use crate::memory::Memory;
    use crate::sink::{InFlight, Origin};

    fn record(reason: &str, n: usize, bytes: usize) -> Diverted {
        Diverted {
            inflight: InFlight::new(Origin::Channel(Ack::none()), 1, 10, SystemTime::now()),
            payload: Bytes::from(format!("{n:05}{}", " ".repeat(bytes - 5))),
            key: None,
            headers: Vec::new(),
            topic: None,
            timestamp: None,
            reason: reason.into(),
        }
    }

    /// Pushes each batch (reason, records, at ms, written in full) and
    /// flushes after it; then checks the record count of each entry
    /// written, and that the records kept their order.
    fn check(batches: &[(&str, usize, u64, bool)], bytes: usize, expected: &[u32]) {
        let spool = Memory::default();
        let mut writer = SpoolWriter::new(
            "s".into(),
            Metrics::new().sink("s"),
            &SpoolConfig::default(),
        );
        let start = Instant::now();
        let mut n = 0;
        for &(reason, count, at_ms, all) in batches {
            for _ in 0..count {
                writer.push(record(reason, n, bytes));
                n += 1;
            }
            let mode = if all {
                Flush::All
            } else {
                Flush::Gathering(start + Duration::from_millis(at_ms))
            };
            assert!(writer.flush(&spool, &|_| false, mode));
        }
        let written = spool
            .scan(SpoolTree::Pending, "s", None, usize::MAX)
            .unwrap();
        let entries: Vec<u32> = written
            .iter()
            .map(|(_, e)| tailrace_api::spool::header(e).unwrap().events)
            .collect();
        assert_eq!(entries, expected, "{batches:?}");
        let order: Vec<Bytes> = written
            .iter()
            .flat_map(|(_, e)| tailrace_api::spool::decode(e).unwrap().1)
            .map(|r| r.payload)
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "records kept their order");
    }

    #[test]
    fn records_behind_the_spool_are_gathered_into_whole_entries() {
        let b = BEHIND_SPOOL;
        let t = "message_timed_out";
        // Gathered until an entry is full, then written at once.
        check(
            &[
                (b, 4_000, 0, false),
                (b, 4_000, 10, false),
                (b, 4_000, 20, false),
            ],
            5,
            &[10_000, 2_000],
        );
        // ... or until GATHER_WAIT passed since a flush first saw them.
        check(&[(b, 500, 0, false), (b, 500, 100, false)], 5, &[]);
        check(
            &[(b, 500, 0, false), (b, 500, 100, false), (b, 1, 200, false)],
            5,
            &[1_001],
        );
        // Shutdown writes everything.
        check(&[(b, 500, 0, false), (b, 500, 10, true)], 5, &[1_000]);
        // A record there for another reason (a failed delivery) is written
        // at once, with what waited before it.
        check(&[(b, 500, 0, false), (t, 1, 10, false)], 5, &[501]);
        check(&[(t, 3, 0, false)], 5, &[3]);
        // After a write, the wait starts again.
        check(
            &[
                (b, 500, 0, false),
                (b, 1, 250, false),
                (b, 500, 300, false),
                (b, 1, 449, false),
            ],
            5,
            &[501],
        );
        // Records of 100 bytes: at most 983 (96 KiB) to an entry; one
        // larger than that makes an entry alone.
        check(&[(t, 2_000, 0, false)], 100, &[983, 983, 34]);
        check(&[(t, 2, 0, false)], 200_000, &[1, 1]);
    }
}
