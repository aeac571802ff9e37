//! The SQL of the operator surface on PostgreSQL (filtered listing, delete, step output, the
//! global event cursor, metric counts), beside the engine's queries in `queries.rs`.

use tokio_postgres::Client;

use super::Tx;
use super::queries::{WORKFLOW_COLS, count_by_status, event_row, parse, workflow_row};
use crate::api::{AttemptOutcome, Event, ThreadId, WorkflowStatus};
use crate::store::{
    Deleted, ListFilter, MetricCounts, Result, STEP_DURATION_BUCKETS_S, StoreError, WorkflowRow,
};

/// Workflows newest first, filtered; returns each row's `wid` (the listing cursor) too.
pub(super) async fn list_filtered(c: &Client, f: &ListFilter) -> Result<Vec<(i64, WorkflowRow)>> {
    let statuses: Option<Vec<&str>> = f
        .statuses
        .as_ref()
        .filter(|l| !l.is_empty())
        .map(|l| l.iter().map(|s| s.as_str()).collect());
    let pattern = f.q.as_ref().map(|q| {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let sql = format!(
        "SELECT wid, {WORKFLOW_COLS} FROM workflows \
         WHERE ($1::text[] IS NULL OR status = ANY($1)) \
         AND ($2::text IS NULL OR name = $2) \
         AND ($3::text IS NULL OR id LIKE $3 ESCAPE '\\' OR name LIKE $3 ESCAPE '\\') \
         AND ($4::bigint IS NULL OR wid < $4) ORDER BY wid DESC LIMIT $5"
    );
    c.query(&sql, &[&statuses, &f.name, &pattern, &f.before, &f.limit])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, workflow_row(r, 1)?)))
        .collect()
}

/// Deletes a workflow with everything stored about it unless it is queued or running,
/// checked under the row's lock so no adoption can slip in between.
pub(super) async fn delete_workflow(tx: &Tx, id: &str) -> Result<Deleted> {
    let row =
        tx.c.query_opt(
            "SELECT wid, status FROM workflows WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Deleted::NotFound);
    };
    let wid: i64 = row.try_get(0)?;
    let status = parse(&row.try_get::<_, String>(1)?, WorkflowStatus::parse)?;
    if matches!(status, WorkflowStatus::Queued | WorkflowStatus::Running) {
        return Ok(Deleted::Active(status));
    }
    for table in ["events", "attempts", "steps", "definitions", "workflows"] {
        tx.c.execute(&format!("DELETE FROM {table} WHERE wid = $1"), &[&wid])
            .await?;
    }
    tx.touched(id);
    Ok(Deleted::Yes)
}

/// Deletes at most `limit` finished workflows (status in `statuses`, each completed, failed
/// or cancelled) that finished at or before `before_ms`, oldest first, with everything stored
/// about them; returns their ids. Any other status in `statuses` is ignored, so a queued,
/// running, blocked or interrupted workflow is never selected. Rows another transaction holds
/// are skipped (`SKIP LOCKED`): the next round takes them.
pub(super) async fn prune_finished(
    tx: &Tx,
    before_ms: i64,
    statuses: &[WorkflowStatus],
    limit: i64,
) -> Result<Vec<ThreadId>> {
    let finished: Vec<&str> = statuses
        .iter()
        .filter(|s| {
            matches!(
                s,
                WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Cancelled
            )
        })
        .map(|s| s.as_str())
        .collect();
    if finished.is_empty() || limit <= 0 {
        return Ok(Vec::new());
    }
    let victims =
        tx.c.query(
            "SELECT wid, id FROM workflows WHERE status = ANY($1) \
             AND coalesce(finished_at, updated_at) <= $2 \
             ORDER BY coalesce(finished_at, updated_at) LIMIT $3 FOR UPDATE SKIP LOCKED",
            &[&finished, &before_ms, &limit],
        )
        .await?;
    let mut out = Vec::with_capacity(victims.len());
    let wids: Vec<i64> = victims
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    for table in ["events", "attempts", "steps", "definitions", "workflows"] {
        tx.c.execute(
            &format!("DELETE FROM {table} WHERE wid = ANY($1)"),
            &[&wids],
        )
        .await?;
    }
    for r in &victims {
        let id: String = r.try_get(1)?;
        tx.touched(&id);
        out.push(ThreadId::from(id.as_str()));
    }
    Ok(out)
}

/// The kept stdout of a step (its output) or the stderr of its latest attempt.
pub(super) async fn step_stream(
    c: &Client,
    id: &str,
    step_id: &str,
    stderr: bool,
) -> Result<Option<Option<String>>> {
    let sql = if stderr {
        "SELECT (SELECT stderr FROM attempts a WHERE a.wid = s.wid AND a.step_id = s.step_id \
         ORDER BY number DESC LIMIT 1) FROM steps s \
         WHERE s.wid = (SELECT wid FROM workflows WHERE id = $1) AND s.step_id = $2"
    } else {
        "SELECT output FROM steps \
         WHERE wid = (SELECT wid FROM workflows WHERE id = $1) AND step_id = $2"
    };
    match c.query_opt(sql, &[&id, &step_id]).await? {
        Some(r) => Ok(Some(r.try_get(0)?)),
        None => Ok(None),
    }
}

/// Events of every workflow with a global cursor above `after`, in commit order.
pub(super) async fn events_global(
    c: &Client,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, ThreadId, Event)>> {
    c.query(
        "SELECT e.gseq, w.id, e.seq, e.type, e.step_id, e.attempt, e.at, e.data \
         FROM events e JOIN workflows w ON w.wid = e.wid \
         WHERE e.gseq > $1 ORDER BY e.gseq LIMIT $2",
        &[&after, &limit],
    )
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get(0)?,
            ThreadId::from(r.try_get::<_, String>(1)?.as_str()),
            event_row(r, 2)?,
        ))
    })
    .collect()
}

/// The newest global event cursor (0 if there are no events).
pub(super) async fn last_gseq(c: &Client) -> Result<i64> {
    Ok(c.query_one("SELECT value FROM event_cursor", &[])
        .await?
        .try_get(0)?)
}

/// Figures for `/metrics`, read at scrape time.
pub(super) async fn metric_counts(c: &Client) -> Result<MetricCounts> {
    let mut out = MetricCounts {
        workflows: count_by_status(c).await?,
        ..MetricCounts::default()
    };
    out.attempts = c
        .query(
            "SELECT outcome, count(*) FROM attempts GROUP BY outcome",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                parse(&r.try_get::<_, String>(0)?, AttemptOutcome::parse)?,
                r.try_get(1)?,
            ))
        })
        .collect::<Result<_>>()?;
    out.running_steps = c
        .query_one("SELECT count(*) FROM steps WHERE status = 'running'", &[])
        .await?
        .try_get(0)?;
    let cases = STEP_DURATION_BUCKETS_S
        .iter()
        .map(|b| {
            format!(
                "count(*) FILTER (WHERE finished_at - started_at <= {})",
                (b * 1000.0) as i64
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT count(*), coalesce(sum(finished_at - started_at), 0)::bigint, {cases} \
         FROM attempts WHERE finished_at IS NOT NULL"
    );
    let r = c.query_one(&sql, &[]).await?;
    out.step_durations.count = r.try_get(0)?;
    out.step_durations.sum_ms = r.try_get(1)?;
    out.step_durations.buckets = (0..STEP_DURATION_BUCKETS_S.len())
        .map(|i| r.try_get::<_, i64>(2 + i).map_err(StoreError::from))
        .collect::<Result<_>>()?;
    Ok(out)
}
