//! What the rotation tests drive: an [`AppWriter`] that logs like an
//! application (one descriptor, reopened when logrotate's postrotate says
//! so), the real `logrotate` binary in each of its modes ([`Logrotate`]),
//! the lines that are on disk after a rotation ([`seqs_on_disk`]), and the
//! descriptors the agent holds ([`open_fds_under`]).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::paced::Paced;
use crate::{seq_of, SeqLines};

/// The marker logrotate's `postrotate` creates next to the log: the
/// writer reopens its file when it appears (as an application does on
/// SIGHUP).
pub fn reopen_marker(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".reopen");
    PathBuf::from(name)
}

/// Appends [`SeqLines`] lines to a log through one descriptor opened with
/// `O_APPEND | O_CREAT`, `batch` lines per write every `interval`; reopens
/// the path when [`reopen_marker`] appears. Dropping it stops the thread.
pub struct AppWriter(Paced);

impl AppWriter {
    /// Writes lines numbered from `first`.
    pub fn start(log: &Path, first: u64, batch: u64, interval: Duration) -> AppWriter {
        AppWriter::start_as(log, first, batch, interval, |seq, buf| {
            buf.extend_from_slice(&SeqLines::line(seq));
            buf.push(b'\n');
        })
    }

    /// Like [`AppWriter::start`], with `write(seq, buf)` appending line
    /// `seq` as it goes on disk (wrapped as a container runtime does).
    pub fn start_as(
        log: &Path,
        first: u64,
        batch: u64,
        interval: Duration,
        write: fn(u64, &mut Vec<u8>),
    ) -> AppWriter {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).expect("cannot create the log directory");
        }
        let log = log.to_path_buf();
        let marker = reopen_marker(&log);
        let open = move || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()))
        };
        let mut file = open();
        let mut buf = Vec::new();
        AppWriter(Paced::start(first, batch, interval, move |seqs| {
            if std::fs::remove_file(&marker).is_ok() {
                file = open();
            }
            buf.clear();
            for seq in seqs {
                write(seq, &mut buf);
            }
            file.write_all(&buf).expect("cannot write the log");
        }))
    }

    /// Stops writing; returns the number of lines written (0..n).
    pub fn stop(self) -> u64 {
        self.0.stop()
    }
}

impl std::ops::Deref for AppWriter {
    type Target = Paced;
    fn deref(&self) -> &Paced {
        &self.0
    }
}

/// logrotate's modes the tests drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotateMode {
    /// `create`: rename to app.log.1, create a new app.log.
    Create,
    /// `create` with `dateext`: rename to app.log-DATE-SECONDS.
    Dateext,
    /// `create`, `compress`, `delaycompress`: app.log.1 stays plain one
    /// rotation, then becomes app.log.2.gz.
    DelayCompress,
    /// `copytruncate`: copy to app.log.1, truncate app.log in place.
    CopyTruncate,
}

/// The real logrotate binary with a config for one log.
pub struct Logrotate {
    conf: PathBuf,
    state: PathBuf,
    log: PathBuf,
    mode: RotateMode,
    last_second: u64,
}

impl Logrotate {
    /// Writes the config and state file into `dir`.
    pub fn new(dir: &Path, log: &Path, mode: RotateMode) -> Logrotate {
        let mut body = String::from("    rotate 100\n    missingok\n    nomail\n");
        match mode {
            RotateMode::CopyTruncate => body.push_str("    copytruncate\n"),
            _ => {
                // postrotate runs after the rename and the new file, before
                // the application reopens: [`Logrotate::hold`] stops it there.
                let (hold, held) = hold_markers(log);
                body.push_str("    create\n");
                body.push_str(&format!(
                    "    postrotate\n        if [ -e {hold} ]; then touch {held}; while [ -e {hold} ]; do sleep 0.01; done; fi\n        touch {reopen}\n    endscript\n",
                    hold = hold.display(),
                    held = held.display(),
                    reopen = reopen_marker(log).display()
                ));
            }
        }
        match mode {
            RotateMode::Dateext => body.push_str("    dateext\n    dateformat -%Y%m%d-%s\n"),
            RotateMode::DelayCompress => body.push_str("    compress\n    delaycompress\n"),
            _ => {}
        }
        let conf = dir.join("logrotate.conf");
        std::fs::write(&conf, format!("\"{}\" {{\n{body}}}\n", log.display()))
            .expect("cannot write the logrotate config");
        Logrotate {
            conf,
            state: dir.join("logrotate.state"),
            log: log.to_path_buf(),
            mode,
            last_second: 0,
        }
    }

    fn command(&mut self) -> Command {
        if self.mode == RotateMode::Dateext {
            // One rotation per second: the name carries the second.
            let last = self.last_second;
            let next = crate::wait_until(Duration::from_secs(3), || now_secs() > last);
            assert!(next, "the clock did not move");
            self.last_second = now_secs();
        }
        let mut cmd = Command::new("logrotate");
        cmd.arg("-f")
            .arg("-s")
            .arg(&self.state)
            .arg(&self.conf)
            .stdin(Stdio::null());
        cmd
    }

    /// Rotates now and waits for logrotate to finish; panics if it failed.
    pub fn rotate(&mut self) {
        let out = self
            .command()
            .output()
            .expect("cannot run logrotate (apt-get install logrotate)");
        assert!(
            out.status.success(),
            "logrotate failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a rotation and returns at once (to kill the agent during it).
    pub fn spawn(&mut self) -> Child {
        self.command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run logrotate (apt-get install logrotate)")
    }

    /// Starts a rotation and returns once logrotate renamed the log and
    /// created the new one, while it waits in `postrotate` (the application
    /// still writes to the renamed file). Not for copytruncate.
    pub fn hold(&mut self) -> HeldRotation {
        assert_ne!(
            self.mode,
            RotateMode::CopyTruncate,
            "copytruncate has no postrotate to hold"
        );
        let (hold, held) = hold_markers(&self.log);
        File::create(&hold).expect("cannot create the hold marker");
        let mut child = self.spawn();
        let reached = crate::wait_until(Duration::from_secs(10), || {
            held.exists() || child.try_wait().ok().flatten().is_some()
        });
        assert!(
            reached && held.exists(),
            "logrotate did not reach postrotate"
        );
        HeldRotation { child, hold, held }
    }
}

fn hold_markers(log: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut name = log.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    (with(".hold"), with(".held"))
}

/// A logrotate run stopped in its `postrotate`.
pub struct HeldRotation {
    child: Child,
    hold: PathBuf,
    held: PathBuf,
}

impl HeldRotation {
    /// Lets logrotate finish (the application is told to reopen) and waits
    /// for it; panics if it failed.
    pub fn release(mut self) {
        std::fs::remove_file(&self.hold).expect("cannot remove the hold marker");
        let status = self.child.wait().expect("waitpid failed");
        let _ = std::fs::remove_file(&self.held);
        assert!(status.success(), "logrotate failed: {status}");
    }
}

impl Drop for HeldRotation {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.hold);
        let _ = self.child.wait();
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Numbers of the complete [`SeqLines`] lines in `dir`'s files whose names
/// start with `prefix`, compressed ones read through `gzip -dc`: what a
/// reader could still find after the rotations.
pub fn seqs_on_disk(dir: &Path, prefix: &str) -> BTreeSet<u64> {
    let mut seqs = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("cannot list the log directory") {
        let entry = entry.expect("cannot list the log directory");
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let bytes = if name.ends_with(".gz") {
            let out = Command::new("gzip")
                .arg("-dc")
                .arg(entry.path())
                .output()
                .expect("cannot run gzip");
            assert!(out.status.success(), "gzip -dc {name} failed");
            out.stdout
        } else {
            std::fs::read(entry.path()).expect("cannot read a log file")
        };
        // Only newline-terminated lines count: a copy may end mid-line.
        let complete = bytes.len() - bytes.iter().rev().take_while(|&&b| b != b'\n').count();
        for line in bytes[..complete].split(|&b| b == b'\n') {
            if let Some(seq) = seq_of(line).filter(|&s| line == SeqLines::line(s)) {
                seqs.insert(seq);
            }
        }
    }
    seqs
}

/// Whether `payload` is the start of a [`SeqLines`] line without being
/// one: what a copy that ends mid-line (`copytruncate` racing a write)
/// leaves as its last line.
pub fn is_cut_line(payload: &[u8]) -> bool {
    let Some(seq) = seq_of(payload) else {
        return false;
    };
    let line = SeqLines::line(seq);
    payload.len() < line.len() && line.starts_with(payload)
}

/// The pid of the `tailrace run --config CONFIG` process, from /proc.
pub fn agent_pid(config: &Path) -> Option<u32> {
    let want = config.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"tailrace"))
            && args.iter().any(|a| *a == b"run")
            && args.contains(&want)
        {
            return Some(pid);
        }
    }
    None
}

/// The descriptors of process `pid` on files under `dir`, deleted ones
/// included (shown with a " (deleted)" suffix); not those on directories,
/// which a scan holds for a moment.
pub fn open_fds_under(pid: u32, dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|md| !md.is_dir()))
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Creates `path` with `lines` (and its directories) in one write.
pub fn write_file(path: &Path, contents: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("cannot create a directory");
    }
    let mut f =
        File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.write_all(contents).expect("cannot write a file");
}

/// Deletes `path` and puts a file with `contents` in its place on the same
/// inode: new files take the lowest free inode of their group, so files are
/// created next to it until one gets the freed inode, which is renamed into
/// place (the others are removed). False if the inode went elsewhere.
pub fn replace_on_same_inode(path: &Path, contents: &[u8]) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(path).expect("the file exists").ino();
    std::fs::remove_file(path).expect("cannot delete the file");
    let dir = path.parent().expect("the file has a directory");
    let mut made = Vec::new();
    let mut reused = false;
    for i in 0..10_000 {
        let candidate = dir.join(format!(".reuse-{i}"));
        let file = File::create(&candidate).expect("cannot create a file");
        made.push(candidate.clone());
        if file.metadata().expect("fstat").ino() == ino {
            drop(file);
            write_file(&candidate, contents);
            std::fs::rename(&candidate, path).expect("cannot rename into place");
            made.pop();
            reused = true;
            break;
        }
    }
    for p in made {
        let _ = std::fs::remove_file(p);
    }
    reused
}

/// Lines `range` as [`SeqLines`] writes them, newlines included.
pub fn seq_lines(range: std::ops::Range<u64>) -> Vec<u8> {
    let mut buf = Vec::new();
    for seq in range {
        buf.extend_from_slice(&SeqLines::line(seq));
        buf.push(b'\n');
    }
    buf
}
