//! The benchmark matrix (issue 19): each scenario runs the release agent
//! end to end into tansu beside an honest baseline measured in the same
//! run, and a consumer counts every sequence number of both afterwards.
//! The results go to the terminal and to `benchmarks/results/<UTC date>/`
//! (REPORT.md and the charts, see [`crate::report`]; `--results DIR` for
//! another place, `--report DIR` for one directory and no latest.md).
//!
//! The scenarios, each also alone with `--targets NAME`:
//! - `raw`: a pre-written file of raw lines; kcat -P -l on the same file.
//! - `fields`: the lines with an RFC 3339 time in front, shaped by `host`,
//!   `regex_extract` (level, user, latency_ms and the time) and
//!   `timestamp` (parsed from the line), written as JSON keyed by user
//!   with headers; kcat sends the same JSON, already rendered, with the
//!   same keys: what producing the shaped events costs without shaping.
//! - `files`: `loadgen` appends to 1,000 files in turn while the agent
//!   tails them; kcat on the raw file of as many lines.
//! - `syslog`: `loadgen` sends RFC 5424 messages with octet counting over
//!   4 TCP connections to the syslog source (parsed into fields, JSON);
//!   kcat on a file of the same messages.
//! - `tcp`: `loadgen` sends the lines over 1,000 TCP connections to the
//!   tcp source; kcat on the raw file.
//! - `drain`: the outage run of [`crate::outage`], sized so that about
//!   `--events` events are spooled; the rate at which the spool drains
//!   while lines keep coming, against kcat's raw rate.
//! - `disk`: the raw file through a disk channel, against the same
//!   through the memory channel (issue 15's goal: 0.7 ×).
//! - `tls`: the raw file to tansu requiring SCRAM-SHA-512 behind stunnel
//!   (SASL_SSL; tansu's sqlite storage, which SCRAM users need); kcat
//!   with the same credentials through the same stunnel.
//!
//! kcat gets the best of `--lingers` (linger.ms), each measured, counted
//! and listed in the scenario's notes.

use std::io::{BufWriter, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tailrace_benchmarks::{lines, shapes};

use crate::report::{self, Measure, Report, Scenario};
use crate::{count_with, free_port, start_agent, wait_for, watch, Args, Tansu};

pub const SCENARIOS: [&str; 8] = [
    "raw", "fields", "files", "syslog", "tcp", "drain", "tls", "disk",
];

/// Splits `--targets` into matrix scenarios (`matrix` is all of them) and
/// the older runs.
pub fn split_targets(targets: &[String]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (mut scenarios, mut others) = (Vec::new(), Vec::new());
    for t in targets {
        match t.as_str() {
            "matrix" => scenarios.extend(SCENARIOS.iter().map(|s| s.to_string())),
            s if SCENARIOS.contains(&s) => scenarios.push(s.to_string()),
            _ => others.push(t.clone()),
        }
    }
    scenarios.dedup();
    Ok((scenarios, others))
}

/// What kcat sends: a file of messages, one a line, with an optional key
/// before a tab, fixed headers, and client properties (credentials, TLS).
pub struct KcatLoad<'a> {
    pub file: &'a Path,
    pub events: u64,
    pub keyed: bool,
    pub headers: Vec<String>,
    pub properties: Vec<(String, String)>,
}

impl<'a> KcatLoad<'a> {
    pub fn plain(file: &'a Path, events: u64) -> KcatLoad<'a> {
        KcatLoad {
            file,
            events,
            keyed: false,
            headers: Vec::new(),
            properties: Vec::new(),
        }
    }
}

/// One `kcat -P -l` run with the agent's producer settings and the given
/// linger.ms, timed by /usr/bin/time, then counted at a consumer.
pub fn kcat_once(
    args: &Args,
    load: &KcatLoad,
    bootstrap: &str,
    topic: &str,
    linger_ms: u64,
) -> anyhow::Result<Measure> {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%e %U %S %M"])
        .arg(&args.kcat)
        .args(["-P", "-b", bootstrap, "-t", topic, "-l"])
        .arg(load.file);
    let linger = format!("linger.ms={linger_ms}");
    for x in [
        "acks=all",
        "enable.idempotence=true",
        "compression.codec=lz4",
        &linger,
        "batch.num.messages=10000",
        "batch.size=1000000",
        "queue.buffering.max.messages=100000",
        "queue.buffering.max.kbytes=32768",
    ] {
        cmd.args(["-X", x]);
    }
    for (k, v) in &load.properties {
        cmd.arg("-X").arg(format!("{k}={v}"));
    }
    if load.keyed {
        cmd.args(["-K", "\t"]);
    }
    for h in &load.headers {
        cmd.args(["-H", h]);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(dir) = &args.librdkafka_dir {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    let began = Instant::now();
    let child = cmd.spawn().context("cannot run kcat under /usr/bin/time")?;
    let stop = AtomicBool::new(false);
    let (out, timeline) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| watermarks(bootstrap, topic, &load.properties, began, &stop));
        let out = child.wait_with_output();
        stop.store(true, Ordering::Relaxed);
        (out, sampler.join().unwrap_or_default())
    });
    let out = out.context("cannot wait for kcat")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("kcat failed: {err}");
    }
    let last = err.lines().last().unwrap_or_default();
    let f: Vec<f64> = last
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() != 4 {
        bail!("cannot read kcat's timing from {last:?}");
    }
    let (lost, duplicated) = count_with(bootstrap, topic, load.events, &load.properties)?;
    Ok(Measure {
        label: format!("kcat -P -l, linger.ms={linger_ms}"),
        events: load.events,
        seconds: f[0],
        cpu_seconds: Some(f[1] + f[2]),
        peak_rss_mib: Some(f[3] / 1024.0),
        lost: Some(lost),
        duplicated: Some(duplicated),
        timeline,
        ..Measure::default()
    })
}

/// The topic's partition 0 high watermark (the records the broker holds:
/// what kcat has had acknowledged) every 250 ms from `began` until `stop`.
fn watermarks(
    bootstrap: &str,
    topic: &str,
    properties: &[(String, String)],
    began: Instant,
    stop: &AtomicBool,
) -> Vec<(f64, u64)> {
    let Ok(client) = crate::consumer_config(bootstrap, properties).create::<BaseConsumer>() else {
        return Vec::new();
    };
    let mut timeline = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, high)) = client.fetch_watermarks(topic, 0, Duration::from_secs(1)) {
            timeline.push((began.elapsed().as_secs_f64(), high.max(0) as u64));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    timeline
}

/// kcat at each of `--lingers` (`topic_for` gives each run an empty topic
/// and its bootstrap, and keeps what it started alive until the next
/// call); the fastest run that lost nothing, and a note listing all.
fn kcat_best<G>(
    args: &Args,
    load: &KcatLoad,
    what: &str,
    mut topic_for: impl FnMut(u64) -> anyhow::Result<(String, String, G)>,
) -> anyhow::Result<(Measure, String)> {
    let mut runs = Vec::new();
    for &linger in &args.lingers {
        let (bootstrap, topic, guard) = topic_for(linger)?;
        let m = kcat_once(args, load, &bootstrap, &topic, linger)?;
        drop(guard);
        eprintln!("kcat, linger.ms={linger}: {:.0} events/s", m.rate());
        runs.push(m);
    }
    let note = format!(
        "kcat ({what}) at each linger.ms, events/s (lost, dup): {}.",
        runs.iter()
            .map(|m| format!(
                "{} → {} ({}, {})",
                m.label.rsplit('=').next().unwrap_or_default(),
                report::thousands(m.rate().round() as u64),
                m.lost.unwrap_or_default(),
                m.duplicated.unwrap_or_default()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let best = runs
        .into_iter()
        .filter(|m| m.lost == Some(0))
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .context("every kcat run lost events")?;
    Ok((best, note))
}

/// kcat's best on a fresh in-memory tansu per run.
fn kcat_on_tansu(args: &Args, load: &KcatLoad, what: &str) -> anyhow::Result<(Measure, String)> {
    kcat_best(args, load, what, |linger| {
        let broker = Tansu::start(
            &args.tansu,
            &args.work.join(format!("tansu-kcat-{linger}")),
            "bench",
        )?;
        Ok((broker.bootstrap(), "bench".into(), broker))
    })
}

/// The agent end to end: started on `source`, fed by `loadgen` with
/// `feed` (once `wait_port` accepts, when given) or reading a pre-written
/// file, watched until `events` were delivered, then counted.
struct AgentRun<'a> {
    name: &'a str,
    label: String,
    source: String,
    sink_keys: String,
    channel: &'a str,
    bootstrap: String,
    consumer: Vec<(String, String)>,
    events: u64,
    feed: Option<Vec<String>>,
    wait_port: Option<u16>,
}

impl AgentRun<'_> {
    fn run(self, args: &Args) -> anyhow::Result<Measure> {
        let dir = args.work.join(format!("matrix-run-{}", self.name));
        let mut agent = start_agent(
            args,
            &dir,
            &self.source,
            &self.bootstrap,
            &self.sink_keys,
            self.channel,
        )?;
        if let Some(port) = self.wait_port {
            wait_for(Duration::from_secs(30), || {
                TcpStream::connect(("127.0.0.1", port)).ok()
            })
            .with_context(|| {
                format!(
                    "the agent did not listen on {port}; see {}",
                    agent.log.display()
                )
            })?;
        }
        let mut generator = None;
        let began = if let Some(feed) = &self.feed {
            let loadgen = std::env::current_exe()?.with_file_name("loadgen");
            let began = agent.started.elapsed().as_secs_f64();
            generator = Some(
                Command::new(&loadgen)
                    .args(feed)
                    .args(["--lines", &self.events.to_string()])
                    .args(["--size", &args.size.to_string()])
                    .args(["--seed", &args.seed.to_string()])
                    .stderr(Stdio::inherit())
                    .spawn()
                    .with_context(|| format!("cannot start {}", loadgen.display()))?,
            );
            began
        } else {
            0.0
        };
        let seen = watch(args, &mut agent, self.events);
        if let Some(mut g) = generator {
            let status = g.wait()?;
            if !status.success() {
                bail!("loadgen failed: {status}");
            }
        }
        let seen = seen?;
        let (p50, p99) = crate::quantiles(&seen.metrics);
        let timeline = seen
            .samples
            .iter()
            .filter(|s| s.0 >= began)
            .map(|&(t, n)| (t - began, n as u64))
            .collect();
        let (lost, duplicated) = count_with(&self.bootstrap, "bench", self.events, &self.consumer)?;
        unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Measure {
            label: self.label,
            events: self.events,
            seconds: seen.seconds - began,
            cpu_seconds: Some(seen.cpu_seconds),
            peak_rss_mib: Some(seen.peak_kib as f64 / 1024.0),
            lost: Some(lost),
            duplicated: Some(duplicated),
            p50_seconds: p50,
            p99_seconds: p99,
            timeline,
        })
    }
}

/// Writes `events` lines into `path`, each shaped by `shape` from the
/// numbered line.
fn write_lines(
    args: &Args,
    path: &Path,
    events: u64,
    mut shape: impl FnMut(u64, &[u8], &mut Vec<u8>),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().context("a file in a directory")?)?;
    let mut out = BufWriter::with_capacity(1 << 22, std::fs::File::create(path)?);
    let mut gen = lines::Generator::new(args.seed, args.size);
    let (mut line, mut buf) = (Vec::new(), Vec::with_capacity(1 << 22));
    for seq in 0..events {
        line.clear();
        gen.line(seq, &mut line);
        shape(seq, &line, &mut buf);
        if buf.len() >= 1 << 22 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

/// The fields scenario's interceptors: the host, three fields and the
/// time from the line ([`shapes::FIELDS_PATTERN`]), the time parsed as
/// the event time.
fn shaping() -> String {
    format!(
        "    interceptors:
      - type: host
      - type: regex_extract
        pattern: '{}'
      - type: timestamp
        field: ts
        format: rfc3339
",
        shapes::FIELDS_PATTERN
    )
}

/// The fields scenario's line as tailrace's JSON encoding writes it, keyed
/// by user before a tab: what kcat sends in its place.
fn shaped_json(seq: u64, line: &[u8], path: &str, offset: u64, out: &mut Vec<u8>) {
    let mut stamped = Vec::with_capacity(line.len() + 32);
    shapes::timestamped(seq, line, &mut stamped);
    let text =
        String::from_utf8_lossy(stamped.strip_suffix(b"\n").unwrap_or(&stamped)).into_owned();
    let ts = text.split(' ').next().unwrap_or_default().to_string();
    let field = |name: &str| {
        text.split(' ')
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_string()
    };
    let level = text.split(' ').nth(2).unwrap_or_default().to_string();
    let user = field("user");
    let json = serde_json::json!({
        "message": text,
        "source": "app",
        "host": "bench-host",
        "path": path,
        "offset": offset,
        "timestamp": ts,
        "ts": ts,
        "level": level,
        "user": user,
        "latency_ms": field("latency_ms"),
    });
    out.extend_from_slice(user.as_bytes());
    out.push(b'\t');
    out.extend_from_slice(json.to_string().as_bytes());
    out.push(b'\n');
}

/// The matrix's sizes and shared inputs.
struct Matrix<'a> {
    args: &'a Args,
    events: u64,
    load: PathBuf,
    /// kcat's best on the raw file, measured once and shared by the
    /// scenarios of raw lines.
    raw_kcat: Option<(Measure, String)>,
    /// tailrace on the raw file through the memory channel, for `disk`.
    raw_tailrace: Option<Measure>,
}

impl Matrix<'_> {
    fn raw_file(&self) -> anyhow::Result<()> {
        if !self.load.exists() {
            eprintln!(
                "generating {} lines into {}",
                self.events,
                self.load.display()
            );
            write_lines(self.args, &self.load, self.events, |_, l, out| {
                out.extend_from_slice(l)
            })?;
        }
        Ok(())
    }

    fn raw_kcat(&mut self) -> anyhow::Result<(Measure, String)> {
        if self.raw_kcat.is_none() {
            self.raw_file()?;
            let load = KcatLoad::plain(&self.load, self.events);
            self.raw_kcat = Some(kcat_on_tansu(self.args, &load, "the raw file")?);
        }
        Ok(self.raw_kcat.clone().expect("just measured"))
    }

    fn scenario(&mut self, name: &str) -> Scenario {
        let mut s = Scenario {
            name: name.into(),
            title: title(name).into(),
            ..Scenario::default()
        };
        if let Err(e) = self.measure(name, &mut s) {
            eprintln!("{name}: {e:#}");
            s.notes.push(format!("**Failed**: {e:#}"));
        }
        s
    }

    fn measure(&mut self, name: &str, s: &mut Scenario) -> anyhow::Result<()> {
        let args = self.args;
        let n = self.events;
        let raw_source = crate::file_source(&self.load.display().to_string(), "");
        let tansu = |what: &str| {
            Tansu::start(
                &args.tansu,
                &args.work.join(format!("tansu-matrix-{what}")),
                "bench",
            )
        };
        let run = |name, label: &str, bootstrap: &str| AgentRun {
            name,
            label: label.into(),
            source: String::new(),
            sink_keys: String::new(),
            channel: "{ type: memory }",
            bootstrap: bootstrap.into(),
            consumer: Vec::new(),
            events: n,
            feed: None,
            wait_port: None,
        };
        match name {
            "raw" => {
                self.raw_file()?;
                let (kcat, note) = self.raw_kcat()?;
                let broker = tansu(name)?;
                let m = AgentRun {
                    source: raw_source,
                    ..run(
                        name,
                        "tailrace, file source, memory channel",
                        &broker.bootstrap(),
                    )
                }
                .run(args)?;
                self.raw_tailrace = Some(m.clone());
                s.measured(m, kcat);
                s.notes.push(note);
                s.notes.push(
                    "Goal (issue 19): ≥ 1.0 × kcat at ≤ 0.9 CPU-s per million events.".into(),
                );
            }
            "fields" => {
                let dir = args.work.join("matrix-fields");
                let file = dir.join("app.log");
                write_lines(args, &file, n, shapes::timestamped)?;
                let shaped = dir.join("shaped.json");
                let (mut offset, path) = (0u64, file.display().to_string());
                write_lines(args, &shaped, n, |seq, l, out| {
                    shaped_json(seq, l, &path, offset, out);
                    offset += l.len() as u64 + 25;
                })?;
                let broker = tansu(name)?;
                let m = AgentRun {
                    source: crate::file_source(&path, &shaping()),
                    sink_keys: "encoding: json\nkey: \"{user}\"\nheaders: true".into(),
                    ..run(
                        name,
                        "tailrace, host + regex_extract + timestamp, JSON, key {user}, headers",
                        &broker.bootstrap(),
                    )
                }
                .run(args)?;
                drop(broker);
                let load = KcatLoad {
                    keyed: true,
                    headers: vec![
                        "source=app".into(),
                        "host=bench-host".into(),
                        format!("path={path}"),
                    ],
                    ..KcatLoad::plain(&shaped, n)
                };
                let (kcat, note) = kcat_on_tansu(
                    args,
                    &load,
                    "the same JSON pre-rendered, keyed by user, three fixed headers",
                )?;
                let _ = std::fs::remove_dir_all(&dir);
                s.measured(m, kcat);
                s.notes.push(note);
                s.notes.push("kcat shapes nothing: it sends the JSON the agent would write, so the ratio is what shaping costs. Goal (issue 19): ≥ 1,000,000 events/s at ≤ 1.3 CPU-s per million.".into());
            }
            "files" => {
                let (kcat, note) = self.raw_kcat()?;
                let dir = args.work.join("matrix-files");
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                let broker = tansu(name)?;
                let m = AgentRun {
                    source: crate::file_source(&format!("{}/*.log", dir.display()), ""),
                    feed: Some(vec![
                        "--out".into(),
                        dir.display().to_string(),
                        "--files".into(),
                        "1000".into(),
                    ]),
                    ..run(
                        name,
                        "tailrace, 1,000 files appended in turn",
                        &broker.bootstrap(),
                    )
                }
                .run(args)?;
                let _ = std::fs::remove_dir_all(&dir);
                s.measured(m, kcat);
                s.notes.push(format!(
                    "The baseline is kcat on one file of as many lines (no tailing). {note}"
                ));
                s.notes
                    .push("Goal (issue 19): ≥ 1,300,000 events/s with peak RSS ≤ 96 MiB.".into());
            }
            "syslog" => {
                let port = free_port()?;
                let broker = tansu(name)?;
                let m = AgentRun {
                    source: format!(
                        "    type: syslog\n    mode: tcp\n    address: 127.0.0.1:{port}\n"
                    ),
                    sink_keys: "encoding: json".into(),
                    feed: Some(vec![
                        "--tcp".into(),
                        format!("127.0.0.1:{port}"),
                        "--connections".into(),
                        "4".into(),
                        "--syslog".into(),
                    ]),
                    wait_port: Some(port),
                    ..run(
                        name,
                        "tailrace, syslog source (tcp), 4 connections, JSON",
                        &broker.bootstrap(),
                    )
                }
                .run(args)?;
                drop(broker);
                let dir = args.work.join("matrix-syslog");
                let file = dir.join("messages.log");
                write_lines(args, &file, n, |seq, l, out| {
                    shapes::syslog5424(seq, l, false, out)
                })?;
                let (kcat, note) = kcat_on_tansu(
                    args,
                    &KcatLoad::plain(&file, n),
                    "the same messages from a file",
                )?;
                let _ = std::fs::remove_dir_all(&dir);
                s.measured(m, kcat);
                s.notes.push(format!("kcat sends the messages unparsed from a file; rsyslog (imtcp → omkafka) is not run: Debian's rsyslog-kafka depends on Debian's librdkafka1 2.0.2, the one this harness replaces for kcat because it cannot talk to tansu 0.6.0; rsyslogd with the newer librdkafka was not tried. {note}"));
                s.notes.push("Goal (issue 19): ≥ 800,000 events/s.".into());
            }
            "tcp" => {
                let (kcat, note) = self.raw_kcat()?;
                let port = free_port()?;
                let broker = tansu(name)?;
                let m = AgentRun {
                    source: format!("    type: tcp\n    address: 127.0.0.1:{port}\n    max_connections: 2000\n    max_connections_per_address: 2000\n"),
                    feed: Some(vec!["--tcp".into(), format!("127.0.0.1:{port}"), "--connections".into(), "1000".into()]),
                    wait_port: Some(port),
                    ..run(name, "tailrace, tcp source, 1,000 connections", &broker.bootstrap())
                }
                .run(args)?;
                s.measured(m, kcat);
                s.notes.push(format!(
                    "The baseline is kcat on a file of the same lines. {note}"
                ));
                s.notes
                    .push("Goal (issue 19): ≥ 1,000,000 events/s with peak RSS ≤ 128 MiB.".into());
            }
            "drain" => {
                let (kcat, note) = self.raw_kcat()?;
                // About `n` events spooled: the outage outlasts the
                // delivery timeout by n / rate seconds; then three times
                // as long with the broker back, the lines still coming.
                let rate = if args.quick { 20_000 } else { 50_000 };
                let timeout_ms = 2_000;
                let outage_secs = n.div_ceil(rate) + timeout_ms / 1_000 + 1;
                let plan = crate::outage::Plan {
                    rate,
                    warm_secs: 2,
                    outage_secs,
                    after_secs: 3 * outage_secs,
                    delivery_timeout_ms: timeout_ms,
                };
                let o = crate::outage::outage_run(args, &plan);
                let _ = std::fs::remove_dir_all(args.work.join("run-outage"));
                let _ = std::fs::remove_dir_all(args.work.join("load-outage"));
                let o = o?;
                s.measured(
                    Measure {
                        label: format!("tailrace, spool drain, {rate} lines/s still written"),
                        events: o.drain_events,
                        seconds: o.drain_seconds,
                        cpu_seconds: Some(o.drain_cpu_seconds),
                        peak_rss_mib: Some(o.peak_rss_mib),
                        lost: Some(o.lost),
                        duplicated: Some(o.duplicated),
                        ..Measure::default()
                    },
                    kcat,
                );
                s.notes.push(format!(
                    "{} events were spooled during a {outage_secs} s outage (a cut proxy; delivery_timeout_ms {timeout_ms}); the row is from the broker's return until the spool was empty and delivery had caught up with the writer, over which {} events were delivered. lost and dup are over all {} lines written. {}",
                    report::thousands(o.spooled_events),
                    report::thousands(o.drain_events),
                    report::thousands(o.lines),
                    if o.drained_while_writing { "The writer was still writing when the backlog was gone." } else { "**The writer had stopped before the backlog was gone**, which flatters the rate." }
                ));
                s.notes.push(format!(
                    "The baseline is kcat on the raw file: the librdkafka limit. {note}"
                ));
                s.notes
                    .push("Goal (issue 19): drains ≥ 1,500,000 events/s.".into());
            }
            "disk" => {
                self.raw_file()?;
                let baseline = match self.raw_tailrace.clone() {
                    Some(m) => m,
                    None => {
                        let broker = tansu("disk-memory")?;
                        AgentRun {
                            source: raw_source.clone(),
                            ..run(
                                "disk-memory",
                                "tailrace, file source, memory channel",
                                &broker.bootstrap(),
                            )
                        }
                        .run(args)?
                    }
                };
                let broker = tansu(name)?;
                let m = AgentRun {
                    source: raw_source,
                    channel: "{ type: disk }",
                    ..run(
                        name,
                        "tailrace, file source, disk channel",
                        &broker.bootstrap(),
                    )
                }
                .run(args)?;
                s.measured(m, baseline);
                s.notes.push("The baseline is the same agent through the memory channel. Goal (issue 15): ≥ 0.7 × the memory channel's rate.".into());
            }
            "tls" => {
                use tailrace_e2e::secure::SecureCluster;
                self.raw_file()?;
                // tansu's sqlite storage (which SCRAM users need) bounds
                // this at tens of thousands a second: a tenth of the lines.
                let tls_n = (n / 10).max(1_000);
                let file = args.work.join("matrix-tls/app.log");
                write_lines(args, &file, tls_n, |_, l, out| out.extend_from_slice(l))?;
                std::env::set_var("TANSU_BIN", &args.tansu);
                let users = [("bench", "bench-password", "scram512")];
                let topics: Vec<String> =
                    args.lingers.iter().map(|l| format!("kcat-{l}")).collect();
                let mut all: Vec<(&str, i32)> = vec![("bench", 1)];
                all.extend(topics.iter().map(|t| (t.as_str(), 1)));
                let cluster = SecureCluster::scram(&users, &all);
                let bootstrap = cluster.tls.bootstrap();
                let consumer =
                    cluster.consumer_properties("SCRAM-SHA-512", "bench", "bench-password");
                let m = AgentRun {
                    source: crate::file_source(&file.display().to_string(), ""),
                    sink_keys: format!(
                        "tls: {{ ca_file: {} }}\nsasl: {{ mechanism: SCRAM-SHA-512, username: bench, password: bench-password }}",
                        cluster.pki.ca().display()
                    ),
                    consumer: consumer.clone(),
                    events: tls_n,
                    ..run(name, "tailrace → stunnel → tansu, SASL_SSL SCRAM-SHA-512", &bootstrap)
                }
                .run(args)?;
                let load = KcatLoad {
                    properties: consumer,
                    ..KcatLoad::plain(&file, tls_n)
                };
                let (kcat, note) = kcat_best(
                    args,
                    &load,
                    "SASL_SSL, the same stunnel and tansu",
                    |linger| Ok((bootstrap.clone(), format!("kcat-{linger}"), ())),
                )?;
                let _ = std::fs::remove_dir_all(args.work.join("matrix-tls"));
                s.measured(m, kcat);
                s.notes.push(format!("{} events (a tenth of --events): tansu's sqlite storage, which SCRAM users need, bounds both rows; stunnel's TLS runs on the same cores. {note}", report::thousands(tls_n)));
            }
            other => bail!("unknown scenario {other}"),
        }
        Ok(())
    }
}

fn title(name: &str) -> &'static str {
    match name {
        "raw" => "1. raw file → Kafka",
        "fields" => "2. fields + JSON",
        "files" => "3. 1,000 files",
        "syslog" => "4. syslog over TCP (RFC 5424)",
        "tcp" => "5. tcp, 1,000 connections",
        "drain" => "6. spool drain",
        "disk" => "8. disk channel",
        "tls" => "7. TLS + SASL",
        _ => "?",
    }
}

/// Runs the scenarios in order, prints the report and writes it.
pub fn run(args: &Args, scenarios: &[String]) -> anyhow::Result<()> {
    let machine = report::Machine::read();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let events = args
        .events
        .unwrap_or(if args.quick { 100_000 } else { 2_000_000 });
    let mut m = Matrix {
        args,
        events,
        load: args.work.join(format!("matrix-load-{events}/app.log")),
        raw_kcat: None,
        raw_tailrace: None,
    };
    let started = Instant::now();
    let mut done = Vec::new();
    for name in scenarios {
        eprintln!(
            "scenario {name} ({:.0} s in)",
            started.elapsed().as_secs_f64()
        );
        done.push(m.scenario(name));
    }
    let _ = std::fs::remove_dir_all(m.load.parent().expect("in a directory"));
    // The brokers' directories (their logs; the data was in memory).
    for entry in std::fs::read_dir(&args.work)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tansu-matrix-") || name.starts_with("tansu-kcat-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date,
        machine,
        load_at_end: report::load_average(),
        quick: args.quick,
        scenarios: done,
    };
    println!("{}", report.markdown(""));
    let dir = match &args.report {
        Some(dir) => report.write(dir).map(|()| dir.clone()),
        None => report.publish(&args.results),
    }
    .context("cannot write the report")?;
    eprintln!(
        "report: {} and its charts ({:.0} s)",
        dir.join("REPORT.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_expands_and_other_targets_stay() {
        let t = |v: &[&str]| {
            split_targets(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let (s, o) = t(&["matrix"]);
        assert_eq!(s, SCENARIOS);
        assert!(o.is_empty());
        let (s, o) = t(&["tcp", "kcat", "fields"]);
        assert_eq!(s, ["tcp", "fields"]);
        assert_eq!(o, ["kcat"]);
    }

    #[test]
    fn the_shaped_json_is_keyed_and_numbered() {
        let mut line = Vec::new();
        lines::Generator::new(1, lines::Sizes::Fixed(100)).line(42, &mut line);
        let mut out = Vec::new();
        shaped_json(42, &line, "/x/app.log", 0, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        let (key, json) = text.trim_end().split_once('\t').unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["user"], key);
        assert!(["INFO", "WARN", "DEBUG"].contains(&v["level"].as_str().unwrap()));
        assert_eq!(shapes::seq_in(json.as_bytes()), Some(42));
        assert_eq!(v["timestamp"], "2026-12-01T00:00:00.000Z");
    }
}
