//! An MCP client that spawns `baton serve`, starts a workflow and prints its progress
//! notifications as they arrive.
//!
//! ```sh
//! cargo build && cargo run --example client -- examples/diamond.json
//! ```
//!
//! The server binary is taken from `BATON_BIN` (default `target/debug/baton`) and uses the
//! database in `BATON_DB` (default: a fresh one in a temp dir).

use std::time::Duration;

use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest, Implementation,
        ProgressNotificationParam, ProtocolVersion, Request, ServerResult,
    },
    service::{NotificationContext, PeerRequestOptions},
    transport::{ConfigureCommandExt, TokioChildProcess},
};
use serde_json::{Value, json};

#[derive(Clone)]
struct Printer;

impl ClientHandler for Printer {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("baton-example-client", "0.1.0"),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        println!(
            "[{:>5.2}/{}] {}",
            p.progress,
            p.total.unwrap_or_default(),
            p.message.unwrap_or_default()
        );
    }
}

fn object(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/diamond.json".into());
    let workflow: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    let bin = std::env::var("BATON_BIN").unwrap_or_else(|_| "target/debug/baton".into());
    let tmp = std::env::temp_dir().join(format!("baton-example-{}.db", std::process::id()));
    let db = std::env::var("BATON_DB").unwrap_or_else(|_| tmp.display().to_string());

    let cmd = tokio::process::Command::new(bin).configure(|c| {
        c.arg("serve").env("BATON_DB", &db).env("RUST_LOG", "warn");
    });
    let client = Printer.serve(TokioChildProcess::new(cmd)?).await?;
    let tools = client.list_all_tools().await?;
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    println!("tools: {}", names.join(", "));

    let started = client
        .call_tool(
            CallToolRequestParams::new("invoke_async")
                .with_arguments(object(json!({ "workflow": workflow }))),
        )
        .await?;
    let thread_id = started
        .structured_content
        .as_ref()
        .and_then(|s| s.get("thread_id"))
        .and_then(Value::as_str)
        .ok_or("invoke_async returned no thread_id")?
        .to_owned();
    println!("thread_id: {thread_id}");

    // invoke_stream sends each event as a progress notification on this call's token.
    let handle = client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(
                CallToolRequestParams::new("invoke_stream")
                    .with_arguments(object(json!({ "thread_id": thread_id, "wait_s": 600 }))),
            )),
            PeerRequestOptions::with_timeout(Duration::from_secs(60)).reset_timeout_on_progress(),
        )
        .await?;
    if let ServerResult::CallToolResult(r) = handle.await_response().await? {
        let status = r.structured_content.unwrap_or_default();
        println!("final status: {}", status["status"]);
    }
    let status = client
        .call_tool(
            CallToolRequestParams::new("invoke_status")
                .with_arguments(object(json!({ "thread_id": thread_id }))),
        )
        .await?;
    for step in status.structured_content.unwrap_or_default()["steps"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!("{}: {} -> {}", step["id"], step["status"], step["output"]);
    }
    client.cancel().await?;
    Ok(())
}
