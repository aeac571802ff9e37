//! End-to-end tests of [`compile`] for Claude Studio's shapes and the control-flow
//! constructs: conditions (`when`), `for_each` fan-out and `repeat` groups. The shared
//! helpers and the other constructs are in `compile_tests.rs`.
//!
//! Invariant under test: a Studio definition maps onto the same steps baton's own shape
//! would give, and every control-flow defect is refused at submission naming step and
//! field.

use serde_json::json;

use super::compile_tests::{assert_problem, ok, problems};
use crate::workflow::*;

#[test]
fn studio_single_step_object_is_a_one_step_workflow() {
    let wf = ok(json!({"role": "developer", "task": "Write hello world"}));
    assert_eq!(wf.steps.len(), 1);
    let step = &wf.steps[0];
    assert_eq!(step.id, "step-1");
    assert_eq!(step.role.as_deref(), Some("developer"));
    assert!(matches!(&step.action, Action::Prompt(t) if t.source() == "Write hello world"));
    assert_eq!(
        step.agent,
        AgentOptions::default(),
        "an unknown role is accepted with no options"
    );
}

#[test]
fn studio_bare_array_and_file_shapes_compile_unchanged() {
    let array = json!([
        {"id": "step1", "role": "developer", "task": "Create a hello world function"},
        {"id": "step2", "role": "tester", "task": "Test the function from step1: {step1.output}", "deps": ["step1"],
         "sessionId": "abc", "type": "task"}
    ]);
    assert_eq!(ok(array.clone()).steps.len(), 2);
    let file = json!({
        "name": "Multi-Agent", "description": "d", "version": "1.0.0",
        "workflow": array, "metadata": {"author": "x", "tags": ["a"]}
    });
    let wf = ok(file);
    assert_eq!(wf.name.as_deref(), Some("Multi-Agent"));
    assert_eq!(wf.step("step2").unwrap().deps, ["step1"]);
}

#[test]
fn studio_lenient_step_fields_are_ignored() {
    let wf = ok(
        json!({"steps": [{"id": "a", "prompt": "x", "name": "A", "description": "d",
        "metadata": {"k": 1}, "type": "task", "config": {"z": true}, "sessionId": "s"}]}),
    );
    assert_eq!(wf.steps.len(), 1);
}

#[test]
fn studio_unknown_step_types_and_misplaced_studio_fields_are_rejected() {
    let ps = problems(json!([{"id": "w", "type": "webhook", "task": "x"}]));
    assert_problem(&ps, Some("w"), "type", "\"webhook\" is not supported");
    assert_eq!(ps.len(), 1, "{ps}");
    let ps = problems(json!([{"id": "t", "task": "x", "items": ["a"]}]));
    assert_problem(
        &ps,
        Some("t"),
        "items",
        "belongs to Claude Studio steps of type \"loop\"",
    );
}

#[test]
fn studio_control_flow_steps_map_onto_conditions_fan_out_and_joins() {
    let wf = ok(json!([
        {"id": "a", "task": "x"},
        {"id": "gate", "type": "conditional", "task": "decide", "deps": ["a"],
         "condition": "{a.output} === \"yes\"", "trueBranch": "yes", "falseBranch": "no"},
        {"id": "yes", "task": "y"},
        {"id": "no", "task": "n"},
        {"id": "each", "type": "loop", "task": "loop", "deps": ["yes"], "items": ["p", "q"],
         "loopVar": "f", "loopSteps": ["body"]},
        {"id": "body", "task": "do {f}"},
        {"id": "both", "type": "parallel", "task": "par", "deps": ["each"],
         "parallelSteps": ["l", "r"]},
        {"id": "l", "task": "l"},
        {"id": "r", "task": "r"}
    ]));
    let gate = wf.step("gate").unwrap();
    let Action::Condition(c) = &gate.action else {
        panic!("{:?}", gate.action);
    };
    assert_eq!(c.source(), r#"steps["a"].output == "yes""#);
    let yes = wf.step("yes").unwrap();
    assert_eq!(yes.deps, ["gate"]);
    assert_eq!(
        yes.when.as_ref().unwrap().source(),
        r#"steps["gate"].output == 'true'"#
    );
    let body = wf.step("body").unwrap();
    assert_eq!(
        body.for_each.as_ref().unwrap().items.source(),
        r#"["p","q"]"#
    );
    assert_eq!(body.for_each.as_ref().unwrap().max_parallel, Some(1));
    assert_eq!(body.deps, ["yes"]);
    assert_eq!(body.action.templates()[0].source(), "do {item}");
    assert_eq!(wf.step("each").unwrap().action, Action::Join);
    assert_eq!(wf.step("each").unwrap().deps, ["yes", "body"]);
    assert_eq!(wf.step("l").unwrap().deps, ["each"]);
    assert_eq!(wf.step("both").unwrap().deps, ["each", "l", "r"]);
}

#[test]
fn role_and_agent_id_select_profiles_when_defined() {
    let wf = ok(json!({
        "agents": {"dev": {"model": "opus"}, "dev_01": {"model": "haiku"}},
        "steps": [{"id": "a", "role": "dev", "task": "x"},
                  {"id": "b", "role": "dev", "agentId": "dev_01", "task": "y"}]
    }));
    assert_eq!(wf.step("a").unwrap().agent.model.as_deref(), Some("opus"));
    assert_eq!(
        wf.step("b").unwrap().agent.model.as_deref(),
        Some("haiku"),
        "agentId wins over role"
    );
    assert_eq!(wf.step("b").unwrap().role.as_deref(), Some("dev_01"));
}

#[test]
fn when_conditions_are_compiled_at_submission_naming_step_and_field() {
    let ps = problems(json!({"inputs": {"mode": "x"}, "steps": [
        {"id": "a", "run": ["true"]},
        {"id": "b", "run": ["true"]},
        {"id": "syntax", "deps": ["a"], "when": "steps.a.output ==", "run": ["true"]},
        {"id": "sideways", "deps": ["a"], "when": "steps.b.status == 'completed'", "run": ["true"]},
        {"id": "typo", "deps": ["a"], "when": "steps.aa.status == 'x'", "run": ["true"]},
        {"id": "input", "deps": ["a"], "when": "inputs.mod == 'x'", "run": ["true"]},
        {"id": "self", "when": "steps.self.status == 'x'", "run": ["true"]},
        {"id": "flag", "continue_on_error": "yes", "run": ["true"]},
    ]}));
    assert_problem(&ps, Some("syntax"), "when", "invalid CEL");
    assert_problem(&ps, Some("sideways"), "when", "not upstream");
    assert_problem(&ps, Some("typo"), "when", "unknown step \"aa\"");
    assert_problem(&ps, Some("input"), "when", "unknown input \"mod\"");
    assert_problem(&ps, Some("self"), "when", "this step itself");
    assert_problem(&ps, Some("flag"), "continue_on_error", "true or false");
    assert_eq!(ps.len(), 6, "{ps}");
}

#[test]
fn when_and_continue_on_error_round_trip_through_the_stored_form() {
    let wf = ok(json!({"steps": [
        {"id": "a", "run": ["true"], "continue_on_error": true},
        {"id": "b", "deps": ["a"], "when": "failure() || steps.a.status == 'failed'", "run": ["true"]},
    ]}));
    assert!(wf.steps[0].continue_on_error);
    let when = wf.steps[1].when.as_ref().unwrap();
    assert!(when.reads_status());
    let back: Workflow = serde_json::from_value(serde_json::to_value(&wf).unwrap()).unwrap();
    assert_eq!(back, wf);
    assert!(back.steps[1].when.as_ref().unwrap().steps().contains("a"));
}

#[test]
fn for_each_problems_are_rejected_at_submission_naming_step_and_field() {
    let ps = problems(json!({"inputs": {"n": {"default": "7"}}, "steps": [
        {"id": "a", "run": ["true"]},
        {"id": "map", "for_each": "{'k': 1}", "run": ["true"]},
        {"id": "num", "for_each": "inputs.n + 1", "run": ["true"]},
        {"id": "syntax", "for_each": "[1,", "run": ["true"]},
        {"id": "b", "deps": ["a"], "for_each": "['x']", "max_parallel": 0, "run": ["true"]},
        {"id": "plain", "run": ["true"], "max_parallel": 2},
    ]}));
    assert_problem(&ps, Some("map"), "for_each", "a map, not a list");
    assert_problem(&ps, Some("num"), "for_each", "evaluation failed");
    assert_problem(&ps, Some("syntax"), "for_each", "invalid CEL");
    assert_problem(&ps, Some("b"), "max_parallel", "at least 1");
    assert_problem(&ps, Some("plain"), "max_parallel", "has no for_each");
    // Graph-wide checks.
    let ps = problems(json!({"steps": [
        {"id": "a", "run": ["true"]},
        {"id": "sideways", "for_each": "steps.b.output", "run": ["true"]},
        {"id": "b", "deps": ["a"], "run": ["true"]},
        {"id": "plain", "run": ["echo", "{item}"]},
        {"id": "item", "run": ["true"]},
    ]}));
    assert_problem(&ps, Some("sideways"), "for_each", "not upstream");
    assert_problem(&ps, Some("plain"), "run", "has no for_each");
    assert_problem(&ps, Some("item"), "id", "reserved");
    let too_many: Vec<u32> = (0..=10_000).collect();
    let ps = problems(json!({"steps": [
        {"id": "big", "for_each": serde_json::to_string(&too_many).unwrap(), "run": ["true"]}
    ]}));
    assert_problem(&ps, Some("big"), "for_each", "at most 10000");
}

#[test]
fn a_for_each_step_keeps_its_list_expression_and_limit() {
    let wf = ok(json!({"steps": [
        {"id": "plan", "run": ["true"]},
        {"id": "r", "deps": ["plan"], "for_each": "steps.plan.output", "max_parallel": 3,
         "shell": "echo {index} {item.path}"},
    ]}));
    let fan = wf.steps[1].for_each.as_ref().unwrap();
    assert_eq!(fan.items.source(), "steps.plan.output");
    assert_eq!(fan.max_parallel, Some(3));
    let back: Workflow = serde_json::from_str(&serde_json::to_string(&wf).unwrap()).unwrap();
    assert_eq!(back, wf, "round-trips through its stored form");
}

#[test]
fn repeat_problems_are_rejected_at_submission_naming_step_and_field() {
    let ps = problems(json!({"steps": [
        {"id": "nomax", "repeat": {"steps": [{"id": "a", "run": ["true"]}]}},
        {"id": "zero", "repeat": {"steps": [{"id": "b", "run": ["true"]}], "max_iterations": 0}},
        {"id": "empty", "repeat": {"steps": [], "max_iterations": 2}},
        {"id": "bad", "repeat": {"steps": [{"id": "c", "run": ["true"]}], "until": "steps.c ==",
         "max_iterations": 2}},
        {"id": "both", "run": ["true"], "repeat": {"steps": [{"id": "d", "run": ["true"]}],
         "max_iterations": 2}},
        {"id": "nested", "repeat": {"steps": [
            {"id": "inner", "repeat": {"steps": [{"id": "e", "run": ["true"]}], "max_iterations": 2}}
        ], "max_iterations": 2}},
        {"id": "typo", "repeat": {"steps": [{"id": "f", "run": ["true"]}], "max_iterations": 2,
         "untill": "true"}},
    ]}));
    assert_problem(
        &ps,
        Some("nomax"),
        "repeat.max_iterations",
        "needs max_iterations",
    );
    assert_problem(&ps, Some("zero"), "repeat.max_iterations", "between 1 and");
    assert_problem(&ps, Some("empty"), "repeat.steps", "at least one step");
    assert_problem(&ps, Some("bad"), "repeat.until", "invalid CEL");
    assert_problem(&ps, Some("both"), "repeat", "exactly one of");
    assert_problem(&ps, Some("inner"), "repeat", "cannot have repeat");
    assert_problem(&ps, Some("typo"), "repeat.untill", "unknown field");
    let ps = problems(json!({"steps": [
        {"id": "loop", "repeat": {"steps": [
            {"id": "t", "run": ["true"]},
            {"id": "f", "deps": ["t"], "run": ["echo", "{previous.x.output}"]},
            {"id": "g", "deps": ["loop"], "run": ["true"]},
        ], "until": "steps.other.output == 'x'", "max_iterations": 2}},
        {"id": "other", "deps": ["t"], "run": ["echo", "{f.output}"]},
        {"id": "outside", "run": ["echo", "{previous.t.output}"]},
    ]}));
    assert_problem(&ps, Some("f"), "run[1]", "not a step of repeat group");
    assert_problem(&ps, Some("g"), "deps", "cannot depend on it");
    assert_problem(&ps, Some("loop"), "repeat.until", "steps.other");
    assert_problem(&ps, Some("other"), "deps", "depend on \"loop\"");
    assert_problem(&ps, Some("outside"), "run[1]", "not inside a repeat group");
}

#[test]
fn a_repeat_group_lists_its_steps_after_it_and_they_inherit_its_deps() {
    let wf = ok(json!({"steps": [
        {"id": "impl", "run": ["true"]},
        {"id": "loop", "deps": ["impl"], "repeat": {"steps": [
            {"id": "test", "run": ["echo", "{impl.output}"]},
            {"id": "fix", "deps": ["test"], "run": ["echo", "{previous.fix.output}{test.output}"]},
        ], "until": "steps.test.output == 'ok'", "max_iterations": 3}},
        {"id": "done", "deps": ["loop"], "run": ["echo", "{loop.output}"]},
    ]}));
    let ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["impl", "loop", "test", "fix", "done"]);
    assert_eq!(wf.steps[2].group.as_deref(), Some("loop"));
    assert_eq!(wf.steps[3].deps, ["test", "impl"]);
    let Action::Repeat(r) = &wf.steps[1].action else {
        panic!("not a group");
    };
    assert_eq!(r.steps, ["test", "fix"]);
    assert_eq!(r.max_iterations, 3);
    let back: Workflow = serde_json::from_str(&serde_json::to_string(&wf).unwrap()).unwrap();
    assert_eq!(back, wf, "round-trips through its stored form");
}
