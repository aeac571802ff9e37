//! The SQL of the PostgreSQL backend's engine operations. Nothing outside `store::postgres`
//! sees a statement or a connection.
//!
//! Invariant: as on SQLite, an event's `seq` is reserved on its workflow row by the same
//! statement that checks the writer's fence (owner and epoch), and that row stays locked until
//! the transaction ends, so `seq` increases strictly per workflow whichever process writes.
//! Timestamps that judge leases are the database's (`Tx::now`), never a process's.

use tokio_postgres::{Client, Row};

use super::Tx;
use crate::api::{Event, EventData, EventKind, NewEvent, WorkflowStatus, rfc3339};
use crate::store::{
    Adoptable, AttemptRow, Changes, Claim, Fence, NewWorkflow, OwnerRow, Result, Snapshot,
    StoreError, WorkflowRow,
};

pub(super) use super::step_queries::*;

/// The database's clock in milliseconds since the Unix epoch, as SQL.
pub(super) const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

pub(super) fn parse<T>(s: &str, f: fn(&str) -> Option<T>) -> Result<T> {
    f(s).ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}

pub(super) const WORKFLOW_COLS: &str = "id, name, status, step_count, created_at, updated_at, \
    started_at, finished_at, error, owner, lease_expires_at, epoch, cancel_requested, \
    last_activity_at, total_cost_usd, max_cost_usd";

pub(super) fn workflow_row(r: &Row, base: usize) -> Result<WorkflowRow> {
    Ok(WorkflowRow {
        id: r.try_get::<_, String>(base)?.into(),
        name: r.try_get(base + 1)?,
        status: parse(&r.try_get::<_, String>(base + 2)?, WorkflowStatus::parse)?,
        step_count: r.try_get(base + 3)?,
        created_at: r.try_get(base + 4)?,
        updated_at: r.try_get(base + 5)?,
        started_at: r.try_get(base + 6)?,
        finished_at: r.try_get(base + 7)?,
        error: r.try_get(base + 8)?,
        owner: r.try_get(base + 9)?,
        lease_expires_at: r.try_get(base + 10)?,
        epoch: r.try_get(base + 11)?,
        cancel_requested: r.try_get(base + 12)?,
        last_activity_at: r.try_get(base + 13)?,
        total_cost_usd: r.try_get(base + 14)?,
        max_cost_usd: r.try_get(base + 15)?,
    })
}

// ---------------------------------------------------------------- workflows

/// Inserts a queued workflow (owned at epoch 1 by `w.owner`, or unowned); returns its `wid`.
/// `lease_ms`: the length of the owner's lease, from the database's clock now.
pub(super) async fn insert_workflow(
    tx: &Tx,
    w: &NewWorkflow,
    lease_ms: Option<i64>,
) -> Result<i64> {
    let now = tx.now();
    let lease = lease_ms.map(|l| now + l);
    let row =
        tx.c.query_opt(
            "INSERT INTO workflows (id, name, status, step_count, created_at, updated_at, \
             owner, lease_expires_at, epoch) VALUES ($1, $2, 'queued', $3, $4, $4, $5, $6, 1) \
             ON CONFLICT (id) DO NOTHING RETURNING wid",
            &[
                &w.id.as_str(),
                &w.name,
                &(w.step_ids.len() as i64),
                &now,
                &w.owner,
                &lease,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Err(StoreError::Conflict(format!("workflow {} exists", w.id)));
    };
    let wid: i64 = row.try_get(0)?;
    tx.c.execute(
        "INSERT INTO definitions (wid, body) VALUES ($1, $2)",
        &[&wid, &w.definition],
    )
    .await?;
    let idx: Vec<i64> = (0..w.step_ids.len() as i64).collect();
    tx.c.execute(
        "INSERT INTO steps (wid, step_id, idx, status) \
         SELECT $1, s, i, 'pending' FROM unnest($2::text[], $3::bigint[]) AS u(s, i)",
        &[&wid, &w.step_ids, &idx],
    )
    .await?;
    tx.touched(&w.id);
    Ok(wid)
}

pub(super) async fn find_workflow(c: &Client, id: &str) -> Result<Option<WorkflowRow>> {
    let sql = format!("SELECT {WORKFLOW_COLS} FROM workflows WHERE id = $1");
    match c.query_opt(&sql, &[&id]).await? {
        Some(r) => Ok(Some(workflow_row(&r, 0)?)),
        None => Ok(None),
    }
}

pub(super) async fn load_definition(c: &Client, id: &str) -> Result<String> {
    c.query_opt(
        "SELECT d.body FROM definitions d JOIN workflows w ON w.wid = d.wid WHERE w.id = $1",
        &[&id],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?
    .ok_or_else(|| StoreError::Corrupt(format!("workflow {id} has no stored definition")))
}

/// Workflows, newest first, filtered by status (`None`: every status).
pub(super) async fn list_workflows(
    c: &Client,
    statuses: Option<&[WorkflowStatus]>,
    limit: i64,
) -> Result<Vec<WorkflowRow>> {
    let list: Option<Vec<&str>> = statuses.map(|s| s.iter().map(|s| s.as_str()).collect());
    let sql = format!(
        "SELECT {WORKFLOW_COLS} FROM workflows WHERE ($1::text[] IS NULL OR status = ANY($1)) \
         ORDER BY created_at DESC, wid DESC LIMIT $2"
    );
    c.query(&sql, &[&list, &limit])
        .await?
        .iter()
        .map(|r| workflow_row(r, 0))
        .collect()
}

pub(super) async fn count_by_status(c: &Client) -> Result<Vec<(WorkflowStatus, i64)>> {
    c.query(
        "SELECT status, count(*) FROM workflows GROUP BY status",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok((
            parse(&r.try_get::<_, String>(0)?, WorkflowStatus::parse)?,
            r.try_get(1)?,
        ))
    })
    .collect()
}

/// Fails with [`StoreError::Fenced`] unless `owner` holds the workflow at `epoch`.
pub(super) async fn check_fence(c: &Client, id: &str, owner: &str, epoch: i64) -> Result<()> {
    let row = c
        .query_opt("SELECT owner, epoch FROM workflows WHERE id = $1", &[&id])
        .await?;
    match row {
        Some(r)
            if r.try_get::<_, Option<String>>(0)?.as_deref() == Some(owner)
                && r.try_get::<_, i64>(1)? == epoch =>
        {
            Ok(())
        }
        _ => Err(StoreError::Fenced(id.to_owned())),
    }
}

/// Takes the lease of a workflow for the claim's owner, bumping its epoch, if its epoch is
/// still the expected one and — when the claim names the lease it saw — no renewal has
/// moved the lease since. The row is claimed with `FOR UPDATE SKIP LOCKED`: a workflow
/// another transaction is writing (its owner committing or renewing, another adopter
/// claiming) is not waited for but reported as taken, so adopters never queue behind each
/// other.
pub(super) async fn take_lease(tx: &Tx, claim: &Claim, id: &str, lease_ms: i64) -> Result<i64> {
    let expected = claim.expected_epoch;
    let owner = claim.owner.as_str();
    let locked =
        tx.c.query_opt(
            "SELECT epoch, coalesce(lease_expires_at, 0) FROM workflows \
             WHERE id = $1 FOR UPDATE SKIP LOCKED",
            &[&id],
        )
        .await?;
    let Some(row) = locked else {
        return Err(StoreError::Fenced(id.to_owned()));
    };
    if row.try_get::<_, i64>(0)? != expected
        || claim
            .expected_lease
            .is_some_and(|seen| row.try_get::<_, i64>(1).ok() != Some(seen))
    {
        return Err(StoreError::Fenced(id.to_owned()));
    }
    let lease = tx.now() + lease_ms;
    tx.c.execute(
        "UPDATE workflows SET owner = $2, epoch = epoch + 1, lease_expires_at = $3, \
         cancel_requested = false WHERE id = $1",
        &[&id, &owner, &lease],
    )
    .await?;
    tx.touched(id);
    Ok(expected + 1)
}

/// Extends the leases `owner` holds and its heartbeat, by the database's clock. A lease that
/// has ended is not revived: another process may be claiming it at this moment, having seen
/// it end, and the owner stopped its attempts before then (self-fencing).
pub(super) async fn renew_leases(tx: &Tx, owner: &str, lease_ms: i64) -> Result<()> {
    let now = tx.now();
    tx.c.execute(
        "UPDATE workflows SET lease_expires_at = $2 WHERE owner = $1 \
         AND (lease_expires_at IS NULL OR lease_expires_at >= $3)",
        &[&owner, &(now + lease_ms), &now],
    )
    .await?;
    tx.c.execute(
        "UPDATE owners SET heartbeat_at = $2 WHERE id = $1",
        &[&owner, &now],
    )
    .await?;
    Ok(())
}

/// Workflows `owner` holds with a lease that has not ended, and those that still name it
/// but whose lease has ended, judged in one query by the database's clock.
pub(super) async fn held_by(c: &Client, owner: &str) -> Result<(Vec<String>, Vec<String>)> {
    let sql = format!(
        "SELECT id, (lease_expires_at IS NULL OR lease_expires_at >= {DB_NOW}) \
         FROM workflows WHERE owner = $1"
    );
    let (mut held, mut ended) = (Vec::new(), Vec::new());
    for r in c.query(&sql, &[&owner]).await? {
        let id: String = r.try_get(0)?;
        if r.try_get::<_, bool>(1)? {
            held.push(id);
        } else {
            ended.push(id);
        }
    }
    Ok((held, ended))
}

pub(super) async fn request_cancel(tx: &Tx, id: &str) -> Result<()> {
    tx.c.execute(
        "UPDATE workflows SET cancel_requested = true WHERE id = $1",
        &[&id],
    )
    .await?;
    tx.touched(id);
    Ok(())
}

pub(super) async fn cancel_requests(c: &Client, owner: &str) -> Result<Vec<String>> {
    c.query(
        "SELECT id FROM workflows WHERE owner = $1 AND cancel_requested",
        &[&owner],
    )
    .await?
    .iter()
    .map(|r| Ok(r.try_get(0)?))
    .collect()
}

/// Workflows that should be running and are not `me`'s, with their owners' records. Lease
/// and heartbeat times are moved onto this process's clock by the offset measured in the
/// same query, so a caller comparing them with its own `now` judges them by the database's.
pub(super) async fn adoptable(c: &Client, me: &str) -> Result<Vec<Adoptable>> {
    let sql = format!(
        "SELECT w.id, w.owner, w.epoch, coalesce(w.lease_expires_at, 0), {DB_NOW}, \
         o.id, o.pid, o.host, o.heartbeat_at, o.lease_ms \
         FROM workflows w LEFT JOIN owners o ON o.id = w.owner \
         WHERE (w.status IN ('queued', 'running', 'interrupted') \
                OR (w.status = 'blocked' AND w.owner IS NOT NULL)) \
         AND coalesce(w.owner, '') <> $1 ORDER BY w.wid"
    );
    let local = crate::api::now_ms();
    c.query(&sql, &[&me])
        .await?
        .iter()
        .map(|r| {
            let shift = local - r.try_get::<_, i64>(4)?;
            let owner = match r.try_get::<_, Option<String>>(5)? {
                Some(id) => Some(OwnerRow {
                    id,
                    pid: r.try_get(6)?,
                    host: r.try_get(7)?,
                    heartbeat_at: r.try_get::<_, i64>(8)? + shift,
                    lease_ms: r.try_get(9)?,
                }),
                None => None,
            };
            Ok(Adoptable {
                id: r.try_get::<_, String>(0)?.into(),
                owner_id: r.try_get(1)?,
                owner,
                epoch: r.try_get(2)?,
                lease_expires_at: r.try_get::<_, i64>(3)? + shift,
                lease_stored: r.try_get(3)?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- events

/// Fenced start of a write by a workflow's owner: checks that `owner` holds the workflow at
/// `epoch` and reserves `n` event `seq`s, in one statement that locks the workflow row until
/// the transaction ends. Returns the row's `wid` and the first reserved `seq`.
async fn fenced_reserve(tx: &Tx, fence: &Fence, n: i64) -> Result<(i64, i64)> {
    let row =
        tx.c.query_opt(
            "UPDATE workflows SET next_seq = next_seq + $4, updated_at = $5 \
             WHERE id = $1 AND owner = $2 AND epoch = $3 RETURNING wid, next_seq - $4",
            &[
                &fence.id.as_str(),
                &fence.owner,
                &fence.epoch,
                &n,
                &tx.now(),
            ],
        )
        .await?;
    let Some(row) = row else {
        return Err(StoreError::Fenced(fence.id.to_string()));
    };
    tx.touched(&fence.id);
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Events with `seq > after`, oldest first.
pub(super) async fn events_after(
    c: &Client,
    id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>> {
    c.query(
        "SELECT seq, type, step_id, attempt, at, data FROM events \
         WHERE wid = (SELECT wid FROM workflows WHERE id = $1) AND seq > $2 ORDER BY seq LIMIT $3",
        &[&id, &after, &limit],
    )
    .await?
    .iter()
    .map(|r| event_row(r, 0))
    .collect()
}

/// An event from the columns `seq, type, step_id, attempt, at, data` starting at `base`.
pub(super) fn event_row(r: &Row, base: usize) -> Result<Event> {
    let data: Option<String> = r.try_get(base + 5)?;
    let code: i64 = r.try_get(base + 1)?;
    Ok(Event {
        seq: r.try_get(base)?,
        kind: EventKind::from_code(code)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown event type {code}")))?,
        step_id: r.try_get(base + 2)?,
        attempt: r.try_get(base + 3)?,
        at: rfc3339(r.try_get(base + 4)?),
        data: data.and_then(|d| serde_json::from_str::<EventData>(&d).ok()),
    })
}

// ---------------------------------------------------------------- owners

pub(super) async fn register_owner(tx: &Tx, o: &OwnerRow) -> Result<()> {
    tx.c.execute(
        "INSERT INTO owners (id, pid, host, started_at, heartbeat_at, lease_ms) \
         VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, \
         host = excluded.host, started_at = excluded.started_at, \
         heartbeat_at = excluded.heartbeat_at, lease_ms = excluded.lease_ms",
        &[&o.id, &o.pid, &o.host, &tx.now(), &o.lease_ms],
    )
    .await?;
    Ok(())
}

/// An owner's record, its heartbeat moved onto this process's clock (see [`adoptable`]).
pub(super) async fn find_owner(c: &Client, id: &str) -> Result<Option<OwnerRow>> {
    let sql =
        format!("SELECT id, pid, host, heartbeat_at, lease_ms, {DB_NOW} FROM owners WHERE id = $1");
    let local = crate::api::now_ms();
    match c.query_opt(&sql, &[&id]).await? {
        Some(r) => Ok(Some(OwnerRow {
            id: r.try_get(0)?,
            pid: r.try_get(1)?,
            host: r.try_get(2)?,
            heartbeat_at: r.try_get::<_, i64>(3)? + local - r.try_get::<_, i64>(5)?,
            lease_ms: r.try_get(4)?,
        })),
        None => Ok(None),
    }
}

pub(super) async fn remove_owner(tx: &Tx, id: &str) -> Result<()> {
    tx.c.execute("DELETE FROM owners WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

// ---------------------------------------------------------------- change sets

/// Applies a change set to a workflow `fence.owner` holds at `fence.epoch`, or fails with
/// [`StoreError::Fenced`] before writing anything. Its events are queued on `tx` and
/// appended with their global cursors just before the commit.
pub(super) async fn apply(tx: &Tx, fence: &Fence, changes: &Changes) -> Result<()> {
    let id = fence.id.as_str();
    let (wid, first_seq) = fenced_reserve(tx, fence, changes.events.len() as i64).await?;
    if !changes.dropped.is_empty() {
        for table in ["attempts", "steps"] {
            tx.c.execute(
                &format!("DELETE FROM {table} WHERE wid = $1 AND step_id = ANY($2)"),
                &[&wid, &changes.dropped],
            )
            .await?;
        }
    }
    save_steps(tx, wid, &changes.steps).await?;
    let mut added = 0.0;
    for a in &changes.attempts {
        let a = charged(tx, wid, a).await?;
        upsert_attempt(tx, wid, &a).await?;
        if let Some(cost) = a.cost_usd.filter(|c| *c > 0.0) {
            added += cost;
        }
    }
    if added > 0.0 {
        tx.c.execute(
            "UPDATE workflows SET total_cost_usd = total_cost_usd + $2 WHERE wid = $1",
            &[&wid, &added],
        )
        .await?;
    }
    if let Some(st) = &changes.status {
        set_workflow_status(tx, id, st.status, st.error.as_deref(), st.release).await?;
    }
    if let Some(budget) = changes.max_cost_usd {
        tx.c.execute(
            "UPDATE workflows SET max_cost_usd = $2 WHERE wid = $1",
            &[&wid, &budget],
        )
        .await?;
    }
    let now = tx.now();
    for (i, e) in changes.events.iter().enumerate() {
        tx.queue_event(wid, first_seq + i as i64, e, now)?;
    }
    Ok(())
}

async fn set_workflow_status(
    tx: &Tx,
    id: &str,
    status: WorkflowStatus,
    error: Option<&str>,
    release: bool,
) -> Result<()> {
    let now = tx.now();
    let finished = status.is_terminal().then_some(now);
    let started = (status == WorkflowStatus::Running).then_some(now);
    tx.c.execute(
        "UPDATE workflows SET status = $2, error = $3, updated_at = $4, \
         finished_at = $5, started_at = coalesce(started_at, $6), \
         owner = CASE WHEN $7 THEN NULL ELSE owner END, \
         lease_expires_at = CASE WHEN $7 THEN NULL ELSE lease_expires_at END, \
         cancel_requested = CASE WHEN $7 THEN false ELSE cancel_requested END \
         WHERE id = $1",
        &[
            &id,
            &status.as_str(),
            &error,
            &now,
            &finished,
            &started,
            &release,
        ],
    )
    .await?;
    tx.touched(id);
    Ok(())
}

/// The agent CLI reports a session's cumulative cost, so an attempt is charged the
/// difference to what earlier attempts of the same session were charged.
async fn charged(tx: &Tx, wid: i64, a: &AttemptRow) -> Result<AttemptRow> {
    let mut a = a.clone();
    if let (Some(reported), Some(session)) = (a.cost_usd, a.session_id.as_deref()) {
        let before: f64 =
            tx.c.query_one(
                "SELECT coalesce(sum(cost_usd), 0)::double precision FROM attempts \
                 WHERE wid = $1 AND session_id = $2 AND NOT (step_id = $3 AND number = $4)",
                &[&wid, &session, &a.step_id, &a.number],
            )
            .await?
            .try_get(0)?;
        a.cost_usd = Some(((reported - before).max(0.0) * 1e10).round() / 1e10);
    }
    Ok(a)
}

pub(super) async fn snapshot(c: &Client, id: &str) -> Result<Option<Snapshot>> {
    let Some(workflow) = find_workflow(c, id).await? else {
        return Ok(None);
    };
    let steps = load_steps(c, id).await?;
    let definition = load_definition(c, id).await?;
    Ok(Some(Snapshot {
        workflow,
        steps,
        definition,
    }))
}

/// Steps completed or skipped by events up to `cursor`.
pub(super) async fn done_at(c: &Client, id: &str, cursor: i64) -> Result<i64> {
    Ok(c.query_one(
        "SELECT count(*) FROM events WHERE wid = (SELECT wid FROM workflows WHERE id = $1) \
             AND seq <= $2 AND type IN ($3, $4)",
        &[
            &id,
            &cursor,
            &EventKind::StepCompleted.code(),
            &EventKind::StepSkipped.code(),
        ],
    )
    .await?
    .try_get(0)?)
}

/// An event's payload as stored.
pub(super) fn event_data(e: &NewEvent) -> Result<Option<String>> {
    if e.data.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&e.data)
        .map(Some)
        .map_err(|err| StoreError::Corrupt(format!("event payload: {err}")))
}

// ---------------------------------------------------------------- human answers

/// Records an answer to the open question of step `step_id` of an owned workflow (its owner
/// applies it), unless the step no longer waits, was answered already, or nobody owns the
/// workflow any more. Returns whether it was recorded.
pub(super) async fn record_answer(tx: &Tx, id: &str, step_id: &str, answer: &str) -> Result<bool> {
    let n =
        tx.c.execute(
            "UPDATE steps SET answer = $3 WHERE wid = (SELECT wid FROM workflows \
             WHERE id = $1 AND owner IS NOT NULL) \
             AND step_id = $2 AND status = 'blocked' AND waiting IS NOT NULL AND answer IS NULL",
            &[&id, &step_id, &answer],
        )
        .await?;
    if n > 0 {
        tx.touched(id);
    }
    Ok(n > 0)
}

/// The recorded, not yet applied answers of a workflow's waiting steps: step id, answer.
pub(super) async fn answers(c: &Client, id: &str) -> Result<Vec<(String, String)>> {
    c.query(
        "SELECT step_id, answer FROM steps WHERE wid = (SELECT wid FROM workflows WHERE id = $1) \
         AND status = 'blocked' AND answer IS NOT NULL",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect()
}
