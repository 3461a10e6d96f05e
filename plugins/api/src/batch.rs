//! Records and batches.
//!
//! A record is a payload (a slice of a shared read buffer, so splitting a
//! chunk into lines copies nothing) and the offset it was read at. What is the
//! same for every record of one read (source, path, read time) sits once in
//! [`BatchMeta`], shared by every batch of that read.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::Ack;

/// One event: the bytes of a line or datagram, without its delimiter.
#[derive(Clone, Debug)]
pub struct Record {
    pub payload: Bytes,
    /// Byte offset of the record in its file; 0 for sources without offsets.
    pub offset: u64,
    /// Named values parsed or added on the way in (syslog fields, what
    /// interceptors add). `None` for a plain line: no allocation.
    pub fields: Option<Box<Fields>>,
}

impl Record {
    /// A record with no fields.
    pub fn new(payload: Bytes, offset: u64) -> Record {
        Record {
            payload,
            offset,
            fields: None,
        }
    }

    /// The fields, created on first use.
    pub fn fields_mut(&mut self) -> &mut Fields {
        self.fields.get_or_insert_with(Default::default)
    }

    pub fn field(&self, name: &str) -> Option<&FieldValue> {
        self.fields.as_ref().and_then(|f| f.get(name))
    }
}

/// A field's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue {
    /// Bytes, usually UTF-8 text.
    Text(Bytes),
    Int(i64),
}

impl FieldValue {
    pub fn text(s: impl Into<Bytes>) -> FieldValue {
        FieldValue::Text(s.into())
    }
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Text(b) => write!(f, "{}", String::from_utf8_lossy(b)),
            FieldValue::Int(i) => write!(f, "{i}"),
        }
    }
}

/// Named values in insertion order; setting a name again replaces it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(Vec<(Arc<str>, FieldValue)>);

impl Fields {
    /// Room for `n` fields without growing.
    pub fn with_capacity(n: usize) -> Fields {
        Fields(Vec::with_capacity(n))
    }

    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }

    /// Adds a field the caller knows is not there yet (a parser filling
    /// fresh fields, each name once): no search of those already set.
    pub fn push_new(&mut self, name: Arc<str>, value: FieldValue) {
        debug_assert!(self.get(&name).is_none(), "field {name} set twice");
        self.0.push((name, value));
    }

    pub fn set(&mut self, name: impl Into<Arc<str>>, value: FieldValue) {
        let name = name.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(n, v)| (&**n, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What every record of a batch has in common.
#[derive(Debug)]
pub struct BatchMeta {
    /// Name of the source component, as written in the config.
    pub source: Arc<str>,
    /// The file a file source read the batch from.
    pub path: Option<Arc<Path>>,
    /// A stable identity of what the records were read from (for a file:
    /// its device, inode and first line), so that (stream, offset) names a
    /// record across restarts and rotations: the event id. `None` for
    /// sources that cannot read a record twice (sockets).
    pub stream: Option<u64>,
    /// When the batch was read; delivery latency is measured from here.
    pub read_at: SystemTime,
}

/// Records read together, acknowledged together.
///
/// A batch is the unit everything downstream of a source works in: the
/// channel admits and counts batches, sinks acknowledge batches, sources
/// checkpoint per acknowledged batch, and metrics move per batch.
#[derive(Debug)]
pub struct Batch {
    pub meta: Arc<BatchMeta>,
    pub records: Vec<Record>,
    /// Sum of the payload lengths.
    pub bytes: usize,
    /// Completed once per record when the record is safe: acknowledged by
    /// Kafka with acks=all, or written to the spool and flushed.
    pub ack: Ack,
    /// Fields every record of the batch has (host, static fields), shared:
    /// a record's own fields take precedence.
    pub fields: Option<Arc<Fields>>,
}

impl Batch {
    pub fn new(meta: Arc<BatchMeta>, records: Vec<Record>, ack: Ack) -> Batch {
        let bytes = records.iter().map(|r| r.payload.len()).sum();
        Batch {
            meta,
            records,
            bytes,
            ack,
            fields: None,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A record's field, or else the batch's.
    pub fn field<'a>(&'a self, record: &'a Record, name: &str) -> Option<&'a FieldValue> {
        record
            .field(name)
            .or_else(|| self.fields.as_ref().and_then(|f| f.get(name)))
    }

    /// The batch's fields, to add to (copied if shared).
    pub fn fields_mut(&mut self) -> &mut Fields {
        Arc::make_mut(self.fields.get_or_insert_with(Default::default))
    }
}
