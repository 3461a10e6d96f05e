//! The `blackhole` sink: takes every batch from its channel, counts it as
//! delivered and acknowledges it at once, and keeps nothing. For measuring
//! a source, the interceptors and the channel without a broker.
//!
//! It must never be mistaken for delivery: what it takes is gone, and file
//! positions move past it.

use serde::Deserialize;
use tailrace_api::{BuildError, ComponentTask, SinkConfig, SinkContext};

/// `type: blackhole`: no settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {}

impl SinkConfig for BlackholeSinkConfig {
    fn build(&self, cx: SinkContext) -> Result<ComponentTask, BuildError> {
        cx.run_on_thread(|_| Ok(()))
    }
}
