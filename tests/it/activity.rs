//! A step's output and the store: activity is kept in memory and written with the step's end,
//! so an output line costs no commit (and no fsync) of its own; a step that runs on after its
//! output has its activity written on its own, a second later, by the lease's holder only.

use std::path::Path;

use baton::api::ThreadId;
use baton::engine::{Engine, EngineConfig, SubmitRequest};
use baton::store::{Durability, Fence, Store, StoreError};
use serde_json::{Value, json};

async fn engine(dir: &Path) -> Engine {
    let store = Store::open(&dir.join("baton.db"), Durability::Normal).unwrap();
    let cfg = EngineConfig {
        adopt_orphans: false,
        base_dir: dir.to_owned(),
        // Renewed every third of it: no renewal commit falls inside a test's count.
        lease: std::time::Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    Engine::start(store, cfg).await.unwrap()
}

async fn submit(e: &Engine, def: Value) -> ThreadId {
    let req = SubmitRequest {
        definition: Some(def),
        ..Default::default()
    };
    e.submit(req).await.unwrap().thread_id
}

async fn steps(e: &Engine, id: &ThreadId) -> Vec<Value> {
    let view = serde_json::to_value(e.status(id, 1000).await.unwrap()).unwrap();
    view["steps"].as_array().unwrap().clone()
}

fn chain(shell: &str) -> Value {
    json!({"steps": [
        {"id": "a", "shell": shell},
        {"id": "b", "shell": shell, "deps": ["a"]},
        {"id": "c", "shell": shell, "deps": ["b"]},
    ]})
}

/// The step's recorded activity is later than its start (a start counts as activity).
fn active_after_start(s: &Value) -> bool {
    match (s["last_activity_at"].as_str(), s["started_at"].as_str()) {
        (Some(active), Some(started)) => active > started,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_output_costs_no_commit_of_its_own_and_its_end_records_the_activity() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let mut commits = Vec::new();
    let mut last = None;
    for shell in ["sleep 0.05", "sleep 0.05; echo hi"] {
        let before = e.store().commit_count();
        let id = submit(&e, chain(shell)).await;
        e.wait_idle(&id).await;
        commits.push(e.store().commit_count() - before);
        last = Some(id);
    }
    assert_eq!(
        commits[1], commits[0],
        "a chain whose steps print costs the commits of a silent one"
    );
    for s in steps(&e, &last.unwrap()).await {
        assert_eq!(s["status"], "completed", "{s}");
        assert!(
            active_after_start(&s),
            "the output's activity not recorded: {s}"
        );
    }
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_runs_on_after_its_output_has_its_activity_written_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    // Every commit sends a notice: the activity's own write is awaited, not slept for.
    let mut feed = e.store().changes();
    let id = submit(
        &e,
        json!({"steps": [{"id": "long", "shell": "sleep 0.05; echo started; sleep 60"}]}),
    )
    .await;
    let wait = async {
        loop {
            // Read back from the store, not from the driver's memory.
            let s = steps(&e, &id).await.remove(0);
            if active_after_start(&s) {
                assert_eq!(s["status"], "running", "{s}");
                return;
            }
            feed.recv().await.expect("the store is open");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .expect("no activity written while the step runs");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_write_by_a_process_that_does_not_hold_the_lease_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let id = submit(&e, json!({"steps": [{"id": "long", "shell": "sleep 60"}]})).await;
    let before = steps(&e, &id).await.remove(0);
    // A former owner, frozen while another process adopted the workflow, wakes and writes.
    let stale = Fence {
        id: id.clone(),
        owner: "a-former-owner".into(),
        epoch: 0,
    };
    let err = e
        .store()
        .record_activity(stale, "long".into(), i64::MAX / 2)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    let after = steps(&e, &id).await.remove(0);
    assert_eq!(after["last_activity_at"], before["last_activity_at"]);
    e.shutdown().await;
}
