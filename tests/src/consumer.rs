//! [`Consumer`]: reads a whole topic from the beginning, the way a test
//! checks what arrived. tansu's high watermark lags the last batch, so tests
//! count what they consume and never read the watermark.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

/// One record as consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The value; a record without a value reads as empty.
    pub payload: Vec<u8>,
    /// The key, if the record has one.
    pub key: Option<Vec<u8>>,
    /// Header names and values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl AsRef<[u8]> for Record {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

/// Assigns every partition of one topic at offset Beginning (no consumer
/// group) and keeps every record it has read, in the order read; within a
/// partition that is offset order.
pub struct Consumer {
    inner: BaseConsumer,
    topic: String,
    records: Vec<Record>,
}

impl Consumer {
    /// Waits up to 30 s for the topic to appear in metadata, then assigns all
    /// of its partitions.
    pub fn new(bootstrap: &str, topic: &str) -> Consumer {
        Consumer::with_properties(bootstrap, topic, &[])
    }

    /// [`Consumer::new`] with more client properties: the credentials and
    /// TLS settings of a secured cluster.
    pub fn with_properties(bootstrap: &str, topic: &str, properties: &[(String, String)]) -> Consumer {
        let mut config = ClientConfig::new();
        for (k, v) in properties {
            config.set(k, v);
        }
        let inner: BaseConsumer = config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "tailrace-e2e")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("cannot create a consumer");

        let mut partitions = 0;
        let found = crate::wait_until(Duration::from_secs(30), || {
            let Ok(metadata) = inner.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
                return false;
            };
            let topic = metadata.topics().iter().find(|t| t.name() == topic);
            partitions = topic
                .filter(|t| t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            partitions > 0
        });
        assert!(found, "topic {topic} not found in metadata at {bootstrap}");

        let mut assignment = TopicPartitionList::new();
        for partition in 0..i32::try_from(partitions).expect("partition count fits in i32") {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("cannot add a partition to the assignment");
        }
        inner.assign(&assignment).expect("cannot assign partitions");
        Consumer {
            inner,
            topic: topic.to_owned(),
            records: Vec::new(),
        }
    }

    /// Everything read so far.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Reads until `done(all records so far)` holds or `timeout` passed, and
    /// returns all records read so far. The caller asserts on what it got.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> &[Record] {
        let deadline = Instant::now() + timeout;
        while !done(&self.records) && Instant::now() < deadline {
            self.poll(
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200)),
            );
        }
        &self.records
    }

    /// Reads until at least `n` records were read in total, or `timeout`.
    pub fn read_count(&mut self, n: usize, timeout: Duration) -> &[Record] {
        self.read_until(timeout, |records| records.len() >= n)
    }

    /// Reads for the whole of `period`: for checking that nothing more arrives.
    pub fn read_for(&mut self, period: Duration) -> &[Record] {
        self.read_until(period, |_| false)
    }

    /// Waits up to `timeout` for a record, then takes what else is already
    /// buffered, up to a batch, so `done` is checked once per batch.
    fn poll(&mut self, timeout: Duration) {
        let mut timeout = timeout;
        for _ in 0..10_000 {
            let Some(result) = self.inner.poll(timeout) else {
                return;
            };
            timeout = Duration::ZERO;
            match result {
                Ok(message) => self.records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    key: message.key().map(<[u8]>::to_vec),
                    headers: message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
                // Transport errors while a broker restarts are expected; the
                // test's own condition decides whether the read succeeded.
                Err(error) => eprintln!("consumer of {}: {error}", self.topic),
            }
        }
    }
}
