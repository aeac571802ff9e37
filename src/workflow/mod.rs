//! The workflow model: parsing, validation, resolution, DAG helpers, templates and retry
//! policy for `baton` workflow definitions.
//!
//! Invariant: this module is pure — no filesystem, environment, clock or randomness — and a
//! definition is either compiled into a fully resolved, valid [`Workflow`] or rejected with
//! *every* [`Problem`] found, each naming its step and field. Nothing half-valid escapes.
//!
//! # Layout
//! - `raw.rs`: the input shapes users write (baton's and Claude Studio's) and their JSON Schema.
//! - `decode.rs`: JSON → raw shapes, collecting type errors and unknown fields.
//! - `resolve.rs`: defaults, agent profiles, templates, each step's action;
//!   `resolve_control.rs`: `repeat` groups, `for_each` and sub-workflows;
//!   `resolve_checks.rs`: checks of single fields (durations, budgets, `env`, `cwd`s,
//!   output schemas).
//! - `validate.rs`: ids, deps, cycles, template references.
//! - `dag.rs`: topological order, ancestors, descendants, cycles.
//! - `definition.rs`: the resolved [`Workflow`] the engine runs and the store keeps.
//! - `template.rs`: `{step.output}` templates and shell rendering; `shell_lint.rs`:
//!   where a reference may sit in a shell script and how it is spelled there.
//! - `human.rs`: human steps (approval, input, notification) and Studio's `type: "human"`.
//! - `expr.rs`: CEL expressions (`when`), checked at submission, evaluated by the scheduler.
//! - `retry.rs`: [`RetryPolicy`] arithmetic; `resolve_retry.rs`: a written `retry` → policy.
//! - `problem.rs`: [`Problem`], [`Problems`] and "did you mean" suggestions.
//! - `source.rs`: definition text (JSON or YAML) and a definition's signature (name,
//!   description, declared inputs).
//! - `compile_tests.rs`: end-to-end tests of [`compile`] and their helpers;
//!   `compile_control_tests.rs`: those of Studio's shapes, `when`, `for_each` and `repeat`.

use std::collections::BTreeMap;
use std::path::Path;

mod dag;
mod decode;
mod definition;
mod expr;
mod human;
mod problem;
mod raw;
mod resolve;
mod resolve_checks;
mod resolve_control;
mod resolve_retry;
mod retry;
mod shell_lint;
mod source;
mod studio;
mod template;
mod validate;

#[cfg(test)]
mod compile_control_tests;
#[cfg(test)]
mod compile_tests;

pub use dag::{ancestors, descendants, topo_order};
pub use definition::{
    Action, AgentOptions, DEFAULT_STALL_TIMEOUT_S, ForEach, OnStall, Repeat, Step, SubWorkflow,
    SuccessCheck, Workflow, instance_id, iteration_id, parse_instance, parse_iteration,
};
pub use expr::{Expr, Scope};
pub use human::{Human, HumanKind, OnTimeout};
pub use problem::{Problem, Problems};
use raw::RawDefinition;
pub use resolve_control::MAX_ITEMS;
pub use retry::RetryPolicy;
pub use source::{Format, InputSpec, Signature, parse_text, signature};
pub use template::{Quoting, Reference, SHELL_REF_PREFIX, Segment, Template};

/// Result of compiling a definition: the workflow, or every problem with it.
pub type Result<T, E = Problems> = std::result::Result<T, E>;

/// Parses, validates and resolves a definition in one call.
///
/// `inputs` are the invocation's input values; they fill declared inputs and may add
/// undeclared ones. `base_dir` is the absolute directory relative `cwd`s are resolved against
/// (lexically: joined and `.`/`..` normalised, never touching the filesystem).
pub fn compile(
    definition: &serde_json::Value,
    inputs: &BTreeMap<String, String>,
    base_dir: &Path,
) -> Result<Workflow> {
    let mut problems = Vec::new();
    let raw = decode::decode(definition, &mut problems);
    let resolved = resolve::resolve(&raw, inputs, base_dir, &mut problems);
    validate::validate(
        &resolved.workflow.steps,
        &resolved.action_fields,
        &resolved.declared_inputs,
        &mut problems,
    );
    if problems.is_empty() {
        Ok(resolved.workflow)
    } else {
        Err(Problems(problems))
    }
}

/// Decodes a definition into its raw form without resolving it, reporting type errors and
/// unknown fields.
#[cfg(test)]
fn parse_raw(definition: &serde_json::Value) -> Result<RawDefinition> {
    let mut problems = Vec::new();
    let raw = decode::decode(definition, &mut problems);
    if problems.is_empty() {
        Ok(raw)
    } else {
        Err(Problems(problems))
    }
}

/// The JSON Schema of a workflow definition (what `baton schema` prints).
pub fn workflow_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(RawDefinition).to_value();
    if let Some(object) = schema.as_object_mut() {
        object.insert("title".into(), "baton workflow definition".into());
    }
    schema
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::compile_tests::design_example;
    use super::*;

    #[test]
    fn parse_raw_reports_decoding_problems_only() {
        assert!(
            parse_raw(&design_example()).is_ok(),
            "undeclared inputs are a compile-time matter"
        );
        let ps = parse_raw(&json!({"steps": [{"prompt": 1}]})).unwrap_err();
        assert_eq!(ps.len(), 1, "{ps}");
    }

    #[test]
    fn schema_describes_the_raw_shapes() {
        let schema = workflow_schema();
        assert_eq!(schema["title"], "baton workflow definition");
        let text = schema.to_string();
        for needle in [
            "anyOf",
            "depends_on",
            "max_attempts",
            "stall_timeout_s",
            "allowed_tools",
            "continue_on_error",
            "failure()",
            "Claude Studio",
            "on_timeout",
            "notification",
        ] {
            assert!(text.contains(needle), "schema lacks {needle}");
        }
        let step = &schema["$defs"]["RawStep"];
        assert_eq!(step["additionalProperties"], false);
        assert!(
            step["properties"]["shell"]["description"]
                .as_str()
                .unwrap()
                .contains("shell-quoted")
        );
    }

    #[test]
    fn serde_derive_and_decoder_agree_on_valid_definitions() {
        let mut def = design_example();
        def["agents"] = json!({"p": {"model": "m", "system_prompt": "s"}});
        def["steps"][0]["success"] = json!({"contains": "x", "not_contains": ["y"]});
        def["steps"][1]["role"] = json!("p");
        let rename = |step: &mut serde_json::Value, to: &str| {
            let deps = step.as_object_mut().and_then(|o| o.remove("deps")).unwrap();
            step[to] = deps;
        };
        rename(&mut def["steps"][2], "depends_on");
        rename(&mut def["steps"][3], "dependsOn");
        let studio_file = json!({"name": "n", "version": "1", "metadata": {},
            "workflow": [{"id": "a", "task": "t", "type": "task"}]});
        let single = json!({"task": "t", "role": "r", "sessionId": "s"});
        for value in [
            def,
            studio_file,
            single,
            json!([{"task": "t", "agentId": "x"}]),
            json!([{"id": "h", "human": {"prompt": "ok?", "kind": "input", "timeout_s": 5,
                "on_timeout": "approve"}}]),
        ] {
            let derived: RawDefinition = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(derived, parse_raw(&value).unwrap(), "{value}");
        }
    }
}
