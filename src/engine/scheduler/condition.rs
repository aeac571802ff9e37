//! Control flow of one pending step: once its deps settled, it runs, is skipped (its `when`
//! is false, or every dep was skipped) or fails (its `when` cannot be evaluated); after a
//! failure upstream it waits forever unless its `when` handles failures.
//!
//! Invariant: a decision reads only stored rows and the stored definition, so every process
//! decides the same; a pending step that can never run counts as failed for the steps below
//! it, so on-failure handlers run and nothing waits for it.

use super::Scheduler;
use crate::api::{EventData, EventKind, NewEvent, StepStatus};
use crate::store::{Changes, StepRow};
use crate::workflow::{Action, Expr, Scope};

/// How a dep ended, as a dependent's readiness and condition see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DepState {
    /// Not settled yet (running, retrying, blocked, or pending and still able to run).
    Waiting,
    /// Completed, or failed with `continue_on_error`.
    Ran,
    /// Not taken: skipped by a condition or because all its deps were.
    Skipped,
    /// Failed, or can never run because of a failure upstream.
    Failed,
}

/// How each step ended, computed at most once per readiness pass, so a pass over a long
/// chain of pending steps stays linear.
pub(super) struct Memo(Vec<Option<DepState>>);

impl Memo {
    pub(super) fn new(steps: usize) -> Memo {
        Memo(vec![None; steps])
    }

    /// Forgets everything: a step was settled, which changes what its dependents see.
    pub(super) fn clear(&mut self) {
        self.0.iter_mut().for_each(|m| *m = None);
    }
}

/// What a pending step does at a readiness check.
#[derive(Debug)]
pub(super) enum Decision {
    Wait,
    Run,
    Skip(EventData),
    Fail(String, EventData),
}

/// A step's values as expressions see them (`steps.ID`); outputs cut to `cut` characters
/// (and `json`, the output parsed as JSON, left null when the output is longer).
pub(super) fn step_value(row: &StepRow, cut: usize) -> serde_json::Value {
    let output: String = row
        .output
        .as_deref()
        .unwrap_or_default()
        .trim_end()
        .chars()
        .take(cut)
        .collect();
    // The whole output parsed as JSON (null when it is not JSON).
    let json = row
        .output
        .as_deref()
        .filter(|o| o.len() <= cut)
        .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "status": row.status.as_str(),
        "output": output,
        "json": json,
        "exit_code": row.exit_code,
        "attempts": row.attempts,
        "session_id": row.session_id.as_deref().unwrap_or_default(),
    })
}

/// What a condition read, for its event: the steps and inputs it names and whether a dep
/// failed.
fn read_values(when: &Expr, scope: &Scope<'_>) -> serde_json::Value {
    let cut = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(serde_json::Value::String(out)) = v.get_mut("output") {
            *out = out.chars().take(200).collect();
        }
        v
    };
    let steps: serde_json::Map<String, serde_json::Value> = when
        .steps()
        .iter()
        .filter_map(|id| Some((id.clone(), cut(scope.steps.get(id)?))))
        .collect();
    let inputs: serde_json::Map<String, serde_json::Value> = when
        .inputs()
        .iter()
        .filter_map(|n| Some((n.clone(), scope.inputs.get(n)?.clone().into())))
        .collect();
    serde_json::json!({ "steps": steps, "inputs": inputs, "failure": scope.failed })
}

impl Scheduler {
    /// Completes step `idx` with `output` without an attempt of its own (a decision, a join,
    /// an answered human step, a settled fan-out or loop); `data` adds to the event.
    pub(super) fn complete_without_attempt(
        &mut self,
        ch: &mut Changes,
        idx: usize,
        output: String,
        now: i64,
        data: EventData,
    ) {
        let row = &mut self.steps[idx];
        row.status = StepStatus::Completed;
        row.started_at.get_or_insert(now);
        row.finished_at = Some(now);
        row.error = None;
        let preview: String = output.trim_end().chars().take(200).collect();
        row.output = Some(output);
        ch.step(row);
        ch.event(NewEvent::step(
            EventKind::StepCompleted,
            &row.step_id,
            None,
            EventData {
                duration_ms: Some(now - row.started_at.unwrap_or(now)),
                output_preview: (!preview.is_empty()).then_some(preview),
                ..data
            },
        ));
    }

    /// Ends pending step `idx` without running it: skipped by its condition or its deps, or
    /// failed because its condition could not be evaluated.
    pub(super) fn settle(
        &mut self,
        ch: &mut Changes,
        idx: usize,
        status: StepStatus,
        now: i64,
        error: Option<String>,
        data: EventData,
    ) {
        let row = &mut self.steps[idx];
        row.status = status;
        row.finished_at = Some(now);
        row.error.clone_from(&error);
        ch.step(row);
        let kind = if status == StepStatus::Failed {
            EventKind::StepFailed
        } else {
            EventKind::StepSkipped
        };
        ch.event(NewEvent::step(
            kind,
            &row.step_id,
            None,
            EventData { error, ..data },
        ));
    }

    /// Settles a ready step that runs no process: a condition completes with `true` or
    /// `false` (or fails if it cannot be evaluated), a join with its deps' outputs.
    pub(super) fn decide_without_process(&mut self, ch: &mut Changes, idx: usize, now: i64) {
        let Some(step) = self.step_def(idx) else {
            return;
        };
        let value = |id: &String| {
            let row = &self.steps[self.dep_row(idx, id)?];
            Some((id.clone(), step_value(row, usize::MAX)))
        };
        let (output, data) = match &step.action {
            Action::Condition(expr) => {
                let scope = Scope {
                    inputs: &self.def.inputs,
                    steps: expr.steps().iter().filter_map(value).collect(),
                    failed: false,
                    iteration: self.iteration_scope(idx),
                };
                let data = EventData {
                    condition: Some(expr.source().to_owned()),
                    values: Some(read_values(expr, &scope)),
                    ..Default::default()
                };
                match expr.condition(&scope) {
                    Ok(b) => (b.to_string(), data),
                    Err(e) => {
                        let error = format!("condition {:?}: {e}", expr.source());
                        self.settle(ch, idx, StepStatus::Failed, now, Some(error), data);
                        return;
                    }
                }
            }
            _ => {
                let outputs: serde_json::Map<String, serde_json::Value> = step
                    .deps
                    .iter()
                    .filter_map(|d| {
                        let row = &self.steps[self.dep_row(idx, d)?];
                        let out = row.output.as_deref().unwrap_or_default().trim_end();
                        Some((d.clone(), serde_json::Value::String(out.to_owned())))
                    })
                    .collect();
                (
                    serde_json::Value::Object(outputs).to_string(),
                    EventData::default(),
                )
            }
        };
        self.complete_without_attempt(ch, idx, output, now, data);
    }

    /// What pending step `idx` does now that (or while) its deps settle.
    /// `memo` caches how steps ended (see [`Memo`]); it must be cleared after a step is
    /// settled.
    pub(super) fn decide(&self, idx: usize, memo: &mut Memo) -> Decision {
        let Some(step) = self.step_def(idx) else {
            return Decision::Wait;
        };
        let states: Vec<DepState> = step
            .deps
            .iter()
            .map(|d| {
                self.dep_row(idx, d)
                    .map_or(DepState::Waiting, |j| self.dep_state(j, &mut memo.0))
            })
            .collect();
        if states.contains(&DepState::Waiting) {
            return Decision::Wait;
        }
        let failed = states.contains(&DepState::Failed);
        let reads_status = step.when.as_ref().is_some_and(Expr::reads_status);
        if failed && !reads_status {
            // It can never run; `finish` reports the failure that stopped it.
            return Decision::Wait;
        }
        if !reads_status && !states.is_empty() && states.iter().all(|s| *s == DepState::Skipped) {
            return Decision::Skip(EventData {
                reason: Some("every dep was skipped".to_owned()),
                ..Default::default()
            });
        }
        let Some(when) = &step.when else {
            return Decision::Run;
        };
        let scope = Scope {
            inputs: &self.def.inputs,
            steps: when
                .steps()
                .iter()
                .filter_map(|id| {
                    let row = &self.steps[self.dep_row(idx, id)?];
                    Some((id.clone(), step_value(row, usize::MAX)))
                })
                .collect(),
            failed,
            iteration: self.iteration_scope(idx),
        };
        let data = EventData {
            condition: Some(when.source().to_owned()),
            values: Some(read_values(when, &scope)),
            ..Default::default()
        };
        match when.condition(&scope) {
            Ok(true) => Decision::Run,
            Ok(false) => Decision::Skip(EventData {
                reason: Some("the condition is false".to_owned()),
                ..data
            }),
            Err(e) => Decision::Fail(
                format!("when {:?}: {e}", when.source()),
                EventData {
                    reason: Some("the condition could not be evaluated".to_owned()),
                    ..data
                },
            ),
        }
    }

    /// How step `j` ended, as its dependents see it. A pending step that can never run (a
    /// dep failed and it does not handle failures) counts as failed, so an on-failure handler
    /// further down still runs and nothing waits for it.
    fn dep_state(&self, j: usize, memo: &mut Vec<Option<DepState>>) -> DepState {
        if let Some(s) = memo[j] {
            return s;
        }
        let state = match self.steps[j].status {
            StepStatus::Completed => DepState::Ran,
            // Skipped by a user's resume (it carries an output): its dependents go on.
            StepStatus::Skipped if self.steps[j].output.is_some() => DepState::Ran,
            StepStatus::Skipped => DepState::Skipped,
            StepStatus::Failed if self.step_def(j).is_some_and(|s| s.continue_on_error) => {
                DepState::Ran
            }
            StepStatus::Failed => DepState::Failed,
            StepStatus::Pending => {
                let Some(step) = self.step_def(j) else {
                    memo[j] = Some(DepState::Waiting);
                    return DepState::Waiting;
                };
                let mut failed = false;
                let mut waiting = false;
                for d in &step.deps {
                    match self.dep_row(j, d).map(|k| self.dep_state(k, memo)) {
                        Some(DepState::Failed) => failed = true,
                        Some(DepState::Ran | DepState::Skipped) => {}
                        Some(DepState::Waiting) | None => waiting = true,
                    }
                }
                let handles = step.when.as_ref().is_some_and(Expr::reads_status);
                if failed && !waiting && !handles {
                    DepState::Failed
                } else {
                    DepState::Waiting
                }
            }
            _ => DepState::Waiting,
        };
        memo[j] = Some(state);
        state
    }

    /// Whether step row `s` no longer keeps the workflow from completing.
    pub(super) fn is_done(&self, s: &StepRow) -> bool {
        s.status.satisfies_deps()
            || (s.status == StepStatus::Failed
                && self
                    .index
                    .get(&s.step_id)
                    .and_then(|&i| self.step_def(i))
                    .is_some_and(|d| d.continue_on_error))
    }
}
