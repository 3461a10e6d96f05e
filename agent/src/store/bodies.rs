//! Spool entry bodies, kept out of sled in segment files of their own
//! (`store/bodies/`, the disk channel's [`SegmentLog`]); a spool tree in
//! sled holds only a [`BodyRef`] per entry.
//!
//! Why: sled 0.34 keeps in memory every value inserted into a tree (its
//! page cache does not evict them), so a spool held in sled grew the agent
//! with the outage: 512 MiB of RSS after 10 minutes at 50,000 lines/s
//! (`benchmarks/results/outage-2026-12-01.md`). The references are 24
//! bytes each.
//!
//! The order of writes is what keeps this as safe as one store:
//! - a body is appended before its reference is inserted, and the store's
//!   flush syncs the bodies before it flushes sled, so a reference that
//!   counts (one a flush returned for) never names a body that is not on
//!   disk;
//! - a body is released (its segment deleted once nothing in it is left)
//!   only after the flush that made its reference's removal durable, so
//!   a crash brings back the reference with its body, never without it;
//! - what a crash leaves on either side is matched up when the store is
//!   opened (and reopened after a failure): a reference whose body is gone
//!   was never acknowledged and is removed; a body nothing refers to is
//!   released.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use tailrace_api::channel_log::{LogError, Mode, SegmentLog};
use tailrace_api::spool::BodyRef;
use tracing::warn;

/// The segment files' directory, in the store's.
pub const DIR: &str = "bodies";
/// The size of a segment file; one is deleted once all its bodies are.
const SEGMENT_BYTES: u64 = 64 << 20;

pub struct Bodies {
    log: SegmentLog,
    /// Bodies whose references were removed, released after the next
    /// flush (see the module's text).
    unreferenced: Vec<u64>,
    /// Appended since the last sync.
    dirty: bool,
}

impl Bodies {
    pub fn open(store: &Path) -> Result<Bodies, LogError> {
        let dir = store.join(DIR);
        let (log, damage) = SegmentLog::open(&dir, SEGMENT_BYTES, Mode::Owner)?;
        if damage.torn + damage.corrupt > 0 {
            warn!(dir = %dir.display(), torn = damage.torn, corrupt = damage.corrupt, "spool entry bodies were found damaged; their entries are set aside as corrupt when replayed");
        }
        Ok(Bodies {
            log,
            unreferenced: Vec::new(),
            dirty: false,
        })
    }

    /// Writes `entry`'s body (not synced: see [`Bodies::to_sync`]).
    pub fn append(&mut self, entry: &[u8]) -> Result<BodyRef, LogError> {
        // Read once: the header's checksum covers the whole entry.
        let r = BodyRef::of(0, entry);
        let seq = self.log.append(entry, r.events, entry.len() as u64)?;
        self.dirty = true;
        Ok(BodyRef { seq, ..r })
    }

    /// The entry a tree's value stands for: the body it refers to, or the
    /// value itself when it is an entry held inline. A body that is gone
    /// or unreadable, or not the one referred to, comes back empty, which
    /// the sink takes for a damaged entry and sets aside.
    pub fn resolve(&self, value: &[u8]) -> Vec<u8> {
        read(&self.log, value).unwrap_or_else(|why| {
            warn!(why, "a spool entry's body is not there");
            Vec::new()
        })
    }

    /// The reference in `value` (if any) was removed from its tree: its
    /// body goes after the next flush.
    pub fn unreferenced(&mut self, value: &[u8]) {
        if let Some(r) = BodyRef::decode(value) {
            self.unreferenced.push(r.seq);
        }
    }

    /// A body whose reference was never stored goes at once.
    pub fn release_now(&mut self, r: BodyRef) {
        self.log.release(r.seq);
    }

    /// The segment to sync, if anything was appended since the last sync
    /// (segments rolled over were synced then); see [`Bodies::sync_failed`].
    pub fn to_sync(&mut self) -> Option<File> {
        if std::mem::take(&mut self.dirty) {
            self.log.sync_handle()
        } else {
            None
        }
    }

    pub fn sync_failed(&mut self) {
        self.dirty = true;
    }

    /// Before a flush: the bodies it makes free (see [`Bodies::flushed`]).
    pub fn freed_by_flush(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.unreferenced)
    }

    /// After a flush: `free` are released; if it failed, they wait for
    /// the next one.
    pub fn flushed(&mut self, ok: bool, free: Vec<u64>) {
        if ok {
            for seq in free {
                self.log.release(seq);
            }
        } else {
            self.unreferenced.extend(free);
        }
    }

    /// Matches the bodies against `referenced`, every reference the trees
    /// hold: returns those whose body is gone (to be removed from their
    /// trees), releases every body nothing refers to (a reference that
    /// came back, after a reopen, keeps its body), and numbers new bodies
    /// past every reference, so none is reused.
    pub fn reconcile(&mut self, referenced: &[BodyRef]) -> Vec<BodyRef> {
        let seqs: HashSet<u64> = referenced.iter().map(|r| r.seq).collect();
        self.unreferenced.clear();
        let dangling = referenced
            .iter()
            .filter(|r| !self.log.holds(r.seq))
            .copied()
            .collect();
        let mut at = 0;
        while let Some(seq) = self.log.next_from(at) {
            if !seqs.contains(&seq) {
                self.log.release(seq);
            }
            at = seq + 1;
        }
        if let Some(last) = seqs.iter().max() {
            self.log.advance_to(last + 1);
        }
        dangling
    }
}

/// The segment files of the store in `store` (for `store check` and
/// `repair`, which read them as they are).
pub fn inspect(store: &Path) -> Result<SegmentLog, LogError> {
    SegmentLog::open(&store.join(DIR), SEGMENT_BYTES, Mode::Inspect).map(|(log, _)| log)
}

/// The entry `value` stands for, read from an inspected log; `None` when
/// its body is gone or is not the one referred to.
pub fn resolve_in(log: &SegmentLog, value: &[u8]) -> Option<Vec<u8>> {
    read(log, value).ok()
}

/// The entry a tree's value stands for, or why its body is not there.
fn read(log: &SegmentLog, value: &[u8]) -> Result<Vec<u8>, String> {
    let Some(r) = BodyRef::decode(value) else {
        return Ok(value.to_vec());
    };
    match log.read(r.seq) {
        Ok(body) if r.matches(&body) => Ok(body),
        Ok(_) => Err(format!("body {} is not the one referred to", r.seq)),
        Err(e) => Err(format!("body {} cannot be read: {e}", r.seq)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailrace_api::spool::{encode, EntryRecord};

    fn entry(text: &str) -> Vec<u8> {
        let rec = EntryRecord {
            payload: text.as_bytes(),
            ..Default::default()
        };
        encode([rec], "", 0)
    }

    #[test]
    fn a_removed_reference_keeps_its_body_until_a_flush_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let mut bodies = Bodies::open(dir.path()).unwrap();
        let r = bodies.append(&entry("a")).unwrap();
        assert_eq!(bodies.resolve(&r.encode()), entry("a"));
        bodies.unreferenced(&r.encode());
        assert!(bodies.log.holds(r.seq), "released before any flush");
        let free = bodies.freed_by_flush();
        bodies.flushed(false, free);
        assert!(bodies.log.holds(r.seq), "released by a flush that failed");
        let free = bodies.freed_by_flush();
        bodies.flushed(true, free);
        assert!(!bodies.log.holds(r.seq));
        assert!(
            bodies.resolve(&r.encode()).is_empty(),
            "a gone body reads as damage"
        );
    }

    #[test]
    fn reconciling_drops_what_one_side_lacks_and_never_reuses_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut bodies = Bodies::open(dir.path()).unwrap();
        let kept = bodies.append(&entry("kept")).unwrap();
        let orphan = bodies.append(&entry("orphan")).unwrap();
        let gone = BodyRef::of(41, &entry("gone"));
        let dangling = bodies.reconcile(&[kept, gone]);
        assert_eq!(dangling, vec![gone]);
        assert!(bodies.log.holds(kept.seq));
        assert!(
            !bodies.log.holds(orphan.seq),
            "a body nothing refers to stays"
        );
        let next = bodies.append(&entry("next")).unwrap();
        assert!(next.seq > gone.seq, "number {} reused", next.seq);
        // A body read under another's reference is not taken for it.
        let wrong = BodyRef {
            seq: next.seq,
            ..kept
        };
        assert!(bodies.resolve(&wrong.encode()).is_empty());
        assert_eq!(bodies.resolve(&next.encode()), entry("next"));
    }

    #[test]
    fn an_inline_entry_is_its_own_body() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = Bodies::open(dir.path()).unwrap();
        assert_eq!(bodies.resolve(&entry("inline")), entry("inline"));
    }
}
