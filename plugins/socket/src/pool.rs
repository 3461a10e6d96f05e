//! The read buffers of one stream source's connections, from a shared
//! bounded budget (`read_pool_bytes`).
//!
//! A connection holds a buffer only while a read of it is ready: each poll
//! of a read takes a lease of `read_buffer_bytes` (plus the partial frame
//! carried from the read before) and reads into it; a read that would wait
//! gives buffer and lease back at once, so an idle connection holds
//! nothing but a copy of its partial frame (bounded by
//! `max_partial_bytes`). The records cut from a read are slices of its
//! buffer, so the lease goes back when the last of them is delivered.
//! When the budget is spent, reads wait until a lease comes back: a full
//! pool slows the senders like a full channel does.
//! `tailrace_source_buffer_bytes{source}` shows what is held.
//!
//! The budget itself is `tailrace_api::budget`, shared with the file
//! source; this is how a socket reads into it.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::Poll;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tailrace_api::budget::ByteBudget;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The budget, shared by the connections of one source (cheap to clone).
#[derive(Clone)]
pub(crate) struct ReadPool {
    budget: ByteBudget,
}

impl ReadPool {
    pub(crate) fn new(max_bytes: usize, gauge: Gauge) -> ReadPool {
        ReadPool {
            budget: ByteBudget::new(max_bytes, gauge),
        }
    }

    /// Bytes held now by buffers not yet dropped (the gauge shows it).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.budget.held()
    }

    /// Reads from `stream` into a buffer of `carry` followed by up to
    /// `room` bytes; the read's length is the buffer's less `carry`'s (0:
    /// the stream ended). While the read waits for the stream, or for the
    /// pool to have room, no buffer is held. Cancel-safe: dropped before
    /// it is ready, it has read nothing.
    pub(crate) async fn read<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        carry: &[u8],
        room: usize,
    ) -> io::Result<Bytes> {
        let want = carry.len() + room;
        loop {
            let mut granted = Some(self.budget.lease(want).await);
            let read = std::future::poll_fn(|cx| {
                let Some(lease) = granted.take().or_else(|| self.budget.try_lease(want)) else {
                    return Poll::Ready(None);
                };
                let mut data = Vec::with_capacity(want);
                data.extend_from_slice(carry);
                // Pending: the buffer and the lease are dropped here.
                match pin!(stream.read_buf(&mut data)).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    // A short read (a slow or small sender) keeps what
                    // was read only.
                    Poll::Ready(Ok(_)) => Poll::Ready(Some(Ok(lease.into_bytes(data)))),
                }
            })
            .await;
            match read {
                Some(r) => return r,
                // The pool filled between the wakeup and the read.
                None => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_read_that_waits_holds_no_buffer() {
        let gauge = Gauge::default();
        let pool = ReadPool::new(10_000, gauge.clone());
        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = pool.clone();
        let read = tokio::spawn(async move { reader.read(&mut server, b"ab", 4_000).await });
        // The read is parked on an empty stream: nothing is held.
        tokio::task::yield_now().await;
        assert_eq!(pool.held(), 0);
        client.write_all(b"cd").await.unwrap();
        let chunk = read.await.unwrap().unwrap();
        assert_eq!(&chunk[..], b"abcd");
        assert!(
            pool.held() > 0 && pool.held() < 2_000,
            "short read: {}",
            pool.held()
        );
        assert_eq!(gauge.get() as usize, pool.held());
        drop(chunk);
        assert_eq!(pool.held(), 0);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_full_pool_makes_reads_wait_until_a_lease_comes_back() {
        let pool = ReadPool::new(5_000, Gauge::default());
        let (mut client, mut server) = tokio::io::duplex(8_192);
        client.write_all(&[b'x'; 8_000]).await.unwrap();
        let first = pool.read(&mut server, b"", 4_000).await.unwrap();
        assert_eq!(first.len(), 4_000);
        let slice = first.slice(0..10);
        drop(first);
        let reader = pool.clone();
        let second = tokio::spawn(async move { reader.read(&mut server, b"", 4_000).await });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "4,000 + 4,000 is over 5,000");
        assert_eq!(pool.held(), 4_000);
        drop(slice);
        let second = second.await.unwrap().unwrap();
        assert_eq!(second.len(), 4_000);
        assert_eq!(pool.held(), 4_000);
    }

    #[tokio::test]
    async fn an_oversized_read_goes_through_only_alone_and_errors_give_the_lease_back() {
        let pool = ReadPool::new(1_000, Gauge::default());
        let (mut client, mut server) = tokio::io::duplex(8_192);
        client.write_all(&[b'x'; 5_000]).await.unwrap();
        let big = pool.read(&mut server, b"", 5_000).await.unwrap();
        assert_eq!(pool.held(), 5_000);
        assert!(pool.budget.try_lease(10).is_none());
        drop(big);
        drop(client);
        let end = pool.read(&mut server, b"carry", 100).await.unwrap();
        assert_eq!(&end[..], b"carry", "the stream ended: nothing read");
        drop(end);
        assert_eq!(pool.held(), 0);
    }
}
