//! Asking the human through the host: a waiting `invoke_stream` call whose host declared
//! elicitation sends each open question of its workflow as `elicitation/create` and applies
//! the answer.
//!
//! Invariant: the answer goes through the same engine call as every other front-end's, so
//! asking here changes nothing about durability — a question nobody answers here stays
//! open, answerable elsewhere. Only 2025-11-25 sessions are asked this way: 2026-07-28
//! forbids server-to-client requests (its hosts get the question as the task's
//! `input_required`).

use std::collections::BTreeSet;

use rmcp::{
    RoleServer,
    model::{ElicitRequestParams, ElicitationAction, ProtocolVersion},
    service::RequestContext,
};
use serde_json::{Value, json};

use crate::api::ThreadId;
use crate::engine::{AnswerRequest, Engine};

/// Whether this request's host can be asked.
pub(super) fn can_ask(ctx: &RequestContext<RoleServer>) -> bool {
    let legacy = ctx
        .protocol_version()
        .is_none_or(|v| v < ProtocolVersion::V_2026_07_28);
    legacy
        && ctx
            .client_capabilities()
            .is_some_and(|c| c.elicitation.is_some())
}

/// Asks each open question of `id` not asked before in this call (`asked`), applying the
/// answers. Returns whether any answer was applied (the workflow moves on).
pub(super) async fn ask_waiting(
    engine: &Engine,
    ctx: &RequestContext<RoleServer>,
    id: &ThreadId,
    asked: &mut BTreeSet<String>,
) -> bool {
    let Ok(view) = engine.status(id, 0).await else {
        return false;
    };
    let mut applied = false;
    for w in view.waiting_for.iter().filter(|w| !w.answered) {
        if !asked.insert(w.step.clone()) {
            continue;
        }
        let schema = if w.kind == "input" {
            json!({"type": "object",
                   "properties": {"input": {"type": "string", "description": "your answer"}},
                   "required": ["input"]})
        } else {
            json!({"type": "object",
                   "properties": {
                       "approve": {"type": "boolean", "description": "approve (true) or deny (false)"},
                       "comment": {"type": "string", "description": "an optional comment"}},
                   "required": ["approve"]})
        };
        let params = json!({"mode": "form",
            "message": format!("Workflow {id} step {} asks: {}", w.step, w.prompt),
            "requestedSchema": schema});
        let Ok(params) = serde_json::from_value::<ElicitRequestParams>(params) else {
            continue;
        };
        let result = match ctx.peer.create_elicitation(params).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(thread_id = %id, error = %e, "elicitation failed");
                return applied;
            }
        };
        let action = match result.action {
            ElicitationAction::Accept => "accept",
            ElicitationAction::Decline => "decline",
            _ => "cancel",
        };
        let answer = json!({"action": action, "content": result.content.unwrap_or(Value::Null)});
        let Some((approve, input)) = super::tasks::human_answer(&w.kind, &answer) else {
            continue;
        };
        let req = AnswerRequest {
            thread_id: id.clone(),
            step: w.step.clone(),
            approve: Some(approve),
            input,
        };
        match engine.answer(req).await {
            Ok(_) => applied = true,
            Err(e) => tracing::debug!(thread_id = %id, error = %e, "elicited answer refused"),
        }
    }
    applied
}
