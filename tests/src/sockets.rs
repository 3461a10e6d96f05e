//! Helpers for the socket-source tests: the agent's own counters, random bytes, and a test-owned rsyslogd.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

/// A sample from the agent's `/metrics` (0 when absent), `name` with its
/// labels: `tailrace_source_events_total{source="net"}`.
pub fn metric(admin: &str, name: &str) -> f64 {
    let response = crate::http::get(admin, "/metrics")
        .unwrap_or_else(|e| panic!("cannot scrape {admin}: {e}"));
    assert_eq!(response.status, 200, "{}", response.body);
    crate::http::sample(&response.body, name).unwrap_or(0.0)
}

/// `n` pseudo-random bytes (xorshift), the same for the same seed.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An rsyslogd of the test's own, in a temp dir: it takes messages on a
/// unix socket (`input_socket`) and forwards them with the given
/// `omfwd` actions. Killed when dropped.
pub struct Rsyslog {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Rsyslog {
    /// `actions` are rsyslog `action(...)` statements.
    pub fn start(actions: &[String]) -> Rsyslog {
        Rsyslog::with_config(&format!(
            "module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
             input(type=\"imuxsock\" Socket=\"$DIR/in.sock\")\n{}\n",
            actions.join("\n")
        ))
    }

    /// An rsyslogd with `config` (modules, inputs, actions; `$DIR` stands
    /// for its own directory) after its `global(workDirectory=...)`. It
    /// creates `$DIR/in.sock` when `config` has that input; otherwise
    /// it is waited for by its pid file.
    pub fn with_config(config: &str) -> Rsyslog {
        let dir = tempfile::Builder::new()
            .prefix("rsyslog-")
            .tempdir()
            .expect("cannot create a temp dir");
        let d = dir.path().display().to_string();
        let conf = format!(
            "global(workDirectory=\"{d}\")\n{}\n",
            config.replace("$DIR", &d)
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("cannot write rsyslog.conf");
        let mut cmd = Command::new("rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"));
        let child = crate::process::spawn_logged(&mut cmd, &dir.path().join("rsyslog.log"));
        let rsyslog = Rsyslog {
            dir,
            child: Some(child),
        };
        let ready = if config.contains("$DIR/in.sock") {
            rsyslog.input_socket()
        } else {
            rsyslog.dir.path().join("rsyslog.pid")
        };
        assert!(
            crate::wait_until(Duration::from_secs(10), || ready.exists()),
            "rsyslogd did not create {}: {}",
            ready.display(),
            crate::process::tail(&rsyslog.dir.path().join("rsyslog.log"), 20)
        );
        rsyslog
    }

    /// Its log (rsyslogd's own stderr and stdout).
    pub fn log(&self) -> String {
        crate::process::tail(&self.dir.path().join("rsyslog.log"), 50)
    }

    pub fn input_socket(&self) -> PathBuf {
        self.dir.path().join("in.sock")
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::process::kill_and_reap(&mut child);
        }
    }
}
