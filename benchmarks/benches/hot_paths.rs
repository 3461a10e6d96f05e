//! Micro-benchmarks of the hot paths, per event: splitting a read chunk
//! into lines, gathering channel batches into sink batches, encoding a
//! record as JSON and a spool entry, writing a spool entry, what each
//! interceptor costs, and parsing syslog messages into fields and those
//! fields into JSON (the syslog scenario's two hot paths).
//!
//! cargo bench -p tailrace-benchmarks

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tailrace_api::spool::{encode, EntryRecord, SpoolStore, SpoolTree};
use tailrace_api::{
    next_batch, Ack, Batch, BatchLimits, BatchMeta, Channel, InterceptorConfig, Record,
};
use tailrace_file::{LinePolicy, Splitter};

const LINE: usize = 100;
const CHUNK: usize = 256 * 1024;

fn chunk() -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK);
    let mut i = 0u64;
    while out.len() + LINE <= CHUNK {
        let start = out.len();
        out.extend_from_slice(
            format!("seq={i:010} INFO user=ann req=1234abcd latency_ms=12 ").as_bytes(),
        );
        out.resize(start + LINE - 1, b'x');
        out.push(b'\n');
        i += 1;
    }
    out
}

fn batch_of(data: &[u8]) -> Batch {
    let mut buf = BytesMut::from(data);
    let mut records = Vec::new();
    Splitter::new(1 << 20, LinePolicy::Split, 0).split(&mut buf, &mut records);
    let meta = Arc::new(BatchMeta {
        source: "app".into(),
        path: Some(Arc::from(std::path::Path::new("/var/log/app.log"))),
        stream: None,
        read_at: SystemTime::now(),
    });
    Batch::new(meta, records, Ack::none())
}

fn split(c: &mut Criterion) {
    let data = chunk();
    let lines = data.len() / LINE;
    let mut g = c.benchmark_group("split");
    g.throughput(Throughput::Elements(lines as u64));
    g.bench_function("256KiB_of_100B_lines", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&data[..]);
            let mut out = Vec::with_capacity(lines);
            Splitter::new(1 << 20, LinePolicy::Split, 0).split(&mut buf, &mut out);
            out
        })
    });
    g.finish();
}

fn batching(c: &mut Criterion) {
    let data = chunk();
    let template = batch_of(&data);
    let per_batch = template.len();
    let mut g = c.benchmark_group("batching");
    g.throughput(Throughput::Elements((per_batch * 4) as u64));
    let channel = Channel::unmetered("bench", 1 << 20, 1 << 30);
    let limits = BatchLimits {
        max_events: per_batch * 4,
        max_bytes: 1 << 30,
        linger_ms: 0,
    };
    g.bench_function("4_channel_batches_into_one_sink_batch", |b| {
        b.iter(|| {
            for _ in 0..4 {
                let copy = Batch::new(template.meta.clone(), template.records.clone(), Ack::none());
                channel.try_send(copy).unwrap();
            }
            next_batch(&channel, &limits, Duration::ZERO)
        })
    });
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let data = chunk();
    let batch = batch_of(&data);
    let mut g = c.benchmark_group("encoding");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("json", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            for r in &batch.records {
                out.clear();
                tailrace_kafka::encode::json(&batch, r, "web-1", &mut out);
            }
        })
    });
    g.bench_function("spool_entry_lz4_crc", |b| {
        b.iter(|| {
            encode(
                batch.records.iter().map(|r| EntryRecord {
                    payload: &r.payload,
                    timestamp_ms: Some(1),
                    ..Default::default()
                }),
                "bench",
                0,
            )
        })
    });
    g.finish();
}

fn spool_writes(c: &mut Criterion) {
    let data = chunk();
    let batch = batch_of(&data);
    let entry = encode(
        batch.records.iter().map(|r| EntryRecord {
            payload: &r.payload,
            ..Default::default()
        }),
        "bench",
        0,
    );
    let dir = tempfile::tempdir().unwrap();
    let store = tailrace::store::Store::open(dir.path()).unwrap();
    let mut g = c.benchmark_group("spool");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(20);
    g.bench_function("push_and_flush_one_entry", |b| {
        b.iter(|| {
            let id = store.push(SpoolTree::Pending, "k", &entry).unwrap();
            SpoolStore::flush(&store).unwrap();
            store.remove(SpoolTree::Pending, "k", id).unwrap();
        })
    });
    g.finish();
}

fn interceptors(c: &mut Criterion) {
    use tailrace_interceptors::*;
    let data = chunk();
    let template = batch_of(&data);
    let configs: Vec<(&str, Box<dyn InterceptorConfig>)> = vec![
        (
            "host",
            Box::new(HostConfig {
                field: "host".into(),
            }),
        ),
        (
            "static",
            Box::new(StaticConfig {
                fields: [("env".to_string(), "prod".to_string())]
                    .into_iter()
                    .collect(),
            }),
        ),
        (
            "regex_filter",
            Box::new(RegexFilterConfig {
                pattern: "DEBUG".into(),
                exclude: true,
                field: None,
            }),
        ),
        (
            "regex_extract",
            Box::new(RegexExtractConfig {
                pattern: "user=(?P<user>[a-z]+)".into(),
                field: None,
            }),
        ),
        (
            "timestamp",
            Box::new(TimestampConfig {
                field: None,
                format: None,
            }),
        ),
    ];
    let mut g = c.benchmark_group("interceptor");
    g.throughput(Throughput::Elements(template.len() as u64));
    g.bench_function(
        BenchmarkId::from_parameter("none (copy of the batch only)"),
        |b| b.iter(|| Batch::new(template.meta.clone(), template.records.clone(), Ack::none())),
    );
    for (name, config) in configs {
        let i = config.build().unwrap();
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut batch =
                    Batch::new(template.meta.clone(), template.records.clone(), Ack::none());
                i.intercept(&mut batch);
                batch
            })
        });
    }
    g.finish();
    let _ = Record::new(Bytes::new(), 0);
}

/// The fields+JSON scenario's records: three extracted fields and a
/// message with a quote and a tab to escape.
fn shaped_batch() -> Batch {
    use tailrace_api::FieldValue;
    let mut batch = batch_of(&chunk());
    for (i, r) in batch.records.iter_mut().enumerate() {
        let mut line = r.payload.to_vec();
        line[20] = b'"';
        line[40] = b'\t';
        r.payload = Bytes::from(line);
        let f = r.fields_mut();
        f.set("user", FieldValue::text("ann"));
        f.set("req", FieldValue::text(format!("{i:08x}")));
        f.set("latency_ms", FieldValue::Int(12));
    }
    batch
}

/// The JSON of every record of `batch`, into one reused buffer.
fn json_of_each(batch: &Batch) -> impl FnMut(&mut criterion::Bencher) + '_ {
    let mut out = Vec::with_capacity(512);
    move |b| {
        b.iter(|| {
            for r in &batch.records {
                out.clear();
                tailrace_kafka::encode::json(batch, r, "web-1", &mut out);
            }
        })
    }
}

/// JSON of records with fields and characters to escape.
fn json_shaped(c: &mut Criterion) {
    let batch = shaped_batch();
    let mut g = c.benchmark_group("encoding");
    g.throughput(Throughput::Elements(batch.len() as u64));
    // The escaper alone, against serde_json's (what json_str was before).
    let texts: Vec<&str> = batch
        .records
        .iter()
        .map(|r| std::str::from_utf8(&r.payload).unwrap())
        .collect();
    g.bench_function("json_str_serde_json", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            for t in &texts {
                out.clear();
                serde_json::to_writer(&mut out, t).unwrap();
            }
        })
    });
    g.bench_function("json_str", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            for t in &texts {
                out.clear();
                tailrace_kafka::encode::json_str(&mut out, t);
            }
        })
    });
    g.bench_function("json_fields_escaped", json_of_each(&batch));
    g.finish();
}

/// The headers of a file record (source, host, path, offset and the event
/// id) as librdkafka takes them, made and dropped per record.
fn headers(c: &mut Criterion) {
    use tailrace_kafka::encode;
    let batch = batch_of(&chunk());
    let mut ids = encode::EventIds::new();
    let mut g = c.benchmark_group("headers");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("file_record_to_owned_headers", |b| {
        b.iter(|| {
            for r in &batch.records {
                let mut list = encode::HeaderList::new();
                encode::headers(&batch, r, "web-1", &mut list);
                list.push((encode::EVENT_ID.into(), ids.next(&batch, r)));
                std::hint::black_box(encode::owned_headers(&list));
            }
        })
    });
    // What encode::headers and EventIds::next did before issue 19's cut
    // (a String and a copied Bytes per value, format! for the offset and
    // the id), for a figure of both in the same run.
    g.bench_function("file_record_to_owned_headers_before", |b| {
        b.iter(|| {
            for r in &batch.records {
                let mut list = encode::HeaderList::new();
                list.push((
                    "source".into(),
                    Bytes::copy_from_slice(batch.meta.source.as_bytes()),
                ));
                list.push(("host".into(), Bytes::from("web-1".as_bytes().to_vec())));
                let path = batch.meta.path.as_deref().unwrap();
                list.push((
                    "path".into(),
                    Bytes::copy_from_slice(path.as_os_str().as_encoded_bytes()),
                ));
                list.push(("offset".into(), Bytes::from(r.offset.to_string())));
                let id = format!("s{:016x}{:016x}", 7u64, r.offset);
                list.push((encode::EVENT_ID.into(), Bytes::from(id)));
                std::hint::black_box(encode::owned_headers(&list));
            }
        })
    });
    g.finish();
}

/// The syslog scenario's messages (RFC 5424, as its load generator writes
/// them), parsed into fields; then those records as JSON.
fn syslog(c: &mut Criterion) {
    let lines: Vec<Bytes> = chunk()
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let mut msg = Vec::new();
            tailrace_benchmarks::shapes::syslog5424(i as u64, line, false, &mut msg);
            Bytes::from(msg)
        })
        .collect();
    let mut g = c.benchmark_group("syslog");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse_rfc5424", |b| {
        b.iter(|| {
            lines
                .iter()
                .map(|l| tailrace_socket::parse_syslog(l).expect("RFC 5424"))
                .collect::<Vec<_>>()
        })
    });
    let meta = Arc::new(BatchMeta {
        source: "syslog".into(),
        path: None,
        stream: None,
        read_at: SystemTime::now(),
    });
    let records = lines
        .iter()
        .map(|l| {
            let mut r = Record::new(l.clone(), 0);
            *r.fields_mut() = tailrace_socket::parse_syslog(l).expect("RFC 5424");
            r
        })
        .collect();
    let batch = Batch::new(meta, records, Ack::none());
    g.bench_function("json_of_parsed_records", json_of_each(&batch));
    g.finish();
}

/// The fields scenario's interceptor chain on its lines (a time in front):
/// regex_extract of four fields, then the time parsed from one of them.
fn shaping(c: &mut Criterion) {
    use tailrace_interceptors::*;
    let mut data = Vec::new();
    for (i, line) in chunk().split_inclusive(|&b| b == b'\n').enumerate() {
        tailrace_benchmarks::shapes::timestamped(i as u64, line, &mut data);
    }
    let template = batch_of(&data);
    let extract = RegexExtractConfig {
        pattern: tailrace_benchmarks::shapes::FIELDS_PATTERN.into(),
        field: None,
    }
    .build()
    .unwrap();
    let time = TimestampConfig {
        field: Some("ts".into()),
        format: Some("rfc3339".into()),
    }
    .build()
    .unwrap();
    let mut g = c.benchmark_group("interceptor");
    g.throughput(Throughput::Elements(template.len() as u64));
    g.bench_function("fields_scenario_regex_extract_4_then_timestamp", |b| {
        b.iter(|| {
            let mut batch =
                Batch::new(template.meta.clone(), template.records.clone(), Ack::none());
            extract.intercept(&mut batch);
            time.intercept(&mut batch);
            assert!(batch.records[0].field("timestamp").is_some());
            batch
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    syslog,
    shaping,
    split,
    batching,
    encoding,
    spool_writes,
    interceptors,
    json_shaped,
    headers
);
criterion_main!(benches);
