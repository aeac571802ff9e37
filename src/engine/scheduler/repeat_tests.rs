//! Unit tests of `repeat` groups: iterations, `until`, `max_iterations`, `previous`, agent
//! sessions across iterations, and the stored transitions of a loop.

use std::collections::BTreeSet;

use serde_json::json;

use super::tests::{fail, finish_attempt, fresh, idx, ok, start, status, workflow};
use super::*;
use crate::engine::executor::Prepared;
use crate::engine::outcome::FailureClass;
use crate::engine::scheduler::stored::ResumePlan;

/// impl -> loop { test -> fix (only when test did not pass) } until test passes -> after.
fn fix_until_green(max: u32) -> Arc<Workflow> {
    workflow(json!({"steps": [
        {"id": "impl", "run": ["true"]},
        {"id": "loop", "deps": ["impl"], "repeat": {
            "steps": [
                {"id": "test", "run": ["test", "{impl.output}"]},
                {"id": "fix", "deps": ["test"], "when": "steps.test.output != 'pass'",
                 "run": ["fix", "{previous.fix.output}|{test.output}"]}
            ],
            "until": "steps.test.output == 'pass'", "max_iterations": max}},
        {"id": "after", "deps": ["loop"], "run": ["echo", "{loop.output}"]}
    ]}))
}

fn argv_of(s: &mut Scheduler, id: &str, out: Outcome, now: i64) -> Vec<Vec<String>> {
    let i = idx(s, id);
    let n = s.steps()[i].attempts;
    let mut ch = Changes::default();
    s.apply(&mut ch, i, n, out, false, now, "me", 0.0);
    s.start_ready(&mut ch, now, "me", || Some(()))
        .into_iter()
        .map(|(a, ())| match a.prepared {
            Prepared::Run(argv) => argv,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_loop_iterates_until_its_condition_holds_and_reads_the_previous_iteration() {
    let mut s = fresh(fix_until_green(5));
    start(&mut s, 0);
    let (ch, started) = finish_attempt(&mut s, "impl", ok("v1"), 1);
    assert_eq!(started, ["test#1"], "iteration 1 starts with its root");
    assert!(
        ch.steps.iter().any(|r| r.step_id == "fix#1"),
        "rows of the iteration are created with it"
    );
    assert_eq!(status(&s, "loop"), StepStatus::Running);
    assert_eq!(argv_of(&mut s, "test#1", ok("red"), 2), [["fix", "|red"]]);
    let (ch, started) = finish_attempt(&mut s, "fix#1", ok("patched"), 3);
    assert_eq!(started, ["test#2"], "until was false: iteration 2");
    let iteration_event = ch
        .events
        .iter()
        .find(|e| e.kind == EventKind::StepStarted)
        .unwrap();
    assert_eq!(iteration_event.data.iteration, Some(2));
    assert_eq!(
        argv_of(&mut s, "test#2", ok("red again"), 4),
        [["fix", "patched|red again"]]
    );
    finish_attempt(&mut s, "fix#2", ok("patched twice"), 5);
    let (_, started) = finish_attempt(&mut s, "test#3", ok("pass"), 6);
    assert_eq!(started, ["after"]);
    assert_eq!(status(&s, "fix#3"), StepStatus::Skipped);
    assert_eq!(status(&s, "loop"), StepStatus::Completed);
    assert_eq!(
        s.steps()[idx(&s, "loop")].output.as_deref(),
        Some("pass"),
        "the last step of the last iteration that ran"
    );
    assert_eq!(
        status(&s, "test#1"),
        StepStatus::Completed,
        "iterations stay in status"
    );
}

#[test]
fn a_loop_whose_condition_never_holds_fails_after_max_iterations() {
    let mut s = fresh(fix_until_green(2));
    start(&mut s, 0);
    finish_attempt(&mut s, "impl", ok("v1"), 1);
    finish_attempt(&mut s, "test#1", ok("red"), 2);
    finish_attempt(&mut s, "fix#1", ok("f"), 3);
    finish_attempt(&mut s, "test#2", ok("red"), 4);
    let (_, started) = finish_attempt(&mut s, "fix#2", ok("f"), 5);
    assert!(started.is_empty());
    assert_eq!(status(&s, "loop"), StepStatus::Failed);
    let err = s.steps()[idx(&s, "loop")].error.clone().unwrap();
    assert!(err.contains("never held in 2 iterations"), "{err}");
    assert!(s.is_settled(0));
}

#[test]
fn a_failed_step_fails_its_iteration_and_the_group() {
    let mut s = fresh(fix_until_green(5));
    start(&mut s, 0);
    finish_attempt(&mut s, "impl", ok("v1"), 1);
    let (_, started) = finish_attempt(&mut s, "test#1", fail(FailureClass::Fatal), 2);
    assert!(started.is_empty());
    assert_eq!(status(&s, "loop"), StepStatus::Failed);
    let err = s.steps()[idx(&s, "loop")].error.clone().unwrap();
    assert!(err.starts_with("iteration 1: step test#1 failed"), "{err}");
}

#[test]
fn a_restart_mid_iteration_keeps_earlier_iterations_and_resumes_at_the_unfinished_step() {
    let def = fix_until_green(5);
    let mut s = fresh(def.clone());
    start(&mut s, 0);
    finish_attempt(&mut s, "impl", ok("v1"), 1);
    finish_attempt(&mut s, "test#1", ok("red"), 2);
    finish_attempt(&mut s, "fix#1", ok("f1"), 3);
    finish_attempt(&mut s, "test#2", ok("red"), 4);
    // fix#2 runs when the owner dies.
    let ch = adopt_changes(s.steps(), Some("dead"), 3, 5);
    let crashed: Vec<&str> = ch.attempts.iter().map(|a| a.step_id.as_str()).collect();
    assert_eq!(
        crashed,
        ["fix#2"],
        "the group row has no attempt of its own"
    );
    let mut rows = s.steps().to_vec();
    for c in &ch.steps {
        let i = rows.iter().position(|r| r.step_id == c.step_id).unwrap();
        rows[i] = c.clone();
    }
    let mut again = Scheduler::new(ThreadId::from("t"), def, WorkflowStatus::Running, rows, 5);
    let mut ch = Changes::default();
    let started: Vec<(String, Vec<String>)> = again
        .start_ready(&mut ch, 5, "me", || Some(()))
        .into_iter()
        .map(|(a, ())| match a.prepared {
            Prepared::Run(argv) => (a.step_id, argv),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        started,
        [(
            "fix#2".to_owned(),
            vec!["fix".to_owned(), "f1|red".to_owned()]
        )]
    );
    assert_eq!(status(&again, "test#1"), StepStatus::Completed);
}

#[test]
fn an_agent_step_continues_its_session_in_the_next_iteration_with_its_own_prompt() {
    let def = workflow(json!({"steps": [
        {"id": "loop", "repeat": {"steps": [
            {"id": "fix", "prompt": "Fix it. Last time: {previous.fix.output}"}
        ], "max_iterations": 2}}
    ]}));
    let mut s = fresh(def);
    start(&mut s, 0);
    let i = idx(&s, "fix#1");
    s.set_session(i, 1, "sess-1");
    let mut ch = Changes::default();
    s.apply(&mut ch, i, 1, ok("did a"), false, 1, "me", 0.0);
    let specs = s.start_ready(&mut ch, 1, "me", || Some(()));
    let Prepared::Agent { prompt, resume, .. } = &specs[0].0.prepared else {
        panic!("not an agent attempt");
    };
    assert_eq!(specs[0].0.step_id, "fix#2");
    assert_eq!(resume.as_deref(), Some("sess-1"));
    assert_eq!(prompt, "Fix it. Last time: did a");
    finish_attempt(&mut s, "fix#2", ok("did b"), 2);
    assert_eq!(
        status(&s, "loop"),
        StepStatus::Completed,
        "no until: every iteration runs"
    );
}

fn plan<'a>(from: Option<&'a str>, scope: &'a stored::ResumeScope, skip: bool) -> ResumePlan<'a> {
    ResumePlan {
        from_step: from,
        downstream: &scope.downstream,
        skip,
        guidance: None,
        overrides: None,
        groups: &scope.groups,
        dropped: &scope.dropped,
    }
}

/// The loop ran out of iterations (2), so the workflow failed.
fn exhausted() -> Scheduler {
    let mut s = fresh(fix_until_green(2));
    start(&mut s, 0);
    finish_attempt(&mut s, "impl", ok("v1"), 1);
    finish_attempt(&mut s, "test#1", ok("red"), 2);
    finish_attempt(&mut s, "fix#1", ok("f"), 3);
    finish_attempt(&mut s, "test#2", ok("red"), 4);
    finish_attempt(&mut s, "fix#2", ok("f"), 5);
    let mut ch = Changes::default();
    s.finish(&mut ch);
    s
}

#[test]
fn retrying_an_exhausted_loop_starts_it_over_from_its_first_iteration() {
    let s = exhausted();
    let scope = resume_scope(&s.def, s.steps(), None).unwrap();
    let ch = resume_changes(
        WorkflowStatus::Failed,
        s.steps(),
        &plan(None, &scope, false),
        9,
    )
    .unwrap();
    let dropped: BTreeSet<&str> = ch.dropped.iter().map(String::as_str).collect();
    assert_eq!(dropped, ["fix#1", "fix#2", "test#1", "test#2"].into());
    let group = ch.steps.iter().find(|r| r.step_id == "loop").unwrap();
    assert_eq!(group.status, StepStatus::Pending);
}

#[test]
fn resuming_from_an_iteration_drops_the_later_ones_and_reruns_from_that_step() {
    let s = exhausted();
    let scope = resume_scope(&s.def, s.steps(), Some("test#1")).unwrap();
    assert_eq!(
        scope.downstream,
        ["after".to_owned(), "fix#1".to_owned(), "test#1".to_owned()].into()
    );
    let ch = resume_changes(
        WorkflowStatus::Failed,
        s.steps(),
        &plan(Some("test#1"), &scope, false),
        9,
    )
    .unwrap();
    let dropped: BTreeSet<&str> = ch.dropped.iter().map(String::as_str).collect();
    assert_eq!(dropped, ["fix#2", "test#2"].into());
    let changed: BTreeSet<(&str, &str)> = ch
        .steps
        .iter()
        .map(|r| (r.step_id.as_str(), r.status.as_str()))
        .collect();
    assert!(changed.contains(&("test#1", "pending")), "{changed:?}");
    assert!(changed.contains(&("fix#1", "pending")), "{changed:?}");
    assert!(changed.contains(&("loop", "running")), "{changed:?}");
    assert!(
        resume_scope(&s.def, s.steps(), Some("fix")).is_err(),
        "a step inside a loop is named by its iteration"
    );
}
