//! The thread that tails the files of one source: the shell around the
//! core ([`crate::table::FileTable`]).
//!
//! It feeds the core its observations (the clock, scans of the include
//! globs, acknowledgements) and performs the [`Action`]s it returns: sends
//! the batches it cut on the source's channel and saves positions in the
//! checkpoint store. While a send waits on a full channel it keeps applying
//! acknowledgements and saving positions on the checkpoint interval. It
//! wakes on file change notifications (notify) and acknowledgements
//! ([`Wake`]). [`Disk`] is the [`World`] of the real file system, through
//! the source's [`Matcher`].

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use tailrace_api::{Ack, AckReceiver, Batch, BuildError, ComponentTask, SourceContext};
use tracing::{debug, info, warn};

use crate::checkpoint::FileId;
use crate::identity::{self, mtime_ns, Sibling};
use crate::scan::Matcher;
pub(crate) use crate::table::Settings;
use crate::table::{known_of, Action, FileTable, Meta, Outgoing, Save, Seen, World};

/// The real file system and clock, as the core sees them.
struct Disk {
    matcher: Matcher,
}

fn meta(md: &std::fs::Metadata) -> Meta {
    Meta {
        id: FileId::of(md),
        size: md.len(),
        mtime: mtime_ns(md),
        nlink: md.nlink(),
    }
}

impl Disk {
    /// Every file an include glob names now, with its stat.
    fn scan(&mut self) -> Vec<Seen> {
        self.matcher
            .scan()
            .into_iter()
            .filter_map(|path| {
                let meta = self.stat(&path).ok()?;
                Some(Seen { path, meta })
            })
            .collect()
    }
}

impl World for Disk {
    type File = File;

    fn stat(&self, path: &Path) -> io::Result<Meta> {
        std::fs::metadata(path).map(|md| meta(&md))
    }

    fn fstat(&self, file: &File) -> io::Result<Meta> {
        file.metadata().map(|md| meta(&md))
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        self.matcher.open(path)
    }

    fn open_rotation(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    fn siblings(&self, origin: &Path) -> Vec<Sibling> {
        identity::siblings(origin)
    }

    fn current_path(&self, file: &File) -> Option<PathBuf> {
        identity::current_path(file)
    }

    fn excludes(&self, path: &Path) -> bool {
        self.matcher.excludes(path)
    }
}

/// Wakes the tailer: acknowledgements arrived, or the file system changed.
#[derive(Default)]
struct Wake {
    state: Mutex<WakeState>,
    cond: Condvar,
}

#[derive(Default)]
struct WakeState {
    acks: Vec<u64>,
    rescan: bool,
    poked: bool,
}

impl Wake {
    fn poke(&self, rescan: bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.rescan |= rescan;
        st.poked = true;
        self.cond.notify_one();
    }

    /// Waits for a poke or the timeout; returns the acks and whether a
    /// rescan was asked for.
    fn wait(&self, timeout: Duration) -> (Vec<u64>, bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.poked && !timeout.is_zero() {
            st = self
                .cond
                .wait_timeout(st, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.poked = false;
        let rescan = std::mem::take(&mut st.rescan);
        (std::mem::take(&mut st.acks), rescan)
    }
}

impl AckReceiver for Wake {
    fn acknowledged(&self, batch_id: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.acks.push(batch_id);
        st.poked = true;
        self.cond.notify_one();
    }
}

/// The source was told to stop: its channel is closed.
struct Closed;

struct Tailer {
    /// Shared with [`Tailer::send_outgoing`]'s wait, which runs the
    /// checkpointer.
    cx: Arc<SourceContext>,
    table: FileTable<Disk>,
    wake: Arc<Wake>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    /// A rescan asked for while a send was waiting.
    rescan_asked: bool,
    /// The core's actions being performed, and those of the checkpointer
    /// while a send waits; kept between rounds for their capacity.
    actions: Vec<Action>,
    waiting_actions: Vec<Action>,
}

pub(crate) fn spawn(
    cx: SourceContext,
    matcher: Matcher,
    settings: Settings,
) -> Result<ComponentTask, BuildError> {
    let entries = cx.checkpoints.load(&cx.name).map_err(|e| {
        BuildError(format!(
            "cannot load the positions of source {}: {e}",
            cx.name
        ))
    })?;
    let known = known_of(&cx.name, entries);
    let wake = Arc::new(Wake::default());
    let watcher = if settings.watch {
        let wake = wake.clone();
        let watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    // Any change but appended data may be a new, renamed
                    // or deleted file; an overflowed queue asks for a rescan.
                    let rescan = ev.need_rescan()
                        || !matches!(
                            ev.kind,
                            EventKind::Modify(notify::event::ModifyKind::Data(_))
                                | EventKind::Access(_)
                        );
                    wake.poke(rescan)
                }
                Err(_) => wake.poke(true),
            });
        match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(source = %cx.name, error = %e, "file change notifications unavailable, polling only");
                None
            }
        }
    } else {
        None
    };
    let name = cx.name.clone();
    let table = FileTable::new(
        Disk { matcher },
        cx.name.clone(),
        cx.metrics.clone(),
        settings,
        known,
        Instant::now(),
    );
    let tailer = Tailer {
        cx: Arc::new(cx),
        table,
        wake,
        watcher,
        watched: HashSet::new(),
        rescan_asked: false,
        actions: Vec::new(),
        waiting_actions: Vec::new(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("file-{name}"))
        .spawn(move || {
            let _ = tx.send(tailer.run());
        })
        .map_err(|e| BuildError(format!("cannot start the thread of source {name}: {e}")))?;
    Ok(Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err("the file source thread panicked".into()))
    }))
}

impl Tailer {
    fn run(mut self) -> Result<(), String> {
        let name = self.cx.name.clone();
        self.watch_roots();
        let seen = self.table.world_mut().scan();
        self.table.startup(Instant::now(), seen);
        info!(source = %name, files = self.table.files(), "file source started");
        let mut last_scan = Instant::now();
        self.table.reset_persist_clock(Instant::now());
        let mut rescan = false;
        while !self.cx.shutdown.is_triggered() {
            self.cx.heartbeat.beat();
            if rescan && last_scan.elapsed() >= Duration::from_millis(20)
                || last_scan.elapsed() >= self.table.settings().scan_interval
            {
                self.watch_roots();
                let seen = self.table.world_mut().scan();
                self.table.scan(Instant::now(), seen);
                self.table.expire(Instant::now());
                last_scan = Instant::now();
                rescan = false;
            }
            let read = match self.read_round() {
                Ok(n) => n,
                Err(Closed) => break,
            };
            self.table.flush_timed_out(Instant::now());
            self.table.release_finished(Instant::now());
            self.table.persist_if_due(Instant::now());
            if self.perform().is_err() {
                break;
            }
            rescan |= std::mem::take(&mut self.rescan_asked);
            let timeout = if read > 0 {
                Duration::ZERO
            } else {
                self.table.settings().poll_interval
            };
            let (acks, asked) = self.wake.wait(timeout);
            self.table.apply_acks(acks);
            rescan |= asked;
        }
        self.cx.sent.trigger();
        debug!(source = %name, "file source stopped reading, waiting for the sinks");
        loop {
            self.cx.heartbeat.beat();
            let drained = self.cx.drained.wait_timeout(Duration::from_millis(50));
            let (acks, _) = self.wake.wait(Duration::ZERO);
            self.table.apply_acks(acks);
            self.table.persist();
            // Only saves now: the channel is closed to batches.
            let _ = self.perform();
            if drained {
                break;
            }
        }
        self.cx
            .checkpoints
            .flush()
            .map_err(|e| format!("cannot flush the positions of source {name}: {e}"))?;
        info!(source = %name, "file source stopped");
        Ok(())
    }

    /// Gives every file a turn, performing what each chunk cut; returns the
    /// bytes read.
    fn read_round(&mut self) -> Result<usize, Closed> {
        let mut total = 0;
        let mut round = self.table.round();
        while let Some(n) = self.table.read_next(Instant::now(), &mut round) {
            total += n;
            if self.table.has_actions() {
                self.perform()?;
            }
        }
        Ok(total)
    }

    /// Performs what the core asked for, in order.
    fn perform(&mut self) -> Result<(), Closed> {
        let Tailer {
            cx,
            table,
            wake,
            rescan_asked,
            actions,
            waiting_actions,
            ..
        } = self;
        table.take_actions(actions);
        let mut closed = Ok(());
        for action in actions.drain(..) {
            match action {
                Action::Save(save) => save_now(table, cx, save),
                Action::Send(_) if closed.is_err() => {}
                Action::Send(out) => {
                    closed = send(table, cx, wake, rescan_asked, waiting_actions, out);
                }
            }
        }
        closed
    }

    fn watch_roots(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for root in self.table.world().matcher.roots() {
            if self.watched.contains(&root.dir) || !root.dir.is_dir() {
                continue;
            }
            let mode = if root.depth.is_none_or(|d| d > 1) {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match watcher.watch(&root.dir, mode) {
                Ok(()) => {
                    self.watched.insert(root.dir.clone());
                }
                Err(e) => {
                    debug!(dir = %root.dir.display(), error = %e, "cannot watch directory, polling it")
                }
            }
        }
    }
}

/// Writes positions the core asked to save, flushed at once.
fn save_now(table: &mut FileTable<Disk>, cx: &SourceContext, save: Save) {
    let done = cx
        .checkpoints
        .save(&cx.name, &save.puts, &save.removes)
        .and_then(|()| cx.checkpoints.flush());
    if let Err(e) = done {
        table.save_failed(save, &e);
    }
}

/// Sends a batch the core cut. While the channel is full,
/// acknowledgements still arrive (a sink that spools, or catches up): the
/// positions they complete are saved on the checkpoint interval, not only
/// once the source is unblocked, so a crash repeats at most one interval's
/// worth.
fn send(
    table: &mut FileTable<Disk>,
    cx: &Arc<SourceContext>,
    wake: &Arc<Wake>,
    rescan_asked: &mut bool,
    waiting_actions: &mut Vec<Action>,
    out: Outgoing,
) -> Result<(), Closed> {
    let every = table
        .settings()
        .checkpoint_interval
        .min(Duration::from_millis(200));
    let ack = match out.batch {
        Some(id) => Ack::new(id, out.records.len(), wake.clone()),
        None => Ack::none(),
    };
    let batch = Batch::new(out.meta, out.records, ack);
    // What the source does while the send waits: apply the
    // acknowledgements and save the positions when due.
    cx.send_waiting(batch, every, &mut || {
        let (acks, asked) = wake.wait(Duration::ZERO);
        *rescan_asked |= asked;
        table.apply_acks(acks);
        table.persist_if_due(Instant::now());
        table.take_actions(waiting_actions);
        for action in waiting_actions.drain(..) {
            match action {
                Action::Save(save) => save_now(table, cx, save),
                // Acknowledgements and saves cut no batch.
                Action::Send(_) => debug_assert!(false, "a batch cut while a send waits"),
            }
        }
    })
    .map_err(|_| Closed)
}
