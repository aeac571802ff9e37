//! The resolved workflow: what the engine executes and the store persists.
//!
//! Invariant: a [`Workflow`] built by [`compile`](crate::workflow::compile) is fully resolved
//! and valid — every default is filled in, every `cwd` is absolute, every dep and template
//! reference names an upstream step, the graph is acyclic — and it round-trips through JSON
//! unchanged, so another process re-reading it from the database runs exactly the same steps
//! in the same directories.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::workflow::expr::Expr;
use crate::workflow::human::Human;
use crate::workflow::retry::RetryPolicy;
use crate::workflow::template::Template;

/// Stall threshold when neither the step nor the defaults set one.
pub const DEFAULT_STALL_TIMEOUT_S: u64 = 120;

/// A resolved, validated workflow. Stored with the working directory most steps share written
/// once (see [`StoredWorkflow`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "StoredWorkflow", from = "StoredWorkflow")]
pub struct Workflow {
    /// Human-readable name, if the definition had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Final input values: declared defaults overlaid with the invocation's inputs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// The steps, in definition order.
    pub steps: Vec<Step>,
    /// Cost budget (USD) of the whole workflow: once its agent attempts cost this much, no
    /// new agent attempt starts (`defaults.max_cost_usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

impl Workflow {
    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Index of the step with this id in [`Workflow::steps`].
    pub fn position(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// One resolved step. Fields at their defaults are left out of the stored JSON (and filled
/// back in when it is read), which keeps a stored workflow close to what its author wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Unique id (`[A-Za-z0-9_-]+`).
    pub id: String,
    /// Ids of the steps that must complete before this one starts (no duplicates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<String>,
    /// What the step does.
    pub action: Action,
    /// Absolute working directory, fixed at submission so every attempt and every resume runs
    /// in the same place (a Claude session can only be resumed from its own cwd).
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub cwd: PathBuf,
    /// Variables added to the inherited environment (`defaults.env` merged with the step's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Seconds without output after which the attempt is flagged as stalled.
    #[serde(
        default = "default_stall_timeout_s",
        skip_serializing_if = "is_default_stall_timeout"
    )]
    pub stall_timeout_s: u64,
    /// What the monitor does with a stalled attempt.
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_stall: OnStall,
    /// Retry policy (step ← defaults ← built-in, field by field).
    #[serde(default, skip_serializing_if = "is_default")]
    pub retry: RetryPolicy,
    /// Agent options; only meaningful for [`Action::Prompt`] (empty for other steps).
    #[serde(default, skip_serializing_if = "is_default")]
    pub agent: AgentOptions,
    /// Claude Studio role / agent id, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Checks deciding whether a finished attempt succeeded.
    #[serde(default, skip_serializing_if = "is_default")]
    pub success: SuccessCheck,
    /// Condition deciding, once the deps settled, whether the step runs or is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Expr>,
    /// A failure of this step does not fail the workflow and does not stop its dependents.
    #[serde(default, skip_serializing_if = "is_default")]
    pub continue_on_error: bool,
    /// Fan-out: the step runs once per item of this list, as instances `ID[i]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<ForEach>,
    /// The output is JSON (`output: "json"`, or an `output_schema`): an attempt whose output
    /// does not parse (or does not match the schema) fails, retryably.
    #[serde(default, skip_serializing_if = "is_default")]
    pub output_json: bool,
    /// JSON Schema the output must match; for an agent step, passed to Claude Code as its
    /// structured-output schema. Checked to compile at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
    /// Most one agent run of this step may cost (USD), passed to Claude Code as
    /// `--max-budget-usd`; a run that reaches it blocks the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// For a step inside a `repeat` group, the group's id: the step runs once per iteration,
    /// as `ID#k`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A `repeat` group (its action is [`Action::Repeat`]): its steps, listed after it in
/// [`Workflow::steps`] with `group` set, run as one iteration until `until` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repeat {
    /// Ids of the group's steps, in definition order.
    pub steps: Vec<String>,
    /// Ends the loop, completed, once true after an iteration; `None`: run every iteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Expr>,
    pub max_iterations: u32,
}

/// The id of iteration `k` (1-based) of step `step_id` inside a `repeat` group: `ID#k`.
pub fn iteration_id(step_id: &str, k: u32) -> String {
    format!("{step_id}#{k}")
}

/// The step and iteration of an iteration id `ID#k`.
pub fn parse_iteration(id: &str) -> Option<(&str, u32)> {
    let (step, k) = id.split_once('#')?;
    if step.is_empty() || k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((step, k.parse().ok().filter(|k| *k > 0)?))
}

/// The id of instance `index` of `for_each` step `step_id`: `ID[index]`.
pub fn instance_id(step_id: &str, index: usize) -> String {
    format!("{step_id}[{index}]")
}

/// The step and item index of an instance id `ID[index]`.
pub fn parse_instance(id: &str) -> Option<(&str, usize)> {
    let (step, rest) = id.split_once('[')?;
    let index = rest.strip_suffix(']')?;
    if step.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((step, index.parse().ok()?))
}

/// A `for_each` fan-out: the list expression (evaluated once, when the step is ready, and
/// stored) and how many instances may run at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForEach {
    /// A CEL expression giving the items.
    pub items: Expr,
    /// Most instances running at once; `None`: only the step-slot limit applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
}

/// The stored form of a [`Workflow`]: `cwd` holds the directory of the first step, and steps
/// in that directory leave theirs out.
#[derive(Serialize, Deserialize)]
struct StoredWorkflow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    inputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_empty_path")]
    cwd: PathBuf,
    steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_cost_usd: Option<f64>,
}

impl From<Workflow> for StoredWorkflow {
    fn from(wf: Workflow) -> StoredWorkflow {
        let cwd = wf.steps.first().map(|s| s.cwd.clone()).unwrap_or_default();
        let steps = wf
            .steps
            .into_iter()
            .map(|mut s| {
                if s.cwd == cwd {
                    s.cwd = PathBuf::new();
                }
                s
            })
            .collect();
        StoredWorkflow {
            name: wf.name,
            inputs: wf.inputs,
            cwd,
            steps,
            max_cost_usd: wf.max_cost_usd,
        }
    }
}

impl From<StoredWorkflow> for Workflow {
    fn from(stored: StoredWorkflow) -> Workflow {
        let steps = stored
            .steps
            .into_iter()
            .map(|mut s| {
                if s.cwd.as_os_str().is_empty() {
                    s.cwd = stored.cwd.clone();
                }
                s
            })
            .collect();
        Workflow {
            name: stored.name,
            inputs: stored.inputs,
            steps,
            max_cost_usd: stored.max_cost_usd,
        }
    }
}

fn is_empty_path(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

fn default_stall_timeout_s() -> u64 {
    DEFAULT_STALL_TIMEOUT_S
}

fn is_default_stall_timeout(v: &u64) -> bool {
    *v == DEFAULT_STALL_TIMEOUT_S
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// What a step runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// An agent run with this prompt (values inserted verbatim).
    Prompt(Template),
    /// A program and its arguments, no shell (values inserted verbatim).
    Run(Vec<Template>),
    /// A script for `sh -c` (values expanded from the environment, see
    /// [`Template::render_shell`]).
    Shell(Template),
    /// A loop group: runs its steps (see [`Step::repeat`]), no process of its own.
    Repeat(Repeat),
    /// A child workflow, run and awaited; no process of its own.
    Workflow(SubWorkflow),
    /// A decision without a process (Claude Studio's `conditional`): the output is `true`
    /// or `false`, what the expression evaluated to.
    Condition(Expr),
    /// A join without a process (Claude Studio's `loop` and `parallel`): completes once
    /// its deps have, with a JSON object of their outputs as its output.
    Join,
    /// A question for a person, or a message to them; runs no process.
    Human(Human),
}

/// A sub-workflow step's child: exactly one of `file` (absolute) and `definition`, and its
/// inputs as templates over the parent's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubWorkflow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, Template>,
}

impl Action {
    /// Every template of the action, in order.
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            Self::Prompt(t) | Self::Shell(t) => vec![t],
            Self::Run(argv) => argv.iter().collect(),
            Self::Human(h) => vec![&h.prompt],
            Self::Repeat(_) => Vec::new(),
            Self::Workflow(w) => w.inputs.values().collect(),
            Self::Condition(_) | Self::Join => Vec::new(),
        }
    }

    /// `prompt`, `run`, `shell` or `human`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Prompt(_) => "prompt",
            Self::Run(_) => "run",
            Self::Shell(_) => "shell",
            Self::Human(_) => "human",
            Self::Repeat(_) => "repeat",
            Self::Workflow(_) => "workflow",
            Self::Condition(_) => "condition",
            Self::Join => "join",
        }
    }
}

/// What to do when an attempt stalls (alive but silent past its threshold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OnStall {
    /// Flag it in status and monitor output; let it run.
    #[default]
    Report,
    /// Terminate the attempt and retry it (counts against `max_attempts`).
    Restart,
}

/// Options for the agent command of a prompt step. Every field is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct AgentOptions {
    /// Model alias or name (`--model`), e.g. `sonnet`, `opus`.
    #[schemars(with = "String")]
    pub model: Option<String>,
    /// Permission mode (`--permission-mode`): `default`, `acceptEdits`, `plan` or
    /// `bypassPermissions`.
    #[schemars(with = "String")]
    pub permission_mode: Option<String>,
    /// Tools the agent may use without asking (`--allowedTools`), e.g. `Edit`, `Bash(cargo:*)`.
    pub allowed_tools: Vec<String>,
    /// Tools the agent may not use (`--disallowedTools`).
    pub disallowed_tools: Vec<String>,
    /// Most agentic turns (`--max-turns`).
    #[schemars(with = "u32")]
    pub max_turns: Option<u32>,
    /// Text appended to the default system prompt (`--append-system-prompt`).
    #[schemars(with = "String")]
    pub append_system_prompt: Option<String>,
    /// Replacement system prompt (`--system-prompt`).
    #[schemars(with = "String")]
    pub system_prompt: Option<String>,
}

impl AgentOptions {
    /// `self` with every option that `overrides` sets (a `Some`, a non-empty list) replaced.
    pub fn merged(&self, overrides: &AgentOptions) -> AgentOptions {
        fn pick<T: Clone>(base: &Option<T>, over: &Option<T>) -> Option<T> {
            over.clone().or_else(|| base.clone())
        }
        fn pick_list(base: &[String], over: &[String]) -> Vec<String> {
            if over.is_empty() {
                base.to_vec()
            } else {
                over.to_vec()
            }
        }
        AgentOptions {
            model: pick(&self.model, &overrides.model),
            permission_mode: pick(&self.permission_mode, &overrides.permission_mode),
            allowed_tools: pick_list(&self.allowed_tools, &overrides.allowed_tools),
            disallowed_tools: pick_list(&self.disallowed_tools, &overrides.disallowed_tools),
            max_turns: pick(&self.max_turns, &overrides.max_turns),
            append_system_prompt: pick(&self.append_system_prompt, &overrides.append_system_prompt),
            system_prompt: pick(&self.system_prompt, &overrides.system_prompt),
        }
    }
}

/// Checks on a finished attempt. The default checks nothing but a zero exit code.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SuccessCheck {
    /// Every one of these must occur in the output.
    pub contains: Vec<String>,
    /// None of these may occur in the output.
    pub not_contains: Vec<String>,
    /// The output must match this regex somewhere (validated at submission).
    pub regex: Option<String>,
    /// Exit codes that mean success; empty means `[0]`.
    pub exit_codes: Vec<i32>,
}

impl SuccessCheck {
    /// `None` when `output` passes every check, else `Some(reason)` naming each failed one.
    pub fn check_output(&self, output: &str) -> Option<String> {
        let mut failures = Vec::new();
        for needle in &self.contains {
            if !output.contains(needle.as_str()) {
                failures.push(format!("output does not contain {needle:?}"));
            }
        }
        for needle in &self.not_contains {
            if output.contains(needle.as_str()) {
                failures.push(format!("output contains {needle:?}"));
            }
        }
        if let Some(pattern) = &self.regex {
            match regex::Regex::new(pattern) {
                Ok(re) if re.is_match(output) => {}
                Ok(_) => failures.push(format!("output does not match regex {pattern:?}")),
                Err(e) => failures.push(format!("invalid success regex {pattern:?}: {e}")),
            }
        }
        if failures.is_empty() {
            None
        } else {
            Some(failures.join("; "))
        }
    }

    /// True when `code` counts as success.
    pub fn exit_ok(&self, code: i32) -> bool {
        if self.exit_codes.is_empty() {
            code == 0
        } else {
            self.exit_codes.contains(&code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_overrides_win_where_set() {
        let base = AgentOptions {
            model: Some("sonnet".into()),
            permission_mode: Some("plan".into()),
            allowed_tools: vec!["Read".into()],
            max_turns: Some(5),
            ..AgentOptions::default()
        };
        let over = AgentOptions {
            model: Some("opus".into()),
            allowed_tools: vec![],
            disallowed_tools: vec!["Bash".into()],
            ..AgentOptions::default()
        };
        let merged = base.merged(&over);
        assert_eq!(merged.model.as_deref(), Some("opus"));
        assert_eq!(
            merged.permission_mode.as_deref(),
            Some("plan"),
            "unset override keeps the base"
        );
        assert_eq!(
            merged.allowed_tools,
            ["Read"],
            "empty override list keeps the base"
        );
        assert_eq!(merged.disallowed_tools, ["Bash"]);
        assert_eq!(merged.max_turns, Some(5));
    }

    #[test]
    fn success_check_reports_every_failed_condition() {
        let check = SuccessCheck {
            contains: vec!["PASS".into(), "done".into()],
            not_contains: vec!["FAIL".into()],
            regex: Some(r"^\d+ tests".into()),
            exit_codes: vec![],
        };
        assert_eq!(check.check_output("12 tests PASS done"), None);
        let reason = check.check_output("FAIL: 3 tests").unwrap();
        assert!(reason.contains(r#"does not contain "PASS""#), "{reason}");
        assert!(reason.contains(r#"does not contain "done""#), "{reason}");
        assert!(reason.contains(r#"contains "FAIL""#), "{reason}");
        assert!(reason.contains("does not match regex"), "{reason}");
        assert_eq!(SuccessCheck::default().check_output("anything"), None);
    }

    #[test]
    fn instance_ids_round_trip() {
        assert_eq!(instance_id("review", 3), "review[3]");
        assert_eq!(parse_instance("review[3]"), Some(("review", 3)));
        for bad in [
            "review",
            "review[]",
            "[1]",
            "review[x]",
            "review[1",
            "review[-1]",
        ] {
            assert_eq!(parse_instance(bad), None, "{bad}");
        }
    }

    #[test]
    fn exit_codes_default_to_zero_only() {
        let default = SuccessCheck::default();
        assert!(default.exit_ok(0));
        assert!(!default.exit_ok(1));
        let custom = SuccessCheck {
            exit_codes: vec![0, 1],
            ..SuccessCheck::default()
        };
        assert!(custom.exit_ok(1));
        assert!(!custom.exit_ok(2));
    }

    #[test]
    fn action_serialises_externally_tagged() {
        let action = Action::Run(vec![
            Template::parse("echo").unwrap(),
            Template::parse("{a.output}").unwrap(),
        ]);
        let json = serde_json::to_value(&action).unwrap();
        assert_eq!(json, serde_json::json!({"run": ["echo", "{a.output}"]}));
        assert_eq!(serde_json::from_value::<Action>(json).unwrap(), action);
        let stall: OnStall = serde_json::from_str("\"restart\"").unwrap();
        assert_eq!(stall, OnStall::Restart);
    }
}
