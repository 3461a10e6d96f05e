//! Builds the pipeline from a validated config, runs it, reloads it on
//! SIGHUP and shuts it down in order.
//!
//! Stopping a pipeline (at exit and before a reload): sources stop reading
//! and send what they hold; once each has said it sent everything (or the
//! grace period is over) the channels close; sinks deliver what is in
//! flight within the grace period, spooling the rest; then sources persist
//! the acknowledged positions. A reload therefore loses nothing and re-reads
//! nothing: the new pipeline resumes at the positions the old one saved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tailrace_api::{
    Channel, CheckpointStore, ComponentTask, Metrics, Readiness, Shutdown, Side, SinkContext,
    SourceContext, SpoolStore,
};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::notify::notify;
use crate::registry::Registry;
use crate::store::Store;

struct Running {
    name: String,
    handle: JoinHandle<Result<(), String>>,
    /// For a source: triggered when it has sent everything.
    sent: Option<Shutdown>,
}

fn start(name: String, task: ComponentTask, sent: Option<Shutdown>) -> Running {
    Running {
        name,
        handle: tokio::spawn(task),
        sent,
    }
}

/// One running pipeline: channels, sinks, sources, summary.
struct Pipeline {
    channels: BTreeMap<String, Arc<Channel>>,
    sources: Vec<Running>,
    sinks: Vec<Running>,
    summary: Option<JoinHandle<()>>,
    stop_sources: Shutdown,
    stop_sinks: Shutdown,
    drained: Shutdown,
    grace: Duration,
}

impl Pipeline {
    fn start(
        config: &Config,
        store: &Arc<Store>,
        state: &AdminState,
        data_dir: &Path,
    ) -> anyhow::Result<Pipeline> {
        let metrics = &state.metrics;
        let mut components = Vec::new();
        let channels: BTreeMap<String, Arc<Channel>> = config
            .channels
            .iter()
            .map(|c| {
                let (events, bytes) = metrics.channel(&c.name);
                metrics
                    .channel_capacity(&c.name)
                    .set(c.capacity_events as i64);
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
        let mut pipeline = Pipeline {
            channels,
            sources: Vec::new(),
            sinks: Vec::new(),
            summary: None,
            stop_sources,
            stop_sinks,
            drained,
            grace: config.shutdown_grace,
        };
        for spec in &config.sinks {
            let cx = SinkContext {
                name: spec.name.as_str().into(),
                input: pipeline.channels[&spec.channel].clone(),
                shutdown: pipeline.stop_sinks.clone(),
                grace: config.shutdown_grace,
                metrics: metrics.sink(&spec.name),
                data_dir: data_dir.to_path_buf(),
                spool: store.clone() as Arc<dyn SpoolStore>,
                readiness: Readiness::not_ready("connecting to its broker"),
                tap: state.taps.tap(Side::Sink, &spec.name),
            };
            components.push((format!("sink {}", spec.name), cx.readiness.clone()));
            let task = spec
                .config
                .build(cx)
                .with_context(|| format!("cannot start sink {}", spec.name))?;
            pipeline
                .sinks
                .push(start(format!("sink {}", spec.name), task, None));
        }
        for spec in &config.sources {
            let sent = Shutdown::new();
            let cx = SourceContext {
                name: spec.name.as_str().into(),
                outputs: spec
                    .channels
                    .iter()
                    .map(|c| pipeline.channels[c].clone())
                    .collect(),
                checkpoints: store.clone() as Arc<dyn CheckpointStore>,
                shutdown: pipeline.stop_sources.clone(),
                drained: pipeline.drained.clone(),
                sent: sent.clone(),
                metrics: metrics.source(&spec.name),
                readiness: Readiness::ready(),
                tap: state.taps.tap(Side::Source, &spec.name),
                interceptors: spec
                    .interceptors
                    .iter()
                    .map(|i| i.build())
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| {
                        format!("cannot build the interceptors of source {}", spec.name)
                    })?
                    .into(),
            };
            components.push((format!("source {}", spec.name), cx.readiness.clone()));
            let task = spec
                .config
                .build(cx)
                .with_context(|| format!("cannot start source {}", spec.name))?;
            pipeline
                .sources
                .push(start(format!("source {}", spec.name), task, Some(sent)));
        }
        *state.components.write().unwrap_or_else(|e| e.into_inner()) = components;
        let live: Vec<_> = (config
            .sources
            .iter()
            .map(|s| (Side::Source, s.name.clone())))
        .chain(config.sinks.iter().map(|s| (Side::Sink, s.name.clone())))
        .collect();
        state.taps.retain(&live);
        pipeline.summary = config.summary_interval.map(|every| {
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
            tokio::spawn(summarize(every, sources, sinks, pipeline.channels.clone()))
        });
        Ok(pipeline)
    }

    /// Resolves with the name of the first component whose task ends.
    async fn first_to_stop(&self) -> String {
        loop {
            for r in self.sources.iter().chain(self.sinks.iter()) {
                if r.handle.is_finished() {
                    return r.name.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops in order (see the module's doc); returns the components'
    /// errors.
    async fn stop(self) -> Vec<String> {
        let started = Instant::now();
        self.stop_sources.trigger();
        self.stop_sinks.trigger();
        // Sources send what they hold while the sinks still drain.
        let deadline = started + self.grace;
        for s in &self.sources {
            let sent = s.sent.clone().unwrap_or_default();
            let finished = async {
                while !(sent.is_triggered() || s.handle.is_finished()) {
                    tokio::select! {
                        _ = sent.wait() => {}
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            };
            if tokio::time::timeout_at(deadline.into(), finished)
                .await
                .is_err()
            {
                warn!(component = %s.name, "source still sending when the grace period ended; what it holds is read again after the restart");
            }
        }
        for ch in self.channels.values() {
            ch.close();
        }
        let mut errors = Vec::new();
        for s in self.sinks {
            collect(s, &mut errors).await;
        }
        self.drained.trigger();
        for s in self.sources {
            collect(s, &mut errors).await;
        }
        if let Some(task) = self.summary {
            task.abort();
        }
        info!(
            took_ms = started.elapsed().as_millis() as u64,
            "pipeline stopped"
        );
        errors
    }
}

/// What ended the wait on a running pipeline.
enum Event {
    Stop(&'static str),
    Reload,
    Failed(String),
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
        })
    }

    async fn next(&mut self, pipeline: &Pipeline) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Stop("SIGTERM"),
            _ = self.int.recv() => Event::Stop("SIGINT"),
            _ = self.hup.recv() => Event::Reload,
            name = pipeline.first_to_stop() => Event::Failed(name),
        }
    }

    /// Waits for `stop`, ending the process at once on a second SIGTERM or
    /// SIGINT: positions already saved are all acknowledged, so nothing is
    /// lost, only read again.
    async fn stop(&mut self, pipeline: Pipeline) -> Vec<String> {
        let stopping = pipeline.stop();
        tokio::pin!(stopping);
        tokio::select! {
            errors = &mut stopping => errors,
            _ = self.term.recv() => second_signal(),
            _ = self.int.recv() => second_signal(),
        }
    }
}

fn second_signal() -> ! {
    warn!("second signal received, exiting without waiting for in-flight events");
    std::process::exit(130);
}

/// Runs until SIGTERM or SIGINT, or until a component fails; reloads the
/// config on SIGHUP. Returns an error when a component failed.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    // First, so that an early SIGHUP does not end the process.
    let mut signals = Signals::install()?;
    let mut data_dir = absolute(&config.data_dir);
    let mut store = Arc::new(Store::open(&data_dir)?);
    info!(data_dir = %data_dir.display(), config = %config.describe(), version = env!("CARGO_PKG_VERSION"), "tailrace starting");
    let admin_listener = if config.admin.enabled {
        Some(admin::bind(&config.admin.address).await?)
    } else {
        None
    };
    let state = Arc::new(AdminState::new(Metrics::new(), Vec::new()));
    let stop_admin = Shutdown::new();
    let admin_task = admin_listener
        .map(|listener| tokio::spawn(admin::serve(listener, state.clone(), stop_admin.clone())));
    let registry = Registry::builtin();

    let mut pipeline = Pipeline::start(&config, &store, &state, &data_dir)?;
    notify("READY=1");
    let outcome = loop {
        match signals.next(&pipeline).await {
            Event::Stop(by) => {
                info!("{by} received, shutting down");
                notify("STOPPING=1");
                break signals.stop(pipeline).await;
            }
            Event::Failed(name) => {
                error!(component = %name, "a component stopped unexpectedly, shutting down");
                notify("STOPPING=1");
                let mut errors = signals.stop(pipeline).await;
                errors.push(format!("{name} stopped unexpectedly"));
                break errors;
            }
            Event::Reload => {
                info!(config = %crate::config::describe(&config.paths), "SIGHUP received, reloading the config");
                let new = match crate::config::load(&config.paths, &registry) {
                    Ok(new) => new,
                    Err(errors) => {
                        error!("the new config is refused; the running one goes on:\n{errors}");
                        continue;
                    }
                };
                notify("RELOADING=1");
                if new.admin.address != config.admin.address
                    || new.admin.enabled != config.admin.enabled
                {
                    warn!("admin settings change on restart only");
                }
                if new.log.level != config.log.level || new.log.format != config.log.format {
                    warn!("log settings change on restart only");
                }
                let errors = signals.stop(pipeline).await;
                if !errors.is_empty() {
                    warn!(errors = %errors.join("; "), "the old pipeline stopped with errors");
                }
                let new_dir = absolute(&new.data_dir);
                if new_dir != data_dir {
                    let s = store.clone();
                    tokio::task::spawn_blocking(move || CheckpointStore::flush(&*s))
                        .await?
                        .context("cannot flush the store")?;
                    drop(store);
                    store = Arc::new(Store::open(&new_dir)?);
                    data_dir = new_dir;
                }
                config = new;
                pipeline = Pipeline::start(&config, &store, &state, &data_dir)?;
                info!(
                    sources = config.sources.len(),
                    sinks = config.sinks.len(),
                    "config reloaded"
                );
                notify("READY=1");
            }
        }
    };
    stop_admin.trigger();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    let s = store.clone();
    tokio::task::spawn_blocking(move || CheckpointStore::flush(&*s))
        .await?
        .context("cannot flush the store")?;
    info!("tailrace stopped");
    if outcome.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", outcome.join("; "))
    }
}

fn absolute(path: &Path) -> PathBuf {
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
