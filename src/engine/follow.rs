//! The one event stream: every front-end that follows a workflow (`invoke_stream`, resource
//! and log notifications, `baton run`/`watch`, server-sent events) reads it through
//! [`Follow`], which hides how changes are noticed — commits of this process at once, other
//! processes' commits through the store's change feed, and a slow poll as a last resort.
//!
//! Invariant: a follower sees every event of its workflow exactly once, in `seq` order, and
//! is [`Page::done`] only after it has read the event that stopped the workflow. The store is
//! re-read on every notice, so a missed notice costs latency, never an event.

use std::time::Duration;

use tokio::time::Instant;

use super::{Engine, EngineError, Result};
use crate::api::{Event, ThreadId, WorkflowStatus};
use crate::store::{Change, ChangeFeed, Store};

/// Longest wait between two reads while nothing is noticed (a safety net only).
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// A page of a workflow's events.
#[derive(Debug, Clone)]
pub struct Page {
    /// The workflow's status, read before the events.
    pub status: WorkflowStatus,
    /// Its step count.
    pub total: i64,
    pub events: Vec<Event>,
    /// Fewer events than asked for: nothing more was stored when they were read.
    pub caught_up: bool,
}

impl Page {
    /// The workflow has stopped (completed, failed, blocked or cancelled) and every event up
    /// to its stop has been read: following it further waits for a resume.
    pub fn done(&self) -> bool {
        self.status.is_terminal() && self.caught_up
    }
}

/// A follower of one workflow's events, from a cursor on.
pub struct Follow {
    store: Store,
    id: ThreadId,
    cursor: i64,
    feed: ChangeFeed,
}

impl Engine {
    /// Follows `id`'s events after `cursor` (0: from the start).
    pub fn follow(&self, id: &ThreadId, cursor: i64) -> Follow {
        Follow {
            // Subscribed before the first read, so no commit falls between the two.
            feed: self.sh.store.changes(),
            store: self.sh.store.clone(),
            id: id.clone(),
            cursor: cursor.max(0),
        }
    }

    /// Notices of changes to any workflow, this process's and other processes'.
    pub fn changes(&self) -> ChangeFeed {
        self.sh.store.changes()
    }

    /// Events after `cursor` (at most `limit`), read once, without waiting.
    pub async fn events(&self, id: &ThreadId, cursor: i64, limit: i64) -> Result<Page> {
        read(&self.sh.store, id, cursor, limit).await
    }

    /// Steps completed or skipped by the events up to `cursor` (an estimate when a resume
    /// reset steps in between), for progress reporting of a replay that starts at `cursor`.
    pub async fn done_at(&self, id: &ThreadId, cursor: i64) -> Result<i64> {
        Ok(self.sh.store.done_at(id.clone(), cursor).await?)
    }
}

async fn read(store: &Store, id: &ThreadId, cursor: i64, limit: i64) -> Result<Page> {
    let limit = limit.max(1);
    let page = store
        .events(id.clone(), cursor, limit)
        .await?
        .ok_or_else(|| EngineError::NotFound {
            thread_id: id.clone(),
        })?;
    Ok(Page {
        status: page.status,
        total: page.step_count,
        caught_up: (page.events.len() as i64) < limit,
        events: page.events,
    })
}

impl Follow {
    pub fn thread_id(&self) -> &ThreadId {
        &self.id
    }

    /// The `seq` of the last event returned.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// The next events (at most `limit`): waits until there is at least one, the workflow
    /// has stopped, or `until` passes — whichever comes first.
    pub async fn next(&mut self, limit: i64, until: Instant) -> Result<Page> {
        loop {
            let page = read(&self.store, &self.id, self.cursor, limit).await?;
            if let Some(last) = page.events.last() {
                self.cursor = last.seq;
            }
            if !page.events.is_empty() || page.status.is_terminal() || Instant::now() >= until {
                return Ok(page);
            }
            self.wait(until).await;
        }
    }

    /// Waits for a notice that may concern this workflow, or `until`, or the fallback poll.
    async fn wait(&mut self, until: Instant) {
        let poll = until.min(Instant::now() + FALLBACK_POLL);
        loop {
            match tokio::time::timeout_at(poll, self.feed.recv()).await {
                Ok(Some(Change::Workflow(id))) if id != self.id => continue,
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => {
                    tokio::time::sleep_until(poll).await;
                    return;
                }
            }
        }
    }
}

/// A follower of every workflow's events, by the store's global cursor (the HTTP API's
/// `/api/events`). Same rule as [`Follow`]: every event once, in commit order; a missed
/// notice costs latency, never an event.
pub struct GlobalFollow {
    store: Store,
    cursor: i64,
    feed: ChangeFeed,
}

impl Engine {
    /// Follows all workflows' events after the global cursor `cursor`; `None`: from now on.
    pub async fn follow_all(&self, cursor: Option<i64>) -> Result<GlobalFollow> {
        // Subscribed before the cursor is read, so no commit falls between the two.
        let feed = self.sh.store.changes();
        let cursor = match cursor {
            Some(c) => c.max(0),
            None => self.sh.store.last_global_cursor().await?,
        };
        Ok(GlobalFollow {
            store: self.sh.store.clone(),
            cursor,
            feed,
        })
    }
}

impl GlobalFollow {
    /// The global cursor of the last event returned.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// The next events (at most `limit`), each with its global cursor and thread id: waits
    /// until there is at least one or `until` passes.
    pub async fn next(
        &mut self,
        limit: i64,
        until: Instant,
    ) -> Result<Vec<(i64, ThreadId, Event)>> {
        loop {
            let events = self.store.events_global(self.cursor, limit.max(1)).await?;
            if let Some((g, _, _)) = events.last() {
                self.cursor = *g;
            }
            if !events.is_empty() || Instant::now() >= until {
                return Ok(events);
            }
            let poll = until.min(Instant::now() + FALLBACK_POLL);
            match tokio::time::timeout_at(poll, self.feed.recv()).await {
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => tokio::time::sleep_until(poll).await,
            }
        }
    }
}
