//! The end-to-end test harness of tailrace: it runs the real `tailrace`
//! binary against a real Kafka-protocol broker (tansu) and reads back what
//! arrived with a real consumer (the librdkafka that the rdkafka crate builds).
//!
//! - [`Broker`] starts tansu on a free port, creates topics, stops and restarts it.
//! - [`Agent`] writes a config, spawns `tailrace run`, kills, terminates, restarts it.
//! - [`Proxy`] forwards TCP between the agent and the broker and can cut
//!   and restore the connection.
//! - [`sasl_proxy::SaslProxy`] terminates SASL/OAUTHBEARER in front of a
//!   plaintext tansu; [`sasl_proxy::TokenEndpoint`] is a fake OIDC endpoint.
//! - [`scene`] starts a broker with a topic and makes a temp dir, and
//!   gives the config over both, for a test to change.
//! - [`Consumer`] assigns every partition of a topic from the beginning and
//!   accumulates what it reads.
//! - [`SeqLines`] writes fixed-length lines carrying sequence numbers and
//!   checks what arrived against what was written ([`Report`]); a
//!   [`Writer`] keeps appending them from a thread. They and the typed
//!   config builder ([`config::Config`]) live in `tailrace-testkit`, which
//!   the plugin tests share, and are re-exported here.
//!
//! The harness never assumes a running broker and never sleeps in place of a
//! condition it can poll ([`wait_until`]). Every child process it starts is
//! killed when its handle is dropped; when a test panics, the handles print
//! the tail of the child's log so the failure explains itself.
//!
//! This crate must never depend on the daemon's crates: it tests the binary
//! from the outside, through its CLI, its files and the broker.

mod agent;
mod broker;
mod consumer;
pub mod http;
pub mod journal;
pub mod paced;
mod process;
mod proxy;
pub mod rng;
pub mod rotation;
pub mod sasl_proxy;
mod scene;
pub mod secure;
pub mod sockets;
pub mod tmpfs;

pub use agent::{
    json_lines, logged_events, run_tailrace, tailrace, tailrace_bin, Agent, Checkpoint, SpoolUsage,
};
pub use broker::{free_port, tansu_bin, Broker};
pub use consumer::{Consumer, Record};
pub use proxy::Proxy;
pub use scene::scene;
pub use tailrace_testkit::{
    config, seq_of, size_knob, Arrivals, Config, Report, SeqLines, Writer, LINE_LEN,
};

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds or `timeout` has passed; returns
/// whether it held. Use it instead of a sleep wherever a condition exists.
#[must_use]
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
