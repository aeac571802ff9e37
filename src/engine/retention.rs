//! Retention: deleting finished workflows (completed, failed, cancelled) with their steps,
//! attempts, output and events — on request (`baton prune`, `workflow_delete`) and in the
//! background of long-running processes (`--retention-days`).
//!
//! Invariant: only finished workflows are ever selected, by the store in the deleting
//! transaction, so a queued, running, blocked or interrupted workflow survives any prune;
//! and deletion runs in small batches, each its own short transaction, with a pause between
//! batches, so step boundaries of running workflows never queue behind a long delete.

use std::time::Duration;

use super::{Engine, Result};
use crate::api::{WorkflowStatus, now_ms};

/// Workflows deleted per transaction.
pub const PRUNE_BATCH: i64 = 100;
/// Pause between two batches, leaving the writer to step boundaries.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// The statuses a prune may delete.
pub const FINISHED: [WorkflowStatus; 3] = [
    WorkflowStatus::Completed,
    WorkflowStatus::Failed,
    WorkflowStatus::Cancelled,
];

/// What a prune deletes.
#[derive(Debug, Clone)]
pub struct PruneRequest {
    /// Only workflows that finished at least this long ago.
    pub older_than: Duration,
    /// Only these statuses (each must be finished); `None`: every finished status.
    pub statuses: Option<Vec<WorkflowStatus>>,
}

/// The background pruner's settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished workflows older than this are deleted.
    pub max_age: Duration,
    /// Time between two passes.
    pub every: Duration,
}

impl Engine {
    /// Deletes finished workflows by `req`, in batches; returns how many.
    pub async fn prune(&self, req: PruneRequest) -> Result<u64> {
        let statuses = req.statuses.unwrap_or_else(|| FINISHED.to_vec());
        let age_ms = i64::try_from(req.older_than.as_millis()).unwrap_or(i64::MAX);
        let before = now_ms().saturating_sub(age_ms);
        let mut total = 0u64;
        loop {
            let deleted = self
                .sh
                .store
                .prune_finished(before, statuses.clone(), PRUNE_BATCH)
                .await?;
            total += deleted.len() as u64;
            if (deleted.len() as i64) < PRUNE_BATCH || self.sh.shutdown.is_cancelled() {
                return Ok(total);
            }
            tokio::time::sleep(BATCH_PAUSE).await;
        }
    }

    /// Runs a prune pass now and then every `r.every` until the engine shuts down.
    pub fn start_retention(&self, r: Retention) {
        let engine = self.clone();
        let stop = self.sh.shutdown.clone();
        self.sh.tracker.spawn(async move {
            let mut tick = tokio::time::interval(r.every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let req = PruneRequest {
                    older_than: r.max_age,
                    statuses: None,
                };
                match engine.prune(req).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "retention: deleted finished workflows"),
                    Err(e) => {
                        tracing::warn!(error = %e, "retention pass failed; the next one retries")
                    }
                }
            }
        });
    }
}
