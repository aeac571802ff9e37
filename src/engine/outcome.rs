//! What an attempt reports: signals while it runs, and its outcome, classified by type so
//! the scheduler never reads error strings.
//!
//! Invariant: user-configured non-retryable patterns are applied in exactly one place,
//! [`Outcome::classify`], at the executor boundary; everything after reads the variant.

use crate::workflow::RetryPolicy;

/// Bytes of stderr quoted in an error message.
pub const STDERR_TAIL: usize = 2000;

/// Something an attempt reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalKind {
    /// The agent session id, known as soon as the CLI's `init` line arrives.
    Session(String),
    /// Any output: the attempt is alive and working.
    Activity,
    /// A human-readable step of progress, e.g. `Bash(cargo test)`.
    Progress(String),
}

/// A signal of attempt `attempt` of step `step_idx`.
#[derive(Debug, Clone)]
pub struct Signal {
    pub step_idx: usize,
    pub attempt: i64,
    pub kind: SignalKind,
}

/// Why an attempt failed; the retry policy reads this, never the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// May succeed if tried again.
    Retryable,
    /// Will fail the same way again (a non-retryable pattern matched, or bad configuration).
    Fatal,
    /// Ran longer than its timeout; retryable.
    TimedOut,
}

/// Facts about an attempt kept whatever its outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptDetail {
    pub exit_code: Option<i32>,
    pub stderr: Option<String>,
    pub session_id: Option<String>,
    pub cost_usd: Option<f64>,
    pub num_turns: Option<i64>,
    pub duration_ms: Option<i64>,
    /// The session could not be resumed (unknown id, other cwd); start a new one next time.
    pub session_unusable: bool,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        output: String,
        detail: AttemptDetail,
    },
    Failed {
        class: FailureClass,
        error: String,
        detail: AttemptDetail,
    },
    /// Needs a person: e.g. the agent was denied permission to use tools.
    Blocked {
        reason: String,
        denials: serde_json::Value,
        detail: AttemptDetail,
    },
    /// Stopped from outside (cancel or shutdown); the scheduler knows which.
    Stopped { detail: AttemptDetail },
}

impl Outcome {
    pub fn detail(&self) -> &AttemptDetail {
        match self {
            Outcome::Succeeded { detail, .. }
            | Outcome::Failed { detail, .. }
            | Outcome::Blocked { detail, .. }
            | Outcome::Stopped { detail } => detail,
        }
    }

    /// Applies the step's non-retryable patterns to a retryable failure.
    pub fn classify(self, policy: &RetryPolicy) -> Outcome {
        match self {
            Outcome::Failed {
                class: FailureClass::Retryable,
                error,
                detail,
            } => {
                let text = match &detail.stderr {
                    Some(tail) => format!("{error}\n{tail}"),
                    None => error.clone(),
                };
                let class = if policy.is_non_retryable(&text) {
                    FailureClass::Fatal
                } else {
                    FailureClass::Retryable
                };
                Outcome::Failed {
                    class,
                    error,
                    detail,
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_retryable_pattern_in_stderr_makes_failure_fatal() {
        let policy = RetryPolicy::default();
        let failed = Outcome::Failed {
            class: FailureClass::Retryable,
            error: "exit status 1".into(),
            detail: AttemptDetail {
                stderr: Some("Error: Unauthorized token".into()),
                ..Default::default()
            },
        };
        assert!(matches!(
            failed.classify(&policy),
            Outcome::Failed {
                class: FailureClass::Fatal,
                ..
            }
        ));
    }

    #[test]
    fn timeouts_stay_retryable() {
        let policy = RetryPolicy::default();
        let failed = Outcome::Failed {
            class: FailureClass::TimedOut,
            error: "forbidden timeout".into(),
            detail: AttemptDetail::default(),
        };
        assert!(matches!(
            failed.classify(&policy),
            Outcome::Failed {
                class: FailureClass::TimedOut,
                ..
            }
        ));
    }
}
