//! Control of workflows from outside their driver: submit, cancel, resume.
//!
//! Invariant: every request is validated before anything is written, and each state change
//! happens in one store transition that first takes (or checks) the workflow's lease — a
//! rejected request changes nothing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::scheduler::{self, ResumePlan};
use super::{DriverInit, Engine, EngineError, Result, StopReason, lease};
use crate::api::{ThreadId, WorkflowStatus, now_ms};
use crate::store::{Claim, NewWorkflow, StoreError, WorkflowRow};
use crate::workflow::{self, AgentOptions, Workflow};

/// Largest workflow file read by `file`.
pub const MAX_DEFINITION_BYTES: u64 = 8 * 1024 * 1024;

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
    pub thread_id: ThreadId,
    pub status: WorkflowStatus,
    pub step_count: usize,
    /// False when the thread id already existed and nothing new was started.
    pub created: bool,
    pub estimated_duration_s: Option<f64>,
}

/// How a resume treats the steps that stopped the workflow.
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
    pub thread_id: ThreadId,
    pub from_step: Option<String>,
    pub mode: ResumeMode,
    /// Guidance for a retried agent step, sent into its resumed session.
    pub prompt: Option<String>,
    /// Agent-option overrides for retried agent steps (e.g. another permission mode).
    pub agent: Option<AgentOptions>,
    /// A new cost budget for the workflow (USD), above what it has cost so far: steps
    /// blocked by the budget go on.
    pub max_cost_usd: Option<f64>,
}

/// Reads a workflow file (JSON, or YAML for `.yaml`/`.yml`): a regular file only (never a FIFO, a device or the server's
/// own stdin), at most [`MAX_DEFINITION_BYTES`]. Messages never quote the file's contents.
fn read_definition(path: &Path) -> Result<Value> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let bad =
        |why: String| EngineError::BadRequest(format!("cannot read workflow file {shown}: {why}"));
    // Non-blocking open: opening a FIFO for reading must not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| bad(e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > MAX_DEFINITION_BYTES {
        return Err(bad(format!(
            "it is {} bytes; workflow files are limited to {MAX_DEFINITION_BYTES} bytes",
            meta.len()
        )));
    }
    let mut text = String::new();
    file.take(MAX_DEFINITION_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    let format = workflow::Format::of(path);
    workflow::parse_text(&text, format).map_err(|e| {
        EngineError::BadRequest(format!(
            "workflow file {shown} is not valid {}: {e}",
            format.as_str()
        ))
    })
}

/// Parses and validates a definition (off the async runtime: big definitions take time).
fn compile_blocking(req: &SubmitRequest, base: &Path) -> Result<Workflow> {
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

impl Engine {
    /// Validates and compiles a definition without storing anything.
    pub async fn compile(&self, req: &SubmitRequest) -> Result<Workflow> {
        let req = req.clone();
        let base = self.sh.cfg.base_dir.clone();
        tokio::task::spawn_blocking(move || compile_blocking(&req, &base))
            .await
            .map_err(|e| EngineError::BadRequest(format!("validation failed to run: {e}")))?
    }

    /// Validates, persists and starts a workflow. Returns at once.
    pub async fn submit(&self, req: SubmitRequest) -> Result<Submitted> {
        let id = match &req.thread_id {
            Some(id) => {
                let id = ThreadId::parse_new(id).ok_or_else(|| EngineError::InvalidThreadId {
                    thread_id: id.clone(),
                })?;
                if let Some(existing) = self.existing(&id).await? {
                    return Ok(existing);
                }
                id
            }
            None => ThreadId::generate(),
        };
        let wf = self.compile(&req).await?;
        let definition = serde_json::to_string(&wf)
            .map_err(|e| EngineError::BadRequest(format!("cannot store workflow: {e}")))?;
        let estimate = self.estimate(&wf).await;
        let execute = self.sh.cfg.execute;
        let record = NewWorkflow {
            id: id.clone(),
            name: wf.name.clone(),
            definition,
            step_ids: wf
                .steps
                .iter()
                .filter(|s| s.group.is_none())
                .map(|s| s.id.clone())
                .collect(),
            owner: execute.then(|| self.sh.owner.clone()),
            lease_expires_at: execute.then(|| self.sh.lease_until()),
        };
        let step_count = wf.steps.len();
        if !execute {
            // Stored unowned and queued: the background worker adopts and runs it.
            match self
                .sh
                .store
                .insert_workflow(record, Default::default())
                .await
            {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => {
                    return self
                        .existing(&id)
                        .await?
                        .ok_or(EngineError::NotFound { thread_id: id });
                }
                Err(e) => return Err(e.into()),
            }
            self.sh.hand_over();
            return Ok(Submitted {
                thread_id: id,
                status: WorkflowStatus::Queued,
                step_count,
                created: true,
                estimated_duration_s: estimate,
            });
        }
        // The driver's first commit stores the workflow and starts its first steps.
        let (reply, stored) = tokio::sync::oneshot::channel();
        let lease_until = record
            .lease_expires_at
            .unwrap_or_else(|| self.sh.lease_until());
        self.sh.spawn_driver(
            &id,
            1,
            lease_until,
            DriverInit::New {
                def: self
                    .sh
                    .defs
                    .share(&record.definition, std::sync::Arc::new(wf)),
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
                    .ok_or(EngineError::NotFound { thread_id: id });
            }
            Ok(Err(e)) => return Err(e.into()),
            // No driver ran: this process is shutting down, or the same id is being started
            // right now by another call.
            Err(_) => {
                return match self.existing(&id).await? {
                    Some(existing) => Ok(existing),
                    None => Err(EngineError::NotStarted { thread_id: id }),
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

    async fn existing(&self, id: &ThreadId) -> Result<Option<Submitted>> {
        let row = self.sh.store.workflow(id.clone()).await?;
        Ok(row.map(|w| Submitted {
            thread_id: w.id,
            status: w.status,
            step_count: w.step_count as usize,
            created: false,
            estimated_duration_s: None,
        }))
    }

    /// Expected duration (seconds) of `wf`: the critical path through its DAG of each step's
    /// median duration in recent completed runs of workflows with the same name.
    pub(super) async fn estimate(&self, wf: &Workflow) -> Option<f64> {
        let name = wf.name.clone()?;
        let medians = self.sh.store.step_medians(name).await.ok()?;
        estimate_from(wf, &medians)
    }

    pub(super) async fn row(&self, thread_id: &ThreadId) -> Result<WorkflowRow> {
        self.sh
            .store
            .workflow(thread_id.clone())
            .await?
            .ok_or_else(|| EngineError::NotFound {
                thread_id: thread_id.clone(),
            })
    }

    /// Cancels a workflow: stops running attempts (whole process groups) and marks it
    /// cancelled. It stays resumable.
    pub async fn cancel(&self, thread_id: &ThreadId) -> Result<WorkflowStatus> {
        let row = self.row(thread_id).await?;
        if row.status.is_finished() {
            return Ok(row.status);
        }
        if let Some(done) = self.sh.stop_driver(thread_id, StopReason::Cancel) {
            done.cancelled().await;
            return Ok(self.row(thread_id).await?.status);
        }
        if lease::is_owned_by_live(&self.sh, row.owner.clone()).await? {
            return self.cancel_elsewhere(thread_id, &row).await;
        }
        // Nobody runs it (interrupted, orphaned, blocked): cancel in the store directly.
        let claim = Claim {
            owner: self.sh.owner.clone(),
            expected_epoch: row.epoch,
            lease_until: self.sh.lease_until(),
            expected_lease: None,
        };
        let now = now_ms();
        self.sh
            .store
            .transition(thread_id.clone(), claim, move |snap| {
                Ok((scheduler::cancel_changes(&snap.steps, now), ()))
            })
            .await
            .map_err(|e| contended(e, thread_id))?;
        Ok(WorkflowStatus::Cancelled)
    }

    /// Asks the live process that runs the workflow to cancel it, and waits for it to
    /// comply (it looks for requests every third of its own lease).
    async fn cancel_elsewhere(&self, id: &ThreadId, row: &WorkflowRow) -> Result<WorkflowStatus> {
        let mut follow = self.follow(id, 0);
        self.sh.store.request_cancel(id.clone()).await?;
        let owner_lease = match &row.owner {
            Some(o) => self.sh.store.owner(o.clone()).await?.map(|o| o.lease_ms),
            None => None,
        };
        let owner_lease = Duration::from_millis(owner_lease.unwrap_or(0).max(0) as u64);
        let deadline = tokio::time::Instant::now() + self.sh.cfg.lease.max(owner_lease) * 2;
        loop {
            let page = follow.next(500, deadline).await?;
            if page.done() {
                return Ok(page.status);
            }
            if page.caught_up {
                // An owner that shut down instead hands the workflow over, uncancelled.
                let r = self.row(id).await?;
                if r.status.is_terminal() || r.owner.is_none() {
                    return Ok(r.status);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(EngineError::CancelPending {
                        thread_id: id.clone(),
                    });
                }
            }
        }
    }

    /// Resumes a stopped workflow from its checkpoint, or re-runs `from_step` and everything
    /// downstream of it.
    pub async fn resume(&self, req: ResumeRequest) -> Result<WorkflowStatus> {
        let id = req.thread_id.clone();
        let snap = self.sh.snapshot_of(&id).await?;
        let def = self.sh.definition(&snap)?;
        let Ok(scope) = scheduler::resume_scope(&def, &snap.steps, req.from_step.as_deref()) else {
            return Err(EngineError::UnknownStep {
                step: req.from_step.clone().unwrap_or_default(),
                known: snap
                    .steps
                    .iter()
                    .map(|s| s.step_id.clone())
                    .filter(|s| s.as_str() != req.from_step.as_deref().unwrap_or_default())
                    .collect(),
            });
        };
        let row = snap.workflow;
        // A parked workflow (a human step waits) keeps its driver: nothing to wait for.
        let waiting = snap
            .steps
            .iter()
            .find_map(scheduler::waiting_for)
            .filter(|_| row.status == WorkflowStatus::Blocked);
        // A driver that has just ended the workflow (its terminal state is committed) may not
        // have deregistered yet; let it, rather than refusing the resume.
        if let Some(done) = self.sh.driver_done(&id)
            && row.status.is_terminal()
            && waiting.is_none()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), done.cancelled()).await;
        }
        let running_here = self.sh.is_running_here(&id);
        let live_elsewhere = !running_here
            && row.owner.as_deref() != Some(&self.sh.owner)
            && lease::is_owned_by_live(&self.sh, row.owner.clone()).await?;
        if running_here || live_elsewhere {
            // A parked workflow waits for an answer, not for a resume.
            if let Some(w) = waiting {
                return Err(EngineError::BadRequest(format!(
                    "workflow {id} waits for an answer to step {:?} ({:?}): answer it (step with approve or input), or cancel the workflow first",
                    w.step, w.prompt
                )));
            }
            return Err(EngineError::Busy {
                thread_id: id,
                status: row.status,
            });
        }
        if row.status == WorkflowStatus::Completed && req.from_step.is_none() {
            return Err(EngineError::AlreadyCompleted { thread_id: id });
        }
        if let Some(budget) = req.max_cost_usd
            && !(budget.is_finite() && budget > row.total_cost_usd)
        {
            return Err(EngineError::BadRequest(format!(
                "max_cost_usd {budget} must be a number above what the workflow has cost so far (${:.4})",
                row.total_cost_usd
            )));
        }
        let overrides = match &req.agent {
            Some(a) => Some(
                serde_json::to_string(a)
                    .map_err(|e| EngineError::BadRequest(format!("agent options: {e}")))?,
            ),
            None => None,
        };
        let now = now_ms();
        let plan = |status: WorkflowStatus, steps: &[crate::store::StepRow]| {
            let plan = ResumePlan {
                from_step: req.from_step.as_deref(),
                downstream: &scope.downstream,
                skip: req.mode == ResumeMode::Skip,
                guidance: req.prompt.as_deref(),
                overrides: overrides.as_deref(),
                groups: &scope.groups,
                dropped: &scope.dropped,
            };
            scheduler::resume_changes(status, steps, &plan, now)
        };
        // Checked on what was read, so a refusal changes nothing; recomputed in the
        // transaction on what is stored then.
        if plan(row.status, &snap.steps).is_err() {
            return Err(EngineError::NothingToResume {
                thread_id: id,
                status: row.status,
            });
        }
        let claim = Claim {
            owner: self.sh.owner.clone(),
            expected_epoch: row.epoch,
            lease_until: self.sh.lease_until(),
            expected_lease: None,
        };
        let lease_until = claim.lease_until;
        let req2 = req.clone();
        let overrides2 = overrides.clone();
        let execute = self.sh.cfg.execute;
        let (epoch, after, ()) = self
            .sh
            .store
            .transition(id.clone(), claim, move |snap| {
                let plan = ResumePlan {
                    from_step: req2.from_step.as_deref(),
                    downstream: &scope.downstream,
                    skip: req2.mode == ResumeMode::Skip,
                    guidance: req2.prompt.as_deref(),
                    overrides: overrides2.as_deref(),
                    groups: &scope.groups,
                    dropped: &scope.dropped,
                };
                let mut ch =
                    scheduler::resume_changes(snap.workflow.status, &snap.steps, &plan, now)
                        .map_err(|_| StoreError::Conflict("nothing to resume any more".into()))?;
                ch.max_cost_usd = req2.max_cost_usd;
                if !execute && let Some(st) = &mut ch.status {
                    // Left for the background worker to adopt.
                    st.release = true;
                }
                Ok((ch, ()))
            })
            .await
            .map_err(|e| contended(e, &id))?;
        if execute {
            self.sh
                .spawn_driver(&id, epoch, lease_until, DriverInit::Loaded(after));
        } else {
            self.sh.hand_over();
        }
        Ok(WorkflowStatus::Running)
    }
}

/// A lost race for a workflow's lease (or state) with another process.
fn contended(e: StoreError, id: &ThreadId) -> EngineError {
    match e {
        StoreError::Fenced(_) | StoreError::Conflict(_) => EngineError::Contended {
            thread_id: id.clone(),
        },
        other => EngineError::Store(other),
    }
}

/// The critical path (seconds) through `wf` of each step's median duration.
pub(super) fn estimate_from(wf: &Workflow, medians: &BTreeMap<String, i64>) -> Option<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_file_must_be_a_regular_file() {
        let err = read_definition(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_definition(&fifo).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn invalid_json_file_is_reported_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.json");
        std::fs::write(&f, "SECRET-TOKEN-123 {").unwrap();
        let err = read_definition(&f).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }
}
