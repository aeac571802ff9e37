//! Process ownership: the owners' rows, renewing an owner's leases, fences, the cancel
//! requests an owner must act on, and the workflows another process may adopt.

use std::sync::Arc;

use super::{Postgres, queries};
use crate::api::ThreadId;
use crate::store::{Adoptable, Fence, OwnerRow, Renewal, Result};

impl Postgres {
    pub(in crate::store) async fn register_owner(&self, owner: OwnerRow) -> Result<()> {
        let owner = Arc::new(owner);
        self.write(move |tx| {
            let owner = owner.clone();
            async move { queries::register_owner(&tx, &owner).await }
        })
        .await
    }

    pub(in crate::store) async fn remove_owner(&self, id: String) -> Result<()> {
        let id = Arc::new(id);
        self.write(move |tx| {
            let id = id.clone();
            async move { queries::remove_owner(&tx, &id).await }
        })
        .await
    }

    /// Extends the owner's leases by its lease length from the database's clock now.
    pub(in crate::store) async fn renew(
        &self,
        owner: String,
        lease_until: i64,
        now: i64,
    ) -> Result<Renewal> {
        let lease_ms = (lease_until - now).max(0);
        let o = Arc::new(owner.clone());
        self.write(move |tx| {
            let o = o.clone();
            async move { queries::renew_leases(&tx, &o, lease_ms).await }
        })
        .await?;
        self.read(|c| async move {
            let (held, ended) = queries::held_by(&c, &owner).await?;
            Ok(Renewal {
                held: held.into_iter().map(ThreadId::from).collect(),
                ended: ended.into_iter().map(ThreadId::from).collect(),
                cancels: queries::cancel_requests(&c, &owner)
                    .await?
                    .into_iter()
                    .map(ThreadId::from)
                    .collect(),
            })
        })
        .await
    }

    pub(in crate::store) async fn check_fence(&self, fence: Fence) -> Result<()> {
        self.read(|c| async move {
            queries::check_fence(&c, &fence.id, &fence.owner, fence.epoch).await
        })
        .await
    }

    pub(in crate::store) async fn cancel_requests(&self, owner: String) -> Result<Vec<ThreadId>> {
        self.read(|c| async move {
            Ok(queries::cancel_requests(&c, &owner)
                .await?
                .into_iter()
                .map(ThreadId::from)
                .collect())
        })
        .await
    }

    pub(in crate::store) async fn owner(&self, id: String) -> Result<Option<OwnerRow>> {
        self.read(|c| async move { queries::find_owner(&c, &id).await })
            .await
    }

    pub(in crate::store) async fn adoptable(&self, me: String) -> Result<Vec<Adoptable>> {
        self.read(|c| async move { queries::adoptable(&c, &me).await })
            .await
    }
}
