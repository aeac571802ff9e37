//! The SQL of the SQLite backend. Nothing outside `store::sqlite` sees a statement or a
//! connection.
//!
//! Invariant: an event's `seq` is taken from its workflow row inside the same transaction that
//! appends it, so `seq` increases strictly per workflow whichever process writes; every write
//! by a workflow's owner is fenced by its epoch in the same statement that reserves the `seq`s.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::WriteCtx;
use crate::api::{Event, EventData, EventKind, NewEvent, WorkflowStatus, rfc3339};
use crate::store::{
    Adoptable, AttemptRow, Changes, Fence, NewWorkflow, OwnerRow, Result, StoreError, WorkflowRow,
};

pub(super) fn status_of<T>(s: String, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown status {s:?}").into(),
        )
    })
}

pub(super) const WORKFLOW_COLS: &str = "id, name, status, step_count, created_at, updated_at, \
    started_at, finished_at, error, owner, lease_expires_at, epoch, cancel_requested, \
    last_activity_at, total_cost_usd, max_cost_usd";

fn workflow_row(r: &Row<'_>) -> rusqlite::Result<WorkflowRow> {
    workflow_row_at(r, 0)
}

// ---------------------------------------------------------------- workflows

/// Inserts a queued workflow owned by `owner` at epoch 1.
pub fn insert_workflow(ctx: &mut WriteCtx<'_>, w: &NewWorkflow, now: i64) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "INSERT INTO workflows (id, name, status, step_count, created_at, updated_at, \
             owner, lease_expires_at, epoch) VALUES (?1, ?2, 'queued', ?3, ?4, ?4, ?5, ?6, 1)",
        )?
        .execute(params![
            w.id.as_str(),
            w.name,
            w.step_ids.len() as i64,
            now,
            w.owner,
            w.lease_expires_at
        ])?;
    ctx.conn
        .prepare_cached("INSERT INTO definitions (wid, body) VALUES ((SELECT wid FROM workflows WHERE id = ?1), ?2)")?
        .execute(params![w.id.as_str(), w.definition])?;
    let mut stmt = ctx.conn.prepare_cached(
        "INSERT INTO steps (wid, step_id, idx, status) VALUES ((SELECT wid FROM workflows WHERE id = ?1), ?2, ?3, 'pending')",
    )?;
    for (i, s) in w.step_ids.iter().enumerate() {
        stmt.execute(params![w.id.as_str(), s, i as i64])?;
    }
    ctx.touched(&w.id);
    Ok(())
}

pub fn find_workflow(conn: &Connection, id: &str) -> Result<Option<WorkflowRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {WORKFLOW_COLS} FROM workflows WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], workflow_row).optional()?)
}

/// The compiled definition (JSON) of a workflow.
pub fn load_definition(conn: &Connection, id: &str) -> Result<String> {
    let mut stmt = conn.prepare_cached(
        "SELECT body FROM definitions WHERE wid = (SELECT wid FROM workflows WHERE id = ?1)",
    )?;
    stmt.query_row([id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("workflow {id} has no stored definition")))
}

/// Workflows, newest first, filtered by status (`None`: every status).
pub fn list_workflows(
    conn: &Connection,
    statuses: Option<&[WorkflowStatus]>,
    limit: i64,
) -> Result<Vec<WorkflowRow>> {
    // Without a filter, walk the creation index and stop at `limit` rows.
    let filter = match statuses {
        Some(statuses) => {
            let list = statuses
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect::<Vec<_>>()
                .join(",");
            format!("WHERE status IN ({list})")
        }
        None => String::new(),
    };
    let sql =
        format!("SELECT {WORKFLOW_COLS} FROM workflows {filter} ORDER BY created_at DESC LIMIT ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([limit], workflow_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Number of workflows per status, from the counts the schema's triggers keep.
pub fn count_by_status(conn: &Connection) -> Result<Vec<(WorkflowStatus, i64)>> {
    let mut stmt = conn.prepare_cached("SELECT status, n FROM workflow_counts WHERE n > 0")?;
    let rows = stmt.query_map([], |r| {
        Ok((status_of(r.get(0)?, WorkflowStatus::parse)?, r.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Fails with [`StoreError::Fenced`] unless `owner` holds the workflow at `epoch`.
pub fn check_fence(conn: &Connection, id: &str, owner: &str, epoch: i64) -> Result<()> {
    let mut stmt = conn.prepare_cached("SELECT owner, epoch FROM workflows WHERE id = ?1")?;
    let row: Option<(Option<String>, i64)> = stmt
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some((Some(o), e)) if o == owner && e == epoch => Ok(()),
        _ => Err(StoreError::Fenced(id.to_owned())),
    }
}

/// Sets a workflow's status (and error); `release` also drops its lease.
pub fn set_workflow_status(
    ctx: &mut WriteCtx<'_>,
    id: &str,
    status: WorkflowStatus,
    error: Option<&str>,
    release: bool,
    now: i64,
) -> Result<()> {
    let finished = status.is_terminal().then_some(now);
    let started = (status == WorkflowStatus::Running).then_some(now);
    ctx.conn
        .prepare_cached(
            "UPDATE workflows SET status = ?2, error = ?3, updated_at = ?4, \
             finished_at = ?5, started_at = coalesce(started_at, ?6), \
             owner = CASE WHEN ?7 THEN NULL ELSE owner END, \
             lease_expires_at = CASE WHEN ?7 THEN NULL ELSE lease_expires_at END, \
             cancel_requested = CASE WHEN ?7 THEN 0 ELSE cancel_requested END \
             WHERE id = ?1",
        )?
        .execute(params![
            id,
            status.as_str(),
            error,
            now,
            finished,
            started,
            release
        ])?;
    ctx.touched(id);
    Ok(())
}

/// Takes the lease of a workflow for `owner`, bumping its epoch (the fencing token). Only
/// succeeds if the epoch is still `expected_epoch`, so two adopters cannot both win, and —
/// when `expected_lease` is given — if no renewal has moved the lease since it was read.
pub fn take_lease(
    ctx: &mut WriteCtx<'_>,
    id: &str,
    owner: &str,
    expected_epoch: i64,
    lease_expires_at: i64,
    expected_lease: Option<i64>,
) -> Result<i64> {
    let n = ctx
        .conn
        .prepare_cached(
            "UPDATE workflows SET owner = ?2, epoch = epoch + 1, lease_expires_at = ?4, \
             cancel_requested = 0 WHERE id = ?1 AND epoch = ?3 \
             AND (?5 IS NULL OR coalesce(lease_expires_at, 0) = ?5)",
        )?
        .execute(params![
            id,
            owner,
            expected_epoch,
            lease_expires_at,
            expected_lease
        ])?;
    if n == 0 {
        return Err(StoreError::Fenced(id.to_owned()));
    }
    ctx.touched(id);
    Ok(expected_epoch + 1)
}

/// Extends the leases `owner` holds and its heartbeat.
pub fn renew_leases(
    ctx: &mut WriteCtx<'_>,
    owner: &str,
    lease_expires_at: i64,
    now: i64,
) -> Result<()> {
    ctx.conn
        .prepare_cached("UPDATE workflows SET lease_expires_at = ?2 WHERE owner = ?1")?
        .execute(params![owner, lease_expires_at])?;
    ctx.conn
        .prepare_cached("UPDATE owners SET heartbeat_at = ?2 WHERE id = ?1")?
        .execute(params![owner, now])?;
    Ok(())
}

/// Workflows `owner` holds.
pub fn held_by(conn: &Connection, owner: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM workflows WHERE owner = ?1")?;
    let rows = stmt.query_map([owner], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn request_cancel(ctx: &mut WriteCtx<'_>, id: &str) -> Result<()> {
    ctx.conn
        .prepare_cached("UPDATE workflows SET cancel_requested = 1 WHERE id = ?1")?
        .execute([id])?;
    ctx.touched(id);
    Ok(())
}

/// Workflows owned by `owner` that another process asked to cancel.
pub fn cancel_requests(conn: &Connection, owner: &str) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT id FROM workflows WHERE owner = ?1 AND cancel_requested = 1")?;
    let rows = stmt.query_map([owner], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Workflows that should be running but whose lease is free, expired, or held by another
/// owner (whose record is left for the caller to read). A blocked workflow that is still
/// owned waits for a human answer with a deadline its owner watches.
pub fn adoptable(conn: &Connection, me: &str) -> Result<Vec<Adoptable>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, owner, epoch, coalesce(lease_expires_at, 0) FROM workflows \
         WHERE (status IN ('queued', 'running', 'interrupted') \
                OR (status = 'blocked' AND owner IS NOT NULL)) \
           AND coalesce(owner, '') != ?1",
    )?;
    let rows = stmt.query_map([me], |r| {
        Ok(Adoptable {
            id: r.get::<_, String>(0)?.into(),
            owner_id: r.get(1)?,
            owner: None,
            epoch: r.get(2)?,
            lease_expires_at: r.get(3)?,
            lease_stored: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn add_cost(ctx: &mut WriteCtx<'_>, id: &str, cost: f64) -> Result<()> {
    ctx.conn
        .prepare_cached("UPDATE workflows SET total_cost_usd = total_cost_usd + ?2 WHERE id = ?1")?
        .execute(params![id, cost])?;
    Ok(())
}

/// What the attempts of an agent session were charged so far, other than attempt `number`
/// of `step_id`.
pub fn session_cost(
    conn: &Connection,
    workflow_id: &str,
    session_id: &str,
    step_id: &str,
    number: i64,
) -> Result<f64> {
    Ok(conn
        .prepare_cached(
            "SELECT coalesce(sum(cost_usd), 0) FROM attempts WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) \
             AND session_id = ?2 AND NOT (step_id = ?3 AND number = ?4)",
        )?
        .query_row(params![workflow_id, session_id, step_id, number], |r| {
            r.get(0)
        })?)
}

// ---------------------------------------------------------------- events

/// Fenced start of a write by a workflow's owner: checks that `owner` holds the workflow at
/// `epoch` and reserves `n` consecutive event `seq`s, in one statement on the workflow row.
/// Returns the first reserved `seq`.
pub fn fenced_reserve(
    ctx: &mut WriteCtx<'_>,
    id: &str,
    owner: &str,
    epoch: i64,
    n: i64,
    now: i64,
) -> Result<i64> {
    let first: Option<i64> = ctx
        .conn
        .prepare_cached(
            "UPDATE workflows SET next_seq = next_seq + ?4, updated_at = ?5 \
             WHERE id = ?1 AND owner = ?2 AND epoch = ?3 RETURNING next_seq - ?4",
        )?
        .query_row(params![id, owner, epoch, n, now], |r| r.get(0))
        .optional()?;
    ctx.touched(id);
    first.ok_or_else(|| StoreError::Fenced(id.to_owned()))
}

/// Inserts events at consecutive `seq`s from `first` (reserved with [`fenced_reserve`]).
pub fn insert_events(
    ctx: &mut WriteCtx<'_>,
    workflow_id: &str,
    first: i64,
    events: &[NewEvent],
    now: i64,
) -> Result<()> {
    // The next global cursor values; this transaction holds the write lock, so no other
    // writer can take them meanwhile.
    let gseq: i64 = ctx
        .conn
        .prepare_cached("SELECT coalesce(max(gseq), 0) FROM events")?
        .query_row([], |r| r.get(0))?;
    let mut stmt = ctx.conn.prepare_cached(
        "INSERT INTO events (wid, seq, type, step_id, attempt, at, data, gseq) \
         VALUES ((SELECT wid FROM workflows WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for (i, e) in events.iter().enumerate() {
        let data = if e.data.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(&e.data)
                    .map_err(|err| StoreError::Corrupt(format!("event payload: {err}")))?,
            )
        };
        stmt.execute(params![
            workflow_id,
            first + i as i64,
            e.kind.code(),
            e.step_id,
            e.attempt,
            now,
            data,
            gseq + 1 + i as i64
        ])?;
    }
    Ok(())
}

/// Events with `seq > after`, oldest first.
pub fn events_after(
    conn: &Connection,
    workflow_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, type, step_id, attempt, at, data FROM events \
         WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![workflow_id, after, limit], |r| event_row(r, 0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// An event from the columns `seq, type, step_id, attempt, at, data` starting at `base`.
pub(super) fn event_row(r: &Row<'_>, base: usize) -> rusqlite::Result<Event> {
    let data: Option<String> = r.get(base + 5)?;
    Ok(Event {
        seq: r.get(base)?,
        kind: {
            let code: i64 = r.get(base + 1)?;
            EventKind::from_code(code).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    base + 1,
                    rusqlite::types::Type::Integer,
                    format!("unknown event type {code}").into(),
                )
            })?
        },
        step_id: r.get(base + 2)?,
        attempt: r.get(base + 3)?,
        at: rfc3339(r.get(base + 4)?),
        data: data.and_then(|d| serde_json::from_str::<EventData>(&d).ok()),
    })
}

// ---------------------------------------------------------------- owners

pub fn register_owner(ctx: &mut WriteCtx<'_>, o: &OwnerRow, now: i64) -> Result<()> {
    ctx.conn.execute(
        "INSERT OR REPLACE INTO owners (id, pid, host, started_at, heartbeat_at, lease_ms) \
         VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
        params![o.id, o.pid, o.host, now, o.lease_ms],
    )?;
    Ok(())
}

pub fn find_owner(conn: &Connection, id: &str) -> Result<Option<OwnerRow>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, pid, host, heartbeat_at, lease_ms FROM owners WHERE id = ?1")?;
    Ok(stmt
        .query_row([id], |r| {
            Ok(OwnerRow {
                id: r.get(0)?,
                pid: r.get(1)?,
                host: r.get(2)?,
                heartbeat_at: r.get(3)?,
                lease_ms: r.get(4)?,
            })
        })
        .optional()?)
}

pub fn remove_owner(ctx: &mut WriteCtx<'_>, id: &str) -> Result<()> {
    ctx.conn.execute("DELETE FROM owners WHERE id = ?1", [id])?;
    Ok(())
}

// ---------------------------------------------------------------- change sets

/// Applies a change set to a workflow `fence.owner` holds at `fence.epoch`, or fails with
/// [`StoreError::Fenced`] before writing anything.
pub fn apply(ctx: &mut WriteCtx<'_>, fence: &Fence, changes: &Changes, now: i64) -> Result<()> {
    let id = fence.id.as_str();
    let first_seq = fenced_reserve(
        ctx,
        id,
        &fence.owner,
        fence.epoch,
        changes.events.len() as i64,
        now,
    )?;
    for step_id in &changes.dropped {
        drop_step(ctx, id, step_id)?;
    }
    for s in &changes.steps {
        save_step(ctx, id, s)?;
    }
    for a in &changes.attempts {
        let a = charged(ctx.conn, id, a)?;
        upsert_attempt(ctx, id, &a)?;
        if let Some(cost) = a.cost_usd.filter(|c| *c > 0.0) {
            add_cost(ctx, id, cost)?;
        }
    }
    if let Some(st) = &changes.status {
        set_workflow_status(ctx, id, st.status, st.error.as_deref(), st.release, now)?;
    }
    if let Some(budget) = changes.max_cost_usd {
        ctx.conn
            .prepare_cached("UPDATE workflows SET max_cost_usd = ?2 WHERE id = ?1")?
            .execute(params![id, budget])?;
    }
    insert_events(ctx, id, first_seq, &changes.events, now)?;
    Ok(())
}

/// The agent CLI reports a session's cumulative cost (a resumed session includes what it cost
/// before), so an attempt is charged the difference to what the earlier attempts of the same
/// session were charged; the workflow total is the sum of the charges.
fn charged(conn: &Connection, id: &str, a: &AttemptRow) -> Result<AttemptRow> {
    let mut a = a.clone();
    if let (Some(reported), Some(session)) = (a.cost_usd, a.session_id.as_deref()) {
        let before = session_cost(conn, id, session, &a.step_id, a.number)?;
        a.cost_usd = Some(((reported - before).max(0.0) * 1e10).round() / 1e10);
    }
    Ok(a)
}

/// A workflow's row, steps and definition.
pub fn snapshot(conn: &Connection, id: &str) -> Result<Option<crate::store::Snapshot>> {
    let Some(workflow) = find_workflow(conn, id)? else {
        return Ok(None);
    };
    let steps = load_steps(conn, id)?;
    let definition = load_definition(conn, id)?;
    Ok(Some(crate::store::Snapshot {
        workflow,
        steps,
        definition,
    }))
}

/// Steps completed or skipped by events up to `cursor`.
pub fn done_at(conn: &Connection, id: &str, cursor: i64) -> Result<i64> {
    let mut stmt = conn.prepare_cached(
        "SELECT count(*) FROM events WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) \
         AND seq <= ?2 AND type IN (?3, ?4)",
    )?;
    Ok(stmt.query_row(
        params![
            id,
            cursor,
            EventKind::StepCompleted.code(),
            EventKind::StepSkipped.code()
        ],
        |r| r.get(0),
    )?)
}

pub use super::operator_queries::*;
pub use super::step_queries::*;

// ---------------------------------------------------------------- human answers

/// Records an answer to the open question of step `step_id` of an owned workflow (its owner
/// applies it), unless the step no longer waits, was answered already, or nobody owns the
/// workflow any more. Returns whether it was recorded.
pub fn record_answer(
    ctx: &mut WriteCtx<'_>,
    workflow_id: &str,
    step_id: &str,
    answer: &str,
) -> Result<bool> {
    let n = ctx
        .conn
        .prepare_cached(
            "UPDATE steps SET answer = ?3 WHERE wid = (SELECT wid FROM workflows \
             WHERE id = ?1 AND owner IS NOT NULL) \
             AND step_id = ?2 AND status = 'blocked' AND waiting IS NOT NULL AND answer IS NULL",
        )?
        .execute(params![workflow_id, step_id, answer])?;
    if n > 0 {
        ctx.touched(workflow_id);
    }
    Ok(n > 0)
}

/// The recorded, not yet applied answers of a workflow's waiting steps: step id, answer.
pub fn answers(conn: &Connection, workflow_id: &str) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT step_id, answer FROM steps WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) \
         AND status = 'blocked' AND answer IS NOT NULL",
    )?;
    let rows = stmt.query_map([workflow_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
