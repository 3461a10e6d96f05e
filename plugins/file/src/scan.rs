//! Finding the files that match the include and exclude globs, and the
//! symlink policy: a symlink among them is read only with
//! `follow_symlinks: true`, and never when it leads under /proc, /sys or
//! /dev. Symlinked directories are not walked.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use tracing::warn;

use crate::metrics::FileMetrics;

/// Kernel and device interfaces: a file under them is no log, and reading
/// one can block or have side effects.
const SPECIAL: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Whether a (resolved) path lies under /proc, /sys or /dev.
pub fn is_special(target: &Path) -> bool {
    SPECIAL.iter().any(|dir| target.starts_with(dir))
}

/// Why a symlink that matched is not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `follow_symlinks: false`.
    NotFollowed,
    /// It leads under /proc, /sys or /dev.
    SpecialTarget,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::NotFollowed, Refusal::SpecialTarget];

    /// The `event` of `tailrace_file_events_total` that counts it.
    pub fn event(self) -> &'static str {
        match self {
            Refusal::NotFollowed => "symlink_not_followed",
            Refusal::SpecialTarget => "symlink_special_target",
        }
    }
}

/// The symlink policy, and the refusals already counted (each symlink once
/// per reason, not at every scan).
struct Links {
    follow: bool,
    /// The source's name and its metrics.
    counted: Option<(String, FileMetrics)>,
    refused: Mutex<HashSet<(PathBuf, Refusal)>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("follow", &self.follow)
            .finish_non_exhaustive()
    }
}

/// The compiled globs of one file source.
#[derive(Debug)]
pub struct Matcher {
    include: GlobSet,
    /// Matched against the whole path.
    exclude_path: GlobSet,
    /// Patterns without a `/`, matched against the file name.
    exclude_name: GlobSet,
    roots: Vec<Root>,
    links: Links,
}

/// A directory to walk for one include pattern, and how deep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub dir: PathBuf,
    /// `None` for patterns with `**`.
    pub depth: Option<usize>,
}

pub fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

fn is_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', ']', '{', '}'])
}

/// The literal directory a pattern starts in and how many levels below it
/// the pattern reaches.
pub fn root_of(pattern: &str) -> Root {
    let path = Path::new(pattern);
    let mut dir = PathBuf::new();
    let mut rest = 0;
    let mut recursive = false;
    let mut in_literal = true;
    let comps: Vec<Component> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let s = c.as_os_str().to_string_lossy();
        if in_literal && !is_meta(&s) && i + 1 < comps.len() {
            dir.push(c.as_os_str());
        } else {
            in_literal = false;
            rest += 1;
            recursive |= s.contains("**");
        }
    }
    if dir.as_os_str().is_empty() {
        dir.push(".");
    }
    Root {
        dir,
        depth: if recursive { None } else { Some(rest) },
    }
}

impl Matcher {
    pub fn new(
        include: &[String],
        exclude: &[String],
    ) -> Result<Matcher, (usize, bool, globset::Error)> {
        let mut inc = GlobSetBuilder::new();
        for (i, p) in include.iter().enumerate() {
            inc.add(glob(p).map_err(|e| (i, true, e))?);
        }
        let mut by_path = GlobSetBuilder::new();
        let mut by_name = GlobSetBuilder::new();
        for (i, p) in exclude.iter().enumerate() {
            let g = glob(p).map_err(|e| (i, false, e))?;
            if p.contains('/') {
                by_path.add(g);
            } else {
                by_name.add(g);
            }
        }
        let mut roots: Vec<Root> = include.iter().map(|p| root_of(p)).collect();
        roots.dedup();
        Ok(Matcher {
            include: inc.build().map_err(|e| (0, true, e))?,
            exclude_path: by_path.build().map_err(|e| (0, false, e))?,
            exclude_name: by_name.build().map_err(|e| (0, false, e))?,
            roots,
            links: Links {
                follow: true,
                counted: None,
                refused: Mutex::new(HashSet::new()),
            },
        })
    }

    /// Sets the symlink policy; refusals are counted in `metrics` (the
    /// series exist from now on, at 0) and logged once per symlink.
    pub fn with_symlinks(mut self, follow: bool, source: &str, metrics: FileMetrics) -> Matcher {
        for refusal in Refusal::ALL {
            metrics.event(refusal.event(), 0);
        }
        self.links.follow = follow;
        self.links.counted = Some((source.to_owned(), metrics));
        self
    }

    /// Counts and logs a refusal the first time it happens to `path`.
    fn refuse(&self, path: &Path, target: Option<&Path>, why: Refusal) {
        let mut refused = self.links.refused.lock().unwrap_or_else(|e| e.into_inner());
        if !refused.insert((path.to_path_buf(), why)) {
            return;
        }
        let source = self.links.counted.as_ref().map(|(s, _)| s.as_str());
        let target = target.map(|t| t.display().to_string());
        match why {
            Refusal::NotFollowed => {
                warn!(source, path = %path.display(), "not reading a symlink (follow_symlinks: false)")
            }
            Refusal::SpecialTarget => {
                warn!(source, path = %path.display(), target, "not reading a symlink into /proc, /sys or /dev")
            }
        }
        if let Some((_, metrics)) = &self.links.counted {
            metrics.event(why.event(), 1);
        }
    }

    /// Whether a symlink that matched may be read.
    fn admits_link(&self, path: &Path) -> bool {
        if !self.links.follow {
            self.refuse(path, None, Refusal::NotFollowed);
            return false;
        }
        match std::fs::canonicalize(path) {
            Ok(target) if is_special(&target) => {
                self.refuse(path, Some(&target), Refusal::SpecialTarget);
                false
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Opens a file the scan found, by the policy: with O_NOFOLLOW when
    /// symlinks are not followed (a symlink put in place after the scan is
    /// refused, ELOOP); when they are, the file opened is checked again,
    /// so one re-pointed into /proc, /sys or /dev after the scan is too.
    pub fn open(&self, path: &Path) -> std::io::Result<File> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        if !self.links.follow {
            options.custom_flags(libc::O_NOFOLLOW);
        }
        let file = options.open(path)?;
        if self.links.follow {
            let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()));
            if let Some(target) = opened.ok().filter(|t| is_special(t)) {
                self.refuse(path, Some(&target), Refusal::SpecialTarget);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{} leads to {} (under /proc, /sys or /dev)",
                        path.display(),
                        target.display()
                    ),
                ));
            }
        }
        Ok(file)
    }

    pub fn roots(&self) -> &[Root] {
        &self.roots
    }

    pub fn matches(&self, path: &Path) -> bool {
        self.include.is_match(path) && path.file_name().is_some() && !self.excludes(path)
    }

    /// Whether an exclude glob matches `path` (also asked of rotated
    /// siblings, which need not match an include glob).
    pub fn excludes(&self, path: &Path) -> bool {
        self.exclude_path.is_match(path)
            || path
                .file_name()
                .is_some_and(|name| self.exclude_name.is_match(Path::new(name)))
    }

    /// Every regular file under the roots that matches.
    pub fn scan(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for root in &self.roots {
            walk(&root.dir, root.depth, &mut |p, symlink| {
                if self.matches(p) && (!symlink || self.admits_link(p)) {
                    found.push(p.to_path_buf());
                }
            });
        }
        found.sort();
        found.dedup();
        found
    }
}

/// Calls `f` with every regular file, and every symlink to one (and
/// whether it is a symlink), below `dir`.
fn walk(dir: &Path, depth: Option<usize>, f: &mut dyn FnMut(&Path, bool)) {
    if depth == Some(0) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            walk(&path, depth.map(|d| d - 1), f);
        } else if kind.is_file() || kind.is_symlink() {
            if kind.is_symlink() && !path.is_file() {
                continue;
            }
            f(&path, kind.is_symlink());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots() {
        let check = |p: &str, dir: &str, depth: Option<usize>| {
            assert_eq!(
                root_of(p),
                Root {
                    dir: dir.into(),
                    depth
                },
                "{p}"
            );
        };
        check("/var/log/app/*.log", "/var/log/app", Some(1));
        check("/var/log/*/x.log", "/var/log", Some(2));
        check("/var/log/**/*.log", "/var/log", None);
        check("/var/log/app.log", "/var/log", Some(1));
        check("logs/*.log", "logs", Some(1));
        check("*.log", ".", Some(1));
    }

    #[test]
    fn matching() {
        let inc = vec!["/l/*.log".to_string(), "/r/**/*.log".to_string()];
        let exc = vec![
            "*.gz".to_string(),
            "/l/skip.log".to_string(),
            "debug-*".to_string(),
        ];
        let m = Matcher::new(&inc, &exc).unwrap();
        let check = |p: &str, want: bool| assert_eq!(m.matches(Path::new(p)), want, "{p}");
        check("/l/a.log", true);
        check("/l/sub/a.log", false);
        check("/l/skip.log", false);
        check("/l/debug-1.log", false);
        check("/r/a.log", true);
        check("/r/x/y/a.log", true);
        check("/r/x/a.log.gz", false);
        check("/l/a.log.1", false);
    }

    #[test]
    fn scan_walks_only_as_deep_as_the_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        for f in ["x.log", "y.txt", "a/z.log", "a/b/w.log"] {
            std::fs::write(d.join(f), "").unwrap();
        }
        let flat = Matcher::new(&[format!("{}/*.log", d.display())], &[]).unwrap();
        assert_eq!(flat.scan(), vec![d.join("x.log")]);
        let deep = Matcher::new(&[format!("{}/**/*.log", d.display())], &[]).unwrap();
        assert_eq!(
            deep.scan(),
            vec![d.join("a/b/w.log"), d.join("a/z.log"), d.join("x.log")]
        );
    }

    /// A directory of a file, a symlink to a file outside it, and symlinks
    /// into /proc; the matcher over its `*.log` with `follow`.
    fn linked(follow: bool) -> (tempfile::TempDir, Matcher, FileMetrics) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("logs")).unwrap();
        std::fs::create_dir_all(d.join("pods")).unwrap();
        std::fs::write(d.join("logs/real.log"), "a\n").unwrap();
        std::fs::write(d.join("pods/0.log"), "b\n").unwrap();
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, d.join("logs").join(name)).unwrap()
        };
        link(&d.join("pods/0.log"), "pod.log");
        link(Path::new("/proc/self/status"), "status.log");
        link(Path::new("/proc/version"), "version.log");
        let metrics = FileMetrics::of("app", &tailrace_api::SourceMetrics::detached("app"));
        let m = Matcher::new(&[format!("{}/logs/*.log", d.display())], &[])
            .unwrap()
            .with_symlinks(follow, "app", metrics.clone());
        (dir, m, metrics)
    }

    fn names(found: &[PathBuf]) -> Vec<String> {
        found
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn followed_symlinks_are_read_except_into_proc_sys_and_dev() {
        let (_dir, m, metrics) = linked(true);
        assert_eq!(metrics.event_count("symlink_special_target"), 0);
        assert_eq!(names(&m.scan()), ["pod.log", "real.log"]);
        assert_eq!(names(&m.scan()), ["pod.log", "real.log"]);
        // Each refused symlink is counted once, not at every scan.
        assert_eq!(metrics.event_count("symlink_special_target"), 2);
        assert_eq!(metrics.event_count("symlink_not_followed"), 0);
    }

    #[test]
    fn unfollowed_symlinks_are_not_read_and_not_opened() {
        let (dir, m, metrics) = linked(false);
        assert_eq!(names(&m.scan()), ["real.log"]);
        assert_eq!(names(&m.scan()), ["real.log"]);
        assert_eq!(metrics.event_count("symlink_not_followed"), 3);
        // A symlink put where the scan found a file: O_NOFOLLOW refuses it.
        let e = m.open(&dir.path().join("logs/pod.log")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        assert!(m.open(&dir.path().join("logs/real.log")).is_ok());
    }

    #[test]
    fn a_symlink_re_pointed_into_proc_after_the_scan_is_refused_at_open() {
        let (dir, m, metrics) = linked(true);
        let pod = dir.path().join("logs/pod.log");
        assert!(m.scan().contains(&pod));
        std::fs::remove_file(&pod).unwrap();
        std::os::unix::fs::symlink("/proc/self/status", &pod).unwrap();
        let e = m.open(&pod).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        assert_eq!(metrics.event_count("symlink_special_target"), 3);
    }

    #[test]
    fn special_directories() {
        for (path, special) in [
            ("/proc/1/environ", true),
            ("/sys/kernel/notes", true),
            ("/dev/shm/x.log", true),
            ("/dev", true),
            ("/procfs/x", false),
            ("/var/log/proc/x", false),
            ("/var/log/syslog", false),
        ] {
            assert_eq!(is_special(Path::new(path)), special, "{path}");
        }
    }
}
