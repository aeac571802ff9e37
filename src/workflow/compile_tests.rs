//! End-to-end tests of [`compile`]: definitions in, resolved workflows or problems out.
//!
//! Invariant under test: every class of defect is reported as its own problem naming step
//! and field, all of them at once, and every valid shape (baton's or Claude Studio's)
//! resolves to the same fully defaulted workflow.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::workflow::*;

fn compile_at(definition: Value, inputs: &[(&str, &str)], base: &str) -> Result<Workflow> {
    let inputs = inputs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    compile(&definition, &inputs, Path::new(base))
}

fn ok(definition: Value) -> Workflow {
    compile_at(definition, &[], "/base").unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
}

fn problems(definition: Value) -> Problems {
    compile_at(definition, &[], "/base").expect_err("expected problems")
}

/// Asserts that a problem for `step`/`field` whose message contains `needle` is present.
#[track_caller]
fn assert_problem(ps: &Problems, step: Option<&str>, field: &str, needle: &str) {
    assert!(
        ps.iter()
            .any(|p| p.step.as_deref() == step && p.field == field && p.message.contains(needle)),
        "no problem {step:?}/{field:?} containing {needle:?} in:\n{ps}"
    );
}

/// The example workflow of the design document.
pub(super) fn design_example() -> Value {
    json!({
      "name": "auth-feature",
      "inputs": { "ticket": { "description": "ticket id" } },
      "defaults": { "cwd": "/path/to/repo", "timeout_s": 1800,
                    "retry": { "max_attempts": 3 }, "agent": { "model": "sonnet" } },
      "steps": [
        { "id": "plan",  "prompt": "Plan the change for {inputs.ticket}",
          "agent": { "permission_mode": "plan" } },
        { "id": "build", "deps": ["plan"], "prompt": "Implement this plan:\n{plan.output}",
          "agent": { "permission_mode": "acceptEdits", "allowed_tools": ["Edit", "Bash(cargo:*)"] } },
        { "id": "test",  "deps": ["build"], "run": ["cargo", "test", "--quiet"],
          "retry": { "max_attempts": 2 } },
        { "id": "notes", "deps": ["test"], "shell": "printf %s {test.output} | tail -n 5" }
      ]
    })
}

#[test]
fn design_example_compiles_with_every_default_resolved() {
    let wf = compile_at(design_example(), &[("ticket", "AUTH-1")], "/base").unwrap();
    assert_eq!(wf.name.as_deref(), Some("auth-feature"));
    assert_eq!(
        wf.inputs,
        BTreeMap::from([("ticket".to_owned(), "AUTH-1".to_owned())])
    );
    let ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["plan", "build", "test", "notes"]);
    let build = wf.step("build").unwrap();
    assert_eq!(build.deps, ["plan"]);
    assert_eq!(build.cwd, PathBuf::from("/path/to/repo"));
    assert_eq!(build.timeout_s, Some(1800));
    assert_eq!(build.stall_timeout_s, 120);
    assert_eq!(build.on_stall, OnStall::Report);
    assert_eq!(build.agent.model.as_deref(), Some("sonnet"));
    assert_eq!(build.agent.permission_mode.as_deref(), Some("acceptEdits"));
    assert_eq!(build.agent.allowed_tools, ["Edit", "Bash(cargo:*)"]);
    assert_eq!(
        wf.step("test").unwrap().retry,
        RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        }
    );
    assert_eq!(
        wf.step("test").unwrap().agent,
        AgentOptions::default(),
        "agent options only for prompt steps"
    );
    assert!(
        matches!(&wf.step("notes").unwrap().action, Action::Shell(t) if t.source().starts_with("printf"))
    );
    assert_eq!(topo_order(&wf.steps), [0, 1, 2, 3]);
    assert_eq!(descendants(&wf, "test").len(), 2);
}

#[test]
fn compiled_workflow_round_trips_through_json() {
    let mut def = design_example();
    def["steps"][2]["success"] = json!({"contains": "ok", "regex": "^ok", "exit_codes": [0, 3]});
    def["steps"][2]["retry"]["backoff_factor"] = json!(1.5);
    def["steps"][3]["env"] = json!({"A": "1"});
    def["steps"][3]["on_stall"] = json!("restart");
    def["steps"][1]["cwd"] = json!("elsewhere");
    let wf = compile_at(def, &[("ticket", "T")], "/base").unwrap();
    let text = serde_json::to_string(&wf).unwrap();
    let back: Workflow = serde_json::from_str(&text).unwrap();
    assert_eq!(back, wf);
    // The shared directory is stored once; only the step elsewhere names its own.
    assert_eq!(text.matches("/path/to/repo").count(), 1, "{text}");
    assert!(text.contains("/base/elsewhere"), "{text}");
}

#[test]
fn missing_ids_default_to_step_position() {
    let wf = ok(
        json!({"steps": [{"prompt": "a"}, {"id": "x", "run": ["true"]}, {"shell": "echo {step-1.output}", "deps": "step-1"}]}),
    );
    let ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["step-1", "x", "step-3"]);
}

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
fn agent_options_merge_defaults_then_profile_then_inline() {
    let wf = ok(json!({
        "defaults": {"agent": {"model": "sonnet", "max_turns": 3, "permission_mode": "plan"}},
        "agents": {"rev": {"model": "opus", "append_system_prompt": "be strict", "allowed_tools": ["Read"]}},
        "steps": [
            {"id": "a", "prompt": "x", "agent": "rev"},
            {"id": "b", "prompt": "x", "role": "rev", "agent": {"max_turns": 9, "allowed_tools": ["Grep"]}},
            {"id": "c", "prompt": "x"}
        ]
    }));
    let a = &wf.step("a").unwrap().agent;
    assert_eq!(
        (
            a.model.as_deref(),
            a.max_turns,
            a.permission_mode.as_deref()
        ),
        (Some("opus"), Some(3), Some("plan"))
    );
    assert_eq!(a.append_system_prompt.as_deref(), Some("be strict"));
    let b = &wf.step("b").unwrap().agent;
    assert_eq!(
        (b.model.as_deref(), b.max_turns),
        (Some("opus"), Some(9)),
        "inline over role profile"
    );
    assert_eq!(b.allowed_tools, ["Grep"]);
    let c = &wf.step("c").unwrap().agent;
    assert_eq!((c.model.as_deref(), c.max_turns), (Some("sonnet"), Some(3)));
}

#[test]
fn step_settings_override_defaults_field_by_field() {
    let wf = ok(json!({
        "defaults": {"env": {"A": "1", "B": "1"}, "timeout_s": 60, "stall_timeout_s": 30, "on_stall": "restart",
                     "retry": {"max_attempts": 5, "jitter": false}},
        "steps": [
            {"id": "a", "run": ["true"], "env": {"B": "2", "C": "3"}, "timeout_s": 10,
             "retry": {"initial_interval_ms": 10}},
            {"id": "b", "run": ["true"], "on_stall": "report", "stall_timeout_s": 5}
        ]
    }));
    let a = wf.step("a").unwrap();
    assert_eq!(
        a.env,
        BTreeMap::from([
            ("A".into(), "1".into()),
            ("B".into(), "2".into()),
            ("C".into(), "3".into())
        ])
    );
    assert_eq!(
        (a.timeout_s, a.stall_timeout_s, a.on_stall),
        (Some(10), 30, OnStall::Restart)
    );
    let expected = RetryPolicy {
        max_attempts: 5,
        jitter: false,
        initial_interval_ms: 10,
        ..RetryPolicy::default()
    };
    assert_eq!(a.retry, expected);
    let b = wf.step("b").unwrap();
    assert_eq!(
        (b.timeout_s, b.stall_timeout_s, b.on_stall),
        (Some(60), 5, OnStall::Report)
    );
}

#[test]
fn cwd_resolves_lexically_against_the_submission_directory() {
    let def = json!({
        "defaults": {"cwd": "repo/./sub/.."},
        "steps": [
            {"id": "inherit", "run": ["true"]},
            {"id": "relative", "run": ["true"], "cwd": "../other"},
            {"id": "absolute", "run": ["true"], "cwd": "/abs/x/../y"}
        ]
    });
    let wf = compile_at(def, &[], "/home/u/proj").unwrap();
    assert_eq!(
        wf.step("inherit").unwrap().cwd,
        PathBuf::from("/home/u/proj/repo")
    );
    assert_eq!(
        wf.step("relative").unwrap().cwd,
        PathBuf::from("/home/u/other")
    );
    assert_eq!(wf.step("absolute").unwrap().cwd, PathBuf::from("/abs/y"));
    let wf = compile_at(json!({"shell": "true"}), &[], "/home/u/proj/.").unwrap();
    assert_eq!(wf.steps[0].cwd, PathBuf::from("/home/u/proj"));
    let ps = problems(json!([{"id": "t", "run": ["x"], "cwd": "~/src"}]));
    assert_problem(&ps, Some("t"), "cwd", "`~` is not expanded");
    let ps = compile_at(json!({"shell": "true"}), &[], "rel").unwrap_err();
    assert_problem(&ps, None, "cwd", "not absolute");
}

#[test]
fn inputs_fill_defaults_and_require_the_rest() {
    let def = json!({
        "inputs": {"env": "staging", "ticket": {"description": "id"}, "who": {"default": "me"}},
        "steps": [{"id": "a", "prompt": "{inputs.env} {inputs.ticket} {inputs.who} {inputs.extra}"}]
    });
    let wf = compile_at(
        def.clone(),
        &[("ticket", "T-1"), ("who", "you"), ("extra", "e")],
        "/b",
    )
    .unwrap();
    let expect = [
        ("env", "staging"),
        ("extra", "e"),
        ("ticket", "T-1"),
        ("who", "you"),
    ];
    assert_eq!(
        wf.inputs,
        expect
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    );
    let ps = compile_at(def, &[], "/b").unwrap_err();
    assert_problem(&ps, None, "inputs.ticket", "required");
    assert_problem(&ps, Some("a"), "prompt", "unknown input \"extra\"");
}

#[test]
fn references_must_name_upstream_steps_and_declared_inputs() {
    let ps = problems(json!({"inputs": {"ticket": "x"}, "steps": [
        {"id": "plan", "prompt": "p"},
        {"id": "side", "prompt": "s"},
        {"id": "build", "deps": ["plan"], "task": "{plan.output} {side.output} {nope.status} {build.session_id} {inputs.tiket}"},
        {"id": "deploy", "deps": ["build"], "run": ["echo", "{plan.output}", "{side.status}"]}
    ]}));
    assert_problem(
        &ps,
        Some("build"),
        "task",
        "{side.output} refers to step \"side\", which is not upstream of this step; add \"side\" to deps",
    );
    assert_problem(&ps, Some("build"), "task", "unknown step \"nope\"");
    assert_problem(&ps, Some("build"), "task", "refers to this step itself");
    assert_problem(
        &ps,
        Some("build"),
        "task",
        "unknown input \"tiket\" (did you mean \"ticket\"?)",
    );
    assert_problem(&ps, Some("deploy"), "run[2]", "add \"side\" to deps");
    assert!(
        !ps.iter().any(|p| p.message.contains("{plan.output}")),
        "transitive ancestors are fine:\n{ps}"
    );
    assert_eq!(ps.len(), 5, "{ps}");
}

#[test]
fn graph_defects_are_each_reported() {
    let ps = problems(json!({"steps": [
        {"id": "build", "prompt": "b"},
        {"id": "build", "prompt": "dup"},
        {"id": "test", "prompt": "t", "deps": ["buld"]},
        {"id": "bad id!", "prompt": "x"},
        {"id": "inputs", "prompt": "x"},
        {"id": "me", "prompt": "x", "deps": ["me"]},
        {"id": "a", "prompt": "x", "dependsOn": ["b"]},
        {"id": "b", "prompt": "x", "depends_on": "a"}
    ]}));
    assert_problem(
        &ps,
        Some("test"),
        "deps",
        "unknown step \"buld\" (did you mean \"build\"?)",
    );
    assert_problem(
        &ps,
        Some("build"),
        "id",
        "duplicate step id \"build\" (steps 1 and 2",
    );
    assert_problem(&ps, Some("bad id!"), "id", "only letters, digits");
    assert_problem(&ps, Some("inputs"), "id", "reserved");
    assert_problem(&ps, Some("me"), "deps", "cannot depend on itself");
    assert_problem(&ps, Some("a"), "deps", "dependency cycle: a -> b -> a");
    assert_eq!(ps.len(), 6, "{ps}");
}

#[test]
fn missing_or_empty_steps_are_a_problem() {
    for def in [
        json!({}),
        json!({"steps": []}),
        json!([]),
        json!({"name": "x", "steps": null}),
    ] {
        assert_problem(&problems(def), None, "steps", "no steps");
    }
    assert_problem(&problems(json!(42)), None, "definition", "got 42");
    assert_problem(
        &problems(json!({"steps": "x"})),
        None,
        "steps",
        "expected an array of steps",
    );
}

#[test]
fn a_step_has_exactly_one_non_empty_action() {
    let ps = problems(json!({"steps": [
        {"id": "none"},
        {"id": "two", "prompt": "x", "run": ["y"]},
        {"id": "three", "task": "x", "prompt": "y", "shell": "z"},
        {"id": "p", "prompt": "  "},
        {"id": "r", "run": []},
        {"id": "r0", "run": ["", "x"]},
        {"id": "s", "shell": ""},
        {"id": "str", "run": "cargo test"},
        {"id": "mixed", "run": ["a", 5]}
    ]}));
    assert_problem(&ps, Some("none"), "prompt", "needs one of prompt");
    assert_problem(&ps, Some("two"), "run", "has \"prompt\" and \"run\"");
    assert_problem(
        &ps,
        Some("three"),
        "task",
        "has \"prompt\" and \"task\", \"shell\"",
    );
    assert_problem(&ps, Some("p"), "prompt", "empty");
    assert_problem(&ps, Some("r"), "run", "empty");
    assert_problem(&ps, Some("r0"), "run[0]", "program name is empty");
    assert_problem(&ps, Some("s"), "shell", "empty");
    assert_problem(
        &ps,
        Some("str"),
        "run",
        "expected an array of strings (program, then arguments), got \"cargo test\"",
    );
    assert_problem(&ps, Some("mixed"), "run", "got [\"a\",5]");
    assert_eq!(
        ps.len(),
        9,
        "a wrongly typed action is not also reported as missing:\n{ps}"
    );
}

#[test]
fn template_syntax_errors_name_the_field_they_are_in() {
    let ps = problems(json!([
        {"id": "a", "task": "use {foo} here"},
        {"id": "b", "run": ["echo", "{a.cost}"], "deps": ["a"]},
        {"id": "c", "shell": "echo {a.output", "deps": ["a"]},
        {"id": "d", "prompt": "Return {\"ok\": true} for {{literal}}"}
    ]));
    assert_problem(&ps, Some("a"), "task", "write {{ for a literal {");
    assert_problem(&ps, Some("b"), "run[1]", "no field \"cost\"");
    assert_problem(&ps, Some("c"), "shell", "unterminated");
    assert_eq!(ps.len(), 3, "JSON text and escapes are fine:\n{ps}");
}

#[test]
fn shell_references_inside_single_quotes_are_rejected() {
    let ps = problems(json!([
        {"id": "a", "prompt": "x"},
        {"id": "b", "deps": ["a"], "shell": "echo '{a.output}'"},
        {"id": "c", "deps": ["a"], "shell": "echo \"got: \"{a.output}"},
        {"id": "d", "deps": ["a"], "shell": "echo \"got: {a.output}\""}
    ]));
    assert_problem(&ps, Some("b"), "shell", "inside '…' quotes");
    assert_eq!(ps.len(), 1, "{ps}");
}

#[test]
fn numeric_and_policy_limits_are_checked() {
    let ps = problems(json!({
        "defaults": {"timeout_s": 0, "retry": {"backoff_factor": 0.5}},
        "steps": [{"id": "a", "run": ["x"], "timeout_s": -5, "stall_timeout_s": 0,
                   "retry": {"max_attempts": 0}, "success": {"regex": "("}}]
    }));
    assert_problem(&ps, None, "defaults.timeout_s", "at least 1");
    assert_problem(&ps, None, "defaults.retry.backoff_factor", ">= 1");
    assert_problem(
        &ps,
        Some("a"),
        "timeout_s",
        "expected a whole number of seconds, got -5",
    );
    assert_problem(&ps, Some("a"), "stall_timeout_s", "at least 1");
    assert_problem(&ps, Some("a"), "retry.max_attempts", "at least 1");
    assert_problem(&ps, Some("a"), "success.regex", "invalid regex");
    assert_eq!(ps.len(), 6, "{ps}");
}

#[test]
fn wrong_json_types_name_the_field() {
    let ps = problems(json!({"steps": [
        {"id": "a", "prompt": "x", "deps": 5},
        {"id": "b", "prompt": 7, "env": {"K": 1}, "on_stall": "explode", "retry": {"jitter": "yes"},
         "success": {"contains": [1], "exit_codes": "0"}, "agent": 3}
    ]}));
    assert_problem(
        &ps,
        Some("a"),
        "deps",
        "expected a step id or an array of step ids, got 5",
    );
    assert_problem(&ps, Some("b"), "prompt", "expected a string, got 7");
    assert_problem(&ps, Some("b"), "env", "expected an object of string values");
    assert_problem(&ps, Some("b"), "on_stall", "\"report\" or \"restart\"");
    assert_problem(&ps, Some("b"), "retry.jitter", "true or false");
    assert_problem(&ps, Some("b"), "success.contains", "got [1]");
    assert_problem(&ps, Some("b"), "success.exit_codes", "an array of integers");
    assert_problem(&ps, Some("b"), "agent", "a profile name or an object");
}

#[test]
fn unknown_fields_are_rejected_with_the_closest_known_name() {
    let ps = problems(json!({
        "nmae": "x",
        "defaults": {"retries": {}},
        "agents": {"p": {"modle": "opus"}},
        "steps": [{"id": "a", "promt": "x", "prompt": "y", "retry": {"max_attempt": 2}, "dep": ["z"]}]
    }));
    assert_problem(
        &ps,
        None,
        "nmae",
        "unknown field \"nmae\" (did you mean \"name\"?)",
    );
    assert_problem(&ps, None, "defaults.retries", "did you mean \"retry\"");
    assert_problem(&ps, None, "agents.p.modle", "did you mean \"model\"");
    assert_problem(&ps, Some("a"), "promt", "did you mean \"prompt\"");
    assert_problem(
        &ps,
        Some("a"),
        "retry.max_attempt",
        "did you mean \"max_attempts\"",
    );
    assert_problem(&ps, Some("a"), "dep", "did you mean \"deps\"");
}

#[test]
fn synonyms_are_accepted_but_not_twice() {
    let wf = ok(
        json!([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "dependsOn": "a"},
                       {"id": "c", "prompt": "z", "depends_on": ["a", "b", "a"]}]),
    );
    assert_eq!(wf.step("b").unwrap().deps, ["a"]);
    assert_eq!(
        wf.step("c").unwrap().deps,
        ["a", "b"],
        "repeated deps are dropped"
    );
    let ps = problems(
        json!([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "deps": ["a"], "dependsOn": ["a"]}]),
    );
    assert_problem(
        &ps,
        Some("b"),
        "dependsOn",
        "both \"deps\" and \"dependsOn\"",
    );
}

#[test]
fn agent_profiles_must_exist_and_apply_only_to_prompt_steps() {
    let ps = problems(json!({
        "agents": {"reviewer": {}},
        "defaults": {"agent": "nobody"},
        "steps": [{"id": "a", "prompt": "x", "agent": "reviewr"},
                  {"id": "b", "run": ["x"], "agent": {"model": "opus"}}]
    }));
    assert_problem(
        &ps,
        Some("a"),
        "agent",
        "unknown agent profile \"reviewr\" (did you mean \"reviewer\"?)",
    );
    assert_problem(
        &ps,
        None,
        "defaults.agent",
        "unknown agent profile \"nobody\"",
    );
    assert_problem(&ps, Some("b"), "agent", "only to prompt steps");
}

#[test]
fn every_problem_is_reported_at_once() {
    let ps = problems(json!({"steps": [
        {"id": "a", "prompt": "{b.output}", "deps": ["c"], "retry": {"max_attempts": 0}},
        {"id": "a", "shell": ""},
        {"run": "x", "bogus": 1}
    ]}));
    assert!(ps.len() >= 6, "{ps}");
    assert_eq!(ps.to_string().lines().count(), ps.len());
}

#[test]
fn nul_bytes_are_rejected_in_every_field_that_reaches_a_process() {
    let ps = problems(json!({
        "inputs": {"i": "a\u{0}b"},
        "steps": [
            {"id": "s", "shell": "echo a\u{0}b"},
            {"id": "r", "run": ["echo", "a\u{0}b"]},
            {"id": "p", "prompt": "a\u{0}b"},
            {"id": "c", "run": ["true"], "cwd": "/tmp/a\u{0}b"},
            {"id": "e", "run": ["true"], "env": {"K": "a\u{0}b", "A\u{0}B": "v"}},
            {"id": "n\u{0}", "run": ["true"]}
        ]
    }));
    assert_problem(&ps, Some("s"), "shell", "NUL byte");
    assert_problem(&ps, Some("r"), "run[1]", "NUL byte");
    assert_problem(&ps, Some("p"), "prompt", "NUL byte");
    assert_problem(&ps, Some("c"), "cwd", "NUL byte");
    assert_problem(&ps, Some("e"), "env.K", "NUL byte");
    assert_problem(&ps, Some("e"), "env.A\u{0}B", "not a valid variable name");
    assert_problem(&ps, Some("n\u{0}"), "id", "NUL byte");
    assert_problem(&ps, None, "inputs.i", "NUL byte");
}

#[test]
fn step_ids_longer_than_the_limit_are_rejected_before_anything_runs() {
    let long = "x".repeat(1_000_000);
    let ps = problems(json!([{"id": long, "run": ["true"]}, {"id": "ok", "run": ["true"]}]));
    let shown = format!("{}…", "x".repeat(32));
    assert_problem(
        &ps,
        Some(&shown),
        "id",
        "1000000 characters long; at most 128",
    );
    assert!(
        ps.to_string().len() < 10_000,
        "the message quotes the whole id"
    );
    ok(json!([{"id": "x".repeat(128), "run": ["true"]}]));
}

#[test]
fn durations_are_bounded_so_time_arithmetic_cannot_overflow() {
    let ps = problems(json!({
        "defaults": {"timeout_s": 18446744073709551615u64,
                     "retry": {"max_interval_ms": 18446744073709551615u64}},
        "steps": [{"id": "a", "run": ["x"], "stall_timeout_s": 18446744073709551615u64,
                   "timeout_s": 2592001,
                   "retry": {"initial_interval_ms": 2592000001u64}}]
    }));
    assert_problem(
        &ps,
        None,
        "defaults.timeout_s",
        "limit of 2592000 s (30 days)",
    );
    assert_problem(&ps, None, "defaults.retry.max_interval_ms", "(30 days)");
    assert_problem(&ps, Some("a"), "stall_timeout_s", "(30 days)");
    assert_problem(&ps, Some("a"), "timeout_s", "2592001 s is more than");
    assert_problem(&ps, Some("a"), "retry.initial_interval_ms", "(30 days)");
    assert_eq!(ps.len(), 5, "{ps}");
    ok(
        json!([{"id": "a", "run": ["x"], "timeout_s": 2592000, "stall_timeout_s": 2592000,
               "retry": {"initial_interval_ms": 2592000000u64, "max_interval_ms": 2592000000u64}}]),
    );
}

/// Validation is near-linear in the number of steps. Not a timing assertion: with an
/// ancestor set per step (the old approach) these took minutes in a debug build, so a
/// regression shows as a suite that hangs here.
#[test]
fn ten_thousand_step_chain_and_fan_in_compile() {
    const N: usize = 10_000;
    let mut chain = vec![json!({"id": "s0", "run": ["true"]})];
    for i in 1..N {
        chain.push(
            json!({"id": format!("s{i}"), "deps": [format!("s{}", i - 1)],
                          "run": ["echo", format!("{{s{}.output}}", i - 1)]}),
        );
    }
    chain.push(json!({"id": "last", "deps": [format!("s{}", N - 1)],
                      "prompt": "first was {s0.output}, latest {s9999.status}"}));
    assert_eq!(ok(json!(chain)).steps.len(), N + 1);

    let mut fan: Vec<Value> = (0..N)
        .map(|i| json!({"id": format!("f{i}"), "run": ["true"]}))
        .collect();
    let deps: Vec<String> = (0..N).map(|i| format!("f{i}")).collect();
    let prompt: String = (0..N).map(|i| format!("{{f{i}.output}} ")).collect();
    fan.push(json!({"id": "join", "deps": deps, "prompt": prompt}));
    assert_eq!(ok(json!(fan)).steps.len(), N + 1);

    // The reference checks still hold at that size.
    let mut bad = chain.clone();
    bad[0] = json!({"id": "s0", "run": ["echo", "{last.output}"]});
    let ps = problems(json!(bad));
    assert_problem(&ps, Some("s0"), "run[1]", "not upstream of this step");
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
