//! Completion pushed to the model: the `claude/channel` capability, and one
//! `notifications/claude/channel` message when a workflow this session started or resumed
//! completes, fails or blocks — none for workflows of other sessions.

use serde_json::{Value, json};

use crate::util::{Protocol, Sandbox};

fn channel_messages(s: &crate::util::Server) -> Vec<Value> {
    s.notifications
        .iter()
        .filter(|n| n["method"] == "notifications/claude/channel")
        .cloned()
        .collect()
}

#[test]
fn the_server_declares_the_claude_channel_capability() {
    let sb = Sandbox::new();
    let mut s = sb.server_with(&[], Protocol::V2026);
    let r = s.request("server/discover", json!({}));
    assert_eq!(
        r["result"]["capabilities"]["experimental"]["claude/channel"],
        json!({}),
        "{r}"
    );
}

#[test]
fn a_workflow_this_session_started_pushes_one_channel_message_when_it_stops() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let ok = s.call(
        "invoke_async",
        json!({"workflow": {"name": "hello", "steps": [
            {"id": "a", "run": ["echo", "the answer is 42"]}]}}),
    )["thread_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let n = s.wait_notification("notifications/claude/channel");
    let p = &n["params"];
    assert_eq!(p["meta"]["thread_id"], ok.as_str(), "{n}");
    assert_eq!(p["meta"]["status"], "completed");
    assert_eq!(p["meta"]["workflow"], "hello");
    let text = p["content"].as_str().unwrap();
    assert!(text.contains("completed"), "{text}");
    assert!(text.contains("the answer is 42"), "{text}");
    assert!(text.contains("invoke_status"), "{text}");

    // A failure says which step and what to call next; a resume that fails again is told again.
    let bad = s.call(
        "invoke_async",
        json!({"workflow": {"steps": [{"id": "boom", "shell": "echo nope >&2; exit 3",
            "retry": {"max_attempts": 1}}]}}),
    )["thread_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let n = s.wait_notification("notifications/claude/channel");
    assert_eq!(n["params"]["meta"]["thread_id"], bad.as_str(), "{n}");
    assert_eq!(n["params"]["meta"]["status"], "failed");
    let text = n["params"]["content"].as_str().unwrap();
    assert!(text.contains("\"boom\""), "{text}");
    assert!(text.contains("invoke_resume"), "{text}");
    s.call("invoke_resume", json!({"thread_id": bad}));
    let n = s.wait_notification("notifications/claude/channel");
    assert_eq!(n["params"]["meta"]["thread_id"], bad.as_str(), "{n}");

    // Each stop is told once.
    s.wait_done(&ok);
    s.status(&ok);
    assert!(
        channel_messages(&s).is_empty(),
        "{:?}",
        channel_messages(&s)
    );
}

#[test]
fn workflows_of_other_sessions_push_nothing() {
    let sb = Sandbox::new();
    let mut other = sb.server();
    let id = other.start(json!({"steps": [{"run": ["true"]}]}));
    other.wait_done(&id);
    let mut s = sb.server();
    let mine = s.start(json!({"steps": [{"run": ["true"]}]}));
    let n = s.wait_notification("notifications/claude/channel");
    assert_eq!(n["params"]["meta"]["thread_id"], mine.as_str());
    s.status(&id);
    assert!(
        channel_messages(&s).is_empty(),
        "{:?}",
        channel_messages(&s)
    );
}

#[test]
fn mcp_protocol_caps_the_offered_versions_so_hosts_fall_back_to_initialize() {
    let sb = Sandbox::new();
    let mut s = sb.server_with(&[("BATON_MCP_PROTOCOL", "2025-11-25")], Protocol::V2026);
    let r = s.request("server/discover", json!({}));
    let offered = r["result"]["supportedVersions"]
        .as_array()
        .cloned()
        .or_else(|| r["error"]["data"]["supported"].as_array().cloned())
        .unwrap_or_default();
    assert!(
        r.get("error").is_some() || !offered.contains(&json!("2026-07-28")),
        "{r}"
    );
    // A 2025-11-25 session works as usual.
    let mut legacy = sb.server_with(&[("BATON_MCP_PROTOCOL", "2025-11-25")], Protocol::V2025);
    let id = legacy.start(json!({"steps": [{"run": ["true"]}]}));
    let n = legacy.wait_notification("notifications/claude/channel");
    assert_eq!(n["params"]["meta"]["thread_id"], id.as_str());
}
