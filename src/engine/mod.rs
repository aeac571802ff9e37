//! The engine: submits, drives, stops and resumes workflows over the store.
//!
//! Invariant: a process only executes workflows whose lease it holds. Every state change that
//! does not happen inside a running workflow's driver (submit, cancel, resume, adoption) first
//! takes the lease with a compare-and-set on the workflow's epoch, so two processes sharing one
//! database never run the same workflow at once. The engine holds no SQL: it asks the store
//! for named operations and hands it change sets computed by the pure scheduler.
//!
//! # Layout
//! - `scheduler`: the pure state machine of a workflow (readiness, outcomes, retries, finish,
//!   stop) and the transitions of stored workflows (resume, cancel, adoption).
//! - `driver`: one task per owned workflow; the I/O loop around its scheduler.
//! - `control`: submit, cancel and resume requests; `answer`: answers to human steps.
//! - `lease`: owner registration, lease renewal, liveness of other owners, adoption.
//! - `operator`: what an operator surface needs beyond the tools: filtered listing, delete,
//!   full step output, metrics.
//! - `retention`: deleting finished workflows in small batches, on request and periodically.
//! - `follow`: the one event stream every front-end consumes.
//! - `handover`: the per-database background worker that runs what `baton serve` stores.
//! - `view`: status and monitor read models.
//! - `executor`, `agent`, `process`: running attempts as child processes; `signals`: what a
//!   running attempt reports; `outcome`: typed attempt outcomes; `structured`: checking
//!   JSON outputs against their schema.

mod agent;
mod answer;
mod control;
mod defs;
mod driver;
mod error;
mod executor;
mod follow;
mod handover;
mod lease;
mod lease_clock;
mod live;
pub use live::{LiveOutput, Stream as LiveStream};
mod operator;
mod outcome;
mod process;
mod retention;
mod scheduler;
mod signals;
mod structured;
mod subworkflow;
mod view;

pub use answer::AnswerRequest;
pub use control::{MAX_DEFINITION_BYTES, ResumeMode, ResumeRequest, SubmitRequest, Submitted};
pub use error::{EngineError, Result};
pub use follow::{Follow, GlobalFollow, Page};
pub use handover::{Launcher, WorkerLauncher, WorkerLock, worker_files};
pub use lease::self_fence_after;
pub use operator::{Metrics, StepStream};
pub use process::{FDS_PER_ATTEMPT, raise_fd_limit, reap_after_parent_exits, spawn_reaper};
pub use retention::{FINISHED, PRUNE_BATCH, PruneRequest, Retention};
pub use view::MonitorFilter;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{EventData, EventKind, NewEvent, ThreadId, WorkflowStatus, now_ms};
use crate::store::{Changes, Fence, NewWorkflow, Snapshot, StepRow, Store, StoreError};
use crate::workflow::Workflow;
use driver::{StopCell, StopReason};
use executor::ExecConfig;
use scheduler::Scheduler;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_concurrent_steps: usize,
    /// Program and leading arguments of the agent CLI.
    pub agent_command: Vec<String>,
    /// Bytes of each output stream kept per attempt.
    pub output_cap: usize,
    /// Time between SIGTERM and SIGKILL when stopping an attempt.
    pub kill_grace: Duration,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// Crash-interrupted attempts of one step before it is failed instead of re-run.
    pub max_crashes: i64,
    /// Directory relative paths in workflows resolve against (the server's cwd).
    pub base_dir: PathBuf,
    /// Take over workflows of dead processes (servers do; a one-off `baton run` does not).
    pub adopt_orphans: bool,
    /// Attempts succeed at once without running anything: measures the engine's own
    /// overhead (scheduling and durable commits) in benchmarks.
    pub noop_executor: bool,
    /// Run workflows in this process. When false (a `baton serve` whose execution is handed
    /// to the background worker), submitted and resumed workflows are left unowned and the
    /// [`Launcher`] is asked to make sure a worker runs.
    pub execute: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_concurrent_steps: 32,
            agent_command: vec!["claude".into()],
            output_cap: 1024 * 1024,
            kill_grace: Duration::from_secs(5),
            lease: Duration::from_secs(15),
            max_crashes: 3,
            base_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            adopt_orphans: true,
            noop_executor: false,
            execute: true,
        }
    }
}

/// How a driver gets its workflow.
enum DriverInit {
    /// Already read (adoption and resume read it in the transaction that takes the lease).
    Loaded(Snapshot),
    /// A workflow just compiled: the driver's first commit inserts it; `reply` gets the
    /// outcome of that commit.
    New {
        def: Arc<Workflow>,
        record: NewWorkflow,
        reply: oneshot::Sender<crate::store::Result<()>>,
    },
}

struct RunHandle {
    stop: CancellationToken,
    reason: Arc<StopCell>,
    /// Cancelled once the driver has stopped (or its task was dropped).
    done: CancellationToken,
    /// How long this process holds the workflow's lease; renewals extend it.
    lease: lease_clock::LeaseClock,
}

pub(crate) struct Shared {
    store: Store,
    cfg: EngineConfig,
    exec: ExecConfig,
    owner: String,
    host: String,
    permits: Arc<Semaphore>,
    runs: Mutex<HashMap<ThreadId, RunHandle>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// When this process last renewed its leases (its clock, ms): self-fencing and the
    /// reaper's heartbeat go by it; each driver's spawns go by its own workflow's lease.
    renewed_at: Arc<AtomicI64>,
    /// Starts the worker that runs what this process does not (`execute: false`).
    launcher: OnceLock<Arc<dyn handover::Launcher>>,
    /// Workflows this process took over from dead owners (metrics).
    adoptions: std::sync::atomic::AtomicU64,
    /// Workflows whose drivers self-fencing stopped, taken up again once leases renew.
    self_fenced: Mutex<Vec<ThreadId>>,
    /// One compiled copy of each definition the running workflows use.
    defs: defs::Definitions,
}

impl Shared {
    /// The stored workflow, or [`EngineError::NotFound`].
    async fn snapshot_of(&self, id: &ThreadId) -> Result<Snapshot> {
        self.store
            .snapshot(id.clone())
            .await?
            .ok_or_else(|| EngineError::NotFound {
                thread_id: id.clone(),
            })
    }

    fn lease_until(&self) -> i64 {
        now_ms() + self.cfg.lease.as_millis() as i64
    }

    /// The registry of running drivers. Its critical sections never panic; a poisoned lock
    /// still guards a consistent map, so it is recovered rather than treated as empty.
    fn runs(&self) -> MutexGuard<'_, HashMap<ThreadId, RunHandle>> {
        self.runs.lock().unwrap_or_else(|e| {
            tracing::error!("the driver registry lock was poisoned; recovering it");
            e.into_inner()
        })
    }

    fn is_running_here(&self, id: &str) -> bool {
        self.runs().contains_key(id)
    }

    fn driver_done(&self, id: &str) -> Option<CancellationToken> {
        self.runs().get(id).map(|h| h.done.clone())
    }

    /// Asks for a worker to run unowned workflows (when this process does not run them).
    fn hand_over(&self) {
        if let Some(l) = self.launcher.get() {
            l.ensure();
        }
    }

    fn fence(&self, id: &ThreadId, epoch: i64) -> Fence {
        Fence {
            id: id.clone(),
            owner: self.owner.clone(),
            epoch,
        }
    }
}

/// Handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    sh: Arc<Shared>,
}

impl Engine {
    /// Registers this process as an owner and starts lease renewal and adoption. Call
    /// [`Engine::recover`] to adopt workflows left by dead processes.
    pub async fn start(store: Store, cfg: EngineConfig) -> Result<Engine> {
        let owner = uuid::Uuid::now_v7().simple().to_string();
        let host = lease::host_key();
        let renewed_at = Arc::new(AtomicI64::new(now_ms()));
        let exec = ExecConfig {
            agent_command: cfg.agent_command.clone(),
            output_cap: cfg.output_cap,
            kill_grace: cfg.kill_grace,
            owner_id: owner.clone(),
            noop: cfg.noop_executor,
            tails: Arc::default(),
        };
        let sh = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(cfg.max_concurrent_steps.max(1))),
            store,
            cfg,
            exec,
            owner,
            host,
            runs: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            renewed_at,
            launcher: OnceLock::new(),
            adoptions: std::sync::atomic::AtomicU64::new(0),
            self_fenced: Mutex::new(Vec::new()),
            defs: Default::default(),
        });
        lease::register(&sh).await?;
        let ticker = sh.clone();
        sh.tracker.spawn(lease::tick_loop(ticker));
        if sh.store.is_shared() {
            sh.tracker.spawn(lease::fence_loop(sh.clone()));
        }
        Ok(Engine { sh })
    }

    pub fn store(&self) -> &Store {
        &self.sh.store
    }

    /// Sets what starts a worker for the workflows this process does not run; asks it at
    /// once if orphaned or queued work is waiting.
    pub fn set_launcher(&self, launcher: Arc<dyn handover::Launcher>) {
        let _ = self.sh.launcher.set(launcher);
    }

    /// This process's owner id.
    pub fn owner_id(&self) -> &str {
        &self.sh.owner
    }

    pub fn config(&self) -> &EngineConfig {
        &self.sh.cfg
    }

    /// Adopts every workflow whose owner is gone. Returns the adopted thread ids.
    /// In a process that does not run workflows, asks for a worker instead when any wait.
    pub async fn recover(&self) -> Result<Vec<ThreadId>> {
        if !self.sh.cfg.execute {
            lease::hand_over_waiting(&self.sh).await?;
            return Ok(Vec::new());
        }
        lease::adopt_orphans(&self.sh).await
    }

    /// Number of workflows this process is driving.
    pub fn active(&self) -> usize {
        self.sh.runs().len()
    }

    /// Waits until this process's driver of `thread_id` (if any) has stopped.
    pub async fn wait_idle(&self, thread_id: &str) {
        if let Some(done) = self.sh.driver_done(thread_id) {
            done.cancelled().await;
        }
    }

    /// Stops starting steps, terminates running attempts, records them interrupted and
    /// releases leases so the next process resumes at once. Idempotent.
    pub async fn shutdown(&self) {
        self.sh.shutdown.cancel();
        let handles: Vec<(CancellationToken, Arc<StopCell>, CancellationToken)> = self
            .sh
            .runs()
            .values()
            .map(|h| (h.stop.clone(), h.reason.clone(), h.done.clone()))
            .collect();
        for (stop, reason, _) in &handles {
            reason.set(StopReason::Shutdown);
            stop.cancel();
        }
        for (_, _, done) in handles {
            done.cancelled().await;
        }
        self.sh.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.sh.tracker.wait()).await;
        lease::unregister(&self.sh).await;
    }
}

impl Shared {
    /// The definition stored with a workflow, checked against its step rows: the copy a
    /// running workflow already uses, else parsed (and not kept; see [`defs`]).
    fn definition(&self, snap: &Snapshot) -> crate::store::Result<Arc<Workflow>> {
        let def = match self.defs.get(&snap.definition) {
            Some(def) => def,
            None => Arc::new(serde_json::from_str(&snap.definition).map_err(|e| {
                StoreError::Corrupt(format!("stored definition of {}: {e}", snap.workflow.id))
            })?),
        };
        check_rows(snap, &def)?;
        Ok(def)
    }
}

/// A row per defined step outside repeat groups, plus the instances `ID[i]` of expanded
/// for_each steps and the iterations `ID#k` of the groups' steps.
fn check_rows(snap: &Snapshot, def: &Workflow) -> crate::store::Result<()> {
    let known = |id: &str| {
        def.step(id).is_some_and(|s| s.group.is_none())
            || crate::workflow::parse_instance(id)
                .and_then(|(parent, _)| def.step(parent))
                .is_some_and(|s| s.for_each.is_some())
            || crate::workflow::parse_iteration(id)
                .and_then(|(step, _)| def.step(step))
                .is_some_and(|s| s.group.is_some())
    };
    let rows: std::collections::HashSet<&str> =
        snap.steps.iter().map(|s| s.step_id.as_str()).collect();
    if !snap.steps.iter().all(|s| known(&s.step_id))
        || !def
            .steps
            .iter()
            .filter(|s| s.group.is_none())
            .all(|s| rows.contains(s.id.as_str()))
    {
        return Err(StoreError::Corrupt(format!(
            "steps of {} do not match its definition",
            snap.workflow.id
        )));
    }
    Ok(())
}

impl Shared {
    /// Starts a driver: of a stored workflow, or of a new one whose first commit stores it.
    /// `lease_until` is the claim's (for a new workflow, its record's): the driver starts no
    /// process past it unless a renewal extends it.
    fn spawn_driver(
        self: &Arc<Self>,
        id: &ThreadId,
        epoch: i64,
        lease_until: i64,
        init: DriverInit,
    ) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let stop = CancellationToken::new();
        let reason = Arc::new(StopCell::default());
        let done = CancellationToken::new();
        let lease =
            lease_clock::LeaseClock::new(lease_until, self.renewed_at.clone(), self.cfg.lease);
        {
            let mut runs = self.runs();
            if runs.contains_key(id) {
                return;
            }
            runs.insert(
                id.clone(),
                RunHandle {
                    stop: stop.clone(),
                    reason: reason.clone(),
                    done: done.clone(),
                    lease: lease.clone(),
                },
            );
        }
        let sh = self.clone();
        let id = id.clone();
        // Boxed, and freed once the driver is built: the task does not keep room for it.
        let init = Box::new(init);
        self.tracker.spawn(async move {
            // Dropped last, however the task ends: waiters learn the driver is gone.
            let _done = done.drop_guard();
            let fence = sh.fence(&id, epoch);
            let driver = sh
                .build_driver(&id, fence.clone(), init, stop, reason, lease)
                .map(Box::new);
            match driver {
                Ok(driver) => {
                    let run = std::panic::AssertUnwindSafe(driver.run()).catch_unwind();
                    if let Err(panic) = run.await {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".to_owned());
                        drop(panic);
                        Box::pin(sh.record_driver_failure(&fence, what)).await;
                    }
                }
                Err(e) => tracing::error!(thread_id = %id, error = %e, "cannot load workflow"),
            }
            tracing::debug!(thread_id = %id, "driver stopped");
            sh.runs().remove(&*id);
        });
    }

    fn build_driver(
        self: &Arc<Self>,
        id: &ThreadId,
        fence: Fence,
        init: Box<DriverInit>,
        stop: CancellationToken,
        reason: Arc<StopCell>,
        lease: lease_clock::LeaseClock,
    ) -> crate::store::Result<driver::Driver> {
        let now = now_ms();
        let mut spent = (0.0, None);
        let (def, status, steps, new) = match *init {
            DriverInit::Loaded(snap) => {
                // Shared only by drivers: a read of a finished workflow keeps nothing.
                let def = self.defs.share(&snap.definition, self.definition(&snap)?);
                spent = (snap.workflow.total_cost_usd, snap.workflow.max_cost_usd);
                (def, snap.workflow.status, snap.steps, None)
            }
            DriverInit::New { def, record, reply } => {
                // A repeat group's steps get rows per iteration (`ID#k`), not up front.
                let mut steps = Vec::with_capacity(def.steps.len());
                steps.extend(
                    def.steps
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.group.is_none())
                        .map(|(i, s)| StepRow::new(&s.id, i)),
                );
                (def, WorkflowStatus::Queued, steps, Some((record, reply)))
            }
        };
        let mut sched = Scheduler::new(id.clone(), def, status, steps, now);
        sched.set_budget(spent.0, spent.1);
        let driver = driver::Driver::new(self.clone(), fence, sched, stop, reason, lease);
        Ok(match new {
            Some((record, reply)) => driver.with_new_record(record, reply),
            None => driver,
        })
    }

    /// A driver panicked: its workflow must not look running forever. It is failed (and
    /// resumable), with the panic as its error.
    async fn record_driver_failure(&self, fence: &Fence, what: String) {
        let error = format!(
            "internal error in baton's scheduler ({what}); resume the workflow to try again"
        );
        tracing::error!(thread_id = %fence.id, error = %error, "workflow driver failed");
        let mut ch = Changes::default();
        ch.set_status(WorkflowStatus::Failed, Some(error.clone()), true);
        ch.event(NewEvent::workflow(
            EventKind::WorkflowFailed,
            EventData {
                error: Some(error),
                ..Default::default()
            },
        ));
        if let Err(e) = self.store.commit(fence.clone(), ch).await {
            tracing::error!(thread_id = %fence.id, error = %e, "cannot record the driver failure");
        }
    }

    /// Stops this process's driver of `id` for `reason`; returns its done signal if it ran.
    fn stop_driver(&self, id: &str, why: StopReason) -> Option<CancellationToken> {
        let runs = self.runs();
        let h = runs.get(id)?;
        h.reason.set(why);
        h.stop.cancel();
        Some(h.done.clone())
    }
}
