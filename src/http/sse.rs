//! Server-sent event streams: `GET /api/workflows/{id}/events` (one workflow; `id:` is the
//! event's `seq`) and `GET /api/events` (all workflows; `id:` is the store's global cursor).
//! A reconnect with `Last-Event-ID` (or a first connect with `?cursor=`) replays exactly the
//! events after it, then follows live — commits of other processes included, since the
//! engine's followers read the store.
//!
//! Invariant: memory per client is bounded. A producer task reads the store and feeds a
//! bounded queue that the response body drains; when the client leaves the queue full for
//! longer than the send timeout, the connection is dropped and the client reconnects with
//! its cursor (nothing is lost, because the cursor is the store's).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::api::ApiError;
use super::{AppState, Disconnect, StreamStats};
use crate::api::{Event, ThreadId};
use crate::engine::EngineError;
use crate::store::Change;

/// Events read from the store per page.
const PAGE: i64 = 64;

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    cursor: Option<i64>,
}

/// `Last-Event-ID` (a reconnect) wins over `?cursor=` (a first connect).
fn start_cursor(headers: &HeaderMap, q: &StreamQuery) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(q.cursor)
}

/// The client's end of the queue, and what to do when it stops reading.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    timeout: Duration,
    disconnect: Disconnect,
    stats: std::sync::Arc<StreamStats>,
}

impl Sink {
    /// Queues a frame; false when the client is gone or was dropped for not reading.
    async fn send(&self, frame: String) -> bool {
        match tokio::time::timeout(self.timeout, self.tx.send(Bytes::from(frame))).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::info!("dropping an event stream client that stopped reading");
                self.disconnect.0.cancel();
                false
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stats.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

fn frame(id: i64, data: &impl serde::Serialize) -> String {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    format!("id: {id}\ndata: {json}\n\n")
}

const KEEPALIVE: &str = ": keepalive\n\n";

/// The streaming response and the sink its producer writes to.
fn open(st: &AppState, disconnect: Disconnect) -> (Sink, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(st.cfg.queue.max(1));
    st.streams.clients.fetch_add(1, Ordering::Relaxed);
    let sink = Sink {
        tx,
        timeout: st.cfg.send_timeout,
        disconnect,
        stats: st.streams.clone(),
    };
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let resp = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response();
    (sink, resp)
}

pub(crate) async fn workflow_events(
    State(st): State<AppState>,
    Extension(disconnect): Extension<Disconnect>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = ThreadId::from(id);
    let cursor = start_cursor(&headers, &q).unwrap_or(0);
    // A 404 now rather than an empty stream for a workflow that does not exist.
    st.engine.events(&id, cursor, 1).await?;
    let (sink, resp) = open(&st, disconnect);
    tokio::spawn(follow_workflow(st, sink, id, cursor));
    Ok(resp)
}

async fn follow_workflow(st: AppState, sink: Sink, id: ThreadId, cursor: i64) {
    let keepalive = st.cfg.keepalive;
    let mut follow = st.engine.follow(&id, cursor);
    let mut feed = st.engine.changes();
    if !sink.send("retry: 1000\n\n".into()).await {
        return;
    }
    loop {
        let until = Instant::now() + keepalive;
        let page = tokio::select! {
            r = follow.next(PAGE, until) => r,
            () = sink.tx.closed() => return,
            () = st.shutdown.cancelled() => return,
        };
        let page = match page {
            Ok(p) => p,
            Err(EngineError::NotFound { .. }) => {
                let _ = sink.send("event: gone\ndata: {}\n\n".into()).await;
                return;
            }
            Err(e) => {
                tracing::warn!(thread_id = %id, error = %e, "event stream stopped");
                return;
            }
        };
        let idle = page.events.is_empty();
        for e in &page.events {
            if !sink.send(frame(e.seq, e)).await {
                return;
            }
        }
        if page.done() {
            // Stopped: nothing more until a resume; wait for a notice instead of re-reading.
            let noticed = tokio::select! {
                n = wait_for(&mut feed, &id, until) => n,
                () = sink.tx.closed() => return,
                () = st.shutdown.cancelled() => return,
            };
            if !noticed && !sink.send(KEEPALIVE.into()).await {
                return;
            }
        } else if idle && !sink.send(KEEPALIVE.into()).await {
            return;
        }
    }
}

/// Waits for a notice that may concern `id`; false if `until` passed first.
async fn wait_for(feed: &mut crate::store::ChangeFeed, id: &ThreadId, until: Instant) -> bool {
    loop {
        match tokio::time::timeout_at(until, feed.recv()).await {
            Ok(Some(Change::Workflow(w))) if &w != id => continue,
            Ok(Some(_)) => return true,
            Ok(None) => {
                tokio::time::sleep_until(until).await;
                return false;
            }
            Err(_) => return false,
        }
    }
}

/// An event of `/api/events`: the workflow's event with its thread id.
#[derive(serde::Serialize)]
struct Tagged<'a> {
    thread_id: &'a ThreadId,
    #[serde(flatten)]
    event: &'a Event,
}

pub(crate) async fn all_events(
    State(st): State<AppState>,
    Extension(disconnect): Extension<Disconnect>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let follow = st.engine.follow_all(start_cursor(&headers, &q)).await?;
    let (sink, resp) = open(&st, disconnect);
    tokio::spawn(async move {
        let mut follow = follow;
        if !sink.send("retry: 1000\n\n".into()).await {
            return;
        }
        loop {
            let until = Instant::now() + st.cfg.keepalive;
            let events = tokio::select! {
                r = follow.next(PAGE, until) => r,
                () = sink.tx.closed() => return,
                () = st.shutdown.cancelled() => return,
            };
            let events = match events {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream stopped");
                    return;
                }
            };
            if events.is_empty() && !sink.send(KEEPALIVE.into()).await {
                return;
            }
            for (g, thread_id, event) in &events {
                let tagged = Tagged { thread_id, event };
                if !sink.send(frame(*g, &tagged)).await {
                    return;
                }
            }
        }
    });
    Ok(resp)
}

/// Smallest interval between two messages of a step's live tail.
const TAIL_EVERY: Duration = Duration::from_millis(250);

/// `GET /api/workflows/{id}/steps/{step}/tail`: the live tail of a command step running in
/// this process — `event: output` with `{stdout, stderr}` (the last 32 KiB of each) at most
/// every 250 ms while it prints, then `event: end` when the attempt ends (or at once when
/// the step is not running here). Each message replaces the previous one.
pub(crate) async fn step_tail(
    State(st): State<AppState>,
    Extension(disconnect): Extension<Disconnect>,
    Path((id, step)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = ThreadId::from(id);
    st.engine.events(&id, 0, 1).await?;
    // Only a weak handle: the tail (and with it the change feed) goes when the attempt ends.
    let live = st.engine.live_output(&id, &step);
    let weak = live.as_ref().map(std::sync::Arc::downgrade);
    let changes = live.as_ref().map(|l| l.changes());
    drop(live);
    let (sink, resp) = open(&st, disconnect);
    tokio::spawn(async move {
        let (Some(weak), Some(mut changes)) = (weak, changes) else {
            let _ = sink.send("event: end\ndata: {}\n\n".into()).await;
            return;
        };
        loop {
            let Some(live) = weak.upgrade() else { break };
            let msg = serde_json::json!({
                "stdout": live.text(crate::engine::LiveStream::Stdout),
                "stderr": live.text(crate::engine::LiveStream::Stderr),
            });
            drop(live);
            if !sink.send(format!("event: output\ndata: {msg}\n\n")).await {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(TAIL_EVERY) => {}
                () = sink.tx.closed() => return,
                () = st.shutdown.cancelled() => return,
            }
            let ended = loop {
                tokio::select! {
                    r = changes.changed() => break r.is_err(),
                    () = tokio::time::sleep(st.cfg.keepalive) => {
                        if !sink.send(KEEPALIVE.into()).await {
                            return;
                        }
                    }
                    () = sink.tx.closed() => return,
                    () = st.shutdown.cancelled() => return,
                }
            };
            if ended {
                break;
            }
        }
        let _ = sink.send("event: end\ndata: {}\n\n".into()).await;
    });
    Ok(resp)
}
