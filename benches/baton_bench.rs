//! baton's benchmark harness (issue 6): prints numbers and same-run ratios, asserts nothing.
//!
//! `cargo bench --bench baton_bench` runs every scenario; name scenarios to run a subset,
//! e.g. `cargo bench --bench baton_bench -- calib engine`. Scenarios:
//!
//! - `calib`: a raw rusqlite commit (~200-byte row, WAL + synchronous=FULL) and a spawn of
//!   `/bin/true` — the floors every other figure is divided by.
//! - `engine` (target 1): sequential 10-step and 100-step chains, in-process, no-op executor.
//! - `command` (target 2): a 100-step chain of `/bin/true`, real processes, in-process engine.
//! - `concurrency` (target 3): 100 concurrent 10-step no-op workflows vs sequential.
//! - `api` (targets 4, 5a): the real `baton serve` over stdio on a store of 10,000
//!   workflows: start-up, `invoke_async`, `invoke_status`, `workflow_monitor`.
//! - `recovery` (target 5b): `kill -9` with 100 running steps, time until all are re-run.
//! - `memory` (target 6): idle RSS and RSS with 1,000 active workflows (real binary).
//! - `growth` (target 6): database bytes per 10-step and 50-step workflow.
//! - `scale` (issue 14, opt-in, minutes; `scale-active` and `scale-stored` are its halves): 10,000 workflows active in one server; a store of
//!   1,000,000 finished workflows (start-up, `invoke_status`, `workflow_monitor`, adoption).
//!
//! Everything runs in `BATON_BENCH_DIR` (default: the system temp dir), which must be a real
//! disk for the fsync figures to mean anything. With `BATON_BENCH_JSON=path` the figures are
//! also written as JSON (used by `bench/langgraph/run.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use baton::engine::{Engine, EngineConfig, SubmitRequest};
use baton::store::{Durability, Store};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_baton");
const ALL: &[&str] = &[
    "calib",
    "engine",
    "command",
    "concurrency",
    "api",
    "recovery",
    "memory",
    "growth",
    "flow",
    "xproc",
];
/// Run only when named: they take minutes and gigabytes.
const OPT_IN: &[&str] = &["scale", "scale-active", "scale-stored"];

#[path = "baton_bench/scale.rs"]
mod scale;

// ---------------------------------------------------------------- statistics and report

/// Millisecond samples.
#[derive(Default, Clone)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }
    fn p50(&self) -> f64 {
        self.pct(0.50)
    }
    fn p95(&self) -> f64 {
        self.pct(0.95)
    }
}

struct Report {
    rows: Vec<[String; 4]>,
    values: BTreeMap<String, f64>,
    dir: PathBuf,
}

impl Report {
    /// Records a figure; `verdict` is `Some(met)` for figures a target applies to.
    fn row(&mut self, what: &str, value: String, target: &str, verdict: Option<bool>) {
        let v = match verdict {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!("  {what:<58} {value:>28}  {target:<30} {v}");
        self.rows
            .push([what.to_owned(), value, target.to_owned(), v.to_owned()]);
    }
    fn set(&mut self, key: &str, v: f64) {
        self.values.insert(key.to_owned(), v);
    }
    fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
    fn section(&self, title: &str) {
        println!("\n== {title}");
    }
}

fn ms(v: f64) -> String {
    format!("{v:.3} ms")
}

fn p50_95(s: &Samples) -> String {
    format!("p50 {:.3} / p95 {:.3} ms", s.p50(), s.p95())
}

// ---------------------------------------------------------------- main

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("baton_bench: skipped (run it with `cargo bench --bench baton_bench`)");
        return;
    }
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scenarios: Vec<&str> = if wanted.is_empty() {
        ALL.to_vec()
    } else {
        for w in &wanted {
            assert!(
                ALL.contains(&w.as_str()) || OPT_IN.contains(&w.as_str()),
                "unknown scenario {w:?}; known: {ALL:?} and {OPT_IN:?}"
            );
        }
        ALL.iter()
            .chain(OPT_IN)
            .copied()
            .filter(|s| wanted.iter().any(|w| w == s))
            .collect()
    };
    let base = std::env::var_os("BATON_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("baton-bench-")
        .tempdir_in(&base)
        .unwrap();
    print_machine(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut r = Report {
        rows: Vec::new(),
        values: BTreeMap::new(),
        dir: dir.path().to_owned(),
    };
    // Every ratio needs the calibration of this run.
    calib(&mut r);
    for s in scenarios {
        let started = Instant::now();
        match s {
            "calib" => {}
            "engine" => rt.block_on(engine(&mut r)),
            "command" => rt.block_on(command(&mut r)),
            "concurrency" => rt.block_on(concurrency(&mut r)),
            "api" => api(&mut r, &rt),
            "recovery" => recovery(&mut r),
            "memory" => memory(&mut r),
            "growth" => rt.block_on(growth(&mut r)),
            "flow" => rt.block_on(flow(&mut r)),
            "xproc" => xproc(&mut r),
            "scale" => scale::scale(&mut r, &rt),
            "scale-active" => scale::active(&mut r),
            "scale-stored" => scale::stored(&mut r, &rt),
            _ => unreachable!(),
        }
        println!("  ({s} took {:.1} s)", started.elapsed().as_secs_f64());
    }
    println!("\n== summary\n");
    println!("| figure | value | target | verdict |\n|---|---|---|---|");
    for [a, b, c, d] in &r.rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
    if let Some(path) = std::env::var_os("BATON_BENCH_JSON") {
        std::fs::write(&path, serde_json::to_string_pretty(&r.values).unwrap()).unwrap();
    }
}

fn print_machine(dir: &Path) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let df = Command::new("df")
        .args(["--output=source,fstype,target"])
        .arg(dir)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    println!("baton benchmarks (numbers from a shared, possibly busy machine: compare ratios)");
    println!(
        "  cpu: {cpu} x {cores} | kernel {} | bench dir {} on {df}",
        kernel.trim(),
        dir.display()
    );
    println!("  binary: {BIN}");
}

// ---------------------------------------------------------------- calibration

fn calib(r: &mut Report) {
    r.section("calibration (same run)");
    let path = r.dir.join("calib.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |x| x.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = FULL; CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .unwrap();
    let body = "x".repeat(200);
    let mut commit = Samples::default();
    for i in 0..320 {
        let t = Instant::now();
        conn.execute("INSERT INTO t (body) VALUES (?1)", [&body])
            .unwrap();
        if i >= 20 {
            commit.push(t.elapsed());
        }
    }
    drop(conn);
    let mut spawn = Samples::default();
    for i in 0..220 {
        let t = Instant::now();
        let st = Command::new("/bin/true").status().unwrap();
        assert!(st.success());
        if i >= 20 {
            spawn.push(t.elapsed());
        }
    }
    // Baton's executor sets PR_SET_PDEATHSIG in a pre_exec hook, which makes std/tokio fork
    // instead of posix_spawn; this is the floor for that kind of spawn.
    let mut fork_spawn = Samples::default();
    for i in 0..220 {
        let mut cmd = Command::new("/bin/true");
        // SAFETY: the hook makes no calls at all; it only forces the fork+exec path.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| Ok(()));
        }
        let t = Instant::now();
        assert!(cmd.status().unwrap().success());
        if i >= 20 {
            fork_spawn.push(t.elapsed());
        }
    }
    r.set("raw_commit_p50_ms", commit.p50());
    r.set("spawn_true_p50_ms", spawn.p50());
    r.row(
        "raw SQLite commit, 200-byte row, WAL+FULL (300)",
        p50_95(&commit),
        "(floor)",
        None,
    );
    r.row(
        "Command::status(/bin/true) (200)",
        p50_95(&spawn),
        "(floor)",
        None,
    );
    r.row(
        "   the same with a pre_exec hook (fork+exec) (200)",
        p50_95(&fork_spawn),
        "",
        None,
    );
}

// ---------------------------------------------------------------- in-process helpers

fn chain(name: &str, n: usize, argv: &[&str]) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            if i == 0 {
                json!({"id": format!("s{i}"), "run": argv})
            } else {
                json!({"id": format!("s{i}"), "deps": [format!("s{}", i - 1)], "run": argv})
            }
        })
        .collect();
    json!({"name": name, "steps": steps})
}

async fn start_engine(db: &Path, durability: Durability, noop: bool, max_steps: usize) -> Engine {
    let store = Store::open(db, durability).unwrap();
    let cfg = EngineConfig {
        noop_executor: noop,
        adopt_orphans: false,
        max_concurrent_steps: max_steps,
        base_dir: db.parent().unwrap().to_owned(),
        ..EngineConfig::default()
    };
    Engine::start(store, cfg).await.unwrap()
}

async fn stop_engine(e: Engine) {
    e.shutdown().await;
    e.store().close();
}

/// Submits a workflow and waits until its driver has stopped; returns the latency.
/// User plus system CPU time of this process's threads so far, in ms (children excluded).
fn own_cpu_ms() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e3 + t.tv_usec() as f64 / 1e3;
    ms(u.user_time()) + ms(u.system_time())
}

async fn run_one(e: &Engine, def: &Value) -> Duration {
    let t = Instant::now();
    let s = e
        .submit(SubmitRequest {
            definition: Some(def.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    e.wait_idle(&s.thread_id).await;
    t.elapsed()
}

/// Runs `n` workflows at once; returns (wall time, per-workflow latencies).
async fn run_many(e: &Engine, def: &Value, n: usize) -> (Duration, Samples) {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (e, d) = (e.clone(), def.clone());
        set.spawn(async move { run_one(&e, &d).await });
    }
    let mut lat = Samples::default();
    while let Some(d) = set.join_next().await {
        lat.push(d.unwrap());
    }
    (t.elapsed(), lat)
}

// ---------------------------------------------------------------- target 1

async fn engine(r: &mut Report) {
    r.section("target 1: engine overhead per step (no-op executor, durable commits)");
    let db = r.dir.join("engine.db");
    let e = start_engine(&db, Durability::Full, true, 32).await;
    let ten = chain("chain-10", 10, &["true"]);
    // WAL frames (pages) written per commit, before the first auto-checkpoint (1000 pages).
    let wal = || std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len());
    let (w0, k0) = (wal(), e.store().commit_count());
    for _ in 0..5 {
        run_one(&e, &ten).await;
    }
    let frames = (wal() - w0) as f64 / 4120.0 / (e.store().commit_count() - k0) as f64;
    let c0 = e.store().commit_count();
    let mut wf = Samples::default();
    let n = 60;
    for _ in 0..n {
        wf.push(run_one(&e, &ten).await);
    }
    let commits = (e.store().commit_count() - c0) as f64 / n as f64;
    let hundred = chain("chain-100", 100, &["true"]);
    let mut wf100 = Samples::default();
    for _ in 0..8 {
        wf100.push(run_one(&e, &hundred).await);
    }
    stop_engine(e).await;
    // The same with synchronous=NORMAL (no fsync per commit): the engine's CPU and
    // scheduling cost per step, without the disk.
    let e = start_engine(
        &r.dir.join("engine-normal.db"),
        Durability::Normal,
        true,
        32,
    )
    .await;
    for _ in 0..5 {
        run_one(&e, &ten).await;
    }
    let mut wf_normal = Samples::default();
    for _ in 0..n {
        wf_normal.push(run_one(&e, &ten).await);
    }
    stop_engine(e).await;
    let raw = r.get("raw_commit_p50_ms").unwrap();
    let per_step = wf.p50() / 10.0;
    let per_step100 = wf100.p50() / 100.0;
    r.set("baton_seq_ms_per_wf", wf.p50());
    r.set("baton_seq_ms_per_step", per_step);
    r.set("baton_commits_per_wf", commits);
    r.row(
        "10-step no-op workflow, sequential (60)",
        p50_95(&wf),
        "",
        None,
    );
    r.row(
        "commits per 10-step workflow",
        format!("{commits:.1}"),
        "11 (1 per boundary)",
        None,
    );
    r.row(
        "WAL frames (4 KiB pages) written per commit",
        format!("{frames:.1}"),
        "raw commit: 1",
        None,
    );
    r.row(
        "T1 per step (10-step p50 / 10)",
        format!("{} = {:.2}x commit", ms(per_step), per_step / raw),
        "<= 1.5x raw commit",
        Some(per_step / raw <= 1.5),
    );
    r.row(
        "   per step without fsync (synchronous=NORMAL, 10-step)",
        ms(wf_normal.p50() / 10.0),
        "",
        None,
    );
    r.row(
        "   per step in a 100-step chain (p50 / 100)",
        format!("{} = {:.2}x commit", ms(per_step100), per_step100 / raw),
        "<= 1.5x raw commit",
        Some(per_step100 / raw <= 1.5),
    );
}

// ---------------------------------------------------------------- target 2

async fn command(r: &mut Report) {
    r.section("target 2: 100-step chain of /bin/true vs 100 spawns");
    let e = start_engine(&r.dir.join("command.db"), Durability::Full, false, 32).await;
    let def = chain("true-100", 100, &["/bin/true"]);
    run_one(&e, &def).await;
    let mut chain_t = Samples::default();
    let mut spawn_t = Samples::default();
    // This process's own CPU time (children excluded), steadier than wall time here.
    let (mut chain_cpu, mut spawn_cpu) = (0.0, 0.0);
    for _ in 0..5 {
        let (t, c) = (Instant::now(), own_cpu_ms());
        for _ in 0..100 {
            Command::new("/bin/true").status().unwrap();
        }
        spawn_t.push(t.elapsed());
        spawn_cpu += own_cpu_ms() - c;
        let c = own_cpu_ms();
        chain_t.push(run_one(&e, &def).await);
        chain_cpu += own_cpu_ms() - c;
    }
    stop_engine(e).await;
    r.row(
        "   CPU of this process per step / per bare spawn (children excluded)",
        format!("{:.3} / {:.3} ms", chain_cpu / 500.0, spawn_cpu / 500.0),
        "",
        None,
    );
    let ratio = chain_t.p50() / spawn_t.p50();
    r.row(
        "100 x Command::status(/bin/true) (5)",
        p50_95(&spawn_t),
        "",
        None,
    );
    r.row(
        "100-step chain of /bin/true (5)",
        p50_95(&chain_t),
        "",
        None,
    );
    r.row(
        "T2 chain / spawns",
        format!("{ratio:.2}x"),
        "<= 1.5x (issue 14)",
        Some(ratio <= 1.5),
    );
    let raw = r.get("raw_commit_p50_ms").unwrap();
    let per_step = chain_t.p50() / 100.0;
    let spawn = spawn_t.p50() / 100.0;
    let overhead = per_step - spawn;
    r.set("baton_cmd_overhead_ms", overhead);
    r.row(
        "   per step: chain vs spawn + raw commit",
        format!("{:.3} vs {:.3} ms", per_step, spawn + raw),
        "",
        None,
    );
    r.row(
        "T2 overhead above the spawn / raw commit",
        format!("{overhead:.3} ms = {:.2}x", overhead / raw),
        "<= 1.3x (issue 14)",
        Some(overhead / raw <= 1.3),
    );
}

// ---------------------------------------------------------------- target 3

async fn concurrency(r: &mut Report) {
    r.section("target 3: 100 concurrent 10-step no-op workflows");
    let ten = chain("chain-10", 10, &["true"]);
    for max in [32usize, 1024] {
        let e = start_engine(
            &r.dir.join(format!("conc-{max}.db")),
            Durability::Full,
            true,
            max,
        )
        .await;
        for _ in 0..3 {
            run_one(&e, &ten).await;
        }
        let mut seq = Samples::default();
        let t = Instant::now();
        for _ in 0..30 {
            seq.push(run_one(&e, &ten).await);
        }
        let seq_tput = 30.0 / t.elapsed().as_secs_f64();
        let c0 = e.store().commit_count();
        let mut lat = Samples::default();
        let mut wall = Duration::ZERO;
        let rounds = 3;
        for _ in 0..rounds {
            let (w, l) = run_many(&e, &ten, 100).await;
            wall += w;
            lat.0.extend(l.0);
        }
        let commits = (e.store().commit_count() - c0) as f64 / (100 * rounds) as f64;
        stop_engine(e).await;
        let tput = (100 * rounds) as f64 / wall.as_secs_f64();
        let gain = tput / seq_tput;
        let label = if max == 32 {
            "default --max-concurrent-steps 32"
        } else {
            "--max-concurrent-steps 1024"
        };
        r.row(&format!("[{label}]"), String::new(), "", None);
        r.row(
            "   sequential throughput (30)",
            format!("{seq_tput:.0} wf/s"),
            "",
            None,
        );
        r.row(
            "   100 concurrent throughput (3 rounds)",
            format!("{tput:.0} wf/s"),
            "",
            None,
        );
        r.row(
            "   commits per workflow when concurrent",
            format!("{commits:.2}"),
            "",
            None,
        );
        r.row(
            "   T3 throughput gain",
            format!("{gain:.2}x"),
            ">= 3x",
            Some(gain >= 3.0),
        );
        r.row(
            "   T3 per-workflow latency when concurrent",
            p50_95(&lat),
            "p95 < 100 ms",
            Some(lat.p95() < 100.0),
        );
        if max == 32 {
            r.set("baton_seq_wf_per_s", seq_tput);
            r.set("baton_conc100_wf_per_s", tput);
            r.set("baton_conc100_p95_ms", lat.p95());
            r.set("baton_conc100_commits_per_wf", commits);
        }
    }
}

// ---------------------------------------------------------------- target 6 (store)

// ---------------------------------------------------------------- control flow

/// A 1,000-item `for_each` of `/bin/true`, and a 100-iteration `repeat` of two `true`
/// steps, against the spawns and commits they cannot avoid, in the same run.
async fn flow(r: &mut Report) {
    r.section("control flow: 1,000-item for_each, 100-iteration repeat");
    let db = r.dir.join("flow.db");
    let e = start_engine(&db, Durability::Full, false, 32).await;
    let fan = json!({"name": "fan", "steps": [
        {"id": "f", "for_each": serde_json::to_string(&(0..1000).collect::<Vec<u32>>()).unwrap(),
         "run": ["/bin/true"]}
    ]});
    run_one(&e, &fan).await;
    let mut spawns = Samples::default();
    let mut fans = Samples::default();
    let mut commits = 0.0;
    let mut bytes = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..1000 {
            Command::new("/bin/true").status().unwrap();
        }
        spawns.push(t.elapsed());
        let (c0, b0) = (e.store().commit_count(), file_size(&db));
        fans.push(run_one(&e, &fan).await);
        commits = (e.store().commit_count() - c0) as f64 / 1000.0;
        bytes = (file_size(&db) - b0) as f64 / 1000.0;
    }
    r.row(
        "1,000 x Command::status(/bin/true) (3)",
        p50_95(&spawns),
        "",
        None,
    );
    r.row(
        "for_each of 1,000 x /bin/true, 32 at once (3)",
        p50_95(&fans),
        "",
        None,
    );
    r.row(
        "   for_each / 1,000 sequential spawns",
        format!("{:.2}x", fans.p50() / spawns.p50()),
        "",
        None,
    );
    r.row("   commits per instance", format!("{commits:.2}"), "", None);
    r.row(
        "   store bytes per instance",
        format!("{bytes:.0}"),
        "",
        None,
    );
    let looped = json!({"name": "loop", "steps": [
        {"id": "l", "repeat": {"steps": [
            {"id": "a", "run": ["/bin/true"]},
            {"id": "b", "deps": ["a"], "run": ["/bin/true"]}
        ], "max_iterations": 100}}
    ]});
    run_one(&e, &looped).await;
    let mut loops = Samples::default();
    let mut pair = Samples::default();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..200 {
            Command::new("/bin/true").status().unwrap();
        }
        pair.push(t.elapsed());
        loops.push(run_one(&e, &looped).await);
    }
    stop_engine(e).await;
    let raw = r.get("raw_commit_p50_ms").unwrap_or(0.0);
    let per_iteration = loops.p50() / 100.0;
    let floor = pair.p50() / 100.0 + 2.0 * raw;
    r.row(
        "repeat of 2 x /bin/true, 100 iterations (3)",
        p50_95(&loops),
        "",
        None,
    );
    r.row(
        "   per iteration vs 2 spawns + 2 raw commits",
        format!(
            "{per_iteration:.3} vs {floor:.3} ms ({:.2}x)",
            per_iteration / floor
        ),
        "",
        None,
    );
}

// ---------------------------------------------------------------- target 3 (cross-process)

/// Nanoseconds since the Unix epoch of a server log line (its RFC 3339 timestamp, in µs).
fn log_time_ns(line: &str) -> Option<u64> {
    let t: jiff::Timestamp = line.split_whitespace().next()?.parse().ok()?;
    u64::try_from(t.as_nanosecond()).ok()
}

/// The value of `key=` in a server log line, with a debug-printed list's brackets and quotes
/// taken off (a chain ends one step per commit).
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let v = line
        .split(&format!(" {key}="))
        .nth(1)?
        .split_whitespace()
        .next()?;
    Some(v.trim_matches(|c| c == '[' || c == ']' || c == '"'))
}

/// Delay from a step process's exit to its completion being committed, in a chain of
/// command steps run by `baton run`: one process alone, then three processes on the same
/// database at once, each committing every step of its own chain (waiting for the write lock
/// while another process holds it). Each step is `date +%s%N`, so its output is the time just
/// before it exits; the server logs (debug, µs timestamps) when it saw the attempt end and
/// when the commit recording that end returned.
fn xproc(r: &mut Report) {
    r.section("target 3: cross-process exit -> commit, 1 vs 3 processes on one file");
    let steps: Vec<Value> = (0..150)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "run": ["date", "+%s%N"]});
            if i > 0 {
                s["deps"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    let def = r.dir.join("xproc.json");
    std::fs::write(&def, json!({"name": "xproc", "steps": steps}).to_string()).unwrap();
    let mut p99 = BTreeMap::new();
    for n in [1usize, 3] {
        let db = r.dir.join(format!("xproc-{n}.db"));
        let logs: Vec<PathBuf> = (0..n)
            .map(|i| r.dir.join(format!("server-{n}-{i}.log")))
            .collect();
        let children: Vec<std::process::Child> = logs
            .iter()
            .map(|log| {
                Command::new(BIN)
                    .args(["run", def.to_str().unwrap()])
                    .env("BATON_DB", &db)
                    .env("RUST_LOG", "error,baton::engine::driver=debug")
                    .current_dir(&r.dir)
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(log).unwrap())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "baton run failed");
        }
        let exits = step_exits(&db);
        let (mut committed, mut noticed) = (Samples::default(), Samples::default());
        for log in &logs {
            xproc_samples(log, &exits, &mut committed, &mut noticed);
        }
        assert_eq!(
            committed.0.len(),
            150 * n,
            "every step's commit is in the logs"
        );
        let procs = if n == 1 { "process" } else { "processes" };
        r.row(
            &format!(
                "exit -> committed, {n} {procs} ({} steps)",
                committed.0.len()
            ),
            format!("{} / p99 {:.3} ms", p50_95(&committed), committed.pct(0.99)),
            "",
            None,
        );
        r.row(
            "   of which exit -> attempt ended in the server",
            format!("{} / p99 {:.3} ms", p50_95(&noticed), noticed.pct(0.99)),
            "",
            None,
        );
        p99.insert(n, committed.pct(0.99));
    }
    let ratio = p99[&3] / p99[&1];
    r.row(
        "T3 p99 exit -> committed, 3 processes / 1 process",
        format!("{ratio:.2}x"),
        "<= 2x",
        Some(ratio <= 2.0),
    );
}

/// Each step's exit time (its output, nanoseconds), by workflow id and step id.
fn step_exits(db: &Path) -> BTreeMap<(String, String), u64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT w.id, s.step_id, s.output FROM steps s JOIN workflows w USING (wid)")
        .unwrap();
    stmt.query_map([], |r| {
        let out: String = r.get(2)?;
        Ok(((r.get(0)?, r.get(1)?), out.trim().parse().unwrap()))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// One `baton run`'s samples, from its server log.
fn xproc_samples(
    log: &Path,
    exits: &BTreeMap<(String, String), u64>,
    committed: &mut Samples,
    noticed: &mut Samples,
) {
    let since = |line: &str, key: &str| -> Option<Duration> {
        let key = (
            log_field(line, "thread_id")?.to_owned(),
            log_field(line, key)?.to_owned(),
        );
        let exit = exits.get(&key)?;
        Some(Duration::from_nanos(
            log_time_ns(line)?.saturating_sub(*exit),
        ))
    };
    for line in std::fs::read_to_string(log).unwrap().lines() {
        if line.contains("step ends committed") {
            committed.push(since(line, "steps").expect("a committed step with an exit"));
        } else if line.contains("attempt ended") {
            noticed.push(since(line, "step").expect("an ended attempt with an exit"));
        }
    }
}

fn file_size(db: &Path) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    let wal = db.with_extension("db-wal");
    std::fs::metadata(db).unwrap().len() + std::fs::metadata(wal).map_or(0, |m| m.len())
}

async fn growth(r: &mut Report) {
    r.section("target 6: store growth (no step outputs; WAL checkpointed)");
    let mut per_step = Vec::new();
    for (steps, n) in [(10usize, 400usize), (50, 100)] {
        let db = r.dir.join(format!("growth-{steps}.db"));
        let e = start_engine(&db, Durability::Normal, true, 1024).await;
        let def = chain(&format!("chain-{steps}"), steps, &["true"]);
        let s0 = file_size(&db);
        for _ in 0..n / 50 {
            run_many(&e, &def, 50).await;
        }
        let s1 = file_size(&db);
        stop_engine(e).await;
        let per_wf = (s1 - s0) as f64 / n as f64;
        per_step.push(per_wf / steps as f64);
        let conn = rusqlite::Connection::open(&db).unwrap();
        let q = |sql: &str| -> f64 { conn.query_row(sql, [], |x| x.get::<_, f64>(0)).unwrap() };
        let def_len = q("SELECT avg(length(body)) FROM definitions");
        let events = q("SELECT count(*) * 1.0 / (SELECT count(*) FROM workflows) FROM events");
        let ev_data = q(
            "SELECT coalesce(sum(length(data)), 0) * 1.0 / (SELECT count(*) FROM workflows) FROM events",
        );
        let attempts = q("SELECT count(*) * 1.0 / (SELECT count(*) FROM workflows) FROM attempts");
        drop(conn);
        if steps == 10 {
            r.set("baton_bytes_per_wf", per_wf);
            r.row(
                &format!("T6 bytes per {steps}-step workflow ({n})"),
                format!("{per_wf:.0} B"),
                "<= 3072 B",
                Some(per_wf <= 3072.0),
            );
        } else {
            r.row(
                &format!("   bytes per {steps}-step workflow ({n})"),
                format!("{per_wf:.0} B"),
                "",
                None,
            );
        }
        r.row(
            "   of which: definition JSON / events / event data",
            format!("{def_len:.0} B / {events:.0} rows / {ev_data:.0} B"),
            "",
            None,
        );
        r.row(
            "   attempts rows per workflow",
            format!("{attempts:.0}"),
            "",
            None,
        );
    }
    let lin = per_step[1] / per_step[0];
    r.row(
        "   bytes per step: 50-step / 10-step workflow",
        format!("{:.0} / {:.0} B ({lin:.2}x)", per_step[1], per_step[0]),
        "linear (~1x)",
        Some((0.75..=1.25).contains(&lin)),
    );
}

// ---------------------------------------------------------------- the real binary

/// A `baton serve` child spoken to over stdio JSON-RPC (2025-11-25 handshake).
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    next_id: i64,
}

impl Server {
    /// Spawns the server; returns it once the initialize request is answered, with the time
    /// from spawn to that answer.
    fn start(db: &Path, cwd: &Path, env: &[(&str, &str)]) -> (Server, Duration) {
        let t = Instant::now();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env("BATON_DB", db)
            // Measured in process, comparable with earlier runs.
            .env("BATON_IN_PROCESS", "1")
            .env("RUST_LOG", "error")
            .env("BATON_KILL_GRACE_S", "1")
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    panic!("non-JSON on stdout: {line}")
                };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            next_id: 1,
        };
        let r = s.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "baton-bench", "version": "0"}}),
        );
        let up = t.elapsed();
        assert!(r.get("result").is_some(), "{r}");
        s.send_line(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        (s, up)
    }

    fn send_line(&mut self, v: &Value) {
        let stdin = self.stdin.as_mut().unwrap();
        let mut line = v.to_string();
        line.push('\n');
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_line(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let v = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("no answer from baton");
            if v.get("id") == Some(&json!(id)) {
                return v;
            }
        }
    }

    /// Calls a tool; returns its structured content and the round-trip time.
    fn call(&mut self, tool: &str, args: Value) -> (Value, Duration) {
        let t = Instant::now();
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        let d = t.elapsed();
        let res = &r["result"];
        assert_eq!(res["isError"], json!(false), "{tool}: {r}");
        (res["structuredContent"].clone(), d)
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(self.child.id())
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn close(mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Fills a fresh store with `n` completed 10-step workflows (in-process, no-op executor,
/// synchronous=NORMAL to save time: the rows are the same).
fn populate(rt: &tokio::runtime::Runtime, db: &Path, n: usize) {
    rt.block_on(async {
        let e = start_engine(db, Durability::Normal, true, 4096).await;
        let def = chain("chain-10", 10, &["true"]);
        for _ in 0..n / 250 {
            run_many(&e, &def, 250).await;
        }
        stop_engine(e).await;
    });
}

fn poll_until(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !pred() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed()
}

/// A `count(*)` query on a database another process is writing, or 0 if it cannot be read.
fn count(db: &Path, sql: &str, params: impl rusqlite::Params) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, params, |x| x.get(0)).unwrap_or(0)
}

fn count_status(db: &Path, status: &str) -> i64 {
    count(
        db,
        "SELECT count(*) FROM workflows WHERE status = ?1",
        [status],
    )
}

fn count_running(db: &Path) -> i64 {
    count(
        db,
        "SELECT count(*) FROM steps WHERE status = 'running'",
        [],
    )
}

// ---------------------------------------------------------------- targets 4 and 5a

fn api(r: &mut Report, rt: &tokio::runtime::Runtime) {
    r.section("targets 4 and 5a: the real binary on a store of 10,000 workflows");
    let dir = r.dir.join("api");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("baton.db");
    let t = Instant::now();
    populate(rt, &db, 10_000);
    println!(
        "  (populated 10,000 10-step workflows in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let raw = r.get("raw_commit_p50_ms").unwrap();

    // Start-up to the first answered request.
    let empty_dir = r.dir.join("api-empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let mut up_empty = Samples::default();
    let mut up_full = Samples::default();
    for _ in 0..7 {
        let (s, d) = Server::start(&empty_dir.join("baton.db"), &empty_dir, &[]);
        up_empty.push(d);
        s.close();
        let (s, d) = Server::start(&db, &dir, &[]);
        up_full.push(d);
        s.close();
    }
    r.row(
        "start-up to first answer, empty store (7)",
        p50_95(&up_empty),
        "",
        None,
    );
    r.row(
        "T5a start-up to first answer, 10,000 workflows (7)",
        p50_95(&up_full),
        "<= 20 ms",
        Some(up_full.p50() <= 20.0),
    );

    let (mut s, _) = Server::start(&db, &dir, &[("BATON_MAX_CONCURRENT_STEPS", "256")]);
    let ids: Vec<String> = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut st = conn
            .prepare("SELECT id FROM workflows ORDER BY random() LIMIT 400")
            .unwrap();
        st.query_map([], |x| x.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };

    // invoke_async: one commit per call; a 1-step workflow of /bin/true, then a pause so
    // the workflow's own commits do not share the measured call's commit.
    let one = json!({"steps": [{"id": "a", "run": ["/bin/true"]}]});
    let named = json!({"name": "chain-10", "steps": [{"id": "s0", "run": ["/bin/true"]}]});
    let mut asy = Samples::default();
    let mut asy_named = Samples::default();
    for i in 0..240 {
        let (def, out) = if i % 2 == 0 {
            (&one, &mut asy)
        } else {
            (&named, &mut asy_named)
        };
        let (_, d) = s.call("invoke_async", json!({"workflow": def}));
        if i >= 40 {
            out.push(d);
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    let budget = 1.0 + raw;
    r.row(
        "T4 invoke_async round trip, unnamed workflow (100)",
        p50_95(&asy),
        &format!("p50 <= 1 ms + commit = {budget:.2} ms"),
        Some(asy.p50() <= budget),
    );
    r.row(
        "   invoke_async, name shared with 10,000 (estimate)",
        p50_95(&asy_named),
        &format!("p50 <= {budget:.2} ms"),
        Some(asy_named.p50() <= budget),
    );

    // invoke_status on random stored workflows.
    let st = status_samples(&mut s, &ids);
    r.row(
        "T4 invoke_status, 10,000 stored (350)",
        p50_95(&st),
        "p95 <= 2 ms",
        Some(st.p95() <= 2.0),
    );

    // workflow_monitor with 50 active (sleeping) workflows among the 10,000.
    let sleeper = json!({"name": "sleeper", "steps": [{"id": "nap", "run": ["sleep", "120"]}]});
    for _ in 0..50 {
        s.call("invoke_async", json!({"workflow": sleeper}));
    }
    poll_until("50 sleeping steps", Duration::from_secs(30), || {
        count_running(&db) >= 50
    });
    let mut mon = Samples::default();
    let mut mon_all = Samples::default();
    for i in 0..220 {
        let (v, d) = s.call("workflow_monitor", json!({}));
        if i == 0 {
            assert_eq!(v["workflows"].as_array().map(Vec::len), Some(50), "{v}");
        }
        if i >= 20 {
            mon.push(d);
        }
    }
    for i in 0..35 {
        let (_, d) = s.call(
            "workflow_monitor",
            json!({"include_finished": true, "limit": 50}),
        );
        if i >= 5 {
            mon_all.push(d);
        }
    }
    r.row(
        "T4 workflow_monitor, 50 active of 10,050 (200)",
        p50_95(&mon),
        "p95 <= 5 ms",
        Some(mon.p95() <= 5.0),
    );
    r.row(
        "   workflow_monitor include_finished, limit 50 (30)",
        p50_95(&mon_all),
        "p95 <= 5 ms",
        Some(mon_all.p95() <= 5.0),
    );
    s.kill9();
}

/// `invoke_status` round trips on `ids`, the first 50 left out as warm-up.
fn status_samples(s: &mut Server, ids: &[String]) -> Samples {
    let mut st = Samples::default();
    for (i, id) in ids.iter().enumerate() {
        let (_, d) = s.call("invoke_status", json!({"thread_id": id}));
        if i >= 50 {
            st.push(d);
        }
    }
    st
}

// ---------------------------------------------------------------- target 5b

/// A step that marks each attempt with a file `THREAD.ATTEMPT` in `marks`, then sleeps.
fn marking_step(marks: &Path) -> Value {
    let script = format!(
        "touch \"{}/$BATON_THREAD_ID.$BATON_ATTEMPT\"; exec sleep 120",
        marks.display()
    );
    json!({"id": "nap", "shell": script})
}

/// How many attempt marks in `marks` end with `suffix` (`.1`: first attempts).
fn marks_ending(marks: &Path, suffix: &str) -> usize {
    std::fs::read_dir(marks)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(suffix))
            })
            .count()
        })
        .unwrap_or(0)
}

fn recovery(r: &mut Report) {
    r.section("target 5b: kill -9 with 100 running workflows, restart of every in-flight step");
    let mut restart = Samples::default();
    let mut first_answer = Samples::default();
    for round in 0..3 {
        let dir = r.dir.join(format!("recovery-{round}"));
        let marks = dir.join("marks");
        std::fs::create_dir_all(&marks).unwrap();
        let db = dir.join("baton.db");
        let env = [("BATON_MAX_CONCURRENT_STEPS", "256")];
        let (mut s, _) = Server::start(&db, &dir, &env);
        let def = json!({"steps": [marking_step(&marks)]});
        for _ in 0..100 {
            s.call("invoke_async", json!({"workflow": def}));
        }
        let count = |suffix: &str| marks_ending(&marks, suffix);
        poll_until("100 first attempts", Duration::from_secs(60), || {
            count(".1") >= 100
        });
        s.kill9();
        let t = Instant::now();
        let (s2, up) = Server::start(&db, &dir, &env);
        poll_until("100 restarted attempts", Duration::from_secs(60), || {
            count(".2") >= 100
        });
        restart.push(t.elapsed());
        first_answer.push(up);
        s2.kill9();
    }
    r.row(
        "   new process: first answer (3)",
        p50_95(&first_answer),
        "",
        None,
    );
    r.row(
        "T5b all 100 in-flight steps re-run after kill -9 (3)",
        p50_95(&restart),
        "<= 200 ms",
        Some(restart.p50() <= 200.0),
    );
}

// ---------------------------------------------------------------- target 6 (RSS)

fn memory(r: &mut Report) {
    r.section("target 6: memory (VmRSS of the real binary)");
    let dir = r.dir.join("memory");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("baton.db");
    let env = [("BATON_MAX_CONCURRENT_STEPS", "2000")];
    let (mut s, _) = Server::start(&db, &dir, &env);
    std::thread::sleep(Duration::from_millis(300));
    s.call("workflow_monitor", json!({}));
    std::thread::sleep(Duration::from_millis(200));
    let idle = s.rss_kb();
    r.row(
        "T6 idle RSS",
        format!("{:.1} MB", idle as f64 / 1024.0),
        "<= 15 MB (issue 14)",
        Some(idle as f64 / 1024.0 <= 15.0),
    );
    // Warm-up: the same number of workflows of the same shape, run to completion, so the
    // store's page cache, the allocator and the protocol buffers have grown as far as 1,000
    // requests and commits take them. What active workflows cost is measured on top of that.
    let quick = json!({"name": "warm", "steps": [{"id": "nap", "run": ["true"]},
                                                  {"id": "after", "deps": ["nap"], "run": ["true"]}]});
    for _ in 0..1000 {
        s.call("invoke_async", json!({"workflow": quick}));
    }
    poll_until(
        "1000 quick workflows done",
        Duration::from_secs(120),
        || count_status(&db, "completed") >= 1000,
    );
    std::thread::sleep(Duration::from_millis(500));
    s.call("workflow_monitor", json!({}));
    let warm = s.rss_kb();
    r.row(
        "   RSS after 1,000 finished workflows (warm)",
        format!("{:.1} MB", warm as f64 / 1024.0),
        "",
        None,
    );
    let def = json!({"name": "sleeper", "steps": [{"id": "nap", "run": ["sleep", "300"]},
                                                   {"id": "after", "deps": ["nap"], "run": ["true"]}]});
    for _ in 0..1000 {
        s.call("invoke_async", json!({"workflow": def}));
    }
    poll_until("1000 sleeping steps", Duration::from_secs(120), || {
        count_running(&db) >= 1000
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut stat = Samples::default();
    s.call("workflow_monitor", json!({}));
    let busy = s.rss_kb();
    let per = (busy.saturating_sub(warm)) as f64 * 1024.0 / 1000.0;
    r.row(
        "   RSS with 1,000 active workflows",
        format!("{:.1} MB", busy as f64 / 1024.0),
        "",
        None,
    );
    r.row(
        "T6 RSS per active workflow (over warm)",
        format!("{:.1} KB", per / 1024.0),
        "<= 8 KB (issue 14)",
        Some(per <= 8.0 * 1024.0),
    );
    r.row(
        "   over idle, per workflow of the 2,000 started (half finished)",
        format!("{:.1} KB", busy.saturating_sub(idle) as f64 / 1000.0 / 2.0),
        "",
        None,
    );
    for _ in 0..20 {
        let (_, d) = s.call("workflow_monitor", json!({}));
        stat.push(d);
    }
    r.row(
        "   workflow_monitor with 1,000 active (limit 50)",
        p50_95(&stat),
        "",
        None,
    );
    s.kill9();
}
