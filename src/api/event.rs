//! Events of a workflow's log: what happened, in order.
//!
//! Invariant: an event's payload is an [`EventData`] — one typed record whose fields each
//! kind fills as documented below — written by the engine and read back by the same type,
//! so no payload is built or read by string key. `seq` increases strictly per workflow.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::string_enum;

string_enum! {
    /// Type of an event in a workflow's log. Stored by [`EventKind::code`]: new kinds are
    /// appended, never inserted or reordered.
    EventKind {
        WorkflowStarted => "workflow_started", StepStarted => "step_started",
        StepProgress => "step_progress", StepRetrying => "step_retrying",
        StepCompleted => "step_completed", StepFailed => "step_failed",
        StepBlocked => "step_blocked", StepSkipped => "step_skipped",
        StepCancelled => "step_cancelled",
        WorkflowCompleted => "workflow_completed", WorkflowFailed => "workflow_failed",
        WorkflowBlocked => "workflow_blocked", WorkflowCancelled => "workflow_cancelled",
        WorkflowInterrupted => "workflow_interrupted", WorkflowResumed => "workflow_resumed",
    }
}

impl EventKind {
    /// Events after which a workflow has stopped (until it is resumed).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::WorkflowCompleted
                | EventKind::WorkflowFailed
                | EventKind::WorkflowBlocked
                | EventKind::WorkflowCancelled
                | EventKind::WorkflowInterrupted
        )
    }

    /// Events that mark one more step done (for progress counting).
    pub fn completes_step(self) -> bool {
        matches!(self, EventKind::StepCompleted | EventKind::StepSkipped)
    }
}

/// Who resumed a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResumedBy {
    /// A user asked (a tool, the CLI, the dashboard).
    User,
    /// A live process took it over from a dead owner.
    Adoption,
}

/// Details of an event. Which fields a kind fills:
/// - `workflow_started`: `step_count`.
/// - `step_started`: `resume_session` when it continues an agent session.
/// - `step_progress`: `message` (e.g. a tool use, `Bash(cargo test)`).
/// - `step_retrying`: `error`, `delay_ms`, `next_attempt`.
/// - `step_completed`: `duration_ms`, `output_preview`, `session_cost_usd`.
/// - `step_failed`: `error`, `attempts`, `reason` (`not retryable`, `retries exhausted`,
///   `crash loop`).
/// - `step_blocked`: `reason`, `permission_denials`; for a human step `question`,
///   `interaction` and `deadline_at`.
/// - `workflow_completed|failed|blocked|cancelled`: `done`, `total`, `error`.
/// - `workflow_interrupted`: `reason`.
/// - `workflow_resumed`: `by`; for a user, `mode`, `from_step`, `steps`; for an adoption,
///   `previous_owner`, `rerun_steps`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_count: Option<i64>,
    /// The iteration a `repeat` group starts or ended in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_preview: Option<String>,
    /// What the agent CLI reported for its session so far (cumulative over resumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The agent CLI's `permission_denials`, as it reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub permission_denials: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<ResumedBy>,
    /// `retry` or `skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_steps: Option<Vec<String>>,
    /// The `when` expression a step was skipped (or failed) by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// The values that expression read: `{steps: {ID: {status, output, attempts}}, inputs:
    /// {NAME: value}, failure: bool}` (outputs cut to 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub values: Option<serde_json::Value>,
    /// A human step's rendered prompt (`step_blocked` while it waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// A human step's kind: `approval`, `input` or `notification`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction: Option<String>,
    /// When a waiting human step's `on_timeout` applies (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<String>,
}

impl EventData {
    pub fn is_empty(&self) -> bool {
        *self == EventData::default()
    }
}

/// An event of a workflow's log, as every front-end shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Event {
    /// Position in the workflow's log; strictly increasing. Pass it back as `cursor`.
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub step_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")]
    pub attempt: Option<i64>,
    /// RFC 3339 UTC.
    pub at: String,
    /// Details of the event (error, duration, message, …), when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "EventData")]
    pub data: Option<EventData>,
}

/// An event to append: its `seq` and time are assigned by the commit that stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub step_id: Option<String>,
    pub attempt: Option<i64>,
    pub data: EventData,
}

impl NewEvent {
    pub fn workflow(kind: EventKind, data: EventData) -> NewEvent {
        NewEvent {
            kind,
            step_id: None,
            attempt: None,
            data,
        }
    }

    pub fn step(kind: EventKind, step: &str, attempt: Option<i64>, data: EventData) -> NewEvent {
        NewEvent {
            kind,
            step_id: Some(step.to_owned()),
            attempt,
            data,
        }
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl Event {
    /// One readable line, e.g. `build: completed in 1.2s` — for progress notifications and
    /// terminal output.
    pub fn describe(&self) -> String {
        use EventKind as K;
        let step = self.step_id.as_deref().unwrap_or("");
        let empty = EventData::default();
        let d = self.data.as_ref().unwrap_or(&empty);
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let attempt = self.attempt.unwrap_or(1);
        match self.kind {
            K::WorkflowStarted => "workflow started".to_owned(),
            K::StepStarted if d.iteration.is_some_and(|k| k > 1) => {
                format!("{step}: iteration {}", d.iteration.unwrap_or_default())
            }
            K::StepStarted if d.total.is_some() => {
                format!("{step}: started, {} instances", d.total.unwrap_or_default())
            }
            K::StepStarted if attempt > 1 => format!("{step}: started (attempt {attempt})"),
            K::StepStarted => format!("{step}: started"),
            K::StepProgress => format!("{step}: {}", text(&d.message)),
            K::StepRetrying => format!(
                "{step}: attempt {attempt} failed ({}); retrying in {:.1}s",
                tail(&text(&d.error), 300),
                d.delay_ms.unwrap_or(0) as f64 / 1000.0
            ),
            K::StepCompleted if d.iteration.is_some() => {
                let k = d.iteration.unwrap_or_default();
                format!(
                    "{step}: completed after {k} iteration{} in {:.1}s",
                    if k == 1 { "" } else { "s" },
                    d.duration_ms.unwrap_or(0) as f64 / 1000.0
                )
            }
            K::StepCompleted => format!(
                "{step}: completed in {:.1}s",
                d.duration_ms.unwrap_or(0) as f64 / 1000.0
            ),
            K::StepFailed => format!("{step}: failed: {}", tail(&text(&d.error), 300)),
            K::StepBlocked if d.question.is_some() => format!(
                "{step}: {}: {}",
                text(&d.reason),
                text(&d.question).chars().take(300).collect::<String>()
            ),
            K::StepBlocked => format!("{step}: blocked: {}", text(&d.reason)),
            K::StepSkipped => format!("{step}: skipped"),
            K::StepCancelled => format!("{step}: cancelled"),
            K::WorkflowCompleted => "workflow completed".to_owned(),
            K::WorkflowFailed => format!("workflow failed: {}", text(&d.error)),
            K::WorkflowBlocked => format!("workflow blocked: {}", text(&d.error)),
            K::WorkflowCancelled => "workflow cancelled".to_owned(),
            K::WorkflowInterrupted => {
                "workflow interrupted (server stopped); it resumes in the next baton process"
                    .to_owned()
            }
            K::WorkflowResumed => match d.by {
                Some(ResumedBy::Adoption) => {
                    "workflow resumed after its previous server died".to_owned()
                }
                _ => "workflow resumed".to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_leaves_unset_fields_out() {
        let d = EventData {
            duration_ms: Some(12),
            output_preview: Some("ok".into()),
            ..Default::default()
        };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"duration_ms": 12, "output_preview": "ok"})
        );
        assert_eq!(serde_json::from_value::<EventData>(json).unwrap(), d);
        let by = EventData {
            by: Some(ResumedBy::Adoption),
            ..Default::default()
        };
        assert_eq!(serde_json::to_value(&by).unwrap()["by"], "adoption");
    }

    #[test]
    fn description_reads_the_typed_payload() {
        let e = Event {
            seq: 3,
            kind: EventKind::StepRetrying,
            step_id: Some("build".into()),
            attempt: Some(1),
            at: String::new(),
            data: Some(EventData {
                error: Some("exit status 1".into()),
                delay_ms: Some(1500),
                ..Default::default()
            }),
        };
        assert_eq!(
            e.describe(),
            "build: attempt 1 failed (exit status 1); retrying in 1.5s"
        );
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }
}
