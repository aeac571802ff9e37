//! Schema migrations, tracked in SQLite's `user_version`. A migration is never edited once
//! released; changes are new migrations appended to the list.

use rusqlite::{Connection, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

const V1: &str = r#"
-- Processes that may hold leases. Each records its own lease length, so processes
-- configured with different leases judge each other's heartbeats by the owner's lease.
CREATE TABLE owners (
    id            TEXT PRIMARY KEY,
    pid           INTEGER NOT NULL,
    host          TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    lease_ms      INTEGER NOT NULL DEFAULT 15000
) WITHOUT ROWID;

-- `wid` keys the rows of the other tables (8 bytes instead of the 36-character thread id);
-- `id` is the thread id clients use.
CREATE TABLE workflows (
    wid              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    name             TEXT,
    status           TEXT NOT NULL,
    step_count       INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    error            TEXT,
    owner            TEXT,
    lease_expires_at INTEGER,
    epoch            INTEGER NOT NULL DEFAULT 0,
    next_seq         INTEGER NOT NULL DEFAULT 1,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    last_activity_at INTEGER,
    total_cost_usd   REAL NOT NULL DEFAULT 0
);
-- Hot columns only: every step boundary rewrites this row, so the definition (written once)
-- lives in its own table, and no index covers a column that changes per event.
CREATE INDEX workflows_by_status ON workflows(status, created_at);
CREATE INDEX workflows_by_created ON workflows(created_at);
CREATE INDEX workflows_by_name ON workflows(name, created_at);
-- Lease renewal, lost-lease checks and cancel polling look workflows up by owner; only
-- running workflows have one, so the partial index stays small.
CREATE INDEX workflows_by_owner ON workflows(owner) WHERE owner IS NOT NULL;

-- The compiled definition of each workflow (JSON), written once at submission.
CREATE TABLE definitions (
    wid  INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE TABLE steps (
    wid              INTEGER NOT NULL,
    step_id          TEXT NOT NULL,
    idx              INTEGER NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    failures         INTEGER NOT NULL DEFAULT 0,
    crashes          INTEGER NOT NULL DEFAULT 0,
    session_id       TEXT,
    started_at       INTEGER,
    finished_at      INTEGER,
    output           TEXT,
    error            TEXT,
    last_activity_at INTEGER,
    guidance         TEXT,
    agent_overrides  TEXT,
    fresh_session    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (wid, step_id)
) WITHOUT ROWID;

CREATE TABLE attempts (
    wid          INTEGER NOT NULL,
    step_id      TEXT NOT NULL,
    number       INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    outcome      TEXT NOT NULL,
    exit_code    INTEGER,
    error        TEXT,
    stderr       TEXT,
    session_id   TEXT,
    cost_usd     REAL,
    num_turns    INTEGER,
    owner        TEXT,
    PRIMARY KEY (wid, step_id, number)
) WITHOUT ROWID;

CREATE TABLE events (
    wid         INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    type        INTEGER NOT NULL, -- EventKind::code
    step_id     TEXT,
    attempt     INTEGER,
    at          INTEGER NOT NULL,
    data        TEXT,
    PRIMARY KEY (wid, seq)
) WITHOUT ROWID;
"#;

/// A global cursor over every workflow's events (`gseq`), for the all-workflows event stream
/// of the HTTP API: it increases strictly in commit order across workflows and processes,
/// because SQLite serialises writers and each insert takes the next value inside its
/// transaction. Existing events are numbered in time order.
const V2: &str = r#"
ALTER TABLE events ADD COLUMN gseq INTEGER;
UPDATE events SET gseq = x.n
  FROM (SELECT wid, seq, row_number() OVER (ORDER BY at, wid, seq) AS n FROM events) AS x
  WHERE events.wid = x.wid AND events.seq = x.seq;
CREATE UNIQUE INDEX events_by_gseq ON events(gseq);
"#;

/// `for_each` steps store their items once, on the step's own row.
const V3: &str = r#"
ALTER TABLE steps ADD COLUMN items TEXT;
"#;

/// Human steps keep their open question and a recorded answer on their row; every step
/// keeps the exit code of its latest attempt (read by conditions); a workflow keeps the cost
/// budget a resume raised.
const V4: &str = r#"
ALTER TABLE steps ADD COLUMN waiting TEXT;
ALTER TABLE steps ADD COLUMN answer TEXT;
ALTER TABLE steps ADD COLUMN exit_code INTEGER;
ALTER TABLE workflows ADD COLUMN max_cost_usd REAL;
"#;

/// The number of workflows per status, kept by triggers in the transaction that inserts,
/// re-statuses or deletes a workflow, so every process writing the file keeps it exact and
/// `workflow_monitor` reads a few rows instead of counting a million index entries.
const V5: &str = r#"
CREATE TABLE workflow_counts (
    status TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO workflow_counts (status, n) SELECT status, count(*) FROM workflows GROUP BY status;
CREATE TRIGGER workflow_counts_insert AFTER INSERT ON workflows BEGIN
    INSERT OR IGNORE INTO workflow_counts (status, n) VALUES (new.status, 0);
    UPDATE workflow_counts SET n = n + 1 WHERE status = new.status;
END;
CREATE TRIGGER workflow_counts_update AFTER UPDATE OF status ON workflows
WHEN old.status <> new.status BEGIN
    UPDATE workflow_counts SET n = n - 1 WHERE status = old.status;
    INSERT OR IGNORE INTO workflow_counts (status, n) VALUES (new.status, 0);
    UPDATE workflow_counts SET n = n + 1 WHERE status = new.status;
END;
CREATE TRIGGER workflow_counts_delete AFTER DELETE ON workflows BEGIN
    UPDATE workflow_counts SET n = n - 1 WHERE status = old.status;
END;
"#;

#[cfg(test)]
fn migrations_up_to(n: usize) -> Vec<M<'static>> {
    [V1, V2, V3, V4, V5]
        .into_iter()
        .take(n)
        .map(M::up)
        .collect()
}

pub(super) fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(V1), M::up(V2), M::up(V3), M::up(V4), M::up(V5)])
}

/// Brings the schema up to date. Several servers may open a new database at the same moment:
/// the migration library reads the version outside its transaction, so all of them may try
/// the same migration; the losers fail on "table already exists" (or a stale snapshot) once
/// the winner has committed. A failure is therefore only an error if the schema is still
/// behind afterwards.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), rusqlite_migration::Error> {
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    let migrations = migrations();
    let mut result = migrations.to_latest(conn);
    for _ in 0..3 {
        let Err(e) = &result else { break };
        if migrations.pending_migrations(conn) == Ok(0) {
            tracing::debug!(error = %e, "another process migrated the database first");
            result = Ok(());
            break;
        }
        result = migrations.to_latest(conn);
    }
    conn.set_transaction_behavior(TransactionBehavior::Deferred);
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        assert!(super::migrations().validate().is_ok());
    }

    fn counted(c: &rusqlite::Connection, sql: &str) -> Vec<(String, i64)> {
        let mut st = c.prepare(sql).unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// The trigger-kept counts equal a full count after inserts, status changes (including
    /// an update that leaves the status alone), deletes, and for rows that existed before
    /// the migration.
    #[test]
    fn workflow_counts_kept_by_triggers_equal_a_full_count() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        let before_v5 = super::Migrations::new(super::migrations_up_to(4));
        before_v5.to_latest(&mut c).unwrap();
        let insert = |c: &rusqlite::Connection, i: i64, status: &str| {
            c.execute(
                "INSERT INTO workflows (wid, id, status, step_count, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, 1, 0, 0)",
                rusqlite::params![i, format!("w{i}"), status],
            )
            .unwrap();
        };
        insert(&c, 1, "completed");
        insert(&c, 2, "running");
        super::migrate(&mut c).unwrap();
        for i in 3..40 {
            insert(&c, i, if i % 3 == 0 { "running" } else { "pending" });
        }
        c.execute_batch(
            "UPDATE workflows SET status = 'completed' WHERE wid % 2 = 0;
             UPDATE workflows SET status = status, updated_at = 1;
             UPDATE workflows SET status = 'failed' WHERE wid % 5 = 0;
             DELETE FROM workflows WHERE wid % 7 = 0;",
        )
        .unwrap();
        let full = counted(
            &c,
            "SELECT status, count(*) FROM workflows GROUP BY status ORDER BY status",
        );
        let kept = counted(
            &c,
            "SELECT status, n FROM workflow_counts WHERE n > 0 ORDER BY status",
        );
        assert_eq!(kept, full);
        assert!(full.len() >= 3, "{full:?}");
    }
}
