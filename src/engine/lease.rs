//! Ownership: this process's owner record, lease renewal, and adoption of workflows whose
//! owner is gone.
//!
//! Invariant: an owner is considered dead only when its heartbeat is older than a lease, or —
//! on the same machine (same boot) — when its pid no longer exists; only then are its
//! workflows adopted, each with a compare-and-set on the epoch.

use std::sync::Arc;
use std::time::Duration;

use super::{Result, Shared, control, driver::StopReason};
use crate::store::{self, OwnerRow, now_ms};

/// Identifies this machine and boot, so pids are only compared within one boot.
pub(super) fn host_key() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "{}/{}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id")
    )
}

pub(super) async fn register(sh: &Arc<Shared>) -> Result<()> {
    let row = OwnerRow {
        id: sh.owner.clone(),
        pid: i64::from(std::process::id()),
        host: sh.host.clone(),
        heartbeat_at: 0,
        lease_ms: lease_ms(sh),
    };
    sh.store
        .write(move |ctx| store::register_owner(ctx, &row, now_ms()))
        .await?;
    Ok(())
}

pub(super) async fn unregister(sh: &Arc<Shared>) {
    let owner = sh.owner.clone();
    let _ = sh
        .store
        .write(move |ctx| store::remove_owner(ctx, &owner))
        .await;
}

fn lease_ms(sh: &Shared) -> i64 {
    sh.cfg.lease.as_millis() as i64
}

/// Renews leases, honours cancel requests from other processes, notices lost leases and
/// adopts orphans, every third of a lease.
pub(super) async fn tick_loop(sh: Arc<Shared>) {
    let every = (sh.cfg.lease / 3).max(Duration::from_millis(50));
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut cancel_poll = tokio::time::interval(CANCEL_POLL.min(every));
    cancel_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = sh.shutdown.cancelled() => return,
            _ = interval.tick() => {
                if let Err(e) = tick(&sh).await {
                    tracing::warn!(error = %e, "lease tick failed");
                }
            }
            _ = cancel_poll.tick(), if !sh.runs.lock().map(|r| r.is_empty()).unwrap_or(true) => {
                if let Err(e) = honour_cancels(&sh).await {
                    tracing::warn!(error = %e, "cancel poll failed");
                }
            }
        }
    }
}

/// How often a process with running workflows checks for cancel requests from other
/// processes (a cheap indexed read), so a cross-process cancel takes effect within it.
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// Stops the local drivers of workflows another process asked to cancel.
async fn honour_cancels(sh: &Arc<Shared>) -> Result<()> {
    let owner = sh.owner.clone();
    let cancels = sh
        .store
        .read(move |c| store::cancel_requests(c, &owner))
        .await?;
    for id in cancels {
        sh.stop_driver(&id, StopReason::Cancel);
    }
    Ok(())
}

async fn tick(sh: &Arc<Shared>) -> Result<()> {
    let owner = sh.owner.clone();
    let now = now_ms();
    let expires = now + lease_ms(sh);
    sh.store
        .write(move |ctx| store::renew_leases(ctx, &owner, expires, now))
        .await?;
    sh.renewed_at
        .store(now, std::sync::atomic::Ordering::Relaxed);
    let owner = sh.owner.clone();
    let (held, cancels) = sh
        .store
        .read(move |c| {
            let mut stmt = c.prepare_cached("SELECT id FROM workflows WHERE owner = ?1")?;
            let held: Vec<String> = stmt
                .query_map([&owner], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok((held, store::cancel_requests(c, &owner)?))
        })
        .await?;
    let local: Vec<String> = sh
        .runs
        .lock()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    for id in local {
        if !held.contains(&id) {
            tracing::warn!(thread_id = %id, "lease taken by another process; stopping here");
            sh.stop_driver(&id, StopReason::Fenced);
        }
    }
    for id in cancels {
        sh.stop_driver(&id, StopReason::Cancel);
    }
    if sh.cfg.adopt_orphans {
        adopt_orphans(sh).await?;
    }
    Ok(())
}

/// Whether `owner` (another process) is still alive.
pub(super) fn owner_alive(c: &rusqlite::Connection, sh: &Shared, owner: &str, now: i64) -> bool {
    let Ok(Some(o)) = store::find_owner(c, owner) else {
        return false;
    };
    // Judged by the owner's own lease: it renews every third of it.
    if o.heartbeat_at + o.lease_ms < now {
        return false;
    }
    if o.host == sh.host {
        return pid_alive(o.pid);
    }
    true
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
    let sh2 = sh.clone();
    Ok(sh
        .store
        .read(move |c| Ok(owner_alive(c, &sh2, &owner, now_ms())))
        .await?)
}

/// Adopts workflows that should be running but have no live owner.
pub(super) async fn adopt_orphans(sh: &Arc<Shared>) -> Result<Vec<String>> {
    if sh.shutdown.is_cancelled() {
        return Ok(Vec::new());
    }
    let me = sh.owner.clone();
    let sh2 = sh.clone();
    let candidates = sh
        .store
        .read(move |c| {
            let now = now_ms();
            let rows = store::adoptable(c, &me)?;
            Ok(rows
                .into_iter()
                .filter(|(_, owner, _, lease)| match owner {
                    None => true,
                    Some(o) => *lease < now || !owner_alive(c, &sh2, o, now),
                })
                .map(|(id, owner, epoch, _)| (id, owner, epoch))
                .collect::<Vec<_>>())
        })
        .await?;
    // Leftovers of each dead owner first, so no old attempt runs beside its re-run.
    let mut swept: Vec<String> = Vec::new();
    for p in candidates.iter().filter_map(|(_, prev, _)| prev.as_ref()) {
        if swept.contains(p) {
            continue;
        }
        let p2 = p.clone();
        let n = tokio::task::spawn_blocking(move || super::process::kill_leftovers(&p2))
            .await
            .unwrap_or(0);
        if n > 0 {
            tracing::info!(owner = %p, killed = n, "killed processes left by a dead owner");
        }
        swept.push(p.clone());
    }
    // All adoptions at once: queued together, they share the writer's commits.
    let results = futures::future::join_all(candidates.into_iter().map(|(id, prev, epoch)| {
        let sh = sh.clone();
        async move {
            let r = control::adopt(&sh, &id, prev.as_deref(), epoch).await;
            (id, prev, r)
        }
    }))
    .await;
    let mut adopted = Vec::new();
    for (id, prev, r) in results {
        match r {
            Ok((new_epoch, loaded)) => {
                tracing::info!(thread_id = %id, previous_owner = ?prev, "adopted workflow");
                sh.spawn_driver_with(&id, new_epoch, super::DriverInit::Loaded(loaded));
                adopted.push(id);
            }
            Err(super::EngineError::Store(store::StoreError::Fenced(_))) => {}
            Err(e) => tracing::warn!(thread_id = %id, error = %e, "cannot adopt workflow"),
        }
    }
    Ok(adopted)
}
