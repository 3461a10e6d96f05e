//! From records to batches in the channels: syslog parsing, counters and
//! (rate-limited) logs, once per read.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tailrace_api::{Ack, Batch, BatchMeta, Heartbeat, Record, SourceContext};
use tracing::{debug, warn};

use crate::framing::Cuts;
use crate::limits::Budget;
use crate::metrics::{self, Refused};
use crate::pool::ReadPool;
use crate::{Plan, Transport};

/// The reason a datagram the kernel dropped (its receive buffer was full)
/// is counted with.
pub(crate) const KERNEL_DROPS: &str = "kernel_receive_buffer";

/// Why a connection's partial frame was dropped with it: the source's
/// partial frames were over `max_partial_bytes`...
pub(crate) const OVER_BUDGET: &str = "partial_frame_budget";
/// ...or it sent slower than `min_rate_bytes_per_second` (slowloris).
pub(crate) const SLOW: &str = "slow_connection";

/// A connection's partial frame: a relp session's read buffer, or what
/// a stream connection carries between reads.
pub(crate) trait PartialFrame {
    /// Empties it; returns how many bytes it held.
    fn discard(&mut self) -> usize;
}

impl PartialFrame for BytesMut {
    fn discard(&mut self) -> usize {
        let n = self.len();
        self.clear();
        n
    }
}

impl PartialFrame for Vec<u8> {
    fn discard(&mut self) -> usize {
        std::mem::take(self).len()
    }
}

/// Logs at most once per `PERIOD_SECS` per kind of event, across tasks.
#[derive(Default)]
pub(crate) struct Every(AtomicU64);

impl Every {
    const PERIOD_SECS: u64 = 10;

    pub(crate) fn due(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.0.load(Ordering::Relaxed);
        (last == 0 || now >= last + Self::PERIOD_SECS)
            && self
                .0
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Shared by every task of one source.
pub(crate) struct Output {
    pub(crate) cx: SourceContext,
    /// Partial frames held by all the source's connections.
    pub(crate) partial: Budget,
    /// The read buffers of the source's connections (stream sources).
    pub(crate) pool: ReadPool,
    /// Connections closed unread, by reason (stream sources).
    pub(crate) refused: Refused,
    /// Messages a relp source answered (relp sources only).
    pub(crate) answered: Option<prometheus_client::metrics::counter::Counter>,
    path: Option<Arc<Path>>,
    syslog: bool,
    log_malformed: Every,
    log_truncated: Every,
    log_dropped: Every,
    pub(crate) log_tls: Every,
    pub(crate) log_protocol: Every,
    log_kernel_drops: Every,
    log_hostile: Every,
}

impl Output {
    pub(crate) fn new(cx: SourceContext, path: Option<Arc<Path>>, plan: &Plan) -> Output {
        let mut reasons = Vec::new();
        if plan.transport.is_stream() {
            reasons.push(metrics::MAX_CONNECTIONS);
        }
        if matches!(plan.transport, Transport::Tcp(_)) {
            reasons.push(metrics::PER_ADDRESS);
        }
        if plan.tls.is_some() {
            reasons.extend([
                metrics::TLS_HANDSHAKE_TIMEOUT,
                metrics::TLS_HANDSHAKE_FAILED,
            ]);
        }
        Output {
            pool: ReadPool::new(
                plan.read_pool_bytes,
                if plan.transport.is_stream() {
                    metrics::buffer_bytes(&cx.name, &cx.metrics)
                } else {
                    Default::default()
                },
            ),
            refused: Refused::of(&cx.name, &cx.metrics, &reasons),
            answered: plan
                .relp
                .then(|| metrics::relp_answered(&cx.name, &cx.metrics)),
            cx,
            partial: Budget::new(plan.max_partial_bytes),
            path,
            syslog: plan.syslog,
            log_malformed: Every::default(),
            log_truncated: Every::default(),
            log_dropped: Every::default(),
            log_tls: Every::default(),
            log_protocol: Every::default(),
            log_kernel_drops: Every::default(),
            log_hostile: Every::default(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.cx.name
    }

    /// Closing a connection for `reason` ([`OVER_BUDGET`], [`SLOW`]):
    /// drops the partial frame it held (its bytes are cleared), counted as
    /// one event, and logs; returns the reason for the connection's close.
    pub(crate) fn discard_partial(
        &self,
        peer: &str,
        reason: &'static str,
        partial: &mut impl PartialFrame,
    ) -> &'static str {
        let bytes = partial.discard();
        self.cx.metrics.dropped.add(reason, 1);
        if self.log_hostile.due() {
            warn!(source = %self.cx.name, peer, reason, partial_bytes = bytes, "closing a connection and dropping its partial frame (counted in tailrace_events_dropped_total)");
        }
        reason
    }

    /// Parses and counts; `None` when there is nothing to send.
    fn batch(&self, mut records: Vec<Record>, cuts: Cuts, ack: Ack) -> Option<Batch> {
        let mut malformed = cuts.malformed;
        if self.syslog {
            for record in &mut records {
                match crate::syslog::parse(&record.payload) {
                    Some(fields) => record.fields = Some(Box::new(fields)),
                    None => malformed += 1,
                }
            }
        }
        if malformed > 0 {
            self.cx.metrics.parse_errors.inc_by(malformed);
            if self.log_malformed.due() {
                let sample = records.iter().find(|r| r.fields.is_none()).map(|r| {
                    String::from_utf8_lossy(&r.payload[..r.payload.len().min(120)]).into_owned()
                });
                warn!(source = %self.cx.name, count = malformed, sample, "malformed input forwarded as it was");
            }
        }
        if cuts.truncated > 0 {
            self.cx
                .metrics
                .dropped
                .add("line_truncated", cuts.truncated);
            if self.log_truncated.due() {
                warn!(source = %self.cx.name, lines = cuts.truncated, "over-long lines truncated");
            }
        }
        if cuts.kernel_dropped > 0 {
            self.cx
                .metrics
                .dropped
                .add(KERNEL_DROPS, cuts.kernel_dropped);
            if self.log_kernel_drops.due() {
                warn!(source = %self.cx.name, datagrams = cuts.kernel_dropped, "the kernel dropped datagrams: the receive buffer was full (raise receive_buffer_bytes and net.core.rmem_max)");
            }
        }
        if cuts.split > 0 {
            debug!(source = %self.cx.name, lines = cuts.split, "over-long lines split");
        }
        if records.is_empty() {
            return None;
        }
        let meta = Arc::new(BatchMeta {
            source: self.cx.name.clone(),
            path: self.path.clone(),
            stream: None,
            read_at: SystemTime::now(),
        });
        Some(Batch::new(meta, records, ack))
    }

    /// Sends, waiting while a channel is full (beating `heartbeat`, the
    /// sending task's). Returns false once the channels are closed
    /// (shutdown); what could not be sent is counted.
    pub(crate) async fn send(
        &self,
        records: Vec<Record>,
        cuts: Cuts,
        heartbeat: &Heartbeat,
    ) -> bool {
        self.send_acked(records, cuts, Ack::none(), heartbeat).await
    }

    /// [`Output::send`] with the batch's acknowledgement (made for one
    /// delivery per record).
    pub(crate) async fn send_acked(
        &self,
        records: Vec<Record>,
        cuts: Cuts,
        ack: Ack,
        heartbeat: &Heartbeat,
    ) -> bool {
        let Some(batch) = self.batch(records, cuts, ack) else {
            return true;
        };
        match self.cx.send_beating(batch, heartbeat).await {
            Ok(()) => true,
            Err(closed) => {
                let n = closed.0.len() as u64;
                self.cx.metrics.dropped.add("shutdown", n);
                warn!(source = %self.cx.name, events = n, "channel closed during shutdown; events read but not delivered");
                false
            }
        }
    }

    /// Sends only where there is room now (UDP cannot wait); counts what
    /// did not fit as dropped with reason `channel_full`.
    pub(crate) fn offer(&self, records: Vec<Record>, cuts: Cuts) {
        let Some(batch) = self.batch(records, cuts, Ack::none()) else {
            return;
        };
        let m = &self.cx.metrics;
        let dropped = self.cx.offer(batch);
        if dropped > 0 {
            m.dropped.add("channel_full", dropped);
            if self.log_dropped.due() {
                warn!(source = %self.cx.name, events = dropped, "channel full, datagrams dropped (counted in tailrace_events_dropped_total)");
            }
        }
    }
}
