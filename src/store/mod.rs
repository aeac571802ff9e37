//! The store: the source of truth for workflows, steps, attempts, the event log and process
//! ownership, behind one interface with one backend per database kind (SQLite today).
//!
//! Invariant: every transaction and every query lives behind this interface; callers name
//! what they want (`commit` a step boundary, `transition` a workflow under a freshly taken
//! lease, `snapshot`, `events`, …) and never see a connection, a statement or a lock. Every
//! write by a workflow's owner is fenced by its epoch, and a write is acknowledged only once
//! the commit containing it is durable.
//!
//! # Layout
//! - `records`: the rows and change sets that cross this interface.
//! - `sqlite`: the SQLite backend (schema, migrations, queries, group commit).
//! - `postgres`: the PostgreSQL backend (the same operations for many processes on many
//!   machines: database clock, `SKIP LOCKED` claims, LISTEN/NOTIFY).

mod postgres;
mod records;
mod sqlite;

pub use records::{
    Adoptable, AttemptRow, COMMIT_BUCKETS_S, Changes, Claim, CommitStats, Deleted, DurationBuckets,
    EventPage, Fence, ListFilter, MetricCounts, MonitorRow, MonitorRows, NewWorkflow, OwnerRow,
    Renewal, STEP_DURATION_BUCKETS_S, Snapshot, StatusChange, StepExtra, StepRow, WorkflowRow,
};

use std::collections::BTreeMap;
use std::path::Path;

use tokio::sync::broadcast;

use crate::api::{ThreadId, WorkflowStatus};

/// Errors of the store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("cannot open database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the store is shut down")]
    Closed,
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A lock inside the store was poisoned by a panic; the store cannot be trusted.
    #[error("internal lock {0} is poisoned")]
    Poisoned(String),
    /// This process no longer holds the lease of the workflow it tried to write.
    #[error("workflow {0} is owned by another process")]
    Fenced(String),
    /// The write contradicts what is stored (e.g. the workflow exists already).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How durable a commit is. `Full` survives power loss; `Normal` survives process crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    #[default]
    Full,
    Normal,
}

/// Resolves once a commit that was returned as written is durable (see
/// [`Store::commit_early`]); an error means it may not be, and the store takes no more writes.
pub struct Durable(std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>);

impl Durable {
    pub(crate) fn new(f: impl std::future::Future<Output = Result<()>> + Send + 'static) -> Self {
        Durable(Box::pin(f))
    }

    /// Durable already.
    pub(crate) fn ready() -> Self {
        Durable::new(std::future::ready(Ok(())))
    }
}

impl std::future::Future for Durable {
    type Output = Result<()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        self.0.as_mut().poll(cx)
    }
}

/// What changed in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A commit of this process touched this workflow.
    Workflow(ThreadId),
    /// Something may have changed that this process did not write (another process's
    /// commit, or missed notices): re-read what you follow.
    Unknown,
}

/// Notices of changes. Latency only: a missed notice arrives as [`Change::Unknown`].
pub struct ChangeFeed {
    rx: broadcast::Receiver<Change>,
}

impl ChangeFeed {
    /// The next notice; `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<Change> {
        match self.rx.recv().await {
            Ok(c) => Some(c),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Change::Unknown),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

impl Store {
    /// Opens (creating with mode 0600 if needed) and migrates the SQLite database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Store> {
        Ok(Store {
            backend: Backend::Sqlite(sqlite::Sqlite::open(path, durability)?),
        })
    }

    /// Connects to and migrates the PostgreSQL database named by `url`
    /// (`postgres://…` or `postgresql://…`).
    pub async fn connect(url: &str, durability: Durability) -> Result<Store> {
        Ok(Store {
            backend: Backend::Postgres(postgres::Postgres::open(url, durability).await?),
        })
    }

    /// Where [`Store::location`] of the PostgreSQL database named by `url` is, without
    /// connecting to it.
    pub fn url_location(url: &str) -> Result<std::path::PathBuf> {
        postgres::url_location(url)
    }

    /// Whether `db` names a PostgreSQL database (a URL) rather than an SQLite file.
    pub fn is_url(db: &str) -> bool {
        postgres::is_url(db)
    }

    /// Whether other machines may share this store (PostgreSQL): then process ids say nothing
    /// about other owners, and work is spread over the processes that run it.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Where files kept beside the database go: the SQLite file itself, or for PostgreSQL a
    /// path in a private per-database directory under the platform data dir.
    pub fn location(&self) -> &Path {
        match &self.backend {
            Backend::Sqlite(s) => s.path(),
            Backend::Postgres(p) => p.location(),
        }
    }

    /// Transactions committed so far by this handle (benchmarks count commits per step).
    /// Several writes share one commit when they queue up while a commit is in flight.
    pub fn commit_count(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(s) => s.commit_count(),
            Backend::Postgres(p) => p.commit_count(),
        }
    }

    /// Notices of changes, this process's and other processes'.
    pub fn changes(&self) -> ChangeFeed {
        ChangeFeed {
            rx: match &self.backend {
                Backend::Sqlite(s) => s.subscribe(),
                Backend::Postgres(p) => p.subscribe(),
            },
        }
    }

    /// Commits every queued write, then stops writing.
    pub fn close(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.close(),
            Backend::Postgres(p) => p.close(),
        }
    }

    // ------------------------------------------------------------ writes

    /// Stores a new workflow owned by `new.owner` at epoch 1 together with its first change
    /// set (the start of its first steps), or unowned and queued for a worker to adopt (then
    /// `first` is empty). [`StoreError::Conflict`] if the id exists.
    pub async fn insert_workflow(&self, new: NewWorkflow, first: Changes) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.insert_workflow(new, first).await,
            Backend::Postgres(p) => p.insert_workflow(new, first).await,
        }
    }

    /// Commits one step boundary of a workflow the fence's owner holds.
    pub async fn commit(&self, fence: Fence, changes: Changes) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.commit(fence, changes).await,
            Backend::Postgres(p) => p.commit(fence, changes).await,
        }
    }

    /// Like [`Store::commit`], but returns once the commit is written — visible to every reader
    /// of the store and safe from a crash of this process — with a [`Durable`] that resolves
    /// once it survives a crash of the machine too. A step boundary uses it to start the
    /// steps it recorded while the fsync runs; nothing is told of the commit before it is
    /// durable (its change notices are published then, and reads wait for it).
    pub async fn commit_early(&self, fence: Fence, changes: Changes) -> Result<Durable> {
        match &self.backend {
            Backend::Sqlite(s) => s.commit_early(fence, changes).await,
            Backend::Postgres(p) => p.commit(fence, changes).await.map(|()| Durable::ready()),
        }
    }

    /// Takes the lease of workflow `id` (compare-and-set on its epoch), lets `f` decide the
    /// changes from what is stored, and commits them — all in one transaction. Returns the
    /// new epoch, the workflow as committed, and what `f` returned. If `f` fails nothing is
    /// written.
    pub async fn transition<R, F>(
        &self,
        id: ThreadId,
        claim: Claim,
        f: F,
    ) -> Result<(i64, Snapshot, R)>
    where
        R: Send + 'static,
        F: FnOnce(&Snapshot) -> Result<(Changes, R)> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(s) => s.transition(id, claim, f).await,
            Backend::Postgres(p) => p.transition(id, claim, f).await,
        }
    }

    /// Records the agent session of a running attempt the moment it is known.
    pub async fn record_session(
        &self,
        fence: Fence,
        step_id: String,
        attempt: i64,
        session_id: String,
    ) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_session(fence, step_id, attempt, session_id).await,
            Backend::Postgres(p) => p.record_session(fence, step_id, attempt, session_id).await,
        }
    }

    /// Records the last sign of life of a running step; [`StoreError::Fenced`] unless the
    /// fence's owner still holds the workflow at its epoch.
    pub async fn record_activity(&self, fence: Fence, step_id: String, at: i64) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_activity(fence, step_id, at).await,
            Backend::Postgres(p) => p.record_activity(fence, step_id, at).await,
        }
    }

    /// Asks the owner of a workflow (another process) to cancel it.
    pub async fn request_cancel(&self, id: ThreadId) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.request_cancel(id).await,
            Backend::Postgres(p) => p.request_cancel(id).await,
        }
    }

    /// Records an answer (JSON) to the open question of a waiting human step of an owned
    /// workflow, without the lease: its owner applies it. False if the step is not waiting
    /// any more, was answered already, or the workflow has no owner (any more).
    pub async fn record_answer(
        &self,
        id: ThreadId,
        step_id: String,
        answer: String,
    ) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_answer(id, step_id, answer).await,
            Backend::Postgres(p) => p.record_answer(id, step_id, answer).await,
        }
    }

    /// The recorded, not yet applied answers of a workflow's waiting steps: step id, answer.
    pub async fn answers(&self, id: ThreadId) -> Result<Vec<(String, String)>> {
        match &self.backend {
            Backend::Sqlite(s) => s.answers(id).await,
            Backend::Postgres(p) => p.answers(id).await,
        }
    }

    pub async fn register_owner(&self, owner: OwnerRow) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.register_owner(owner).await,
            Backend::Postgres(p) => p.register_owner(owner).await,
        }
    }

    pub async fn remove_owner(&self, id: String) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.remove_owner(id).await,
            Backend::Postgres(p) => p.remove_owner(id).await,
        }
    }

    /// Extends an owner's leases and heartbeat; says which workflows it still holds and
    /// which of them others asked to cancel. On PostgreSQL the lease runs from the database's
    /// clock and a lease that has already ended is not extended (nor counted as held).
    pub async fn renew(&self, owner: String, lease_until: i64, now: i64) -> Result<Renewal> {
        match &self.backend {
            Backend::Sqlite(s) => s.renew(owner, lease_until, now).await,
            Backend::Postgres(p) => p.renew(owner, lease_until, now).await,
        }
    }

    // ------------------------------------------------------------ reads

    /// [`StoreError::Fenced`] unless the fence's owner still holds the workflow at its epoch.
    pub async fn check_fence(&self, fence: Fence) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.check_fence(fence).await,
            Backend::Postgres(p) => p.check_fence(fence).await,
        }
    }

    pub async fn workflow(&self, id: ThreadId) -> Result<Option<WorkflowRow>> {
        match &self.backend {
            Backend::Sqlite(s) => s.workflow(id).await,
            Backend::Postgres(p) => p.workflow(id).await,
        }
    }

    /// A workflow's row, steps and definition.
    pub async fn snapshot(&self, id: ThreadId) -> Result<Option<Snapshot>> {
        match &self.backend {
            Backend::Sqlite(s) => s.snapshot(id).await,
            Backend::Postgres(p) => p.snapshot(id).await,
        }
    }

    /// A snapshot plus every attempt, for status views.
    pub async fn detail(&self, id: ThreadId) -> Result<Option<(Snapshot, Vec<AttemptRow>)>> {
        match &self.backend {
            Backend::Sqlite(s) => s.detail(id).await,
            Backend::Postgres(p) => p.detail(id).await,
        }
    }

    /// Events with `seq > after` (at most `limit`), oldest first, and the workflow's status
    /// read before them.
    pub async fn events(&self, id: ThreadId, after: i64, limit: i64) -> Result<Option<EventPage>> {
        match &self.backend {
            Backend::Sqlite(s) => s.events(id, after, limit).await,
            Backend::Postgres(p) => p.events(id, after, limit).await,
        }
    }

    /// Steps completed or skipped by the events up to `cursor`.
    pub async fn done_at(&self, id: ThreadId, cursor: i64) -> Result<i64> {
        match &self.backend {
            Backend::Sqlite(s) => s.done_at(id, cursor).await,
            Backend::Postgres(p) => p.done_at(id, cursor).await,
        }
    }

    /// Workflows `owner` holds that another process asked to cancel.
    pub async fn cancel_requests(&self, owner: String) -> Result<Vec<ThreadId>> {
        match &self.backend {
            Backend::Sqlite(s) => s.cancel_requests(owner).await,
            Backend::Postgres(p) => p.cancel_requests(owner).await,
        }
    }

    pub async fn owner(&self, id: String) -> Result<Option<OwnerRow>> {
        match &self.backend {
            Backend::Sqlite(s) => s.owner(id).await,
            Backend::Postgres(p) => p.owner(id).await,
        }
    }

    /// Workflows that should be running and that `me` does not own, with their owners.
    pub async fn adoptable(&self, me: String) -> Result<Vec<Adoptable>> {
        match &self.backend {
            Backend::Sqlite(s) => s.adoptable(me).await,
            Backend::Postgres(p) => p.adoptable(me).await,
        }
    }

    /// Workflows newest first (filtered by status; `None`: all), with their steps, the
    /// owners they name and the counts per status.
    pub async fn monitor(
        &self,
        statuses: Option<Vec<WorkflowStatus>>,
        limit: i64,
    ) -> Result<MonitorRows> {
        match &self.backend {
            Backend::Sqlite(s) => s.monitor(statuses, limit).await,
            Backend::Postgres(p) => p.monitor(statuses, limit).await,
        }
    }

    /// Median duration (ms) per step id of completed steps in the last 20 completed
    /// workflows with this name.
    pub async fn step_medians(&self, name: String) -> Result<BTreeMap<String, i64>> {
        match &self.backend {
            Backend::Sqlite(s) => s.step_medians(name).await,
            Backend::Postgres(p) => p.step_medians(name).await,
        }
    }

    // ------------------------------------------------------------ operator surface

    /// Workflows newest first by `filter`, as [`Store::monitor`] returns them, with the
    /// cursor of the next page.
    pub async fn list(&self, filter: ListFilter) -> Result<MonitorRows> {
        match &self.backend {
            Backend::Sqlite(s) => s.list(filter).await,
            Backend::Postgres(p) => p.list(filter).await,
        }
    }

    /// Deletes a stopped workflow and everything stored about it.
    pub async fn delete_workflow(&self, id: ThreadId) -> Result<Deleted> {
        match &self.backend {
            Backend::Sqlite(s) => s.delete_workflow(id).await,
            Backend::Postgres(p) => p.delete_workflow(id).await,
        }
    }

    /// Deletes up to `limit` workflows that finished (completed, failed or cancelled, and in
    /// `statuses`) at or before `before_ms`, oldest first, in one transaction; returns their
    /// ids. Callers loop in small batches so no transaction holds the writer for long.
    pub async fn prune_finished(
        &self,
        before_ms: i64,
        statuses: Vec<WorkflowStatus>,
        limit: i64,
    ) -> Result<Vec<ThreadId>> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune_finished(before_ms, statuses, limit).await,
            Backend::Postgres(p) => p.prune_finished(before_ms, statuses, limit).await,
        }
    }

    /// The full kept stdout (output) of a step, or the stderr of its latest attempt.
    /// `None`: no such workflow or step; `Some(None)`: nothing kept yet.
    pub async fn step_stream(
        &self,
        id: ThreadId,
        step_id: String,
        stderr: bool,
    ) -> Result<Option<Option<String>>> {
        match &self.backend {
            Backend::Sqlite(s) => s.step_stream(id, step_id, stderr).await,
            Backend::Postgres(p) => p.step_stream(id, step_id, stderr).await,
        }
    }

    /// Events of every workflow after the global cursor `after`, in commit order, each with
    /// its global cursor and thread id.
    pub async fn events_global(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, ThreadId, crate::api::Event)>> {
        match &self.backend {
            Backend::Sqlite(s) => s.events_global(after, limit).await,
            Backend::Postgres(p) => p.events_global(after, limit).await,
        }
    }

    /// The newest global event cursor.
    pub async fn last_global_cursor(&self) -> Result<i64> {
        match &self.backend {
            Backend::Sqlite(s) => s.last_gseq().await,
            Backend::Postgres(p) => p.last_gseq().await,
        }
    }

    /// Counts for metrics, read now.
    pub async fn metric_counts(&self) -> Result<MetricCounts> {
        match &self.backend {
            Backend::Sqlite(s) => s.metric_counts().await,
            Backend::Postgres(p) => p.metric_counts().await,
        }
    }

    /// Commit latencies measured by this process's writer.
    pub fn commit_stats(&self) -> CommitStats {
        match &self.backend {
            Backend::Sqlite(s) => s.commit_stats(),
            Backend::Postgres(p) => p.commit_stats(),
        }
    }
}
