//! The vocabulary every front-end shares: thread ids, statuses, events and the read models
//! (status, monitor). These types are the wire contract of the MCP tools, the CLI's JSON and
//! the HTTP API; they belong to no front-end and hold no behaviour beyond their own rules.
//!
//! Invariant: a status or event kind has one spelling on every surface — the snake_case
//! name below — and a stable numeric code in the store (its declaration position, so new
//! variants are appended, never inserted).

mod event;
mod links;
mod time;
mod view;

pub use event::{Event, EventData, EventKind, NewEvent, ResumedBy, tail};
pub use links::Links;
pub use time::{now_ms, rfc3339};
pub use view::{
    AttemptView, MonitorView, MonitoredWorkflow, Progress, StepView, WaitingFor, WorkflowView,
    is_overdue,
};

use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
            /// Stable numeric code: the position in the declaration (append new variants only).
            pub fn code(self) -> i64 {
                Self::ALL.iter().position(|k| *k == self).unwrap_or(0) as i64
            }
            pub fn from_code(code: i64) -> Option<$name> {
                usize::try_from(code).ok().and_then(|i| Self::ALL.get(i).copied())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;

string_enum! {
    /// Status of a workflow.
    WorkflowStatus {
        Queued => "queued", Running => "running", Blocked => "blocked",
        Completed => "completed", Failed => "failed", Cancelled => "cancelled",
        Interrupted => "interrupted",
    }
}

impl WorkflowStatus {
    /// A status in which no step of the workflow is running or about to run: a follower
    /// that has read every event of a workflow in such a status is done.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            WorkflowStatus::Queued | WorkflowStatus::Running | WorkflowStatus::Interrupted
        )
    }

    /// Finished for good unless a user resumes it: completed, failed or cancelled.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Cancelled
        )
    }
}

string_enum! {
    /// Status of a step.
    StepStatus {
        Pending => "pending", Running => "running", Retrying => "retrying",
        Completed => "completed", Failed => "failed", Blocked => "blocked",
        Skipped => "skipped", Cancelled => "cancelled",
    }
}

impl StepStatus {
    /// Dependents of a step in this status may start; it counts as done in progress.
    pub fn satisfies_deps(self) -> bool {
        matches!(self, StepStatus::Completed | StepStatus::Skipped)
    }

    /// The step has an attempt running or a retry scheduled.
    pub fn is_current(self) -> bool {
        matches!(self, StepStatus::Running | StepStatus::Retrying)
    }
}

string_enum! {
    /// How one attempt ended (`running` while it runs).
    AttemptOutcome {
        Running => "running", Succeeded => "succeeded", Failed => "failed",
        TimedOut => "timed_out", Blocked => "blocked", Cancelled => "cancelled",
        /// The server shut down gracefully while it ran.
        Interrupted => "interrupted",
        /// The server running it died.
        Crashed => "crashed",
    }
}

/// The id clients use for a workflow ("thread id", after LangGraph's checkpointer threads).
/// Cheap to clone; the same value names the workflow in the store, the tools, the CLI, the
/// HTTP API and the Tasks extension (`taskId`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ThreadId(#[schemars(with = "String")] Arc<str>);

/// Longest thread id a client may choose.
pub const MAX_THREAD_ID: usize = 128;

impl ThreadId {
    /// A fresh, time-ordered id (UUID v7), so ids sort by creation.
    pub fn generate() -> ThreadId {
        ThreadId(Arc::from(uuid::Uuid::now_v7().to_string()))
    }

    /// A client-chosen id for a new workflow: 1–128 characters of `[A-Za-z0-9._:-]`.
    pub fn parse_new(id: &str) -> Option<ThreadId> {
        let ok = !id.is_empty()
            && id.len() <= MAX_THREAD_ID
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
        ok.then(|| ThreadId(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ThreadId {
    /// The empty id (names no workflow); a placeholder for builders.
    fn default() -> ThreadId {
        ThreadId(Arc::from(""))
    }
}

impl From<&str> for ThreadId {
    /// Names an existing workflow (lookups accept any text; an unknown id is "not found").
    fn from(s: &str) -> ThreadId {
        ThreadId(Arc::from(s))
    }
}

impl From<String> for ThreadId {
    fn from(s: String) -> ThreadId {
        ThreadId(Arc::from(s))
    }
}

impl std::ops::Deref for ThreadId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ThreadId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_declaration_positions_and_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_code(k.code()), Some(*k));
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(EventKind::WorkflowStarted.code(), 0);
        assert_eq!(EventKind::from_code(-1), None);
    }

    #[test]
    fn thread_ids_are_restricted_to_url_safe_characters() {
        assert!(ThreadId::parse_new("job-1.a:b_c").is_some());
        assert!(ThreadId::parse_new("").is_none());
        assert!(ThreadId::parse_new("a/b").is_some(), "a sub-workflow's id");
        assert!(ThreadId::parse_new("a b").is_none());
        assert!(ThreadId::parse_new(&"x".repeat(129)).is_none());
        assert_eq!(ThreadId::generate().len(), 36);
    }

    #[test]
    fn terminal_and_finished_statuses() {
        use WorkflowStatus as W;
        assert!(W::Blocked.is_terminal() && !W::Blocked.is_finished());
        assert!(!W::Interrupted.is_terminal());
        assert!(W::Cancelled.is_finished());
    }
}
