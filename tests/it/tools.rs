//! The tools, driven the way a host drives them.

use serde_json::{Value, json};

use crate::util::*;

#[test]
fn diamond_workflow_completes_with_templates_and_progress() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({
        "name": "diamond",
        "steps": [
            {"id": "a", "run": ["echo", "hello"]},
            {"id": "b", "deps": ["a"], "shell": "echo b:{a.output}"},
            {"id": "c", "deps": ["a"], "run": ["printf", "c:%s", "{a.output}"]},
            {"id": "d", "deps": ["b", "c"], "shell": "printf '%s+%s' {b.output} {c.output}"}
        ]
    }));
    let r = s.call_raw(
        "invoke_stream",
        json!({"thread_id": id, "wait_s": 30}),
        Some("tok"),
    );
    let r = &r["result"]["structuredContent"];
    assert_eq!(r["done"], json!(true), "{r}");
    assert_eq!(r["status"], "completed");
    let status = s.status(&id);
    assert_eq!(step(&status, "d")["output"], "b:hello+c:hello");
    assert_eq!(status["progress"], json!({"done": 4, "total": 4}));
    // Every event became a progress notification with total = step count and a message;
    // progress strictly increases.
    let progress: Vec<_> = s
        .notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), r["events"].as_array().unwrap().len());
    let mut last = -1.0;
    for n in &progress {
        let p = &n["params"];
        assert_eq!(p["progressToken"], "tok");
        assert_eq!(p["total"], json!(4.0));
        assert!(!p["message"].as_str().unwrap().is_empty());
        let v = p["progress"].as_f64().unwrap();
        assert!(v > last);
        last = v;
    }
}

#[test]
fn tools_list_has_seven_tools_with_schemas_and_annotations() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let r = s.request("tools/list", json!({}));
    let tools = r["result"]["tools"].as_array().unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "invoke_async",
            "invoke_cancel",
            "invoke_resume",
            "invoke_status",
            "invoke_stream",
            "workflow_delete",
            "workflow_monitor"
        ]
    );
    for t in tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert_eq!(t["outputSchema"]["type"], "object", "{t}");
        assert!(t["description"].as_str().unwrap().len() > 40, "{t}");
        let read_only = t["annotations"]["readOnlyHint"] == json!(true);
        let should = matches!(
            t["name"].as_str().unwrap(),
            "invoke_status" | "workflow_monitor" | "invoke_stream"
        );
        assert_eq!(read_only, should, "{t}");
    }
}

#[test]
fn invoke_status_reports_every_step_with_attempts_outputs_and_timestamps() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({
        "name": "status-shape",
        "steps": [
            {"id": "a", "run": ["echo", "out-a"]},
            {"id": "b", "deps": ["a"], "shell": "echo err >&2; exit 3",
             "retry": {"max_attempts": 1}}
        ]
    }));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "failed");
    let st = s.status(&id);
    assert_eq!(st["thread_id"], id.as_str());
    assert_eq!(st["name"], "status-shape");
    assert_eq!(st["status"], "failed");
    assert_eq!(st["progress"], json!({"done": 1, "total": 2}));
    assert_eq!(st["current_steps"], json!([]));
    assert!(
        st["error"].as_str().unwrap().contains("exit status 3"),
        "{st}"
    );
    for k in ["created_at", "updated_at"] {
        assert!(
            st[k].as_str().unwrap().ends_with('Z'),
            "{k} is not RFC 3339 UTC: {st}"
        );
    }
    let a = step(&st, "a");
    assert_eq!(a["status"], "completed");
    assert_eq!(a["attempts"], 1);
    assert_eq!(a["output"], "out-a");
    assert!(a["duration_ms"].as_i64().unwrap() >= 0);
    assert!(a["started_at"].is_string() && a["finished_at"].is_string());
    let b = step(&st, "b");
    assert_eq!(b["status"], "failed");
    assert_eq!(b["attempt_history"][0]["exit_code"], 3);
    assert!(
        b["error"].as_str().unwrap().contains("err"),
        "stderr tail in error: {b}"
    );
}

#[test]
fn workflow_monitor_lists_active_workflows_and_counts_by_status() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let done = s.start(json!({"steps": [{"id": "a", "run": ["true"]}]}));
    s.wait_done(&done);
    let running = s.start(json!({"name": "long", "steps": [
        {"id": "a", "shell": "echo $$ > a.pid; sleep 30"}]}));
    sb.pid_in("a.pid");
    let m = s.call("workflow_monitor", json!({}));
    let listed: Vec<&str> = m["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["thread_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [running.as_str()],
        "finished workflows are hidden by default"
    );
    let w = &m["workflows"][0];
    assert_eq!(w["status"], "running");
    assert_eq!(w["name"], "long");
    assert_eq!(w["current_steps"], json!(["a"]));
    assert_eq!(w["progress"], json!({"done": 0, "total": 1}));
    assert_eq!(w["flags"], json!([]));
    assert!(w["owner"].is_string());
    assert_eq!(m["counts"], json!({"completed": 1, "running": 1}));
    let all = s.call("workflow_monitor", json!({"include_finished": true}));
    assert_eq!(all["workflows"].as_array().unwrap().len(), 2);
    let only = s.call("workflow_monitor", json!({"status": "completed"}));
    assert_eq!(only["workflows"][0]["thread_id"], done.as_str());
    s.call("invoke_cancel", json!({"thread_id": running}));
}

#[test]
fn same_thread_id_never_starts_a_second_workflow() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let wf = json!({"steps": [{"id": "a", "shell": "echo x >> runs.txt"}]});
    let first = s.start_as("job-42", wf.clone());
    assert_eq!(first["thread_id"], "job-42");
    assert_eq!(first["created"], true);
    s.wait_done("job-42");
    let again = s.start_as("job-42", wf);
    assert_eq!(again["thread_id"], "job-42");
    assert_eq!(again["created"], false);
    assert_eq!(again["status"], "completed");
    // A different definition under the same id is not started either.
    let other = s.start_as(
        "job-42",
        json!({"steps": [{"id": "z", "shell": "echo y >> runs.txt"}]}),
    );
    assert_eq!(other["created"], false);
    assert_eq!(sb.lines("runs.txt"), 1);
    // A second server on the same store agrees.
    drop(s);
    let mut s2 = sb.server();
    let third = s2.start_as("job-42", json!({"steps": [{"id": "a", "run": ["true"]}]}));
    assert_eq!(third["created"], false);
    assert_eq!(sb.lines("runs.txt"), 1);
}

#[test]
fn unknown_thread_id_is_a_tool_error_for_every_tool() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    for tool in [
        "invoke_status",
        "invoke_stream",
        "invoke_cancel",
        "invoke_resume",
    ] {
        let msg = s.call_err(tool, json!({"thread_id": "no-such-thread"}));
        assert!(msg.contains("unknown thread_id"), "{tool}: {msg}");
        assert!(msg.contains("no-such-thread"), "{tool}: {msg}");
    }
    let msg = s.call_err(
        "invoke_async",
        json!({"thread_id": "bad id with spaces", "workflow": {"steps": [{"run": ["true"]}]}}),
    );
    assert!(msg.contains("invalid thread_id"), "{msg}");
}

/// Each invalid definition, a thread id to submit it under, and words the refusal must name.
fn invalid_workflows() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        ("no-steps", json!({"steps": []}), vec!["steps", "no steps"]),
        (
            "cycle",
            json!({"steps": [{"id": "a", "deps": ["b"], "run": ["true"]},
                             {"id": "b", "deps": ["a"], "run": ["true"]}]}),
            vec!["cycle", "deps"],
        ),
        (
            "self-dep",
            json!({"steps": [{"id": "a", "deps": ["a"], "run": ["true"]}]}),
            vec!["itself"],
        ),
        (
            "unknown-dep",
            json!({"steps": [{"id": "a", "deps": ["nope"], "run": ["true"]}]}),
            vec!["\"a\"", "deps", "nope"],
        ),
        (
            "duplicate-id",
            json!({"steps": [{"id": "a", "run": ["true"]}, {"id": "a", "run": ["true"]}]}),
            vec!["duplicate", "id"],
        ),
        (
            "bad-id",
            json!({"steps": [{"id": "a b", "run": ["true"]}]}),
            vec!["id", "letters"],
        ),
        (
            "both-actions",
            json!({"steps": [{"id": "a", "run": ["true"], "prompt": "hi"}]}),
            vec!["\"a\"", "run", "prompt"],
        ),
        ("no-action", json!({"steps": [{"id": "a"}]}), vec!["\"a\""]),
        (
            "not-an-ancestor",
            json!({"steps": [{"id": "a", "run": ["true"]},
                             {"id": "b", "run": ["echo", "{a.output}"]}]}),
            vec!["\"b\"", "run[1]", "a"],
        ),
        (
            "unknown-step-ref",
            json!({"steps": [{"id": "a", "shell": "echo {ghost.output}"}]}),
            vec!["\"a\"", "shell", "ghost"],
        ),
        (
            "undeclared-input",
            json!({"inputs": {"x": {}}, "steps": [{"id": "a", "run": ["echo", "{inputs.y}"]}]}),
            vec!["\"a\"", "inputs.y"],
        ),
        (
            "single-quoted-shell-ref",
            json!({"steps": [{"id": "a", "run": ["true"]},
                             {"id": "b", "deps": ["a"], "shell": "echo '{a.output}'"}]}),
            vec!["\"b\"", "shell"],
        ),
        (
            "unknown-field",
            json!({"steps": [{"id": "a", "run": ["true"], "retires": 3}]}),
            vec!["retires"],
        ),
        (
            "wrong-type",
            json!({"steps": [{"id": "a", "run": "true", "timeout_s": "soon"}]}),
            vec!["run", "timeout_s"],
        ),
        ("not-an-object", json!(42), vec![]),
    ]
}

#[test]
fn each_class_of_invalid_workflow_is_rejected_with_nothing_persisted() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    for (thread_id, wf, words) in invalid_workflows() {
        let msg = s.call_err(
            "invoke_async",
            json!({"thread_id": thread_id, "workflow": wf}),
        );
        assert!(msg.contains("nothing was started"), "{thread_id}: {msg}");
        for w in words {
            assert!(
                msg.contains(w),
                "{thread_id}: refusal does not name {w:?}: {msg}"
            );
        }
        let unknown = s.call_err("invoke_status", json!({"thread_id": thread_id}));
        assert!(
            unknown.contains("unknown thread_id"),
            "{thread_id} was stored: {unknown}"
        );
    }
    // Every problem is listed at once, not just the first.
    let msg = s.call_err(
        "invoke_async",
        json!({"workflow": {"steps": [{"id": "a", "deps": ["x"], "run": ["true"]},
                                      {"id": "b", "deps": ["y"], "run": ["true"]}]}}),
    );
    assert!(msg.contains("\"x\"") && msg.contains("\"y\""), "{msg}");
    let missing = s.call_err("invoke_async", json!({}));
    assert!(missing.contains("workflow"), "{missing}");
    let m = s.call("workflow_monitor", json!({"include_finished": true}));
    assert_eq!(m["workflows"], json!([]));
    assert_eq!(m["counts"], json!({}));
    assert!(sb.lines("never.txt") == 0);
}

#[test]
fn workflow_file_and_inputs_are_accepted() {
    let sb = Sandbox::new();
    sb.write(
        "wf.json",
        r#"{"inputs": {"who": {}}, "steps": [{"id": "a", "run": ["echo", "hi {inputs.who}"]}]}"#,
    );
    let mut s = sb.server();
    let r = s.call(
        "invoke_async",
        json!({"file": "wf.json", "inputs": {"who": "there"}}),
    );
    let id = r["thread_id"].as_str().unwrap().to_owned();
    assert_eq!(r["step_count"], 1);
    s.wait_done(&id);
    assert_eq!(step(&s.status(&id), "a")["output"], "hi there");
    let msg = s.call_err("invoke_async", json!({"file": "missing.json"}));
    assert!(msg.contains("missing.json"), "{msg}");
}

#[test]
fn cursor_replay_loses_no_events() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "a", "run": ["true"]},
        {"id": "b", "deps": ["a"], "shell": "n=$(cat n 2>/dev/null || echo 0); echo $((n+1)) > n; [ $n -ge 1 ]",
         "retry": {"max_attempts": 3, "initial_interval_ms": 10, "jitter": false}},
        {"id": "c", "deps": ["a"], "run": ["true"]},
        {"id": "d", "deps": ["b", "c"], "run": ["true"]}
    ]}));
    // Follow in tiny pages that return before the workflow finishes.
    let (paged, last) = s.stream_pages(&id, 0, 0.0);
    assert_eq!(last["status"], "completed");
    let full = s.call(
        "invoke_stream",
        json!({"thread_id": id, "cursor": 0, "wait_s": 0}),
    );
    let full = full["events"].as_array().unwrap().clone();
    assert_eq!(paged, full, "paging lost or duplicated events");
    let seqs: Vec<i64> = full.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "seq increases by one per event");
    let k = kinds(&full);
    assert_eq!(k.first().map(String::as_str), Some("workflow_started"));
    assert_eq!(k.last().map(String::as_str), Some("workflow_completed"));
    assert_eq!(k.iter().filter(|t| *t == "step_completed").count(), 4);
    assert_eq!(k.iter().filter(|t| *t == "step_retrying").count(), 1);
    // Replaying from the middle gives exactly the rest.
    let mid = seqs[seqs.len() / 2];
    let rest = s.call(
        "invoke_stream",
        json!({"thread_id": id, "cursor": mid, "wait_s": 0}),
    );
    assert_eq!(rest["events"].as_array().unwrap()[..], full[mid as usize..]);
    assert_eq!(rest["next_cursor"], json!(seqs.len()));
    // Past the end: nothing, and the cursor stays.
    let end = seqs.len() as i64;
    let none = s.call(
        "invoke_stream",
        json!({"thread_id": id, "cursor": end, "wait_s": 0}),
    );
    assert_eq!(none["events"], json!([]));
    assert_eq!(none["next_cursor"], json!(end));
    assert_eq!(none["done"], true);
}

#[test]
fn retryable_failures_are_retried_with_every_attempt_recorded() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    // Fails on attempts 1 and 2, succeeds on 3; BATON_ATTEMPT numbers them.
    let id = s.start(json!({"steps": [
        {"id": "flaky",
         "shell": "echo $BATON_ATTEMPT >> tries; [ $(wc -l < tries) -ge 3 ] || { echo boom >&2; exit 7; }; echo ok",
         "retry": {"max_attempts": 3, "initial_interval_ms": 10, "jitter": false}}
    ]}));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed");
    let st = s.status(&id);
    let f = step(&st, "flaky");
    assert_eq!(f["attempts"], 3);
    assert_eq!(f["output"], "ok");
    assert_eq!(outcomes(&st, "flaky"), ["failed", "failed", "succeeded"]);
    assert_eq!(f["attempt_history"][0]["exit_code"], 7);
    assert!(
        f["attempt_history"][0]["error"]
            .as_str()
            .unwrap()
            .contains("boom")
    );
    assert_eq!(
        std::fs::read_to_string(sb.path("tries")).unwrap(),
        "1\n2\n3\n"
    );
    let (events, _) = s.stream_pages(&id, 0, 0.0);
    let retrying: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "step_retrying")
        .collect();
    assert_eq!(retrying.len(), 2);
    assert_eq!(retrying[0]["attempt"], 1);
    assert_eq!(retrying[0]["data"]["delay_ms"], 10);
    assert_eq!(retrying[1]["data"]["delay_ms"], 20, "backoff factor 2");
}

#[test]
fn exhausted_retries_fail_the_step_and_its_dependents_never_start() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "bad", "shell": "echo x >> bad.txt; exit 1",
         "retry": {"max_attempts": 2, "initial_interval_ms": 10, "jitter": false}},
        {"id": "after", "deps": ["bad"], "shell": "echo x >> after.txt"},
        {"id": "side", "shell": "echo x >> side.txt"}
    ]}));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "failed");
    let st = s.status(&id);
    assert_eq!(step(&st, "bad")["attempts"], 2);
    assert_eq!(step(&st, "bad")["status"], "failed");
    assert_eq!(step(&st, "after")["status"], "pending");
    assert_eq!(step(&st, "after")["attempts"], 0);
    assert_eq!(
        step(&st, "side")["status"],
        "completed",
        "independent branches finish"
    );
    assert_eq!(
        (
            sb.lines("bad.txt"),
            sb.lines("after.txt"),
            sb.lines("side.txt")
        ),
        (2, 0, 1)
    );
    assert!(st["error"].as_str().unwrap().contains("bad"), "{st}");
}

#[test]
fn non_retryable_errors_fail_after_one_attempt() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "auth", "shell": "echo x >> auth.txt; echo 'HTTP 401 Unauthorized' >&2; exit 1",
         "retry": {"max_attempts": 5, "initial_interval_ms": 10}},
        {"id": "custom", "shell": "echo x >> custom.txt; echo 'quota gone' >&2; exit 1",
         "retry": {"max_attempts": 5, "initial_interval_ms": 10, "non_retryable": ["QUOTA"]}},
        {"id": "missing", "run": ["/nonexistent/program"],
         "retry": {"max_attempts": 5, "initial_interval_ms": 10}}
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "failed");
    let st = s.status(&id);
    for id in ["auth", "custom", "missing"] {
        assert_eq!(step(&st, id)["attempts"], 1, "{id}: {st}");
        assert_eq!(step(&st, id)["status"], "failed");
    }
    assert_eq!((sb.lines("auth.txt"), sb.lines("custom.txt")), (1, 1));
}

#[test]
fn hostile_step_outputs_are_never_executed_by_shell_steps() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let payloads = [
        "'; touch pwned0; '",
        "$(touch pwned1)",
        "`touch pwned2`",
        "\"; touch pwned3; \"",
        "x\ntouch pwned4",
        "a && touch pwned5 || touch pwned6",
        "${IFS}$(touch${IFS}pwned7)",
    ];
    let mut steps = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        // The producer reads the payload from a file, so templates never see it.
        sb.write(&format!("payload{i}"), p);
        steps.push(json!({"id": format!("p{i}"), "run": ["cat", format!("payload{i}")]}));
        steps.push(json!({"id": format!("s{i}"), "deps": [format!("p{i}")],
                          "shell": format!("printf '%s' {{p{i}.output}}")}));
        steps.push(json!({"id": format!("v{i}"), "deps": [format!("p{i}")],
                          "shell": format!("v={{p{i}.output}}; echo {{p{i}.output}} > echoed{i}; printf '%s' \"$v\"")}));
        // Inside double quotes, with a step env that tries to shadow the value's variable.
        steps.push(json!({"id": format!("q{i}"), "deps": [format!("p{i}")],
                          "env": {"BATON_REF_1": "shadow"},
                          "shell": format!("printf '%s' \"<{{p{i}.output}}>\"")}));
    }
    let id = s.start(json!({"steps": steps}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(
            step(&st, &format!("s{i}"))["output"],
            *p,
            "the value arrives as data"
        );
        assert_eq!(step(&st, &format!("v{i}"))["output"], *p);
        assert_eq!(step(&st, &format!("q{i}"))["output"], format!("<{p}>"));
    }
    let pwned: Vec<String> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("pwned"))
        .collect();
    assert_eq!(pwned, Vec::<String>::new(), "a step output was executed");
}
