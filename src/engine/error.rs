//! Errors of the engine, structured so that each front-end words its own refusal (a tool
//! result that names the next tool to call, a CLI message that names the next command, an
//! HTTP status). The texts here name no front-end.

use crate::api::{StepStatus, ThreadId, WorkflowStatus};
use crate::store::StoreError;
use crate::workflow::Problems;

/// Errors of the engine, as a caller can act on them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The workflow definition or inputs are invalid; nothing was stored.
    #[error("invalid workflow:\n{0}")]
    Invalid(Problems),
    /// The request itself is malformed (e.g. both an inline workflow and a file).
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid thread_id {thread_id:?}: use 1-128 characters from A-Z a-z 0-9 - _ . : /")]
    InvalidThreadId { thread_id: String },
    #[error("unknown thread_id {thread_id:?}: no workflow with this id exists in this store")]
    NotFound { thread_id: ThreadId },
    #[error("{step:?} is not a step of this workflow; its steps are: {}", known.join(", "))]
    UnknownStep { step: String, known: Vec<String> },
    /// The workflow runs right now (here or in another live process).
    #[error("workflow {thread_id} is {status} right now; wait for it to stop or cancel it first")]
    Busy {
        thread_id: ThreadId,
        status: WorkflowStatus,
    },
    #[error(
        "workflow {thread_id} already completed; give a step to re-run it and everything downstream of it"
    )]
    AlreadyCompleted { thread_id: ThreadId },
    #[error(
        "workflow {thread_id} has no failed, blocked or cancelled steps to resume (status {status})"
    )]
    NothingToResume {
        thread_id: ThreadId,
        status: WorkflowStatus,
    },
    /// An answer was given to a step that does not wait for one.
    #[error("step {step:?} of workflow {thread_id} is not waiting for an answer (it is {status})")]
    NotWaiting {
        thread_id: ThreadId,
        step: String,
        status: StepStatus,
    },
    /// Another process changed the workflow between the check and the change.
    #[error(
        "workflow {thread_id} was changed by another process meanwhile; check its status and try again"
    )]
    Contended { thread_id: ThreadId },
    /// A cancel was handed to the owning process, which has not confirmed it yet.
    #[error(
        "cancel of {thread_id} was requested, but its owning process has not confirmed yet; check its status shortly"
    )]
    CancelPending { thread_id: ThreadId },
    /// The workflow could not be started now (shutting down, or a concurrent start).
    #[error(
        "workflow {thread_id} could not be started (this baton process is shutting down, or the same thread_id is being started concurrently); try again"
    )]
    NotStarted { thread_id: ThreadId },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
