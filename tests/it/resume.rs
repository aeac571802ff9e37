//! `invoke_resume`: retry, skip and from_step, and the refusals.

use serde_json::{Value, json};

use crate::util::*;

/// a → b → c, where b fails until the file `fixed` exists; each step counts its runs.
fn gated() -> Value {
    json!({"steps": [
        {"id": "a", "shell": "echo x >> a.txt; echo A"},
        {"id": "b", "deps": ["a"], "shell": "echo x >> b.txt; [ -f fixed ] && echo B",
         "retry": {"max_attempts": 1}},
        {"id": "c", "deps": ["b"], "shell": "echo x >> c.txt; echo got:{b.output}"}
    ]})
}

on_both_backends! {
    fn resume_retry_reruns_only_the_failed_step_and_its_dependents(sb: Sandbox) {
        let mut s = sb.server();
        let id = s.start(gated());
        assert_eq!(s.wait_done(&id)["status"], "failed");
        sb.write("fixed", "");
        let r = s.call("invoke_resume", json!({"thread_id": id, "mode": "retry"}));
        assert_eq!(r["status"], "running");
        assert_eq!(s.wait_done(&id)["status"], "completed");
        let st = s.status(&id);
        assert_eq!(st["error"], Value::Null, "the old error is cleared: {st}");
        assert_eq!(step(&st, "c")["output"], "got:B");
        assert_eq!(outcomes(&st, "b"), ["failed", "succeeded"]);
        assert_eq!(step(&st, "b")["attempts"], 2);
        assert_eq!(
            (sb.lines("a.txt"), sb.lines("b.txt"), sb.lines("c.txt")),
            (1, 2, 1)
        );
        let (events, _) = s.stream_pages(&id, 0, 0.0);
        assert!(kinds(&events).contains(&"workflow_resumed".to_owned()));
    }
}

on_both_backends! {
    fn resume_skip_marks_the_failed_step_skipped_and_runs_its_dependents(sb: Sandbox) {
        let mut s = sb.server();
        let id = s.start(gated());
        assert_eq!(s.wait_done(&id)["status"], "failed");
        s.call("invoke_resume", json!({"thread_id": id, "mode": "skip"}));
        assert_eq!(s.wait_done(&id)["status"], "completed");
        let st = s.status(&id);
        assert_eq!(step(&st, "b")["status"], "skipped");
        assert_eq!(
            step(&st, "c")["output"],
            "got:",
            "a skipped step's output is empty"
        );
        assert_eq!(st["progress"], json!({"done": 3, "total": 3}));
        assert_eq!(
            (sb.lines("a.txt"), sb.lines("b.txt"), sb.lines("c.txt")),
            (1, 1, 1)
        );
    }
}

on_both_backends! {
    fn resume_from_step_reruns_that_step_and_everything_downstream_only(sb: Sandbox) {
        let mut s = sb.server();
        let id = s.start(json!({"steps": [
            {"id": "a", "shell": "echo x >> a.txt"},
            {"id": "b", "deps": ["a"], "shell": "echo x >> b.txt; wc -l < b.txt"},
            {"id": "c", "deps": ["b"], "shell": "echo x >> c.txt; echo c:{b.output}"},
            {"id": "side", "deps": ["a"], "shell": "echo x >> side.txt"}
        ]}));
        assert_eq!(s.wait_done(&id)["status"], "completed");
        let refused = s.call_err("invoke_resume", json!({"thread_id": id}));
        assert!(refused.contains("already completed"), "{refused}");
        let bad = s.call_err(
            "invoke_resume",
            json!({"thread_id": id, "from_step": "nope"}),
        );
        assert!(
            bad.contains("nope") && bad.contains("a, b, c, side"),
            "{bad}"
        );
        s.call("invoke_resume", json!({"thread_id": id, "from_step": "b"}));
        assert_eq!(s.wait_done(&id)["status"], "completed");
        let st = s.status(&id);
        assert_eq!(step(&st, "c")["output"], "c:2", "c saw b's new output");
        assert_eq!(
            (
                sb.lines("a.txt"),
                sb.lines("b.txt"),
                sb.lines("c.txt"),
                sb.lines("side.txt")
            ),
            (1, 2, 2, 1)
        );
    }
}

on_both_backends! {
    fn resume_of_a_running_workflow_is_refused_and_changes_nothing(sb: Sandbox) {
        let mut s = sb.server();
        let id = s.start(json!({"steps": [{"id": "a", "shell": "echo $$ > a.pid; sleep 30"}]}));
        sb.pid_in("a.pid");
        let msg = s.call_err("invoke_resume", json!({"thread_id": id}));
        assert!(msg.contains("invoke_cancel"), "{msg}");
        let st = s.status(&id);
        assert_eq!(step(&st, "a")["attempts"], 1);
        assert_eq!(st["status"], "running");
        s.call("invoke_cancel", json!({"thread_id": id}));
    }
}
