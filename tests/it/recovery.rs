//! Crashes and restarts: `kill -9` of the server mid-step, graceful shutdown on stdin EOF,
//! and adoption by another process sharing the database.

use serde_json::{Value, json};

use crate::util::*;

/// a (counted) → b, which records its pid and a background child's pid, then waits for the
/// file `go` before finishing; c depends on b.
fn waits_for_go() -> Value {
    json!({"steps": [
        {"id": "a", "shell": "echo x >> a.txt; echo A"},
        {"id": "b", "deps": ["a"],
         "shell": "echo x >> b.txt; if [ ! -f go ]; then sleep 30 & echo $! > bg.pid; echo $$ > b.pid; while [ ! -f go ]; do sleep 0.05; done; fi; echo B"},
        {"id": "c", "deps": ["b"], "shell": "echo x >> c.txt; echo {a.output}{b.output}"}
    ]})
}

fn lease_env() -> [(&'static str, &'static str); 1] {
    [("BATON_LEASE_MS", "1500")]
}

on_both_backends! {
    fn completed_step_never_reruns_after_kill(sb: Sandbox) {
        let mut s = sb.server_with(&lease_env(), Protocol::V2025);
        let id = s.start(waits_for_go());
        let (b, bg) = (sb.pid_in("b.pid"), sb.pid_in("bg.pid"));
        s.kill9();
        // The step's own process dies with the server.
        eventually("the step to die with its server", || !alive(b));
        sb.write("go", "");
        let mut s2 = sb.server_with(&lease_env(), Protocol::V2025);
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        // Background children the step left are killed when the workflow is adopted.
        eventually("the background child to be killed", || !alive(bg));
        let st = s2.status(&id);
        assert_eq!(step(&st, "c")["output"], "AB");
        assert_eq!(outcomes(&st, "a"), ["succeeded"]);
        assert_eq!(outcomes(&st, "b"), ["crashed", "succeeded"]);
        assert_eq!(step(&st, "b")["attempts"], 2);
        assert_eq!(
            (sb.lines("a.txt"), sb.lines("b.txt"), sb.lines("c.txt")),
            (1, 2, 1)
        );
        let (events, _) = s2.stream_pages(&id, 0, 0.0);
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        let resumed = events
            .iter()
            .find(|e| e["type"] == "workflow_resumed")
            .unwrap();
        assert_eq!(resumed["data"]["rerun_steps"], json!(["b"]));
    }
}

#[test]
fn killed_server_leaves_no_step_process_behind() {
    let sb = Sandbox::new();
    let mut s = sb.server_with(&lease_env(), Protocol::V2025);
    s.start(json!({"steps": [
        {"id": "p", "shell": "sleep 30 & echo $! > bg.pid; echo $$ > main.pid; sleep 30"},
        {"id": "q", "run": ["sh", "-c", "echo $$ > q.pid; exec sleep 30"]}
    ]}));
    let (main, bg, q) = (
        sb.pid_in("main.pid"),
        sb.pid_in("bg.pid"),
        sb.pid_in("q.pid"),
    );
    s.kill9();
    eventually("the steps' processes to die with the server", || {
        !alive(main) && !alive(q) && !alive(bg)
    });
}

on_both_backends! {
    fn running_server_adopts_the_workflows_of_a_killed_one(sb: Sandbox) {
        let mut s1 = sb.server_with(&lease_env(), Protocol::V2025);
        let mut s2 = sb.server_with(&lease_env(), Protocol::V2025);
        let id = s1.start(waits_for_go());
        sb.pid_in("b.pid");
        let owner1 = s1.status(&id)["owner"].clone();
        s1.kill9();
        sb.write("go", "");
        // s2 was already running: it notices the dead owner on its own and finishes the work.
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        let st = s2.status(&id);
        assert_ne!(st["steps"][1]["attempt_history"][1]["outcome"], Value::Null);
        assert_eq!(outcomes(&st, "b"), ["crashed", "succeeded"]);
        assert_eq!(sb.lines("a.txt"), 1);
        assert_ne!(owner1, Value::Null);
    }
}

on_both_backends! {
    fn stdin_eof_interrupts_running_steps_and_the_next_server_resumes_at_once(sb: Sandbox) {
        // The default 15 s lease: resuming must not wait for it to expire.
        let mut s = sb.server();
        let id = s.start(waits_for_go());
        let (b, bg) = (sb.pid_in("b.pid"), sb.pid_in("bg.pid"));
        let server = s.pid();
        let status = s.close();
        assert!(status.success(), "server exit status {status}");
        assert!(!alive(server));
        assert!(
            !alive(b) && !alive(bg),
            "shutdown stops the step's process group"
        );
        sb.write("go", "");
        let mut s2 = sb.server();
        // Taken over at start-up (in the background), long before the 15 s lease could expire.
        let since = std::time::Instant::now();
        let st = loop {
            let st = s2.status(&id);
            if st["owner"].is_string() || st["status"] == "completed" {
                break st;
            }
            assert!(
                since.elapsed() < std::time::Duration::from_secs(5),
                "the new server did not take it over at start-up: {st}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(outcomes(&st, "b")[0], "interrupted");
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        let st = s2.status(&id);
        assert_eq!(outcomes(&st, "b"), ["interrupted", "succeeded"]);
        assert_eq!(
            (sb.lines("a.txt"), sb.lines("b.txt"), sb.lines("c.txt")),
            (1, 2, 1)
        );
        let (events, _) = s2.stream_pages(&id, 0, 0.0);
        let k = kinds(&events);
        let interrupted = k.iter().position(|t| t == "workflow_interrupted");
        let resumed = k.iter().rposition(|t| t == "workflow_resumed");
        assert!(interrupted.is_some() && resumed > interrupted, "{k:?}");
    }
}

on_both_backends! {
    fn workflow_interrupted_with_a_step_waiting_to_retry_resumes_it(sb: Sandbox) {
        let mut s = sb.server();
        // Fails once, then waits 30 s before its retry: the server stops in between.
        let id = s.start(json!({"steps": [
            {"id": "r", "shell": "echo x >> r.txt; [ $(wc -l < r.txt) -ge 2 ]",
             "retry": {"max_attempts": 3, "initial_interval_ms": 30000, "jitter": false}}
        ]}));
        eventually("the first attempt", || sb.lines("r.txt") == 1);
        let st = loop {
            let st = s.status(&id);
            if step(&st, "r")["status"] == "retrying" {
                break st;
            }
        };
        assert_eq!(st["current_steps"], json!(["r"]));
        s.close();
        let mut s2 = sb.server();
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        assert_eq!(sb.lines("r.txt"), 2);
    }
}

on_both_backends! {
    fn step_that_keeps_killing_its_server_is_failed_after_the_crash_cap(sb: Sandbox) {
        let wf = json!({"steps": [
            {"id": "doom", "shell": "echo x >> runs; echo $$ > doom.pid; sleep 30"},
            {"id": "after", "deps": ["doom"], "shell": "echo x >> after"}
        ]});
        let mut s = sb.server();
        let id = s.start(wf);
        // Four crashes: three are re-run, the fourth passes the cap of 3.
        for round in 1..=4 {
            sb.pid_in("doom.pid");
            std::fs::remove_file(sb.path("doom.pid")).unwrap();
            assert_eq!(sb.lines("runs"), round);
            s.kill9();
            s = sb.server();
        }
        let done = s.wait_done(&id);
        assert_eq!(done["status"], "failed");
        let st = s.status(&id);
        assert_eq!(
            outcomes(&st, "doom"),
            ["crashed", "crashed", "crashed", "crashed"]
        );
        assert!(
            step(&st, "doom")["error"]
                .as_str()
                .unwrap()
                .contains("crash"),
            "{st}"
        );
        assert_eq!((sb.lines("runs"), sb.lines("after")), (4, 0));
    }
}

#[test]
fn orphaned_workflow_is_flagged_until_a_server_adopts_it() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(waits_for_go());
    sb.pid_in("b.pid");
    s.kill9();
    // `baton list` never adopts: it reports the orphan.
    let o = sb.cli(&["list"]);
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains(&id) && out.contains("orphaned"), "{out}");
    sb.write("go", "");
    // A server answers at once and adopts in the background: the flag clears when it has.
    let mut s2 = sb.server();
    eventually("the new server adopts the orphan", || {
        let m = s2.call("workflow_monitor", json!({"include_finished": true}));
        m["workflows"][0]["flags"] == json!([])
    });
    assert_eq!(s2.wait_done(&id)["status"], "completed");
}

fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

on_both_backends! {
    fn frozen_owner_is_replaced_and_cannot_overwrite_the_new_owner_s_work(sb: Sandbox) {
        let mut s1 = sb.server_with(&lease_env(), Protocol::V2025);
        let mut s2 = sb.server_with(&lease_env(), Protocol::V2025);
        let id = s1.start(waits_for_go());
        let b = sb.pid_in("b.pid");
        let owner1 = s1.status(&id)["owner"].clone();
        signal(s1.pid(), "-STOP");
        // s2 sees the heartbeat go stale, kills the frozen owner's step and takes over.
        eventually("s2 to adopt the workflow", || {
            let st = s2.status(&id);
            st["owner"].is_string() && st["owner"] != owner1
        });
        eventually("the frozen owner's step to be killed", || !alive(b));
        sb.write("go", "");
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        // The old owner wakes up; whatever it tries to write is fenced off.
        signal(s1.pid(), "-CONT");
        s1.status(&id);
        s1.close();
        let st = s2.status(&id);
        assert_eq!(st["status"], "completed", "{st}");
        assert_eq!(step(&st, "c")["output"], "AB");
        assert_eq!(outcomes(&st, "b"), ["crashed", "succeeded"]);
        let (events, _) = s2.stream_pages(&id, 0, 0.0);
        let k = kinds(&events);
        assert_eq!(
            k.last().map(String::as_str),
            Some("workflow_completed"),
            "{k:?}"
        );
        assert_eq!((sb.lines("a.txt"), sb.lines("c.txt")), (1, 1));
    }
}
