//! Sockets bound ahead of `build` ([`tailrace_api::SourceConfig::bind_early`]):
//! parked in a table of the process until the source built for the same
//! address takes them, or their guard is dropped (then they are closed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tailrace_api::EarlyBinding;
use tracing::info;

use crate::Transport;

pub(crate) enum Parked {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

static PARKED: Mutex<Vec<(u64, Transport, Parked)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

fn table() -> std::sync::MutexGuard<'static, Vec<(u64, Transport, Parked)>> {
    PARKED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes what it parked, if still there, when dropped.
struct Guard(u64);

impl Drop for Guard {
    fn drop(&mut self) {
        table().retain(|(id, _, _)| *id != self.0);
    }
}

/// Parks `socket` for `transport`; the guard keeps it parked.
pub(crate) fn park(transport: &Transport, socket: Parked) -> EarlyBinding {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    info!(address = ?transport, "bound ahead of the reload, before the old listener is released");
    table().push((id, transport.clone(), socket));
    EarlyBinding(Box::new(Guard(id)))
}

/// What was parked for `transport`, taken.
pub(crate) fn take(transport: &Transport) -> Option<Parked> {
    let mut table = table();
    let at = table.iter().position(|(_, t, _)| t == transport)?;
    Some(table.remove(at).2)
}
