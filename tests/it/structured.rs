//! Structured output end to end: `output: "json"` on commands, `output_schema` on agent steps
//! (the fake agent answers as Claude Code does with `--json-schema`), `steps.ID.json` and
//! `steps.ID.exit_code` in conditions, `{ID.json.PATH}` in templates.

use serde_json::{Value, json};

use crate::util::*;

fn invocations(sb: &Sandbox) -> Vec<Value> {
    std::fs::read_to_string(sb.path("invocations.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn json_output_is_read_by_conditions_and_templates_and_exit_codes_by_conditions() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "plan", "output": "json",
         "shell": "echo '{\"files\": [\"a.rs\", \"b c.rs\"], \"ok\": true, \"n\": 2, \"meta\": {\"by\": \"me\"}}'"},
        {"id": "use", "deps": ["plan"], "when": "steps.plan.json.ok && steps.plan.json.n == 2",
         "run": ["echo", "{plan.json.files.1}|{plan.json.meta}|{plan.json.missing}|{plan.json.n}"]},
        {"id": "skipped", "deps": ["plan"], "when": "size(steps.plan.json.files) > 5",
         "run": ["echo", "never"]},
        {"id": "lint", "shell": "exit 3", "success": {"exit_codes": [0, 3]}},
        {"id": "warn", "deps": ["lint"], "when": "steps.lint.exit_code == 3",
         "run": ["echo", "lint warned"]},
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    assert_eq!(
        step(&st, "use")["output"],
        "b c.rs|{\"by\":\"me\"}||2",
        "a string raw, anything else as JSON, a missing value as nothing"
    );
    assert_eq!(step(&st, "skipped")["status"], "skipped");
    assert_eq!(step(&st, "warn")["output"], "lint warned");
}

#[test]
fn a_command_whose_output_is_not_json_fails_and_is_retried() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "emit", "output": "json",
         "shell": "if [ -f once ]; then echo '{\"a\": 1}'; else touch once; echo 'not json'; fi",
         "retry": {"max_attempts": 2, "initial_interval_ms": 10, "jitter": false}},
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    let emit = step(&st, "emit");
    assert_eq!(emit["attempts"], 2);
    let first = &emit["attempt_history"][0];
    assert_eq!(first["outcome"], "failed");
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("output is not JSON"),
        "{first}"
    );
    assert_eq!(emit["output"], "{\"a\": 1}");
}

#[test]
fn an_agent_step_with_output_schema_gets_the_schema_and_its_structured_output_is_checked() {
    let sb = Sandbox::new();
    let mut s = fake_agent_server(&sb);
    let schema = json!({"type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string"}}}});
    let id = s.start(json!({"steps": [
        {"id": "list", "prompt": "List files [[json:{\"files\": [\"src/main.rs\"]}]]",
         "output_schema": schema},
        {"id": "show", "deps": ["list"], "run": ["echo", "{list.json.files.0}"]},
        {"id": "bad", "prompt": "List [[json:{\"files\": 3}]]", "output_schema": schema,
         "retry": {"max_attempts": 1}},
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "failed");
    let st = s.status(&id);
    assert_eq!(step(&st, "list")["output"], "{\"files\":[\"src/main.rs\"]}");
    assert_eq!(step(&st, "show")["output"], "src/main.rs");
    let bad = step(&st, "bad")["error"].as_str().unwrap().to_owned();
    assert!(
        bad.contains("does not match output_schema") && bad.contains("/files"),
        "{bad}"
    );
    let argv = invocations(&sb)[0]["argv"].clone();
    let argv: Vec<&str> = argv
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = argv
        .iter()
        .position(|a| *a == "--json-schema")
        .expect("--json-schema passed");
    let passed: Value = serde_json::from_str(argv[at + 1]).unwrap();
    assert_eq!(passed, schema);
}

#[test]
fn bad_structured_output_settings_are_rejected_naming_step_and_field() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let err = s.call_err(
        "invoke_async",
        json!({"workflow": {"steps": [
            {"id": "a", "run": ["true"], "output": "yaml"},
            {"id": "b", "prompt": "x", "output_schema": {"type": 12}},
            {"id": "c", "run": ["echo", "{a.json.x}"], "deps": ["a"]},
            {"id": "d", "run": ["echo", "{nope.json.x}"]},
        ]}}),
    );
    assert!(err.contains("a") && err.contains("output"), "{err}");
    assert!(
        err.contains("output_schema") && err.contains("not a valid JSON Schema"),
        "{err}"
    );
    assert!(err.contains("nope"), "{err}");
    assert!(
        !err.contains("step c"),
        "a json reference to an ancestor is fine: {err}"
    );
}
