//! The scheduler: the pure state machine of one running workflow. It takes attempt outcomes
//! and the passage of time and returns the change set to commit and the attempts to start;
//! it never spawns, waits or writes (the driver does), so every transition is unit-tested
//! without a runtime, with injected time and randomness.
//!
//! Invariant: a step starts only when every dep has settled — completed, skipped, or failed
//! with `continue_on_error` (or, for a condition calling `failure()`/`always()`, failed
//! too) — its `when` held, and not every dep was skipped; and only through a change set that
//! records its start or its skip; a finished attempt is applied once (outcomes of an
//! attempt that is not the step's current one are ignored); the workflow is finished exactly
//! when nothing runs, nothing waits for a retry and nothing more can start.
//!
//! # Layout
//! - `budget`: `max_cost_usd`: holding and blocking agent steps past the workflow's budget.
//! - `condition`: whether a pending step runs, is skipped or waits (`when`, skips, joins,
//!   failure handlers, `continue_on_error`).
//! - `fan_out`: `for_each` steps, their stored items and their instances `ID[i]`.
//! - `human`: human steps — asking, answers, deadlines, parking a workflow that only waits.
//! - `repeat`: loop groups, their iterations `ID#k`, `until` and `max_iterations`.
//! - `prepare`: rendering a step's templates into the attempt to run.
//! - `stored`: transitions of a stored workflow that no driver runs — resume, cancel,
//!   adoption after a crash.

mod budget;
#[cfg(test)]
mod budget_tests;
mod condition;
#[cfg(test)]
mod condition_tests;
mod fan_out;
#[cfg(test)]
mod fan_out_tests;
mod human;
#[cfg(test)]
mod human_tests;
mod prepare;
mod repeat;
#[cfg(test)]
mod repeat_tests;
mod stored;
#[cfg(test)]
mod tests;

pub(super) use human::{Answer, Waiting, waiting_for};
pub(super) use stored::{ResumePlan, adopt_changes, cancel_changes, resume_changes, resume_scope};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::executor::AttemptSpec;
use super::outcome::{FailureClass, Outcome};
use crate::api::{
    AttemptOutcome, EventData, EventKind, NewEvent, StepStatus, ThreadId, WorkflowStatus, tail,
};
use crate::store::{AttemptRow, Changes, StepRow};
use crate::workflow::{Action, Step, Workflow};
use condition::{Decision, Memo};
use fan_out::{Fan, Origin};
use repeat::Group;

/// Bytes of an attempt's stderr kept in its record.
const STDERR_KEPT: usize = 64 * 1024;

/// Why a workflow's driver stops before the workflow finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// A user cancelled the workflow: running steps become cancelled.
    Cancel,
    /// This process is shutting down: running steps go back to pending, the workflow is
    /// interrupted and handed over.
    Shutdown,
}

/// The state of one workflow while a driver runs it.
pub(super) struct Scheduler {
    id: ThreadId,
    def: Arc<Workflow>,
    status: WorkflowStatus,
    steps: Vec<StepRow>,
    /// When each step waiting for a retry is due (ms, store clock).
    retry_at: Vec<Option<i64>>,
    /// Attempts stopped because they stalled; their stop counts as a retryable failure.
    stalled: Vec<bool>,
    index: HashMap<String, usize>,
    /// Per row, the step of the definition it runs (and its item, for an instance).
    origin: Vec<Origin>,
    // The maps below are empty for most workflows: a `BTreeMap` holds nothing then, in half
    // the room of an empty `HashMap`.
    /// The expanded `for_each` steps, by row.
    fans: BTreeMap<usize, Fan>,
    /// The started `repeat` groups, by row.
    groups: BTreeMap<usize, Group>,
    /// Position of each step in the definition, by id; empty unless it has `repeat` groups.
    def_index: BTreeMap<String, usize>,
    /// The last start found no free step slot; more steps are ready than could start.
    starved: bool,
    /// Spending against the workflow's `max_cost_usd`.
    budget: budget::Budget,
}

impl Scheduler {
    /// A scheduler over stored rows; steps found waiting for a retry are due at `now`.
    pub(super) fn new(
        id: ThreadId,
        def: Arc<Workflow>,
        status: WorkflowStatus,
        steps: Vec<StepRow>,
        now: i64,
    ) -> Scheduler {
        let index = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.step_id.clone(), i))
            .collect();
        let (origin, fans) = fan_out::origins(&def, &steps, &index);
        // Only `repeat` groups look steps up by id in the definition; a workflow without one
        // keeps no copy of its step ids for them.
        let def_index: BTreeMap<String, usize> = if def.steps.iter().any(|s| s.group.is_some()) {
            def.steps
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id.clone(), i))
                .collect()
        } else {
            BTreeMap::new()
        };
        let groups = repeat::groups(&def, &def_index, &steps, &index, &origin);
        let retry_at = steps
            .iter()
            .map(|s| (s.status == StepStatus::Retrying).then_some(now))
            .collect();
        let stalled = vec![false; steps.len()];
        let budget = budget::Budget::new(def.max_cost_usd);
        Scheduler {
            id,
            def,
            status,
            steps,
            retry_at,
            stalled,
            index,
            origin,
            budget,
            fans,
            groups,
            def_index,
            starved: false,
        }
    }

    /// The step of the definition that row `idx` runs.
    pub(super) fn step_def(&self, idx: usize) -> Option<&Step> {
        self.def.steps.get(self.origin.get(idx)?.def)
    }

    pub(super) fn status(&self) -> WorkflowStatus {
        self.status
    }

    pub(super) fn steps(&self) -> &[StepRow] {
        &self.steps
    }

    pub(super) fn starved(&self) -> bool {
        self.starved
    }

    /// Whether `attempt` is the running attempt of step `idx` (signals of older attempts
    /// are ignored).
    pub(super) fn is_current(&self, idx: usize, attempt: i64) -> bool {
        self.steps
            .get(idx)
            .is_some_and(|r| r.attempts == attempt && r.status == StepStatus::Running)
    }

    /// Records the agent session of the running attempt; false if it is not current.
    pub(super) fn set_session(&mut self, idx: usize, attempt: i64, session: &str) -> bool {
        if !self.is_current(idx, attempt) {
            return false;
        }
        self.steps[idx].session_id = Some(session.to_owned());
        true
    }

    pub(super) fn set_activity(&mut self, idx: usize, at: i64) {
        if let Some(r) = self.steps.get_mut(idx) {
            r.last_activity_at = Some(at);
        }
    }

    /// The running attempt of step `idx` stalled and is being stopped: its end counts as a
    /// retryable failure.
    pub(super) fn mark_stalled(&mut self, idx: usize) {
        if let Some(s) = self.stalled.get_mut(idx) {
            *s = true;
        }
    }

    /// When the earliest retry is due.
    pub(super) fn next_retry(&self) -> Option<i64> {
        self.retry_at.iter().flatten().min().copied()
    }

    pub(super) fn has_retries(&self) -> bool {
        self.retry_at.iter().any(Option::is_some)
    }

    /// Applies the end of attempt `number` of step `idx`. `cancelled`: the workflow is being
    /// cancelled, so a stopped attempt is a cancellation, not an interruption. `jitter` is a
    /// random number in [0, 1) for the retry delay.
    #[expect(
        clippy::too_many_arguments,
        reason = "an outcome plus the injected context it is judged in"
    )]
    pub(super) fn apply(
        &mut self,
        ch: &mut Changes,
        idx: usize,
        number: i64,
        outcome: Outcome,
        cancelled: bool,
        now: i64,
        owner: &str,
        jitter: f64,
    ) {
        let Some(step) = self.def.steps.get(self.origin[idx].def) else {
            return;
        };
        if self.steps[idx].attempts != number {
            return;
        }
        let stalled = std::mem::take(&mut self.stalled[idx]);
        let outcome = match outcome {
            Outcome::Stopped { detail } if stalled => Outcome::Failed {
                class: FailureClass::Retryable,
                error: format!(
                    "stalled: no output for {}s, so the attempt was restarted (on_stall: restart)",
                    step.stall_timeout_s
                ),
                detail,
            },
            other => other,
        };
        let outcome = outcome.classify(&step.retry);
        let detail = outcome.detail().clone();
        let row = &mut self.steps[idx];
        let mut att = AttemptRow {
            finished_at: Some(now),
            exit_code: detail.exit_code.map(i64::from),
            stderr: detail
                .stderr
                .as_deref()
                .map(|s| tail(s, STDERR_KEPT).to_owned()),
            session_id: detail.session_id.clone().or_else(|| row.session_id.clone()),
            cost_usd: detail.cost_usd,
            num_turns: detail.num_turns,
            owner: Some(owner.to_owned()),
            ..AttemptRow::new(&row.step_id, number, now, AttemptOutcome::Running)
        };
        if let Some(sid) = &detail.session_id {
            row.session_id = Some(sid.clone());
        }
        row.exit_code = detail.exit_code.map(i64::from);
        let cost = detail.cost_usd;
        row.edit_extra(|x| x.fresh_session = detail.session_unusable);
        let sid = row.step_id.clone();
        match outcome {
            Outcome::Succeeded { output, .. } => {
                att.outcome = AttemptOutcome::Succeeded;
                row.status = StepStatus::Completed;
                row.finished_at = Some(now);
                row.error = None;
                row.edit_extra(|x| x.guidance = None);
                let preview: String = output.trim_end().chars().take(200).collect();
                let data = EventData {
                    duration_ms: Some(now - row.started_at.unwrap_or(now)),
                    output_preview: (!preview.is_empty()).then_some(preview),
                    session_cost_usd: detail.cost_usd,
                    ..Default::default()
                };
                row.output = Some(output);
                ch.event(NewEvent::step(
                    EventKind::StepCompleted,
                    &sid,
                    Some(number),
                    data,
                ));
            }
            Outcome::Failed { class, error, .. } => {
                att.outcome = if class == FailureClass::TimedOut {
                    AttemptOutcome::TimedOut
                } else {
                    AttemptOutcome::Failed
                };
                att.error = Some(error.clone());
                row.failures += 1;
                row.error = Some(error.clone());
                row.edit_extra(|x| x.guidance = None);
                let budget_left = row.failures < i64::from(step.retry.max_attempts);
                if class != FailureClass::Fatal && budget_left {
                    let next = (row.failures + 1) as u32;
                    let delay = step.retry.delay_ms(next, jitter);
                    row.status = StepStatus::Retrying;
                    self.retry_at[idx] =
                        Some(now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)));
                    ch.event(NewEvent::step(
                        EventKind::StepRetrying,
                        &sid,
                        Some(number),
                        EventData {
                            error: Some(error),
                            delay_ms: Some(delay),
                            next_attempt: Some(row.attempts + 1),
                            ..Default::default()
                        },
                    ));
                } else {
                    row.status = StepStatus::Failed;
                    row.finished_at = Some(now);
                    let why = if class == FailureClass::Fatal {
                        "not retryable"
                    } else {
                        "retries exhausted"
                    };
                    ch.event(NewEvent::step(
                        EventKind::StepFailed,
                        &sid,
                        Some(number),
                        EventData {
                            error: Some(error),
                            attempts: Some(row.attempts),
                            reason: Some(why.to_owned()),
                            ..Default::default()
                        },
                    ));
                }
            }
            Outcome::Blocked {
                reason, denials, ..
            } => {
                att.outcome = AttemptOutcome::Blocked;
                att.error = Some(reason.clone());
                row.status = StepStatus::Blocked;
                row.error = Some(reason.clone());
                row.edit_extra(|x| x.guidance = None);
                ch.event(NewEvent::step(
                    EventKind::StepBlocked,
                    &sid,
                    Some(number),
                    EventData {
                        reason: Some(reason),
                        permission_denials: Some(denials),
                        ..Default::default()
                    },
                ));
            }
            Outcome::Stopped { .. } => {
                if cancelled {
                    att.outcome = AttemptOutcome::Cancelled;
                    row.status = StepStatus::Cancelled;
                    row.finished_at = Some(now);
                    ch.event(NewEvent::step(
                        EventKind::StepCancelled,
                        &sid,
                        Some(number),
                        EventData::default(),
                    ));
                } else {
                    att.outcome = AttemptOutcome::Interrupted;
                    row.status = StepStatus::Pending;
                }
            }
        }
        ch.step(row);
        ch.attempts.push(att);
        self.charge(cost);
        if self.origin[idx].item.is_some() {
            self.instance_ended(ch, idx, now);
        }
    }

    /// Marks the steps that are ready (deps done, or retry due at `now`) running, as far as
    /// `take` hands out step slots, and prepares their attempts. The first start of the
    /// workflow also marks it running.
    pub(super) fn start_ready<P>(
        &mut self,
        ch: &mut Changes,
        now: i64,
        owner: &str,
        mut take: impl FnMut() -> Option<P>,
    ) -> Vec<(AttemptSpec, P)> {
        let mut out = Vec::new();
        self.starved = false;
        self.clear_held();
        // A skip or a failed condition settles a step, which may decide steps before it in
        // definition order: pass again until a pass settles nothing.
        let mut again = true;
        let mut settled = self.settle_humans(ch, now);
        let mut memo = Memo::new(self.steps.len());
        self.aggregate_settled(ch, now);
        while again && !self.starved {
            again = false;
            for idx in 0..self.steps.len() {
                let instance = self.origin[idx].item.is_some();
                let ready = match self.steps[idx].status {
                    StepStatus::Pending if instance => self.instance_has_room(idx),
                    StepStatus::Pending => match self.decide(idx, &mut memo) {
                        Decision::Wait => false,
                        Decision::Run
                            if self
                                .step_def(idx)
                                .is_some_and(|s| matches!(s.action, Action::Repeat(_))) =>
                        {
                            self.start_iteration(ch, idx, 1, now);
                            memo = Memo::new(self.steps.len());
                            again = true;
                            settled = true;
                            false
                        }
                        Decision::Run
                            if self.step_def(idx).is_some_and(|s| {
                                matches!(s.action, Action::Condition(_) | Action::Join)
                            }) =>
                        {
                            self.decide_without_process(ch, idx, now);
                            memo.clear();
                            again = true;
                            settled = true;
                            false
                        }
                        Decision::Run
                            if self.step_def(idx).is_some_and(|s| s.for_each.is_some()) =>
                        {
                            if let Err(error) = self.expand(ch, idx, now) {
                                let data = EventData {
                                    reason: Some("the for_each list could not be made".to_owned()),
                                    ..Default::default()
                                };
                                self.settle(ch, idx, StepStatus::Failed, now, Some(error), data);
                            }
                            memo = Memo::new(self.steps.len());
                            again = true;
                            settled = true;
                            false
                        }
                        Decision::Run if self.human_of(idx).is_some() => {
                            self.ask(ch, idx, now);
                            memo.clear();
                            again = true;
                            settled = true;
                            false
                        }
                        Decision::Run if self.hold_for_budget(idx) => false,
                        Decision::Run => true,
                        Decision::Skip(data) => {
                            self.settle(ch, idx, StepStatus::Skipped, now, None, data);
                            memo.clear();
                            again = true;
                            settled = true;
                            false
                        }
                        Decision::Fail(error, data) => {
                            self.settle(ch, idx, StepStatus::Failed, now, Some(error), data);
                            memo.clear();
                            again = true;
                            settled = true;
                            false
                        }
                    },
                    StepStatus::Retrying => {
                        let due = self.retry_at[idx].is_none_or(|t| t <= now)
                            && (!instance || self.instance_has_room(idx));
                        if due && self.hold_for_budget(idx) {
                            // Held, not waiting: nothing is due any more.
                            self.retry_at[idx] = None;
                            false
                        } else {
                            due
                        }
                    }
                    _ => false,
                };
                if !ready {
                    continue;
                }
                let Some(permit) = take() else {
                    self.starved = true;
                    break;
                };
                out.push(self.start(ch, idx, now, owner, permit));
            }
            if self.advance_groups(ch, now) {
                memo = Memo::new(self.steps.len());
                again = true;
                settled = true;
            }
        }
        if (!out.is_empty() || settled) && self.status != WorkflowStatus::Running {
            self.status = WorkflowStatus::Running;
            ch.set_status(WorkflowStatus::Running, None, false);
            ch.events.insert(
                0,
                NewEvent::workflow(
                    EventKind::WorkflowStarted,
                    EventData {
                        step_count: Some(self.steps.len() as i64),
                        ..Default::default()
                    },
                ),
            );
        }
        out
    }

    /// Marks step `idx` running with a new attempt and prepares it.
    fn start<P>(
        &mut self,
        ch: &mut Changes,
        idx: usize,
        now: i64,
        owner: &str,
        permit: P,
    ) -> (AttemptSpec, P) {
        self.retry_at[idx] = None;
        if self.origin[idx].item.is_some() {
            self.instance_started(idx);
        }
        let spec = self.prepare(idx);
        let row = &mut self.steps[idx];
        row.attempts += 1;
        row.status = StepStatus::Running;
        row.started_at.get_or_insert(now);
        row.finished_at = None;
        row.last_activity_at = Some(now);
        let number = row.attempts;
        let resume = spec.resume_session().map(str::to_owned);
        ch.attempts.push(AttemptRow {
            session_id: resume.clone(),
            owner: Some(owner.to_owned()),
            ..AttemptRow::new(&row.step_id, number, now, AttemptOutcome::Running)
        });
        ch.step(row);
        ch.event(NewEvent::step(
            EventKind::StepStarted,
            &row.step_id,
            Some(number),
            EventData {
                resume_session: resume,
                ..Default::default()
            },
        ));
        (AttemptSpec { number, ..spec }, permit)
    }

    /// Whether nothing can happen any more without a new outcome: nothing runs (`running`
    /// attempts are in flight), nothing waits for a retry or a step slot.
    pub(super) fn is_settled(&self, running: usize) -> bool {
        running == 0 && !self.has_retries() && !self.starved
    }

    /// Ends the workflow: completed, failed, blocked or cancelled by what its steps are.
    pub(super) fn finish(&mut self, ch: &mut Changes) {
        let all_done = self.steps.iter().all(|s| self.is_done(s));
        let listed = |status: StepStatus, verb: &str, cut: usize| -> Vec<String> {
            self.steps
                .iter()
                .filter(|s| s.status == status && !self.is_done(s))
                .map(|s| {
                    let e = s.error.as_deref().unwrap_or("unknown error");
                    format!("step {} {verb}: {}", s.step_id, tail(e, cut))
                })
                .collect()
        };
        let failed = listed(StepStatus::Failed, "failed", 500);
        let blocked = listed(StepStatus::Blocked, "is blocked", usize::MAX);
        let (status, kind, error) = if all_done {
            (
                WorkflowStatus::Completed,
                EventKind::WorkflowCompleted,
                None,
            )
        } else if !failed.is_empty() {
            (
                WorkflowStatus::Failed,
                EventKind::WorkflowFailed,
                Some(failed.join("; ")),
            )
        } else if !blocked.is_empty() {
            (
                WorkflowStatus::Blocked,
                EventKind::WorkflowBlocked,
                Some(blocked.join("; ")),
            )
        } else {
            (
                WorkflowStatus::Cancelled,
                EventKind::WorkflowCancelled,
                Some("some steps were cancelled".to_owned()),
            )
        };
        self.status = status;
        ch.set_status(status, error.clone(), true);
        let done = self
            .steps
            .iter()
            .filter(|s| s.status.satisfies_deps())
            .count() as i64;
        ch.event(NewEvent::workflow(
            kind,
            EventData {
                error,
                done: Some(done),
                total: Some(self.steps.len() as i64),
                ..Default::default()
            },
        ));
    }

    /// Records a stop after every running attempt has ended (their outcomes applied first):
    /// a cancel cancels what was running or waiting to retry; a shutdown puts it back to
    /// pending for the next owner. A workflow whose steps are all done finishes instead.
    pub(super) fn stop(&mut self, ch: &mut Changes, stop: Stop, now: i64) {
        self.retry_at.iter_mut().for_each(|r| *r = None);
        for (idx, row) in self.steps.iter_mut().enumerate() {
            // An expanded for_each step stays running across a shutdown: its stored items
            // and instances carry on under the next owner.
            let expanded = self.fans.contains_key(&idx) || self.groups.contains_key(&idx);
            if row.status.is_current() && !(expanded && stop == Stop::Shutdown) {
                if stop == Stop::Cancel {
                    row.status = StepStatus::Cancelled;
                    row.finished_at = Some(now);
                } else {
                    row.status = StepStatus::Pending;
                }
                ch.step(row);
            }
        }
        if self.steps.iter().all(|s| self.is_done(s)) {
            self.finish(ch);
            return;
        }
        match stop {
            Stop::Cancel => {
                self.status = WorkflowStatus::Cancelled;
                ch.set_status(WorkflowStatus::Cancelled, None, true);
                ch.event(NewEvent::workflow(
                    EventKind::WorkflowCancelled,
                    EventData::default(),
                ));
            }
            Stop::Shutdown => {
                self.status = WorkflowStatus::Interrupted;
                ch.set_status(WorkflowStatus::Interrupted, None, true);
                ch.event(NewEvent::workflow(
                    EventKind::WorkflowInterrupted,
                    EventData {
                        reason: Some(
                            "the server shut down; the next baton process resumes it".into(),
                        ),
                        ..Default::default()
                    },
                ));
            }
        }
    }
}
