//! Retention: finished workflows are deleted with everything stored about them — on request
//! (`workflow_delete`, `baton prune`) and in the background (`--retention-days`) — while a
//! running workflow survives, and the database file stops growing under a steady load.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{PATIENCE, Protocol, Sandbox, Server};

fn counts(s: &mut Server) -> Value {
    s.call(
        "workflow_monitor",
        json!({"include_finished": true, "limit": 1}),
    )["counts"]
        .clone()
}

fn count(c: &Value, status: &str) -> i64 {
    c[status].as_i64().unwrap_or(0)
}

on_both_backends! {
    fn a_running_workflow_survives_a_prune_and_finished_ones_go_with_their_events(sb: Sandbox) {
        let mut s = sb.server();
        let ok = s.start(json!({"steps": [{"id": "a", "run": ["true"]}]}));
        let bad =
            s.start(json!({"steps": [{"id": "a", "run": ["false"], "retry": {"max_attempts": 1}}]}));
        s.wait_done(&ok);
        s.wait_done(&bad);
        let gate = sb.path("gate");
        let running = s.start(json!({"steps": [{"id": "wait",
            "shell": format!("while [ ! -e '{}' ]; do sleep 0.05; done", gate.display())}]}));
        crate::util::eventually("the gated step to start", || {
            let st = s.status(&running);
            st["status"] == "running"
        });

        // A status filter deletes only that status.
        let r = s.call(
            "workflow_delete",
            json!({"older_than_days": 0, "status": "failed"}),
        );
        assert_eq!(r["deleted"], 1, "{r}");
        let gone = s.call_err("invoke_status", json!({"thread_id": bad}));
        assert!(gone.contains("unknown thread_id"), "{gone}");
        // Older-than is honoured: nothing finished a day ago.
        let r = s.call("workflow_delete", json!({"older_than_days": 1}));
        assert_eq!(r["deleted"], 0, "{r}");
        let r = s.call("workflow_delete", json!({"older_than_days": 0}));
        assert_eq!(r["deleted"], 1, "{r}");
        let gone = s.call_err("invoke_stream", json!({"thread_id": ok, "wait_s": 0}));
        assert!(gone.contains("unknown thread_id"), "events go too: {gone}");

        // The running one is never selected, and refused by id.
        let st = s.status(&running);
        assert_eq!(st["status"], "running");
        let refused = s.call_err("workflow_delete", json!({"thread_id": running}));
        assert!(refused.contains("running"), "{refused}");
        let wrong = s.call_err(
            "workflow_delete",
            json!({"older_than_days": 0, "status": "running"}),
        );
        assert!(wrong.contains("not a finished status"), "{wrong}");
        let neither = s.call_err("workflow_delete", json!({}));
        assert!(neither.contains("thread_id"), "{neither}");

        std::fs::write(&gate, "").unwrap();
        assert_eq!(s.wait_done(&running)["status"], "completed");
        let r = s.call("workflow_delete", json!({"thread_id": running}));
        assert_eq!(r["deleted"], 1);
        assert_eq!(count(&counts(&mut s), "completed"), 0);
    }
}

on_both_backends! {
    fn baton_prune_deletes_by_age_and_status(sb: Sandbox) {
        let mut s = sb.server();
        let ok = s.start(json!({"steps": [{"run": ["true"]}]}));
        let bad = s.start(json!({"steps": [{"run": ["false"], "retry": {"max_attempts": 1}}]}));
        s.wait_done(&ok);
        s.wait_done(&bad);
        drop(s);
        let out = sb.cli(&["prune"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "deleted 0 finished workflow(s)",
            "the default keeps 30 days"
        );
        let out = sb.cli(&["prune", "--older-than", "0", "--status", "failed"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "deleted 1 finished workflow(s)"
        );
        let out = sb.cli(&["prune", "--older-than", "0s"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "deleted 1 finished workflow(s)"
        );
        let out = sb.cli(&["prune", "--older-than", "7x"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unknown unit"),
            "{out:?}"
        );
    }
}

/// Bytes of the database and its WAL.
fn db_bytes(sb: &Sandbox) -> u64 {
    let size = |p: std::path::PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let wal = sb.db().with_extension("db-wal");
    size(sb.db()) + size(wal)
}

/// Starts `n` one-step workflows, keeping up to `window` requests in flight.
fn start_many(s: &mut Server, n: usize, window: usize) {
    let mut in_flight = 0;
    let mut sent = 0;
    while sent < n || in_flight > 0 {
        while sent < n && in_flight < window {
            s.send(
                "tools/call",
                json!({"name": "invoke_async",
                       "arguments": {"workflow": {"name": "load",
                                     "steps": [{"id": "a", "run": ["true"]}]}}}),
                None,
            );
            sent += 1;
            in_flight += 1;
        }
        let r = s.next_response();
        assert_eq!(r["result"]["isError"], false, "{r}");
        in_flight -= 1;
    }
}

/// Waits until no workflow is queued or running.
fn wait_quiet(s: &mut Server) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let c = counts(s);
        if count(&c, "queued") + count(&c, "running") == 0 {
            return;
        }
        if Instant::now() >= deadline {
            let m = s.call("workflow_monitor", json!({"status": "running"}));
            let id = m["workflows"][0]["thread_id"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let st = s.status(&id);
            panic!("the load did not finish: {c}\n{m}\n{st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn retention_keeps_the_database_file_bounded_under_a_steady_load() {
    const WAVES: usize = 10;
    const PER_WAVE: usize = 1_000;
    let sb = Sandbox::new();
    let mut s = sb.server_with(
        &[
            ("BATON_RETENTION_DAYS", "0"),
            ("BATON_RETENTION_INTERVAL_S", "0.2"),
            ("BATON_DURABILITY", "normal"),
        ],
        Protocol::V2025,
    );
    let started = Instant::now();
    let mut sizes = Vec::new();
    for _ in 0..WAVES {
        start_many(&mut s, PER_WAVE, 64);
        wait_quiet(&mut s);
        sizes.push(db_bytes(&sb));
    }
    eprintln!(
        "retention load: {} workflows in {:.1}s; database + WAL bytes after each wave: {sizes:?}",
        WAVES * PER_WAVE,
        started.elapsed().as_secs_f64()
    );
    // Everything finished is gone soon after.
    crate::util::eventually("retention to delete the last wave", || {
        count(&counts(&mut s), "completed") == 0
    });
    // The file grows while it first fills, then stays put: the last waves reuse freed pages.
    let early = sizes[1].max(sizes[2]);
    let late = *sizes[5..].iter().max().unwrap();
    assert!(
        late <= early + early / 4,
        "the database kept growing: {sizes:?}"
    );
    assert!(late < 16 * 1024 * 1024, "{sizes:?}");
}

#[test]
fn a_blocked_workflow_survives_a_bulk_delete_and_retention() {
    const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_agent/claude.py");
    let sb = Sandbox::new();
    let home = sb.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let agent = format!("python3 {FAKE}");
    let mut s = sb.server_with(
        &[
            ("BATON_AGENT_COMMAND", agent.as_str()),
            ("HOME", home.to_str().unwrap()),
            ("BATON_RETENTION_DAYS", "0"),
            ("BATON_RETENTION_INTERVAL_S", "0.05"),
        ],
        Protocol::V2025,
    );
    let blocked = s.start(json!({"defaults": {"cwd": sb.dir.path()}, "steps": [
        {"id": "build", "prompt": "Build it [[deny:Bash]]"}]}));
    assert_eq!(s.wait_done(&blocked)["status"], "blocked");
    // Retention deletes a workflow that finishes meanwhile, never the blocked one.
    let done = s.start(json!({"steps": [{"run": ["true"]}]}));
    crate::util::eventually("retention to delete the finished workflow", || {
        s.call_raw("invoke_status", json!({"thread_id": done}), None)["result"]["isError"]
            == json!(true)
    });
    let r = s.call("workflow_delete", json!({"older_than_days": 0}));
    assert_eq!(r["deleted"], 0, "{r}");
    assert_eq!(s.status(&blocked)["status"], "blocked");
}
