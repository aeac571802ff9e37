//! Opening the database file: its mode, refusing another program's file, connections, and
//! the poll that notices other processes' commits.
//!
//! Invariant: the file is never held open by a plain descriptor beside SQLite's own (closing
//! one would drop SQLite's POSIX locks), and it is private to its owner once opened.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::broadcast;

use super::super::{Change, Durability, Result, StoreError};
use super::wake::Wake;

/// How often the poller looks for commits of other processes.
const FOREIGN_POLL: Duration = Duration::from_millis(100);

/// Makes an existing database file (or its `-wal`/`-shm`) private to its owner: a file left
/// 0644 by another tool would otherwise stay readable by every user, with every step output.
/// By path (stat and chmod), never by opening it: see [`Sqlite::open`] on POSIX locks.
pub(super) fn tighten(path: &Path) -> std::result::Result<(), String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)).map_err(
            |e| {
                format!(
                    "{} is readable by other users (mode {mode:o}) and cannot be made private: {e}; chmod 600 it",
                    path.display()
                )
            },
        )?;
    }
    Ok(())
}

/// Publishes [`Change::Unknown`] when another connection committed since the last look, so
/// followers notice commits of other processes sharing the file. Looks only while someone
/// listens.
pub(super) fn foreign_poll(
    conn: Connection,
    tx: broadcast::Sender<Change>,
    closed: Arc<AtomicBool>,
) {
    let version = |c: &Connection| -> Option<i64> {
        c.query_row("PRAGMA data_version", [], |r| r.get(0)).ok()
    };
    let mut last = version(&conn);
    while !closed.load(Ordering::Relaxed) {
        std::thread::sleep(FOREIGN_POLL);
        if tx.receiver_count() == 0 {
            continue;
        }
        let now = version(&conn);
        if now != last {
            last = now;
            let _ = tx.send(Change::Unknown);
        }
    }
}

/// Refuses, before anything is written, a file that is not a baton database: opening would
/// switch it to WAL and add baton's tables to another program's data.
pub(super) fn refuse_foreign(path: &Path) -> std::result::Result<(), String> {
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

/// How long to give up waiting for another process's write lock.
const BUSY_GIVE_UP: Duration = Duration::from_secs(30);

/// The pause before retry `count` (0-based) of a statement that found the database locked:
/// 50 µs doubling to at most 1 ms, so a lock is noticed within a millisecond of its release.
fn busy_delay(count: i32) -> Duration {
    let shift = count.clamp(0, 5) as u32;
    Duration::from_micros(50u64 << shift).min(Duration::from_millis(1))
}

/// The sum of the pauses before retry `count`.
fn busy_waited(count: i32) -> Duration {
    let c = count.max(0) as u64;
    if c <= 5 {
        Duration::from_micros(50 * ((1 << c) - 1))
    } else {
        Duration::from_micros(1550 + (c - 5) * 1000)
    }
}

thread_local! {
    /// Set while this thread runs a statement that must not wait for another process.
    static NO_WAIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The wake-ups this thread's waits for the lock listen to, and the counter as read
    /// before its latest attempt to take the lock.
    static WAKE: std::cell::RefCell<Option<(Arc<Wake>, u32)>> = const { std::cell::RefCell::new(None) };
    /// When this thread's current wait for a lock began (its first retry).
    static WAIT_BEGAN: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Makes this thread's waits for another process's lock end as soon as a baton process
/// releases it (see [`Wake`]), not only at their next poll.
pub(super) fn wait_with(wake: Option<Arc<Wake>>) {
    WAKE.with_borrow_mut(|w| *w = wake.map(|wake| (wake, 0)));
}

/// Reads the release counter ahead of an attempt to take the write lock, so a release after
/// it ends a wait that follows the attempt at once.
pub(super) fn before_locking() {
    WAKE.with_borrow_mut(|w| {
        if let Some((wake, seen)) = w {
            *seen = wake.seen();
        }
    });
}

/// Runs `f` with every statement in it giving up at once (`SQLITE_BUSY`) when another
/// process holds the lock it needs, instead of polling for it.
pub(super) fn without_waiting<R>(f: impl FnOnce() -> R) -> R {
    /// Clears the flag however `f` ends.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            NO_WAIT.with(|w| w.set(false));
        }
    }
    NO_WAIT.with(|w| w.set(true));
    let _reset = Reset;
    f()
}

/// Retries for [`BUSY_GIVE_UP`], or not at all inside [`without_waiting`]. Given up once both
/// the pauses' sum and the time since the first retry reach it: a pause a release cut short
/// counts in full in the sum, so a waiter woken often does not give up early.
fn busy_wait(count: i32) -> bool {
    if NO_WAIT.with(|w| w.get()) {
        return false;
    }
    let now = Instant::now();
    let began = WAIT_BEGAN.with(|b| match b.get() {
        Some(t) if count > 0 => t,
        _ => {
            b.set(Some(now));
            now
        }
    });
    if busy_waited(count) >= BUSY_GIVE_UP && now.saturating_duration_since(began) >= BUSY_GIVE_UP {
        return false;
    }
    let woken = WAKE.with_borrow_mut(|w| match w {
        Some((wake, seen)) => {
            wake.wait(*seen, busy_delay(count));
            *seen = wake.seen();
            true
        }
        None => false,
    });
    if !woken {
        std::thread::sleep(busy_delay(count));
    }
    true
}

/// Page cache of the writer connection, in KiB. Every connection keeps its own copy of the
/// pages it touched on top of the kernel's page cache (SQLite's default is 2 MiB each), so
/// the bound is what keeps memory flat as the store and the number of readers grow; a page
/// outside it is one `pread` from the kernel's cache away. The writer's hot set is the right
/// edge of each table and index plus the rows of running workflows.
pub(super) const WRITER_CACHE_KIB: u32 = 1024;
/// Page cache of each reader connection, in KiB: a status read or an event page touches a
/// few dozen pages.
pub(super) const READER_CACHE_KIB: u32 = 256;
/// Page cache of the connection that only watches `PRAGMA data_version`.
pub(super) const POLL_CACHE_KIB: u32 = 16;

pub(super) fn open_conn(path: &Path, durability: Durability, cache_kib: u32) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    // SQLite's own busy handler backs off in steps of up to 100 ms, so a commit that finds
    // another process's write lock waits for the next step long after the lock is free;
    // polling finely keeps a cross-process wait close to the holder's transaction time.
    conn.busy_handler(Some(busy_wait))?;
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
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; \
         PRAGMA cache_size = -{cache_kib};"
    ))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_database_is_polled_finely_and_given_up_after_thirty_seconds() {
        assert_eq!(busy_delay(0), Duration::from_micros(50));
        assert!((0..100_000).all(|c| busy_delay(c) <= Duration::from_millis(1)));
        let mut sum = Duration::ZERO;
        for c in 0..40_000 {
            assert_eq!(busy_waited(c), sum, "the waits so far, before retry {c}");
            sum += busy_delay(c);
        }
        assert!(busy_waited(29_000) < BUSY_GIVE_UP && busy_waited(31_000) >= BUSY_GIVE_UP);
        assert!(busy_wait(0));
        // 40,000 retries within a moment (each woken early by a release): not yet given up.
        assert!(busy_wait(40_000));
        // 40,000 retries over more than 30 s: given up.
        let long_ago = Instant::now().checked_sub(Duration::from_secs(31)).unwrap();
        WAIT_BEGAN.with(|b| b.set(Some(long_ago)));
        assert!(!busy_wait(40_000), "given up after 30 s of waiting");
    }
    use crate::store::sqlite::Sqlite;
    use std::path::PathBuf;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_existing_world_readable_database_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("baton.db");
        let first = Sqlite::open(&db, Durability::Normal).unwrap();
        first.close();
        drop(first);
        for side in ["", "-wal", "-shm", "-wake"] {
            let p = PathBuf::from(format!("{}{side}", db.display()));
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let store = Sqlite::open(&db, Durability::Normal).unwrap();
        for side in ["", "-wal", "-shm", "-wake"] {
            let p = PathBuf::from(format!("{}{side}", db.display()));
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
            }
        }
        store.close();
    }
}
