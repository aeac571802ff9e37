//! The PostgreSQL backend: one database shared by any number of baton processes on any number
//! of machines.
//!
//! Invariant: nothing a client is told has happened exists only in memory. Every write of this
//! process runs on one writer connection; writes that queue up while a commit is in flight
//! share the next transaction ("group commit"), each inside its own savepoint so one failing
//! write never undoes another. A batch whose transaction is lost before it commits (the
//! connection dropped, a deadlock) is rolled back by the server and run again; a batch whose
//! `COMMIT` got no answer is looked up by its transaction id (`pg_xact_status`) after
//! reconnecting, so it is neither lost nor applied twice. Leases and heartbeats are written
//! and judged by the database's clock.
//!
//! After a commit the ids of the workflows it touched are published in-process and sent with
//! `NOTIFY`; a listener connection turns other processes' notifications into
//! [`Change::Unknown`], and a slow poll of the event cursor covers a lost notification or a
//! dropped listener. Both are latency optimisations only: subscribers re-read the store.

mod operator_queries;
mod queries;
mod schema;

use std::any::Any;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::{
    Adoptable, COMMIT_BUCKETS_S, Change, Changes, Claim, CommitStats, Deleted, Durability,
    EventPage, Fence, ListFilter, MetricCounts, MonitorRow, MonitorRows, NewWorkflow, OwnerRow,
    Renewal, Result, Snapshot, StoreError,
};
use crate::api::{NewEvent, ThreadId, WorkflowStatus, now_ms};
use crate::store::{AttemptRow, WorkflowRow};

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        let detail = match e.as_db_error() {
            Some(db) => format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            ),
            None => e.to_string(),
        };
        StoreError::Database(detail)
    }
}

/// Whether `url` names a PostgreSQL database rather than an SQLite file.
pub(super) fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Where the files kept beside the store go for the database named by `url`.
pub(super) fn url_location(url: &str) -> Result<PathBuf> {
    let config: tokio_postgres::Config =
        url.parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Open {
                path: redact(url),
                reason: e.to_string(),
            })?;
    location_for(&config).map_err(|reason| StoreError::Open {
        path: redact(url),
        reason,
    })
}

/// Largest number of writes folded into one transaction.
const MAX_BATCH: usize = 256;
/// How long a write is retried while the database cannot be reached before it fails.
const WRITE_RETRY_FOR: Duration = Duration::from_secs(60);
/// Longest wait for one read.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the listener checks the event cursor in case a notification was lost.
const FALLBACK_POLL: Duration = Duration::from_millis(1000);
/// The channel of change notifications.
const CHANNEL: &str = "baton_changes";

/// The context a write runs in: the writer's connection inside the open transaction, the
/// database's clock at its start, and what the transaction touched. Cheap to clone.
#[derive(Clone)]
pub(super) struct Tx {
    pub(super) c: Arc<Client>,
    st: Arc<Mutex<TxState>>,
}

#[derive(Default)]
struct TxState {
    /// The database's clock when the transaction began (ms since the epoch).
    now: i64,
    touched: Vec<ThreadId>,
    events: Vec<PendingEvent>,
}

/// An event waiting for its global cursor, which is taken just before the commit.
struct PendingEvent {
    wid: i64,
    seq: i64,
    kind: i64,
    step_id: Option<String>,
    attempt: Option<i64>,
    at: i64,
    data: Option<String>,
}

impl Tx {
    fn state(&self) -> std::sync::MutexGuard<'_, TxState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The database's clock at the start of the transaction.
    pub(super) fn now(&self) -> i64 {
        self.state().now
    }

    pub(super) fn touched(&self, id: &str) {
        let mut st = self.state();
        if !st.touched.iter().any(|c| &**c == id) {
            st.touched.push(ThreadId::from(id));
        }
    }

    pub(super) fn queue_event(&self, wid: i64, seq: i64, e: &NewEvent, at: i64) -> Result<()> {
        let data = queries::event_data(e)?;
        self.state().events.push(PendingEvent {
            wid,
            seq,
            kind: e.kind.code(),
            step_id: e.step_id.clone(),
            attempt: e.attempt,
            at,
            data,
        });
        Ok(())
    }
}

type Out = Box<dyn Any + Send>;
type JobFuture = Pin<Box<dyn Future<Output = Result<Out>> + Send>>;
/// A queued write. `Fn`, not `FnOnce`: a batch lost before its commit runs again.
type JobFn = Box<dyn Fn(Tx) -> JobFuture + Send + Sync>;

struct Job {
    run: JobFn,
    reply: oneshot::Sender<Result<Out>>,
}

/// Handle to a PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub(super) struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    location: PathBuf,
    pool: Pool,
    writer: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    changes: broadcast::Sender<Change>,
    commits: Arc<AtomicU64>,
    latency: Arc<Mutex<CommitStats>>,
    closed: CancellationToken,
}

/// What the writer task owns.
struct Writer {
    config: tokio_postgres::Config,
    durability: Durability,
    client: Option<Arc<Client>>,
    instance: String,
    changes: broadcast::Sender<Change>,
    commits: Arc<AtomicU64>,
    latency: Arc<Mutex<CommitStats>>,
}

impl Postgres {
    /// Connects to the database named by `url`, migrates its schema, and starts the writer
    /// and the listener. `location` is where files kept beside the store go.
    pub(super) async fn open(url: &str, durability: Durability) -> Result<Postgres> {
        let shown = redact(url);
        let open_err = |reason: String| StoreError::Open {
            path: shown.clone(),
            reason,
        };
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| open_err(e.to_string()))?;
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("baton");
        let location = location_for(&config).map_err(&open_err)?;
        let mut first = connect(&config)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        schema::migrate(&mut first)
            .await
            .map_err(|e| open_err(format!("{e} (is this a baton database?)")))?;
        drop(first);

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(READ_TIMEOUT))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| open_err(e.to_string()))?;

        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let (changes, _) = broadcast::channel(4096);
        let commits = Arc::new(AtomicU64::new(0));
        let latency = Arc::new(Mutex::new(CommitStats {
            buckets: vec![0; COMMIT_BUCKETS_S.len()],
            ..CommitStats::default()
        }));
        let instance = uuid::Uuid::now_v7().simple().to_string();
        let closed = CancellationToken::new();
        let writer = Writer {
            config: config.clone(),
            durability,
            client: None,
            instance: instance.clone(),
            changes: changes.clone(),
            commits: commits.clone(),
            latency: latency.clone(),
        };
        let task = tokio::spawn(writer.run(rx));
        tokio::spawn(listen(config, instance, changes.clone(), closed.clone()));
        Ok(Postgres {
            inner: Arc::new(Inner {
                location,
                pool,
                writer: Mutex::new(Some(tx)),
                writer_task: Mutex::new(Some(task)),
                changes,
                commits,
                latency,
                closed,
            }),
        })
    }

    pub(super) fn location(&self) -> &Path {
        &self.inner.location
    }

    pub(super) fn commit_count(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Stops taking writes; the writer commits what is queued and ends.
    pub(super) fn close(&self) {
        self.inner.closed.cancel();
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        let task = self
            .inner
            .writer_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if let Some(task) = task
            && multi
        {
            // Writes still queued are committed before the process goes on to exit.
            let waited = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await })
            });
            if waited.is_err() {
                tracing::warn!("the PostgreSQL writer did not finish within 10 s");
            }
        }
    }

    /// Runs `f` in the writer's transaction; answers once the commit containing it is
    /// durable. If `f` fails, its changes are rolled back and other writes are unaffected.
    async fn write<R, F, Fut>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: Fn(Tx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let run: JobFn = Box::new(move |tx| {
            let fut = f(tx);
            Box::pin(async move { fut.await.map(|r| Box::new(r) as Out) })
        });
        {
            let guard = self.inner.writer.lock().map_err(|_| poisoned("writer"))?;
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(Job { run, reply })
                .map_err(|_| StoreError::Closed)?;
        }
        let out = rx.await.map_err(|_| StoreError::Closed)??;
        out.downcast::<R>()
            .map(|b| *b)
            .map_err(|_| StoreError::Corrupt("a write answered with the wrong type".into()))
    }

    /// Runs `f` on a pooled connection, bounded in time so an unreachable database makes
    /// reads fail rather than hang.
    async fn read<R, F, Fut>(&self, f: F) -> Result<R>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<R>>,
    {
        let work = async {
            let conn = self.inner.pool.get().await.map_err(|e| {
                StoreError::Database(format!("the PostgreSQL store is unreachable: {e}"))
            })?;
            f(conn).await
        };
        tokio::time::timeout(READ_TIMEOUT, work)
            .await
            .map_err(|_| {
                StoreError::Database(format!(
                    "the PostgreSQL store did not answer within {} s",
                    READ_TIMEOUT.as_secs()
                ))
            })?
    }

    // ------------------------------------------------------------ writes

    pub(super) async fn insert_workflow(&self, new: NewWorkflow, first: Changes) -> Result<()> {
        if new.owner.is_none() && !first.is_empty() {
            return Err(StoreError::Corrupt(
                "an unowned workflow cannot be stored with changes".into(),
            ));
        }
        // The lease runs from the database's clock when the write commits (it may be retried
        // after a lost connection), for the length the caller asked for.
        let lease_ms = new.lease_expires_at.map(|l| (l - now_ms()).max(0));
        let (new, first) = (Arc::new(new), Arc::new(first));
        self.write(move |tx| {
            let (new, first) = (new.clone(), first.clone());
            async move {
                queries::insert_workflow(&tx, &new, lease_ms).await?;
                if let Some(owner) = &new.owner {
                    let fence = Fence {
                        id: new.id.clone(),
                        owner: owner.clone(),
                        epoch: 1,
                    };
                    queries::apply(&tx, &fence, &first).await?;
                }
                Ok(())
            }
        })
        .await
    }

    pub(super) async fn commit(&self, fence: Fence, changes: Changes) -> Result<()> {
        let (fence, changes) = (Arc::new(fence), Arc::new(changes));
        self.write(move |tx| {
            let (fence, changes) = (fence.clone(), changes.clone());
            async move { queries::apply(&tx, &fence, &changes).await }
        })
        .await
    }

    pub(super) async fn transition<R, F>(
        &self,
        id: ThreadId,
        claim: Claim,
        f: F,
    ) -> Result<(i64, Snapshot, R)>
    where
        R: Send + 'static,
        F: FnOnce(&Snapshot) -> Result<(Changes, R)> + Send + 'static,
    {
        // `f` runs once; a batch run again after a lost connection reports a conflict
        // instead of deciding twice.
        let f = Arc::new(Mutex::new(Some(f)));
        let lease_ms = (claim.lease_until - now_ms()).max(0);
        let (id, claim) = (Arc::new(id), Arc::new(claim));
        self.write(move |tx| {
            let (f, id, claim) = (f.clone(), id.clone(), claim.clone());
            async move {
                let epoch =
                    queries::take_lease(&tx, &id, &claim.owner, claim.expected_epoch, lease_ms)
                        .await?;
                let before = queries::snapshot(&tx.c, &id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("workflow {id} vanished")))?;
                let decide = f.lock().ok().and_then(|mut g| g.take()).ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "workflow {id}: the store's connection was lost mid-transition; try again"
                    ))
                })?;
                let (changes, r) = decide(&before)?;
                let fence = Fence {
                    id: (*id).clone(),
                    owner: claim.owner.clone(),
                    epoch,
                };
                queries::apply(&tx, &fence, &changes).await?;
                let after = queries::snapshot(&tx.c, &id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("workflow {id} vanished")))?;
                Ok((epoch, after, Arc::new(Mutex::new(Some(r)))))
            }
        })
        .await
        .and_then(|(epoch, after, r)| {
            let r = r
                .lock()
                .ok()
                .and_then(|mut g| g.take())
                .ok_or_else(|| StoreError::Corrupt("a transition answered twice".into()))?;
            Ok((epoch, after, r))
        })
    }

    pub(super) async fn record_session(
        &self,
        fence: Fence,
        step_id: String,
        attempt: i64,
        session_id: String,
    ) -> Result<()> {
        let args = Arc::new((fence, step_id, session_id));
        self.write(move |tx| {
            let args = args.clone();
            async move {
                let (fence, step_id, session_id) = &*args;
                queries::check_fence(&tx.c, &fence.id, &fence.owner, fence.epoch).await?;
                queries::set_session(&tx, &fence.id, step_id, attempt, session_id).await
            }
        })
        .await
    }

    pub(super) async fn record_activity(
        &self,
        id: ThreadId,
        step_id: String,
        at: i64,
    ) -> Result<()> {
        let args = Arc::new((id, step_id));
        self.write(move |tx| {
            let args = args.clone();
            async move { queries::set_activity(&tx, &args.0, &args.1, at).await }
        })
        .await
    }

    pub(super) async fn request_cancel(&self, id: ThreadId) -> Result<()> {
        let id = Arc::new(id);
        self.write(move |tx| {
            let id = id.clone();
            async move { queries::request_cancel(&tx, &id).await }
        })
        .await
    }

    pub(super) async fn record_answer(
        &self,
        id: ThreadId,
        step_id: String,
        answer: String,
    ) -> Result<bool> {
        let args = Arc::new((id, step_id, answer));
        self.write(move |tx| {
            let args = args.clone();
            async move { queries::record_answer(&tx, &args.0, &args.1, &args.2).await }
        })
        .await
    }

    pub(super) async fn answers(&self, id: ThreadId) -> Result<Vec<(String, String)>> {
        self.read(|c| async move { queries::answers(&c, &id).await })
            .await
    }

    pub(super) async fn register_owner(&self, owner: OwnerRow) -> Result<()> {
        let owner = Arc::new(owner);
        self.write(move |tx| {
            let owner = owner.clone();
            async move { queries::register_owner(&tx, &owner).await }
        })
        .await
    }

    pub(super) async fn remove_owner(&self, id: String) -> Result<()> {
        let id = Arc::new(id);
        self.write(move |tx| {
            let id = id.clone();
            async move { queries::remove_owner(&tx, &id).await }
        })
        .await
    }

    /// Extends the owner's leases by its lease length from the database's clock now.
    pub(super) async fn renew(&self, owner: String, lease_until: i64, now: i64) -> Result<Renewal> {
        let lease_ms = (lease_until - now).max(0);
        let o = Arc::new(owner.clone());
        self.write(move |tx| {
            let o = o.clone();
            async move { queries::renew_leases(&tx, &o, lease_ms).await }
        })
        .await?;
        self.read(|c| async move {
            Ok(Renewal {
                held: queries::held_by(&c, &owner)
                    .await?
                    .into_iter()
                    .map(ThreadId::from)
                    .collect(),
                cancels: queries::cancel_requests(&c, &owner)
                    .await?
                    .into_iter()
                    .map(ThreadId::from)
                    .collect(),
            })
        })
        .await
    }

    // ------------------------------------------------------------ reads

    pub(super) async fn check_fence(&self, fence: Fence) -> Result<()> {
        self.read(|c| async move {
            queries::check_fence(&c, &fence.id, &fence.owner, fence.epoch).await
        })
        .await
    }

    pub(super) async fn workflow(&self, id: ThreadId) -> Result<Option<WorkflowRow>> {
        self.read(|c| async move { queries::find_workflow(&c, &id).await })
            .await
    }

    pub(super) async fn snapshot(&self, id: ThreadId) -> Result<Option<Snapshot>> {
        self.read(|c| async move { queries::snapshot(&c, &id).await })
            .await
    }

    pub(super) async fn detail(&self, id: ThreadId) -> Result<Option<(Snapshot, Vec<AttemptRow>)>> {
        self.read(|c| async move {
            let Some(snap) = queries::snapshot(&c, &id).await? else {
                return Ok(None);
            };
            let attempts = queries::load_attempts(&c, &id).await?;
            Ok(Some((snap, attempts)))
        })
        .await
    }

    pub(super) async fn events(
        &self,
        id: ThreadId,
        after: i64,
        limit: i64,
    ) -> Result<Option<EventPage>> {
        self.read(|c| async move {
            // Status first: a terminal status read here is followed by its terminal event
            // (read committed: the second statement sees at least what the first saw).
            let Some(row) = queries::find_workflow(&c, &id).await? else {
                return Ok(None);
            };
            let events = queries::events_after(&c, &id, after, limit).await?;
            Ok(Some(EventPage {
                status: row.status,
                step_count: row.step_count,
                events,
            }))
        })
        .await
    }

    pub(super) async fn done_at(&self, id: ThreadId, cursor: i64) -> Result<i64> {
        self.read(|c| async move { queries::done_at(&c, &id, cursor).await })
            .await
    }

    pub(super) async fn cancel_requests(&self, owner: String) -> Result<Vec<ThreadId>> {
        self.read(|c| async move {
            Ok(queries::cancel_requests(&c, &owner)
                .await?
                .into_iter()
                .map(ThreadId::from)
                .collect())
        })
        .await
    }

    pub(super) async fn owner(&self, id: String) -> Result<Option<OwnerRow>> {
        self.read(|c| async move { queries::find_owner(&c, &id).await })
            .await
    }

    pub(super) async fn adoptable(&self, me: String) -> Result<Vec<Adoptable>> {
        self.read(|c| async move { queries::adoptable(&c, &me).await })
            .await
    }

    pub(super) async fn monitor(
        &self,
        statuses: Option<Vec<WorkflowStatus>>,
        limit: i64,
    ) -> Result<MonitorRows> {
        self.read(|c| async move {
            let rows = queries::list_workflows(&c, statuses.as_deref(), limit).await?;
            let mut out = MonitorRows::default();
            fill_listing(&c, rows, &mut out).await?;
            Ok(out)
        })
        .await
    }

    pub(super) async fn step_medians(
        &self,
        name: String,
    ) -> Result<std::collections::BTreeMap<String, i64>> {
        self.read(|c| async move { queries::median_step_durations(&c, &name).await })
            .await
    }

    // ------------------------------------------------------------ operator surface

    pub(super) async fn list(&self, filter: ListFilter) -> Result<MonitorRows> {
        self.read(|c| async move {
            let rows = operator_queries::list_filtered(&c, &filter).await?;
            let mut out = MonitorRows {
                next_cursor: match rows.last() {
                    Some((wid, _)) if rows.len() as i64 >= filter.limit => Some(*wid),
                    _ => None,
                },
                ..MonitorRows::default()
            };
            let rows = rows.into_iter().map(|(_, w)| w).collect();
            fill_listing(&c, rows, &mut out).await?;
            Ok(out)
        })
        .await
    }

    pub(super) async fn delete_workflow(&self, id: ThreadId) -> Result<Deleted> {
        let id = Arc::new(id);
        self.write(move |tx| {
            let id = id.clone();
            async move { operator_queries::delete_workflow(&tx, &id).await }
        })
        .await
    }

    pub(super) async fn prune_finished(
        &self,
        before_ms: i64,
        statuses: Vec<WorkflowStatus>,
        limit: i64,
    ) -> Result<Vec<ThreadId>> {
        let statuses = Arc::new(statuses);
        self.write(move |tx| {
            let statuses = statuses.clone();
            async move { operator_queries::prune_finished(&tx, before_ms, &statuses, limit).await }
        })
        .await
    }

    pub(super) async fn step_stream(
        &self,
        id: ThreadId,
        step_id: String,
        stderr: bool,
    ) -> Result<Option<Option<String>>> {
        self.read(|c| async move { operator_queries::step_stream(&c, &id, &step_id, stderr).await })
            .await
    }

    pub(super) async fn events_global(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, ThreadId, crate::api::Event)>> {
        self.read(|c| async move { operator_queries::events_global(&c, after, limit).await })
            .await
    }

    pub(super) async fn last_gseq(&self) -> Result<i64> {
        self.read(|c| async move { operator_queries::last_gseq(&c).await })
            .await
    }

    pub(super) async fn metric_counts(&self) -> Result<MetricCounts> {
        self.read(|c| async move { operator_queries::metric_counts(&c).await })
            .await
    }

    pub(super) fn commit_stats(&self) -> CommitStats {
        self.inner
            .latency
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

async fn fill_listing(c: &Client, rows: Vec<WorkflowRow>, out: &mut MonitorRows) -> Result<()> {
    let mut owner_ids: Vec<String> = Vec::new();
    for workflow in rows {
        let steps = queries::load_steps(c, &workflow.id).await?;
        let definition = if workflow.status == WorkflowStatus::Running {
            queries::load_definition(c, &workflow.id).await.ok()
        } else {
            None
        };
        if let Some(o) = &workflow.owner
            && !owner_ids.contains(o)
        {
            owner_ids.push(o.clone());
        }
        out.rows.push(MonitorRow {
            workflow,
            steps,
            definition,
        });
    }
    for o in owner_ids {
        if let Some(row) = queries::find_owner(c, &o).await? {
            out.owners.push(row);
        }
    }
    out.counts = queries::count_by_status(c).await?;
    Ok(())
}

fn poisoned(what: &str) -> StoreError {
    StoreError::Poisoned(what.to_owned())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Where files that SQLite keeps beside its database go for this PostgreSQL database: a
/// private directory per server and database under the platform data dir.
fn location_for(config: &tokio_postgres::Config) -> std::result::Result<PathBuf, String> {
    let base = directories::ProjectDirs::from("", "", "baton")
        .map(|d| d.data_dir().to_owned())
        .ok_or("cannot find a home directory for the files kept beside the store")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    let name: String = format!("{host}_{port}_{db}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = base.join("postgres").join(name.trim_matches('_'));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(dir.join("baton.pg"))
}

/// A new connection whose driving task runs on the runtime.
async fn connect(
    config: &tokio_postgres::Config,
) -> std::result::Result<Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A batch's transaction that reached its end: the replies, the workflows it touched, and
/// whether it committed (a lone write that failed is rolled back instead).
struct Done {
    results: Vec<Result<Out>>,
    touched: Vec<ThreadId>,
    committed: bool,
}

/// How a batch's transaction ended, when it did not reach its end.
enum Lost {
    /// Rolled back (the server rolls back a transaction whose connection is gone): run it
    /// again.
    Retry(String),
    /// `COMMIT` was sent but not answered: look the transaction up by its id.
    Unknown(String, String, Done),
}

/// Whether a failed statement says nothing about the write itself: the connection or the
/// server went away, or the transaction lost a deadlock or a serialization conflict.
fn transient(e: &StoreError) -> bool {
    match e {
        StoreError::Database(m) => {
            !m.contains("(SQLSTATE ")
                || [
                    "(SQLSTATE 40",
                    "(SQLSTATE 57P",
                    "(SQLSTATE 08",
                    "(SQLSTATE 53",
                ]
                .iter()
                .any(|c| m.contains(c))
        }
        _ => false,
    }
}

fn lost(e: tokio_postgres::Error) -> Lost {
    Lost::Retry(StoreError::from(e).to_string())
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.run_batch(batch).await;
        }
    }

    async fn client(&mut self) -> Result<Arc<Client>> {
        if let Some(c) = &self.client
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        self.client = None;
        let c = connect(&self.config).await?;
        let sync = match self.durability {
            Durability::Full => "on",
            Durability::Normal => "off",
        };
        c.batch_execute(&format!("SET synchronous_commit = {sync}"))
            .await?;
        let c = Arc::new(c);
        self.client = Some(c.clone());
        Ok(c)
    }

    /// Runs a batch to a known end — committed, or failed for good — and answers every write.
    /// While the database cannot be reached, retries with backoff for [`WRITE_RETRY_FOR`].
    async fn run_batch(&mut self, batch: Vec<Job>) {
        let began = Instant::now();
        let deadline = began + WRITE_RETRY_FOR;
        let mut delay = Duration::from_millis(50);
        loop {
            let outcome = match self.client().await {
                Ok(c) => {
                    let r = self.try_batch(&c, &batch).await;
                    if matches!(r, Err(Lost::Retry(_))) && !c.is_closed() {
                        // The server may still hold the transaction open.
                        if c.batch_execute("ROLLBACK").await.is_err() {
                            self.client = None;
                        }
                    }
                    r
                }
                Err(e) => Err(Lost::Retry(e.to_string())),
            };
            let why = match outcome {
                Ok(done) => return self.finish(batch, done, began),
                Err(Lost::Retry(why)) => why,
                Err(Lost::Unknown(xid, why, done)) => loop {
                    match self.xact_committed(&xid).await {
                        Some(true) => return self.finish(batch, done, began),
                        Some(false) => break why,
                        None if Instant::now() >= deadline => {
                            let msg = format!(
                                "the commit's outcome is unknown (transaction {xid}): {why}"
                            );
                            return fail_all(batch, &msg);
                        }
                        None => {
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                    }
                },
            };
            if Instant::now() >= deadline {
                return fail_all(batch, &why);
            }
            tracing::warn!(error = %why, "a PostgreSQL write did not commit; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn finish(&self, batch: Vec<Job>, done: Done, began: Instant) {
        for (job, r) in batch.into_iter().zip(done.results) {
            let _ = job.reply.send(r);
        }
        if done.committed {
            self.commits.fetch_add(1, Ordering::Relaxed);
            record_latency(&self.latency, began.elapsed());
            for id in done.touched {
                let _ = self.changes.send(Change::Workflow(id));
            }
        }
    }

    /// Whether the transaction `xid` committed; `None` while that cannot be known.
    async fn xact_committed(&mut self, xid: &str) -> Option<bool> {
        let c = self.client().await.ok()?;
        let row = match c
            .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid])
            .await
        {
            Ok(row) => row,
            // The server restarted before the transaction's id reached its log: it never
            // committed.
            Err(e) if e.to_string().contains("in the future") => return Some(false),
            Err(_) => return None,
        };
        let status: Option<String> = row.try_get(0).ok()?;
        match status.as_deref() {
            Some("committed") => Some(true),
            Some("aborted") => Some(false),
            // No record: the transaction never reached the server's log, so it did not commit.
            None => Some(false),
            _ => None,
        }
    }

    /// One transaction for the whole batch, each write in its own savepoint (a lone write
    /// needs none). The global event cursor is taken last, just before `COMMIT`.
    async fn try_batch(&self, c: &Arc<Client>, batch: &[Job]) -> std::result::Result<Done, Lost> {
        let begun = c
            .simple_query(&format!("BEGIN; SELECT {}", queries::DB_NOW))
            .await
            .map_err(lost)?;
        let db_now = begun
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse::<i64>().ok(),
                _ => None,
            })
            .ok_or_else(|| Lost::Retry("the database did not tell its clock".into()))?;
        let tx = Tx {
            c: c.clone(),
            st: Arc::new(Mutex::new(TxState {
                now: db_now,
                ..TxState::default()
            })),
        };
        let alone = batch.len() == 1;
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            if !alone {
                c.batch_execute("SAVEPOINT job").await.map_err(lost)?;
            }
            let mark = {
                let st = tx.state();
                (st.touched.len(), st.events.len())
            };
            let r = (job.run)(tx.clone()).await;
            if c.is_closed() {
                return Err(Lost::Retry("the connection to PostgreSQL was lost".into()));
            }
            match &r {
                Err(e) if transient(e) => return Err(Lost::Retry(e.to_string())),
                Err(_) => {
                    {
                        let mut st = tx.state();
                        st.touched.truncate(mark.0);
                        st.events.truncate(mark.1);
                    }
                    if alone {
                        // Nothing of it may stay; a failed rollback ends the connection,
                        // which rolls back too.
                        let _ = c.batch_execute("ROLLBACK").await;
                        results.push(r);
                        return Ok(Done {
                            results,
                            touched: Vec::new(),
                            committed: false,
                        });
                    }
                    c.batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                        .await
                        .map_err(lost)?;
                }
                Ok(_) if !alone => {
                    c.batch_execute("RELEASE SAVEPOINT job")
                        .await
                        .map_err(lost)?;
                }
                Ok(_) => {}
            }
            results.push(r);
        }
        let (events, touched) = {
            let mut st = tx.state();
            (
                std::mem::take(&mut st.events),
                std::mem::take(&mut st.touched),
            )
        };
        if !events.is_empty() {
            insert_events(c, &events).await.map_err(lost)?;
        }
        let xid: String = if touched.is_empty() {
            c.query_one("SELECT pg_current_xact_id()::text", &[])
                .await
                .map_err(lost)?
                .try_get(0)
                .map_err(lost)?
        } else {
            let ids: Vec<&str> = touched.iter().map(|t| t.as_str()).collect();
            let mut payload = format!("{}:{}", self.instance, ids.join(","));
            if payload.len() > 7000 {
                payload = format!("{}:*", self.instance);
            }
            c.query_one(
                "SELECT pg_current_xact_id()::text FROM (SELECT pg_notify($1, $2)) AS n",
                &[&CHANNEL, &payload],
            )
            .await
            .map_err(lost)?
            .try_get(0)
            .map_err(lost)?
        };
        let done = Done {
            results,
            touched,
            committed: true,
        };
        match c.batch_execute("COMMIT").await {
            Ok(()) => Ok(done),
            Err(e) => {
                let refused = e
                    .as_db_error()
                    .is_some_and(|db| !db.code().code().starts_with("57P"));
                let why = StoreError::from(e).to_string();
                if refused && !c.is_closed() {
                    // The server answered: it rolled the transaction back.
                    Err(Lost::Retry(why))
                } else {
                    Err(Lost::Unknown(xid, why, done))
                }
            }
        }
    }
}

/// Appends the batch's events with the next global cursors. Taking them locks the cursor row
/// until the commit, so cursors increase in commit order across processes.
async fn insert_events(
    c: &Client,
    events: &[PendingEvent],
) -> std::result::Result<(), tokio_postgres::Error> {
    let n = events.len() as i64;
    let first: i64 = c
        .query_one(
            "UPDATE event_cursor SET value = value + $1 RETURNING value - $1",
            &[&n],
        )
        .await?
        .try_get(0)?;
    let wid: Vec<i64> = events.iter().map(|e| e.wid).collect();
    let seq: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let kind: Vec<i64> = events.iter().map(|e| e.kind).collect();
    let step: Vec<Option<&str>> = events.iter().map(|e| e.step_id.as_deref()).collect();
    let attempt: Vec<Option<i64>> = events.iter().map(|e| e.attempt).collect();
    let at: Vec<i64> = events.iter().map(|e| e.at).collect();
    let data: Vec<Option<&str>> = events.iter().map(|e| e.data.as_deref()).collect();
    let gseq: Vec<i64> = (1..=n).map(|i| first + i).collect();
    c.execute(
        "INSERT INTO events (wid, seq, type, step_id, attempt, at, data, gseq) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], \
                              $5::bigint[], $6::bigint[], $7::text[], $8::bigint[])",
        &[&wid, &seq, &kind, &step, &attempt, &at, &data, &gseq],
    )
    .await?;
    Ok(())
}

fn fail_all(batch: Vec<Job>, why: &str) {
    tracing::error!(error = %why, writes = batch.len(), "PostgreSQL writes failed");
    for job in batch {
        let _ = job.reply.send(Err(StoreError::Commit(why.to_owned())));
    }
}

/// Turns other processes' notifications into [`Change::Unknown`], reconnecting with backoff;
/// polls the event cursor meanwhile, so a lost notification only delays.
async fn listen(
    config: tokio_postgres::Config,
    instance: String,
    changes: broadcast::Sender<Change>,
    closed: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !closed.is_cancelled() {
        let session = listen_once(&config, &instance, &changes, &closed);
        if let Err(e) = session.await {
            tracing::debug!(error = %e, "change listener lost its connection; reconnecting");
        } else {
            delay = Duration::from_millis(100);
        }
        // Whatever was missed meanwhile: re-read.
        let _ = changes.send(Change::Unknown);
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    instance: &str,
    changes: &broadcast::Sender<Change>,
    closed: &CancellationToken,
) -> std::result::Result<(), tokio_postgres::Error> {
    let (client, mut conn) = config.connect(NoTls).await?;
    let (note_tx, mut notes) = mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures::StreamExt;
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if note_tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let _ = changes.send(Change::Unknown);
    let mine = format!("{instance}:");
    let mut last_cursor: Option<i64> = None;
    let mut poll = tokio::time::interval(FALLBACK_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            () = closed.cancelled() => break Ok(()),
            note = notes.recv() => match note {
                Some(payload) => {
                    if !payload.starts_with(&mine) {
                        let _ = changes.send(Change::Unknown);
                    }
                }
                None => break Ok(()),
            },
            _ = poll.tick() => {
                if changes.receiver_count() == 0 {
                    continue;
                }
                match client.query_one("SELECT value FROM event_cursor", &[]).await {
                    Ok(row) => {
                        let now: Option<i64> = row.try_get(0).ok();
                        if last_cursor.is_some() && now != last_cursor {
                            let _ = changes.send(Change::Unknown);
                        }
                        last_cursor = now;
                    }
                    Err(e) => break Err(e),
                }
            }
        }
    };
    driver.abort();
    result
}

/// Adds one transaction's latency to the histogram.
fn record_latency(stats: &Mutex<CommitStats>, took: Duration) {
    let Ok(mut st) = stats.lock() else { return };
    let us = took.as_micros() as u64;
    let secs = took.as_secs_f64();
    for (bound, n) in COMMIT_BUCKETS_S.iter().zip(st.buckets.iter_mut()) {
        if secs <= *bound {
            *n += 1;
        }
    }
    st.count += 1;
    st.sum_us += us;
    st.last_us = Some(us);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_shown_in_messages_never_carries_the_password() {
        assert_eq!(
            redact("postgres://baton:s3cret@db.internal/baton"),
            "postgres://baton:***@db.internal/baton"
        );
        assert_eq!(
            redact("postgresql://baton@localhost/b?host=/tmp/s"),
            "postgresql://baton@localhost/b?host=/tmp/s"
        );
    }

    #[test]
    fn only_failures_that_say_nothing_about_the_write_are_retried() {
        let db = |m: &str| StoreError::Database(m.to_owned());
        assert!(transient(&db("error connecting to server")));
        assert!(transient(&db("ERROR: deadlock detected (SQLSTATE 40P01)")));
        assert!(transient(&db(
            "FATAL: terminating connection due to administrator command (SQLSTATE 57P01)"
        )));
        assert!(!transient(&db(
            "ERROR: duplicate key value violates unique constraint (SQLSTATE 23505)"
        )));
        assert!(!transient(&StoreError::Fenced("w".into())));
        assert!(!transient(&StoreError::Conflict("exists".into())));
    }

    #[test]
    fn postgres_urls_select_postgres_and_paths_do_not() {
        assert!(is_url("postgres://u@h/db"));
        assert!(is_url("postgresql:///db?host=/run/postgresql"));
        assert!(!is_url("/var/lib/baton/baton.db"));
        assert!(!is_url("postgres.db"));
    }
}
