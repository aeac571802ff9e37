//! The MCP server: tools over the engine, progress notifications, workflow resources with
//! update notifications, log messages, and the Tasks extension served from the store.
//!
//! Invariant: stdout carries JSON-RPC only (logs go to stderr), and no request can make the
//! server exit or panic: domain refusals are tool results with `isError: true`, malformed
//! requests are JSON-RPC errors, and a client that breaks the handshake gets a fresh one.
//!
//! # Layout
//! - `tools`: the tools; `args`: their argument and result types.
//! - `prompts`: saved workflows as prompts, and the folder watch behind `list_changed`.
//! - `tasks`: `tasks/get`, `tasks/update`, `tasks/cancel` mapped onto workflows.
//! - `session`: per-session subscriptions and log forwarding.
//! - `elicit`: asking a waiting human step's question through the host (`elicitation/create`).
#![allow(deprecated)] // logging and resources/subscribe are deprecated in 2026-07-28

mod args;
mod elicit;
mod prompts;
mod session;
mod tasks;
mod tools;
mod transport;

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler, ServiceExt,
    handler::server::tool::ToolRouter,
    model::{
        CancelTaskParams, GetPromptRequestParams, GetPromptResponse, GetTaskParams, GetTaskResult,
        Implementation, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
        PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
        ReadResourceResult, Resource, ResourceContents, ResourceTemplate, ServerCapabilities,
        ServerConfig, SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter,
        UnsubscribeRequestParams, UpdateTaskParams,
    },
    service::{RequestContext, SubscriptionContext},
    tool_handler,
};

use tokio_util::sync::CancellationToken;

use crate::api::{Links, ThreadId};
use crate::engine::{Engine, EngineError, MonitorFilter};
use crate::saved::Library;
use session::{Session, WORKFLOW_URI};

/// The MCP server over one engine, for one session.
#[derive(Clone)]
pub struct BatonServer {
    engine: Engine,
    /// Links into the HTTP server of this process, when it serves one.
    links: Option<Links>,
    session: Session,
    /// Saved workflows of the server's working directory and of the user.
    library: Library,
    /// Newest protocol version offered (`None`: every version rmcp knows).
    max_protocol: Option<ProtocolVersion>,
    tool_router: ToolRouter<BatonServer>,
}

impl BatonServer {
    pub fn new(engine: Engine, links: Option<Links>) -> BatonServer {
        BatonServer {
            session: Session::new(engine.clone()),
            library: Library::new(&engine.config().base_dir),
            max_protocol: None,
            engine,
            links,
            tool_router: Self::tool_router() + Self::tool_router_delete(),
        }
    }
}

/// What the host tells its model about this server (at most 2 KB: hosts cut longer text).
const INSTRUCTIONS: &str = "baton runs durable multi-step workflows in the background: steps are \
Claude Code sub-agents (prompt), commands (run, argv) or shell scripts (shell), ordered by deps \
and wired by {step.output} templates. Completed steps are checkpointed and never re-run, so a \
workflow survives crashes, restarts and the end of this session.

Use it for long or multi-stage work (plan -> implement -> test), work that must not be lost, \
and deterministic steps (tests, builds) that should cost no tokens. Do short one-off things \
yourself.

Start: invoke_async with an inline `workflow`, a `file` (JSON or YAML), or the `name` of a \
saved workflow (saved workflows are also this server's prompts), plus `inputs`. It returns a \
thread_id at once; an invalid workflow is rejected with every problem listed, nothing runs. \
Pass your own thread_id to make a retry safe (same id, never a second start).

Wait, don't poll: when this host supports it, baton pushes a message when a workflow you \
started finishes, fails or blocks. Otherwise call invoke_stream {thread_id, cursor: \
next_cursor} — it waits and returns when the workflow stops or wait_s passes. Use \
invoke_status for step outputs and errors; workflow_monitor to list workflows and spot stalled \
or orphaned ones.

When a workflow fails or blocks: read the error in invoke_status, fix the cause, then \
invoke_resume (retry the stopped steps; mode skip to skip them; prompt adds guidance to a \
retried agent step; from_step re-runs a step and everything after it). A human step that \
waits (waiting_for in invoke_status) is answered with invoke_resume {step, approve, input}. \
invoke_cancel stops \
one (resumable). workflow_delete removes finished ones.

Each workflow is also the resource baton://workflows/{thread_id}.";

fn thread_of(uri: &str) -> Result<&str, McpError> {
    uri.strip_prefix(WORKFLOW_URI)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            McpError::resource_not_found(
                format!("unknown resource {uri:?}: workflow resources look like {WORKFLOW_URI}<thread_id>"),
                None,
            )
        })
}

fn engine_error(e: EngineError) -> McpError {
    match e {
        EngineError::NotFound { thread_id } => {
            McpError::resource_not_found(format!("no workflow with thread_id {thread_id:?}"), None)
        }
        other => McpError::internal_error(other.to_string(), None),
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BatonServer {
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        match &self.max_protocol {
            Some(max) => std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(max)),
            None => std::borrow::Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS),
        }
    }

    fn get_info(&self) -> ServerConfig {
        let mut capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_resources()
            .enable_tools()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources_subscribe()
            .enable_tasks()
            .build();
        // Claude Code's channel contract: the key's presence registers the listener for
        // `notifications/claude/channel` (the user opts in with `--channels`).
        capabilities
            .experimental
            .get_or_insert_with(Default::default)
            .insert("claude/channel".to_owned(), Default::default());
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("baton", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.session.attach(&ctx.peer);
        self.session.set_log_level(request.level);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let library = self.library.clone();
        tokio::task::spawn_blocking(move || prompts::list(&library))
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let library = self.library.clone();
        tokio::task::spawn_blocking(move || {
            prompts::get(&library, &request.name, request.arguments).map(Into::into)
        })
        .await
        .map_err(|e| McpError::internal_error(e.to_string(), None))?
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let view = self
            .engine
            .monitor(MonitorFilter {
                status: None,
                include_finished: true,
                limit: 100,
            })
            .await
            .map_err(engine_error)?;
        let items = view
            .workflows
            .into_iter()
            .map(|w| {
                let title = w.name.clone().unwrap_or_else(|| w.thread_id.to_string());
                Resource::new(format!("{WORKFLOW_URI}{}", w.thread_id), title)
                    .with_mime_type("application/json")
                    .with_description(format!(
                        "workflow {}: {} ({}/{} steps done)",
                        w.name.as_deref().unwrap_or("-"),
                        w.status,
                        w.progress.done,
                        w.progress.total
                    ))
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(items))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{WORKFLOW_URI}{{thread_id}}"), "workflow")
                .with_mime_type("application/json")
                .with_description("Status of a workflow (the same JSON as invoke_status)"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let id = thread_of(&request.uri)?;
        let view = self
            .engine
            .status(&ThreadId::from(id), 2000)
            .await
            .map_err(engine_error)?;
        let text = serde_json::to_string(&view)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, request.uri.clone()).with_mime_type("application/json"),
        ])
        .into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let id = thread_of(&request.uri)?;
        self.engine
            .status(&ThreadId::from(id), 0)
            .await
            .map_err(engine_error)?;
        self.session.attach(&ctx.peer);
        self.session.subscribe(id);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let id = thread_of(&request.uri)?;
        self.session.unsubscribe(id);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let sink = context.sink().clone();
        let id = sink.id().clone();
        self.session.ensure_watching();
        self.session.add_sink(sink);
        context.cancelled().await;
        self.session.remove_sink(&id);
        Ok(())
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        Ok(GetTaskResult::new(
            tasks::get(&self.engine, &request.task_id).await?,
        ))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tasks::update(&self.engine, &request.task_id, request.input_responses).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tasks::cancel(&self.engine, &request.task_id).await
    }
}

/// Errors of the MCP front-end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("MCP transport failed: {0}")]
    Transport(String),
}

/// Serves MCP on stdin/stdout until stdin closes or `shutdown` fires. The caller owns the
/// lifecycle: it shuts the engine down afterwards (running attempts are interrupted and
/// handed to the next process). With `links` (this process serves HTTP too), tool results
/// carry `dashboard_url` and `events_url`. With `max_protocol`, newer protocol versions are
/// not offered (`2025-11-25` makes Claude Code connect the way its channels need).
pub async fn serve_stdio(
    engine: Engine,
    shutdown: CancellationToken,
    links: Option<Links>,
    max_protocol: Option<ProtocolVersion>,
) -> Result<(), ServeError> {
    let stdin = transport::Stdin::start();
    let serve = async {
        loop {
            let mut server = BatonServer::new(engine.clone(), links.clone());
            server.max_protocol = max_protocol.clone();
            let session = server.session.clone();
            let library = server.library.clone();
            let before = library.fingerprint();
            match server
                .serve(transport::StdioTransport::new(stdin.clone()))
                .await
            {
                Ok(service) => {
                    let watching = CancellationToken::new();
                    tokio::spawn(prompts::watch(
                        library,
                        before,
                        session.clone(),
                        service.peer().clone(),
                        watching.clone(),
                    ));
                    let reason = service.waiting().await;
                    watching.cancel();
                    session.close();
                    tracing::info!(?reason, "MCP session ended");
                    return;
                }
                Err(e) => {
                    session.close();
                    let msg = e.to_string();
                    // stdin closed before a session started: nothing more will come.
                    if msg.contains("closed") || msg.contains("Closed") {
                        tracing::info!(error = %msg, "stdin closed before a session started");
                        return;
                    }
                    tracing::warn!(error = %msg, "client broke the handshake; waiting for a new one");
                }
            }
        }
    };
    tokio::select! {
        () = serve => {}
        () = shutdown.cancelled() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn instructions_fit_in_two_kilobytes_and_name_every_tool() {
        let text = super::INSTRUCTIONS;
        assert!(text.len() <= 2048, "{} bytes", text.len());
        for tool in [
            "invoke_async",
            "invoke_status",
            "invoke_stream",
            "invoke_resume",
            "invoke_cancel",
            "workflow_monitor",
            "workflow_delete",
        ] {
            assert!(text.contains(tool), "instructions do not mention {tool}");
        }
    }
}
