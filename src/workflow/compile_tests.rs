//! End-to-end tests of [`compile`]: definitions in, resolved workflows or problems out.
//!
//! Invariant under test: every class of defect is reported as its own problem naming step
//! and field, all of them at once, and every valid shape (baton's or Claude Studio's)
//! resolves to the same fully defaulted workflow.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::workflow::*;

pub(super) fn compile_at(
    definition: Value,
    inputs: &[(&str, &str)],
    base: &str,
) -> Result<Workflow> {
    let inputs = inputs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    compile(&definition, &inputs, Path::new(base))
}

pub(super) fn ok(definition: Value) -> Workflow {
    compile_at(definition, &[], "/base").unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
}

pub(super) fn problems(definition: Value) -> Problems {
    compile_at(definition, &[], "/base").expect_err("expected problems")
}

/// Asserts that a problem for `step`/`field` whose message contains `needle` is present.
#[track_caller]
pub(super) fn assert_problem(ps: &Problems, step: Option<&str>, field: &str, needle: &str) {
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
