//! Building the read models of `crate::api` (status of one workflow, the monitor's list)
//! from the store.
//!
//! Invariant: views are built from the store alone, so every process sharing the database
//! answers the same; nothing here writes.

use std::collections::BTreeMap;

use super::{Engine, EngineError, Result, lease};
use crate::api::{
    AttemptView, MonitorView, MonitoredWorkflow, Progress, StepStatus, StepView, ThreadId,
    WorkflowStatus, WorkflowView, is_overdue, now_ms, rfc3339,
};
use crate::store::{MonitorRow, MonitorRows, StepRow};
use crate::workflow::Workflow;

/// Filter of the monitor.
#[derive(Debug, Clone, Default)]
pub struct MonitorFilter {
    pub status: Option<WorkflowStatus>,
    pub include_finished: bool,
    pub limit: i64,
}

fn preview(output: &str, max_chars: usize) -> (String, bool) {
    let trimmed = output.trim_end();
    if trimmed.chars().count() <= max_chars {
        return (trimmed.to_owned(), false);
    }
    let head: String = trimmed.chars().take(max_chars).collect();
    (head, true)
}

fn opt_ts(ms: Option<i64>) -> Option<String> {
    ms.map(rfc3339)
}

fn progress(steps: &[StepRow], total: i64) -> Progress {
    Progress {
        done: steps.iter().filter(|s| s.status.satisfies_deps()).count() as i64,
        total,
    }
}

fn current(steps: &[StepRow]) -> Vec<String> {
    steps
        .iter()
        .filter(|s| s.status.is_current())
        .map(|s| s.step_id.clone())
        .collect()
}

impl Engine {
    /// Status of one workflow; outputs longer than `output_chars` are cut.
    pub async fn status(&self, thread_id: &ThreadId, output_chars: usize) -> Result<WorkflowView> {
        let (snap, attempts) = self
            .sh
            .store
            .detail(thread_id.clone())
            .await?
            .ok_or_else(|| EngineError::NotFound {
                thread_id: thread_id.clone(),
            })?;
        let def = self.sh.definition(&snap)?;
        let mut by_step: BTreeMap<&str, Vec<AttemptView>> = BTreeMap::new();
        for a in &attempts {
            by_step
                .entry(a.step_id.as_str())
                .or_default()
                .push(AttemptView {
                    number: a.number,
                    outcome: a.outcome,
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
        let row = snap.workflow;
        let steps = snap.steps;
        let step_views: Vec<StepView> = steps
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
                    deps: row_deps(&def, &s.step_id),
                    waiting_for: super::scheduler::waiting_for(s),
                }
            })
            .collect();
        Ok(WorkflowView {
            thread_id: row.id,
            name: row.name,
            status: row.status,
            progress: progress(&steps, row.step_count),
            current_steps: current(&steps),
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            finished_at: opt_ts(row.finished_at),
            error: row.error,
            total_cost_usd: row.total_cost_usd,
            max_cost_usd: row.max_cost_usd.or(def.max_cost_usd),
            owner: row.owner,
            inputs: def.inputs.clone(),
            waiting_for: step_views
                .iter()
                .filter_map(|s| s.waiting_for.clone())
                .collect(),
            steps: step_views,
        })
    }

    /// Active workflows (and finished ones on request) with liveness flags: one store read
    /// for the rows, their steps and owners; the history of each distinct name once.
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
        let listing = self.sh.store.monitor(statuses, limit).await?;
        Ok(self.monitor_view(listing).await)
    }

    /// The monitor's view of a listing: liveness flags from the owners, estimates from
    /// history.
    pub(super) async fn monitor_view(&self, listing: MonitorRows) -> MonitorView {
        let now = now_ms();
        let mut estimates: BTreeMap<String, Option<f64>> = BTreeMap::new();
        let mut workflows = Vec::with_capacity(listing.rows.len());
        for MonitorRow {
            workflow: row,
            steps,
            definition,
        } in listing.rows
        {
            let mut flags = Vec::new();
            if matches!(row.status, WorkflowStatus::Running | WorkflowStatus::Queued) {
                let owner = row
                    .owner
                    .as_ref()
                    .and_then(|o| listing.owners.iter().find(|r| &r.id == o));
                let alive = row.owner.as_deref() == Some(self.owner_id())
                    || lease::owner_alive(&self.sh, owner, now);
                if !alive {
                    flags.push("orphaned".to_owned());
                }
            }
            let def: Option<Workflow> = definition.and_then(|d| serde_json::from_str(&d).ok());
            if let Some(def) = &def {
                let stalled = steps
                    .iter()
                    .filter(|s| s.status == StepStatus::Running)
                    .any(|s| {
                        let started = s.started_at.unwrap_or(now);
                        let last = s.last_activity_at.unwrap_or(started).max(started);
                        def.step(&s.step_id).is_some_and(|d| {
                            now - last
                                > i64::try_from(d.stall_timeout_s).unwrap_or(i64::MAX / 1000) * 1000
                        })
                    });
                if stalled {
                    flags.push("stalled".to_owned());
                }
                if let (Some(name), Some(started)) = (&def.name, row.started_at) {
                    let est = match estimates.get(name) {
                        Some(e) => *e,
                        None => {
                            let e = self.estimate(def).await;
                            estimates.insert(name.clone(), e);
                            e
                        }
                    };
                    if est.is_some_and(|e| is_overdue(now - started, (e * 1000.0) as i64)) {
                        flags.push("overdue".to_owned());
                    }
                }
            }
            let last_activity = [Some(row.updated_at), row.last_activity_at]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(row.created_at);
            workflows.push(MonitoredWorkflow {
                progress: progress(&steps, row.step_count),
                current_steps: current(&steps),
                thread_id: row.id,
                name: row.name,
                status: row.status,
                started_at: rfc3339(row.started_at.unwrap_or(row.created_at)),
                last_activity_at: rfc3339(last_activity),
                heartbeat_age_s: ((now - last_activity).max(0) as f64) / 1000.0,
                owner: row.owner,
                flags,
            });
        }
        MonitorView {
            workflows,
            counts: listing
                .counts
                .into_iter()
                .map(|(s, n)| (s.as_str().to_owned(), n))
                .collect(),
        }
    }
}

/// The deps of a row as the status shows them: an instance `ID[i]` has its step's deps; an
/// iteration `STEP#k` has its siblings of the same iteration (`test#2`) and its outer deps.
fn row_deps(def: &Workflow, row_id: &str) -> Vec<String> {
    if let Some(step) = def.step(row_id) {
        return step.deps.clone();
    }
    if let Some((parent, _)) = crate::workflow::parse_instance(row_id) {
        return def.step(parent).map(|s| s.deps.clone()).unwrap_or_default();
    }
    let Some((step, k)) = crate::workflow::parse_iteration(row_id) else {
        return Vec::new();
    };
    let Some(s) = def.step(step) else {
        return Vec::new();
    };
    s.deps
        .iter()
        .map(|d| match def.step(d) {
            Some(dep) if dep.group.is_some() && dep.group == s.group => {
                crate::workflow::iteration_id(d, k)
            }
            _ => d.clone(),
        })
        .collect()
}
