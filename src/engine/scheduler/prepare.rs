//! Rendering a step's next attempt: templates filled from upstream steps and inputs, agent
//! options merged with resume overrides, the session to continue.
//!
//! Invariant: values reach an attempt only through the template renderers: verbatim in
//! prompts and argv elements (no shell); in `shell` scripts as environment variables the
//! script expands, never as script text.

use std::time::Duration;

use super::Scheduler;
use crate::api::tail;
use crate::engine::executor::{AttemptSpec, Prepared};
use crate::workflow::{Action, AgentOptions, Quoting, Reference, Template};

/// The thread id of the child workflow a sub-workflow step row runs: `PARENT/STEP`, with
/// the instance and iteration marks of the row spelled `.i`.
pub(in crate::engine) fn child_thread_id(parent: &str, row_id: &str) -> String {
    let step: String = row_id
        .chars()
        .filter_map(|c| match c {
            '[' | '#' => Some('.'),
            ']' => None,
            c => Some(c),
        })
        .collect();
    format!("{parent}/{step}")
}

impl Scheduler {
    /// The attempt step `idx` would run next (its `number` is set by the caller).
    pub(super) fn prepare(&self, idx: usize) -> AttemptSpec {
        let step = &self.def.steps[self.origin[idx].def];
        let row = &self.steps[idx];
        let lookup = |r: &Reference| self.value_of(idx, r);
        let prepared = match &step.action {
            // A group runs its steps, never a process; nothing prepares it.
            Action::Repeat(_) | Action::Condition(_) | Action::Join => Prepared::Run(Vec::new()),
            Action::Workflow(sub) => Prepared::Workflow {
                thread_id: child_thread_id(self.id.as_str(), &row.step_id),
                file: sub.file.clone(),
                definition: sub.definition.clone(),
                inputs: sub
                    .inputs
                    .iter()
                    .map(|(k, t)| (k.clone(), t.render(&lookup, Quoting::Verbatim)))
                    .collect(),
            },
            Action::Run(argv) => Prepared::Run(
                argv.iter()
                    .map(|t| t.render(&lookup, Quoting::Verbatim))
                    .collect(),
            ),
            Action::Shell(t) => {
                let (script, env) = t.render_shell(&lookup);
                Prepared::Shell { script, env }
            }
            // Never started: the scheduler asks human steps itself (an empty argv would fail
            // the attempt as not retryable).
            Action::Human(_) => Prepared::Run(Vec::new()),
            Action::Prompt(t) => {
                let prompt = t.render(&lookup, Quoting::Verbatim);
                let overrides: AgentOptions = row
                    .agent_overrides()
                    .and_then(|o| serde_json::from_str(o).ok())
                    .unwrap_or_default();
                let options = step.agent.merged(&overrides);
                let resume = if row.fresh_session() {
                    None
                } else {
                    row.session_id.clone()
                };
                let prompt = match (&resume, row.guidance()) {
                    (Some(_), Some(g)) => g.to_owned(),
                    // A new iteration of a loop continues the session with its own prompt.
                    (Some(_), None) if row.attempts == 0 => prompt,
                    (Some(_), None) => format!(
                        "Your previous attempt at this task did not finish{}. Continue from \
                         where you left off and complete the task:\n\n{prompt}",
                        row.error
                            .as_deref()
                            .map(|e| format!(" ({})", tail(e, 500)))
                            .unwrap_or_default()
                    ),
                    (None, Some(g)) => format!("{prompt}\n\n{g}"),
                    (None, None) => prompt,
                };
                Prepared::Agent {
                    prompt,
                    options,
                    resume,
                }
            }
        };
        AttemptSpec {
            workflow_id: self.id.clone(),
            step_idx: idx,
            step_id: row.step_id.clone(),
            number: row.attempts + 1,
            prepared,
            cwd: step.cwd.clone(),
            env: step.env.clone(),
            timeout: step.timeout_s.map(Duration::from_secs),
            success: step.success.clone(),
            output_json: step.output_json,
            output_schema: step.output_schema.clone(),
            max_budget_usd: match (step.max_cost_usd, self.budget_left()) {
                _ if !matches!(step.action, Action::Prompt(_)) => None,
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// The value a template reference of row `idx` stands for (verbatim).
    fn value_of(&self, idx: usize, r: &Reference) -> String {
        let item = self.item_of(idx);
        let get = |id: &String| self.dep_row(idx, id).map(|j| &self.steps[j]);
        match r {
            Reference::StepOutput(id) => get(id)
                .and_then(|s| s.output.as_deref())
                .map(|o| o.trim_end().to_owned())
                .unwrap_or_default(),
            Reference::StepStatus(id) => get(id)
                .map(|s| s.status.as_str().to_owned())
                .unwrap_or_default(),
            Reference::StepSession(id) => get(id)
                .and_then(|s| s.session_id.clone())
                .unwrap_or_default(),
            Reference::StepJson(id, path) => get(id)
                .and_then(|s| s.output.as_deref())
                .map(|o| json_at(o, path))
                .unwrap_or_default(),
            Reference::Input(name) => self.def.inputs.get(name).cloned().unwrap_or_default(),
            Reference::Item(field) => {
                let value = item.map(|(v, _)| v);
                let value = match field {
                    None => value,
                    Some(f) => value.and_then(|v| v.get(f.as_str())),
                };
                match value {
                    None | Some(serde_json::Value::Null) => String::new(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                }
            }
            Reference::Index => item.map(|(_, i)| i.to_string()).unwrap_or_default(),
            Reference::Previous(id) => self
                .previous_row(idx, id)
                .and_then(|j| self.steps[j].output.as_deref())
                .map(|o| o.trim_end().to_owned())
                .unwrap_or_default(),
        }
    }

    /// Template `t` rendered for row `idx`, values inserted verbatim.
    pub(super) fn render(&self, idx: usize, t: &Template) -> String {
        t.render(&|r: &Reference| self.value_of(idx, r), Quoting::Verbatim)
    }
}

/// The value at `path` (keys, array indices) of `output` parsed as JSON: a string as is,
/// anything else as JSON, nothing for null, a missing value or an output that is not JSON.
pub(super) fn json_at(output: &str, path: &[String]) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(output) else {
        return String::new();
    };
    for key in path {
        let next = match &mut value {
            serde_json::Value::Object(m) => m.remove(key),
            serde_json::Value::Array(a) => key
                .parse::<usize>()
                .ok()
                .filter(|&i| i < a.len())
                .map(|i| a.swap_remove(i)),
            _ => None,
        };
        let Some(next) = next else {
            return String::new();
        };
        value = next;
    }
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::json_at;

    #[test]
    fn json_paths_walk_keys_and_indices_and_render_strings_raw() {
        let out = r#"{"files": ["a.rs", {"name": "b"}], "n": 2, "none": null}"#;
        let at = |p: &[&str]| json_at(out, &p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(at(&["files", "0"]), "a.rs");
        assert_eq!(at(&["files", "1"]), r#"{"name":"b"}"#);
        assert_eq!(at(&["files", "1", "name"]), "b");
        assert_eq!(at(&["n"]), "2");
        assert_eq!(at(&["none"]), "");
        assert_eq!(at(&["files", "9"]), "", "out of range");
        assert_eq!(at(&["n", "x"]), "", "a number has no fields");
        assert_eq!(json_at("not json", &[]), "");
    }
}
