//! The reads of workflows: rows, snapshots, details, event pages, answers, and the monitor's
//! listing. Each runs on a pooled connection.

use tokio_postgres::Client;

use super::{Postgres, queries};
use crate::api::{ThreadId, WorkflowStatus};
use crate::store::{AttemptRow, EventPage, MonitorRow, MonitorRows, Result, Snapshot, WorkflowRow};

impl Postgres {
    pub(in crate::store) async fn answers(&self, id: ThreadId) -> Result<Vec<(String, String)>> {
        self.read(|c| async move { queries::answers(&c, &id).await })
            .await
    }

    pub(in crate::store) async fn workflow(&self, id: ThreadId) -> Result<Option<WorkflowRow>> {
        self.read(|c| async move { queries::find_workflow(&c, &id).await })
            .await
    }

    pub(in crate::store) async fn snapshot(&self, id: ThreadId) -> Result<Option<Snapshot>> {
        self.read(|c| async move { queries::snapshot(&c, &id).await })
            .await
    }

    pub(in crate::store) async fn detail(
        &self,
        id: ThreadId,
    ) -> Result<Option<(Snapshot, Vec<AttemptRow>)>> {
        self.read(|c| async move {
            let Some(snap) = queries::snapshot(&c, &id).await? else {
                return Ok(None);
            };
            let attempts = queries::load_attempts(&c, &id).await?;
            Ok(Some((snap, attempts)))
        })
        .await
    }

    pub(in crate::store) async fn events(
        &self,
        id: ThreadId,
        after: i64,
        limit: i64,
    ) -> Result<Option<EventPage>> {
        self.read(|c| async move {
            // Status first: a terminal status read here is followed by its terminal event
            // (read committed: the second statement sees at least what the first saw).
            let Some(row) = queries::find_workflow(&c, &id).await? else {
                return Ok(None);
            };
            let events = queries::events_after(&c, &id, after, limit).await?;
            Ok(Some(EventPage {
                status: row.status,
                step_count: row.step_count,
                events,
            }))
        })
        .await
    }

    pub(in crate::store) async fn done_at(&self, id: ThreadId, cursor: i64) -> Result<i64> {
        self.read(|c| async move { queries::done_at(&c, &id, cursor).await })
            .await
    }

    pub(in crate::store) async fn monitor(
        &self,
        statuses: Option<Vec<WorkflowStatus>>,
        limit: i64,
    ) -> Result<MonitorRows> {
        self.read(|c| async move {
            let rows = queries::list_workflows(&c, statuses.as_deref(), limit).await?;
            let mut out = MonitorRows::default();
            fill_listing(&c, rows, &mut out).await?;
            Ok(out)
        })
        .await
    }

    pub(in crate::store) async fn step_medians(
        &self,
        name: String,
    ) -> Result<std::collections::BTreeMap<String, i64>> {
        self.read(|c| async move { queries::median_step_durations(&c, &name).await })
            .await
    }
}

pub(super) async fn fill_listing(
    c: &Client,
    rows: Vec<WorkflowRow>,
    out: &mut MonitorRows,
) -> Result<()> {
    let mut owner_ids: Vec<String> = Vec::new();
    for workflow in rows {
        let steps = queries::load_steps(c, &workflow.id).await?;
        let definition = if workflow.status == WorkflowStatus::Running {
            queries::load_definition(c, &workflow.id).await.ok()
        } else {
            None
        };
        if let Some(o) = &workflow.owner
            && !owner_ids.contains(o)
        {
            owner_ids.push(o.clone());
        }
        out.rows.push(MonitorRow {
            workflow,
            steps,
            definition,
        });
    }
    for o in owner_ids {
        if let Some(row) = queries::find_owner(c, &o).await? {
            out.owners.push(row);
        }
    }
    out.counts = queries::count_by_status(c).await?;
    Ok(())
}
