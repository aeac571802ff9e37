//! The engine: submits, drives, stops and resumes workflows over the store.
//!
//! Invariant: a process only executes workflows whose lease it holds. Every state change that
//! does not happen inside a running workflow's driver (submit, cancel, resume, adoption) first
//! takes the lease with a compare-and-set on the workflow's epoch, so two processes sharing one
//! database never run the same workflow at once.
//!
//! # Layout
//! - [`driver`]: one task per owned workflow; schedules steps, commits step boundaries.
//! - [`control`]: submit, cancel, resume and adoption of workflows.
//! - [`lease`]: owner registration, lease renewal, liveness of other owners.
//! - [`executor`], [`agent`], [`process`]: running attempts as child processes.
//! - [`outcome`]: typed attempt outcomes; [`view`]: status and monitor read models.

mod agent;
mod control;
mod driver;
mod executor;
mod lease;
pub(crate) mod outcome;
mod process;
mod view;

pub use control::{ResumeMode, ResumeRequest, SubmitRequest, Submitted};
pub use process::{reap_after_parent_exits, spawn_reaper};
pub use view::{
    AttemptView, MonitorFilter, MonitorView, MonitoredWorkflow, Progress, StepView, WorkflowView,
    describe_event,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{Store, StoreError, WorkflowStatus};
use crate::workflow::{Problems, Workflow};
use driver::StopReason;
use executor::ExecConfig;

/// Errors of the engine, as a caller can act on them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The workflow definition or inputs are invalid; nothing was stored.
    #[error("invalid workflow:\n{0}")]
    Invalid(Problems),
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "unknown thread_id {0:?}: no workflow with this id exists in this store (list them with workflow_monitor)"
    )]
    NotFound(String),
    /// The request is valid but not in the workflow's current state.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

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
        }
    }
}

/// How a driver gets its workflow.
enum DriverInit {
    /// Read it from the store (resume).
    Load,
    /// Already read (adoption reads it in the transaction that takes the lease).
    Loaded(control::Loaded),
    /// A workflow just compiled: the driver's first commit inserts it; `reply` gets the
    /// outcome of that commit.
    New {
        def: Arc<Workflow>,
        record: driver::NewRecord,
        reply: tokio::sync::oneshot::Sender<crate::store::Result<()>>,
    },
}

struct RunHandle {
    stop: CancellationToken,
    reason: Arc<Mutex<StopReason>>,
    done: watch::Receiver<bool>,
}

pub(crate) struct Shared {
    store: Store,
    cfg: EngineConfig,
    exec: ExecConfig,
    owner: String,
    host: String,
    permits: Arc<Semaphore>,
    runs: Mutex<HashMap<String, RunHandle>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// When this process last renewed its leases (store clock, ms): its own view of how long
    /// it may still act as owner without looking at the store.
    renewed_at: AtomicI64,
}

impl Shared {
    /// Whether this process's leases may have expired, e.g. because it was frozen or starved
    /// for longer than a lease: another process may have adopted its workflows meanwhile.
    fn lease_in_doubt(&self) -> bool {
        let lease = self.cfg.lease.as_millis() as i64;
        crate::store::now_ms() >= self.renewed_at.load(Ordering::Relaxed) + lease * 2 / 3
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
        let exec = ExecConfig {
            agent_command: cfg.agent_command.clone(),
            output_cap: cfg.output_cap,
            kill_grace: cfg.kill_grace,
            owner_id: owner.clone(),
            noop: cfg.noop_executor,
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
            renewed_at: AtomicI64::new(crate::store::now_ms()),
        });
        lease::register(&sh).await?;
        let ticker = sh.clone();
        sh.tracker.spawn(lease::tick_loop(ticker));
        Ok(Engine { sh })
    }

    pub fn store(&self) -> &Store {
        &self.sh.store
    }

    /// This process's owner id.
    pub fn owner_id(&self) -> &str {
        &self.sh.owner
    }

    pub fn config(&self) -> &EngineConfig {
        &self.sh.cfg
    }

    /// Adopts every workflow whose owner is gone. Returns the adopted thread ids.
    pub async fn recover(&self) -> Result<Vec<String>> {
        lease::adopt_orphans(&self.sh).await
    }

    /// Number of workflows this process is driving.
    pub fn active(&self) -> usize {
        self.sh.runs.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Waits until this process's driver of `thread_id` (if any) has stopped.
    pub async fn wait_idle(&self, thread_id: &str) {
        let rx = self
            .sh
            .runs
            .lock()
            .ok()
            .and_then(|r| r.get(thread_id).map(|h| h.done.clone()));
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    /// Stops starting steps, terminates running attempts, records them interrupted and
    /// releases leases so the next process resumes at once.
    pub async fn shutdown(&self) {
        self.sh.shutdown.cancel();
        let handles: Vec<(
            CancellationToken,
            Arc<Mutex<StopReason>>,
            watch::Receiver<bool>,
        )> = match self.sh.runs.lock() {
            Ok(r) => r
                .values()
                .map(|h| (h.stop.clone(), h.reason.clone(), h.done.clone()))
                .collect(),
            Err(_) => Vec::new(),
        };
        for (stop, reason, _) in &handles {
            if let Ok(mut r) = reason.lock()
                && *r == StopReason::None
            {
                *r = StopReason::Shutdown;
            }
            stop.cancel();
        }
        for (_, _, mut done) in handles {
            let _ = done.wait_for(|d| *d).await;
        }
        self.sh.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.sh.tracker.wait()).await;
        lease::unregister(&self.sh).await;
    }
}

impl Shared {
    /// Starts driving a workflow this process has just taken the lease of.
    fn spawn_driver(self: &Arc<Self>, id: &str, epoch: i64) {
        self.spawn_driver_with(id, epoch, DriverInit::Load);
    }

    /// Starts a driver: of a stored workflow, or of a new one whose first commit stores it.
    fn spawn_driver_with(self: &Arc<Self>, id: &str, epoch: i64, init: DriverInit) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let stop = CancellationToken::new();
        let reason = Arc::new(Mutex::new(StopReason::None));
        let (done_tx, done_rx) = watch::channel(false);
        {
            let Ok(mut runs) = self.runs.lock() else {
                return;
            };
            if runs.contains_key(id) {
                return;
            }
            runs.insert(
                id.to_owned(),
                RunHandle {
                    stop: stop.clone(),
                    reason: reason.clone(),
                    done: done_rx,
                },
            );
        }
        let sh = self.clone();
        let id: Arc<str> = Arc::from(id);
        self.tracker.spawn(async move {
            let loaded = match init {
                DriverInit::Load => control::load_for_driver(&sh, &id)
                    .await
                    .map(|(def, status, steps)| (def, status, steps, None)),
                DriverInit::Loaded((def, status, steps)) => Ok((def, status, steps, None)),
                DriverInit::New { def, record, reply } => {
                    let steps = def
                        .steps
                        .iter()
                        .enumerate()
                        .map(|(i, s)| crate::store::StepRow::new(&s.id, i))
                        .collect();
                    Ok((def, WorkflowStatus::Queued, steps, Some((record, reply))))
                }
            };
            match loaded {
                Ok((def, status, steps, new)) => {
                    let mut driver = driver::Driver::new(
                        sh.clone(),
                        id.clone(),
                        epoch,
                        def,
                        status,
                        steps,
                        stop,
                        reason,
                    );
                    if let Some((record, reply)) = new {
                        driver = driver.with_new_record(record, reply);
                    }
                    driver.run().await;
                }
                Err(e) => tracing::error!(thread_id = %id, error = %e, "cannot load workflow"),
            }
            if let Ok(mut runs) = sh.runs.lock() {
                runs.remove(&*id);
            }
            let _ = done_tx.send(true);
        });
    }

    /// Stops this process's driver of `id` for `reason`; returns whether there was one.
    fn stop_driver(&self, id: &str, why: StopReason) -> Option<watch::Receiver<bool>> {
        let runs = self.runs.lock().ok()?;
        let h = runs.get(id)?;
        if let Ok(mut r) = h.reason.lock()
            && *r == StopReason::None
        {
            *r = why;
        }
        h.stop.cancel();
        Some(h.done.clone())
    }
}
