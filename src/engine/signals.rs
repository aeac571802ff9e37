//! The mailbox through which running attempts report to their workflow's driver.
//!
//! Invariant: the mailbox is bounded whatever an attempt prints. Signals are coalesced per
//! attempt — the session id, the oldest and the newest progress message since the driver last
//! looked are kept, any number of output lines is one "activity" flag — so a step printing
//! millions of lines costs a few bytes here, and a driver that wakes late reads the first
//! and the latest state, never a backlog.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::outcome::{Signal, SignalKind};

#[derive(Default)]
struct Pending {
    session: Option<String>,
    /// The first progress message since the last drain (shown at once) …
    first_progress: Option<String>,
    /// … and the newest one after it (shown when the throttle allows).
    last_progress: Option<String>,
    activity: bool,
}

/// Signals of every running attempt of one workflow.
#[derive(Default)]
pub(super) struct Signals {
    slots: Mutex<BTreeMap<(usize, i64), Pending>>,
    notify: Notify,
}

impl Signals {
    /// Records a signal of attempt `attempt` of step `step_idx` and wakes the driver.
    pub(super) fn send(&self, step_idx: usize, attempt: i64, kind: SignalKind) {
        {
            // A panic elsewhere cannot leave this map half-updated: every update is one
            // field assignment, so the data behind a poisoned lock is still sound.
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let p = slots.entry((step_idx, attempt)).or_default();
            match kind {
                SignalKind::Session(s) => p.session = Some(s),
                SignalKind::Progress(m) if p.first_progress.is_none() => p.first_progress = Some(m),
                SignalKind::Progress(m) => p.last_progress = Some(m),
                SignalKind::Activity => p.activity = true,
            }
        }
        self.notify.notify_one();
    }

    /// Waits until a signal was sent since the last [`Signals::drain`] (returns at once if
    /// one was).
    pub(super) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Takes every pending signal: per attempt, its session first, then activity, then its
    /// first and newest progress messages.
    pub(super) fn drain(&self) -> Vec<Signal> {
        let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out = Vec::new();
        for ((step_idx, attempt), p) in slots {
            let mut push = |kind| {
                out.push(Signal {
                    step_idx,
                    attempt,
                    kind,
                })
            };
            if let Some(s) = p.session {
                push(SignalKind::Session(s));
            }
            if p.activity {
                push(SignalKind::Activity);
            }
            for m in [p.first_progress, p.last_progress].into_iter().flatten() {
                push(SignalKind::Progress(m));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_lines_coalesces_into_one_activity_signal() {
        let s = Signals::default();
        for i in 0..100_000 {
            s.send(0, 1, SignalKind::Activity);
            if i % 1000 == 0 {
                s.send(0, 1, SignalKind::Progress(format!("tool {i}")));
            }
        }
        s.send(0, 1, SignalKind::Session("abc".into()));
        let got = s.drain();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].kind, SignalKind::Session("abc".into()));
        assert_eq!(got[1].kind, SignalKind::Activity);
        assert_eq!(got[2].kind, SignalKind::Progress("tool 0".into()));
        assert_eq!(got[3].kind, SignalKind::Progress("tool 99000".into()));
        assert!(s.drain().is_empty());
    }

    #[tokio::test]
    async fn a_signal_sent_before_waiting_is_not_lost() {
        let s = Signals::default();
        s.send(1, 2, SignalKind::Activity);
        s.wait().await;
        assert_eq!(s.drain().len(), 1);
    }
}
