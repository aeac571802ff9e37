//! Control flow end to end: `when` conditions, skips and joins, on-failure handlers and
//! `continue_on_error`, through the real server and real processes.

use serde_json::json;

use crate::util::*;

#[test]
fn if_else_runs_one_branch_and_the_join_reads_it_with_the_skip_recorded() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let r = s.call(
        "invoke_async",
        json!({"inputs": {"env": "prod"}, "workflow": {
            "inputs": {"env": {"default": "dev"}},
            "steps": [
                {"id": "check", "run": ["echo", "{inputs.env}"]},
                {"id": "prod", "deps": ["check"], "when": "steps.check.output == 'prod'",
                 "run": ["echo", "to production"]},
                {"id": "dev", "deps": ["check"], "when": "steps.check.output != 'prod'",
                 "run": ["echo", "to dev"]},
                {"id": "done", "deps": ["prod", "dev"],
                 "shell": "printf '%s|%s' {prod.output} {dev.output}"},
            ]
        }}),
    );
    let id = r["thread_id"].as_str().unwrap().to_owned();
    let (events, last) = s.stream_pages(&id, 0, 0.0);
    assert_eq!(last["status"], "completed");
    let st = s.status(&id);
    assert_eq!(step(&st, "prod")["status"], "completed");
    assert_eq!(step(&st, "dev")["status"], "skipped");
    assert_eq!(step(&st, "done")["output"], "to production|");
    assert_eq!(st["progress"]["done"], 4);
    let skip = events
        .iter()
        .find(|e| e["type"] == "step_skipped")
        .expect("a step_skipped event");
    assert_eq!(skip["step_id"], "dev");
    assert_eq!(skip["data"]["condition"], "steps.check.output != 'prod'");
    assert_eq!(skip["data"]["values"]["steps"]["check"]["output"], "prod");
}

#[test]
fn an_on_failure_handler_runs_after_a_failure_and_the_workflow_still_fails() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "build", "shell": "echo broken >&2; exit 3", "retry": {"max_attempts": 1}},
        {"id": "ship", "deps": ["build"], "run": ["echo", "shipped"]},
        {"id": "alert", "deps": ["ship"], "when": "failure()", "run": ["echo", "alerted"]},
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "failed");
    let st = s.status(&id);
    assert_eq!(step(&st, "build")["status"], "failed");
    assert_eq!(step(&st, "ship")["status"], "pending", "never started");
    assert_eq!(step(&st, "alert")["status"], "completed");
    assert_eq!(step(&st, "alert")["output"], "alerted");
}

#[test]
fn continue_on_error_fails_the_step_but_completes_the_workflow() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "lint", "run": ["false"], "retry": {"max_attempts": 1}, "continue_on_error": true},
        {"id": "build", "deps": ["lint"],
         "when": "steps.lint.status == 'failed'", "run": ["echo", "built anyway"]},
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    assert_eq!(step(&st, "lint")["status"], "failed");
    assert_eq!(step(&st, "build")["output"], "built anyway");
}

#[test]
fn a_condition_reading_a_step_that_is_not_an_ancestor_is_rejected_before_anything_runs() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let err = s.call_err(
        "invoke_async",
        json!({"workflow": {"steps": [
            {"id": "a", "shell": "touch ran"},
            {"id": "b", "when": "steps.a.status == 'completed'", "run": ["true"]},
            {"id": "c", "when": "steps.", "run": ["true"]},
        ]}}),
    );
    assert!(
        err.contains("b") && err.contains("when") && err.contains("not upstream"),
        "{err}"
    );
    assert!(err.contains("invalid CEL"), "{err}");
    assert!(!sb.path("ran").exists());
}

on_both_backends! {
    fn a_decided_skip_survives_kill_9_and_the_join_completes_after_adoption(sb: Sandbox) {
        let env = [("BATON_LEASE_MS", "1500")];
        let mut s = sb.server_with(&env, Protocol::V2025);
        let id = s.start(json!({"steps": [
            {"id": "a", "run": ["echo", "yes"]},
            {"id": "not_taken", "deps": ["a"], "when": "steps.a.output == 'no'",
             "shell": "echo x >> not_taken.txt"},
            {"id": "taken", "deps": ["a"], "when": "steps.a.output == 'yes'",
             "shell": "echo x >> taken.txt; echo $$ > taken.pid; while [ ! -f go ]; do sleep 0.05; done; echo T"},
            {"id": "join", "deps": ["not_taken", "taken"],
             "shell": "printf '[%s][%s]' {not_taken.output} {taken.output}"},
        ]}));
        let pid = sb.pid_in("taken.pid");
        s.kill9();
        eventually("the step to die with its server", || !alive(pid));
        sb.write("go", "");
        let mut s2 = sb.server_with(&env, Protocol::V2025);
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        let st = s2.status(&id);
        assert_eq!(step(&st, "not_taken")["status"], "skipped");
        assert_eq!(step(&st, "not_taken")["attempts"], 0);
        assert_eq!(step(&st, "join")["output"], "[][T]");
        assert!(!sb.path("not_taken.txt").exists());
        assert_eq!(sb.lines("taken.txt"), 2, "re-run once after the crash");
        let (events, _) = s2.stream_pages(&id, 0, 0.0);
        let skips = events
            .iter()
            .filter(|e| e["type"] == "step_skipped")
            .count();
        assert_eq!(skips, 1, "the condition was decided once");
    }
}
