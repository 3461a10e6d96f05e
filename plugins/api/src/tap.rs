//! Taps: copies of live events for `tailrace tap`, made only while a tap
//! is attached, at a bounded rate, and never waited for.
//!
//! Every source and sink holds a [`Tap`] from its context. On the hot path
//! a component asks [`Tap::begin`] once per batch: one relaxed atomic load
//! when nothing is attached, and nothing else. While a tap is attached, the
//! batch's records are rendered as JSON lines, at most as many as the
//! sessions' rate budgets allow, and handed to each session's bounded queue
//! with `try_send`; what a budget or a full queue refuses is counted in
//! `tailrace_tap_events_dropped_total{component}`. A session ends when its
//! receiver is dropped (the client went away) or its limit is reached.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;

use crate::{Batch, FieldValue, Record};

/// Lines a session's queue holds before copies are dropped.
pub const TAP_QUEUE_LINES: usize = 4096;
/// Events per second a session receives at most, unless asked for fewer.
pub const TAP_MAX_EVENTS_PER_SECOND: u32 = 10_000;

type Labels = Vec<(&'static str, String)>;

/// Which side of the pipeline a tap point is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Source,
    Sink,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Sink => "sink",
        }
    }
}

/// What a sink will send a record with, for the tap and `tailrace test`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub topic: Option<String>,
    pub key: Option<Vec<u8>>,
    /// The value (the message body) as the sink writes it.
    pub value: Vec<u8>,
}

impl Rendered {
    /// The topic and key a record is sent with (the tap shows no value).
    pub fn route(topic: &str, key: Option<&[u8]>) -> Rendered {
        Rendered {
            topic: Some(topic.to_owned()),
            key: key.map(<[u8]>::to_vec),
            value: Vec::new(),
        }
    }
}

/// What a client asked for when it attached.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TapOptions {
    /// Stop after this many events.
    pub limit: Option<u64>,
    /// The fraction of events to copy, in (0, 1].
    pub sample: f64,
    /// Events per second at most (capped at [`TAP_MAX_EVENTS_PER_SECOND`]).
    pub events_per_second: u32,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions {
            limit: None,
            sample: 1.0,
            events_per_second: TAP_MAX_EVENTS_PER_SECOND,
        }
    }
}

/// Every tap point of the process; lives as long as the admin endpoint,
/// so a tap stays attached across a reload.
pub struct TapHub {
    points: Mutex<BTreeMap<(Side, String), Arc<TapPoint>>>,
    dropped: Family<Labels, Counter>,
}

impl Default for TapHub {
    fn default() -> Self {
        TapHub::new()
    }
}

impl TapHub {
    pub fn new() -> TapHub {
        TapHub {
            points: Mutex::new(BTreeMap::new()),
            dropped: Family::default(),
        }
    }

    /// `tailrace_tap_events_dropped_total{component}`, to register.
    pub fn dropped_family(&self) -> Family<Labels, Counter> {
        self.dropped.clone()
    }

    /// The tap of a component, created on first use.
    pub fn tap(&self, side: Side, name: &str) -> Tap {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        let point = points
            .entry((side, name.to_owned()))
            .or_insert_with(|| {
                let component = format!("{} {name}", side.name());
                Arc::new(TapPoint {
                    dropped: self
                        .dropped
                        .get_or_create(&vec![("component", component.clone())])
                        .clone(),
                    component,
                    attached: AtomicBool::new(false),
                    seen: AtomicU64::new(0),
                    sessions: Mutex::new(Vec::new()),
                })
            })
            .clone();
        Tap(Some(point))
    }

    /// Keeps only the points of these components (after a reload).
    pub fn retain(&self, live: &[(Side, String)]) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        points.retain(|k, _| live.contains(k));
    }

    /// The components that can be tapped: `source app`, `sink kafka`.
    pub fn names(&self) -> Vec<String> {
        let points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        points.values().map(|p| p.component.clone()).collect()
    }

    /// Attaches a session to one component, or to every one when `only` is
    /// `None`. The receiver yields JSON lines; dropping it detaches.
    pub fn attach(
        &self,
        only: Option<(Side, &str)>,
        options: TapOptions,
    ) -> Result<mpsc::Receiver<String>, String> {
        let points: Vec<Arc<TapPoint>> = {
            let all = self.points.lock().unwrap_or_else(|e| e.into_inner());
            match only {
                Some((side, name)) => all
                    .get(&(side, name.to_owned()))
                    .cloned()
                    .into_iter()
                    .collect(),
                None => all.values().cloned().collect(),
            }
        };
        if points.is_empty() {
            return Err(match only {
                Some((side, name)) => format!(
                    "no {} {name}; these can be tapped: {}",
                    side.name(),
                    self.names().join(", ")
                ),
                None => "nothing to tap: the pipeline has no components".into(),
            });
        }
        let (tx, rx) = mpsc::channel(TAP_QUEUE_LINES);
        let remaining = Arc::new(AtomicU64::new(options.limit.unwrap_or(u64::MAX)));
        let rate = f64::from(
            options
                .events_per_second
                .clamp(1, TAP_MAX_EVENTS_PER_SECOND),
        );
        for p in points {
            let mut sessions = p.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.push(Session {
                tx: tx.clone(),
                remaining: remaining.clone(),
                sample: options.sample.clamp(f64::MIN_POSITIVE, 1.0),
                seen: 0,
                rate,
                tokens: rate,
                refilled: Instant::now(),
            });
            p.attached.store(true, Ordering::Release);
        }
        Ok(rx)
    }
}

/// One component's tap point.
pub struct TapPoint {
    component: String,
    attached: AtomicBool,
    /// Events offered so far, for sampling across batches.
    seen: AtomicU64,
    sessions: Mutex<Vec<Session>>,
    dropped: Counter,
}

struct Session {
    tx: mpsc::Sender<String>,
    /// Events still wanted, shared by the points of one attach.
    remaining: Arc<AtomicU64>,
    sample: f64,
    seen: u64,
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl Session {
    /// Refills the rate budget; returns the whole events it allows now.
    fn refill(&mut self, now: Instant) -> usize {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.tokens as usize
    }

    /// Whether the next event is in the sample (every 1/sample-th).
    fn sampled(&mut self, of: f64) -> bool {
        self.seen += 1;
        let ratio = (self.sample / of).min(1.0);
        (self.seen as f64 * ratio).floor() > ((self.seen - 1) as f64 * ratio).floor()
    }
}

/// A component's handle on its tap point.
#[derive(Clone, Default)]
pub struct Tap(Option<Arc<TapPoint>>);

impl Tap {
    /// A tap nothing can attach to (tests, tools).
    pub fn none() -> Tap {
        Tap(None)
    }

    /// Starts copying one batch: `None`, after one atomic load, unless a
    /// tap is attached.
    #[inline]
    pub fn begin(&self) -> Option<TapBatch> {
        let point = self.0.as_ref()?;
        if !point.attached.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let mut sessions = point.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let budget = sessions
            .iter_mut()
            .map(|s| s.refill(now))
            .max()
            .unwrap_or(0);
        let sample = sessions.iter().map(|s| s.sample).fold(0.0, f64::max);
        Some(TapBatch {
            point: point.clone(),
            budget,
            sample,
            seen: point.seen.load(Ordering::Relaxed),
            lines: Vec::new(),
            refused: 0,
        })
    }

    /// Copies every record of a batch (sources: after the interceptors).
    pub fn batch(&self, batch: &Batch) {
        if let Some(mut t) = self.begin() {
            for (i, r) in batch.records.iter().enumerate() {
                if !t.offer(batch, r, || None) {
                    // This one was counted by `offer`.
                    t.refused += (batch.len() - i - 1) as u64;
                    break;
                }
            }
        }
    }
}

/// The copies of one batch, handed to the sessions when it is dropped.
pub struct TapBatch {
    point: Arc<TapPoint>,
    budget: usize,
    /// The largest sample rate of the sessions: the others take a share.
    sample: f64,
    seen: u64,
    lines: Vec<String>,
    /// Sampled events the budget had no room for.
    refused: u64,
}

impl TapBatch {
    /// Offers a record, with what the sink will send it with (made only
    /// for a record that is copied); returns false once the budget is
    /// spent (the caller may stop offering).
    pub fn offer(
        &mut self,
        batch: &Batch,
        record: &Record,
        sent: impl FnOnce() -> Option<Rendered>,
    ) -> bool {
        if self.lines.len() >= self.budget {
            self.refused += 1;
            return false;
        }
        self.seen += 1;
        let s = self.sample;
        if (self.seen as f64 * s).floor() > ((self.seen - 1) as f64 * s).floor() {
            let sent = sent();
            self.lines.push(render_line(
                &self.point.component,
                batch,
                record,
                sent.as_ref(),
            ));
        }
        true
    }
}

impl Drop for TapBatch {
    fn drop(&mut self) {
        self.point.seen.store(self.seen, Ordering::Relaxed);
        let mut dropped = self.refused;
        let mut sessions = self
            .point
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        sessions.retain_mut(|s| {
            let mut open = true;
            for line in &self.lines {
                if !s.sampled(self.sample) {
                    continue;
                }
                if s.remaining.load(Ordering::Relaxed) == 0 {
                    open = false;
                    break;
                }
                if s.tokens < 1.0 {
                    dropped += 1;
                    continue;
                }
                match s.tx.try_send(line.clone()) {
                    Ok(()) => {
                        s.tokens -= 1.0;
                        if s.remaining.fetch_sub(1, Ordering::Relaxed) <= 1 {
                            open = false;
                            break;
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        open = false;
                        break;
                    }
                }
            }
            open && !s.tx.is_closed()
        });
        if sessions.is_empty() {
            self.point.attached.store(false, Ordering::Release);
        }
        if dropped > 0 {
            self.point.dropped.inc_by(dropped);
        }
    }
}

fn text(v: &FieldValue) -> serde_json::Value {
    match v {
        FieldValue::Text(b) => String::from_utf8_lossy(b).into_owned().into(),
        FieldValue::Int(i) => (*i).into(),
    }
}

/// The fields of a record as a JSON object: the batch's, then its own.
pub fn fields_json(batch: &Batch, record: &Record) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = serde_json::Map::new();
    for f in [batch.fields.as_deref(), record.fields.as_deref()]
        .into_iter()
        .flatten()
    {
        for (name, value) in f.iter() {
            fields.insert(name.to_owned(), text(value));
        }
    }
    fields
}

/// A record as a JSON object: `source`, `path` and `offset` (files),
/// `fields`; the caller adds the payload under its own name.
pub fn record_json(batch: &Batch, record: &Record) -> serde_json::Map<String, serde_json::Value> {
    let mut o = serde_json::Map::new();
    o.insert("source".into(), batch.meta.source.to_string().into());
    if let Some(path) = &batch.meta.path {
        o.insert("path".into(), path.to_string_lossy().into_owned().into());
        o.insert("offset".into(), record.offset.into());
    }
    o.insert("fields".into(), fields_json(batch, record).into());
    o
}

/// One tap line: the component, where the record came from, its payload
/// (lossy UTF-8), its fields, and for sinks the topic and key.
fn render_line(component: &str, batch: &Batch, record: &Record, sent: Option<&Rendered>) -> String {
    let mut line = record_json(batch, record);
    line.insert("component".into(), component.into());
    line.insert(
        "payload".into(),
        String::from_utf8_lossy(&record.payload).into_owned().into(),
    );
    if let Some(r) = sent {
        if let Some(topic) = &r.topic {
            line.insert("topic".into(), topic.clone().into());
        }
        line.insert(
            "key".into(),
            match &r.key {
                Some(k) => String::from_utf8_lossy(k).into_owned().into(),
                None => serde_json::Value::Null,
            },
        );
    }
    serde_json::Value::Object(line).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;

    use super::*;
    use crate::{Ack, BatchMeta};

    fn batch(n: usize) -> Batch {
        let meta = Arc::new(BatchMeta {
            source: "app".into(),
            path: None,
            stream: None,
            read_at: SystemTime::now(),
        });
        let records = (0..n)
            .map(|i| Record::new(Bytes::from(format!("line {i}")), 0))
            .collect();
        Batch::new(meta, records, Ack::none())
    }

    fn drain(rx: &mut mpsc::Receiver<String>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(l) = rx.try_recv() {
            out.push(serde_json::from_str(&l).unwrap());
        }
        out
    }

    #[test]
    fn nothing_is_copied_while_no_tap_is_attached() {
        let hub = TapHub::new();
        let tap = hub.tap(Side::Source, "app");
        assert!(tap.begin().is_none());
        let mut rx = hub
            .attach(Some((Side::Source, "app")), TapOptions::default())
            .unwrap();
        tap.batch(&batch(3));
        let lines = drain(&mut rx);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["payload"], "line 0");
        assert_eq!(lines[0]["component"], "source app");
        drop(rx);
        // The next batch finds the receiver gone and detaches.
        tap.batch(&batch(1));
        assert!(tap.begin().is_none());
    }

    #[test]
    fn the_limit_ends_the_session_and_the_rate_bounds_the_copies() {
        let hub = TapHub::new();
        let tap = hub.tap(Side::Source, "app");
        let options = TapOptions {
            limit: Some(5),
            ..TapOptions::default()
        };
        let mut rx = hub.attach(None, options).unwrap();
        tap.batch(&batch(10));
        assert_eq!(drain(&mut rx).len(), 5);
        assert!(tap.begin().is_none(), "detached at its limit");
        assert!(rx.blocking_recv().is_none(), "the stream ends");

        let options = TapOptions {
            events_per_second: 100,
            ..TapOptions::default()
        };
        let mut rx = hub.attach(None, options).unwrap();
        tap.batch(&batch(1000));
        assert_eq!(drain(&mut rx).len(), 100);
        assert_eq!(
            hub.dropped
                .get_or_create(&vec![("component", "source app".to_string())])
                .get(),
            900
        );
    }

    #[test]
    fn sampling_takes_a_share() {
        let hub = TapHub::new();
        let tap = hub.tap(Side::Source, "app");
        let options = TapOptions {
            sample: 0.25,
            ..TapOptions::default()
        };
        let mut rx = hub.attach(None, options).unwrap();
        tap.batch(&batch(400));
        assert_eq!(drain(&mut rx).len(), 100);
        // Across batches of one event too.
        for _ in 0..400 {
            tap.batch(&batch(1));
        }
        assert_eq!(drain(&mut rx).len(), 100);
    }

    #[test]
    fn an_unknown_component_lists_the_known_ones() {
        let hub = TapHub::new();
        let _ = hub.tap(Side::Sink, "kafka");
        let e = hub
            .attach(Some((Side::Source, "nope")), TapOptions::default())
            .unwrap_err();
        assert!(e.contains("sink kafka"), "{e}");
    }
}
