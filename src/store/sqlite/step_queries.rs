//! The SQL of steps and attempts: loading and saving steps, sessions and activity, attempts,
//! and the median step durations estimates are made from.

use rusqlite::{Connection, Row, params};

use super::WriteCtx;
use super::queries::status_of;
use crate::api::{AttemptOutcome, StepStatus};
use crate::store::{AttemptRow, Result, StepExtra, StepRow};

const STEP_COLS: &str = "step_id, idx, status, attempts, failures, crashes, session_id, \
    started_at, finished_at, output, error, last_activity_at, guidance, agent_overrides, \
    fresh_session, items, waiting, answer, exit_code";

fn step_row(r: &Row<'_>) -> rusqlite::Result<StepRow> {
    Ok(StepRow {
        step_id: r.get(0)?,
        idx: r.get(1)?,
        status: status_of(r.get(2)?, StepStatus::parse)?,
        attempts: r.get(3)?,
        failures: r.get(4)?,
        crashes: r.get(5)?,
        session_id: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        output: r.get(9)?,
        error: r.get(10)?,
        last_activity_at: r.get(11)?,
        exit_code: r.get(18)?,
        extra: StepExtra {
            guidance: r.get(12)?,
            agent_overrides: r.get(13)?,
            fresh_session: r.get(14)?,
            items: r.get(15)?,
            waiting: r.get(16)?,
            answer: r.get(17)?,
        }
        .boxed(),
    })
}

pub fn load_steps(conn: &Connection, workflow_id: &str) -> Result<Vec<StepRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STEP_COLS} FROM steps WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) ORDER BY idx"
    ))?;
    let rows = stmt.query_map([workflow_id], step_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Writes every mutable field of a step, inserting it if it is new (a `for_each` instance).
pub fn save_step(ctx: &mut WriteCtx<'_>, workflow_id: &str, s: &StepRow) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "INSERT INTO steps (wid, step_id, idx, status, attempts, failures, crashes, \
             session_id, started_at, finished_at, output, error, last_activity_at, guidance, \
             agent_overrides, fresh_session, items, waiting, answer, exit_code) \
             VALUES ((SELECT wid FROM workflows WHERE id = ?1), ?2, ?16, ?3, ?4, ?5, ?6, ?7, \
             ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?17, ?18, ?19, ?20) \
             ON CONFLICT (wid, step_id) DO UPDATE SET status = ?3, attempts = ?4, \
             failures = ?5, crashes = ?6, session_id = ?7, started_at = ?8, finished_at = ?9, \
             output = ?10, error = ?11, last_activity_at = ?12, guidance = ?13, \
             agent_overrides = ?14, fresh_session = ?15, items = ?17, waiting = ?18, \
             answer = ?19, exit_code = ?20",
        )?
        .execute(params![
            workflow_id,
            s.step_id,
            s.status.as_str(),
            s.attempts,
            s.failures,
            s.crashes,
            s.session_id,
            s.started_at,
            s.finished_at,
            s.output,
            s.error,
            s.last_activity_at,
            s.guidance(),
            s.agent_overrides(),
            s.fresh_session(),
            s.idx,
            s.items(),
            s.waiting(),
            s.answer(),
            s.exit_code
        ])?;
    ctx.touched(workflow_id);
    Ok(())
}

/// Deletes step `step_id` with its attempts.
pub(super) fn drop_step(ctx: &mut WriteCtx<'_>, workflow_id: &str, step_id: &str) -> Result<()> {
    for table in ["attempts", "steps"] {
        ctx.conn
            .prepare_cached(&format!(
                "DELETE FROM {table} WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) \
                 AND step_id = ?2"
            ))?
            .execute(params![workflow_id, step_id])?;
    }
    Ok(())
}

/// Records the session id of a running step the moment it is known.
pub fn set_session(
    ctx: &mut WriteCtx<'_>,
    workflow_id: &str,
    step_id: &str,
    attempt: i64,
    session_id: &str,
) -> Result<()> {
    ctx.conn
        .prepare_cached("UPDATE steps SET session_id = ?3 WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) AND step_id = ?2")?
        .execute(params![workflow_id, step_id, session_id])?;
    ctx.conn
        .prepare_cached(
            "UPDATE attempts SET session_id = ?4 WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) AND step_id = ?2 \
             AND number = ?3",
        )?
        .execute(params![workflow_id, step_id, attempt, session_id])?;
    ctx.touched(workflow_id);
    Ok(())
}

/// Records the last time steps of a workflow showed activity.
pub fn set_activity(
    ctx: &mut WriteCtx<'_>,
    workflow_id: &str,
    step_id: &str,
    at: i64,
) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE steps SET last_activity_at = ?3 WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) AND step_id = ?2",
        )?
        .execute(params![workflow_id, step_id, at])?;
    ctx.conn
        .prepare_cached(
            "UPDATE workflows SET last_activity_at = max(coalesce(last_activity_at, 0), ?2) \
             WHERE id = ?1",
        )?
        .execute(params![workflow_id, at])?;
    Ok(())
}

/// Records an attempt; a second write of the same attempt (its end) keeps the recorded start.
pub fn upsert_attempt(ctx: &mut WriteCtx<'_>, workflow_id: &str, a: &AttemptRow) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "INSERT INTO attempts (wid, step_id, number, started_at, \
             finished_at, outcome, exit_code, error, stderr, session_id, cost_usd, num_turns, owner) \
             VALUES ((SELECT wid FROM workflows WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT (wid, step_id, number) DO UPDATE SET finished_at = excluded.finished_at, \
             outcome = excluded.outcome, exit_code = excluded.exit_code, error = excluded.error, \
             stderr = excluded.stderr, session_id = excluded.session_id, \
             cost_usd = excluded.cost_usd, num_turns = excluded.num_turns, owner = excluded.owner",
        )?
        .execute(params![
            workflow_id,
            a.step_id,
            a.number,
            a.started_at,
            a.finished_at,
            a.outcome.as_str(),
            a.exit_code,
            a.error,
            a.stderr,
            a.session_id,
            a.cost_usd,
            a.num_turns,
            a.owner
        ])?;
    Ok(())
}

pub fn load_attempts(conn: &Connection, workflow_id: &str) -> Result<Vec<AttemptRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT step_id, number, started_at, finished_at, outcome, exit_code, error, stderr, \
         session_id, cost_usd, num_turns, owner FROM attempts WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) \
         ORDER BY step_id, number",
    )?;
    let rows = stmt.query_map([workflow_id], |r| {
        Ok(AttemptRow {
            step_id: r.get(0)?,
            number: r.get(1)?,
            started_at: r.get(2)?,
            finished_at: r.get(3)?,
            outcome: status_of(r.get(4)?, AttemptOutcome::parse)?,
            exit_code: r.get(5)?,
            error: r.get(6)?,
            stderr: r.get(7)?,
            session_id: r.get(8)?,
            cost_usd: r.get(9)?,
            num_turns: r.get(10)?,
            owner: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Median duration (ms) of completed steps in the last 20 completed workflows with this
/// name, per step id.
pub fn median_step_durations(
    conn: &Connection,
    name: &str,
) -> Result<std::collections::BTreeMap<String, i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.step_id, s.finished_at - s.started_at FROM \
         (SELECT wid FROM workflows WHERE name = ?1 AND status = 'completed' \
          ORDER BY created_at DESC LIMIT 20) w \
         JOIN steps s ON s.wid = w.wid \
         WHERE s.status = 'completed' AND s.finished_at IS NOT NULL \
         AND s.started_at IS NOT NULL",
    )?;
    let mut by_step: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for row in stmt.query_map([name], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })? {
        let (id, d) = row?;
        by_step.entry(id).or_default().push(d);
    }
    Ok(by_step
        .into_iter()
        .map(|(id, mut ds)| {
            ds.sort_unstable();
            let m = ds[ds.len() / 2];
            (id, m)
        })
        .collect())
}
