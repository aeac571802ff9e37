//! Control of workflows from outside their driver: submit, cancel, resume, adopt.
//!
//! Invariant: every request is validated before anything is written, and each state change
//! happens in one transaction that first takes (or checks) the workflow's lease — a rejected
//! request changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::driver::NewRecord;
use super::{Engine, EngineError, Result, Shared, driver::StopReason, lease};
use crate::store::{
    self, AttemptRow, EventKind, StepRow, StepStatus, StoreError, WorkflowStatus, now_ms,
};
use crate::workflow::{self, AgentOptions, Workflow};

/// A workflow to start.
#[derive(Debug, Clone, Default)]
pub struct SubmitRequest {
    /// Inline definition; exactly one of `definition` and `file`.
    pub definition: Option<Value>,
    pub file: Option<PathBuf>,
    pub inputs: BTreeMap<String, String>,
    /// Idempotency key: the same id never starts a second workflow.
    pub thread_id: Option<String>,
}

/// The answer to a submit.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub thread_id: String,
    pub status: WorkflowStatus,
    pub step_count: usize,
    /// False when the thread id already existed and nothing new was started.
    pub created: bool,
    pub estimated_duration_s: Option<f64>,
}

/// How `invoke_resume` treats the steps that stopped the workflow.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ResumeMode {
    /// Run the failed, blocked or cancelled steps again.
    #[default]
    Retry,
    /// Mark them skipped and continue with their dependents.
    Skip,
}

/// A resume request.
#[derive(Debug, Clone, Default)]
pub struct ResumeRequest {
    pub thread_id: String,
    pub from_step: Option<String>,
    pub mode: ResumeMode,
    /// Guidance for a retried agent step, sent into its resumed session.
    pub prompt: Option<String>,
    /// Agent-option overrides for retried agent steps (e.g. another permission mode).
    pub agent: Option<AgentOptions>,
}

fn check_thread_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::BadRequest(format!(
            "invalid thread_id {id:?}: use 1-128 characters from A-Z a-z 0-9 - _ . :"
        )))
    }
}

/// Reads a workflow file (JSON).
fn read_definition(path: &std::path::Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EngineError::BadRequest(format!("cannot read workflow file {}: {e}", path.display()))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        EngineError::BadRequest(format!(
            "workflow file {} is not valid JSON: {e}",
            path.display()
        ))
    })
}

impl Engine {
    /// Validates and compiles a definition without storing anything.
    pub fn compile(&self, req: &SubmitRequest) -> Result<Workflow> {
        let base = &self.sh.cfg.base_dir;
        let definition = match (&req.definition, &req.file) {
            (Some(d), None) => d.clone(),
            (None, Some(f)) => read_definition(&base.join(f))?,
            (Some(_), Some(_)) => {
                return Err(EngineError::BadRequest(
                    "give either `workflow` (inline) or `file`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(EngineError::BadRequest(
                    "missing workflow: give `workflow` (an inline definition) or `file` (a path to a JSON workflow file)".into(),
                ));
            }
        };
        workflow::compile(&definition, &req.inputs, base).map_err(EngineError::Invalid)
    }

    /// Validates, persists and starts a workflow. Returns at once.
    pub async fn submit(&self, req: SubmitRequest) -> Result<Submitted> {
        if let Some(id) = &req.thread_id {
            check_thread_id(id)?;
            if let Some(existing) = self.existing(id).await? {
                return Ok(existing);
            }
        }
        let wf = self.compile(&req)?;
        let id = req
            .thread_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let definition = serde_json::to_string(&wf)
            .map_err(|e| EngineError::BadRequest(format!("cannot store workflow: {e}")))?;
        let estimate = if wf.name.is_some() {
            self.estimate(&wf).await
        } else {
            None
        };
        let record = NewRecord {
            name: wf.name.clone(),
            definition,
            step_ids: wf.steps.iter().map(|s| s.id.clone()).collect(),
            lease_expires_at: now_ms() + self.sh.cfg.lease.as_millis() as i64,
        };
        let step_count = wf.steps.len();
        // The driver's first commit stores the workflow and starts its first steps.
        let (reply, stored) = tokio::sync::oneshot::channel();
        self.sh.spawn_driver_with(
            &id,
            1,
            super::DriverInit::New {
                def: Arc::new(wf),
                record,
                reply,
            },
        );
        match stored.await {
            Ok(Ok(())) => {}
            Ok(Err(StoreError::Conflict(_))) => {
                return self
                    .existing(&id)
                    .await?
                    .ok_or_else(|| EngineError::NotFound(id.clone()));
            }
            Ok(Err(e)) => return Err(e.into()),
            // No driver ran: this process is shutting down, or the same id is being started
            // right now by another call.
            Err(_) => {
                return match self.existing(&id).await? {
                    Some(existing) => Ok(existing),
                    None => Err(EngineError::Conflict(format!(
                        "workflow {id} could not be started (this baton process is shutting down, or the same thread_id is being started concurrently); try again"
                    ))),
                };
            }
        }
        Ok(Submitted {
            thread_id: id,
            status: WorkflowStatus::Queued,
            step_count,
            created: true,
            estimated_duration_s: estimate,
        })
    }

    async fn existing(&self, id: &str) -> Result<Option<Submitted>> {
        let id = id.to_owned();
        let row = self
            .sh
            .store
            .read(move |c| store::find_workflow(c, &id))
            .await?;
        Ok(row.map(|w| Submitted {
            thread_id: w.id,
            status: w.status,
            step_count: w.step_count as usize,
            created: false,
            estimated_duration_s: None,
        }))
    }

    /// Critical path of median step durations of past runs with the same name.
    pub(super) async fn estimate(&self, wf: &Workflow) -> Option<f64> {
        let wf = wf.clone();
        self.sh
            .store
            .read(move |c| Ok(estimate_in(c, &wf)))
            .await
            .ok()
            .flatten()
    }

    /// Cancels a workflow: stops running attempts (whole process groups) and marks it
    /// cancelled. It stays resumable.
    pub async fn cancel(&self, thread_id: &str) -> Result<WorkflowStatus> {
        let row = self.row(thread_id).await?;
        if matches!(
            row.status,
            WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Cancelled
        ) {
            return Ok(row.status);
        }
        if let Some(mut done) = self.sh.stop_driver(thread_id, StopReason::Cancel) {
            let _ = done.wait_for(|d| *d).await;
            return Ok(self.row(thread_id).await?.status);
        }
        if lease::is_owned_by_live(&self.sh, row.owner.clone()).await? {
            // Another process runs it: ask it, and wait for it to comply.
            let id = thread_id.to_owned();
            self.sh
                .store
                .write(move |ctx| store::request_cancel(ctx, &id))
                .await?;
            // The owner looks for cancel requests every third of its own lease.
            let owner = row.owner.clone().unwrap_or_default();
            let owner_lease = self
                .sh
                .store
                .read(move |c| Ok(store::find_owner(c, &owner)?.map(|o| o.lease_ms)))
                .await?
                .map_or(Duration::ZERO, |ms| Duration::from_millis(ms.max(0) as u64));
            let deadline = tokio::time::Instant::now() + self.sh.cfg.lease.max(owner_lease) * 2;
            let mut changes = self.sh.store.subscribe();
            while tokio::time::Instant::now() < deadline {
                let r = self.row(thread_id).await?;
                if r.status.is_terminal() || r.owner.is_none() {
                    return Ok(r.status);
                }
                let _ = tokio::time::timeout(Duration::from_millis(250), changes.recv()).await;
            }
            return Err(EngineError::Conflict(format!(
                "cancel of {thread_id} was requested, but its owning process has not confirmed yet; check invoke_status shortly"
            )));
        }
        // Nobody runs it (interrupted, orphaned, blocked): cancel in the store directly.
        let id = thread_id.to_owned();
        let me = self.sh.owner.clone();
        let lease_until = now_ms() + self.sh.cfg.lease.as_millis() as i64;
        let epoch = row.epoch;
        self.sh
            .store
            .write(move |ctx| {
                store::take_lease(ctx, &id, &me, epoch, lease_until)?;
                let now = now_ms();
                for mut s in store::load_steps(ctx.conn, &id)? {
                    if matches!(s.status, StepStatus::Running | StepStatus::Retrying) {
                        s.status = StepStatus::Cancelled;
                        s.finished_at = Some(now);
                        store::save_step(ctx, &id, &s)?;
                    }
                }
                store::set_workflow_status(ctx, &id, WorkflowStatus::Cancelled, None, true, now)?;
                store::append_event(
                    ctx,
                    &id,
                    EventKind::WorkflowCancelled,
                    None,
                    None,
                    None,
                    now,
                )?;
                Ok(())
            })
            .await?;
        Ok(WorkflowStatus::Cancelled)
    }

    async fn row(&self, thread_id: &str) -> Result<store::WorkflowRow> {
        let id = thread_id.to_owned();
        self.sh
            .store
            .read(move |c| store::find_workflow(c, &id))
            .await?
            .ok_or_else(|| EngineError::NotFound(thread_id.to_owned()))
    }

    /// Resumes a stopped workflow from its checkpoint, or re-runs `from_step` and everything
    /// downstream of it.
    pub async fn resume(&self, req: ResumeRequest) -> Result<WorkflowStatus> {
        let row = self.row(&req.thread_id).await?;
        let id = req.thread_id.clone();
        let definition = self
            .sh
            .store
            .read(move |c| store::load_definition(c, &id))
            .await?;
        let def: Workflow = serde_json::from_str(&definition)
            .map_err(|e| StoreError::Corrupt(format!("stored definition: {e}")))?;
        if let Some(from) = &req.from_step
            && def.step(from).is_none()
        {
            let ids: Vec<&str> = def.steps.iter().map(|s| s.id.as_str()).collect();
            return Err(EngineError::BadRequest(format!(
                "from_step {from:?} is not a step of this workflow; its steps are: {}",
                ids.join(", ")
            )));
        }
        // A driver that has just ended the workflow (its terminal state is committed) may not
        // have deregistered yet; let it, rather than refusing the resume.
        let finishing = self
            .sh
            .runs
            .lock()
            .ok()
            .and_then(|r| r.get(&req.thread_id).map(|h| h.done.clone()));
        if let Some(mut done) = finishing
            && row.status.is_terminal()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| *d)).await;
        }
        let running_here = self
            .sh
            .runs
            .lock()
            .map(|r| r.contains_key(&req.thread_id))
            .unwrap_or(false);
        let live_elsewhere = !running_here
            && row.owner.as_deref() != Some(&self.sh.owner)
            && lease::is_owned_by_live(&self.sh, row.owner.clone()).await?;
        if running_here || live_elsewhere {
            return Err(EngineError::Conflict(format!(
                "workflow {} is {} right now; wait for it to stop or call invoke_cancel first",
                req.thread_id, row.status
            )));
        }
        if row.status == WorkflowStatus::Completed && req.from_step.is_none() {
            return Err(EngineError::Conflict(format!(
                "workflow {} already completed; pass from_step to re-run a step and everything downstream of it",
                req.thread_id
            )));
        }
        let me = self.sh.owner.clone();
        let lease_until = now_ms() + self.sh.cfg.lease.as_millis() as i64;
        let epoch = row.epoch;
        let id = req.thread_id.clone();
        let overrides = match &req.agent {
            Some(a) => Some(
                serde_json::to_string(a)
                    .map_err(|e| EngineError::BadRequest(format!("agent options: {e}")))?,
            ),
            None => None,
        };
        let reset: BTreeSet<String> = match &req.from_step {
            Some(from) => workflow::descendants(&def, from),
            None => BTreeSet::new(),
        };
        let req2 = req.clone();
        let new_epoch = self
            .sh
            .store
            .write(move |ctx| {
                let new_epoch = store::take_lease(ctx, &id, &me, epoch, lease_until)?;
                let now = now_ms();
                let steps = store::load_steps(ctx.conn, &id)?;
                let mut touched = Vec::new();
                for mut s in steps {
                    let before = s.clone();
                    let from_here = req2.from_step.as_deref() == Some(s.step_id.as_str());
                    let stopped = matches!(
                        s.status,
                        StepStatus::Failed
                            | StepStatus::Blocked
                            | StepStatus::Cancelled
                            | StepStatus::Running
                            | StepStatus::Retrying
                    );
                    let target = if req2.from_step.is_some() { from_here } else { stopped };
                    if target && req2.mode == ResumeMode::Skip {
                        s.status = StepStatus::Skipped;
                        s.finished_at = Some(now);
                        store::append_event(ctx, &id, EventKind::StepSkipped, Some(&s.step_id), None, None, now)?;
                    } else if target || reset.contains(&s.step_id) {
                        let keep_session = target && (req2.from_step.is_none() || req2.prompt.is_some());
                        reset_step(&mut s, keep_session);
                        if target {
                            s.guidance = req2.prompt.clone();
                            s.agent_overrides = overrides.clone();
                        }
                    }
                    if s != before {
                        store::save_step(ctx, &id, &s)?;
                        touched.push(s.step_id.clone());
                    }
                }
                if touched.is_empty() && req2.from_step.is_none() && row.status != WorkflowStatus::Interrupted {
                    return Err(StoreError::Conflict(format!(
                        "workflow {id} has no failed, blocked or cancelled steps to resume (status {})",
                        row.status
                    )));
                }
                store::set_workflow_status(ctx, &id, WorkflowStatus::Running, None, false, now)?;
                let data = json!({ "mode": req2.mode, "from_step": req2.from_step,
                                   "steps": touched, "by": "invoke_resume" });
                store::append_event(ctx, &id, EventKind::WorkflowResumed, None, None, Some(&data), now)?;
                Ok(new_epoch)
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => EngineError::Conflict(m),
                StoreError::Fenced(_) => EngineError::Conflict(format!(
                    "workflow {} was changed by another process meanwhile; check invoke_status and try again",
                    req.thread_id
                )),
                other => EngineError::Store(other),
            })?;
        self.sh.spawn_driver(&req.thread_id, new_epoch);
        Ok(WorkflowStatus::Running)
    }
}

/// Expected duration (seconds) of `wf`: the critical path through its DAG of each step's
/// median duration in recent completed runs of workflows with the same name.
pub(super) fn estimate_in(c: &rusqlite::Connection, wf: &Workflow) -> Option<f64> {
    let name = wf.name.as_deref()?;
    let medians = store::median_step_durations(c, name).ok()?;
    if medians.is_empty() {
        return None;
    }
    let mut finish: BTreeMap<&str, i64> = BTreeMap::new();
    for i in workflow::topo_order(&wf.steps) {
        let s = &wf.steps[i];
        let start = s
            .deps
            .iter()
            .filter_map(|d| finish.get(d.as_str()))
            .max()
            .copied()
            .unwrap_or(0);
        finish.insert(&s.id, start + medians.get(&s.id).copied().unwrap_or(0));
    }
    finish
        .values()
        .max()
        .map(|ms| (*ms as f64 / 1000.0 * 10.0).round() / 10.0)
}

/// Puts a step back to pending with a fresh retry budget.
fn reset_step(s: &mut StepRow, keep_session: bool) {
    s.status = StepStatus::Pending;
    s.failures = 0;
    s.crashes = 0;
    s.finished_at = None;
    s.started_at = None;
    s.output = None;
    s.error = None;
    s.guidance = None;
    s.agent_overrides = None;
    s.fresh_session = !keep_session;
}

/// Takes over a workflow whose owner is gone: in-flight steps are counted as crashed and
/// re-run (or failed, past the crash cap). Returns the new epoch.
pub(super) async fn adopt(
    sh: &Arc<Shared>,
    id: &str,
    prev: Option<&str>,
    epoch: i64,
) -> Result<(i64, Loaded)> {
    let me = sh.owner.clone();
    let lease_until = now_ms() + sh.cfg.lease.as_millis() as i64;
    let max_crashes = sh.cfg.max_crashes;
    let id = id.to_owned();
    let prev = prev.map(str::to_owned);
    Ok(sh
        .store
        .write(move |ctx| {
            let new_epoch = store::take_lease(ctx, &id, &me, epoch, lease_until)?;
            let now = now_ms();
            let mut crashed = Vec::new();
            for mut s in store::load_steps(ctx.conn, &id)? {
                if s.status != StepStatus::Running {
                    continue;
                }
                s.crashes += 1;
                let attempt = AttemptRow {
                    step_id: s.step_id.clone(),
                    number: s.attempts,
                    started_at: s.started_at.unwrap_or(now),
                    finished_at: Some(now),
                    outcome: "crashed".into(),
                    error: Some("the process running this attempt died".into()),
                    session_id: s.session_id.clone(),
                    owner: prev.clone(),
                    ..Default::default()
                };
                // Keep the attempt's original start time if it was recorded.
                let started = store::attempt_started_at(ctx.conn, &id, &s.step_id, s.attempts)?;
                store::insert_attempt(
                    ctx,
                    &id,
                    &AttemptRow {
                        started_at: started.unwrap_or(attempt.started_at),
                        ..attempt
                    },
                )?;
                if s.crashes > max_crashes {
                    s.status = StepStatus::Failed;
                    s.finished_at = Some(now);
                    s.error = Some(format!(
                        "its server process died {} times while running it; not re-run again (crash-loop guard). Resume to try again",
                        s.crashes
                    ));
                    let data = json!({ "error": s.error, "reason": "crash loop" });
                    store::append_event(ctx, &id, EventKind::StepFailed, Some(&s.step_id), Some(s.attempts), Some(&data), now)?;
                } else {
                    s.status = StepStatus::Pending;
                }
                crashed.push(s.step_id.clone());
                store::save_step(ctx, &id, &s)?;
            }
            let data = json!({ "by": "adoption", "previous_owner": prev, "rerun_steps": crashed });
            store::append_event(ctx, &id, EventKind::WorkflowResumed, None, None, Some(&data), now)?;
            // What the new driver needs, read in the same transaction.
            Ok((new_epoch, load(ctx.conn, &id)?))
        })
        .await?)
}

/// A workflow as a driver starts from: definition, status, step rows.
pub(super) type Loaded = (Arc<Workflow>, WorkflowStatus, Vec<StepRow>);

fn load(c: &rusqlite::Connection, id: &str) -> store::Result<Loaded> {
    let row = store::find_workflow(c, id)?
        .ok_or_else(|| StoreError::Corrupt(format!("workflow {id} vanished")))?;
    let steps = store::load_steps(c, id)?;
    let definition = store::load_definition(c, id)?;
    let def: Workflow = serde_json::from_str(&definition)
        .map_err(|e| StoreError::Corrupt(format!("stored definition of {id}: {e}")))?;
    if def.steps.len() != steps.len() {
        return Err(StoreError::Corrupt(format!(
            "steps of {id} do not match its definition"
        )));
    }
    Ok((Arc::new(def), row.status, steps))
}

/// Loads what a driver needs: definition, status and step rows.
pub(super) async fn load_for_driver(sh: &Arc<Shared>, id: &str) -> Result<Loaded> {
    let id = id.to_owned();
    Ok(sh.store.read(move |c| load(c, &id)).await?)
}
