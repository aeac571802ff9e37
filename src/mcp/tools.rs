//! The tools. Descriptions are written for a model that has never seen baton.
//!
//! Invariant: a domain refusal (invalid workflow, unknown thread, illegal resume) is a tool
//! result with `isError: true` and a message that says what to do next; a request that does
//! not parse is a JSON-RPC error, produced by the SDK before these functions run.

use std::time::Duration;

use rmcp::{
    ErrorData as McpError, Json, RoleServer,
    handler::server::wrapper::Parameters,
    model::{
        CallToolResponse, CallToolResult, ContentBlock, ProgressNotificationParam, ProtocolVersion,
    },
    service::RequestContext,
    tool, tool_router,
};
use serde_json::Value;

use super::BatonServer;
use super::args::*;
use crate::api::{Event, EventKind, MonitorView, ThreadId, WorkflowStatus};
use crate::engine::{AnswerRequest, EngineError, MonitorFilter, ResumeRequest, SubmitRequest};

/// Default and longest wait of `invoke_stream`, seconds.
const STREAM_WAIT_DEFAULT_S: f64 = 60.0;
const STREAM_WAIT_MAX_S: f64 = 1500.0;
/// Longest silence on a waiting `invoke_stream` call before a keepalive progress notification.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Most events returned by one `invoke_stream` call.
const STREAM_PAGE: i64 = 500;

impl BatonServer {
    fn link_fields(&self, thread_id: &str) -> LinkFields {
        match &self.links {
            Some(l) => LinkFields {
                dashboard_url: Some(l.dashboard(thread_id)),
                events_url: Some(l.events(thread_id)),
            },
            None => LinkFields::default(),
        }
    }
}

/// The message a model sees for an engine error: what is wrong and which tool to call next.
pub(super) fn refusal(e: EngineError) -> String {
    match e {
        EngineError::Invalid(p) => format!(
            "The workflow was rejected and nothing was started. Fix these problems and call invoke_async again:\n{p}"
        ),
        EngineError::NotFound { thread_id } => format!(
            "unknown thread_id {thread_id:?}: no workflow with this id exists in this store (list them with workflow_monitor)"
        ),
        EngineError::UnknownStep { step, known } => format!(
            "from_step {step:?} is not a step of this workflow; its steps are: {}",
            known.join(", ")
        ),
        EngineError::Busy { thread_id, status } => format!(
            "workflow {thread_id} is {status} right now; wait for it to stop or call invoke_cancel first"
        ),
        EngineError::AlreadyCompleted { thread_id } => format!(
            "workflow {thread_id} already completed; pass from_step to re-run a step and everything downstream of it"
        ),
        EngineError::Contended { thread_id } => format!(
            "workflow {thread_id} was changed by another process meanwhile; check invoke_status and try again"
        ),
        EngineError::NotWaiting {
            thread_id,
            step,
            status,
        } => format!(
            "step {step:?} of {thread_id} is not waiting for an answer (it is {status}); invoke_status lists the questions under waiting_for"
        ),
        EngineError::CancelPending { thread_id } => format!(
            "cancel of {thread_id} was requested, but its owning process has not confirmed yet; check invoke_status shortly"
        ),
        EngineError::Store(s) => {
            format!("baton's database failed: {s}. Nothing was changed; try again.")
        }
        other => other.to_string(),
    }
}

/// A tool result with `isError: true` carrying `message`.
fn refused(message: String) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(message)]))
}

fn input_string(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[tool_router(vis = "pub(super)")]
impl BatonServer {
    #[tool(
        description = "Start a durable multi-step workflow and return at once with its thread_id. \
Steps are Claude Code sub-agents (`prompt`), commands (`run`, argv) or shell scripts (`shell`), \
ordered by `deps` and wired by `{step.output}` templates; independent steps run in parallel. \
Completed steps are checkpointed, so the workflow survives crashes and restarts. Use it for \
long or multi-stage work you want to keep running while you do other things. Follow progress \
with invoke_stream, check with invoke_status. The workflow is validated first: if it is invalid, \
every problem is listed and nothing runs.",
        // Returns CallToolResponse (a result or, for task-aware clients, a task), so the
        // schema of the result is named here; the macro only infers it from Json<T>.
        output_schema = rmcp::handler::server::tool::schema_for_output::<InvokeAsyncResult>(),
        annotations(
            title = "Start workflow",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn invoke_async(
        &self,
        Parameters(args): Parameters<InvokeAsyncArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.session.attach(&ctx.peer);
        let definition = match args.workflow {
            // Some clients send the definition as a JSON string.
            Some(Value::String(s)) => match serde_json::from_str(&s) {
                Ok(v) => Some(v),
                Err(e) => {
                    return Ok(refused(format!(
                        "`workflow` is a string but not valid JSON: {e}"
                    )));
                }
            },
            other => other,
        };
        let mut file: Option<std::path::PathBuf> = args.file.map(Into::into);
        if let Some(name) = &args.name {
            if definition.is_some() || file.is_some() {
                return Ok(refused(
                    "give one of `workflow` (inline), `file` or `name` (a saved workflow), not several".into(),
                ));
            }
            let library = self.library.clone();
            let name = name.clone();
            let found = tokio::task::spawn_blocking(move || library.find(&name))
                .await
                .map_err(|e| McpError::internal_error(e.to_string(), None))?;
            match found {
                Ok(w) => file = Some(w.path),
                Err(e) => return Ok(refused(e.to_string())),
            }
        }
        let req = SubmitRequest {
            definition,
            file,
            inputs: args
                .inputs
                .into_iter()
                .map(|(k, v)| (k, input_string(v)))
                .collect(),
            thread_id: args.thread_id,
        };
        let s = match self.engine.submit(req).await {
            Ok(s) => s,
            Err(e) => return Ok(refused(refusal(e))),
        };
        self.session.watch_workflow(&s.thread_id, 0);
        // Server-directed tasks (SEP-2663) belong to 2026-07-28 requests that declare the
        // extension; a 2025-11-25 session gets the plain result even if its `initialize`
        // listed the extension (hosts such as the MCP Inspector read it that way).
        let modern = ctx
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
        if modern
            && ctx
                .client_capabilities()
                .is_some_and(|c| c.supports_tasks())
        {
            let task = super::tasks::created(&self.engine, &s.thread_id).await?;
            return Ok(CallToolResponse::Task(task));
        }
        let next = if s.created {
            format!(
                "Started. Call invoke_stream with thread_id {:?} to follow it, or invoke_status to check on it.",
                s.thread_id
            )
        } else {
            "A workflow with this thread_id already exists; nothing new was started. Check it with invoke_status.".to_owned()
        };
        let result = InvokeAsyncResult {
            links: self.link_fields(&s.thread_id),
            thread_id: s.thread_id,
            status: s.status,
            step_count: s.step_count as i64,
            estimated_duration_s: s.estimated_duration_s,
            created: s.created,
            next,
        };
        Ok(CallToolResponse::Complete(CallToolResult::structured(
            serde_json::to_value(result).unwrap_or_default(),
        )))
    }

    #[tool(
        description = "Get a workflow's current state: overall status, progress {done, total}, \
the steps running now, and for every step its status, attempts (with errors and exit codes), \
Claude session id, timestamps, duration, output preview and error. Use it to check on a \
workflow or to read step outputs after it finished.",
        annotations(
            title = "Workflow status",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn invoke_status(
        &self,
        Parameters(args): Parameters<InvokeStatusArgs>,
    ) -> Result<Json<InvokeStatusResult>, String> {
        let chars = args.output_chars.unwrap_or(2000);
        let view = self
            .engine
            .status(&ThreadId::from(args.thread_id), chars)
            .await
            .map_err(refusal)?;
        Ok(Json(InvokeStatusResult {
            links: self.link_fields(&view.thread_id),
            view,
        }))
    }

    #[tool(
        description = "Follow a workflow: returns the events after `cursor` (step started, \
progress, retrying, completed, failed, blocked, …) and keeps waiting for new ones until the \
workflow stops or `wait_s` passes. Each event is also sent as a progress notification. If \
`done` is false, call again with `cursor` = `next_cursor` to continue without missing anything.",
        annotations(
            title = "Follow workflow",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn invoke_stream(
        &self,
        Parameters(args): Parameters<InvokeStreamArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<InvokeStreamResult>, String> {
        let wait = args
            .wait_s
            .unwrap_or(STREAM_WAIT_DEFAULT_S)
            .clamp(0.0, STREAM_WAIT_MAX_S);
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
        let token = ctx.meta.get_progress_token();
        // 2026-07-28 clients ask for log messages per request.
        #[allow(deprecated)]
        let log_min = ctx.meta.log_level();
        let id = ThreadId::from(args.thread_id);
        let cursor = args.cursor.unwrap_or(0).max(0);
        let mut follow = self.engine.follow(&id, cursor);
        let mut out: Vec<Event> = Vec::new();
        let mut progress = Progress::default();
        let mut asked = std::collections::BTreeSet::new();
        // Steps done as of the cursor; each completion event replayed adds one.
        let mut done_steps = if cursor == 0 {
            0
        } else {
            self.engine.done_at(&id, cursor).await.map_err(refusal)?
        };
        loop {
            let now = tokio::time::Instant::now();
            let keepalive_at = deadline.min(now + KEEPALIVE);
            let limit = STREAM_PAGE - out.len() as i64;
            let page = tokio::select! {
                r = follow.next(limit, keepalive_at) => r.map_err(refusal)?,
                () = ctx.ct.cancelled() => return Err("cancelled by the client".into()),
            };
            let done = page.done();
            let (status, total, events) = (page.status, page.total, page.events);
            if let Some(token) = &token {
                let send = |p: f64, msg: String| {
                    ctx.peer.notify_progress(
                        ProgressNotificationParam::new(token.clone(), p)
                            .with_total(total as f64)
                            .with_message(msg),
                    )
                };
                if events.is_empty() && !status.is_terminal() {
                    let p = progress.next(done_steps, total, false);
                    let _ = send(p, format!("waiting: workflow {status}")).await;
                }
                for e in &events {
                    if e.kind.completes_step() {
                        done_steps += 1;
                    }
                    let p =
                        progress.next(done_steps, total, e.kind == EventKind::WorkflowCompleted);
                    let _ = send(p, e.describe()).await;
                }
            }
            #[allow(deprecated)]
            if let Some(min) = log_min {
                for e in &events {
                    let level = super::session::event_level(e.kind);
                    if super::session::passes(level, min) {
                        let data = serde_json::json!({ "thread_id": id,
                            "message": e.describe(), "event": e });
                        let _ = ctx
                            .peer
                            .notify_logging_message(
                                rmcp::model::LoggingMessageNotificationParam::new(level, data)
                                    .with_logger("baton"),
                            )
                            .await;
                    }
                }
            }
            out.extend(events);
            let page_full = out.len() as i64 >= STREAM_PAGE;
            // A workflow that waits for a human: ask through the host when it can be asked.
            if done
                && status == WorkflowStatus::Blocked
                && !page_full
                && super::elicit::can_ask(&ctx)
                && super::elicit::ask_waiting(&self.engine, &ctx, &id, &mut asked).await
            {
                continue;
            }
            if done || page_full || tokio::time::Instant::now() >= deadline {
                return Ok(Json(InvokeStreamResult {
                    links: self.link_fields(&id),
                    thread_id: id,
                    status,
                    done,
                    next_cursor: follow.cursor(),
                    events: out,
                }));
            }
        }
    }

    #[tool(
        description = "Resume a workflow that failed, is blocked, was cancelled or was \
interrupted. By default only the stopped steps run again (completed steps are never re-run); \
`from_step` re-runs that step and everything downstream instead, even on a completed workflow. \
`mode: skip` skips the stopped steps instead of retrying them. For agent steps, `prompt` adds \
guidance to the resumed Claude session and `agent` overrides options such as permission_mode. \
To answer a human step that waits (listed in `waiting_for` of invoke_status), give `step` with \
`approve: true|false` and, for an input step, `input`. A workflow blocked by its budget goes on \
with a higher `max_cost_usd`. Returns at once; follow with invoke_stream.",
        annotations(
            title = "Resume workflow",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn invoke_resume(
        &self,
        Parameters(args): Parameters<InvokeResumeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ControlResult>, String> {
        self.session.attach(&ctx.peer);
        let thread_id = ThreadId::from(args.thread_id);
        if let Some(step) = args.step {
            let status = self
                .engine
                .answer(AnswerRequest {
                    thread_id: thread_id.clone(),
                    step,
                    approve: args.approve,
                    input: args.input,
                })
                .await
                .map_err(refusal)?;
            self.session.watch_stop(&thread_id);
            return Ok(Json(ControlResult {
                next: format!(
                    "Answered. Follow the workflow with invoke_stream (thread_id {thread_id:?})."
                ),
                thread_id,
                status,
            }));
        }
        if args.approve.is_some() || args.input.is_some() {
            return Err(
                "approve and input answer a human step: give `step` too (see waiting_for in invoke_status)"
                    .to_owned(),
            );
        }
        let status = self
            .engine
            .resume(ResumeRequest {
                thread_id: thread_id.clone(),
                from_step: args.from_step,
                mode: args.mode,
                prompt: args.prompt,
                agent: args.agent,
                max_cost_usd: args.max_cost_usd,
            })
            .await
            .map_err(refusal)?;
        self.session.watch_stop(&thread_id);
        Ok(Json(ControlResult {
            next: format!("Resumed. Follow it with invoke_stream (thread_id {thread_id:?})."),
            thread_id,
            status,
        }))
    }

    #[tool(
        description = "List workflows with their progress, running steps, heartbeat age and \
health flags: `stalled` (a running step has been silent longer than its stall threshold), \
`orphaned` (its server process died and no process has taken it over yet), `overdue`. Also \
counts workflows by status. By default lists active and blocked workflows, newest first.",
        annotations(
            title = "Monitor workflows",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn workflow_monitor(
        &self,
        Parameters(args): Parameters<WorkflowMonitorArgs>,
    ) -> Result<Json<MonitorView>, String> {
        self.engine
            .monitor(MonitorFilter {
                status: args.status,
                include_finished: args.include_finished,
                limit: args.limit.unwrap_or(50),
            })
            .await
            .map(Json)
            .map_err(refusal)
    }

    #[tool(
        description = "Cancel a workflow: its running steps are stopped (their whole process \
groups are terminated) and it is marked cancelled. Completed steps keep their results and the \
workflow can be resumed later with invoke_resume.",
        annotations(
            title = "Cancel workflow",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn invoke_cancel(
        &self,
        Parameters(args): Parameters<ThreadArgs>,
    ) -> Result<Json<ControlResult>, String> {
        let thread_id = ThreadId::from(args.thread_id);
        let status = self.engine.cancel(&thread_id).await.map_err(refusal)?;
        let next = if status == WorkflowStatus::Cancelled {
            "Cancelled. Resume it later with invoke_resume if needed.".to_owned()
        } else {
            format!("The workflow had already stopped ({status}); nothing to cancel.")
        };
        Ok(Json(ControlResult {
            thread_id,
            status,
            next,
        }))
    }
}

#[tool_router(router = tool_router_delete, vis = "pub(super)")]
impl BatonServer {
    #[tool(
        description = "Delete finished workflows with their steps, attempts, output and events. \
Give `thread_id` to delete one stopped workflow, or `older_than_days` (and optionally `status`: \
completed, failed or cancelled) to delete every finished workflow older than that. Queued and \
running workflows are never deleted; a bulk delete also keeps blocked and interrupted ones. \
This cannot be undone.",
        annotations(
            title = "Delete workflows",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn workflow_delete(
        &self,
        Parameters(args): Parameters<WorkflowDeleteArgs>,
    ) -> Result<Json<WorkflowDeleteResult>, String> {
        match (args.thread_id, args.older_than_days) {
            (Some(id), None) => {
                if args.status.is_some() {
                    return Err("`status` goes with `older_than_days`, not with `thread_id`".into());
                }
                let id = ThreadId::from(id);
                self.engine.delete(&id).await.map_err(refusal)?;
                Ok(Json(WorkflowDeleteResult {
                    deleted: 1,
                    next: format!("Deleted workflow {id}."),
                }))
            }
            (None, Some(days)) => {
                if !days.is_finite() || days < 0.0 {
                    return Err(format!("older_than_days must be 0 or more, got {days}"));
                }
                let statuses = match args.status {
                    None => None,
                    Some(s) if crate::engine::FINISHED.contains(&s) => Some(vec![s]),
                    Some(s) => {
                        return Err(format!(
                            "status {s} is not a finished status; a bulk delete takes completed, failed or cancelled"
                        ));
                    }
                };
                let deleted = self
                    .engine
                    .prune(crate::engine::PruneRequest {
                        older_than: Duration::from_secs_f64((days * 86_400.0).min(1e12)),
                        statuses,
                    })
                    .await
                    .map_err(refusal)?;
                Ok(Json(WorkflowDeleteResult {
                    deleted,
                    next: format!("Deleted {deleted} finished workflow(s)."),
                }))
            }
            _ => Err(
                "give either `thread_id` (one workflow) or `older_than_days` (finished workflows older than that)".into(),
            ),
        }
    }
}

/// Progress values of one `invoke_stream` call: strictly increasing and never above the
/// step count. Between two completions the value creeps towards the next whole step; the
/// workflow's completion reports exactly the step count.
#[derive(Default)]
struct Progress {
    last: f64,
    base: f64,
    n: u32,
}

impl Progress {
    fn next(&mut self, done: i64, total: i64, finished: bool) -> f64 {
        let total = total.max(1) as f64;
        let base = (done as f64).clamp(0.0, total - 1.0);
        if finished && self.last < total {
            self.last = total;
            return total;
        }
        if base > self.base {
            self.base = base;
            self.n = 0;
        }
        self.n += 1;
        let frac = 1.0 - 1.0 / f64::from(self.n + 1);
        let mut p = self.base + frac;
        if p <= self.last {
            // Completions went backwards (a resume reset steps): creep towards the cap.
            p = self.last + (total - self.last) / 2.0;
        }
        self.last = p;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn progress_strictly_increases_and_stays_within_total() {
        let mut p = Progress::default();
        let mut last = -1.0;
        for done in [0, 0, 1, 1, 1, 2, 0, 3, 3, 4, 4, 4] {
            let v = p.next(done, 4, false);
            assert!(v > last, "{v} <= {last}");
            assert!(
                v < 4.0,
                "{v} reached the total before the workflow finished"
            );
            last = v;
        }
        assert_eq!(p.next(4, 4, true), 4.0);
    }
}
