//! Finding the files that match the include and exclude globs.

use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// The compiled globs of one file source.
#[derive(Debug)]
pub struct Matcher {
    include: GlobSet,
    /// Matched against the whole path.
    exclude_path: GlobSet,
    /// Patterns without a `/`, matched against the file name.
    exclude_name: GlobSet,
    roots: Vec<Root>,
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
        })
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
            walk(&root.dir, root.depth, &mut |p| {
                if self.matches(p) {
                    found.push(p.to_path_buf());
                }
            });
        }
        found.sort();
        found.dedup();
        found
    }
}

fn walk(dir: &Path, depth: Option<usize>, f: &mut dyn FnMut(&Path)) {
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
            f(&path);
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
}
