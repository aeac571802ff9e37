//! The operator surface: filtered listings, deleting and pruning workflows, step output, the
//! global event feed and metric counts.

use std::sync::Arc;

use super::reads::fill_listing;
use super::{Postgres, operator_queries};
use crate::api::{ThreadId, WorkflowStatus};
use crate::store::{Deleted, ListFilter, MetricCounts, MonitorRows, Result};

impl Postgres {
    pub(in crate::store) async fn list(&self, filter: ListFilter) -> Result<MonitorRows> {
        self.read(|c| async move {
            let rows = operator_queries::list_filtered(&c, &filter).await?;
            let mut out = MonitorRows {
                next_cursor: match rows.last() {
                    Some((wid, _)) if rows.len() as i64 >= filter.limit => Some(*wid),
                    _ => None,
                },
                ..MonitorRows::default()
            };
            let rows = rows.into_iter().map(|(_, w)| w).collect();
            fill_listing(&c, rows, &mut out).await?;
            Ok(out)
        })
        .await
    }

    pub(in crate::store) async fn delete_workflow(&self, id: ThreadId) -> Result<Deleted> {
        let id = Arc::new(id);
        self.write(move |tx| {
            let id = id.clone();
            async move { operator_queries::delete_workflow(&tx, &id).await }
        })
        .await
    }

    pub(in crate::store) async fn prune_finished(
        &self,
        before_ms: i64,
        statuses: Vec<WorkflowStatus>,
        limit: i64,
    ) -> Result<Vec<ThreadId>> {
        let statuses = Arc::new(statuses);
        self.write(move |tx| {
            let statuses = statuses.clone();
            async move { operator_queries::prune_finished(&tx, before_ms, &statuses, limit).await }
        })
        .await
    }

    pub(in crate::store) async fn step_stream(
        &self,
        id: ThreadId,
        step_id: String,
        stderr: bool,
    ) -> Result<Option<Option<String>>> {
        self.read(|c| async move { operator_queries::step_stream(&c, &id, &step_id, stderr).await })
            .await
    }

    pub(in crate::store) async fn events_global(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, ThreadId, crate::api::Event)>> {
        self.read(|c| async move { operator_queries::events_global(&c, after, limit).await })
            .await
    }

    pub(in crate::store) async fn last_gseq(&self) -> Result<i64> {
        self.read(|c| async move { operator_queries::last_gseq(&c).await })
            .await
    }

    pub(in crate::store) async fn metric_counts(&self) -> Result<MetricCounts> {
        self.read(|c| async move { operator_queries::metric_counts(&c).await })
            .await
    }
}
