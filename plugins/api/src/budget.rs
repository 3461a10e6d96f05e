//! A bounded budget of bytes shared by the readers of one source, for
//! their read buffers: the file source's files and the socket sources'
//! connections take a lease for each read and give it back when the last
//! record cut from that read is dropped (delivered).
//!
//! A request larger than the whole budget is granted only when nothing
//! else is held, so a read can always happen eventually and the bound
//! holds otherwise. The gauge (`tailrace_file_buffer_bytes`,
//! `tailrace_source_buffer_bytes`) shows what is held.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// The budget (cheap to clone: the clones share it).
#[derive(Clone)]
pub struct ByteBudget {
    inner: Arc<Inner>,
}

struct Inner {
    max_bytes: usize,
    held: AtomicUsize,
    gauge: Gauge,
    /// Async takers waiting for a lease to come back; woken only when
    /// some are.
    waiting: AtomicUsize,
    freed: Notify,
}

/// Bytes taken from the budget, given back on drop.
pub struct Lease {
    budget: Arc<Inner>,
    bytes: usize,
}

impl Lease {
    /// Gives back what is over `bytes` (a short read keeps what it read).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes >= self.bytes {
            return;
        }
        let back = self.bytes - bytes;
        self.bytes = bytes;
        let inner = &self.budget;
        let left = inner.held.fetch_sub(back, Ordering::SeqCst) - back;
        inner.gauge.set(left as i64);
        if inner.waiting.load(Ordering::SeqCst) > 0 {
            inner.freed.notify_waiters();
        }
    }

    /// `data` as shared bytes that hold this lease until the last slice
    /// of them is dropped. A buffer that holds more than its length gives
    /// the spare capacity back first when it is less than half used.
    pub fn into_bytes(mut self, mut data: Vec<u8>) -> Bytes {
        if data.len() < data.capacity() / 2 {
            data.shrink_to_fit();
            self.shrink_to(data.capacity());
        }
        Bytes::from_owner(Leased { data, _lease: self })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

/// A filled buffer and its lease: dropping it frees both.
struct Leased {
    data: Vec<u8>,
    _lease: Lease,
}

impl AsRef<[u8]> for Leased {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl ByteBudget {
    /// A budget of `max_bytes`, shown (from 0) in `gauge`.
    pub fn new(max_bytes: usize, gauge: Gauge) -> ByteBudget {
        gauge.set(0);
        ByteBudget {
            inner: Arc::new(Inner {
                max_bytes,
                held: AtomicUsize::new(0),
                gauge,
                waiting: AtomicUsize::new(0),
                freed: Notify::new(),
            }),
        }
    }

    /// Bytes held now by leases not yet dropped.
    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::SeqCst)
    }

    /// A lease of `bytes` if the budget has room for it now.
    pub fn try_lease(&self, bytes: usize) -> Option<Lease> {
        let inner = &self.inner;
        let mut held = inner.held.load(Ordering::SeqCst);
        loop {
            if held != 0 && held + bytes > inner.max_bytes {
                return None;
            }
            match inner.held.compare_exchange_weak(
                held,
                held + bytes,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => held = now,
            }
        }
        inner.gauge.set((held + bytes) as i64);
        Some(Lease {
            budget: inner.clone(),
            bytes,
        })
    }

    /// A lease of `bytes`, once the budget has room for it.
    pub async fn lease(&self, bytes: usize) -> Lease {
        if let Some(lease) = self.try_lease(bytes) {
            return lease;
        }
        let inner = &self.inner;
        loop {
            let mut freed = pin!(inner.freed.notified());
            freed.as_mut().enable();
            inner.waiting.fetch_add(1, Ordering::SeqCst);
            let lease = self.try_lease(bytes);
            if lease.is_none() {
                freed.await;
            }
            inner.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Some(lease) = lease.or_else(|| self.try_lease(bytes)) {
                return lease;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_never_holds_more_than_its_bound() {
        let gauge = Gauge::default();
        let budget = ByteBudget::new(10_000, gauge.clone());
        let mut kept = Vec::new();
        for _ in 0..100 {
            if let Some(lease) = budget.try_lease(3_000) {
                kept.push(lease);
            }
            assert!(budget.held() <= 10_000);
            assert_eq!(gauge.get() as usize, budget.held());
        }
        assert_eq!(kept.len(), 3, "three leases of 3,000 bytes fit in 10,000");
        drop(kept);
        assert_eq!(budget.held(), 0);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn bytes_keep_their_lease_until_the_last_slice_is_dropped() {
        let budget = ByteBudget::new(8_000, Gauge::default());
        let lease = budget.try_lease(4_000).unwrap();
        let whole = lease.into_bytes(vec![b'x'; 4_000]);
        let line = whole.slice(10..20);
        drop(whole);
        assert_eq!(budget.held(), 4_000);
        assert!(budget.try_lease(4_001).is_none());
        drop(line);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_buffer_less_than_half_used_gives_the_rest_back() {
        let budget = ByteBudget::new(8_000, Gauge::default());
        let lease = budget.try_lease(4_000).unwrap();
        let mut data = Vec::with_capacity(4_000);
        data.extend_from_slice(b"abc");
        let small = lease.into_bytes(data);
        assert!(
            budget.held() >= 3 && budget.held() < 2_000,
            "{}",
            budget.held()
        );
        drop(small);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn an_oversized_lease_is_granted_only_alone() {
        let budget = ByteBudget::new(1_000, Gauge::default());
        let big = budget.try_lease(5_000).unwrap();
        assert!(budget.try_lease(10).is_none());
        drop(big);
        assert!(budget.try_lease(10).is_some());
    }

    #[tokio::test]
    async fn an_async_lease_waits_until_bytes_come_back() {
        let budget = ByteBudget::new(5_000, Gauge::default());
        let first = budget.try_lease(4_000).unwrap();
        let waiter = budget.clone();
        let second = tokio::spawn(async move { waiter.lease(4_000).await.bytes });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "4,000 + 4,000 is over 5,000");
        drop(first);
        assert_eq!(second.await.unwrap(), 4_000);
    }
}
