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
}

/// What every record of a batch has in common.
#[derive(Debug)]
pub struct BatchMeta {
    /// Name of the source component, as written in the config.
    pub source: Arc<str>,
    /// The file a file source read the batch from.
    pub path: Option<Arc<Path>>,
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
}

impl Batch {
    pub fn new(meta: Arc<BatchMeta>, records: Vec<Record>, ack: Ack) -> Batch {
        let bytes = records.iter().map(|r| r.payload.len()).sum();
        Batch {
            meta,
            records,
            bytes,
            ack,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}
