//! Replaying a spool (or its dead letters) while the agent is stopped, for
//! `tailrace spool replay`.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};
use tailrace_api::spool::{decode, SpoolStore, SpoolTree};
use tailrace_api::SinkMetrics;

use crate::config::{KafkaSinkConfig, EMBEDDED};
use crate::sink::{create_producer, settings, topic_of, Delivery, InFlight};

pub use tailrace_api::ReplayReport as OfflineReplay;

/// Produces every entry of `tree` to the sink's broker and topic, oldest
/// first, removing each entry once Kafka acknowledged all its records.
/// Gives up on what is not acknowledged within `timeout`.
pub fn replay_offline(
    config: &KafkaSinkConfig,
    name: &str,
    spool: Arc<dyn SpoolStore>,
    tree: SpoolTree,
    metrics: SinkMetrics,
    timeout: Duration,
) -> Result<OfflineReplay, String> {
    if config.bootstrap_servers == EMBEDDED {
        return Err(format!("sink {name} uses the embedded cluster, which exists only while the agent runs; nothing to replay into"));
    }
    let settings = settings(config, name);
    let failed = Arc::new(Mutex::new(Vec::new()));
    let context = Delivery::new(
        name.into(),
        metrics.clone(),
        failed.clone(),
        Arc::new(AtomicBool::new(true)),
        tailrace_api::Readiness::ready(),
        config.bootstrap_servers.clone(),
    );
    let producer = create_producer(&settings, context)?;
    let done: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
    let mut report = OfflineReplay::default();
    let mut in_flight = HashSet::new();
    let deadline = Instant::now() + timeout;
    let mut cursor = None;
    loop {
        let batch = spool
            .scan(tree, name, cursor, 16)
            .map_err(|e| format!("cannot read the spool: {e}"))?;
        if batch.is_empty() {
            break;
        }
        for (id, entry) in batch {
            cursor = Some(id);
            let (header, records) = match decode(&entry) {
                Ok(d) => d,
                Err(e) => {
                    if tree == SpoolTree::Corrupt {
                        // Moving it "to" the tree it is in would delete it.
                        eprintln!("entry {id}: {e}; left in the corrupt tree (tailrace spool purge --corrupt removes it)");
                    } else {
                        eprintln!("entry {id}: {e}; moved to the corrupt tree");
                        spool
                            .move_to(tree, SpoolTree::Corrupt, name, id)
                            .map_err(|e| e.to_string())?;
                    }
                    report.corrupt_entries += 1;
                    continue;
                }
            };
            if records.is_empty() {
                spool.remove(tree, name, id).map_err(|e| e.to_string())?;
                continue;
            }
            let inflight = InFlight::for_entry(id, done.clone(), &header, &records);
            in_flight.insert(id);
            report.entries += 1;
            report.events += records.len() as u64;
            for r in &records {
                let topic = topic_of(r, &settings.topic);
                let mut record = BaseRecord::<[u8], [u8], Arc<InFlight>>::with_opaque_to(
                    &topic,
                    inflight.clone(),
                )
                .payload(&r.payload[..]);
                if let Some(k) = &r.key {
                    record = record.key(&k[..]);
                }
                if let Some(ts) = r.timestamp_ms {
                    record = record.timestamp(ts);
                }
                if !r.headers.is_empty() {
                    record = record.headers(crate::encode::owned_headers(&r.headers));
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((e, back)) => {
                            if Instant::now() >= deadline {
                                return Err(format!("replay timed out: {e}"));
                            }
                            record = back;
                            producer.poll(Duration::from_millis(10));
                        }
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
    }
    while !in_flight.is_empty() && Instant::now() < deadline {
        producer.poll(Duration::from_millis(50));
        for f in std::mem::take(&mut *failed.lock().unwrap_or_else(|e| e.into_inner())) {
            f.fail_replay(&metrics);
        }
        for (id, failed) in std::mem::take(&mut *done.lock().unwrap_or_else(|e| e.into_inner())) {
            in_flight.remove(&id);
            if failed {
                report.failed_entries += 1;
            } else {
                spool.remove(tree, name, id).map_err(|e| e.to_string())?;
            }
        }
    }
    report.failed_entries += in_flight.len() as u64;
    let _ = producer.flush(Duration::from_secs(1));
    spool
        .flush()
        .map_err(|e| format!("cannot flush the spool: {e}"))?;
    Ok(report)
}
