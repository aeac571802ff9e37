//! Claude Studio definitions with `conditional`, `loop` and `parallel` steps run unchanged,
//! end to end, against the fake Claude Code CLI.

use serde_json::json;

use crate::util::*;

#[test]
fn a_studio_workflow_with_conditional_loop_and_parallel_steps_runs_unchanged() {
    let sb = Sandbox::new();
    let log = sb.path("invocations.jsonl");
    let mut s = fake_agent_server(&sb);
    let studio = json!({
        "name": "studio-flow", "description": "as Studio saves it", "version": "1.0.0",
        "workflow": [
            {"id": "tests", "type": "task", "role": "developer", "task": "Run tests [[say:ALL PASS]]"},
            {"id": "gate", "type": "conditional", "task": "Quality gate", "deps": ["tests"],
             "condition": {"version": "2.0", "rootGroup": {"id": "g", "combinator": "AND", "rules": [
                 {"id": "r", "leftValue": {"stepId": "tests", "field": "output"}, "operation": "contains",
                  "rightValue": {"type": "string", "value": "PASS"}, "dataType": "string"}]}},
             "trueBranch": "ship", "falseBranch": "report"},
            {"id": "ship", "type": "task", "role": "developer", "task": "Ship after {tests.output} [[say:shipped]]"},
            {"id": "report", "type": "task", "role": "developer", "task": "Report the failure [[say:reported]]"},
            {"id": "review", "type": "loop", "task": "Review each file", "deps": ["ship"],
             "items": ["a.rs", "b.rs", "c.rs"], "loopVar": "file", "maxIterations": 2,
             "loopSteps": ["review-file"]},
            {"id": "review-file", "type": "task", "role": "reviewer", "task": "Review {file} [[say:reviewed]]"},
            {"id": "checks", "type": "parallel", "task": "Checks", "deps": ["review"],
             "parallelSteps": ["lint", "audit"]},
            {"id": "lint", "type": "task", "role": "developer", "task": "Lint [[say:lint ok]]"},
            {"id": "audit", "type": "task", "role": "developer", "task": "Audit [[say:audit ok]]"},
            {"id": "legacy", "type": "conditional", "task": "Legacy check", "deps": ["checks"],
             "condition": "{lint.output} === \"lint ok\"", "trueBranch": "done"},
            {"id": "done", "type": "task", "role": "developer", "task": "Done [[say:done]]"}
        ],
        "metadata": {"createdBy": "studio"}
    });
    let id = s.start(studio);
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    assert_eq!(step(&st, "gate")["output"], "true");
    assert_eq!(step(&st, "ship")["output"], "shipped");
    assert_eq!(
        step(&st, "report")["status"],
        "skipped",
        "the branch not taken"
    );
    assert_eq!(step(&st, "review-file[0]")["status"], "completed");
    assert_eq!(step(&st, "review-file[1]")["status"], "completed");
    assert!(
        st["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != "review-file[2]"),
        "maxIterations caps the items"
    );
    assert_eq!(step(&st, "review")["status"], "completed");
    assert_eq!(step(&st, "checks")["status"], "completed");
    assert_eq!(step(&st, "legacy")["output"], "true");
    assert_eq!(step(&st, "done")["output"], "done");
    let prompts = std::fs::read_to_string(&log).unwrap();
    assert!(
        prompts.contains("Review a.rs") && prompts.contains("Review b.rs"),
        "{prompts}"
    );
    assert!(prompts.contains("Ship after ALL PASS"), "{prompts}");
    assert!(!prompts.contains("Report the failure"));
}

#[test]
fn a_studio_conditional_takes_its_false_branch_and_skips_what_follows_the_true_one() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!([
        {"id": "check", "run": ["echo", "nope"]},
        {"id": "gate", "type": "conditional", "task": "x", "deps": ["check"],
         "condition": "{check.output} == \"yes\"", "trueBranch": "deploy", "falseBranch": "alert"},
        {"id": "deploy", "run": ["echo", "deployed"]},
        {"id": "after-deploy", "deps": ["deploy"], "run": ["echo", "after"]},
        {"id": "alert", "run": ["echo", "alerted"]}
    ]));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    assert_eq!(step(&st, "gate")["output"], "false");
    assert_eq!(step(&st, "deploy")["status"], "skipped");
    assert_eq!(step(&st, "after-deploy")["status"], "skipped");
    assert_eq!(step(&st, "alert")["output"], "alerted");
}

#[test]
fn studio_fields_on_the_wrong_step_type_are_rejected_naming_them() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let err = s.call_err(
        "invoke_async",
        json!({"workflow": [
            {"id": "a", "run": ["true"], "trueBranch": "b"},
            {"id": "b", "type": "conditional", "task": "x", "condition": {"version": "2.0", "rootGroup": {"rules": [
                {"leftValue": {"stepId": "a"}, "operation": "isAfter", "dataType": "dateTime"}]}},
             "trueBranch": "missing"}
        ]}),
    );
    assert!(
        err.contains("trueBranch belongs to Claude Studio steps"),
        "{err}"
    );
    assert!(err.contains("not supported"), "{err}");
    assert!(err.contains("unknown step \"missing\""), "{err}");
}
