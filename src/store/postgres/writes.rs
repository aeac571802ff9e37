//! The writes of a workflow's life: inserting it, committing its step boundaries, transitions
//! under a freshly taken lease, and what is recorded beside them (sessions, activity, cancel
//! requests, answers). Each is one job for the writer.

use std::sync::{Arc, Mutex};

use super::{Postgres, queries};
use crate::api::{ThreadId, now_ms};
use crate::store::{Changes, Claim, Fence, NewWorkflow, Result, Snapshot, StoreError};

impl Postgres {
    pub(in crate::store) async fn insert_workflow(
        &self,
        new: NewWorkflow,
        first: Changes,
    ) -> Result<()> {
        if new.owner.is_none() && !first.is_empty() {
            return Err(StoreError::Corrupt(
                "an unowned workflow cannot be stored with changes".into(),
            ));
        }
        // The lease runs from the database's clock when the write commits (it may be retried
        // after a lost connection), for the length the caller asked for.
        let lease_ms = new.lease_expires_at.map(|l| (l - now_ms()).max(0));
        let (new, first) = (Arc::new(new), Arc::new(first));
        self.write(move |tx| {
            let (new, first) = (new.clone(), first.clone());
            async move {
                queries::insert_workflow(&tx, &new, lease_ms).await?;
                if let Some(owner) = &new.owner {
                    let fence = Fence {
                        id: new.id.clone(),
                        owner: owner.clone(),
                        epoch: 1,
                    };
                    queries::apply(&tx, &fence, &first).await?;
                }
                Ok(())
            }
        })
        .await
    }

    pub(in crate::store) async fn commit(&self, fence: Fence, changes: Changes) -> Result<()> {
        let (fence, changes) = (Arc::new(fence), Arc::new(changes));
        self.write(move |tx| {
            let (fence, changes) = (fence.clone(), changes.clone());
            async move { queries::apply(&tx, &fence, &changes).await }
        })
        .await
    }

    pub(in crate::store) async fn transition<R, F>(
        &self,
        id: ThreadId,
        claim: Claim,
        f: F,
    ) -> Result<(i64, Snapshot, R)>
    where
        R: Send + 'static,
        F: FnOnce(&Snapshot) -> Result<(Changes, R)> + Send + 'static,
    {
        // `f` runs once; a batch run again after a lost connection reports a conflict
        // instead of deciding twice.
        let f = Arc::new(Mutex::new(Some(f)));
        let lease_ms = (claim.lease_until - now_ms()).max(0);
        let (id, claim) = (Arc::new(id), Arc::new(claim));
        self.write(move |tx| {
            let (f, id, claim) = (f.clone(), id.clone(), claim.clone());
            async move {
                let epoch = queries::take_lease(&tx, &claim, &id, lease_ms).await?;
                let before = queries::snapshot(&tx.c, &id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("workflow {id} vanished")))?;
                let decide = f.lock().ok().and_then(|mut g| g.take()).ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "workflow {id}: the store's connection was lost mid-transition; try again"
                    ))
                })?;
                let (changes, r) = decide(&before)?;
                let fence = Fence {
                    id: (*id).clone(),
                    owner: claim.owner.clone(),
                    epoch,
                };
                queries::apply(&tx, &fence, &changes).await?;
                let after = queries::snapshot(&tx.c, &id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("workflow {id} vanished")))?;
                Ok((epoch, after, Arc::new(Mutex::new(Some(r)))))
            }
        })
        .await
        .and_then(|(epoch, after, r)| {
            let r = r
                .lock()
                .ok()
                .and_then(|mut g| g.take())
                .ok_or_else(|| StoreError::Corrupt("a transition answered twice".into()))?;
            Ok((epoch, after, r))
        })
    }

    pub(in crate::store) async fn record_session(
        &self,
        fence: Fence,
        step_id: String,
        attempt: i64,
        session_id: String,
    ) -> Result<()> {
        let args = Arc::new((fence, step_id, session_id));
        self.write(move |tx| {
            let args = args.clone();
            async move {
                let (fence, step_id, session_id) = &*args;
                queries::check_fence(&tx.c, &fence.id, &fence.owner, fence.epoch).await?;
                queries::set_session(&tx, &fence.id, step_id, attempt, session_id).await
            }
        })
        .await
    }

    pub(in crate::store) async fn record_activity(
        &self,
        fence: Fence,
        step_id: String,
        at: i64,
    ) -> Result<()> {
        let args = Arc::new((fence, step_id));
        self.write(move |tx| {
            let args = args.clone();
            async move {
                let (fence, step_id) = &*args;
                queries::check_fence(&tx.c, &fence.id, &fence.owner, fence.epoch).await?;
                queries::set_activity(&tx, &fence.id, step_id, at).await
            }
        })
        .await
    }

    pub(in crate::store) async fn request_cancel(&self, id: ThreadId) -> Result<()> {
        let id = Arc::new(id);
        self.write(move |tx| {
            let id = id.clone();
            async move { queries::request_cancel(&tx, &id).await }
        })
        .await
    }

    pub(in crate::store) async fn record_answer(
        &self,
        id: ThreadId,
        step_id: String,
        answer: String,
    ) -> Result<bool> {
        let args = Arc::new((id, step_id, answer));
        self.write(move |tx| {
            let args = args.clone();
            async move { queries::record_answer(&tx, &args.0, &args.1, &args.2).await }
        })
        .await
    }
}
