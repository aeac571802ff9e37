//! What a driver does while its attempts run: their signals (sessions, tool use, progress),
//! stall checks and the batched progress flush.

use std::time::Duration;

use tokio::time::Instant;

use super::super::outcome::{Signal, SignalKind};
use super::{ACTIVITY_DELAY, ACTIVITY_EVERY, Driver, Live, PROGRESS_EVERY};
use crate::api::{EventData, EventKind, NewEvent, now_ms};
use crate::store::Changes;
use crate::workflow::OnStall;

impl Driver {
    /// When the next running `on_stall: restart` attempt would count as stalled.
    pub(super) fn next_stall_check(&self) -> Option<Instant> {
        self.live
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.stall_fired)
            .filter_map(|(idx, l)| {
                let step = self.sched.step_def(idx)?;
                let last = l.last_output?;
                (step.on_stall == OnStall::Restart)
                    .then(|| last.checked_add(Duration::from_secs(step.stall_timeout_s)))
                    .flatten()
            })
            .min()
    }

    /// Stops every `on_stall: restart` attempt that has been silent past its threshold.
    pub(super) fn restart_stalled(&mut self) {
        let now = Instant::now();
        for idx in 0..self.live.len() {
            let Some(step) = self.sched.step_def(idx) else {
                continue;
            };
            let limit = Duration::from_secs(step.stall_timeout_s);
            let l = &mut self.live[idx];
            let silent = l
                .last_output
                .is_some_and(|last| now.saturating_duration_since(last) >= limit);
            if step.on_stall == OnStall::Restart && silent && !l.stall_fired {
                l.stall_fired = true;
                if let Some(stop) = &l.stop {
                    tracing::warn!(thread_id = %self.fence.id, step = %step.id, "attempt stalled; restarting it");
                    stop.cancel();
                    self.sched.mark_stalled(idx);
                }
            }
        }
    }

    pub(super) async fn on_signals(&mut self) -> bool {
        for sig in self.signals.drain() {
            if !self.on_signal(sig).await {
                return false;
            }
        }
        true
    }

    async fn on_signal(&mut self, sig: Signal) -> bool {
        let (idx, attempt) = (sig.step_idx, sig.attempt);
        if !self.sched.is_current(idx, attempt) {
            return true;
        }
        match sig.kind {
            SignalKind::Session(session) => {
                let step_id = self.sched.steps()[idx].step_id.clone();
                self.sched.set_session(idx, attempt, &session);
                let res = self
                    .sh
                    .store
                    .record_session(self.fence.clone(), step_id, attempt, session)
                    .await;
                self.check_write(res)
            }
            SignalKind::Activity => {
                // Kept in memory; written by the step's next commit (its end, usually) or,
                // while it runs on, by `save_activity`: an output line costs no fsync.
                let now = Instant::now();
                let Some(l) = self.live.get_mut(idx) else {
                    return true;
                };
                l.last_output = Some(now);
                l.activity_unsaved.get_or_insert(now);
                self.sched.set_activity(idx, now_ms());
                true
            }
            SignalKind::Progress(message) => {
                // Throttled, keeping the latest: a message arriving too soon waits for the end
                // of the interval and replaces any message already waiting.
                let Some(l) = self.live.get_mut(idx) else {
                    return true;
                };
                l.held_progress = Some(Box::new((attempt, message)));
                if l.last_progress.is_some_and(|last| {
                    Instant::now().saturating_duration_since(last) < PROGRESS_EVERY
                }) {
                    return true;
                }
                self.flush_progress().await
            }
        }
    }

    /// When the earliest unwritten activity of a running step is due to be written.
    pub(super) fn next_activity_save(&self) -> Option<Instant> {
        self.live.iter().filter_map(activity_due).min()
    }

    /// Writes the activity of the running steps whose write is due.
    pub(super) async fn save_activity(&mut self) -> bool {
        let now = Instant::now();
        for idx in 0..self.live.len() {
            if activity_due(&self.live[idx]).is_none_or(|t| t > now) {
                continue;
            }
            let Some(row) = self.sched.steps().get(idx) else {
                continue;
            };
            let (step_id, at) = (
                row.step_id.clone(),
                row.last_activity_at.unwrap_or_else(now_ms),
            );
            self.live[idx].activity_unsaved = None;
            self.live[idx].activity_saved = Some(now);
            let res = self
                .sh
                .store
                .record_activity(self.fence.clone(), step_id, at)
                .await;
            if !self.check_write(res) {
                return false;
            }
        }
        true
    }

    /// When the earliest held progress message may be written.
    pub(super) fn next_progress_flush(&self) -> Option<Instant> {
        self.live
            .iter()
            .filter(|l| l.held_progress.is_some())
            .map(|l| {
                l.last_progress
                    .map_or_else(Instant::now, |t| t + PROGRESS_EVERY)
            })
            .min()
    }

    /// Writes the held progress messages whose throttle interval has passed.
    pub(super) async fn flush_progress(&mut self) -> bool {
        let now = Instant::now();
        let mut ch = Changes::default();
        for idx in 0..self.live.len() {
            let l = &mut self.live[idx];
            let due = l
                .last_progress
                .is_none_or(|t| now.saturating_duration_since(t) >= PROGRESS_EVERY);
            if !due {
                continue;
            }
            let Some((attempt, message)) = l.held_progress.take().map(|b| *b) else {
                continue;
            };
            if !self.sched.is_current(idx, attempt) {
                continue;
            }
            l.last_progress = Some(now);
            let step_id = &self.sched.steps()[idx].step_id;
            ch.event(NewEvent::step(
                EventKind::StepProgress,
                step_id,
                Some(attempt),
                EventData {
                    message: Some(message),
                    ..Default::default()
                },
            ));
        }
        if ch.is_empty() {
            return true;
        }
        self.commit(ch).await
    }
}

/// When a step's unwritten activity is due to be written: once it has waited
/// [`ACTIVITY_DELAY`], and no sooner than [`ACTIVITY_EVERY`] after the step's previous activity
/// write.
fn activity_due(l: &Live) -> Option<Instant> {
    let due = l.activity_unsaved? + ACTIVITY_DELAY;
    Some(
        l.activity_saved
            .map_or(due, |t| due.max(t + ACTIVITY_EVERY)),
    )
}
