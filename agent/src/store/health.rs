//! Whether the store can take writes now, and why not: free space on
//! `data_dir` below `min_free_bytes`, or a write that failed (sled makes
//! a failed write sticky: every later one fails until the database is
//! reopened).
//!
//! [`Health`] is the decision core and does no I/O: it is told what was
//! observed (free bytes, a failed write, a reopen that worked or not) and
//! answers what to do (refuse entries, reopen now, log now). The store's
//! watch thread feeds it and carries out its answers.

use std::time::{Duration, Instant};

/// How often the free space of `data_dir` is read.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The first wait before reopening a failed store; it doubles with each
/// reopen that fails, up to [`MAX_REOPEN_BACKOFF`].
pub const REOPEN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(10);
/// A state that lasts is logged again this often, with what it cost.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the store is refusing, for readiness and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Free space is below `min_free_bytes`: the spool takes no new entry.
    DiskLow {
        free_bytes: u64,
        min_free_bytes: u64,
    },
    /// A write failed; every operation is refused until a reopen works.
    Failing { error: String, reopens: u32 },
}

impl Problem {
    pub fn reason(&self, data_dir: &str) -> String {
        match self {
            Problem::DiskLow {
                free_bytes,
                min_free_bytes,
            } => format!(
                "data_dir {data_dir} has {free_bytes} bytes free, below min_free_bytes {min_free_bytes}: the spool takes no new entries until space is freed"
            ),
            Problem::Failing { error, reopens } => format!(
                "the store in {data_dir} failed a write ({error}); it is reopened with backoff ({reopens} reopens failed so far)"
            ),
        }
    }
}

/// A line the store should log now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Log {
    /// A problem began (or changed kind).
    Began(Problem),
    /// It lasts: `refused` operations were refused since the last line.
    Lasts { problem: Problem, refused: u64 },
    /// It is over, after `refused` refusals in all.
    Over { refused: u64 },
}

#[derive(Debug)]
struct Failing {
    error: String,
    reopens: u32,
    next_reopen: Instant,
    since: Instant,
}

/// The store's health, as decided from observations.
#[derive(Debug, Default)]
pub struct Health {
    /// The free space last read, and below what it counts as low.
    disk: Option<(u64, u64)>,
    failing: Option<Failing>,
    /// Operations refused since the last log line, and in this episode.
    refused_since_log: u64,
    refused_total: u64,
    /// The problem last logged and when.
    logged: Option<(Problem, Instant)>,
}

impl Health {
    /// Free space read on `data_dir`; `min_free_bytes` 0 turns the check off.
    pub fn observe_disk(&mut self, free_bytes: u64, min_free_bytes: u64) {
        self.disk = Some((free_bytes, min_free_bytes));
    }

    /// A write or flush failed: refuse everything until a reopen works.
    /// The first reopen is tried after [`REOPEN_BACKOFF`].
    pub fn write_failed(&mut self, error: String, now: Instant) {
        if self.failing.is_none() {
            self.failing = Some(Failing {
                error,
                reopens: 0,
                next_reopen: now + REOPEN_BACKOFF,
                since: now,
            });
        }
    }

    /// Whether a reopen is due now.
    pub fn reopen_due(&self, now: Instant) -> bool {
        self.failing.as_ref().is_some_and(|f| now >= f.next_reopen)
    }

    pub fn reopened(&mut self) {
        self.failing = None;
    }

    /// A reopen failed: the next waits twice as long.
    pub fn reopen_failed(&mut self, error: String, now: Instant) {
        if let Some(f) = &mut self.failing {
            f.reopens += 1;
            f.error = error;
            let backoff = REOPEN_BACKOFF
                .saturating_mul(1 << f.reopens.min(8))
                .min(MAX_REOPEN_BACKOFF);
            f.next_reopen = now + backoff;
        }
    }

    /// How long the store has been failing at `now`, once that is
    /// `give_up_after` or more (`None`: never give up) with at least one
    /// reopen tried and failed: recovery is not coming, and the agent
    /// should stop rather than retry for ever.
    pub fn given_up(&self, now: Instant, give_up_after: Option<Duration>) -> Option<Duration> {
        let f = self.failing.as_ref()?;
        let failing = now.saturating_duration_since(f.since);
        (f.reopens > 0 && failing >= give_up_after?).then_some(failing)
    }

    /// The error of the last failed write or reopen, while failing.
    pub fn failing_error(&self) -> Option<&str> {
        self.failing.as_ref().map(|f| f.error.as_str())
    }

    /// Whether the store is failing (every operation refused).
    pub fn is_failing(&self) -> bool {
        self.failing.is_some()
    }

    /// An operation was refused because of [`Health::problem`].
    pub fn refused(&mut self) {
        self.refused_since_log += 1;
        self.refused_total += 1;
    }

    /// What the store refuses now; a failure goes before low space.
    pub fn problem(&self) -> Option<Problem> {
        if let Some(f) = &self.failing {
            return Some(Problem::Failing {
                error: f.error.clone(),
                reopens: f.reopens,
            });
        }
        match self.disk {
            Some((free_bytes, min_free_bytes))
                if min_free_bytes > 0 && free_bytes < min_free_bytes =>
            {
                Some(Problem::DiskLow {
                    free_bytes,
                    min_free_bytes,
                })
            }
            _ => None,
        }
    }

    /// What to log now, if anything: a change at once, a lasting problem
    /// once per [`LOG_INTERVAL`] with its count.
    pub fn log(&mut self, now: Instant) -> Option<Log> {
        let problem = self.problem();
        let same_kind =
            |a: &Problem, b: &Problem| std::mem::discriminant(a) == std::mem::discriminant(b);
        let line = match (&problem, &self.logged) {
            (None, None) => return None,
            (None, Some(_)) => Log::Over {
                refused: std::mem::take(&mut self.refused_total),
            },
            (Some(p), Some((was, at))) if same_kind(p, was) => {
                if now.duration_since(*at) < LOG_INTERVAL {
                    return None;
                }
                Log::Lasts {
                    problem: p.clone(),
                    refused: self.refused_since_log,
                }
            }
            (Some(p), _) => Log::Began(p.clone()),
        };
        self.refused_since_log = 0;
        self.logged = problem.map(|p| (p, now));
        Some(line)
    }
}

/// The bytes an unprivileged writer can still use on the file system of
/// `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs writes only into the struct it is given, and `c` is
    // a valid NUL-terminated path for the duration of the call.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_space_is_a_problem_only_below_a_nonzero_minimum() {
        let mut h = Health::default();
        for (free, min, low) in [(10, 0, false), (10, 10, false), (9, 10, true), (0, 1, true)] {
            h.observe_disk(free, min);
            assert_eq!(h.problem().is_some(), low, "free {free}, min {min}");
        }
    }

    #[test]
    fn a_failure_goes_before_low_space_and_reopens_back_off() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.observe_disk(1, 10);
        h.write_failed("enospc".into(), t0);
        assert!(matches!(h.problem(), Some(Problem::Failing { .. })));
        assert!(!h.reopen_due(t0));
        assert!(h.reopen_due(t0 + REOPEN_BACKOFF));
        let mut at = t0 + REOPEN_BACKOFF;
        let mut waits = Vec::new();
        for _ in 0..8 {
            h.reopen_failed("still".into(), at);
            let mut wait = Duration::ZERO;
            while !h.reopen_due(at + wait) {
                wait += Duration::from_millis(100);
            }
            waits.push(wait);
            at += wait;
        }
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), MAX_REOPEN_BACKOFF);
        h.reopened();
        assert!(matches!(h.problem(), Some(Problem::DiskLow { .. })));
        h.observe_disk(10, 10);
        assert_eq!(h.problem(), None);
    }

    #[test]
    fn a_store_is_given_up_on_only_after_the_time_and_a_failed_reopen() {
        let t0 = Instant::now();
        let after = Some(Duration::from_secs(60));
        let mut h = Health::default();
        assert_eq!(h.given_up(t0, after), None, "not failing");
        h.write_failed("eio".into(), t0);
        assert_eq!(
            h.given_up(t0 + Duration::from_secs(61), after),
            None,
            "never reopened"
        );
        h.reopen_failed("eio again".into(), t0 + REOPEN_BACKOFF);
        assert_eq!(h.given_up(t0 + Duration::from_secs(59), after), None);
        assert_eq!(
            h.given_up(t0 + Duration::from_secs(60), after),
            Some(Duration::from_secs(60))
        );
        assert_eq!(h.failing_error(), Some("eio again"));
        assert_eq!(
            h.given_up(t0 + Duration::from_secs(3600), None),
            None,
            "0: for ever"
        );
        h.reopened();
        assert_eq!(
            h.given_up(t0 + Duration::from_secs(61), after),
            None,
            "recovered"
        );
    }

    #[test]
    fn logs_a_change_at_once_and_a_lasting_problem_once_per_interval_with_its_count() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.observe_disk(100, 10);
        assert_eq!(h.log(t0), None);
        h.observe_disk(1, 10);
        let low = Problem::DiskLow {
            free_bytes: 1,
            min_free_bytes: 10,
        };
        assert_eq!(h.log(t0), Some(Log::Began(low.clone())));
        h.refused();
        h.refused();
        assert_eq!(h.log(t0 + LOG_INTERVAL / 2), None);
        assert_eq!(
            h.log(t0 + LOG_INTERVAL),
            Some(Log::Lasts {
                problem: low,
                refused: 2
            })
        );
        h.refused();
        h.write_failed("eio".into(), t0 + LOG_INTERVAL);
        assert!(matches!(
            h.log(t0 + LOG_INTERVAL),
            Some(Log::Began(Problem::Failing { .. }))
        ));
        h.reopened();
        h.observe_disk(100, 10);
        assert_eq!(h.log(t0 + LOG_INTERVAL), Some(Log::Over { refused: 3 }));
        assert_eq!(h.log(t0 + LOG_INTERVAL * 3), None);
    }
}
