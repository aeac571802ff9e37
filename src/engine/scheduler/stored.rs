//! Transitions of a stored workflow that no driver is running: a user's resume or cancel,
//! and the adoption of a workflow whose owner died. Each is a pure function from the stored
//! rows to the change set the store commits under a freshly taken lease.
//!
//! Invariant: a completed step is only reset when the user names it (or an ancestor) as
//! `from_step`; an attempt cut short by a dead owner counts as a crash, not a failure, and a
//! step past the crash cap fails instead of re-running.

use std::collections::BTreeSet;

use crate::api::{
    AttemptOutcome, EventData, EventKind, NewEvent, ResumedBy, StepStatus, WorkflowStatus,
};
use crate::store::{AttemptRow, Changes, StepRow};
use crate::workflow::parse_instance;

/// What a resume asks, as the transition needs it.
pub(in crate::engine) struct ResumePlan<'a> {
    pub from_step: Option<&'a str>,
    /// Steps downstream of `from_step` (reset too).
    pub downstream: &'a BTreeSet<String>,
    pub skip: bool,
    pub guidance: Option<&'a str>,
    /// Agent-option overrides (JSON) for the retried agent steps.
    pub overrides: Option<&'a str>,
}

/// Why a resume changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::engine) struct NothingToResume;

/// A user's resume: the stopped steps (or `from_step` and everything downstream) run again,
/// or are skipped.
pub(in crate::engine) fn resume_changes(
    status: WorkflowStatus,
    steps: &[StepRow],
    plan: &ResumePlan<'_>,
    now: i64,
) -> Result<Changes, NothingToResume> {
    let mut ch = Changes::default();
    let mut touched = Vec::new();
    // An expanded for_each step that re-runs from scratch drops its instances and expands
    // afresh; one whose instances re-run keeps its items and goes back to running.
    let reset_fans: BTreeSet<&str> = steps
        .iter()
        .filter(|s| s.items.is_some())
        .map(|s| s.step_id.as_str())
        .filter(|id| plan.from_step == Some(*id) || plan.downstream.contains(*id))
        .collect();
    for row in steps {
        let parent = parse_instance(&row.step_id).map(|(p, _)| p);
        if parent.is_some_and(|p| reset_fans.contains(p)) {
            continue;
        }
        let mut s = row.clone();
        if s.items.is_some() && !reset_fans.contains(s.step_id.as_str()) {
            // Its status follows its instances (see below).
            continue;
        }
        let target = match plan.from_step {
            Some(from) => s.step_id == from,
            None => matches!(
                s.status,
                StepStatus::Failed
                    | StepStatus::Blocked
                    | StepStatus::Cancelled
                    | StepStatus::Running
                    | StepStatus::Retrying
            ),
        };
        if target && plan.skip {
            s.status = StepStatus::Skipped;
            s.finished_at = Some(now);
            // A recorded output (empty if none) marks a skip by the user, which lets the
            // dependents run; a skip by a condition has none and skips them too.
            s.output.get_or_insert_with(String::new);
            ch.event(NewEvent::step(
                EventKind::StepSkipped,
                &s.step_id,
                None,
                EventData::default(),
            ));
        } else if target || plan.downstream.contains(&s.step_id) {
            let keep_session = target && (plan.from_step.is_none() || plan.guidance.is_some());
            reset(&mut s, keep_session);
            if s.items.take().is_some() {
                ch.dropped_instances.push(s.step_id.clone());
            }
            if target {
                s.guidance = plan.guidance.map(str::to_owned);
                s.agent_overrides = plan.overrides.map(str::to_owned);
            }
        }
        if s != *row {
            touched.push(s.step_id.clone());
            ch.step(&s);
        }
    }
    // A kept for_each step whose instances changed runs again: the scheduler settles it once
    // they all have.
    for row in steps.iter().filter(|s| s.items.is_some()) {
        let changed = ch
            .steps
            .iter()
            .any(|c| parse_instance(&c.step_id).is_some_and(|(p, _)| p == row.step_id));
        if changed && row.status != StepStatus::Running {
            let mut s = row.clone();
            s.status = StepStatus::Running;
            s.finished_at = None;
            s.output = None;
            s.error = None;
            touched.push(s.step_id.clone());
            ch.step(&s);
        }
    }
    if touched.is_empty() && plan.from_step.is_none() && status != WorkflowStatus::Interrupted {
        return Err(NothingToResume);
    }
    ch.set_status(WorkflowStatus::Running, None, false);
    ch.event(NewEvent::workflow(
        EventKind::WorkflowResumed,
        EventData {
            by: Some(ResumedBy::User),
            mode: Some(if plan.skip { "skip" } else { "retry" }.to_owned()),
            from_step: plan.from_step.map(str::to_owned),
            steps: Some(touched),
            ..Default::default()
        },
    ));
    Ok(ch)
}

/// Puts a step back to pending with a fresh retry budget.
fn reset(s: &mut StepRow, keep_session: bool) {
    s.status = StepStatus::Pending;
    s.failures = 0;
    s.crashes = 0;
    s.finished_at = None;
    s.started_at = None;
    s.output = None;
    s.error = None;
    s.guidance = None;
    s.agent_overrides = None;
    s.fresh_session = !keep_session;
    s.waiting = None;
    s.answer = None;
}

/// A cancel of a workflow nobody runs (interrupted, orphaned, blocked).
pub(in crate::engine) fn cancel_changes(steps: &[StepRow], now: i64) -> Changes {
    let mut ch = Changes::default();
    for row in steps.iter().filter(|s| s.status.is_current()) {
        let mut s = row.clone();
        s.status = StepStatus::Cancelled;
        s.finished_at = Some(now);
        ch.step(&s);
    }
    ch.set_status(WorkflowStatus::Cancelled, None, true);
    ch.event(NewEvent::workflow(
        EventKind::WorkflowCancelled,
        EventData::default(),
    ));
    ch
}

/// Adoption of a workflow whose owner `previous` died: in-flight steps are counted as
/// crashed and re-run, or failed once they crashed more than `max_crashes` times.
pub(in crate::engine) fn adopt_changes(
    steps: &[StepRow],
    previous: Option<&str>,
    max_crashes: i64,
    now: i64,
) -> Changes {
    let mut ch = Changes::default();
    let mut crashed = Vec::new();
    // An expanded for_each step is running with no attempt of its own: only its instances'
    // attempts were cut short.
    for row in steps
        .iter()
        .filter(|s| s.status == StepStatus::Running && s.items.is_none())
    {
        let mut s = row.clone();
        s.crashes += 1;
        ch.attempts.push(AttemptRow {
            finished_at: Some(now),
            error: Some("the process running this attempt died".into()),
            session_id: s.session_id.clone(),
            owner: previous.map(str::to_owned),
            // The start recorded when the attempt began is kept.
            ..AttemptRow::new(
                &s.step_id,
                s.attempts,
                s.started_at.unwrap_or(now),
                AttemptOutcome::Crashed,
            )
        });
        if s.crashes > max_crashes {
            s.status = StepStatus::Failed;
            s.finished_at = Some(now);
            let error = format!(
                "its server process died {} times while running it; not re-run again (crash-loop guard). Resume to try again",
                s.crashes
            );
            s.error = Some(error.clone());
            ch.event(NewEvent::step(
                EventKind::StepFailed,
                &s.step_id,
                Some(s.attempts),
                EventData {
                    error: Some(error),
                    reason: Some("crash loop".into()),
                    ..Default::default()
                },
            ));
        } else {
            s.status = StepStatus::Pending;
        }
        crashed.push(s.step_id.clone());
        ch.step(&s);
    }
    ch.event(NewEvent::workflow(
        EventKind::WorkflowResumed,
        EventData {
            by: Some(ResumedBy::Adoption),
            previous_owner: previous.map(str::to_owned),
            rerun_steps: Some(crashed),
            ..Default::default()
        },
    ));
    ch
}
