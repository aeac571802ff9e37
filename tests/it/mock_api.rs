//! A mock of the Anthropic Messages API on 127.0.0.1 for the real Claude Code CLI: each reply
//! is decided from the request (markers in the prompt, tool results), so tests also prove
//! what the CLI sent.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

// ------------------------------------------------------------------------ the mock API

/// What the mock answers to one `POST /v1/messages`.
pub enum Reply {
    Text(String),
    /// A tool use; the id must be unique within a session or the CLI drops the turn.
    Tool {
        id: String,
        name: String,
        input: Value,
    },
    Error(u16, &'static str),
    /// Never answers (the client is killed meanwhile).
    Hang,
}

#[derive(Default)]
pub struct MockState {
    /// Bodies of every `POST /v1/messages`, in order.
    pub requests: Vec<Value>,
    /// How often each marker was seen.
    pub seen: HashMap<String, usize>,
}

pub struct MockApi {
    pub port: u16,
    state: Arc<Mutex<MockState>>,
}

impl MockApi {
    pub fn start() -> MockApi {
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

    pub fn requests(&self) -> Vec<Value> {
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
pub fn typed_texts(m: &Value) -> Vec<String> {
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
    if let Some(reply) = host_reply(&users, st) {
        return reply;
    }
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
        return Reply::Tool {
            id: format!("toolu_mock{:04}", st.requests.len()),
            name: "Bash".into(),
            input: json!({"command": "touch made-by-claude.txt", "description": "Create a file"}),
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
        Reply::Tool { id, name, input } => (
            json!({"type": "tool_use", "id": id, "name": name, "input": input}),
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

/// Baton as the CLI's MCP server: a message from one of baton's prompts (a saved workflow's
/// slash command) is answered with the `invoke_async` call it asks for, and that call's
/// result with a short acknowledgement naming the thread id.
fn host_reply(users: &[&Value], st: &MockState) -> Option<Reply> {
    const ASK: &str = "invoke_async with exactly these arguments:\n";
    let last = users.last()?;
    if let Some(result) = last["content"]
        .as_array()
        .and_then(|c| c.iter().find(|x| x["type"] == "tool_result"))
    {
        let text = result["content"].to_string();
        let id = regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
            .unwrap()
            .find(&text)?
            .as_str()
            .to_owned();
        return Some(Reply::Text(format!("Started baton workflow {id}.")));
    }
    let prompt = users
        .iter()
        .flat_map(|m| typed_texts(m))
        .find(|t| t.contains(ASK))?;
    let args = prompt[prompt.find(ASK)? + ASK.len()..]
        .lines()
        .next()?
        .to_owned();
    let input: Value = serde_json::from_str(&args).ok()?;
    Some(Reply::Tool {
        id: format!("toolu_host{:04}", st.requests.len()),
        name: "mcp__baton__invoke_async".into(),
        input,
    })
}
