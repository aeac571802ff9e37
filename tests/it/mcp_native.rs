//! MCP-native async through an rmcp client, on both protocol versions: the Tasks extension
//! served from the store (surviving a restart), workflow resources with update
//! notifications, and workflow events as log messages.
#![allow(deprecated)] // logging and resources/subscribe are deprecated in 2026-07-28

use std::path::Path;
use std::time::Duration;

use rmcp::{
    ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CancelTaskParams, ClientCapabilities,
        ClientConfig, GetTaskParams, Implementation, LoggingLevel, LoggingMessageNotificationParam,
        ProtocolVersion, ReadResourceRequestParams, ResourceUpdatedNotificationParam,
        SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter, TaskPayload, TaskStatus,
        UpdateTaskParams,
    },
    service::{NotificationContext, RunningService},
    transport::{ConfigureCommandExt, TokioChildProcess},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::util::{BIN, PATIENCE, Protocol, Sandbox};

#[derive(Clone)]
pub(crate) struct Client {
    tasks: bool,
    protocol: Protocol,
    tx: mpsc::UnboundedSender<Value>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        let caps = if self.tasks {
            ClientCapabilities::builder().enable_tasks().build()
        } else {
            ClientCapabilities::default()
        };
        let cfg = ClientConfig::new(caps, Implementation::new("baton-tests", "0"));
        match self.protocol {
            Protocol::V2025 => cfg.with_protocol_version(ProtocolVersion::V_2025_11_25),
            Protocol::V2026 => cfg,
        }
    }

    async fn on_resource_updated(
        &self,
        p: ResourceUpdatedNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        let _ = self.tx.send(json!({"updated": p.uri}));
    }

    async fn on_logging_message(
        &self,
        p: LoggingMessageNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        let _ = self.tx.send(json!({"log": p.data}));
    }
}

pub(crate) type Session = RunningService<RoleClient, Client>;

pub(crate) async fn connect(
    sb: &Sandbox,
    protocol: Protocol,
    tasks: bool,
) -> (Session, mpsc::UnboundedReceiver<Value>) {
    connect_with(sb, protocol, tasks, &[]).await
}

async fn connect_with(
    sb: &Sandbox,
    protocol: Protocol,
    tasks: bool,
    env: &[(&str, String)],
) -> (Session, mpsc::UnboundedReceiver<Value>) {
    let db = sb.db();
    let dir = sb.dir.path().to_owned();
    let cmd = tokio::process::Command::new(BIN).configure(|c| {
        c.arg("serve")
            .env("BATON_DB", &db)
            .env("BATON_IN_PROCESS", "1")
            .env("RUST_LOG", "warn")
            .current_dir(&dir);
        for (k, v) in env {
            c.env(k, v);
        }
    });
    let transport = TokioChildProcess::new(cmd).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let client = Client {
        tasks,
        protocol,
        tx,
    };
    let session = match protocol {
        Protocol::V2025 => client.serve(transport).await.unwrap(),
        Protocol::V2026 => client
            .serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            )
            .await
            .unwrap(),
    };
    (session, rx)
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// A step that runs until `gate` exists (bounded), then prints `opened`.
fn gated_workflow(gate: &Path) -> Value {
    json!({"name": "gated", "steps": [
        {"id": "wait", "shell": format!(
            "i=0; while [ ! -e {} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo opened",
            gate.display())},
        {"id": "after", "deps": ["wait"], "run": ["echo", "{wait.output} too"]}
    ]})
}

pub(crate) async fn start_task(client: &Session, workflow: Value) -> String {
    let r = client
        .call_tool_once(
            CallToolRequestParams::new("invoke_async")
                .with_arguments(args(json!({ "workflow": workflow }))),
        )
        .await
        .unwrap();
    match r {
        CallToolResponse::Task(t) => {
            assert_eq!(t.task.status, TaskStatus::Working);
            t.task.task_id
        }
        // On 2025-11-25 the tool answers with the plain result; its thread id is still a
        // task id that tasks/get serves.
        CallToolResponse::Complete(r) => r.structured_content.unwrap()["thread_id"]
            .as_str()
            .unwrap()
            .to_owned(),
        other => panic!("expected a task, got {other:?}"),
    }
}

/// Polls `tasks/get` (at the protocol's poll pace) until the task leaves `working`.
pub(crate) async fn settle(client: &Session, id: &str) -> rmcp::model::DetailedTask {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = client.get_task(GetTaskParams::new(id)).await.unwrap().task;
        if got.status() != TaskStatus::Working {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} stayed working"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn task_survives_a_restart_between_create_and_get(protocol: Protocol) {
    let sb = Sandbox::new();
    let gate = sb.path("gate");
    let (client, _rx) = connect(&sb, protocol, true).await;
    let id = start_task(&client, gated_workflow(&gate)).await;
    // The server goes away (its step is interrupted and handed over).
    client.cancel().await.unwrap();
    let (client, _rx) = connect(&sb, protocol, true).await;
    let got = client
        .get_task(GetTaskParams::new(id.clone()))
        .await
        .unwrap()
        .task;
    assert_eq!(got.status(), TaskStatus::Working, "{got:?}");
    std::fs::write(&gate, "").unwrap();
    let done = settle(&client, &id).await;
    let TaskPayload::Completed { result } = &done.payload else {
        panic!("expected completed, got {done:?}");
    };
    assert_eq!(result["isError"], json!(false));
    assert_eq!(result["structuredContent"]["status"], "completed");
    let after = &result["structuredContent"]["steps"][1];
    assert_eq!(after["output"], "opened too");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn task_survives_restart_on_2025() {
    task_survives_a_restart_between_create_and_get(Protocol::V2025).await;
}

#[tokio::test]
async fn task_survives_restart_on_2026() {
    task_survives_a_restart_between_create_and_get(Protocol::V2026).await;
}

#[tokio::test]
async fn failed_workflow_task_completes_with_is_error() {
    let sb = Sandbox::new();
    let (client, _rx) = connect(&sb, Protocol::V2026, true).await;
    let id = start_task(
        &client,
        json!({"steps": [{"id": "bad", "run": ["false"], "retry": {"max_attempts": 1}}]}),
    )
    .await;
    let done = settle(&client, &id).await;
    let TaskPayload::Completed { result } = &done.payload else {
        panic!("expected completed, got {done:?}");
    };
    assert_eq!(result["isError"], json!(true));
    assert_eq!(result["structuredContent"]["status"], "failed");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn tasks_cancel_cancels_the_workflow() {
    let sb = Sandbox::new();
    let (client, _rx) = connect(&sb, Protocol::V2025, true).await;
    let id = start_task(&client, gated_workflow(&sb.path("never"))).await;
    client
        .cancel_task(CancelTaskParams::new(id.clone()))
        .await
        .unwrap();
    let got = settle(&client, &id).await;
    assert_eq!(got.status(), TaskStatus::Cancelled);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn unknown_task_and_update_of_unblocked_task_are_refused() {
    let sb = Sandbox::new();
    let (client, _rx) = connect(&sb, Protocol::V2026, true).await;
    let err = client
        .get_task(GetTaskParams::new("no-such-task"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown task"), "{err}");
    let id = start_task(&client, json!({"steps": [{"id": "a", "run": ["true"]}]})).await;
    settle(&client, &id).await;
    let err = client
        .update_task(UpdateTaskParams::new(id, Default::default()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not waiting for input"), "{err}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn legacy_session_gets_the_plain_result_even_when_it_declares_tasks() {
    let sb = Sandbox::new();
    let (client, _rx) = connect(&sb, Protocol::V2025, true).await;
    let r = client
        .call_tool_once(
            CallToolRequestParams::new("invoke_async").with_arguments(args(
                json!({"workflow": {"steps": [{"id": "a", "run": ["true"]}]}}),
            )),
        )
        .await
        .unwrap();
    let CallToolResponse::Complete(r) = r else {
        panic!("expected the plain result, got {r:?}");
    };
    assert!(r.structured_content.unwrap()["thread_id"].is_string());
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn client_without_tasks_gets_the_plain_result() {
    let sb = Sandbox::new();
    let (client, _rx) = connect(&sb, Protocol::V2026, false).await;
    let r = client
        .call_tool(
            CallToolRequestParams::new("invoke_async").with_arguments(args(
                json!({"workflow": {"steps": [{"id": "a", "run": ["true"]}]}}),
            )),
        )
        .await
        .unwrap();
    let s = r.structured_content.unwrap();
    assert!(s["thread_id"].is_string());
    assert_eq!(s["step_count"], 1);
    client.cancel().await.unwrap();
}

async fn resource_updates_arrive(protocol: Protocol) {
    let sb = Sandbox::new();
    let gate = sb.path("gate");
    let (client, mut rx) = connect(&sb, protocol, false).await;
    let r = client
        .call_tool(
            CallToolRequestParams::new("invoke_async")
                .with_arguments(args(json!({ "workflow": gated_workflow(&gate) }))),
        )
        .await
        .unwrap();
    let id = r.structured_content.unwrap()["thread_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("baton://workflows/{id}");
    let read = client
        .read_resource(ReadResourceRequestParams::new(uri.clone()))
        .await
        .unwrap();
    let text = serde_json::to_value(&read.contents[0]).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let status: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["thread_id"], json!(id));

    let mut sub = None;
    match protocol {
        Protocol::V2025 => client
            .subscribe(SubscribeRequestParams::new(uri.clone()))
            .await
            .unwrap(),
        Protocol::V2026 => {
            sub = Some(
                client
                    .listen(
                        SubscriptionFilter::builder()
                            .resource_subscription(uri.clone())
                            .build(),
                    )
                    .await
                    .unwrap(),
            );
        }
    }
    std::fs::write(&gate, "").unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    match sub.as_mut() {
        None => loop {
            let v = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("no resources/updated notification")
                .unwrap();
            if v["updated"] == json!(uri) {
                break;
            }
        },
        Some(sub) => {
            let n = tokio::time::timeout_at(deadline, sub.next())
                .await
                .expect("no notification on the subscription")
                .unwrap()
                .unwrap();
            let n = serde_json::to_value(&n).unwrap();
            assert_eq!(n["params"]["uri"], json!(uri), "{n}");
        }
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn resource_subscribe_notifies_updates_on_2025() {
    resource_updates_arrive(Protocol::V2025).await;
}

#[tokio::test]
async fn subscriptions_listen_notifies_updates_on_2026() {
    resource_updates_arrive(Protocol::V2026).await;
}

#[tokio::test]
async fn workflow_events_become_log_messages_after_set_level() {
    let sb = Sandbox::new();
    let (client, mut rx) = connect(&sb, Protocol::V2025, false).await;
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .unwrap();
    client
        .call_tool(
            CallToolRequestParams::new("invoke_async").with_arguments(args(
                json!({"workflow": {"steps": [{"id": "a", "run": ["true"]}]}}),
            )),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let v = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no workflow_completed log message")
            .unwrap();
        if v["log"]["event"]["type"] == "workflow_completed" {
            assert_eq!(v["log"]["message"], "workflow completed");
            break;
        }
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn blocked_workflow_asks_for_input_and_tasks_update_resumes_it() {
    let sb = Sandbox::new();
    let home = sb.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let fake = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_agent/claude.py");
    let env = [
        ("BATON_AGENT_COMMAND", format!("python3 {fake}")),
        ("HOME", home.display().to_string()),
    ];
    let (client, _rx) = connect_with(&sb, Protocol::V2026, true, &env).await;
    let id = start_task(
        &client,
        json!({"steps": [{"id": "build", "prompt": "Build it [[deny:Bash]]"}]}),
    )
    .await;
    let blocked = settle(&client, &id).await;
    let TaskPayload::InputRequired { input_requests } = &blocked.payload else {
        panic!("expected input_required, got {blocked:?}");
    };
    let question = serde_json::to_value(&input_requests["resume"]).unwrap();
    assert_eq!(question["method"], "elicitation/create", "{question}");
    assert!(
        question["params"]["message"]
            .as_str()
            .unwrap()
            .contains("Bash"),
        "{question}"
    );
    let answer = json!({"action": "accept",
        "content": {"mode": "retry", "permission_mode": "bypassPermissions"}});
    client
        .update_task(UpdateTaskParams::new(
            id.clone(),
            [("resume".to_owned(), answer)].into_iter().collect(),
        ))
        .await
        .unwrap();
    let done = settle(&client, &id).await;
    let TaskPayload::Completed { result } = &done.payload else {
        panic!("expected completed, got {done:?}");
    };
    assert_eq!(result["isError"], json!(false), "{result:?}");
    assert_eq!(result["structuredContent"]["status"], "completed");
    client.cancel().await.unwrap();
}
