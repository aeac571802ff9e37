//! Read models: the status of one workflow, the monitor's list, the event log page.
//!
//! Invariant: views are built from the store alone, so every process sharing the database
//! answers the same; nothing here writes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Engine, EngineError, Result, lease};
use crate::store::{self, EventRow, StepStatus, StoreError, WorkflowStatus, now_ms, rfc3339};
use crate::workflow::Workflow;

/// Completed (or skipped) steps out of all steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Progress {
    pub done: i64,
    pub total: i64,
}

/// One attempt of a step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AttemptView {
    pub number: i64,
    /// `running`, `succeeded`, `failed`, `timed_out`, `blocked`, `cancelled`, `interrupted`
    /// (server shut down) or `crashed` (server died).
    pub outcome: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")]
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")]
    pub exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")]
    pub cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")]
    pub num_turns: Option<i64>,
}

/// One step's state.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StepView {
    pub id: String,
    pub status: StepStatus,
    /// Attempts started so far.
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")]
    pub duration_ms: Option<i64>,
    /// The step's output (a preview if long: see `output_truncated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub output_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub last_activity_at: Option<String>,
    pub attempt_history: Vec<AttemptView>,
}

/// Status of one workflow, as `invoke_status` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowView {
    pub thread_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub name: Option<String>,
    pub status: WorkflowStatus,
    pub progress: Progress,
    /// Steps running or waiting to retry.
    pub current_steps: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub error: Option<String>,
    /// Sum of agent costs over all attempts.
    pub total_cost_usd: f64,
    /// Owner id of the process running it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub owner: Option<String>,
    pub inputs: BTreeMap<String, String>,
    pub steps: Vec<StepView>,
}

/// Filter of `workflow_monitor`.
#[derive(Debug, Clone, Default)]
pub struct MonitorFilter {
    pub status: Option<WorkflowStatus>,
    pub include_finished: bool,
    pub limit: i64,
}

/// One workflow in the monitor.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MonitoredWorkflow {
    pub thread_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub name: Option<String>,
    pub status: WorkflowStatus,
    pub progress: Progress,
    pub current_steps: Vec<String>,
    pub started_at: String,
    pub last_activity_at: String,
    /// Seconds since the last sign of life (output line, step boundary or lease renewal).
    pub heartbeat_age_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub owner: Option<String>,
    /// `stalled` (a running step silent longer than its stall threshold), `orphaned` (its
    /// owner is gone and no process adopted it yet), `overdue` (running much longer than its
    /// past runs).
    pub flags: Vec<String>,
}

/// The monitor's answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MonitorView {
    pub workflows: Vec<MonitoredWorkflow>,
    /// Number of workflows in the store per status.
    pub counts: BTreeMap<String, i64>,
}

fn preview(output: &str, max_chars: usize) -> (String, bool) {
    let trimmed = output.trim_end();
    if trimmed.chars().count() <= max_chars {
        return (trimmed.to_owned(), false);
    }
    let head: String = trimmed.chars().take(max_chars).collect();
    (head, true)
}

/// A workflow is overdue when it has run more than twice as long as its past runs took, and
/// at least ten seconds longer (so short workflows do not flap).
pub fn is_overdue(elapsed_ms: i64, estimate_ms: i64) -> bool {
    elapsed_ms > 2 * estimate_ms && elapsed_ms - estimate_ms > 10_000
}

fn opt_ts(ms: Option<i64>) -> Option<String> {
    ms.map(rfc3339)
}

impl Engine {
    /// Status of one workflow; outputs longer than `output_chars` are cut.
    pub async fn status(&self, thread_id: &str, output_chars: usize) -> Result<WorkflowView> {
        let id = thread_id.to_owned();
        let found = self
            .store()
            .read(move |c| {
                let Some(row) = store::find_workflow(c, &id)? else {
                    return Ok(None);
                };
                let steps = store::load_steps(c, &id)?;
                let attempts = store::load_attempts(c, &id)?;
                let definition = store::load_definition(c, &id)?;
                Ok(Some((row, steps, attempts, definition)))
            })
            .await?;
        let (row, steps, attempts, definition) =
            found.ok_or_else(|| EngineError::NotFound(thread_id.to_owned()))?;
        let def: Workflow = serde_json::from_str(&definition)
            .map_err(|e| StoreError::Corrupt(format!("stored definition: {e}")))?;
        let mut by_step: BTreeMap<&str, Vec<AttemptView>> = BTreeMap::new();
        for a in &attempts {
            by_step
                .entry(a.step_id.as_str())
                .or_default()
                .push(AttemptView {
                    number: a.number,
                    outcome: a.outcome.clone(),
                    started_at: rfc3339(a.started_at),
                    finished_at: opt_ts(a.finished_at),
                    duration_ms: a.finished_at.map(|f| f - a.started_at),
                    exit_code: a.exit_code,
                    error: a.error.clone(),
                    session_id: a.session_id.clone(),
                    cost_usd: a.cost_usd,
                    num_turns: a.num_turns,
                });
        }
        let done = steps.iter().filter(|s| s.status.satisfies_deps()).count() as i64;
        let current = steps
            .iter()
            .filter(|s| matches!(s.status, StepStatus::Running | StepStatus::Retrying))
            .map(|s| s.step_id.clone())
            .collect();
        let step_views = steps
            .iter()
            .map(|s| {
                let (output, output_truncated) = match &s.output {
                    Some(o) => {
                        let (p, t) = preview(o, output_chars);
                        (Some(p), t)
                    }
                    None => (None, false),
                };
                StepView {
                    id: s.step_id.clone(),
                    status: s.status,
                    attempts: s.attempts,
                    session_id: s.session_id.clone(),
                    started_at: opt_ts(s.started_at),
                    finished_at: opt_ts(s.finished_at),
                    duration_ms: match (s.started_at, s.finished_at) {
                        (Some(a), Some(b)) => Some(b - a),
                        _ => None,
                    },
                    output,
                    output_truncated,
                    error: s.error.clone(),
                    last_activity_at: opt_ts(s.last_activity_at),
                    attempt_history: by_step.remove(s.step_id.as_str()).unwrap_or_default(),
                }
            })
            .collect();
        Ok(WorkflowView {
            thread_id: row.id,
            name: row.name,
            status: row.status,
            progress: Progress {
                done,
                total: row.step_count,
            },
            current_steps: current,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            finished_at: opt_ts(row.finished_at),
            error: row.error,
            total_cost_usd: row.total_cost_usd,
            owner: row.owner,
            inputs: def.inputs,
            steps: step_views,
        })
    }

    /// Events after `cursor` (at most `limit`), and the workflow's current status.
    pub async fn events(
        &self,
        thread_id: &str,
        cursor: i64,
        limit: i64,
    ) -> Result<(WorkflowStatus, i64, Vec<EventRow>)> {
        let id = thread_id.to_owned();
        let found = self
            .store()
            .read(move |c| {
                let Some(row) = store::find_workflow(c, &id)? else {
                    return Ok(None);
                };
                let events = store::events_after(c, &id, cursor, limit)?;
                Ok(Some((row.status, row.step_count, events)))
            })
            .await?;
        found.ok_or_else(|| EngineError::NotFound(thread_id.to_owned()))
    }

    /// Active workflows (and finished ones on request) with liveness flags. Everything is
    /// read in one pass on one reader connection: one steps query per listed workflow, the
    /// definition only where a step runs, and each distinct owner checked once.
    pub async fn monitor(&self, filter: MonitorFilter) -> Result<MonitorView> {
        let statuses: Option<Vec<WorkflowStatus>> = match filter.status {
            Some(s) => Some(vec![s]),
            None if filter.include_finished => None,
            None => Some(vec![
                WorkflowStatus::Queued,
                WorkflowStatus::Running,
                WorkflowStatus::Blocked,
                WorkflowStatus::Interrupted,
            ]),
        };
        let limit = if filter.limit <= 0 {
            50
        } else {
            filter.limit.min(1000)
        };
        let sh = self.sh.clone();
        let (workflows, counts) = self
            .store()
            .read(move |c| {
                let now = now_ms();
                let rows = store::list_workflows(c, statuses.as_deref(), limit)?;
                let mut owners: BTreeMap<String, bool> = BTreeMap::new();
                let mut estimates: BTreeMap<String, Option<f64>> = BTreeMap::new();
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let steps = store::load_steps(c, &row.id)?;
                    let mut flags = Vec::new();
                    let active =
                        matches!(row.status, WorkflowStatus::Running | WorkflowStatus::Queued);
                    if active {
                        let alive = match &row.owner {
                            None => false,
                            Some(o) => *owners
                                .entry(o.clone())
                                .or_insert_with(|| lease::owner_alive(c, &sh, o, now)),
                        };
                        if !alive {
                            flags.push("orphaned".to_owned());
                        }
                    }
                    let running: Vec<&store::StepRow> = steps
                        .iter()
                        .filter(|s| s.status == StepStatus::Running)
                        .collect();
                    if row.status == WorkflowStatus::Running {
                        let def: Option<Workflow> = store::load_definition(c, &row.id)
                            .ok()
                            .and_then(|d| serde_json::from_str(&d).ok());
                        if let Some(def) = &def {
                            let stalled = running.iter().any(|s| {
                                let started = s.started_at.unwrap_or(now);
                                let last = s.last_activity_at.unwrap_or(started).max(started);
                                def.step(&s.step_id)
                                    .is_some_and(|d| now - last > (d.stall_timeout_s as i64) * 1000)
                            });
                            if stalled {
                                flags.push("stalled".to_owned());
                            }
                            if let (Some(name), Some(started)) = (&def.name, row.started_at) {
                                let est = *estimates
                                    .entry(name.clone())
                                    .or_insert_with(|| super::control::estimate_in(c, def));
                                if est
                                    .is_some_and(|e| is_overdue(now - started, (e * 1000.0) as i64))
                                {
                                    flags.push("overdue".to_owned());
                                }
                            }
                        }
                    }
                    let done = steps.iter().filter(|s| s.status.satisfies_deps()).count() as i64;
                    let current = steps
                        .iter()
                        .filter(|s| matches!(s.status, StepStatus::Running | StepStatus::Retrying))
                        .map(|s| s.step_id.clone())
                        .collect();
                    let last_activity = [Some(row.updated_at), row.last_activity_at]
                        .into_iter()
                        .flatten()
                        .max()
                        .unwrap_or(row.created_at);
                    out.push(MonitoredWorkflow {
                        thread_id: row.id,
                        name: row.name,
                        status: row.status,
                        progress: Progress {
                            done,
                            total: row.step_count,
                        },
                        current_steps: current,
                        started_at: rfc3339(row.started_at.unwrap_or(row.created_at)),
                        last_activity_at: rfc3339(last_activity),
                        heartbeat_age_s: ((now - last_activity).max(0) as f64) / 1000.0,
                        owner: row.owner,
                        flags,
                    });
                }
                Ok((out, store::count_by_status(c)?))
            })
            .await?;
        Ok(MonitorView {
            workflows,
            counts: counts
                .into_iter()
                .map(|(s, n)| (s.as_str().to_owned(), n))
                .collect(),
        })
    }
}

/// One readable line for an event, e.g. `build: completed in 1.2s` — used for progress
/// notifications and `baton run` output.
pub fn describe_event(e: &EventRow) -> String {
    use crate::store::EventKind as K;
    let step = e.step_id.as_deref().unwrap_or("");
    let data = |k: &str| e.data.as_ref().and_then(|d| d.get(k));
    let text = |k: &str| data(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let attempt = e.attempt.unwrap_or(1);
    match e.kind {
        K::WorkflowStarted => "workflow started".to_owned(),
        K::StepStarted if attempt > 1 => format!("{step}: started (attempt {attempt})"),
        K::StepStarted => format!("{step}: started"),
        K::StepProgress => format!("{step}: {}", text("message")),
        K::StepRetrying => format!(
            "{step}: attempt {attempt} failed ({}); retrying in {:.1}s",
            crate::engine::outcome::tail(&text("error"), 300),
            data("delay_ms").and_then(|v| v.as_f64()).unwrap_or(0.0) / 1000.0
        ),
        K::StepCompleted => format!(
            "{step}: completed in {:.1}s",
            data("duration_ms").and_then(|v| v.as_f64()).unwrap_or(0.0) / 1000.0
        ),
        K::StepFailed => format!(
            "{step}: failed: {}",
            crate::engine::outcome::tail(&text("error"), 300)
        ),
        K::StepBlocked => format!("{step}: blocked: {}", text("reason")),
        K::StepSkipped => format!("{step}: skipped"),
        K::StepCancelled => format!("{step}: cancelled"),
        K::WorkflowCompleted => "workflow completed".to_owned(),
        K::WorkflowFailed => format!("workflow failed: {}", text("error")),
        K::WorkflowBlocked => format!("workflow blocked: {}", text("error")),
        K::WorkflowCancelled => "workflow cancelled".to_owned(),
        K::WorkflowInterrupted => {
            "workflow interrupted (server stopped); it resumes in the next baton process".to_owned()
        }
        K::WorkflowResumed => match data("by").and_then(|v| v.as_str()) {
            Some("adoption") => "workflow resumed after its previous server died".to_owned(),
            _ => "workflow resumed".to_owned(),
        },
    }
}

impl Engine {
    /// Events after `cursor`, waiting until there is at least one, the workflow is no longer
    /// running, or `until` passes. Wakes on commits of this process at once and polls the
    /// store for commits of other processes.
    pub async fn wait_events(
        &self,
        thread_id: &str,
        cursor: i64,
        limit: i64,
        until: tokio::time::Instant,
    ) -> Result<(WorkflowStatus, i64, Vec<EventRow>)> {
        use tokio::sync::broadcast::error::RecvError;
        let mut rx = self.store().subscribe();
        loop {
            let (status, count, events) = self.events(thread_id, cursor, limit).await?;
            let now = tokio::time::Instant::now();
            if !events.is_empty() || status.is_terminal() || now >= until {
                return Ok((status, count, events));
            }
            let poll = until.min(now + std::time::Duration::from_millis(500));
            loop {
                match tokio::time::timeout_at(poll, rx.recv()).await {
                    Ok(Ok(id)) if &*id == thread_id => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(RecvError::Lagged(_))) => break,
                    Ok(Err(RecvError::Closed)) => {
                        tokio::time::sleep_until(poll).await;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

impl Engine {
    /// Number of completed or skipped steps of a workflow.
    pub async fn done_steps(&self, thread_id: &str) -> Result<i64> {
        let id = thread_id.to_owned();
        Ok(self
            .store()
            .read(move |c| store::done_count(c, &id))
            .await?)
    }
}

impl Engine {
    /// Steps completed or skipped by events up to `cursor` (an estimate when a resume reset
    /// steps in between), for progress reporting of a replay that starts at `cursor`.
    pub async fn done_at(&self, thread_id: &str, cursor: i64) -> Result<i64> {
        let id = thread_id.to_owned();
        Ok(self
            .store()
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT count(*) FROM events WHERE wid = (SELECT wid FROM workflows WHERE id = ?1) AND seq <= ?2 \
                     AND type IN (?3, ?4)",
                )?;
                let (completed, skipped) = (
                    crate::store::EventKind::StepCompleted.code(),
                    crate::store::EventKind::StepSkipped.code(),
                );
                Ok(stmt.query_row(rusqlite::params![id, cursor, completed, skipped], |r| {
                    r.get(0)
                })?)
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::is_overdue;

    #[test]
    fn overdue_needs_twice_the_history_and_ten_seconds_more() {
        assert!(!is_overdue(1_500, 1_000));
        assert!(!is_overdue(9_000, 1_000), "short workflows do not flap");
        assert!(is_overdue(12_000, 1_000));
        assert!(!is_overdue(100_000, 60_000));
        assert!(is_overdue(130_000, 60_000));
    }
}
