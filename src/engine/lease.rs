//! Ownership: this process's owner record, lease renewal, liveness of other owners, and the
//! adoption of workflows whose owner is gone.
//!
//! Invariant: an owner is considered dead only when its heartbeat is older than its lease, or
//! — on the same machine (same boot and pid namespace) — when its pid no longer exists; only
//! then are its workflows adopted, each with a compare-and-set on the epoch. On a store shared
//! by many machines, a process that could not renew its leases for most of a lease stops its
//! own running attempts before anyone may adopt them (self-fencing), and its reaper kills them
//! even if the process itself is frozen.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::lease_clock::LeaseClock;
use super::{DriverInit, EngineError, Result, Shared, StopReason, scheduler};
use crate::api::{ThreadId, now_ms};
use crate::store::{Claim, OwnerRow, StoreError};

/// Identifies this machine, boot and pid namespace, so pids are only compared where they
/// name the same processes.
pub(super) fn host_key() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let pid_ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.display().to_string())
        .unwrap_or_default();
    format!(
        "{}/{}/{pid_ns}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id")
    )
}

/// How long after its last renewal a process stops its running attempts when it cannot
/// renew (self-fencing): early enough that they are dead when the lease ends.
pub fn self_fence_after(lease: Duration) -> Duration {
    lease - lease / 5
}

/// Self-fencing on a shared store: once this process has not renewed its leases for
/// [`self_fence_after`], it stops every workflow it drives (their attempts are killed), so no
/// attempt still runs here when another process may adopt it. Those it still holds when a
/// renewal succeeds again are taken up again as after a crash.
pub(super) async fn fence_loop(sh: Arc<Shared>) {
    let after = self_fence_after(sh.cfg.lease).as_millis() as i64;
    let mut every = tokio::time::interval((sh.cfg.lease / 20).max(Duration::from_millis(20)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = sh.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let since = now_ms() - sh.renewed_at.load(Ordering::Relaxed);
        if since < after {
            continue;
        }
        let local: Vec<ThreadId> = sh.runs().keys().cloned().collect();
        if local.is_empty() {
            continue;
        }
        tracing::error!(
            since_ms = since,
            workflows = local.len(),
            "leases not renewed for most of a lease; stopping this process's attempts before another process may adopt them"
        );
        for id in local {
            sh.stop_driver(&id, StopReason::Fenced);
            remember_fenced(sh.as_ref(), id);
        }
    }
}

fn fenced_here(sh: &Shared) -> std::sync::MutexGuard<'_, Vec<ThreadId>> {
    sh.self_fenced.lock().unwrap_or_else(|e| e.into_inner())
}

/// A driver found its lease lost or ended when it was about to start an attempt: it stops
/// (leaving the workflow to whoever holds it), and if the workflow still names this process
/// it is taken up again, under a new claim, at the next renewal.
pub(super) fn lease_lost(
    sh: &Shared,
    id: &ThreadId,
    reason: &super::driver::StopCell,
    stop: &tokio_util::sync::CancellationToken,
) {
    reason.set(StopReason::Fenced);
    stop.cancel();
    remember_fenced(sh, id.clone());
}

fn remember_fenced(sh: &Shared, id: ThreadId) {
    let mut ids = fenced_here(sh);
    if !ids.contains(&id) {
        ids.push(id);
    }
}

/// Takes up again the workflows whose drivers this process stopped because it could not
/// renew their leases, and that nobody else took meanwhile (they still name this process).
async fn resume_fenced(sh: &Arc<Shared>) {
    let ids: Vec<ThreadId> = std::mem::take(&mut *fenced_here(sh));
    for id in ids {
        if sh.is_running_here(&id) {
            // Its driver is still stopping: try again at the next renewal.
            fenced_here(sh).push(id);
            continue;
        }
        let row = match sh.store.workflow(id.clone()).await {
            Ok(Some(row)) => row,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(thread_id = %id, error = %e, "cannot read a self-fenced workflow");
                fenced_here(sh).push(id);
                continue;
            }
        };
        if row.owner.as_deref() != Some(sh.owner.as_str()) || row.status.is_finished() {
            continue;
        }
        match adopt(sh, &id, Some(sh.owner.clone()), row.epoch, None, true).await {
            Ok(taken) => {
                taken.drive(sh);
                tracing::info!(thread_id = %id, "took up a workflow stopped by self-fencing")
            }
            // Tried again at the next renewal, which reads the row again: a claim refused
            // because another transaction held the row for a moment must not leave the
            // workflow naming this process with nobody driving it.
            Err(e) => {
                tracing::warn!(thread_id = %id, error = %e, "cannot take up a self-fenced workflow yet");
                fenced_here(sh).push(id);
            }
        }
    }
}

pub(super) async fn register(sh: &Arc<Shared>) -> Result<()> {
    let row = OwnerRow {
        id: sh.owner.clone(),
        pid: i64::from(std::process::id()),
        host: sh.host.clone(),
        heartbeat_at: 0,
        lease_ms: lease_ms(sh),
    };
    sh.store.register_owner(row).await?;
    Ok(())
}

pub(super) async fn unregister(sh: &Arc<Shared>) {
    let _ = sh.store.remove_owner(sh.owner.clone()).await;
}

fn lease_ms(sh: &Shared) -> i64 {
    sh.cfg.lease.as_millis() as i64
}

/// How often a process with running workflows checks for cancel requests from other
/// processes (a cheap indexed read), so a cross-process cancel takes effect within it.
const CANCEL_POLL: Duration = Duration::from_millis(250);
/// Shortest interval between two adoption scans started by other processes' commits.
const WAKE_EVERY: Duration = Duration::from_millis(50);

/// Renews leases, honours cancel requests from other processes, notices lost leases and
/// adopts orphans, every third of a lease.
pub(super) async fn tick_loop(sh: Arc<Shared>) {
    let every = (sh.cfg.lease / 3).max(Duration::from_millis(50));
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut cancel_poll = tokio::time::interval(CANCEL_POLL.min(every));
    cancel_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A process that adopts reacts to other processes' commits (a workflow left for it)
    // at once, not only at its next tick.
    let mut changes = sh.store.changes();
    let wake = sh.cfg.adopt_orphans && sh.cfg.execute;
    let mut last_wake = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = sh.shutdown.cancelled() => return,
            Some(change) = changes.recv(), if wake => {
                // On a shared store a slot freed here (a workflow of this process finished)
                // is work to look for too.
                if (change == crate::store::Change::Unknown || sh.store.is_shared())
                    && last_wake.elapsed() >= WAKE_EVERY
                {
                    last_wake = tokio::time::Instant::now();
                    if let Err(e) = adopt_orphans(&sh).await {
                        tracing::warn!(error = %e, "adoption failed");
                    }
                }
            }
            _ = interval.tick() => {
                if let Err(e) = tick(&sh).await {
                    tracing::warn!(error = %e, "lease tick failed");
                }
            }
            _ = cancel_poll.tick(), if !sh.runs().is_empty() => {
                match sh.store.cancel_requests(sh.owner.clone()).await {
                    Ok(ids) => honour_cancels(&sh, &ids),
                    Err(e) => tracing::warn!(error = %e, "cancel poll failed"),
                }
            }
        }
    }
}

/// Stops the local drivers of workflows another process asked to cancel.
fn honour_cancels(sh: &Shared, ids: &[ThreadId]) {
    for id in ids {
        sh.stop_driver(id, StopReason::Cancel);
    }
}

async fn tick(sh: &Arc<Shared>) -> Result<()> {
    let now = now_ms();
    let renewal = sh
        .store
        .renew(sh.owner.clone(), now + lease_ms(sh), now)
        .await?;
    // Drivers of lost workflows are stopped before the renewal counts, and only the leases
    // the renewal held are extended: a driver must never start a process on a lease it lost
    // (e.g. while this process was frozen).
    let local: Vec<(ThreadId, LeaseClock)> = sh
        .runs()
        .iter()
        .map(|(id, h)| (id.clone(), h.lease.clone()))
        .collect();
    for (id, lease) in local {
        if renewal.held.contains(&id) {
            lease.extend(now + lease_ms(sh));
            continue;
        }
        // A new workflow's driver is registered before its first commit lands, so a
        // workflow missing from `held` may simply not be stored yet (or have been stored
        // since), or have just finished (releasing its lease) while its driver winds down:
        // only a stored, unfinished workflow that names another owner (or none) is lost —
        // or one that still names this process but whose lease ended unrenewed (a freeze
        // longer than a lease on a shared store), which anyone may be adopting now.
        let ended = renewal.ended.contains(&id);
        let lost = match sh.store.workflow(id.clone()).await? {
            Some(row) => {
                (ended || row.owner.as_deref() != Some(sh.owner.as_str()))
                    && !row.status.is_terminal()
            }
            None => false,
        };
        if lost {
            if ended {
                tracing::warn!(thread_id = %id, "lease ended before this renewal; stopping here");
            } else {
                tracing::warn!(thread_id = %id, "lease taken by another process; stopping here");
            }
            sh.stop_driver(&id, StopReason::Fenced);
            // If nobody took it, this process takes it up again once its driver stopped.
            remember_fenced(sh.as_ref(), id);
        }
    }
    sh.renewed_at
        .store(now, std::sync::atomic::Ordering::Release);
    super::process::reaper_heartbeat();
    honour_cancels(sh, &renewal.cancels);
    resume_fenced(sh).await;
    if !sh.cfg.execute {
        hand_over_waiting(sh).await?;
    } else if sh.cfg.adopt_orphans {
        adopt_orphans(sh).await?;
    }
    Ok(())
}

/// Asks for a worker when workflows wait that no live process runs.
pub(super) async fn hand_over_waiting(sh: &Arc<Shared>) -> Result<()> {
    if !orphans(sh).await?.is_empty() {
        sh.hand_over();
    }
    Ok(())
}

/// A workflow that should be running and that no live process owns.
struct Orphan {
    id: ThreadId,
    owner: Option<String>,
    epoch: i64,
    /// Its lease as stored when it was judged orphaned: the claim fails if it was renewed.
    lease_stored: i64,
    /// The owner's pid when it ran on this machine (its leftovers are swept sparing it).
    pid: Option<i32>,
}

/// Workflows that should be running and that no live process owns.
async fn orphans(sh: &Arc<Shared>) -> Result<Vec<Orphan>> {
    let now = now_ms();
    Ok(sh
        .store
        .adoptable(sh.owner.clone())
        .await?
        .into_iter()
        .filter(|a| match &a.owner_id {
            None => true,
            Some(_) => a.lease_expires_at < now || !owner_alive(sh, a.owner.as_ref(), now),
        })
        .map(|a| {
            let pid = a
                .owner
                .as_ref()
                .filter(|o| o.host == sh.host)
                .and_then(|o| i32::try_from(o.pid).ok());
            Orphan {
                id: a.id,
                owner: a.owner_id,
                epoch: a.epoch,
                lease_stored: a.lease_stored,
                pid,
            }
        })
        .collect())
}

/// Whether the owner with this record is alive, as seen from `sh` at `now`.
fn alive(sh: &Shared, o: &OwnerRow, now: i64) -> bool {
    // Judged by the owner's own lease: it renews every third of it.
    if o.heartbeat_at + o.lease_ms < now {
        return false;
    }
    if o.host == sh.host {
        return pid_alive(o.pid);
    }
    true
}

/// Whether the owner of a workflow with this record is alive (`None`: no record, dead).
pub(super) fn owner_alive(sh: &Shared, o: Option<&OwnerRow>, now: i64) -> bool {
    o.is_some_and(|o| alive(sh, o, now))
}

fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// Whether the owner of a workflow (if any) is alive, as seen from this process.
pub(super) async fn is_owned_by_live(sh: &Arc<Shared>, owner: Option<String>) -> Result<bool> {
    let Some(owner) = owner else {
        return Ok(false);
    };
    if owner == sh.owner {
        return Ok(true);
    }
    let row = sh.store.owner(owner).await?;
    Ok(owner_alive(sh, row.as_ref(), now_ms()))
}

/// Adopts workflows that should be running but have no live owner.
pub(super) async fn adopt_orphans(sh: &Arc<Shared>) -> Result<Vec<ThreadId>> {
    if sh.shutdown.is_cancelled() || !sh.cfg.execute {
        return Ok(Vec::new());
    }
    let mut candidates = orphans(sh).await?;
    if sh.store.is_shared() {
        // Many workers share the work: each takes what it has room for, in an order of its
        // own so that workers scanning at once mostly claim different workflows.
        let room = sh.cfg.max_concurrent_steps.saturating_sub(sh.runs().len());
        fastrand::shuffle(&mut candidates);
        candidates.truncate(room);
    }
    // Leftovers of each dead owner first, so no old attempt runs beside its re-run.
    let mut swept: Vec<String> = Vec::new();
    let pids: Vec<(String, Option<i32>)> = candidates
        .iter()
        .filter_map(|o| Some((o.owner.clone()?, o.pid)))
        .collect();
    for (p, pid) in candidates
        .iter()
        .filter_map(|o| Some((o.owner.as_ref()?, o.pid)))
    {
        if swept.contains(p) {
            continue;
        }
        // Another machine's processes are out of sight: self-fencing stopped them there.
        if sh.store.is_shared() && pid.is_none() {
            swept.push(p.clone());
            continue;
        }
        let p2 = p.clone();
        let n = tokio::task::spawn_blocking(move || super::process::kill_leftovers(&p2, pid))
            .await
            .unwrap_or(0);
        if n > 0 {
            tracing::info!(owner = %p, killed = n, "killed processes left by a dead owner");
        }
        swept.push(p.clone());
    }
    // All adoptions at once: queued together, they share the writer's commits. Their drivers
    // start once every lease is taken, so the steps' re-runs (processes to spawn) do not hold
    // up the takeover of the rest.
    let results = futures::future::join_all(candidates.into_iter().map(|o| {
        let sh = sh.clone();
        async move {
            let seen = Some(o.lease_stored);
            let r = adopt(&sh, &o.id, o.owner.clone(), o.epoch, seen, false).await;
            (o.id, o.owner, r)
        }
    }))
    .await;
    let mut adopted = Vec::new();
    let mut from: Vec<String> = Vec::new();
    let mut taken = Vec::new();
    for (id, prev, r) in results {
        match r {
            Ok(t) => {
                taken.push(t);
                tracing::info!(thread_id = %id, previous_owner = ?prev, "adopted workflow");
                sh.adoptions.fetch_add(1, Ordering::Relaxed);
                adopted.push(id);
                if let Some(p) = prev
                    && !from.contains(&p)
                {
                    from.push(p);
                }
            }
            Err(EngineError::Store(StoreError::Fenced(_))) => {}
            Err(e) => tracing::warn!(thread_id = %id, error = %e, "cannot adopt workflow"),
        }
    }
    for t in taken {
        t.drive(sh);
    }
    // Once more after the takeover: an owner whose lease ran out while it still worked
    // (slow, not dead) may have started an attempt after the first sweep and before the
    // takeover fenced it; now that it can no longer commit, nothing it starts survives.
    for (p, pid) in pids {
        if !from.contains(&p) || (sh.store.is_shared() && pid.is_none()) {
            continue;
        }
        from.retain(|x| x != &p);
        let p2 = p.clone();
        let n = tokio::task::spawn_blocking(move || super::process::kill_leftovers(&p2, pid))
            .await
            .unwrap_or(0);
        if n > 0 {
            tracing::info!(owner = %p, killed = n, "killed processes a previous owner started late");
        }
    }
    Ok(adopted)
}

/// A workflow taken over in the store, its driver not started yet.
struct Taken {
    id: ThreadId,
    epoch: i64,
    /// The claim's lease, by this process's clock.
    lease_until: i64,
    after: crate::store::Snapshot,
}

impl Taken {
    /// Starts driving it: what the driver needs was read in the takeover's transaction.
    fn drive(self, sh: &Arc<Shared>) {
        sh.spawn_driver(
            &self.id,
            self.epoch,
            self.lease_until,
            DriverInit::Loaded(self.after),
        );
    }
}

/// Takes over a workflow whose owner is gone, for [`Taken::drive`]: in-flight steps are
/// counted as crashed and re-run (or failed, past the crash cap). `fenced`: this process
/// takes up its own workflow after stopping it by self-fencing; its attempts were stopped on
/// purpose, so they count as interrupted, not as crashes.
async fn adopt(
    sh: &Arc<Shared>,
    id: &ThreadId,
    prev: Option<String>,
    epoch: i64,
    lease_seen: Option<i64>,
    fenced: bool,
) -> Result<Taken> {
    let claim = Claim {
        owner: sh.owner.clone(),
        expected_epoch: epoch,
        lease_until: sh.lease_until(),
        expected_lease: lease_seen,
    };
    let lease_until = claim.lease_until;
    let max_crashes = sh.cfg.max_crashes;
    let now = now_ms();
    let (new_epoch, after, ()) = sh
        .store
        .transition(id.clone(), claim, move |snap| {
            let ch = if fenced {
                // Past any crash count: the cap is applied to none of these.
                let mut ch = scheduler::adopt_changes(&snap.steps, prev.as_deref(), i64::MAX, now);
                as_interrupted(&mut ch);
                ch
            } else {
                scheduler::adopt_changes(&snap.steps, prev.as_deref(), max_crashes, now)
            };
            Ok((ch, ()))
        })
        .await?;
    Ok(Taken {
        id: id.clone(),
        epoch: new_epoch,
        lease_until,
        after,
    })
}

/// Rewrites an adoption's change set for attempts stopped by self-fencing: interrupted, and
/// not counted towards the crash cap.
fn as_interrupted(ch: &mut crate::store::Changes) {
    for a in &mut ch.attempts {
        if a.outcome == crate::api::AttemptOutcome::Crashed {
            a.outcome = crate::api::AttemptOutcome::Interrupted;
            a.error = Some("stopped here: its leases could not be renewed in time".into());
        }
    }
    for s in &mut ch.steps {
        s.crashes = (s.crashes - 1).max(0);
    }
}
