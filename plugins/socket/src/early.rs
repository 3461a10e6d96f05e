//! Sockets bound ahead of `build` ([`tailrace_api::SourceConfig::bind_early`]):
//! parked in a table of the process until the source built for the same
//! address takes them, or their guard is dropped (then they are closed).
//!
//! A reload that changes a source but keeps its address cannot bind that
//! address while the old source listens on it. So every tcp and udp
//! source also lists its socket here while it runs ([`listening`]), and
//! binding early for an address a running source holds parks a duplicate
//! of that source's socket (the same socket, another descriptor): the old
//! source stops, the new one takes the duplicate, and the listening socket
//! never closes in between. A connection is never refused meanwhile; it
//! waits in the backlog, and a datagram waits in the receive buffer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tailrace_api::EarlyBinding;
use tracing::info;

use crate::Transport;

pub(crate) enum Parked {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Parked {
    /// Another descriptor of the same socket.
    pub(crate) fn try_clone(&self) -> std::io::Result<Parked> {
        Ok(match self {
            Parked::Tcp(l) => Parked::Tcp(l.try_clone()?),
            Parked::Udp(s) => Parked::Udp(s.try_clone()?),
        })
    }
}

/// Sockets by address, each under an id its guard removes it by.
struct Table(Mutex<Vec<(u64, Transport, Parked)>>);

/// Sockets bound ahead of a build, until taken.
static PARKED: Table = Table(Mutex::new(Vec::new()));
/// A duplicate of every running tcp and udp source's socket.
static LISTENING: Table = Table(Mutex::new(Vec::new()));
static NEXT: AtomicU64 = AtomicU64::new(0);

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Transport, Parked)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `socket` for `transport`; the guard removes it when dropped,
    /// if it is still there.
    fn add(&'static self, transport: &Transport, socket: Parked) -> Guard {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, transport.clone(), socket));
        Guard(self, id)
    }
}

/// Removes what it added to its table, if still there, when dropped.
pub(crate) struct Guard(&'static Table, u64);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.lock().retain(|(id, _, _)| *id != self.1);
    }
}

/// Parks `socket` for `transport` (bound now, or `handed_over` from the
/// running source it replaces); the guard keeps it parked.
pub(crate) fn park(transport: &Transport, socket: Parked, handed_over: bool) -> EarlyBinding {
    if handed_over {
        info!(address = ?transport, "the changed source takes the running one's listening socket over: no connection is refused during the reload");
    } else {
        info!(address = ?transport, "bound ahead of the reload, before the old listener is released");
    }
    EarlyBinding(Box::new(PARKED.add(transport, socket)))
}

/// What was parked for `transport`, taken.
pub(crate) fn take(transport: &Transport) -> Option<Parked> {
    let mut table = PARKED.lock();
    let at = table.iter().position(|(_, t, _)| t == transport)?;
    Some(table.remove(at).2)
}

/// Lists `socket` (a duplicate descriptor of a running source's socket)
/// for `transport` while the guard lives.
pub(crate) fn listening(transport: &Transport, socket: Parked) -> Guard {
    LISTENING.add(transport, socket)
}

/// Another descriptor of the socket a running source listens on for
/// `transport` (to park for the source that replaces it); `None` if no
/// running source does.
pub(crate) fn duplicate(transport: &Transport) -> Option<Parked> {
    let table = LISTENING.lock();
    let (_, _, socket) = table.iter().find(|(_, t, _)| t == transport)?;
    socket.try_clone().ok()
}
