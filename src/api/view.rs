//! Read models: the status of one workflow and the monitor's list, as every front-end
//! returns them (`invoke_status`, `workflow_monitor`, `baton status`, `GET /api/...`).
//!
//! Invariant: views are built from the store alone (see the engine's view builder), so every
//! process sharing the database answers the same.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AttemptOutcome, StepStatus, ThreadId, WorkflowStatus};

/// Completed (or skipped) steps out of all steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Progress {
    pub done: i64,
    pub total: i64,
}

/// One attempt of a step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AttemptView {
    pub number: i64,
    /// `running`, `succeeded`, `failed`, `timed_out`, `blocked`, `cancelled`, `interrupted`
    /// (server shut down) or `crashed` (server died).
    pub outcome: AttemptOutcome,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")]
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")]
    pub exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")]
    pub cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")]
    pub num_turns: Option<i64>,
}

/// The open question of a human step that waits for an answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct WaitingFor {
    /// The step that asks.
    pub step: String,
    /// `approval` (approve or deny) or `input` (a text answer).
    pub kind: String,
    /// The question, rendered.
    pub prompt: String,
    /// When the step began to wait.
    pub since: String,
    /// When `on_timeout` applies; absent: it waits until answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub deadline: Option<String>,
    /// `fail`, `approve` or `wait`.
    pub on_timeout: String,
    /// An answer was recorded and is being applied.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub answered: bool,
}

/// One step's state.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StepView {
    pub id: String,
    pub status: StepStatus,
    /// Attempts started so far.
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")]
    pub duration_ms: Option<i64>,
    /// The step's output (a preview if long: see `output_truncated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub output_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub last_activity_at: Option<String>,
    pub attempt_history: Vec<AttemptView>,
    /// The steps this one waits for (the DAG's edges, for drawing it).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub deps: Vec<String>,
    /// A human step's open question, while it waits.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schemars(with = "WaitingFor")]
    pub waiting_for: Option<WaitingFor>,
}

/// Status of one workflow, as `invoke_status` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowView {
    pub thread_id: ThreadId,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub name: Option<String>,
    pub status: WorkflowStatus,
    pub progress: Progress,
    /// Steps running or waiting to retry.
    pub current_steps: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub error: Option<String>,
    /// Sum of agent costs over all attempts.
    pub total_cost_usd: f64,
    /// The cost budget in force (`defaults.max_cost_usd`, or a resume's higher one).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")]
    pub max_cost_usd: Option<f64>,
    /// Owner id of the process running it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub owner: Option<String>,
    pub inputs: BTreeMap<String, String>,
    pub steps: Vec<StepView>,
    /// The questions of the human steps that wait for an answer (answer with
    /// `invoke_resume {thread_id, step, approve, input}`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub waiting_for: Vec<WaitingFor>,
}

/// One workflow in the monitor.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MonitoredWorkflow {
    pub thread_id: ThreadId,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub name: Option<String>,
    pub status: WorkflowStatus,
    pub progress: Progress,
    pub current_steps: Vec<String>,
    pub started_at: String,
    pub last_activity_at: String,
    /// Seconds since the last sign of life (output line, step boundary or lease renewal).
    pub heartbeat_age_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub owner: Option<String>,
    /// `stalled` (a running step silent longer than its stall threshold), `orphaned` (its
    /// owner is gone and no process adopted it yet), `overdue` (running much longer than its
    /// past runs).
    pub flags: Vec<String>,
}

/// The monitor's answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MonitorView {
    pub workflows: Vec<MonitoredWorkflow>,
    /// Number of workflows in the store per status.
    pub counts: BTreeMap<String, i64>,
}

/// A workflow is overdue when it has run more than twice as long as its past runs took, and
/// at least ten seconds longer (so short workflows do not flap).
pub fn is_overdue(elapsed_ms: i64, estimate_ms: i64) -> bool {
    elapsed_ms > 2 * estimate_ms && elapsed_ms - estimate_ms > 10_000
}

#[cfg(test)]
mod tests {
    use super::is_overdue;

    #[test]
    fn overdue_needs_twice_the_history_and_ten_seconds_more() {
        assert!(!is_overdue(1_500, 1_000));
        assert!(!is_overdue(9_000, 1_000), "short workflows do not flap");
        assert!(is_overdue(12_000, 1_000));
        assert!(!is_overdue(100_000, 60_000));
        assert!(is_overdue(130_000, 60_000));
    }
}
