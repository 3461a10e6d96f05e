//! The file source: tails the files that match its globs and sends their
//! lines, resuming after a restart from positions that Kafka acknowledged.
//!
//! One thread per source reads every file it tracks in large chunks, splits
//! lines without copying them, and sends one batch per chunk. A file's
//! position is saved only when every batch before it was acknowledged. A
//! file is followed through rename and copytruncate rotation, truncation
//! and deletion, while the agent runs and across its restarts (`table`,
//! the core; `tailer`, the thread around it; `identity`, `recovery`).
//!
//! This crate must never depend on another plugin, nor know how positions
//! are stored (it sees the `CheckpointStore` trait) or where lines go (it
//! sees channels).

mod checkpoint;
mod format;
mod identity;
mod life;
mod metrics;
#[cfg(test)]
mod model_tests;
mod multiline;
mod pool;
mod recovery;
mod scan;
mod split;
mod table;
mod tailer;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
pub use tailrace_api::StartAt;
use tailrace_api::{
    BuildError, ComponentTask, ConfigIssue, MaxLineBytes, SourceConfig, SourceContext,
};

pub use checkpoint::{describe, CheckpointInfo};
pub use format::Format;
pub use metrics::{declare_metrics, FileMetrics};
pub use multiline::MultilineConfig;
pub use split::{LinePolicy, Splitter};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Globs of the files to read; `**` crosses directories, `*` does not.
    pub include: Vec<String>,
    /// Globs of files not to read; a pattern without `/` matches the file
    /// name, one with `/` the whole path.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// For files found at startup that have no saved position. Files that
    /// appear while running are always read from their beginning.
    #[serde(default)]
    pub start_at: StartAt,
    /// How often files are checked for new data when no change
    /// notification arrives (the polling fallback).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How often the globs are matched again, besides on notifications.
    #[serde(default = "default_scan_interval_ms")]
    pub scan_interval_ms: u64,
    /// Bytes read from a file at a time; also the largest batch. Default:
    /// 256 KiB for raw lines, 384 KiB for container formats (whose
    /// wrapping adds some 40 bytes a line: as many records per read).
    #[serde(default)]
    pub read_buffer_bytes: Option<usize>,
    /// The most bytes all of the source's read buffers hold at once, in
    /// files being read and in batches not yet delivered; a file between
    /// reads holds none, so memory does not grow with the number of
    /// files. Reads wait when it is spent. Default: 32 MiB.
    #[serde(default = "default_read_pool_bytes")]
    pub read_pool_bytes: usize,
    /// Longer lines are split or truncated (`max_line_policy`). Default:
    /// 1 MiB, or less when a sink this source feeds cannot deliver that
    /// (a kafka sink: `message.max.bytes` less the record's overhead).
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
    /// What the config loader lowered the default to.
    #[serde(skip)]
    pub fitted_max_line_bytes: Option<usize>,
    #[serde(default)]
    pub max_line_policy: LinePolicy,
    /// Bytes at the start of a file that identify it with its inode.
    #[serde(default = "default_fingerprint_bytes")]
    pub fingerprint_bytes: usize,
    /// A rotated file read to its end, whose lines were all acknowledged
    /// and that has not grown for this long, has its descriptor closed; it
    /// is still watched, and read again if it grows. Also how long an
    /// unterminated last line of a rotated or deleted file waits for its
    /// newline. A deleted file is closed as soon as it was read to its end
    /// and acknowledged.
    #[serde(default = "default_rotated_idle_ms")]
    pub rotated_idle_ms: u64,
    /// How often acknowledged positions are written to the store.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Descriptors the source may hold. Idle files are closed (and opened
    /// again when they grow) to stay below it; when every descriptor is
    /// busy, files wait, counted in `tailrace_file_events_total{event="open_limit"}`.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// The saved position of a file that can no longer be found is
    /// forgotten after this long.
    #[serde(default = "default_expire_after_ms")]
    pub expire_after_ms: u64,
    /// Use inotify to notice new and changed files at once; false: only
    /// the polling every `scan_interval_ms` (file systems without inotify).
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Joins lines into multiline events (stack traces).
    #[serde(default)]
    pub multiline: Option<MultilineConfig>,
    /// How lines are written: `raw`, or a container runtime's wrapping
    /// (`cri`, `docker`, `auto` to recognise either per file).
    #[serde(default)]
    pub format: Format,
    /// Whether a symlink that matches the globs is read (its target). On by
    /// default: /var/log/containers holds nothing but symlinks (kubelet's,
    /// into /var/log/pods). Either way a symlink into /proc, /sys or /dev
    /// is refused and counted, and symlinked directories are not walked;
    /// off, files are opened with O_NOFOLLOW.
    #[serde(default = "default_follow_symlinks")]
    pub follow_symlinks: bool,
}

fn default_poll_interval_ms() -> u64 {
    250
}
fn default_scan_interval_ms() -> u64 {
    1000
}
fn default_read_pool_bytes() -> usize {
    32 * 1024 * 1024
}

fn default_read_buffer_bytes(format: Format) -> usize {
    match format {
        Format::Raw => 256 * 1024,
        Format::Cri | Format::Docker | Format::Auto => 384 * 1024,
    }
}
fn default_max_line_bytes() -> usize {
    1024 * 1024
}
fn default_fingerprint_bytes() -> usize {
    1024
}
fn default_rotated_idle_ms() -> u64 {
    5000
}
fn default_checkpoint_interval_ms() -> u64 {
    200
}
fn default_max_open_files() -> usize {
    1024
}
fn default_expire_after_ms() -> u64 {
    24 * 60 * 60 * 1000
}
fn default_watch() -> bool {
    true
}
fn default_follow_symlinks() -> bool {
    true
}

impl FileSourceConfig {
    fn read_buffer_bytes(&self) -> usize {
        self.read_buffer_bytes
            .unwrap_or_else(|| default_read_buffer_bytes(self.format))
    }

    fn max_line(&self) -> MaxLineBytes {
        MaxLineBytes::of(
            self.max_line_bytes,
            self.fitted_max_line_bytes,
            default_max_line_bytes(),
        )
    }

    fn interval(ms: u64) -> Duration {
        Duration::from_millis(ms.max(1))
    }
}

impl SourceConfig for FileSourceConfig {
    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.include.is_empty() {
            issues.push(ConfigIssue::new(
                &["include"],
                "at least one include glob is required",
            ));
        }
        for (key, list) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = scan::glob(p) {
                    issues.push(ConfigIssue::new(
                        &[key, &i.to_string()],
                        format!("invalid glob {p:?}: {}", e.kind()),
                    ));
                }
            }
        }
        for (i, p) in self.include.iter().enumerate() {
            if !p.starts_with('/') {
                issues.push(ConfigIssue::new(
                    &["include", &i.to_string()],
                    format!("include glob {p:?} must be an absolute path (it would depend on the working directory)"),
                ));
            }
        }
        let positive: [(&str, usize); 6] = [
            ("read_buffer_bytes", self.read_buffer_bytes()),
            ("read_pool_bytes", self.read_pool_bytes),
            ("max_line_bytes", self.max_line().bytes),
            ("poll_interval_ms", self.poll_interval_ms as usize),
            ("scan_interval_ms", self.scan_interval_ms as usize),
            ("max_open_files", self.max_open_files),
        ];
        for (key, v) in positive {
            if v == 0 {
                issues.push(ConfigIssue::new(
                    &[key],
                    format!("{key} must be greater than 0"),
                ));
            }
        }
        if let Some(Err(issue)) = self.multiline.as_ref().map(MultilineConfig::compile) {
            issues.push(issue);
        }
        if self.multiline.is_some() && self.format != Format::Raw {
            issues.push(ConfigIssue::new(
                &["multiline"],
                format!(
                    "multiline works on raw lines only, not with format {} (remove multiline or set format: raw)",
                    self.format.name()
                ),
            ));
        }
        issues
    }

    fn resources(&self) -> Vec<String> {
        Vec::new()
    }

    fn max_line_bytes(&self) -> Option<MaxLineBytes> {
        Some(self.max_line())
    }

    fn fit_max_line_bytes(&mut self, bytes: usize) {
        self.fitted_max_line_bytes = Some(bytes);
    }

    fn build(&self, cx: SourceContext) -> Result<ComponentTask, BuildError> {
        let matcher = scan::Matcher::new(&self.include, &self.exclude)
            .map_err(|(i, _, e)| BuildError(format!("invalid glob #{i}: {e}")))?
            .with_symlinks(
                self.follow_symlinks,
                &cx.name,
                crate::metrics::FileMetrics::of(&cx.name, &cx.metrics),
            );
        let multiline = match &self.multiline {
            Some(m) => Some(Arc::new(m.compile().map_err(|e| {
                BuildError(format!("{}: {}", e.path.join("."), e.message))
            })?)),
            None => None,
        };
        let settings = tailer::Settings {
            start_at: self.start_at,
            poll_interval: Self::interval(self.poll_interval_ms),
            scan_interval: Self::interval(self.scan_interval_ms),
            read_buffer_bytes: self.read_buffer_bytes().max(4096),
            read_pool_bytes: self.read_pool_bytes,
            max_line_bytes: self.max_line().bytes,
            max_line_policy: self.max_line_policy,
            fingerprint_bytes: self.fingerprint_bytes,
            rotated_idle: Duration::from_millis(self.rotated_idle_ms),
            checkpoint_interval: Self::interval(self.checkpoint_interval_ms),
            max_open_files: self.max_open_files.max(1),
            expire_after: Duration::from_millis(self.expire_after_ms),
            watch: self.watch,
            multiline,
            format: self.format,
            field_names: Default::default(),
        };
        tailer::spawn(cx, matcher, settings)
    }
}
