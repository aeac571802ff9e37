//! Per-session push state: resource subscriptions (`resources/subscribe` on 2025-11-25,
//! `subscriptions/listen` on 2026-07-28), workflow events forwarded as log messages
//! (`notifications/message`) once the client opted in with `logging/setLevel`, and a
//! Claude Code channel message (`notifications/claude/channel`) when a workflow this session
//! started or resumed completes, fails or blocks.
//!
//! Invariant: the store stays the source of truth — the watcher only learns *that* a
//! workflow changed (from in-process commits at once, from other processes by polling) and
//! re-reads it; a lagged or missed wake-up costs latency, never an update.
#![allow(deprecated)] // logging and resources/subscribe are deprecated in 2026-07-28

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::{
    Peer, RoleServer,
    model::{
        CustomNotification, LoggingLevel, LoggingMessageNotificationParam,
        ResourceUpdatedNotificationParam, ServerNotification,
    },
    service::SubscriptionSink,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::{EventKind, StepStatus, ThreadId, WorkflowStatus, WorkflowView};
use crate::engine::Engine;
use crate::store::Change;

/// URI prefix of workflow resources.
pub const WORKFLOW_URI: &str = "baton://workflows/";

/// Interval of the safety-net poll (the change feed already reports other processes' commits).
const POLL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    peer: Option<Peer<RoleServer>>,
    /// Thread ids the client subscribed to with `resources/subscribe`.
    subscribed: BTreeSet<String>,
    sinks: Vec<SubscriptionSink>,
    log_level: Option<LoggingLevel>,
    /// Workflows this session started or resumed: what was forwarded and told of each.
    mine: BTreeMap<String, Mine>,
    /// Last `updated_at` seen per thread id, for the cross-process poll.
    seen: BTreeMap<String, String>,
    started: bool,
}

/// What a session forwarded and told of a workflow it started or resumed.
#[derive(Default)]
struct Mine {
    /// The last event forwarded as a log message; `None` for a workflow only resumed here.
    cursor: Option<i64>,
    /// The last stop pushed on the channel (`status@updated_at`), so each stop is told once.
    told: Option<String>,
}

/// Push state of one MCP session; cheap to clone.
#[derive(Clone)]
pub struct Session {
    engine: Engine,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

fn rank(l: LoggingLevel) -> u8 {
    match l {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// Log level of a workflow event.
pub fn event_level(kind: EventKind) -> LoggingLevel {
    match kind {
        EventKind::StepFailed | EventKind::WorkflowFailed => LoggingLevel::Error,
        EventKind::StepRetrying
        | EventKind::StepBlocked
        | EventKind::WorkflowBlocked
        | EventKind::WorkflowInterrupted => LoggingLevel::Warning,
        EventKind::StepProgress => LoggingLevel::Debug,
        _ => LoggingLevel::Info,
    }
}

/// Whether a message at `level` passes a client's chosen `min` level.
pub fn passes(level: LoggingLevel, min: LoggingLevel) -> bool {
    rank(level) >= rank(min)
}

impl Session {
    pub fn new(engine: Engine) -> Session {
        Session {
            engine,
            state: Arc::new(Mutex::new(State::default())),
            stop: CancellationToken::new(),
        }
    }

    /// Ends the watcher (the session is over).
    pub fn close(&self) {
        self.stop.cancel();
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    /// Remembers the peer and starts the watcher on first use.
    pub fn attach(&self, peer: &Peer<RoleServer>) {
        self.with(|s| {
            if s.peer.is_none() {
                s.peer = Some(peer.clone());
            }
        });
        self.ensure_watching();
    }

    /// Starts the watcher unless it runs already.
    pub fn ensure_watching(&self) {
        let start = self
            .with(|s| !std::mem::replace(&mut s.started, true))
            .unwrap_or(false);
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.watch().await });
        }
    }

    pub fn subscribe(&self, thread_id: &str) {
        self.with(|s| s.subscribed.insert(thread_id.to_owned()));
    }

    pub fn unsubscribe(&self, thread_id: &str) {
        self.with(|s| s.subscribed.remove(thread_id));
    }

    pub fn add_sink(&self, sink: SubscriptionSink) {
        self.with(|s| s.sinks.push(sink));
    }

    pub fn remove_sink(&self, id: &rmcp::model::RequestId) {
        self.with(|s| s.sinks.retain(|k| k.id() != id));
    }

    pub fn set_log_level(&self, level: LoggingLevel) {
        self.with(|s| s.log_level = Some(level));
    }

    /// Forwards this workflow's events from `cursor` on as log messages, and tells the
    /// channel when it stops.
    pub fn watch_workflow(&self, thread_id: &str, cursor: i64) {
        self.with(|s| {
            let mine = s.mine.entry(thread_id.to_owned()).or_default();
            mine.cursor.get_or_insert(cursor);
        });
    }

    /// Tells the channel when this resumed workflow stops again.
    pub fn watch_stop(&self, thread_id: &str) {
        self.with(|s| {
            s.mine.entry(thread_id.to_owned()).or_default();
        });
    }

    async fn watch(self) {
        let mut changes = self.engine.changes();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed: Vec<String> = tokio::select! {
                () = self.stop.cancelled() => return,
                r = changes.recv() => match r {
                    Some(Change::Workflow(id)) => vec![id.to_string()],
                    Some(Change::Unknown) => self.interesting(),
                    None => return,
                },
                _ = poll.tick() => self.interesting(),
            };
            for id in changed {
                self.push(&id).await;
            }
        }
    }

    /// Every thread id some subscription or log forward is interested in.
    fn interesting(&self) -> Vec<String> {
        self.with(|s| {
            let mut ids: BTreeSet<String> = s.subscribed.clone();
            ids.extend(s.mine.keys().cloned());
            for sink in &s.sinks {
                for uri in sink.accepted().resource_subscriptions.iter().flatten() {
                    if let Some(id) = uri.strip_prefix(WORKFLOW_URI) {
                        ids.insert(id.to_owned());
                    }
                }
            }
            ids.into_iter().collect()
        })
        .unwrap_or_default()
    }

    /// Sends what this session wants to know about a change of `id`.
    async fn push(&self, id: &str) {
        let status = self.tell_channel(id).await;
        let uri = format!("{WORKFLOW_URI}{id}");
        let Some((peer, subscribed, sinks, level, cursor)) = self.with(|s| {
            let sinks: Vec<SubscriptionSink> = s
                .sinks
                .iter()
                .filter(|k| {
                    k.accepted()
                        .resource_subscriptions
                        .iter()
                        .flatten()
                        .any(|u| *u == uri)
                })
                .cloned()
                .collect();
            (
                s.peer.clone(),
                s.subscribed.contains(id),
                sinks,
                s.log_level,
                s.mine.get(id).and_then(|m| m.cursor),
            )
        }) else {
            return;
        };
        let wants_resource = subscribed || !sinks.is_empty();
        if wants_resource {
            // Only notify when the workflow really changed since the last push.
            let Ok(view) = self.engine.status(&ThreadId::from(id), 0).await else {
                return;
            };
            let fresh = self
                .with(|s| s.seen.insert(id.to_owned(), view.updated_at.clone()))
                .flatten()
                .is_none_or(|old| old != view.updated_at);
            if fresh {
                if subscribed && let Some(peer) = &peer {
                    let _ = peer
                        .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri.clone()))
                        .await;
                }
                for sink in &sinks {
                    let _ = sink.notify_resource_updated(uri.clone()).await;
                }
            }
        }
        let mut drained = true;
        if let (Some(peer), Some(min), Some(cursor)) = (peer, level, cursor) {
            let Ok(page) = self
                .engine
                .events(&ThreadId::from(id), cursor, EVENTS_PER_PUSH)
                .await
            else {
                return;
            };
            let events = page.events;
            for e in &events {
                let level = event_level(e.kind);
                if passes(level, min) {
                    let data = json!({ "thread_id": id, "message": e.describe(), "event": e });
                    let _ = peer
                        .notify_logging_message(
                            LoggingMessageNotificationParam::new(level, data).with_logger("baton"),
                        )
                        .await;
                }
            }
            if let Some(last) = events.last() {
                let seq = last.seq;
                self.with(|s| {
                    if let Some(m) = s.mine.get_mut(id) {
                        m.cursor = Some(seq);
                    }
                });
            }
            drained = events.len() < EVENTS_PER_PUSH as usize;
        }
        self.with(|s| s.settle(id, status, drained));
    }
}

/// Events forwarded per push; a longer backlog continues on the next wake-up.
const EVENTS_PER_PUSH: i64 = 200;

impl State {
    /// Forgets a workflow this session started once it finished, its stop was told and its
    /// events forwarded: the session stops reading it on every change and every poll, so a
    /// long session costs what its running workflows cost, not everything it ever started.
    /// A blocked workflow stays (it waits for an answer), and a resume in this session
    /// watches it again ([`Session::watch_stop`]).
    fn settle(&mut self, id: &str, status: Option<WorkflowStatus>, drained: bool) {
        if drained && status.is_some_and(WorkflowStatus::is_finished) {
            self.mine.remove(id);
        }
    }
}

impl Session {
    /// Pushes a channel message when a workflow of this session reached a new stop. Returns
    /// the status it read, if it read one (the workflow is this session's).
    async fn tell_channel(&self, id: &str) -> Option<WorkflowStatus> {
        let Some((Some(peer), Some(last))) =
            self.with(|s| (s.peer.clone(), s.mine.get(id).map(|m| m.told.clone())))
        else {
            return None;
        };
        let Ok(view) = self.engine.status(&ThreadId::from(id), 400).await else {
            return None;
        };
        let status = view.status;
        if !matches!(
            status,
            WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Blocked
        ) {
            return Some(status);
        }
        let stamp = format!("{}@{}", view.status, view.updated_at);
        if last.as_deref() == Some(stamp.as_str()) {
            return Some(status);
        }
        self.with(|s| {
            if let Some(m) = s.mine.get_mut(id) {
                m.told = Some(stamp);
            }
        });
        let params = json!({
            "content": channel_text(&view),
            "meta": {
                "thread_id": id,
                "status": view.status.as_str(),
                "workflow": view.name.clone().unwrap_or_default(),
            },
        });
        let note = CustomNotification::new(CHANNEL_METHOD, Some(params));
        let _ = peer
            .send_notification(ServerNotification::CustomNotification(note))
            .await;
        Some(status)
    }
}

/// The notification Claude Code turns into a `<channel source="baton">` message for its model.
pub const CHANNEL_METHOD: &str = "notifications/claude/channel";

/// A short message saying how the workflow stopped and what to call next.
pub fn channel_text(view: &WorkflowView) -> String {
    let who = match &view.name {
        Some(n) => format!("baton workflow {n:?} ({})", view.thread_id),
        None => format!("baton workflow {}", view.thread_id),
    };
    let id = &view.thread_id;
    let steps = format!("{}/{} steps done", view.progress.done, view.progress.total);
    let stopped = |status: StepStatus| {
        view.steps
            .iter()
            .find(|s| s.status == status)
            .map(|s| (s.id.clone(), s.error.clone().unwrap_or_default()))
    };
    match view.status {
        WorkflowStatus::Completed => {
            let out = view
                .steps
                .iter()
                .rev()
                .find_map(|s| s.output.as_deref().filter(|o| !o.trim().is_empty()))
                .map(|o| format!(" Final output: «{}».", crate::api::tail(o.trim(), 300)))
                .unwrap_or_default();
            format!(
                "{who} completed ({steps}).{out} Read every step's output with invoke_status {{\"thread_id\": \"{id}\"}}."
            )
        }
        WorkflowStatus::Failed => {
            let (step, error) = stopped(StepStatus::Failed)
                .unwrap_or_else(|| ("?".into(), view.error.clone().unwrap_or_default()));
            format!(
                "{who} failed at step {step:?} ({steps}): {}. Fix the cause, then call invoke_resume {{\"thread_id\": \"{id}\"}}; completed steps are not re-run.",
                crate::api::tail(&error, 300)
            )
        }
        _ => {
            let (step, error) = stopped(StepStatus::Blocked)
                .unwrap_or_else(|| ("?".into(), view.error.clone().unwrap_or_default()));
            format!(
                "{who} is blocked at step {step:?} ({steps}): {}. Check invoke_status, then continue with invoke_resume {{\"thread_id\": \"{id}\"}} (e.g. with an agent permission override).",
                crate::api::tail(&error, 300)
            )
        }
    }
}

impl Session {
    /// Whether the client started with `initialize` (2025-11-25), so notifications outside a
    /// `subscriptions/listen` stream reach it.
    fn legacy(peer: &Peer<RoleServer>) -> bool {
        peer.peer_info().is_some()
    }

    /// Tells the client the prompt list changed: on a 2025-11-25 session directly, on a
    /// 2026-07-28 session through every listen stream that asked for it.
    pub async fn prompts_changed(&self, peer: &Peer<RoleServer>) {
        if Session::legacy(peer) {
            let _ = peer.notify_prompt_list_changed().await;
        }
        let sinks = self.with(|s| s.sinks.clone()).unwrap_or_default();
        for sink in sinks {
            if sink.accepted().prompts_list_changed == Some(true) {
                let _ = sink.notify_prompt_list_changed().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watching(id: &str) -> State {
        let mut s = State::default();
        s.mine.insert(
            id.to_owned(),
            Mine {
                cursor: Some(0),
                told: None,
            },
        );
        s
    }

    #[test]
    fn a_finished_workflow_leaves_its_sessions_watch_once_told_and_forwarded() {
        for status in [
            WorkflowStatus::Completed,
            WorkflowStatus::Failed,
            WorkflowStatus::Cancelled,
        ] {
            let mut s = watching("w");
            s.settle("w", Some(status), true);
            assert!(s.mine.is_empty(), "{status}");
        }
        // Still running, blocked on a human, events left to forward, or not read at all:
        // the session keeps watching.
        for (status, drained) in [
            (Some(WorkflowStatus::Running), true),
            (Some(WorkflowStatus::Blocked), true),
            (Some(WorkflowStatus::Completed), false),
            (None, true),
        ] {
            let mut s = watching("w");
            s.settle("w", status, drained);
            assert!(s.mine.contains_key("w"), "{status:?} drained={drained}");
        }
    }
}
