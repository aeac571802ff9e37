//! Stall handling: silence past `stall_timeout_s` is flagged by the monitor, and restarts
//! the attempt when the step says `on_stall: restart`.

use serde_json::json;

use crate::util::*;

#[test]
fn silent_step_with_on_stall_restart_is_restarted_then_fails() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let count = sb.path("count");
    let id = s.start(json!({"steps": [{
        "id": "quiet",
        "shell": format!("echo started >> {}; sleep 30", count.display()),
        "stall_timeout_s": 1,
        "on_stall": "restart",
        "retry": {"max_attempts": 2, "initial_interval_ms": 10, "jitter": false}
    }]}));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "failed");
    let status = s.status(&id);
    let quiet = step(&status, "quiet");
    assert_eq!(quiet["attempts"], 2);
    assert!(
        quiet["error"].as_str().unwrap().contains("stalled"),
        "{quiet}"
    );
    let runs = std::fs::read_to_string(&count).unwrap();
    assert_eq!(runs.lines().count(), 2);
}

#[test]
fn silent_step_is_flagged_stalled_but_left_running_by_default() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let started = sb.path("started");
    let id = s.start(json!({"steps": [{
        "id": "quiet",
        "shell": format!("touch {}; sleep 30", started.display()),
        "stall_timeout_s": 1
    }]}));
    Server::wait_for_file(&started);
    eventually("the monitor flags the workflow stalled", || {
        let m = s.call("workflow_monitor", json!({}));
        m["workflows"][0]["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("stalled"))
    });
    let status = s.status(&id);
    assert_eq!(step(&status, "quiet")["status"], "running");
    assert_eq!(step(&status, "quiet")["attempts"], 1);
    s.call("invoke_cancel", json!({"thread_id": id}));
}
