//! The scene most tests start from, set up once here instead of in a
//! `setup()` per test file.

use tempfile::TempDir;

use crate::{Broker, Config};

/// A broker with `topic` (one partition, so a file's order is kept), a temp
/// dir with an empty `logs/`, and [`Config::file_to_kafka`] pointing at
/// both, for the test to change what its scene needs before it starts the
/// agent.
pub fn scene(topic: &str) -> (Broker, TempDir, Config) {
    let broker = Broker::start();
    broker.create_topic(topic, 1);
    let dir = tempfile::tempdir().expect("cannot create a temp dir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", logs.display()));
    let config = Config::file_to_kafka(dir.path(), &broker.bootstrap(), topic);
    (broker, dir, config)
}
