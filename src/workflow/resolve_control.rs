//! Resolution of the control-flow constructs: `repeat` groups (their `until`,
//! `max_iterations` and the steps listed under them), `for_each` fan-out and sub-workflows.
//! The rest of a step is resolved in `resolve.rs`.
//!
//! Invariant: a group is listed before its steps and every one of its steps carries the
//! group's outer deps, so an iteration starts with everything its steps read from outside
//! already settled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::workflow::definition::{Action, ForEach, Repeat, Step, SubWorkflow};
use crate::workflow::expr::{Expr, Scope};
use crate::workflow::problem::Problem;
use crate::workflow::raw::{RawRepeat, RawStep};
use crate::workflow::resolve_checks::normalise;

/// A resolved `repeat` group and its steps, in the order they are listed: the group first.
///
/// `resolve_step` resolves one of the group's raw steps (with its index in the group).
pub fn resolve_group(
    mut step: Step,
    field: &'static str,
    repeat: &RawRepeat,
    problems: &mut Vec<Problem>,
    resolve_step: impl Fn(&RawStep, usize, &mut Vec<Problem>) -> (Step, &'static str),
) -> Vec<(Step, &'static str)> {
    // A group is listed before its steps; it waits for what any of them needs from
    // outside, so its steps find their outer deps settled when an iteration starts.
    let subs: Vec<(Step, &'static str)> = repeat
        .steps
        .iter()
        .enumerate()
        .map(|(j, raw_sub)| {
            if raw_sub.repeat.is_some() || raw_sub.for_each.is_some() {
                let what = if raw_sub.repeat.is_some() {
                    "repeat"
                } else {
                    "for_each"
                };
                problems.push(Problem::step(
                    raw_sub.id.as_deref().unwrap_or("step"),
                    what,
                    format!(
                        "a step inside repeat group {:?} cannot have {what} itself",
                        step.id
                    ),
                ));
            }
            let (mut sub, field) = resolve_step(raw_sub, j, problems);
            sub.group = Some(step.id.clone());
            (sub, field)
        })
        .collect();
    let ids: BTreeSet<&str> = subs.iter().map(|(s, _)| s.id.as_str()).collect();
    for (sub, _) in &subs {
        for d in &sub.deps {
            if !ids.contains(d.as_str()) && *d != step.id && !step.deps.contains(d) {
                step.deps.push(d.clone());
            }
        }
    }
    // Its steps read what the group depends on (and its ancestors) as their own deps.
    let mut subs = subs;
    for (sub, _) in &mut subs {
        for d in &step.deps {
            if !sub.deps.contains(d) {
                sub.deps.push(d.clone());
            }
        }
    }
    if let Action::Repeat(r) = &mut step.action {
        r.steps = subs.iter().map(|(s, _)| s.id.clone()).collect();
    }
    let mut group = Vec::with_capacity(subs.len() + 1);
    group.push((step, field));
    group.extend(subs);
    group
}

/// A sub-workflow names exactly one child, a file (made absolute against the step's `cwd`)
/// or an inline definition, which must compile on its own (its inputs given).
pub fn check_sub_workflow(
    sub: &mut SubWorkflow,
    cwd: &Path,
    id: &str,
    problems: &mut Vec<Problem>,
) {
    match (&sub.file, &sub.definition) {
        (Some(_), Some(_)) => problems.push(Problem::step(
            id,
            "workflow",
            "give either workflow.file or workflow.definition, not both",
        )),
        (None, None) => problems.push(Problem::step(
            id,
            "workflow",
            "needs workflow.file (a workflow file) or workflow.definition (an inline workflow)",
        )),
        (Some(file), None) => {
            if file.as_os_str().is_empty() {
                problems.push(Problem::step(id, "workflow.file", "is empty"));
            }
            sub.file = Some(normalise(&cwd.join(file.as_path())));
        }
        (None, Some(definition)) => {
            let inputs = sub
                .inputs
                .keys()
                .map(|k| (k.clone(), String::new()))
                .collect();
            if let Err(child) = crate::workflow::compile(definition, &inputs, cwd) {
                for p in child.iter() {
                    let at = p
                        .step
                        .as_deref()
                        .map(|s| format!(" (step {s:?})"))
                        .unwrap_or_default();
                    problems.push(Problem::step(
                        id,
                        "workflow.definition",
                        format!("{}{at}: {}", p.field, p.message),
                    ));
                }
            }
        }
    }
}

/// The most iterations a `repeat` group may run.
pub const MAX_ITERATIONS: u32 = 10_000;

/// A group's `until` and `max_iterations` (its step ids are filled in by the caller).
pub fn resolve_repeat(raw: &RawRepeat, id: &str, problems: &mut Vec<Problem>) -> Repeat {
    if raw.steps.is_empty() {
        problems.push(Problem::step(
            id,
            "repeat.steps",
            "a repeat group needs at least one step",
        ));
    }
    let max_iterations = match raw.max_iterations {
        None => {
            problems.push(Problem::step(
                id,
                "repeat.max_iterations",
                "a repeat group needs max_iterations (at least 1), so a loop always ends",
            ));
            1
        }
        Some(n) if !(1..=MAX_ITERATIONS).contains(&n) => {
            problems.push(Problem::step(
                id,
                "repeat.max_iterations",
                format!("must be between 1 and {MAX_ITERATIONS}, got {n}"),
            ));
            1
        }
        Some(n) => n,
    };
    let until = raw.until.as_deref().and_then(|src| match Expr::parse(src) {
        Ok(e) => Some(e),
        Err(e) => {
            problems.push(Problem::step(id, "repeat.until", e));
            None
        }
    });
    Repeat {
        steps: Vec::new(),
        until,
        max_iterations,
    }
}

/// The most items a `for_each` may expand to.
pub const MAX_ITEMS: usize = 10_000;

/// `for_each` and `max_parallel`. A list that reads no step is evaluated now, so a list
/// that is not one (or too long) is refused at submission rather than at run time.
pub fn resolve_for_each(
    raw: &RawStep,
    id: &str,
    inputs: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Option<ForEach> {
    if raw.for_each.is_none() {
        if raw.max_parallel.is_some() {
            problems.push(Problem::step(
                id,
                "max_parallel",
                "max_parallel limits the instances of a for_each step; this step has no for_each",
            ));
        }
        return None;
    }
    let src = raw.for_each.as_deref()?;
    if raw.max_parallel == Some(0) {
        problems.push(Problem::step(
            id,
            "max_parallel",
            "must be at least 1 (leave it out for no limit of its own)",
        ));
    }
    let items = match Expr::parse(src) {
        Ok(e) => e,
        Err(e) => {
            problems.push(Problem::step(id, "for_each", e));
            return None;
        }
    };
    if items.steps().is_empty() && items.inputs().iter().all(|n| inputs.contains_key(n)) {
        let scope = Scope {
            inputs,
            steps: serde_json::Map::new(),
            failed: false,
            iteration: None,
        };
        match items.items(&scope) {
            Ok(list) if list.len() > MAX_ITEMS => problems.push(Problem::step(
                id,
                "for_each",
                format!(
                    "the list has {} items; at most {MAX_ITEMS} are allowed",
                    list.len()
                ),
            )),
            Ok(_) => {}
            Err(e) => problems.push(Problem::step(id, "for_each", e)),
        }
    }
    Some(ForEach {
        items,
        max_parallel: raw.max_parallel,
    })
}
