//! The spool's entry format and store trait.
//!
//! A spool entry holds the records of one failed send, compressed with LZ4
//! and guarded by a CRC-32 over everything after the checksum field, so a
//! damaged entry is recognised and set aside instead of being replayed as
//! garbage. The header is readable without decompressing (events, reason,
//! creation time), which is what `tailrace spool list` shows.
//!
//! ```text
//! magic "TRSP" | version u8 | crc32 u32 | created_ms i64 | events u32
//! | raw_len u32 | reason_len u16 | reason | lz4 block of the records
//! record: flags u8 (1: timestamp, 2: key, 4: topic, 8: headers)
//!         | [timestamp i64] | [key_len u32 key] | [topic_len u16 topic]
//!         | [count u16 (name_len u16 name value_len u32 value)*]
//!         | len u32 | payload
//! ```
//! All integers little endian. Version 2 added the headers; entries of
//! version 1 (without them) are read as before.

use bytes::Bytes;

use crate::StoreError;

const MAGIC: &[u8; 4] = b"TRSP";
const VERSION: u8 = 2;
/// Versions this code reads.
const READABLE: std::ops::RangeInclusive<u8> = 1..=2;
const HEADER: usize = 4 + 1 + 4 + 8 + 4 + 4 + 2;

/// One record as it is kept in the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolRecord {
    pub payload: Bytes,
    pub key: Option<Bytes>,
    /// Milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// The topic, when it was chosen per event; else the sink's topic.
    pub topic: Option<Bytes>,
    /// Kafka headers, sent again exactly as first sent (the event id among
    /// them).
    pub headers: Vec<(String, Bytes)>,
}

/// A record to write into an entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct EntryRecord<'a> {
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
    pub topic: Option<&'a str>,
    pub headers: &'a [(String, Bytes)],
}

/// What can be read of an entry without decompressing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub created_ms: i64,
    pub events: u32,
    pub raw_len: u32,
    /// Why the records are here (the last error); empty for none.
    pub reason: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("not a spool entry (bad magic or version)")]
    NotAnEntry,
    #[error("spool entry is truncated")]
    Truncated,
    #[error("spool entry checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("spool entry does not decompress: {0}")]
    Decompress(String),
    #[error("spool entry's records are malformed")]
    Malformed,
}

/// Encodes records into one entry.
pub fn encode<'a>(
    records: impl IntoIterator<Item = EntryRecord<'a>>,
    reason: &str,
    created_ms: i64,
) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut events: u32 = 0;
    for EntryRecord {
        payload,
        key,
        timestamp_ms,
        topic,
        headers,
    } in records
    {
        events += 1;
        let flags = u8::from(timestamp_ms.is_some())
            | (u8::from(key.is_some()) << 1)
            | (u8::from(topic.is_some()) << 2)
            | (u8::from(!headers.is_empty()) << 3);
        raw.push(flags);
        if let Some(ts) = timestamp_ms {
            raw.extend_from_slice(&ts.to_le_bytes());
        }
        if let Some(key) = key {
            raw.extend_from_slice(&(key.len() as u32).to_le_bytes());
            raw.extend_from_slice(key);
        }
        if let Some(topic) = topic {
            let topic = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
            raw.extend_from_slice(&(topic.len() as u16).to_le_bytes());
            raw.extend_from_slice(topic);
        }
        if !headers.is_empty() {
            let headers = &headers[..headers.len().min(u16::MAX as usize)];
            raw.extend_from_slice(&(headers.len() as u16).to_le_bytes());
            for (name, value) in headers {
                let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
                raw.extend_from_slice(&(name.len() as u16).to_le_bytes());
                raw.extend_from_slice(name);
                raw.extend_from_slice(&(value.len() as u32).to_le_bytes());
                raw.extend_from_slice(value);
            }
        }
        raw.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        raw.extend_from_slice(payload);
    }
    let reason = &reason.as_bytes()[..reason.len().min(u16::MAX as usize)];
    let compressed = lz4_flex::block::compress(&raw);
    let mut out = Vec::with_capacity(HEADER + reason.len() + compressed.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&created_ms.to_le_bytes());
    out.extend_from_slice(&events.to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
    out.extend_from_slice(reason);
    out.extend_from_slice(&compressed);
    let crc = crc32fast::hash(&out[9..]);
    out[5..9].copy_from_slice(&crc.to_le_bytes());
    out
}

fn le<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], EntryError> {
    b.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(EntryError::Truncated)
}

/// Reads and checks the header.
pub fn header(entry: &[u8]) -> Result<EntryHeader, EntryError> {
    if entry.len() < HEADER || &entry[..4] != MAGIC || !READABLE.contains(&entry[4]) {
        return Err(if entry.len() < HEADER {
            EntryError::Truncated
        } else {
            EntryError::NotAnEntry
        });
    }
    let stored = u32::from_le_bytes(le(entry, 5)?);
    let computed = crc32fast::hash(&entry[9..]);
    if stored != computed {
        return Err(EntryError::Checksum { stored, computed });
    }
    let reason_len = u16::from_le_bytes(le(entry, 25)?) as usize;
    let reason = entry
        .get(HEADER..HEADER + reason_len)
        .ok_or(EntryError::Truncated)?;
    Ok(EntryHeader {
        created_ms: i64::from_le_bytes(le(entry, 9)?),
        events: u32::from_le_bytes(le(entry, 17)?),
        raw_len: u32::from_le_bytes(le(entry, 21)?),
        reason: String::from_utf8_lossy(reason).into_owned(),
    })
}

/// Checks and decodes an entry.
pub fn decode(entry: &[u8]) -> Result<(EntryHeader, Vec<SpoolRecord>), EntryError> {
    let h = header(entry)?;
    let body = &entry[HEADER + h.reason.len()..];
    let raw = lz4_flex::block::decompress(body, h.raw_len as usize)
        .map_err(|e| EntryError::Decompress(e.to_string()))?;
    let raw = Bytes::from(raw);
    let mut records = Vec::with_capacity(h.events as usize);
    let mut at = 0;
    while at < raw.len() {
        let flags = raw[at];
        at += 1;
        let timestamp_ms = if flags & 1 != 0 {
            let ts = i64::from_le_bytes(le(&raw, at).map_err(|_| EntryError::Malformed)?);
            at += 8;
            Some(ts)
        } else {
            None
        };
        let key = if flags & 2 != 0 {
            let len = u32::from_le_bytes(le(&raw, at).map_err(|_| EntryError::Malformed)?) as usize;
            at += 4;
            let key = raw.get(at..at + len).ok_or(EntryError::Malformed)?;
            let key = raw.slice_ref(key);
            at += len;
            Some(key)
        } else {
            None
        };
        let topic = if flags & 4 != 0 {
            let len = u16::from_le_bytes(le(&raw, at).map_err(|_| EntryError::Malformed)?) as usize;
            at += 2;
            let topic = raw.get(at..at + len).ok_or(EntryError::Malformed)?;
            let topic = raw.slice_ref(topic);
            at += len;
            Some(topic)
        } else {
            None
        };
        let mut headers = Vec::new();
        if flags & 8 != 0 {
            let count =
                u16::from_le_bytes(le(&raw, at).map_err(|_| EntryError::Malformed)?) as usize;
            at += 2;
            for _ in 0..count {
                let len =
                    u16::from_le_bytes(le(&raw, at).map_err(|_| EntryError::Malformed)?) as usize;
                at += 2;
                let name = raw.get(at..at + len).ok_or(EntryError::Malformed)?;
                let name = String::from_utf8_lossy(name).into_owned();
                at += len;
                let len =
                    u32::from_le_bytes(le(&raw, at).map_err(|_| EntryError::Malformed)?) as usize;
                at += 4;
                let value = raw.get(at..at + len).ok_or(EntryError::Malformed)?;
                headers.push((name, raw.slice_ref(value)));
                at += len;
            }
        }
        let len = u32::from_le_bytes(le(&raw, at).map_err(|_| EntryError::Malformed)?) as usize;
        at += 4;
        let payload = raw.get(at..at + len).ok_or(EntryError::Malformed)?;
        let payload = raw.slice_ref(payload);
        at += len;
        records.push(SpoolRecord {
            topic,
            payload,
            key,
            timestamp_ms,
            headers,
        });
    }
    if records.len() != h.events as usize {
        return Err(EntryError::Malformed);
    }
    Ok((h, records))
}

/// What a spool tree holds for an entry whose body is kept apart, in the
/// store's segment files ([`crate::channel_log`]): sled keeps in memory
/// every value it was given, so a spool held in sled grows the agent with
/// the outage. The entry's own checksum is kept with it, so a body that is
/// not the one referenced (a number reused after a crash) is recognised.
///
/// ```text
/// magic "TRSB" | seq u64 | events u32 | len u32 | entry's crc32 u32
/// ```
/// A value that starts with the entry magic (`TRSP`) is an entry held
/// inline, as every entry was before bodies moved out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyRef {
    /// The body's sequence number in the segment files.
    pub seq: u64,
    pub events: u32,
    /// The entry's length.
    pub len: u32,
    pub crc: u32,
}

const BODY_MAGIC: &[u8; 4] = b"TRSB";

impl BodyRef {
    pub const LEN: usize = 24;

    /// The reference of `entry`, stored as body `seq`.
    pub fn of(seq: u64, entry: &[u8]) -> BodyRef {
        BodyRef {
            seq,
            events: header(entry).map_or(0, |h| h.events),
            len: entry.len() as u32,
            crc: le(entry, 5).map_or(0, u32::from_le_bytes),
        }
    }

    pub fn encode(&self) -> [u8; BodyRef::LEN] {
        let mut out = [0u8; BodyRef::LEN];
        out[..4].copy_from_slice(BODY_MAGIC);
        out[4..12].copy_from_slice(&self.seq.to_le_bytes());
        out[12..16].copy_from_slice(&self.events.to_le_bytes());
        out[16..20].copy_from_slice(&self.len.to_le_bytes());
        out[20..24].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// `None`: not a reference (an inline entry, or damage).
    pub fn decode(value: &[u8]) -> Option<BodyRef> {
        if value.len() != BodyRef::LEN || &value[..4] != BODY_MAGIC {
            return None;
        }
        let u32_at = |at| u32::from_le_bytes(value[at..at + 4].try_into().expect("4 bytes"));
        Some(BodyRef {
            seq: u64::from_le_bytes(value[4..12].try_into().expect("8 bytes")),
            events: u32_at(12),
            len: u32_at(16),
            crc: u32_at(20),
        })
    }

    /// Whether `body` is the entry this refers to.
    pub fn matches(&self, body: &[u8]) -> bool {
        body.len() == self.len as usize && le(body, 5).map_or(0, u32::from_le_bytes) == self.crc
    }
}

/// The events and bytes of an entry as a spool tree holds it: by
/// reference ([`BodyRef`]) or inline.
pub fn held_size(value: &[u8]) -> (u64, u64) {
    match BodyRef::decode(value) {
        Some(r) => (u64::from(r.events), u64::from(r.len)),
        None => (
            header(value).map_or(0, |h| u64::from(h.events)),
            value.len() as u64,
        ),
    }
}

/// Which part of a sink's spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpoolTree {
    /// Failed sends waiting to be replayed.
    Pending,
    /// Records Kafka refused for good, with the error.
    DeadLetter,
    /// Entries that failed their checksum, set aside.
    Corrupt,
}

impl SpoolTree {
    pub fn name(self) -> &'static str {
        match self {
            SpoolTree::Pending => "spool",
            SpoolTree::DeadLetter => "dead",
            SpoolTree::Corrupt => "corrupt",
        }
    }
}

/// Entries, events and bytes held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub entries: u64,
    pub events: u64,
    pub bytes: u64,
}

/// Durable, ordered storage of spool entries. The daemon implements it over
/// sled; ids grow with time, so the oldest entry comes first.
pub trait SpoolStore: Send + Sync {
    /// Stores an entry; it is durable only after [`SpoolStore::flush`].
    fn push(&self, tree: SpoolTree, sink: &str, entry: &[u8]) -> Result<u64, StoreError>;
    /// Up to `limit` entries with ids greater than `after`, oldest first.
    fn scan(
        &self,
        tree: SpoolTree,
        sink: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    fn remove(&self, tree: SpoolTree, sink: &str, id: u64) -> Result<(), StoreError>;
    /// Replaces entry `id` in place (it keeps its place in the order): a
    /// replayed entry rewritten with only the records that failed.
    fn replace(&self, tree: SpoolTree, sink: &str, id: u64, entry: &[u8])
        -> Result<(), StoreError>;
    /// Moves an entry to another tree (a corrupt one aside, a dead letter
    /// back for replay).
    fn move_to(
        &self,
        from: SpoolTree,
        to: SpoolTree,
        sink: &str,
        id: u64,
    ) -> Result<(), StoreError>;
    fn usage(&self, tree: SpoolTree, sink: &str) -> Usage;
    fn flush(&self) -> Result<(), StoreError>;
    /// `Some(why)` while the store takes no new entry (free space below
    /// `min_free_bytes`, a write that failed): a sink treats the spool as
    /// full, whatever its `when_full`.
    fn refuses_entries(&self) -> Option<String> {
        None
    }
    /// Changes when the store was reopened after a failure: what was
    /// written before and not flushed since may be gone, so write it again.
    fn generation(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let headers = [
            ("tailrace.id".to_string(), Bytes::from_static(b"00ab")),
            ("path".to_string(), Bytes::from_static(b"/var/log/a.log")),
        ];
        let recs = vec![
            EntryRecord {
                payload: b"first line",
                timestamp_ms: Some(1_700_000_000_000),
                ..Default::default()
            },
            EntryRecord {
                payload: b"",
                key: Some(b"k"),
                topic: Some("logs-app"),
                headers: &headers,
                ..Default::default()
            },
            EntryRecord {
                payload: &[0xff, 0xfe, b'\n'],
                timestamp_ms: Some(-1),
                ..Default::default()
            },
        ];
        encode(recs, "message_timed_out", 42)
    }

    #[test]
    fn a_body_reference_round_trips_and_knows_its_entry() {
        let entry = sample();
        let r = BodyRef::of(7, &entry);
        assert_eq!(BodyRef::decode(&r.encode()), Some(r));
        assert_eq!(held_size(&r.encode()), (3, entry.len() as u64));
        assert_eq!(held_size(&entry), (3, entry.len() as u64));
        assert!(r.matches(&entry));
        let other = encode([EntryRecord::default()], "", 1);
        assert!(!r.matches(&other));
        assert_eq!(BodyRef::decode(&entry), None);
    }

    #[test]
    fn round_trip() {
        let (h, recs) = decode(&sample()).unwrap();
        assert_eq!(
            h,
            EntryHeader {
                created_ms: 42,
                events: 3,
                raw_len: h.raw_len,
                reason: "message_timed_out".into()
            }
        );
        assert_eq!(
            recs[0],
            SpoolRecord {
                payload: Bytes::from_static(b"first line"),
                key: None,
                timestamp_ms: Some(1_700_000_000_000),
                topic: None,
                headers: Vec::new(),
            }
        );
        assert_eq!(
            recs[1],
            SpoolRecord {
                payload: Bytes::new(),
                key: Some(Bytes::from_static(b"k")),
                timestamp_ms: None,
                topic: Some(Bytes::from_static(b"logs-app")),
                headers: vec![
                    ("tailrace.id".into(), Bytes::from_static(b"00ab")),
                    ("path".into(), Bytes::from_static(b"/var/log/a.log")),
                ],
            }
        );
        assert_eq!(&recs[2].payload[..], &[0xff, 0xfe, b'\n']);
    }

    #[test]
    fn version_1_entries_are_still_read() {
        let mut v1 = encode(
            [EntryRecord {
                payload: b"old",
                ..Default::default()
            }],
            "r",
            7,
        );
        v1[4] = 1;
        let crc = crc32fast::hash(&v1[9..]);
        v1[5..9].copy_from_slice(&crc.to_le_bytes());
        let (_, recs) = decode(&v1).unwrap();
        assert_eq!(&recs[0].payload[..], b"old");
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let good = sample();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncation_is_detected() {
        let good = sample();
        for len in 0..good.len() {
            assert!(
                decode(&good[..len]).is_err(),
                "truncated to {len} went unnoticed"
            );
        }
    }
}
