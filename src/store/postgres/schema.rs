//! Schema migrations of the PostgreSQL backend, tracked in `baton_schema(version)`. A
//! migration is never edited once released; changes are new migrations appended to the list.
//!
//! Invariant: the same tables and meanings as the SQLite schema (timestamps are milliseconds
//! since the Unix epoch in `bigint`), so a change set means the same on both backends.
//! Migrations run under a transaction-level advisory lock: several processes opening a new
//! database at once apply each migration exactly once.

use tokio_postgres::Client;

use crate::store::{Result, StoreError};

const V1: &str = r#"
CREATE TABLE owners (
    id            text PRIMARY KEY,
    pid           bigint NOT NULL,
    host          text NOT NULL,
    started_at    bigint NOT NULL,
    heartbeat_at  bigint NOT NULL,
    lease_ms      bigint NOT NULL DEFAULT 15000
);

CREATE TABLE workflows (
    wid              bigserial PRIMARY KEY,
    id               text NOT NULL UNIQUE,
    name             text,
    status           text NOT NULL,
    step_count       bigint NOT NULL,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    started_at       bigint,
    finished_at      bigint,
    error            text,
    owner            text,
    lease_expires_at bigint,
    epoch            bigint NOT NULL DEFAULT 0,
    next_seq         bigint NOT NULL DEFAULT 1,
    cancel_requested boolean NOT NULL DEFAULT false,
    last_activity_at bigint,
    total_cost_usd   double precision NOT NULL DEFAULT 0
);
CREATE INDEX workflows_by_status ON workflows(status, created_at);
CREATE INDEX workflows_by_created ON workflows(created_at);
CREATE INDEX workflows_by_name ON workflows(name, created_at);
CREATE INDEX workflows_by_owner ON workflows(owner) WHERE owner IS NOT NULL;

CREATE TABLE definitions (
    wid  bigint PRIMARY KEY,
    body text NOT NULL
);

CREATE TABLE steps (
    wid              bigint NOT NULL,
    step_id          text NOT NULL,
    idx              bigint NOT NULL,
    status           text NOT NULL,
    attempts         bigint NOT NULL DEFAULT 0,
    failures         bigint NOT NULL DEFAULT 0,
    crashes          bigint NOT NULL DEFAULT 0,
    session_id       text,
    started_at       bigint,
    finished_at      bigint,
    output           text,
    error            text,
    last_activity_at bigint,
    guidance         text,
    agent_overrides  text,
    fresh_session    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (wid, step_id)
);

CREATE TABLE attempts (
    wid          bigint NOT NULL,
    step_id      text NOT NULL,
    number       bigint NOT NULL,
    started_at   bigint NOT NULL,
    finished_at  bigint,
    outcome      text NOT NULL,
    exit_code    bigint,
    error        text,
    stderr       text,
    session_id   text,
    cost_usd     double precision,
    num_turns    bigint,
    owner        text,
    PRIMARY KEY (wid, step_id, number)
);

-- `gseq` is the global cursor of the all-workflows event stream. It must increase in commit
-- order across processes, which a sequence does not give (a later value may commit first):
-- every transaction that appends events takes the next values from `event_cursor`, whose row
-- lock it holds until it commits. It takes them last, just before committing, so the lock
-- is held only for the commit itself.
CREATE TABLE events (
    wid         bigint NOT NULL,
    seq         bigint NOT NULL,
    type        bigint NOT NULL,
    step_id     text,
    attempt     bigint,
    at          bigint NOT NULL,
    data        text,
    gseq        bigint NOT NULL,
    PRIMARY KEY (wid, seq)
);
CREATE UNIQUE INDEX events_by_gseq ON events(gseq);

CREATE TABLE event_cursor (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    value bigint NOT NULL
);
INSERT INTO event_cursor (one, value) VALUES (true, 0);
"#;

/// `for_each` items on the step's row; a human step's open question and recorded answer; the
/// exit code of a step's latest attempt; a cost budget raised by a resume.
const V2: &str = r#"
ALTER TABLE steps ADD COLUMN items text;
ALTER TABLE steps ADD COLUMN waiting text;
ALTER TABLE steps ADD COLUMN answer text;
ALTER TABLE steps ADD COLUMN exit_code bigint;
ALTER TABLE workflows ADD COLUMN max_cost_usd double precision;
"#;

/// The migrations in order; version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &[V1, V2];

/// An arbitrary constant naming baton's migration lock among advisory locks.
const MIGRATION_LOCK: i64 = 0x6261_746f_6e5f_6d31;

/// Brings the schema up to date, refusing a database that holds other tables but no baton
/// schema (another program's data) and one migrated by a newer baton.
pub(super) async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let has_schema: bool = tx
        .query_one("SELECT to_regclass('baton_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    let version: i64 = if has_schema {
        tx.query_one("SELECT coalesce(max(version), 0) FROM baton_schema", &[])
            .await?
            .get(0)
    } else {
        let tables: Vec<String> = tx
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
                 ORDER BY tablename",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !tables.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "the schema holds tables of another program ({}); baton leaves it untouched, \
                 pass another database",
                tables.join(", ")
            )));
        }
        tx.batch_execute("CREATE TABLE baton_schema (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            .await?;
        0
    };
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "the database was migrated by a newer baton (schema version {version}, this one knows {known})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO baton_schema (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
