//! Many machines on one PostgreSQL store: workers in separate PID namespaces (none sees the
//! others' processes) killed and frozen at random while they run counted workflows; a restart
//! of the database itself mid-run; a worker cut off from the store fencing itself.
//!
//! These run only when `BATON_TEST_POSTGRES` names a server (`.ci/run` starts one); the
//! restart and partition tests start a private cluster of their own with
//! `scripts/pg-cluster.sh`, since they stop the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

/// Whether `unshare --pid --fork --mount-proc` works here (root, or user namespaces allowed).
fn namespaces_work() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `baton worker` on its own "machine": its own PID namespace when the kernel allows it.
struct Machine {
    /// `unshare` (or the worker itself without namespaces).
    outer: Child,
    /// The worker's pid as this test sees it.
    worker: i32,
}

impl Machine {
    fn start(sb: &Sandbox, env: &[(&str, &str)], isolated: bool) -> Machine {
        let mut cmd = if isolated {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        sb.apply_env(&mut cmd);
        cmd.args(["worker", "--idle-exit-s", "0"])
            .env("RUST_LOG", "warn")
            .current_dir(sb.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let outer = cmd.spawn().unwrap();
        let outer_pid = outer.id() as i32;
        let worker = if isolated {
            let mut found = None;
            eventually("the worker to start in its namespace", || {
                found = children(outer_pid).first().copied();
                found.is_some()
            });
            found.unwrap()
        } else {
            outer_pid
        };
        Machine { outer, worker }
    }

    /// The machine dies: with its namespace's first process gone, the kernel kills every
    /// process in the namespace, the steps it ran included.
    fn crash(self) {
        drop(self);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        signal(self.worker, "-KILL");
        let _ = self.outer.kill();
        let _ = self.outer.wait();
    }
}

fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn signal(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A step that records each attempt's life in `log`: a `start` line, a `tick` every 40 ms
/// while it runs, an `end` line when it completes — each with the workflow, step, attempt,
/// owner (the worker process that runs it) and the time in nanoseconds.
fn counted_step(id: &str, deps: &[&str], ticks: u32) -> Value {
    let rec = r#"printf '%s %s %s %s %s %s\n' "$1" "$BATON_THREAD_ID" "$BATON_STEP_ID" "$BATON_ATTEMPT" "$BATON_OWNER" "$(date +%s%N)" >> log"#;
    json!({
        "id": id,
        "deps": deps,
        "retry": {"max_attempts": 10, "initial_interval_ms": 20, "jitter": false},
        "shell": format!(
            "rec() {{ {rec}; }}; rec start; i=0; while [ $i -lt {ticks} ]; do sleep 0.04; rec tick; i=$((i+1)); done; rec end; echo {id}"
        )
    })
}

fn counted_workflow() -> Value {
    json!({"steps": [
        counted_step("a", &[], 15),
        counted_step("b", &["a"], 25),
        counted_step("c", &["a"], 15),
        counted_step("d", &["b", "c"], 10),
    ]})
}

#[derive(Debug)]
struct Life {
    attempt: i64,
    owner: String,
    first: i64,
    last: i64,
    ended: bool,
}

/// Every attempt's life from `log`, keyed by (workflow, step), in order of start.
fn lives(log: &Path) -> BTreeMap<(String, String), Vec<Life>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut by_attempt: BTreeMap<(String, String, i64), Life> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        // A line cut short by a kill mid-write is no evidence either way.
        if f.len() != 6 {
            continue;
        }
        let (Ok(t), Ok(attempt)) = (f[5].parse::<i64>(), f[3].parse::<i64>()) else {
            continue;
        };
        let key = (f[1].to_owned(), f[2].to_owned(), attempt);
        let life = by_attempt.entry(key).or_insert_with(|| Life {
            attempt,
            owner: f[4].to_owned(),
            first: t,
            last: t,
            ended: false,
        });
        life.first = life.first.min(t);
        life.last = life.last.max(t);
        life.ended |= f[0] == "end";
    }
    let mut out: BTreeMap<(String, String), Vec<Life>> = BTreeMap::new();
    for ((wf, step, _), life) in by_attempt {
        out.entry((wf, step)).or_default().push(life);
    }
    for v in out.values_mut() {
        v.sort_by_key(|l| l.first);
    }
    out
}

/// Against what the store recorded (`statuses`: thread id → status view): each step has one
/// committed success and no attempt ran after it (a completed step never re-runs), and no two
/// attempts of one step were alive at once. Returns (attempts, attempts cut short, attempts
/// that finished their work but whose completion was not committed before their worker
/// died, so they ran again — at-least-once).
fn check_lives(
    lives: &BTreeMap<(String, String), Vec<Life>>,
    statuses: &BTreeMap<String, Value>,
) -> (usize, usize, usize) {
    let (mut attempts, mut cut, mut uncommitted) = (0, 0, 0);
    for ((wf, step), ls) in lives {
        let outcomes = outcomes(&statuses[wf], step);
        let succeeded: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.as_str() == "succeeded")
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(succeeded.len(), 1, "{wf}/{step}: outcomes {outcomes:?}");
        let done = succeeded[0] as i64;
        let last = ls.iter().map(|l| l.attempt).max().unwrap_or(0);
        assert_eq!(
            last, done,
            "{wf}/{step}: attempt {last} ran after attempt {done} was committed as completed: {ls:?}"
        );
        for w in ls.windows(2) {
            assert!(
                w[0].last < w[1].first,
                "{wf}/{step}: an attempt on {} started while one on {} was still running: {ls:?}",
                w[1].owner,
                w[0].owner
            );
        }
        attempts += ls.len();
        cut += ls.iter().filter(|l| !l.ended).count();
        uncommitted += ls.iter().filter(|l| l.ended && l.attempt != done).count();
    }
    (attempts, cut, uncommitted)
}

fn statuses_of(s: &mut Server, ids: &[String]) -> BTreeMap<String, Value> {
    ids.iter().map(|id| (id.clone(), s.status(id))).collect()
}

fn submit_all(s: &mut Server, n: usize) -> Vec<String> {
    (0..n).map(|_| s.start(counted_workflow())).collect()
}

#[test]
fn workers_on_three_machines_killed_and_frozen_at_random_run_every_step_once() {
    let Some(sb) = Sandbox::postgres() else {
        eprintln!("BATON_TEST_POSTGRES is not set: skipped");
        return;
    };
    let isolated = namespaces_work();
    if !isolated {
        eprintln!("PID namespaces are not permitted here: the workers share one namespace");
    }
    let seed: u64 = std::env::var("BATON_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut rng = fastrand::Rng::with_seed(seed);
    let env = [
        ("BATON_LEASE_MS", "3000"),
        ("BATON_KILL_GRACE_S", "0.2"),
        ("BATON_MAX_CONCURRENT_STEPS", "12"),
    ];
    let mut machines: Vec<Option<Machine>> = (0..3)
        .map(|_| Some(Machine::start(&sb, &env, isolated)))
        .collect();
    // Submits and observes only: no step runs in this process.
    let mut s = sb.server_with(
        &[("BATON_IN_PROCESS", "0"), ("BATON_NO_EXECUTE", "1")],
        Protocol::V2025,
    );
    let began = Instant::now();
    let ids = submit_all(&mut s, 50);
    let (mut kills, mut freezes) = (0, 0);
    // Frozen machines and when they thaw: the loop goes on meanwhile.
    let mut frozen: Vec<(Instant, usize)> = Vec::new();
    let chaos_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < chaos_until {
        std::thread::sleep(Duration::from_millis(rng.u64(300..900)));
        frozen.retain(|(at, i)| {
            let due = Instant::now() >= *at;
            if due && let Some(m) = &machines[*i] {
                signal(m.worker, "-CONT");
            }
            !due
        });
        let i = rng.usize(0..3);
        if frozen.iter().any(|(_, j)| *j == i) {
            continue;
        }
        let t = began.elapsed().as_secs_f64();
        if rng.bool() {
            if let Some(m) = machines[i].take() {
                eprintln!(
                    "chaos {t:.1} s: machine {i} (worker pid {}) crashes",
                    m.worker
                );
                m.crash();
                kills += 1;
            }
            std::thread::sleep(Duration::from_millis(rng.u64(100..600)));
            machines[i] = Some(Machine::start(&sb, &env, isolated));
        } else if let Some(m) = &machines[i] {
            // Frozen past its lease half of the time: its work is adopted meanwhile.
            let ms = rng.u64(500..4500);
            eprintln!(
                "chaos {t:.1} s: machine {i} (worker pid {}) freezes for {ms} ms",
                m.worker
            );
            signal(m.worker, "-STOP");
            freezes += 1;
            frozen.push((Instant::now() + Duration::from_millis(ms), i));
        }
    }
    for (_, i) in frozen {
        if let Some(m) = &machines[i] {
            signal(m.worker, "-CONT");
        }
    }
    let statuses: Vec<Value> = ids.iter().map(|id| s.wait_done(id)).collect();
    let took = began.elapsed();
    for (id, st) in ids.iter().zip(&statuses) {
        assert_eq!(st["status"], "completed", "{id}: {st}");
    }
    let lives = lives(&sb.path("log"));
    assert_eq!(lives.len(), 50 * 4, "every step of every workflow ran");
    let (attempts, cut, uncommitted) = check_lives(&lives, &statuses_of(&mut s, &ids));
    let owners: std::collections::BTreeSet<&str> =
        lives.values().flatten().map(|l| l.owner.as_str()).collect();
    eprintln!(
        "POSTGRES machines (seed {seed}, {}): 50 workflows x 4 steps completed in {:.1} s \
         under {kills} crashes and {freezes} freezes; {attempts} attempts ({cut} cut short by \
         a crash or a fence, {uncommitted} finished but not committed before their worker \
         died), run by {} worker processes; no step ran after its committed completion, no \
         two attempts of a step alive at once",
        if isolated {
            "separate PID namespaces"
        } else {
            "one PID namespace"
        },
        took.as_secs_f64(),
        owners.len()
    );
    for m in machines.into_iter().flatten() {
        m.crash();
    }
}

/// A private cluster for tests that stop or restart the server.
struct Cluster {
    dir: PathBuf,
    port: String,
    url: String,
}

impl Cluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster.sh")
    }

    fn run(&self, what: &str) -> String {
        let out = Command::new(Self::script())
            .args([what, &self.dir.display().to_string()])
            .env("BATON_PG_PORT", &self.port)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-cluster.sh {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn start() -> Cluster {
        let n = uuid::Uuid::now_v7().simple().to_string();
        let mut c = Cluster {
            dir: PathBuf::from(format!("/tmp/baton-pg-{}", &n[n.len() - 10..])),
            port: (6000 + fastrand::u16(0..2000)).to_string(),
            url: String::new(),
        };
        c.url = c.run("start");
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["stop", &self.dir.display().to_string()])
            .env("BATON_PG_PORT", &self.port)
            .output();
    }
}

/// A sandbox on a database of a private cluster (None when PostgreSQL is not under test).
fn private_sandbox() -> Option<(Cluster, Sandbox)> {
    postgres_server()?;
    let cluster = Cluster::start();
    let sb = Sandbox::postgres_at(&cluster.url);
    Some((cluster, sb))
}

#[test]
fn a_database_restart_mid_run_loses_nothing_acknowledged_and_every_workflow_completes() {
    let Some((cluster, sb)) = private_sandbox() else {
        eprintln!("BATON_TEST_POSTGRES is not set: skipped");
        return;
    };
    let mut s = sb.server();
    let ids = submit_all(&mut s, 10);
    // Let the run get going, then restart the server under it.
    eventually("steps to be running", || {
        std::fs::read_to_string(sb.path("log")).is_ok_and(|t| t.lines().count() > 20)
    });
    let restarted = Instant::now();
    cluster.run("restart");
    let restart_ms = restarted.elapsed().as_millis();
    for id in &ids {
        assert_eq!(s.wait_done(id)["status"], "completed", "{id}");
    }
    let lives = lives(&sb.path("log"));
    assert_eq!(lives.len(), 10 * 4);
    let (attempts, cut, _) = check_lives(&lives, &statuses_of(&mut s, &ids));
    // Every event the server acknowledged is there, numbered without gaps.
    for id in &ids {
        let (events, _) = s.stream_pages(id, 0, 0.0);
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(
            events
                .iter()
                .filter(|e| e["type"] == "step_completed")
                .count(),
            4,
            "{id}"
        );
    }
    eprintln!(
        "POSTGRES restart: pg_ctl restart -m fast took {restart_ms} ms mid-run; 10 workflows \
         completed, {attempts} attempts ({cut} cut short), no step completed twice"
    );
}

#[test]
fn a_worker_cut_off_from_the_store_kills_its_attempts_before_its_lease_ends() {
    let Some((cluster, sb)) = private_sandbox() else {
        eprintln!("BATON_TEST_POSTGRES is not set: skipped");
        return;
    };
    let lease_ms = 3000u64;
    let mut s = sb.server_with(
        &[
            ("BATON_LEASE_MS", "3000"),
            ("BATON_KILL_GRACE_S", "0.2"),
            ("BATON_HTTP", "127.0.0.1:0"),
        ],
        Protocol::V2025,
    );
    let http = crate::http::http_of(&sb);
    let id = s.start(json!({"steps": [
        {"id": "long", "shell": "echo x >> runs; if [ ! -f go ]; then echo $$ > long.pid; sleep 60; fi; echo done"}
    ]}));
    let pid = sb.pid_in("long.pid");
    let cut = Instant::now();
    cluster.run("stop-keep");
    // The lease was last renewed before the cut, so it ends within a lease of it.
    eventually("the attempt to be killed by its own process", || {
        !alive(pid)
    });
    let killed_ms = cut.elapsed().as_millis() as u64;
    assert!(
        killed_ms < lease_ms,
        "the attempt outlived the lease: killed {killed_ms} ms after the store became unreachable"
    );
    // Health says so while the store is away.
    let (code, body) = http.get("/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unreachable"), "{body}");
    sb.write("go", "");
    cluster.run("start");
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    // The cut-off attempt, then its re-run (more if a starved machine fenced itself earlier
    // too); only the last one succeeded, the others were stopped.
    let st = s.status(&id);
    let outs = outcomes(&st, "long");
    assert_eq!(
        outs.last().map(String::as_str),
        Some("succeeded"),
        "{outs:?}"
    );
    assert!(
        outs[..outs.len() - 1].iter().all(|o| o != "succeeded"),
        "{outs:?}"
    );
    // An attempt recorded but stopped before its process was started leaves no line.
    let runs = sb.lines("runs");
    assert!(runs >= 2 && runs <= outs.len(), "{runs} runs, {outs:?}");
    eprintln!(
        "POSTGRES partition: the store went away; the worker killed its running attempt after {killed_ms} ms (lease {lease_ms} ms) and finished the workflow once the store was back"
    );
}

#[test]
fn a_lease_that_ended_unrenewed_is_claimed_again_before_its_workflow_goes_on() {
    let Some(sb) = Sandbox::postgres() else {
        eprintln!("BATON_TEST_POSTGRES is not set: skipped");
        return;
    };
    let mut s = sb.server_with(
        &[("BATON_LEASE_MS", "900"), ("BATON_KILL_GRACE_S", "0.2")],
        Protocol::V2025,
    );
    let id = s.start(json!({"steps": [
        {"id": "long", "shell": "echo x >> runs; if [ ! -f go ]; then echo $$ > long.pid; sleep 60; fi; echo done"}
    ]}));
    let pid = sb.pid_in("long.pid");
    // As after a freeze longer than the lease that no other process has noticed yet: the
    // lease has ended while the workflow still names its owner, which renews on as before.
    // A renewal does not revive an ended lease, so the owner must not drive on under it.
    let url = sb.db_arg().into_string().unwrap();
    pg_admin(
        &url,
        &format!("UPDATE workflows SET lease_expires_at = 0 WHERE id = '{id}'"),
    );
    eventually("the attempt under the ended lease to be stopped", || {
        !alive(pid)
    });
    sb.write("go", "");
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let outs = outcomes(&s.status(&id), "long");
    assert_eq!(
        outs,
        ["interrupted", "succeeded"],
        "taken up again by its owner"
    );
    eprintln!("POSTGRES ended lease: the owner stopped the attempt and claimed the workflow again");
}
