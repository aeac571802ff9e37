//! Human steps: a question for a person (`approval`, `input`) or a message to them
//! (`notification`), as written (baton's `human` object and Claude Studio's `type: "human"`)
//! and as resolved.
//!
//! Invariant: a resolved [`Human`] always has a non-empty prompt template, and its timeout
//! policy is explicit: `timeout_s: None` waits until answered, whatever `on_timeout` says.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::workflow::problem::Problem;
use crate::workflow::template::Template;

/// What a human step asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HumanKind {
    /// A yes/no decision: approved → output `approved`; denied → the step fails.
    #[default]
    Approval,
    /// A text answer, which becomes the step's output.
    Input,
    /// A message recorded for the human; the workflow continues at once.
    Notification,
}

impl HumanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approval => "approval",
            Self::Input => "input",
            Self::Notification => "notification",
        }
    }
}

/// What happens when nobody answers within `timeout_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OnTimeout {
    /// The step fails (not retryable).
    #[default]
    Fail,
    /// The step completes as if approved (an `input` step with empty text).
    Approve,
    /// Nothing: the step keeps waiting (the timeout is informational).
    Wait,
}

/// A human step as written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHuman {
    /// The question or message (a template: `{inputs.NAME}`, `{step.output}`).
    #[serde(default)]
    pub prompt: Option<String>,
    /// `approval` (default), `input` or `notification`.
    #[serde(default)]
    pub kind: Option<HumanKind>,
    /// Seconds to wait for an answer; without it the step waits until answered.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// After `timeout_s`: `fail` (default), `approve` or `wait`.
    #[serde(default)]
    pub on_timeout: Option<OnTimeout>,
}

/// A resolved human step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Human {
    pub prompt: Template,
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: HumanKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_timeout: OnTimeout,
}

impl Human {
    /// The wait's deadline (ms) for a wait that began at `since`, if the timeout acts.
    pub fn deadline(&self, since: i64) -> Option<i64> {
        let s = self.timeout_s?;
        (self.on_timeout != OnTimeout::Wait && self.kind != HumanKind::Notification).then(|| {
            since.saturating_add(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
        })
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Seconds Claude Studio waits when a human step gives no `timeoutSeconds`.
pub const STUDIO_DEFAULT_TIMEOUT_S: u64 = 3600;

/// Claude Studio's human-step fields, as read from a `type: "human"` step.
#[derive(Debug, Default)]
pub struct StudioHuman {
    pub prompt: Option<String>,
    pub approval_required: Option<bool>,
    pub interaction_type: Option<String>,
    pub timeout_behavior: Option<String>,
    pub timeout_seconds: Option<u64>,
}

/// Maps Studio's `type: "human"` onto a [`RawHuman`]: `interactionType` is the kind
/// (`approvalRequired: true` without one means approval, `false` a notification),
/// `timeoutBehavior` `fail | auto-approve | infinite` is `on_timeout` `fail | approve | wait`,
/// and `timeoutSeconds` defaults to Studio's 3600.
pub fn from_studio(s: StudioHuman, step: &str, problems: &mut Vec<Problem>) -> RawHuman {
    let kind = match s.interaction_type.as_deref() {
        Some("approval") => HumanKind::Approval,
        Some("input") => HumanKind::Input,
        Some("notification") => HumanKind::Notification,
        Some(other) => {
            problems.push(Problem::step(
                step,
                "interactionType",
                format!(
                    "unknown interaction type {other:?}; expected approval, input or notification"
                ),
            ));
            HumanKind::Approval
        }
        None if s.approval_required == Some(false) => HumanKind::Notification,
        None => HumanKind::Approval,
    };
    let on_timeout = match s.timeout_behavior.as_deref() {
        None | Some("fail") => OnTimeout::Fail,
        Some("auto-approve") => OnTimeout::Approve,
        Some("infinite") => OnTimeout::Wait,
        Some(other) => {
            problems.push(Problem::step(
                step,
                "timeoutBehavior",
                format!(
                    "unknown timeout behavior {other:?}; expected fail, auto-approve or infinite"
                ),
            ));
            OnTimeout::Fail
        }
    };
    RawHuman {
        prompt: s.prompt,
        kind: Some(kind),
        timeout_s: Some(s.timeout_seconds.unwrap_or(STUDIO_DEFAULT_TIMEOUT_S)),
        on_timeout: Some(on_timeout),
    }
}

/// Resolves a written human step; problems name `human.FIELD`.
pub fn resolve(raw: &RawHuman, step: &str, problems: &mut Vec<Problem>) -> Human {
    let text = raw.prompt.as_deref().unwrap_or_default();
    let prompt = if text.trim().is_empty() {
        problems.push(Problem::step(
            step,
            "human.prompt",
            "a human step needs a prompt: the question or message shown to the person",
        ));
        Template::default()
    } else if text.contains('\0') {
        problems.push(Problem::step(step, "human.prompt", "contains a NUL byte"));
        Template::default()
    } else {
        match Template::parse(text) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::step(step, "human.prompt", e));
                Template::default()
            }
        }
    };
    if raw.timeout_s == Some(0) {
        problems.push(Problem::step(
            step,
            "human.timeout_s",
            "must be at least 1 second (omit it to wait until answered)",
        ));
    }
    Human {
        prompt,
        kind: raw.kind.unwrap_or_default(),
        timeout_s: raw.timeout_s,
        on_timeout: raw.on_timeout.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn studio_timeout_behaviours_map_onto_on_timeout() {
        let mut problems = Vec::new();
        let h = from_studio(
            StudioHuman {
                prompt: Some("ok?".into()),
                timeout_behavior: Some("auto-approve".into()),
                ..Default::default()
            },
            "ask",
            &mut problems,
        );
        assert_eq!(h.on_timeout, Some(OnTimeout::Approve));
        assert_eq!(h.timeout_s, Some(STUDIO_DEFAULT_TIMEOUT_S));
        assert_eq!(h.kind, Some(HumanKind::Approval));
        let n = from_studio(
            StudioHuman {
                approval_required: Some(false),
                timeout_behavior: Some("infinite".into()),
                ..Default::default()
            },
            "tell",
            &mut problems,
        );
        assert_eq!(n.kind, Some(HumanKind::Notification));
        assert_eq!(n.on_timeout, Some(OnTimeout::Wait));
        assert!(problems.is_empty(), "{problems:?}");
        from_studio(
            StudioHuman {
                timeout_behavior: Some("never".into()),
                ..Default::default()
            },
            "bad",
            &mut problems,
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "timeoutBehavior");
    }

    #[test]
    fn deadline_only_when_the_timeout_acts() {
        let mut h = Human {
            prompt: Template::default(),
            kind: HumanKind::Approval,
            timeout_s: Some(60),
            on_timeout: OnTimeout::Fail,
        };
        assert_eq!(h.deadline(1_000), Some(61_000));
        h.on_timeout = OnTimeout::Wait;
        assert_eq!(h.deadline(1_000), None);
        h.on_timeout = OnTimeout::Approve;
        h.timeout_s = None;
        assert_eq!(h.deadline(1_000), None);
    }

    #[test]
    fn a_human_step_without_a_prompt_names_the_field() {
        let mut problems = Vec::new();
        resolve(&RawHuman::default(), "ship", &mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].step.as_deref(), Some("ship"));
        assert_eq!(problems[0].field, "human.prompt");
    }
}
