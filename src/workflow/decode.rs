//! Decoding: JSON value → [`RawDefinition`], collecting every type error and unknown field.
//!
//! Serde's derived `Deserialize` stops at the first error; users need all of them at once,
//! each naming its step and field. So this walks the JSON object by object, deserialises each
//! known field on its own, and reports every unknown field with the closest known name.
//!
//! Invariant: decoding never fails outright. It returns the best raw definition it could
//! build (bad fields left unset) and adds one [`Problem`] per defect; the caller rejects the
//! definition when any problem was recorded. Unknown fields are problems, except the ones
//! Claude Studio emits (`name`, `description`, `metadata`, `type`, `config`, `sessionId`, and
//! on its unsupported step types their loop/condition/human fields), so existing Studio
//! definitions decode unchanged and an unsupported step type is reported once, precisely.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::workflow::human::{self, RawHuman, StudioHuman};
use crate::workflow::problem::{Problem, did_you_mean};
use crate::workflow::raw::{
    RawAgent, RawAgentRef, RawDefaults, RawDefinition, RawInput, RawInputSpec, RawRepeat, RawRetry,
    RawStep, RawSteps, RawSubWorkflow, RawSuccess, RawWorkflow,
};

/// Step fields Claude Studio emits for step types baton does not have (`loop`,
/// `conditional`, `parallel`, `human`); ignored on such steps, whose `type` is reported.
const STUDIO_STEP_FIELDS: &[&str] = &[
    "approvalRequired",
    "interactionType",
    "timeoutBehavior",
    "timeoutSeconds",
];

const DEPS: &str = "a step id or an array of step ids";
const SECONDS: &str = "a whole number of seconds";
const STRING: &str = "a string";
const STRINGS: &str = "an array of strings";

/// Decodes a definition in any accepted shape. Never fails; problems are appended.
pub fn decode(value: &Value, problems: &mut Vec<Problem>) -> RawDefinition {
    match value {
        Value::Array(items) => RawDefinition::Steps(decode_step_list(items, problems)),
        Value::Object(map) if is_single_step(map) => {
            RawDefinition::Step(Box::new(decode_step(value, 0, problems)))
        }
        Value::Object(_) => RawDefinition::Workflow(Box::new(decode_workflow(value, problems))),
        other => {
            problems.push(Problem::workflow(
                "definition",
                format!(
                    "expected a workflow object, an array of steps or a step object, got {}",
                    describe(other)
                ),
            ));
            RawDefinition::Steps(Vec::new())
        }
    }
}

/// Claude Studio's single-step shape: an action field at the top level and no `steps`.
fn is_single_step(map: &Map<String, Value>) -> bool {
    let has = |k: &str| map.get(k).is_some_and(|v| !v.is_null());
    !has("steps") && !has("workflow") && ["prompt", "task", "run", "shell"].into_iter().any(has)
}

fn decode_workflow(value: &Value, problems: &mut Vec<Problem>) -> RawWorkflow {
    let Some(mut o) = Obj::new(value, None, "", problems) else {
        return RawWorkflow::default();
    };
    let mut wf = RawWorkflow {
        schema: o.get("$schema", STRING, problems),
        name: o.get("name", STRING, problems),
        description: o.get("description", STRING, problems),
        version: o.raw("version").cloned(),
        metadata: o.raw("metadata").cloned(),
        ..RawWorkflow::default()
    };
    if let Some(v) = o.raw("inputs") {
        wf.inputs = decode_map(v, None, "inputs", problems, decode_input);
    }
    if let Some(v) = o.raw("defaults") {
        wf.defaults = Some(decode_defaults(v, problems));
    }
    if let Some(v) = o.raw("agents") {
        wf.agents = decode_map(v, None, "agents", problems, |v, step, field, p| {
            decode_agent(v, step, &field, p)
        });
    }
    o.one_of(&["steps", "workflow"], problems);
    if let Some(v) = o.raw("steps") {
        wf.steps = Some(decode_steps_field(v, "steps", problems));
    }
    if let Some(v) = o.raw("workflow") {
        wf.workflow = Some(decode_steps_field(v, "workflow", problems));
    }
    o.finish(&[], problems);
    wf
}

/// `steps` (or Studio's `workflow`): an array of steps, or one step object.
fn decode_steps_field(value: &Value, field: &str, problems: &mut Vec<Problem>) -> RawSteps {
    match value {
        Value::Array(items) => RawSteps::Many(decode_step_list(items, problems)),
        Value::Object(_) => RawSteps::One(Box::new(decode_step(value, 0, problems))),
        other => {
            let message = format!(
                "expected an array of steps (or one step object), got {}",
                describe(other)
            );
            problems.push(Problem::workflow(field, message));
            RawSteps::Many(Vec::new())
        }
    }
}

fn decode_step_list(items: &[Value], problems: &mut Vec<Problem>) -> Vec<RawStep> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| decode_step(item, i, problems))
        .collect()
}

/// Decodes the step at 0-based `index`; problems name it by its `id` or `step-N`.
fn decode_step(value: &Value, index: usize, problems: &mut Vec<Problem>) -> RawStep {
    let label = value
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("step-{}", index + 1), str::to_owned);
    let Some(mut o) = Obj::new(value, Some(label.clone()), "", problems) else {
        return RawStep::default();
    };
    let step = Some(label.as_str());
    o.one_of(&["deps", "depends_on", "dependsOn"], problems);
    let mut raw = RawStep {
        id: o.get("id", "a step id (letters, digits, `_`, `-`)", problems),
        deps: o.get("deps", DEPS, problems),
        depends_on: o.get("depends_on", DEPS, problems),
        depends_on_camel: o.get("dependsOn", DEPS, problems),
        prompt: o.get("prompt", STRING, problems),
        task: o.get("task", STRING, problems),
        run: o.get(
            "run",
            "an array of strings (program, then arguments)",
            problems,
        ),
        shell: o.get("shell", STRING, problems),
        cwd: o.get("cwd", STRING, problems),
        env: o
            .get("env", "an object of string values", problems)
            .unwrap_or_default(),
        timeout_s: o.get("timeout_s", SECONDS, problems),
        stall_timeout_s: o.get("stall_timeout_s", SECONDS, problems),
        on_stall: o.get("on_stall", "\"report\" or \"restart\"", problems),
        role: o.get("role", STRING, problems),
        agent_id: o.get("agentId", STRING, problems),
        name: o.get("name", STRING, problems),
        description: o.get("description", STRING, problems),
        metadata: o.raw("metadata").cloned(),
        config: o.raw("config").cloned(),
        kind: o.get("type", STRING, problems),
        session_id: o.get("sessionId", STRING, problems),
        when: o.get("when", "a CEL expression (a string)", problems),
        condition: o.raw("condition").cloned(),
        true_branch: o.get("trueBranch", "a step id", problems),
        false_branch: o.get("falseBranch", "a step id", problems),
        items: o.get("items", STRINGS, problems),
        loop_var: o.get("loopVar", STRING, problems),
        max_iterations: o.get("maxIterations", "a positive integer", problems),
        loop_steps: o.get("loopSteps", "an array of step ids", problems),
        parallel_steps: o.get("parallelSteps", "an array of step ids", problems),
        continue_on_error: o.get("continue_on_error", "true or false", problems),
        for_each: o.get(
            "for_each",
            "a CEL expression giving a list (a string)",
            problems,
        ),
        max_parallel: o.get("max_parallel", "a positive integer", problems),
        output: o.get("output", "\"json\" or \"text\"", problems),
        output_schema: o.raw("output_schema").cloned(),
        max_cost_usd: o.get("max_cost_usd", "a positive number of US dollars", problems),
        ..RawStep::default()
    };
    if let Some(v) = o.raw("retry") {
        raw.retry = Some(decode_retry(v, step, "retry", problems));
    }
    if let Some(v) = o.raw("agent") {
        raw.agent = decode_agent_ref(v, step, "agent", problems);
    }
    if let Some(v) = o.raw("success") {
        raw.success = Some(decode_success(v, step, problems));
    }
    if let Some(v) = o.raw("human") {
        raw.human = Some(decode_human(v, step, problems));
    }
    if raw.kind.as_deref() == Some("human") {
        studio_human(&mut raw, &mut o, &label, problems);
    }
    if let Some(v) = o.raw("repeat") {
        raw.repeat = Some(decode_repeat(v, step, problems));
    }
    if let Some(v) = o.raw("workflow") {
        raw.workflow = decode_sub_workflow(v, step, problems);
    }
    // Studio's loop/condition/human fields only come with those step types, which are
    // reported as unsupported; on a task step they are just unknown fields.
    let unsupported_type = raw.kind.as_deref().is_some_and(|k| k != "task");
    o.finish(
        if unsupported_type {
            STUDIO_STEP_FIELDS
        } else {
            &[]
        },
        problems,
    );
    raw
}

fn decode_human(value: &Value, step: Option<&str>, problems: &mut Vec<Problem>) -> RawHuman {
    let Some(mut o) = Obj::new(value, step.map(str::to_owned), "human", problems) else {
        return RawHuman::default();
    };
    let human = RawHuman {
        prompt: o.get("prompt", STRING, problems),
        kind: o.get(
            "kind",
            "\"approval\", \"input\" or \"notification\"",
            problems,
        ),
        timeout_s: o.get("timeout_s", SECONDS, problems),
        on_timeout: o.get("on_timeout", "\"fail\", \"approve\" or \"wait\"", problems),
    };
    o.finish(&[], problems);
    human
}

/// Claude Studio's `type: "human"` step: its `prompt` is the question, not an agent prompt.
fn studio_human(raw: &mut RawStep, o: &mut Obj<'_>, label: &str, problems: &mut Vec<Problem>) {
    let studio = StudioHuman {
        prompt: raw.prompt.take().or_else(|| raw.task.take()),
        approval_required: o.get("approvalRequired", "true or false", problems),
        interaction_type: o.get("interactionType", STRING, problems),
        timeout_behavior: o.get("timeoutBehavior", STRING, problems),
        timeout_seconds: o.get("timeoutSeconds", SECONDS, problems),
    };
    raw.human = Some(human::from_studio(studio, label, problems));
    raw.kind = None;
}

fn decode_sub_workflow(
    value: &Value,
    step: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Option<RawSubWorkflow> {
    let mut o = Obj::new(value, step.map(str::to_owned), "workflow", problems)?;
    let sub = RawSubWorkflow {
        file: o.get("file", STRING, problems),
        definition: o.raw("definition").cloned(),
        inputs: o
            .get("inputs", "an object of string values", problems)
            .unwrap_or_default(),
    };
    o.finish(&[], problems);
    Some(sub)
}

fn decode_repeat(value: &Value, step: Option<&str>, problems: &mut Vec<Problem>) -> RawRepeat {
    let Some(mut o) = Obj::new(value, step.map(str::to_owned), "repeat", problems) else {
        return RawRepeat::default();
    };
    let mut repeat = RawRepeat {
        until: o.get("until", "a CEL expression (a string)", problems),
        max_iterations: o.get("max_iterations", "a positive integer", problems),
        ..RawRepeat::default()
    };
    match o.raw("steps") {
        Some(Value::Array(items)) => repeat.steps = decode_step_list(items, problems),
        Some(other) => problems.push(Problem::step(
            step.unwrap_or("step"),
            "repeat.steps",
            format!("expected an array of steps, got {}", describe(other)),
        )),
        None => {}
    }
    o.finish(&[], problems);
    repeat
}

fn decode_defaults(value: &Value, problems: &mut Vec<Problem>) -> RawDefaults {
    let Some(mut o) = Obj::new(value, None, "defaults", problems) else {
        return RawDefaults::default();
    };
    let mut defaults = RawDefaults {
        cwd: o.get("cwd", STRING, problems),
        env: o
            .get("env", "an object of string values", problems)
            .unwrap_or_default(),
        timeout_s: o.get("timeout_s", SECONDS, problems),
        stall_timeout_s: o.get("stall_timeout_s", SECONDS, problems),
        on_stall: o.get("on_stall", "\"report\" or \"restart\"", problems),
        max_cost_usd: o.get("max_cost_usd", "a positive number of US dollars", problems),
        ..RawDefaults::default()
    };
    if let Some(v) = o.raw("retry") {
        defaults.retry = Some(decode_retry(v, None, "defaults.retry", problems));
    }
    if let Some(v) = o.raw("agent") {
        defaults.agent = decode_agent_ref(v, None, "defaults.agent", problems);
    }
    o.finish(&[], problems);
    defaults
}

fn decode_retry(
    value: &Value,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> RawRetry {
    let Some(mut o) = Obj::new(value, step.map(str::to_owned), field, problems) else {
        return RawRetry::default();
    };
    let retry = RawRetry {
        max_attempts: o.get("max_attempts", "a whole number >= 1", problems),
        initial_interval_ms: o.get(
            "initial_interval_ms",
            "a whole number of milliseconds",
            problems,
        ),
        backoff_factor: o.get("backoff_factor", "a number >= 1", problems),
        max_interval_ms: o.get(
            "max_interval_ms",
            "a whole number of milliseconds",
            problems,
        ),
        jitter: o.get("jitter", "true or false", problems),
        non_retryable: o.get("non_retryable", STRINGS, problems),
    };
    o.finish(&[], problems);
    retry
}

fn decode_agent(
    value: &Value,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> RawAgent {
    let Some(mut o) = Obj::new(value, step.map(str::to_owned), field, problems) else {
        return RawAgent::default();
    };
    let agent = RawAgent {
        model: o.get("model", STRING, problems),
        permission_mode: o.get("permission_mode", STRING, problems),
        allowed_tools: o.get("allowed_tools", STRINGS, problems),
        disallowed_tools: o.get("disallowed_tools", STRINGS, problems),
        max_turns: o.get("max_turns", "a whole number >= 1", problems),
        append_system_prompt: o.get("append_system_prompt", STRING, problems),
        system_prompt: o.get("system_prompt", STRING, problems),
    };
    o.finish(&[], problems);
    agent
}

fn decode_agent_ref(
    value: &Value,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<RawAgentRef> {
    match value {
        Value::String(name) => Some(RawAgentRef::Profile(name.clone())),
        Value::Object(_) => Some(RawAgentRef::Inline(decode_agent(
            value, step, field, problems,
        ))),
        other => {
            let message = format!(
                "expected a profile name or an object of agent options, got {}",
                describe(other)
            );
            problems.push(Problem::at(step, field, message));
            None
        }
    }
}

fn decode_success(value: &Value, step: Option<&str>, problems: &mut Vec<Problem>) -> RawSuccess {
    let Some(mut o) = Obj::new(value, step.map(str::to_owned), "success", problems) else {
        return RawSuccess::default();
    };
    let success = RawSuccess {
        contains: o.get("contains", "a string or an array of strings", problems),
        not_contains: o.get("not_contains", "a string or an array of strings", problems),
        regex: o.get("regex", STRING, problems),
        exit_codes: o.get("exit_codes", "an array of integers", problems),
    };
    o.finish(&[], problems);
    success
}

fn decode_input(
    value: &Value,
    _step: Option<&str>,
    field: String,
    problems: &mut Vec<Problem>,
) -> RawInput {
    match value {
        Value::String(default) => RawInput::Default(default.clone()),
        Value::Object(_) => {
            let Some(mut o) = Obj::new(value, None, &field, problems) else {
                return RawInput::Spec(RawInputSpec::default());
            };
            let spec = RawInputSpec {
                description: o.get("description", STRING, problems),
                default: o.get("default", STRING, problems),
            };
            o.finish(&[], problems);
            RawInput::Spec(spec)
        }
        other => {
            let message = format!(
                "expected a default value (string) or {{\"description\", \"default\"}}, got {}",
                describe(other)
            );
            problems.push(Problem::workflow(field, message));
            RawInput::Spec(RawInputSpec::default())
        }
    }
}

/// Decodes an object whose values all have the same shape (`inputs`, `agents`).
fn decode_map<T>(
    value: &Value,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
    decode_entry: impl Fn(&Value, Option<&str>, String, &mut Vec<Problem>) -> T,
) -> BTreeMap<String, T> {
    let Value::Object(map) = value else {
        problems.push(Problem::at(
            step,
            field,
            format!("expected an object, got {}", describe(value)),
        ));
        return BTreeMap::new();
    };
    map.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                decode_entry(v, step, format!("{field}.{k}"), problems),
            )
        })
        .collect()
}

/// A JSON object being decoded: remembers which fields were asked for, so the rest can be
/// reported as unknown.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    step: Option<String>,
    prefix: String,
    known: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    /// `field` is the path of this object ("" at step or workflow level).
    fn new(
        value: &'a Value,
        step: Option<String>,
        field: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let Value::Object(map) = value else {
            let name = if field.is_empty() { "step" } else { field };
            problems.push(Problem {
                step,
                field: name.to_owned(),
                message: format!("expected an object, got {}", describe(value)),
            });
            return None;
        };
        let prefix = if field.is_empty() {
            String::new()
        } else {
            format!("{field}.")
        };
        Some(Self {
            map,
            step,
            prefix,
            known: Vec::new(),
        })
    }

    fn problem(&self, key: &str, message: String) -> Problem {
        Problem {
            step: self.step.clone(),
            field: format!("{}{key}", self.prefix),
            message,
        }
    }

    /// The value of field `name`, unless absent or null (Studio emits nulls for unset fields).
    fn raw(&mut self, name: &'static str) -> Option<&'a Value> {
        self.known.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// Reports when more than one of the synonyms `names` is given.
    fn one_of(&self, names: &[&str], problems: &mut Vec<Problem>) {
        let given: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| self.map.get(*n).is_some_and(|v| !v.is_null()))
            .collect();
        if let [first, second, ..] = given.as_slice() {
            let message =
                format!("both {first:?} and {second:?} are given; they mean the same, keep one");
            problems.push(self.problem(second, message));
        }
    }

    /// The typed value of field `name`; a type mismatch is a problem saying what was
    /// `expected`.
    fn get<T: DeserializeOwned>(
        &mut self,
        name: &'static str,
        expected: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<T> {
        let value = self.raw(name)?;
        match serde_json::from_value(value.clone()) {
            Ok(v) => Some(v),
            Err(_) => {
                let message = format!("expected {expected}, got {}", describe(value));
                problems.push(self.problem(name, message));
                None
            }
        }
    }

    /// Reports every field that was never asked for and is not in `ignored`.
    fn finish(self, ignored: &[&str], problems: &mut Vec<Problem>) {
        for key in self.map.keys() {
            if !self.known.contains(&key.as_str()) && !ignored.contains(&key.as_str()) {
                let hint = did_you_mean(key, self.known.iter().copied());
                problems.push(self.problem(key, format!("unknown field {key:?}{hint}")));
            }
        }
    }
}

/// Short rendering of a JSON value for messages.
pub fn describe(value: &Value) -> String {
    let text = value.to_string();
    match value {
        Value::Null => "null".to_owned(),
        _ if text.chars().count() <= 60 => text,
        Value::String(_) => "a long string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        _ => "an object".to_owned(),
    }
}
