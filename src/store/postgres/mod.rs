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
//!
//! # Layout
//! - `connection`: URLs, the directory of files kept beside the store, connections, and the
//!   pool reads run on.
//! - `writer`: the writer task (group commit, savepoints, retry, commit-outcome lookup).
//! - `feed`: the change feed between processes (NOTIFY, the listener, the fallback poll).
//! - `writes`: a workflow's writes (insert, commit, transition, sessions, answers).
//! - `owners`: process ownership (owner rows, lease renewal, fences, adoption).
//! - `reads`: reads of workflows and the monitor's listing.
//! - `operator`: the operator surface (listing, delete, prune, outputs, metrics).
//! - `queries`, `step_queries`, `operator_queries`: the SQL of the above (`step_queries`:
//!   steps and attempts); `schema`: tables and migrations.

mod connection;
mod feed;
mod operator;
mod operator_queries;
mod owners;
mod queries;
mod reads;
mod schema;
mod step_queries;
mod writer;
mod writes;

pub(super) use connection::{is_url, url_location};
use writer::Tx;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{COMMIT_BUCKETS_S, Change, CommitStats, Durability, Result, StoreError};
use connection::{connect, location_for, redact};
use feed::listen;
use writer::{Job, Writer};

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

        let pool = connection::pool(&config).map_err(&open_err)?;

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

    pub(super) fn commit_stats(&self) -> CommitStats {
        self.inner
            .latency
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}
