//! The driver: one task per workflow this process owns — the I/O loop around its
//! [`Scheduler`]. It spawns the attempts the scheduler starts, feeds their outcomes and
//! signals back, and commits each change set.
//!
//! Invariant: a step's result is committed (output, status, attempt, event) before any
//! dependent starts, and the start of the dependents that became ready shares that commit —
//! one durable commit per step boundary. Every commit is fenced by the workflow's lease epoch,
//! so a driver that lost its lease cannot overwrite the new owner's work; and no attempt is
//! spawned before the commit recording its start is written. A boundary's attempts start
//! while its fsync runs (the commit is safe from a crash of this process once written; the
//! fsync makes it safe from a crash of the machine, which would end the attempts too), and
//! the driver waits for that fsync before the workflow ends or stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::executor::{self, AttemptSpec};
use super::lease_clock::LeaseClock;
use super::outcome::Outcome;
use super::scheduler::{Scheduler, Stop};
use super::signals::Signals;
use crate::api::now_ms;
use crate::store::{self, Changes, Fence, NewWorkflow, StoreError};

mod running;

/// Why a driver stopped before its workflow finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub(super) enum StopReason {
    #[default]
    None = 0,
    /// A user cancelled the workflow.
    Cancel = 1,
    /// This process is shutting down; the workflow is handed over.
    Shutdown = 2,
    /// Another process holds the lease now.
    Fenced = 3,
    /// The store refused writes; the workflow is left for recovery.
    StoreFailed = 4,
}

/// The first reason a driver was asked to stop; later reasons do not replace it.
#[derive(Debug, Default)]
pub(super) struct StopCell(AtomicU8);

impl StopCell {
    pub(super) fn get(&self) -> StopReason {
        match self.0.load(Ordering::Acquire) {
            1 => StopReason::Cancel,
            2 => StopReason::Shutdown,
            3 => StopReason::Fenced,
            4 => StopReason::StoreFailed,
            _ => StopReason::None,
        }
    }

    /// Sets the reason unless one is set already.
    pub(super) fn set(&self, r: StopReason) {
        let _ = self
            .0
            .compare_exchange(0, r as u8, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Shortest interval between two `step_progress` events of one step.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Shortest interval between two activity writes of one step.
const ACTIVITY_EVERY: Duration = Duration::from_secs(5);
/// How long a running step's first unwritten activity may wait for a commit that carries it
/// (the step's end writes its row, activity included) before it is written on its own.
const ACTIVITY_DELAY: Duration = Duration::from_secs(1);
/// Shortest interval between two reads of a waiting workflow's answers on notices of other
/// processes' commits.
const FOREIGN_ANSWERS_EVERY: Duration = Duration::from_millis(250);
/// Longest wait between two tries of a commit the store refused.
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(2);

/// The I/O state of one step's running attempt.
#[derive(Default)]
struct Live {
    /// Stops the running attempt.
    stop: Option<CancellationToken>,
    /// Last output of the running attempt (unthrottled), for `on_stall: restart`.
    last_output: Option<Instant>,
    /// The stall restart was already triggered for the running attempt.
    stall_fired: bool,
    last_progress: Option<Instant>,
    /// When the step's activity was last written on its own.
    activity_saved: Option<Instant>,
    /// The earliest activity of the running attempt not yet written.
    activity_unsaved: Option<Instant>,
    /// The newest progress message not yet written (throttled): attempt, message.
    /// Boxed: most steps never hold one.
    held_progress: Option<Box<(i64, String)>>,
}

pub(super) struct Driver {
    sh: Arc<Shared>,
    fence: Fence,
    sched: Scheduler,
    running: JoinSet<(usize, i64, Outcome)>,
    live: Vec<Live>,
    spare: Option<OwnedSemaphorePermit>,
    stop: CancellationToken,
    reason: Arc<StopCell>,
    /// How long this process holds the workflow's lease: no attempt starts past it.
    lease: LeaseClock,
    signals: Arc<Signals>,
    /// A new workflow's record and the submitter waiting for its first commit.
    /// Boxed: stored by the first commit, after which the driver keeps only the pointer.
    new_record: Option<Box<(NewWorkflow, oneshot::Sender<store::Result<()>>)>>,
    /// The store's change notices, followed while a human step waits (its answer may be
    /// recorded by any process).
    feed: Option<store::ChangeFeed>,
    /// The budget held steps back on an estimate: read the exact cost after the commit.
    recount: bool,
    /// When answers were last read on a notice from another process, and when to read
    /// them again for notices that came too soon after (at most one read per interval).
    answers_read_at: Option<Instant>,
    answers_recheck: Option<Instant>,
    /// The fsync of the last boundary commit, while it runs (it covers the earlier ones).
    unsynced: Option<store::Durable>,
}

/// What an idle driver woke up for.
enum Wake {
    /// An attempt's signals (first tool use, session id).
    Signals,
    /// Attempts ended (none: a retry came due or a slot was freed); advance the workflow.
    Done(Vec<(usize, i64, Outcome)>),
    /// The store changed (or may have) while a human step waits.
    Change(Option<store::Change>),
    /// A running step may have stalled.
    Stall,
    /// Live progress is due to be written.
    Progress,
    /// A running step's activity is due to be written.
    Activity,
    /// The last boundary commit is durable, or its fsync failed.
    Synced(store::Result<()>),
}

impl Driver {
    pub(super) fn new(
        sh: Arc<Shared>,
        fence: Fence,
        sched: Scheduler,
        stop: CancellationToken,
        reason: Arc<StopCell>,
        lease: LeaseClock,
    ) -> Driver {
        let live = (0..sched.steps().len()).map(|_| Live::default()).collect();
        Driver {
            sh,
            fence,
            sched,
            running: JoinSet::new(),
            live,
            spare: None,
            stop,
            reason,
            lease,
            signals: Arc::new(Signals::default()),
            new_record: None,
            feed: None,
            recount: false,
            answers_read_at: None,
            answers_recheck: None,
            unsynced: None,
        }
    }

    /// Makes the first commit insert the workflow and report to `reply`.
    pub(super) fn with_new_record(
        mut self,
        record: NewWorkflow,
        reply: oneshot::Sender<store::Result<()>>,
    ) -> Driver {
        self.new_record = Some(Box::new((record, reply)));
        self
    }

    fn halt(&self, r: StopReason) {
        self.reason.set(r);
        self.stop.cancel();
    }

    /// Runs the workflow until it finishes or the driver is stopped. The work done at each
    /// wake-up is boxed, so an idle driver holds only its wait, not the largest step of it;
    /// the driver itself is boxed too, so its task holds it once, not once per await point.
    pub(super) async fn run(mut self: Box<Self>) {
        if !Box::pin(self.advance(Vec::new())).await {
            return Box::pin(self.finish_stopped()).await;
        }
        loop {
            // A workflow parked on a human step is blocked but still driven.
            let parked = self.sched.status() == crate::api::WorkflowStatus::Blocked
                && self.sched.is_waiting();
            if self.sched.status().is_terminal() && !parked {
                // The commit that ended it is written; the workflow is done once it is durable.
                if let Some(Err(e)) = self.wait_synced().await {
                    tracing::error!(thread_id = %self.fence.id, error = %e, "the workflow's last commit may not be durable");
                }
                tracing::debug!(thread_id = %self.fence.id, status = %self.sched.status(), "workflow stopped");
                return;
            }
            if self.sched.is_waiting() != self.feed.is_some() {
                self.feed = self.sched.is_waiting().then(|| self.sh.store.changes());
            }
            let next_retry = [self.sched.next_retry(), self.sched.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(at_store_time);
            let next_stall = self.next_stall_check();
            let next_progress = self.next_progress_flush();
            let next_activity = self.next_activity_save();
            let wake = [
                next_retry,
                self.answers_recheck,
                next_stall,
                next_progress,
                next_activity,
            ]
            .into_iter()
            .flatten()
            .min();
            let sem = self.sh.permits.clone();
            let signals = self.signals.clone();
            // What woke the driver is decided first and handled after the wait is dropped, so
            // the handlers' awaits do not keep room for the wait's results.
            let wake = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                // Before results: an attempt's signals are all sent by the time it ends, and
                // once its result is applied they would be dropped (first tool use, session).
                () = signals.wait() => Wake::Signals,
                Some(joined) = self.running.join_next() => {
                    let mut done = Vec::new();
                    if let Ok(r) = joined { done.push(r); }
                    while let Some(Ok(r)) = self.running.try_join_next() { done.push(r); }
                    Wake::Done(done)
                }
                // One timer for every deadline (each would hold its own in an idle driver);
                // the first due, in this order, is handled, and the loop comes back for the rest.
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
                    if due(next_retry) {
                        Wake::Done(Vec::new())
                    } else if due(self.answers_recheck) {
                        self.answers_recheck = None;
                        Wake::Change(Some(store::Change::Unknown))
                    } else if due(next_stall) {
                        Wake::Stall
                    } else if due(next_progress) {
                        Wake::Progress
                    } else if due(next_activity) {
                        Wake::Activity
                    } else {
                        continue;
                    }
                }
                change = next_change(self.feed.as_mut()) => Wake::Change(change),
                Some(synced) = next_synced(self.unsynced.as_mut()) => Wake::Synced(synced),
                Some(p) = spare_permit(sem, self.sched.starved()) => {
                    self.spare = Some(p);
                    Wake::Done(Vec::new())
                }
            };
            let go_on = match wake {
                Wake::Signals => Box::pin(self.on_signals()).await,
                Wake::Done(done) => Box::pin(self.advance(done)).await,
                Wake::Change(change) => Box::pin(self.on_change(change)).await,
                Wake::Stall => {
                    self.restart_stalled();
                    true
                }
                Wake::Progress => Box::pin(self.flush_progress()).await,
                Wake::Activity => Box::pin(self.save_activity()).await,
                Wake::Synced(synced) => {
                    self.unsynced = None;
                    self.on_synced(synced)
                }
            };
            if !go_on {
                break;
            }
        }
        Box::pin(self.finish_stopped()).await;
    }

    /// Applies finished attempts, starts what became ready and, when nothing is left, ends
    /// the workflow — all in one commit. Returns false if the driver must stop.
    async fn advance(&mut self, done: Vec<(usize, i64, Outcome)>) -> bool {
        let mut ch = Changes::default();
        // Only for the debug log: the boundary's path allocates nothing for it otherwise.
        let ended = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| done.iter().map(|d| d.0).collect::<Vec<usize>>());
        let started = self.step(&mut ch, done);
        if let Some((record, reply)) = self.new_record.take().map(|b| *b) {
            return self.first_commit(record, reply, ch, started).await;
        }
        if ch.is_empty() {
            return !self.recount || self.recount_cost().await;
        }
        if !self.commit_boundary(ch).await {
            return false;
        }
        if let Some(ended) = ended.filter(|e| !e.is_empty()) {
            let rows = self.sched.steps();
            let steps: Vec<&str> = ended
                .iter()
                .filter_map(|&i| rows.get(i).map(|r| r.step_id.as_str()))
                .collect();
            tracing::debug!(thread_id = %self.fence.id, steps = ?steps, "step ends committed");
        }
        if !started.is_empty() && self.lease.in_doubt() && !self.still_owner().await {
            return false;
        }
        self.spawn_attempts(started);
        if self.recount {
            return self.recount_cost().await;
        }
        true
    }

    /// The scheduler's transition for these outcomes and the current time.
    fn step(
        &mut self,
        ch: &mut Changes,
        done: Vec<(usize, i64, Outcome)>,
    ) -> Vec<(AttemptSpec, OwnedSemaphorePermit)> {
        let now = now_ms();
        let cancelled = self.reason.get() == StopReason::Cancel;
        for (idx, attempt, outcome) in done {
            if let Some(l) = self.live.get_mut(idx) {
                l.stop = None;
                l.last_output = None;
                l.stall_fired = false;
                // Written with the step's row in the commit of this end.
                l.activity_unsaved = None;
            }
            let owner = &self.sh.owner;
            self.sched.apply(
                ch,
                idx,
                attempt,
                outcome,
                cancelled,
                now,
                owner,
                fastrand::f64(),
            );
        }
        let sem = self.sh.permits.clone();
        let mut spare = self.spare.take();
        let started = self.sched.start_ready(ch, now, &self.sh.owner, || {
            spare
                .take()
                .or_else(|| sem.clone().try_acquire_owned().ok())
        });
        // An unused spare slot goes back to the pool here.
        drop(spare);
        if started.is_empty() && self.sched.is_settled(self.running.len()) {
            match self.sched.budget_blocks() {
                // Held back by an estimate: read the exact total after this commit first.
                Some(false) => self.recount = true,
                Some(true) => {
                    self.sched.block_for_budget(ch, now);
                    if !self.sched.park(ch) {
                        self.sched.finish_over_budget(ch);
                    }
                }
                None if !self.sched.park(ch) => self.sched.finish(ch),
                None => {}
            }
        }
        started
    }

    /// Reads the workflow's exact cost after a commit that charged attempts, and goes on
    /// with it (steps the estimate held back may start). Returns false if the driver must
    /// stop.
    async fn recount_cost(&mut self) -> bool {
        self.recount = false;
        match self.sh.store.workflow(self.fence.id.clone()).await {
            Ok(Some(row)) => self.sched.set_spent(row.total_cost_usd),
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(thread_id = %self.fence.id, error = %e, "cannot read the workflow's cost");
                return true;
            }
        }
        Box::pin(self.advance(Vec::new())).await
    }

    /// A change in the store while a human step waits: applies the answers recorded for it.
    async fn on_change(&mut self, change: Option<store::Change>) -> bool {
        match change {
            None => {
                self.feed = None;
                return true;
            }
            Some(store::Change::Workflow(id)) if id != self.fence.id => return true,
            Some(store::Change::Workflow(_)) => {}
            // Another process committed something: read at most once per interval, since
            // every waiting workflow of this process hears every such notice.
            Some(store::Change::Unknown) => {
                let now = Instant::now();
                if let Some(at) = self.answers_read_at
                    && now.saturating_duration_since(at) < FOREIGN_ANSWERS_EVERY
                {
                    self.answers_recheck
                        .get_or_insert(at + FOREIGN_ANSWERS_EVERY);
                    return true;
                }
                self.answers_read_at = Some(now);
            }
        }
        let answers = match self.sh.store.answers(self.fence.id.clone()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(thread_id = %self.fence.id, error = %e, "cannot read answers");
                return true;
            }
        };
        let mut any = false;
        for (step, answer) in answers {
            any |= self.sched.set_answer(&step, &answer);
        }
        if !any {
            return true;
        }
        Box::pin(self.advance(Vec::new())).await
    }

    /// The first commit of a new workflow: inserts it and starts its first steps, once. Its
    /// result goes to the submitter; on failure nothing was stored and the driver ends.
    async fn first_commit(
        &mut self,
        record: NewWorkflow,
        reply: oneshot::Sender<store::Result<()>>,
        ch: Changes,
        started: Vec<(AttemptSpec, OwnedSemaphorePermit)>,
    ) -> bool {
        let res = self.sh.store.insert_workflow(record, ch).await;
        let ok = res.is_ok();
        let _ = reply.send(res);
        if !ok {
            self.reason.set(StopReason::StoreFailed);
            return false;
        }
        // Let the submitter answer its caller before this thread forks the first steps.
        tokio::task::yield_now().await;
        self.spawn_attempts(started);
        true
    }

    /// Runs attempts whose start has been committed.
    fn spawn_attempts(&mut self, started: Vec<(AttemptSpec, OwnedSemaphorePermit)>) {
        for (spec, permit) in started {
            let sh = self.sh.clone();
            let stop = self.stop.child_token();
            if self.live.len() <= spec.step_idx {
                // A for_each step's instances are rows added while the workflow runs.
                self.live.resize_with(spec.step_idx + 1, Live::default);
            }
            if let Some(l) = self.live.get_mut(spec.step_idx) {
                l.stop = Some(stop.clone());
                l.last_output = Some(Instant::now());
                l.stall_fired = false;
            }
            let signals = self.signals.clone();
            let fence = self.fence.clone();
            let reason = self.reason.clone();
            let lease = self.lease.clone();
            let driver_stop = self.stop.clone();
            // Boxed: a command attempt frees it at its spawn, not at its end.
            let spec = Box::new(spec);
            self.running.spawn(async move {
                // A sub-workflow waits for its child, whose steps need the slots.
                let sub = matches!(spec.prepared, executor::Prepared::Workflow { .. });
                let _permit = (!sub).then_some(permit);
                // Last look before the fork (nothing is awaited between it and the spawn): a
                // process frozen past its lease since the commit must not start the attempt,
                // which another process may have adopted and re-run meanwhile.
                let lost = {
                    // Moved in here, so its ids are freed before the attempt runs.
                    let fence = fence;
                    stop.is_cancelled()
                        || (lease.in_doubt()
                            && matches!(
                                // Boxed, like the sub-workflow below: a running attempt's task
                                // holds only the wait it is in, not the largest one it might take.
                                Box::pin(sh.store.check_fence(fence)).await,
                                Err(StoreError::Fenced(_))
                            ))
                };
                if lost || stop.is_cancelled() {
                    tracing::warn!(thread_id = %spec.workflow_id, step = %spec.step_id, "stopped or lease lost before the attempt started; not starting it");
                    if !stop.is_cancelled() {
                        super::lease::lease_lost(&sh, &spec.workflow_id, &reason, &driver_stop);
                    }
                    let detail = super::outcome::AttemptDetail::default();
                    return (spec.step_idx, spec.number, Outcome::Stopped { detail });
                }
                let (idx, number) = (spec.step_idx, spec.number);
                let out = if sub {
                    Box::pin(super::subworkflow::run(sh, *spec, stop, reason)).await
                } else {
                    // Boxed: a running attempt's task keeps one pointer for the debug log.
                    let step = tracing::enabled!(tracing::Level::DEBUG)
                        .then(|| Box::new((spec.workflow_id.clone(), spec.step_id.clone())));
                    let id = spec.workflow_id.clone();
                    let gate = Some(lease.gate());
                    let out = executor::execute(&sh.exec, spec, &stop, gate, signals).await;
                    if matches!(out, Outcome::Stopped { .. }) && !stop.is_cancelled() {
                        // Refused at the spawn: the lease ended by this process's clock.
                        tracing::warn!(thread_id = %id, "lease ended before the attempt started; not starting it");
                        super::lease::lease_lost(&sh, &id, &reason, &driver_stop);
                    }
                    if let Some(ids) = step {
                        let (thread_id, step) = &*ids;
                        tracing::debug!(%thread_id, %step, "attempt ended");
                    }
                    out
                };
                (idx, number, out)
            });
        }
    }

    fn check_write(&mut self, res: store::Result<()>) -> bool {
        match res {
            Ok(()) => true,
            Err(StoreError::Fenced(_)) => {
                self.halt(StopReason::Fenced);
                false
            }
            Err(e) => {
                tracing::warn!(thread_id = %self.fence.id, error = %e, "progress write failed");
                true
            }
        }
    }

    /// Checks in the store that this process still holds the workflow's lease. Starting a
    /// process is a side effect no commit can fence: a process that was frozen past its lease
    /// between a commit and the start of the attempt it recorded must not start it, because
    /// another process may have adopted the workflow and re-run that step meanwhile.
    async fn still_owner(&mut self) -> bool {
        match self.sh.store.check_fence(self.fence.clone()).await {
            Ok(()) => true,
            Err(StoreError::Fenced(_)) => {
                tracing::warn!(thread_id = %self.fence.id, "lease lost before starting steps; stopping this workflow here");
                self.halt(StopReason::Fenced);
                false
            }
            // Unknown: the commit just made went through, so start them.
            Err(e) => {
                tracing::warn!(thread_id = %self.fence.id, error = %e, "cannot check the lease");
                true
            }
        }
    }

    /// Commits a change set. Store errors (a full disk, an I/O error) are retried with capped
    /// backoff until the commit succeeds, the lease is lost or the driver is stopped: giving up
    /// would leave the workflow owned by this live process with nobody driving it. Returns
    /// false if the driver must stop.
    async fn commit(&mut self, ch: Changes) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.sh.store.commit(self.fence.clone(), ch.clone()).await {
                Ok(()) => return true,
                Err(StoreError::Fenced(_)) => {
                    tracing::warn!(thread_id = %self.fence.id, "lease lost; stopping this workflow here");
                    self.halt(StopReason::Fenced);
                    return false;
                }
                Err(e) => {
                    tracing::error!(thread_id = %self.fence.id, error = %e, "cannot commit; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(COMMIT_RETRY_MAX);
                }
            }
        }
        self.halt(StopReason::StoreFailed);
        false
    }

    /// Commits a step boundary and returns once it is written, keeping its fsync to wait
    /// for (store errors are retried as in [`Driver::commit`]). Returns false if the driver
    /// must stop.
    async fn commit_boundary(&mut self, ch: Changes) -> bool {
        match self
            .sh
            .store
            .commit_early(self.fence.clone(), ch.clone())
            .await
        {
            Ok(durable) => {
                self.unsynced = Some(durable);
                true
            }
            Err(StoreError::Fenced(_)) => {
                tracing::warn!(thread_id = %self.fence.id, "lease lost; stopping this workflow here");
                self.halt(StopReason::Fenced);
                false
            }
            Err(e) => {
                tracing::error!(thread_id = %self.fence.id, error = %e, "cannot commit; retrying");
                self.commit(ch).await
            }
        }
    }

    /// Waits for the fsync of the last boundary commit, if one runs.
    async fn wait_synced(&mut self) -> Option<store::Result<()>> {
        let durable = self.unsynced.take()?;
        Some(durable.await)
    }

    /// A boundary commit's fsync ended: a failed one stops the driver (the store takes no
    /// more writes; the workflow is left for recovery).
    fn on_synced(&mut self, synced: store::Result<()>) -> bool {
        match synced {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(thread_id = %self.fence.id, error = %e, "a commit may not be durable; stopping this workflow here");
                self.halt(StopReason::StoreFailed);
                false
            }
        }
    }

    /// After a stop: waits for attempts to end, then records the stop (unless the lease or
    /// the store is gone, in which case the workflow is left for recovery).
    async fn finish_stopped(mut self) {
        self.stop.cancel();
        let mut done = Vec::new();
        while let Some(joined) = self.running.join_next().await {
            if let Ok(r) = joined {
                done.push(r);
            }
        }
        tracing::debug!(thread_id = %self.fence.id, reason = ?self.reason.get(), "driver stopping");
        let stop = match self.reason.get() {
            StopReason::Cancel => Stop::Cancel,
            StopReason::Shutdown => Stop::Shutdown,
            StopReason::Fenced | StopReason::StoreFailed | StopReason::None => return,
        };
        let now = now_ms();
        let mut ch = Changes::default();
        for (idx, attempt, outcome) in done {
            let cancelled = stop == Stop::Cancel;
            let owner = &self.sh.owner;
            self.sched
                .apply(&mut ch, idx, attempt, outcome, cancelled, now, owner, 0.0);
        }
        self.sched.stop(&mut ch, stop, now);
        if let Err(e) = self.sh.store.commit(self.fence.clone(), ch).await {
            tracing::warn!(thread_id = %self.fence.id, error = %e, "cannot record the stop");
        }
    }
}

/// The tokio instant at which the store clock reads `ms`.
fn at_store_time(ms: i64) -> Instant {
    let wait = Duration::from_millis(u64::try_from(ms.saturating_sub(now_ms())).unwrap_or(0));
    let now = Instant::now();
    // A deadline beyond what the clock can represent is as good as never.
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

// The waits below are boxed when they happen at all: an idle driver's select holds a
// pointer for each, not room for every wait it might take.

/// The next change notice, or never without a feed.
/// The result of the running fsync; pending forever when none runs.
async fn next_synced(unsynced: Option<&mut store::Durable>) -> Option<store::Result<()>> {
    match unsynced {
        Some(d) => Some(d.await),
        None => std::future::pending().await,
    }
}

async fn next_change(feed: Option<&mut store::ChangeFeed>) -> Option<store::Change> {
    match feed {
        Some(f) => Box::pin(f.recv()).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => Box::pin(tokio::time::sleep_until(t)).await,
        None => std::future::pending().await,
    }
}

async fn spare_permit(
    sem: Arc<tokio::sync::Semaphore>,
    wanted: bool,
) -> Option<OwnedSemaphorePermit> {
    match wanted {
        true => Box::pin(sem.acquire_owned()).await.ok(),
        false => std::future::pending().await,
    }
}
