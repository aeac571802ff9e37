//! Fault injection: servers killed at random moments (`kill -9`, SIGTERM, stdin EOF), several
//! servers on one database with kills and a frozen owner, and database files that must be
//! refused (corrupt, text, unreadable, read-only) or a disk that fills up.
//!
//! The fault schedule comes from a seeded PRNG; the seed is printed so a failure can be
//! replayed with `BATON_FAULT_SEED=<seed> cargo test --test it faults -- --nocapture`.
//! Steps append `thread/step/attempt start|done owner nanos` lines to a side-effect file, so
//! the checks compare what really ran with what the store recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::util::*;

/// xorshift64*: a tiny deterministic generator for the fault schedule.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("BATON_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0x5EED_BA70);
        eprintln!("[{test}] fault seed {seed} (replay with BATON_FAULT_SEED={seed})");
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

const SIDE_EFFECTS: &str = "effects.log";

/// A shell step that records its start and its end (with attempt, owner and time) around a
/// sleep of `ms`.
fn effect_step(id: &str, deps: &[&str], ms: u64, mark: &str) -> Value {
    let line = |what: &str| {
        format!(
            "echo \"$BATON_THREAD_ID/$BATON_STEP_ID/$BATON_ATTEMPT {what} $BATON_OWNER $(date +%s%N)\" >> {SIDE_EFFECTS}"
        )
    };
    json!({
        "id": id, "deps": deps,
        "shell": format!("{}; sleep {}; {}; echo {id}", line("start"), ms as f64 / 1000.0, line("done")),
        "env": {"FAULT_MARK": mark},
        "retry": {"max_attempts": 1}
    })
}

/// a → (b, c) → d → (e, f) → g, with random step durations.
fn diamond_chain(rng: &mut Rng, lo: u64, hi: u64, mark: &str) -> Value {
    let shape: [(&str, &[&str]); 7] = [
        ("a", &[]),
        ("b", &["a"]),
        ("c", &["a"]),
        ("d", &["b", "c"]),
        ("e", &["d"]),
        ("f", &["d"]),
        ("g", &["e", "f"]),
    ];
    let steps: Vec<Value> = shape
        .iter()
        .map(|(id, deps)| effect_step(id, deps, rng.range(lo, hi), mark))
        .collect();
    json!({ "name": "faults", "steps": steps })
}

/// One line of the side-effect file.
#[derive(Debug, Clone)]
struct Effect {
    thread: String,
    step: String,
    attempt: i64,
    done: bool,
    owner: String,
    nanos: u128,
}

fn effects(sb: &Sandbox) -> Vec<Effect> {
    let text = std::fs::read_to_string(sb.path(SIDE_EFFECTS)).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "malformed side-effect line {l:?}");
            let key: Vec<&str> = f[0].split('/').collect();
            Effect {
                thread: key[0].to_owned(),
                step: key[1].to_owned(),
                attempt: key[2].parse().unwrap(),
                done: f[1] == "done",
                owner: f[2].to_owned(),
                nanos: f[3].parse().unwrap(),
            }
        })
        .collect()
}

/// An attempt as the store recorded it.
#[derive(Debug, Clone)]
struct Attempt {
    thread: String,
    step: String,
    number: i64,
    started_at: i64,
    finished_at: Option<i64>,
    outcome: String,
    owner: Option<String>,
}

fn attempts(db: &Path) -> Vec<Attempt> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut stmt = c
        .prepare(
            "SELECT w.id, a.step_id, a.number, a.started_at, a.finished_at, a.outcome, a.owner \
             FROM attempts a JOIN workflows w ON w.wid = a.wid ORDER BY w.id, a.step_id, a.number",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Attempt {
            thread: r.get(0)?,
            step: r.get(1)?,
            number: r.get(2)?,
            started_at: r.get(3)?,
            finished_at: r.get(4)?,
            outcome: r.get(5)?,
            owner: r.get(6)?,
        })
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// Pids of live processes whose environment contains `needle` (e.g. `FAULT_MARK=...`).
fn processes_with(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || !alive(pid as i32) {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn event_ms(e: &Value) -> i64 {
    e["at"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}

fn signal(pid: i32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid} failed");
}

/// Fails if a tool result mentions a locked or busy database: that must never reach a user.
fn assert_no_busy(what: &str, v: &Value) {
    let text = v.to_string().to_lowercase();
    assert!(
        !text.contains("database is locked") && !text.contains("sqlite_busy"),
        "{what} leaked a busy database: {v}"
    );
}

/// The checks every fault run ends with, over the event logs (read through invoke_stream),
/// the recorded attempts and the side-effect file. Returns (re-executions, late completions):
/// attempts beyond the first of each step, and re-run steps whose earlier attempt had
/// finished its work but died before its result was committed.
fn check_run(
    sb: &Sandbox,
    s: &mut Server,
    threads: &[String],
    steps_per_workflow: usize,
    faults: usize,
) -> (usize, usize) {
    for id in threads {
        let (events, last) = s.stream_pages(id, 0, 0.0);
        assert_no_busy("invoke_stream", &last);
        if last["status"] != "completed" {
            panic!("workflow {id} was lost: {}", s.status(id));
        }
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs.first() == Some(&1),
            "{id}: event seq not strictly increasing: {seqs:?}"
        );
        // A completed step is never started again.
        let mut completed: BTreeSet<String> = BTreeSet::new();
        for e in &events {
            let step = e["step_id"].as_str().unwrap_or_default().to_owned();
            match e["type"].as_str().unwrap() {
                "step_started" => assert!(
                    !completed.contains(&step),
                    "{id}: completed step {step} started again"
                ),
                "step_completed" => assert!(
                    completed.insert(step.clone()),
                    "{id}: step {step} completed twice"
                ),
                _ => {}
            }
        }
        assert_eq!(completed.len(), steps_per_workflow, "{id}: {completed:?}");
    }
    let recorded = attempts(&sb.db());
    let lines = effects(sb);
    let mut by_step: BTreeMap<(String, String), Vec<&Attempt>> = BTreeMap::new();
    for a in &recorded {
        by_step
            .entry((a.thread.clone(), a.step.clone()))
            .or_default()
            .push(a);
    }
    assert_eq!(by_step.len(), threads.len() * steps_per_workflow);
    let (mut reruns, mut late) = (0, 0);
    for ((thread, step), atts) in &by_step {
        let last = atts.last().unwrap();
        assert_eq!(
            last.outcome, "succeeded",
            "{thread}/{step}: the last attempt must be the one that succeeded: {atts:?}"
        );
        // Only attempts in flight when their server stopped are re-run, once per fault.
        for a in &atts[..atts.len() - 1] {
            assert!(
                a.outcome == "crashed" || a.outcome == "interrupted",
                "{thread}/{step}: attempt {} re-ran after outcome {}",
                a.number,
                a.outcome
            );
        }
        assert!(
            atts.len() <= faults + 1,
            "{thread}/{step}: {} attempts for {faults} faults",
            atts.len()
        );
        let owners: BTreeSet<_> = atts.iter().map(|a| a.owner.clone()).collect();
        assert_eq!(
            owners.len(),
            atts.len(),
            "{thread}/{step}: one server ran the step twice: {atts:?}"
        );
        reruns += atts.len() - 1;
        let mine: Vec<&Effect> = lines
            .iter()
            .filter(|e| &e.thread == thread && &e.step == step)
            .collect();
        for a in atts {
            let starts = mine
                .iter()
                .filter(|e| e.attempt == a.number && !e.done)
                .count();
            let dones: Vec<_> = mine
                .iter()
                .filter(|e| e.attempt == a.number && e.done)
                .collect();
            assert!(
                starts <= 1,
                "{thread}/{step}: attempt {} ran twice",
                a.number
            );
            if a.outcome == "succeeded" {
                assert_eq!(
                    dones.len(),
                    1,
                    "{thread}/{step}: the succeeded attempt did its work once"
                );
            } else if !dones.is_empty() {
                late += 1;
            }
            for e in mine.iter().filter(|e| e.attempt == a.number) {
                assert_eq!(
                    Some(&e.owner),
                    a.owner.as_ref(),
                    "{thread}/{step}: attempt {} ran under another owner",
                    a.number
                );
            }
        }
        // Every execution the side effects show was recorded first.
        for e in &mine {
            assert!(
                atts.iter().any(|a| a.number == e.attempt),
                "{thread}/{step}: unrecorded attempt {} ran",
                e.attempt
            );
        }
    }
    check_single_owner(&recorded, &lines);
    (reruns, late)
}

/// Never two owners at once: per workflow, the attempts of different owners do not overlap
/// in time, and in the side-effect file an owner never appears again after another one took
/// over.
fn check_single_owner(recorded: &[Attempt], lines: &[Effect]) {
    let threads: BTreeSet<&str> = recorded.iter().map(|a| a.thread.as_str()).collect();
    for t in threads {
        let atts: Vec<&Attempt> = recorded.iter().filter(|a| a.thread == t).collect();
        for a in &atts {
            for b in &atts {
                if a.owner == b.owner {
                    continue;
                }
                let (a_end, b_end) = (
                    a.finished_at.unwrap_or(i64::MAX),
                    b.finished_at.unwrap_or(i64::MAX),
                );
                assert!(
                    !(a.started_at < b_end && b.started_at < a_end),
                    "{t}: attempts of two owners overlap: {a:?} and {b:?}"
                );
            }
        }
        let mut mine: Vec<&Effect> = lines.iter().filter(|e| e.thread == t).collect();
        mine.sort_by_key(|e| e.nanos);
        let mut gone: BTreeSet<&str> = BTreeSet::new();
        let mut current: Option<&str> = None;
        for e in &mine {
            if current != Some(e.owner.as_str()) {
                assert!(
                    !gone.contains(e.owner.as_str()),
                    "{t}: owner {} ran a step again after {current:?} took over\neffects: {mine:#?}\nattempts: {atts:#?}",
                    e.owner
                );
                if let Some(c) = current {
                    gone.insert(c);
                }
                current = Some(&e.owner);
            }
        }
    }
}

/// No step process, no server and no reaper of this sandbox is left.
fn assert_no_orphans(sb: &Sandbox, mark: &str) {
    let db = format!("BATON_DB={}", sb.db().display());
    eventually("no process left behind by any server", || {
        processes_with(&format!("FAULT_MARK={mark}")).is_empty() && processes_with(&db).is_empty()
    });
}

fn median(v: &mut [i64]) -> i64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill9,
    Term,
    StdinEof,
}

#[test]
fn random_kills_lose_no_workflow_and_rerun_only_inflight_steps() {
    let mut rng = Rng::from_env("random_kills");
    let sb = Sandbox::new();
    let mark = format!("kills-{}", rng.next());
    let env = [("BATON_LEASE_MS", "1000")];
    let began = Instant::now();
    let mut s = sb.server_with(&env, Protocol::V2025);
    let threads: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
    for t in &threads {
        let wf = diamond_chain(&mut rng, 100, 300, &mark);
        s.start_as(t, wf);
    }
    let mut faults: Vec<(Fault, i64)> = Vec::new();
    let mut stop_ms: Vec<i64> = Vec::new();
    for _ in 0..7 {
        std::thread::sleep(Duration::from_millis(rng.range(50, 400)));
        let active = s.call("workflow_monitor", json!({}));
        assert_no_busy("workflow_monitor", &active);
        if active["workflows"].as_array().unwrap().is_empty() {
            break;
        }
        let fault = match rng.range(0, 9) {
            0..=5 => Fault::Kill9,
            6 | 7 => Fault::Term,
            _ => Fault::StdinEof,
        };
        let at = now_ms();
        match fault {
            Fault::Kill9 => s.kill9(),
            Fault::Term => {
                signal(s.pid(), "-TERM");
                let st = wait_exit(&mut s.child);
                assert!(st.success(), "SIGTERM: exit status {st}");
                stop_ms.push(now_ms() - at);
            }
            Fault::StdinEof => {
                let st = s.close();
                assert!(st.success(), "stdin EOF: exit status {st}");
                stop_ms.push(now_ms() - at);
            }
        }
        faults.push((fault, at));
        s = sb.server_with(&env, Protocol::V2025);
    }
    // A step in flight at more than three kills -9 trips the crash-loop guard (it could be
    // the step that kills its server): the workflow fails with its work kept, and a resume
    // continues it.
    let mut guard_trips = 0;
    for t in &threads {
        let r = s.wait_done(t);
        assert_no_busy("invoke_stream", &r);
        if r["status"] == "failed" {
            let st = s.status(t);
            let error = st["error"].as_str().unwrap_or_default();
            assert!(error.contains("crash-loop guard"), "{t} failed: {st}");
            guard_trips += 1;
            s.call("invoke_resume", json!({"thread_id": t}));
            assert_eq!(s.wait_done(t)["status"], "completed");
        }
    }
    let (reruns, late) = check_run(&sb, &mut s, &threads, 7, faults.len());
    // Time from each fault to the next server's adoption of each workflow active then.
    let mut adopt_ms = Vec::new();
    for t in &threads {
        let (events, _) = s.stream_pages(t, 0, 0.0);
        let resumed: Vec<i64> = events
            .iter()
            .filter(|e| e["type"] == "workflow_resumed" && e["data"]["by"] == "adoption")
            .map(event_ms)
            .collect();
        for (_, at) in &faults {
            if let Some(r) = resumed.iter().find(|r| **r >= *at) {
                adopt_ms.push(r - at);
            }
        }
    }
    let st = s.close();
    assert!(st.success(), "last server: exit status {st}");
    assert_no_orphans(&sb, &mark);
    let count = |f: Fault| faults.iter().filter(|(k, _)| *k == f).count();
    let max_adopt = adopt_ms.iter().copied().max().unwrap_or(0);
    let med_adopt = median(&mut adopt_ms.clone());
    eprintln!(
        "FAULTS random_kills: {} faults (kill -9 {}, SIGTERM {}, stdin EOF {}), {} workflows x 7 steps, \
         {reruns} re-executions, {late} of them after the work had finished but before its commit, \
         {guard_trips} crash-loop guard trips (resumed), \
         fault-to-adoption median {med_adopt} ms / max {max_adopt} ms, graceful stop max {} ms, total {:.1} s",
        faults.len(),
        count(Fault::Kill9),
        count(Fault::Term),
        count(Fault::StdinEof),
        threads.len(),
        stop_ms.iter().max().unwrap_or(&0),
        began.elapsed().as_secs_f64()
    );
    assert!(!faults.is_empty(), "no fault was injected");
}

/// Whether `pid` holds SQLite's WAL write lock (byte 120 of the `-shm` file) on `db`.
fn holds_write_lock(pid: i32, db: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(shm) = std::fs::metadata(format!("{}-shm", db.display())) else {
        return false;
    };
    let inode = format!(":{}", shm.ino());
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8
                && f[3] == "WRITE"
                && f[4] == pid.to_string()
                && f[5].ends_with(&inode)
                && f[6] == "120"
        })
}

/// SIGSTOPs `pid` at a moment it is not inside a write transaction. A process frozen while
/// it holds SQLite's write lock blocks every writer of the database until it runs again
/// (docs/durability.md); that is a limit of SQLite, not what this test is about.
fn freeze_outside_a_commit(pid: i32, db: &Path) {
    for _ in 0..100 {
        signal(pid, "-STOP");
        if !holds_write_lock(pid, db) {
            return;
        }
        signal(pid, "-CONT");
        std::thread::sleep(Duration::from_millis(3));
    }
    panic!("server {pid} never left its write transaction");
}

/// Spawns `n` servers on one (fresh) database at the same moment.
fn servers_at_once(sb: &Sandbox, n: usize, env: &[(&str, &str)]) -> Vec<Server> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| scope.spawn(|| sb.server_with(env, Protocol::V2025)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn servers_sharing_a_database_never_run_a_workflow_twice_at_once() {
    let mut rng = Rng::from_env("shared_database");
    let sb = Sandbox::new();
    let mark = format!("shared-{}", rng.next());
    let env = [("BATON_LEASE_MS", "1000")];
    let began = Instant::now();
    // Three servers racing to create and migrate the same new database file.
    let mut servers = servers_at_once(&sb, 3, &env);
    let mut threads = Vec::new();
    for (i, s) in servers.iter_mut().enumerate() {
        for j in 0..3 {
            let t = format!("s{i}w{j}");
            let r = s.start_as(&t, diamond_chain(&mut rng, 100, 250, &mark));
            assert_no_busy("invoke_async", &r);
            threads.push(t);
        }
    }
    let mut survivor = servers.pop().unwrap();
    let frozen = servers.pop().unwrap();
    let killed = servers.pop().unwrap();
    let me = survivor.status("s2w0")["owner"].clone();
    assert!(me.is_string(), "the survivor owns what it started: {me}");
    std::thread::sleep(Duration::from_millis(rng.range(100, 400)));
    // One server dies; another freezes (a hung owner whose pid still exists) until the
    // survivor takes its leases.
    let killed_at = now_ms();
    killed.kill9();
    freeze_outside_a_commit(frozen.pid(), &sb.db());
    let frozen_at = now_ms();
    eventually("the survivor to take over every workflow", || {
        threads.iter().all(|t| {
            let st = survivor.status(t);
            assert_no_busy("invoke_status", &st);
            st["status"] == "completed" || st["owner"] == me
        })
    });
    let mut frozen = frozen;
    signal(frozen.pid(), "-CONT");
    // The woken server answers and finds it lost its leases.
    let m = frozen.call("workflow_monitor", json!({"include_finished": true}));
    assert_no_busy("workflow_monitor", &m);
    for t in &threads {
        let r = survivor.wait_done(t);
        assert_no_busy("invoke_stream", &r);
    }
    let (reruns, late) = check_run(&sb, &mut survivor, &threads, 7, 2);
    let (mut adopt_ms, mut after_kill, mut after_freeze) = (Vec::new(), Vec::new(), Vec::new());
    for t in &threads {
        let (events, _) = survivor.stream_pages(t, 0, 0.0);
        let from = match &t[..2] {
            "s0" => killed_at,
            "s1" => frozen_at,
            _ => continue,
        };
        if let Some(e) = events.iter().find(|e| {
            e["type"] == "workflow_resumed" && e["data"]["by"] == "adoption" && event_ms(e) >= from
        }) {
            adopt_ms.push(event_ms(e) - from);
            if from == killed_at {
                after_kill.push(event_ms(e) - from);
            } else {
                after_freeze.push(event_ms(e) - from);
            }
        }
    }
    for s in [frozen, survivor] {
        let st = s.close();
        assert!(st.success(), "exit status {st}");
    }
    assert_no_orphans(&sb, &mark);
    let max_adopt = adopt_ms.iter().copied().max().unwrap_or(0);
    eprintln!(
        "FAULTS shared_database: 3 servers, 9 workflows x 7 steps, 1 kill -9 + 1 frozen owner, \
         {reruns} re-executions ({late} after finished work), adoption by a running server: \
         of a killed owner max {} ms, of a frozen owner max {} ms, overall max {max_adopt} ms \
         (lease 1000 ms), total {:.1} s",
        after_kill.iter().max().unwrap_or(&0),
        after_freeze.iter().max().unwrap_or(&0),
        began.elapsed().as_secs_f64()
    );
}

on_both_backends! {
    fn sigterm_mid_step_records_it_interrupted_and_the_next_server_resumes_at_once(sb: Sandbox) {
        // The default 15 s lease: the next server must not wait for it.
        let mut s = sb.server();
        let id = s.start(json!({"steps": [
            {"id": "a", "shell": "echo x >> a.txt"},
            {"id": "b", "deps": ["a"],
             "shell": "echo x >> b.txt; if [ ! -f go ]; then echo $$ > b.pid; while [ ! -f go ]; do sleep 0.05; done; fi; echo B"}
        ]}));
        let b = sb.pid_in("b.pid");
        let sent = Instant::now();
        signal(s.pid(), "-TERM");
        let st = wait_exit(&mut s.child);
        let stop_ms = sent.elapsed().as_millis();
        assert!(st.success(), "exit status after SIGTERM: {st}");
        assert!(!alive(b), "the step's process is stopped with the server");
        sb.write("go", "");
        let started = Instant::now();
        let mut s2 = sb.server();
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        let resume_ms = started.elapsed().as_millis();
        assert!(
            resume_ms < 15_000,
            "the next server waited for the lease ({resume_ms} ms)"
        );
        let st = s2.status(&id);
        assert_eq!(outcomes(&st, "a"), ["succeeded"]);
        assert_eq!(outcomes(&st, "b"), ["interrupted", "succeeded"]);
        assert_eq!((sb.lines("a.txt"), sb.lines("b.txt")), (1, 2));
        eprintln!(
            "FAULTS sigterm: server exited 0 {stop_ms} ms after SIGTERM; the next server finished the interrupted step {resume_ms} ms after it started (lease 15000 ms)"
        );
    }
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// `baton list` and `baton serve` on `db` both exit non-zero with one clear line, and the file
/// is left byte for byte as it was.
fn assert_refused(sb: &Sandbox, db: &Path, why: &str) {
    let before = db.is_file().then(|| sha(db));
    for args in [&["list"][..], &["serve"][..]] {
        let out = Command::new(BIN)
            .arg("--db")
            .arg(db)
            .args(args)
            .env("RUST_LOG", "warn")
            .current_dir(sb.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{why}: baton {args:?} accepted it: {stderr}"
        );
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("baton: "))
            .collect();
        assert_eq!(errors.len(), 1, "{why}: {stderr}");
        assert!(
            errors[0].contains("cannot open database")
                && errors[0].contains(&*db.to_string_lossy()),
            "{why}: unclear error {:?}",
            errors[0]
        );
        assert!(out.stdout.is_empty(), "{why}: stdout {:?}", out.stdout);
        eprintln!("{why}: {}", errors[0]);
    }
    if let Some(before) = before {
        assert_eq!(sha(db), before, "{why}: the file was changed");
    }
    for ext in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{ext}", db.display()));
        assert!(!side.exists(), "{why}: {} was created", side.display());
    }
}

#[test]
fn unusable_database_files_are_refused_and_left_untouched() {
    let mut rng = Rng::from_env("unusable_database");
    let sb = Sandbox::new();
    let random: Vec<u8> = (0..16384).map(|_| rng.next() as u8).collect();
    std::fs::write(sb.path("random.db"), &random).unwrap();
    assert_refused(&sb, &sb.path("random.db"), "random bytes");
    sb.write("notes.db", "my notes\nnot a database\n");
    assert_refused(&sb, &sb.path("notes.db"), "a text file");
    std::fs::create_dir(sb.path("dir.db")).unwrap();
    assert_refused(&sb, &sb.path("dir.db"), "a directory");
    sb.write("plain", "x");
    assert_refused(&sb, &sb.path("plain/baton.db"), "a path under a file");
    {
        let c = rusqlite::Connection::open(sb.path("other.db")).unwrap();
        c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('keep me');")
            .unwrap();
    }
    assert_refused(
        &sb,
        &sb.path("other.db"),
        "another program's SQLite database",
    );
    // A real baton database made read-only. chmod does not stop root, so use the immutable
    // attribute where the file system has one.
    let mut s = sb.server();
    s.start(json!({"steps": [{"id": "a", "shell": "echo kept"}]}));
    assert_eq!(s.close().code(), Some(0));
    let db = sb.db();
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(&db)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if immutable {
        // A clean shutdown checkpoints and removes the -wal and -shm files.
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
        }
        let result = std::panic::catch_unwind(|| {
            assert_refused(&sb, &db, "an immutable (read-only) database")
        });
        let _ = Command::new("chattr").arg("-i").arg(&db).status();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    } else {
        eprintln!("read-only database: chattr +i is not available here; not simulated");
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(at: PathBuf, size: &str) -> Option<TinyDisk> {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(TinyDisk(at))
    }

    /// Writes zeros into `name` until the file system is full.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join(name)).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_is_reported_and_work_continues_once_space_is_freed() {
    let sb = Sandbox::new();
    let Some(disk) = TinyDisk::mount(sb.path("disk"), "2m") else {
        eprintln!("FAULTS full_disk: cannot mount a tmpfs here; not simulated");
        return;
    };
    let db = disk.0.join("baton.db");
    let db_env = db.to_string_lossy().into_owned();
    let env = [("BATON_DB", db_env.as_str())];
    let mut s = sb.server_with(&env, Protocol::V2025);
    let before = s.start(json!({"steps": [{"id": "a", "shell": "echo committed"}]}));
    assert_eq!(s.wait_done(&before)["status"], "completed");
    // Running when the disk fills: its 400 kB result cannot be committed.
    let during = s.start(json!({"steps": [
        {"id": "big", "shell": "while [ ! -f go ]; do sleep 0.02; done; head -c 400000 /dev/zero | tr '\\\\0' a"}
    ]}));
    disk.fill("filler");
    sb.write("go", "");
    let r = s.call_raw(
        "invoke_async",
        json!({"workflow": {"steps": [{"id": "x", "shell": "echo x"}]}}),
        None,
    );
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    // Either it fitted, or it is refused as a tool error that says why.
    assert!(
        r["result"]["isError"] == json!(false) || text.contains("disk is full"),
        "{r}"
    );
    eprintln!("invoke_async on a full disk: {text}");
    // The disk stays full longer than a few commit retries; the server keeps answering.
    let full_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < full_until {
        let m = s.call("workflow_monitor", json!({"include_finished": true}));
        assert_eq!(m["counts"]["completed"], 1, "{m}");
        assert_eq!(s.status(&before)["steps"][0]["output"], "committed");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let freed = Instant::now();
    assert_eq!(s.wait_done(&during)["status"], "completed");
    let st = s.status(&during);
    assert_eq!(outcomes(&st, "big"), ["succeeded"]);
    eprintln!(
        "FAULTS full_disk: disk full for 7 s, server kept answering, the pending commit went through {} ms after space was freed",
        freed.elapsed().as_millis()
    );
    assert!(s.close().success());
    // Nothing committed was lost.
    let mut s2 = sb.server_with(&env, Protocol::V2025);
    assert_eq!(s2.status(&before)["steps"][0]["output"], "committed");
    assert_eq!(s2.status(&during)["status"], "completed");
}
