//! Human steps in the scheduler: asking (the step turns `blocked` with its open question
//! stored on its row), applying a recorded answer, applying a deadline, and parking a
//! workflow that has nothing left to do but wait for a deadline.
//!
//! Invariant: the question and its deadline are stored in the change set that makes the step
//! wait, so after any restart the step waits for the same question until the same moment;
//! an answer or a timeout settles the step once, in one change set that also clears the
//! recorded answer; a denial fails the step for good (no retry).

use serde::{Deserialize, Serialize};

use super::Scheduler;
use crate::api::{EventData, EventKind, NewEvent, StepStatus, WorkflowStatus, rfc3339, tail};
use crate::store::{Changes, StepRow};
use crate::workflow::{Action, Human, HumanKind, OnTimeout};

/// The open question of a waiting human step, as stored on its row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(in crate::engine) struct Waiting {
    pub kind: HumanKind,
    /// The rendered prompt.
    pub prompt: String,
    /// When the wait began (ms).
    pub since: i64,
    /// When `on_timeout` applies (ms); `None`: waits until answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    pub on_timeout: OnTimeout,
}

impl Waiting {
    /// The open question stored on `row`, if it is waiting.
    pub(in crate::engine) fn of(row: &StepRow) -> Option<Waiting> {
        if row.status != StepStatus::Blocked {
            return None;
        }
        serde_json::from_str(row.waiting()?).ok()
    }
}

/// The view of the open question on `row`, if it waits.
pub(in crate::engine) fn waiting_for(row: &StepRow) -> Option<crate::api::WaitingFor> {
    let w = Waiting::of(row)?;
    Some(crate::api::WaitingFor {
        step: row.step_id.clone(),
        kind: w.kind.as_str().to_owned(),
        prompt: w.prompt,
        since: rfc3339(w.since),
        deadline: w.deadline.map(rfc3339),
        on_timeout: match w.on_timeout {
            OnTimeout::Approve => "approve",
            OnTimeout::Wait => "wait",
            _ => "fail",
        }
        .to_owned(),
        answered: row.answer().is_some(),
    })
}

/// An answer to an open question, as recorded on the step's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(in crate::engine) struct Answer {
    pub approve: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
}

impl Answer {
    pub(in crate::engine) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"approve\":false}".to_owned())
    }
}

/// How a waiting step ends.
enum End {
    Completed { output: String, message: String },
    Failed { error: String, reason: &'static str },
}

impl Scheduler {
    /// The human step of row `idx`, if it is one.
    pub(super) fn human_of(&self, idx: usize) -> Option<&Human> {
        match &self.step_def(idx)?.action {
            Action::Human(h) => Some(h),
            _ => None,
        }
    }

    /// Asks human step `idx` (its deps settled and its condition held): a notification is
    /// recorded and completes at once; a question makes the step wait, blocked, with the
    /// rendered prompt and its deadline stored.
    pub(super) fn ask(&mut self, ch: &mut Changes, idx: usize, now: i64) {
        let Some(human) = self.human_of(idx).cloned() else {
            return;
        };
        let prompt = self.render(idx, &human.prompt);
        let row = &mut self.steps[idx];
        row.started_at = Some(now);
        row.last_activity_at = Some(now);
        if human.kind == HumanKind::Notification {
            row.status = StepStatus::Completed;
            row.finished_at = Some(now);
            row.error = None;
            row.output = Some(prompt.clone());
            ch.step(row);
            ch.event(NewEvent::step(
                EventKind::StepCompleted,
                &row.step_id,
                None,
                EventData {
                    message: Some(prompt.clone()),
                    interaction: Some(human.kind.as_str().to_owned()),
                    output_preview: Some(prompt.chars().take(200).collect()),
                    duration_ms: Some(0),
                    ..Default::default()
                },
            ));
            return;
        }
        let waiting = Waiting {
            kind: human.kind,
            prompt: prompt.clone(),
            since: now,
            deadline: human.deadline(now),
            timeout_s: human.timeout_s,
            on_timeout: human.on_timeout,
        };
        row.status = StepStatus::Blocked;
        row.finished_at = None;
        row.output = None;
        row.error = Some(format!(
            "waiting for {}: {}",
            human.kind.as_str(),
            tail(&prompt, 500)
        ));
        let waiting_json = serde_json::to_string(&waiting).ok();
        row.edit_extra(|x| {
            x.answer = None;
            x.waiting = waiting_json;
        });
        ch.step(row);
        ch.event(NewEvent::step(
            EventKind::StepBlocked,
            &row.step_id,
            None,
            EventData {
                reason: Some(format!("waiting for {}", human.kind.as_str())),
                question: Some(prompt),
                interaction: Some(human.kind.as_str().to_owned()),
                deadline_at: waiting.deadline.map(rfc3339),
                ..Default::default()
            },
        ));
    }

    /// Records an answer read from the store for a waiting step (applied by the next
    /// [`Scheduler::settle_humans`]). False if the step is not waiting.
    pub(in crate::engine) fn set_answer(&mut self, step_id: &str, answer: &str) -> bool {
        let Some(&idx) = self.index.get(step_id) else {
            return false;
        };
        let row = &mut self.steps[idx];
        if Waiting::of(row).is_none() {
            return false;
        }
        row.edit_extra(|x| x.answer = Some(answer.to_owned()));
        true
    }

    /// Settles the waiting steps that have an answer, or whose deadline passed by `now`.
    /// Returns whether any settled.
    pub(super) fn settle_humans(&mut self, ch: &mut Changes, now: i64) -> bool {
        let mut settled = false;
        for idx in 0..self.steps.len() {
            let Some(waiting) = Waiting::of(&self.steps[idx]) else {
                continue;
            };
            let answer = self.steps[idx]
                .answer()
                .and_then(|a| serde_json::from_str::<Answer>(a).ok());
            let end = match answer {
                Some(a) => answered(&waiting, a),
                None => match waiting.deadline {
                    Some(d) if d <= now => timed_out(&waiting),
                    _ => continue,
                },
            };
            self.end_wait(ch, idx, end, now);
            settled = true;
        }
        if settled && self.status == WorkflowStatus::Blocked {
            // A parked workflow goes on: it is running again.
            self.status = WorkflowStatus::Running;
            ch.set_status(WorkflowStatus::Running, None, false);
        }
        settled
    }

    fn end_wait(&mut self, ch: &mut Changes, idx: usize, end: End, now: i64) {
        let row = &mut self.steps[idx];
        row.edit_extra(|x| x.answer = None);
        row.finished_at = Some(now);
        let duration_ms = Some(now - row.started_at.unwrap_or(now));
        match end {
            End::Completed { output, message } => {
                row.status = StepStatus::Completed;
                row.error = None;
                let preview: String = output.chars().take(200).collect();
                row.output = Some(output);
                ch.step(row);
                ch.event(NewEvent::step(
                    EventKind::StepCompleted,
                    &row.step_id,
                    None,
                    EventData {
                        duration_ms,
                        message: Some(message),
                        output_preview: (!preview.is_empty()).then_some(preview),
                        ..Default::default()
                    },
                ));
            }
            End::Failed { error, reason } => {
                row.status = StepStatus::Failed;
                row.error = Some(error.clone());
                ch.step(row);
                ch.event(NewEvent::step(
                    EventKind::StepFailed,
                    &row.step_id,
                    None,
                    EventData {
                        error: Some(error),
                        reason: Some(reason.to_owned()),
                        attempts: Some(row.attempts),
                        ..Default::default()
                    },
                ));
            }
        }
    }

    /// When the earliest deadline of a waiting step is (ms).
    pub(in crate::engine) fn next_deadline(&self) -> Option<i64> {
        self.steps
            .iter()
            .filter(|r| r.answer().is_none())
            .filter_map(|r| Waiting::of(r)?.deadline)
            .min()
    }

    /// Whether a step waits for a human answer.
    pub(in crate::engine) fn is_waiting(&self) -> bool {
        self.steps.iter().any(|r| Waiting::of(r).is_some())
    }

    /// Nothing runs or can start, and a human step waits: the workflow becomes `blocked`
    /// but stays owned, so its driver applies the answer the moment it is recorded (by any
    /// process) and the deadline when it comes. Returns false (the caller finishes the
    /// workflow instead) when nothing waits or a failure decides the outcome already.
    pub(in crate::engine) fn park(&mut self, ch: &mut Changes) -> bool {
        if !self.is_waiting() {
            return false;
        }
        let failed = self
            .steps
            .iter()
            .any(|s| s.status == StepStatus::Failed && !self.is_done(s));
        if failed {
            return false;
        }
        if self.status == WorkflowStatus::Blocked {
            return true;
        }
        let questions: Vec<String> = self
            .steps
            .iter()
            .filter(|s| Waiting::of(s).is_some())
            .map(|s| {
                format!(
                    "step {} is blocked: {}",
                    s.step_id,
                    s.error.as_deref().unwrap_or("waiting for a human")
                )
            })
            .collect();
        let error = questions.join("; ");
        self.status = WorkflowStatus::Blocked;
        ch.set_status(WorkflowStatus::Blocked, Some(error.clone()), false);
        let done = self
            .steps
            .iter()
            .filter(|s| s.status.satisfies_deps())
            .count() as i64;
        ch.event(NewEvent::workflow(
            EventKind::WorkflowBlocked,
            EventData {
                error: Some(error),
                done: Some(done),
                total: Some(self.steps.len() as i64),
                ..Default::default()
            },
        ));
        true
    }
}

fn answered(waiting: &Waiting, a: Answer) -> End {
    let input = a.input.filter(|i| !i.is_empty());
    if !a.approve {
        return End::Failed {
            error: match input {
                Some(why) => format!("denied: {why}"),
                None => "denied".to_owned(),
            },
            reason: "denied",
        };
    }
    match waiting.kind {
        HumanKind::Input => End::Completed {
            message: "answered".to_owned(),
            output: input.unwrap_or_default(),
        },
        _ => End::Completed {
            message: match input {
                Some(comment) => format!("approved: {comment}"),
                None => "approved".to_owned(),
            },
            output: "approved".to_owned(),
        },
    }
}

fn timed_out(waiting: &Waiting) -> End {
    let after = waiting
        .timeout_s
        .map(|s| format!(" within {s}s"))
        .unwrap_or_default();
    match waiting.on_timeout {
        OnTimeout::Approve => End::Completed {
            message: format!("no answer{after}: approved (on_timeout: approve)"),
            output: if waiting.kind == HumanKind::Input {
                String::new()
            } else {
                "approved".to_owned()
            },
        },
        _ => End::Failed {
            error: format!("no answer{after} (on_timeout: fail)"),
            reason: "timed out",
        },
    }
}
