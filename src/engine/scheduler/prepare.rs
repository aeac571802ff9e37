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
use crate::workflow::{Action, AgentOptions, Quoting, Reference};

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
        let item = self.item_of(idx);
        let lookup = |r: &Reference| -> String {
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
        };
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
            Action::Prompt(t) => {
                let prompt = t.render(&lookup, Quoting::Verbatim);
                let overrides: AgentOptions = row
                    .agent_overrides
                    .as_deref()
                    .and_then(|o| serde_json::from_str(o).ok())
                    .unwrap_or_default();
                let options = step.agent.merged(&overrides);
                let resume = if row.fresh_session {
                    None
                } else {
                    row.session_id.clone()
                };
                let prompt = match (&resume, &row.guidance) {
                    (Some(_), Some(g)) => g.clone(),
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
        }
    }
}
