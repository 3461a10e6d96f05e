//! What keeps a stream source bounded under hostile load: a budget for
//! partial frames over all its connections, a limit of connections per
//! peer address, and a minimum rate for a connection that holds a partial
//! frame (slowloris).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Bytes of partial frames held by all connections of one source.
pub(crate) struct Budget {
    max: usize,
    held: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Budget {
        Budget {
            max,
            held: AtomicUsize::new(0),
        }
    }

    pub(crate) fn share(&self) -> Held<'_> {
        Held {
            budget: self,
            mine: 0,
        }
    }
}

/// One connection's part of the [`Budget`]; released when dropped.
pub(crate) struct Held<'a> {
    budget: &'a Budget,
    mine: usize,
}

impl Held<'_> {
    /// Records that the connection now holds `bytes`; false when the
    /// source as a whole is over its budget and this connection holds
    /// part of it (it is the one to close).
    pub(crate) fn set(&mut self, bytes: usize) -> bool {
        let held = &self.budget.held;
        let total = if bytes >= self.mine {
            held.fetch_add(bytes - self.mine, Ordering::AcqRel) + (bytes - self.mine)
        } else {
            held.fetch_sub(self.mine - bytes, Ordering::AcqRel) - (self.mine - bytes)
        };
        self.mine = bytes;
        bytes == 0 || total <= self.budget.max
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.mine, Ordering::AcqRel);
    }
}

/// Connections open per peer address.
pub(crate) struct Addresses {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's claim on its address; released when dropped.
pub(crate) struct AddressSlot(Arc<Addresses>, IpAddr);

impl Addresses {
    pub(crate) fn new(max: usize) -> Arc<Addresses> {
        Arc::new(Addresses {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A claim for one more connection from `ip`, unless it has `max`.
    pub(crate) fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// The minimum-rate rule: a connection that holds a partial frame at the
/// end of a window in which it sent fewer than `bytes_per_second` times
/// the window's seconds is closed. Whole lines, however slow, never are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MinRate {
    pub(crate) bytes_per_second: u64,
    pub(crate) window: Duration,
}

/// One connection's count for [`MinRate`].
pub(crate) struct Rate {
    rule: MinRate,
    bytes: u64,
    pub(crate) window_end: Instant,
}

impl Rate {
    pub(crate) fn new(rule: MinRate) -> Rate {
        Rate {
            rule,
            bytes: 0,
            window_end: Instant::now() + rule.window,
        }
    }

    pub(crate) fn add(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// After the connection waited on a full channel (not reading, so the
    /// sender could not send): a window that ended meanwhile is not the
    /// sender's to answer for, so a new one starts now. A window still
    /// running is kept, so a trickler cannot reset it by being read.
    pub(crate) fn after_wait(&mut self, now: Instant) {
        if now >= self.window_end {
            self.bytes = 0;
            self.window_end = now + self.rule.window;
        }
    }

    /// At the end of a window: whether the connection trickles (holds a
    /// partial frame and sent too little); starts the next window.
    pub(crate) fn trickles(&mut self, holding_partial: bool) -> bool {
        let wanted = self.rule.bytes_per_second * self.rule.window.as_millis() as u64 / 1000;
        let slow = holding_partial && self.bytes < wanted.max(1);
        self.bytes = 0;
        self.window_end = Instant::now() + self.rule.window;
        slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_that_goes_over_the_budget_is_refused() {
        let budget = Budget::new(100);
        let mut a = budget.share();
        let mut b = budget.share();
        assert!(a.set(60));
        assert!(!b.set(50), "60 + 50 > 100");
        assert!(b.set(0), "holding nothing is always fine");
        assert!(b.set(40));
        drop(a);
        assert!(b.set(100), "a's share is released");
    }

    #[test]
    fn addresses_are_limited_each_and_released() {
        let addresses = Addresses::new(2);
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = addresses.claim(x).unwrap();
        let _second = addresses.claim(x).unwrap();
        assert!(addresses.claim(x).is_none());
        assert!(addresses.claim(y).is_some(), "another address has room");
        drop(first);
        assert!(addresses.claim(x).is_some());
    }

    #[test]
    fn only_a_slow_connection_holding_a_partial_frame_trickles() {
        let rule = MinRate {
            bytes_per_second: 10,
            window: Duration::from_secs(2),
        };
        let mut rate = Rate::new(rule);
        rate.add(5);
        assert!(rate.trickles(true), "5 bytes in 2 s with a partial frame");
        rate.add(5);
        assert!(!rate.trickles(false), "slow, but only whole lines");
        rate.add(20);
        assert!(!rate.trickles(true), "fast enough");
    }

    #[test]
    fn a_window_that_ended_while_the_connection_waited_on_the_channel_is_not_judged() {
        let rule = MinRate {
            bytes_per_second: 10,
            window: Duration::from_secs(2),
        };
        let mut rate = Rate::new(rule);
        let start = rate.window_end - rule.window;
        rate.add(5);
        // The send blocked for 3 s: the window ended while nothing was read.
        rate.after_wait(start + Duration::from_secs(3));
        assert_eq!(rate.window_end, start + Duration::from_secs(5));
        rate.add(20);
        assert!(!rate.trickles(true), "20 bytes in the new window");
        // A send that did not outlast the window leaves it as it was.
        let end = rate.window_end;
        rate.after_wait(end - Duration::from_millis(1));
        assert_eq!(rate.window_end, end);
    }
}
