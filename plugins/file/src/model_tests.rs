//! The model test of the file source's core ([`FileTable`]).
//!
//! Random sequences of what happens to a log file (append, rename rotation,
//! copytruncate, truncate, delete, a new file on a reused inode) and to the
//! agent (read rounds, acknowledgements given or withheld, time passing, a
//! graceful restart, a kill, the checkpoint store refusing saves) run
//! against the real core, over an in-memory file system (path -> inode ->
//! bytes; an unlinked inode lives while a descriptor holds it) and the
//! in-memory checkpoint store. The harness is the shell: it feeds the core
//! the clock and its scans, and performs the actions the core returns
//! (sends a batch: holds it in flight; saves positions: writes the store,
//! or reports the refusal). Every line carries a unique number. After
//! every step:
//!
//! - no saved position is past a line that was not acknowledged, and each
//!   is at a line boundary (`positions_never_pass_an_unacknowledged_line`);
//! - a deleted file is closed for good only once every line in it was
//!   acknowledged (checked when its last descriptor is dropped);
//! - a line is delivered twice only after a restart or kill, and only if it
//!   was acknowledged then but lay after its file's saved position: the
//!   duplicates are bounded by what was acknowledged and not yet saved.
//!
//! At the end the agent runs until nothing is left, and every line ever
//! written has been delivered, unless its bytes were destroyed before
//! delivery while no descriptor of the agent held them (truncated away,
//! unlinked before it was read, or a deleted file open when the agent was
//! killed): nothing is lost across any kill.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tailrace_api::store::MemoryStore;
use tailrace_api::{CheckpointStore, SourceMetrics, StartAt};

use crate::checkpoint::{FileId, Saved};
use crate::identity::{is_rotation_of, ReadAt, Sibling};
use crate::table::{known_of, Action, FileTable, Meta, Outgoing, Seen, Settings, World};

const LIVE: &str = "/l/app.log";
/// Rotations kept: app.log.1 .. app.log.KEEP.
const KEEP: usize = 2;
const SOURCE: &str = "model";

struct Node {
    /// Unique, unlike inode numbers, which are reused.
    serial: u64,
    bytes: Vec<u8>,
    nlink: u64,
    mtime: i128,
}

type NodeRef = Rc<RefCell<Node>>;

#[derive(Default)]
struct Fs {
    names: BTreeMap<PathBuf, u64>,
    /// Inodes with a name.
    nodes: HashMap<u64, NodeRef>,
    /// Unlinked inodes, alive while a descriptor holds them.
    orphans: Vec<(u64, Weak<RefCell<Node>>)>,
    next_ino: u64,
    next_serial: u64,
    clock_ms: u64,
    /// The agent is being stopped: descriptors it drops are not releases.
    stopping: bool,
    /// Delivery count of each line.
    delivered: HashMap<u64, u32>,
    violations: Vec<String>,
    /// Deleted files the agent closed for good, with the lines in them not
    /// acknowledged then.
    closed_early: Vec<(u64, Vec<u64>)>,
}

/// The numbers of the complete lines in `bytes` (`L000042\n`).
fn lines(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| number(&l[..l.len() - 1]))
}

fn number(payload: &[u8]) -> u64 {
    std::str::from_utf8(&payload[1..])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a model line: {:?}", payload.escape_ascii().to_string()))
}

impl Fs {
    fn now_ns(&self) -> i128 {
        self.clock_ms as i128 * 1_000_000
    }

    /// Time moves on with every write: a file system stamps each at its own
    /// time (coarse ticks can stamp two writes alike; see invariant 93).
    fn tick(&mut self) -> i128 {
        self.clock_ms += 1;
        self.now_ns()
    }

    /// A new inode number: a freed one when `reuse` and there is one.
    fn alloc(&mut self, reuse: bool) -> u64 {
        if reuse {
            if let Some(i) = self.orphans.iter().position(|(_, w)| w.strong_count() == 0) {
                return self.orphans.remove(i).0;
            }
        }
        self.next_ino += 1;
        self.next_ino
    }

    fn create(&mut self, path: &str, bytes: Vec<u8>, reuse: bool) {
        let ino = self.alloc(reuse);
        self.next_serial += 1;
        let node = Node {
            serial: self.next_serial,
            bytes,
            nlink: 1,
            mtime: self.tick(),
        };
        self.unlink(path);
        self.nodes.insert(ino, Rc::new(RefCell::new(node)));
        self.names.insert(path.into(), ino);
    }

    fn unlink(&mut self, path: &str) {
        let Some(ino) = self.names.remove(Path::new(path)) else {
            return;
        };
        let node = self.nodes.remove(&ino).expect("a named inode");
        node.borrow_mut().nlink = 0;
        self.orphans.push((ino, Rc::downgrade(&node)));
    }

    fn rename(&mut self, from: &str, to: &str) {
        if let Some(ino) = self.names.remove(Path::new(from)) {
            self.unlink(to);
            self.names.insert(to.into(), ino);
        }
    }

    fn node(&self, path: &str) -> Option<&NodeRef> {
        self.names.get(Path::new(path)).map(|ino| &self.nodes[ino])
    }

    /// Appends lines `first..first + n` to app.log; returns its serial.
    fn append(&mut self, first: u64, n: u64, reuse: bool) -> u64 {
        if self.node(LIVE).is_none() {
            self.create(LIVE, Vec::new(), reuse);
        }
        let now = self.tick();
        let mut node = self.node(LIVE).expect("just created").borrow_mut();
        for i in first..first + n {
            node.bytes
                .extend_from_slice(format!("L{i:06}\n").as_bytes());
        }
        node.mtime = now;
        node.serial
    }

    /// The serial of the file named app.log.
    fn live_serial(&self) -> Option<u64> {
        self.node(LIVE).map(|n| n.borrow().serial)
    }

    /// Makes room for a new app.log.1, dropping the oldest rotation.
    fn shift(&mut self) {
        self.unlink(&format!("{LIVE}.{KEEP}"));
        for k in (1..KEEP).rev() {
            self.rename(&format!("{LIVE}.{k}"), &format!("{LIVE}.{}", k + 1));
        }
    }

    /// Every inode still reachable: named, or held open.
    fn reachable(&self) -> Vec<(u64, NodeRef)> {
        let mut all: Vec<(u64, NodeRef)> =
            self.nodes.iter().map(|(i, n)| (*i, n.clone())).collect();
        all.extend(
            self.orphans
                .iter()
                .filter_map(|(i, w)| Some((*i, w.upgrade()?))),
        );
        all
    }
}

/// A descriptor of the fake file system.
struct FakeFile {
    ino: u64,
    node: NodeRef,
    fs: Rc<RefCell<Fs>>,
}

impl ReadAt for FakeFile {
    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let node = self.node.borrow();
        let from = (offset as usize).min(node.bytes.len());
        let n = buf.len().min(node.bytes.len() - from);
        buf[..n].copy_from_slice(&node.bytes[from..from + n]);
        Ok(n)
    }
}

impl Drop for FakeFile {
    /// The last descriptor of an unlinked file: the agent is done with it.
    fn drop(&mut self) {
        let node = self.node.borrow();
        if node.nlink > 0 || Rc::strong_count(&self.node) > 1 {
            return;
        }
        let mut fs = self.fs.borrow_mut();
        if fs.stopping {
            return;
        }
        let unacked: Vec<u64> = lines(&node.bytes)
            .filter(|n| !fs.delivered.contains_key(n))
            .collect();
        if !unacked.is_empty() {
            fs.closed_early.push((self.ino, unacked));
        }
    }
}

struct Model {
    fs: Rc<RefCell<Fs>>,
    base: Instant,
}

fn meta(ino: u64, node: &NodeRef) -> Meta {
    let node = node.borrow();
    Meta {
        id: FileId { dev: 1, ino },
        size: node.bytes.len() as u64,
        mtime: node.mtime,
        nlink: node.nlink,
    }
}

impl Model {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.fs.borrow().clock_ms)
    }

    /// What the shell's scan finds: app.log, if it exists.
    fn scan(&self) -> Vec<Seen> {
        let fs = self.fs.borrow();
        fs.names
            .iter()
            .filter(|(p, _)| *p == Path::new(LIVE))
            .map(|(path, ino)| Seen {
                path: path.clone(),
                meta: meta(*ino, &fs.nodes[ino]),
            })
            .collect()
    }
}

impl World for Model {
    type File = FakeFile;

    fn stat(&self, path: &Path) -> io::Result<Meta> {
        let fs = self.fs.borrow();
        let ino = fs.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(meta(*ino, &fs.nodes[ino]))
    }

    fn fstat(&self, file: &FakeFile) -> io::Result<Meta> {
        Ok(meta(file.ino, &file.node))
    }

    fn open(&self, path: &Path) -> io::Result<FakeFile> {
        let fs = self.fs.borrow();
        let ino = *fs.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(FakeFile {
            ino,
            node: fs.nodes[&ino].clone(),
            fs: self.fs.clone(),
        })
    }

    fn open_rotation(&self, path: &Path) -> io::Result<FakeFile> {
        self.open(path)
    }

    fn siblings(&self, origin: &Path) -> Vec<Sibling> {
        let fs = self.fs.borrow();
        let name = origin.file_name().expect("a file name");
        fs.names
            .iter()
            .filter(|(p, _)| {
                p.parent() == origin.parent() && is_rotation_of(name, p.file_name().unwrap())
            })
            .map(|(p, ino)| {
                let m = meta(*ino, &fs.nodes[ino]);
                Sibling {
                    path: p.clone(),
                    id: m.id,
                    size: m.size,
                    mtime: m.mtime,
                }
            })
            .collect()
    }

    fn current_path(&self, file: &FakeFile) -> Option<PathBuf> {
        let fs = self.fs.borrow();
        fs.names
            .iter()
            .find(|(_, ino)| **ino == file.ino)
            .map(|(p, _)| p.clone())
    }

    fn excludes(&self, _: &Path) -> bool {
        false
    }
}

/// How the case's log is rotated: one way for a given file, as
/// logrotate's configuration fixes it.
#[derive(Debug, Clone, Copy)]
enum Style {
    /// app.log becomes app.log.1; the writer creates a new app.log.
    Rename,
    /// app.log is copied to app.log.1, then emptied.
    CopyTruncate,
}

#[derive(Debug, Clone)]
enum Op {
    /// The writer appends lines to app.log, creating it (on a freed inode
    /// number when `reuse`) if it is missing.
    Append {
        lines: u64,
        reuse: bool,
    },
    /// logrotate, by the case's [`Style`].
    Rotate,
    /// Emptied in place (its unread lines are gone).
    Truncate,
    Delete,
    /// One turn of the source's loop, with or without a scan.
    Run {
        scan: bool,
    },
    /// The sink acknowledges one batch in flight (the others are withheld).
    Ack(usize),
    AckAll,
    Advance {
        ms: u64,
    },
    /// A graceful stop (everything in flight acknowledged and saved).
    Restart,
    /// kill -9: batches in flight are lost, nothing more is saved.
    Kill,
    /// The checkpoint store refuses every save from now on (`true`), or
    /// takes them again.
    StoreDown(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..6, any::<bool>()).prop_map(|(lines, reuse)| Op::Append { lines, reuse }),
        2 => Just(Op::Rotate),
        1 => Just(Op::Truncate),
        1 => Just(Op::Delete),
        6 => any::<bool>().prop_map(|scan| Op::Run { scan }),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::AckAll),
        2 => (1u64..400).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Restart),
        1 => Just(Op::Kill),
        1 => any::<bool>().prop_map(Op::StoreDown),
    ]
}

struct Harness {
    style: Style,
    fs: Rc<RefCell<Fs>>,
    store: Arc<MemoryStore>,
    base: Instant,
    max_open_files: usize,
    table: Option<FileTable<Model>>,
    in_flight: Vec<(u64, Vec<u64>)>,
    next_line: u64,
    /// Lines written and neither delivered nor excused yet.
    pending: BTreeSet<u64>,
    /// Lines whose bytes were destroyed before delivery while the agent
    /// held no descriptor on them.
    excused: HashSet<u64>,
    /// The file each line was written to (its serial).
    written_to: HashMap<u64, u64>,
    /// Files the agent saw named app.log while it ran (at its start or a
    /// scan): the files it answers for. One created and rotated away while
    /// it was stopped, with nothing saved to lead to it, it cannot know.
    seen: HashSet<u64>,
    /// Files truncated in place since the agent's last scan.
    unnoticed: HashSet<u64>,
    /// Lines the agent cut into a batch at least once.
    cut: HashSet<u64>,
    /// Batches it cut.
    batches: usize,
    /// Lines that may be delivered once more: acknowledged before the last
    /// stop, after their file's saved position.
    may_repeat: HashSet<u64>,
    /// The store refuses saves.
    store_down: bool,
    /// It refused one since the agent started.
    refused: bool,
    /// Lines in a file the agent could save nothing of before a stop, and
    /// rotated away while it was down.
    unknowable: HashSet<u64>,
    /// The actions being performed, kept for their capacity as the shell
    /// keeps them.
    actions: Vec<Action>,
}

impl Harness {
    fn new(style: Style, max_open_files: usize) -> Harness {
        Harness {
            style,
            fs: Rc::new(RefCell::new(Fs::default())),
            store: Arc::new(MemoryStore::default()),
            base: Instant::now(),
            max_open_files,
            table: None,
            in_flight: Vec::new(),
            next_line: 0,
            pending: BTreeSet::new(),
            excused: HashSet::new(),
            written_to: HashMap::new(),
            seen: HashSet::new(),
            cut: HashSet::new(),
            batches: 0,
            unnoticed: HashSet::new(),
            may_repeat: HashSet::new(),
            store_down: false,
            refused: false,
            unknowable: HashSet::new(),
            actions: Vec::new(),
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            start_at: StartAt::Beginning,
            poll_interval: Duration::from_millis(10),
            scan_interval: Duration::from_millis(100),
            // Small chunks: lines are cut across reads.
            read_buffer_bytes: 20,
            read_pool_bytes: 1 << 20,
            max_line_bytes: 1000,
            max_line_policy: Default::default(),
            fingerprint_bytes: 16,
            rotated_idle: Duration::from_millis(300),
            checkpoint_interval: Duration::from_millis(100),
            max_open_files: self.max_open_files,
            expire_after: Duration::from_secs(3600),
            watch: false,
            multiline: None,
            format: Default::default(),
            field_names: Default::default(),
        }
    }

    /// Starts the agent if it is stopped, as the shell does.
    fn table(&mut self) -> &mut FileTable<Model> {
        if self.table.is_none() {
            self.excuse_unsaved();
            let known = known_of(SOURCE, self.store.load(SOURCE).expect("memory store"));
            let world = Model {
                fs: self.fs.clone(),
                base: self.base,
            };
            let (now, seen) = (world.now(), world.scan());
            let mut table = FileTable::new(
                world,
                SOURCE.into(),
                SourceMetrics::detached(SOURCE),
                self.settings(),
                known,
                now,
            );
            table.startup(now, seen);
            table.reset_persist_clock(now);
            self.table = Some(table);
            self.seen.extend(self.fs.borrow().live_serial());
            self.perform();
        }
        self.table.as_mut().expect("started")
    }

    /// After a run whose store refused a save: a file it could save no
    /// position of is not known to the agent starting now, so one rotated
    /// away while it was down is not looked for. A known limit of a store
    /// that refuses writes (ARCHITECTURE.md, invariant 93).
    fn excuse_unsaved(&mut self) {
        if !std::mem::take(&mut self.refused) {
            return;
        }
        let saved = self.saved();
        let fs = self.fs.borrow();
        let live = fs.names.get(Path::new(LIVE)).copied();
        for (ino, node) in fs.reachable() {
            if !saved.contains_key(&ino) && Some(ino) != live {
                self.unknowable.extend(lines(&node.borrow().bytes));
            }
        }
    }

    /// Performs what the core asked for, in order, as the shell does.
    fn perform(&mut self) {
        let Some(table) = self.table.as_mut() else {
            return;
        };
        let mut actions = std::mem::take(&mut self.actions);
        table.take_actions(&mut actions);
        let mut cut = Vec::new();
        for action in actions.drain(..) {
            match action {
                Action::Send(out) => cut.push(out),
                Action::Save(save) if self.store_down => {
                    self.refused = true;
                    table.save_failed(save, &"the model's store is down")
                }
                Action::Save(save) => {
                    self.store
                        .save(SOURCE, &save.puts, &save.removes)
                        .and_then(|()| self.store.flush())
                        .expect("memory store");
                }
            }
        }
        self.actions = actions;
        self.take(cut);
    }

    fn deliver(&mut self, lines: Vec<u64>) {
        let mut fs = self.fs.borrow_mut();
        for n in lines {
            let count = fs.delivered.entry(n).or_insert(0);
            *count += 1;
            let count = *count;
            self.pending.remove(&n);
            // Lines in the known limits (see `owed`) are promised nothing.
            let owed = self.seen.contains(&self.written_to[&n]);
            if count > 1 && !self.may_repeat.remove(&n) && owed {
                fs.violations.push(format!(
                    "line {n} delivered {count} times with no restart to excuse it"
                ));
            }
        }
    }

    fn take(&mut self, out: Vec<Outgoing>) {
        for o in out {
            let lines: Vec<u64> = o.records.iter().map(|r| number(&r.payload)).collect();
            self.cut.extend(&lines);
            self.batches += 1;
            match o.batch {
                Some(id) => self.in_flight.push((id, lines)),
                None => self.deliver(lines),
            }
        }
    }

    /// One turn of the shell's loop.
    fn run(&mut self, scan: bool) {
        let live = self.fs.borrow().live_serial();
        if scan {
            self.seen.extend(live);
            self.unnoticed.clear();
        }
        let now = self.table().world().now();
        if scan {
            let seen = self.table().world().scan();
            let table = self.table();
            table.scan(now, seen);
            table.expire(now);
        }
        let mut round = self.table().round();
        while self.table().read_next(now, &mut round).is_some() {
            self.perform();
        }
        let table = self.table();
        table.flush_timed_out(now);
        table.release_finished(now);
        table.persist_if_due(now);
        self.perform();
    }

    fn ack(&mut self, i: usize) {
        if self.in_flight.is_empty() {
            return;
        }
        let (id, lines) = self.in_flight.remove(i % self.in_flight.len());
        self.deliver(lines);
        if let Some(t) = self.table.as_mut() {
            t.apply_acks(vec![id]);
        }
    }

    /// Stops the agent; `graceful`: as on SIGTERM, after every batch in
    /// flight was acknowledged and the positions saved.
    fn stop(&mut self, graceful: bool) {
        if self.table.is_none() {
            return;
        }
        if graceful {
            while !self.in_flight.is_empty() {
                self.ack(0);
            }
            self.table().persist();
            self.perform();
        }
        self.in_flight.clear();
        // What may come again: lines delivered after their file's saved
        // position (or in a file with none).
        let saved = self.saved();
        let fs = self.fs.borrow();
        for (ino, node) in fs.reachable() {
            let node = node.borrow();
            let from = match saved.get(&ino) {
                Some(s) if holds(&node.bytes, s) => s.offset as usize,
                _ => 0,
            };
            for n in lines(&node.bytes[from.min(node.bytes.len())..]) {
                if fs.delivered.contains_key(&n) {
                    self.may_repeat.insert(n);
                }
            }
        }
        drop(fs);
        self.fs.borrow_mut().stopping = true;
        self.table = None;
        self.fs.borrow_mut().stopping = false;
    }

    fn saved(&self) -> HashMap<u64, Saved> {
        known_of(SOURCE, self.store.load(SOURCE).expect("memory store"))
            .into_iter()
            .map(|(id, s)| (id.ino, s))
            .collect()
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Append { lines, reuse } => {
                let first = self.next_line;
                let serial = self.fs.borrow_mut().append(first, lines, reuse);
                self.pending.extend(first..first + lines);
                // Written to a file truncated since the agent last looked:
                // written up to the size it had, then renamed, it would not
                // be seen as truncated. A known limit (ARCHITECTURE.md,
                // invariant 93).
                let to = match self.unnoticed.contains(&serial) {
                    true => 0,
                    false => serial,
                };
                self.written_to
                    .extend((first..first + lines).map(|n| (n, to)));
                self.next_line += lines;
            }
            Op::Rotate if matches!(self.style, Style::Rename) => {
                let mut fs = self.fs.borrow_mut();
                if fs.node(LIVE).is_some() {
                    fs.shift();
                    fs.rename(LIVE, &format!("{LIVE}.1"));
                }
            }
            Op::Rotate => {
                let mut fs = self.fs.borrow_mut();
                if let Some(node) = fs.node(LIVE).cloned() {
                    fs.shift();
                    let bytes = std::mem::take(&mut node.borrow_mut().bytes);
                    let moved: Vec<u64> = lines(&bytes).collect();
                    fs.create(&format!("{LIVE}.1"), bytes, false);
                    node.borrow_mut().mtime = fs.tick();
                    self.unnoticed.insert(node.borrow().serial);
                    // Copied while the agent had read none of the file (it
                    // never saw it, or it was empty when last read): a
                    // file empty before and after cannot be seen to be
                    // truncated, so the copy is not looked for. A known
                    // limit (ARCHITECTURE.md, invariant 93).
                    if !moved.iter().any(|n| self.cut.contains(n)) {
                        let copy = fs.node(&format!("{LIVE}.1")).expect("just made");
                        let copy = copy.borrow().serial;
                        self.written_to.extend(moved.into_iter().map(|n| (n, copy)));
                    }
                }
            }
            Op::Truncate => {
                let mut fs = self.fs.borrow_mut();
                let now = fs.tick();
                if let Some(node) = fs.node(LIVE) {
                    let mut node = node.borrow_mut();
                    node.bytes.clear();
                    node.mtime = now;
                    self.unnoticed.insert(node.serial);
                }
            }
            Op::Delete => self.fs.borrow_mut().unlink(LIVE),
            Op::Run { scan } => self.run(scan),
            Op::Ack(i) => self.ack(i),
            Op::AckAll => {
                while !self.in_flight.is_empty() {
                    self.ack(0);
                }
            }
            Op::Advance { ms } => self.fs.borrow_mut().clock_ms += ms,
            Op::Restart => self.stop(true),
            Op::Kill => self.stop(false),
            Op::StoreDown(down) => self.store_down = down,
        }
    }

    /// The invariants that hold after every step.
    fn check(&mut self) -> Result<(), String> {
        if let Some(v) = self.fs.borrow().violations.first() {
            return Err(v.clone());
        }
        for (ino, unacked) in std::mem::take(&mut self.fs.borrow_mut().closed_early) {
            let owed: Vec<u64> = unacked.into_iter().filter(|n| self.owed(*n)).collect();
            if !owed.is_empty() {
                return Err(format!(
                    "deleted inode {ino} closed before lines {owed:?} were acknowledged"
                ));
            }
        }
        let saved = self.saved();
        let fs = self.fs.borrow();
        let reachable = fs.reachable();
        for (ino, node) in &reachable {
            let node = node.borrow();
            let Some(s) = saved.get(ino).filter(|s| holds(&node.bytes, s)) else {
                continue;
            };
            let at = s.offset as usize;
            if at > 0 && node.bytes[at - 1] != b'\n' {
                return Err(format!("inode {ino} saved at {at}, inside a line"));
            }
            let unacked = lines(&node.bytes[..at]).find(|n| !fs.delivered.contains_key(n));
            if let Some(n) = unacked {
                return Err(format!(
                    "inode {ino} saved at {at}, past line {n} that was never acknowledged"
                ));
            }
        }
        // Lines whose bytes are gone before delivery, while the agent held
        // no descriptor on them, cannot be read by anyone.
        let present: HashSet<u64> = reachable
            .iter()
            .flat_map(|(_, n)| lines(&n.borrow().bytes).collect::<Vec<_>>())
            .collect();
        let gone: Vec<u64> = self
            .pending
            .iter()
            .filter(|n| !present.contains(n))
            .copied()
            .collect();
        drop(fs);
        for n in gone {
            self.pending.remove(&n);
            self.excused.insert(n);
        }
        Ok(())
    }

    /// Whether the agent answers for line `n`: written to a file it saw
    /// (see `seen`), not in one of the known limits.
    fn owed(&self, n: u64) -> bool {
        self.seen.contains(&self.written_to[&n]) && !self.unknowable.contains(&n)
    }

    /// Runs the agent until everything on disk is read and acknowledged.
    fn settle(&mut self) -> Result<(), String> {
        // Past rotated_idle and the checkpoint interval each time; done
        // once three turns in a row cut nothing (finding what moved,
        // releasing a file, then opening the one that waited for its
        // descriptor each take a turn).
        self.store_down = false;
        let mut quiet = 0;
        for _ in 0..60 {
            let before = self.batches;
            self.step(&Op::Advance { ms: 400 });
            self.step(&Op::Run { scan: true });
            self.step(&Op::AckAll);
            self.check()?;
            quiet = if self.batches == before { quiet + 1 } else { 0 };
            if quiet == 3 {
                break;
            }
        }
        let owed: Vec<u64> = self
            .pending
            .iter()
            .filter(|n| self.owed(**n))
            .copied()
            .collect();
        if let Some(n) = owed.first() {
            return Err(format!(
                "line {n} (of {} owed) is on disk and was never delivered",
                owed.len()
            ));
        }
        // Everything was acknowledged and checkpoint intervals passed: the
        // store holds app.log's end, whatever saves it refused before.
        let saved = self.saved();
        let fs = self.fs.borrow();
        if let Some(ino) = fs.names.get(Path::new(LIVE)) {
            let size = fs.nodes[ino].borrow().bytes.len() as u64;
            let at = saved.get(ino).map(|s| s.offset);
            if size > 0 && at != Some(size) {
                return Err(format!(
                    "app.log (inode {ino}) is read and acknowledged to {size}, saved at {at:?}"
                ));
            }
        }
        Ok(())
    }
}

/// Whether `bytes` is the content a position was saved for (as
/// `identity::holds` checks it on a real file).
fn holds(bytes: &[u8], s: &Saved) -> bool {
    let at = s.offset as usize;
    bytes.len() >= at
        && bytes.starts_with(&s.fingerprint)
        && s.check.len() <= at
        && bytes[at - s.check.len()..at] == s.check[..]
}

/// Runs `ops`, checking after every step, then settles.
fn replay(style: Style, max_open_files: usize, ops: &[Op]) -> Result<(), String> {
    let mut h = Harness::new(style, max_open_files);
    h.table();
    for (i, op) in ops.iter().enumerate() {
        h.step(op);
        h.check()
            .map_err(|e| format!("after step {i} ({op:?}): {e}"))?;
    }
    h.settle().map_err(|e| format!("at the end: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(tailrace_api::model_test_cases()))]

    #[test]
    fn positions_never_pass_an_unacknowledged_line_and_nothing_is_lost(
        style in prop_oneof![Just(Style::Rename), Just(Style::CopyTruncate)],
        max_open_files in 1usize..5,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        replay(style, max_open_files, &ops).map_err(TestCaseError::fail)?;
    }
}

// The cases the model test found (shrunk by proptest), each a loss the core
// had before the fix named in its commit, kept as plain tests. A case is a
// script: `aN` appends N lines, `uN` appends N to a new file on a reused
// inode, `R` rotates, `T` truncates, `D` deletes, `S` is a turn with a scan,
// `t` one without, `A` acknowledges everything, `+N` lets N ms pass, `r`
// restarts, `K` kills.

fn script(text: &str) -> Vec<Op> {
    text.split_whitespace()
        .map(|w| {
            let n = || w[1..].parse().expect("a number");
            match w.as_bytes()[0] {
                b'a' => Op::Append {
                    lines: n(),
                    reuse: false,
                },
                b'u' => Op::Append {
                    lines: n(),
                    reuse: true,
                },
                b'+' => Op::Advance { ms: n() },
                b'R' => Op::Rotate,
                b'T' => Op::Truncate,
                b'D' => Op::Delete,
                b'S' => Op::Run { scan: true },
                b't' => Op::Run { scan: false },
                b'A' => Op::AckAll,
                b'r' => Op::Restart,
                b'K' => Op::Kill,
                _ => panic!("unknown step {w}"),
            }
        })
        .collect()
}

#[test]
fn a_file_rotated_while_down_before_its_first_checkpoint_is_found() {
    replay(Style::Rename, 1, &script("a1 S K R")).unwrap();
}

#[test]
fn a_deleted_file_is_not_parked_to_free_a_descriptor() {
    replay(
        Style::Rename,
        1,
        &script("r a1 t a1 a1 R a1 a1 R t a1 R a1 S"),
    )
    .unwrap();
}

#[test]
fn a_saved_inode_among_the_rotations_with_new_content_is_read_again() {
    replay(Style::Rename, 1, &script("a1 r t D a1 S T S r a1 R")).unwrap();
}

#[test]
fn a_reused_inode_rotated_while_down_is_read_as_new() {
    replay(Style::Rename, 1, &script("a1 S R a1 R S A a1 R u1 t S K R")).unwrap();
}

#[test]
fn a_file_saved_empty_and_copied_while_down_is_read_in_its_copy() {
    replay(Style::CopyTruncate, 1, &script("a1 R S a1 t R K t")).unwrap();
}

#[test]
fn a_file_copied_then_deleted_is_finished_in_its_copy() {
    replay(Style::CopyTruncate, 1, &script("a1 S a1 R D")).unwrap();
}

#[test]
fn a_parked_file_copied_then_deleted_is_finished_in_its_copy() {
    replay(
        Style::CopyTruncate,
        1,
        &script("a1 S a1 R t a2 S a1 a1 R D R"),
    )
    .unwrap();
}

#[test]
fn a_parked_file_truncated_and_written_again_is_read_again() {
    let ops = script("a1 S a1 a1 a1 a1 a1 a2 R a2 K t T S a1 R");
    replay(Style::Rename, 1, &ops).unwrap();
}

#[test]
fn a_parked_file_copied_and_emptied_hands_the_rest_to_its_copy() {
    replay(Style::CopyTruncate, 1, &script("a1 r t R R K a2 S a1 R")).unwrap();
}

#[test]
fn a_file_copied_and_written_again_to_the_same_size_is_seen_truncated() {
    replay(Style::CopyTruncate, 1, &script("a2 S a1 R a2")).unwrap();
}

#[test]
fn a_file_emptied_before_it_was_read_takes_its_fingerprint_from_what_is_read() {
    replay(
        Style::CopyTruncate,
        1,
        &script("r a1 t a1 D t a1 A S R t a2 S a1 R a1"),
    )
    .unwrap();
}
