//! A tracked file's life, and the descriptor budget its open state needs.
//!
//! [`Life`] is one enum: a file is named by an include glob ([`Life::Live`]),
//! renamed away or copied by a rotation ([`Life::Rotated`]), or unlinked
//! ([`Life::Deleted`]). A live or rotated file is either open or parked
//! ([`Handle`]); a deleted one is always open, because its descriptor is the
//! only way left to its bytes. An open file holds a [`Permit`] of the
//! source's [`Budget`] (`max_open_files`) beside its descriptor, so a file
//! can be open only with a permit, and dropping the file returns it: the
//! count of open files cannot drift from the files that are open.
//!
//! Generic over the descriptor type so the model test can use a fake one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

/// Where a tracked file is in its life, without what each state holds (for
/// logs and comparisons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Live,
    Rotated,
    Deleted,
}

/// At most `max` descriptors open at once, counted in a gauge.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<BudgetInner>,
}

struct BudgetInner {
    open: AtomicUsize,
    max: usize,
    gauge: Gauge,
}

/// One open descriptor's share of the budget; returned when dropped.
pub struct Permit {
    budget: Arc<BudgetInner>,
}

impl Budget {
    pub fn new(max: usize, gauge: Gauge) -> Budget {
        Budget {
            inner: Arc::new(BudgetInner {
                open: AtomicUsize::new(0),
                max,
                gauge,
            }),
        }
    }

    /// A permit, if fewer than `max` are out.
    pub fn try_acquire(&self) -> Option<Permit> {
        let b = &self.inner;
        // One thread acquires (the source's); the atomic is for Send.
        let open = b.open.load(Ordering::Relaxed);
        if open >= b.max {
            return None;
        }
        b.open.store(open + 1, Ordering::Relaxed);
        b.gauge.set((open + 1) as i64);
        Some(Permit {
            budget: self.inner.clone(),
        })
    }

    /// Whether every permit is out.
    pub fn exhausted(&self) -> bool {
        self.open() >= self.inner.max
    }

    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.inner.max
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let open = self.budget.open.fetch_sub(1, Ordering::Relaxed) - 1;
        self.budget.gauge.set(open as i64);
    }
}

/// An open file: its descriptor and the permit that allows it.
pub struct Open<F> {
    pub file: F,
    /// The last read found nothing more.
    pub at_eof: bool,
    _permit: Permit,
}

impl<F> Open<F> {
    pub fn new(file: F, permit: Permit) -> Open<F> {
        Open {
            file,
            at_eof: false,
            _permit: permit,
        }
    }
}

/// A live or rotated file: open, or parked (its descriptor closed to stay
/// within the budget, its state kept elsewhere).
pub enum Handle<F> {
    Open(Open<F>),
    Parked {
        /// It has more to read: opened again when a permit is free.
        wants_read: bool,
        /// Waiting for a permit (counted once per wait).
        waiting: bool,
    },
}

pub enum Life<F> {
    /// Named by an include glob.
    Live(Handle<F>),
    /// Renamed away by a rotation, or the copy `copytruncate` made; still
    /// has a name, found again by inode among the rotations of its origin.
    Rotated(Handle<F>),
    /// Unlinked: read to its end through the descriptor, then closed.
    Deleted(Open<F>),
}

impl<F> Handle<F> {
    fn parked(wants_read: bool) -> Handle<F> {
        Handle::Parked {
            wants_read,
            waiting: false,
        }
    }
}

impl<F> Life<F> {
    /// A file just found, parked until it is given a descriptor.
    pub fn found(place: Place) -> Life<F> {
        match place {
            Place::Rotated => Life::Rotated(Handle::parked(true)),
            _ => Life::Live(Handle::parked(true)),
        }
    }

    pub fn place(&self) -> Place {
        match self {
            Life::Live(_) => Place::Live,
            Life::Rotated(_) => Place::Rotated,
            Life::Deleted(_) => Place::Deleted,
        }
    }

    pub fn open(&self) -> Option<&Open<F>> {
        match self {
            Life::Live(Handle::Open(o)) | Life::Rotated(Handle::Open(o)) | Life::Deleted(o) => {
                Some(o)
            }
            _ => None,
        }
    }

    pub fn open_mut(&mut self) -> Option<&mut Open<F>> {
        match self {
            Life::Live(Handle::Open(o)) | Life::Rotated(Handle::Open(o)) | Life::Deleted(o) => {
                Some(o)
            }
            _ => None,
        }
    }

    pub fn file(&self) -> Option<&F> {
        self.open().map(|o| &o.file)
    }

    pub fn is_open(&self) -> bool {
        self.open().is_some()
    }

    /// Open, and the last read found nothing more.
    pub fn at_eof(&self) -> bool {
        self.open().is_some_and(|o| o.at_eof)
    }

    fn handle_mut(&mut self) -> Option<&mut Handle<F>> {
        match self {
            Life::Live(h) | Life::Rotated(h) => Some(h),
            Life::Deleted(_) => None,
        }
    }

    /// Parked with more to read.
    pub fn wants_read(&self) -> bool {
        matches!(
            self,
            Life::Live(Handle::Parked {
                wants_read: true,
                ..
            }) | Life::Rotated(Handle::Parked {
                wants_read: true,
                ..
            })
        )
    }

    /// A parked file has (`true`) or may not have (`false`) more to read.
    pub fn set_wants_read(&mut self, more: bool) {
        if let Some(Handle::Parked { wants_read, .. }) = self.handle_mut() {
            *wants_read = more;
        }
    }

    /// A parked file starts waiting for a permit: true the first time.
    pub fn start_waiting(&mut self) -> bool {
        match self.handle_mut() {
            Some(Handle::Parked {
                wants_read,
                waiting,
            }) => {
                *wants_read = true;
                !std::mem::replace(waiting, true)
            }
            _ => false,
        }
    }

    fn take(&mut self) -> Life<F> {
        std::mem::replace(self, Life::Live(Handle::parked(false)))
    }

    /// Gives a parked file its descriptor (an open file keeps the one it
    /// has; the new one is dropped, returning its permit).
    pub fn attach(&mut self, open: Open<F>) {
        if let Some(h @ Handle::Parked { .. }) = self.handle_mut() {
            *h = Handle::Open(open);
        }
    }

    /// Closes a live or rotated file's descriptor, returning its permit. A
    /// deleted file is never parked: its descriptor is all that is left.
    pub fn park(&mut self) {
        if let Some(h @ Handle::Open(_)) = self.handle_mut() {
            *h = Handle::parked(false);
        }
    }

    /// Named by an include glob again.
    pub fn named(&mut self) {
        *self = match self.take() {
            Life::Live(h) | Life::Rotated(h) => Life::Live(h),
            Life::Deleted(o) => Life::Live(Handle::Open(o)),
        };
    }

    /// No include glob names it any more, and it still has a name.
    pub fn rotated(&mut self) {
        *self = match self.take() {
            Life::Live(h) | Life::Rotated(h) => Life::Rotated(h),
            deleted => deleted,
        };
    }

    /// Unlinked. Only an open file can be read on once deleted; returns
    /// whether it is now `Deleted` (false if it was parked).
    pub fn deleted(&mut self) -> bool {
        *self = match self.take() {
            Life::Live(Handle::Open(o)) | Life::Rotated(Handle::Open(o)) | Life::Deleted(o) => {
                Life::Deleted(o)
            }
            parked => parked,
        };
        matches!(self, Life::Deleted(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_and_returned_when_the_file_is_dropped() {
        let gauge = Gauge::default();
        let budget = Budget::new(2, gauge.clone());
        let a = Open::new("a", budget.try_acquire().unwrap());
        let mut b: Life<&str> = Life::found(Place::Live);
        b.attach(Open::new("b", budget.try_acquire().unwrap()));
        assert!(budget.try_acquire().is_none());
        assert!(budget.exhausted());
        assert_eq!(gauge.get(), 2);
        b.park();
        assert!(!b.is_open());
        assert_eq!(budget.open(), 1);
        drop(a);
        assert_eq!((budget.open(), gauge.get()), (0, 0));
    }

    #[test]
    fn a_deleted_file_is_open_and_cannot_be_parked() {
        let budget = Budget::new(1, Gauge::default());
        let mut f: Life<()> = Life::found(Place::Live);
        assert!(!f.deleted(), "a parked file cannot be read once deleted");
        f.attach(Open::new((), budget.try_acquire().unwrap()));
        f.rotated();
        assert_eq!(f.place(), Place::Rotated);
        assert!(f.deleted());
        f.park();
        assert!(f.is_open());
        assert_eq!(budget.open(), 1);
        drop(f);
        assert_eq!(budget.open(), 0);
    }
}
