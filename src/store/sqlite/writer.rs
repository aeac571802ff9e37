//! The writer: every write runs inside a transaction on the one writer connection. A write
//! that finds the connection idle (nothing queued, no transaction open, no other process
//! holding the write lock) commits at once on its caller's thread; writes that arrive while
//! a commit is under way queue for the writer thread, and those that queued up meanwhile
//! share its next commit ("group commit"), each in its own savepoint so one failing write
//! never undoes another.
//!
//! Invariants: a write committed on its caller's thread never overtakes a queued one (it
//! checks the queue while it holds the connection, and the writer thread holds the
//! connection before it takes writes off the queue); that thread never waits for another
//! process's lock (its `BEGIN` gives up at once and the write queues instead), so a
//! runtime thread is held for one local transaction at most.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, mpsc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot};

use super::files::{before_locking, wait_with, without_waiting};
use super::sync::Syncer;
use super::wake::Wake;
use super::{Sqlite, poisoned};
use crate::api::ThreadId;
use crate::store::{COMMIT_BUCKETS_S, Change, CommitStats, Durable, Result, StoreError};

/// The context a write runs in: the open transaction and the set of workflows it touched.
pub(super) struct WriteCtx<'c> {
    pub(super) conn: &'c Connection,
    /// Ids touched by the writes of the current transaction (few; a list beats a set).
    pub(super) changed: Vec<ThreadId>,
}

impl WriteCtx<'_> {
    /// Records that `workflow_id` changed, so subscribers are woken after the commit.
    pub(super) fn touched(&mut self, workflow_id: &str) {
        if !self.changed.iter().any(|c| &**c == workflow_id) {
            self.changed.push(ThreadId::from(workflow_id));
        }
    }
}

/// Answers a write with its commit's number, or why it did not commit.
type Reply = Box<dyn FnOnce(std::result::Result<u64, String>) + Send>;
/// A queued write; called with `None` when it must not run (its reply then carries the error).
/// Returns whether it succeeded, its reply, and when the reply is due.
pub(super) type Job = Box<dyn FnOnce(Option<&mut WriteCtx<'_>>) -> (bool, Reply, Due) + Send>;

/// When a write is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Once its commit is durable.
    Durable,
    /// As soon as its `COMMIT` returns (the caller waits for the fsync itself).
    Written,
}

/// A commit written and not yet answered: what is due once it is durable.
pub(super) struct Written {
    seq: u64,
    replies: Vec<Reply>,
    changed: Vec<ThreadId>,
    began: Instant,
}

/// What the writer thread is sent: a write, or a checkpoint asked for by a commit made on its
/// caller's thread.
pub(super) enum Msg {
    Write(Job),
    Checkpoint,
}

/// Largest number of writes folded into one commit.
const MAX_BATCH: usize = 512;

/// WAL pages after which a commit asks for a checkpoint (SQLite's own default size).
const CHECKPOINT_PAGES: i32 = 1000;
/// Pages written since the last checkpoint, when the WAL has not started over since, after
/// which a commit asks for another.
const CHECKPOINT_RETRY_PAGES: i32 = 100;

thread_local! {
    /// Pages in the WAL after the last commit made on this thread (set by the WAL hook, which
    /// a commit that wrote nothing does not call).
    static WAL_PAGES: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

/// The writer connection's WAL hook, which replaces SQLite's automatic checkpoint: it only
/// notes the WAL's size, so the commit's thread decides where the checkpoint runs.
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(Some(pages)));
    Ok(())
}

/// What became of a write offered to the caller's thread.
enum Inline {
    /// Committed (or failed) here; `checkpoint`: the WAL has grown enough for one.
    /// `written`: what is still due once the commit is durable.
    Done {
        checkpoint: bool,
        written: Option<Written>,
    },
    /// Not run: the writer is busy, writes are queued, or another process holds the lock.
    Refused(Job),
}

/// The writer connection and what every commit reports to, shared by the writer thread and
/// the callers that commit on their own thread.
pub(super) struct Committer {
    /// `None` once the store is closed.
    conn: Mutex<Option<Connection>>,
    /// Messages sent to the writer thread and not yet taken by it.
    queued: AtomicUsize,
    /// A checkpoint was asked of the writer thread and has not run yet.
    checkpoint_asked: AtomicBool,
    /// Checkpoints run by the writer thread.
    checkpoints: AtomicU64,
    /// Pages in the WAL when the last checkpoint ran (0 once the WAL has started over). While
    /// others read, a checkpoint may copy only part of the WAL and the WAL cannot start over;
    /// counting from here keeps every commit after that from asking again.
    checkpointed_at: AtomicI32,
    /// Pages in the WAL after the last commit that wrote any.
    wal_pages: AtomicI32,
    changes: broadcast::Sender<Change>,
    /// Transactions committed (benchmarks count commits per step).
    commits: AtomicU64,
    /// Latencies of the transactions, begin to durable commit.
    latency: Mutex<CommitStats>,
    /// Told of every write transaction's end, for other processes waiting for the lock.
    wake: Option<Arc<Wake>>,
    /// Makes commits durable after the lock is let go.
    pub(super) syncer: Syncer,
    /// To the sync thread, which settles commits whose caller did not wait for the fsync.
    to_sync: Mutex<Option<mpsc::Sender<Written>>>,
}

impl Committer {
    pub(super) fn new(
        conn: Connection,
        changes: broadcast::Sender<Change>,
        wake: Option<Arc<Wake>>,
        syncer: Syncer,
        to_sync: mpsc::Sender<Written>,
    ) -> Committer {
        // Checkpoints copy up to a thousand pages and fsync the database: they run on the
        // writer thread, never on a caller's.
        conn.wal_hook(Some(note_wal_pages));
        Committer {
            conn: Mutex::new(Some(conn)),
            queued: AtomicUsize::new(0),
            checkpoint_asked: AtomicBool::new(false),
            checkpoints: AtomicU64::new(0),
            checkpointed_at: AtomicI32::new(0),
            wal_pages: AtomicI32::new(0),
            changes,
            commits: AtomicU64::new(0),
            latency: Mutex::new(CommitStats {
                buckets: vec![0; COMMIT_BUCKETS_S.len()],
                ..CommitStats::default()
            }),
            wake,
            syncer,
            to_sync: Mutex::new(Some(to_sync)),
        }
    }

    pub(super) fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    pub(super) fn commit_stats(&self) -> CommitStats {
        self.latency.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The connection, even if a thread panicked while it held it (the transaction it may
    /// have left open is rolled back).
    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        rollback_leftover(&guard);
        guard
    }

    /// Closes the writer connection; later writes fail with [`StoreError::Closed`]. The sync
    /// thread ends once it has settled what was sent to it.
    pub(super) fn close(&self) {
        self.lock().take();
        if let Ok(mut s) = self.to_sync.lock() {
            s.take();
        }
    }

    /// Settles `w` on this thread (an fsync unless one covered it already): answers its
    /// writes, counts its latency and publishes its changes once it is durable.
    pub(super) fn settle(&self, w: Written) {
        let synced = self.syncer.sync_through(w.seq);
        if synced.is_ok() {
            record_latency(&self.latency, w.began.elapsed());
        }
        for reply in w.replies {
            reply(synced.clone().map(|()| w.seq));
        }
        if synced.is_ok() {
            for id in w.changed {
                let _ = self.changes.send(Change::Workflow(id));
            }
        }
    }

    /// Has the sync thread settle `w`, or settles it here if that thread is gone.
    fn settle_later(&self, w: Written) {
        let sender = self.to_sync.lock().ok().and_then(|s| s.clone());
        match sender {
            Some(tx) => {
                if let Err(mpsc::SendError(w)) = tx.send(w) {
                    self.settle(w);
                }
            }
            None => self.settle(w),
        }
    }

    /// Commits `job` on this thread if the connection is idle and nothing is queued;
    /// otherwise gives it back, untouched, for the writer thread.
    fn try_inline(&self, job: Job) -> Inline {
        let guard = match self.conn.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => return Inline::Refused(job),
            Err(TryLockError::Poisoned(e)) => {
                let g = e.into_inner();
                rollback_leftover(&g);
                g
            }
        };
        let Some(conn) = guard.as_ref() else {
            return Inline::Refused(job);
        };
        if self.queued.load(Ordering::Acquire) != 0 {
            return Inline::Refused(job);
        }
        let began = Instant::now();
        if without_waiting(|| exec_cached(conn, "BEGIN IMMEDIATE")).is_err() {
            // Another process holds the write lock: the writer thread waits for it.
            return Inline::Refused(job);
        }
        let (checkpoint, written) = self.run(conn, vec![job], began);
        Inline::Done {
            checkpoint,
            written,
        }
    }

    /// Runs a passive checkpoint (it copies what no reader still needs and waits for no
    /// one); called by the writer thread with the connection held.
    fn checkpoint(&self, conn: &Connection) {
        // Its row: busy, pages in the WAL, pages copied; -1 pages when another connection's
        // checkpoint kept this one from running, which counts as a try at the WAL's last size.
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i32>(1)) {
            Ok(pages) => {
                let at = if pages >= 0 {
                    pages
                } else {
                    self.wal_pages.load(Ordering::Relaxed)
                };
                self.checkpointed_at.store(at, Ordering::Relaxed);
                self.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries"),
        }
    }

    /// Runs `batch` in the transaction just begun on `conn` and commits it. Answers at once
    /// the jobs due when written (and every job, if nothing was committed); returns whether the
    /// WAL has grown enough for a checkpoint, and what is due once the commit is durable. A job
    /// that panics is rolled back like one that failed (its caller sees the store's error), so
    /// no transaction is left open holding the database's write lock.
    fn run(&self, conn: &Connection, batch: Vec<Job>, began: Instant) -> (bool, Option<Written>) {
        let mut ctx = WriteCtx {
            conn,
            changed: Vec::new(),
        };
        let mut replies = Vec::with_capacity(batch.len());
        // A lone write needs no savepoint: if it fails, the whole transaction is rolled back.
        let alone = batch.len() == 1;
        let mut failed_alone = false;
        for job in batch {
            let mark = ctx.changed.len();
            if !alone && let Err(e) = exec_cached(conn, "SAVEPOINT job") {
                replies.push((fail_reply(job, &e.to_string()), Due::Written));
                continue;
            }
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&mut ctx))));
            let (ok, reply, due) = ran.unwrap_or_else(|_| {
                tracing::error!("a write panicked; its changes are rolled back");
                let dropped: Reply = Box::new(|_| {});
                (false, dropped, Due::Written)
            });
            if !ok {
                ctx.changed.truncate(mark);
            }
            if alone {
                failed_alone = !ok;
            } else {
                let end = if ok {
                    exec_cached(conn, "RELEASE job")
                } else {
                    exec_cached(conn, "ROLLBACK TO job")
                        .and_then(|()| exec_cached(conn, "RELEASE job"))
                };
                if let Err(e) = end {
                    tracing::error!(error = %e, "savepoint handling failed");
                }
            }
            replies.push((reply, due));
        }
        let commit = if failed_alone {
            exec_cached(conn, "ROLLBACK").map_err(|e| e.to_string())
        } else {
            exec_cached(conn, "COMMIT").map_err(|e| e.to_string())
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, "commit failed; rolling back the batch");
            let _ = conn.execute_batch("ROLLBACK");
        }
        if let Some(w) = &self.wake {
            w.released();
        }
        let pages = WAL_PAGES.with(|p| p.take());
        if commit.is_err() || failed_alone {
            // Nothing was written: every job is answered now (a failed one with its own error).
            for (reply, _) in replies {
                reply(commit.clone().map(|()| 0));
            }
            return (false, None);
        }
        let seq = self.syncer.written();
        // Counted before anyone is answered: a caller that reads the count after its write
        // returns sees that write's commit in it.
        self.commits.fetch_add(1, Ordering::Relaxed);
        let mut later = Vec::with_capacity(replies.len());
        for (reply, due) in replies {
            match due {
                Due::Written => reply(Ok(seq)),
                Due::Durable => later.push(reply),
            }
        }
        let written = Written {
            seq,
            replies: later,
            changed: std::mem::take(&mut ctx.changed),
            began,
        };
        let checkpoint = pages.is_some_and(|p| {
            self.wal_pages.store(p, Ordering::Relaxed);
            self.wants_checkpoint(p)
        });
        (checkpoint, Some(written))
    }

    /// Whether a commit that left `pages` in the WAL should ask for a checkpoint: once the WAL
    /// holds [`CHECKPOINT_PAGES`]; and, while it has not started over since the last
    /// checkpoint (readers kept it), once [`CHECKPOINT_RETRY_PAGES`] more were written, so the
    /// WAL stays near its size without a checkpoint after every commit.
    fn wants_checkpoint(&self, pages: i32) -> bool {
        let at = self.checkpointed_at.load(Ordering::Relaxed);
        if at == 0 || pages < at {
            if at != 0 {
                // The WAL started over from its beginning since that checkpoint.
                self.checkpointed_at.store(0, Ordering::Relaxed);
            }
            return pages >= CHECKPOINT_PAGES;
        }
        pages - at >= CHECKPOINT_RETRY_PAGES
    }
}

/// Rolls back a transaction a panicking thread left open on the connection.
fn rollback_leftover(conn: &Option<Connection>) {
    if let Some(c) = conn
        && !c.is_autocommit()
    {
        let _ = c.execute_batch("ROLLBACK");
    }
}

impl Sqlite {
    /// Runs `f` inside a transaction: on this thread when the writer is idle, else on the
    /// writer thread. The result is returned only after the commit that contains it is
    /// durable; if `f` fails, its changes are rolled back and other writes sharing the commit
    /// are unaffected.
    pub(super) async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R> + Send + 'static,
    {
        self.write_when(f, Due::Durable).await.map(|(r, _)| r)
    }

    /// Like [`Sqlite::write`], but returns as soon as the commit is written: visible to every
    /// reader of the file and safe from a crash of this process (its frames are in the
    /// kernel's page cache), not yet from a crash of the machine. The [`Durable`] resolves once
    /// it is; the commit's changes are published then.
    pub(super) async fn write_early<R, F>(&self, f: F) -> Result<(R, Durable)>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R> + Send + 'static,
    {
        let (r, seq) = self.write_when(f, Due::Written).await?;
        let committer = self.inner.committer.clone();
        Ok((
            r,
            Durable::new(async move { committer.syncer.durable(seq).await }),
        ))
    }

    /// Runs `f` in a transaction and answers it when `due`, with its commit's number.
    async fn write_when<R, F>(&self, f: F, due: Due) -> Result<(R, u64)>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<(R, u64)>>();
        let job: Job = Box::new(move |ctx| {
            let result = match ctx {
                Some(ctx) => f(ctx),
                None => Err(StoreError::Closed),
            };
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let out = match commit {
                    Ok(seq) => result.map(|r| (r, seq)),
                    Err(e) => Err(StoreError::Commit(e)),
                };
                let _ = tx.send(out);
            });
            (ok, reply, due)
        });
        let committer = &self.inner.committer;
        match committer.try_inline(job) {
            Inline::Done {
                checkpoint,
                written,
            } => {
                if checkpoint && !committer.checkpoint_asked.swap(true, Ordering::AcqRel) {
                    // Best effort: a closed store needs none.
                    let _ = self.send(Msg::Checkpoint);
                }
                // The connection is free again: the fsync runs beside the next commit. A caller
                // waiting for it makes it here; one that is not leaves it to the sync thread.
                if let Some(w) = written {
                    match due {
                        Due::Durable => committer.settle(w),
                        Due::Written => committer.settle_later(w),
                    }
                }
            }
            Inline::Refused(job) => self.send(Msg::Write(job))?,
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until every commit this process has written is durable; reads call it before
    /// they return, so nothing they saw can be lost with the machine after it was told.
    pub(super) async fn all_durable(&self) -> Result<()> {
        let syncer = &self.inner.committer.syncer;
        syncer.durable(syncer.last_written()).await
    }
}

impl Sqlite {
    /// Queues `msg` for the writer thread, counted until the thread takes it.
    fn send(&self, msg: Msg) -> Result<()> {
        let committer = &self.inner.committer;
        let guard = self.inner.writer.lock().map_err(|_| poisoned("writer"))?;
        let sender = guard.as_ref().ok_or(StoreError::Closed)?;
        committer.queued.fetch_add(1, Ordering::AcqRel);
        if sender.send(msg).is_err() {
            committer.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    #[cfg(test)]
    fn checkpoints(&self) -> u64 {
        self.inner.committer.checkpoints.load(Ordering::Relaxed)
    }
}

/// Runs a statement without parameters through the statement cache.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The writer thread: takes every write queued up, up to [`MAX_BATCH`], into one
/// transaction, holding the connection from before it looks at the queue; runs the
/// checkpoints asked for, after the commit.
pub(super) fn writer_loop(committer: Arc<Committer>, rx: mpsc::Receiver<Msg>) {
    wait_with(committer.wake.clone());
    while let Ok(first) = rx.recv() {
        let began = Instant::now();
        let guard = committer.lock();
        let mut batch = Vec::new();
        let mut taken = 1;
        let mut checkpoint = false;
        match first {
            Msg::Write(job) => batch.push(job),
            Msg::Checkpoint => checkpoint = true,
        }
        while !batch.is_empty() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Write(job)) => batch.push(job),
                Ok(Msg::Checkpoint) => checkpoint = true,
                Err(_) => break,
            }
            taken += 1;
        }
        committer.queued.fetch_sub(taken, Ordering::AcqRel);
        if checkpoint {
            committer.checkpoint_asked.store(false, Ordering::Release);
        }
        let Some(conn) = guard.as_ref() else {
            for job in batch {
                fail_reply(job, "the store is closed")(Err("the store is closed".into()));
            }
            continue;
        };
        if !batch.is_empty() {
            before_locking();
            if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
                let msg = e.to_string();
                tracing::error!(error = %msg, "cannot begin a write transaction");
                for job in batch {
                    fail_reply(job, &msg)(Err(msg.clone()));
                }
                continue;
            }
            let (wants, written) = committer.run(conn, batch, began);
            checkpoint |= wants;
            // The writer thread never waits for an fsync: it goes on to the next batch while
            // the sync thread makes this one durable.
            if let Some(w) = written {
                committer.settle_later(w);
            }
        }
        if checkpoint {
            committer.checkpoint(conn);
        }
    }
}

/// The sync thread: settles, in the order they were written, the commits whose callers did
/// not wait for the fsync; commits written while one fsync runs share the next.
pub(super) fn sync_loop(committer: Arc<Committer>, rx: mpsc::Receiver<Written>) {
    // Each settle's fsync covers the commits queued behind it, which then find it made.
    for w in rx.iter() {
        committer.settle(w);
    }
}

/// Answers a job with `msg` without running it.
fn fail_reply(job: Job, msg: &str) -> Reply {
    let (_, reply, _) = job(None);
    let msg = msg.to_owned();
    Box::new(move |_| reply(Err(msg)))
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
    use crate::store::Durability;
    use std::future::Future;
    use std::task::Poll;

    fn open() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(&dir.path().join("baton.db"), Durability::Normal).unwrap();
        (dir, store)
    }

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_owned()
    }

    /// Polls `fut` once.
    fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        let waker = futures::task::noop_waker();
        std::pin::Pin::new(fut).poll(&mut std::task::Context::from_waker(&waker))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_on_an_idle_store_commits_on_its_callers_thread() {
        let (_dir, store) = open();
        let before = store.commit_count();
        let caller = std::thread::current().id();
        let ran_on = store
            .write(|_| Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_eq!(ran_on, caller);
        assert_eq!(store.commit_count(), before + 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_never_overtakes_one_queued_for_the_writer_thread() {
        let (_dir, store) = open();
        let committer = &store.inner.committer;
        // A write sent to the writer thread and not yet taken off the queue.
        committer.queued.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move |_| {
            let _ = tx.send(());
            (true, Box::new(|_| {}), Due::Written)
        });
        let Inline::Refused(back) = committer.try_inline(job) else {
            panic!("committed ahead of the queued write");
        };
        assert!(rx.try_recv().is_err(), "the write ran");
        committer.queued.fetch_sub(1, Ordering::AcqRel);
        assert!(matches!(
            committer.try_inline(back),
            Inline::Done {
                checkpoint: false,
                ..
            }
        ));
        assert!(rx.try_recv().is_ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writes_queued_behind_a_commit_share_the_next_one() {
        let (_dir, store) = open();
        let before = store.commit_count();
        // A commit under way: the connection is held.
        let held = store.inner.committer.conn.lock().unwrap();
        let mut writes: Vec<_> = (0..10)
            .map(|i| Box::pin(store.write(move |_| Ok((i, thread_name())))))
            .collect();
        for w in &mut writes {
            assert!(poll_once(w).is_pending());
        }
        assert_eq!(store.inner.committer.queued.load(Ordering::Acquire), 10);
        drop(held);
        for (i, w) in writes.into_iter().enumerate() {
            let (n, on) = w.await.unwrap();
            assert_eq!(n, i);
            assert_eq!(on, "baton-store-writer");
        }
        // The writer thread took the first write, then the nine queued behind it, into one
        // transaction (it takes the connection before it looks at the queue).
        assert_eq!(store.commit_count(), before + 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_that_finds_another_process_holding_the_lock_waits_on_the_writer_thread() {
        let (dir, store) = open();
        let other = Connection::open(dir.path().join("baton.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut write = Box::pin(store.write(|_| Ok(thread_name())));
        // The first poll gives up on the lock at once and hands the write over: it does not
        // hold this thread for as long as the other connection keeps the lock (the busy
        // handler would poll for 30 s).
        let polled = std::time::Instant::now();
        assert!(poll_once(&mut write).is_pending());
        assert!(
            polled.elapsed() < Duration::from_secs(5),
            "{:?}",
            polled.elapsed()
        );
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(write.await.unwrap(), "baton-store-writer");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_after_close_is_refused_and_runs_nowhere() {
        let (_dir, store) = open();
        store.close();
        let err = store.write(|_| Ok(())).await.unwrap_err();
        assert!(matches!(err, StoreError::Closed), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_checkpoint_is_never_run_on_the_callers_thread() {
        let (dir, store) = open();
        let db = dir.path().join("baton.db");
        let size = || std::fs::metadata(&db).unwrap().len();
        let before = size();
        // More than a thousand pages into the WAL, committed on this thread.
        let job: Job = Box::new(|ctx| {
            let done = ctx.unwrap().conn.execute_batch(
                "CREATE TABLE bulk (b BLOB); INSERT INTO bulk VALUES (randomblob(5000000));",
            );
            (done.is_ok(), Box::new(|_| {}), Due::Written)
        });
        let Inline::Done {
            checkpoint: true, ..
        } = store.inner.committer.try_inline(job)
        else {
            panic!("a commit of 5 MB on this thread did not ask for a checkpoint");
        };
        // Its pages are still only in the WAL: the commit did not copy them.
        assert!(size() < before + 1_000_000, "{before} -> {}", size());
        // Asked of the writer thread, which holds the connection while it copies them; a
        // write made afterwards waits behind it, on the queue or for the connection.
        store.send(Msg::Checkpoint).unwrap();
        store.write(|_| Ok(())).await.unwrap();
        assert!(size() >= before + 4_000_000, "{before} -> {}", size());
        assert!(store.checkpoints() >= 1);
    }

    /// A job that commits `bytes` of new pages.
    fn bulk(bytes: usize) -> Job {
        Box::new(move |ctx| {
            let done = ctx
                .unwrap()
                .conn
                .execute("INSERT INTO bulk VALUES (randomblob(?1))", [bytes as i64]);
            (done.is_ok(), Box::new(|_| {}), Due::Written)
        })
    }

    /// Commits `job` on this thread, once the writer thread has let go of the connection (it
    /// answers a write before it drops the connection's lock).
    fn inline(committer: &Committer, mut job: Job) -> Inline {
        loop {
            match committer.try_inline(job) {
                Inline::Refused(back) => {
                    job = back;
                    std::thread::yield_now();
                }
                done => return done,
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_checkpoint_that_cannot_start_the_wal_over_is_asked_again_only_after_another_hundred_pages()
     {
        let (dir, store) = open();
        let committer = &store.inner.committer;
        store
            .write(|ctx| Ok(ctx.conn.execute_batch("CREATE TABLE bulk (b BLOB)")?))
            .await
            .unwrap();
        let Inline::Done {
            checkpoint: true, ..
        } = inline(committer, bulk(5_000_000))
        else {
            panic!("1,200 pages did not ask for a checkpoint");
        };
        // Another process reads from the WAL, so the WAL cannot start over after the checkpoint
        // and keeps its 1,200 pages.
        let reader = Connection::open(dir.path().join("baton.db")).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM bulk;")
            .unwrap();
        store.send(Msg::Checkpoint).unwrap();
        store.write(|_| Ok(())).await.unwrap();
        assert_eq!(store.checkpoints(), 1);
        // Ten commits of a page or two each.
        for _ in 0..10 {
            let Inline::Done {
                checkpoint: false, ..
            } = inline(committer, bulk(10))
            else {
                panic!("a small commit on a WAL checkpointed already asked for another checkpoint");
            };
        }
        let Inline::Done {
            checkpoint: true, ..
        } = inline(committer, bulk(500_000))
        else {
            panic!("120 more pages did not ask for a checkpoint");
        };
        reader.execute_batch("COMMIT").unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_that_panics_is_rolled_back_and_leaves_the_lock_free() {
        let (dir, store) = open();
        let err = store
            .write(|ctx| -> Result<()> {
                ctx.conn
                    .execute_batch("CREATE TABLE half (x INTEGER); INSERT INTO half VALUES (1);")?;
                panic!("a bug in a write");
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Closed), "{err}");
        // Another process can take the write lock at once, and nothing of the write is there.
        let other = Connection::open(dir.path().join("baton.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").unwrap();
        let half: i64 = other
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'half'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(half, 0);
        // The store goes on.
        assert_eq!(store.write(|_| Ok(1)).await.unwrap(), 1);
    }
}
