//! Containment of an attempt's processes: whatever a step starts — in its group, in a new
//! session (`setsid`), with `BATON_OWNER` removed from its environment — ends with the attempt
//! and with the server, and the output read up to then is kept.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::*;

/// A shell snippet starting a `setsid` grandchild that holds the step's stdout and stderr
/// open, with `BATON_OWNER` removed, and writes its pid to `name`.
fn escapee(name: &str) -> String {
    format!(
        "env -u BATON_OWNER setsid sh -c 'echo $$ > {name}.tmp; mv {name}.tmp {name}; exec sleep 300' &"
    )
}

#[test]
fn setsid_grandchild_dies_when_its_step_completes_and_output_is_kept() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let started = Instant::now();
    let id = s.start(json!({"steps": [
        {"id": "a", "shell": format!(
            "echo before; {} while [ ! -s gc.pid ]; do sleep 0.01; done; echo after",
            escapee("gc.pid"))}
    ]}));
    let gc = sb.pid_in("gc.pid");
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let st = s.status(&id);
    let out = step(&st, "a")["output"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        out.contains("before") && out.contains("after"),
        "output read before the main process exited is kept: {out:?}"
    );
    eventually("the setsid grandchild to die with its step", || !alive(gc));
    // Killing the holder ends the read at once; the 2 s read timeout is not waited out.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn setsid_grandchild_dies_when_its_step_is_cancelled() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "long", "shell": format!("{} echo $$ > main.pid; sleep 300", escapee("gc.pid"))}
    ]}));
    let (main, gc) = (sb.pid_in("main.pid"), sb.pid_in("gc.pid"));
    let r = s.call("invoke_cancel", json!({"thread_id": id}));
    assert_eq!(r["status"], "cancelled");
    eventually("the step and its setsid grandchild to die", || {
        !alive(main) && !alive(gc)
    });
    assert_eq!(outcomes(&s.status(&id), "long"), ["cancelled"]);
}

#[test]
fn setsid_grandchild_dies_when_its_step_times_out_and_output_is_kept() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "slow", "timeout_s": 1, "retry": {"max_attempts": 1},
         "shell": format!("echo partial >&2; {} echo $$ > main.pid; sleep 300", escapee("gc.pid"))}
    ]}));
    let (main, gc) = (sb.pid_in("main.pid"), sb.pid_in("gc.pid"));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "failed", "{done}");
    eventually("the step and its setsid grandchild to die", || {
        !alive(main) && !alive(gc)
    });
    let st = s.status(&id);
    assert_eq!(outcomes(&st, "slow"), ["timed_out"], "{st}");
    let c = rusqlite::Connection::open(sb.db()).unwrap();
    let stderr: Option<String> = c
        .query_row(
            "SELECT stderr FROM attempts WHERE step_id = 'slow'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        stderr.as_deref(),
        Some("partial\n"),
        "output printed before the timeout is kept"
    );
}

#[test]
fn kill_9_of_the_server_leaves_no_process_of_a_running_attempt() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    s.start(json!({"steps": [
        {"id": "a", "shell": format!(
            "{} sleep 300 & echo $! > bg.pid; unset BATON_OWNER; sleep 301 & echo $! > nobaton.pid; echo $$ > main.pid; sleep 302",
            escapee("gc.pid"))},
        {"id": "b", "run": ["sh", "-c", "echo $$ > b.pid; exec sleep 303"]}
    ]}));
    let pids: Vec<i32> = ["main.pid", "bg.pid", "nobaton.pid", "gc.pid", "b.pid"]
        .iter()
        .map(|f| sb.pid_in(f))
        .collect();
    assert!(pids.iter().all(|p| alive(*p)));
    s.kill9();
    eventually("every process of the running attempts to die", || {
        pids.iter().all(|p| !alive(*p))
    });
}

/// With `ulimit -n 300` and `--max-concurrent-steps 1000`, 150 parallel steps would need 450
/// descriptors at once: the server caps how many run together to what the limit holds
/// (saying so on stderr) and every step completes, where the excess used to fail with EMFILE.
#[test]
fn steps_beyond_the_open_file_limit_wait_for_a_slot_instead_of_failing() {
    let sb = Sandbox::new();
    let steps: Vec<_> = (0..150)
        .map(|i| json!({"id": format!("s{i}"), "shell": "sleep 0.2"}))
        .collect();
    sb.write("wide.json", &json!({ "steps": steps }).to_string());
    let mut cmd = std::process::Command::new("sh");
    sb.apply_env(&mut cmd);
    let o = cmd
        .args([
            "-c",
            "ulimit -n 300 && exec \"$0\" run wide.json --max-concurrent-steps 1000",
        ])
        .arg(BIN)
        .env("RUST_LOG", "warn")
        .current_dir(sb.path(""))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{o:?}");
    assert!(
        stderr.contains("running at most 14 steps at once"),
        "the cap is announced: {stderr}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("workflow completed"), "{out}");
    assert!(!out.contains("Too many open files"), "{out}");
}
