//! The HTTP front-end (DESIGN.md §12) over real HTTP against the real binary: auth, REST,
//! server-sent events across kill -9 and across processes, slow clients, tool links.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{Receiver, channel};
use std::time::Instant;

use serde_json::{Value, json};

use crate::util::{PATIENCE, Protocol, Sandbox, Server, eventually};

/// A `baton serve` with HTTP on a free port, and how to call it.
pub struct Http {
    pub base: String,
    pub token: String,
    agent: ureq::Agent,
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent()
}

/// Starts `baton serve --http 127.0.0.1:0` (plus `env`) and waits for its `baton.http`.
pub fn serve_http(sb: &Sandbox, env: &[(&str, &str)]) -> (Server, Http) {
    let _ = std::fs::remove_file(sb.path("baton.http"));
    let mut all = vec![("BATON_HTTP", "127.0.0.1:0")];
    all.extend_from_slice(env);
    let server = sb.server_with(&all, Protocol::V2025);
    (server, http_of(sb))
}

pub fn http_of(sb: &Sandbox) -> Http {
    eventually("baton.http is written", || sb.beside("baton.http").exists());
    let file = sb.beside("baton.http");
    let base = std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .trim_end_matches('/')
        .to_owned();
    let token = std::fs::read_to_string(sb.beside("baton.token"))
        .unwrap()
        .trim()
        .to_owned();
    Http {
        base,
        token,
        agent: agent(),
    }
}

impl Http {
    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut r = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", self.auth())
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }
    pub fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
    pub fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut r = match method {
            "DELETE" => self
                .agent
                .delete(&url)
                .header("Authorization", self.auth())
                .call()
                .unwrap(),
            _ => self
                .agent
                .post(&url)
                .header("Authorization", self.auth())
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string())
                .unwrap(),
        };
        let code = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    pub fn start(&self, workflow: Value) -> String {
        let (code, r) = self.send(
            "POST",
            "/api/workflows",
            Some(json!({ "workflow": workflow })),
        );
        assert_eq!(code, 201, "{r}");
        r["thread_id"].as_str().unwrap().to_owned()
    }
    /// Opens an event stream; events arrive on the channel as (id, data).
    pub fn events(&self, path: &str, last_event_id: Option<i64>) -> Receiver<(i64, Value)> {
        let mut req = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", self.auth());
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let reader = BufReader::new(resp.into_body().into_reader());
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut id = None;
            let mut data = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                } else if line.is_empty() {
                    if let (Some(i), false) = (id.take(), data.is_empty()) {
                        let v: Value = serde_json::from_str(&data).unwrap();
                        if tx.send((i, v)).is_err() {
                            return;
                        }
                    }
                    data.clear();
                }
            }
        });
        rx
    }
}

/// Receives events until one of type `until` (inclusive).
fn collect_until(rx: &Receiver<(i64, Value)>, until: &str) -> Vec<(i64, Value)> {
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (id, v) = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no {until} event ({e}); got {out:?}"));
        let stop = v["type"] == until;
        out.push((id, v));
        if stop {
            return out;
        }
    }
}

/// Follows `path` until an event of type `until`, reconnecting with `Last-Event-ID` when the
/// server drops the stream (as it does to a client slower than its send timeout), as an
/// EventSource does: no event is lost or doubled across reconnects.
fn follow_until(h: &Http, path: &str, until: &str) -> Vec<(i64, Value)> {
    let deadline = Instant::now() + PATIENCE;
    let mut out: Vec<(i64, Value)> = Vec::new();
    loop {
        let rx = h.events(path, out.last().map(|(id, _)| *id));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((id, v)) => {
                    let stop = v["type"] == until;
                    out.push((id, v));
                    if stop {
                        return out;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("no {until} event ({e}); got {out:?}"),
            }
        }
    }
}

fn chain(n: usize, cmd: &str) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "shell": cmd});
            if i > 0 {
                s["deps"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({"name": "chain", "steps": steps})
}

#[test]
fn api_refuses_without_the_token_and_says_nothing() {
    let sb = Sandbox::new();
    let (_server, h) = serve_http(&sb, &[]);
    let a = agent();
    let url = format!("{}/api/workflows", h.base);
    for auth in [None, Some("Bearer wrong"), Some("Basic x")] {
        let mut req = a.get(&url);
        if let Some(v) = auth {
            req = req.header("Authorization", v);
        }
        let mut r = req.call().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        assert_eq!(r.body_mut().read_to_string().unwrap(), "", "no detail");
    }
    let wrong = a.get(format!("{url}?token=nope")).call().unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    // Token files are private.
    use std::os::unix::fs::PermissionsExt;
    for f in ["baton.token", "baton.http"] {
        let mode = std::fs::metadata(sb.path(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // healthz needs no token; metrics does.
    assert_eq!(
        a.get(format!("{}/healthz", h.base))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        a.get(format!("{}/metrics", h.base))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
}

#[test]
fn token_query_sets_a_strict_httponly_cookie_that_then_authenticates() {
    let sb = Sandbox::new();
    let (_server, h) = serve_http(&sb, &[]);
    let a = agent();
    let r = a
        .get(format!("{}/api/workflows?token={}", h.base, h.token))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let r = a
        .get(format!("{}/api/workflows", h.base))
        .header("Cookie", &pair)
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the cookie alone authenticates");
    // The dashboard link trades the token for the cookie and drops it from the address.
    let r = a
        .get(format!("{}/?token={}", h.base, h.token))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers().get("location").unwrap(), "/");
    assert!(r.headers().get("set-cookie").is_some());
}

#[test]
fn cross_site_mutations_are_forbidden_even_with_the_token() {
    let sb = Sandbox::new();
    let (_server, h) = serve_http(&sb, &[]);
    let a = agent();
    let host = h.base.trim_start_matches("http://").to_owned();
    let post = |origin: &str| {
        a.post(format!("{}/api/workflows", h.base))
            .header("Authorization", format!("Bearer {}", h.token))
            .header("Origin", origin)
            .header("Content-Type", "application/json")
            .send(json!({"workflow": {"steps": [{"id": "a", "run": ["true"]}]}}).to_string())
            .unwrap()
    };
    let mut r = post("http://evil.example");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.body_mut().read_to_string().unwrap(), "");
    assert_eq!(post(&format!("http://{host}")).status().as_u16(), 201);
}

#[test]
fn rest_endpoints_answer_with_the_tool_shapes() {
    let sb = Sandbox::new();
    let (_server, h) = serve_http(&sb, &[]);
    let wf = json!({"name": "rest", "steps": [
        {"id": "a", "shell": "printf 'all of it'; echo oops >&2"},
        {"id": "b", "deps": ["a"], "shell": "echo {a.output}"}]});
    let (code, started) = h.send(
        "POST",
        "/api/workflows",
        Some(json!({"workflow": wf, "thread_id": "rest-1"})),
    );
    assert_eq!(code, 201, "{started}");
    assert_eq!(started["thread_id"], "rest-1");
    assert_eq!(started["step_count"], 2);
    assert!(
        started["dashboard_url"]
            .as_str()
            .unwrap()
            .contains(&h.token)
    );
    let again = h.send(
        "POST",
        "/api/workflows",
        Some(json!({"workflow": wf, "thread_id": "rest-1"})),
    );
    assert_eq!(again.0, 200, "same thread id: no second start");
    assert_eq!(again.1["created"], false);
    let rx = h.events("/api/workflows/rest-1/events", None);
    collect_until(&rx, "workflow_completed");

    let st = h.get_json("/api/workflows/rest-1");
    assert_eq!(st["status"], "completed");
    assert_eq!(st["progress"], json!({"done": 2, "total": 2}));
    assert_eq!(st["steps"][1]["deps"], json!(["a"]));
    assert_eq!(h.get("/api/workflows/rest-1/steps/a/output").1, "all of it");
    assert_eq!(
        h.get("/api/workflows/rest-1/steps/a/output?stream=stderr")
            .1,
        "oops\n"
    );
    assert_eq!(h.get("/api/workflows/rest-1/steps/zz/output").0, 400);
    assert_eq!(h.get("/api/workflows/nope").0, 404);
    let (code, err) = h.get("/api/workflows/nope");
    assert_eq!(code, 404);
    assert!(serde_json::from_str::<Value>(&err).unwrap()["error"].is_string());

    // Invalid definitions are 422 with every problem; a completed workflow has nothing to resume.
    let (code, r) = h.send(
        "POST",
        "/api/workflows",
        Some(json!({"workflow": {"steps": [{"id": "x", "deps": ["y"], "run": ["true"]}]}})),
    );
    assert_eq!(code, 422, "{r}");
    let (code, _) = h.send("POST", "/api/workflows/rest-1/resume", None);
    assert_eq!(code, 409);
    let (code, r) = h.send(
        "POST",
        "/api/workflows/rest-1/resume",
        Some(json!({"from_step": "b"})),
    );
    assert_eq!(code, 200, "{r}");
    collect_until(
        &h.events("/api/workflows/rest-1/events", Some(6)),
        "workflow_completed",
    );

    // List: filters by status, name and text; pages with a cursor.
    for i in 0..3 {
        h.send(
            "POST",
            "/api/workflows",
            Some(json!({"thread_id": format!("other-{i}"),
            "workflow": {"name": "other", "steps": [{"id": "a", "run": ["true"]}]}})),
        );
    }
    let l = h.get_json("/api/workflows?name=rest");
    assert_eq!(l["workflows"].as_array().unwrap().len(), 1);
    let l = h.get_json("/api/workflows?q=other-&limit=2");
    assert_eq!(l["workflows"].as_array().unwrap().len(), 2);
    let cursor = l["next_cursor"].as_i64().unwrap();
    let l2 = h.get_json(&format!("/api/workflows?q=other-&limit=2&cursor={cursor}"));
    assert_eq!(l2["workflows"].as_array().unwrap().len(), 1);
    assert_eq!(
        l2["workflows"][0]["thread_id"], "other-0",
        "newest first, no overlap"
    );
    assert_eq!(h.get("/api/workflows?status=bogus").0, 400);
    assert!(h.get_json("/api/workflows?status=completed")["counts"].is_object());

    let schema = h.get_json("/api/schema/events");
    assert!(schema["properties"]["seq"].is_object(), "{schema}");

    // Delete: 204, then gone; bulk delete by filter.
    assert_eq!(h.send("DELETE", "/api/workflows/rest-1", None).0, 204);
    assert_eq!(h.get("/api/workflows/rest-1").0, 404);
    for i in 0..3 {
        collect_until(
            &h.events(&format!("/api/workflows/other-{i}/events"), None),
            "workflow_completed",
        );
    }
    let (code, r) = h.send(
        "POST",
        "/api/workflows/bulk",
        Some(json!({"action": "delete", "name": "other"})),
    );
    assert_eq!(code, 200);
    assert_eq!(r["done"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(h.get_json("/api/workflows")["workflows"], json!([]));

    // Metrics count what the store holds; healthz reports the last commit.
    let (code, m) = h.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        m.contains("baton_step_attempts_total{outcome=\"succeeded\"}"),
        "{m}"
    );
    assert!(m.contains("baton_commit_seconds_count"));
    let health: Value = serde_json::from_str(&h.get("/healthz").1).unwrap();
    assert_eq!(health["ok"], true);
    assert!(health["last_commit_ms"].as_f64().is_some());
}

#[test]
fn cancel_and_delete_of_a_running_workflow() {
    let sb = Sandbox::new();
    let (_server, h) = serve_http(&sb, &[]);
    let id = h.start(json!({"steps": [{"id": "long", "shell": "sleep 30"}]}));
    let rx = h.events(&format!("/api/workflows/{id}/events"), None);
    collect_until(&rx, "step_started");
    let (code, r) = h.send("DELETE", &format!("/api/workflows/{id}"), None);
    assert_eq!(code, 409, "a running workflow is never deleted: {r}");
    let (code, r) = h.send("POST", &format!("/api/workflows/{id}/cancel"), None);
    assert_eq!((code, r["status"].clone()), (200, json!("cancelled")));
    collect_until(&rx, "workflow_cancelled");
    assert_eq!(
        h.send("DELETE", &format!("/api/workflows/{id}"), None).0,
        204
    );
}

#[test]
fn sse_reconnect_after_kill9_replays_exactly_the_missed_events() {
    let sb = Sandbox::new();
    let env = [("BATON_LEASE_MS", "1000")];
    let (server, h) = serve_http(&sb, &env);
    let id = h.start(chain(6, "sleep 0.3"));
    let rx = h.events(&format!("/api/workflows/{id}/events"), None);
    let first: Vec<(i64, Value)> = {
        let mut got = collect_until(&rx, "step_completed");
        got.extend(collect_until(&rx, "step_completed"));
        got
    };
    let last_seen = first.last().unwrap().0;
    server.kill9();
    // A second server adopts the workflow; the client reconnects with its Last-Event-ID.
    let (_server2, h2) = serve_http(&sb, &env);
    let rx2 = h2.events(&format!("/api/workflows/{id}/events"), Some(last_seen));
    let rest = collect_until(&rx2, "workflow_completed");
    let ids: Vec<i64> = first.iter().chain(&rest).map(|(i, _)| *i).collect();
    let expected: Vec<i64> = (1..=*ids.last().unwrap()).collect();
    assert_eq!(ids, expected, "every event exactly once, in order");
    for (i, v) in first.iter().chain(&rest) {
        assert_eq!(v["seq"].as_i64(), Some(*i), "id: is the event's seq");
    }
    assert!(
        rest.iter().any(|(_, v)| v["type"] == "workflow_resumed"),
        "adopted by the second server"
    );
}

#[test]
fn sse_streams_workflows_that_another_process_runs() {
    let sb = Sandbox::new();
    let (_watcher, h) = serve_http(&sb, &[]);
    let all = h.events("/api/events", None);
    let mut runner = sb.server();
    let id = runner.start(chain(3, "sleep 0.1"));
    let one = h.events(&format!("/api/workflows/{id}/events"), None);
    let events = collect_until(&one, "workflow_completed");
    assert_eq!(events.len(), 8, "{events:?}");
    let global = collect_until(&all, "workflow_completed");
    let mine: Vec<&Value> = global
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["thread_id"] == id.as_str())
        .collect();
    assert_eq!(mine.len(), 8);
    assert!(
        global.windows(2).all(|w| w[0].0 < w[1].0),
        "global cursor increases"
    );
    // Reconnecting the global stream from a cursor replays what followed it.
    let mid = global[3].0;
    let replay = collect_until(&h.events("/api/events", Some(mid)), "workflow_completed");
    assert_eq!(
        replay.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        global[4..].iter().map(|(i, _)| *i).collect::<Vec<_>>()
    );
}

#[test]
fn idle_streams_send_keepalive_comments() {
    let sb = Sandbox::new();
    let (_server, h) = serve_http(&sb, &[("BATON_HTTP_KEEPALIVE_MS", "100")]);
    let mut s = TcpStream::connect(h.base.trim_start_matches("http://")).unwrap();
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        h.token
    )
    .unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    while !seen.contains(": keepalive") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A TCP connection with a tiny receive buffer that sends a request and never reads.
fn stalled_client(addr: &str, token: &str) -> TcpStream {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
    };
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
    let sa: std::net::SocketAddrV4 = addr.parse().unwrap();
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(sa)).unwrap();
    let mut s = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    s
}

#[test]
fn a_client_that_never_reads_is_dropped_and_server_memory_stays_bounded() {
    let sb = Sandbox::new();
    let (server, h) = serve_http(
        &sb,
        &[
            ("BATON_HTTP_SEND_TIMEOUT_MS", "300"),
            ("BATON_HTTP_QUEUE", "8"),
        ],
    );
    let addr = h.base.trim_start_matches("http://").to_owned();
    // A chatty workflow: 2,000 independent steps that each fail once with 2 KB of stderr,
    // which their step_failed events quote (about 5.7 MB of frames per client).
    let steps: Vec<Value> = (0..2000)
        .map(|i| {
            json!({"id": format!("s{i}"), "retry": {"max_attempts": 1},
                   "shell": "printf '%2000s' '' | tr ' ' x >&2; exit 1"})
        })
        .collect();
    // A first run with a reading client warms the allocator and SQLite's cache, so what
    // the second run adds is what the stalled clients cost.
    let warm = h.start(json!({"name": "chatty", "steps": steps}));
    follow_until(
        &h,
        &format!("/api/workflows/{warm}/events"),
        "workflow_failed",
    );
    let before = rss_kib(server.pid());
    let clients: Vec<TcpStream> = (0..16).map(|_| stalled_client(&addr, &h.token)).collect();
    let id = h.start(json!({"name": "chatty", "steps": steps}));
    let seen = follow_until(
        &h,
        &format!("/api/workflows/{id}/events"),
        "workflow_failed",
    );
    let seqs: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a reconnecting reader sees every event once"
    );
    // The stalled clients are dropped; a reading client may be too on a busy machine
    // (it then reconnected above), so at least the 16.
    eventually("every stalled client is dropped", || {
        let m = h.get("/metrics").1;
        m.lines()
            .find_map(|l| l.strip_prefix("baton_sse_dropped_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n >= 16)
    });
    let after = rss_kib(server.pid());
    eprintln!("server RSS before {before} KiB, after {after} KiB");
    // Unbounded, 16 clients x 5.7 MB would keep 91 MB of frames on top of the workflow's own
    // ~11 MB; bounded, each holds at most a page of events, its queue and hyper's write
    // buffer (about 2.5 MB measured).
    assert!(
        after < before + 72 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    for mut c in clients {
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.contains("workflow_failed"),
            "a dropped client did not get the end"
        );
    }
}

#[test]
fn tool_results_carry_dashboard_and_events_urls_when_http_is_on() {
    let sb = Sandbox::new();
    let (mut server, h) = serve_http(&sb, &[]);
    let r = server.call(
        "invoke_async",
        json!({"workflow": {"steps": [{"id": "a", "run": ["true"]}]}}),
    );
    let id = r["thread_id"].as_str().unwrap().to_owned();
    let dash = r["dashboard_url"].as_str().unwrap();
    assert!(
        dash.starts_with(&h.base) && dash.contains(&format!("token={}", h.token)),
        "{dash}"
    );
    let events = r["events_url"].as_str().unwrap().to_owned();
    assert!(events.contains(&format!("/api/workflows/{id}/events?token=")));
    // The link works by itself.
    let resp = agent().get(&events).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let st = server.status(&id);
    assert!(st["dashboard_url"].is_string() && st["events_url"].is_string());
    let done = server.wait_done(&id);
    assert!(done["events_url"].is_string());
    // Without --http the fields are absent.
    let sb2 = Sandbox::new();
    let mut plain = sb2.server();
    let r = plain.call(
        "invoke_async",
        json!({"workflow": {"steps": [{"id": "a", "run": ["true"]}]}}),
    );
    assert!(r.get("dashboard_url").is_none());
}

#[test]
fn non_loopback_bind_needs_an_explicit_flag() {
    let sb = Sandbox::new();
    let out = std::process::Command::new(crate::util::BIN)
        .args(["ui", "--http", "0.0.0.0:0"])
        .env("BATON_DB", sb.db())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--http-allow-remote"));
}
