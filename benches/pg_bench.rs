//! baton on PostgreSQL: prints numbers and same-run ratios, asserts nothing.
//!
//! `BATON_BENCH_POSTGRES=URL cargo bench --bench pg_bench` (or `BATON_TEST_POSTGRES`; a URL of
//! any database a superuser can connect to, e.g. from `scripts/pg-cluster.sh start`). Each
//! scenario gets a fresh database on that server. Scenarios:
//!
//! - `calib`: a raw PostgreSQL commit (one ~200-byte row, autocommit, `synchronous_commit=on`)
//!   on the same server — the floor the step overhead is divided by.
//! - `engine`: sequential 10-step no-op chains in one process: per-step overhead and commits
//!   per step boundary.
//! - `workers`: 100 concurrent 10-step no-op workflows submitted by a process that does not
//!   execute, run by 1, 2 and 4 worker engines (each its own store: own connections, own
//!   group commit), capacity 32 workflows each.
//! - `notify`: commit-to-other-process visibility: one store commits, another store's change
//!   feed (LISTEN/NOTIFY) reports it; p50/p95.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use baton::api::{ThreadId, WorkflowStatus};
use baton::engine::{Engine, EngineConfig, SubmitRequest};
use baton::store::{Changes, Durability, NewWorkflow, Store};
use serde_json::{Value, json};

#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

fn with_dbname(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after = base.find("://").map(|i| i + 3).unwrap_or(0);
    let end = base[after..]
        .find('/')
        .map(|i| after + i)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..end])
}

async fn fresh_db(admin: &str, name: &str) -> String {
    let (c, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(c);
    let _ = driver.await;
    with_dbname(admin, name)
}

fn chain(n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            if i == 0 {
                json!({"id": format!("s{i}"), "run": ["true"]})
            } else {
                json!({"id": format!("s{i}"), "deps": [format!("s{}", i - 1)], "run": ["true"]})
            }
        })
        .collect();
    json!({"name": format!("chain-{n}"), "steps": steps})
}

async fn engine_on(url: &str, execute: bool, adopt: bool, max: usize) -> Engine {
    let store = Store::connect(url, Durability::Full).await.unwrap();
    let cfg = EngineConfig {
        noop_executor: true,
        adopt_orphans: adopt,
        execute,
        max_concurrent_steps: max,
        base_dir: std::env::temp_dir(),
        ..EngineConfig::default()
    };
    Engine::start(store, cfg).await.unwrap()
}

async fn stop(e: Engine) {
    e.shutdown().await;
    e.store().close();
}

async fn calib(admin: &str) -> f64 {
    let url = fresh_db(admin, "baton_bench_calib").await;
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(
        "SET synchronous_commit = on; CREATE TABLE calib (id bigserial PRIMARY KEY, body text)",
    )
    .await
    .unwrap();
    let body = "x".repeat(200);
    let stmt = c
        .prepare("INSERT INTO calib (body) VALUES ($1)")
        .await
        .unwrap();
    let mut s = Samples::default();
    for _ in 0..300 {
        let t = Instant::now();
        c.execute(&stmt, &[&body]).await.unwrap();
        s.push(t.elapsed());
    }
    let p50 = s.pct(0.5);
    println!(
        "calib   raw PostgreSQL commit (autocommit insert, synchronous_commit=on): p50 {p50:.3} ms, p95 {:.3} ms",
        s.pct(0.95)
    );
    p50
}

async fn engine(admin: &str, floor: f64) {
    let url = fresh_db(admin, "baton_bench_engine").await;
    let e = engine_on(&url, true, false, 32).await;
    let def = chain(10);
    let run = |e: Engine, def: Value| async move {
        let t = Instant::now();
        let s = e
            .submit(SubmitRequest {
                definition: Some(def),
                ..Default::default()
            })
            .await
            .unwrap();
        e.wait_idle(&s.thread_id).await;
        t.elapsed()
    };
    for _ in 0..3 {
        run(e.clone(), def.clone()).await;
    }
    let c0 = e.store().commit_count();
    let mut per_step = Samples::default();
    let n = 30;
    for _ in 0..n {
        let d = run(e.clone(), def.clone()).await;
        per_step.push(d / 10);
    }
    let commits = (e.store().commit_count() - c0) as f64 / (n * 10) as f64;
    stop(e).await;
    let p50 = per_step.pct(0.5);
    println!(
        "engine  10-step no-op chain, sequential ({n}): per-step p50 {p50:.3} ms, p95 {:.3} ms = {:.2}x a raw commit; {commits:.2} commits per step boundary",
        per_step.pct(0.95),
        p50 / floor
    );
}

async fn completed(store: &Store) -> i64 {
    store
        .metric_counts()
        .await
        .map(|m| {
            m.workflows
                .iter()
                .filter(|(s, _)| *s == WorkflowStatus::Completed)
                .map(|(_, n)| *n)
                .sum()
        })
        .unwrap_or(0)
}

async fn workers(admin: &str) {
    let def = chain(10);
    let mut base = None;
    for n in [1usize, 2, 4] {
        let url = fresh_db(admin, &format!("baton_bench_workers{n}")).await;
        let submitter = engine_on(&url, false, false, 32).await;
        let mut ws = Vec::new();
        for _ in 0..n {
            ws.push(engine_on(&url, true, true, 32).await);
        }
        let mut walls = Vec::new();
        let mut commits = 0u64;
        let rounds = 3;
        for round in 1..=rounds {
            let c0: u64 = ws.iter().map(|w| w.store().commit_count()).sum();
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..100 {
                let (e, d) = (submitter.clone(), def.clone());
                set.spawn(async move {
                    e.submit(SubmitRequest {
                        definition: Some(d),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                });
            }
            while set.join_next().await.is_some() {}
            while completed(submitter.store()).await < 100 * round {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            walls.push(t.elapsed());
            commits += ws.iter().map(|w| w.store().commit_count()).sum::<u64>() - c0;
        }
        let wall: Duration = walls.iter().sum();
        let tput = (100 * rounds) as f64 / wall.as_secs_f64();
        let per_boundary = commits as f64 / (100 * rounds * 10) as f64;
        let ratio = base.map(|b: f64| tput / b).unwrap_or(1.0);
        base.get_or_insert(tput);
        println!(
            "workers {n} worker(s), 100 concurrent 10-step workflows x {rounds}: {tput:.0} wf/s ({:.0} steps/s), {ratio:.2}x one worker; {per_boundary:.3} commits per step boundary",
            tput * 10.0
        );
        for w in ws {
            stop(w).await;
        }
        stop(submitter).await;
    }
}

async fn notify(admin: &str) {
    let url = fresh_db(admin, "baton_bench_notify").await;
    let a = Store::connect(&url, Durability::Full).await.unwrap();
    let b = Store::connect(&url, Durability::Full).await.unwrap();
    let mut feed = b.changes();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = Samples::default();
    for _ in 0..200 {
        // Drain what came before (the listener's own start, earlier notices).
        while tokio::time::timeout(Duration::from_millis(2), feed.recv())
            .await
            .is_ok()
        {}
        let id = ThreadId::from(uuid::Uuid::now_v7().to_string().as_str());
        a.insert_workflow(
            NewWorkflow {
                id,
                name: None,
                definition: "{}".into(),
                step_ids: vec!["a".into()],
                owner: None,
                lease_expires_at: None,
            },
            Changes::default(),
        )
        .await
        .unwrap();
        let committed = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), feed.recv())
            .await
            .unwrap();
        s.push(committed.elapsed());
    }
    println!(
        "notify  commit acknowledged in one process -> change notice in another (LISTEN/NOTIFY, 200): p50 {:.3} ms, p95 {:.3} ms",
        s.pct(0.5),
        s.pct(0.95)
    );
    a.close();
    b.close();
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pg_bench: skipped (run it with `cargo bench --bench pg_bench`)");
        return;
    }
    let Some(admin) = std::env::var("BATON_BENCH_POSTGRES")
        .or_else(|_| std::env::var("BATON_TEST_POSTGRES"))
        .ok()
        .filter(|s| !s.is_empty())
    else {
        eprintln!(
            "pg_bench: set BATON_BENCH_POSTGRES (e.g. \"$(scripts/pg-cluster.sh start)\"); nothing measured"
        );
        return;
    };
    let want: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let on = |s: &str| want.is_empty() || want.iter().any(|w| w == s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let floor = calib(&admin).await;
        if on("engine") {
            engine(&admin, floor).await;
        }
        if on("workers") {
            workers(&admin).await;
        }
        if on("notify") {
            notify(&admin).await;
        }
    });
}
