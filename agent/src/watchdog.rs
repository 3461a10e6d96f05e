//! systemd's watchdog: `WATCHDOG=1` every half of the interval systemd
//! asked for (`WATCHDOG_USEC`, for this process when `WATCHDOG_PID` says
//! so), but only while every component's loop has beaten its heartbeat
//! within that half. A component that stops beating is named in the log,
//! once, and the pings stop, so systemd kills and restarts the agent
//! (`WatchdogSec=` in the unit). A component blocked on backpressure still
//! beats (see `tailrace_api::heartbeat`); one that hangs does not.
//!
//! The watchdog is a thread of its own, so a stalled tokio runtime cannot
//! silence the log that says what is stuck; the runtime beats a heartbeat
//! of its own ("runtime") from a task.

use std::collections::BTreeSet;
use std::time::Duration;

use tailrace_api::heartbeat::Stale;
use tailrace_api::Heartbeats;
use tracing::{debug, error, info, warn};

use crate::notify::notify;

/// No component is called stuck for being silent for less than this, however
/// short the interval systemd asks for.
const MIN_SILENCE: Duration = Duration::from_secs(1);

/// The watchdog interval systemd asked this process for: `WATCHDOG_USEC`,
/// unless `WATCHDOG_PID` names another process. `None` when there is none.
pub fn requested(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else { return Ok(None) };
    if let Some(pid) = pid {
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| format!("WATCHDOG_PID={pid:?} is not a process id"))?;
        if pid != own_pid {
            return Ok(None);
        }
    }
    match usec.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(us) => Ok(Some(Duration::from_micros(us))),
        Err(_) => Err(format!(
            "WATCHDOG_USEC={usec:?} is not a number of microseconds"
        )),
    }
}

/// What the watchdog does after a look at the heartbeats. No I/O.
#[derive(Debug, Default)]
struct Watch {
    /// Components already reported stuck.
    stuck: BTreeSet<String>,
}

#[derive(Debug, PartialEq)]
struct Verdict {
    ping: bool,
    /// Stuck since the last look: log these.
    newly_stuck: Vec<Stale>,
    /// Beating again since the last look.
    recovered: Vec<String>,
}

impl Watch {
    fn observe(&mut self, stale: Vec<Stale>) -> Verdict {
        let now: BTreeSet<String> = stale.iter().map(|s| s.name.clone()).collect();
        let recovered = self.stuck.difference(&now).cloned().collect();
        let newly_stuck = stale
            .into_iter()
            .filter(|s| !self.stuck.contains(&s.name))
            .collect();
        let ping = now.is_empty();
        self.stuck = now;
        Verdict {
            ping,
            newly_stuck,
            recovered,
        }
    }
}

/// Starts the watchdog if systemd asked for one (from a tokio runtime).
pub fn start(heartbeats: &Heartbeats) {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    let interval = match requested(usec.as_deref(), pid.as_deref(), std::process::id()) {
        Ok(Some(interval)) => interval,
        Ok(None) => {
            debug!("no watchdog asked for (WATCHDOG_USEC unset, or for another process)");
            return;
        }
        Err(e) => {
            warn!(error = %e, "no watchdog: systemd's variables do not parse (check the unit's WatchdogSec=)");
            return;
        }
    };
    let every = interval / 2;
    let limit = every.max(MIN_SILENCE);
    let hub = heartbeats.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || watch(hub, every, limit))
    {
        warn!(error = %e, "no watchdog: cannot start its thread");
        return;
    }
    let runtime = heartbeats.register("runtime");
    let beat_every = limit / 4;
    tokio::spawn(async move {
        loop {
            runtime.beat();
            tokio::time::sleep(beat_every).await;
        }
    });
    info!(
        interval_ms = interval.as_millis() as u64,
        ping_every_ms = every.as_millis() as u64,
        stuck_after_ms = limit.as_millis() as u64,
        "watchdog started"
    );
}

fn watch(hub: Heartbeats, every: Duration, limit: Duration) {
    let mut watch = Watch::default();
    loop {
        let verdict = watch.observe(hub.stale(limit));
        for s in &verdict.newly_stuck {
            error!(
                component = %s.name,
                silent_ms = s.silent_for.as_millis() as u64,
                "component stuck: its loop has not run; no longer telling systemd the agent is alive, so it restarts the agent"
            );
        }
        for name in &verdict.recovered {
            info!(component = %name, "component beating again");
        }
        if verdict.ping {
            notify("WATCHDOG=1");
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_ours_only_when_the_pid_is() {
        let check = |usec: Option<&str>, pid: Option<&str>| requested(usec, pid, 42);
        assert_eq!(check(None, None), Ok(None));
        assert_eq!(
            check(Some("30000000"), None),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            check(Some("30000000"), Some("42")),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(check(Some("30000000"), Some("41")), Ok(None));
        assert_eq!(check(Some("0"), None), Ok(None));
        assert!(check(Some("30s"), None)
            .unwrap_err()
            .contains("WATCHDOG_USEC"));
        assert!(check(Some("1"), Some("x"))
            .unwrap_err()
            .contains("WATCHDOG_PID"));
    }

    fn stale(name: &str) -> Stale {
        Stale {
            name: name.into(),
            silent_for: Duration::from_secs(20),
        }
    }

    #[test]
    fn a_stuck_component_stops_the_pings_and_is_named_once() {
        let mut w = Watch::default();
        let v = w.observe(vec![]);
        assert!(v.ping && v.newly_stuck.is_empty() && v.recovered.is_empty());
        let v = w.observe(vec![stale("sink kafka")]);
        assert!(!v.ping);
        assert_eq!(v.newly_stuck, [stale("sink kafka")]);
        let v = w.observe(vec![stale("sink kafka"), stale("source app")]);
        assert!(!v.ping);
        assert_eq!(
            v.newly_stuck,
            [stale("source app")],
            "sink kafka was named already"
        );
        let v = w.observe(vec![stale("source app")]);
        assert!(!v.ping);
        assert_eq!(v.recovered, ["sink kafka"]);
        let v = w.observe(vec![]);
        assert!(v.ping);
        assert_eq!(v.recovered, ["source app"]);
    }
}
