//! The I/O shell of one RELP connection around the pure [`crate::relp`]
//! core: each read's `syslog` frames go to the channels as one batch with
//! an acknowledgement, and the answers of that read are written once the
//! acknowledgement completes (Kafka acknowledged every record, or the
//! channel made it durable), in the order the frames came.
//!
//! After shutdown the connection reads what the client already sent (see
//! [`crate::listen::drain_read`]), then keeps answering until every batch
//! is acknowledged or the sinks are done, so a client's window is answered
//! for whatever was delivered during the grace period. What is never
//! answered is sent again by the client after it reconnects.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tailrace_api::{Ack, AckReceiver, Heartbeat, Record};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::framing::Cuts;
use crate::limits::Held;
use crate::listen::{drain_deadline, drain_read, NEVER};
use crate::output::{Output, OVER_BUDGET};
use crate::relp::{self, Parser, Session, Step};
use crate::Plan;

/// Tells the connection which batch is acknowledged.
struct Acks(mpsc::UnboundedSender<u64>);

impl AckReceiver for Acks {
    fn acknowledged(&self, batch_id: u64) {
        // The connection may be gone: its client re-sends.
        let _ = self.0.send(batch_id);
    }
}

/// The answers to one read's frames, written once its batch (if any) is
/// acknowledged and everything before them is written.
struct Pending {
    batch: Option<u64>,
    answers: BytesMut,
    /// A `close` is among them: close the connection after writing.
    close: bool,
    /// `syslog` frames answered `200 OK` among them.
    messages: u64,
}

/// Answers waiting for their acknowledgements, in order, and the count
/// of messages among those moved out to be written.
#[derive(Default)]
struct Answers(VecDeque<Pending>, u64);

impl Answers {
    fn acknowledged(&mut self, id: u64) {
        if let Some(p) = self.0.iter_mut().find(|p| p.batch == Some(id)) {
            p.batch = None;
        }
    }

    /// Moves the answers that may be written now into `out`; returns
    /// whether a `close` was answered.
    fn ready(&mut self, out: &mut BytesMut) -> bool {
        while self.0.front().is_some_and(|p| p.batch.is_none()) {
            let p = self.0.pop_front().expect("front exists");
            out.extend_from_slice(&p.answers);
            self.1 += p.messages;
            if p.close {
                return true;
            }
        }
        false
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The messages among the answers moved out since the last call.
    fn take_messages(&mut self) -> u64 {
        std::mem::take(&mut self.1)
    }
}

/// What a connection is, between reads.
struct Conn<'a> {
    peer: &'a str,
    out: &'a Output,
    parser: Parser,
    session: Session,
    answers: Answers,
    receiver: Arc<dyn AckReceiver>,
    next_batch: u64,
    held: Held<'a>,
}

impl Conn<'_> {
    /// Cuts the frames in `chunk` (one read, after what the read before
    /// left), sends their records as one batch and queues their answers;
    /// keeps what is left of the chunk in `carry`, a copy, so the read's
    /// buffer goes back to the pool once its records are delivered. Err
    /// when the connection must be closed (a bad frame, a closed channel).
    async fn on_read(
        &mut self,
        mut chunk: Bytes,
        carry: &mut Vec<u8>,
        heartbeat: &Heartbeat,
    ) -> Result<(), ()> {
        let mut records = Vec::new();
        let mut cuts = Cuts::default();
        let mut pending = Pending {
            batch: None,
            answers: BytesMut::new(),
            close: false,
            messages: 0,
        };
        let mut failed = None;
        loop {
            let frame = match self.parser.next(&mut chunk) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            let txnr = frame.txnr;
            match self.session.on_frame(frame) {
                Ok(Step::Answer(text)) => relp::answer(&mut pending.answers, txnr, &text),
                Ok(Step::Record(data, truncated)) => {
                    cuts.truncated += u64::from(truncated);
                    records.push(Record::new(data, 0));
                    relp::answer(&mut pending.answers, txnr, "200 OK");
                    pending.messages += 1;
                }
                Ok(Step::AnswerAndClose(text)) => {
                    relp::answer(&mut pending.answers, txnr, &text);
                    pending.close = true;
                    break;
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if !records.is_empty() {
            let id = self.next_batch;
            self.next_batch += 1;
            pending.batch = Some(id);
            let ack = Ack::new(id, records.len(), self.receiver.clone());
            self.answers.0.push_back(pending);
            if !self.out.send_acked(records, cuts, ack, heartbeat).await {
                return Err(());
            }
        } else if !pending.answers.is_empty() {
            self.answers.0.push_back(pending);
        }
        *carry = chunk.to_vec();
        if failed.is_none() && !self.held.set(carry.len() + self.parser.holding()) {
            self.out.discard_partial(self.peer, OVER_BUDGET, carry);
            return Err(());
        }
        if let Some(error) = failed {
            self.out.cx.metrics.parse_errors.inc();
            if self.out.log_protocol.due() {
                warn!(source = %self.out.name(), peer = self.peer, error, "not a relp session; closing the connection (the client re-sends what was not answered)");
            }
            return Err(());
        }
        Ok(())
    }
}

/// Writes the answers in `written`, counting the messages among them in
/// `tailrace_relp_messages_answered_total` once written; false when the
/// write failed.
async fn write_answers<W: AsyncWrite + Unpin>(
    wr: &mut W,
    written: &mut BytesMut,
    conn: &mut Conn<'_>,
) -> bool {
    let messages = conn.answers.take_messages();
    if written.is_empty() {
        return true;
    }
    if wr.write_all(&written.split()).await.is_err() {
        return false;
    }
    if let Some(answered) = &conn.out.answered {
        answered.inc_by(messages);
    }
    true
}

/// Serves one RELP connection until it closes, fails or shutdown comes
/// (then as the module's doc says). `reading` is dropped once it reads no
/// more.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: &str,
    plan: &Plan,
    out: &Output,
    heartbeat: &Heartbeat,
    reading: mpsc::Sender<()>,
) {
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        peer,
        out,
        parser: Parser::new(plan.limit.max_line_bytes),
        session: Session::default(),
        answers: Answers::default(),
        receiver: Arc::new(Acks(ack_tx)),
        next_batch: 0,
        held: out.partial.share(),
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut carry: Vec<u8> = Vec::new();
    let mut written = BytesMut::new();
    let stopped = out.cx.shutdown.wait();
    tokio::pin!(stopped);
    let idle_for = plan.idle_timeout.unwrap_or(NEVER);
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    let why = loop {
        heartbeat.idle();
        let read = tokio::select! {
            biased;
            Some(id) = ack_rx.recv() => {
                conn.answers.acknowledged(id);
                None
            }
            _ = &mut stopped => break "shutdown",
            _ = &mut idle, if conn.answers.is_empty() => break "idle timeout",
            r = out.pool.read(&mut rd, &carry, plan.read_buffer_bytes) => Some(r),
        };
        heartbeat.beat();
        match read {
            None => {}
            Some(Ok(chunk)) if chunk.len() == carry.len() => break "closed by the peer",
            Some(Ok(chunk)) => {
                if conn.on_read(chunk, &mut carry, heartbeat).await.is_err() {
                    return;
                }
                idle.as_mut().reset(Instant::now() + idle_for);
            }
            Some(Err(e)) => {
                debug!(source = %out.name(), peer, error = %e, "read failed");
                break "read error";
            }
        }
        let close = conn.answers.ready(&mut written);
        if !written.is_empty() {
            if !write_answers(&mut wr, &mut written, &mut conn).await {
                break "write error";
            }
            // Waiting for acknowledgements is not idleness.
            idle.as_mut().reset(Instant::now() + idle_for);
        }
        if close {
            break "closed by the client's close";
        }
    };
    if why == "shutdown" {
        let deadline = drain_deadline();
        while let Some(chunk) = drain_read(&mut rd, out, &carry, deadline).await {
            if conn.on_read(chunk, &mut carry, heartbeat).await.is_err() {
                break;
            }
        }
        drop(reading);
        // Answer what the sinks deliver until they are done.
        let drained = out.cx.drained.wait();
        tokio::pin!(drained);
        while !conn.answers.is_empty() {
            heartbeat.idle();
            tokio::select! {
                Some(id) = ack_rx.recv() => conn.answers.acknowledged(id),
                _ = &mut drained => {
                    while let Ok(id) = ack_rx.try_recv() {
                        conn.answers.acknowledged(id);
                    }
                    conn.answers.ready(&mut written);
                    break;
                }
            }
            conn.answers.ready(&mut written);
            if !written.is_empty() && !write_answers(&mut wr, &mut written, &mut conn).await {
                break;
            }
        }
        write_answers(&mut wr, &mut written, &mut conn).await;
        let _ = wr.flush().await;
    }
    debug!(source = %out.name(), peer, reason = why, unanswered = conn.answers.0.len(), "relp connection closed");
}
