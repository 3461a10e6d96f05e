//! Interceptors: what shapes records on their way from a source to its
//! channels (Flume's word). They work on whole batches, in place, and
//! allocate only when they change an event.

use std::fmt::Debug;
use std::sync::Arc;

use crate::{Batch, BuildError, ConfigIssue};

pub trait Interceptor: Send + Sync + Debug {
    /// Shapes a batch in place: adds fields, removes records. Removed
    /// records are counted as filtered and their acknowledgement completed
    /// by the caller.
    fn intercept(&self, batch: &mut Batch);
}

pub trait InterceptorConfig: Send + Sync + Debug {
    /// Checks the config (compiles its patterns) without touching the system.
    fn validate(&self) -> Vec<ConfigIssue> {
        Vec::new()
    }

    fn build(&self) -> Result<Box<dyn Interceptor>, BuildError>;
}

/// A source's interceptors, in order.
pub type Interceptors = Arc<[Box<dyn Interceptor>]>;
