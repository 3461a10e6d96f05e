//! [`Broker`]: a tansu process on a free local port, owned by one test.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;
use tempfile::TempDir;

use crate::process;

/// How long a broker may take to accept connections and answer metadata.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The tansu binary: `$TANSU_BIN`, else `$TAILRACE_CACHE/tansu/bin/tansu`,
/// else `$HOME/.cache/tailrace/tansu/bin/tansu` (where `tests/install-broker`
/// puts it).
pub fn tansu_bin() -> PathBuf {
    let path = match std::env::var_os("TANSU_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let cache = std::env::var_os("TAILRACE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let home = std::env::var_os("HOME").expect("HOME is not set");
                    Path::new(&home).join(".cache/tailrace")
                });
            cache.join("tansu/bin/tansu")
        }
    };
    assert!(
        path.is_file(),
        "no tansu broker at {} (run tests/install-broker, or set TANSU_BIN)",
        path.display()
    );
    path
}

/// A port that was free a moment ago: bind port 0, read it, release it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("bound socket has an address")
        .port()
}

#[derive(Clone, Copy, Debug)]
enum Storage {
    /// `memory://tansu/`: everything is lost when the process ends.
    Memory,
    /// `sqlite://broker.db` in the broker's working directory: kept across
    /// `stop` and `start_again`.
    Sqlite,
}

/// A tansu broker listening on 127.0.0.1. Its working directory is a temp
/// dir holding `broker.log` (stdout and stderr of every start) and, for a
/// persistent broker, its sqlite database. Dropping it kills the process.
pub struct Broker {
    port: u16,
    /// Set once SASL is required: the credentials the harness's own
    /// clients use (metadata, readiness).
    auth: Option<Vec<(String, String)>>,
    /// The port given to clients in metadata: `port`, or a proxy's.
    advertised_port: u16,
    storage: Storage,
    dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    /// A broker with in-memory storage on a free port.
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    /// A broker with in-memory storage on `port` (e.g. one an agent already
    /// points at).
    pub fn start_on(port: u16) -> Broker {
        Broker::launch(port, Storage::Memory)
    }

    /// A broker whose topics and records survive `stop` + `start_again`.
    pub fn start_persistent() -> Broker {
        Broker::launch(free_port(), Storage::Sqlite)
    }

    /// A broker with in-memory storage on `port` that tells clients, in
    /// metadata, to connect to `127.0.0.1:advertised_port` (a
    /// [`crate::Proxy`] in front of it), so that every connection after the
    /// bootstrap goes through the proxy too.
    pub fn start_behind(port: u16, advertised_port: u16) -> Broker {
        Broker::launch_advertising(port, advertised_port, Storage::Memory)
    }

    /// [`Broker::start_behind`] with sqlite storage: a broker behind a
    /// [`crate::Proxy`] that can also be killed and started again.
    pub fn start_persistent_behind(port: u16, advertised_port: u16) -> Broker {
        Broker::launch_advertising(port, advertised_port, Storage::Sqlite)
    }

    fn launch(port: u16, storage: Storage) -> Broker {
        Broker::launch_advertising(port, port, storage)
    }

    fn launch_advertising(port: u16, advertised_port: u16, storage: Storage) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("tansu-")
            .tempdir()
            .expect("cannot create a temp dir");
        let mut broker = Broker {
            port,
            auth: None,
            advertised_port,
            storage,
            dir,
            child: None,
        };
        broker.start_again();
        broker
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The value for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client properties the harness logs in with, if SASL is required.
    pub fn client_auth(&self) -> &[(String, String)] {
        self.auth.as_deref().unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// A broker with sqlite storage on a free port that advertises
    /// `advertised_port` (a TLS terminator in front of it; `None`: its own
    /// port), holds `topics`
    /// and the SCRAM `users` (name, password, `scram256` | `scram512`), and
    /// then requires SASL authentication. The harness's own clients log in
    /// as the first user with SCRAM-SHA-512 over plaintext to `port`.
    pub fn start_authenticating(
        advertised_port: Option<u16>,
        users: &[(&str, &str, &str)],
        topics: &[(&str, i32)],
    ) -> Broker {
        let port = free_port();
        let mut broker =
            Broker::launch_advertising(port, advertised_port.unwrap_or(port), Storage::Sqlite);
        for (name, password, mechanism) in users {
            let output = Command::new(tansu_bin())
                .current_dir(broker.dir.path())
                .args(["user", "create", "--broker"])
                .arg(broker.url())
                .args(["--mechanism", mechanism, name, password])
                .output()
                .expect("cannot run tansu user create");
            assert!(
                output.status.success(),
                "tansu user create {name} failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        for (topic, partitions) in topics {
            broker.create_topic(topic, *partitions);
        }
        broker.stop();
        let (name, password, _) = users
            .iter()
            .find(|(_, _, m)| *m == "scram512")
            .expect("a scram512 user for the harness");
        broker.auth = Some(vec![
            ("security.protocol".into(), "SASL_PLAINTEXT".into()),
            ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
            ("sasl.username".into(), name.to_string()),
            ("sasl.password".into(), password.to_string()),
        ]);
        broker.start_again();
        broker
    }

    /// Creates a topic and waits until metadata shows all its partitions
    /// with a leader.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let output = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args(["topic", "create", name])
            .arg("--broker")
            .arg(self.url())
            .arg("--partitions")
            .arg(partitions.to_string())
            .output()
            .expect("cannot run tansu topic create");
        assert!(
            output.status.success(),
            "tansu topic create {name} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let ready = crate::wait_until(START_TIMEOUT, || {
            self.topic_partitions(name).is_some_and(|n| n == partitions)
        });
        assert!(
            ready,
            "topic {name} with {partitions} partitions did not appear in metadata"
        );
    }

    /// Partitions of `topic` that have a leader, per metadata; `None` when
    /// the topic is unknown or metadata cannot be fetched.
    pub fn topic_partitions(&self, topic: &str) -> Option<i32> {
        let client = metadata_client(&self.bootstrap(), self.auth.as_deref());
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()?;
        let topic = metadata.topics().iter().find(|t| t.name() == topic)?;
        if topic.error().is_some() {
            return None;
        }
        let led = topic
            .partitions()
            .iter()
            .filter(|p| p.error().is_none() && p.leader() >= 0);
        i32::try_from(led.count()).ok().filter(|n| *n > 0)
    }

    /// Stops the broker: SIGTERM, then SIGKILL if it has not exited after
    /// 10 s. A persistent broker keeps its data for `start_again`.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().expect("waitpid failed").is_none() {
            process::signal(&child, libc::SIGTERM);
            if process::wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                process::kill_and_reap(&mut child);
            }
        }
    }

    /// SIGKILL: the broker gets no chance to finish anything. A persistent
    /// broker keeps what it had committed for `start_again`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
    }

    /// Starts the broker (again) on the same port and waits until it answers
    /// metadata requests.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "broker on port {} is already running",
            self.port
        );
        let storage = match self.storage {
            Storage::Memory => "memory://tansu/",
            Storage::Sqlite => "sqlite://broker.db",
        };
        let mut cmd = Command::new(tansu_bin());
        cmd.current_dir(self.dir.path())
            // tansu reads these from the environment too; keep the test's
            // environment out of the broker's configuration.
            .env_remove("CLUSTER_ID")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .args(["broker", "--storage-engine", storage])
            .arg("--listener-url")
            .arg(self.url())
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.advertised_port));
        if self.auth.is_some() {
            cmd.arg("--authentication");
        }
        self.child = Some(process::spawn_logged(&mut cmd, &self.log_path()));
        self.wait_ready();
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) {
        let addr = ("127.0.0.1", self.port);
        let ready = crate::wait_until(START_TIMEOUT, || {
            let child = self.child.as_mut().expect("broker was started");
            if let Some(status) = child.try_wait().expect("waitpid failed") {
                panic!(
                    "tansu exited during start ({status}); port {} taken?\n{}",
                    self.port,
                    process::tail(&self.log_path(), 30)
                );
            }
            TcpStream::connect(addr).is_ok()
                && metadata_client(&self.bootstrap(), self.auth.as_deref())
                    .fetch_metadata(None, Duration::from_secs(2))
                    .is_ok_and(|m| !m.brokers().is_empty())
        });
        assert!(
            ready,
            "tansu did not answer metadata on port {} within {START_TIMEOUT:?}\n{}",
            self.port,
            process::tail(&self.log_path(), 30)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- tansu on port {} ({}), last lines of its log ----\n{}\n----",
                self.port,
                self.log_path().display(),
                process::tail(&self.log_path(), 40)
            );
        }
    }
}

fn metadata_client(bootstrap: &str, auth: Option<&[(String, String)]>) -> BaseConsumer {
    let mut config = ClientConfig::new();
    for (k, v) in auth.unwrap_or_default() {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "2000")
        .create()
        .expect("cannot create a metadata client")
}
