//! Answering a waiting human step, from any front-end and any process.
//!
//! Invariant: an answer is written once, to the waiting step's row, and applied by whoever
//! drives the workflow — so it works whether the workflow is driven here, by another live
//! process, by nobody (blocked and unowned: the answer is recorded in the same transition
//! that takes the lease and restarts it), or by a dead owner (the adopter applies it). A
//! rejected answer changes nothing.

use std::time::Duration;

use super::scheduler::{Answer, Waiting};
use super::{DriverInit, Engine, EngineError, Result};
use crate::api::{EventData, EventKind, NewEvent, ResumedBy, ThreadId, WorkflowStatus};
use crate::store::{Changes, Claim, StoreError};
use crate::workflow::HumanKind;

/// An answer to a human step.
#[derive(Debug, Clone, Default)]
pub struct AnswerRequest {
    pub thread_id: ThreadId,
    pub step: String,
    /// Approve (`true`) or deny (`false`). May be left out when `input` is given (then it
    /// means `true`).
    pub approve: Option<bool>,
    /// The text an `input` step asks for (a comment on an approval or a denial).
    pub input: Option<String>,
}

impl Engine {
    /// Answers the open question of a waiting human step. Returns the workflow's status
    /// after the answer was recorded (`running`: it goes on).
    pub async fn answer(&self, req: AnswerRequest) -> Result<WorkflowStatus> {
        // The owner may release the workflow (a shutdown) or another process take it over
        // between the read and the write: read again and take the other path.
        for _ in 0..5 {
            if let Some(status) = self.answer_once(&req).await? {
                return Ok(status);
            }
        }
        Err(EngineError::Contended {
            thread_id: req.thread_id,
        })
    }

    /// One try at [`Engine::answer`]; `None`: the workflow changed hands meanwhile.
    async fn answer_once(&self, req: &AnswerRequest) -> Result<Option<WorkflowStatus>> {
        let id = req.thread_id.clone();
        let snap = self.sh.snapshot_of(&id).await?;
        let Some(row) = snap.steps.iter().find(|s| s.step_id == req.step) else {
            return Err(EngineError::UnknownStep {
                step: req.step.clone(),
                known: snap.steps.iter().map(|s| s.step_id.clone()).collect(),
            });
        };
        let not_waiting = || EngineError::NotWaiting {
            thread_id: id.clone(),
            step: req.step.clone(),
            status: row.status,
        };
        let waiting = Waiting::of(row).ok_or_else(not_waiting)?;
        if row.answer().is_some() {
            return Err(not_waiting());
        }
        let answer = answer_of(req, waiting.kind)?;
        let json = answer.to_json();
        if snap.workflow.owner.is_some() {
            // Driven (here or elsewhere) or orphaned: its driver, or its adopter, applies it.
            let mut feed = self.sh.store.changes();
            let recorded = self
                .sh
                .store
                .record_answer(id.clone(), req.step.clone(), json)
                .await?;
            if !recorded {
                return Ok(None);
            }
            return self.applied(&id, &req.step, &mut feed).await.map(Some);
        }
        // Nobody drives it: record the answer as the workflow is taken over and restarted.
        let claim = Claim {
            owner: self.sh.owner.clone(),
            expected_epoch: snap.workflow.epoch,
            lease_until: self.sh.lease_until(),
            expected_lease: None,
        };
        let lease_until = claim.lease_until;
        let execute = self.sh.cfg.execute;
        let step = req.step.clone();
        let taken = self
            .sh
            .store
            .transition(id.clone(), claim, move |snap| {
                let mut ch = Changes::default();
                let row = snap
                    .steps
                    .iter()
                    .find(|s| s.step_id == step && s.answer().is_none())
                    .filter(|s| Waiting::of(s).is_some())
                    .ok_or_else(|| {
                        StoreError::Conflict("the step is not waiting any more".into())
                    })?;
                let mut row = row.clone();
                row.edit_extra(|x| x.answer = Some(json));
                ch.step(&row);
                // Left for the background worker to adopt when this process runs nothing.
                ch.set_status(WorkflowStatus::Running, None, !execute);
                ch.event(NewEvent::workflow(
                    EventKind::WorkflowResumed,
                    EventData {
                        by: Some(ResumedBy::User),
                        mode: Some("answer".to_owned()),
                        steps: Some(vec![step]),
                        ..Default::default()
                    },
                ));
                Ok((ch, ()))
            })
            .await;
        let (epoch, after, ()) = match taken {
            Ok(t) => t,
            Err(StoreError::Fenced(_) | StoreError::Conflict(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if execute {
            self.sh
                .spawn_driver(&id, epoch, lease_until, DriverInit::Loaded(after));
        } else {
            self.sh.hand_over();
        }
        Ok(Some(WorkflowStatus::Running))
    }
}

impl Engine {
    /// Waits (bounded by two leases: an owner that died meanwhile is adopted by then) until
    /// the owner applied the answer recorded for `step`; returns the workflow's status then.
    async fn applied(
        &self,
        id: &ThreadId,
        step: &str,
        feed: &mut crate::store::ChangeFeed,
    ) -> Result<WorkflowStatus> {
        let deadline = tokio::time::Instant::now() + self.sh.cfg.lease * 2;
        loop {
            let snap = self.sh.snapshot_of(id).await?;
            let pending = snap
                .steps
                .iter()
                .any(|s| s.step_id == step && s.answer().is_some() && Waiting::of(s).is_some());
            if !pending || tokio::time::Instant::now() >= deadline {
                return Ok(snap.workflow.status);
            }
            // A notice, or a slow poll in case one was missed.
            let wait = deadline.min(tokio::time::Instant::now() + Duration::from_millis(500));
            let _ = tokio::time::timeout_at(wait, feed.recv()).await;
        }
    }
}

/// The answer a request gives to a question of `kind`.
fn answer_of(req: &AnswerRequest, kind: HumanKind) -> Result<Answer> {
    let input = req.input.clone();
    let approve = match (req.approve, &input) {
        (Some(a), _) => a,
        (None, Some(_)) => true,
        (None, None) => {
            return Err(EngineError::BadRequest(format!(
                "step {:?} waits for {}: give approve (true or false){}",
                req.step,
                kind.as_str(),
                if kind == HumanKind::Input {
                    " or input (the text it asks for)"
                } else {
                    ""
                }
            )));
        }
    };
    if approve && kind == HumanKind::Input && input.as_deref().is_none_or(str::is_empty) {
        return Err(EngineError::BadRequest(format!(
            "step {:?} asks for input: give input (the text), or approve: false to deny",
            req.step
        )));
    }
    if input.as_deref().is_some_and(|i| i.contains('\0')) {
        return Err(EngineError::BadRequest(
            "input contains a NUL byte".to_owned(),
        ));
    }
    Ok(Answer { approve, input })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(approve: Option<bool>, input: Option<&str>) -> AnswerRequest {
        AnswerRequest {
            thread_id: ThreadId::from("t"),
            step: "ship".into(),
            approve,
            input: input.map(str::to_owned),
        }
    }

    #[test]
    fn an_input_step_needs_text_unless_denied() {
        assert!(answer_of(&req(Some(true), None), HumanKind::Input).is_err());
        assert!(answer_of(&req(None, None), HumanKind::Approval).is_err());
        let a = answer_of(&req(None, Some("v2")), HumanKind::Input).unwrap();
        assert!(a.approve);
        assert_eq!(a.input.as_deref(), Some("v2"));
        let d = answer_of(&req(Some(false), None), HumanKind::Input).unwrap();
        assert!(!d.approve);
        let ok = answer_of(&req(Some(true), None), HumanKind::Approval).unwrap();
        assert!(ok.approve);
    }
}
