//! Heartbeats: how the watchdog knows that every component's loop still
//! runs.
//!
//! Each thread and task of a component holds a [`Heartbeat`], a timestamp
//! in one atomic, and beats it once per loop iteration (and while it waits
//! on a full channel: a component held back by backpressure is alive). A
//! task that waits for the outside world (a socket read, an accept) marks
//! itself [`Heartbeat::idle`] first: waiting for a client is not a hang. The
//! daemon's watchdog asks the hub ([`Heartbeats::stale`]) which heartbeats
//! have not beaten for too long, and stops telling systemd that the agent is
//! alive while any has not.
//!
//! A beat is one clock read and one relaxed store: cheap enough for every
//! loop iteration, never per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How often a component beats while it waits on a full channel.
pub const WAIT_BEAT: Duration = Duration::from_millis(200);

/// The timestamp of a heartbeat waiting for the outside world.
const IDLE: u64 = u64::MAX;

/// Milliseconds since the first heartbeat of the process, plus one (so no
/// beat is at zero).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

struct Beat {
    name: Arc<str>,
    last_ms: AtomicU64,
}

/// Every registered heartbeat. Cloning shares the hub.
#[derive(Clone, Default)]
pub struct Heartbeats {
    beats: Arc<Mutex<Vec<Weak<Beat>>>>,
}

/// A heartbeat that has not beaten for longer than asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// "sink kafka", "source net connection 127.0.0.1:50112".
    pub name: String,
    pub silent_for: Duration,
}

impl Heartbeats {
    pub fn new() -> Heartbeats {
        Heartbeats::default()
    }

    /// A new heartbeat named `name`, watched from its first beat until it
    /// and its clones are dropped. Until then it is idle: a component built
    /// but not yet started (a reload builds new groups while it stops the
    /// changed ones) is not silent.
    pub fn register(&self, name: impl Into<Arc<str>>) -> Heartbeat {
        let beat = Arc::new(Beat {
            name: name.into(),
            last_ms: AtomicU64::new(IDLE),
        });
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        beats.retain(|b| b.strong_count() > 0);
        beats.push(Arc::downgrade(&beat));
        Heartbeat {
            beat,
            hub: Some(self.clone()),
        }
    }

    /// The heartbeats, not idle, that have not beaten for more than
    /// `limit`, longest silent first.
    pub fn stale(&self, limit: Duration) -> Vec<Stale> {
        let now = now_ms();
        let limit_ms = limit.as_millis() as u64;
        let mut stale: Vec<Stale> = self
            .beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|b| {
                let silent = silent_ms(b.last_ms.load(Ordering::Relaxed), now)?;
                (silent > limit_ms).then(|| Stale {
                    name: b.name.to_string(),
                    silent_for: Duration::from_millis(silent),
                })
            })
            .collect();
        stale.sort_by_key(|s| std::cmp::Reverse(s.silent_for));
        stale
    }
}

/// How long a heartbeat last beaten at `last` has been silent at `now`;
/// `None` while it is idle.
fn silent_ms(last: u64, now: u64) -> Option<u64> {
    (last != IDLE).then(|| now.saturating_sub(last))
}

/// One thread's or task's heartbeat. Clones share the timestamp.
#[derive(Clone)]
pub struct Heartbeat {
    beat: Arc<Beat>,
    /// Where the heartbeats of this component's tasks are registered.
    hub: Option<Heartbeats>,
}

impl Heartbeat {
    /// A heartbeat nobody watches, for tests and tools.
    pub fn none() -> Heartbeat {
        Heartbeat {
            beat: Arc::new(Beat {
                name: "unwatched".into(),
                last_ms: AtomicU64::new(now_ms()),
            }),
            hub: None,
        }
    }

    /// The loop made progress.
    #[inline]
    pub fn beat(&self) {
        #[cfg(debug_assertions)]
        fault::hang_if_asked(&self.beat.name);
        self.beat.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The loop is about to wait for the outside world (a client's next
    /// line, a new connection) for as long as that takes; the next
    /// [`Heartbeat::beat`] ends the wait.
    #[inline]
    pub fn idle(&self) {
        self.beat.last_ms.store(IDLE, Ordering::Relaxed);
    }

    /// The heartbeat of a task of the same component ("connection
    /// 127.0.0.1:50112"), watched while the task holds it.
    pub fn task(&self, what: &str) -> Heartbeat {
        let name = format!("{} {what}", self.beat.name);
        match &self.hub {
            Some(hub) => hub.register(name),
            None => Heartbeat::none(),
        }
    }

    pub fn name(&self) -> &str {
        &self.beat.name
    }
}

/// `TAILRACE_FAULT_HANG=WHO` (debug builds only): the loop of every
/// component whose heartbeat's name starts with WHO (`sink`, `source`,
/// `sink kafka`, `source app`) hangs at its next beat, for ever; with
/// `TAILRACE_FAULT_HANG_WHEN=PATH`, only once PATH exists. For the
/// watchdog's test: a hung component must stop the pings.
#[cfg(debug_assertions)]
pub mod fault {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Duration;

    pub const HANG: &str = "TAILRACE_FAULT_HANG";
    pub const HANG_WHEN: &str = "TAILRACE_FAULT_HANG_WHEN";

    struct Hang {
        who: String,
        when: Option<PathBuf>,
    }

    fn asked() -> Option<&'static Hang> {
        static ASKED: OnceLock<Option<Hang>> = OnceLock::new();
        ASKED
            .get_or_init(|| {
                let who = std::env::var(HANG).ok().filter(|w| !w.is_empty())?;
                let when = std::env::var_os(HANG_WHEN).map(PathBuf::from);
                Some(Hang { who, when })
            })
            .as_ref()
    }

    pub(super) fn hang_if_asked(name: &str) {
        let Some(hang) = asked() else { return };
        if !name.starts_with(hang.who.as_str()) || hang.when.as_ref().is_some_and(|p| !p.exists()) {
            return;
        }
        tracing::warn!(component = %name, "fault hook {HANG}: this loop hangs now");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_never_silent_and_a_beat_ends_it() {
        assert_eq!(silent_ms(IDLE, 10_000), None);
        assert_eq!(silent_ms(4_000, 10_000), Some(6_000));
        assert_eq!(silent_ms(10_001, 10_000), Some(0));
    }

    #[test]
    fn a_silent_heartbeat_is_stale_and_a_dropped_one_is_forgotten() {
        let hub = Heartbeats::new();
        let sink = hub.register("sink kafka");
        let conn = hub.register("source net").task("connection 127.0.0.1:1");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(hub.stale(Duration::from_millis(20)), [], "not beaten yet");
        sink.beat();
        conn.beat();
        std::thread::sleep(Duration::from_millis(30));
        sink.beat();
        let stale = hub.stale(Duration::from_millis(20));
        assert_eq!(
            stale.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["source net connection 127.0.0.1:1"],
            "the source itself was dropped, the sink beat: {stale:?}"
        );
        assert!(stale[0].silent_for >= Duration::from_millis(30));
        conn.idle();
        assert_eq!(hub.stale(Duration::from_millis(20)), []);
        conn.beat();
        drop(conn);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            hub.stale(Duration::from_millis(20))
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["sink kafka"]
        );
    }

    #[test]
    fn unwatched_tasks_stay_unwatched() {
        let hb = Heartbeat::none().task("connection x");
        assert!(hb.hub.is_none());
        hb.beat();
    }
}
