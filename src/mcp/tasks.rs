//! The Tasks extension (`io.modelcontextprotocol/tasks`) served from the store: a task is a
//! workflow and its `taskId` is the thread id.
//!
//! Invariant: nothing about a task lives in memory, so tasks survive restarts and every
//! process sharing the database answers `tasks/get` the same way. Mapping: queued, running or
//! interrupted → `working`; a waiting human step → `input_required` with its question (one
//! request `step:ID` per step); blocked → `input_required` with an elicitation asking how to go on;
//! completed or failed → `completed` with the final status as the tool result (`isError` on
//! failure); cancelled → `cancelled`.

use rmcp::{
    ErrorData as McpError,
    model::{
        CallToolResult, CreateTaskResult, DetailedTask, InputRequest, InputRequests,
        InputResponses, JsonObject, Task, TaskPayload, TaskStatus,
    },
};
use serde_json::{Value, json};

use crate::api::{ThreadId, WorkflowStatus, WorkflowView};
use crate::engine::{AnswerRequest, Engine, EngineError, ResumeMode, ResumeRequest};
use crate::workflow::AgentOptions;

/// Suggested `tasks/get` polling interval.
const POLL_MS: u64 = 1000;
/// Key of the one input request of a blocked workflow.
const BLOCKED_KEY: &str = "resume";
/// Key prefix of a human step's question: `step:ID`.
const HUMAN_KEY_PREFIX: &str = "step:";

fn not_found(e: EngineError) -> McpError {
    match e {
        EngineError::NotFound { thread_id } => McpError::invalid_params(
            format!("unknown task: {thread_id} (a taskId is a workflow thread_id)"),
            None,
        ),
        other => McpError::internal_error(other.to_string(), None),
    }
}

fn status_message(v: &WorkflowView) -> String {
    let mut msg = format!(
        "{}: {}/{} steps done",
        v.status, v.progress.done, v.progress.total
    );
    if !v.current_steps.is_empty() {
        msg.push_str(&format!("; running {}", v.current_steps.join(", ")));
    }
    if let Some(e) = &v.error {
        msg.push_str(&format!("; {e}"));
    }
    msg
}

fn base_task(v: &WorkflowView) -> Task {
    Task::new(
        v.thread_id.to_string(),
        TaskStatus::Working,
        v.created_at.clone(),
        v.updated_at.clone(),
    )
    .with_poll_interval_ms(POLL_MS)
    .with_status_message(status_message(v))
}

/// The task created for a just-submitted workflow.
pub async fn created(engine: &Engine, thread_id: &ThreadId) -> Result<CreateTaskResult, McpError> {
    let view = engine.status(thread_id, 0).await.map_err(not_found)?;
    Ok(CreateTaskResult::new(base_task(&view)))
}

/// The final tool result of a finished workflow: its status, `isError` unless it completed.
pub fn final_result(view: &WorkflowView) -> CallToolResult {
    let json = serde_json::to_value(view).unwrap_or(Value::Null);
    if view.status == WorkflowStatus::Completed {
        CallToolResult::structured(json)
    } else {
        CallToolResult::structured_error(json)
    }
}

fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    }
}

/// `tasks/get`.
pub async fn get(engine: &Engine, task_id: &str) -> Result<DetailedTask, McpError> {
    let view = engine
        .status(&ThreadId::from(task_id), 2000)
        .await
        .map_err(not_found)?;
    let task = base_task(&view);
    let payload = match view.status {
        // A human step asks, even while other branches still run.
        _ if !view.waiting_for.is_empty() && !view.status.is_finished() => {
            TaskPayload::InputRequired {
                input_requests: human_questions(&view)?,
            }
        }
        WorkflowStatus::Queued | WorkflowStatus::Running | WorkflowStatus::Interrupted => {
            TaskPayload::Working
        }
        WorkflowStatus::Cancelled => TaskPayload::Cancelled,
        WorkflowStatus::Completed | WorkflowStatus::Failed => TaskPayload::Completed {
            result: object(serde_json::to_value(final_result(&view)).unwrap_or(Value::Null)),
        },
        WorkflowStatus::Blocked => TaskPayload::InputRequired {
            input_requests: blocked_question(&view)?,
        },
    };
    Ok(DetailedTask::new(task, payload))
}

/// The elicitation a blocked workflow asks: how to continue the blocked steps.
fn blocked_question(view: &WorkflowView) -> Result<InputRequests, McpError> {
    let message = format!(
        "Workflow {} is blocked: {}. Choose how to continue: `retry` the blocked steps (optionally \
         with another permission_mode and guidance for the agent) or `skip` them.",
        view.thread_id,
        view.error.as_deref().unwrap_or("a step needs a decision")
    );
    let request = json!({
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": {
                    "mode": { "type": "string", "enum": ["retry", "skip"],
                              "description": "retry the blocked steps, or skip them" },
                    "permission_mode": { "type": "string",
                        "enum": ["default", "acceptEdits", "bypassPermissions", "plan"],
                        "description": "permission mode for the retried agent steps" },
                    "prompt": { "type": "string", "description": "guidance for the retried agent" }
                },
                "required": ["mode"]
            }
        }
    });
    let request: InputRequest = serde_json::from_value(request)
        .map_err(|e| McpError::internal_error(format!("building the input request: {e}"), None))?;
    Ok([(BLOCKED_KEY.to_owned(), request)].into_iter().collect())
}

/// The input request key of human step `step`'s question.
fn human_key(step: &str) -> String {
    format!("{HUMAN_KEY_PREFIX}{step}")
}

/// One elicitation per waiting human step: approve or deny (an approval), or the text asked
/// for (an input step).
fn human_questions(view: &WorkflowView) -> Result<InputRequests, McpError> {
    let mut requests = InputRequests::new();
    for w in &view.waiting_for {
        let schema = if w.kind == "input" {
            json!({
                "type": "object",
                "properties": { "input": { "type": "string", "description": "your answer" } },
                "required": ["input"]
            })
        } else {
            json!({
                "type": "object",
                "properties": {
                    "approve": { "type": "boolean", "description": "approve (true) or deny (false)" },
                    "comment": { "type": "string", "description": "an optional comment" }
                },
                "required": ["approve"]
            })
        };
        let request = json!({
            "method": "elicitation/create",
            "params": {
                "mode": "form",
                "message": format!("Workflow {} step {} asks: {}", view.thread_id, w.step, w.prompt),
                "requestedSchema": schema
            }
        });
        let request: InputRequest = serde_json::from_value(request).map_err(|e| {
            McpError::internal_error(format!("building the input request: {e}"), None)
        })?;
        requests.insert(human_key(&w.step), request);
    }
    Ok(requests)
}

/// The answer an elicitation result gives: `accept` with its content, `decline` (a denial),
/// or `None` when it was dismissed (`cancel`).
pub(super) fn human_answer(kind: &str, result: &Value) -> Option<(bool, Option<String>)> {
    let content = result.get("content").cloned().unwrap_or(Value::Null);
    let text = |k: &str| {
        content
            .get(k)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    match result.get("action").and_then(Value::as_str) {
        Some("accept") if kind == "input" => Some((true, text("input"))),
        Some("accept") => Some((
            content
                .get("approve")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            text("comment"),
        )),
        Some("decline") => Some((false, None)),
        _ => None,
    }
}

/// `tasks/update` for human steps: each answered question is applied.
async fn update_human(
    engine: &Engine,
    view: &WorkflowView,
    responses: &InputResponses,
) -> Result<(), McpError> {
    for w in &view.waiting_for {
        let Some(result) = responses.get(&human_key(&w.step)) else {
            continue;
        };
        let result = serde_json::to_value(result).unwrap_or(Value::Null);
        let Some((approve, input)) = human_answer(&w.kind, &result) else {
            continue;
        };
        engine
            .answer(AnswerRequest {
                thread_id: view.thread_id.clone(),
                step: w.step.clone(),
                approve: Some(approve),
                input,
            })
            .await
            .map_err(|e| McpError::invalid_params(super::tools::refusal(e), None))?;
    }
    Ok(())
}

/// `tasks/update`: the answer to a blocked workflow's question resumes it.
pub async fn update(
    engine: &Engine,
    task_id: &str,
    responses: InputResponses,
) -> Result<(), McpError> {
    let view = engine
        .status(&ThreadId::from(task_id), 0)
        .await
        .map_err(not_found)?;
    if responses.keys().any(|k| k.starts_with(HUMAN_KEY_PREFIX)) {
        return update_human(engine, &view, &responses).await;
    }
    if view.status != WorkflowStatus::Blocked {
        return Err(McpError::invalid_params(
            format!(
                "task {task_id} is not waiting for input (workflow status {})",
                view.status
            ),
            None,
        ));
    }
    let Some(answer) = responses.get(BLOCKED_KEY) else {
        return Err(McpError::invalid_params(
            format!("inputResponses must answer the outstanding request {BLOCKED_KEY:?}"),
            None,
        ));
    };
    let action = answer.get("action").and_then(Value::as_str).unwrap_or("");
    if action != "accept" {
        // Declined or dismissed: leave the workflow blocked.
        return Ok(());
    }
    let content = answer.get("content").cloned().unwrap_or(Value::Null);
    let mode = match content.get("mode").and_then(Value::as_str) {
        Some("skip") => ResumeMode::Skip,
        _ => ResumeMode::Retry,
    };
    let agent = content
        .get("permission_mode")
        .and_then(Value::as_str)
        .map(|p| AgentOptions {
            permission_mode: Some(p.to_owned()),
            ..Default::default()
        });
    let prompt = content
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    engine
        .resume(ResumeRequest {
            thread_id: ThreadId::from(task_id),
            from_step: None,
            mode,
            prompt,
            agent,
            max_cost_usd: None,
        })
        .await
        .map_err(|e| McpError::invalid_params(super::tools::refusal(e), None))?;
    Ok(())
}

/// `tasks/cancel`.
pub async fn cancel(engine: &Engine, task_id: &str) -> Result<(), McpError> {
    engine
        .cancel(&ThreadId::from(task_id))
        .await
        .map_err(not_found)?;
    Ok(())
}
