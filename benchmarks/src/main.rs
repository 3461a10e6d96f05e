//! The throughput harness: runs the release `tailrace` end to end, file to
//! Kafka with acks=all, idempotence and lz4, against the embedded broker and
//! against tansu, and beside it `kcat -P -l` with the same producer settings
//! on the same broker, as the practical limit of librdkafka on the machine.
//! It prints one table: events/s, the slowest 5-second window, CPU seconds
//! per million events, peak RSS, delivery latency p50 and p99, and the
//! events lost and duplicated, counted by a consumer.
//!
//! `benchmarks/run` builds what it needs and calls this; see README.

use std::io::{BufWriter, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tailrace_benchmarks::{lines, shapes};

mod charts;
mod containers;
mod matrix;
mod outage;
mod report;

#[derive(Parser, Debug)]
#[command(about = "End-to-end throughput of tailrace against kcat, on this machine")]
struct Args {
    /// Lines in the load file.
    #[arg(long, default_value_t = 66_000_000)]
    lines: u64,
    /// Line length with its newline: N, fixed:N or uniform:MIN-MAX.
    #[arg(long, default_value = "100")]
    size: lines::Sizes,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Which runs, in order. `matrix` (the default) is the scenarios raw,
    /// fields, files, syslog, tcp, drain, disk and tls, each beside its
    /// baseline, written to the report (see --report); each also runs
    /// alone. The older runs print their own table: kcat, tansu, embedded
    /// (the pre-written file of --lines, as fast as it goes), sustained (a fixed rate, see --rate), cri (the
    /// same lines as a containerd log, `format: cri`), journald (the same
    /// lines as the MESSAGEs of a journal written by systemd-journal-remote),
    /// outage (the broker out of reach for --outage-secs at --outage-rate;
    /// its own table).
    #[arg(long, value_delimiter = ',', default_value = "matrix")]
    targets: Vec<String>,
    /// The matrix at a small size (--events 100000), to show the harness
    /// works end to end in a few minutes; not figures to quote.
    #[arg(long)]
    quick: bool,
    /// The matrix: events per scenario (the TLS scenario, bounded by
    /// tansu's sqlite storage, sends a tenth). Default 2,000,000, or
    /// 100,000 with --quick.
    #[arg(long)]
    events: Option<u64>,
    /// The matrix: kcat's linger.ms values, each measured in the run; the
    /// baseline is the fastest.
    #[arg(long, value_delimiter = ',', default_value = "1,5,20,100")]
    lingers: Vec<u64>,
    /// The matrix: the report goes into a new directory under this one,
    /// named by the UTC date, and `latest.md` here is rewritten to it.
    #[arg(long, default_value = "benchmarks/results")]
    results: PathBuf,
    /// The matrix: write REPORT.md and the charts into this directory
    /// instead, and leave `--results` alone.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long, default_value = "target/release/tailrace", env = "TAILRACE_BIN")]
    tailrace: PathBuf,
    #[arg(long, env = "TANSU_BIN")]
    tansu: PathBuf,
    #[arg(long, default_value = "kcat")]
    kcat: PathBuf,
    /// A directory holding a current librdkafka.so.1 for kcat (Debian's
    /// 2.0.2 cannot talk to tansu 0.6.0).
    #[arg(long, env = "KCAT_LIBRDKAFKA_DIR")]
    librdkafka_dir: Option<PathBuf>,
    /// Where the load file, configs, logs and data go.
    #[arg(long, default_value = "/tmp/tailrace-bench")]
    work: PathBuf,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// The `sustained` run: lines per second the load generator writes
    /// while tailrace tails the file.
    #[arg(long, default_value_t = 1_100_000)]
    rate: u64,
    /// The `sustained` run: for how many seconds.
    #[arg(long, default_value_t = 65)]
    seconds: u64,
    /// The `scram` and `scram-tls` runs (tansu with sqlite storage, which
    /// SCRAM users need): lines in their own load file.
    #[arg(long, default_value_t = 5_000_000)]
    secure_lines: u64,
    /// The `sustained` run: the generator renames the file to FILE.1 … once
    /// it holds this many bytes (0: never).
    #[arg(long, default_value_t = 0)]
    rotate_bytes: u64,
    /// The `outage` run: how long the broker is out of reach.
    #[arg(long, default_value_t = 600)]
    outage_secs: u64,
    /// The `outage` run: lines per second written throughout.
    #[arg(long, default_value_t = 50_000)]
    outage_rate: u64,
    /// The `outage` run: the sink's delivery_timeout_ms, after which what
    /// it holds goes to the spool.
    #[arg(long, default_value_t = 10_000)]
    outage_delivery_timeout_ms: u64,
}

/// One row of the table.
#[derive(Default)]
struct Row {
    target: String,
    events: u64,
    seconds: f64,
    slowest_5s: Option<f64>,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    lost: Option<u64>,
    duplicated: Option<u64>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tansu broker with in-memory storage, killed on drop.
struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    fn start(bin: &Path, dir: &Path, topic: &str) -> anyhow::Result<Tansu> {
        let port = free_port()?;
        std::fs::create_dir_all(dir)?;
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("tansu.log"))?;
        let child = Command::new(bin)
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .current_dir(dir)
            .env_remove("STORAGE_ENGINE")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let broker = Tansu { child, port };
        wait_for(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .context("tansu did not listen")?;
        let created = wait_for(Duration::from_secs(30), || {
            let status = Command::new(bin)
                .args([
                    "topic",
                    "create",
                    topic,
                    "--partitions",
                    "1",
                    "--broker",
                    &url,
                ])
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?;
            status.success().then_some(())
        });
        created.context("cannot create the topic in tansu")?;
        Ok(broker)
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) and peak RSS in KiB of a running process.
fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((cpu, hwm))
}

fn http_get(address: &str, path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut s = TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body.split_once("\r\n\r\n")?.1.to_string())
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// p50 and p99 from the latency histogram's cumulative buckets, linear
/// within a bucket.
fn quantiles(metrics: &str) -> (Option<f64>, Option<f64>) {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("tailrace_delivery_latency_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return (None, None);
    }
    let q = |q: f64| {
        let want = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, count) in &buckets {
            if count >= want {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let frac = if count > prev.1 {
                    (want - prev.1) / (count - prev.1)
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, count);
        }
        None
    };
    (q(0.5), q(0.99))
}

/// A consumer of `bootstrap` with client properties (credentials, TLS).
fn consumer_config(bootstrap: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tailrace-bench")
        .set("enable.auto.commit", "false");
    config
}

/// Reads the whole topic and checks every sequence number 0..n.
fn count(bootstrap: &str, topic: &str, n: u64) -> anyhow::Result<(u64, u64)> {
    count_with(bootstrap, topic, n, &[])
}

/// [`count`] with client properties (credentials, TLS).
fn count_with(
    bootstrap: &str,
    topic: &str,
    n: u64,
    properties: &[(String, String)],
) -> anyhow::Result<(u64, u64)> {
    let consumer: BaseConsumer = consumer_config(bootstrap, properties)
        .set("fetch.max.bytes", "52428800")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut seen = vec![0u64; n.div_ceil(64) as usize];
    let (mut unique, mut dups) = (0u64, 0u64);
    let mut idle_since = Instant::now();
    while unique < n && idle_since.elapsed() < Duration::from_secs(30) {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                idle_since = Instant::now();
                let Some(seq) = m.payload().and_then(shapes::seq_in).filter(|&s| s < n) else {
                    continue;
                };
                let (w, b) = ((seq / 64) as usize, seq % 64);
                if seen[w] & (1 << b) != 0 {
                    dups += 1;
                } else {
                    seen[w] |= 1 << b;
                    unique += 1;
                }
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    // Drain what is left, to count late duplicates.
    while let Some(Ok(m)) = consumer.poll(Duration::from_secs(2)) {
        if let Some(seq) = m.payload().and_then(shapes::seq_in).filter(|&s| s < n) {
            if seen[(seq / 64) as usize] & (1 << (seq % 64)) != 0 {
                dups += 1;
            }
        }
    }
    Ok((n - unique, dups))
}

fn generate(args: &Args) -> anyhow::Result<PathBuf> {
    generate_lines(args, args.lines)
}

fn generate_lines(args: &Args, n: u64) -> anyhow::Result<PathBuf> {
    let dir = args.work.join(
        // v2: lines since the generator repeats 65,536 drawn ones.
        format!("load-v2-{}-{}-{}", n, args.size, args.seed).replace([':', '(', ')', ' '], ""),
    );
    let file = dir.join("app.log");
    let done = dir.join("complete");
    if done.exists() {
        return Ok(file);
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!("generating {n} lines into {}", file.display());
    let mut out = BufWriter::with_capacity(1 << 22, std::fs::File::create(&file)?);
    let mut gen = lines::Generator::new(args.seed, args.size);
    let mut buf = Vec::with_capacity(1 << 22);
    for seq in 0..n {
        gen.line(seq, &mut buf);
        if buf.len() >= 1 << 22 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    std::fs::write(done, b"")?;
    Ok(file)
}

/// A running agent, SIGKILLed on drop if still running.
struct Agent {
    child: Child,
    admin: String,
    log: PathBuf,
    started: Instant,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The source `app` reading the files `include`, with `extra` keys.
fn file_source(include: &str, extra: &str) -> String {
    format!("    type: file\n    include: [\"{include}\"]\n{extra}")
}

/// Starts the release agent on a fresh data dir, with the source `app`
/// given as YAML (its keys, indented by four).
fn start_tailrace(args: &Args, dir: &Path, source: &str, bootstrap: &str) -> anyhow::Result<Agent> {
    start_tailrace_with(args, dir, source, bootstrap, "")
}

/// [`start_tailrace`] with more keys for the kafka sink (`tls:`, `sasl:`),
/// one per line.
fn start_tailrace_with(
    args: &Args,
    dir: &Path,
    source: &str,
    bootstrap: &str,
    sink_keys: &str,
) -> anyhow::Result<Agent> {
    start_agent(args, dir, source, bootstrap, sink_keys, "{ type: memory }")
}

/// [`start_tailrace_with`] with the channel `main` given as YAML.
fn start_agent(
    args: &Args,
    dir: &Path,
    source: &str,
    bootstrap: &str,
    sink_keys: &str,
    channel: &str,
) -> anyhow::Result<Agent> {
    let sink_keys: String = sink_keys.lines().map(|l| format!("    {l}\n")).collect();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let config = dir.join("tailrace.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {dir}/data\nsummary_interval_ms: 5000\nadmin: {{ address: \"{admin}\" }}\nsources:\n  app:\n{source}    channels: [main]\nchannels:\n  main: {channel}\nsinks:\n  kafka:\n    type: kafka\n    channel: main\n    bootstrap_servers: {bootstrap}\n    topic: bench\n    compression: lz4\n{sink_keys}",
            dir = dir.display(),
        ),
    )?;
    let log = dir.join("tailrace.log");
    let started = Instant::now();
    let child = Command::new(&args.tailrace)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", args.tailrace.display()))?;
    Ok(Agent {
        child,
        admin,
        log,
        started,
    })
}

/// What a run saw: delivered counts over time, and the last scrape.
struct Watched {
    samples: Vec<(f64, f64)>,
    seconds: f64,
    cpu_seconds: f64,
    peak_kib: u64,
    metrics: String,
}

/// Scrapes the agent every 200 ms until it delivered `n` events.
fn watch(args: &Args, agent: &mut Agent, n: u64) -> anyhow::Result<Watched> {
    let delivered_name = "tailrace_sink_events_delivered_total{sink=\"kafka\"}";
    let pid = agent.child.id();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let deadline = agent.started + Duration::from_secs(args.timeout_secs);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = agent.child.try_wait() {
            bail!(
                "tailrace exited early ({status}); see {}",
                agent.log.display()
            );
        }
        if let Some(m) = http_get(&agent.admin, "/metrics") {
            let delivered = sample(&m, delivered_name).unwrap_or(0.0);
            let now = agent.started.elapsed().as_secs_f64();
            samples.push((now, delivered));
            if delivered >= n as f64 {
                let (cpu_seconds, peak_kib) = usage(pid).unwrap_or((0.0, 0));
                return Ok(Watched {
                    samples,
                    seconds: now,
                    cpu_seconds,
                    peak_kib,
                    metrics: m,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "tailrace did not deliver {n} events in {} s; see {}",
        args.timeout_secs,
        agent.log.display()
    )
}

/// Stops the agent, counts what the broker holds, and makes the row.
fn row_of(
    target: String,
    agent: Agent,
    seen: Watched,
    events: u64,
    seconds: f64,
    bootstrap: &str,
) -> anyhow::Result<Row> {
    // librdkafka's mock cluster keeps only the last few MB of a partition,
    // so an embedded run cannot be counted afterwards; tansu keeps all.
    let counted = if bootstrap == "embedded" {
        None
    } else {
        Some(count(bootstrap, "bench", events)?)
    };
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    drop(agent);
    let (p50, p99) = quantiles(&seen.metrics);
    Ok(Row {
        target,
        events,
        seconds,
        slowest_5s: slowest_window(&seen.samples, 5.0),
        cpu_seconds: seen.cpu_seconds,
        peak_rss_mib: seen.peak_kib as f64 / 1024.0,
        p50,
        p99,
        lost: counted.map(|c| c.0),
        duplicated: counted.map(|c| c.1),
    })
}

/// As fast as it goes: the agent reads the whole pre-written input, given
/// as the source's YAML.
fn tailrace_run(args: &Args, source: &str, target: &str, bootstrap: &str) -> anyhow::Result<Row> {
    let dir = args.work.join(format!("run-{target}"));
    let mut agent = start_tailrace(args, &dir, source, bootstrap)?;
    let seen = watch(args, &mut agent, args.lines)?;
    let seconds = seen.seconds;
    row_of(
        format!("tailrace → {target}"),
        agent,
        seen,
        args.lines,
        seconds,
        bootstrap,
    )
}

/// The pre-written file to tansu requiring SASL/SCRAM-SHA-512, straight
/// (SASL_PLAINTEXT) or through TLS (SASL_SSL, stunnel in front of tansu,
/// on the same two cores), so the two rows show what TLS costs.
fn scram_run(args: &Args, tls: bool) -> anyhow::Result<Row> {
    use tailrace_e2e::secure::SecureCluster;
    // The harness finds tansu through TANSU_BIN.
    std::env::set_var("TANSU_BIN", &args.tansu);
    let load = generate_lines(args, args.secure_lines)?;
    let users = [("bench", "bench-password", "scram512")];
    let sasl = "sasl: { mechanism: SCRAM-SHA-512, username: bench, password: bench-password }";
    let (target, _cluster, broker, bootstrap, keys, consumer);
    if tls {
        let cluster = SecureCluster::scram(&users, &[("bench", 1)]);
        bootstrap = cluster.tls.bootstrap();
        keys = format!("tls: {{ ca_file: {} }}\n{sasl}", cluster.pki.ca().display());
        consumer = cluster.consumer_properties("SCRAM-SHA-512", "bench", "bench-password");
        target = "tailrace → stunnel → tansu (SASL_SSL, sqlite)";
        _cluster = Some(cluster);
        broker = None;
    } else {
        let b = tailrace_e2e::Broker::start_authenticating(None, &users, &[("bench", 1)]);
        bootstrap = b.bootstrap();
        keys = sasl.to_string();
        consumer = b.client_auth().to_vec();
        target = "tailrace → tansu (SASL_PLAINTEXT, sqlite)";
        broker = Some(b);
        _cluster = None;
    }
    let dir = args
        .work
        .join(if tls { "run-scram-tls" } else { "run-scram" });
    let mut agent = start_tailrace_with(
        args,
        &dir,
        &file_source(&load.display().to_string(), ""),
        &bootstrap,
        &keys,
    )?;
    let seen = watch(args, &mut agent, args.secure_lines)?;
    let counted = count_with(&bootstrap, "bench", args.secure_lines, &consumer)?;
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    drop(agent);
    drop(broker);
    let (p50, p99) = quantiles(&seen.metrics);
    Ok(Row {
        target: target.into(),
        events: args.secure_lines,
        seconds: seen.seconds,
        slowest_5s: slowest_window(&seen.samples, 5.0),
        cpu_seconds: seen.cpu_seconds,
        peak_rss_mib: seen.peak_kib as f64 / 1024.0,
        p50,
        p99,
        lost: Some(counted.0),
        duplicated: Some(counted.1),
    })
}

/// At a fixed rate: the load generator writes `rate` lines a second for
/// `seconds` while the agent tails the file, as on a busy host. The agent
/// keeps up if every 5-second window delivers about `rate`.
fn sustained_run(args: &Args, bootstrap: &str) -> anyhow::Result<Row> {
    let dir = args.work.join("run-sustained");
    let load_dir = args.work.join("load-sustained");
    let _ = std::fs::remove_dir_all(&load_dir);
    std::fs::create_dir_all(&load_dir)?;
    let file = load_dir.join("app.log");
    // The agent waits for the file to appear.
    let source = file_source(&file.display().to_string(), "");
    let mut agent = start_tailrace(args, &dir, &source, bootstrap)?;
    std::thread::sleep(Duration::from_secs(1));
    let events = args.rate * args.seconds;
    let loadgen = std::env::current_exe()?.with_file_name("loadgen");
    let began = agent.started.elapsed().as_secs_f64();
    let mut generator = Command::new(&loadgen)
        .arg("--out")
        .arg(&file)
        .args(["--lines", &events.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--size", &args.size.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .args(["--rotate-bytes", &args.rotate_bytes.to_string()])
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", loadgen.display()))?;
    let seen = watch(args, &mut agent, events);
    let generated = generator.wait()?;
    let seen = seen?;
    // The delivered count over time, to see where a slow window was.
    let timeline: String = seen
        .samples
        .iter()
        .map(|(t, n)| format!("{:.3},{n}\n", t - began))
        .collect();
    std::fs::write(
        dir.join("delivered.csv"),
        format!("seconds,delivered\n{timeline}"),
    )?;
    if !generated.success() {
        bail!("loadgen failed: {generated}");
    }
    let seconds = seen.seconds - began;
    row_of(
        format!(
            "tailrace → tansu, {} lines/s written for {} s",
            args.rate, args.seconds
        ),
        agent,
        seen,
        events,
        seconds,
        bootstrap,
    )
}

/// The lowest rate over any 5-second window between the first and the last
/// event delivered.
fn slowest_window(samples: &[(f64, f64)], window: f64) -> Option<f64> {
    let first = samples.iter().position(|s| s.1 > 0.0)?;
    let total = samples.last()?.1;
    let last = samples.iter().position(|s| s.1 >= total)?;
    let s = &samples[first..=last];
    let mut worst: Option<f64> = None;
    let mut j = 0;
    for i in 0..s.len() {
        while j < s.len() && s[j].0 - s[i].0 < window {
            j += 1;
        }
        if j == s.len() {
            break;
        }
        let rate = (s[j].1 - s[i].1) / (s[j].0 - s[i].0);
        worst = Some(worst.map_or(rate, |w: f64| w.min(rate)));
    }
    worst
}

fn kcat_run(args: &Args, load: &Path, bootstrap: &str) -> anyhow::Result<Row> {
    // kcat at its fastest: with linger.ms=20 (tailrace's default) it ran
    // at 689k events/s in a run here, against 1.27M-1.89M with 5, which
    // would flatter tailrace. The matrix measures several instead.
    let load = matrix::KcatLoad::plain(load, args.lines);
    let m = matrix::kcat_once(args, &load, bootstrap, "bench", 5)?;
    Ok(Row {
        target: "kcat -P -l → tansu".into(),
        events: m.events,
        seconds: m.seconds,
        cpu_seconds: m.cpu_seconds.unwrap_or_default(),
        peak_rss_mib: m.peak_rss_mib.unwrap_or_default(),
        lost: m.lost,
        duplicated: m.duplicated,
        ..Row::default()
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0))
}

fn print_table(rows: &[Row]) {
    println!("| run | events | seconds | events/s | slowest 5 s | CPU s | CPU s / M events | peak RSS | latency p50 | p99 | lost | duplicated |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let rate = r.events as f64 / r.seconds;
        println!(
            "| {} | {} | {:.1} | {:.0} | {} | {:.1} | {:.2} | {:.0} MiB | {} | {} | {} | {} |",
            r.target,
            r.events,
            r.seconds,
            rate,
            r.slowest_5s.map_or("-".into(), |w| format!("{w:.0}")),
            r.cpu_seconds,
            r.cpu_seconds / (r.events as f64 / 1e6),
            r.peak_rss_mib,
            ms(r.p50),
            ms(r.p99),
            r.lost.map_or("-".into(), |v| v.to_string()),
            r.duplicated.map_or("-".into(), |v| v.to_string()),
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (scenarios, targets) = matrix::split_targets(&args.targets)?;
    if !scenarios.is_empty() {
        matrix::run(&args, &scenarios)?;
    }
    if targets.is_empty() {
        return Ok(());
    }
    let load = if targets
        .iter()
        .any(|t| !matches!(t.as_str(), "sustained" | "scram" | "scram-tls" | "outage"))
    {
        generate(&args)?
    } else {
        PathBuf::new()
    };
    let mut rows = Vec::new();
    for target in &targets {
        eprintln!("running {target}");
        if target == "outage" {
            match outage::outage_run(&args, &outage::Plan::of(&args)) {
                Ok(o) => outage::print(&args, &o),
                Err(e) => eprintln!("outage: {e:#}"),
            }
            continue;
        }
        let raw = file_source(&load.display().to_string(), "");
        let row = match target.as_str() {
            "embedded" => tailrace_run(&args, &raw, "embedded", "embedded"),
            "tansu" => {
                let broker = Tansu::start(&args.tansu, &args.work.join("tansu-tailrace"), "bench")?;
                tailrace_run(&args, &raw, "tansu", &broker.bootstrap())
            }
            "cri" => {
                let cri = containers::cri_file(&load)?;
                let source = file_source(&cri.display().to_string(), "    format: cri\n");
                let broker = Tansu::start(&args.tansu, &args.work.join("tansu-cri"), "bench")?;
                tailrace_run(&args, &source, "tansu, CRI file", &broker.bootstrap())
            }
            "journald" => {
                let journal = containers::journal_dir(&load)?;
                let source = format!("    type: journald\n    directory: {}\n", journal.display());
                let broker = Tansu::start(&args.tansu, &args.work.join("tansu-journald"), "bench")?;
                tailrace_run(&args, &source, "tansu, journald", &broker.bootstrap())
            }
            "kcat" => {
                let broker = Tansu::start(&args.tansu, &args.work.join("tansu-kcat"), "bench")?;
                kcat_run(&args, &load, &broker.bootstrap())
            }
            "sustained" => {
                let broker =
                    Tansu::start(&args.tansu, &args.work.join("tansu-sustained"), "bench")?;
                sustained_run(&args, &broker.bootstrap())
            }
            "scram" => scram_run(&args, false),
            "scram-tls" => scram_run(&args, true),
            other => bail!(
                "unknown target {other}: embedded, tansu, kcat, sustained, cri, journald, scram, scram-tls or outage"
            ),
        };
        match row {
            Ok(r) => rows.push(r),
            Err(e) => eprintln!("{target}: {e:#}"),
        }
    }
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "\n{} lines of {} bytes (sustained: {} lines/s for {} s); {} cores ({cpus}); {} GiB memory\n",
        args.lines,
        args.size,
        args.rate,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_gib()
    );
    if rows.is_empty() {
        return Ok(());
    }
    print_table(&rows);
    if rows.iter().any(|r| r.target.contains("lines/s written")) {
        println!("\nIn the sustained run the load generator (on the same two cores) appends to the file at a fixed rate while the agent tails it; \"slowest 5 s\" is the lowest delivery rate over any 5-second window, so it must stay near the written rate for the agent to have kept up the whole time.");
    }
    if let (Some(plain), Some(tls)) = (
        rows.iter().find(|r| r.target.contains("SASL_PLAINTEXT")),
        rows.iter().find(|r| r.target.contains("SASL_SSL")),
    ) {
        let rate = |r: &Row| r.events as f64 / r.seconds;
        println!(
            "\nSASL_SSL reached {:.2} × the SASL_PLAINTEXT rate in the same run (stunnel's TLS work runs on the same two cores).",
            rate(tls) / rate(plain)
        );
    }
    if rows.iter().any(|r| r.target.ends_with("embedded")) {
        println!("\nThe embedded cluster (librdkafka's mock) keeps only the last few MB of a partition and runs inside the agent, so its run is not counted at a consumer and its RSS includes the broker.");
    }
    let rate_of = |name: &str| {
        rows.iter()
            .find(|r| r.target == name)
            .map(|r| r.events as f64 / r.seconds)
    };
    if let (Some(raw), Some(cri)) = (
        rate_of("tailrace → tansu"),
        rate_of("tailrace → tansu, CRI file"),
    ) {
        println!(
            "\nThe CRI file ran at {:.2} of the raw file's rate (goal: 0.8).",
            cri / raw
        );
    }
    if let Some(j) = rate_of("tailrace → tansu, journald") {
        println!("\nThe journald source delivered {j:.0} entries/s (goal: 300,000).");
    }
    if let (Some(k), Some(t)) = (
        rows.iter().find(|r| r.target.starts_with("kcat")),
        rows.iter().find(|r| r.target == "tailrace → tansu"),
    ) {
        println!(
            "\ntailrace → tansu reached {:.2} of kcat's rate in the same run.",
            (t.events as f64 / t.seconds) / (k.events as f64 / k.seconds)
        );
    }
    Ok(())
}

fn mem_gib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024 / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let m = "tailrace_delivery_latency_seconds_bucket{le=\"0.01\",sink=\"kafka\"} 50\ntailrace_delivery_latency_seconds_bucket{le=\"0.02\",sink=\"kafka\"} 98\ntailrace_delivery_latency_seconds_bucket{le=\"0.04\",sink=\"kafka\"} 100\ntailrace_delivery_latency_seconds_bucket{le=\"+Inf\",sink=\"kafka\"} 100\n";
        let (p50, p99) = quantiles(m);
        assert!((p50.unwrap() - 0.01).abs() < 1e-9);
        assert!((p99.unwrap() - 0.03).abs() < 1e-9);
    }

    #[test]
    fn slowest_window_finds_the_stall() {
        let s: Vec<(f64, f64)> = (0..=20)
            .map(|t| {
                (
                    t as f64,
                    if t < 10 {
                        t as f64 * 100.0
                    } else {
                        1000.0 + (t - 10) as f64 * 10.0
                    },
                )
            })
            .collect();
        assert_eq!(slowest_window(&s, 5.0), Some(10.0));
    }
}
