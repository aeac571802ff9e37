//! Execution that outlives the host session: a per-database background worker.
//!
//! An MCP host ends its server when a session ends (Claude Code sends SIGINT, then SIGTERM).
//! So by default `baton serve` does not run steps itself: it stores each workflow unowned and
//! makes sure a worker process runs for the database — started on demand, detached (its own
//! session and process group, no terminal, stdin closed, log in `baton.worker.log` beside the
//! database), exiting after an idle period. The worker adopts the workflows like any owner,
//! and when it dies its workflows are adopted like any dead owner's.
//!
//! Invariant: at most one worker holds a database's worker lock (`baton.worker.lock`, an
//! exclusive `flock` held for the worker's life); a worker that cannot take it exits at once.
//! A starter only starts a worker when it could take the lock itself, so concurrent starters
//! start one worker, not several.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// Starts the worker when there is work for it.
pub trait Launcher: Send + Sync {
    /// Makes sure a worker runs for this database (cheap when one does).
    fn ensure(&self);
}

/// Files beside the database: the worker's lock and its log.
pub fn worker_files(db: &Path) -> (PathBuf, PathBuf) {
    (
        db.with_extension("worker.lock"),
        db.with_extension("worker.log"),
    )
}

fn open_private(path: &Path, append: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .append(append)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// The worker's hold on its database's lock, for its whole life.
pub struct WorkerLock {
    _lock: Flock<File>,
}

impl WorkerLock {
    /// Takes the lock, or `None` when another worker holds it.
    pub fn take(db: &Path) -> std::io::Result<Option<WorkerLock>> {
        let (lock, _) = worker_files(db);
        let file = open_private(&lock, false)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(WorkerLock { _lock: l })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(std::io::Error::from(e)),
        }
    }
}

/// Starts `baton worker` for one database.
pub struct WorkerLauncher {
    exe: PathBuf,
    args: Vec<String>,
    db: PathBuf,
    /// When a start was last tried: a worker needs a moment to take its lock.
    last_start: Mutex<Option<Instant>>,
}

/// A started worker gets this long to take its lock before another start is tried.
const START_GRACE: Duration = Duration::from_secs(2);

impl WorkerLauncher {
    /// `args` are the global arguments the worker runs with (database, agent command, …).
    pub fn new(exe: PathBuf, args: Vec<String>, db: PathBuf) -> WorkerLauncher {
        WorkerLauncher {
            exe,
            args,
            db,
            last_start: Mutex::new(None),
        }
    }

    fn start(&self) -> std::io::Result<()> {
        let (_, log) = worker_files(&self.db);
        let log = open_private(&log, true)?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("worker")
            .args(&self.args)
            .env_remove(super::process::OWNER_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: runs in the forked child before exec and only calls setsid, which is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        tracing::info!(pid = child.id(), db = %self.db.display(), "started a background worker");
        // Not waited for: it outlives this process. Its exit status is reaped by init.
        drop(child);
        Ok(())
    }
}

impl Launcher for WorkerLauncher {
    fn ensure(&self) {
        let mut last = self.last_start.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < START_GRACE) {
            return;
        }
        match WorkerLock::take(&self.db) {
            // A worker holds it.
            Ok(None) => {}
            Ok(Some(probe)) => {
                drop(probe);
                *last = Some(Instant::now());
                if let Err(e) = self.start() {
                    tracing::error!(error = %e, "cannot start the background worker");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot check the background worker's lock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_lock_per_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("baton.db");
        let first = WorkerLock::take(&db).unwrap();
        assert!(first.is_some());
        assert!(WorkerLock::take(&db).unwrap().is_none(), "held");
        drop(first);
        assert!(
            WorkerLock::take(&db).unwrap().is_some(),
            "released with its holder"
        );
    }
}
