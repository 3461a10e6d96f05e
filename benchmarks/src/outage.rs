//! The `outage` run (issue 16): lines written at a steady rate while the
//! broker is out of reach for `--outage-secs` (a cut proxy between the agent
//! and tansu, so the broker keeps what it had), then back while the lines
//! keep coming. It reports the agent's peak RSS, the spool's bytes on disk
//! at the end of the outage against the lz4-compressed payload it holds
//! (sled's space amplification), how fast the backlog drains once the
//! broker is back, and what a consumer counts afterwards.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{count, http_get, sample, start_tailrace_with, usage, Args};

/// What the outage run measured.
pub struct Outage {
    pub lines: u64,
    /// VmHWM when the broker came back, and at the end.
    pub rss_at_return_mib: f64,
    pub peak_rss_mib: f64,
    /// At the end of the outage: events in the spool, the spool's own
    /// count of its bytes, data_dir's blocks on disk, and the same number
    /// of lines' payloads compressed with lz4 in spool-entry-sized chunks.
    pub spooled_events: u64,
    pub spool_bytes: u64,
    pub disk_bytes: u64,
    pub lz4_bytes: u64,
    /// From the broker's return until delivered caught up with what was
    /// written (within a second's worth) and the spool was empty.
    pub drain_seconds: f64,
    pub drain_rate: f64,
    /// Whether the writer still wrote when the backlog was gone.
    pub drained_while_writing: bool,
    pub lost: u64,
    pub duplicated: u64,
}

/// Blocks allocated under `dir`, in bytes (what `du` counts).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(md) = entry.metadata() else { continue };
        total += md.blocks() * 512;
        if md.is_dir() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

/// The first `n` lines of `file` (payloads, without newlines), compressed
/// with lz4 in chunks of `per_entry` lines, as the spool compresses one
/// entry: the least a spool of those lines could take.
fn lz4_of_lines(file: &Path, n: u64, per_entry: u64) -> anyhow::Result<u64> {
    let reader = BufReader::with_capacity(1 << 22, std::fs::File::open(file)?);
    let (mut total, mut chunk, mut in_chunk) = (0u64, Vec::new(), 0);
    for line in reader.split(b'\n').take(usize::try_from(n)?) {
        chunk.extend_from_slice(&line?);
        in_chunk += 1;
        if in_chunk == per_entry {
            total += lz4_flex::block::compress(&chunk).len() as u64;
            chunk.clear();
            in_chunk = 0;
        }
    }
    if !chunk.is_empty() {
        total += lz4_flex::block::compress(&chunk).len() as u64;
    }
    Ok(total)
}

/// Records per spool entry: the sink's batch (10,000 events by default).
const ENTRY_RECORDS: u64 = 10_000;

pub fn outage_run(args: &Args) -> anyhow::Result<Outage> {
    // The e2e harness finds tansu through TANSU_BIN.
    std::env::set_var("TANSU_BIN", &args.tansu);
    let broker_port = tailrace_e2e::free_port();
    let proxy = tailrace_e2e::Proxy::start(&format!("127.0.0.1:{broker_port}"));
    let broker = tailrace_e2e::Broker::start_behind(broker_port, proxy.port());
    broker.create_topic("bench", 1);
    let bootstrap = proxy.address();

    let dir = args.work.join("run-outage");
    let load_dir = args.work.join("load-outage");
    let _ = std::fs::remove_dir_all(&load_dir);
    std::fs::create_dir_all(&load_dir)?;
    let file = load_dir.join("app.log");
    let rate = args.outage_rate;
    let (warm, outage, after) = (10, args.outage_secs, args.outage_secs.max(60));
    let lines = rate * (warm + outage + after);
    // The delivery timeout short, so that the spool, not librdkafka's
    // queue, holds the outage; the spool large enough to hold all of it.
    let sink_keys = format!(
        "delivery_timeout_ms: {}\nspool: {{ max_bytes: {} }}",
        args.outage_delivery_timeout_ms,
        16u64 << 30
    );
    let source = crate::file_source(&file.display().to_string(), "");
    let mut agent = start_tailrace_with(args, &dir, &source, &bootstrap, &sink_keys)?;
    let data_dir = dir.join("data");
    std::thread::sleep(Duration::from_secs(1)); // the agent starts; it waits for the file anyway
    let loadgen = std::env::current_exe()?.with_file_name("loadgen");
    let mut generator = Command::new(&loadgen)
        .arg("--out")
        .arg(&file)
        .args(["--lines", &lines.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--size", &args.size.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", loadgen.display()))?;
    let began = Instant::now();
    let pid = agent.child.id();
    let metric = |m: &str, name: &str| sample(m, name).unwrap_or(0.0) as u64;
    let delivered_name = "tailrace_sink_events_delivered_total{sink=\"kafka\"}";
    let spool_events_name = "tailrace_spool_events{sink=\"kafka\"}";
    let spool_bytes_name = "tailrace_spool_bytes{sink=\"kafka\"}";

    let deadline = began + Duration::from_secs(warm + outage + after + args.timeout_secs);
    let (mut cut, mut restored) = (false, None);
    let (mut spooled_events, mut spool_bytes, mut disk_bytes) = (0, 0, 0);
    let mut delivered_at_restore = 0;
    let mut rss_at_return_kib = 0;
    let mut drained = None;
    let mut writing = true;
    loop {
        if Instant::now() > deadline {
            bail!(
                "the outage run did not deliver {lines} lines in time; see {}",
                agent.log.display()
            );
        }
        if let Ok(Some(status)) = agent.child.try_wait() {
            bail!("tailrace exited ({status}); see {}", agent.log.display());
        }
        if writing && generator.try_wait()?.is_some() {
            writing = false;
        }
        let t = began.elapsed().as_secs_f64();
        let m = http_get(&agent.admin, "/metrics").unwrap_or_default();
        let delivered = metric(&m, delivered_name);
        if !cut && t >= warm as f64 {
            eprintln!("outage: broker cut off at {t:.1} s, {delivered} delivered");
            proxy.cut();
            cut = true;
        }
        if cut && restored.is_none() && t >= (warm + outage) as f64 {
            spooled_events = metric(&m, spool_events_name);
            spool_bytes = metric(&m, spool_bytes_name);
            disk_bytes = disk_usage(&data_dir);
            delivered_at_restore = delivered;
            rss_at_return_kib = usage(pid).map_or(0, |u| u.1);
            eprintln!(
                "outage: broker back at {t:.1} s; spool {spooled_events} events, {spool_bytes} bytes, data_dir {disk_bytes} bytes on disk"
            );
            proxy.restore();
            restored = Some(Instant::now());
        }
        if let (Some(back), None) = (restored, drained) {
            let written = (rate as f64 * t).min(lines as f64);
            if metric(&m, spool_events_name) == 0 && delivered as f64 >= written - rate as f64 {
                let secs = back.elapsed().as_secs_f64();
                drained = Some((
                    secs,
                    (delivered - delivered_at_restore) as f64 / secs,
                    writing,
                ));
                eprintln!("outage: backlog gone {secs:.1} s after the broker's return");
            }
        }
        if delivered >= lines {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_cpu, peak_kib) = usage(pid).unwrap_or((0.0, 0));
    generator.wait()?;
    let (drain_seconds, drain_rate, drained_while_writing) =
        drained.context("the backlog never drained")?;
    let (lost, duplicated) = count(&bootstrap, "bench", lines)?;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    drop(agent);
    let lz4_bytes = lz4_of_lines(&file, spooled_events, ENTRY_RECORDS)?;
    drop((broker, proxy));
    Ok(Outage {
        lines,
        rss_at_return_mib: rss_at_return_kib as f64 / 1024.0,
        peak_rss_mib: peak_kib as f64 / 1024.0,
        spooled_events,
        spool_bytes,
        disk_bytes,
        lz4_bytes,
        drain_seconds,
        drain_rate,
        drained_while_writing,
        lost,
        duplicated,
    })
}

pub fn print(args: &Args, o: &Outage) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "| outage | lines/s | lines | peak RSS at return | peak RSS | spooled events | spool bytes | data_dir on disk | lz4 payload | disk / lz4 | drain s | delivered/s while draining | × ingest | lost | duplicated |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} s | {} | {} | {:.0} MiB | {:.0} MiB | {} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.2} | {:.1} | {:.0} | {:.2}{} | {} | {} |",
        args.outage_secs,
        args.outage_rate,
        o.lines,
        o.rss_at_return_mib,
        o.peak_rss_mib,
        o.spooled_events,
        mib(o.spool_bytes),
        mib(o.disk_bytes),
        mib(o.lz4_bytes),
        o.disk_bytes as f64 / o.lz4_bytes.max(1) as f64,
        o.drain_seconds,
        o.drain_rate,
        o.drain_rate / args.outage_rate as f64,
        if o.drained_while_writing { "" } else { " (writer had stopped)" },
        o.lost,
        o.duplicated,
    );
    println!(
        "\nGoals (issue 16): peak RSS ≤ 128 MiB, data_dir on disk ≤ 2 × the lz4-compressed payload, delivered/s while draining ≥ 3 × the ingest rate, nothing lost."
    );
}
