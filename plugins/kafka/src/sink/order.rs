//! The sink's policy in one place: every decision it makes differently
//! under `spool.ordering: strict` or `relaxed`, and with a durable input
//! (a disk channel) or not.
//!
//! `strict`: no record of a source reaches Kafka before an older one that
//! went to the spool. `relaxed`: new events go first; the spool follows.
//! A durable input is its own retry store: what Kafka did not acknowledge
//! stays in the channel's log and is read again in log order, so it never
//! goes to the spool and order holds whatever `spool.ordering` says.

use std::time::Duration;

use crate::config::SpoolOrdering;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    ordering: SpoolOrdering,
    durable: bool,
}

impl Policy {
    pub(crate) fn new(ordering: SpoolOrdering, durable_input: bool) -> Policy {
        Policy {
            ordering,
            durable: durable_input,
        }
    }

    fn strict(self) -> bool {
        self.ordering == SpoolOrdering::Strict
    }

    /// What is not delivered (it failed, its queue stayed full, the grace
    /// period ended, it waits to be dead-lettered) stays in the input's
    /// log, its batch unacknowledged, rather than going to the spool: one
    /// copy, not two.
    pub(crate) fn leaves_undelivered_in_input(self) -> bool {
        self.durable
    }

    /// New events go to the spool, behind what it holds, while it holds
    /// anything (`spool_holds` is asked only when that matters). Never
    /// with a durable input: the spool holds none of its records.
    pub(crate) fn behind_spool(self, spool_holds: impl FnOnce() -> bool) -> bool {
        !self.durable && self.strict() && spool_holds()
    }

    /// Once a record of a batch waits for the spool, the rest of the batch
    /// follows it there.
    pub(crate) fn rest_follows_to_spool(self) -> bool {
        self.strict()
    }

    /// A record failed and may yet succeed (or librdkafka's queue stayed
    /// full): what librdkafka holds was sent after it and would overtake
    /// it, so it is taken back (a fail-over). Strict order spools it
    /// behind the failure; a durable input always takes back, since the
    /// log sends it again in order.
    pub(crate) fn takes_back_on_failure(self) -> bool {
        self.durable || self.strict()
    }

    /// Replay hands out no later entry while one in flight holds records
    /// to try again, and the rest of an entry waits with a record refused
    /// at the send.
    pub(crate) fn replay_waits_for_failed(self) -> bool {
        self.strict()
    }

    /// After a fail-over, replay waits while new events go first: until
    /// Kafka acknowledges one (`since_fail_over` is then `None`), or for
    /// `wait`.
    pub(crate) fn new_events_first(
        self,
        since_fail_over: Option<Duration>,
        wait: Duration,
    ) -> bool {
        !self.strict() && since_fail_over.is_some_and(|d| d < wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_input_takes_back_and_never_waits_behind_the_spool() {
        for ordering in [SpoolOrdering::Strict, SpoolOrdering::Relaxed] {
            let durable = Policy::new(ordering, true);
            assert!(durable.leaves_undelivered_in_input());
            assert!(durable.takes_back_on_failure());
            assert!(!durable.behind_spool(|| true));
        }
        let strict = Policy::new(SpoolOrdering::Strict, false);
        assert!(strict.behind_spool(|| true) && !strict.behind_spool(|| false));
        assert!(strict.takes_back_on_failure() && !strict.leaves_undelivered_in_input());
        let relaxed = Policy::new(SpoolOrdering::Relaxed, false);
        assert!(!relaxed.behind_spool(|| true) && !relaxed.takes_back_on_failure());
        let wait = Duration::from_secs(1);
        assert!(relaxed.new_events_first(Some(Duration::ZERO), wait));
        assert!(!relaxed.new_events_first(None, wait));
        assert!(!strict.new_events_first(Some(Duration::ZERO), wait));
    }
}
