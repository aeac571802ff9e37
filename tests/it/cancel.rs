//! Cancellation: whole process groups die, the workflow is marked cancelled and stays
//! resumable.

use serde_json::json;

use crate::util::*;

#[test]
fn cancel_kills_the_whole_process_group_including_background_children() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "done", "run": ["echo", "kept"]},
        {"id": "long", "deps": ["done"],
         "shell": "sleep 30 & echo $! > bg.pid; (sleep 31; echo late >> late.txt) & echo $$ > main.pid; sleep 32; echo x >> late.txt"},
        {"id": "later", "deps": ["long"], "shell": "echo x >> later.txt"}
    ]}));
    let main = sb.pid_in("main.pid");
    let bg = sb.pid_in("bg.pid");
    assert!(alive(main) && alive(bg));
    let started = std::time::Instant::now();
    let r = s.call("invoke_cancel", json!({"thread_id": id}));
    assert_eq!(r["status"], "cancelled");
    eventually("the step's processes to die", || !alive(main) && !alive(bg));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "cancel took {:?}",
        started.elapsed()
    );
    let st = s.status(&id);
    assert_eq!(st["status"], "cancelled");
    assert_eq!(step(&st, "done")["status"], "completed");
    assert_eq!(step(&st, "long")["status"], "cancelled");
    assert_eq!(outcomes(&st, "long"), ["cancelled"]);
    assert_eq!(step(&st, "later")["status"], "pending");
    assert_eq!(st["current_steps"], json!([]));
    let (events, last) = s.stream_pages(&id, 0, 0.0);
    assert_eq!(last["done"], true);
    assert_eq!(
        kinds(&events).last().map(String::as_str),
        Some("workflow_cancelled")
    );
    // Cancelling again changes nothing.
    let again = s.call("invoke_cancel", json!({"thread_id": id}));
    assert_eq!(again["status"], "cancelled");
    assert_eq!(sb.lines("later.txt"), 0);
}

on_both_backends! {
    fn cancelled_workflow_resumes_without_rerunning_completed_steps(sb: Sandbox) {
        let mut s = sb.server();
        let id = s.start(json!({"steps": [
            {"id": "a", "shell": "echo x >> a.txt"},
            {"id": "b", "deps": ["a"], "shell": "echo x >> b.txt; [ -f go ] || { echo $$ > b.pid; sleep 30; }"}
        ]}));
        sb.pid_in("b.pid");
        s.call("invoke_cancel", json!({"thread_id": id}));
        sb.write("go", "");
        let r = s.call("invoke_resume", json!({"thread_id": id}));
        assert_eq!(r["status"], "running");
        assert_eq!(s.wait_done(&id)["status"], "completed");
        let st = s.status(&id);
        assert_eq!(outcomes(&st, "b"), ["cancelled", "succeeded"]);
        assert_eq!((sb.lines("a.txt"), sb.lines("b.txt")), (1, 2));
    }
}

on_both_backends! {
    fn cancel_from_another_server_stops_the_owner_s_processes(sb: Sandbox) {
        let mut owner = sb.server_with(&[("BATON_LEASE_MS", "1500")], Protocol::V2025);
        let id = owner.start(json!({"steps": [
            {"id": "long", "shell": "sleep 30 & echo $! > bg.pid; echo $$ > main.pid; sleep 30"}
        ]}));
        let (main, bg) = (sb.pid_in("main.pid"), sb.pid_in("bg.pid"));
        let mut other = sb.server_with(&[("BATON_LEASE_MS", "1500")], Protocol::V2025);
        let r = other.call("invoke_cancel", json!({"thread_id": id}));
        assert_eq!(r["status"], "cancelled", "{r}");
        eventually("the owner to kill the step", || !alive(main) && !alive(bg));
        assert_eq!(owner.status(&id)["status"], "cancelled");
    }
}

on_both_backends! {
    fn server_with_a_shorter_lease_never_takes_over_a_live_owner_s_workflow(sb: Sandbox) {
        // The owner renews every 1 s; the observer's own lease is 300 ms.
        let mut owner = sb.server_with(&[("BATON_LEASE_MS", "3000")], Protocol::V2025);
        let id = owner.start(json!({"steps": [
            {"id": "long", "shell": "echo $$ > main.pid; sleep 2; echo x >> runs.txt"}
        ]}));
        let main = sb.pid_in("main.pid");
        let mut other = sb.server_with(&[("BATON_LEASE_MS", "300")], Protocol::V2025);
        // Several of the observer's adoption rounds pass while the step runs.
        let done = owner.wait_done(&id);
        assert_eq!(done["status"], "completed");
        assert_eq!(sb.lines("runs.txt"), 1, "the step ran once");
        let st = other.status(&id);
        assert_eq!(outcomes(&st, "long"), ["succeeded"], "{st}");
        assert!(!alive(main));
        let m = other.call("workflow_monitor", json!({"include_finished": true}));
        assert_eq!(m["workflows"][0]["flags"], json!([]));
    }
}

#[test]
fn cancel_kills_a_step_that_ignores_sigterm_after_the_grace_period() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "stubborn", "shell": "trap '' TERM; echo $$ > main.pid; sleep 30 & echo $! > bg.pid; wait; sleep 30"}
    ]}));
    let (main, bg) = (sb.pid_in("main.pid"), sb.pid_in("bg.pid"));
    let r = s.call("invoke_cancel", json!({"thread_id": id}));
    assert_eq!(r["status"], "cancelled");
    eventually("SIGKILL after the grace period", || {
        !alive(main) && !alive(bg)
    });
    assert_eq!(outcomes(&s.status(&id), "stubborn"), ["cancelled"]);
}
