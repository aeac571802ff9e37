//! Test harness: the real `baton` binary driven over stdio JSON-RPC, the way a host does,
//! with a real SQLite file in a per-test temp dir, or a fresh database on the PostgreSQL
//! server that `BATON_TEST_POSTGRES` names.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_baton");

/// Longest wait for anything in a test; generous because CI machines are slow.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Which MCP protocol flavour a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// 2025-11-25: initialize handshake.
    V2025,
    /// 2026-07-28: no handshake; `_meta` on every request.
    V2026,
}

/// A temp dir with a database: an SQLite file in it, or a PostgreSQL database of its own
/// (dropped with the sandbox); keeps the dir alive.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pg: Option<PgDatabase>,
}

/// The PostgreSQL server the suite may use, from `BATON_TEST_POSTGRES` (a URL naming any
/// database a superuser can connect to); `None` when unset.
pub fn postgres_server() -> Option<String> {
    std::env::var("BATON_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A database created for one sandbox on the test server.
struct PgDatabase {
    admin: String,
    name: String,
    url: String,
}

/// `url` with its database name replaced by `db`.
pub fn with_dbname(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..authority_end])
}

/// Runs one SQL statement on the test server's admin database.
pub fn pg_admin(admin: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to BATON_TEST_POSTGRES ({admin}): {e}"));
        let driver = tokio::spawn(conn);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        drop(client);
        let _ = driver.await;
    });
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let admin = self.admin.clone();
        // Never a second panic while a failed test unwinds.
        let _ = std::panic::catch_unwind(move || pg_admin(&admin, &sql));
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        }
    }
    /// A sandbox on a fresh database of the `BATON_TEST_POSTGRES` server; `None` when unset.
    pub fn postgres() -> Option<Sandbox> {
        Some(Sandbox::postgres_at(&postgres_server()?))
    }
    /// A sandbox on a fresh database of the server `admin` names.
    pub fn postgres_at(admin: &str) -> Sandbox {
        let admin = admin.to_owned();
        let name = format!("baton_t{}", uuid::Uuid::now_v7().simple());
        pg_admin(&admin, &format!("CREATE DATABASE {name}"));
        let url = with_dbname(&admin, &name);
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
            pg: Some(PgDatabase { admin, name, url }),
        }
    }
    /// A file kept beside the database (`baton.http`, `baton.token`): in the sandbox for
    /// SQLite, in the per-database data dir for PostgreSQL.
    pub fn beside(&self, name: &str) -> PathBuf {
        if self.pg.is_none() {
            return self.path(name);
        }
        let root = self.dir.path().join("data/baton/postgres");
        std::fs::read_dir(&root)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join(name))
            .unwrap_or_else(|| root.join(name))
    }
    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }
    /// The SQLite file (meaningless on PostgreSQL: use [`Sandbox::db_arg`]).
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("baton.db")
    }
    /// What `--db`/`BATON_DB` says: the SQLite file or the PostgreSQL URL.
    pub fn db_arg(&self) -> std::ffi::OsString {
        match &self.pg {
            Some(pg) => pg.url.clone().into(),
            None => self.db().into(),
        }
    }
    /// The environment every baton process of this sandbox gets: the database, and for
    /// PostgreSQL a data dir inside the sandbox for the files kept beside the store.
    pub fn apply_env(&self, cmd: &mut Command) {
        cmd.env("BATON_DB", self.db_arg());
        if self.pg.is_some() {
            cmd.env("XDG_DATA_HOME", self.dir.path().join("data"));
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Starts `baton serve` on this sandbox's database.
    pub fn server(&self) -> Server {
        Server::spawn(self, &[], Protocol::V2025)
    }
    pub fn server_with(&self, env: &[(&str, &str)], protocol: Protocol) -> Server {
        Server::spawn(self, env, protocol)
    }
    /// Runs a `baton` subcommand to completion on this sandbox's database.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        self.apply_env(&mut cmd);
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// One test per backend: `NAME::sqlite` always, `NAME::postgres` on a fresh database of the
/// `BATON_TEST_POSTGRES` server (it passes trivially, saying so, when that is unset).
macro_rules! on_both_backends {
    ($(#[$attr:meta])* fn $name:ident($sb:ident: Sandbox) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($sb: Sandbox) $body

            #[test]
            fn sqlite() {
                run(Sandbox::new())
            }

            #[test]
            fn postgres() {
                match Sandbox::postgres() {
                    Some(sb) => run(sb),
                    None => eprintln!("BATON_TEST_POSTGRES is not set: the PostgreSQL run is skipped"),
                }
            }
        }
    };
}

/// A running `baton serve` with a line reader.
pub struct Server {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    next_id: i64,
    protocol: Protocol,
    /// Notifications received so far, in order.
    pub notifications: Vec<Value>,
}

impl Server {
    fn spawn(sb: &Sandbox, env: &[(&str, &str)], protocol: Protocol) -> Server {
        let mut cmd = Command::new(BIN);
        sb.apply_env(&mut cmd);
        cmd.arg("serve")
            // These tests pin the engine's own semantics; handover to the background worker
            // has its own tests (and `env` may turn it back on).
            .env("BATON_IN_PROCESS", "1")
            .env("RUST_LOG", "warn")
            .env("BATON_KILL_GRACE_S", "1")
            .current_dir(sb.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout carried a non-JSON line {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            next_id: 1,
            protocol,
            notifications: Vec::new(),
        };
        if protocol == Protocol::V2025 {
            let r = s.request(
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "baton-tests", "version": "0"}}),
            );
            assert_eq!(r["result"]["protocolVersion"], "2025-11-25", "{r}");
            s.notify("notifications/initialized", json!({}));
        }
        s
    }

    fn meta(&self) -> Value {
        json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "baton-tests", "version": "0"}})
    }

    pub fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        let line = json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string();
        self.send_raw(&line);
    }

    /// Sends a request and returns its id without waiting.
    pub fn send(&mut self, method: &str, mut params: Value, progress_token: Option<&str>) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        if self.protocol == Protocol::V2026 || progress_token.is_some() {
            let mut meta = if self.protocol == Protocol::V2026 {
                self.meta()
            } else {
                json!({})
            };
            if let Some(t) = progress_token {
                meta["progressToken"] = json!(t);
            }
            params["_meta"] = meta;
        }
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(&line.to_string());
        id
    }

    /// Waits for the response to `id`, collecting notifications meanwhile.
    pub fn wait_response(&mut self, id: i64) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v.get("id") == Some(&json!(id)) => return v,
                Ok(v) if v.get("method").is_some() && v.get("id").is_none() => {
                    self.notifications.push(v)
                }
                Ok(other) => panic!("unexpected message while waiting for {id}: {other}"),
                Err(RecvTimeoutError::Timeout) => panic!("no response to request {id}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("server closed stdout before answering {id}")
                }
            }
        }
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, None);
        self.wait_response(id)
    }

    /// Calls a tool and returns the whole JSON-RPC response.
    pub fn call_raw(&mut self, tool: &str, args: Value, progress_token: Option<&str>) -> Value {
        let id = self.send(
            "tools/call",
            json!({"name": tool, "arguments": args}),
            progress_token,
        );
        self.wait_response(id)
    }

    /// Calls a tool that must succeed; returns its structured content.
    pub fn call(&mut self, tool: &str, args: Value) -> Value {
        let r = self.call_raw(tool, args, None);
        let result = &r["result"];
        assert_eq!(result["isError"], json!(false), "{tool} failed: {r}");
        // The text content carries the same JSON as the structured content.
        let text = result["content"][0]["text"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parsed, result["structuredContent"]);
        result["structuredContent"].clone()
    }

    /// Calls a tool that must refuse; returns its error text.
    pub fn call_err(&mut self, tool: &str, args: Value) -> String {
        let r = self.call_raw(tool, args, None);
        assert_eq!(
            r["result"]["isError"],
            json!(true),
            "{tool} should fail: {r}"
        );
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn start(&mut self, workflow: Value) -> String {
        let r = self.call("invoke_async", json!({ "workflow": workflow }));
        r["thread_id"].as_str().unwrap().to_owned()
    }

    /// Follows a workflow with invoke_stream until it stops; returns the final stream result.
    pub fn wait_done(&mut self, thread_id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut cursor = 0;
        loop {
            let r = self.call(
                "invoke_stream",
                json!({"thread_id": thread_id, "cursor": cursor, "wait_s": 20}),
            );
            if r["done"] == json!(true) {
                return r;
            }
            cursor = r["next_cursor"].as_i64().unwrap();
            assert!(
                Instant::now() < deadline,
                "workflow {thread_id} did not finish"
            );
        }
    }

    pub fn status(&mut self, thread_id: &str) -> Value {
        self.call("invoke_status", json!({ "thread_id": thread_id }))
    }

    /// Waits until a file exists (a step's side effect), by polling the file system.
    pub fn wait_for_file(path: &Path) {
        let deadline = Instant::now() + PATIENCE;
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes stdin and waits for the process to exit; returns its status.
    pub fn close(mut self) -> std::process::ExitStatus {
        self.stdin.take();
        wait_exit(&mut self.child)
    }

    /// SIGKILLs the server.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Waits until `pred` holds, polling; for conditions outside the process (files, pids).
pub fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The structured status's step entry.
pub fn step<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {status}"))
}

impl Server {
    /// Follows a workflow from `cursor` with short `invoke_stream` calls (`wait_s` each) until
    /// it stops; returns every event received, in order, and the last result.
    pub fn stream_pages(
        &mut self,
        thread_id: &str,
        mut cursor: i64,
        wait_s: f64,
    ) -> (Vec<Value>, Value) {
        let deadline = Instant::now() + PATIENCE;
        let mut events = Vec::new();
        loop {
            let r = self.call(
                "invoke_stream",
                json!({"thread_id": thread_id, "cursor": cursor, "wait_s": wait_s}),
            );
            events.extend(r["events"].as_array().unwrap().iter().cloned());
            cursor = r["next_cursor"].as_i64().unwrap();
            if r["done"] == json!(true) {
                return (events, r);
            }
            assert!(
                Instant::now() < deadline,
                "workflow {thread_id} did not finish"
            );
        }
    }

    /// Starts a workflow under a chosen thread id; returns the tool's structured result.
    pub fn start_as(&mut self, thread_id: &str, workflow: Value) -> Value {
        self.call(
            "invoke_async",
            json!({"workflow": workflow, "thread_id": thread_id}),
        )
    }

    /// A JSON-RPC request whose response must be an error; returns the error object.
    pub fn request_err(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params);
        assert!(
            r.get("error").is_some(),
            "{method} should be a JSON-RPC error: {r}"
        );
        r["error"].clone()
    }
}

impl Sandbox {
    /// Writes `content` to a file in the sandbox and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Lines of a file in the sandbox (0 if it does not exist): counts step executions.
    pub fn lines(&self, name: &str) -> usize {
        std::fs::read_to_string(self.path(name))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// A pid a step wrote to a file, once the file is complete.
    pub fn pid_in(&self, name: &str) -> i32 {
        let p = self.path(name);
        let mut pid = None;
        eventually(&format!("a pid in {name}"), || {
            pid = std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        });
        pid.unwrap()
    }
}

/// The `type`s of a list of events, in order.
pub fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

/// Outcomes of a step's attempts, in order.
pub fn outcomes(status: &Value, step_id: &str) -> Vec<String> {
    step(status, step_id)["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_owned())
        .collect()
}

impl Server {
    /// The next message that is not a notification (e.g. an error answering a line that had
    /// no usable id), collecting notifications meanwhile.
    pub fn next_response(&mut self) -> Value {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(v) if v.get("method").is_some() && v.get("id").is_none() => {
                    self.notifications.push(v)
                }
                Ok(v) => return v,
                Err(e) => panic!("no message from the server: {e}"),
            }
        }
    }
}

impl Server {
    /// Waits for a notification with `method` (one already received counts, and is taken
    /// out of `notifications`); answers nothing else meanwhile.
    pub fn wait_notification(&mut self, method: &str) -> Value {
        if let Some(i) = self
            .notifications
            .iter()
            .position(|n| n["method"] == method)
        {
            return self.notifications.remove(i);
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["method"] == method && v.get("id").is_none() => return v,
                Ok(v) if v.get("method").is_some() && v.get("id").is_none() => {
                    self.notifications.push(v)
                }
                Ok(other) => panic!("unexpected message while waiting for {method}: {other}"),
                Err(e) => panic!("no {method} notification: {e}"),
            }
        }
    }
}

/// The fake Claude Code CLI the agent tests run instead of the real one.
pub const FAKE_AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_agent/claude.py");

/// A server whose agent command is the fake agent, with its own `$HOME` (`home/`) and
/// invocation log (`invocations.jsonl`) in the sandbox.
pub fn fake_agent_server(sb: &Sandbox) -> Server {
    let home = sb.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let command = format!("python3 {FAKE_AGENT}");
    let log = sb.path("invocations.jsonl");
    sb.server_with(
        &[
            ("BATON_AGENT_COMMAND", command.as_str()),
            ("HOME", home.to_str().unwrap()),
            ("FAKE_AGENT_LOG", log.to_str().unwrap()),
        ],
        Protocol::V2025,
    )
}
