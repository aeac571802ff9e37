//! The raw input form of a workflow definition: what users (and Claude Studio) write.
//!
//! Invariant: these types describe the accepted JSON exactly once. The JSON Schema printed by
//! `baton schema` is generated from them (doc comments become descriptions), and the decoder
//! in `decode.rs` produces these same types, so schema, serde and decoder cannot disagree on
//! a valid definition. Nothing here is resolved or validated beyond JSON types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::workflow::definition::OnStall;

/// A baton workflow definition. Also accepted: a bare array of steps, or a single step object
/// (Claude Studio's shapes).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawDefinition {
    /// The full form, with `steps`.
    Workflow(Box<RawWorkflow>),
    /// Just the steps.
    Steps(Vec<RawStep>),
    /// A one-step workflow.
    Step(Box<RawStep>),
}

/// The full workflow form.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflow {
    /// URL of this schema, for editors; ignored.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Human-readable name, shown in status and monitor output.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text; ignored.
    #[serde(default)]
    pub description: Option<String>,
    /// Free-form version label (Claude Studio files carry one); ignored.
    #[serde(default)]
    pub version: Option<serde_json::Value>,
    /// Free-form metadata (Claude Studio files carry it); ignored.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Declared inputs, referenced as `{inputs.NAME}`: name → default value (a string), or
    /// name → `{ "description", "default" }`. An input without a default must be provided
    /// when the workflow is invoked.
    #[serde(default)]
    pub inputs: BTreeMap<String, RawInput>,
    /// Settings every step inherits unless it sets its own.
    #[serde(default)]
    pub defaults: Option<RawDefaults>,
    /// Named agent option profiles, selected by a step's `agent` (a name), `role` or `agentId`.
    #[serde(default)]
    pub agents: BTreeMap<String, RawAgent>,
    /// The steps, in order (or a single step object).
    #[serde(default)]
    pub steps: Option<RawSteps>,
    /// Claude Studio's name for `steps` (give one or the other).
    #[serde(default)]
    pub workflow: Option<RawSteps>,
}

impl RawWorkflow {
    /// `steps`, or Studio's `workflow`.
    pub fn step_list(&self) -> Option<&RawSteps> {
        self.steps.as_ref().or(self.workflow.as_ref())
    }
}

/// An array of steps, or one step.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawSteps {
    /// Several steps.
    Many(Vec<RawStep>),
    /// A single step.
    One(Box<RawStep>),
}

/// A declared input.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawInput {
    /// Shorthand: the default value.
    Default(String),
    /// Full form.
    Spec(RawInputSpec),
}

/// Full form of a declared input.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInputSpec {
    /// What the input is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Value used when the invocation does not provide one; without it the input is required.
    #[serde(default)]
    pub default: Option<String>,
}

/// Workflow-wide step defaults.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Working directory of every step; relative paths are resolved against the directory
    /// the workflow was submitted from.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment variables added to every step (a step's own `env` wins per variable).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit per attempt, in seconds. Default: none.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Seconds without output after which a running attempt counts as stalled. Default 120.
    #[serde(default)]
    pub stall_timeout_s: Option<u64>,
    /// What to do with a stalled attempt: `report` (default) or `restart`.
    #[serde(default)]
    pub on_stall: Option<OnStall>,
    /// Retry policy fields; each one set here overrides the built-in default.
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Agent options (or a profile name) for every prompt step.
    #[serde(default)]
    pub agent: Option<RawAgentRef>,
    /// Cost budget (USD) of the whole workflow: once its agent runs cost this much, no new
    /// agent attempt starts and the workflow is blocked (reason `budget`) until resumed with
    /// a higher `max_cost_usd`. Each agent run also gets what is left as its own limit.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
}

/// A partial retry policy: unset fields inherit (step ← defaults ← built-in).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total attempts including the first; 1 disables retries. Built-in default 3.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry, in milliseconds. Built-in default 1000.
    #[serde(default)]
    pub initial_interval_ms: Option<u64>,
    /// Multiplier applied to the delay for each further retry (>= 1). Built-in default 2.
    #[serde(default)]
    pub backoff_factor: Option<f64>,
    /// Cap on a single delay, in milliseconds. Built-in default 30000.
    #[serde(default)]
    pub max_interval_ms: Option<u64>,
    /// Randomise each delay within [50%, 100%]. Built-in default true.
    #[serde(default)]
    pub jitter: Option<bool>,
    /// Case-insensitive substrings of an error that make it final (no retry). Replaces the
    /// built-in list `["validation failed", "invalid configuration", "unauthorized", "forbidden"]`.
    #[serde(default)]
    pub non_retryable: Option<Vec<String>>,
}

/// Agent options: flags passed to the agent command (Claude Code) for prompt steps.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// `--model`, e.g. `sonnet`, `opus` or a full model name.
    #[serde(default)]
    pub model: Option<String>,
    /// `--permission-mode`, e.g. `plan`, `acceptEdits`, `bypassPermissions`.
    #[serde(default)]
    pub permission_mode: Option<String>,
    /// `--allowedTools`, e.g. `["Edit", "Bash(cargo:*)"]`.
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// `--disallowedTools`.
    #[serde(default)]
    pub disallowed_tools: Option<Vec<String>>,
    /// `--max-turns`.
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// `--append-system-prompt`: text added to the agent's default system prompt.
    #[serde(default)]
    pub append_system_prompt: Option<String>,
    /// `--system-prompt`: replaces the agent's default system prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
}

/// Agent options inline, or the name of a profile in `agents`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawAgentRef {
    /// A profile name (a key of `agents`).
    Profile(String),
    /// Inline options.
    Inline(RawAgent),
}

/// Checks on a step's outcome; all must pass for the step to succeed.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSuccess {
    /// Text (or texts) the output must contain.
    #[serde(default)]
    pub contains: Option<StringOrList>,
    /// Text (or texts) the output must not contain.
    #[serde(default)]
    pub not_contains: Option<StringOrList>,
    /// A regular expression (Rust `regex` syntax) the output must match somewhere.
    #[serde(default)]
    pub regex: Option<String>,
    /// Exit codes that count as success for `run`/`shell` steps. Default `[0]`.
    #[serde(default)]
    pub exit_codes: Option<Vec<i32>>,
}

/// A sub-workflow step's `workflow` as written: exactly one of `file` and `definition`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSubWorkflow {
    /// A workflow file, relative to the step's `cwd`; read when the step starts.
    #[serde(default)]
    pub file: Option<String>,
    /// An inline workflow definition (any shape a definition may have).
    #[serde(default)]
    pub definition: Option<serde_json::Value>,
    /// The child's inputs; values are templates (`{plan.output}`, `{inputs.NAME}`).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

/// A `repeat` group as written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRepeat {
    /// The steps of one iteration: a DAG of their own (they may depend on each other and on
    /// the group's ancestors). In iteration k, `{previous.ID.output}` (and CEL `previous`) is
    /// iteration k-1's value; agent steps continue their session across iterations.
    #[serde(default)]
    pub steps: Vec<RawStep>,
    /// A CEL condition over this iteration's `steps` (and `inputs`, `iteration`): true ends
    /// the loop, completed. Without it the group runs `max_iterations` times.
    #[serde(default)]
    pub until: Option<String>,
    /// Most iterations (≥ 1); after the last, a group whose `until` never held fails.
    #[serde(default)]
    pub max_iterations: Option<u32>,
}

/// One step as written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Unique id (`[A-Za-z0-9_-]+`), used in `deps` and `{id.output}`. Default `step-N`
    /// (N = 1-based position).
    #[serde(default)]
    pub id: Option<String>,
    /// Ids of the steps that must complete first (one id or an array).
    #[serde(default)]
    pub deps: Option<StringOrList>,
    /// Synonym of `deps` (give only one of `deps`, `depends_on`, `dependsOn`).
    #[serde(default)]
    pub depends_on: Option<StringOrList>,
    /// Synonym of `deps` (give only one of `deps`, `depends_on`, `dependsOn`).
    #[serde(default, rename = "dependsOn")]
    pub depends_on_camel: Option<StringOrList>,
    /// Agent step: the prompt (a template).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Claude Studio's name for `prompt`.
    #[serde(default)]
    pub task: Option<String>,
    /// Command step: program and arguments, run without a shell; each element is a template
    /// whose values are inserted verbatim.
    #[serde(default)]
    pub run: Option<Vec<String>>,
    /// Shell step: a script for `sh -c`; every `{…}` value reaches it through the environment,
    /// as a shell-quoted variable expansion (`"$BATON_REF_1"`), never as script text.
    #[serde(default)]
    pub shell: Option<String>,
    /// Human step: a question for a person (`approval`, `input`) or a message to them
    /// (`notification`); the answer is the step's output.
    #[serde(default)]
    pub human: Option<crate::workflow::human::RawHuman>,
    /// Working directory (relative paths resolve against the submission directory).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables (over `defaults.env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit per attempt, in seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Seconds of silence after which an attempt counts as stalled.
    #[serde(default)]
    pub stall_timeout_s: Option<u64>,
    /// `report` (default) or `restart` a stalled attempt.
    #[serde(default)]
    pub on_stall: Option<OnStall>,
    /// Retry policy fields overriding `defaults.retry`.
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Agent profile name or inline options (prompt steps only); inline options override the
    /// profile, which overrides `defaults.agent`.
    #[serde(default)]
    pub agent: Option<RawAgentRef>,
    /// Claude Studio role: selects the `agents` profile of that name when there is one.
    #[serde(default)]
    pub role: Option<String>,
    /// Claude Studio agent id: like `role` (wins over it).
    #[serde(default, rename = "agentId")]
    pub agent_id: Option<String>,
    /// Checks on the outcome.
    #[serde(default)]
    pub success: Option<RawSuccess>,
    /// A CEL condition, evaluated once when every dep has settled; false skips the step.
    /// Reads `inputs.NAME` and `steps.ID.{status,output,json,exit_code,attempts,session_id}` (ancestors
    /// only). Without `failure()` or `always()` it means `success() && (…)`: a failed dep
    /// stops the step; with them it is evaluated after a failure too (`"failure()"` is an
    /// on-failure handler).
    #[serde(default)]
    pub when: Option<String>,
    /// The step may fail without failing the workflow: its dependents run, it stays `failed`.
    #[serde(default)]
    pub continue_on_error: Option<bool>,
    /// Fan-out: a CEL expression giving a list; the step runs once per item as instances
    /// `ID[0]`, `ID[1]`, … with `{item}`, `{item.FIELD}` and `{index}` in its templates.
    #[serde(default)]
    pub for_each: Option<String>,
    /// Most instances of a `for_each` step running at once (default: no limit of its own).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// `json`: the output must be JSON (it is then `steps.ID.json` in conditions and
    /// `{ID.json.PATH}` in templates); an attempt whose output is not fails and is retried.
    /// Default `text`.
    #[serde(default)]
    pub output: Option<RawOutput>,
    /// A JSON Schema the output must match (implies `output: "json"`). On an agent step it
    /// is passed to Claude Code (`--json-schema`), whose structured output becomes the
    /// step's output.
    #[serde(default)]
    pub output_schema: Option<serde_json::Value>,
    /// Most one agent run of this step may cost (USD): passed to Claude Code as
    /// `--max-budget-usd`; a run that reaches it blocks the step (reason `budget`).
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// A loop group: its own steps run as one iteration, again and again, until `until`
    /// holds or `max_iterations` ran. Replaces prompt/run/shell.
    #[serde(default)]
    pub repeat: Option<RawRepeat>,
    /// A sub-workflow: runs a child workflow (thread id `PARENT/STEP`), durable and
    /// resumable on its own; the step's output is the child's last step's output.
    /// Replaces prompt/run/shell.
    #[serde(default)]
    pub workflow: Option<RawSubWorkflow>,
    /// Display name; ignored.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text; ignored.
    #[serde(default)]
    pub description: Option<String>,
    /// Free-form metadata; ignored.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Free-form configuration (Claude Studio); ignored.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Claude Studio step type: `task` (the default) or `human` (with `prompt`,
    /// `approvalRequired`, `interactionType`, `timeoutBehavior`, `timeoutSeconds`).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Claude Studio session id to resume; ignored (baton tracks sessions itself).
    #[serde(default, rename = "sessionId")]
    pub session_id: Option<String>,
    /// Claude Studio `conditional`: a legacy expression (`{a.output} === "x"`) or a v2
    /// structured condition (`{version: "2.0", rootGroup: {combinator, rules, groups}}`).
    #[serde(default)]
    pub condition: Option<serde_json::Value>,
    /// Claude Studio `conditional`: the step run when the condition holds.
    #[serde(default, rename = "trueBranch")]
    pub true_branch: Option<String>,
    /// Claude Studio `conditional`: the step run when it does not.
    #[serde(default, rename = "falseBranch")]
    pub false_branch: Option<String>,
    /// Claude Studio `loop`: the items.
    #[serde(default)]
    pub items: Option<Vec<String>>,
    /// Claude Studio `loop`: the name of the item in the body's tasks (`{file}`), default
    /// `item`.
    #[serde(default, rename = "loopVar")]
    pub loop_var: Option<String>,
    /// Claude Studio `loop`: most items run.
    #[serde(default, rename = "maxIterations")]
    pub max_iterations: Option<u32>,
    /// Claude Studio `loop`: ids of the steps run once per item.
    #[serde(default, rename = "loopSteps")]
    pub loop_steps: Option<Vec<String>>,
    /// Claude Studio `parallel`: ids of the steps run side by side.
    #[serde(default, rename = "parallelSteps")]
    pub parallel_steps: Option<Vec<String>>,
    /// Set by the Studio mapping: what the step does without a process.
    #[serde(skip)]
    #[schemars(skip)]
    pub mapped: Option<Mapped>,
}

/// What a Claude Studio `conditional`, `loop` or `parallel` step became (see `studio.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// Evaluates this CEL condition; its output is `true` or `false`.
    Condition(String),
    /// Completes as soon as its deps have, with their outputs as its output.
    Join,
}

impl RawStep {
    /// `deps`, or whichever synonym was given.
    pub fn dep_list(&self) -> Option<&StringOrList> {
        self.deps
            .as_ref()
            .or(self.depends_on.as_ref())
            .or(self.depends_on_camel.as_ref())
    }
}

/// The form of a step's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawOutput {
    /// Text, as printed (the default).
    Text,
    /// JSON, parsed and checked after each attempt.
    Json,
}

/// A string, or an array of strings.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum StringOrList {
    /// One string.
    One(String),
    /// Several strings.
    Many(Vec<String>),
}

impl StringOrList {
    /// The strings, in order.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => Ok(Self::One(s)),
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    serde_json::Value::String(s) => Ok(s),
                    _ => Err(serde::de::Error::custom(
                        "expected a string or an array of strings",
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Self::Many),
            _ => Err(serde::de::Error::custom(
                "expected a string or an array of strings",
            )),
        }
    }
}
