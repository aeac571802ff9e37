//! Unit tests of human steps in the scheduler, with injected time: asking, answers,
//! deadlines, parking, and a restart that reloads the stored question.

use serde_json::json;

use super::human::{Answer, Waiting};
use super::tests::{finish_attempt, fresh, idx, kinds, ok, start, status, workflow};
use super::*;

fn gated(on_timeout: &str) -> Scheduler {
    fresh(workflow(json!({"steps": [
        {"id": "a", "run": ["true"]},
        {"id": "ship", "deps": ["a"], "human": {
            "prompt": "Merge {a.output}?", "timeout_s": 60, "on_timeout": on_timeout}},
        {"id": "deploy", "deps": ["ship"], "shell": "echo {ship.output}"},
    ]})))
}

/// Runs `a` to completion at `now`: `ship` starts waiting then.
fn ask_at(s: &mut Scheduler, now: i64) -> Changes {
    start(s, 0);
    finish_attempt(s, "a", ok("main\n"), now).0
}

fn answer(
    s: &mut Scheduler,
    approve: bool,
    input: Option<&str>,
    now: i64,
) -> (Changes, Vec<String>) {
    let a = Answer {
        approve,
        input: input.map(str::to_owned),
    };
    assert!(s.set_answer("ship", &a.to_json()));
    start(s, now)
}

fn waiting(s: &Scheduler) -> Waiting {
    Waiting::of(&s.steps()[idx(s, "ship")]).expect("ship waits")
}

/// What the driver does when nothing runs: park, or finish.
fn settle(s: &mut Scheduler) -> (Changes, bool) {
    let mut ch = Changes::default();
    let parked = s.park(&mut ch);
    if !parked {
        s.finish(&mut ch);
    }
    (ch, parked)
}

/// The first event of `kind` in a change set.
fn event(ch: &Changes, kind: EventKind) -> &NewEvent {
    ch.events.iter().find(|e| e.kind == kind).unwrap()
}

#[test]
fn a_human_step_waits_blocked_with_its_rendered_question_and_stored_deadline() {
    let mut s = gated("fail");
    let ch = ask_at(&mut s, 1_000);
    assert_eq!(status(&s, "ship"), StepStatus::Blocked);
    let w = waiting(&s);
    assert_eq!(w.prompt, "Merge main?");
    assert_eq!(w.since, 1_000);
    assert_eq!(w.deadline, Some(61_000));
    let row = ch.steps.iter().find(|r| r.step_id == "ship").unwrap();
    assert!(row.waiting().is_some(), "the question is in the change set");
    let blocked = event(&ch, EventKind::StepBlocked);
    assert_eq!(blocked.data.question.as_deref(), Some("Merge main?"));
    assert_eq!(blocked.data.interaction.as_deref(), Some("approval"));
    assert!(
        ch.attempts.iter().all(|a| a.step_id != "ship"),
        "no process runs for a human step"
    );
    assert_eq!(s.next_deadline(), Some(61_000));
    let (ch, parked) = settle(&mut s);
    assert!(parked, "a deadline keeps the workflow driven");
    assert_eq!(s.status(), WorkflowStatus::Blocked);
    let st = ch.status.unwrap();
    assert_eq!(st.status, WorkflowStatus::Blocked);
    assert!(!st.release, "the lease is kept to watch the deadline");
    assert!(st.error.unwrap().contains("Merge main?"));
}

#[test]
fn an_approval_completes_the_step_with_approved_and_starts_its_dependents() {
    let mut s = gated("fail");
    ask_at(&mut s, 1_000);
    settle(&mut s);
    let (ch, started) = answer(&mut s, true, None, 5_000);
    assert_eq!(status(&s, "ship"), StepStatus::Completed);
    assert_eq!(
        s.steps()[idx(&s, "ship")].output.as_deref(),
        Some("approved")
    );
    assert_eq!(
        s.steps()[idx(&s, "ship")].answer(),
        None,
        "the answer is consumed"
    );
    assert_eq!(started, ["deploy"]);
    assert_eq!(s.status(), WorkflowStatus::Running);
    assert_eq!(ch.status.as_ref().unwrap().status, WorkflowStatus::Running);
    assert!(kinds(&ch).contains(&EventKind::StepCompleted));
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn an_input_answer_becomes_the_step_output() {
    let mut s = fresh(workflow(json!({"steps": [
        {"id": "ship", "human": {"prompt": "Which version?", "kind": "input"}},
        {"id": "tag", "deps": ["ship"], "run": ["echo", "{ship.output}"]},
    ]})));
    start(&mut s, 0);
    assert_eq!(status(&s, "ship"), StepStatus::Blocked);
    let (_, started) = answer(&mut s, true, Some("v2.1"), 10);
    assert_eq!(s.steps()[idx(&s, "ship")].output.as_deref(), Some("v2.1"));
    assert_eq!(started, ["tag"]);
}

#[test]
fn a_denial_fails_the_step_for_good() {
    let mut s = gated("fail");
    ask_at(&mut s, 1_000);
    let (ch, started) = answer(&mut s, false, Some("not today"), 2_000);
    assert!(started.is_empty());
    assert_eq!(status(&s, "ship"), StepStatus::Failed);
    let failed = event(&ch, EventKind::StepFailed);
    assert_eq!(failed.data.reason.as_deref(), Some("denied"));
    assert_eq!(failed.data.error.as_deref(), Some("denied: not today"));
    assert!(!s.has_retries(), "a denial is not retried");
    settle(&mut s);
    assert_eq!(s.status(), WorkflowStatus::Failed);
}

#[test]
fn the_deadline_applies_on_timeout_only_once_it_has_passed() {
    let mut s = gated("fail");
    ask_at(&mut s, 1_000);
    settle(&mut s);
    let (ch, _) = start(&mut s, 60_999);
    assert!(ch.is_empty(), "nothing happens before the deadline");
    assert_eq!(status(&s, "ship"), StepStatus::Blocked);
    let (ch, _) = start(&mut s, 61_000);
    assert_eq!(status(&s, "ship"), StepStatus::Failed);
    let failed = event(&ch, EventKind::StepFailed);
    assert_eq!(failed.data.reason.as_deref(), Some("timed out"));
    assert!(failed.data.error.as_deref().unwrap().contains("within 60s"));

    let mut s = gated("approve");
    ask_at(&mut s, 1_000);
    let (_, started) = start(&mut s, 61_000);
    assert_eq!(status(&s, "ship"), StepStatus::Completed);
    assert_eq!(
        s.steps()[idx(&s, "ship")].output.as_deref(),
        Some("approved")
    );
    assert_eq!(started, ["deploy"]);
}

#[test]
fn on_timeout_wait_has_no_deadline_and_still_parks_the_workflow() {
    let mut s = gated("wait");
    ask_at(&mut s, 1_000);
    assert_eq!(waiting(&s).deadline, None);
    let (ch, parked) = settle(&mut s);
    assert!(parked, "the driver stays to apply the answer when it comes");
    let st = ch.status.unwrap();
    assert_eq!(st.status, WorkflowStatus::Blocked);
    assert!(!st.release);
    let (ch, _) = start(&mut s, i64::MAX / 2);
    assert!(ch.is_empty(), "no deadline ever fires");
}

#[test]
fn a_failure_elsewhere_finishes_the_workflow_instead_of_parking_it() {
    let mut s = fresh(workflow(json!({"steps": [
        {"id": "ship", "human": {"prompt": "Go?"}},
        {"id": "lint", "run": ["false"], "retry": {"max_attempts": 1}},
    ]})));
    start(&mut s, 0);
    finish_attempt(
        &mut s,
        "lint",
        super::tests::fail(FailureClass::Retryable),
        5,
    );
    let (ch, parked) = settle(&mut s);
    assert!(!parked);
    assert_eq!(ch.status.unwrap().status, WorkflowStatus::Failed);
}

#[test]
fn a_notification_records_its_message_and_continues_at_once() {
    let mut s = fresh(workflow(json!({"steps": [
        {"id": "tell", "human": {"prompt": "Deploying {inputs.env}", "kind": "notification"}},
        {"id": "go", "deps": ["tell"], "run": ["true"]},
    ], "inputs": {"env": "prod"}})));
    let (ch, started) = start(&mut s, 0);
    assert_eq!(status(&s, "tell"), StepStatus::Completed);
    assert_eq!(
        s.steps()[idx(&s, "tell")].output.as_deref(),
        Some("Deploying prod")
    );
    assert_eq!(started, ["go"]);
    let done = event(&ch, EventKind::StepCompleted);
    assert_eq!(done.data.message.as_deref(), Some("Deploying prod"));
}

#[test]
fn a_reloaded_scheduler_keeps_the_stored_deadline_and_applies_a_passed_one() {
    let mut s = gated("fail");
    ask_at(&mut s, 1_000);
    settle(&mut s);
    // Another process loads the stored rows long after (no process ran meanwhile).
    let rows = s.steps().to_vec();
    let def = s.def.clone();
    let mut again = Scheduler::new(
        ThreadId::from("t"),
        def.clone(),
        WorkflowStatus::Blocked,
        rows.clone(),
        30_000,
    );
    assert_eq!(again.next_deadline(), Some(61_000), "the same deadline");
    let (ch, _) = start(&mut again, 30_000);
    assert!(ch.is_empty(), "still waiting");
    let mut late = Scheduler::new(
        ThreadId::from("t"),
        def,
        WorkflowStatus::Blocked,
        rows,
        99_000,
    );
    let (ch, _) = start(&mut late, 99_000);
    assert_eq!(status(&late, "ship"), StepStatus::Failed);
    assert!(kinds(&ch).contains(&EventKind::StepFailed));
}

#[test]
fn a_human_step_without_a_prompt_is_rejected_naming_step_and_field() {
    let err = crate::workflow::compile(
        &json!({"steps": [{"id": "ship", "human": {"kind": "approval"}}]}),
        &Default::default(),
        std::path::Path::new("/tmp"),
    )
    .unwrap_err();
    let p = &err.0[0];
    assert_eq!(p.step.as_deref(), Some("ship"));
    assert_eq!(p.field, "human.prompt");
}

#[test]
fn a_studio_human_step_maps_onto_a_human_step() {
    let def = workflow(json!({"workflow": [
        {"id": "ask", "type": "human", "prompt": "Ship it?", "interactionType": "approval",
         "timeoutBehavior": "auto-approve", "timeoutSeconds": 30, "approvalRequired": true},
    ]}));
    match &def.steps[0].action {
        crate::workflow::Action::Human(h) => {
            assert_eq!(h.timeout_s, Some(30));
            assert_eq!(h.on_timeout, crate::workflow::OnTimeout::Approve);
        }
        other => panic!("not a human step: {other:?}"),
    }
}
