//! The SQL of the operator surface (filtered listing, delete, step output, the global event
//! cursor, metric counts), beside the engine's queries in `queries.rs`.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::WriteCtx;
use super::queries::{WORKFLOW_COLS, count_by_status, event_row, find_workflow, status_of};
use crate::api::ThreadId;
use crate::api::{AttemptOutcome, Event, WorkflowStatus};
use crate::store::{
    Deleted, ListFilter, MetricCounts, Result, STEP_DURATION_BUCKETS_S, WorkflowRow,
};

// ---------------------------------------------------------------- operator surface

/// Workflows newest first, filtered; returns each row's `wid` (the listing cursor) too.
pub fn list_filtered(conn: &Connection, f: &ListFilter) -> Result<Vec<(i64, WorkflowRow)>> {
    // Statuses come from the enum, never from the caller's text.
    let status = match &f.statuses {
        Some(list) if !list.is_empty() => format!(
            "AND status IN ({})",
            list.iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => String::new(),
    };
    let pattern = f.q.as_ref().map(|q| {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let sql = format!(
        "SELECT wid, {WORKFLOW_COLS} FROM workflows WHERE 1 = 1 {status} \
         AND (?1 IS NULL OR name = ?1) \
         AND (?2 IS NULL OR id LIKE ?2 ESCAPE '\\' OR name LIKE ?2 ESCAPE '\\') \
         AND (?3 IS NULL OR wid < ?3) ORDER BY wid DESC LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![f.name, pattern, f.before, f.limit], |r| {
        Ok((r.get(0)?, workflow_row_at(r, 1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn workflow_row_at(r: &Row<'_>, base: usize) -> rusqlite::Result<WorkflowRow> {
    Ok(WorkflowRow {
        id: r.get::<_, String>(base)?.into(),
        name: r.get(base + 1)?,
        status: status_of(r.get(base + 2)?, WorkflowStatus::parse)?,
        step_count: r.get(base + 3)?,
        created_at: r.get(base + 4)?,
        updated_at: r.get(base + 5)?,
        started_at: r.get(base + 6)?,
        finished_at: r.get(base + 7)?,
        error: r.get(base + 8)?,
        owner: r.get(base + 9)?,
        lease_expires_at: r.get(base + 10)?,
        epoch: r.get(base + 11)?,
        cancel_requested: r.get(base + 12)?,
        last_activity_at: r.get(base + 13)?,
        total_cost_usd: r.get(base + 14)?,
        max_cost_usd: r.get(base + 15)?,
    })
}

/// Deletes a workflow with its definition, steps, attempts and events, unless it is queued
/// or running (checked in the same transaction, so no adoption can slip in between).
pub fn delete_workflow(ctx: &mut WriteCtx<'_>, id: &str) -> Result<Deleted> {
    let Some(row) = find_workflow(ctx.conn, id)? else {
        return Ok(Deleted::NotFound);
    };
    if matches!(row.status, WorkflowStatus::Queued | WorkflowStatus::Running) {
        return Ok(Deleted::Active(row.status));
    }
    for table in ["events", "attempts", "steps", "definitions"] {
        ctx.conn
            .prepare_cached(&format!(
                "DELETE FROM {table} WHERE wid = (SELECT wid FROM workflows WHERE id = ?1)"
            ))?
            .execute([id])?;
    }
    ctx.conn
        .prepare_cached("DELETE FROM workflows WHERE id = ?1")?
        .execute([id])?;
    ctx.touched(id);
    Ok(Deleted::Yes)
}

/// Deletes at most `limit` finished workflows (status in `statuses`, each completed, failed
/// or cancelled) that finished at or before `before_ms`, oldest first, with everything stored
/// about them; returns their ids. Any other status in `statuses` is ignored, so a queued,
/// running, blocked or interrupted workflow is never selected.
pub fn prune_finished(
    ctx: &mut WriteCtx<'_>,
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
    // Statuses come from the enum, never from the caller's text.
    let list = finished
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT wid, id FROM workflows WHERE status IN ({list}) \
         AND COALESCE(finished_at, updated_at) <= ?1 \
         ORDER BY COALESCE(finished_at, updated_at) LIMIT ?2"
    );
    let victims: Vec<(i64, String)> = ctx
        .conn
        .prepare_cached(&sql)?
        .query_map(params![before_ms, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (wid, id) in &victims {
        for table in ["events", "attempts", "steps", "definitions", "workflows"] {
            ctx.conn
                .prepare_cached(&format!("DELETE FROM {table} WHERE wid = ?1"))?
                .execute([wid])?;
        }
        ctx.touched(id);
    }
    Ok(victims.into_iter().map(|(_, id)| id.into()).collect())
}

/// The kept stdout of a step (its output) or the stderr of its latest attempt.
pub fn step_stream(
    conn: &Connection,
    id: &str,
    step_id: &str,
    stderr: bool,
) -> Result<Option<Option<String>>> {
    let sql = if stderr {
        "SELECT (SELECT stderr FROM attempts a WHERE a.wid = s.wid AND a.step_id = s.step_id \
         ORDER BY number DESC LIMIT 1) FROM steps s \
         WHERE s.wid = (SELECT wid FROM workflows WHERE id = ?1) AND s.step_id = ?2"
    } else {
        "SELECT output FROM steps \
         WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) AND step_id = ?2"
    };
    Ok(conn
        .prepare_cached(sql)?
        .query_row([id, step_id], |r| r.get(0))
        .optional()?)
}

/// Events of every workflow with a global cursor above `after`, in commit order.
pub fn events_global(
    conn: &Connection,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, ThreadId, Event)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.gseq, w.id, e.seq, e.type, e.step_id, e.attempt, e.at, e.data \
         FROM events e JOIN workflows w ON w.wid = e.wid \
         WHERE e.gseq > ?1 ORDER BY e.gseq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        Ok((
            r.get(0)?,
            ThreadId::from(r.get::<_, String>(1)?.as_str()),
            event_row(r, 2)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The newest global event cursor (0 if there are no events).
pub fn last_gseq(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(gseq), 0) FROM events")?
        .query_row([], |r| r.get(0))?)
}

/// Figures for `/metrics`, read at scrape time.
pub fn metric_counts(conn: &Connection) -> Result<MetricCounts> {
    let mut out = MetricCounts {
        workflows: count_by_status(conn)?,
        ..MetricCounts::default()
    };
    let mut stmt =
        conn.prepare_cached("SELECT outcome, count(*) FROM attempts GROUP BY outcome")?;
    out.attempts = stmt
        .query_map([], |r| {
            Ok((status_of(r.get(0)?, AttemptOutcome::parse)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    out.running_steps = conn
        .prepare_cached("SELECT count(*) FROM steps WHERE status = 'running'")?
        .query_row([], |r| r.get(0))?;
    // Finished attempts bucketed by duration in one scan.
    let cases = STEP_DURATION_BUCKETS_S
        .iter()
        .map(|b| format!("sum(finished_at - started_at <= {})", (b * 1000.0) as i64))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT count(*), coalesce(sum(finished_at - started_at), 0), {cases} \
         FROM attempts WHERE finished_at IS NOT NULL"
    );
    conn.query_row(&sql, [], |r| {
        out.step_durations.count = r.get(0)?;
        out.step_durations.sum_ms = r.get(1)?;
        out.step_durations.buckets = (0..STEP_DURATION_BUCKETS_S.len())
            .map(|i| r.get::<_, Option<i64>>(2 + i).map(|v| v.unwrap_or(0)))
            .collect::<rusqlite::Result<_>>()?;
        Ok(())
    })?;
    Ok(out)
}
