//! Unit tests of `for_each` fan-out: expansion, limits, aggregation, and the stored
//! transitions (shutdown, adoption, resume) of an expanded step.

use std::collections::BTreeSet;

use serde_json::json;

use super::tests::{fail, finish_attempt, fresh, idx, kinds, ok, start, status, workflow};
use super::*;
use crate::engine::executor::Prepared;
use crate::engine::outcome::FailureClass;
use crate::engine::scheduler::stored::ResumePlan;

/// plan -> review (for_each over plan's lines, max 2 at once) -> sum.
fn fan(max_parallel: Option<u32>) -> Scheduler {
    let mut review = json!({
        "id": "review", "deps": ["plan"], "for_each": "steps.plan.output",
        "run": ["echo", "{index}:{item}"]
    });
    if let Some(m) = max_parallel {
        review["max_parallel"] = json!(m);
    }
    fresh(workflow(json!({"steps": [
        {"id": "plan", "run": ["true"]},
        review,
        {"id": "sum", "deps": ["review"], "run": ["echo", "{review.output}"]},
    ]})))
}

fn argv(spec: &AttemptSpec) -> Vec<String> {
    match &spec.prepared {
        Prepared::Run(argv) => argv.clone(),
        other => panic!("not a run: {other:?}"),
    }
}

/// Runs plan with `lines` as its output; returns the change set and what started.
fn plan_done(s: &mut Scheduler, lines: &str) -> (Changes, Vec<String>) {
    start(s, 0);
    finish_attempt(s, "plan", ok(lines), 1)
}

#[test]
fn the_item_list_is_stored_with_the_instances_in_one_change_set() {
    let mut s = fan(None);
    let (ch, started) = plan_done(&mut s, "a.rs\nb.rs\nc.rs\n");
    assert_eq!(started, ["review[0]", "review[1]", "review[2]"]);
    let parent = ch.steps.iter().find(|r| r.step_id == "review").unwrap();
    assert_eq!(parent.items(), Some(r#"["a.rs","b.rs","c.rs"]"#));
    assert_eq!(parent.status, StepStatus::Running);
    for i in 0..3 {
        let id = format!("review[{i}]");
        let row = ch.steps.iter().find(|r| r.step_id == id).unwrap();
        assert_eq!(row.status, StepStatus::Running, "{id}");
        assert!(row.items().is_none());
    }
    let idxs: BTreeSet<i64> = ch.steps.iter().map(|r| r.idx).collect();
    assert_eq!(idxs.len(), ch.steps.len(), "every row has its own position");
    assert_eq!(ch.attempts.len(), 1 + 3, "plan's end and three starts");
}

#[test]
fn instances_render_their_item_and_index() {
    let mut s = fan(None);
    start(&mut s, 0);
    let i = idx(&s, "plan");
    let mut ch = Changes::default();
    s.apply(&mut ch, i, 1, ok("x\ny\n"), false, 1, "me", 0.0);
    let specs = s.start_ready(&mut ch, 1, "me", || Some(()));
    let rendered: Vec<Vec<String>> = specs.iter().map(|(a, ())| argv(a)).collect();
    assert_eq!(rendered, [["echo", "0:x"], ["echo", "1:y"]]);
    assert_eq!(specs[1].0.step_id, "review[1]");
}

#[test]
fn item_fields_render_raw_strings_and_json_for_the_rest() {
    let mut s = fresh(workflow(json!({
        "inputs": {"targets": {"default": r#"[{"name": "api", "port": 80}, {"name": "web", "tags": ["a"]}]"#}},
        "steps": [{"id": "t", "for_each": "inputs.targets", "run": ["x", "{item.name}", "{item.port}{item.tags}", "{item}"]}]
    })));
    let mut ch = Changes::default();
    let specs = s.start_ready(&mut ch, 0, "me", || Some(()));
    let rendered: Vec<Vec<String>> = specs.iter().map(|(a, ())| argv(a)).collect();
    assert_eq!(rendered[0][..3], ["x", "api", "80"]);
    assert_eq!(rendered[1][..3], ["x", "web", r#"["a"]"#]);
    assert_eq!(rendered[0][3], r#"{"name":"api","port":80}"#);
}

#[test]
fn max_parallel_bounds_the_instances_in_flight() {
    let mut s = fan(Some(2));
    let (_, started) = plan_done(&mut s, "a\nb\nc\nd\n");
    assert_eq!(started, ["review[0]", "review[1]"]);
    let (_, started) = finish_attempt(&mut s, "review[1]", ok("B"), 2);
    assert_eq!(started, ["review[2]"], "one ended, one more starts");
    let (_, started) = finish_attempt(&mut s, "review[0]", fail(FailureClass::Fatal), 3);
    assert_eq!(started, ["review[3]"]);
}

#[test]
fn the_output_is_the_json_array_of_instance_outputs_in_item_order() {
    let mut s = fan(None);
    plan_done(&mut s, "a\nb\n");
    let (_, started) = finish_attempt(&mut s, "review[1]", ok("second\n"), 2);
    assert!(started.is_empty());
    assert_eq!(status(&s, "review"), StepStatus::Running);
    let (ch, started) = finish_attempt(&mut s, "review[0]", ok("first"), 3);
    assert_eq!(started, ["sum"]);
    assert_eq!(status(&s, "review"), StepStatus::Completed);
    let out = s.steps()[idx(&s, "review")].output.clone().unwrap();
    assert_eq!(out, r#"["first","second"]"#);
    assert!(kinds(&ch).contains(&EventKind::StepCompleted));
}

#[test]
fn a_failed_instance_fails_its_step_once_every_instance_settled() {
    let mut s = fan(None);
    plan_done(&mut s, "a\nb\n");
    finish_attempt(&mut s, "review[0]", fail(FailureClass::Fatal), 2);
    assert_eq!(
        status(&s, "review"),
        StepStatus::Running,
        "review[1] still runs"
    );
    let (_, started) = finish_attempt(&mut s, "review[1]", ok("fine"), 3);
    assert!(started.is_empty(), "sum does not run after a failure");
    assert_eq!(status(&s, "review"), StepStatus::Failed);
    let err = s.steps()[idx(&s, "review")].error.clone().unwrap();
    assert!(
        err.starts_with("1 of 2 instances failed: review[0]"),
        "{err}"
    );
    assert!(s.is_settled(0));
    let mut ch = Changes::default();
    s.finish(&mut ch);
    assert_eq!(s.status(), WorkflowStatus::Failed);
}

#[test]
fn an_empty_list_completes_the_step_at_once() {
    let mut s = fan(None);
    let (_, started) = plan_done(&mut s, "\n");
    assert_eq!(started, ["sum"]);
    assert_eq!(status(&s, "review"), StepStatus::Completed);
    assert_eq!(s.steps()[idx(&s, "review")].output.as_deref(), Some("[]"));
}

#[test]
fn a_list_that_is_not_one_fails_the_step_with_the_expression_named() {
    let mut s = fresh(workflow(json!({"steps": [
        {"id": "n", "run": ["true"]},
        {"id": "f", "deps": ["n"], "for_each": "steps.n.attempts", "run": ["true"]},
    ]})));
    start(&mut s, 0);
    finish_attempt(&mut s, "n", ok("x"), 1);
    assert_eq!(status(&s, "f"), StepStatus::Failed);
    let err = s.steps()[idx(&s, "f")].error.clone().unwrap();
    assert!(
        err.contains("steps.n.attempts") && err.contains("not a list"),
        "{err}"
    );
}

#[test]
fn a_reloaded_expansion_reuses_its_stored_items_and_keeps_completed_instances() {
    let mut s = fan(None);
    plan_done(&mut s, "a\nb\nc\n");
    finish_attempt(&mut s, "review[0]", ok("A"), 2);
    let mut ch = Changes::default();
    s.stop(&mut ch, Stop::Shutdown, 3);
    assert_eq!(
        status(&s, "review"),
        StepStatus::Running,
        "kept across a shutdown"
    );
    // The next owner reads the rows back; plan's output changed meanwhile, which must not
    // change the items.
    let mut rows = s.steps().to_vec();
    rows[idx(&s, "plan")].output = Some("z\n".into());
    let def = workflow(json!({"steps": [
        {"id": "plan", "run": ["true"]},
        {"id": "review", "deps": ["plan"], "for_each": "steps.plan.output", "run": ["echo", "{index}:{item}"]},
        {"id": "sum", "deps": ["review"], "run": ["echo", "{review.output}"]},
    ]}));
    let mut again = Scheduler::new(
        ThreadId::from("t"),
        def,
        WorkflowStatus::Interrupted,
        rows,
        4,
    );
    let mut ch = Changes::default();
    let specs = again.start_ready(&mut ch, 4, "me", || Some(()));
    let rendered: Vec<Vec<String>> = specs.iter().map(|(a, ())| argv(a)).collect();
    assert_eq!(rendered, [["echo", "1:b"], ["echo", "2:c"]]);
    assert!(
        !ch.steps
            .iter()
            .any(|r| r.step_id == "review" && r.items().is_some()),
        "no second expansion"
    );
}

#[test]
fn adoption_counts_only_the_instances_attempts_as_crashed() {
    let mut s = fan(None);
    plan_done(&mut s, "a\nb\n");
    finish_attempt(&mut s, "review[0]", ok("A"), 2);
    let ch = adopt_changes(s.steps(), Some("dead"), 3, 5);
    let crashed: Vec<&str> = ch.attempts.iter().map(|a| a.step_id.as_str()).collect();
    assert_eq!(crashed, ["review[1]"]);
    assert!(ch.steps.iter().all(|r| r.step_id != "review"));
}

static NO_GROUPS: std::collections::BTreeMap<String, Vec<String>> =
    std::collections::BTreeMap::new();
static NOTHING: BTreeSet<String> = BTreeSet::new();

fn plan<'a>(from: Option<&'a str>, down: &'a BTreeSet<String>, skip: bool) -> ResumePlan<'a> {
    ResumePlan {
        from_step: from,
        downstream: down,
        skip,
        guidance: None,
        overrides: None,
        groups: &NO_GROUPS,
        dropped: &NOTHING,
    }
}

/// The rows a change set writes, by id, with the status it gives them.
fn changed(ch: &Changes) -> Vec<(&str, StepStatus)> {
    let mut v: Vec<(&str, StepStatus)> = ch
        .steps
        .iter()
        .map(|r| (r.step_id.as_str(), r.status))
        .collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// A fan-out of three whose review[1] failed; the workflow finished failed.
fn failed_fan() -> Scheduler {
    let mut s = fan(None);
    plan_done(&mut s, "a\nb\nc\n");
    finish_attempt(&mut s, "review[0]", ok("A"), 2);
    finish_attempt(&mut s, "review[1]", fail(FailureClass::Fatal), 3);
    finish_attempt(&mut s, "review[2]", ok("C"), 4);
    let mut ch = Changes::default();
    s.finish(&mut ch);
    s
}

#[test]
fn a_retry_reruns_only_the_failed_instances() {
    let s = failed_fan();
    let none = BTreeSet::new();
    let ch = resume_changes(
        WorkflowStatus::Failed,
        s.steps(),
        &plan(None, &none, false),
        9,
    )
    .unwrap();
    let changed = changed(&ch);
    assert_eq!(
        changed,
        [
            ("review", StepStatus::Running),
            ("review[1]", StepStatus::Pending)
        ]
    );
    assert!(ch.dropped.is_empty());
}

#[test]
fn skipping_the_failed_instance_lets_its_step_complete() {
    let s = failed_fan();
    let none = BTreeSet::new();
    let ch = resume_changes(
        WorkflowStatus::Failed,
        s.steps(),
        &plan(None, &none, true),
        9,
    )
    .unwrap();
    let mut rows = s.steps().to_vec();
    for c in &ch.steps {
        let i = rows.iter().position(|r| r.step_id == c.step_id).unwrap();
        rows[i] = c.clone();
    }
    let def = s.def.clone();
    let mut again = Scheduler::new(ThreadId::from("t"), def, WorkflowStatus::Running, rows, 9);
    let mut ch = Changes::default();
    let started: Vec<String> = again
        .start_ready(&mut ch, 9, "me", || Some(()))
        .into_iter()
        .map(|(a, ())| a.step_id)
        .collect();
    assert_eq!(started, ["sum"]);
    assert_eq!(
        again.steps()[idx(&again, "review")].output.as_deref(),
        Some(r#"["A","","C"]"#)
    );
}

#[test]
fn resuming_from_the_fan_out_step_expands_it_afresh() {
    let s = failed_fan();
    let down: BTreeSet<String> = ["review".to_owned(), "sum".to_owned()].into();
    let ch = resume_changes(
        WorkflowStatus::Failed,
        s.steps(),
        &plan(Some("review"), &down, false),
        9,
    )
    .unwrap();
    assert_eq!(ch.dropped, ["review[0]", "review[1]", "review[2]"]);
    assert!(ch.steps.iter().all(|r| !r.step_id.starts_with("review[")));
    let parent = ch.steps.iter().find(|r| r.step_id == "review").unwrap();
    assert_eq!(parent.status, StepStatus::Pending);
    assert!(parent.items().is_none());
}

#[test]
fn resuming_from_one_instance_reruns_it_and_what_follows_its_step() {
    let s = failed_fan();
    let down: BTreeSet<String> = ["sum".to_owned()].into();
    let ch = resume_changes(
        WorkflowStatus::Failed,
        s.steps(),
        &plan(Some("review[0]"), &down, false),
        9,
    )
    .unwrap();
    let changed = changed(&ch);
    assert_eq!(
        changed,
        [
            ("review", StepStatus::Running),
            ("review[0]", StepStatus::Pending),
            ("sum", StepStatus::Pending)
        ]
    );
}
