//! `for_each` fan-out end to end: instances through the real server and real processes,
//! their stored item list, and a real `kill -9` in the middle of a fan-out.

use serde_json::{Value, json};

use crate::util::*;

/// list -> review (one instance per line of list.txt, two at a time) -> sum. The instance
/// for `slow` waits for a file `go`.
fn review_files() -> Value {
    json!({"steps": [
        {"id": "list", "shell": "cat list.txt"},
        {"id": "review", "deps": ["list"], "for_each": "steps.list.output", "max_parallel": 2,
         "shell": "echo {item} >> ran.txt; if [ {item} = slow ] && [ ! -f go ]; then echo $$ > slow.pid; while [ ! -f go ]; do sleep 0.05; done; fi; echo reviewed-{index}-{item}"},
        {"id": "sum", "deps": ["review"], "shell": "printf '%s' {review.output}"},
    ]})
}

fn ran(sb: &Sandbox) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(sb.path("ran.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_fan_out_runs_each_item_as_an_instance_and_its_output_is_their_array() {
    let sb = Sandbox::new();
    sb.write("list.txt", "a.rs\nb.rs\nc.rs\n");
    sb.write("go", "");
    let mut s = sb.server();
    let id = s.start(review_files());
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    let expected = r#"["reviewed-0-a.rs","reviewed-1-b.rs","reviewed-2-c.rs"]"#;
    assert_eq!(step(&st, "review")["output"], expected);
    assert_eq!(step(&st, "sum")["output"], expected);
    for i in 0..3 {
        assert_eq!(step(&st, &format!("review[{i}]"))["status"], "completed");
    }
    assert_eq!(ran(&sb), ["a.rs", "b.rs", "c.rs"]);
}

on_both_backends! {
    fn kill_mid_fan_out_reruns_only_unfinished_instances_over_the_stored_list(sb: Sandbox) {
        sb.write("list.txt", "a\nslow\nb\n");
        let env = [("BATON_LEASE_MS", "1500")];
        let mut s = sb.server_with(&env, Protocol::V2025);
        let id = s.start(review_files());
        let slow = sb.pid_in("slow.pid");
        // Wait until the other instances of the first pair have finished, so their completion
        // is what the kill must preserve.
        eventually("review[0] to complete", || {
            step(&s.status(&id), "review[0]")["status"] == "completed"
        });
        s.kill9();
        eventually("the slow instance to die with its server", || !alive(slow));
        // The source changes: the stored list must still be the one expanded.
        sb.write("list.txt", "x\ny\nz\nw\n");
        sb.write("go", "");
        let mut s2 = sb.server_with(&env, Protocol::V2025);
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        let st = s2.status(&id);
        assert_eq!(
            step(&st, "review")["output"],
            r#"["reviewed-0-a","reviewed-1-slow","reviewed-2-b"]"#
        );
        assert_eq!(outcomes(&st, "review[0]"), ["succeeded"]);
        assert_eq!(outcomes(&st, "review[1]"), ["crashed", "succeeded"]);
        assert_eq!(outcomes(&st, "list"), ["succeeded"]);
        let runs = ran(&sb);
        assert_eq!(runs.iter().filter(|r| *r == "a").count(), 1, "{runs:?}");
        assert_eq!(runs.iter().filter(|r| *r == "slow").count(), 2, "{runs:?}");
        assert!(
            !runs.iter().any(|r| r == "x"),
            "never re-expanded: {runs:?}"
        );
    }
}

on_both_backends! {
    fn a_failed_instance_is_retried_alone_by_resume_and_skip_completes_the_step(sb: Sandbox) {
        let mut s = sb.server();
        let wf = json!({"steps": [
            {"id": "t", "for_each": "['ok1', 'bad', 'ok2']", "retry": {"max_attempts": 1},
             "shell": "echo {item} >> ran.txt; if [ {item} = bad ] && [ ! -f fixed ]; then exit 1; fi; echo {item}"},
            {"id": "after", "deps": ["t"], "run": ["echo", "{t.output}"]},
        ]});
        let id = s.start(wf.clone());
        assert_eq!(s.wait_done(&id)["status"], "failed");
        let st = s.status(&id);
        assert_eq!(step(&st, "t")["status"], "failed");
        assert!(
            step(&st, "t")["error"]
                .as_str()
                .unwrap()
                .contains("1 of 3 instances failed: t[1]"),
            "{st}"
        );
        assert_eq!(step(&st, "after")["status"], "pending");
        sb.write("fixed", "");
        s.call("invoke_resume", json!({"thread_id": id}));
        assert_eq!(s.wait_done(&id)["status"], "completed");
        assert_eq!(
            step(&s.status(&id), "after")["output"],
            r#"["ok1","bad","ok2"]"#
        );
        assert_eq!(
            ran(&sb),
            ["bad", "bad", "ok1", "ok2"],
            "only t[1] ran again"
        );

        // The same failure, skipped instead: the step completes with an empty output for it.
        std::fs::remove_file(sb.path("fixed")).unwrap();
        let id = s.start(wf);
        assert_eq!(s.wait_done(&id)["status"], "failed");
        s.call(
            "invoke_resume",
            json!({"thread_id": id, "from_step": "t[1]", "mode": "skip"}),
        );
        let done = s.wait_done(&id);
        assert_eq!(done["status"], "completed", "{}", s.status(&id));
        assert_eq!(
            step(&s.status(&id), "after")["output"],
            r#"["ok1","","ok2"]"#
        );
    }
}

#[test]
fn a_for_each_over_a_non_list_is_rejected_before_anything_runs() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let err = s.call_err(
        "invoke_async",
        json!({"workflow": {"steps": [
            {"id": "t", "for_each": "{'a': 1}", "run": ["touch", "ran"]}
        ]}}),
    );
    assert!(
        err.contains("t") && err.contains("for_each") && err.contains("not a list"),
        "{err}"
    );
    assert!(!sb.path("ran").exists());
}
