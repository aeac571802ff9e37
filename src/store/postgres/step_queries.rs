//! The SQL of steps and attempts: loading and saving steps, sessions and activity, attempts,
//! and the median step durations estimates are made from.

use tokio_postgres::{Client, Row};

use super::Tx;
use super::queries::parse;
use crate::api::{AttemptOutcome, StepStatus};
use crate::store::{AttemptRow, Result, StepExtra, StepRow};

const STEP_COLS: &str = "step_id, idx, status, attempts, failures, crashes, session_id, \
    started_at, finished_at, output, error, last_activity_at, guidance, agent_overrides, \
    fresh_session, items, waiting, answer, exit_code";

fn step_row(r: &Row) -> Result<StepRow> {
    Ok(StepRow {
        step_id: r.try_get(0)?,
        idx: r.try_get(1)?,
        status: parse(&r.try_get::<_, String>(2)?, StepStatus::parse)?,
        attempts: r.try_get(3)?,
        failures: r.try_get(4)?,
        crashes: r.try_get(5)?,
        session_id: r.try_get(6)?,
        started_at: r.try_get(7)?,
        finished_at: r.try_get(8)?,
        output: r.try_get(9)?,
        error: r.try_get(10)?,
        last_activity_at: r.try_get(11)?,
        exit_code: r.try_get(18)?,
        extra: StepExtra {
            guidance: r.try_get(12)?,
            agent_overrides: r.try_get(13)?,
            fresh_session: r.try_get(14)?,
            items: r.try_get(15)?,
            waiting: r.try_get(16)?,
            answer: r.try_get(17)?,
        }
        .boxed(),
    })
}

pub(super) async fn load_steps(c: &Client, id: &str) -> Result<Vec<StepRow>> {
    let sql = format!(
        "SELECT {STEP_COLS} FROM steps WHERE wid = (SELECT wid FROM workflows WHERE id = $1) \
         ORDER BY idx"
    );
    c.query(&sql, &[&id]).await?.iter().map(step_row).collect()
}

/// Writes every mutable field of the steps, inserting those that are new (`for_each`
/// instances), in one statement.
pub(super) async fn save_steps(tx: &Tx, wid: i64, steps: &[StepRow]) -> Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&StepRow) -> Option<String>| steps.iter().map(f).collect::<Vec<_>>();
    let int = |f: fn(&StepRow) -> Option<i64>| steps.iter().map(f).collect::<Vec<_>>();
    let ids = col(|s| Some(s.step_id.clone()));
    let idx = int(|s| Some(s.idx));
    let status = col(|s| Some(s.status.as_str().to_owned()));
    let attempts = int(|s| Some(s.attempts));
    let failures = int(|s| Some(s.failures));
    let crashes = int(|s| Some(s.crashes));
    let session = col(|s| s.session_id.clone());
    let started = int(|s| s.started_at);
    let finished = int(|s| s.finished_at);
    let output = col(|s| s.output.clone());
    let error = col(|s| s.error.clone());
    let activity = int(|s| s.last_activity_at);
    let guidance = col(|s| s.guidance().map(str::to_owned));
    let overrides = col(|s| s.agent_overrides().map(str::to_owned));
    let fresh: Vec<bool> = steps.iter().map(StepRow::fresh_session).collect();
    let items = col(|s| s.items().map(str::to_owned));
    let waiting = col(|s| s.waiting().map(str::to_owned));
    let answer = col(|s| s.answer().map(str::to_owned));
    let exit_code = int(|s| s.exit_code);
    tx.c.execute(
        "INSERT INTO steps (wid, step_id, idx, status, attempts, failures, crashes, session_id, \
         started_at, finished_at, output, error, last_activity_at, guidance, agent_overrides, \
         fresh_session, items, waiting, answer, exit_code) \
         SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::bigint[], \
                     $6::bigint[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[], \
                     $11::text[], $12::text[], $13::bigint[], $14::text[], $15::text[], \
                     $16::boolean[], $17::text[], $18::text[], $19::text[], $20::bigint[]) \
         ON CONFLICT (wid, step_id) DO UPDATE SET status = excluded.status, \
         attempts = excluded.attempts, failures = excluded.failures, \
         crashes = excluded.crashes, session_id = excluded.session_id, \
         started_at = excluded.started_at, finished_at = excluded.finished_at, \
         output = excluded.output, error = excluded.error, \
         last_activity_at = excluded.last_activity_at, guidance = excluded.guidance, \
         agent_overrides = excluded.agent_overrides, fresh_session = excluded.fresh_session, \
         items = excluded.items, waiting = excluded.waiting, answer = excluded.answer, \
         exit_code = excluded.exit_code",
        &[
            &wid, &ids, &idx, &status, &attempts, &failures, &crashes, &session, &started,
            &finished, &output, &error, &activity, &guidance, &overrides, &fresh, &items, &waiting,
            &answer, &exit_code,
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn set_session(
    tx: &Tx,
    id: &str,
    step_id: &str,
    attempt: i64,
    session_id: &str,
) -> Result<()> {
    tx.c.execute(
        "UPDATE steps SET session_id = $3 \
         WHERE wid = (SELECT wid FROM workflows WHERE id = $1) AND step_id = $2",
        &[&id, &step_id, &session_id],
    )
    .await?;
    tx.c.execute(
        "UPDATE attempts SET session_id = $4 \
         WHERE wid = (SELECT wid FROM workflows WHERE id = $1) AND step_id = $2 AND number = $3",
        &[&id, &step_id, &attempt, &session_id],
    )
    .await?;
    tx.touched(id);
    Ok(())
}

pub(super) async fn set_activity(tx: &Tx, id: &str, step_id: &str, at: i64) -> Result<()> {
    tx.c.execute(
        "UPDATE steps SET last_activity_at = $3 \
         WHERE wid = (SELECT wid FROM workflows WHERE id = $1) AND step_id = $2",
        &[&id, &step_id, &at],
    )
    .await?;
    tx.c.execute(
        "UPDATE workflows SET last_activity_at = greatest(coalesce(last_activity_at, 0), $2) \
         WHERE id = $1",
        &[&id, &at],
    )
    .await?;
    Ok(())
}

pub(super) async fn upsert_attempt(tx: &Tx, wid: i64, a: &AttemptRow) -> Result<()> {
    tx.c.execute(
        "INSERT INTO attempts (wid, step_id, number, started_at, finished_at, outcome, \
         exit_code, error, stderr, session_id, cost_usd, num_turns, owner) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (wid, step_id, number) DO UPDATE SET finished_at = excluded.finished_at, \
         outcome = excluded.outcome, exit_code = excluded.exit_code, error = excluded.error, \
         stderr = excluded.stderr, session_id = excluded.session_id, \
         cost_usd = excluded.cost_usd, num_turns = excluded.num_turns, owner = excluded.owner",
        &[
            &wid,
            &a.step_id,
            &a.number,
            &a.started_at,
            &a.finished_at,
            &a.outcome.as_str(),
            &a.exit_code,
            &a.error,
            &a.stderr,
            &a.session_id,
            &a.cost_usd,
            &a.num_turns,
            &a.owner,
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn load_attempts(c: &Client, id: &str) -> Result<Vec<AttemptRow>> {
    c.query(
        "SELECT step_id, number, started_at, finished_at, outcome, exit_code, error, stderr, \
         session_id, cost_usd, num_turns, owner FROM attempts \
         WHERE wid = (SELECT wid FROM workflows WHERE id = $1) ORDER BY step_id, number",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(AttemptRow {
            step_id: r.try_get(0)?,
            number: r.try_get(1)?,
            started_at: r.try_get(2)?,
            finished_at: r.try_get(3)?,
            outcome: parse(&r.try_get::<_, String>(4)?, AttemptOutcome::parse)?,
            exit_code: r.try_get(5)?,
            error: r.try_get(6)?,
            stderr: r.try_get(7)?,
            session_id: r.try_get(8)?,
            cost_usd: r.try_get(9)?,
            num_turns: r.try_get(10)?,
            owner: r.try_get(11)?,
        })
    })
    .collect()
}

/// Median duration (ms) of completed steps in the last 20 completed workflows with this
/// name, per step id.
pub(super) async fn median_step_durations(
    c: &Client,
    name: &str,
) -> Result<std::collections::BTreeMap<String, i64>> {
    let rows = c
        .query(
            "SELECT s.step_id, s.finished_at - s.started_at FROM \
             (SELECT wid FROM workflows WHERE name = $1 AND status = 'completed' \
              ORDER BY created_at DESC LIMIT 20) w \
             JOIN steps s ON s.wid = w.wid \
             WHERE s.status = 'completed' AND s.finished_at IS NOT NULL \
             AND s.started_at IS NOT NULL",
            &[&name],
        )
        .await?;
    let mut by_step: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for r in rows {
        by_step
            .entry(r.try_get(0)?)
            .or_default()
            .push(r.try_get(1)?);
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
