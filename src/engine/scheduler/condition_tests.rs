//! Unit tests of the control-flow transitions: `when` conditions, skips and joins, on-failure
//! handlers and `continue_on_error`.

use serde_json::json;

use super::tests::{fail, finish_attempt, fresh, kinds, ok, start, status, workflow};
use super::*;

fn finished(s: &mut Scheduler) -> (WorkflowStatus, Changes) {
    let mut ch = Changes::default();
    s.finish(&mut ch);
    (s.status(), ch)
}

#[test]
fn a_false_condition_skips_the_step_and_records_what_it_read() {
    let def = workflow(json!({"steps": [
        {"id": "a", "run": ["true"]},
        {"id": "b", "deps": ["a"], "when": "steps.a.output == 'yes'", "run": ["true"]},
        {"id": "c", "deps": ["a"], "when": "steps.a.output == 'no'", "run": ["true"]},
    ]}));
    let mut s = fresh(def);
    start(&mut s, 0);
    let (ch, started) = finish_attempt(&mut s, "a", ok("no\n"), 1);
    assert_eq!(started, ["c"]);
    assert_eq!(status(&s, "b"), StepStatus::Skipped);
    let skip = ch
        .events
        .iter()
        .find(|e| e.kind == EventKind::StepSkipped)
        .unwrap();
    assert_eq!(skip.step_id.as_deref(), Some("b"));
    assert_eq!(
        skip.data.condition.as_deref(),
        Some("steps.a.output == 'yes'")
    );
    let values = skip.data.values.as_ref().unwrap();
    assert_eq!(values["steps"]["a"]["output"], "no");
    assert_eq!(values["steps"]["a"]["status"], "completed");
    assert_eq!(values["failure"], false);
}

#[test]
fn a_step_whose_deps_were_all_skipped_is_skipped_too() {
    // Definition order puts the dependent first: the skip must still reach it.
    let def = workflow(json!({"steps": [
        {"id": "after", "deps": ["branch"], "run": ["true"]},
        {"id": "a", "run": ["true"]},
        {"id": "branch", "deps": ["a"], "when": "false", "run": ["true"]},
    ]}));
    let mut s = fresh(def);
    start(&mut s, 0);
    let (_, started) = finish_attempt(&mut s, "a", ok(""), 1);
    assert!(started.is_empty());
    assert_eq!(status(&s, "branch"), StepStatus::Skipped);
    assert_eq!(status(&s, "after"), StepStatus::Skipped);
    assert_eq!(finished(&mut s).0, WorkflowStatus::Completed);
}

#[test]
fn a_join_runs_when_one_dep_ran_and_reads_empty_output_of_the_skipped_one() {
    let def = workflow(json!({"steps": [
        {"id": "a", "run": ["true"]},
        {"id": "yes", "deps": ["a"], "when": "steps.a.output == 'y'", "run": ["echo", "Y"]},
        {"id": "no", "deps": ["a"], "when": "steps.a.output != 'y'", "run": ["echo", "N"]},
        {"id": "join", "deps": ["yes", "no"], "run": ["echo", "[{yes.output}]", "[{no.output}]"]},
    ]}));
    let mut s = fresh(def);
    start(&mut s, 0);
    let (_, started) = finish_attempt(&mut s, "a", ok("y"), 1);
    assert_eq!(started, ["yes"]);
    assert_eq!(status(&s, "no"), StepStatus::Skipped);
    let i = s.def.position("join").unwrap();
    let (_, started) = finish_attempt(&mut s, "yes", ok("Y"), 2);
    assert_eq!(started, ["join"]);
    let spec = s.prepare(i);
    let crate::engine::executor::Prepared::Run(argv) = spec.prepared else {
        panic!("a run step");
    };
    assert_eq!(argv, ["echo", "[Y]", "[]"]);
}

#[test]
fn a_failed_dep_stops_a_plain_condition_but_runs_an_on_failure_handler() {
    let def = workflow(json!({"steps": [
        {"id": "build", "run": ["false"], "retry": {"max_attempts": 1}},
        {"id": "deploy", "deps": ["build"], "when": "true", "run": ["true"]},
        {"id": "after_deploy", "deps": ["deploy"], "run": ["true"]},
        {"id": "notify", "deps": ["after_deploy"], "when": "failure()", "run": ["true"]},
        {"id": "cleanup", "deps": ["build"], "when": "always()", "run": ["true"]},
    ]}));
    let mut s = fresh(def);
    start(&mut s, 0);
    let (_, started) = finish_attempt(&mut s, "build", fail(FailureClass::Fatal), 1);
    // notify sees the failure through the steps that can never run now.
    assert_eq!(started, ["notify", "cleanup"]);
    assert_eq!(status(&s, "deploy"), StepStatus::Pending);
    assert_eq!(status(&s, "after_deploy"), StepStatus::Pending);
    finish_attempt(&mut s, "notify", ok(""), 2);
    finish_attempt(&mut s, "cleanup", ok(""), 2);
    assert!(s.is_settled(0), "the steps that can never run do not wait");
    let (wf, ch) = finished(&mut s);
    assert_eq!(wf, WorkflowStatus::Failed);
    assert!(
        ch.status
            .unwrap()
            .error
            .unwrap()
            .contains("step build failed")
    );
}

#[test]
fn an_on_failure_handler_is_skipped_when_nothing_failed() {
    let def = workflow(json!({"steps": [
        {"id": "build", "run": ["true"]},
        {"id": "notify", "deps": ["build"], "when": "failure()", "run": ["true"]},
        {"id": "after", "deps": ["notify"], "run": ["true"]},
    ]}));
    let mut s = fresh(def);
    start(&mut s, 0);
    let (ch, started) = finish_attempt(&mut s, "build", ok(""), 1);
    assert!(started.is_empty());
    assert_eq!(
        kinds(&ch),
        [
            EventKind::StepCompleted,
            EventKind::StepSkipped,
            EventKind::StepSkipped
        ]
    );
    assert_eq!(finished(&mut s).0, WorkflowStatus::Completed);
}

#[test]
fn continue_on_error_lets_dependents_run_and_the_workflow_complete() {
    let def = workflow(json!({"steps": [
        {"id": "lint", "run": ["false"], "retry": {"max_attempts": 1}, "continue_on_error": true},
        {"id": "build", "deps": ["lint"], "run": ["true"]},
        {"id": "report", "deps": ["lint"], "when": "failure()", "run": ["true"]},
    ]}));
    let mut s = fresh(def);
    start(&mut s, 0);
    let (_, started) = finish_attempt(&mut s, "lint", fail(FailureClass::Fatal), 1);
    assert_eq!(started, ["build"], "a tolerated failure is not a failure()");
    assert_eq!(status(&s, "lint"), StepStatus::Failed, "it stays failed");
    assert_eq!(status(&s, "report"), StepStatus::Skipped);
    finish_attempt(&mut s, "build", ok(""), 2);
    let (wf, ch) = finished(&mut s);
    assert_eq!(wf, WorkflowStatus::Completed);
    assert_eq!(ch.status.unwrap().error, None);
}

#[test]
fn a_condition_that_cannot_be_evaluated_fails_the_step() {
    let def = workflow(json!({"steps": [
        {"id": "a", "run": ["true"]},
        {"id": "b", "deps": ["a"], "when": "steps.a.output", "run": ["true"]},
    ]}));
    let mut s = fresh(def);
    start(&mut s, 0);
    let (ch, started) = finish_attempt(&mut s, "a", ok("text"), 1);
    assert!(started.is_empty());
    assert_eq!(status(&s, "b"), StepStatus::Failed);
    let failed = ch.events.last().unwrap();
    assert_eq!(failed.kind, EventKind::StepFailed);
    assert!(failed.data.error.as_deref().unwrap().contains("not a bool"));
    assert_eq!(finished(&mut s).0, WorkflowStatus::Failed);
}

#[test]
fn a_root_condition_reads_inputs_and_a_skipped_root_still_starts_the_workflow() {
    let def = Arc::new(
        crate::workflow::compile(
            &json!({"inputs": {"mode": "fast"}, "steps": [
                {"id": "slow", "when": "inputs.mode == 'slow'", "run": ["true"]},
            ]}),
            &std::collections::BTreeMap::new(),
            std::path::Path::new("/tmp"),
        )
        .unwrap(),
    );
    let mut s = fresh(def);
    let (ch, started) = start(&mut s, 0);
    assert!(started.is_empty());
    assert_eq!(
        kinds(&ch),
        [EventKind::WorkflowStarted, EventKind::StepSkipped]
    );
    assert_eq!(
        ch.events[1].data.values.as_ref().unwrap()["inputs"]["mode"],
        "fast"
    );
    assert_eq!(finished(&mut s).0, WorkflowStatus::Completed);
}

#[test]
fn a_step_skipped_by_a_resume_lets_its_dependents_run() {
    let def = workflow(json!({"steps": [
        {"id": "a", "run": ["false"], "retry": {"max_attempts": 1}},
        {"id": "b", "deps": ["a"], "run": ["true"]},
    ]}));
    let mut s = fresh(def.clone());
    start(&mut s, 0);
    finish_attempt(&mut s, "a", fail(FailureClass::Fatal), 1);
    let downstream = std::collections::BTreeSet::new();
    let plan = ResumePlan {
        from_step: None,
        skip: true,
        downstream: &downstream,
        guidance: None,
        overrides: None,
        groups: &Default::default(),
        dropped: &Default::default(),
    };
    let ch = resume_changes(WorkflowStatus::Failed, s.steps(), &plan, 2).unwrap();
    let mut rows = s.steps().to_vec();
    for r in &ch.steps {
        let i = rows.iter().position(|x| x.step_id == r.step_id).unwrap();
        rows[i] = r.clone();
    }
    let mut s = Scheduler::new(ThreadId::from("t"), def, WorkflowStatus::Running, rows, 2);
    let (_, started) = start(&mut s, 3);
    assert_eq!(started, ["b"]);
}
