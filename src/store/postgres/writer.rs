//! The writer: one task on one connection that runs every write of this process. Writes that
//! queue up while a commit is in flight share the next transaction ("group commit"), each in
//! its own savepoint; a batch whose transaction is lost is run again, and one whose `COMMIT`
//! got no answer is looked up by its transaction id after reconnecting.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::Client;

use super::connection::connect;
use super::feed::CHANNEL;
use super::{Postgres, queries};
use crate::api::{NewEvent, ThreadId};
use crate::store::{COMMIT_BUCKETS_S, Change, CommitStats, Durability, Result, StoreError};

/// Largest number of writes folded into one transaction.
const MAX_BATCH: usize = 256;
/// How long a write is retried while the database cannot be reached before it fails.
const WRITE_RETRY_FOR: Duration = Duration::from_secs(60);

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
pub(super) type JobFn = Box<dyn Fn(Tx) -> JobFuture + Send + Sync>;

pub(super) struct Job {
    run: JobFn,
    reply: oneshot::Sender<Result<Out>>,
}

/// What the writer task owns.
pub(super) struct Writer {
    pub(super) config: tokio_postgres::Config,
    pub(super) durability: Durability,
    pub(super) client: Option<Arc<Client>>,
    pub(super) instance: String,
    pub(super) changes: broadcast::Sender<Change>,
    pub(super) commits: Arc<AtomicU64>,
    pub(super) latency: Arc<Mutex<CommitStats>>,
}

impl Postgres {
    /// Runs `f` in the writer's transaction; answers once the commit containing it is
    /// durable. If `f` fails, its changes are rolled back and other writes are unaffected.
    pub(super) async fn write<R, F, Fut>(&self, f: F) -> Result<R>
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
}

fn poisoned(what: &str) -> StoreError {
    StoreError::Poisoned(what.to_owned())
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
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
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
}
