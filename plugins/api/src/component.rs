//! The source and sink traits and the context structs they are built from.
//!
//! A component's config is parsed and validated by the daemon, then built
//! with a context that carries everything it may touch: its name, its
//! channels, the shutdown signals, its metric handles and the checkpoint
//! store. Building returns a task; the daemon runs it and waits for it.

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::heartbeat::{Heartbeat, WAIT_BEAT};
use crate::intercept::Interceptors;
use crate::spool::SpoolTree;
use crate::Readiness;
use crate::{
    Batch, Channel, ChannelClosed, CheckpointStore, Shutdown, SinkMetrics, SourceMetrics,
    SpoolStore,
};
use crate::{Rendered, Tap};

/// A running component. It resolves when the component has stopped, with
/// the reason if it stopped on an error.
pub type ComponentTask = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Where a source begins what it has no saved position for (a file never
/// seen, a journal without a saved cursor): `beginning | end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// Everything there is.
    #[default]
    Beginning,
    /// Only what is written after the first start.
    End,
}

/// A problem found in a component's config by its `validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where, relative to the component: `["include", "1"]`.
    pub path: Vec<String>,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(path: &[&str], message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        }
    }

    /// The same issue, one level down: `under("sasl")` on `password` is
    /// `sasl.password`.
    pub fn under(mut self, parent: &str) -> ConfigIssue {
        self.path.insert(0, parent.to_string());
        self
    }
}

/// Building a component failed (a port in use, a directory not writable).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

pub trait SourceConfig: Send + Sync + Debug {
    /// Checks the config without touching the system.
    fn validate(&self) -> Vec<ConfigIssue> {
        Vec::new()
    }

    /// What the source will hold exclusively ("tcp 127.0.0.1:5140"), so two
    /// components claiming the same thing are refused before anything starts.
    fn resources(&self) -> Vec<String> {
        Vec::new()
    }

    fn build(&self, cx: SourceContext) -> Result<ComponentTask, BuildError>;

    /// Binds what the source will listen on now, ahead of `build`, so a
    /// reload opens a moved port before the old group lets go of its own
    /// (no connection is refused meanwhile). `build` takes what this
    /// bound while the returned guard lives; dropping the guard releases
    /// what `build` did not take. `None` for sources that listen on
    /// nothing, or when binding fails now (`build` reports the error).
    fn bind_early(&self) -> Option<EarlyBinding> {
        None
    }

    /// The longest record this source sends (longer lines are split or
    /// truncated by its policy), for sources that have such a limit.
    fn max_line_bytes(&self) -> Option<MaxLineBytes> {
        None
    }

    /// Lowers a limit the config did not set to `bytes`, what the sinks the
    /// source feeds can deliver; the config loader calls it.
    fn fit_max_line_bytes(&mut self, bytes: usize) {
        let _ = bytes;
    }
}

/// What [`SourceConfig::bind_early`] holds until `build` takes it.
pub struct EarlyBinding(pub Box<dyn Send + Sync>);

/// A source's `max_line_bytes`, and whether the config set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxLineBytes {
    pub bytes: usize,
    pub explicit: bool,
}

impl MaxLineBytes {
    /// What the config gave, else what the loader fitted, else `default`.
    pub fn of(given: Option<usize>, fitted: Option<usize>, default: usize) -> MaxLineBytes {
        MaxLineBytes {
            bytes: given.or(fitted).unwrap_or(default),
            explicit: given.is_some(),
        }
    }
}

pub trait SinkConfig: Send + Sync + Debug {
    fn validate(&self) -> Vec<ConfigIssue> {
        Vec::new()
    }

    fn build(&self, cx: SinkContext) -> Result<ComponentTask, BuildError>;

    /// The largest payload the sink can deliver as one record, and why
    /// (for messages); `None` when it has no limit.
    fn max_record_bytes(&self) -> Option<(usize, String)> {
        None
    }

    /// What the sink would send for a record (`tailrace test`): `None` for
    /// sinks that send nothing.
    fn render(&self, batch: &Batch, record: &crate::Record) -> Option<Rendered> {
        let _ = (batch, record);
        None
    }

    /// Replays a spool tree while the agent is stopped (`tailrace spool
    /// replay`); sinks without a spool say so.
    fn replay_spool(
        &self,
        name: &str,
        spool: Arc<dyn SpoolStore>,
        tree: SpoolTree,
        timeout: Duration,
    ) -> Result<ReplayReport, String> {
        let _ = (spool, tree, timeout);
        Err(format!("sink {name} keeps no spool"))
    }

    /// Connects with the real settings and says what the sink meets
    /// (`tailrace check`): reachability, TLS, authentication, its
    /// destination. Sinks that connect to nothing have nothing to say.
    fn check(&self, name: &str, timeout: Duration) -> CheckReport {
        let _ = (name, timeout);
        CheckReport::default()
    }
}

/// What `tailrace check` found for one sink, line by line.
#[derive(Debug, Default, Clone)]
pub struct CheckReport {
    pub lines: Vec<CheckLine>,
}

impl CheckReport {
    /// The sink can deliver: no line failed.
    pub fn deliverable(&self) -> bool {
        self.lines.iter().all(|l| l.outcome != Outcome::Fail)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// What was checked: "broker reachable", "topic logs".
    pub what: String,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Deliverable, but short of what an operator should want.
    Warn,
    /// The sink cannot deliver.
    Fail,
}

impl CheckLine {
    fn new(what: &str, outcome: Outcome, detail: impl Into<String>) -> CheckLine {
        CheckLine {
            what: what.to_string(),
            outcome,
            detail: detail.into(),
        }
    }

    pub fn ok(what: &str, detail: impl Into<String>) -> CheckLine {
        CheckLine::new(what, Outcome::Ok, detail)
    }

    pub fn warn(what: &str, detail: impl Into<String>) -> CheckLine {
        CheckLine::new(what, Outcome::Warn, detail)
    }

    pub fn fail(what: &str, detail: impl Into<String>) -> CheckLine {
        CheckLine::new(what, Outcome::Fail, detail)
    }
}

/// What an offline replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    pub entries: u64,
    pub events: u64,
    /// Not acknowledged in full: left in place, with just the records
    /// that failed.
    pub failed_entries: u64,
    /// Records Kafka refused for good: moved to the dead-letter tree.
    pub dead_lettered_events: u64,
    /// Failed their checksum: moved to the corrupt tree.
    pub corrupt_entries: u64,
}

/// Everything a source may use.
pub struct SourceContext {
    pub name: Arc<str>,
    /// The channels every batch goes to (one, usually).
    pub outputs: Vec<Arc<Channel>>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// Stop reading.
    pub shutdown: Shutdown,
    /// Every sink has finished: process the last acknowledgements, persist
    /// the positions and return.
    pub drained: Shutdown,
    /// Triggered by the source once, after `shutdown`, when it will send
    /// nothing more (what it held is sent). The channels stay open until
    /// every source has triggered it or ended its task, or the grace period
    /// is over. A source whose task ends when it stops need not trigger it.
    pub sent: Shutdown,
    pub metrics: SourceMetrics,
    /// Ready unless the source says otherwise (a socket not yet bound).
    pub readiness: Readiness,
    /// Shape every batch before it goes to the channels.
    pub interceptors: Interceptors,
    /// Copies of what is sent, while `tailrace tap` is attached (`admit`
    /// feeds it, after the interceptors).
    pub tap: Tap,
    /// Beaten once per loop iteration of the source's thread or main task
    /// (and by the sends below while a channel is full); a task of its own
    /// (a connection) takes `heartbeat.task(..)`.
    pub heartbeat: Heartbeat,
}

impl SourceContext {
    /// Sends a batch to every output channel, waiting while one is full
    /// (beating the heartbeat meanwhile). The batch's ack must have been
    /// made for one delivery per record; for each further channel the
    /// deliveries are added here.
    pub fn send_blocking(&self, batch: Batch) -> Result<(), ChannelClosed> {
        self.send_waiting(batch, WAIT_BEAT, &mut || {})
    }

    /// [`SourceContext::send_blocking`], calling `meanwhile` every `every`
    /// while an output stays full (see [`Channel::send_waiting`]), and
    /// beating the heartbeat.
    pub fn send_waiting(
        &self,
        mut batch: Batch,
        every: Duration,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<(), ChannelClosed> {
        if !self.admit(&mut batch) {
            return Ok(());
        }
        let meanwhile = &mut || {
            self.heartbeat.beat();
            meanwhile()
        };
        let outputs = self.outputs.as_slice();
        batch.ack.add(batch.len() * (outputs.len() - 1));
        for out in &outputs[1..] {
            out.send_waiting(copy(&batch), every, meanwhile)?;
        }
        outputs[0].send_waiting(batch, every, meanwhile)
    }

    /// [`SourceContext::send_blocking`] for async sources.
    pub async fn send(&self, batch: Batch) -> Result<(), ChannelClosed> {
        self.send_beating(batch, &self.heartbeat).await
    }

    /// [`SourceContext::send`] from a task with a heartbeat of its own,
    /// which is beaten while an output stays full.
    pub async fn send_beating(
        &self,
        mut batch: Batch,
        heartbeat: &Heartbeat,
    ) -> Result<(), ChannelClosed> {
        if !self.admit(&mut batch) {
            return Ok(());
        }
        let outputs = self.outputs.as_slice();
        batch.ack.add(batch.len() * (outputs.len() - 1));
        for out in &outputs[1..] {
            send_beating(out, copy(&batch), heartbeat).await?;
        }
        send_beating(&outputs[0], batch, heartbeat).await
    }
}

impl SourceContext {
    /// Sends where there is room now, for sources that cannot wait (UDP).
    /// Counts the events read; returns how many events did not fit in some
    /// output (the caller counts those as dropped).
    pub fn offer(&self, mut batch: Batch) -> u64 {
        if !self.admit(&mut batch) {
            return 0;
        }
        let mut dropped = 0;
        for out in &self.outputs[1..] {
            if let Err(b) = out.try_send(copy(&batch)) {
                dropped += b.len() as u64;
            }
        }
        if let Err(b) = self.outputs[0].try_send(batch) {
            dropped += b.len() as u64;
        }
        dropped
    }

    /// Counts the batch as read, then runs the interceptors; records they
    /// filter out are done (their deliveries complete) and counted. Returns
    /// whether anything is left to send.
    fn admit(&self, batch: &mut Batch) -> bool {
        self.metrics.events.inc_by(batch.len() as u64);
        self.metrics.bytes.inc_by(batch.bytes as u64);
        if self.interceptors.is_empty() {
            self.tap.batch(batch);
            return true;
        }
        let before = batch.len();
        for i in self.interceptors.iter() {
            i.intercept(batch);
            if batch.is_empty() {
                break;
            }
        }
        let filtered = before - batch.len();
        if filtered > 0 {
            batch.bytes = batch.records.iter().map(|r| r.payload.len()).sum();
            self.metrics.filtered.inc_by(filtered as u64);
            batch.ack.done(filtered);
        }
        self.tap.batch(batch);
        !batch.is_empty()
    }
}

/// Sends to `out` from a task, beating `heartbeat` every [`WAIT_BEAT`]
/// while it is full. Where there is room (the usual case) no timer is made.
async fn send_beating(
    out: &Channel,
    batch: Batch,
    heartbeat: &Heartbeat,
) -> Result<(), ChannelClosed> {
    let batch = match out.try_send(batch) {
        Ok(()) => return Ok(()),
        Err(batch) => batch,
    };
    let send = out.send(batch);
    tokio::pin!(send);
    loop {
        tokio::select! {
            sent = &mut send => return sent,
            _ = tokio::time::sleep(WAIT_BEAT) => heartbeat.beat(),
        }
    }
}

fn copy(batch: &Batch) -> Batch {
    Batch {
        meta: batch.meta.clone(),
        records: batch.records.clone(),
        bytes: batch.bytes,
        ack: batch.ack.clone(),
        fields: batch.fields.clone(),
    }
}

/// Everything a sink may use.
pub struct SinkContext {
    pub name: Arc<str>,
    pub input: Arc<Channel>,
    /// `Some` when `input` keeps what it holds across a crash (a disk
    /// channel): the runtime sets it from the channel's type. A sink may
    /// then leave a batch unacknowledged instead of keeping a copy of its
    /// own, and have it read again (see [`crate::Redeliver`]).
    pub durable_input: Option<Arc<dyn crate::Redeliver>>,
    /// Shutdown has begun: the input is closed, drain it and finish within
    /// `grace`.
    pub shutdown: Shutdown,
    pub grace: Duration,
    pub metrics: SinkMetrics,
    pub data_dir: PathBuf,
    /// Where failed sends are kept until they are replayed.
    pub spool: Arc<dyn SpoolStore>,
    /// Not ready until the sink has reached its destination.
    pub readiness: Readiness,
    /// Copies of what is sent, with topic and key, while `tailrace tap` is
    /// attached: `tap.begin()` once per batch, `offer` per record.
    pub tap: Tap,
    /// Beaten once per iteration of the sink's loop.
    pub heartbeat: Heartbeat,
}

impl SinkContext {
    /// Runs a simple sink on a thread of its own: `each` is given every
    /// batch of the input until the input is closed and drained; a batch is
    /// acknowledged, counted as delivered and tapped once `each` returned
    /// Ok. An error from `each` stops the sink with that error.
    pub fn run_on_thread(
        self,
        mut each: impl FnMut(&Batch) -> Result<(), String> + Send + 'static,
    ) -> Result<ComponentTask, BuildError> {
        let name = self.name.clone();
        let thread_name = format!("sink-{name}");
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                self.readiness.set_ready();
                let result = loop {
                    self.heartbeat.beat();
                    let Some(batch) = self.input.recv_timeout(Duration::from_millis(50)) else {
                        if self.input.is_drained() {
                            break Ok(());
                        }
                        continue;
                    };
                    if let Err(e) = each(&batch) {
                        break Err(format!("sink {name}: {e}"));
                    }
                    self.tap.batch(&batch);
                    let m = &self.metrics;
                    m.batches.inc();
                    m.batch_events.observe(batch.len() as f64);
                    m.delivered.inc_by(batch.len() as u64);
                    m.delivered_bytes.inc_by(batch.bytes as u64);
                    if let Ok(age) = batch.meta.read_at.elapsed() {
                        m.latency.observe(age.as_secs_f64());
                    }
                    batch.ack.done(batch.len());
                };
                let _ = tx.send(result);
            })
            .map_err(|e| BuildError(format!("cannot start the thread {thread_name}: {e}")))?;
        Ok(Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the sink thread panicked".into()))
        }))
    }
}
