//! The MCP server: tools over the engine, progress notifications, stdio transport.
//!
//! Invariant: stdout carries JSON-RPC only (logs go to stderr), and no request can make the
//! server exit or panic: domain refusals are tool results with `isError: true`, malformed
//! requests are JSON-RPC errors, and a client that breaks the handshake gets a fresh one.

mod tools;

use rmcp::{
    ServerHandler, ServiceExt,
    handler::server::tool::ToolRouter,
    model::{Implementation, ServerCapabilities, ServerConfig},
    tool_handler,
    transport::stdio,
};

use crate::engine::Engine;

/// The MCP server over one engine.
#[derive(Clone)]
pub struct BatonServer {
    engine: Engine,
    tool_router: ToolRouter<BatonServer>,
}

impl BatonServer {
    pub fn new(engine: Engine) -> BatonServer {
        BatonServer {
            engine,
            tool_router: Self::tool_router(),
        }
    }
}

const INSTRUCTIONS: &str = "baton runs durable multi-step workflows (Claude Code sub-agents, \
commands, shell scripts) in the background. Start one with invoke_async, follow it with \
invoke_stream (pass next_cursor back as cursor), check it with invoke_status, list all with \
workflow_monitor, stop with invoke_cancel, and continue a failed/blocked/cancelled one with \
invoke_resume. Completed steps are checkpointed and never re-run unless you ask.";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BatonServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("baton", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// Errors of the MCP front-end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    #[error("MCP transport failed: {0}")]
    Transport(String),
}

/// Serves MCP on stdin/stdout until stdin closes or SIGTERM/SIGINT arrives, then shuts the
/// engine down (running attempts are interrupted and handed to the next process).
pub async fn serve_stdio(engine: Engine) -> Result<(), McpError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| McpError::Transport(format!("cannot watch SIGTERM: {e}")))?;
    let serve = async {
        loop {
            match BatonServer::new(engine.clone()).serve(stdio()).await {
                Ok(service) => {
                    let reason = service.waiting().await;
                    tracing::info!(?reason, "MCP session ended");
                    return;
                }
                Err(e) => {
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
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    engine.shutdown().await;
    engine.store().close();
    Ok(())
}
