//! Whether a component is ready, and if not, why; read by `/ready`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One component's readiness. Cheap to read; set on state changes only.
#[derive(Clone)]
pub struct Readiness(Arc<Inner>);

struct Inner {
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Readiness {
    pub fn ready() -> Readiness {
        Readiness(Arc::new(Inner {
            ready: AtomicBool::new(true),
            reason: Mutex::new(String::new()),
        }))
    }

    pub fn not_ready(reason: impl Into<String>) -> Readiness {
        Readiness(Arc::new(Inner {
            ready: AtomicBool::new(false),
            reason: Mutex::new(reason.into()),
        }))
    }

    pub fn set_ready(&self) {
        self.0.ready.store(true, Ordering::Release);
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.0.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.into();
        self.0.ready.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// `None` when ready, else the reason.
    pub fn problem(&self) -> Option<String> {
        (!self.is_ready()).then(|| {
            self.0
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }
}
