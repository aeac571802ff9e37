//! Agent steps against the fake Claude Code CLI (`tests/fake_agent/claude.py`): sessions,
//! retries that keep the conversation, crashes, permission denials, progress, profiles, costs.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::util::*;

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_agent/claude.py");

/// A sandbox whose servers run the fake agent with their own `$HOME` and invocation log.
struct FakeAgent {
    sb: Sandbox,
    home: PathBuf,
    log: PathBuf,
    /// The directory agent steps run in.
    work: PathBuf,
}

impl FakeAgent {
    fn new() -> FakeAgent {
        let sb = Sandbox::new();
        let home = sb.path("home");
        let work = sb.path("work");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let log = sb.path("invocations.jsonl");
        FakeAgent {
            sb,
            home,
            log,
            work,
        }
    }

    fn server(&self) -> Server {
        self.server_with(&[])
    }

    fn server_with(&self, extra: &[(&str, &str)]) -> Server {
        let command = format!("python3 {FAKE}");
        let home = self.home.to_str().unwrap();
        let log = self.log.to_str().unwrap();
        let mut env = vec![
            ("BATON_AGENT_COMMAND", command.as_str()),
            ("HOME", home),
            ("FAKE_AGENT_LOG", log),
        ];
        env.extend_from_slice(extra);
        self.sb.server_with(&env, Protocol::V2025)
    }

    /// Every invocation of the fake so far, in order.
    fn invocations(&self) -> Vec<Value> {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Invocations for one step.
    fn of_step(&self, step: &str) -> Vec<Value> {
        self.invocations()
            .into_iter()
            .filter(|i| i["env"]["BATON_STEP_ID"] == step)
            .collect()
    }

    fn session_file(&self, id: &str) -> PathBuf {
        self.home
            .join(".claude-fake/sessions")
            .join(format!("{id}.json"))
    }

    /// A workflow running in `work`, with fast retries.
    fn workflow(&self, steps: Value) -> Value {
        json!({
            "name": "agents",
            "defaults": {"cwd": self.work, "retry": {"initial_interval_ms": 20, "jitter": false}},
            "steps": steps
        })
    }
}

fn argv(invocation: &Value) -> Vec<String> {
    invocation["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The value after `flag` in an argv, if the flag is there.
fn flag<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

fn events_of(stream: &Value, kind: &str) -> Vec<Value> {
    stream["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

fn assert_cost(status: &Value, expected: f64) {
    let total = status["total_cost_usd"].as_f64().unwrap();
    assert!(
        (total - expected).abs() < 1e-9,
        "total_cost_usd {total}, expected {expected}: {status}"
    );
}

#[test]
fn chained_agent_steps_pass_output_and_record_sessions_and_costs() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    let id = s.start(fa.workflow(json!([
        {"id": "plan", "prompt": "Plan it [[say:PLAN-42]]"},
        {"id": "build", "deps": ["plan"], "prompt": "Implement this plan: {plan.output}",
         "agent": {"model": "sonnet"}}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let status = s.status(&id);

    let plan = &fa.of_step("plan")[0];
    let build = &fa.of_step("build")[0];
    // The exact command line: -p, stream-json with --verbose, no resume; the prompt on stdin.
    assert_eq!(
        argv(plan),
        ["-p", "--output-format", "stream-json", "--verbose"]
    );
    assert_eq!(plan["prompt"], "Plan it [[say:PLAN-42]]");
    assert_eq!(plan["prompt_from_stdin"], true);
    assert_eq!(build["prompt"], "Implement this plan: PLAN-42");
    assert_eq!(
        argv(build),
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "sonnet"
        ]
    );
    assert_eq!(plan["cwd"], json!(fa.work), "cwd is set on the process");
    // stdin is a pipe carrying the prompt and then closed (the fake read it to its end).
    assert!(
        plan["stdin"]
            .as_str()
            .is_some_and(|s| s.starts_with("pipe:")),
        "stdin is not the prompt pipe: {}",
        plan["stdin"]
    );
    // The session of each step (and of its attempt) is the one the CLI announced.
    for (step_id, inv) in [("plan", plan), ("build", build)] {
        let st = step(&status, step_id);
        assert_eq!(st["session_id"], inv["session_id"], "{st}");
        assert_eq!(st["attempt_history"][0]["session_id"], inv["session_id"]);
        assert_eq!(st["attempt_history"][0]["num_turns"], 1);
        assert_eq!(st["attempt_history"][0]["cost_usd"], 0.01);
    }
    assert_eq!(step(&status, "plan")["output"], "PLAN-42");
    assert_eq!(
        step(&status, "build")["output"],
        "ok: Implement this plan: PLAN-42"
    );
    assert_cost(&status, 0.02);
}

#[test]
fn agent_prompt_is_never_parsed_as_an_option() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    // An upstream output that, in option position, would install settings (and so hooks).
    let hostile = "--settings={\"hooks\":{}} -x\n  trailing  [[say:read as text]]";
    let id = s.start(fa.workflow(json!([
        {"id": "a", "run": ["printf", "%s", hostile]},
        {"id": "b", "deps": ["a"], "prompt": "{a.output}"},
        {"id": "c", "deps": ["a"], "prompt": "-p {a.output}"}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let b = &fa.of_step("b")[0];
    assert_eq!(b["prompt"], hostile);
    assert_eq!(b["options"].get("settings"), None, "{b}");
    assert_eq!(fa.of_step("c")[0]["prompt"], format!("-p {hostile}"));
    for call in [b, &fa.of_step("c")[0]] {
        assert!(argv(call).iter().all(|a| !a.contains("settings")), "{call}");
    }
}

#[test]
fn upstream_output_never_appears_in_an_agent_step_s_cmdline() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    let secret = "s3cr3t-token-7a1f";
    let id = s.start(fa.workflow(json!([
        {"id": "a", "run": ["printf", "%s", secret]},
        {"id": "b", "deps": ["a"], "prompt": "Use {a.output}"}
    ])));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let b = &fa.of_step("b")[0];
    assert_eq!(b["prompt"], format!("Use {secret}"));
    let cmdline = b["cmdline"].as_str().unwrap();
    assert!(cmdline.contains("--output-format"), "{cmdline}");
    assert!(!cmdline.contains(secret), "{cmdline}");
}

#[test]
fn failed_attempt_is_retried_in_its_session_with_history_and_same_cwd() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    let id = s.start(fa.workflow(json!([
        {"id": "fix", "prompt": "Fix the bug [[fail-once]] [[echo-history]]"}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let status = s.status(&id);
    let st = step(&status, "fix");

    let calls = fa.of_step("fix");
    assert_eq!(calls.len(), 2, "{calls:?}");
    let sid = calls[0]["session_id"].as_str().unwrap();
    assert_eq!(flag(&argv(&calls[0]), "--resume"), None);
    assert_eq!(flag(&argv(&calls[1]), "--resume"), Some(sid));
    assert_eq!(calls[1]["session_id"], sid);
    assert_eq!(calls[0]["cwd"], calls[1]["cwd"]);
    assert_eq!(calls[1]["cwd"], json!(fa.work));

    let history = st["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["outcome"], "failed");
    assert_eq!(history[0]["error"], "fake failure 1 of 1");
    assert_eq!(history[1]["outcome"], "succeeded");
    for a in history {
        assert_eq!(a["session_id"], sid, "{a}");
    }
    // The retry continued the conversation: the first prompt is in the session's history,
    // and the retry prompt says why it is being retried.
    let output = st["output"].as_str().unwrap();
    assert!(
        output.ends_with("history: Fix the bug"),
        "the resumed session lost its history: {output}"
    );
    assert!(output.contains("fake failure 1 of 1"), "{output}");
    // The CLI reports the session's cumulative cost; each attempt is charged its own share.
    assert_eq!(history[0]["cost_usd"], 0.01);
    assert_eq!(history[1]["cost_usd"], 0.01);
    assert_cost(&status, 0.02);
}

#[test]
fn persistent_api_error_fails_after_max_attempts_then_guidance_resume_completes() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    let id = s.start(fa.workflow(json!([
        {"id": "call", "prompt": "Call the API [[api-error]]", "retry": {"max_attempts": 2}},
        {"id": "after", "deps": ["call"], "run": ["echo", "after"]}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "failed", "{done}");
    let status = s.status(&id);
    let st = step(&status, "call");
    assert_eq!(st["status"], "failed");
    assert_eq!(st["attempts"], 2);
    let error = st["error"].as_str().unwrap();
    assert!(error.starts_with("API Error: 500"), "{error}");
    assert!(status["error"].as_str().unwrap().contains("API Error: 500"));
    assert_eq!(step(&status, "after")["status"], "pending");
    let calls = fa.of_step("call");
    assert_eq!(calls.len(), 2);
    let sid = calls[0]["session_id"].as_str().unwrap();
    assert_eq!(flag(&argv(&calls[1]), "--resume"), Some(sid));
    assert_eq!(events_of(&done, "step_retrying").len(), 1);

    // Guidance goes into the same session as the next prompt.
    let r = s.call(
        "invoke_resume",
        json!({"thread_id": id, "prompt": "The API is back. [[say:recovered]]"}),
    );
    assert_eq!(r["status"], "running", "{r}");
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let calls = fa.of_step("call");
    assert_eq!(calls.len(), 3);
    assert_eq!(flag(&argv(&calls[2]), "--resume"), Some(sid));
    assert_eq!(calls[2]["prompt"], "The API is back. [[say:recovered]]");
    let status = s.status(&id);
    assert_eq!(step(&status, "call")["output"], "recovered");
    assert_eq!(step(&status, "call")["session_id"], sid);
    assert_eq!(step(&status, "after")["output"], "after");
}

#[test]
fn permission_denial_blocks_until_resumed_with_a_permission_override() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    let id = s.start(fa.workflow(json!([
        {"id": "build", "prompt": "Build it [[deny:Bash]]",
         "agent": {"permission_mode": "acceptEdits"}},
        {"id": "docs", "run": ["echo", "docs"]},
        {"id": "ship", "deps": ["build"], "run": ["echo", "shipped"]}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "blocked", "{done}");
    let status = s.status(&id);
    assert_eq!(status["status"], "blocked");
    let st = step(&status, "build");
    assert_eq!(st["status"], "blocked");
    assert!(st["error"].as_str().unwrap().contains("Bash"), "{st}");
    assert!(
        status["error"].as_str().unwrap().contains("Bash"),
        "{status}"
    );
    // Independent work finished; the dependent waits.
    assert_eq!(step(&status, "docs")["status"], "completed");
    assert_eq!(step(&status, "ship")["status"], "pending");
    let blocked = events_of(&done, "step_blocked");
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        blocked[0]["data"]["permission_denials"][0]["tool_name"],
        "Bash"
    );
    assert_eq!(events_of(&done, "workflow_blocked").len(), 1);

    let r = s.call(
        "invoke_resume",
        json!({"thread_id": id, "agent": {"permission_mode": "bypassPermissions"}}),
    );
    assert_eq!(r["status"], "running", "{r}");
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let calls = fa.of_step("build");
    assert_eq!(calls.len(), 2);
    let sid = calls[0]["session_id"].as_str().unwrap();
    let again = argv(&calls[1]);
    assert_eq!(flag(&again, "--resume"), Some(sid));
    assert_eq!(flag(&again, "--permission-mode"), Some("bypassPermissions"));
    assert_eq!(
        flag(&argv(&calls[0]), "--permission-mode"),
        Some("acceptEdits")
    );
    let status = s.status(&id);
    assert_eq!(step(&status, "ship")["output"], "shipped");
    assert_eq!(step(&status, "build")["session_id"], sid);
}

#[test]
fn tool_uses_become_throttled_progress_notifications() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    let id = s.start(fa.workflow(json!([
        {"id": "build", "prompt": "Test it [[tool:Bash:cargo test]] [[tools:300]]"}
    ])));
    let r = s.call_raw(
        "invoke_stream",
        json!({"thread_id": id, "wait_s": 30}),
        Some("tok"),
    );
    let r = &r["result"]["structuredContent"];
    assert_eq!(r["status"], "completed", "{r}");
    let messages: Vec<&str> = s
        .notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .filter_map(|n| n["params"]["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"build: Bash(cargo test)"),
        "{messages:?}"
    );
    // 301 tool uses in well under a second must not become 301 stored events.
    let progress = events_of(r, "step_progress");
    assert!(
        !progress.is_empty() && progress.len() < 20,
        "{} step_progress events",
        progress.len()
    );
}

#[test]
fn profiles_and_studio_roles_resolve_to_cli_flags() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    let mut wf = fa.workflow(json!([
        {"id": "review", "prompt": "Review", "agent": "reviewer"},
        {"id": "build", "prompt": "Build", "role": "builder"},
        {"task": "Studio task", "agentId": "reviewer"},
        {"id": "inline", "prompt": "Inline",
         "agent": {"append_system_prompt": "Be brief.", "disallowed_tools": ["Bash"]}}
    ]));
    wf["defaults"]["agent"] = json!({"model": "sonnet"});
    wf["agents"] = json!({
        "reviewer": {"model": "opus", "permission_mode": "plan", "system_prompt": "You review.",
                     "allowed_tools": ["Read", "Grep"], "max_turns": 3},
        "builder": {"permission_mode": "acceptEdits", "allowed_tools": ["Edit", "Bash(cargo:*)"],
                    "append_system_prompt": "Run the tests."}
    });
    let id = s.start(wf);
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");

    let one = |step: &str| argv(&fa.of_step(step)[0]);
    let review = one("review");
    assert_eq!(review[0], "-p");
    assert_eq!(fa.of_step("review")[0]["prompt"], "Review");
    assert_eq!(flag(&review, "--model"), Some("opus"));
    assert_eq!(flag(&review, "--permission-mode"), Some("plan"));
    assert_eq!(flag(&review, "--system-prompt"), Some("You review."));
    assert_eq!(flag(&review, "--max-turns"), Some("3"));
    assert_eq!(
        &review[review.len() - 3..],
        ["--allowedTools", "Read", "Grep"]
    );

    let build = one("build");
    assert_eq!(
        flag(&build, "--model"),
        Some("sonnet"),
        "defaults.agent applies"
    );
    assert_eq!(flag(&build, "--permission-mode"), Some("acceptEdits"));
    assert_eq!(
        flag(&build, "--append-system-prompt"),
        Some("Run the tests.")
    );
    assert_eq!(
        &build[build.len() - 3..],
        ["--allowedTools", "Edit", "Bash(cargo:*)"]
    );

    // Claude Studio's shape: no id (step-3), `task`, `agentId`.
    let studio = one("step-3");
    assert_eq!(studio[0], "-p");
    assert_eq!(fa.of_step("step-3")[0]["prompt"], "Studio task");
    assert_eq!(flag(&studio, "--model"), Some("opus"));
    assert_eq!(flag(&studio, "--system-prompt"), Some("You review."));

    let inline = one("inline");
    assert_eq!(flag(&inline, "--model"), Some("sonnet"));
    assert_eq!(flag(&inline, "--append-system-prompt"), Some("Be brief."));
    assert_eq!(flag(&inline, "--disallowedTools"), Some("Bash"));
    assert_eq!(flag(&inline, "--permission-mode"), None);
}

#[test]
fn server_killed_mid_agent_step_resumes_the_same_session() {
    let fa = FakeAgent::new();
    let lease = [("BATON_LEASE_MS", "600")];
    let mut s = fa.server_with(&lease);
    let id = s.start(fa.workflow(json!([
        {"id": "long", "prompt": "Long work [[sleep-first:60]] [[echo-history]]"}
    ])));
    // Wait until the session is recorded (the init line arrived), then kill -9 the server.
    eventually("the session id is recorded", || {
        step(&s.status(&id), "long")["session_id"].is_string()
    });
    let first = fa.of_step("long");
    assert_eq!(first.len(), 1);
    let sid = first[0]["session_id"].as_str().unwrap().to_owned();
    let agent_pid = first[0]["pid"].as_i64().unwrap() as i32;
    s.kill9();
    eventually("the orphaned agent dies with its server", || {
        !alive(agent_pid)
    });

    let mut s = fa.server_with(&lease);
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let calls = fa.of_step("long");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(flag(&argv(&calls[1]), "--resume"), Some(sid.as_str()));
    assert_eq!(calls[1]["cwd"], calls[0]["cwd"]);
    let status = s.status(&id);
    let st = step(&status, "long");
    assert_eq!(st["session_id"], sid.as_str());
    let history = st["attempt_history"].as_array().unwrap();
    assert_eq!(history[0]["outcome"], "crashed", "{st}");
    assert_eq!(history[0]["session_id"], sid.as_str());
    assert_eq!(history.last().unwrap()["outcome"], "succeeded");
    assert!(
        st["output"]
            .as_str()
            .unwrap()
            .ends_with("history: Long work"),
        "{st}"
    );
}

#[test]
fn unresumable_session_is_replaced_by_a_fresh_one() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    let mut wf = fa.workflow(json!([
        {"id": "fix", "prompt": "Fix [[fail-once]]", "retry": {"max_attempts": 3}}
    ]));
    wf["defaults"]["retry"]["initial_interval_ms"] = json!(1500);
    let id = s.start(wf);
    // The first attempt fails; its session disappears before the retry resumes it.
    // Wait for the attempt to have ended, not just to have failed: the fake saves its session
    // once more on the way out, which would bring a file removed earlier back.
    eventually("the first attempt failed", || {
        step(&s.status(&id), "fix")["status"] == "retrying"
    });
    let sid = fa.of_step("fix")[0]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(fa.session_file(&sid)).unwrap();

    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let calls = fa.of_step("fix");
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(flag(&argv(&calls[1]), "--resume"), Some(sid.as_str()));
    assert_eq!(calls[1]["outcome"], "no-conversation");
    assert_eq!(flag(&argv(&calls[2]), "--resume"), None, "a new session");
    let status = s.status(&id);
    let st = step(&status, "fix");
    assert_eq!(st["session_id"], calls[2]["session_id"]);
    let history = st["attempt_history"].as_array().unwrap();
    assert!(
        history[1]["error"]
            .as_str()
            .unwrap()
            .contains("No conversation found"),
        "{st}"
    );
}

#[test]
fn error_subtypes_fail_with_the_text_of_errors() {
    let fa = FakeAgent::new();
    let mut s = fa.server();
    let id = s.start(fa.workflow(json!([
        {"id": "loop", "prompt": "Go [[max-turns]]", "agent": {"max_turns": 2},
         "retry": {"max_attempts": 1}},
        {"id": "login", "prompt": "Go [[not-logged-in]]", "retry": {"max_attempts": 1}}
    ])));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "failed", "{done}");
    let status = s.status(&id);
    // error_max_turns carries `errors` and no `result`.
    assert_eq!(
        step(&status, "loop")["error"],
        "Reached maximum number of turns (2)"
    );
    // A missing login is `subtype: success` with `is_error: true`: still a failure.
    assert_eq!(
        step(&status, "login")["error"],
        "Not logged in · Please run /login"
    );
}
