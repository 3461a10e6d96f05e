//! The ordering policy (`spool.ordering`) in one place: every decision the
//! sink makes differently under `strict` and `relaxed`.
//!
//! `strict`: no record of a source reaches Kafka before an older one that
//! went to the spool. `relaxed`: new events go first; the spool follows.

use std::time::Duration;

use crate::config::SpoolOrdering;

impl SpoolOrdering {
    /// New events go to the spool, behind what it holds, while it holds
    /// anything (`spool_holds` is asked only when that matters).
    pub(crate) fn behind_spool(self, spool_holds: impl FnOnce() -> bool) -> bool {
        self == SpoolOrdering::Strict && spool_holds()
    }

    /// Once a record of a batch waits for the spool, the rest of the batch
    /// follows it there.
    pub(crate) fn rest_follows_to_spool(self) -> bool {
        self == SpoolOrdering::Strict
    }

    /// A record failed and may yet succeed (or librdkafka's queue stayed
    /// full): what librdkafka holds was sent after it and would overtake
    /// it, so it is taken back (a fail-over) and spooled behind it.
    pub(crate) fn fail_over_behind_failure(self) -> bool {
        self == SpoolOrdering::Strict
    }

    /// Replay hands out no later entry while one in flight holds records
    /// to try again, and the rest of an entry waits with a record refused
    /// at the send.
    pub(crate) fn replay_waits_for_failed(self) -> bool {
        self == SpoolOrdering::Strict
    }

    /// After a fail-over, replay waits while new events go first: until
    /// Kafka acknowledges one (`since_fail_over` is then `None`), or for
    /// `wait`.
    pub(crate) fn new_events_first(
        self,
        since_fail_over: Option<Duration>,
        wait: Duration,
    ) -> bool {
        self == SpoolOrdering::Relaxed && since_fail_over.is_some_and(|d| d < wait)
    }
}
