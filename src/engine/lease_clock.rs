//! How long this process holds one workflow's lease, by its own clock.
//!
//! Invariant: a driver starts no process once its workflow's lease may have ended. The store
//! starts a lease when it writes the claim or renewal, which is after the local time read
//! before the request, so a lease length from that time is never later than the lease's end
//! however long the process was frozen or starved since. The clock is one per workflow, not
//! per process: a renewal on a store shared by machines extends only the leases that had not
//! ended, so a workflow taken just before a freeze keeps its own, shorter, clock. It never
//! runs past a lease from the process's last renewal either, since other processes judge an
//! owner dead once its heartbeat is that old.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::process::SpawnGate;
use crate::api::now_ms;

/// The end of one workflow's lease as far as this process knows (its clock, ms).
#[derive(Debug, Clone)]
pub(super) struct LeaseClock {
    /// This workflow's: set by the claim, extended by renewals that held it.
    own: Arc<AtomicI64>,
    /// The process's last renewal (its clock, ms), shared by every clock: other processes
    /// also judge an owner dead once its heartbeat is a lease old, whatever its leases say.
    renewed_at: Arc<AtomicI64>,
    lease_ms: i64,
}

impl LeaseClock {
    /// A lease taken until `until`: the claim's `lease_until`, a lease length from the time
    /// read before the claim was sent.
    pub(super) fn new(until: i64, renewed_at: Arc<AtomicI64>, lease: Duration) -> LeaseClock {
        LeaseClock {
            own: Arc::new(AtomicI64::new(until)),
            renewed_at,
            lease_ms: lease.as_millis() as i64,
        }
    }

    /// A renewal that still held the workflow extended it to `until`. Never shortened: a
    /// claim made while the renewal was in flight may already reach further.
    pub(super) fn extend(&self, until: i64) {
        self.own.fetch_max(until, Ordering::AcqRel);
    }

    fn ends_at(&self) -> i64 {
        // Acquire: pairs with the renewal's release, after it stopped lost drivers.
        let heartbeat = self.renewed_at.load(Ordering::Acquire) + self.lease_ms;
        self.own.load(Ordering::Acquire).min(heartbeat)
    }

    /// Whether the lease may be about to end: less than a third of a lease is left, while a
    /// renewal comes every third. The driver asks the store before it starts anything then.
    pub(super) fn in_doubt(&self) -> bool {
        now_ms() >= self.ends_at() - self.lease_ms / 3
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

    fn clock(until: i64, renewed_at: i64) -> LeaseClock {
        let renewed = Arc::new(AtomicI64::new(renewed_at));
        LeaseClock::new(until, renewed, Duration::from_secs(60))
    }

    #[test]
    fn a_lease_clock_refuses_a_spawn_once_its_lease_has_ended_and_a_renewal_never_shortens_it() {
        let now = now_ms();
        let held = clock(now + 60_000, now);
        assert!(held.gate().allows());
        assert!(!held.in_doubt());
        held.extend(now - 1);
        assert!(
            held.gate().allows(),
            "a late renewal must not shorten a fresher claim"
        );
        // Claimed before a freeze; the renewal after it did not extend this lease.
        let ended = clock(now - 1, now);
        assert!(!ended.gate().allows());
        assert!(ended.in_doubt());
        let near = clock(now + 10_000, now);
        assert!(near.in_doubt());
    }

    #[test]
    fn a_lease_clock_ends_a_lease_after_the_last_renewal_even_if_its_claim_reaches_further() {
        let now = now_ms();
        // Claimed after the last renewal, which is now over a lease old: other processes
        // judge this owner dead by its heartbeat.
        let c = clock(now + 30_000, now - 60_001);
        assert!(!c.gate().allows());
        assert!(c.in_doubt());
    }
}
