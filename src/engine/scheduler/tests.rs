//! Unit tests of every transition of the scheduler, with injected time and randomness: no
//! runtime, no store, no processes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::api::ResumedBy;
use crate::engine::outcome::AttemptDetail;
use crate::engine::scheduler::stored::NothingToResume;

const OWNER: &str = "me";

pub(super) fn workflow(def: serde_json::Value) -> Arc<Workflow> {
    Arc::new(crate::workflow::compile(&def, &BTreeMap::new(), Path::new("/tmp")).unwrap())
}

/// a -> b -> c, plus an independent d.
fn chain() -> Scheduler {
    let def = workflow(json!({"steps": [
        {"id": "a", "run": ["true"], "retry": {"max_attempts": 2, "jitter": false}},
        {"id": "b", "deps": ["a"], "shell": "echo {a.output}"},
        {"id": "c", "deps": ["b"], "run": ["true"]},
        {"id": "d", "run": ["true"], "retry": {"max_attempts": 1}},
    ]}));
    fresh(def)
}

pub(super) fn fresh(def: Arc<Workflow>) -> Scheduler {
    let rows = def
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.group.is_none())
        .map(|(i, s)| StepRow::new(&s.id, i))
        .collect();
    Scheduler::new(ThreadId::from("t"), def, WorkflowStatus::Queued, rows, 0)
}

pub(super) fn start(s: &mut Scheduler, now: i64) -> (Changes, Vec<String>) {
    let mut ch = Changes::default();
    let started = s.start_ready(&mut ch, now, OWNER, || Some(()));
    let ids = started.into_iter().map(|(a, ())| a.step_id).collect();
    (ch, ids)
}

pub(super) fn ok(output: &str) -> Outcome {
    Outcome::Succeeded {
        output: output.into(),
        detail: AttemptDetail::default(),
    }
}

pub(super) fn fail(class: FailureClass) -> Outcome {
    Outcome::Failed {
        class,
        error: "exit status 1".into(),
        detail: AttemptDetail::default(),
    }
}

fn stopped() -> Outcome {
    Outcome::Stopped {
        detail: AttemptDetail::default(),
    }
}

pub(super) fn idx(s: &Scheduler, id: &str) -> usize {
    s.steps().iter().position(|r| r.step_id == id).unwrap()
}

pub(super) fn status(s: &Scheduler, id: &str) -> StepStatus {
    s.steps()[idx(s, id)].status
}

/// Applies an outcome to the current attempt of `id` at `now` and starts what is ready.
pub(super) fn finish_attempt(
    s: &mut Scheduler,
    id: &str,
    out: Outcome,
    now: i64,
) -> (Changes, Vec<String>) {
    let i = idx(s, id);
    let n = s.steps()[i].attempts;
    let mut ch = Changes::default();
    s.apply(&mut ch, i, n, out, false, now, OWNER, 0.0);
    let started = s.start_ready(&mut ch, now, OWNER, || Some(()));
    (ch, started.into_iter().map(|(a, ())| a.step_id).collect())
}

pub(super) fn kinds(ch: &Changes) -> Vec<EventKind> {
    ch.events.iter().map(|e| e.kind).collect()
}

#[test]
fn roots_start_first_and_the_workflow_becomes_running_in_the_same_change_set() {
    let mut s = chain();
    let (ch, started) = start(&mut s, 10);
    assert_eq!(started, ["a", "d"]);
    assert_eq!(s.status(), WorkflowStatus::Running);
    assert_eq!(
        kinds(&ch),
        [
            EventKind::WorkflowStarted,
            EventKind::StepStarted,
            EventKind::StepStarted
        ]
    );
    assert_eq!(ch.attempts.len(), 2);
    assert!(
        ch.attempts
            .iter()
            .all(|a| a.outcome == AttemptOutcome::Running)
    );
    assert_eq!(status(&s, "b"), StepStatus::Pending, "b waits for a");
}

#[test]
fn completion_and_the_start_of_ready_dependents_share_one_change_set() {
    let mut s = chain();
    start(&mut s, 0);
    let (ch, started) = finish_attempt(&mut s, "a", ok("hello\n"), 5);
    assert_eq!(started, ["b"]);
    assert_eq!(
        kinds(&ch),
        [EventKind::StepCompleted, EventKind::StepStarted]
    );
    let done = &s.steps()[idx(&s, "a")];
    assert_eq!(done.output.as_deref(), Some("hello\n"));
    assert_eq!(ch.steps.len(), 2, "a's result and b's start");
}

#[test]
fn dependents_read_the_trimmed_output_of_their_deps() {
    let mut s = chain();
    start(&mut s, 0);
    finish_attempt(&mut s, "a", ok("it's\n"), 1);
    let b = s.prepare(idx(&s, "b"));
    match b.prepared {
        crate::engine::executor::Prepared::Shell { script, env } => {
            assert_eq!(script, r#"echo "$BATON_REF_1""#);
            assert_eq!(env, [("BATON_REF_1".to_owned(), "it's".to_owned())]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn retryable_failure_waits_for_its_backoff_then_runs_again() {
    let mut s = chain();
    start(&mut s, 0);
    let (ch, started) = finish_attempt(&mut s, "a", fail(FailureClass::Retryable), 100);
    assert!(started.is_empty());
    assert_eq!(status(&s, "a"), StepStatus::Retrying);
    assert_eq!(kinds(&ch), [EventKind::StepRetrying]);
    assert_eq!(
        ch.events[0].data.delay_ms,
        Some(1000),
        "no jitter: the initial interval"
    );
    assert_eq!(s.next_retry(), Some(1100));
    assert!(!s.is_settled(0), "a retry is pending");
    let (_, early) = start(&mut s, 1099);
    assert!(early.is_empty(), "not due yet");
    let (ch, due) = start(&mut s, 1100);
    assert_eq!(due, ["a"]);
    assert_eq!(ch.attempts[0].number, 2);
    assert_eq!(s.next_retry(), None);
}

#[test]
fn exhausted_retries_fail_the_step_and_its_dependents_never_start() {
    let mut s = chain();
    start(&mut s, 0);
    finish_attempt(&mut s, "a", fail(FailureClass::Retryable), 1);
    start(&mut s, 10_000);
    let (ch, started) = finish_attempt(&mut s, "a", fail(FailureClass::TimedOut), 10_001);
    assert!(started.is_empty());
    assert_eq!(status(&s, "a"), StepStatus::Failed);
    assert_eq!(
        ch.events[0].data.reason.as_deref(),
        Some("retries exhausted")
    );
    assert_eq!(ch.attempts[0].outcome, AttemptOutcome::TimedOut);
    // The independent branch runs to completion; then nothing can progress.
    finish_attempt(&mut s, "d", ok(""), 10_002);
    assert!(s.is_settled(0));
    let mut ch = Changes::default();
    s.finish(&mut ch);
    assert_eq!(s.status(), WorkflowStatus::Failed);
    assert_eq!(status(&s, "b"), StepStatus::Pending);
    assert_eq!(status(&s, "d"), StepStatus::Completed, "its work is kept");
    let st = ch.status.unwrap();
    assert!(st.release && st.error.unwrap().contains("step a failed"));
}

#[test]
fn fatal_failure_is_not_retried() {
    let mut s = chain();
    start(&mut s, 0);
    let (ch, _) = finish_attempt(&mut s, "a", fail(FailureClass::Fatal), 1);
    assert_eq!(status(&s, "a"), StepStatus::Failed);
    assert_eq!(ch.events[0].data.reason.as_deref(), Some("not retryable"));
}

#[test]
fn non_retryable_pattern_is_applied_to_the_outcome() {
    let mut s = chain();
    start(&mut s, 0);
    let out = Outcome::Failed {
        class: FailureClass::Retryable,
        error: "HTTP 403 Forbidden".into(),
        detail: AttemptDetail::default(),
    };
    finish_attempt(&mut s, "a", out, 1);
    assert_eq!(status(&s, "a"), StepStatus::Failed);
}

#[test]
fn blocked_step_blocks_the_workflow_once_nothing_else_runs() {
    let mut s = chain();
    start(&mut s, 0);
    let out = Outcome::Blocked {
        reason: "permission denied for Bash".into(),
        denials: json!([{"tool_name": "Bash"}]),
        detail: AttemptDetail::default(),
    };
    finish_attempt(&mut s, "a", out, 1);
    finish_attempt(&mut s, "d", ok(""), 2);
    assert!(s.is_settled(0));
    let mut ch = Changes::default();
    s.finish(&mut ch);
    assert_eq!(s.status(), WorkflowStatus::Blocked);
    assert_eq!(kinds(&ch), [EventKind::WorkflowBlocked]);
}

#[test]
fn all_steps_done_completes_the_workflow() {
    let def = workflow(json!({"steps": [{"id": "a", "run": ["true"]}]}));
    let mut s = fresh(def);
    start(&mut s, 0);
    finish_attempt(&mut s, "a", ok("x"), 1);
    let mut ch = Changes::default();
    s.finish(&mut ch);
    assert_eq!(s.status(), WorkflowStatus::Completed);
    assert_eq!(ch.events[0].data.done, Some(1));
    assert!(ch.status.unwrap().release);
}

#[test]
fn a_stale_outcome_of_an_older_attempt_is_ignored() {
    let mut s = chain();
    start(&mut s, 0);
    finish_attempt(&mut s, "a", fail(FailureClass::Retryable), 1);
    start(&mut s, 5000);
    let mut ch = Changes::default();
    s.apply(
        &mut ch,
        idx(&s, "a"),
        1,
        ok("late"),
        false,
        5001,
        OWNER,
        0.0,
    );
    assert!(ch.is_empty());
    assert_eq!(status(&s, "a"), StepStatus::Running);
    assert!(!s.is_current(idx(&s, "a"), 1) && s.is_current(idx(&s, "a"), 2));
}

#[test]
fn cancel_cancels_running_and_waiting_steps() {
    let mut s = chain();
    start(&mut s, 0);
    finish_attempt(&mut s, "d", fail(FailureClass::Retryable), 1);
    let mut ch = Changes::default();
    let a = idx(&s, "a");
    s.apply(&mut ch, a, 1, stopped(), true, 2, OWNER, 0.0);
    assert_eq!(status(&s, "a"), StepStatus::Cancelled);
    assert_eq!(ch.attempts[0].outcome, AttemptOutcome::Cancelled);
    s.stop(&mut ch, Stop::Cancel, 2);
    assert_eq!(s.status(), WorkflowStatus::Cancelled);
    assert_eq!(
        status(&s, "d"),
        StepStatus::Failed,
        "d had one attempt only"
    );
    assert_eq!(
        kinds(&ch),
        [EventKind::StepCancelled, EventKind::WorkflowCancelled]
    );
    assert_eq!(s.next_retry(), None);
}

#[test]
fn shutdown_interrupts_and_hands_running_steps_back_as_pending() {
    let mut s = chain();
    start(&mut s, 0);
    finish_attempt(&mut s, "a", ok("x"), 1);
    let mut ch = Changes::default();
    for id in ["b", "d"] {
        let i = idx(&s, id);
        s.apply(&mut ch, i, 1, stopped(), false, 2, OWNER, 0.0);
    }
    s.stop(&mut ch, Stop::Shutdown, 2);
    assert_eq!(s.status(), WorkflowStatus::Interrupted);
    assert_eq!(status(&s, "b"), StepStatus::Pending);
    assert_eq!(status(&s, "a"), StepStatus::Completed);
    assert!(
        ch.attempts
            .iter()
            .all(|a| a.outcome == AttemptOutcome::Interrupted)
    );
    assert_eq!(
        ch.status.as_ref().unwrap().status,
        WorkflowStatus::Interrupted
    );
}

#[test]
fn a_stalled_attempt_counts_as_a_retryable_failure() {
    let mut s = chain();
    start(&mut s, 0);
    let a = idx(&s, "a");
    s.mark_stalled(a);
    let (ch, _) = finish_attempt(&mut s, "a", stopped(), 1);
    assert_eq!(status(&s, "a"), StepStatus::Retrying);
    assert!(
        ch.events[0]
            .data
            .error
            .as_deref()
            .unwrap()
            .contains("stalled")
    );
}

#[test]
fn without_free_slots_the_scheduler_is_starved_not_settled() {
    let mut s = chain();
    let mut ch = Changes::default();
    let mut slots = 1;
    let started = s.start_ready(&mut ch, 0, OWNER, || (slots > 0).then(|| slots -= 1));
    assert_eq!(started.len(), 1);
    assert!(s.starved());
    assert!(!s.is_settled(1));
}

#[test]
fn steps_found_retrying_after_adoption_are_due_at_once() {
    let def = chain().def;
    let mut rows: Vec<StepRow> = def
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| StepRow::new(&st.id, i))
        .collect();
    rows[0].status = StepStatus::Retrying;
    rows[0].attempts = 1;
    rows[0].failures = 1;
    let mut s = Scheduler::new(ThreadId::from("t"), def, WorkflowStatus::Running, rows, 50);
    assert_eq!(s.next_retry(), Some(50));
    let (ch, started) = start(&mut s, 50);
    assert!(started.contains(&"a".to_owned()));
    assert!(
        !kinds(&ch).contains(&EventKind::WorkflowStarted),
        "already running"
    );
}

#[test]
fn crash_interrupted_attempts_rerun_until_the_crash_cap() {
    let mut row = StepRow::new("a", 0);
    row.status = StepStatus::Running;
    row.attempts = 1;
    row.started_at = Some(7);
    let ch = adopt_changes(std::slice::from_ref(&row), Some("dead"), 3, 100);
    assert_eq!(ch.steps[0].status, StepStatus::Pending);
    assert_eq!(ch.steps[0].crashes, 1);
    assert_eq!(ch.steps[0].failures, 0, "a crash is not a failure");
    assert_eq!(ch.attempts[0].outcome, AttemptOutcome::Crashed);
    assert_eq!(ch.attempts[0].owner.as_deref(), Some("dead"));
    assert_eq!(ch.events[0].data.by, Some(ResumedBy::Adoption));
    row.crashes = 3;
    let ch = adopt_changes(&[row], Some("dead"), 3, 100);
    assert_eq!(ch.steps[0].status, StepStatus::Failed);
    assert_eq!(
        kinds(&ch),
        [EventKind::StepFailed, EventKind::WorkflowResumed]
    );
    assert!(
        ch.steps[0]
            .error
            .as_deref()
            .unwrap()
            .contains("crash-loop guard")
    );
}

fn rows(spec: &[(&str, StepStatus)]) -> Vec<StepRow> {
    spec.iter()
        .enumerate()
        .map(|(i, (id, st))| {
            let mut r = StepRow::new(id, i);
            r.status = *st;
            r.output = (*st == StepStatus::Completed).then(|| "out".to_owned());
            r.failures = 2;
            r
        })
        .collect()
}

#[test]
fn resume_retries_only_the_stopped_steps_with_a_fresh_budget() {
    let steps = rows(&[
        ("a", StepStatus::Completed),
        ("b", StepStatus::Failed),
        ("c", StepStatus::Pending),
    ]);
    let none = BTreeSet::new();
    let plan = ResumePlan {
        from_step: None,
        downstream: &none,
        skip: false,
        guidance: Some("try harder"),
        overrides: None,
        groups: &Default::default(),
        dropped: &Default::default(),
    };
    let ch = resume_changes(WorkflowStatus::Failed, &steps, &plan, 9).unwrap();
    assert_eq!(ch.steps.len(), 1, "the completed step is never reset");
    let b = &ch.steps[0];
    assert_eq!(
        (b.step_id.as_str(), b.status, b.failures),
        ("b", StepStatus::Pending, 0)
    );
    assert_eq!(b.guidance(), Some("try harder"));
    assert!(
        !b.fresh_session(),
        "a retried agent step continues its session"
    );
    assert_eq!(ch.status.unwrap().status, WorkflowStatus::Running);
    assert_eq!(ch.events[0].data.by, Some(ResumedBy::User));
}

#[test]
fn resume_with_skip_marks_the_stopped_steps_skipped() {
    let steps = rows(&[("a", StepStatus::Failed), ("b", StepStatus::Pending)]);
    let none = BTreeSet::new();
    let plan = ResumePlan {
        from_step: None,
        downstream: &none,
        skip: true,
        guidance: None,
        overrides: None,
        groups: &Default::default(),
        dropped: &Default::default(),
    };
    let ch = resume_changes(WorkflowStatus::Failed, &steps, &plan, 9).unwrap();
    assert_eq!(ch.steps[0].status, StepStatus::Skipped);
    assert_eq!(
        kinds(&ch),
        [EventKind::StepSkipped, EventKind::WorkflowResumed]
    );
    // Skipped satisfies deps: the dependent may start.
    assert!(StepStatus::Skipped.satisfies_deps());
}

#[test]
fn resume_from_a_step_resets_it_and_everything_downstream_with_fresh_sessions() {
    let steps = rows(&[
        ("a", StepStatus::Completed),
        ("b", StepStatus::Completed),
        ("c", StepStatus::Completed),
    ]);
    let downstream: BTreeSet<String> = ["c".to_owned()].into();
    let plan = ResumePlan {
        from_step: Some("b"),
        downstream: &downstream,
        skip: false,
        guidance: None,
        overrides: None,
        groups: &Default::default(),
        dropped: &Default::default(),
    };
    let ch = resume_changes(WorkflowStatus::Completed, &steps, &plan, 9).unwrap();
    let ids: Vec<&str> = ch.steps.iter().map(|s| s.step_id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    assert!(
        ch.steps
            .iter()
            .all(|s| s.status == StepStatus::Pending && s.output.is_none() && s.fresh_session())
    );
}

#[test]
fn resume_with_nothing_stopped_is_refused_unless_interrupted() {
    let steps = rows(&[("a", StepStatus::Completed), ("b", StepStatus::Pending)]);
    let none = BTreeSet::new();
    let plan = ResumePlan {
        from_step: None,
        downstream: &none,
        skip: false,
        guidance: None,
        overrides: None,
        groups: &Default::default(),
        dropped: &Default::default(),
    };
    assert_eq!(
        resume_changes(WorkflowStatus::Blocked, &steps, &plan, 1).unwrap_err(),
        NothingToResume
    );
    assert!(resume_changes(WorkflowStatus::Interrupted, &steps, &plan, 1).is_ok());
}

#[test]
fn cancel_of_a_stored_workflow_cancels_its_current_steps() {
    let steps = rows(&[
        ("a", StepStatus::Completed),
        ("b", StepStatus::Running),
        ("c", StepStatus::Retrying),
        ("d", StepStatus::Pending),
    ]);
    let ch = cancel_changes(&steps, 5);
    let ids: Vec<&str> = ch.steps.iter().map(|s| s.step_id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    assert!(ch.steps.iter().all(|s| s.status == StepStatus::Cancelled));
    let st = ch.status.unwrap();
    assert_eq!((st.status, st.release), (WorkflowStatus::Cancelled, true));
}
