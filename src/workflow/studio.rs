//! Claude Studio's control-flow step types, mapped onto baton's own constructs before
//! resolution, so Studio definitions run unchanged:
//! - `conditional` (`condition`, `trueBranch`, `falseBranch`) becomes a step that evaluates
//!   the condition (as CEL) to `true`/`false`; the branch steps depend on it and carry a
//!   `when` on its output;
//! - `loop` (`items`, `loopVar`, `maxIterations`, `loopSteps`) makes each body step a
//!   `for_each` over the items, one at a time as in Studio (`{file}` with `loopVar: "file"`
//!   is `{item}`), and the loop step a join of its body;
//! - `parallel` (`parallelSteps`) gives the parallel steps the step's deps and makes the
//!   step a join of them.
//!
//! Invariant: the mapping is a pure rewrite of raw steps; every field a Studio type does
//! not use is reported when given on a step of another type.

use serde_json::Value;

use crate::workflow::problem::Problem;
use crate::workflow::raw::{Mapped, RawStep, StringOrList};

/// The Studio types mapped here (`human` is a human step, resolved on its own).
const MAPPED_TYPES: &[&str] = &["conditional", "loop", "parallel"];

/// Rewrites Studio `conditional`, `loop` and `parallel` steps in place.
pub fn map(mut steps: Vec<RawStep>, problems: &mut Vec<Problem>) -> Vec<RawStep> {
    let id_of = |s: &RawStep, i: usize| s.id.clone().unwrap_or_else(|| format!("step-{}", i + 1));
    let ids: Vec<String> = steps.iter().enumerate().map(|(i, s)| id_of(s, i)).collect();
    let position = |id: &str| ids.iter().position(|x| x == id);
    for i in 0..steps.len() {
        let kind = steps[i].kind.clone().unwrap_or_default();
        report_foreign_fields(&steps[i], &ids[i], &kind, problems);
        if !MAPPED_TYPES.contains(&kind.as_str()) {
            continue;
        }
        let id = ids[i].clone();
        let own_deps: Vec<String> = steps[i]
            .dep_list()
            .map(StringOrList::to_vec)
            .unwrap_or_default();
        match kind.as_str() {
            "conditional" => {
                let cel = match steps[i].condition.as_ref().map(condition_to_cel) {
                    Some(Ok(cel)) => cel,
                    Some(Err(e)) => {
                        problems.push(Problem::step(&id, "condition", e));
                        "false".to_owned()
                    }
                    None => {
                        problems.push(Problem::step(
                            &id,
                            "condition",
                            "a conditional step needs a condition",
                        ));
                        "false".to_owned()
                    }
                };
                let branches = [
                    (steps[i].true_branch.clone(), "trueBranch", "true"),
                    (steps[i].false_branch.clone(), "falseBranch", "false"),
                ];
                if branches.iter().all(|(b, _, _)| b.is_none()) {
                    problems.push(Problem::step(
                        &id,
                        "trueBranch",
                        "a conditional step needs a trueBranch or a falseBranch",
                    ));
                }
                for (branch, field, value) in branches {
                    let Some(branch) = branch else { continue };
                    let Some(b) = position(&branch) else {
                        problems.push(Problem::step(
                            &id,
                            field,
                            format!("unknown step {branch:?}"),
                        ));
                        continue;
                    };
                    let guard = format!("steps[{}].output == '{value}'", cel_string(&id));
                    let target = &mut steps[b];
                    target.when = Some(match target.when.take() {
                        Some(w) => format!("({w}) && {guard}"),
                        None => guard,
                    });
                    add_deps(target, std::slice::from_ref(&id));
                }
                make_mapped(&mut steps[i], Mapped::Condition(cel), own_deps);
            }
            "loop" => {
                let items = steps[i].items.clone().unwrap_or_default();
                if items.is_empty() {
                    problems.push(Problem::step(
                        &id,
                        "items",
                        "a loop step needs items (an array of strings)",
                    ));
                }
                let max = steps[i].max_iterations.map_or(items.len(), |m| m as usize);
                let items: Vec<String> = items.into_iter().take(max).collect();
                let list = serde_json::to_string(&items).unwrap_or_else(|_| "[]".to_owned());
                let var = steps[i]
                    .loop_var
                    .clone()
                    .unwrap_or_else(|| "item".to_owned());
                let body = steps[i].loop_steps.clone().unwrap_or_default();
                for b in &body {
                    let Some(j) = position(b) else {
                        problems.push(Problem::step(
                            &id,
                            "loopSteps",
                            format!("unknown step {b:?}"),
                        ));
                        continue;
                    };
                    let target = &mut steps[j];
                    target.for_each = Some(list.clone());
                    target.max_parallel = Some(1);
                    let placeholder = format!("{{{var}}}");
                    for text in [&mut target.task, &mut target.prompt].into_iter().flatten() {
                        *text = text.replace(&placeholder, "{item}");
                    }
                    remove_dep(target, &id);
                    add_deps(target, &own_deps);
                }
                let mut deps = own_deps;
                deps.extend(body.iter().filter(|b| position(b).is_some()).cloned());
                make_mapped(&mut steps[i], Mapped::Join, deps);
            }
            _ => {
                let parallel = steps[i].parallel_steps.clone().unwrap_or_default();
                if parallel.is_empty() {
                    problems.push(Problem::step(
                        &id,
                        "parallelSteps",
                        "a parallel step needs parallelSteps (an array of step ids)",
                    ));
                }
                for p in &parallel {
                    let Some(j) = position(p) else {
                        problems.push(Problem::step(
                            &id,
                            "parallelSteps",
                            format!("unknown step {p:?}"),
                        ));
                        continue;
                    };
                    remove_dep(&mut steps[j], &id);
                    add_deps(&mut steps[j], &own_deps);
                }
                let mut deps = own_deps;
                deps.extend(parallel.iter().filter(|p| position(p).is_some()).cloned());
                make_mapped(&mut steps[i], Mapped::Join, deps);
            }
        }
    }
    steps
}

/// A field of a Studio type given on a step of another type is a mistake worth naming.
fn report_foreign_fields(step: &RawStep, id: &str, kind: &str, problems: &mut Vec<Problem>) {
    let fields: [(&str, bool, &str); 8] = [
        ("condition", step.condition.is_some(), "conditional"),
        ("trueBranch", step.true_branch.is_some(), "conditional"),
        ("falseBranch", step.false_branch.is_some(), "conditional"),
        ("items", step.items.is_some(), "loop"),
        ("loopVar", step.loop_var.is_some(), "loop"),
        ("maxIterations", step.max_iterations.is_some(), "loop"),
        ("loopSteps", step.loop_steps.is_some(), "loop"),
        ("parallelSteps", step.parallel_steps.is_some(), "parallel"),
    ];
    for (field, given, owner) in fields {
        if given && kind != owner {
            problems.push(Problem::step(
                id,
                field,
                format!("{field} belongs to Claude Studio steps of type {owner:?}; this step's type is {:?}", if kind.is_empty() { "task" } else { kind }),
            ));
        }
    }
}

/// Turns step `s` into a step without a process of its own.
fn make_mapped(s: &mut RawStep, mapped: Mapped, deps: Vec<String>) {
    s.mapped = Some(mapped);
    s.kind = None;
    // Studio requires a task on every step; on these it only describes the step.
    s.task = None;
    s.deps = Some(StringOrList::Many(dedup(deps)));
    s.depends_on = None;
    s.depends_on_camel = None;
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|d| seen.insert(d.clone()));
    v
}

fn add_deps(s: &mut RawStep, more: &[String]) {
    let mut deps = s.dep_list().map(StringOrList::to_vec).unwrap_or_default();
    deps.extend(more.iter().cloned());
    s.deps = Some(StringOrList::Many(dedup(deps)));
    s.depends_on = None;
    s.depends_on_camel = None;
}

fn remove_dep(s: &mut RawStep, dep: &str) {
    if let Some(deps) = s.dep_list().map(StringOrList::to_vec) {
        s.deps = Some(StringOrList::Many(
            deps.into_iter().filter(|d| d != dep).collect(),
        ));
        s.depends_on = None;
        s.depends_on_camel = None;
    }
}

/// A CEL string literal holding `s` (JSON's escapes are CEL's).
fn cel_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A Studio condition as CEL: a legacy expression string (or `{expression}` object), or a
/// v2 structured condition.
fn condition_to_cel(condition: &Value) -> Result<String, String> {
    match condition {
        Value::String(expr) => Ok(legacy_to_cel(expr)),
        Value::Object(o) if o.get("version").and_then(Value::as_str) == Some("2.0") => {
            let root = o
                .get("rootGroup")
                .ok_or("a version 2.0 condition needs a rootGroup")?;
            group_to_cel(root)
        }
        Value::Object(o) => match o.get("expression") {
            Some(Value::String(expr)) => Ok(legacy_to_cel(expr)),
            _ => Err(
                "expected an expression string, {\"expression\": …} or a version 2.0 condition"
                    .to_owned(),
            ),
        },
        _ => Err(
            "expected an expression string, {\"expression\": …} or a version 2.0 condition"
                .to_owned(),
        ),
    }
}

/// `{a.output} === "x" && {b.status} != "failed"` → `steps["a"].output == "x" && …`.
/// Studio's legacy expressions allow only comparisons, `!`, `&&`, `||`, parentheses, double
/// quoted strings, numbers and booleans, which read the same in CEL.
fn legacy_to_cel(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        match inner.rsplit_once('.') {
            Some((step, field @ ("output" | "status" | "response"))) => {
                let field = if field == "response" { "output" } else { field };
                out.push_str(&format!("steps[{}].{field}", cel_string(step)));
            }
            _ => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out.replace("===", "==").replace("!==", "!=")
}

fn group_to_cel(group: &Value) -> Result<String, String> {
    let combinator = match group.get("combinator").and_then(Value::as_str) {
        Some("OR") => " || ",
        Some("AND") | None => " && ",
        Some(other) => return Err(format!("unknown combinator {other:?}; use AND or OR")),
    };
    let mut parts = Vec::new();
    for rule in group
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(rule_to_cel(rule)?);
    }
    for sub in group
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(group_to_cel(sub)?);
    }
    if parts.is_empty() {
        // Studio: an empty group is false.
        return Ok("false".to_owned());
    }
    Ok(format!("({})", parts.join(combinator)))
}

/// A rule operand as CEL: a step's field (`{stepId, field}`) or a typed static value.
fn operand(v: &Value) -> Result<String, String> {
    if let Some(step) = v.get("stepId").and_then(Value::as_str) {
        let field = match v.get("field").and_then(Value::as_str) {
            Some("status") => "status",
            Some("output" | "response") | None => "output",
            Some(other) => {
                return Err(format!(
                    "unknown field {other:?}; use output, status or response"
                ));
            }
        };
        return Ok(format!("steps[{}].{field}", cel_string(step)));
    }
    let value = v.get("value").unwrap_or(&Value::Null);
    Ok(match value {
        Value::String(s) => cel_string(s),
        Value::Null => "\"\"".to_owned(),
        other => cel_string(&other.to_string()),
    })
}

fn rule_to_cel(rule: &Value) -> Result<String, String> {
    let op = rule
        .get("operation")
        .or_else(|| rule.get("operator"))
        .and_then(Value::as_str)
        .ok_or("a rule needs an operation")?;
    // Studio's examples spell some operations in snake case.
    let op = op.replace('_', "").to_ascii_lowercase();
    let left = operand(rule.get("leftValue").ok_or("a rule needs a leftValue")?)?;
    let right = match rule.get("rightValue") {
        Some(v) => operand(v)?,
        None => "\"\"".to_owned(),
    };
    let data_type = rule
        .get("dataType")
        .and_then(Value::as_str)
        .unwrap_or("string");
    let num = |s: &str| format!("double({s})");
    let cel = match (data_type, op.as_str()) {
        (_, "exists") => "true".to_owned(),
        (_, "notexists") => "false".to_owned(),
        (_, "isempty") => format!("{left} == \"\""),
        (_, "isnotempty") => format!("{left} != \"\""),
        ("number", "equals") => format!("{} == {}", num(&left), num(&right)),
        ("number", "notequals") => format!("{} != {}", num(&left), num(&right)),
        ("number", "greaterthan") => format!("{} > {}", num(&left), num(&right)),
        ("number", "lessthan") => format!("{} < {}", num(&left), num(&right)),
        ("number", "greaterthanorequal") => format!("{} >= {}", num(&left), num(&right)),
        ("number", "lessthanorequal") => format!("{} <= {}", num(&left), num(&right)),
        ("boolean", "istrue") => format!("{left} == \"true\""),
        ("boolean", "isfalse") => format!("{left} == \"false\""),
        (_, "equals") => format!("{left} == {right}"),
        (_, "notequals") => format!("{left} != {right}"),
        ("string" | "array", "contains") => format!("{left}.contains({right})"),
        ("string" | "array", "notcontains") => format!("!{left}.contains({right})"),
        ("string", "startswith") => format!("{left}.startsWith({right})"),
        ("string", "notstartswith") => format!("!{left}.startsWith({right})"),
        ("string", "endswith") => format!("{left}.endsWith({right})"),
        ("string", "notendswith") => format!("!{left}.endsWith({right})"),
        ("string", "matchesregex") => format!("{left}.matches({right})"),
        ("string", "notmatchesregex") => format!("!{left}.matches({right})"),
        (t, o) => {
            return Err(format!(
                "operation {o:?} on data type {t:?} is not supported; use a when expression (CEL) instead"
            ));
        }
    };
    Ok(cel)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn legacy_expressions_become_cel() {
        assert_eq!(
            legacy_to_cel(r#"{check.output} === "ok" && {build.status} !== "failed""#),
            r#"steps["check"].output == "ok" && steps["build"].status != "failed""#
        );
        assert_eq!(
            legacy_to_cel("{a.response} == \"x\""),
            r#"steps["a"].output == "x""#
        );
        assert_eq!(legacy_to_cel("true"), "true");
    }

    #[test]
    fn structured_conditions_become_cel_groups() {
        let cond = json!({"version": "2.0", "rootGroup": {"id": "g", "combinator": "AND", "rules": [
            {"id": "r1", "leftValue": {"stepId": "t", "field": "output"}, "operation": "contains",
             "rightValue": {"type": "string", "value": "PASS"}, "dataType": "string"},
            {"id": "r2", "leftValue": {"stepId": "s", "field": "output"}, "operation": "not_contains",
             "rightValue": {"type": "string", "value": "CRIT\"ICAL"}, "dataType": "string"}
        ], "groups": [{"id": "h", "combinator": "OR", "rules": [
            {"id": "r3", "leftValue": {"stepId": "n", "field": "output"}, "operation": "greaterThan",
             "rightValue": {"type": "number", "value": 3}, "dataType": "number"}
        ]}]}});
        assert_eq!(
            condition_to_cel(&cond).unwrap(),
            r#"(steps["t"].output.contains("PASS") && !steps["s"].output.contains("CRIT\"ICAL") && (double(steps["n"].output) > double("3")))"#
        );
        let empty = json!({"version": "2.0", "rootGroup": {"combinator": "OR", "rules": []}});
        assert_eq!(condition_to_cel(&empty).unwrap(), "false");
        let unsupported = json!({"version": "2.0", "rootGroup": {"rules": [
            {"leftValue": {"stepId": "t"}, "operation": "isAfter", "dataType": "dateTime"}
        ]}});
        assert!(
            condition_to_cel(&unsupported)
                .unwrap_err()
                .contains("not supported")
        );
    }
}
