//! baton as an MCP server of the real Claude Code CLI (the pinned version, `BATON_CLAUDE_BIN`)
//! whose model is a mock of the Messages API on 127.0.0.1: `claude mcp list` shows baton
//! connected, a saved workflow's prompt is a slash command, and the model starts the
//! workflow by name through it. Skipped, with a notice, when the variable is unset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::claude_e2e::claude_bin;
use crate::mock_api::MockApi;
use crate::util::{BIN, Sandbox, eventually};

const GREET: &str = "\
description: Greets someone
inputs:
  who: {description: whom to greet}
steps:
  - id: hello
    run: [echo, \"hello {inputs.who}\"]
";

struct Host {
    sb: Sandbox,
    bin: String,
    api: MockApi,
    project: PathBuf,
    home: PathBuf,
}

impl Host {
    fn new(bin: String) -> Host {
        let sb = Sandbox::new();
        let project = sb.path("project");
        let home = sb.path("home");
        std::fs::create_dir_all(project.join(".baton/workflows")).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(project.join(".baton/workflows/greet.yaml"), GREET).unwrap();
        Host {
            sb,
            bin,
            api: MockApi::start(),
            project,
            home,
        }
    }

    /// The CLI in the project directory, offline, with `$HOME` in the sandbox.
    fn claude(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .current_dir(&self.project)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env(
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", self.api.port),
            )
            .env("ANTHROPIC_API_KEY", "test")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_ERROR_REPORTING", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("CLAUDE_CODE_MAX_RETRIES", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    /// `claude mcp add baton -- baton serve`, offering 2025-11-25 (what channels need).
    fn add_baton(&self) {
        let db = format!("BATON_DB={}", self.sb.db().display());
        let out = self.claude(&[
            "mcp",
            "add",
            "baton",
            "-e",
            &db,
            "-e",
            "BATON_WORKER_IDLE_S=5",
            "-e",
            "BATON_MCP_PROTOCOL=2025-11-25",
            "--",
            BIN,
            "serve",
        ]);
        assert!(out.status.success(), "{out:?}");
    }

    fn baton_status(&self, id: &str) -> Value {
        let out = Command::new(BIN)
            .args(["status", id])
            .env("BATON_DB", self.sb.db())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn thread_id_in(s: &str) -> Option<String> {
    regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
        .unwrap()
        .find(s)
        .map(|m| m.as_str().to_owned())
}

#[test]
fn claude_code_lists_baton_connected_and_starts_a_saved_workflow_from_its_slash_command() {
    let Some(bin) = claude_bin("claude_code_lists_baton_connected") else {
        return;
    };
    let host = Host::new(bin);
    host.add_baton();
    let list = host.claude(&["mcp", "list"]);
    let listed = text(&list);
    let line = listed
        .lines()
        .find(|l| l.starts_with("baton:"))
        .unwrap_or_else(|| panic!("baton is not listed:\n{listed}"));
    assert!(line.contains("Connected"), "{line}");

    let debug = host.sb.path("claude-debug.log");
    let out = host.claude(&[
        "-p",
        "/mcp__baton__greet Ada",
        "--allowedTools",
        "mcp__baton__invoke_async",
        "--output-format",
        "stream-json",
        "--verbose",
        "--channels",
        "server:baton",
        "--debug-file",
        debug.to_str().unwrap(),
    ]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // The saved workflow is in the CLI's slash-command list (its stream-json `init` line).
    let init: Value = all
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "system" && v["subtype"] == "init")
        .unwrap_or_else(|| panic!("no init line:\n{all}"));
    let commands = init["slash_commands"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        commands.contains(&Value::from("mcp__baton__greet")),
        "{commands:?}"
    );
    // The slash command expanded baton's prompt: the model was asked to call invoke_async.
    let asked = host.api.requests().iter().any(|r| {
        r.to_string()
            .contains("invoke_async with exactly these arguments")
    });
    assert!(asked, "the prompt never reached the model:\n{all}");
    // The model's call started the workflow by name, with the argument given to the command.
    let started = all
        .lines()
        .find(|l| l.contains("Started baton workflow"))
        .unwrap_or_else(|| panic!("no start:\n{all}"));
    let id = thread_id_in(started).unwrap();
    let mut status = Value::Null;
    eventually("the saved workflow to complete", || {
        status = host.baton_status(&id);
        status["status"] == "completed"
    });
    let output = status["steps"][0]["output"].as_str().unwrap_or("");
    assert_eq!(output.trim(), "hello Ada", "{status}");
    connected_the_way_channels_need(&debug);
}

/// With `--mcp-protocol 2025-11-25` the CLI connects in its legacy era — the only one in
/// which it registers channel listeners — and sees the prompts.
fn connected_the_way_channels_need(debug: &Path) {
    let log = std::fs::read_to_string(debug).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains(r#"MCP server "baton": Connection established"#))
        .unwrap_or_else(|| panic!("no connection line in the CLI's debug log:\n{log}"));
    assert!(line.contains(r#""protocolEra":"legacy""#), "{line}");
    assert!(
        line.contains(r#""negotiatedProtocolVersion":"2025-11-25""#),
        "{line}"
    );
    assert!(line.contains(r#""hasPrompts":true"#), "{line}");
}

#[test]
fn the_repository_is_a_plugin_marketplace_whose_plugin_adds_baton_connected() {
    let Some(bin) = claude_bin("the_repository_is_a_plugin_marketplace") else {
        return;
    };
    let host = Host::new(bin);
    let repo = env!("CARGO_MANIFEST_DIR");
    // The plugin runs `baton` from PATH, as an installed baton would be.
    let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&host.bin);
        cmd.args(args)
            .current_dir(&host.project)
            .env("HOME", &host.home)
            .env("PATH", &path)
            .env("BATON_DB", host.sb.db())
            .env("ANTHROPIC_API_KEY", "test")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .stdin(std::process::Stdio::null());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "claude {args:?}: {}", text(&out));
        text(&out)
    };
    run(&["plugin", "validate", &format!("{repo}/plugin")]);
    run(&["plugin", "marketplace", "add", repo]);
    run(&["plugin", "install", "baton@baton"]);
    let listed = run(&["mcp", "list"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with("plugin:baton:baton:"))
        .unwrap_or_else(|| panic!("the plugin's server is not listed:\n{listed}"));
    assert!(line.contains("Connected"), "{line}");
    // Only the plugin folder is copied into the CLI's cache, never the repository.
    let size: u64 = walk(&host.home.join(".claude/plugins"));
    assert!(size < 5 * 1024 * 1024, "{size} bytes copied");
}

fn walk(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}
