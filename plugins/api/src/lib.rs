//! The plugin contract of tailrace.
//!
//! Both the daemon (`agent/`) and every plugin (`plugins/*`) depend on this
//! crate, and on nothing of each other: it holds the record and batch types,
//! the per-batch acknowledgement, the bounded memory channel and the disk
//! channel (a segment log between two memory channels), the source and
//! sink traits with the context structs they are built from, the checkpoint
//! store trait and the metrics handles.
//!
//! This crate must never know about Kafka, sled, HTTP or YAML: it is the
//! narrow waist between the runtime and the plugins, and every type in it is
//! on the hot path or next to it.

pub mod ack;
pub mod batch;
pub mod batcher;
pub mod budget;
pub mod channel;
pub mod channel_disk;
pub mod channel_log;
pub mod component;
pub mod heartbeat;
pub mod intercept;
pub mod ledger;
pub mod metrics;
pub mod readiness;
pub mod secret;
pub mod shutdown;
pub mod spool;
pub mod store;
pub mod tap;

pub use ack::{Ack, AckReceiver};
pub use batch::{Batch, BatchMeta, FieldValue, Fields, Record};
pub use batcher::{next_batch, BatchLimits, SinkBatch};
pub use channel::{Channel, ChannelClosed, Redeliver};
pub use component::{
    BuildError, CheckLine, CheckReport, ComponentTask, ConfigIssue, EarlyBinding, MaxLineBytes,
    Outcome, ReplayReport, SinkConfig, SinkContext, SourceConfig, SourceContext, StartAt,
};
pub use heartbeat::{Heartbeat, Heartbeats};
pub use intercept::{Interceptor, InterceptorConfig, Interceptors};
pub use ledger::Ledger;
pub use metrics::{Families, Labels, Metrics, SinkMetrics, SourceMetrics};
pub use readiness::Readiness;
pub use secret::Secret;
pub use shutdown::Shutdown;
pub use spool::{SpoolStore, SpoolTree, Usage};
pub use store::{CheckpointStore, StoreError};
pub use tap::{Rendered, Side, Tap, TapHub, TapOptions};

/// Cases per run of the plugins' model tests (proptest): 2,000 (seconds),
/// or `TAILRACE_MODEL_CASES` for a longer hunt.
pub fn model_test_cases() -> u32 {
    std::env::var("TAILRACE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// This machine's host name (what `hostname` prints), or "unknown".
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length and gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
