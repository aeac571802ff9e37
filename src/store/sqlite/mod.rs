//! The SQLite backend: one file that is the source of truth for workflows, steps, attempts,
//! the event log and process ownership.
//!
//! Invariant: nothing a client is told has happened exists only in memory. Every write runs
//! inside a transaction on the one writer connection: on its caller's thread when the writer
//! is idle, else on the writer thread, where writes that queue up while a commit is being
//! made durable share the next commit ("group commit"), so many workflows advance with one
//! fsync. Each write runs inside its own savepoint, so one failing write never undoes another
//! that shares its commit. Readers use their own connections (WAL lets them run beside the
//! writer) and never block it.
//!
//! After a commit, the ids of the workflows it touched are published in-process; a poller
//! watches `PRAGMA data_version` so commits of other processes sharing the file are noticed
//! too. Both are latency optimisations only: subscribers re-read the store.
//!
//! # Layout
//! - `writer`: the writer connection and thread (commits on the caller's thread when idle,
//!   group commit, savepoints, commit latency).
//! - `files`: opening the database file (its mode, refusing another program's file,
//!   connections, the poll that notices other processes' commits).
//! - `queries`: the SQL of workflows, owners, events and change sets; `step_queries`: the SQL
//!   of steps and attempts; `operator_queries`: the SQL of the operator surface.
//! - `schema`: tables and migrations.

mod files;
mod operator_queries;
mod queries;
mod schema;
mod step_queries;
mod sync;
mod wake;
mod writer;

use files::{
    POLL_CACHE_KIB, READER_CACHE_KIB, WRITER_CACHE_KIB, foreign_poll, open_conn, refuse_foreign,
    tighten,
};
use writer::{Committer, Msg, WriteCtx, sync_loop, writer_loop};

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::Connection;
use tokio::sync::broadcast;

use super::{
    Adoptable, Change, Changes, Claim, CommitStats, Deleted, Durability, Durable, EventPage, Fence,
    ListFilter, MetricCounts, MonitorRow, MonitorRows, NewWorkflow, OwnerRow, Renewal, Result,
    Snapshot, StoreError,
};
use crate::api::{ThreadId, WorkflowStatus, now_ms};
use crate::store::{AttemptRow, WorkflowRow};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Database(e.to_string())
    }
}

/// Handle to an SQLite store; cheap to clone.
#[derive(Clone)]
pub(super) struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<Msg>>>,
    committer: Arc<Committer>,
    readers: Mutex<Vec<Connection>>,
    changes: broadcast::Sender<Change>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    sync_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: Arc<AtomicBool>,
}

impl Sqlite {
    /// Opens (creating with mode 0600 if needed) and migrates the database at `path`.
    pub(super) fn open(path: &Path, durability: Durability) -> Result<Sqlite> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| open_err(format!("cannot create directory: {e}")))?;
        }
        // Create the file ourselves so it is 0600 from the first byte; SQLite gives the
        // -wal and -shm files the same mode. The handle is closed before SQLite opens the
        // file: closing any descriptor of a file drops every POSIX lock this process holds on
        // it, SQLite's included.
        drop(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| open_err(e.to_string()))?,
        );
        tighten(path).map_err(open_err)?;
        refuse_foreign(path).map_err(open_err)?;
        let mut conn =
            open_conn(path, durability, WRITER_CACHE_KIB).map_err(|e| open_err(e.to_string()))?;
        schema::migrate(&mut conn)
            .map_err(|e| open_err(format!("{e} (is this a baton database?)")))?;
        let wake = match wake::Wake::open(path) {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot map the database's -wake file; waits for other processes' write lock only poll");
                None
            }
        };
        for side in ["-wal", "-shm", "-wake"] {
            let mut p = path.as_os_str().to_owned();
            p.push(side);
            tighten(Path::new(&p)).map_err(open_err)?;
        }

        // With full durability the WAL is fsync'd by the syncer once the lock is let go,
        // instead of by SQLite inside the COMMIT that holds it.
        let full = matches!(durability, Durability::Full);
        let syncer = match sync::Syncer::open(path, full) {
            Ok(s) => {
                if full {
                    conn.execute_batch("PRAGMA synchronous = NORMAL")
                        .map_err(|e| open_err(e.to_string()))?;
                }
                s
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the WAL to fsync it after the lock is let go; SQLite fsyncs inside each commit");
                sync::Syncer::open(path, false).map_err(|e| open_err(e.to_string()))?
            }
        };
        let (tx, rx) = mpsc::channel::<Msg>();
        let (to_sync, from_writes) = mpsc::channel();
        let (changes, _) = broadcast::channel(4096);
        let committer = Arc::new(Committer::new(conn, changes.clone(), wake, syncer, to_sync));
        let for_thread = committer.clone();
        let thread = std::thread::Builder::new()
            .name("baton-store-writer".into())
            .spawn(move || writer_loop(for_thread, rx))
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;
        let for_sync = committer.clone();
        let sync_thread = std::thread::Builder::new()
            .name("baton-store-sync".into())
            .spawn(move || sync_loop(for_sync, from_writes))
            .map_err(|e| open_err(format!("cannot start sync thread: {e}")))?;
        let closed = Arc::new(AtomicBool::new(false));
        let poll_conn =
            open_conn(path, durability, POLL_CACHE_KIB).map_err(|e| open_err(e.to_string()))?;
        let (poll_tx, poll_closed) = (changes.clone(), closed.clone());
        std::thread::Builder::new()
            .name("baton-store-poll".into())
            .spawn(move || foreign_poll(poll_conn, poll_tx, poll_closed))
            .map_err(|e| open_err(format!("cannot start poller thread: {e}")))?;
        Ok(Sqlite {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(Some(tx)),
                committer,
                readers: Mutex::new(Vec::new()),
                changes,
                writer_thread: Mutex::new(Some(thread)),
                sync_thread: Mutex::new(Some(sync_thread)),
                closed,
            }),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(super) fn commit_count(&self) -> u64 {
        self.inner.committer.commit_count()
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let store = self.clone();
        let r = tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|e| StoreError::Commit(format!("reader task failed: {e}")))??;
        // What the read saw may include commits of this process still being made durable.
        self.all_durable().await?;
        Ok(r)
    }

    fn read_blocking<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let pooled = self
            .inner
            .readers
            .lock()
            .map_err(|_| poisoned("reader pool"))?
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = open_conn(&self.inner.path, Durability::Full, READER_CACHE_KIB)?;
                c.execute_batch("PRAGMA query_only = 1")?;
                c
            }
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.inner.readers.lock()
            && pool.len() < 8
        {
            pool.push(conn);
        }
        result
    }

    /// Stops the writer thread after it has committed every queued write.
    pub(super) fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        let handle = self
            .inner
            .writer_thread
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.inner.committer.close();
        // After the writer thread: it settles what that thread sent it last.
        let handle = self
            .inner
            .sync_thread
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    // ------------------------------------------------------------ writes

    pub(super) async fn insert_workflow(&self, new: NewWorkflow, first: Changes) -> Result<()> {
        self.write(move |ctx| {
            if queries::find_workflow(ctx.conn, &new.id)?.is_some() {
                return Err(StoreError::Conflict(format!("workflow {} exists", new.id)));
            }
            let now = now_ms();
            queries::insert_workflow(ctx, &new, now)?;
            match &new.owner {
                Some(owner) => {
                    let fence = Fence {
                        id: new.id.clone(),
                        owner: owner.clone(),
                        epoch: 1,
                    };
                    queries::apply(ctx, &fence, &first, now)
                }
                None if first.is_empty() => Ok(()),
                None => Err(StoreError::Corrupt(
                    "an unowned workflow cannot be stored with changes".into(),
                )),
            }
        })
        .await
    }

    pub(super) async fn commit(&self, fence: Fence, changes: Changes) -> Result<()> {
        self.write(move |ctx| queries::apply(ctx, &fence, &changes, now_ms()))
            .await
    }

    pub(super) async fn commit_early(&self, fence: Fence, changes: Changes) -> Result<Durable> {
        self.write_early(move |ctx| queries::apply(ctx, &fence, &changes, now_ms()))
            .await
            .map(|((), durable)| durable)
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
        self.write(move |ctx| {
            let epoch = queries::take_lease(
                ctx,
                &id,
                &claim.owner,
                claim.expected_epoch,
                claim.lease_until,
                claim.expected_lease,
            )?;
            let before = queries::snapshot(ctx.conn, &id)?
                .ok_or_else(|| StoreError::Corrupt(format!("workflow {id} vanished")))?;
            let (changes, r) = f(&before)?;
            let fence = Fence {
                id: id.clone(),
                owner: claim.owner.clone(),
                epoch,
            };
            queries::apply(ctx, &fence, &changes, now_ms())?;
            let after = queries::snapshot(ctx.conn, &id)?
                .ok_or_else(|| StoreError::Corrupt(format!("workflow {id} vanished")))?;
            Ok((epoch, after, r))
        })
        .await
    }

    pub(super) async fn record_session(
        &self,
        fence: Fence,
        step_id: String,
        attempt: i64,
        session_id: String,
    ) -> Result<()> {
        self.write(move |ctx| {
            queries::check_fence(ctx.conn, &fence.id, &fence.owner, fence.epoch)?;
            queries::set_session(ctx, &fence.id, &step_id, attempt, &session_id)
        })
        .await
    }

    pub(super) async fn record_activity(
        &self,
        fence: Fence,
        step_id: String,
        at: i64,
    ) -> Result<()> {
        self.write(move |ctx| {
            queries::check_fence(ctx.conn, &fence.id, &fence.owner, fence.epoch)?;
            queries::set_activity(ctx, &fence.id, &step_id, at)
        })
        .await
    }

    pub(super) async fn request_cancel(&self, id: ThreadId) -> Result<()> {
        self.write(move |ctx| queries::request_cancel(ctx, &id))
            .await
    }

    pub(super) async fn record_answer(
        &self,
        id: ThreadId,
        step_id: String,
        answer: String,
    ) -> Result<bool> {
        self.write(move |ctx| queries::record_answer(ctx, &id, &step_id, &answer))
            .await
    }

    pub(super) async fn answers(&self, id: ThreadId) -> Result<Vec<(String, String)>> {
        self.read(move |c| queries::answers(c, &id)).await
    }

    pub(super) async fn register_owner(&self, owner: OwnerRow) -> Result<()> {
        self.write(move |ctx| queries::register_owner(ctx, &owner, now_ms()))
            .await
    }

    pub(super) async fn remove_owner(&self, id: String) -> Result<()> {
        self.write(move |ctx| queries::remove_owner(ctx, &id)).await
    }

    pub(super) async fn renew(&self, owner: String, lease_until: i64, now: i64) -> Result<Renewal> {
        let o = owner.clone();
        self.write(move |ctx| queries::renew_leases(ctx, &o, lease_until, now))
            .await?;
        self.read(move |c| {
            Ok(Renewal {
                held: queries::held_by(c, &owner)?
                    .into_iter()
                    .map(ThreadId::from)
                    .collect(),
                // One machine: the renewal extends every lease the owner holds.
                ended: Vec::new(),
                cancels: queries::cancel_requests(c, &owner)?
                    .into_iter()
                    .map(ThreadId::from)
                    .collect(),
            })
        })
        .await
    }

    // ------------------------------------------------------------ reads

    pub(super) async fn check_fence(&self, fence: Fence) -> Result<()> {
        self.read(move |c| queries::check_fence(c, &fence.id, &fence.owner, fence.epoch))
            .await
    }

    pub(super) async fn workflow(&self, id: ThreadId) -> Result<Option<WorkflowRow>> {
        self.read(move |c| queries::find_workflow(c, &id)).await
    }

    pub(super) async fn snapshot(&self, id: ThreadId) -> Result<Option<Snapshot>> {
        self.read(move |c| queries::snapshot(c, &id)).await
    }

    pub(super) async fn detail(&self, id: ThreadId) -> Result<Option<(Snapshot, Vec<AttemptRow>)>> {
        self.read(move |c| {
            let Some(snap) = queries::snapshot(c, &id)? else {
                return Ok(None);
            };
            let attempts = queries::load_attempts(c, &id)?;
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
        self.read(move |c| {
            // Status first: a terminal status read here is followed by its terminal event.
            let Some(row) = queries::find_workflow(c, &id)? else {
                return Ok(None);
            };
            let events = queries::events_after(c, &id, after, limit)?;
            Ok(Some(EventPage {
                status: row.status,
                step_count: row.step_count,
                events,
            }))
        })
        .await
    }

    pub(super) async fn done_at(&self, id: ThreadId, cursor: i64) -> Result<i64> {
        self.read(move |c| queries::done_at(c, &id, cursor)).await
    }

    pub(super) async fn cancel_requests(&self, owner: String) -> Result<Vec<ThreadId>> {
        self.read(move |c| {
            Ok(queries::cancel_requests(c, &owner)?
                .into_iter()
                .map(ThreadId::from)
                .collect())
        })
        .await
    }

    pub(super) async fn owner(&self, id: String) -> Result<Option<OwnerRow>> {
        self.read(move |c| queries::find_owner(c, &id)).await
    }

    pub(super) async fn adoptable(&self, me: String) -> Result<Vec<Adoptable>> {
        self.read(move |c| {
            let mut rows = queries::adoptable(c, &me)?;
            for a in &mut rows {
                if let Some(o) = &a.owner_id {
                    a.owner = queries::find_owner(c, o)?;
                }
            }
            Ok(rows)
        })
        .await
    }

    pub(super) async fn monitor(
        &self,
        statuses: Option<Vec<WorkflowStatus>>,
        limit: i64,
    ) -> Result<MonitorRows> {
        self.read(move |c| {
            let rows = queries::list_workflows(c, statuses.as_deref(), limit)?;
            let mut out = MonitorRows::default();
            fill_listing(c, rows, &mut out)?;
            Ok(out)
        })
        .await
    }

    pub(super) async fn step_medians(
        &self,
        name: String,
    ) -> Result<std::collections::BTreeMap<String, i64>> {
        self.read(move |c| queries::median_step_durations(c, &name))
            .await
    }

    // ------------------------------------------------------------ operator surface

    pub(super) async fn list(&self, filter: ListFilter) -> Result<MonitorRows> {
        self.read(move |c| {
            let rows = queries::list_filtered(c, &filter)?;
            let mut out = MonitorRows {
                next_cursor: match rows.last() {
                    Some((wid, _)) if rows.len() as i64 >= filter.limit => Some(*wid),
                    _ => None,
                },
                ..MonitorRows::default()
            };
            let rows = rows.into_iter().map(|(_, w)| w).collect();
            fill_listing(c, rows, &mut out)?;
            Ok(out)
        })
        .await
    }

    pub(super) async fn delete_workflow(&self, id: ThreadId) -> Result<Deleted> {
        self.write(move |ctx| queries::delete_workflow(ctx, &id))
            .await
    }

    pub(super) async fn prune_finished(
        &self,
        before_ms: i64,
        statuses: Vec<WorkflowStatus>,
        limit: i64,
    ) -> Result<Vec<ThreadId>> {
        self.write(move |ctx| queries::prune_finished(ctx, before_ms, &statuses, limit))
            .await
    }

    pub(super) async fn step_stream(
        &self,
        id: ThreadId,
        step_id: String,
        stderr: bool,
    ) -> Result<Option<Option<String>>> {
        self.read(move |c| queries::step_stream(c, &id, &step_id, stderr))
            .await
    }

    pub(super) async fn events_global(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, ThreadId, crate::api::Event)>> {
        self.read(move |c| queries::events_global(c, after, limit))
            .await
    }

    pub(super) async fn last_gseq(&self) -> Result<i64> {
        self.read(queries::last_gseq).await
    }

    pub(super) async fn metric_counts(&self) -> Result<MetricCounts> {
        self.read(queries::metric_counts).await
    }

    pub(super) fn commit_stats(&self) -> CommitStats {
        self.inner.committer.commit_stats()
    }
}

/// The rows of a listing with their steps, the definitions of running ones (stall
/// thresholds, estimates), the owners they name, and the counts per status.
fn fill_listing(c: &Connection, rows: Vec<WorkflowRow>, out: &mut MonitorRows) -> Result<()> {
    let mut owner_ids: Vec<String> = Vec::new();
    for workflow in rows {
        let steps = queries::load_steps(c, &workflow.id)?;
        let definition = if workflow.status == WorkflowStatus::Running {
            queries::load_definition(c, &workflow.id).ok()
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
        if let Some(row) = queries::find_owner(c, &o)? {
            out.owners.push(row);
        }
    }
    out.counts = queries::count_by_status(c)?;
    Ok(())
}

fn poisoned(what: &str) -> StoreError {
    StoreError::Poisoned(what.to_owned())
}
