//! Resolution: raw definition + invocation inputs + submission directory → [`Workflow`].
//!
//! Fills every default (step ← `defaults` ← built-in, field by field), merges agent options
//! (`defaults.agent` ← profile ← inline), resolves `cwd`s lexically against the submission
//! directory, parses templates and builds each step's action. Control-flow constructs
//! (`repeat` groups, `for_each`, sub-workflows) are resolved in `resolve_control.rs`, the
//! checks of single fields in `resolve_checks.rs`; graph-wide checks (ids, deps, cycles,
//! references) are in `validate.rs`.
//!
//! Invariant: resolution is a pure function of its arguments (no filesystem, environment or
//! clock) and always yields one [`Step`] per raw step, in order, so graph validation can run
//! on a definition that also has field problems and report everything at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::workflow::definition::{
    Action, AgentOptions, DEFAULT_STALL_TIMEOUT_S, OnStall, Step, SubWorkflow, SuccessCheck,
    Workflow,
};
use crate::workflow::expr::Expr;
use crate::workflow::problem::{Problem, did_you_mean, is_valid_id};
use crate::workflow::raw::{
    Mapped, RawAgent, RawAgentRef, RawDefaults, RawDefinition, RawInput, RawStep, RawSteps,
    RawSuccess,
};
use crate::workflow::resolve_checks::{
    NUL_MESSAGE, check_budget, check_env, check_positive, push_retry_problems, resolve_cwd,
    resolve_output_schema,
};
use crate::workflow::resolve_control::{
    check_sub_workflow, resolve_for_each, resolve_group, resolve_repeat,
};
use crate::workflow::retry::RetryPolicy;
use crate::workflow::shell_lint::check_placement;
use crate::workflow::template::Template;

/// A resolved workflow plus what graph validation needs to phrase its problems.
#[derive(Debug)]
pub struct Resolved {
    /// The workflow (meaningful only when no problem was recorded).
    pub workflow: Workflow,
    /// Per step, the field its action was written in (`prompt`, `task`, `run`, `shell`).
    pub action_fields: Vec<&'static str>,
    /// Input names templates may reference: declared ones plus invocation ones.
    pub declared_inputs: BTreeSet<String>,
}

/// Workflow-wide settings every step starts from.
struct Base<'a> {
    base_dir: &'a Path,
    defaults: RawDefaults,
    cwd: PathBuf,
    retry: RetryPolicy,
    agent: AgentOptions,
    profiles: BTreeMap<String, AgentOptions>,
    /// Final input values (for lists that can be evaluated at submission).
    inputs: BTreeMap<String, String>,
}

/// Resolves `raw`; problems are appended.
pub fn resolve(
    raw: &RawDefinition,
    invocation: &BTreeMap<String, String>,
    base_dir: &Path,
    problems: &mut Vec<Problem>,
) -> Resolved {
    let (wf, steps) = match raw {
        RawDefinition::Workflow(wf) => {
            let steps = match wf.step_list() {
                Some(RawSteps::Many(steps)) => steps.clone(),
                Some(RawSteps::One(step)) => vec![(**step).clone()],
                None => Vec::new(),
            };
            (Some(&**wf), steps)
        }
        RawDefinition::Steps(steps) => (None, steps.clone()),
        RawDefinition::Step(step) => (None, vec![(**step).clone()]),
    };
    let steps = crate::workflow::studio::map(steps, problems);
    if !base_dir.is_absolute() {
        problems.push(Problem::workflow(
            "cwd",
            format!("the submission directory {base_dir:?} is not absolute"),
        ));
    }
    let (inputs, declared_inputs) = resolve_inputs(wf.map(|w| &w.inputs), invocation, problems);
    let profiles: BTreeMap<String, AgentOptions> = wf
        .map(|w| &w.agents)
        .into_iter()
        .flatten()
        .map(|(name, a)| {
            (
                name.clone(),
                agent_options(a, None, &format!("agents.{name}"), problems),
            )
        })
        .collect();
    let defaults = wf.and_then(|w| w.defaults.clone()).unwrap_or_default();
    let mut base = Base {
        base_dir,
        cwd: resolve_cwd(
            defaults.cwd.as_deref(),
            base_dir,
            None,
            "defaults.cwd",
            problems,
        ),
        retry: RetryPolicy::default(),
        agent: AgentOptions::default(),
        profiles,
        defaults,
        inputs: inputs.clone(),
    };
    if let Some(retry) = &base.defaults.retry {
        push_retry_problems(retry, None, "defaults.retry", problems);
        base.retry = base.retry.overlaid(retry);
    }
    check_positive(
        base.defaults.timeout_s,
        None,
        "defaults.timeout_s",
        problems,
    );
    check_positive(
        base.defaults.stall_timeout_s,
        None,
        "defaults.stall_timeout_s",
        problems,
    );
    check_env(&base.defaults.env, None, "defaults.env", problems);
    base.agent = match &base.defaults.agent {
        None => AgentOptions::default(),
        Some(agent) => agent_from_ref(
            agent,
            &base.profiles,
            &AgentOptions::default(),
            None,
            "defaults.agent",
            problems,
        ),
    };

    let mut action_fields = Vec::with_capacity(steps.len());
    let mut resolved_steps = Vec::with_capacity(steps.len());
    for (i, raw_step) in steps.iter().enumerate() {
        let (step, field) = resolve_step(raw_step, i, &base, problems);
        let Some(repeat) = &raw_step.repeat else {
            action_fields.push(field);
            resolved_steps.push(step);
            continue;
        };
        let group = resolve_group(step, field, repeat, problems, |raw_sub, j, problems| {
            resolve_step(raw_sub, j, &base, problems)
        });
        for (step, field) in group {
            action_fields.push(field);
            resolved_steps.push(step);
        }
    }
    check_budget(
        base.defaults.max_cost_usd,
        None,
        "defaults.max_cost_usd",
        problems,
    );
    let workflow = Workflow {
        name: wf.and_then(|w| w.name.clone()),
        inputs,
        steps: resolved_steps,
        max_cost_usd: base.defaults.max_cost_usd,
    };
    Resolved {
        workflow,
        action_fields,
        declared_inputs,
    }
}

/// Final input values, and the names templates may reference.
fn resolve_inputs(
    declared: Option<&BTreeMap<String, RawInput>>,
    invocation: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut values = BTreeMap::new();
    for (name, input) in declared.into_iter().flatten() {
        if !is_valid_id(name) {
            problems.push(Problem::workflow(
                format!("inputs.{name}"),
                "input names may contain only letters, digits, `_` and `-` (they are referenced as {inputs.NAME})",
            ));
        }
        let default = match input {
            RawInput::Default(value) => Some(value),
            RawInput::Spec(spec) => spec.default.as_ref(),
        };
        match (invocation.get(name), default) {
            (Some(value), _) | (None, Some(value)) => {
                values.insert(name.clone(), value.clone());
            }
            (None, None) => problems.push(Problem::workflow(
                format!("inputs.{name}"),
                format!("input {name:?} is required (it has no default) but was not provided"),
            )),
        }
    }
    values.extend(invocation.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (name, value) in &values {
        if value.contains('\0') {
            problems.push(Problem::workflow(format!("inputs.{name}"), NUL_MESSAGE));
        }
    }
    let names = declared
        .into_iter()
        .flat_map(|d| d.keys())
        .chain(invocation.keys())
        .cloned()
        .collect();
    (values, names)
}

fn resolve_step(
    raw: &RawStep,
    index: usize,
    base: &Base<'_>,
    problems: &mut Vec<Problem>,
) -> (Step, &'static str) {
    let id = raw
        .id
        .clone()
        .unwrap_or_else(|| format!("step-{}", index + 1));
    let at = Some(id.as_str());
    if let Some(kind) = raw.kind.as_deref().filter(|k| *k != "task") {
        problems.push(Problem::step(
            &id,
            "type",
            format!("Claude Studio step type {kind:?} is not supported; baton runs task, conditional, loop, parallel and human steps"),
        ));
    }
    let (action, field) = resolve_action(raw, &id, problems);
    let mut deps: Vec<String> = raw.dep_list().map(|d| d.to_vec()).unwrap_or_default();
    let mut seen = BTreeSet::new();
    deps.retain(|d| seen.insert(d.clone()));

    let cwd = match &raw.cwd {
        Some(cwd) => resolve_cwd(Some(cwd), base.base_dir, at, "cwd", problems),
        None => base.cwd.clone(),
    };
    let mut action = action;
    if let Action::Workflow(sub) = &mut action {
        check_sub_workflow(sub, &cwd, &id, problems);
    }
    check_env(&raw.env, at, "env", problems);
    let mut env = base.defaults.env.clone();
    env.extend(raw.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    check_positive(raw.timeout_s, at, "timeout_s", problems);
    check_positive(raw.stall_timeout_s, at, "stall_timeout_s", problems);

    let mut retry = base.retry.clone();
    if let Some(overrides) = &raw.retry {
        push_retry_problems(overrides, at, "retry", problems);
        retry = retry.overlaid(overrides);
    }

    let agent = if matches!(action, Action::Prompt(_)) {
        let mut options = base.agent.clone();
        match &raw.agent {
            Some(profile @ RawAgentRef::Profile(_)) => {
                options = agent_from_ref(profile, &base.profiles, &options, at, "agent", problems);
            }
            _ => {
                // Studio: a role/agentId names a profile when one exists, and is fine otherwise.
                if let Some(profile) = raw
                    .agent_id
                    .as_ref()
                    .or(raw.role.as_ref())
                    .and_then(|r| base.profiles.get(r))
                {
                    options = options.merged(profile);
                }
            }
        }
        if let Some(inline @ RawAgentRef::Inline(_)) = &raw.agent {
            options = agent_from_ref(inline, &base.profiles, &options, at, "agent", problems);
        }
        options
    } else {
        if raw.agent.is_some() {
            problems.push(Problem::step(
                &id,
                "agent",
                format!("agent options apply only to prompt steps; this is a {field} step"),
            ));
        }
        AgentOptions::default()
    };

    let output_schema = resolve_output_schema(raw, &action, &id, problems);
    check_budget(raw.max_cost_usd, at, "max_cost_usd", problems);
    if raw.max_cost_usd.is_some() && !matches!(action, Action::Prompt(_)) {
        problems.push(Problem::step(
            &id,
            "max_cost_usd",
            format!("a cost limit applies to agent (prompt) steps; this is a {field} step"),
        ));
    }
    let step = Step {
        deps,
        action,
        cwd,
        env,
        timeout_s: raw.timeout_s.or(base.defaults.timeout_s),
        stall_timeout_s: raw
            .stall_timeout_s
            .or(base.defaults.stall_timeout_s)
            .unwrap_or(DEFAULT_STALL_TIMEOUT_S),
        on_stall: raw
            .on_stall
            .or(base.defaults.on_stall)
            .unwrap_or(OnStall::Report),
        retry,
        agent,
        role: raw.agent_id.clone().or_else(|| raw.role.clone()),
        success: resolve_success(raw.success.as_ref(), &id, problems),
        when: raw.when.as_deref().and_then(|src| match Expr::parse(src) {
            Ok(e) => Some(e),
            Err(e) => {
                problems.push(Problem::step(&id, "when", e));
                None
            }
        }),
        continue_on_error: raw.continue_on_error.unwrap_or(false),
        for_each: resolve_for_each(raw, &id, &base.inputs, problems),
        output_json: raw.output == Some(crate::workflow::raw::RawOutput::Json)
            || raw.output_schema.is_some(),
        output_schema,
        max_cost_usd: raw.max_cost_usd,
        group: None,
        id,
    };
    (step, field)
}

/// The step's action and the field it was written in. Exactly one of prompt/task/run/shell.
fn resolve_action(raw: &RawStep, id: &str, problems: &mut Vec<Problem>) -> (Action, &'static str) {
    match &raw.mapped {
        Some(Mapped::Join) => return (Action::Join, "parallelSteps"),
        Some(Mapped::Condition(cel)) => {
            return match Expr::parse(cel) {
                Ok(e) => (Action::Condition(e), "condition"),
                Err(e) => {
                    problems.push(Problem::step(id, "condition", e));
                    (Action::Join, "condition")
                }
            };
        }
        None => {}
    }
    let given: Vec<&'static str> = [
        ("prompt", raw.prompt.is_some()),
        ("task", raw.task.is_some()),
        ("run", raw.run.is_some()),
        ("shell", raw.shell.is_some()),
        ("human", raw.human.is_some()),
        ("repeat", raw.repeat.is_some()),
        ("workflow", raw.workflow.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    let placeholder = (Action::Prompt(Template::default()), "prompt");
    let field = match given.as_slice() {
        [field] => *field,
        [] => {
            // A wrongly typed action field was already reported by the decoder.
            let already = problems.iter().any(|p| {
                p.step.as_deref() == Some(id)
                    && [
                        "prompt", "task", "run", "shell", "human", "repeat", "workflow",
                    ]
                    .contains(&p.field.as_str())
            });
            if !already {
                problems.push(Problem::step(
                    id,
                    "prompt",
                    "a step needs one of prompt (or task), run, shell, human, repeat or workflow",
                ));
            }
            return placeholder;
        }
        [first, rest @ ..] => {
            let others = rest
                .iter()
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            problems.push(Problem::step(
                id,
                rest[0],
                format!("a step has exactly one of prompt (or task), run, shell, human, repeat or workflow; this one has {first:?} and {others}"),
            ));
            return placeholder;
        }
    };
    if field == "human" {
        let human = crate::workflow::human::resolve(
            raw.human.as_ref().unwrap_or(&Default::default()),
            id,
            problems,
        );
        if raw.for_each.is_some() {
            problems.push(Problem::step(
                id,
                "for_each",
                "a human step cannot fan out; ask once, or put the question before the for_each step",
            ));
        }
        return (Action::Human(human), field);
    }
    let parse = |field: String, src: &str, problems: &mut Vec<Problem>| match Template::parse(src) {
        // No argv element, script or prompt can carry a NUL byte to the process.
        _ if src.contains('\0') => {
            problems.push(Problem::step(id, field, NUL_MESSAGE));
            Template::default()
        }
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::step(id, field, e));
            Template::default()
        }
    };
    if let (Some(repeat), "repeat") = (&raw.repeat, field) {
        return (
            Action::Repeat(resolve_repeat(repeat, id, problems)),
            "repeat",
        );
    }
    if let (Some(sub), "workflow") = (&raw.workflow, field) {
        let inputs = sub
            .inputs
            .iter()
            .map(|(name, src)| {
                (
                    name.clone(),
                    parse(format!("workflow.inputs.{name}"), src, problems),
                )
            })
            .collect();
        return (
            Action::Workflow(SubWorkflow {
                file: sub.file.as_ref().map(PathBuf::from),
                definition: sub.definition.clone(),
                inputs,
            }),
            "workflow",
        );
    }
    let action = match (field, &raw.prompt, &raw.task, &raw.run, &raw.shell) {
        ("run", _, _, Some(argv), _) => {
            if argv.is_empty() {
                problems.push(Problem::step(
                    id,
                    "run",
                    "is empty; give the program and its arguments",
                ));
            } else if argv[0].trim().is_empty() {
                problems.push(Problem::step(id, "run[0]", "the program name is empty"));
            }
            Action::Run(
                argv.iter()
                    .enumerate()
                    .map(|(i, a)| parse(format!("run[{i}]"), a, problems))
                    .collect(),
            )
        }
        ("shell", _, _, _, Some(script)) => {
            let template = parse("shell".into(), script, problems);
            if script.trim().is_empty() {
                problems.push(Problem::step(id, "shell", "the script is empty"));
            } else if let Err(e) = check_placement(&template) {
                problems.push(Problem::step(id, "shell", e));
            }
            Action::Shell(template)
        }
        (_, prompt, task, _, _) => {
            let text = prompt.as_deref().or(task.as_deref()).unwrap_or_default();
            if text.trim().is_empty() {
                problems.push(Problem::step(id, field, "the prompt is empty"));
            }
            Action::Prompt(parse(field.into(), text, problems))
        }
    };
    (action, field)
}

fn resolve_success(
    raw: Option<&RawSuccess>,
    id: &str,
    problems: &mut Vec<Problem>,
) -> SuccessCheck {
    let Some(raw) = raw else {
        return SuccessCheck::default();
    };
    if let Some(pattern) = &raw.regex
        && let Err(e) = regex::Regex::new(pattern)
    {
        problems.push(Problem::step(
            id,
            "success.regex",
            format!("invalid regex: {e}"),
        ));
    }
    SuccessCheck {
        contains: raw
            .contains
            .as_ref()
            .map(|c| c.to_vec())
            .unwrap_or_default(),
        not_contains: raw
            .not_contains
            .as_ref()
            .map(|c| c.to_vec())
            .unwrap_or_default(),
        regex: raw.regex.clone(),
        exit_codes: raw.exit_codes.clone().unwrap_or_default(),
    }
}

/// Agent options selected by `agent` (a profile name or inline options) on top of `base`.
fn agent_from_ref(
    agent: &RawAgentRef,
    profiles: &BTreeMap<String, AgentOptions>,
    base: &AgentOptions,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> AgentOptions {
    match agent {
        RawAgentRef::Inline(inline) => base.merged(&agent_options(inline, step, field, problems)),
        RawAgentRef::Profile(name) => match profiles.get(name) {
            Some(profile) => base.merged(profile),
            None => {
                let hint = did_you_mean(name, profiles.keys().map(String::as_str));
                let known = if profiles.is_empty() {
                    "no profiles are defined under \"agents\"".to_owned()
                } else {
                    format!(
                        "defined: {}",
                        profiles
                            .keys()
                            .map(|k| format!("{k:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                problems.push(Problem::at(
                    step,
                    field,
                    format!("unknown agent profile {name:?}{hint}; {known}"),
                ));
                base.clone()
            }
        },
    }
}

fn agent_options(
    raw: &RawAgent,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> AgentOptions {
    if raw.max_turns == Some(0) {
        problems.push(Problem::at(
            step,
            format!("{field}.max_turns"),
            "must be at least 1",
        ));
    }
    AgentOptions {
        model: raw.model.clone(),
        permission_mode: raw.permission_mode.clone(),
        allowed_tools: raw.allowed_tools.clone().unwrap_or_default(),
        disallowed_tools: raw.disallowed_tools.clone().unwrap_or_default(),
        max_turns: raw.max_turns,
        append_system_prompt: raw.append_system_prompt.clone(),
        system_prompt: raw.system_prompt.clone(),
    }
}
