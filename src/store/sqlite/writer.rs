//! The writer thread: every write runs on it inside a transaction; writes that queue up while a
//! commit is being made durable share the next commit ("group commit"), each in its own
//! savepoint so one failing write never undoes another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot};

use super::{Sqlite, poisoned};
use crate::api::ThreadId;
use crate::store::{COMMIT_BUCKETS_S, Change, CommitStats, Result, StoreError};

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

type Reply = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// A queued write; called with `None` when it must not run (its reply then carries the error).
pub(super) type Job = Box<dyn FnOnce(Option<&mut WriteCtx<'_>>) -> (bool, Reply) + Send>;

/// Largest number of writes folded into one commit.
const MAX_BATCH: usize = 512;

impl Sqlite {
    /// Runs `f` inside a transaction on the writer thread. The result is returned only after
    /// the commit that contains it is durable; if `f` fails, its changes are rolled back and
    /// other writes sharing the commit are unaffected.
    pub(super) async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<R>>();
        let job: Job = Box::new(move |ctx| {
            let result = match ctx {
                Some(ctx) => f(ctx),
                None => Err(StoreError::Closed),
            };
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let out = match commit {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Commit(e)),
                };
                let _ = tx.send(out);
            });
            (ok, reply)
        });
        {
            let guard = self.inner.writer.lock().map_err(|_| poisoned("writer"))?;
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender.send(job).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Runs a statement without parameters through the statement cache.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

pub(super) fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    changes: broadcast::Sender<Change>,
    commits: Arc<AtomicU64>,
    latency: Arc<Mutex<CommitStats>>,
) {
    while let Ok(first) = rx.recv() {
        let began = std::time::Instant::now();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = exec_cached(&conn, "BEGIN IMMEDIATE") {
            let msg = e.to_string();
            tracing::error!(error = %msg, "cannot begin a write transaction");
            for job in batch {
                fail_reply(job, &msg)(Err(msg.clone()));
            }
            continue;
        }
        let mut ctx = WriteCtx {
            conn: &conn,
            changed: Vec::new(),
        };
        let mut replies = Vec::with_capacity(batch.len());
        // A lone write needs no savepoint: if it fails, the whole transaction is rolled back.
        let alone = batch.len() == 1;
        let mut failed_alone = false;
        for job in batch {
            let mark = ctx.changed.len();
            if !alone && let Err(e) = exec_cached(&conn, "SAVEPOINT job") {
                replies.push(fail_reply(job, &e.to_string()));
                continue;
            }
            let (ok, reply) = job(Some(&mut ctx));
            if !ok {
                ctx.changed.truncate(mark);
            }
            if alone {
                failed_alone = !ok;
            } else {
                let end = if ok {
                    exec_cached(&conn, "RELEASE job")
                } else {
                    exec_cached(&conn, "ROLLBACK TO job")
                        .and_then(|()| exec_cached(&conn, "RELEASE job"))
                };
                if let Err(e) = end {
                    tracing::error!(error = %e, "savepoint handling failed");
                }
            }
            replies.push(reply);
        }
        let commit = if failed_alone {
            exec_cached(&conn, "ROLLBACK").map_err(|e| e.to_string())
        } else {
            exec_cached(&conn, "COMMIT").map_err(|e| e.to_string())
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, "commit failed; rolling back the batch");
            let _ = conn.execute_batch("ROLLBACK");
        }
        let changed = std::mem::take(&mut ctx.changed);
        for reply in replies {
            reply(commit.clone());
        }
        if commit.is_ok() && !failed_alone {
            commits.fetch_add(1, Ordering::Relaxed);
            record_latency(&latency, began.elapsed());
            for id in changed {
                let _ = changes.send(Change::Workflow(id));
            }
        }
    }
}

/// Answers a job with `msg` without running it.
fn fail_reply(job: Job, msg: &str) -> Reply {
    let (_, reply) = job(None);
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
