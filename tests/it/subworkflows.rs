//! Sub-workflow steps end to end: a child workflow `PARENT/STEP` started and awaited by its
//! step, through the real server, real processes and a real `kill -9`.

use serde_json::{Value, json};

use crate::util::*;

/// build -> deploy (a child: prepare -> push, push waits for `go`) -> announce.
fn parent(wait: bool) -> Value {
    let push = if wait {
        "echo p >> push.txt; if [ ! -f go ]; then echo $$ > push.pid; while [ ! -f go ]; do sleep 0.05; done; fi; echo pushed-{inputs.version}"
    } else {
        "echo p >> push.txt; echo pushed-{inputs.version}"
    };
    json!({"steps": [
        {"id": "build", "run": ["echo", "v7"]},
        {"id": "deploy", "deps": ["build"], "workflow": {
            "definition": {
                "inputs": {"version": {}},
                "steps": [
                    {"id": "prepare", "shell": "echo x >> prepare.txt; echo ready"},
                    {"id": "push", "deps": ["prepare"], "shell": push}
                ]
            },
            "inputs": {"version": "{build.output}"}
        }},
        {"id": "announce", "deps": ["deploy"], "run": ["echo", "announced {deploy.output}"]}
    ]})
}

#[test]
fn a_sub_workflow_runs_as_its_own_workflow_and_its_last_output_is_the_step_output() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(parent(false));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    assert_eq!(step(&st, "deploy")["output"], "pushed-v7");
    assert_eq!(step(&st, "announce")["output"], "announced pushed-v7");
    let child = s.status(&format!("{id}/deploy"));
    assert_eq!(child["status"], "completed");
    assert_eq!(child["inputs"]["version"], "v7");
    assert_eq!(step(&child, "push")["output"], "pushed-v7");
}

#[test]
fn a_sub_workflow_file_is_found_relative_to_the_step_cwd() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path("flows")).unwrap();
    sb.write(
        "flows/child.json",
        r#"{"inputs": {"who": {}}, "steps": [{"id": "hi", "run": ["echo", "hello {inputs.who}"]}]}"#,
    );
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "greet", "cwd": "flows", "workflow": {"file": "child.json", "inputs": {"who": "world"}}}
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    assert_eq!(step(&s.status(&id), "greet")["output"], "hello world");
}

#[test]
fn a_failed_child_fails_its_step_and_a_resume_of_the_parent_resumes_the_child() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "deploy", "workflow": {"definition": {"steps": [
            {"id": "one", "shell": "echo x >> one.txt; echo one"},
            {"id": "two", "deps": ["one"], "retry": {"max_attempts": 1},
             "shell": "echo x >> two.txt; [ -f fixed ] && echo two"}
        ]}}},
        {"id": "after", "deps": ["deploy"], "run": ["echo", "{deploy.output}"]}
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "failed");
    let st = s.status(&id);
    let err = step(&st, "deploy")["error"].as_str().unwrap().to_owned();
    assert!(
        err.contains(&format!("{id}/deploy")) && err.contains("failed"),
        "{err}"
    );
    assert_eq!(s.status(&format!("{id}/deploy"))["status"], "failed");
    sb.write("fixed", "");
    s.call("invoke_resume", json!({"thread_id": id}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    assert_eq!(step(&s.status(&id), "after")["output"], "two");
    assert_eq!(
        (sb.lines("one.txt"), sb.lines("two.txt")),
        (1, 2),
        "only the failed step re-ran"
    );
}

#[test]
fn kill_while_a_child_runs_resumes_both_without_rerunning_completed_steps() {
    let sb = Sandbox::new();
    let env = [("BATON_LEASE_MS", "1500")];
    let mut s = sb.server_with(&env, Protocol::V2025);
    let id = s.start(parent(true));
    let push = sb.pid_in("push.pid");
    s.kill9();
    eventually("the child's step to die with its server", || !alive(push));
    sb.write("go", "");
    let mut s2 = sb.server_with(&env, Protocol::V2025);
    assert_eq!(s2.wait_done(&id)["status"], "completed");
    assert_eq!(
        step(&s2.status(&id), "announce")["output"],
        "announced pushed-v7"
    );
    let child = s2.status(&format!("{id}/deploy"));
    assert_eq!(outcomes(&child, "prepare"), ["succeeded"]);
    assert_eq!(outcomes(&child, "push"), ["crashed", "succeeded"]);
    assert_eq!((sb.lines("prepare.txt"), sb.lines("push.txt")), (1, 2));
}

#[test]
fn cancelling_the_parent_cancels_its_child() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(parent(true));
    sb.pid_in("push.pid");
    s.call("invoke_cancel", json!({"thread_id": id}));
    assert_eq!(s.wait_done(&id)["status"], "cancelled");
    let child = format!("{id}/deploy");
    eventually("the child to be cancelled", || {
        s.status(&child)["status"] == "cancelled"
    });
}

#[test]
fn a_broken_inline_child_is_rejected_at_submission_naming_the_step() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let err = s.call_err(
        "invoke_async",
        json!({"workflow": {"steps": [
            {"id": "deploy", "workflow": {"definition": {"steps": [{"id": "x", "run": "nope"}]}}}
        ]}}),
    );
    assert!(
        err.contains("deploy") && err.contains("workflow.definition"),
        "{err}"
    );
}
