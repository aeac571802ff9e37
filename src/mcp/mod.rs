//! The MCP server: tools over the engine, progress notifications, workflow resources with
//! update notifications, log messages, and the Tasks extension served from the store.
//!
//! Invariant: stdout carries JSON-RPC only (logs go to stderr), and no request can make the
//! server exit or panic: domain refusals are tool results with `isError: true`, malformed
//! requests are JSON-RPC errors, and a client that breaks the handshake gets a fresh one.
//!
//! # Layout
//! - `tools`: the six tools and their argument/result types.
//! - `tasks`: `tasks/get`, `tasks/update`, `tasks/cancel` mapped onto workflows.
//! - `session`: per-session subscriptions and log forwarding.
//! - `elicit`: asking a waiting human step's question through the host (`elicitation/create`).
#![allow(deprecated)] // logging and resources/subscribe are deprecated in 2026-07-28

mod elicit;
mod session;
mod tasks;
mod tools;
mod transport;

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler, ServiceExt,
    handler::server::tool::ToolRouter,
    model::{
        CancelTaskParams, GetTaskParams, GetTaskResult, Implementation,
        ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
        ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
        ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
        SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter,
        UnsubscribeRequestParams, UpdateTaskParams,
    },
    service::{RequestContext, SubscriptionContext},
    tool_handler,
};

use tokio_util::sync::CancellationToken;

use crate::api::{Links, ThreadId};
use crate::engine::{Engine, EngineError, MonitorFilter};
use session::{Session, WORKFLOW_URI};

/// The MCP server over one engine, for one session.
#[derive(Clone)]
pub struct BatonServer {
    engine: Engine,
    /// Links into the HTTP server of this process, when it serves one.
    links: Option<Links>,
    session: Session,
    tool_router: ToolRouter<BatonServer>,
}

impl BatonServer {
    pub fn new(engine: Engine, links: Option<Links>) -> BatonServer {
        BatonServer {
            session: Session::new(engine.clone()),
            engine,
            links,
            tool_router: Self::tool_router(),
        }
    }
}

const INSTRUCTIONS: &str = "baton runs durable multi-step workflows (Claude Code sub-agents, \
commands, shell scripts) in the background. Start one with invoke_async, follow it with \
invoke_stream (pass next_cursor back as cursor), check it with invoke_status, list all with \
workflow_monitor, stop with invoke_cancel, and continue a failed/blocked/cancelled one with \
invoke_resume. Completed steps are checkpointed and never re-run unless you ask. Each workflow \
is also the resource baton://workflows/{thread_id}.";

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
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_resources()
                .enable_tools()
                .enable_resources_subscribe()
                .enable_tasks()
                .build(),
        )
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
/// carry `dashboard_url` and `events_url`.
pub async fn serve_stdio(
    engine: Engine,
    shutdown: CancellationToken,
    links: Option<Links>,
) -> Result<(), ServeError> {
    let stdin = transport::Stdin::start();
    let serve = async {
        loop {
            let server = BatonServer::new(engine.clone(), links.clone());
            let session = server.session.clone();
            match server
                .serve(transport::StdioTransport::new(stdin.clone()))
                .await
            {
                Ok(service) => {
                    let reason = service.waiting().await;
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
