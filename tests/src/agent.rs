//! [`Agent`]: the real `tailrace run` process, plus the one-shot commands.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::Duration;

use crate::process;

/// The tailrace binary: `$TAILRACE_BIN`, else the one cargo built next to
/// this test executable (`target/<profile>/deps/<test>` ->
/// `target/<profile>/tailrace`).
pub fn tailrace_bin() -> PathBuf {
    let path = match std::env::var_os("TAILRACE_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let exe = std::env::current_exe().expect("cannot locate the test executable");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test executable is in target/<profile>/deps");
            profile_dir.join("tailrace")
        }
    };
    assert!(
        path.is_file(),
        "no tailrace binary at {} (run cargo build -p tailrace first, or set TAILRACE_BIN)",
        path.display()
    );
    path
}

/// A `tailrace` command, for tests that need to set its environment.
pub fn tailrace() -> Command {
    Command::new(tailrace_bin())
}

/// Runs `tailrace ARGS...` to completion (validate, checkpoints, --version).
pub fn run_tailrace<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tailrace().args(args).output().expect("cannot run tailrace")
}

/// The sum of the `events=N` fields of the lines of `log` containing
/// `message` (e.g. how many events the agent logged as spooled).
pub fn logged_events(log: &str, message: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|field| field.strip_prefix("events="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// A saved source position, as printed by `tailrace checkpoints`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub source: String,
    pub path: PathBuf,
    pub dev: u64,
    pub inode: u64,
    pub offset: u64,
}

/// One line of `tailrace spool stats`: what one tree of a sink's spool holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolUsage {
    pub entries: u64,
    pub events: u64,
    pub bytes: u64,
}

/// A running `tailrace run --config DIR/tailrace.yaml`, its stdout and
/// stderr appended to `DIR/agent.log`. Dropping it SIGKILLs the process; if
/// the test is panicking, the tail of the log is printed first.
pub struct Agent {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The admin endpoint's address, when the harness chose it.
    admin: Option<String>,
    /// Environment variables set for the agent's process.
    env: Vec<(String, String)>,
}

impl Agent {
    /// Writes `config_yaml` to `DIR/tailrace.yaml` and starts the agent.
    /// A config without a top-level `admin:` gets the admin endpoint on a
    /// free port, so agents of concurrent tests never share one.
    pub fn start(dir: &Path, config_yaml: &str) -> Agent {
        Agent::start_with_env(dir, config_yaml, &[])
    }

    /// [`Agent::start`] with environment variables for the agent's process.
    pub fn start_with_env(dir: &Path, config_yaml: &str, env: &[(&str, &str)]) -> Agent {
        let config = dir.join("tailrace.yaml");
        let mut yaml = config_yaml.to_string();
        let mut admin = None;
        if !yaml.lines().any(|l| l.starts_with("admin:")) {
            let address = format!("127.0.0.1:{}", crate::free_port());
            yaml.push_str(&format!("\nadmin: {{ address: \"{address}\" }}\n"));
            admin = Some(address);
        }
        std::fs::write(&config, yaml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let mut agent = Agent {
            config,
            log: dir.join("agent.log"),
            child: None,
            admin,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        agent.restart();
        agent
    }

    /// Starts the agent on a config the test wrote itself: a file or a
    /// directory (`--config DIR`), whose admin endpoint is at `admin`.
    pub fn start_config(dir: &Path, config: &Path, admin: &str) -> Agent {
        let mut agent = Agent {
            config: config.to_path_buf(),
            log: dir.join("agent.log"),
            child: None,
            admin: Some(admin.to_string()),
            env: Vec::new(),
        };
        agent.restart();
        agent
    }

    /// `host:port` of the admin endpoint the harness chose (see `start`).
    pub fn admin_address(&self) -> &str {
        self.admin
            .as_deref()
            .expect("the config named its own admin address")
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the agent logged, over all its runs.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines the agent logged, over all its runs.
    pub fn log_tail(&self, n: usize) -> String {
        process::tail(&self.log, n)
    }

    /// Clears the environment variables given at start, for the next
    /// `restart`.
    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    /// Starts the agent again with the same config; it must not be running.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "the agent is still running; stop it first"
        );
        let mut cmd = tailrace();
        cmd.arg("run").arg("--config").arg(&self.config);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(process::spawn_logged(&mut cmd, &self.log));
    }

    /// Whether the process is still running (false once it exited, or was
    /// killed or waited for).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("waitpid failed").is_none())
    }

    /// SIGKILL: the agent gets no chance to deliver or save anything.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the agent is not running");
        process::kill_and_reap(&mut child)
    }

    /// SIGHUP: asks the agent to reload its config file.
    pub fn reload(&self) {
        let child = self.child.as_ref().expect("the agent is not running");
        process::signal(child, libc::SIGHUP);
    }

    /// SIGHUP, then waits until the agent logged "config reloaded" (one
    /// more time than before); panics with the log's tail otherwise.
    pub fn reload_and_wait(&self) {
        let before = self.log().matches("config reloaded").count();
        self.reload();
        assert!(
            crate::wait_until(Duration::from_secs(30), || self
                .log()
                .matches("config reloaded")
                .count()
                > before),
            "no reload within 30 s:\n{}",
            self.log_tail(50)
        );
    }

    /// SIGSTOP: the agent runs no more (reads nothing) until [`Agent::resume`].
    pub fn pause(&self) {
        let child = self.child.as_ref().expect("the agent is not running");
        process::signal(child, libc::SIGSTOP);
    }

    /// SIGCONT, after [`Agent::pause`].
    pub fn resume(&self) {
        let child = self.child.as_ref().expect("the agent is not running");
        process::signal(child, libc::SIGCONT);
    }

    /// SIGTERM: asks for a clean shutdown; pair with [`Agent::wait_exit`].
    pub fn terminate(&mut self) {
        let child = self.child.as_ref().expect("the agent is not running");
        process::signal(child, libc::SIGTERM);
    }

    /// Waits for the agent to exit; panics (with its log) if it is still
    /// running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the agent is not running");
        let Some(status) = process::wait_timeout(child, timeout) else {
            panic!("tailrace still running {timeout:?} after it was asked to stop");
        };
        self.child = None;
        status
    }

    /// `tailrace checkpoints` with this agent's config; the agent must be
    /// stopped.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        assert!(
            self.child.is_none(),
            "stop the agent before reading its checkpoints"
        );
        let output = run_tailrace([
            OsStr::new("checkpoints"),
            OsStr::new("--config"),
            self.config.as_os_str(),
        ]);
        assert!(
            output.status.success(),
            "tailrace checkpoints failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).expect("tailrace checkpoints prints UTF-8");
        stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_checkpoint)
            .collect()
    }

    /// `tailrace spool ARGS... --config CONFIG`; the agent must be stopped.
    /// Returns the output whatever the exit status.
    pub fn spool(&self, args: &[&str]) -> Output {
        assert!(
            self.child.is_none(),
            "stop the agent before running tailrace spool"
        );
        let mut cmd = tailrace();
        cmd.arg("spool")
            .args(args)
            .arg("--config")
            .arg(&self.config);
        cmd.output().expect("cannot run tailrace spool")
    }

    /// The JSON lines `tailrace spool ARGS...` printed; panics unless it
    /// exited 0.
    pub fn spool_json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let output = self.spool(args);
        assert!(
            output.status.success(),
            "tailrace spool {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        json_lines(&output.stdout)
    }

    /// What `tailrace spool stats` says the `tree` (`spool`, `dead`,
    /// `corrupt`) of sink `sink` holds.
    pub fn spool_usage(&self, sink: &str, tree: &str) -> SpoolUsage {
        let stats = self.spool_json(&["stats"]);
        let line = stats
            .iter()
            .find(|v| v["sink"] == sink && v["tree"] == tree)
            .unwrap_or_else(|| panic!("no {tree} tree of sink {sink} in spool stats: {stats:?}"));
        let number = |key: &str| {
            line[key]
                .as_u64()
                .unwrap_or_else(|| panic!("spool stats has no integer {key:?}: {line}"))
        };
        SpoolUsage {
            entries: number("entries"),
            events: number("events"),
            bytes: number("bytes"),
        }
    }
}

/// Parses one JSON value per non-empty line.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- tailrace ({}), last lines of its log ----\n{}\n----",
                self.log.display(),
                self.log_tail(60)
            );
        }
    }
}

fn parse_checkpoint(line: &str) -> Checkpoint {
    let value: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("checkpoint line is not JSON ({e}): {line}"));
    let text = |key: &str| {
        value[key]
            .as_str()
            .unwrap_or_else(|| panic!("checkpoint has no string {key:?}: {line}"))
            .to_owned()
    };
    let number = |key: &str| {
        value[key]
            .as_u64()
            .unwrap_or_else(|| panic!("checkpoint has no integer {key:?}: {line}"))
    };
    Checkpoint {
        source: text("source"),
        path: PathBuf::from(text("path")),
        dev: number("dev"),
        inode: number("inode"),
        offset: number("offset"),
    }
}
