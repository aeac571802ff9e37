//! Taking a workflow's lease in the store: an adopter that judged a lease over claims it only
//! if no renewal has moved it since, so an owner that woke and renewed in between keeps it.

use baton::api::ThreadId;
use baton::store::{Claim, Durability, NewWorkflow, Store, StoreError};

use crate::util::*;

async fn open(sb: &Sandbox) -> Store {
    if sb.is_postgres() {
        let url = sb.db_arg().into_string().unwrap();
        Store::connect(&url, Durability::Normal).await.unwrap()
    } else {
        Store::open(&sb.db(), Durability::Normal).unwrap()
    }
}

fn claim(owner: &str, epoch: i64, seen: Option<i64>) -> Claim {
    Claim {
        owner: owner.into(),
        expected_epoch: epoch,
        lease_until: baton::api::now_ms() + 60_000,
        expected_lease: seen,
    }
}

on_both_backends! {
    fn a_claim_on_a_lease_that_a_renewal_moved_since_it_was_read_is_refused(sb: Sandbox) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = open(&sb).await;
            let id = ThreadId::from("01a2433a-0000-7000-8000-000000000001");
            let now = baton::api::now_ms();
            let record = NewWorkflow {
                id: id.clone(),
                name: None,
                definition: r#"{"steps":[]}"#.into(),
                step_ids: Vec::new(),
                owner: Some("a".into()),
                lease_expires_at: Some(now + 500),
            };
            store.insert_workflow(record, Default::default()).await.unwrap();
            // Another process reads it, judging the owner dead (its heartbeat is stale)...
            let seen = store.adoptable("b".into()).await.unwrap();
            let row = seen.iter().find(|a| a.id == id).expect("listed as adoptable");
            let (epoch, stored) = (row.epoch, row.lease_stored);
            // ...while the owner wakes and renews its lease.
            let renewed = store.renew("a".into(), now + 30_000, now).await.unwrap();
            assert!(renewed.held.contains(&id), "{renewed:?}");
            let refused = store
                .transition(id.clone(), claim("b", epoch, Some(stored)), |_| {
                    Ok((Default::default(), ()))
                })
                .await;
            assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
            let row = store.workflow(id.clone()).await.unwrap().unwrap();
            assert_eq!(
                (row.owner.as_deref(), row.epoch),
                (Some("a"), epoch),
                "the owner that renewed keeps its workflow"
            );
            // A claim on the lease as it now stands goes through.
            let now_seen = store.adoptable("b".into()).await.unwrap();
            let row = now_seen.iter().find(|a| a.id == id).unwrap();
            let taken = store
                .transition(id.clone(), claim("b", epoch, Some(row.lease_stored)), |_| {
                    Ok((Default::default(), ()))
                })
                .await;
            assert_eq!(taken.map(|t| t.0).ok(), Some(epoch + 1));
        });
    }
}
