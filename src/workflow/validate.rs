//! Graph-wide validation: step ids, deps, cycles, template and expression references.
//!
//! Invariant: a workflow that passes has at least one step, unique well-formed ids, deps
//! that name other existing steps, no cycle, and templates that only read steps upstream of
//! their own step (so a value is always available when the step starts) and declared
//! inputs. Every violation is reported, not just the first, each naming step and field.

use std::collections::{BTreeMap, BTreeSet};

use crate::workflow::dag::{Upstream, cycles};
use crate::workflow::definition::{Action, Step};
use crate::workflow::expr::Expr;
use crate::workflow::problem::{Problem, did_you_mean, is_valid_id};
use crate::workflow::template::{Reference, Template};

/// The longest step id: ids travel in every child's environment (`BATON_STEP_ID`) and in
/// every message, and a 1,000,000-character id failed at spawn ("Argument list too long").
pub const MAX_ID_LEN: usize = 128;

/// Step ids that would make template references ambiguous.
const RESERVED_IDS: &[&str] = &["inputs", "item", "index"];

/// Checks the graph of `steps`; `action_fields[i]` is the field step `i`'s action was
/// written in. Problems are appended.
pub fn validate(
    steps: &[Step],
    action_fields: &[&'static str],
    declared_inputs: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) {
    if steps.is_empty() {
        problems.push(Problem::workflow(
            "steps",
            "the workflow has no steps; add at least one with prompt, run or shell",
        ));
        return;
    }
    check_ids(steps, problems);
    let ids: BTreeSet<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    for step in steps {
        for dep in &step.deps {
            if *dep == step.id {
                problems.push(Problem::step(
                    &step.id,
                    "deps",
                    "a step cannot depend on itself",
                ));
            } else if !ids.contains(dep.as_str()) {
                let hint = did_you_mean(dep, ids.iter().copied().filter(|id| *id != step.id));
                problems.push(Problem::step(
                    &step.id,
                    "deps",
                    format!("unknown step {dep:?}{hint}"),
                ));
            }
        }
    }
    for cycle in cycles(steps) {
        let path: Vec<&str> = cycle.iter().map(|&i| steps[i].id.as_str()).collect();
        problems.push(Problem::step(
            path[0],
            "deps",
            format!(
                "dependency cycle: {} (each step depends on the next); remove one of these deps",
                path.join(" -> ")
            ),
        ));
    }
    check_groups(steps, declared_inputs, problems);
    let mut first_index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        first_index.entry(step.id.as_str()).or_insert(i);
    }
    let mut upstream = Upstream::new(steps);
    for (i, step) in steps.iter().enumerate() {
        let field = action_fields.get(i).copied().unwrap_or("prompt");
        let mut is_upstream = |target: &str| {
            first_index
                .get(target)
                .is_some_and(|&t| upstream.contains(i, t))
        };
        check_references(
            step,
            &mut is_upstream,
            &ids,
            field,
            declared_inputs,
            problems,
        );
        if let Some(when) = &step.when {
            check_expression(
                step,
                when,
                "when",
                &mut is_upstream,
                &ids,
                declared_inputs,
                problems,
            );
        }
        if let Action::Condition(condition) = &step.action {
            check_expression(
                step,
                condition,
                "condition",
                &mut is_upstream,
                &ids,
                declared_inputs,
                problems,
            );
        }
        if let Some(fan) = &step.for_each {
            check_expression(
                step,
                &fan.items,
                "for_each",
                &mut is_upstream,
                &ids,
                declared_inputs,
                problems,
            );
        } else if let Some(reference) = templates(step, field)
            .iter()
            .flat_map(|(_, t)| t.references())
            .find(|r| r.reads_item())
        {
            problems.push(Problem::step(
                &step.id,
                field,
                format!(
                    "{reference} reads a for_each item, but this step has no for_each; add \"for_each\": \"<a CEL list>\""
                ),
            ));
        }
    }
}

/// An expression may read only declared inputs and upstream steps, like a template.
fn check_expression(
    step: &Step,
    expr: &Expr,
    field: &str,
    is_upstream: &mut dyn FnMut(&str) -> bool,
    ids: &BTreeSet<&str>,
    declared_inputs: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) {
    for name in expr.inputs() {
        if !declared_inputs.contains(name) {
            let hint = did_you_mean(name, declared_inputs.iter().map(String::as_str));
            problems.push(Problem::step(
                &step.id,
                field,
                format!(
                    "inputs.{name}: unknown input {name:?}{hint}; declare it under \"inputs\" or pass it when invoking"
                ),
            ));
        }
    }
    for target in expr.steps() {
        let message = if *target == step.id {
            format!(
                "steps.{target} refers to this step itself; a condition cannot read its own result"
            )
        } else if !ids.contains(target.as_str()) {
            let hint = did_you_mean(target, ids.iter().copied());
            format!("steps.{target} refers to unknown step {target:?}{hint}")
        } else if !is_upstream(target) {
            format!(
                "steps.{target} refers to step {target:?}, which is not upstream of this step; \
                 add {target:?} to deps"
            )
        } else {
            continue;
        };
        problems.push(Problem::step(&step.id, field, message));
    }
}

fn check_ids(steps: &[Step], problems: &mut Vec<Problem>) {
    let mut first_use: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        let id = step.id.as_str();
        if id.len() > MAX_ID_LEN {
            let shown: String = id.chars().take(32).collect();
            problems.push(Problem::step(
                format!("{shown}…"),
                "id",
                format!(
                    "the id is {} characters long; at most {MAX_ID_LEN} are allowed",
                    id.len()
                ),
            ));
            continue;
        }
        if id.contains('\0') {
            problems.push(Problem::step(id, "id", "contains a NUL byte"));
        } else if !is_valid_id(id) {
            problems.push(Problem::step(
                id,
                "id",
                "a step id may contain only letters, digits, `_` and `-`",
            ));
        } else if RESERVED_IDS.contains(&id) {
            problems.push(Problem::step(
                id,
                "id",
                format!(
                    "{id:?} is reserved ({{inputs.NAME}} reads inputs, {{item}} and {{index}} a for_each item)"
                ),
            ));
        }
        match first_use.get(id) {
            Some(first) => problems.push(Problem::step(
                id,
                "id",
                format!(
                    "duplicate step id {id:?} (steps {} and {} both use it)",
                    first + 1,
                    i + 1
                ),
            )),
            None => {
                first_use.insert(id, i);
            }
        }
    }
}

/// `repeat` groups: their steps are reached only through the group from outside, only
/// siblings are read as `{previous.ID.output}`, and `until` reads the group's steps, its
/// ancestors and declared inputs.
fn check_groups(steps: &[Step], declared_inputs: &BTreeSet<String>, problems: &mut Vec<Problem>) {
    let group_of: BTreeMap<&str, &str> = steps
        .iter()
        .filter_map(|s| Some((s.id.as_str(), s.group.as_deref()?)))
        .collect();
    let outside = |step: &Step, target: &str| -> Option<String> {
        let g = group_of.get(target)?;
        (step.group.as_deref() != Some(*g)).then(|| {
            format!("{target:?} is a step of repeat group {g:?}; depend on {g:?} and read {{{g}.output}} instead")
        })
    };
    for step in steps {
        for d in &step.deps {
            if let Some(message) = outside(step, d) {
                problems.push(Problem::step(&step.id, "deps", message));
            }
            if step.group.as_deref() == Some(d.as_str()) {
                problems.push(Problem::step(
                    &step.id,
                    "deps",
                    format!("a step of repeat group {d:?} runs inside it and cannot depend on it"),
                ));
            }
        }
        let fields = templates(step, step.action.kind());
        for (field, template) in &fields {
            for reference in template.references() {
                let message = match reference {
                    Reference::Previous(target) => match step.group.as_deref() {
                        Some(g) if group_of.get(target.as_str()) == Some(&g) => continue,
                        Some(g) => format!(
                            "{reference}: {target:?} is not a step of repeat group {g:?}; previous reads this group's steps"
                        ),
                        None => format!(
                            "{reference} reads the previous iteration, but this step is not inside a repeat group"
                        ),
                    },
                    other => match other.step().and_then(|t| outside(step, t)) {
                        Some(message) => format!("{reference}: {message}"),
                        None => continue,
                    },
                };
                problems.push(Problem::step(&step.id, field.clone(), message));
            }
        }
        let Action::Repeat(repeat) = &step.action else {
            continue;
        };
        let Some(until) = &repeat.until else {
            continue;
        };
        let position = steps.iter().position(|s| s.id == step.id).unwrap_or(0);
        let ancestors = crate::workflow::dag::ancestors(steps, position);
        for target in until.steps() {
            let ok = repeat.steps.contains(target) || ancestors.contains(target);
            if !ok {
                problems.push(Problem::step(
                    &step.id,
                    "repeat.until",
                    format!(
                        "steps.{target}: until reads the group's own steps ({}) and the group's ancestors",
                        repeat.steps.join(", ")
                    ),
                ));
            }
        }
        for name in until.inputs() {
            if !declared_inputs.contains(name) {
                problems.push(Problem::step(
                    &step.id,
                    "repeat.until",
                    format!("inputs.{name}: unknown input {name:?}; declare it under \"inputs\""),
                ));
            }
        }
    }
}

/// The step's templates with the field name each was written in.
fn templates<'a>(step: &'a Step, action_field: &str) -> Vec<(String, &'a Template)> {
    match &step.action {
        Action::Repeat(_) | Action::Condition(_) | Action::Join => Vec::new(),
        Action::Workflow(w) => w
            .inputs
            .iter()
            .map(|(name, t)| (format!("workflow.inputs.{name}"), t))
            .collect(),
        Action::Prompt(t) | Action::Shell(t) => vec![(action_field.to_owned(), t)],
        Action::Human(h) => vec![("human.prompt".to_owned(), &h.prompt)],
        Action::Run(argv) => argv
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("run[{i}]"), t))
            .collect(),
    }
}

fn check_references(
    step: &Step,
    is_upstream: &mut dyn FnMut(&str) -> bool,
    ids: &BTreeSet<&str>,
    action_field: &'static str,
    declared_inputs: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) {
    let mut reported = BTreeSet::new();
    for (field, template) in templates(step, action_field) {
        for reference in template.references() {
            let message = match reference {
                Reference::Input(name) if !declared_inputs.contains(name) => {
                    let hint = did_you_mean(name, declared_inputs.iter().map(String::as_str));
                    format!(
                        "{reference}: unknown input {name:?}{hint}; declare it under \"inputs\" or pass it when invoking"
                    )
                }
                Reference::Input(_) => continue,
                _ => {
                    let Some(target) = reference.step() else {
                        continue;
                    };
                    if target == step.id {
                        format!(
                            "{reference} refers to this step itself; a step cannot read its own result"
                        )
                    } else if !ids.contains(target) {
                        let hint = did_you_mean(target, ids.iter().copied());
                        format!("{reference} refers to unknown step {target:?}{hint}")
                    } else if !is_upstream(target) {
                        format!(
                            "{reference} refers to step {target:?}, which is not upstream of this step; \
                             add {target:?} to deps"
                        )
                    } else {
                        continue;
                    }
                }
            };
            if reported.insert((field.clone(), message.clone())) {
                problems.push(Problem::step(&step.id, field.clone(), message));
            }
        }
    }
}
