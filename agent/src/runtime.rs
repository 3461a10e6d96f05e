//! Builds the pipeline from a validated config, runs it, and shuts it down
//! in order: sources stop reading, sinks deliver what is in flight within
//! the grace period, sources persist the acknowledged positions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tailrace_api::{
    Channel, CheckpointStore, ComponentTask, Metrics, Readiness, Shutdown, SinkContext,
    SourceContext, SpoolStore,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::store::Store;

struct Running {
    name: String,
    handle: JoinHandle<Result<(), String>>,
}

fn start(name: String, task: ComponentTask) -> Running {
    Running {
        name,
        handle: tokio::spawn(task),
    }
}

/// Runs until SIGTERM or SIGINT, or until a component fails. Returns an
/// error when a component failed.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = absolute(&config.data_dir);
    let store = Arc::new(Store::open(&data_dir)?);
    info!(data_dir = %data_dir.display(), config = %config.file.display(), version = env!("CARGO_PKG_VERSION"), "tailrace starting");
    let admin_listener = if config.admin.enabled {
        Some(admin::bind(&config.admin.address).await?)
    } else {
        None
    };
    let metrics = Metrics::new();
    let mut components = Vec::new();

    let channels: BTreeMap<String, Arc<Channel>> = config
        .channels
        .iter()
        .map(|c| {
            let (events, bytes) = metrics.channel(&c.name);
            (
                c.name.clone(),
                Arc::new(Channel::new(
                    &c.name,
                    c.capacity_events,
                    c.capacity_bytes,
                    events,
                    bytes,
                )),
            )
        })
        .collect();

    let stop_sources = Shutdown::new();
    let stop_sinks = Shutdown::new();
    let drained = Shutdown::new();

    let mut sinks = Vec::new();
    for spec in &config.sinks {
        let cx = SinkContext {
            name: spec.name.as_str().into(),
            input: channels[&spec.channel].clone(),
            shutdown: stop_sinks.clone(),
            grace: config.shutdown_grace,
            metrics: metrics.sink(&spec.name),
            data_dir: data_dir.clone(),
            spool: store.clone() as Arc<dyn SpoolStore>,
            readiness: Readiness::not_ready("connecting to its broker"),
        };
        components.push((format!("sink {}", spec.name), cx.readiness.clone()));
        let task = spec
            .config
            .build(cx)
            .with_context(|| format!("cannot start sink {}", spec.name))?;
        sinks.push(start(format!("sink {}", spec.name), task));
    }
    let mut sources = Vec::new();
    for spec in &config.sources {
        let cx = SourceContext {
            name: spec.name.as_str().into(),
            outputs: spec.channels.iter().map(|c| channels[c].clone()).collect(),
            checkpoints: store.clone() as Arc<dyn CheckpointStore>,
            shutdown: stop_sources.clone(),
            drained: drained.clone(),
            metrics: metrics.source(&spec.name),
            readiness: Readiness::ready(),
            interceptors: spec
                .interceptors
                .iter()
                .map(|i| i.build())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("cannot build the interceptors of source {}", spec.name))?
                .into(),
        };
        components.push((format!("source {}", spec.name), cx.readiness.clone()));
        let task = spec
            .config
            .build(cx)
            .with_context(|| format!("cannot start source {}", spec.name))?;
        sources.push(start(format!("source {}", spec.name), task));
    }

    let summary = config.summary_interval.map(|every| {
        let sources: Vec<_> = config
            .sources
            .iter()
            .map(|s| (s.name.clone(), metrics.source(&s.name)))
            .collect();
        let sinks: Vec<_> = config
            .sinks
            .iter()
            .map(|s| (s.name.clone(), metrics.sink(&s.name)))
            .collect();
        let channels = channels.clone();
        tokio::spawn(summarize(every, sources, sinks, channels))
    });
    let stop_admin = Shutdown::new();
    let admin_task = admin_listener.map(|listener| {
        let state = Arc::new(AdminState::new(metrics, components));
        tokio::spawn(admin::serve(listener, state, stop_admin.clone()))
    });

    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let failed = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM received, shutting down"); None }
        _ = sigint.recv() => { info!("SIGINT received, shutting down"); None }
        name = first_to_stop(&mut sources, &mut sinks) => {
            error!(component = %name, "a component stopped unexpectedly, shutting down");
            Some(name)
        }
    };
    // A second signal during shutdown ends the process at once; positions
    // already saved are all acknowledged, so nothing is lost, only repeated.
    tokio::spawn(async move {
        tokio::select! { _ = sigterm.recv() => {}, _ = sigint.recv() => {} }
        warn!("second signal received, exiting without waiting for in-flight events");
        std::process::exit(130);
    });

    let started = Instant::now();
    stop_sources.trigger();
    stop_sinks.trigger();
    for ch in channels.values() {
        ch.close();
    }
    let mut errors = Vec::new();
    for s in sinks {
        collect(s, &mut errors).await;
    }
    drained.trigger();
    for s in sources {
        collect(s, &mut errors).await;
    }
    if let Some(task) = summary {
        task.abort();
    }
    stop_admin.trigger();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    let s = store.clone();
    tokio::task::spawn_blocking(move || CheckpointStore::flush(&*s))
        .await?
        .context("cannot flush the store")?;
    info!(
        took_ms = started.elapsed().as_millis() as u64,
        "tailrace stopped"
    );
    match (failed, errors.is_empty()) {
        (None, true) => Ok(()),
        (Some(name), true) => anyhow::bail!("{name} stopped unexpectedly"),
        (_, false) => anyhow::bail!("{}", errors.join("; ")),
    }
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

async fn collect(running: Running, errors: &mut Vec<String>) {
    match running.handle.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            error!(component = %running.name, error = %e, "component failed");
            errors.push(format!("{}: {e}", running.name));
        }
        Err(e) => errors.push(format!("{}: {e}", running.name)),
    }
}

/// Resolves with the name of the first component whose task ends.
async fn first_to_stop(sources: &mut [Running], sinks: &mut [Running]) -> String {
    loop {
        for r in sources.iter().chain(sinks.iter()) {
            if r.handle.is_finished() {
                return r.name.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Logs what each source read and each sink delivered, so a new user sees
/// at once that events move.
async fn summarize(
    every: Duration,
    sources: Vec<(String, tailrace_api::SourceMetrics)>,
    sinks: Vec<(String, tailrace_api::SinkMetrics)>,
    channels: BTreeMap<String, Arc<Channel>>,
) {
    let mut last_sources = vec![0u64; sources.len()];
    let mut last_sinks = vec![0u64; sinks.len()];
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let secs = every.as_secs_f64();
        for (i, (name, m)) in sources.iter().enumerate() {
            let total = m.events.get();
            let delta = total - last_sources[i];
            last_sources[i] = total;
            info!(source = %name, events = delta, total, per_second = (delta as f64 / secs) as u64, "source read");
        }
        for (i, (name, m)) in sinks.iter().enumerate() {
            let total = m.delivered.get();
            let delta = total - last_sinks[i];
            last_sinks[i] = total;
            info!(sink = %name, events = delta, total, per_second = (delta as f64 / secs) as u64, "sink delivered");
        }
        for (name, ch) in &channels {
            let (events, bytes) = ch.fill();
            if events > 0 {
                info!(channel = %name, events, bytes, "channel holds");
            }
        }
    }
}
