//! Checks of single fields during resolution: durations, budgets, environments, `cwd`s
//! (resolved lexically), retry policies as written and output schemas. Each records a
//! [`Problem`] naming its step and field; none looks at another step.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::workflow::definition::Action;
use crate::workflow::problem::Problem;
use crate::workflow::raw::{RawRetry, RawStep};
use crate::workflow::resolve_retry::retry_problems;
use crate::workflow::retry::MAX_DURATION_S;

/// `output_schema`: an object that compiles as a JSON Schema, on a step that produces output.
pub fn resolve_output_schema(
    raw: &RawStep,
    action: &Action,
    id: &str,
    problems: &mut Vec<Problem>,
) -> Option<serde_json::Value> {
    if matches!(action, Action::Human(_))
        && raw.output == Some(crate::workflow::raw::RawOutput::Json)
    {
        problems.push(Problem::step(
            id,
            "output",
            "a human step's output is its answer; output: json applies to prompt, run and shell steps",
        ));
    }
    let schema = raw.output_schema.as_ref()?;
    if matches!(action, Action::Human(_)) {
        problems.push(Problem::step(
            id,
            "output_schema",
            "a human step's output is its answer; output_schema applies to prompt, run and shell steps",
        ));
        return None;
    }
    if !schema.is_object() {
        problems.push(Problem::step(
            id,
            "output_schema",
            "expected a JSON Schema object, e.g. {\"type\": \"object\", \"properties\": {…}}",
        ));
        return None;
    }
    if let Err(e) = jsonschema::validator_for(schema) {
        problems.push(Problem::step(
            id,
            "output_schema",
            format!("is not a valid JSON Schema: {e}"),
        ));
        return None;
    }
    Some(schema.clone())
}

pub fn push_retry_problems(
    raw: &RawRetry,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) {
    for (name, message) in retry_problems(raw) {
        problems.push(Problem::at(step, format!("{field}.{name}"), message));
    }
}

/// A cost budget is a positive, finite number of dollars.
pub fn check_budget(
    value: Option<f64>,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) {
    if let Some(v) = value
        && !(v.is_finite() && v > 0.0)
    {
        problems.push(Problem::at(
            step,
            field,
            format!("{v} is not a positive number of US dollars"),
        ));
    }
}

/// What a problem says about a NUL byte.
pub const NUL_MESSAGE: &str =
    "contains a NUL byte, which no process argument, script, path or environment can carry";

pub fn check_positive(
    value: Option<u64>,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) {
    match value {
        Some(0) => problems.push(Problem::at(
            step,
            field,
            "must be at least 1 second (omit it for no limit)",
        )),
        Some(s) if s > MAX_DURATION_S => problems.push(Problem::at(
            step,
            field,
            format!("{s} s is more than the limit of {MAX_DURATION_S} s (30 days)"),
        )),
        _ => {}
    }
}

pub fn check_env(
    env: &BTreeMap<String, String>,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) {
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) {
            problems.push(Problem::at(
                step,
                format!("{field}.{key}"),
                "is not a valid variable name",
            ));
        } else if value.contains('\0') {
            problems.push(Problem::at(
                step,
                format!("{field}.{key}"),
                "the value contains a NUL byte",
            ));
        }
    }
}

/// `value` (if any) joined onto `base_dir` and normalised lexically; `base_dir` when `None`.
pub fn resolve_cwd(
    value: Option<&str>,
    base_dir: &Path,
    step: Option<&str>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> PathBuf {
    match value {
        None => normalise(base_dir),
        Some(v) if v.trim().is_empty() => {
            problems.push(Problem::at(
                step,
                field,
                "is empty (omit it to use the default)",
            ));
            normalise(base_dir)
        }
        Some(v) if v.contains('\0') => {
            problems.push(Problem::at(step, field, NUL_MESSAGE));
            normalise(base_dir)
        }
        Some(v) if v.starts_with('~') => {
            problems.push(Problem::at(
                step,
                field,
                format!("{v:?}: `~` is not expanded; write an absolute path"),
            ));
            normalise(base_dir)
        }
        Some(v) => normalise(&base_dir.join(v)),
    }
}

/// Removes `.` and resolves `..` without touching the filesystem (`/..` stays `/`).
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::Normal(_) => out.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                if out.file_name().is_some() {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_is_lexical() {
        assert_eq!(normalise(Path::new("/a/./b/../c/")), PathBuf::from("/a/c"));
        assert_eq!(normalise(Path::new("/a/../../..")), PathBuf::from("/"));
        assert_eq!(
            normalise(Path::new("/repo/x/../../etc")),
            PathBuf::from("/etc")
        );
        assert_eq!(normalise(Path::new("a/../../b")), PathBuf::from("../b"));
    }
}
