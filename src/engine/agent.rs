//! Agent steps: the Claude Code CLI in headless `stream-json` mode.
//!
//! Invariant: failure is decided from `is_error` and the exit code, never from `subtype`
//! (not-logged-in and API errors arrive as `subtype: "success"` with `is_error: true`); the
//! session id is reported the moment the `init` line arrives, so a retry after any failure or
//! crash continues the same conversation; `permission_denials` make the step blocked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::outcome::{AttemptDetail, FailureClass, Outcome, STDERR_TAIL, SignalKind};
use super::process::{Ending, LineSink, ProcessResult};
use crate::api::tail;
use crate::workflow::{AgentOptions, SuccessCheck};

/// Command-line arguments for one agent attempt (after the program and its leading args).
/// The prompt is not among them: it goes to the CLI's stdin, which `-p` reads when no prompt
/// argument is given, so no prompt text can ever be parsed as an option (a prompt starting
/// `--settings=` would otherwise install settings) or be read from `/proc/PID/cmdline`.
pub fn cli_args(o: &AgentOptions, resume: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-p".into(),
        "--output-format".into(),
        "stream-json".into(),
        "--verbose".into(),
    ];
    if let Some(id) = resume {
        a.extend(["--resume".into(), id.into()]);
    }
    let mut opt = |flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            a.extend([flag.to_owned(), v.clone()]);
        }
    };
    opt("--model", &o.model);
    opt("--permission-mode", &o.permission_mode);
    opt("--system-prompt", &o.system_prompt);
    opt("--append-system-prompt", &o.append_system_prompt);
    if let Some(n) = o.max_turns {
        a.extend(["--max-turns".into(), n.to_string()]);
    }
    if !o.allowed_tools.is_empty() {
        a.push("--allowedTools".into());
        a.extend(o.allowed_tools.iter().cloned());
    }
    if !o.disallowed_tools.is_empty() {
        a.push("--disallowedTools".into());
        a.extend(o.disallowed_tools.iter().cloned());
    }
    a
}

/// What the stream said so far.
#[derive(Debug, Default)]
pub struct StreamState {
    /// From the `init` line only: a `result` without one (a failed `--resume`, bad flags)
    /// may carry a fresh id that names no conversation.
    pub session_id: Option<String>,
    /// The final `result` line.
    pub result: Option<Value>,
    pub lines: u64,
}

impl StreamState {
    pub fn shared() -> Arc<Mutex<StreamState>> {
        Arc::new(Mutex::new(StreamState::default()))
    }
}

/// A stdout sink that parses stream-json lines into `state` and reports signals.
pub fn line_sink(
    state: Arc<Mutex<StreamState>>,
    send: impl Fn(SignalKind) + Send + 'static,
) -> LineSink {
    Box::new(move |line: &str| {
        send(SignalKind::Activity);
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let Ok(mut st) = state.lock() else {
            return;
        };
        st.lines += 1;
        match v.get("type").and_then(Value::as_str) {
            Some("system") if v.get("subtype").and_then(Value::as_str) == Some("init") => {
                if let Some(id) = v.get("session_id").and_then(Value::as_str)
                    && st.session_id.as_deref() != Some(id)
                {
                    st.session_id = Some(id.to_owned());
                    send(SignalKind::Session(id.to_owned()));
                }
            }
            Some("assistant") => {
                for msg in tool_uses(&v) {
                    send(SignalKind::Progress(msg));
                }
            }
            Some("result") => st.result = Some(v),
            _ => {}
        }
    })
}

/// `Tool(summary)` for each tool use in an assistant message.
fn tool_uses(v: &Value) -> Vec<String> {
    let Some(items) = v.pointer("/message/content").and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(|c| {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("tool");
            let input = c.get("input");
            let summary = [
                "command",
                "file_path",
                "pattern",
                "path",
                "url",
                "description",
            ]
            .iter()
            .find_map(|k| input.and_then(|i| i.get(*k)).and_then(Value::as_str));
            match summary {
                Some(s) => {
                    let s = s.lines().next().unwrap_or_default();
                    let short: String = s.chars().take(80).collect();
                    let dots = if short.len() < s.len() { "…" } else { "" };
                    format!("{name}({short}{dots})")
                }
                None => name.to_owned(),
            }
        })
        .collect()
}

/// Classifies a finished agent process.
pub fn outcome(
    r: &ProcessResult,
    state: &Arc<Mutex<StreamState>>,
    success: &SuccessCheck,
    elapsed: Duration,
) -> Outcome {
    let (session_id, result) = match state.lock() {
        Ok(st) => (st.session_id.clone(), st.result.clone()),
        Err(_) => (None, None),
    };
    let stderr_tail = tail(r.stderr.trim_end(), STDERR_TAIL).to_owned();
    let num = |k: &str| result.as_ref().and_then(|v| v.get(k));
    let mut detail = AttemptDetail {
        exit_code: r.exit_code(),
        stderr: (!r.stderr.is_empty()).then(|| r.stderr.clone()),
        session_id,
        cost_usd: num("total_cost_usd").and_then(Value::as_f64),
        num_turns: num("num_turns").and_then(Value::as_i64),
        duration_ms: Some(elapsed.as_millis() as i64),
        session_unusable: false,
    };
    match r.ending {
        Ending::Stopped => return Outcome::Stopped { detail },
        Ending::TimedOut => {
            return Outcome::Failed {
                class: FailureClass::TimedOut,
                error: format!("agent timed out after {}s", elapsed.as_secs()),
                detail,
            };
        }
        _ => {}
    }
    let errors = result
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty());
    // A run that never started (no `init` line) because its `--resume` id names no
    // conversation: the next attempt must start a new session, or every retry fails the same
    // way. The CLI says so on stderr (and, since 2.1.x, in the result's `errors`).
    if detail.session_id.is_none() {
        let said = format!("{stderr_tail}\n{}", errors.as_deref().unwrap_or_default());
        detail.session_unusable = said.to_lowercase().contains("no conversation found");
    }
    let Some(result) = result else {
        // Errors before the run starts (unknown --resume id, bad flags): stderr, exit 1.
        let status = match r.ending {
            Ending::Exited(c) => format!("agent exited with status {c} before producing a result"),
            Ending::Signalled(s) => format!("agent killed by signal {s} before producing a result"),
            _ => "agent ended without a result".to_owned(),
        };
        let error = if stderr_tail.is_empty() {
            status
        } else {
            format!("{status}: {stderr_tail}")
        };
        return Outcome::Failed {
            class: FailureClass::Retryable,
            error,
            detail,
        };
    };
    let is_error = result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let text = result
        .get("result")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let denials = result
        .get("permission_denials")
        .filter(|d| d.as_array().is_some_and(|a| !a.is_empty()))
        .cloned();
    if let Some(denials) = denials {
        let tools: Vec<String> = denials
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.get("tool_name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        return Outcome::Blocked {
            reason: format!(
                "permission denied for {}: resume with a permission_mode or allowed_tools that permits them",
                tools.join(", ")
            ),
            denials,
            detail,
        };
    }
    let exit_ok = matches!(r.ending, Ending::Exited(0));
    let subtype = result.get("subtype").and_then(Value::as_str).unwrap_or("");
    if subtype == "error_max_budget_usd" {
        // The run reached its --max-budget-usd: more money, not another try, is the answer.
        return Outcome::Blocked {
            reason: "budget: the agent run reached its max_cost_usd; resume with a higher max_cost_usd to go on".to_owned(),
            denials: Value::Array(Vec::new()),
            detail,
        };
    }
    if is_error || !exit_ok {
        let error = text
            .filter(|t| !t.is_empty())
            .or(errors)
            .or_else(|| (!stderr_tail.is_empty()).then(|| stderr_tail.clone()))
            .unwrap_or_else(|| format!("agent failed ({subtype})"));
        return Outcome::Failed {
            class: FailureClass::Retryable,
            error,
            detail,
        };
    }
    // With `--json-schema` the CLI reports the value as `structured_output`: it is the
    // step's output (as JSON text).
    let output = match result.get("structured_output") {
        Some(v) if !v.is_null() => v.to_string(),
        _ => text.unwrap_or_default(),
    };
    match success.check_output(&output) {
        Some(reason) => Outcome::Failed {
            class: FailureClass::Retryable,
            error: format!("success check failed: {reason}"),
            detail,
        },
        None => Outcome::Succeeded { output, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_never_an_argument_and_tool_lists_come_last() {
        let o = AgentOptions {
            model: Some("sonnet".into()),
            allowed_tools: vec!["Edit".into(), "Bash(cargo:*)".into()],
            ..Default::default()
        };
        let a = cli_args(&o, Some("abc"));
        assert_eq!(
            &a[..4],
            ["-p", "--output-format", "stream-json", "--verbose"]
        );
        assert!(a.windows(2).any(|w| w == ["--resume", "abc"]));
        assert_eq!(
            &a[a.len() - 3..],
            ["--allowedTools", "Edit", "Bash(cargo:*)"]
        );
    }

    #[test]
    fn tool_use_becomes_short_progress() {
        let v: Value = serde_json::json!({"type":"assistant","message":{"content":[
            {"type":"text","text":"hi"},
            {"type":"tool_use","name":"Bash","input":{"command":"cargo test\nmore"}}]}});
        assert_eq!(tool_uses(&v), ["Bash(cargo test)"]);
    }

    fn finished(lines: &[Value], code: i32, stderr: &str) -> Outcome {
        let state = StreamState::shared();
        let mut sink = line_sink(state.clone(), |_| {});
        for l in lines {
            sink(&l.to_string());
        }
        let r = ProcessResult {
            ending: Ending::Exited(code),
            stdout: String::new(),
            stderr: stderr.into(),
        };
        outcome(
            &r,
            &state,
            &SuccessCheck::default(),
            Duration::from_millis(5),
        )
    }

    #[test]
    fn is_error_with_success_subtype_is_a_failure() {
        let o = finished(
            &[
                serde_json::json!({"type":"system","subtype":"init","session_id":"s1"}),
                serde_json::json!({"type":"result","subtype":"success","is_error":true,
                "result":"Invalid API key","session_id":"s1"}),
            ],
            1,
            "",
        );
        assert!(matches!(o, Outcome::Failed { ref error, .. } if error == "Invalid API key"));
        assert_eq!(o.detail().session_id.as_deref(), Some("s1"));
    }

    #[test]
    fn permission_denials_block_the_step() {
        let o = finished(
            &[
                serde_json::json!({"type":"result","subtype":"success","is_error":false,
                "result":"done","session_id":"s1",
                "permission_denials":[{"tool_name":"Bash","tool_use_id":"t","tool_input":{}}]}),
            ],
            0,
            "",
        );
        assert!(matches!(o, Outcome::Blocked { ref reason, .. } if reason.contains("Bash")));
    }

    #[test]
    fn unknown_resume_id_in_result_errors_marks_session_unusable() {
        // 2.1.x prints an error result (no init line) besides the stderr message.
        let msg = "No conversation found with session ID: 0000";
        let o = finished(
            &[
                serde_json::json!({"type":"result","subtype":"error_during_execution",
                "is_error":true,"session_id":"0000","errors":[msg],"total_cost_usd":0}),
            ],
            1,
            msg,
        );
        assert!(matches!(o, Outcome::Failed { ref error, .. } if error == msg));
        assert!(o.detail().session_unusable);
    }

    #[test]
    fn session_comes_only_from_the_init_line() {
        // A bad --resume value yields a result with a fresh id that names no conversation.
        let o = finished(
            &[
                serde_json::json!({"type":"result","subtype":"error_during_execution",
                "is_error":true,"session_id":"fresh","errors":["--resume requires a valid session ID"]}),
            ],
            1,
            "",
        );
        assert_eq!(o.detail().session_id, None);
        assert!(!o.detail().session_unusable);
        let o = finished(
            &[
                serde_json::json!({"type":"system","subtype":"init","session_id":"s1"}),
                serde_json::json!({"type":"result","subtype":"success","is_error":false,
                    "result":"ok","session_id":"s1","total_cost_usd":0.5,"num_turns":2}),
            ],
            0,
            "",
        );
        assert_eq!(o.detail().session_id.as_deref(), Some("s1"));
        assert_eq!(o.detail().cost_usd, Some(0.5));
        assert!(matches!(o, Outcome::Succeeded { ref output, .. } if output == "ok"));
    }

    #[test]
    fn unknown_resume_id_marks_session_unusable() {
        let o = finished(&[], 1, "No conversation found with session ID: nope");
        assert!(o.detail().session_unusable);
    }
}
