//! Gathering channel batches into sink batches by events, bytes and linger.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{Batch, Channel};

/// When a sink batch is complete: whichever limit is reached first.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BatchLimits {
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// How long to wait for more after the first batch arrived.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
}

fn default_max_events() -> usize {
    10_000
}
fn default_max_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_linger_ms() -> u64 {
    5
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            linger_ms: default_linger_ms(),
        }
    }
}

/// What [`next_batch`] gathered.
#[derive(Debug, Default)]
pub struct SinkBatch {
    pub batches: Vec<Batch>,
    pub events: usize,
    pub bytes: usize,
}

/// Waits up to `idle_wait` for a first batch, then takes more until a limit
/// is reached or `linger` has passed. An empty result means nothing came.
pub fn next_batch(input: &Channel, limits: &BatchLimits, idle_wait: Duration) -> SinkBatch {
    let mut out = SinkBatch::default();
    let Some(first) = input.recv_timeout(idle_wait) else {
        return out;
    };
    let deadline = Instant::now() + Duration::from_millis(limits.linger_ms);
    out.push(first);
    while out.events < limits.max_events && out.bytes < limits.max_bytes {
        let wait = deadline.saturating_duration_since(Instant::now());
        match input.recv_timeout(wait) {
            Some(b) => out.push(b),
            None => break,
        }
    }
    out
}

impl SinkBatch {
    fn push(&mut self, b: Batch) {
        self.events += b.len();
        self.bytes += b.bytes;
        self.batches.push(b);
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ack, BatchMeta, Record};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn batch(events: usize) -> Batch {
        let meta = Arc::new(BatchMeta {
            source: "t".into(),
            path: None,
            stream: None,
            read_at: SystemTime::now(),
        });
        let records = (0..events)
            .map(|i| Record::new(Bytes::from_static(b"0123456789"), i as u64))
            .collect();
        Batch::new(meta, records, Ack::none())
    }

    /// Sends batches of the given sizes, then gathers with `limits`; returns
    /// the number of channel batches in each sink batch.
    fn check(sizes: &[usize], limits: BatchLimits, expected: &[usize]) {
        let ch = Channel::unmetered("c", 1 << 20, 1 << 30);
        for &n in sizes {
            ch.try_send(batch(n)).unwrap();
        }
        let mut got = Vec::new();
        loop {
            let b = next_batch(&ch, &limits, Duration::ZERO);
            if b.is_empty() {
                break;
            }
            got.push(b.batches.len());
        }
        assert_eq!(got, expected, "sizes {sizes:?} limits {limits:?}");
    }

    #[test]
    fn limits() {
        let ev = |max_events| BatchLimits {
            max_events,
            max_bytes: 1 << 30,
            linger_ms: 0,
        };
        let by = |max_bytes| BatchLimits {
            max_events: 1 << 20,
            max_bytes,
            linger_ms: 0,
        };
        check(&[1, 1, 1], ev(10), &[3]);
        check(&[5, 5, 5], ev(10), &[2, 1]);
        check(&[20, 1], ev(10), &[1, 1]);
        check(&[1, 1, 1, 1], by(20), &[2, 2]);
        check(&[], ev(10), &[]);
    }

    #[test]
    fn linger_waits_for_a_late_batch() {
        let ch = Arc::new(Channel::unmetered("c", 1 << 20, 1 << 30));
        ch.try_send(batch(1)).unwrap();
        let late = {
            let ch = ch.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                ch.try_send(batch(1)).unwrap();
            })
        };
        let limits = BatchLimits {
            max_events: 2,
            max_bytes: 1 << 30,
            linger_ms: 5_000,
        };
        let b = next_batch(&ch, &limits, Duration::ZERO);
        late.join().unwrap();
        assert_eq!(b.events, 2);
    }
}
