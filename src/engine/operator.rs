//! Operations an operator surface (the HTTP API and dashboard) needs beyond the MCP tools:
//! a filtered, paged listing, deleting a stopped workflow, a step's full kept output, and
//! the figures behind `/metrics` and `/healthz`.
//!
//! Invariant: like every read model, these are answered from the store alone; a delete never
//! removes a queued or running workflow (the store checks it in the deleting transaction).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::live::{LiveOutput, Stream as LiveStream};
use super::{Engine, EngineError, Result};
use crate::api::{MonitorView, ThreadId};
use crate::store::{CommitStats, Deleted, ListFilter, MetricCounts};

/// Which stream of a step to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStream {
    /// The step's output (its kept stdout, or an agent's result text).
    #[default]
    Stdout,
    /// The stderr kept from the step's latest attempt.
    Stderr,
}

/// What `/metrics` reports: counts read from the store now, plus this process's own figures.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub counts: MetricCounts,
    pub commits: CommitStats,
    /// Workflows this process drives right now.
    pub owned_workflows: usize,
    /// Workflows this process adopted from dead owners since it started.
    pub adoptions: u64,
}

impl Engine {
    /// Workflows newest first by `filter` (limit 1–1000, default 50), with monitor flags and
    /// the cursor of the next page.
    pub async fn list(&self, mut filter: ListFilter) -> Result<(MonitorView, Option<i64>)> {
        filter.limit = if filter.limit <= 0 {
            50
        } else {
            filter.limit.min(1000)
        };
        let listing = self.sh.store.list(filter).await?;
        let next = listing.next_cursor;
        Ok((self.monitor_view(listing).await, next))
    }

    /// Deletes a stopped workflow with its steps, attempts, output and events.
    pub async fn delete(&self, thread_id: &ThreadId) -> Result<()> {
        match self.sh.store.delete_workflow(thread_id.clone()).await? {
            Deleted::Yes => Ok(()),
            Deleted::NotFound => Err(EngineError::NotFound {
                thread_id: thread_id.clone(),
            }),
            Deleted::Active(status) => Err(EngineError::Busy {
                thread_id: thread_id.clone(),
                status,
            }),
        }
    }

    /// The full kept text of one stream of a step (empty if nothing was kept yet).
    /// The live tail of a command step running in this process, if it is.
    pub fn live_output(&self, thread_id: &ThreadId, step_id: &str) -> Option<Arc<LiveOutput>> {
        self.sh.exec.tails.get(thread_id, step_id)
    }

    /// The step's output: the full kept output of its last attempt, or, while a command
    /// attempt runs in this process, its live tail.
    pub async fn step_output(
        &self,
        thread_id: &ThreadId,
        step_id: &str,
        stream: StepStream,
    ) -> Result<String> {
        if let Some(live) = self.live_output(thread_id, step_id) {
            return Ok(live.text(match stream {
                StepStream::Stderr => LiveStream::Stderr,
                _ => LiveStream::Stdout,
            }));
        }
        let found = self
            .sh
            .store
            .step_stream(
                thread_id.clone(),
                step_id.to_owned(),
                stream == StepStream::Stderr,
            )
            .await?;
        if let Some(text) = found {
            return Ok(text.unwrap_or_default());
        }
        let snap = self.sh.snapshot_of(thread_id).await?;
        Err(EngineError::UnknownStep {
            step: step_id.to_owned(),
            known: snap.steps.into_iter().map(|s| s.step_id).collect(),
        })
    }

    /// The figures of `/metrics`.
    pub async fn metrics(&self) -> Result<Metrics> {
        Ok(Metrics {
            counts: self.sh.store.metric_counts().await?,
            commits: self.sh.store.commit_stats(),
            owned_workflows: self.active(),
            adoptions: self.sh.adoptions.load(Ordering::Relaxed),
        })
    }
}
