//! Saved workflows as MCP prompts (Claude Code shows them as `/mcp__baton__NAME` slash
//! commands), with the workflow's declared inputs as the prompt's arguments, and
//! `notifications/prompts/list_changed` when a workflows folder changes.
//!
//! Invariant: a prompt never starts anything by itself — getting one returns a message that
//! asks the model to call `invoke_async {name, inputs}`, so the start is a tool call the host
//! shows and the user can approve. A broken file is listed too, as a prompt whose message
//! names the file and its problems, so the user sees why their command does not work.

use std::time::Duration;

use rmcp::{
    ErrorData as McpError, Peer, RoleServer,
    model::{GetPromptResult, ListPromptsResult, Prompt, PromptArgument, PromptMessage, Role},
};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::session::Session;
use crate::saved::{FindError, Fingerprint, Library, Listing, SavedWorkflow};

/// How often the folders are looked at for changes (a directory read and a stat per file).
pub const POLL: Duration = Duration::from_secs(2);

fn describe(w: &SavedWorkflow) -> String {
    let what = w
        .signature
        .description
        .clone()
        .or_else(|| w.signature.name.clone())
        .unwrap_or_else(|| format!("the saved workflow {}", w.name));
    format!(
        "{what} — baton workflow, {} step(s), from {}",
        w.step_count,
        w.path.display()
    )
}

/// Every saved workflow as a prompt, and every broken file as one that explains itself.
pub fn list(library: &Library) -> ListPromptsResult {
    let Listing { workflows, bad } = library.scan();
    let mut prompts: Vec<Prompt> = workflows
        .iter()
        .map(|w| {
            let args: Vec<PromptArgument> = w
                .signature
                .inputs
                .iter()
                .map(|i| {
                    let mut a = PromptArgument::new(&i.name).with_required(i.required());
                    let mut text = i.description.clone().unwrap_or_default();
                    if let Some(d) = &i.default {
                        if !text.is_empty() {
                            text.push(' ');
                        }
                        text.push_str(&format!("(default: {d})"));
                    }
                    if !text.is_empty() {
                        a = a.with_description(text);
                    }
                    a
                })
                .collect();
            Prompt::new(
                &w.name,
                Some(describe(w)),
                (!args.is_empty()).then_some(args),
            )
        })
        .collect();
    for b in &bad {
        let Some(name) = &b.name else { continue };
        if prompts.iter().any(|p| &p.name == name) {
            continue;
        }
        prompts.push(Prompt::new(
            name,
            Some(format!(
                "BROKEN saved workflow {} ({} problem(s)); run it to see them",
                b.path.display(),
                b.problems.len()
            )),
            None,
        ));
    }
    prompts.sort_by(|a, b| a.name.cmp(&b.name));
    ListPromptsResult::with_all_items(prompts)
}

/// The message of prompt `name`: start the workflow with these inputs, or fix this file.
pub fn get(
    library: &Library,
    name: &str,
    arguments: Option<Map<String, Value>>,
) -> Result<GetPromptResult, McpError> {
    let w = match library.find(name) {
        Ok(w) => w,
        Err(FindError::Bad(b)) => {
            let text = format!(
                "The saved baton workflow {name:?} cannot be started because its file is invalid.\n{}\n\
                 Tell the user, and offer to fix the file (`baton validate {}` checks it).",
                b.report(),
                b.path.display()
            );
            return Ok(
                GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
                    .with_description(format!("broken saved workflow {}", b.path.display())),
            );
        }
        Err(e @ FindError::Unknown { .. }) => {
            return Err(McpError::invalid_params(e.to_string(), None));
        }
    };
    let given = arguments.unwrap_or_default();
    let inputs: Map<String, Value> = given
        .into_iter()
        .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => Value::String(s),
                other => Value::String(other.to_string()),
            };
            (k, v)
        })
        .collect();
    let missing: Vec<&str> = w
        .signature
        .inputs
        .iter()
        .filter(|i| i.required() && !inputs.contains_key(&i.name))
        .map(|i| i.name.as_str())
        .collect();
    let call = json!({ "name": w.name, "inputs": inputs });
    let mut text = format!(
        "Start the saved baton workflow {:?} ({} step(s), {}) by calling the baton tool \
         invoke_async with exactly these arguments:\n{call}\n",
        w.name,
        w.step_count,
        w.path.display()
    );
    if !missing.is_empty() {
        text.push_str(&format!(
            "First ask the user for the required input(s) {} and add them to `inputs`.\n",
            missing.join(", ")
        ));
    }
    text.push_str(
        "It runs in the background. Do not poll: when it finishes, fails or blocks baton \
         tells you (or call invoke_stream with the returned thread_id to wait for it). \
         Then report the result to the user.",
    );
    Ok(
        GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description(describe(&w)),
    )
}

/// Sends `notifications/prompts/list_changed` whenever the folders' files change, until
/// `stop` fires.
/// `last` is the folders' fingerprint from before the session began serving, so a change made
/// as soon as the client is connected is never taken for the starting state.
pub async fn watch(
    library: Library,
    mut last: Fingerprint,
    session: Session,
    peer: Peer<RoleServer>,
    stop: CancellationToken,
) {
    let stamp = |l: &Library| {
        let l = l.clone();
        async move {
            tokio::task::spawn_blocking(move || l.fingerprint())
                .await
                .unwrap_or_default()
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let now = stamp(&library).await;
        if now != last {
            last = now;
            session.prompts_changed(&peer).await;
        }
    }
}
