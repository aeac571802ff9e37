//! Agent steps end to end with the real Claude Code CLI (the version pinned by
//! `scripts/install-claude.sh`, found through `BATON_CLAUDE_BIN`) against a mock of the
//! Anthropic Messages API on 127.0.0.1. Skipped, with a notice, when the variable is unset.
//!
//! The mock decides each reply from the request, so the tests also prove what the CLI sent:
//! a resumed session's request carries the earlier turns.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::*;

/// The CLI to test, or `None` (with a printed notice) when it is not configured.
fn claude_bin(test: &str) -> Option<String> {
    match std::env::var("BATON_CLAUDE_BIN") {
        Ok(bin) if !bin.is_empty() => {
            assert!(
                std::path::Path::new(&bin).is_file(),
                "BATON_CLAUDE_BIN={bin} is not a file"
            );
            Some(bin)
        }
        _ => {
            eprintln!(
                "skipping {test}: BATON_CLAUDE_BIN is not set (scripts/install-claude.sh prints it)"
            );
            None
        }
    }
}

// ------------------------------------------------------------------------ the mock API

/// What the mock answers to one `POST /v1/messages`.
enum Reply {
    Text(String),
    /// A Bash tool use; the id must be unique within a session or the CLI drops the turn.
    Bash {
        id: String,
        command: String,
    },
    Error(u16, &'static str),
    /// Never answers (the client is killed meanwhile).
    Hang,
}

#[derive(Default)]
struct MockState {
    /// Bodies of every `POST /v1/messages`, in order.
    requests: Vec<Value>,
    /// How often each marker was seen.
    seen: HashMap<String, usize>,
}

struct MockApi {
    port: u16,
    state: Arc<Mutex<MockState>>,
}

impl MockApi {
    fn start() -> MockApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(MockState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        MockApi { port, state }
    }

    fn requests(&self) -> Vec<Value> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// One keep-alive connection: hand-rolled HTTP/1.1, enough for the CLI's fetch.
fn serve(conn: TcpStream, state: &Mutex<MockState>) {
    let mut out = conn.try_clone().unwrap();
    let mut input = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if input.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let body = read_body(&mut input, &headers);
        let path = target.split('?').next().unwrap_or("");
        let (status, content_type, payload) = match (method.as_str(), path) {
            ("POST", "/v1/messages") => {
                let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let reply = {
                    let mut st = state.lock().unwrap();
                    st.requests.push(req.clone());
                    decide(&req, &mut st)
                };
                let stream = req["stream"] == json!(true);
                match reply {
                    Reply::Hang => {
                        std::thread::sleep(Duration::from_secs(120));
                        return;
                    }
                    Reply::Error(code, kind) => (
                        code,
                        "application/json",
                        json!({"type": "error", "error": {"type": kind,
                               "message": "mock failure"}})
                        .to_string(),
                    ),
                    reply if stream => (200, "text/event-stream", sse(&req, &reply)),
                    reply => (200, "application/json", message(&req, &reply).to_string()),
                }
            }
            ("POST", "/v1/messages/count_tokens") => {
                (200, "application/json", r#"{"input_tokens":10}"#.to_owned())
            }
            _ => (
                404,
                "application/json",
                json!({"type": "error", "error": {"type": "not_found_error",
                       "message": format!("no route {method} {path}")}})
                .to_string(),
            ),
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             request-id: req_mock\r\nconnection: keep-alive\r\n\r\n",
            if status == 200 { "OK" } else { "Error" },
            payload.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(payload.as_bytes()).is_err() {
            return;
        }
    }
}

fn read_body(input: &mut BufReader<TcpStream>, headers: &HashMap<String, String>) -> Vec<u8> {
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            input.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            input.read_exact(&mut chunk).unwrap();
            if n == 0 {
                return body;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let n = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    body.resize(n, 0);
    input.read_exact(&mut body).unwrap();
    body
}

/// Text blocks a person typed (not the CLI's `<system-reminder>`s) of one message.
fn typed_texts(m: &Value) -> Vec<String> {
    match &m["content"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter(|c| c["type"] == "text")
            .filter_map(|c| c["text"].as_str())
            .filter(|t| !t.starts_with("<system-reminder>") && *t != "(no content)")
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn strip_markers(s: &str) -> String {
    let re = regex::Regex::new(r"\[\[[^\]]*\]\]").unwrap();
    re.replace_all(s, "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The reply to a request, by markers in the latest prompt:
/// `[[say:X]]`, `[[bash]]` (a Bash tool use that writes a file), `[[api-error]]` (always a
/// 500), `[[fail-once]]` (a 500 the first time), `[[hang-once]]` (no answer the first time),
/// `[[history]]` (list the earlier prompts of the conversation).
fn decide(req: &Value, st: &mut MockState) -> Reply {
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let users: Vec<&Value> = messages.iter().filter(|m| m["role"] == "user").collect();
    let Some(last) = users.last() else {
        return Reply::Text("hello".into());
    };
    if let Some(result) = last["content"]
        .as_array()
        .and_then(|c| c.iter().find(|x| x["type"] == "tool_result"))
    {
        let denied = result["is_error"] == json!(true);
        return Reply::Text(if denied {
            "The command was not allowed.".into()
        } else {
            "The file is created.".into()
        });
    }
    let prompts: Vec<String> = users.iter().flat_map(|m| typed_texts(m)).collect();
    let prompt = prompts.last().cloned().unwrap_or_default();
    let mut first = |marker: &str| {
        let n = st.seen.entry(marker.to_owned()).or_default();
        *n += 1;
        *n == 1
    };
    if prompt.contains("[[api-error]]") {
        return Reply::Error(500, "api_error");
    }
    if prompt.contains("[[fail-once]]") && first("fail-once") {
        return Reply::Error(500, "api_error");
    }
    if prompt.contains("[[hang-once]]") && first("hang-once") {
        return Reply::Hang;
    }
    if prompt.contains("[[bash]]") {
        return Reply::Bash {
            id: format!("toolu_mock{:04}", st.requests.len()),
            command: "touch made-by-claude.txt".into(),
        };
    }
    if let Some(i) = prompt.find("[[say:") {
        let rest = &prompt[i + 6..];
        return Reply::Text(rest[..rest.find("]]").unwrap_or(rest.len())].to_owned());
    }
    let mut text = format!("ok: {}", strip_markers(&prompt));
    if prompt.contains("[[history]]") {
        let earlier: Vec<String> = prompts[..prompts.len() - 1]
            .iter()
            .map(|p| strip_markers(p))
            .collect();
        text.push_str(&format!(" | history: {}", earlier.join(" | ")));
    }
    Reply::Text(text)
}

fn usage() -> Value {
    json!({"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 0,
           "cache_read_input_tokens": 0})
}

fn content(reply: &Reply) -> (Value, &'static str) {
    match reply {
        Reply::Bash { id, command } => (
            json!({"type": "tool_use", "id": id, "name": "Bash",
                   "input": {"command": command, "description": "Create a file"}}),
            "tool_use",
        ),
        Reply::Text(t) => (json!({"type": "text", "text": t}), "end_turn"),
        Reply::Error(..) | Reply::Hang => (json!({"type": "text", "text": ""}), "end_turn"),
    }
}

fn message(req: &Value, reply: &Reply) -> Value {
    let (block, stop) = content(reply);
    json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": req["model"],
           "content": [block], "stop_reason": stop, "stop_sequence": null, "usage": usage()})
}

/// The streaming form: message_start, one content block, message_delta, message_stop.
fn sse(req: &Value, reply: &Reply) -> String {
    let (block, stop) = content(reply);
    let (start, delta) = if block["type"] == "tool_use" {
        (
            json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
            json!({"type": "input_json_delta", "partial_json": block["input"].to_string()}),
        )
    } else {
        (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": block["text"]}),
        )
    };
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
                   "role": "assistant", "model": req["model"], "content": [],
                   "stop_reason": null, "stop_sequence": null,
                   "usage": {"input_tokens": 100, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": start}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                   "usage": {"output_tokens": 20}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

// ------------------------------------------------------------------------ the tests

/// A sandbox whose servers run the real CLI against a fresh mock, offline, with `$HOME` in
/// the sandbox.
struct RealClaude {
    sb: Sandbox,
    bin: String,
    api: MockApi,
    home: PathBuf,
    work: PathBuf,
}

impl RealClaude {
    fn new(bin: String) -> RealClaude {
        let sb = Sandbox::new();
        let home = sb.path("home");
        let work = sb.path("work");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        RealClaude {
            sb,
            bin,
            api: MockApi::start(),
            home,
            work,
        }
    }

    fn server(&self, extra: &[(&str, &str)]) -> Server {
        let command = shell_words::quote(&self.bin).into_owned();
        let url = format!("http://127.0.0.1:{}", self.api.port);
        let home = self.home.to_str().unwrap();
        let mut env = vec![
            ("BATON_AGENT_COMMAND", command.as_str()),
            ("HOME", home),
            ("ANTHROPIC_BASE_URL", url.as_str()),
            ("ANTHROPIC_API_KEY", "test"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("DISABLE_TELEMETRY", "1"),
            ("DISABLE_ERROR_REPORTING", "1"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            // The CLI's own API retries (with backoff) would hide baton's.
            ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ];
        env.extend_from_slice(extra);
        self.sb.server_with(&env, Protocol::V2025)
    }

    fn workflow(&self, steps: Value) -> Value {
        json!({
            "name": "real-claude",
            "defaults": {"cwd": self.work, "timeout_s": 120,
                         "retry": {"initial_interval_ms": 20, "jitter": false}},
            "steps": steps
        })
    }
}

fn session_of(status: &Value, id: &str) -> String {
    step(status, id)["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no session for {id}: {status}"))
        .to_owned()
}

#[test]
fn real_claude_chains_two_steps_through_a_template() {
    let Some(bin) = claude_bin("real_claude_chains_two_steps_through_a_template") else {
        return;
    };
    let rc = RealClaude::new(bin);
    let mut s = rc.server(&[]);
    let id = s.start(rc.workflow(json!([
        {"id": "plan", "prompt": "Plan the change [[say:PLAN-7: add a flag]]"},
        {"id": "build", "deps": ["plan"], "prompt": "Implement {plan.output}"}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let status = s.status(&id);
    assert_eq!(step(&status, "plan")["output"], "PLAN-7: add a flag");
    assert_eq!(
        step(&status, "build")["output"],
        "ok: Implement PLAN-7: add a flag"
    );
    let plan_session = session_of(&status, "plan");
    assert_ne!(plan_session, session_of(&status, "build"));
    assert_eq!(
        step(&status, "plan")["attempt_history"][0]["session_id"],
        plan_session.as_str()
    );
    // Costs come from the CLI's result lines and add up per workflow.
    let costs: f64 = ["plan", "build"]
        .iter()
        .map(|s| {
            step(&status, s)["attempt_history"][0]["cost_usd"]
                .as_f64()
                .unwrap()
        })
        .sum();
    let total = status["total_cost_usd"].as_f64().unwrap();
    assert!(total > 0.0 && (total - costs).abs() < 1e-9, "{status}");
    // What the CLI sent: the rendered prompt as the last user text.
    let reqs = rc.api.requests();
    assert!(
        reqs.iter().any(|r| r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(typed_texts)
            .any(|t| t == "Implement PLAN-7: add a flag")),
        "no request carried the rendered prompt"
    );
}

#[test]
fn real_claude_failed_attempt_is_retried_with_its_conversation() {
    let Some(bin) = claude_bin("real_claude_failed_attempt_is_retried_with_its_conversation")
    else {
        return;
    };
    let rc = RealClaude::new(bin);
    let mut s = rc.server(&[]);
    let id = s.start(rc.workflow(json!([
        {"id": "fix", "prompt": "Fix the parser [[fail-once]] [[history]]"}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let status = s.status(&id);
    let st = step(&status, "fix");
    let history = st["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{st}");
    assert_eq!(history[0]["outcome"], "failed");
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap()
            .contains("API Error: 500"),
        "{st}"
    );
    let sid = session_of(&status, "fix");
    assert_eq!(history[0]["session_id"], sid.as_str());
    assert_eq!(history[1]["session_id"], sid.as_str());
    // The retry's request carried the first attempt's prompt as an earlier turn.
    let output = st["output"].as_str().unwrap();
    assert!(
        output.contains("| history: Fix the parser"),
        "the retried session lost its history: {output}"
    );
}

#[test]
fn real_claude_persistent_api_error_fails_after_max_attempts() {
    let Some(bin) = claude_bin("real_claude_persistent_api_error_fails_after_max_attempts") else {
        return;
    };
    let rc = RealClaude::new(bin);
    let mut s = rc.server(&[]);
    let id = s.start(rc.workflow(json!([
        {"id": "call", "prompt": "Call the model [[api-error]]", "retry": {"max_attempts": 2}}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "failed", "{done}");
    let status = s.status(&id);
    let st = step(&status, "call");
    assert_eq!(st["status"], "failed");
    assert_eq!(st["attempts"], 2);
    assert!(
        st["error"].as_str().unwrap().contains("API Error: 500"),
        "{st}"
    );
    let sid = session_of(&status, "call");
    for a in st["attempt_history"].as_array().unwrap() {
        assert_eq!(a["outcome"], "failed");
        assert_eq!(a["session_id"], sid.as_str(), "{st}");
    }
}

#[test]
fn real_claude_permission_denial_blocks_until_resumed_with_a_permission_override() {
    let Some(bin) = claude_bin("real_claude_permission_denial_blocks") else {
        return;
    };
    let rc = RealClaude::new(bin);
    let mut s = rc.server(&[]);
    let id = s.start(rc.workflow(json!([
        {"id": "touch", "prompt": "Create the marker file [[bash]]"}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "blocked", "{done}");
    let status = s.status(&id);
    let st = step(&status, "touch");
    assert_eq!(st["status"], "blocked");
    assert!(st["error"].as_str().unwrap().contains("Bash"), "{st}");
    assert!(!rc.work.join("made-by-claude.txt").exists());
    let sid = session_of(&status, "touch");

    // acceptEdits lets the CLI create files in its cwd (bypassPermissions is refused as root).
    let r = s.call(
        "invoke_resume",
        json!({"thread_id": id, "agent": {"permission_mode": "acceptEdits"}}),
    );
    assert_eq!(r["status"], "running", "{r}");
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    assert!(rc.work.join("made-by-claude.txt").exists());
    let status = s.status(&id);
    assert_eq!(session_of(&status, "touch"), sid);
    assert_eq!(step(&status, "touch")["output"], "The file is created.");
}

#[test]
fn real_claude_step_resumes_its_session_after_the_server_is_killed() {
    let Some(bin) = claude_bin("real_claude_step_resumes_its_session_after_kill") else {
        return;
    };
    let rc = RealClaude::new(bin);
    let lease = [("BATON_LEASE_MS", "600")];
    let mut s = rc.server(&lease);
    let id = s.start(rc.workflow(json!([
        {"id": "long", "prompt": "Refactor the module [[hang-once]] [[history]]"}
    ])));
    // The session is recorded when the CLI's init line arrives; the mock then holds the
    // request, so the step is mid-run when the server dies.
    eventually(
        "the session id is recorded and the request is in flight",
        || step(&s.status(&id), "long")["session_id"].is_string() && !rc.api.requests().is_empty(),
    );
    let sid = session_of(&s.status(&id), "long");
    // ...and once the CLI has written the session's transcript (killed before that, the step
    // would rightly start a new session: there is nothing to resume).
    let projects = rc.home.join(".claude/projects");
    eventually("the CLI saved the session", || {
        std::fs::read_dir(&projects).is_ok_and(|dirs| {
            dirs.flatten()
                .any(|d| d.path().join(format!("{sid}.jsonl")).is_file())
        })
    });
    s.kill9();

    let mut s = rc.server(&lease);
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let status = s.status(&id);
    let st = step(&status, "long");
    assert_eq!(session_of(&status, "long"), sid);
    let history = st["attempt_history"].as_array().unwrap();
    assert_eq!(history[0]["outcome"], "crashed", "{st}");
    assert_eq!(history.last().unwrap()["outcome"], "succeeded");
    assert_eq!(history.last().unwrap()["session_id"], sid.as_str());
    let output = st["output"].as_str().unwrap();
    assert!(
        output.contains("| history: Refactor the module"),
        "the resumed session lost its history: {output}"
    );
}

#[test]
fn real_claude_prompt_that_looks_like_options_arrives_as_text() {
    let Some(bin) = claude_bin("real_claude_prompt_that_looks_like_options_arrives_as_text") else {
        return;
    };
    let rc = RealClaude::new(bin);
    let mut s = rc.server(&[]);
    // In option position this would install settings for the run; on stdin it is text.
    let hostile = "--settings={\"env\":{\"X\":\"1\"}} -x\n  two lines, spaces kept  ";
    let id = s.start(rc.workflow(json!([
        {"id": "a", "run": ["printf", "%s", hostile]},
        {"id": "b", "deps": ["a"], "prompt": "{a.output}\n\n"}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let sent = format!("{}\n\n", hostile.trim_end());
    assert!(
        rc.api.requests().iter().any(|r| r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(typed_texts)
            .any(|t| t == sent)),
        "no request carried the prompt byte for byte"
    );
}
