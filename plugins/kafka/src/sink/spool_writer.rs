//! The spool writer of a sink: records diverted from Kafka wait here
//! until they are written to the pending tree and flushed, and are settled
//! (their source acknowledged) only then. It makes room when the spool is
//! full (`when_full`), writes again what a reopened store lost, and logs
//! what it spooled at most once a second.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tailrace_api::spool::{SpoolStore, SpoolTree};
use tailrace_api::SinkMetrics;
use tracing::{error, info, warn};

use super::{entry_of, Diverted, ENTRY_RECORDS};
use crate::config::{SpoolConfig, WhenFull};

pub(crate) struct SpoolWriter {
    name: std::sync::Arc<str>,
    metrics: SinkMetrics,
    max_bytes: u64,
    when_full: WhenFull,
    /// Records to be spooled, waiting for room when the spool is full.
    to_spool: Vec<Diverted>,
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
        self.to_spool.push(d);
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

    /// Writes what waits for the spool, flushes, and settles it. Returns
    /// false when the spool is full and blocks.
    pub fn flush(&mut self, spool: &dyn SpoolStore, in_flight: &dyn Fn(u64) -> bool) -> bool {
        if self.to_spool.is_empty() && self.unflushed.is_empty() {
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
        for chunk in pending.chunks(ENTRY_RECORDS) {
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
