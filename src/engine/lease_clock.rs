//! How long this process holds one workflow's lease, by its own clock.
//!
//! Invariant: a driver starts no process once its workflow's lease may have ended. The store
//! starts a lease when it writes the claim or renewal, which is after the local time read
//! before the request, so a lease length from that time is never later than the lease's end
//! however long the process was frozen or starved since. The clock is one per workflow, not
//! per process: a renewal on a store shared by machines extends only the leases that had not
//! ended, so a workflow taken just before a freeze keeps its own, shorter, clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::process::SpawnGate;
use crate::api::now_ms;

/// The end of one workflow's lease as far as this process knows (its clock, ms).
#[derive(Debug, Clone)]
pub(super) struct LeaseClock(Arc<AtomicI64>);

impl LeaseClock {
    /// A lease taken until `until`: the claim's `lease_until`, a lease length from the time
    /// read before the claim was sent.
    pub(super) fn until(until: i64) -> LeaseClock {
        LeaseClock(Arc::new(AtomicI64::new(until)))
    }

    /// A renewal that still held the workflow extended it to `until`. Never shortened: a
    /// claim made while the renewal was in flight may already reach further.
    pub(super) fn extend(&self, until: i64) {
        self.0.fetch_max(until, Ordering::AcqRel);
    }

    fn ends_at(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Whether the lease may be about to end: less than a third of `lease` is left, while a
    /// renewal comes every third. The driver asks the store before it starts anything then.
    pub(super) fn in_doubt(&self, lease: Duration) -> bool {
        now_ms() >= self.ends_at() - lease.as_millis() as i64 / 3
    }

    /// Refuses a spawn once the lease has ended by this clock: another process may have
    /// adopted the workflow and re-run the step meanwhile.
    pub(super) fn gate(&self) -> SpawnGate {
        let clock = self.clone();
        SpawnGate(Arc::new(move || now_ms() < clock.ends_at()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_clock_refuses_a_spawn_once_its_lease_has_ended_and_a_renewal_never_shortens_it() {
        let now = now_ms();
        let clock = LeaseClock::until(now + 60_000);
        let gate = clock.gate();
        assert!(gate.allows());
        assert!(!clock.in_doubt(Duration::from_secs(60)));
        clock.extend(now - 1);
        assert!(
            gate.allows(),
            "a late renewal must not shorten a fresher claim"
        );
        let ended = LeaseClock::until(now - 1);
        assert!(!ended.gate().allows());
        assert!(ended.in_doubt(Duration::from_secs(60)));
        ended.extend(now + 60_000);
        assert!(ended.gate().allows());
        let near = LeaseClock::until(now + 10_000);
        assert!(near.in_doubt(Duration::from_secs(60)));
    }
}
