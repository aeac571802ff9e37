//! Arguments and results of the tools: the JSON Schemas a model reads come from these
//! types and their doc comments.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{Event, ThreadId, WorkflowStatus, WorkflowView};
use crate::engine::ResumeMode;
use crate::workflow::AgentOptions;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InvokeAsyncArgs {
    /// The workflow definition, inline: `{"name": ..., "steps": [{"id": "plan", "prompt": "..."},
    /// {"id": "test", "deps": ["plan"], "run": ["cargo", "test"]}]}`. Each step has exactly one
    /// of `prompt` (a Claude Code sub-agent), `run` (argv, no shell), `shell` (sh -c) or
    /// `human` (a question for a person: `{"prompt": "Merge?", "kind": "approval" | "input" |
    /// "notification", "timeout_s": 3600, "on_timeout": "fail" | "approve" | "wait"}`).
    /// Reference earlier results with `{step_id.output}` and inputs with `{inputs.NAME}`.
    /// Run `baton schema` for the full format. Give this, `file` or `name`.
    #[serde(default)]
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub workflow: Option<Value>,
    /// Path of a workflow file, JSON or YAML (`.yaml`/`.yml`), relative to the server's
    /// working directory. Give this, `workflow` or `name`.
    #[serde(default)]
    #[schemars(with = "String")]
    pub file: Option<String>,
    /// Name of a saved workflow (a file in `.baton/workflows/` of the server's working
    /// directory or in `~/.config/baton/workflows/`; they are also listed as prompts).
    #[serde(default)]
    #[schemars(with = "String")]
    pub name: Option<String>,
    /// Values for `{inputs.NAME}` placeholders.
    #[serde(default)]
    pub inputs: BTreeMap<String, Value>,
    /// Idempotency key. Calling again with the same thread_id returns the existing workflow
    /// instead of starting a second one. Omit to get a fresh id.
    #[serde(default)]
    #[schemars(with = "String")]
    pub thread_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InvokeAsyncResult {
    /// Use this id with invoke_status, invoke_stream, invoke_resume and invoke_cancel.
    pub thread_id: ThreadId,
    pub status: WorkflowStatus,
    pub step_count: i64,
    /// Expected wall time from past runs of a workflow with the same name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")]
    pub estimated_duration_s: Option<f64>,
    /// False if this thread_id already existed; nothing new was started.
    pub created: bool,
    pub next: String,
    #[serde(flatten)]
    pub links: LinkFields,
}

/// Where to watch a workflow in a browser or with an SSE client; present when the server
/// also serves HTTP (`baton serve --http`). Both URLs carry the access token.
#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct LinkFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub dashboard_url: Option<String>,
    /// Server-sent events of this workflow (`id:` is the event's seq; send `Last-Event-ID`
    /// to resume). The event schema is at /api/schema/events.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub events_url: Option<String>,
}

/// `invoke_status`'s result: the workflow's status and, with HTTP on, its links.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InvokeStatusResult {
    #[serde(flatten)]
    pub view: WorkflowView,
    #[serde(flatten)]
    pub links: LinkFields,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ThreadArgs {
    /// The workflow's thread_id, as returned by invoke_async.
    pub thread_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InvokeStatusArgs {
    /// The workflow's thread_id, as returned by invoke_async.
    pub thread_id: String,
    /// Characters of each step's output to include (default 2000; 0 for none).
    #[serde(default)]
    #[schemars(with = "usize")]
    pub output_chars: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InvokeStreamArgs {
    /// The workflow's thread_id, as returned by invoke_async.
    pub thread_id: String,
    /// Return events after this one: pass the previous call's `next_cursor`. Omit or 0 for
    /// the whole history.
    #[serde(default)]
    #[schemars(with = "i64")]
    pub cursor: Option<i64>,
    /// Seconds to wait for the workflow to finish before returning what happened so far
    /// (default 60, at most 1500).
    #[serde(default)]
    #[schemars(with = "f64")]
    pub wait_s: Option<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InvokeStreamResult {
    pub thread_id: ThreadId,
    pub status: WorkflowStatus,
    /// True when the workflow has stopped (completed, failed, blocked or cancelled).
    pub done: bool,
    /// Pass as `cursor` to continue without missing an event.
    pub next_cursor: i64,
    pub events: Vec<Event>,
    #[serde(flatten)]
    pub links: LinkFields,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InvokeResumeArgs {
    /// The workflow's thread_id.
    pub thread_id: String,
    /// Re-run this step and everything downstream of it, even if they completed. Omit to
    /// continue from the checkpoint (only the failed, blocked or cancelled steps run again).
    #[serde(default)]
    #[schemars(with = "String")]
    pub from_step: Option<String>,
    /// `retry` (default) runs the stopped steps again; `skip` marks them skipped and lets
    /// their dependents run (a skipped step's output is empty).
    #[serde(default)]
    pub mode: ResumeMode,
    /// Guidance for a retried agent step: sent into its resumed Claude session, e.g. "the
    /// tests need a running database; start it first".
    #[serde(default)]
    #[schemars(with = "String")]
    pub prompt: Option<String>,
    /// Agent-option overrides for the retried agent steps, e.g.
    /// `{"permission_mode": "acceptEdits"}` to answer a permission block.
    #[serde(default)]
    #[schemars(with = "AgentOptions")]
    pub agent: Option<AgentOptions>,
    /// A higher cost budget (USD) for the workflow, to continue one blocked by its
    /// `max_cost_usd` (reason `budget`).
    #[serde(default)]
    #[schemars(with = "f64")]
    pub max_cost_usd: Option<f64>,
    /// Answer the human step with this id (one listed in `waiting_for` of invoke_status)
    /// instead of resuming: give `approve` and/or `input`.
    #[serde(default)]
    #[schemars(with = "String")]
    pub step: Option<String>,
    /// With `step`: approve (`true`: the step's output is `approved`) or deny (`false`: the
    /// step fails). May be left out when `input` is given.
    #[serde(default)]
    #[schemars(with = "bool")]
    pub approve: Option<bool>,
    /// With `step`: the text an `input` step asks for (it becomes the step's output), or a
    /// comment on an approval or denial.
    #[serde(default)]
    #[schemars(with = "String")]
    pub input: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ControlResult {
    pub thread_id: ThreadId,
    pub status: WorkflowStatus,
    pub next: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WorkflowMonitorArgs {
    /// Only workflows in this status.
    #[serde(default)]
    #[schemars(with = "WorkflowStatus")]
    pub status: Option<WorkflowStatus>,
    /// Include completed, failed and cancelled workflows (default: only active and blocked).
    #[serde(default)]
    pub include_finished: bool,
    /// Most workflows to list, newest first (default 50).
    #[serde(default)]
    #[schemars(with = "i64")]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WorkflowDeleteArgs {
    /// Delete this one workflow (any stopped status; a queued or running one is refused).
    #[serde(default)]
    #[schemars(with = "String")]
    pub thread_id: Option<String>,
    /// Delete every finished workflow (completed, failed or cancelled) that finished at least
    /// this many days ago (0: all of them). Blocked, interrupted, queued and running workflows
    /// are never deleted this way.
    #[serde(default)]
    #[schemars(with = "f64")]
    pub older_than_days: Option<f64>,
    /// With `older_than_days`: only workflows in this finished status.
    #[serde(default)]
    #[schemars(with = "WorkflowStatus")]
    pub status: Option<WorkflowStatus>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowDeleteResult {
    /// How many workflows were deleted, with their steps, attempts, output and events.
    pub deleted: u64,
    pub next: String,
}
