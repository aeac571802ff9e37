//! Structured output: a finished attempt of a step with `output: "json"` (or an
//! `output_schema`) succeeds only if its output is JSON that matches the schema.
//!
//! Invariant: the check runs at the executor boundary on every successful attempt of such a
//! step, so a committed output of a JSON step is always JSON that matched its schema; a
//! mismatch is a retryable failure whose message says where the value went wrong.

use super::outcome::{FailureClass, Outcome};

/// Most schema violations named in one error.
const MAX_VIOLATIONS: usize = 5;

/// `outcome` checked against the step's structured-output settings.
pub(super) fn check(outcome: Outcome, json: bool, schema: Option<&serde_json::Value>) -> Outcome {
    if !json {
        return outcome;
    }
    let Outcome::Succeeded { output, detail } = outcome else {
        return outcome;
    };
    match violation(&output, schema) {
        None => Outcome::Succeeded { output, detail },
        Some(error) => Outcome::Failed {
            class: FailureClass::Retryable,
            error,
            detail,
        },
    }
}

/// Why `output` is not acceptable JSON, if it is not.
fn violation(output: &str, schema: Option<&serde_json::Value>) -> Option<String> {
    let value: serde_json::Value = match serde_json::from_str(output.trim()) {
        Ok(v) => v,
        Err(e) => {
            let shown: String = output.trim().chars().take(80).collect();
            return Some(format!("output is not JSON ({e}): {shown:?}"));
        }
    };
    let schema = schema?;
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => return Some(format!("output_schema is not a valid JSON Schema: {e}")),
    };
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .take(MAX_VIOLATIONS)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{}: {e}", if at.is_empty() { "/" } else { &at })
        })
        .collect();
    (!errors.is_empty())
        .then(|| format!("output does not match output_schema: {}", errors.join("; ")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::outcome::AttemptDetail;

    fn ok(output: &str) -> Outcome {
        Outcome::Succeeded {
            output: output.into(),
            detail: AttemptDetail::default(),
        }
    }

    fn error_of(o: Outcome) -> String {
        match o {
            Outcome::Failed { class, error, .. } => {
                assert_eq!(class, FailureClass::Retryable);
                error
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn text_that_is_not_json_fails_retryably() {
        let e = error_of(check(ok("done!\n"), true, None));
        assert!(e.starts_with("output is not JSON"), "{e}");
        assert!(matches!(
            check(ok("{\"a\": 1}\n"), true, None),
            Outcome::Succeeded { .. }
        ));
        assert!(matches!(
            check(ok("done!"), false, None),
            Outcome::Succeeded { .. }
        ));
    }

    #[test]
    fn a_value_that_breaks_the_schema_names_where() {
        let schema = json!({"type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "items": {"type": "string"}}}});
        let e = error_of(check(ok(r#"{"files": ["a", 2]}"#), true, Some(&schema)));
        assert!(e.contains("/files/1"), "{e}");
        let e = error_of(check(ok("{}"), true, Some(&schema)));
        assert!(e.contains("files"), "{e}");
        assert!(matches!(
            check(ok(r#"{"files": ["a"]}"#), true, Some(&schema)),
            Outcome::Succeeded { .. }
        ));
    }
}
