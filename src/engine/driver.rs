//! The driver: one task per workflow this process owns, scheduling its steps.
//!
//! Invariant: a step's result is committed (output, status, attempt, event) before any
//! dependent starts, and the start of the dependents that became ready shares that commit —
//! one durable commit per step boundary. Every commit is fenced by the workflow's lease epoch,
//! so a driver that lost its lease cannot overwrite the new owner's work.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::executor::{self, AttemptSpec, Prepared, Signal, SignalKind};
use super::outcome::{FailureClass, Outcome, tail};
use crate::store::{
    self, AttemptRow, EventKind, StepRow, StepStatus, StoreError, WorkflowStatus, now_ms,
};
use crate::workflow::{Action, AgentOptions, OnStall, Quoting, Reference, Workflow};

/// Why a driver stopped before its workflow finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopReason {
    #[default]
    None,
    /// A user cancelled the workflow.
    Cancel,
    /// This process is shutting down; the workflow is handed over.
    Shutdown,
    /// Another process holds the lease now.
    Fenced,
    /// The store refused writes; the workflow is left for recovery.
    StoreFailed,
}

/// Bytes of an attempt's stderr kept in its record.
const STDERR_KEPT: usize = 64 * 1024;
/// Shortest interval between two `step_progress` events of one step.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Shortest interval between two activity writes of one step.
const ACTIVITY_EVERY: Duration = Duration::from_secs(5);
/// Longest wait between two tries of a commit the store refused.
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(2);

/// An event to append: kind, step, attempt number and data.
type PendingEvent = store::NewEvent;

/// Changes to commit in one transaction.
#[derive(Default, Clone)]
struct Batch {
    steps: Vec<StepRow>,
    attempts: Vec<AttemptRow>,
    events: Vec<PendingEvent>,
    status: Option<(WorkflowStatus, Option<String>, bool)>,
    /// Insert the workflow itself first (the first commit of a new workflow).
    insert: Option<NewRecord>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.attempts.is_empty() && self.events.is_empty()
    }

    fn event(&mut self, kind: EventKind, step: Option<&str>, attempt: Option<i64>, data: Value) {
        let data = (!data.is_null()).then_some(data);
        self.events
            .push((kind, step.map(str::to_owned), attempt, data));
    }

    fn apply(
        self,
        ctx: &mut store::WriteCtx<'_>,
        id: &str,
        owner: &str,
        epoch: i64,
    ) -> store::Result<()> {
        let now = now_ms();
        if let Some(new) = &self.insert {
            if store::find_workflow(ctx.conn, id)?.is_some() {
                return Err(StoreError::Conflict(format!("workflow {id} exists")));
            }
            store::insert_workflow(ctx, &new.as_new(id, owner), now)?;
        }
        let first_seq =
            store::fenced_reserve(ctx, id, owner, epoch, self.events.len() as i64, now)?;
        for s in &self.steps {
            store::save_step(ctx, id, s)?;
        }
        for a in &self.attempts {
            let a = charged(ctx.conn, id, a)?;
            store::insert_attempt(ctx, id, &a)?;
            if let Some(cost) = a.cost_usd.filter(|c| *c > 0.0) {
                store::add_cost(ctx, id, cost)?;
            }
        }
        if let Some((status, error, release)) = &self.status {
            store::set_workflow_status(ctx, id, *status, error.as_deref(), *release, now)?;
        }
        store::insert_events(ctx, id, first_seq, &self.events, now)?;
        Ok(())
    }
}

/// A workflow not yet in the store: its driver's first commit inserts it together with the
/// start of its first steps.
#[derive(Clone)]
pub(super) struct NewRecord {
    pub name: Option<String>,
    pub definition: String,
    pub step_ids: Vec<String>,
    pub lease_expires_at: i64,
}

impl NewRecord {
    fn as_new<'a>(&'a self, id: &'a str, owner: &'a str) -> store::NewWorkflow<'a> {
        store::NewWorkflow {
            id,
            name: self.name.as_deref(),
            definition: &self.definition,
            step_ids: self.step_ids.iter().map(String::as_str).collect(),
            owner,
            lease_expires_at: self.lease_expires_at,
        }
    }
}

/// The agent CLI reports a session's cumulative cost (a resumed session includes what it cost
/// before), so an attempt is charged the difference to what the earlier attempts of the same
/// session were charged; the workflow total is the sum of the charges.
fn charged(conn: &rusqlite::Connection, id: &str, a: &AttemptRow) -> store::Result<AttemptRow> {
    let mut a = a.clone();
    if let (Some(reported), Some(session)) = (a.cost_usd, a.session_id.as_deref()) {
        let before = store::session_cost(conn, id, session, &a.step_id, a.number)?;
        a.cost_usd = Some(((reported - before).max(0.0) * 1e10).round() / 1e10);
    }
    Ok(a)
}

pub(super) struct Driver {
    sh: Arc<Shared>,
    id: Arc<str>,
    epoch: i64,
    def: Arc<Workflow>,
    status: WorkflowStatus,
    steps: Vec<StepRow>,
    index: HashMap<String, usize>,
    running: JoinSet<(usize, i64, Outcome)>,
    attempt_started: HashMap<usize, i64>,
    retry_at: HashMap<usize, Instant>,
    spare: Option<OwnedSemaphorePermit>,
    starved: bool,
    stop: CancellationToken,
    reason: Arc<Mutex<StopReason>>,
    sig_tx: mpsc::UnboundedSender<Signal>,
    sig_rx: mpsc::UnboundedReceiver<Signal>,
    last_progress: HashMap<usize, Instant>,
    last_activity: HashMap<usize, Instant>,
    /// A new workflow's record and the submitter waiting for its first commit.
    new_record: Option<(NewRecord, oneshot::Sender<store::Result<()>>)>,
    /// The newest progress message of each step not yet written (throttled).
    held_progress: HashMap<usize, (i64, String)>,
    /// Last output of each running attempt (unthrottled), for `on_stall: restart`.
    last_output: HashMap<usize, Instant>,
    /// Stop handles of running attempts.
    attempt_stops: HashMap<usize, CancellationToken>,
    /// Attempts stopped because they stalled; their stop counts as a retryable failure.
    stalled: HashSet<usize>,
}

impl Driver {
    #[expect(
        clippy::too_many_arguments,
        reason = "the driver's whole starting state, passed once by spawn_driver"
    )]
    pub(super) fn new(
        sh: Arc<Shared>,
        id: Arc<str>,
        epoch: i64,
        def: Arc<Workflow>,
        status: WorkflowStatus,
        steps: Vec<StepRow>,
        stop: CancellationToken,
        reason: Arc<Mutex<StopReason>>,
    ) -> Driver {
        let index = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.step_id.clone(), i))
            .collect();
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        Driver {
            sh,
            id,
            epoch,
            def,
            status,
            steps,
            index,
            running: JoinSet::new(),
            attempt_started: HashMap::new(),
            retry_at: HashMap::new(),
            spare: None,
            starved: false,
            stop,
            reason,
            sig_tx,
            sig_rx,
            last_progress: HashMap::new(),
            last_activity: HashMap::new(),
            last_output: HashMap::new(),
            held_progress: HashMap::new(),
            new_record: None,
            attempt_stops: HashMap::new(),
            stalled: HashSet::new(),
        }
    }

    /// Makes the first commit insert the workflow and report to `reply`.
    pub(super) fn with_new_record(
        mut self,
        record: NewRecord,
        reply: oneshot::Sender<store::Result<()>>,
    ) -> Driver {
        self.new_record = Some((record, reply));
        self
    }

    fn reason(&self) -> StopReason {
        self.reason.lock().map(|r| *r).unwrap_or(StopReason::Fenced)
    }

    fn set_reason(&self, r: StopReason) {
        if let Ok(mut g) = self.reason.lock()
            && *g == StopReason::None
        {
            *g = r;
        }
    }

    /// Runs the workflow until it finishes or the driver is stopped. The work done at each
    /// wake-up is boxed, so an idle driver holds only its wait, not the largest step of it.
    pub(super) async fn run(mut self) {
        // Steps found waiting for a retry (after adoption) are due at once.
        for (i, s) in self.steps.iter().enumerate() {
            if s.status == StepStatus::Retrying {
                self.retry_at.insert(i, Instant::now());
            }
        }
        if !Box::pin(self.advance(Vec::new())).await {
            return Box::pin(self.finish_stopped()).await;
        }
        loop {
            if self.status.is_terminal() {
                return;
            }
            let next_retry = self.retry_at.values().min().copied();
            let next_stall = self.next_stall_check();
            let next_progress = self.next_progress_flush();
            let sem = self.sh.permits.clone();
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                // Before results: an attempt's signals are all queued by the time it ends, and
                // once its result is applied they would be dropped (first tool use, session).
                Some(sig) = self.sig_rx.recv() => {
                    if !Box::pin(self.on_signal(sig)).await { break; }
                }
                Some(joined) = self.running.join_next() => {
                    let mut done = Vec::new();
                    if let Ok(r) = joined { done.push(r); }
                    while let Some(Ok(r)) = self.running.try_join_next() { done.push(r); }
                    if !Box::pin(self.advance(done)).await { break; }
                }
                () = sleep_until(next_retry) => {
                    if !Box::pin(self.advance(Vec::new())).await { break; }
                }
                () = sleep_until(next_stall) => self.restart_stalled(),
                () = sleep_until(next_progress) => {
                    if !Box::pin(self.flush_progress()).await { break; }
                }
                Ok(p) = sem.acquire_owned(), if self.starved => {
                    self.spare = Some(p);
                    if !Box::pin(self.advance(Vec::new())).await { break; }
                }
            }
        }
        Box::pin(self.finish_stopped()).await;
    }

    /// Applies finished attempts, starts what became ready and, when nothing is left, ends
    /// the workflow — all in one commit. Returns false if the driver must stop.
    async fn advance(&mut self, done: Vec<(usize, i64, Outcome)>) -> bool {
        if let Some((record, reply)) = self.new_record.take() {
            return self.first_commit(record, reply).await;
        }
        let mut batch = Batch::default();
        for (idx, attempt, outcome) in done {
            self.apply_outcome(&mut batch, idx, attempt, outcome);
        }
        let started = self.start_ready(&mut batch);
        if started.is_empty()
            && self.running.is_empty()
            && self.retry_at.is_empty()
            && !self.starved
        {
            self.finish(&mut batch);
        }
        if batch.is_empty() && batch.status.is_none() {
            return true;
        }
        if !self.commit(batch).await {
            return false;
        }
        if !started.is_empty() && self.sh.lease_in_doubt() && !self.still_owner().await {
            return false;
        }
        self.spawn_attempts(started);
        true
    }

    /// Runs attempts whose start has been committed.
    fn spawn_attempts(&mut self, started: Vec<(AttemptSpec, OwnedSemaphorePermit)>) {
        for (spec, permit) in started {
            let sh = self.sh.clone();
            let stop = self.stop.child_token();
            self.attempt_stops.insert(spec.step_idx, stop.clone());
            self.last_output.insert(spec.step_idx, Instant::now());
            let tx = self.sig_tx.clone();
            self.running.spawn(async move {
                let _permit = permit;
                let out = executor::execute(&sh.exec, &spec, &stop, tx).await;
                (spec.step_idx, spec.number, out)
            });
        }
    }

    /// The first commit of a new workflow: inserts it and starts its first steps, once. Its
    /// result goes to the submitter; on failure nothing was stored and the driver ends.
    async fn first_commit(
        &mut self,
        record: NewRecord,
        reply: oneshot::Sender<store::Result<()>>,
    ) -> bool {
        let mut batch = Batch::default();
        let started = self.start_ready(&mut batch);
        batch.insert = Some(record);
        let (id, owner, epoch) = (self.id.clone(), self.sh.owner.clone(), self.epoch);
        let res = self
            .sh
            .store
            .write(move |ctx| batch.apply(ctx, &id, &owner, epoch))
            .await;
        let ok = res.is_ok();
        let _ = reply.send(res);
        if !ok {
            self.set_reason(StopReason::StoreFailed);
            return false;
        }
        // Let the submitter answer its caller before this thread forks the first steps.
        tokio::task::yield_now().await;
        self.spawn_attempts(started);
        true
    }

    fn apply_outcome(&mut self, batch: &mut Batch, idx: usize, number: i64, outcome: Outcome) {
        let Some(step) = self.def.steps.get(idx) else {
            return;
        };
        self.attempt_stops.remove(&idx);
        self.last_output.remove(&idx);
        let outcome = match outcome {
            Outcome::Stopped { detail } if self.stalled.remove(&idx) => Outcome::Failed {
                class: FailureClass::Retryable,
                error: format!(
                    "stalled: no output for {}s, so the attempt was restarted (on_stall: restart)",
                    step.stall_timeout_s
                ),
                detail,
            },
            other => other,
        };
        let outcome = outcome.classify(&step.retry);
        let now = now_ms();
        let detail = outcome.detail().clone();
        let cancelled = self.reason() == StopReason::Cancel;
        let row = &mut self.steps[idx];
        let mut att = AttemptRow {
            step_id: row.step_id.clone(),
            number,
            started_at: self.attempt_started.remove(&idx).unwrap_or(now),
            finished_at: Some(now),
            exit_code: detail.exit_code.map(i64::from),
            stderr: detail
                .stderr
                .as_deref()
                .map(|s| tail(s, STDERR_KEPT).to_owned()),
            session_id: detail.session_id.clone().or_else(|| row.session_id.clone()),
            cost_usd: detail.cost_usd,
            num_turns: detail.num_turns,
            owner: Some(self.sh.owner.clone()),
            ..Default::default()
        };
        if let Some(sid) = &detail.session_id {
            row.session_id = Some(sid.clone());
        }
        row.fresh_session = detail.session_unusable;
        let sid = row.step_id.clone();
        match outcome {
            Outcome::Succeeded { output, .. } => {
                att.outcome = "succeeded".into();
                row.status = StepStatus::Completed;
                row.finished_at = Some(now);
                row.error = None;
                row.guidance = None;
                let duration = now - row.started_at.unwrap_or(now);
                let preview: String = output.trim_end().chars().take(200).collect();
                row.output = Some(output);
                // Only what is there: empty previews and absent costs are left out.
                let mut data = json!({ "duration_ms": duration });
                if !preview.is_empty() {
                    data["output_preview"] = json!(preview);
                }
                if let Some(cost) = detail.cost_usd {
                    data["session_cost_usd"] = json!(cost);
                }
                batch.event(EventKind::StepCompleted, Some(&sid), Some(number), data);
            }
            Outcome::Failed { class, error, .. } => {
                att.outcome = if class == FailureClass::TimedOut {
                    "timed_out".into()
                } else {
                    "failed".into()
                };
                att.error = Some(error.clone());
                row.failures += 1;
                row.error = Some(error.clone());
                row.guidance = None;
                let budget_left = row.failures < i64::from(step.retry.max_attempts);
                if class != FailureClass::Fatal && budget_left {
                    let next = (row.failures + 1) as u32;
                    let delay = step.retry.delay_ms(next, fastrand::f64());
                    row.status = StepStatus::Retrying;
                    self.retry_at
                        .insert(idx, Instant::now() + Duration::from_millis(delay));
                    batch.event(
                        EventKind::StepRetrying,
                        Some(&sid),
                        Some(number),
                        json!({ "error": error, "delay_ms": delay,
                                "next_attempt": row.attempts + 1 }),
                    );
                } else {
                    row.status = StepStatus::Failed;
                    row.finished_at = Some(now);
                    let why = if class == FailureClass::Fatal {
                        "not retryable"
                    } else {
                        "retries exhausted"
                    };
                    batch.event(
                        EventKind::StepFailed,
                        Some(&sid),
                        Some(number),
                        json!({ "error": error, "attempts": row.attempts, "reason": why }),
                    );
                }
            }
            Outcome::Blocked {
                reason, denials, ..
            } => {
                att.outcome = "blocked".into();
                att.error = Some(reason.clone());
                row.status = StepStatus::Blocked;
                row.error = Some(reason.clone());
                row.guidance = None;
                batch.event(
                    EventKind::StepBlocked,
                    Some(&sid),
                    Some(number),
                    json!({ "reason": reason, "permission_denials": denials }),
                );
            }
            Outcome::Stopped { .. } => {
                att.outcome = if cancelled {
                    "cancelled"
                } else {
                    "interrupted"
                }
                .into();
                if cancelled {
                    row.status = StepStatus::Cancelled;
                    row.finished_at = Some(now);
                    batch.event(
                        EventKind::StepCancelled,
                        Some(&sid),
                        Some(number),
                        Value::Null,
                    );
                } else {
                    row.status = StepStatus::Pending;
                }
            }
        }
        batch.steps.push(row.clone());
        batch.attempts.push(att);
    }

    /// Marks ready steps running (as far as permits allow) and prepares their attempts.
    fn start_ready(&mut self, batch: &mut Batch) -> Vec<(AttemptSpec, OwnedSemaphorePermit)> {
        let now = now_ms();
        let due = Instant::now();
        let mut out = Vec::new();
        self.starved = false;
        for idx in 0..self.steps.len() {
            let ready = match self.steps[idx].status {
                StepStatus::Pending => self.def.steps[idx].deps.iter().all(|d| {
                    self.index
                        .get(d)
                        .is_some_and(|&j| self.steps[j].status.satisfies_deps())
                }),
                StepStatus::Retrying => self.retry_at.get(&idx).is_none_or(|t| *t <= due),
                _ => false,
            };
            if !ready {
                continue;
            }
            let permit = match self.spare.take() {
                Some(p) => p,
                None => match self.sh.permits.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        self.starved = true;
                        break;
                    }
                },
            };
            self.retry_at.remove(&idx);
            let spec = self.prepare(idx);
            let row = &mut self.steps[idx];
            row.attempts += 1;
            row.status = StepStatus::Running;
            row.started_at.get_or_insert(now);
            row.finished_at = None;
            row.last_activity_at = Some(now);
            let resume = match &spec.prepared {
                Prepared::Agent { resume, .. } => resume.clone(),
                _ => None,
            };
            let number = row.attempts;
            let spec = AttemptSpec { number, ..spec };
            self.attempt_started.insert(idx, now);
            batch.attempts.push(AttemptRow {
                step_id: row.step_id.clone(),
                number,
                started_at: now,
                outcome: "running".into(),
                session_id: resume.clone(),
                owner: Some(self.sh.owner.clone()),
                ..Default::default()
            });
            batch.steps.push(row.clone());
            let sid = row.step_id.clone();
            batch.event(
                EventKind::StepStarted,
                Some(&sid),
                Some(number),
                match resume {
                    Some(s) => json!({ "resume_session": s }),
                    None => Value::Null,
                },
            );
            out.push((spec, permit));
        }
        if let Some(p) = self.spare.take() {
            drop(p);
        }
        if !out.is_empty() && self.status != WorkflowStatus::Running {
            self.status = WorkflowStatus::Running;
            batch.status = Some((WorkflowStatus::Running, None, false));
            let started = (
                EventKind::WorkflowStarted,
                None,
                None,
                Some(json!({ "step_count": self.steps.len() })),
            );
            batch.events.insert(0, started);
        }
        out
    }

    /// Renders a step's action for its next attempt.
    fn prepare(&self, idx: usize) -> AttemptSpec {
        let step = &self.def.steps[idx];
        let row = &self.steps[idx];
        let lookup = |r: &Reference| -> String {
            let get = |id: &String| self.index.get(id).map(|&j| &self.steps[j]);
            match r {
                Reference::StepOutput(id) => get(id)
                    .and_then(|s| s.output.as_deref())
                    .map(|o| o.trim_end().to_owned())
                    .unwrap_or_default(),
                Reference::StepStatus(id) => get(id)
                    .map(|s| s.status.as_str().to_owned())
                    .unwrap_or_default(),
                Reference::StepSession(id) => get(id)
                    .and_then(|s| s.session_id.clone())
                    .unwrap_or_default(),
                Reference::Input(name) => self.def.inputs.get(name).cloned().unwrap_or_default(),
            }
        };
        let prepared = match &step.action {
            Action::Run(argv) => Prepared::Run(
                argv.iter()
                    .map(|t| t.render(&lookup, Quoting::Verbatim))
                    .collect(),
            ),
            Action::Shell(t) => {
                let (script, env) = t.render_shell(&lookup);
                Prepared::Shell { script, env }
            }
            Action::Prompt(t) => {
                let prompt = t.render(&lookup, Quoting::Verbatim);
                let overrides: AgentOptions = row
                    .agent_overrides
                    .as_deref()
                    .and_then(|o| serde_json::from_str(o).ok())
                    .unwrap_or_default();
                let options = step.agent.merged(&overrides);
                let resume = if row.fresh_session {
                    None
                } else {
                    row.session_id.clone()
                };
                let prompt = match (&resume, &row.guidance) {
                    (Some(_), Some(g)) => g.clone(),
                    (Some(_), None) => format!(
                        "Your previous attempt at this task did not finish{}. Continue from \
                         where you left off and complete the task:\n\n{prompt}",
                        row.error
                            .as_deref()
                            .map(|e| format!(" ({})", tail(e, 500)))
                            .unwrap_or_default()
                    ),
                    (None, Some(g)) => format!("{prompt}\n\n{g}"),
                    (None, None) => prompt,
                };
                Prepared::Agent {
                    prompt,
                    options,
                    resume,
                }
            }
        };
        AttemptSpec {
            workflow_id: self.id.clone(),
            step_idx: idx,
            step_id: step.id.clone(),
            number: row.attempts + 1,
            prepared,
            cwd: step.cwd.clone(),
            env: step.env.clone(),
            timeout: step.timeout_s.map(Duration::from_secs),
            success: step.success.clone(),
        }
    }

    /// Ends the workflow: nothing runs and nothing more can start.
    fn finish(&mut self, batch: &mut Batch) {
        let count = |st: StepStatus| self.steps.iter().filter(|s| s.status == st).count();
        let all_done = self.steps.iter().all(|s| s.status.satisfies_deps());
        let (status, kind, error) = if all_done {
            (
                WorkflowStatus::Completed,
                EventKind::WorkflowCompleted,
                None,
            )
        } else if count(StepStatus::Failed) > 0 {
            let failed: Vec<String> = self
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Failed)
                .map(|s| {
                    format!(
                        "step {} failed: {}",
                        s.step_id,
                        tail(s.error.as_deref().unwrap_or("unknown error"), 500)
                    )
                })
                .collect();
            (
                WorkflowStatus::Failed,
                EventKind::WorkflowFailed,
                Some(failed.join("; ")),
            )
        } else if count(StepStatus::Blocked) > 0 {
            let blocked: Vec<String> = self
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Blocked)
                .map(|s| {
                    format!(
                        "step {} is blocked: {}",
                        s.step_id,
                        s.error.as_deref().unwrap_or("")
                    )
                })
                .collect();
            (
                WorkflowStatus::Blocked,
                EventKind::WorkflowBlocked,
                Some(blocked.join("; ")),
            )
        } else {
            (
                WorkflowStatus::Cancelled,
                EventKind::WorkflowCancelled,
                Some("some steps were cancelled".to_owned()),
            )
        };
        self.status = status;
        batch.status = Some((status, error.clone(), true));
        let done = self
            .steps
            .iter()
            .filter(|s| s.status.satisfies_deps())
            .count();
        batch.event(
            kind,
            None,
            None,
            match &error {
                Some(e) => json!({ "error": e, "done": done, "total": self.steps.len() }),
                None => json!({ "done": done, "total": self.steps.len() }),
            },
        );
    }

    /// When the next running `on_stall: restart` attempt would count as stalled.
    fn next_stall_check(&self) -> Option<Instant> {
        self.last_output
            .iter()
            .filter(|(idx, _)| !self.stalled.contains(idx))
            .filter_map(|(&idx, &last)| {
                let step = self.def.steps.get(idx)?;
                (step.on_stall == OnStall::Restart)
                    .then(|| last + Duration::from_secs(step.stall_timeout_s))
            })
            .min()
    }

    /// Stops every `on_stall: restart` attempt that has been silent past its threshold.
    fn restart_stalled(&mut self) {
        let now = Instant::now();
        for (&idx, &last) in &self.last_output {
            let Some(step) = self.def.steps.get(idx) else {
                continue;
            };
            let limit = Duration::from_secs(step.stall_timeout_s);
            if step.on_stall == OnStall::Restart
                && now.duration_since(last) >= limit
                && self.stalled.insert(idx)
                && let Some(stop) = self.attempt_stops.get(&idx)
            {
                tracing::warn!(thread_id = %self.id, step = %step.id, "attempt stalled; restarting it");
                stop.cancel();
            }
        }
    }

    async fn on_signal(&mut self, sig: Signal) -> bool {
        let Some(row) = self.steps.get_mut(sig.step_idx) else {
            return true;
        };
        if row.attempts != sig.attempt || row.status != StepStatus::Running {
            return true;
        }
        let step_id = row.step_id.clone();
        match sig.kind {
            SignalKind::Session(session) => {
                row.session_id = Some(session.clone());
                let (id, owner, epoch) = (self.id.clone(), self.sh.owner.clone(), self.epoch);
                let attempt = sig.attempt;
                let res = self
                    .sh
                    .store
                    .write(move |ctx| {
                        store::check_fence(ctx.conn, &id, &owner, epoch)?;
                        store::set_session(ctx, &id, &step_id, attempt, &session)
                    })
                    .await;
                self.check_write(res)
            }
            SignalKind::Activity => {
                let now = Instant::now();
                self.last_output.insert(sig.step_idx, now);
                let last = self.last_activity.get(&sig.step_idx).copied();
                if last.is_some_and(|l| now - l < ACTIVITY_EVERY) {
                    return true;
                }
                self.last_activity.insert(sig.step_idx, now);
                let id = self.id.clone();
                let at = now_ms();
                row.last_activity_at = Some(at);
                let res = self
                    .sh
                    .store
                    .write(move |ctx| store::set_activity(ctx, &id, &step_id, at))
                    .await;
                self.check_write(res)
            }
            SignalKind::Progress(message) => {
                // Throttled, keeping the latest: a message arriving too soon waits for the end
                // of the interval and replaces any message already waiting.
                self.held_progress
                    .insert(sig.step_idx, (sig.attempt, message));
                let last = self.last_progress.get(&sig.step_idx).copied();
                if last.is_some_and(|l| Instant::now() - l < PROGRESS_EVERY) {
                    return true;
                }
                self.flush_progress().await
            }
        }
    }

    /// When the earliest held progress message may be written.
    fn next_progress_flush(&self) -> Option<Instant> {
        self.held_progress
            .keys()
            .map(|idx| {
                self.last_progress
                    .get(idx)
                    .map_or_else(Instant::now, |l| *l + PROGRESS_EVERY)
            })
            .min()
    }

    /// Writes the held progress messages whose throttle interval has passed.
    async fn flush_progress(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<usize> = self
            .held_progress
            .keys()
            .copied()
            .filter(|idx| {
                self.last_progress
                    .get(idx)
                    .is_none_or(|l| now - *l >= PROGRESS_EVERY)
            })
            .collect();
        let mut batch = Batch::default();
        for idx in due {
            let Some((attempt, message)) = self.held_progress.remove(&idx) else {
                continue;
            };
            let Some(row) = self.steps.get(idx) else {
                continue;
            };
            if row.attempts != attempt || row.status != StepStatus::Running {
                continue;
            }
            self.last_progress.insert(idx, now);
            let step_id = row.step_id.clone();
            batch.event(
                EventKind::StepProgress,
                Some(&step_id),
                Some(attempt),
                json!({ "message": message }),
            );
        }
        if batch.is_empty() {
            return true;
        }
        self.commit(batch).await
    }

    fn check_write(&mut self, res: store::Result<()>) -> bool {
        match res {
            Ok(()) => true,
            Err(StoreError::Fenced(_)) => {
                self.set_reason(StopReason::Fenced);
                self.stop.cancel();
                false
            }
            Err(e) => {
                tracing::warn!(thread_id = %self.id, error = %e, "progress write failed");
                true
            }
        }
    }

    /// Checks in the store that this process still holds the workflow's lease. Starting a
    /// process is a side effect no commit can fence: a process that was frozen past its lease
    /// between a commit and the start of the attempt it recorded must not start it, because
    /// another process may have adopted the workflow and re-run that step meanwhile.
    async fn still_owner(&mut self) -> bool {
        let (id, owner, epoch) = (self.id.clone(), self.sh.owner.clone(), self.epoch);
        match self
            .sh
            .store
            .read(move |c| store::check_fence(c, &id, &owner, epoch))
            .await
        {
            Ok(()) => true,
            Err(StoreError::Fenced(_)) => {
                tracing::warn!(thread_id = %self.id, "lease lost before starting steps; stopping this workflow here");
                self.set_reason(StopReason::Fenced);
                self.stop.cancel();
                false
            }
            // Unknown: the commit just made went through, so start them.
            Err(e) => {
                tracing::warn!(thread_id = %self.id, error = %e, "cannot check the lease");
                true
            }
        }
    }

    /// Commits a batch. Store errors (a full disk, an I/O error) are retried with capped
    /// backoff until the commit succeeds, the lease is lost or the driver is stopped: giving up
    /// would leave the workflow owned by this live process with nobody driving it. Returns
    /// false if the driver must stop.
    async fn commit(&mut self, batch: Batch) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            let (id, owner, epoch) = (self.id.clone(), self.sh.owner.clone(), self.epoch);
            let b = batch.clone();
            match self
                .sh
                .store
                .write(move |ctx| b.apply(ctx, &id, &owner, epoch))
                .await
            {
                Ok(()) => return true,
                Err(StoreError::Fenced(_)) => {
                    tracing::warn!(thread_id = %self.id, "lease lost; stopping this workflow here");
                    self.set_reason(StopReason::Fenced);
                    self.stop.cancel();
                    return false;
                }
                Err(e) => {
                    tracing::error!(thread_id = %self.id, error = %e, "cannot commit; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(COMMIT_RETRY_MAX);
                }
            }
        }
        self.set_reason(StopReason::StoreFailed);
        self.stop.cancel();
        false
    }

    /// After a stop: waits for attempts to end, then records the stop (unless the lease or
    /// the store is gone, in which case the workflow is left for recovery).
    async fn finish_stopped(mut self) {
        self.stop.cancel();
        let mut done = Vec::new();
        while let Some(joined) = self.running.join_next().await {
            if let Ok(r) = joined {
                done.push(r);
            }
        }
        let reason = self.reason();
        if matches!(
            reason,
            StopReason::Fenced | StopReason::StoreFailed | StopReason::None
        ) {
            return;
        }
        let mut batch = Batch::default();
        for (idx, attempt, outcome) in done {
            self.apply_outcome(&mut batch, idx, attempt, outcome);
        }
        self.retry_at.clear();
        let cancel = reason == StopReason::Cancel;
        let now = now_ms();
        for row in &mut self.steps {
            if matches!(row.status, StepStatus::Retrying | StepStatus::Running) {
                if cancel {
                    row.status = StepStatus::Cancelled;
                    row.finished_at = Some(now);
                } else {
                    row.status = StepStatus::Pending;
                }
                batch.steps.push(row.clone());
            }
        }
        if self.steps.iter().all(|s| s.status.satisfies_deps()) {
            self.finish(&mut batch);
        } else if cancel {
            batch.status = Some((WorkflowStatus::Cancelled, None, true));
            batch.event(EventKind::WorkflowCancelled, None, None, Value::Null);
        } else {
            batch.status = Some((WorkflowStatus::Interrupted, None, true));
            batch.event(
                EventKind::WorkflowInterrupted,
                None,
                None,
                json!({ "reason": "the server shut down; the next baton process resumes it" }),
            );
        }
        let (id, owner, epoch) = (self.id.clone(), self.sh.owner.clone(), self.epoch);
        if let Err(e) = self
            .sh
            .store
            .write(move |ctx| batch.apply(ctx, &id, &owner, epoch))
            .await
        {
            tracing::warn!(thread_id = %self.id, error = %e, "cannot record the stop");
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
