//! Agent steps end to end with the real Claude Code CLI (the version pinned by
//! `scripts/install-claude.sh`, found through `BATON_CLAUDE_BIN`) against a mock of the
//! Anthropic Messages API on 127.0.0.1. Skipped, with a notice, when the variable is unset.
//!
//! The mock decides each reply from the request, so the tests also prove what the CLI sent:
//! a resumed session's request carries the earlier turns.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::mock_api::{MockApi, typed_texts};
use crate::util::*;

/// The CLI to test, or `None` (with a printed notice) when it is not configured.
pub fn claude_bin(test: &str) -> Option<String> {
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
