//! Builds the pipeline from a validated config, runs it, reloads it on
//! SIGHUP and shuts it down in order.
//!
//! The pipeline runs as groups: channels with the sources that write into
//! them and the sinks that read them. A reload keeps every group whose
//! definition did not change running (its connections stay open), builds
//! new groups while everything runs, and acquires what a changed group's
//! replacement can hold beside the old group (the store of a new
//! `data_dir`, the tcp and udp ports no old group holds) before it stops
//! the old group: a replacement that cannot acquire them leaves the old
//! group untouched. What only one of them can hold (positions, spools,
//! disk channel directories and the ports the old group listens on) is
//! claimed by building the replacement after the stop; if that fails, the
//! old group is put back as it was.
//!
//! Stopping a group (at exit and before its replacement starts): sources
//! stop reading and send what they hold; once each has said it sent
//! everything (or the grace period is over) the channels close; sinks
//! deliver what is in flight within the grace period, spooling the rest;
//! then sources persist the acknowledged positions. A reload therefore
//! loses nothing and re-reads nothing: the new group resumes at the
//! positions the old one saved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tailrace_api::channel_disk::{
    channel_dir, declare_corrupt, DiskChannel, DiskFamilies, DiskMetrics,
};
use tailrace_api::{
    Channel, CheckpointStore, ComponentTask, EarlyBinding, Metrics, Readiness, Redeliver, Shutdown,
    Side, SinkContext, SourceContext, SpoolStore,
};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::notify::notify;
use crate::registry::Registry;
use crate::store::Store;
use serde_yaml::Value;

/// A running channel. Sources send into [`Held::input`], the sink takes
/// from [`Held::output`]: for a memory channel the same channel; for a disk
/// channel the two memory channels on each side of its log.
enum Held {
    Memory(Arc<Channel>),
    Disk(DiskChannel),
}

impl Held {
    fn input(&self) -> Arc<Channel> {
        match self {
            Held::Memory(c) => c.clone(),
            Held::Disk(d) => d.input(),
        }
    }

    fn output(&self) -> Arc<Channel> {
        match self {
            Held::Memory(c) => c.clone(),
            Held::Disk(d) => d.output(),
        }
    }

    /// For a disk channel, the sink's handle to have batches read again.
    fn redelivery(&self) -> Option<Arc<dyn Redeliver>> {
        match self {
            Held::Memory(_) => None,
            Held::Disk(d) => Some(d.redelivery()),
        }
    }

    fn close(&self) {
        match self {
            Held::Memory(c) => c.close(),
            Held::Disk(d) => d.close(),
        }
    }
}

/// A component's running task.
struct Task {
    name: String,
    handle: JoinHandle<Result<(), String>>,
    /// For a source: triggered when it has sent everything.
    sent: Option<Shutdown>,
}

/// A component built (its resources held) but not yet running.
struct Built {
    name: String,
    task: ComponentTask,
    sent: Option<Shutdown>,
}

impl Built {
    fn start(self) -> Task {
        Task {
            name: self.name,
            handle: tokio::spawn(self.task),
            sent: self.sent,
        }
    }
}

/// The components a reload treats as one: channels with every source that
/// writes into them and every sink that reads them, closed over shared
/// channels (a source writing into two channels joins their groups).
#[derive(Debug, Clone, PartialEq)]
struct Group {
    channels: BTreeSet<String>,
    sources: BTreeSet<String>,
    sinks: BTreeSet<String>,
}

impl Group {
    /// Splits a config into its groups.
    fn all(config: &Config) -> Vec<Group> {
        // Each channel points towards the root of its group.
        let mut root: BTreeMap<&str, &str> = config
            .channels
            .iter()
            .map(|c| (c.name.as_str(), c.name.as_str()))
            .collect();
        fn find<'a>(root: &BTreeMap<&'a str, &'a str>, mut c: &'a str) -> &'a str {
            while root[c] != c {
                c = root[c];
            }
            c
        }
        for s in &config.sources {
            let first = find(&root, &s.channels[0]);
            for c in &s.channels[1..] {
                let other = find(&root, c);
                root.insert(other, first);
            }
        }
        let mut groups: BTreeMap<&str, Group> = BTreeMap::new();
        let empty = || Group {
            channels: BTreeSet::new(),
            sources: BTreeSet::new(),
            sinks: BTreeSet::new(),
        };
        for c in &config.channels {
            let r = find(&root, &c.name);
            groups
                .entry(r)
                .or_insert_with(empty)
                .channels
                .insert(c.name.clone());
        }
        for s in &config.sources {
            let r = find(&root, &s.channels[0]);
            groups
                .entry(r)
                .or_insert_with(empty)
                .sources
                .insert(s.name.clone());
        }
        for s in &config.sinks {
            let r = find(&root, &s.channel);
            groups
                .entry(r)
                .or_insert_with(empty)
                .sinks
                .insert(s.name.clone());
        }
        groups.into_values().collect()
    }

    /// What the group is made of, as written, with the settings every
    /// component is given: equal fingerprints, an unchanged group.
    fn fingerprint(&self, config: &Config, data_dir: &Path) -> Vec<(String, Value)> {
        let mut parts = vec![(
            "settings".to_string(),
            Value::String(format!(
                "grace {:?}, data_dir {}",
                config.shutdown_grace,
                data_dir.display()
            )),
        )];
        let channels = config
            .channels
            .iter()
            .map(|c| ("channel", &c.name, &c.definition));
        let sources = config
            .sources
            .iter()
            .map(|c| ("source", &c.name, &c.definition));
        let sinks = config
            .sinks
            .iter()
            .map(|c| ("sink", &c.name, &c.definition));
        parts.extend(
            channels
                .chain(sources)
                .chain(sinks)
                .filter(|(kind, name, _)| self.has(kind, name))
                .map(|(kind, name, definition)| (format!("{kind} {name}"), definition.clone())),
        );
        parts
    }

    /// Whether the group has the `kind` ("channel", "source", "sink") named.
    fn has(&self, kind: &str, name: &str) -> bool {
        match kind {
            "channel" => self.channels.contains(name),
            "source" => self.sources.contains(name),
            _ => self.sinks.contains(name),
        }
    }

    /// What the group's components hold that another group's could also
    /// claim: channel, source and sink names (disk channels, positions and
    /// spools are kept by name) and the sources' resources (ports, socket
    /// paths).
    fn claims(&self, config: &Config) -> BTreeSet<String> {
        let mut claims: BTreeSet<String> = self
            .sources
            .iter()
            .map(|n| format!("source {n}"))
            .chain(self.channels.iter().map(|n| format!("channel {n}")))
            .chain(self.sinks.iter().map(|n| format!("sink {n}")))
            .collect();
        for s in config
            .sources
            .iter()
            .filter(|s| self.sources.contains(&s.name))
        {
            claims.extend(s.config.resources());
        }
        claims
    }
}

/// One running group: channels, sinks, sources.
struct Pipeline {
    group: Group,
    fingerprint: Vec<(String, Value)>,
    channels: BTreeMap<String, Held>,
    sources: Vec<Task>,
    sinks: Vec<Task>,
    /// Each component's readiness, for `/ready`.
    components: Vec<(String, Readiness)>,
    stop_sources: Shutdown,
    stop_sinks: Shutdown,
    drained: Shutdown,
    grace: Duration,
}

/// A group whose components are all built, none running yet.
struct Prepared {
    pipeline: Pipeline,
    sinks: Vec<Built>,
    sources: Vec<Built>,
}

impl Prepared {
    /// Builds every component of `group`: its ports are bound, its files
    /// and journals opened. Nothing runs until [`Prepared::start`].
    fn build(
        config: &Config,
        group: &Group,
        store: &Arc<Store>,
        state: &AdminState,
        data_dir: &Path,
    ) -> Result<Prepared, Unbuilt> {
        let metrics = &state.metrics;
        let mut channels: BTreeMap<String, Held> = BTreeMap::new();
        let mut opened = Ok(());
        for c in config
            .channels
            .iter()
            .filter(|c| group.channels.contains(&c.name))
        {
            let (events, bytes) = metrics.channel(&c.name);
            // A disk channel without max_events has no event bound: no
            // events capacity series (its fill is by bytes).
            let bounded_events = match &c.disk {
                Some(d) if d.max_events == u64::MAX => None,
                _ => Some(c.capacity_events as u64),
            };
            metrics.channel_capacity(&c.name, bounded_events, c.capacity_bytes as u64);
            // Exported at 0 for every channel, so alerts need not know its type.
            declare_corrupt(&metrics.families::<DiskFamilies>(), &c.name);
            let held = match &c.disk {
                None => Held::Memory(Arc::new(Channel::new(
                    &c.name,
                    c.capacity_events,
                    c.capacity_bytes,
                    events,
                    bytes,
                ))),
                Some(settings) => {
                    let m = DiskMetrics::new(
                        &metrics.families::<DiskFamilies>(),
                        &c.name,
                        events,
                        bytes,
                        metrics.dropped(&c.name),
                    );
                    match DiskChannel::open(
                        &c.name,
                        &channel_dir(data_dir, &c.name),
                        settings.clone(),
                        m,
                    ) {
                        Ok(d) => Held::Disk(d),
                        Err(e) => {
                            opened = Err(anyhow::Error::new(e)
                                .context(format!("cannot start channel {}", c.name)));
                            break;
                        }
                    }
                }
            };
            channels.insert(c.name.clone(), held);
        }
        let mut prepared = Prepared {
            pipeline: Pipeline {
                group: group.clone(),
                fingerprint: group.fingerprint(config, data_dir),
                channels,
                sources: Vec::new(),
                sinks: Vec::new(),
                components: Vec::new(),
                stop_sources: Shutdown::new(),
                stop_sinks: Shutdown::new(),
                drained: Shutdown::new(),
                grace: config.shutdown_grace,
            },
            sinks: Vec::new(),
            sources: Vec::new(),
        };
        match opened.and_then(|()| prepared.build_components(config, group, store, state, data_dir))
        {
            Ok(()) => Ok(prepared),
            Err(error) => Err(Unbuilt {
                error,
                prepared: Box::new(prepared),
            }),
        }
    }

    fn build_components(
        &mut self,
        config: &Config,
        group: &Group,
        store: &Arc<Store>,
        state: &AdminState,
        data_dir: &Path,
    ) -> anyhow::Result<()> {
        let metrics = &state.metrics;
        let pipeline = &mut self.pipeline;
        for spec in config
            .sinks
            .iter()
            .filter(|s| group.sinks.contains(&s.name))
        {
            let cx = SinkContext {
                name: spec.name.as_str().into(),
                input: pipeline.channels[&spec.channel].output(),
                durable_input: pipeline.channels[&spec.channel].redelivery(),
                shutdown: pipeline.stop_sinks.clone(),
                grace: config.shutdown_grace,
                metrics: metrics.sink(&spec.name),
                data_dir: data_dir.to_path_buf(),
                spool: store.clone() as Arc<dyn SpoolStore>,
                readiness: Readiness::not_ready("connecting to its broker"),
                tap: state.taps.tap(Side::Sink, &spec.name),
                heartbeat: state.heartbeats.register(format!("sink {}", spec.name)),
            };
            let name = format!("sink {}", spec.name);
            pipeline
                .components
                .push((name.clone(), cx.readiness.clone()));
            let task = spec
                .config
                .build(cx)
                .with_context(|| format!("cannot start sink {}", spec.name))?;
            self.sinks.push(Built {
                name,
                task,
                sent: None,
            });
        }
        for spec in config
            .sources
            .iter()
            .filter(|s| group.sources.contains(&s.name))
        {
            let sent = Shutdown::new();
            let cx = SourceContext {
                name: spec.name.as_str().into(),
                outputs: spec
                    .channels
                    .iter()
                    .map(|c| pipeline.channels[c].input())
                    .collect(),
                checkpoints: store.clone() as Arc<dyn CheckpointStore>,
                shutdown: pipeline.stop_sources.clone(),
                drained: pipeline.drained.clone(),
                sent: sent.clone(),
                metrics: metrics.source(&spec.name),
                readiness: Readiness::ready(),
                tap: state.taps.tap(Side::Source, &spec.name),
                heartbeat: state.heartbeats.register(format!("source {}", spec.name)),
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
            let name = format!("source {}", spec.name);
            pipeline
                .components
                .push((name.clone(), cx.readiness.clone()));
            let task = spec
                .config
                .build(cx)
                .with_context(|| format!("cannot start source {}", spec.name))?;
            self.sources.push(Built {
                name,
                task,
                sent: Some(sent),
            });
        }
        Ok(())
    }

    fn start(self) -> Pipeline {
        let mut pipeline = self.pipeline;
        pipeline.sinks = self.sinks.into_iter().map(Built::start).collect();
        pipeline.sources = self.sources.into_iter().map(Built::start).collect();
        pipeline
    }

    /// Lets go of what was built: starts it already stopped and waits for
    /// it to end, so its threads are gone and its ports, files and spool
    /// released before anything else claims them.
    async fn abandon(self) {
        let errors = self.start().stop().await;
        if !errors.is_empty() {
            warn!(errors = %errors.join("; "), "components given up on stopped with errors");
        }
    }
}

/// A group that could not be built, with what of it was.
struct Unbuilt {
    error: anyhow::Error,
    prepared: Box<Prepared>,
}

/// Resolves with the name of the first component whose task ends.
async fn first_to_stop(pipelines: &[Pipeline]) -> String {
    loop {
        for p in pipelines {
            for r in p.sources.iter().chain(p.sinks.iter()) {
                if r.handle.is_finished() {
                    return r.name.clone();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the pipelines all at once (each within its grace period);
/// returns their components' errors.
async fn stop_all(pipelines: Vec<Pipeline>) -> Vec<String> {
    let stopping: Vec<_> = pipelines
        .into_iter()
        .map(|p| tokio::spawn(p.stop()))
        .collect();
    let mut errors = Vec::new();
    for s in stopping {
        match s.await {
            Ok(e) => errors.extend(e),
            Err(e) => errors.push(format!("stopping a pipeline: {e}")),
        }
    }
    errors
}

impl Pipeline {
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
        for (_, ch) in self.channels {
            if let Held::Disk(d) = ch {
                let _ = tokio::task::spawn_blocking(move || d.finish()).await;
            }
        }
        self.drained.trigger();
        for s in self.sources {
            collect(s, &mut errors).await;
        }
        info!(
            components = %self.components.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            took_ms = started.elapsed().as_millis() as u64,
            "pipeline stopped"
        );
        errors
    }
}

/// Every running group, and the summary over them.
struct Running {
    pipelines: Vec<Pipeline>,
    summary: Option<JoinHandle<()>>,
}

impl Running {
    /// Builds every group of `config`, then starts them; a group that
    /// cannot be built stops what was built and fails the start.
    async fn start(
        config: &Config,
        store: &Arc<Store>,
        state: &AdminState,
        data_dir: &Path,
    ) -> anyhow::Result<Running> {
        let built = build_all(config, &Group::all(config), store, state, data_dir).await?;
        let mut running = Running {
            pipelines: built.into_iter().map(Prepared::start).collect(),
            summary: None,
        };
        running.publish(config, state, store);
        Ok(running)
    }

    fn stop(mut self) -> Vec<Pipeline> {
        if let Some(task) = self.summary.take() {
            task.abort();
        }
        self.pipelines
    }

    /// Tells the admin endpoint (readiness, taps) and the summary what
    /// runs now.
    fn publish(&mut self, config: &Config, state: &AdminState, store: &Store) {
        *state.components.write().unwrap_or_else(|e| e.into_inner()) = self
            .pipelines
            .iter()
            .flat_map(|p| p.components.iter().cloned())
            .chain([("store".to_string(), store.readiness())])
            .collect();
        let live: Vec<_> = (config
            .sources
            .iter()
            .map(|s| (Side::Source, s.name.clone())))
        .chain(config.sinks.iter().map(|s| (Side::Sink, s.name.clone())))
        .collect();
        state.taps.retain(&live);
        if let Some(task) = self.summary.take() {
            task.abort();
        }
        let metrics = &state.metrics;
        self.summary = config.summary_interval.map(|every| {
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
            // The fill gauges: for a disk channel, what its log holds.
            let channels = config
                .channels
                .iter()
                .map(|c| (c.name.clone(), metrics.channel(&c.name)))
                .collect();
            tokio::spawn(summarize(every, sources, sinks, channels))
        });
    }
}

async fn abandon(built: Vec<Prepared>) {
    for p in built {
        p.abandon().await;
    }
}

/// Builds every one of `groups`, or none: when one cannot be built, what
/// was built of it and of the others is let go of before the error returns.
async fn build_all(
    config: &Config,
    groups: &[Group],
    store: &Arc<Store>,
    state: &AdminState,
    data_dir: &Path,
) -> anyhow::Result<Vec<Prepared>> {
    let mut built = Vec::new();
    for group in groups {
        match Prepared::build(config, group, store, state, data_dir) {
            Ok(p) => built.push(p),
            Err(Unbuilt { error, prepared }) => {
                prepared.abandon().await;
                abandon(built).await;
                return Err(error);
            }
        }
    }
    Ok(built)
}

/// The sources of `groups` in `config`.
fn config_sources<'a>(
    config: &'a Config,
    groups: &'a [Group],
) -> impl Iterator<Item = &'a crate::config::SourceSpec> + 'a {
    config
        .sources
        .iter()
        .filter(|s| groups.iter().any(|g| g.sources.contains(&s.name)))
}

/// Binds, ahead of the stop, every tcp and udp socket the sources of
/// `replacing` listen on, and fails naming each one that cannot be bound
/// although no group being replaced holds it (another program does): the
/// old groups are then left running. An address an old group holds is
/// handed over: the replacement takes a duplicate of the old source's
/// listening socket, so the socket stays open through the stop.
fn bind_ahead(
    new: &Config,
    replacing: &[Group],
    claimed: &BTreeSet<String>,
) -> anyhow::Result<Vec<EarlyBinding>> {
    let mut early = Vec::new();
    let mut unbound = Vec::new();
    for s in config_sources(new, replacing) {
        let binding = s.config.bind_early();
        // A source listening on a tcp or udp address binds it early
        // (`SourceConfig::bind_early`): no binding means it failed.
        if binding.is_none() {
            unbound.extend(
                s.config
                    .resources()
                    .into_iter()
                    .filter(|r| !claimed.contains(r))
                    .filter_map(|r| why_unbound(&r).map(|why| (s.name.clone(), r, why))),
            );
        }
        early.extend(binding);
    }
    if unbound.is_empty() {
        return Ok(early);
    }
    Err(anyhow::anyhow!(
        "{} (free the address or choose another; nothing was stopped)",
        unbound
            .iter()
            .map(|(source, r, why)| format!("source {source} cannot listen on {r}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    ))
}

/// Why a tcp or udp resource ("tcp 127.0.0.1:5140") was not bound early:
/// the error binding it again now gives; `None` for other resources.
fn why_unbound(resource: &str) -> Option<String> {
    let (kind, address) = resource.split_once(' ')?;
    let tried = match kind {
        "tcp" => std::net::TcpListener::bind(address).map(drop),
        "udp" => std::net::UdpSocket::bind(address).map(drop),
        _ => return None,
    };
    Some(match tried {
        Err(e) => e.to_string(),
        Ok(()) => "it was taken while the reload bound it, and is free again now".to_string(),
    })
}

/// Why a reload did not take the new config.
enum Refused {
    /// Nothing running was touched.
    Kept(anyhow::Error),
    /// The groups the new config changed were stopped, their replacements
    /// could not start, and they run again as they were.
    RolledBack(anyhow::Error),
    /// Not even the old groups could start again.
    Fatal(anyhow::Error),
}

/// Moves the running groups to `new`: groups whose definition did not
/// change keep running (their connections stay open); new groups are built
/// while everything runs; the ports a changed group's replacement listens
/// on and no old group holds are bound next (a failure stops nothing);
/// then the changed group is stopped, since its replacement claims its
/// positions, spool and the ports it holds, and if the replacement cannot
/// be built it is started again from `old`.
async fn reload(
    signals: &mut Signals,
    running: &mut Running,
    old: &Config,
    new: &Config,
    store: &mut Arc<Store>,
    data_dir: &mut PathBuf,
    state: &AdminState,
) -> Result<(), Refused> {
    let new_dir = absolute(&new.data_dir);
    let new_store = if new_dir == *data_dir {
        store.clone()
    } else {
        let dir = new_dir.clone();
        match tokio::task::spawn_blocking(move || Store::open(&dir)).await {
            Ok(Ok(s)) => Arc::new(s),
            Ok(Err(e)) => return Err(Refused::Kept(e.into())),
            Err(e) => return Err(Refused::Kept(e.into())),
        }
    };
    let groups: Vec<(Group, Vec<(String, Value)>)> = Group::all(new)
        .into_iter()
        .map(|g| {
            let fp = g.fingerprint(new, &new_dir);
            (g, fp)
        })
        .collect();
    let (kept, changed): (Vec<Pipeline>, Vec<Pipeline>) = std::mem::take(&mut running.pipelines)
        .into_iter()
        .partition(|p| groups.iter().any(|(_, fp)| *fp == p.fingerprint));
    let claimed: BTreeSet<String> = changed.iter().flat_map(|p| p.group.claims(old)).collect();
    let (replacing, fresh): (Vec<Group>, Vec<Group>) = groups
        .into_iter()
        .filter(|(_, fp)| !kept.iter().any(|p| p.fingerprint == *fp))
        .map(|(g, _)| g)
        .partition(|g| !g.claims(new).is_disjoint(&claimed));
    info!(
        unchanged = kept.len(),
        changed = changed.len(),
        new = fresh.len(),
        "reloading groups of components"
    );

    let mut built = match build_all(new, &fresh, &new_store, state, &new_dir).await {
        Ok(built) => built,
        Err(error) => {
            running.pipelines = kept.into_iter().chain(changed).collect();
            return Err(Refused::Kept(error));
        }
    };
    let was: Vec<Group> = changed.iter().map(|p| p.group.clone()).collect();
    // The replacements' sockets are bound before the old groups let go of
    // theirs: a moved port refuses no connection meanwhile, and one that
    // cannot be bound refuses the reload with the old groups untouched.
    let early = match bind_ahead(new, &replacing, &claimed) {
        Ok(early) => early,
        Err(error) => {
            abandon(built).await;
            running.pipelines = kept.into_iter().chain(changed).collect();
            return Err(Refused::Kept(error));
        }
    };
    if !changed.is_empty() {
        let errors = signals.stop(changed).await;
        if !errors.is_empty() {
            warn!(errors = %errors.join("; "), "the changed components stopped with errors");
        }
    }
    let replaced = build_all(new, &replacing, &new_store, state, &new_dir).await;
    drop(early);
    match replaced {
        Ok(more) => built.extend(more),
        Err(error) => {
            abandon(built).await;
            running.pipelines = kept;
            let again = build_all(old, &was, store, state, data_dir).await;
            return match again {
                Ok(restored) => {
                    running
                        .pipelines
                        .extend(restored.into_iter().map(Prepared::start));
                    Err(Refused::RolledBack(error))
                }
                Err(again) => Err(Refused::Fatal(error.context(format!(
                    "and the components it changed cannot start again either: {again:#}"
                )))),
            };
        }
    }
    running.pipelines = kept
        .into_iter()
        .chain(built.into_iter().map(Prepared::start))
        .collect();
    if new_dir != *data_dir {
        let s = store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || CheckpointStore::flush(&*s)).await {
            warn!(error = %e, "cannot flush the store of the old data_dir");
        }
        *store = new_store;
        *data_dir = new_dir;
    }
    if let Err(e) = store.watch(new.min_free_bytes, new.store_give_up_after) {
        warn!(error = %e, "cannot start the store's watch: free space is not checked");
    }
    Ok(())
}

/// What ended the wait on a running pipeline.
enum Event {
    Stop(&'static str),
    Reload,
    Failed(String),
    StoreGaveUp(crate::store::GaveUp),
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

    async fn next(&mut self, pipelines: &[Pipeline], store: &Store) -> Event {
        let mut gave_up = store.gave_up();
        tokio::select! {
            _ = self.term.recv() => Event::Stop("SIGTERM"),
            _ = self.int.recv() => Event::Stop("SIGINT"),
            _ = self.hup.recv() => Event::Reload,
            name = first_to_stop(pipelines) => Event::Failed(name),
            g = store_gave_up(&mut gave_up) => Event::StoreGaveUp(g),
        }
    }

    /// Waits for `stop`, ending the process at once on a second SIGTERM or
    /// SIGINT: positions already saved are all acknowledged, so nothing is
    /// lost, only read again.
    async fn stop(&mut self, pipelines: Vec<Pipeline>) -> Vec<String> {
        let stopping = stop_all(pipelines);
        tokio::pin!(stopping);
        tokio::select! {
            errors = &mut stopping => errors,
            _ = self.term.recv() => second_signal(),
            _ = self.int.recv() => second_signal(),
        }
    }
}

/// Once the store was given up on (see [`Store::watch`]).
async fn store_gave_up(
    gave_up: &mut tokio::sync::watch::Receiver<Option<crate::store::GaveUp>>,
) -> crate::store::GaveUp {
    match gave_up.wait_for(Option::is_some).await {
        Ok(g) => g.clone().expect("waited for Some"),
        // The store is gone, and with it any giving up.
        Err(_) => std::future::pending().await,
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
    let mut store = Arc::new(open_store(&data_dir, config.store_give_up_after).await?);
    store
        .watch(config.min_free_bytes, config.store_give_up_after)
        .context("cannot start the thread that watches the store")?;
    info!(data_dir = %data_dir.display(), config = %config.describe(), version = env!("CARGO_PKG_VERSION"), "tailrace starting");
    let admin_listener = if config.admin.enabled {
        Some(admin::bind(&config.admin.address).await?)
    } else {
        None
    };
    let mut metrics = Metrics::new();
    crate::registry::declare_metrics(&mut metrics);
    let state = Arc::new(AdminState::new(metrics, Vec::new()));
    let stop_admin = Shutdown::new();
    let admin_task = admin_listener
        .map(|listener| tokio::spawn(admin::serve(listener, state.clone(), stop_admin.clone())));
    let registry = Registry::builtin();
    crate::watchdog::start(&state.heartbeats);

    let mut running = Running::start(&config, &store, &state, &data_dir).await?;
    notify("READY=1");
    let mut gave_up = None;
    let outcome = loop {
        match signals.next(&running.pipelines, &store).await {
            Event::Stop(by) => {
                info!("{by} received, shutting down");
                notify("STOPPING=1");
                break signals.stop(running.stop()).await;
            }
            Event::Failed(name) => {
                error!(component = %name, "a component stopped unexpectedly, shutting down");
                notify("STOPPING=1");
                let mut errors = signals.stop(running.stop()).await;
                errors.push(format!("{name} stopped unexpectedly"));
                break errors;
            }
            Event::StoreGaveUp(g) => {
                // What Kafka takes within the grace period is delivered;
                // what cannot be stored is not acknowledged, so its files
                // are read again at the next start.
                notify("STOPPING=1");
                let errors = signals.stop(running.stop()).await;
                gave_up = Some(g);
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
                match reload(
                    &mut signals,
                    &mut running,
                    &config,
                    &new,
                    &mut store,
                    &mut data_dir,
                    &state,
                )
                .await
                {
                    Ok(()) => {
                        config = new;
                        info!(
                            sources = config.sources.len(),
                            sinks = config.sinks.len(),
                            "config reloaded"
                        );
                    }
                    Err(Refused::Kept(e)) => {
                        error!(error = %format!("{e:#}"), "the new config cannot start; the running one goes on unchanged");
                    }
                    Err(Refused::RolledBack(e)) => {
                        error!(error = %format!("{e:#}"), "the new config cannot start; the components it changed run again as they were");
                    }
                    Err(Refused::Fatal(e)) => {
                        error!(error = %format!("{e:#}"), "the new config cannot start, nor the old one again; shutting down");
                        notify("STOPPING=1");
                        let mut errors = signals.stop(running.stop()).await;
                        errors.push(format!("{e:#}"));
                        break errors;
                    }
                }
                running.publish(&config, &state, &store);
                notify("READY=1");
            }
        }
    };
    stop_admin.trigger();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    let s = store.clone();
    let flushed = tokio::task::spawn_blocking(move || CheckpointStore::flush(&*s)).await?;
    if let Some(g) = gave_up {
        if let Err(e) = flushed {
            warn!(error = %e, "the last flush of the store failed too");
        }
        info!(errors = %outcome.join("; "), "tailrace stopped: the store was given up on");
        return Err(g.into());
    }
    flushed.context("cannot flush the store")?;
    info!("tailrace stopped");
    if outcome.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", outcome.join("; "))
    }
}

/// Opens the store at start. One the file system refuses (neither damaged
/// nor held by another agent: a read-only remount, an I/O error) is tried
/// again with the reopen backoff for `give_up_after` (`None`: for ever),
/// then given up on as a running store is, so that the unit is not
/// restarted into it every `RestartSec`.
async fn open_store(data_dir: &Path, give_up_after: Option<Duration>) -> anyhow::Result<Store> {
    use crate::store::{health, GaveUp, OpenError};
    let started = Instant::now();
    let mut backoff = health::REOPEN_BACKOFF;
    loop {
        let e = match Store::open(data_dir) {
            Ok(store) => return Ok(store),
            Err(e @ OpenError::Io { .. }) => e,
            Err(e) => return Err(e.into()),
        };
        let failing = started.elapsed();
        if give_up_after.is_some_and(|after| failing >= after) {
            return Err(GaveUp {
                data_dir: data_dir.display().to_string(),
                error: e.to_string(),
                failing_s: failing.as_secs(),
            }
            .into());
        }
        warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot open the store; trying again");
        // Type=notify: still starting, not hung.
        notify(&format!(
            "EXTEND_TIMEOUT_USEC={}",
            (backoff + Duration::from_secs(30)).as_micros()
        ));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(health::MAX_REOPEN_BACKOFF);
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

async fn collect(task: Task, errors: &mut Vec<String>) {
    match task.handle.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            error!(component = %task.name, error = %e, "component failed");
            errors.push(format!("{}: {e}", task.name));
        }
        Err(e) => errors.push(format!("{}: {e}", task.name)),
    }
}

/// Logs what each source read and each sink delivered, so a new user sees
/// at once that events move.
async fn summarize(
    every: Duration,
    sources: Vec<(String, tailrace_api::SourceMetrics)>,
    sinks: Vec<(String, tailrace_api::SinkMetrics)>,
    channels: BTreeMap<
        String,
        (
            prometheus_client::metrics::gauge::Gauge,
            prometheus_client::metrics::gauge::Gauge,
        ),
    >,
) {
    // From the totals so far: a reload starts a new summary.
    let mut last_sources: Vec<u64> = sources.iter().map(|(_, m)| m.events.get()).collect();
    let mut last_sinks: Vec<u64> = sinks.iter().map(|(_, m)| m.delivered.get()).collect();
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
        for (name, (events, bytes)) in &channels {
            let (events, bytes) = (events.get(), bytes.get());
            if events > 0 {
                info!(channel = %name, events, bytes, "channel holds");
            }
        }
    }
}
