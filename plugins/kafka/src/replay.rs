//! Replaying a spool (or its dead letters) while the agent is stopped, for
//! `tailrace spool replay`.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use tailrace_api::spool::{SpoolStore, SpoolTree};
use tailrace_api::SinkMetrics;

use crate::config::{KafkaSinkConfig, EMBEDDED};
use crate::sink::{
    create_producer, settings, store_dead_letters, topic_of, Delivery, InFlight, Replayer, Taken,
};

pub use tailrace_api::ReplayReport as OfflineReplay;

/// Produces every entry of `tree` to the sink's broker and topic, oldest
/// first, with the sink's own replayer: an entry goes once Kafka
/// acknowledged all its records, is rewritten with just the records that
/// failed otherwise, and what Kafka refuses for good goes to the
/// dead-letter tree. Gives up on what is not acknowledged within `timeout`.
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
    let mut replayer = Replayer::new(tree);
    let mut report = OfflineReplay::default();
    let deadline = Instant::now() + timeout;
    loop {
        let mut corrupt = 0;
        let taken = replayer
            .take(&*spool, name, &mut |id, e| {
                corrupt += 1;
                if tree == SpoolTree::Corrupt {
                    eprintln!("entry {id}: {e}; left in the corrupt tree (tailrace spool purge --corrupt removes it)");
                } else {
                    eprintln!("entry {id}: {e}; moved to the corrupt tree");
                }
            })
            .map_err(|e| format!("cannot read the spool: {e}"))?;
        report.corrupt_entries += corrupt;
        let Some(Taken {
            inflight, records, ..
        }) = taken
        else {
            break;
        };
        report.entries += 1;
        report.events += records.len() as u64;
        for r in &records {
            let topic = topic_of(r, &settings.topic);
            let mut record =
                BaseRecord::<[u8], [u8], Arc<InFlight>>::with_opaque_to(&topic, inflight.clone())
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
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if Instant::now() >= deadline {
                            return Err("replay timed out: librdkafka's queue stayed full".into());
                        }
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        if let Some(dead) = replayer.unsent(&inflight, r, &e, &metrics) {
                            report.dead_lettered_events += 1;
                            store_dead_letters(&*spool, name, &metrics, vec![dead]);
                        }
                        break;
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    // Each record settles once: delivered, kept in its entry for another
    // try, or (refused for good) moved to the dead-letter tree.
    while replayer.in_flight() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(50));
        let failures = std::mem::take(&mut *failed.lock().unwrap_or_else(|e| e.into_inner()));
        let dead: Vec<_> = failures
            .into_iter()
            .filter_map(|f| replayer.failed(f, &settings.topic, &metrics))
            .collect();
        report.dead_lettered_events += dead.len() as u64;
        store_dead_letters(&*spool, name, &metrics, dead);
        let finished = replayer.finish(&*spool, name);
        report.failed_entries += finished.rewritten;
    }
    report.failed_entries += replayer.in_flight() as u64;
    let _ = producer.flush(Duration::from_secs(1));
    spool
        .flush()
        .map_err(|e| format!("cannot flush the spool: {e}"))?;
    Ok(report)
}
