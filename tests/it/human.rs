//! Human steps end to end: questions that block the workflow, answers through every
//! front-end (invoke_resume, tasks/update, `baton approve`), deadlines, and a `kill -9`
//! while a question waits.

use std::time::Duration;

use rmcp::model::{TaskPayload, TaskStatus, UpdateTaskParams};
use serde_json::{Value, json};

use crate::mcp_native::{connect, settle, start_task};
use crate::util::*;

/// a prints `main`; ship asks to merge it; deploy prints ship's answer.
fn gated(human: Value) -> Value {
    json!({"steps": [
        {"id": "a", "run": ["echo", "main"]},
        {"id": "ship", "deps": ["a"], "human": human},
        {"id": "deploy", "deps": ["ship"], "shell": "echo deployed {ship.output}"},
    ]})
}

fn waiting(st: &Value) -> &Value {
    &st["waiting_for"][0]
}

/// Waits until the workflow's status is `want` (a parked workflow's stream ends at
/// `blocked`; its deadline moves it on later).
fn wait_status(s: &mut Server, id: &str, want: &str) -> Value {
    eventually(&format!("{id} to be {want}"), || {
        s.status(id)["status"] == want
    });
    s.status(id)
}

fn answer(s: &mut Server, id: &str, args: Value) -> Value {
    let mut args = args;
    args["thread_id"] = json!(id);
    s.call("invoke_resume", args)
}

#[test]
fn an_approval_through_invoke_resume_completes_the_step_and_runs_its_dependents() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(gated(json!({"prompt": "Merge {a.output}?"})));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    let st = s.status(&id);
    assert_eq!(step(&st, "ship")["status"], "blocked");
    assert_eq!(step(&st, "ship")["attempts"], 0, "no process ran");
    assert_eq!(waiting(&st)["step"], "ship");
    assert_eq!(waiting(&st)["prompt"], "Merge main?");
    assert_eq!(waiting(&st)["kind"], "approval");
    assert!(
        st["error"].as_str().unwrap().contains("Merge main?"),
        "{st}"
    );
    assert_eq!(step(&st, "deploy")["status"], "pending");
    let err = s.call_err("invoke_resume", json!({"thread_id": id}));
    assert!(
        err.contains("waits for an answer to step \"ship\""),
        "{err}"
    );

    let r = answer(&mut s, &id, json!({"step": "ship", "approve": true}));
    assert_eq!(r["status"], "running", "{r}");
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    assert_eq!(step(&st, "ship")["output"], "approved");
    assert_eq!(step(&st, "deploy")["output"], "deployed approved");
    assert!(st.get("waiting_for").is_none(), "{st}");
    // A second answer finds nothing waiting and changes nothing.
    let err = s.call_err(
        "invoke_resume",
        json!({"thread_id": id, "step": "ship", "approve": false}),
    );
    assert!(err.contains("not waiting for an answer"), "{err}");
}

#[test]
fn a_denial_fails_the_step_for_good_and_the_workflow_with_it() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(gated(json!({"prompt": "Merge?"})));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    answer(
        &mut s,
        &id,
        json!({"step": "ship", "approve": false, "input": "tests are red"}),
    );
    assert_eq!(s.wait_done(&id)["status"], "failed");
    let st = s.status(&id);
    assert_eq!(step(&st, "ship")["status"], "failed");
    assert_eq!(step(&st, "ship")["error"], "denied: tests are red");
    assert_eq!(step(&st, "deploy")["status"], "pending");
}

#[test]
fn an_input_answer_becomes_the_output_and_a_bad_answer_changes_nothing() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(gated(json!({"prompt": "Which tag?", "kind": "input"})));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    let err = s.call_err(
        "invoke_resume",
        json!({"thread_id": id, "step": "ship", "approve": true}),
    );
    assert!(err.contains("asks for input"), "{err}");
    let err = s.call_err(
        "invoke_resume",
        json!({"thread_id": id, "step": "nope", "approve": true}),
    );
    assert!(err.contains("nope"), "{err}");
    assert_eq!(s.status(&id)["status"], "blocked", "nothing changed");
    answer(
        &mut s,
        &id,
        json!({"step": "ship", "input": "v1.2; rm -rf ~"}),
    );
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    assert_eq!(
        step(&st, "deploy")["output"],
        "deployed v1.2; rm -rf ~",
        "the answer is data in the shell, never code"
    );
}

#[test]
fn a_notification_records_its_message_and_continues_at_once() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(gated(
        json!({"prompt": "Shipping {a.output}", "kind": "notification"}),
    ));
    let (events, last) = s.stream_pages(&id, 0, 0.0);
    assert_eq!(last["status"], "completed");
    let st = s.status(&id);
    assert_eq!(step(&st, "ship")["output"], "Shipping main");
    let note = events
        .iter()
        .find(|e| e["type"] == "step_completed" && e["step_id"] == "ship")
        .unwrap();
    assert_eq!(note["data"]["message"], "Shipping main");
}

#[test]
fn a_human_step_without_a_prompt_is_rejected_naming_step_and_field() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let err = s.call_err(
        "invoke_async",
        json!({"workflow": {"steps": [{"id": "ship", "human": {"kind": "approval"}}]}}),
    );
    assert!(
        err.contains("ship") && err.contains("human.prompt"),
        "{err}"
    );
    let file = sb.write(
        "w.json",
        r#"{"steps": [{"id": "ship", "human": {"timeout_s": 10, "on_timout": "fail"}}]}"#,
    );
    let out = sb.cli(&["validate", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("human.prompt"), "{text}");
    assert!(text.contains("on_timout"), "unknown field named: {text}");
    let schema = String::from_utf8_lossy(&sb.cli(&["schema"]).stdout).to_string();
    assert!(schema.contains("on_timeout") && schema.contains("notification"));
}

#[test]
fn an_answer_while_another_branch_runs_is_applied_by_the_running_driver() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let go = sb.path("go");
    let id = s.start(json!({"steps": [
        {"id": "ship", "human": {"prompt": "Go?", "timeout_s": 600}},
        {"id": "slow", "shell": format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo slow done", go.display())},
        {"id": "after", "deps": ["ship"], "run": ["echo", "after {ship.output}"]},
    ]}));
    eventually("ship to wait", || {
        let st = s.status(&id);
        step(&st, "ship")["status"] == "blocked" && step(&st, "slow")["status"] == "running"
    });
    assert_eq!(s.status(&id)["status"], "running", "a branch still runs");
    answer(&mut s, &id, json!({"step": "ship", "approve": true}));
    eventually("after to run while slow still runs", || {
        step(&s.status(&id), "after")["status"] == "completed"
    });
    assert_eq!(step(&s.status(&id), "slow")["status"], "running");
    std::fs::write(&go, "").unwrap();
    assert_eq!(s.wait_done(&id)["status"], "completed");
}

#[test]
fn the_driver_wakes_at_the_deadline_and_applies_on_timeout() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let approve = s.start(gated(
        json!({"prompt": "ok?", "timeout_s": 1, "on_timeout": "approve"}),
    ));
    let fail = s.start(gated(json!({"prompt": "ok?", "timeout_s": 1})));
    let st = wait_status(&mut s, &approve, "completed");
    assert_eq!(step(&st, "deploy")["output"], "deployed approved");
    let st = wait_status(&mut s, &fail, "failed");
    assert!(
        step(&st, "ship")["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 1s"),
        "{st}"
    );
}

on_both_backends! {
    fn kill9_while_a_human_step_waits_keeps_the_question_and_its_deadline(sb: Sandbox) {
        let mut s1 = sb.server_with(&[("BATON_LEASE_MS", "1500")], Protocol::V2025);
        let id = s1.start(gated(
            json!({"prompt": "Merge {a.output}?", "timeout_s": 3600}),
        ));
        assert_eq!(s1.wait_done(&id)["status"], "blocked");
        let before = s1.status(&id);
        assert!(before["owner"].is_string(), "kept to watch the deadline");
        s1.kill9();
        let mut s2 = sb.server_with(&[("BATON_LEASE_MS", "1500")], Protocol::V2025);
        eventually("the new server to adopt it", || {
            let st = s2.status(&id);
            st["owner"].is_string() && st["owner"] != before["owner"]
        });
        let after = s2.status(&id);
        assert_eq!(after["status"], "blocked");
        assert_eq!(
            waiting(&after),
            waiting(&before),
            "same question, same deadline"
        );
        answer(&mut s2, &id, json!({"step": "ship", "approve": true}));
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        assert_eq!(
            step(&s2.status(&id), "deploy")["output"],
            "deployed approved"
        );
    }
}

#[test]
fn a_deadline_that_passed_while_no_process_ran_is_applied_at_adoption() {
    let sb = Sandbox::new();
    let mut s1 = sb.server_with(&[("BATON_LEASE_MS", "1500")], Protocol::V2025);
    let id = s1.start(gated(json!({"prompt": "Merge?", "timeout_s": 4})));
    eventually("ship to wait", || {
        step(&s1.status(&id), "ship")["status"] == "blocked"
    });
    s1.kill9();
    let st = sb.cli(&["status", &id]);
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(
        st["status"], "blocked",
        "nothing applied it while no process ran"
    );
    let deadline = waiting(&st)["deadline"].as_str().unwrap().to_owned();
    // Let the deadline pass with no baton process running.
    let due = jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.fZ", &deadline)
        .or_else(|_| deadline.parse::<jiff::Timestamp>())
        .unwrap();
    while jiff::Timestamp::now() <= due {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut s2 = sb.server();
    wait_status(&mut s2, &id, "failed");
    let (events, _) = s2.stream_pages(&id, 0, 0.0);
    let adopted = events
        .iter()
        .position(|e| e["type"] == "workflow_resumed" && e["data"]["by"] == "adoption")
        .expect("adopted");
    let timed_out = events
        .iter()
        .position(|e| e["type"] == "step_failed" && e["data"]["reason"] == "timed out")
        .expect("the timeout applied");
    assert!(adopted < timed_out, "{}", kinds(&events).join(" "));
}

#[test]
fn baton_approve_answers_from_the_terminal_and_follows_the_workflow() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(gated(json!({"prompt": "Which tag?", "kind": "input"})));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    let out = sb.cli(&["approve", &id, "ship", "--input", "v3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(s.wait_done(&id)["status"], "completed");
    assert_eq!(step(&s.status(&id), "deploy")["output"], "deployed v3");

    let id = s.start(gated(json!({"prompt": "Merge?"})));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    let out = sb.cli(&["approve", &id, "ship", "--deny"]);
    assert!(!out.status.success(), "a denied workflow fails");
    assert_eq!(step(&s.status(&id), "ship")["error"], "denied");
    let out = sb.cli(&["approve", &id, "ship"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not waiting"),
        "{err}"
    );
}

#[tokio::test]
async fn a_waiting_step_is_an_input_required_task_answered_by_tasks_update() {
    let sb = Sandbox::new();
    let (client, _rx) = connect(&sb, Protocol::V2026, true).await;
    let id = start_task(&client, gated(json!({"prompt": "Merge {a.output}?"}))).await;
    let got = settle(&client, &id).await;
    assert_eq!(got.status(), TaskStatus::InputRequired, "{got:?}");
    let TaskPayload::InputRequired { input_requests } = &got.payload else {
        panic!("expected input_required, got {got:?}");
    };
    let request = serde_json::to_value(&input_requests["step:ship"]).unwrap();
    assert!(
        request.to_string().contains("Merge main?"),
        "the question is asked: {request}"
    );
    let responses = [(
        "step:ship".to_owned(),
        json!({"action": "accept", "content": {"approve": true}}),
    )]
    .into_iter()
    .collect();
    client
        .update_task(UpdateTaskParams::new(id.clone(), responses))
        .await
        .unwrap();
    let done = settle(&client, &id).await;
    let TaskPayload::Completed { result } = &done.payload else {
        panic!("expected completed, got {done:?}");
    };
    assert_eq!(result["structuredContent"]["status"], "completed");
    assert_eq!(
        result["structuredContent"]["steps"][2]["output"],
        "deployed approved"
    );
    client.cancel().await.unwrap();
}

#[test]
fn the_http_approve_answers_the_waiting_step() {
    let sb = Sandbox::new();
    let (_server, h) = crate::http::serve_http(&sb, &[]);
    let id = h.start(gated(json!({"prompt": "Merge {a.output}?"})));
    eventually("ship to wait", || {
        h.get_json(&format!("/api/workflows/{id}"))["status"] == "blocked"
    });
    let view = h.get_json(&format!("/api/workflows/{id}"));
    assert_eq!(view["waiting_for"][0]["prompt"], "Merge main?");
    let path = format!("/api/workflows/{id}/approve");
    let (code, r) = h.send(
        "POST",
        &path,
        Some(json!({"step": "nope", "approve": true})),
    );
    assert_eq!(code, 400, "{r}");
    // Without `step`, the one waiting step is answered.
    let (code, r) = h.send("POST", &path, Some(json!({"approve": true})));
    assert_eq!(code, 200, "{r}");
    eventually("the workflow to complete", || {
        h.get_json(&format!("/api/workflows/{id}"))["status"] == "completed"
    });
    let view = h.get_json(&format!("/api/workflows/{id}"));
    assert_eq!(step(&view, "deploy")["output"], "deployed approved");
    let (code, r) = h.send(
        "POST",
        &path,
        Some(json!({"step": "ship", "approve": true})),
    );
    assert_eq!(code, 409, "nothing waits any more: {r}");
}

/// A host that declared elicitation and approves every question it is asked.
#[derive(Clone)]
struct Approver(tokio::sync::mpsc::UnboundedSender<String>);

impl rmcp::ClientHandler for Approver {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let caps: rmcp::model::ClientCapabilities =
            serde_json::from_value(json!({"elicitation": {"form": {}}})).unwrap();
        rmcp::model::ClientConfig::new(caps, rmcp::model::Implementation::new("baton-tests", "0"))
            .with_protocol_version(rmcp::model::ProtocolVersion::V_2025_11_25)
    }

    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        _: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        let asked = serde_json::to_value(&request).unwrap();
        let _ = self
            .0
            .send(asked["message"].as_str().unwrap_or("").to_owned());
        Ok(
            rmcp::model::ElicitResult::new(rmcp::model::ElicitationAction::Accept)
                .with_content(json!({"approve": true})),
        )
    }
}

#[tokio::test]
async fn a_waiting_invoke_stream_asks_through_elicitation_when_the_host_declared_it() {
    use rmcp::ServiceExt;
    use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
    let sb = Sandbox::new();
    let (db, dir) = (sb.db(), sb.dir.path().to_owned());
    let cmd = tokio::process::Command::new(BIN).configure(|c| {
        c.arg("serve")
            .env("BATON_DB", &db)
            .env("BATON_IN_PROCESS", "1")
            .env("RUST_LOG", "warn")
            .current_dir(&dir);
    });
    let (tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
    let client = Approver(tx)
        .serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap();
    let call = |name: &'static str, args: Value| {
        let client = &client;
        async move {
            let Value::Object(args) = args else {
                unreachable!()
            };
            let r = client
                .call_tool(rmcp::model::CallToolRequestParams::new(name).with_arguments(args))
                .await
                .unwrap();
            r.structured_content.unwrap()
        }
    };
    let started = call(
        "invoke_async",
        json!({"workflow": gated(json!({"prompt": "Merge {a.output}?"}))}),
    )
    .await;
    let id = started["thread_id"].as_str().unwrap().to_owned();
    let r = call("invoke_stream", json!({"thread_id": id, "wait_s": 60})).await;
    assert_eq!(r["status"], "completed", "{r}");
    let question = asked.recv().await.unwrap();
    assert!(question.contains("Merge main?"), "{question}");
    let st = call("invoke_status", json!({"thread_id": id})).await;
    assert_eq!(step(&st, "deploy")["output"], "deployed approved");
    client.cancel().await.unwrap();
}

#[test]
fn a_question_waits_in_the_background_worker_and_the_serving_process_answers_it() {
    use crate::handover::{HANDOVER, Reap};
    let sb = Sandbox::new();
    let _reap = Reap(sb.db_arg());
    let mut s = sb.server_with(&HANDOVER, Protocol::V2025);
    let id = s.start(gated(
        json!({"prompt": "Merge {a.output}?", "timeout_s": 600}),
    ));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    let st = s.status(&id);
    assert!(st["owner"].is_string(), "the worker keeps it: {st}");
    answer(&mut s, &id, json!({"step": "ship", "approve": true}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    assert_eq!(
        step(&s.status(&id), "deploy")["output"],
        "deployed approved"
    );
}

#[test]
fn a_waiting_workflow_can_be_cancelled_and_a_resume_asks_again() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(gated(json!({"prompt": "Merge?"})));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    let r = s.call("invoke_cancel", json!({"thread_id": id}));
    assert_eq!(r["status"], "cancelled", "{r}");
    s.call("invoke_resume", json!({"thread_id": id}));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    assert_eq!(waiting(&s.status(&id))["prompt"], "Merge?");
    answer(&mut s, &id, json!({"step": "ship", "approve": true}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
}

#[test]
fn a_human_step_inside_a_repeat_group_asks_once_per_iteration() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "loop", "repeat": {"max_iterations": 3,
            "until": "steps.ok.output == 'done'",
            "steps": [{"id": "ok", "human": {"kind": "input",
                "prompt": "Last time: {previous.ok.output}. More?"}}]}},
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    let first = waiting(&s.status(&id)).clone();
    assert_eq!(first["prompt"], "Last time: . More?");
    answer(
        &mut s,
        &id,
        json!({"step": first["step"], "input": "again"}),
    );
    eventually("the second iteration to ask", || {
        let st = s.status(&id);
        st["waiting_for"][0]["step"].is_string() && st["waiting_for"][0]["step"] != first["step"]
    });
    let second = waiting(&s.status(&id)).clone();
    assert_eq!(second["prompt"], "Last time: again. More?");
    answer(
        &mut s,
        &id,
        json!({"step": second["step"], "input": "done"}),
    );
    assert_eq!(s.wait_done(&id)["status"], "completed");
}
