//! The read buffers of one file source, from a shared bounded budget.
//!
//! A file holds a buffer only while it is read: each read takes a lease of
//! `read_buffer_bytes` (plus the unfinished line carried from the read
//! before) and the records cut from it are slices of that one buffer, so
//! the lease goes back when the last of them is dropped (delivered).
//! Between reads a file keeps only a copy of its unfinished line. So the
//! memory of a source does not grow with the number of files it tails:
//! when the budget is spent, reads wait for deliveries to give some back.
//! `tailrace_file_buffer_bytes{source}` shows what is held.

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tailrace_api::budget::ByteBudget;

/// The budget, shared by the files of one source (cheap to clone).
#[derive(Clone)]
pub struct BufferPool {
    budget: ByteBudget,
}

impl BufferPool {
    pub fn new(max_bytes: usize, gauge: Gauge) -> BufferPool {
        BufferPool {
            budget: ByteBudget::new(max_bytes, gauge),
        }
    }

    /// Bytes held now by buffers not yet dropped (the gauge shows it).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.budget.held()
    }

    /// Reads into a buffer of `carry` followed by up to `room` bytes that
    /// `read` fills (it returns how many), or `None` without calling
    /// `read` when the budget has no room for it (see
    /// [`ByteBudget::try_lease`] for a request over the whole budget).
    pub fn read<E>(
        &self,
        carry: &[u8],
        room: usize,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Option<Result<Bytes, E>> {
        let want = carry.len() + room;
        let lease = self.budget.try_lease(want)?;
        let mut data = Vec::with_capacity(want);
        data.extend_from_slice(carry);
        data.resize(want, 0);
        let n = match read(&mut data[carry.len()..]) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        data.truncate(carry.len() + n);
        // A short read (a small or slow file) keeps what was read only.
        Some(Ok(lease.into_bytes(data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize) -> impl FnOnce(&mut [u8]) -> Result<usize, ()> {
        move |b: &mut [u8]| {
            let n = n.min(b.len());
            b[..n].fill(b'x');
            Ok(n)
        }
    }

    #[test]
    fn the_pool_never_holds_more_than_its_bound() {
        let gauge = Gauge::default();
        let pool = BufferPool::new(10_000, gauge.clone());
        let mut kept = Vec::new();
        let mut refused = 0;
        for _ in 0..100 {
            match pool.read(b"ab", 3_000, fill(3_000)) {
                Some(Ok(b)) => kept.push(b),
                Some(Err(())) => unreachable!(),
                None => refused += 1,
            }
            assert!(pool.held() <= 10_000);
            assert_eq!(gauge.get() as usize, pool.held());
        }
        assert_eq!(kept.len(), 3, "three leases of 3,002 bytes fit in 10,000");
        assert_eq!(refused, 97);
        assert_eq!(&kept[0][..3], b"abx");
        assert_eq!(kept[0].len(), 3_002);
    }

    #[test]
    fn a_slice_keeps_its_lease_until_the_last_one_is_dropped() {
        let gauge = Gauge::default();
        let pool = BufferPool::new(8_000, gauge.clone());
        let whole = pool.read(b"", 4_000, fill(4_000)).unwrap().unwrap();
        assert_eq!(whole.len(), 4_000);
        let line = whole.slice(10..20);
        drop(whole);
        assert_eq!(pool.held(), 4_000);
        assert!(pool.read(b"", 4_001, fill(1)).is_none());
        drop(line);
        assert_eq!(pool.held(), 0);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_short_read_gives_the_rest_of_its_lease_back() {
        let pool = BufferPool::new(8_000, Gauge::default());
        let small = pool.read(b"ab", 4_000, fill(10)).unwrap().unwrap();
        assert_eq!(&small[..], b"abxxxxxxxxxx");
        assert!(pool.held() >= 12 && pool.held() < 2_000, "{}", pool.held());
        drop(small);
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn an_oversized_read_goes_through_only_alone() {
        let pool = BufferPool::new(1_000, Gauge::default());
        let big = pool.read(b"", 5_000, fill(5_000)).unwrap().unwrap();
        assert!(pool.read(b"", 10, fill(10)).is_none());
        drop(big);
        assert!(pool.read(b"", 10, fill(10)).is_some());
    }

    #[test]
    fn a_failed_read_gives_its_lease_back() {
        let pool = BufferPool::new(1_000, Gauge::default());
        let r = pool.read(b"", 500, |_| Err::<usize, _>("eio"));
        assert!(matches!(r, Some(Err("eio"))));
        assert_eq!(pool.held(), 0);
    }
}
