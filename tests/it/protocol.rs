//! The JSON-RPC surface: both protocol versions, malformed and wrong-typed requests. The
//! harness itself checks that stdout carries nothing but JSON-RPC.

use serde_json::json;

use crate::util::*;

/// Asserts the server still answers properly.
fn still_serves(s: &mut Server) {
    let r = s.request("tools/list", json!({}));
    assert_eq!(
        r["result"]["tools"].as_array().map(Vec::len),
        Some(7),
        "{r}"
    );
}

#[test]
fn malformed_json_rpc_never_stops_the_server() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    // JSON that is not a JSON-RPC message: an Invalid Request error.
    for line in [
        "\"just a string\"",
        "42",
        "[1, 2]",
        r#"{"jsonrpc": "2.0", "id": 5}"#,
        r#"{"jsonrpc": "1.0", "id": 6, "method": "ping"}"#,
        r#"{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": "oops"}"#,
    ] {
        s.send_raw(line);
        let r = s.next_response();
        assert_eq!(r["error"]["code"], -32600, "{line}: {r}");
        still_serves(&mut s);
    }
    // Lines that are not JSON at all are dropped by the SDK's transport (no -32700 reply);
    // what matters is that the session survives them.
    for line in [
        "{not json",
        "[1, 2",
        r#"{"jsonrpc": "2.0", "id": 77"#,
        "\u{0}\u{1}",
    ] {
        s.send_raw(line);
        still_serves(&mut s);
    }
}

#[test]
fn invalid_requests_get_errors_and_the_server_keeps_serving() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let e = s.request_err("no/such/method", json!({}));
    assert_eq!(e["code"], -32601, "{e}");
    let e = s.request_err("tools/call", json!({"arguments": {}}));
    assert!(e["code"].as_i64().is_some(), "{e}");
    let r = s.request(
        "tools/call",
        json!({"name": "no_such_tool", "arguments": {}}),
    );
    assert!(
        r.get("error").is_some() || r["result"]["isError"] == true,
        "unknown tool: {r}"
    );
    // Wrong types and missing arguments: under MCP 2025-11-25 input validation errors are
    // tool execution errors (isError) a model can correct, naming what is wrong.
    for (tool, args, says) in [
        (
            "invoke_status",
            json!({"thread_id": 5}),
            "expected a string",
        ),
        ("invoke_status", json!({}), "thread_id"),
        (
            "invoke_stream",
            json!({"thread_id": "x", "cursor": "three"}),
            "three",
        ),
        (
            "invoke_stream",
            json!({"thread_id": "x", "wait_s": [1]}),
            "sequence",
        ),
        (
            "invoke_resume",
            json!({"thread_id": "x", "mode": "sideways"}),
            "sideways",
        ),
        ("workflow_monitor", json!({"limit": "ten"}), "ten"),
        (
            "workflow_monitor",
            json!({"status": "sleeping"}),
            "sleeping",
        ),
        (
            "invoke_async",
            json!({"inputs": "x", "workflow": {"steps": []}}),
            "map",
        ),
    ] {
        let r = s.call_raw(tool, args.clone(), None);
        let text = r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default();
        let refused = r.get("error").is_some() || r["result"]["isError"] == true;
        assert!(refused, "{tool} {args}: {r}");
        assert!(
            text.contains(says) || r["error"].to_string().contains(says),
            "{tool} {args} does not say {says:?}: {r}"
        );
    }
    // Notifications the server does not know are ignored.
    s.notify("notifications/made_up", json!({"x": 1}));
    still_serves(&mut s);
    // A workflow still runs end to end after all that.
    let id = s.start(json!({"steps": [{"id": "a", "run": ["echo", "fine"]}]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
}

#[test]
fn protocol_2026_runs_a_workflow_with_meta_on_every_request() {
    let sb = Sandbox::new();
    let mut s = sb.server_with(&[], Protocol::V2026);
    still_serves(&mut s);
    let id = s.start(json!({"steps": [
        {"id": "a", "run": ["echo", "one"]},
        {"id": "b", "deps": ["a"], "shell": "echo two:{a.output}"}
    ]}));
    let r = s.call_raw(
        "invoke_stream",
        json!({"thread_id": id, "wait_s": 30}),
        Some("t26"),
    );
    let r = &r["result"]["structuredContent"];
    assert_eq!(r["status"], "completed", "{r}");
    let progress: Vec<_> = s
        .notifications
        .iter()
        .filter(|n| {
            n["method"] == "notifications/progress" && n["params"]["progressToken"] == "t26"
        })
        .collect();
    assert_eq!(progress.len(), r["events"].as_array().unwrap().len());
    let mut last = -1.0;
    for n in progress {
        let v = n["params"]["progress"].as_f64().unwrap();
        assert!(v > last);
        last = v;
        assert_eq!(n["params"]["total"], json!(2.0));
    }
    assert_eq!(step(&s.status(&id), "b")["output"], "two:one");
    let e = s.request_err("no/such/method", json!({}));
    assert_eq!(e["code"], -32601);
}

#[test]
fn progress_notifications_rise_monotonically_and_name_what_happened() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "first", "run": ["true"]},
        {"id": "flaky", "deps": ["first"], "shell": "echo x >> f; [ $(wc -l < f) -ge 2 ]",
         "retry": {"initial_interval_ms": 10, "jitter": false}},
        {"id": "last", "deps": ["flaky"], "run": ["true"]}
    ]}));
    // Two calls: the second continues from the first's cursor on a new token.
    let r1 = s.call_raw(
        "invoke_stream",
        json!({"thread_id": id, "wait_s": 0}),
        Some("p1"),
    );
    let cursor = r1["result"]["structuredContent"]["next_cursor"].clone();
    let r2 = s.call_raw(
        "invoke_stream",
        json!({"thread_id": id, "cursor": cursor, "wait_s": 30}),
        Some("p2"),
    );
    assert_eq!(r2["result"]["structuredContent"]["status"], "completed");
    let messages: Vec<String> = s
        .notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .map(|n| n["params"]["message"].as_str().unwrap().to_owned())
        .collect();
    let all = messages.join("\n");
    for needle in [
        "first: completed",
        "flaky: attempt 1 failed",
        "retrying",
        "workflow completed",
    ] {
        assert!(
            all.contains(needle),
            "no progress message with {needle:?}:\n{all}"
        );
    }
    for token in ["p1", "p2"] {
        let mut last = -1.0;
        for n in s
            .notifications
            .iter()
            .filter(|n| n["params"]["progressToken"] == token)
        {
            let p = &n["params"];
            let v = p["progress"].as_f64().unwrap();
            assert!(v > last, "{token}: {v} after {last}");
            assert!(v <= p["total"].as_f64().unwrap(), "{p}");
            last = v;
        }
    }
}

#[test]
fn waiting_stream_sends_keepalive_progress_and_returns_at_wait_s() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let gate = sb.path("gate");
    let id = s.start(json!({"steps": [{"id": "slow", "shell": format!(
        "i=0; while [ ! -e {} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
        gate.display())}]}));
    // Nothing happens for 11 s: the call must keep the client's timeout alive (a progress
    // notification at least every 15 s) and return when wait_s runs out, resumable.
    let r = s.call_raw(
        "invoke_stream",
        json!({"thread_id": id, "wait_s": 11}),
        Some("k"),
    );
    let r = &r["result"]["structuredContent"];
    assert_eq!(r["done"], json!(false), "{r}");
    assert_eq!(r["status"], "running");
    let progress: Vec<&serde_json::Value> = s
        .notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress" && n["params"]["progressToken"] == "k")
        .collect();
    assert!(
        progress.iter().any(|n| n["params"]["message"]
            .as_str()
            .unwrap()
            .starts_with("waiting")),
        "no keepalive among {progress:?}"
    );
    let values: Vec<f64> = progress
        .iter()
        .map(|n| n["params"]["progress"].as_f64().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    sb.write("gate", "");
    let done = s.call(
        "invoke_stream",
        json!({"thread_id": id, "cursor": r["next_cursor"], "wait_s": 30}),
    );
    assert_eq!(done["status"], "completed");
}

#[test]
fn a_request_whose_id_can_be_read_is_answered_with_that_id() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    for (line, id) in [
        (r#"{"jsonrpc":"2.0","id":7,"method":5}"#, json!(7)),
        (
            r#"{"jsonrpc":"2.0","id":"x-1","method":"tools/call","params":3}"#,
            json!("x-1"),
        ),
        (r#"{"jsonrpc":"2.0","id":9}"#, json!(9)),
    ] {
        s.send_raw(line);
        let r = s.next_response();
        assert_eq!(r["id"], id, "{line}: {r}");
        assert_eq!(r["error"]["code"], -32600, "{line}: {r}");
        still_serves(&mut s);
    }
}
