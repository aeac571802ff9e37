//! How attempts run: timeouts, output caps, the concurrency limit, cwd and env.

use serde_json::json;

use crate::util::*;

on_both_backends! {
    fn timeout_kills_the_step_s_group_and_is_retried(sb: Sandbox) {
        let mut s = sb.server();
        // First attempt hangs (with a background child) past its 1 s timeout; the second is quick.
        let id = s.start(json!({"steps": [
            {"id": "slow", "timeout_s": 1,
             "shell": "echo x >> n; if [ $(wc -l < n) -eq 1 ]; then sleep 30 & echo $! > bg.pid; sleep 30; fi; echo done",
             "retry": {"max_attempts": 2, "initial_interval_ms": 10, "jitter": false}}
        ]}));
        assert_eq!(s.wait_done(&id)["status"], "completed");
        let st = s.status(&id);
        assert_eq!(outcomes(&st, "slow"), ["timed_out", "succeeded"]);
        let first = &step(&st, "slow")["attempt_history"][0];
        assert!(
            first["error"].as_str().unwrap().contains("timed out"),
            "{first}"
        );
        assert!(
            !alive(sb.pid_in("bg.pid")),
            "the timed-out attempt's background child is gone"
        );
    }
}

#[test]
fn output_beyond_the_cap_is_dropped_with_a_marker() {
    let sb = Sandbox::new();
    let mut s = sb.server_with(&[("BATON_OUTPUT_CAP", "1000")], Protocol::V2025);
    let id = s.start(json!({"steps": [
        {"id": "loud", "shell": "head -c 500000 /dev/zero | tr '\\0' a"}
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.call(
        "invoke_status",
        json!({"thread_id": id, "output_chars": 100000}),
    );
    let out = step(&st, "loud")["output"].as_str().unwrap().to_owned();
    assert!(out.starts_with(&"a".repeat(1000)), "{}", &out[..50]);
    assert!(
        out.contains("499000 more bytes dropped"),
        "{}",
        &out[1000..]
    );
    let short = s.call(
        "invoke_status",
        json!({"thread_id": id, "output_chars": 10}),
    );
    assert_eq!(step(&short, "loud")["output"], "aaaaaaaaaa");
    assert_eq!(step(&short, "loud")["output_truncated"], true);
}

on_both_backends! {
    fn concurrency_limit_bounds_parallel_steps_across_workflows(sb: Sandbox) {
        let mut s = sb.server_with(&[("BATON_MAX_CONCURRENT_STEPS", "1")], Protocol::V2025);
        // Each step holds a directory lock while it runs; overlapping steps would fail.
        let locked = "mkdir lock || { echo overlap >> overlaps; exit 1; }; sleep 0.05; rmdir lock";
        let mk = |n: usize| {
            let steps: Vec<_> = (0..n)
                .map(|i| json!({"id": format!("s{i}"), "shell": locked, "retry": {"max_attempts": 1}}))
                .collect();
            json!({ "steps": steps })
        };
        let a = s.start(mk(4));
        let b = s.start(mk(3));
        assert_eq!(s.wait_done(&a)["status"], "completed");
        assert_eq!(s.wait_done(&b)["status"], "completed");
        assert_eq!(sb.lines("overlaps"), 0);
    }
}

#[test]
fn steps_run_in_their_cwd_with_their_env_and_baton_variables() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path("sub")).unwrap();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "where", "cwd": "sub", "env": {"GREETING": "hej"},
         "shell": "printf '%s %s %s %s' \"$(basename \"$PWD\")\" \"$GREETING\" \"$BATON_STEP_ID\" \"$BATON_ATTEMPT\""}
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    assert_eq!(step(&s.status(&id), "where")["output"], "sub hej where 1");
}

#[test]
fn stdin_of_a_step_is_closed() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [{"id": "read", "shell": "cat; echo eof"}]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    assert_eq!(step(&s.status(&id), "read")["output"], "eof");
}

#[test]
fn upstream_output_never_appears_in_a_shell_step_s_cmdline() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let secret = "s3cr3t-token-7a1f";
    sb.write("secret", secret);
    // /proc/PID/cmdline is readable by every user; the script's own process must not
    // carry the value there (it travels in the environment, readable only by the owner).
    let id = s.start(json!({"steps": [
        {"id": "a", "run": ["cat", "secret"]},
        {"id": "b", "deps": ["a"],
         "shell": "tr '\\0' ' ' < /proc/$$/cmdline > cmdline; printf '%s' {a.output}"}
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    assert_eq!(step(&s.status(&id), "b")["output"], secret);
    let cmdline = std::fs::read_to_string(sb.path("cmdline")).unwrap();
    assert!(cmdline.starts_with("sh -c "), "{cmdline}");
    assert!(!cmdline.contains(secret), "{cmdline}");
}
