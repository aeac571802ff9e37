//! The store: one SQLite file that is the source of truth for workflows, steps, attempts, the
//! event log and process ownership.
//!
//! Invariant: nothing a client is told has happened exists only in memory. Every write runs on
//! a single writer thread inside a transaction; writes that queue up while a commit is being
//! made durable share the next commit ("group commit"), so many workflows advance with one
//! fsync. Each write runs inside its own savepoint, so one failing write never undoes another
//! that shares its commit. Readers use their own connections (WAL lets them run beside the
//! writer) and never block it.
//!
//! After a commit, the ids of the workflows it touched are broadcast in-process; this is a
//! latency optimisation only — subscribers re-read the store, which stays authoritative.

mod queries;
mod schema;

pub use queries::*;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{broadcast, oneshot};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("database schema migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the store is shut down")]
    Closed,
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// This process no longer holds the lease of the workflow it tried to write.
    #[error("workflow {0} is owned by another process")]
    Fenced(String),
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

/// The context a write runs in: the open transaction and the set of workflows it touched.
pub struct WriteCtx<'c> {
    pub conn: &'c Connection,
    /// Ids touched by the writes of the current transaction (few; a list beats a set).
    changed: Vec<String>,
}

impl WriteCtx<'_> {
    /// Records that `workflow_id` changed, so subscribers are woken after the commit.
    pub fn touched(&mut self, workflow_id: &str) {
        if !self.changed.iter().any(|c| c == workflow_id) {
            self.changed.push(workflow_id.to_owned());
        }
    }
}

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A queued write; called with `None` when it must not run (its reply then carries the error).
type Job = Box<dyn FnOnce(Option<&mut WriteCtx<'_>>) -> (bool, Reply) + Send>;

/// Largest number of writes folded into one commit.
const MAX_BATCH: usize = 512;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
    changes: broadcast::Sender<Arc<str>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Transactions committed by the writer thread (benchmarks count commits per step).
    commits: Arc<AtomicU64>,
}

impl Store {
    /// Opens (creating with mode 0600 if needed) and migrates the database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Store> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| open_err(format!("cannot create directory: {e}")))?;
        }
        // Create the file ourselves so it is 0600 from the first byte; SQLite gives the
        // -wal and -shm files the same mode.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_err(e.to_string()))?;
        refuse_foreign(path).map_err(open_err)?;
        let mut conn = open_conn(path, durability).map_err(|e| open_err(e.to_string()))?;
        schema::migrate(&mut conn)
            .map_err(|e| open_err(format!("{e} (is this a baton database?)")))?;

        let (tx, rx) = mpsc::channel::<Job>();
        let (changes, _) = broadcast::channel(4096);
        let changes_tx = changes.clone();
        let commits = Arc::new(AtomicU64::new(0));
        let commits_tx = commits.clone();
        let thread = std::thread::Builder::new()
            .name("baton-store-writer".into())
            .spawn(move || writer_loop(conn, rx, changes_tx, commits_tx))
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                changes,
                writer_thread: Mutex::new(Some(thread)),
                commits,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Number of transactions committed so far by this handle's writer thread. Several
    /// writes share one commit when they queue up while a commit is in flight.
    pub fn commit_count(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Subscribes to the ids of workflows changed by each commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.changes.subscribe()
    }

    /// Runs `f` inside a transaction on the writer thread. The result is returned only after
    /// the commit that contains it is durable; if `f` fails, its changes are rolled back and
    /// other writes sharing the commit are unaffected.
    pub async fn write<R, F>(&self, f: F) -> Result<R>
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
            let guard = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender.send(job).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a reader connection on the blocking pool.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|e| StoreError::Commit(format!("reader task failed: {e}")))?
    }

    /// Runs `f` on a reader connection on the current thread.
    pub fn read_blocking<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let pooled = self.inner.readers.lock().ok().and_then(|mut p| p.pop());
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = open_conn(&self.inner.path, Durability::Full)?;
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
    pub fn close(&self) {
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
    }
}

/// Refuses, before anything is written, a file that is not a baton database: opening would
/// switch it to WAL and add baton's tables to another program's data.
fn refuse_foreign(path: &Path) -> std::result::Result<(), String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    // Both reads in one snapshot: another baton may be migrating this file right now, and
    // its commit falling between them would look like a foreign database.
    conn.execute_batch("BEGIN")
        .map_err(|e| format!("database error: {e}"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("database error: {e}"))?;
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .map_err(|e| format!("database error: {e}"))?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| format!("database error: {e}"))?;
    if version == 0 && !tables.is_empty() {
        return Err(format!(
            "it is an SQLite database of another program (tables: {}); baton leaves it untouched, pass another --db",
            tables.join(", ")
        ));
    }
    Ok(())
}

fn open_conn(path: &Path, durability: Durability) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "cannot switch the database to WAL mode (got {mode})"
        )));
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY;"
    ))?;
    Ok(conn)
}

/// Runs a statement without parameters through the statement cache.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    changes: broadcast::Sender<Arc<str>>,
    commits: Arc<AtomicU64>,
) {
    while let Ok(first) = rx.recv() {
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
            for id in changed {
                let _ = changes.send(Arc::from(id));
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
