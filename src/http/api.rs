//! The REST handlers: the MCP tools' operations and shapes over HTTP, plus what an operator
//! needs beyond them (delete, bulk actions, full step output, the event schema).
//!
//! Invariant: handlers are thin — extractor in, one engine call, typed JSON out — and every
//! engine refusal becomes a status code in one place ([`ApiError`]).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use crate::api::{MonitorView, ThreadId, WorkflowStatus, WorkflowView};
use crate::engine::{
    AnswerRequest, EngineError, ResumeMode, ResumeRequest, StepStream, SubmitRequest,
};
use crate::store::ListFilter;

/// An engine refusal as an HTTP answer: `{"error": message}` with the status that says
/// what kind of refusal it is.
pub(crate) struct ApiError(pub StatusCode, pub String);

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let code = match &e {
            EngineError::NotFound { .. } => StatusCode::NOT_FOUND,
            EngineError::Busy { .. }
            | EngineError::AlreadyCompleted { .. }
            | EngineError::NothingToResume { .. }
            | EngineError::Contended { .. }
            | EngineError::NotWaiting { .. }
            | EngineError::NotStarted { .. } => StatusCode::CONFLICT,
            EngineError::CancelPending { .. } => StatusCode::ACCEPTED,
            EngineError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::BadRequest(_)
            | EngineError::InvalidThreadId { .. }
            | EngineError::UnknownStep { .. } => StatusCode::BAD_REQUEST,
            EngineError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub(crate) async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

/// Query of `GET /api/workflows`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    /// One status or several separated by commas; `active` stands for queued, running,
    /// blocked and interrupted.
    status: Option<String>,
    name: Option<String>,
    q: Option<String>,
    limit: Option<i64>,
    cursor: Option<i64>,
}

impl ListQuery {
    fn filter(self) -> ApiResult<ListFilter> {
        let statuses = match self.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for s in list.split(',') {
                    if s == "active" {
                        out.extend([
                            WorkflowStatus::Queued,
                            WorkflowStatus::Running,
                            WorkflowStatus::Blocked,
                            WorkflowStatus::Interrupted,
                        ]);
                        continue;
                    }
                    let st = WorkflowStatus::parse(s).ok_or_else(|| {
                        ApiError(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "unknown status {s:?}; use one of {} or active",
                                WorkflowStatus::ALL
                                    .iter()
                                    .map(|s| s.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                    out.push(st);
                }
                Some(out)
            }
        };
        Ok(ListFilter {
            statuses,
            name: self.name.filter(|s| !s.is_empty()),
            q: self.q.filter(|s| !s.is_empty()),
            limit: self.limit.unwrap_or(50),
            before: self.cursor,
        })
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ListResult {
    #[serde(flatten)]
    view: MonitorView,
    /// Pass as `cursor` for the next (older) page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<i64>,
}

pub(crate) async fn list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ListResult>> {
    let (view, next_cursor) = st.engine.list(q.filter()?).await?;
    Ok(Json(ListResult { view, next_cursor }))
}

/// Body of `POST /api/workflows`: `invoke_async`'s arguments.
#[derive(Debug, Deserialize)]
pub(crate) struct StartBody {
    #[serde(default)]
    workflow: Option<Value>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    inputs: BTreeMap<String, Value>,
    #[serde(default)]
    thread_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct StartResult {
    thread_id: ThreadId,
    status: WorkflowStatus,
    step_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_duration_s: Option<f64>,
    created: bool,
    dashboard_url: String,
    events_url: String,
}

pub(crate) async fn start(
    State(st): State<AppState>,
    body: Result<Json<StartBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let req = SubmitRequest {
        definition: body.workflow,
        file: body.file.map(Into::into),
        inputs: body
            .inputs
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect(),
        thread_id: body.thread_id,
    };
    let s = st.engine.submit(req).await?;
    let code = if s.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let result = StartResult {
        dashboard_url: st.links.dashboard(&s.thread_id),
        events_url: st.links.events(&s.thread_id),
        thread_id: s.thread_id,
        status: s.status,
        step_count: s.step_count as i64,
        estimated_duration_s: s.estimated_duration_s,
        created: s.created,
    };
    Ok((code, Json(result)).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatusQuery {
    output_chars: Option<usize>,
}

pub(crate) async fn status(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StatusQuery>,
) -> ApiResult<Json<WorkflowView>> {
    let view = st
        .engine
        .status(&ThreadId::from(id), q.output_chars.unwrap_or(2000))
        .await?;
    Ok(Json(view))
}

/// Body of `POST /api/workflows/{id}/resume`: `invoke_resume`'s arguments.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ResumeBody {
    #[serde(default)]
    from_step: Option<String>,
    #[serde(default)]
    mode: ResumeMode,
    #[serde(default)]
    prompt: Option<String>,
    /// A higher cost budget, for a workflow blocked by its `max_cost_usd`.
    #[serde(default)]
    max_cost_usd: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ControlResult {
    thread_id: ThreadId,
    status: WorkflowStatus,
}

/// An optional JSON body: empty is the default, malformed is a 400.
fn optional_body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

pub(crate) async fn resume(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<ControlResult>> {
    let body: ResumeBody = optional_body(&body)?;
    let thread_id = ThreadId::from(id);
    let status = st
        .engine
        .resume(ResumeRequest {
            thread_id: thread_id.clone(),
            from_step: body.from_step,
            mode: body.mode,
            prompt: body.prompt,
            agent: None,
            max_cost_usd: body.max_cost_usd,
        })
        .await?;
    Ok(Json(ControlResult { thread_id, status }))
}

pub(crate) async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ControlResult>> {
    let thread_id = ThreadId::from(id);
    let status = st.engine.cancel(&thread_id).await?;
    Ok(Json(ControlResult { thread_id, status }))
}

/// Body of `POST /api/workflows/{id}/approve`.
#[derive(Debug, Deserialize)]
pub(crate) struct ApproveBody {
    #[serde(default)]
    step: Option<String>,
    approve: bool,
    #[serde(default)]
    input: Option<String>,
}

/// Answers a blocked step. A human step that waits gets the answer (its output `approved`
/// or the input text; a denial fails it); without `step`, the one waiting human step does.
/// Any other blocked step (an agent's permission block) is retried on approval (with `input`
/// as guidance for the agent) and skipped on denial.
pub(crate) async fn approve(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ApproveBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<ControlResult>> {
    let Json(body) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let thread_id = ThreadId::from(id);
    let view = st.engine.status(&thread_id, 0).await?;
    let step = match &body.step {
        Some(step) => Some(step.clone()),
        None => match view.waiting_for.as_slice() {
            [one] => Some(one.step.clone()),
            [] => None,
            many => {
                let steps: Vec<&str> = many.iter().map(|w| w.step.as_str()).collect();
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "several steps wait for an answer ({}); name one as step",
                        steps.join(", ")
                    ),
                ));
            }
        },
    };
    if let Some(step) = &step {
        match view.steps.iter().find(|s| &s.id == step) {
            None => {
                return Err(EngineError::UnknownStep {
                    step: step.clone(),
                    known: view.steps.iter().map(|s| s.id.clone()).collect(),
                }
                .into());
            }
            Some(s) if s.waiting_for.is_some() => {
                let status = st
                    .engine
                    .answer(AnswerRequest {
                        thread_id: thread_id.clone(),
                        step: step.clone(),
                        approve: Some(body.approve),
                        input: body.input,
                    })
                    .await?;
                return Ok(Json(ControlResult { thread_id, status }));
            }
            Some(s) if s.status != crate::api::StepStatus::Blocked => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!(
                        "step {step:?} is {}, not blocked: nothing to approve",
                        s.status
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let status = st
        .engine
        .resume(ResumeRequest {
            thread_id: thread_id.clone(),
            from_step: None,
            mode: if body.approve {
                ResumeMode::Retry
            } else {
                ResumeMode::Skip
            },
            prompt: body.input,
            agent: None,
            max_cost_usd: None,
        })
        .await?;
    Ok(Json(ControlResult { thread_id, status }))
}

pub(crate) async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    st.engine.delete(&ThreadId::from(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /api/workflows/bulk`: an action over every workflow a filter matches.
#[derive(Debug, Deserialize)]
pub(crate) struct BulkBody {
    action: BulkAction,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    q: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BulkAction {
    Cancel,
    Delete,
}

#[derive(Debug, Serialize)]
pub(crate) struct BulkResult {
    done: Vec<ThreadId>,
    /// Workflows the action was refused for, with the reason.
    refused: Vec<Value>,
}

/// Most workflows one bulk call acts on.
const BULK_MAX: i64 = 1000;

pub(crate) async fn bulk(
    State(st): State<AppState>,
    body: Result<Json<BulkBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<BulkResult>> {
    let Json(body) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let filter = ListQuery {
        status: body.status,
        name: body.name,
        q: body.q,
        limit: Some(BULK_MAX),
        cursor: None,
    }
    .filter()?;
    let (view, _) = st.engine.list(filter).await?;
    let mut out = BulkResult {
        done: Vec::new(),
        refused: Vec::new(),
    };
    for w in view.workflows {
        let r = match body.action {
            BulkAction::Cancel if w.status.is_finished() => continue,
            BulkAction::Cancel => st.engine.cancel(&w.thread_id).await.map(|_| ()),
            BulkAction::Delete => st.engine.delete(&w.thread_id).await,
        };
        match r {
            Ok(()) => out.done.push(w.thread_id),
            Err(e) => out
                .refused
                .push(json!({"thread_id": w.thread_id, "error": e.to_string()})),
        }
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
pub(crate) struct OutputQuery {
    #[serde(default)]
    stream: StepStream,
}

/// The full kept output (or stderr) of a step, as plain text.
pub(crate) async fn output(
    State(st): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    Query(q): Query<OutputQuery>,
) -> ApiResult<Response> {
    let text = st
        .engine
        .step_output(&ThreadId::from(id), &step, q.stream)
        .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// The JSON Schema of the events the streams carry (the `data:` of each SSE message).
pub(crate) async fn event_schema() -> Json<Value> {
    let schema = schemars::schema_for!(crate::api::Event);
    Json(serde_json::to_value(schema).unwrap_or_default())
}
