//! A socket source built in-process with a real channel: what it sends is
//! read back from the channel.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use serde::de::DeserializeOwned;
use tailrace_api::store::MemoryStore;
use tailrace_api::{Channel, Metrics, Readiness, Record, Shutdown, SourceConfig, SourceContext};
use tokio::task::JoinHandle;

pub struct Source {
    pub channel: Arc<Channel>,
    pub shutdown: Shutdown,
    /// Triggered by the source when it sends nothing more.
    pub sent: Shutdown,
    /// Triggered by `stop` once the source said it sent everything, as the
    /// runtime does once the sinks are done.
    pub drained: Shutdown,
    pub task: Option<JoinHandle<Result<(), String>>>,
    pub metrics: Arc<Metrics>,
    /// Every record taken from the channel so far.
    pub records: Vec<Record>,
    pub batches: usize,
}

/// Parses `yaml` as config `C`, builds it on a channel of
/// `capacity_events` and starts it.
pub fn start<C: SourceConfig + DeserializeOwned>(yaml: &str, capacity_events: usize) -> Source {
    let config: C = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    let issues = config.validate();
    assert!(issues.is_empty(), "{yaml}: {issues:?}");
    try_start(config, capacity_events).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

pub fn try_start<C: SourceConfig>(config: C, capacity_events: usize) -> Result<Source, String> {
    let mut metrics = Metrics::new();
    tailrace_socket::declare_metrics(&mut metrics);
    let metrics = Arc::new(metrics);
    let channel = Arc::new(Channel::unmetered("main", capacity_events, 64 << 20));
    let shutdown = Shutdown::new();
    let (sent, drained) = (Shutdown::new(), Shutdown::new());
    let cx = SourceContext {
        name: "sock".into(),
        outputs: vec![channel.clone()],
        checkpoints: Arc::new(MemoryStore::default()),
        shutdown: shutdown.clone(),
        drained: drained.clone(),
        sent: sent.clone(),
        metrics: metrics.source("sock"),
        readiness: Readiness::ready(),
        interceptors: Vec::new().into(),
        tap: tailrace_api::Tap::none(),
        heartbeat: tailrace_api::Heartbeat::none(),
    };
    let task = config.build(cx).map_err(|e| e.0)?;
    Ok(Source {
        channel,
        shutdown,
        sent,
        drained,
        task: Some(tokio::spawn(task)),
        metrics,
        records: Vec::new(),
        batches: 0,
    })
}

impl Source {
    /// Takes what the channel holds now.
    pub fn take(&mut self) {
        while let Some(batch) = self.channel.recv_timeout(Duration::ZERO) {
            self.batches += 1;
            self.records.extend(batch.records);
        }
    }

    /// Takes from the channel until `n` records arrived in all, or 10 s.
    pub async fn wait_records(&mut self, n: usize) -> &[Record] {
        self.wait(|s| s.records.len() >= n).await;
        &self.records
    }

    /// Polls (taking from the channel) until `cond` holds or 10 s passed.
    pub async fn wait(&mut self, mut cond: impl FnMut(&Source) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.take();
            if cond(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn payloads(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect()
    }

    /// Signals shutdown, waits until the source says it sent everything
    /// (or its task ends), says the sinks are done, and waits for the task
    /// to end (5 s at most).
    pub async fn stop(&mut self) {
        self.shutdown.trigger();
        // Taking meanwhile, as the sinks drain the channel.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(self.sent.is_triggered() || self.task.as_ref().expect("running").is_finished()) {
            assert!(
                Instant::now() < deadline,
                "the source says it sent everything within 5 s of shutdown"
            );
            self.take();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.drained.trigger();
        let task = self.task.take().expect("running");
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the source stops within 5 s of shutdown")
            .expect("the source task did not panic");
        assert_eq!(result, Ok(()));
        self.take();
    }

    /// A sample of the metrics exposition, `name{labels}`.
    pub fn metric(&self, name: &str) -> f64 {
        export(self)
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

/// The metrics exposition of the source's registry.
pub fn export(s: &Source) -> String {
    let mut text = String::new();
    encode(&mut text, s.metrics.registry()).unwrap();
    text
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passed.
pub async fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the source closed `stream` (end of file or an error) within
/// `timeout`; what it sent meanwhile is discarded.
pub async fn closed_by_the_source(stream: &mut tokio::net::TcpStream, timeout: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}
