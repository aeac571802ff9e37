//! Making commits durable outside the write lock. With `Durability::Full` the writer
//! connection runs `synchronous = NORMAL`: its `COMMIT` writes the WAL frames and lets go of
//! SQLite's write lock without an fsync, and the `fdatasync` of the WAL that makes them
//! durable is made here, after the lock is free, so another process (or this one's next
//! write) commits during it instead of behind it. One fsync covers every frame written before
//! it began, whichever connection wrote it; commits that arrive while one is under way share
//! the next.
//!
//! Every commit of this process gets a sequence number when its `COMMIT` returns; `synced` is
//! the highest one known durable.
//!
//! Invariants: a write is answered, its change published and a read of this process returns
//! what it saw only once `synced` covers every commit made before (a write asked to be
//! answered as soon as it is written, [`super::Sqlite::write_early`], is the one exception,
//! and its caller gets a [`Durable`] to wait on). A failed fsync fails the store for good: the
//! kernel may have dropped the pages it could not write, so no later fsync can vouch for them.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::store::{Result, StoreError};

/// The WAL's fsync and the counters that say what it covers.
pub(super) struct Syncer {
    /// The WAL, opened by path; `None` with `Durability::Normal` (SQLite's own checkpoints
    /// sync it). SQLite takes no POSIX lock on the WAL (its locks are on the database file and
    /// the `-shm`), so closing a descriptor of its own drops none of them.
    wal: Option<File>,
    /// Commits whose `COMMIT` returned.
    written: AtomicU64,
    /// The highest commit known durable; waiters watch it.
    synced: watch::Sender<u64>,
    /// Set by the first fsync that failed.
    failed: Mutex<Option<String>>,
}

impl Syncer {
    /// A syncer for the database at `path`; `full`: fsync the WAL after each commit.
    pub(super) fn open(path: &Path, full: bool) -> std::io::Result<Syncer> {
        let wal = if full {
            let mut p = path.as_os_str().to_owned();
            p.push("-wal");
            // fdatasync works on a descriptor opened for reading.
            Some(File::open(Path::new(&p))?)
        } else {
            None
        };
        Ok(Syncer {
            wal,
            written: AtomicU64::new(0),
            synced: watch::Sender::new(0),
            failed: Mutex::new(None),
        })
    }

    /// Numbers a commit whose `COMMIT` just returned; called with the writer connection held,
    /// so numbers follow the order of the commits.
    pub(super) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The number of the last commit written.
    pub(super) fn last_written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Makes commit `seq` durable, with every commit written before this call: returns at once
    /// if an fsync did already, else makes one on this thread.
    pub(super) fn sync_through(&self, seq: u64) -> std::result::Result<(), String> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        if *self.synced.borrow() >= seq {
            return Ok(());
        }
        // Every commit numbered so far has its frames in the WAL: this fsync covers them.
        let upto = self.written.load(Ordering::Acquire);
        if let Some(wal) = &self.wal
            && let Err(e) = wal.sync_data()
        {
            let msg = format!("cannot make the WAL durable (fdatasync): {e}");
            tracing::error!(error = %msg, "the store stops taking writes");
            if let Ok(mut f) = self.failed.lock() {
                f.get_or_insert_with(|| msg.clone());
            }
            // Wakes the waiters, who find the failure.
            self.synced.send_modify(|_| {});
            return Err(msg);
        }
        self.synced.send_if_modified(|s| {
            let moved = upto > *s;
            if moved {
                *s = upto;
            }
            moved
        });
        Ok(())
    }

    fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Waits until commit `seq` is durable.
    pub(super) async fn durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.synced.subscribe();
        loop {
            if let Some(e) = self.failure() {
                return Err(StoreError::Commit(e));
            }
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            // The sender lives as long as the store; a store dropped under a waiter is closed.
            if rx.changed().await.is_err() {
                return Err(StoreError::Closed);
            }
        }
    }

    /// Commits made durable so far (tests).
    #[cfg(test)]
    pub(super) fn synced(&self) -> u64 {
        *self.synced.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;
    use crate::store::sqlite::Sqlite;

    /// The inodes /proc/locks lists a POSIX lock on.
    fn locked_inodes() -> Vec<u64> {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        locks
            .lines()
            .filter_map(|l| {
                // "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (maj:min:inode).
                let dev_ino = l.split_whitespace().nth(5)?;
                dev_ino.rsplit(':').next()?.parse().ok()
            })
            .collect()
    }

    #[tokio::test]
    async fn sqlite_holds_no_posix_lock_on_the_wal_so_a_descriptor_of_ours_drops_none() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("baton.db");
        let store = Sqlite::open(&db, Durability::Full).unwrap();
        store.write(|_| Ok(())).await.unwrap();
        // A reader holds its read lock (on the -shm) while a write is made beside it.
        let reader = rusqlite::Connection::open(&db).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;")
            .unwrap();
        let inode = |side: &str| {
            let mut p = db.as_os_str().to_owned();
            p.push(side);
            std::fs::metadata(Path::new(&p)).unwrap().ino()
        };
        let locked = locked_inodes();
        assert!(
            locked.contains(&inode("-shm")),
            "the lock listing shows SQLite's locks"
        );
        assert!(!locked.contains(&inode("-wal")), "{locked:?}");
        reader.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn one_fsync_covers_every_commit_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(dir.path().join("x.db-wal"), b"").unwrap();
        let s = Syncer::open(&db, true).unwrap();
        let (a, b) = (s.written(), s.written());
        s.sync_through(a).unwrap();
        // The fsync made for the first covered the second, written before it began.
        assert_eq!(s.synced(), b);
        s.sync_through(b).unwrap();
        assert_eq!(s.synced(), 2);
    }
}
