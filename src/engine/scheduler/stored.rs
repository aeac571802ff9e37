//! Transitions of a stored workflow that no driver is running: a user's resume or cancel,
//! and the adoption of a workflow whose owner died. Each is a pure function from the stored
//! rows to the change set the store commits under a freshly taken lease.
//!
//! Invariant: a completed step is only reset when the user names it (or an ancestor) as
//! `from_step`; an attempt cut short by a dead owner counts as a crash, not a failure, and a
//! step past the crash cap fails instead of re-running.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{
    AttemptOutcome, EventData, EventKind, NewEvent, ResumedBy, StepStatus, WorkflowStatus,
};
use crate::store::{AttemptRow, Changes, StepRow};
use crate::workflow::{
    Action, Workflow, descendants, iteration_id, parse_instance, parse_iteration,
};

/// What a resume asks, as the transition needs it.
pub(in crate::engine) struct ResumePlan<'a> {
    pub from_step: Option<&'a str>,
    /// Steps downstream of `from_step` (reset too).
    pub downstream: &'a BTreeSet<String>,
    pub skip: bool,
    pub guidance: Option<&'a str>,
    /// Agent-option overrides (JSON) for the retried agent steps.
    pub overrides: Option<&'a str>,
    /// The `repeat` groups of the definition: group id → its steps' ids.
    pub groups: &'a BTreeMap<String, Vec<String>>,
    /// Rows deleted outright (the later iterations of a loop resumed inside an iteration).
    pub dropped: &'a BTreeSet<String>,
}

/// What a resume `from_step` reaches: the rows reset after it, the rows deleted, and the
/// definition's repeat groups.
#[derive(Debug, Default)]
pub(in crate::engine) struct ResumeScope {
    pub downstream: BTreeSet<String>,
    pub dropped: BTreeSet<String>,
    pub groups: BTreeMap<String, Vec<String>>,
}

/// `from_step` names no row that can be resumed from.
#[derive(Debug)]
pub(in crate::engine) struct UnknownFrom;

/// Which rows a resume from `from` resets (besides `from` itself) and deletes:
/// - a step: everything downstream of it;
/// - an instance `ID[i]`: what is downstream of its for_each step (the step itself settles
///   again from its instances);
/// - an iteration `STEP#k` of a loop: the steps after it in iteration k, the later
///   iterations (deleted: the loop carries on from iteration k), and what is downstream of
///   the group.
///
/// A step inside a loop is named by its iteration (`fix#2`), never by its bare id.
pub(in crate::engine) fn resume_scope(
    def: &Workflow,
    rows: &[StepRow],
    from: Option<&str>,
) -> Result<ResumeScope, UnknownFrom> {
    let groups: BTreeMap<String, Vec<String>> = def
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Repeat(r) => Some((s.id.clone(), r.steps.clone())),
            _ => None,
        })
        .collect();
    let mut scope = ResumeScope {
        groups,
        ..ResumeScope::default()
    };
    let Some(from) = from else {
        return Ok(scope);
    };
    if let Some(step) = def.step(from) {
        if step.group.is_some() {
            return Err(UnknownFrom);
        }
        scope.downstream = descendants(def, from);
        return Ok(scope);
    }
    if !rows.iter().any(|r| r.step_id == from) {
        return Err(UnknownFrom);
    }
    let below = |outer: &str| {
        let mut d = descendants(def, outer);
        d.remove(outer);
        d
    };
    if let Some((parent, _)) = parse_instance(from) {
        scope.downstream = below(parent);
        return Ok(scope);
    }
    let Some((step, k)) = parse_iteration(from) else {
        return Err(UnknownFrom);
    };
    let Some(group) = def.step(step).and_then(|s| s.group.clone()) else {
        return Err(UnknownFrom);
    };
    let subs = scope.groups.get(&group).cloned().unwrap_or_default();
    scope.downstream = below(&group);
    for d in descendants(def, step) {
        if subs.contains(&d) {
            scope.downstream.insert(iteration_id(&d, k));
        }
    }
    scope.dropped = rows
        .iter()
        .filter(|r| {
            parse_iteration(&r.step_id).is_some_and(|(s, j)| j > k && subs.iter().any(|x| x == s))
        })
        .map(|r| r.step_id.clone())
        .collect();
    Ok(scope)
}

/// Why a resume changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::engine) struct NothingToResume;

/// Whether a resume without `from_step` runs a step in this status again.
fn stopped(status: StepStatus) -> bool {
    matches!(
        status,
        StepStatus::Failed
            | StepStatus::Blocked
            | StepStatus::Cancelled
            | StepStatus::Running
            | StepStatus::Retrying
    )
}

/// A user's resume: the stopped steps (or `from_step` and everything downstream) run again,
/// or are skipped.
///
/// Expanded for_each steps and started repeat groups are aggregates of their rows
/// (`ID[i]`, `STEP#k`): one that re-runs from scratch (it is `from_step` or downstream of it,
/// or a loop whose `until` never held is retried) drops its rows and starts afresh; one
/// whose rows re-run keeps them and goes back to running until they settle again.
pub(in crate::engine) fn resume_changes(
    status: WorkflowStatus,
    steps: &[StepRow],
    plan: &ResumePlan<'_>,
    now: i64,
) -> Result<Changes, NothingToResume> {
    let mut ch = Changes::default();
    let mut touched = Vec::new();
    let group_of: BTreeMap<&str, &str> = plan
        .groups
        .iter()
        .flat_map(|(g, subs)| subs.iter().map(move |s| (s.as_str(), g.as_str())))
        .collect();
    let is_aggregate = |s: &StepRow| s.items().is_some() || plan.groups.contains_key(&s.step_id);
    let member_of = |id: &str| -> Option<String> {
        if let Some((parent, _)) = parse_instance(id) {
            return Some(parent.to_owned());
        }
        let (step, _) = parse_iteration(id)?;
        group_of.get(step).map(|g| (*g).to_owned())
    };
    let targeted = |s: &StepRow| match plan.from_step {
        Some(from) => s.step_id == from,
        None => stopped(s.status),
    };
    // Aggregates with a member to re-run (or skip).
    let members_targeted: BTreeSet<String> = steps
        .iter()
        .filter(|s| targeted(s))
        .filter_map(|s| member_of(&s.step_id))
        .collect();
    let fresh: BTreeSet<&str> = steps
        .iter()
        .filter(|s| is_aggregate(s))
        .map(|s| s.step_id.as_str())
        .filter(|id| {
            plan.from_step == Some(*id)
                || plan.downstream.contains(*id)
                || (plan.from_step.is_none()
                    && !plan.skip
                    && !members_targeted.contains(*id)
                    && steps.iter().any(|s| s.step_id == *id && stopped(s.status)))
        })
        .collect();
    for row in steps {
        let member = member_of(&row.step_id);
        if plan.dropped.contains(&row.step_id)
            || member.as_deref().is_some_and(|m| fresh.contains(m))
        {
            ch.dropped.push(row.step_id.clone());
            continue;
        }
        let aggregate = is_aggregate(row);
        if aggregate
            && !fresh.contains(row.step_id.as_str())
            && (members_targeted.contains(&row.step_id) || !plan.skip || !targeted(row))
        {
            // Its status follows its rows (see below).
            continue;
        }
        let mut s = row.clone();
        let target = targeted(&s);
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
        } else if target
            || plan.downstream.contains(&s.step_id)
            || fresh.contains(s.step_id.as_str())
        {
            let keep_session = target && (plan.from_step.is_none() || plan.guidance.is_some());
            reset(&mut s, keep_session);
            s.edit_extra(|x| {
                x.items = None;
                if target {
                    x.guidance = plan.guidance.map(str::to_owned);
                    x.agent_overrides = plan.overrides.map(str::to_owned);
                }
            });
        }
        if s != *row {
            touched.push(s.step_id.clone());
            ch.step(&s);
        }
    }
    // A kept aggregate whose rows changed runs again: the scheduler settles it once they
    // all have.
    for row in steps
        .iter()
        .filter(|s| is_aggregate(s) && !fresh.contains(s.step_id.as_str()))
    {
        let changed = ch
            .steps
            .iter()
            .any(|c| member_of(&c.step_id).as_deref() == Some(row.step_id.as_str()))
            || ch
                .dropped
                .iter()
                .any(|d| member_of(d).as_deref() == Some(row.step_id.as_str()));
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
    s.edit_extra(|x| {
        x.guidance = None;
        x.agent_overrides = None;
        x.fresh_session = !keep_session;
        x.waiting = None;
        x.answer = None;
    });
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
    // An expanded for_each step or a started repeat group is running with no attempt of its
    // own: only its rows' attempts were cut short.
    for row in steps
        .iter()
        .filter(|s| s.status == StepStatus::Running && s.items().is_none() && s.attempts > 0)
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
