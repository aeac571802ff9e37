//! The terminal front-end: arguments of `baton serve`, `run`, `status`, `list`, `resume`,
//! `cancel`, `watch`, `approve`, `validate`, `prune`, `schema`, and one function per terminal command.
//!
//! Invariant: this module only translates between a terminal and the engine; every state
//! change goes through the same engine calls the MCP tools use. `main` owns the lifecycle:
//! it opens the engine once, runs the command, and shuts the engine down once.
//!
//! # Layout
//! - `args`: flags and subcommands; `open`: opening the engine, the worker loop.
//! - `follow`: `run`, `resume`, `watch` (`live`: their terminal view); `approve`: `approve`; `list`: `list`; `prune`: `prune`;
//!   `validate`: `validate`.

mod approve;
mod args;
mod follow;
mod list;
mod live;
mod open;
mod prune;
mod validate;

pub use args::*;
pub use open::worker;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use crate::api::ThreadId;
use crate::engine::{self, Engine, EngineError};
use crate::store::StoreError;

/// Errors of the CLI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// The process's stop signal, owned by `main`: SIGTERM or SIGINT fire it; `by_user` says it
/// was Ctrl-C (SIGINT), which `baton run` takes as "cancel this workflow".
#[derive(Clone, Default)]
pub struct Stop {
    pub token: CancellationToken,
    ctrl_c: Arc<AtomicBool>,
}

impl Stop {
    /// Fires the stop; `ctrl_c` when it came from the terminal's Ctrl-C.
    pub fn fire(&self, ctrl_c: bool) {
        if ctrl_c {
            self.ctrl_c.store(true, Ordering::Relaxed);
        }
        self.token.cancel();
    }

    pub fn by_user(&self) -> bool {
        self.ctrl_c.load(Ordering::Relaxed)
    }
}

/// Runs a command that needs no engine.
pub async fn run_offline(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Reap { owner, fence_ms } => {
            reap(owner, fence_ms.map(std::time::Duration::from_millis)).await
        }
        Command::Schema => {
            println!("{}", pretty(&crate::workflow::workflow_schema()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file, inputs } => validate::validate(&file, inputs),
        other => Err(CliError::Other(format!("{other:?} needs the engine"))),
    }
}

/// Runs a terminal command over an open engine.
pub async fn run(command: Command, engine: &Engine, stop: &Stop) -> Result<ExitCode, CliError> {
    match command {
        Command::Run {
            workflow,
            inputs,
            thread_id,
        } => {
            let file = follow::resolve_target(&engine.config().base_dir, &workflow)?;
            follow::run_file(engine, stop, file, inputs, thread_id).await
        }
        Command::Resume {
            thread_id,
            from_step,
            mode,
            prompt,
            max_cost_usd,
        } => {
            let how = (mode, prompt, max_cost_usd);
            follow::resume(engine, stop, thread_id.into(), from_step, how).await
        }
        Command::Approve {
            thread_id,
            step,
            deny,
            input,
        } => approve::approve(engine, stop, thread_id.into(), step, deny, input).await,
        Command::Watch { thread_id, cursor } => {
            follow::follow(engine, stop, &thread_id.into(), cursor, false).await
        }
        Command::Status { thread_id } => {
            let view = engine.status(&thread_id.into(), 4000).await?;
            println!("{}", pretty(&view));
            Ok(ExitCode::SUCCESS)
        }
        Command::List { saved: true, .. } => list::saved(&engine.config().base_dir),
        Command::List { all, limit, .. } => list::list(engine, all, limit).await,
        Command::Prune { older_than, status } => prune::prune(engine, older_than, status).await,
        Command::Cancel { thread_id } => {
            let status = engine.cancel(&ThreadId::from(thread_id.as_str())).await?;
            println!("{thread_id}: {status}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(CliError::Other(format!(
            "{other:?} is not a terminal command"
        ))),
    }
}

async fn reap(owner: String, fence: Option<std::time::Duration>) -> Result<ExitCode, CliError> {
    let killed =
        tokio::task::spawn_blocking(move || engine::reap_after_parent_exits(&owner, fence))
            .await
            .unwrap_or(0);
    if killed > 0 {
        tracing::info!(killed, "killed processes left by an exited baton");
    }
    Ok(ExitCode::SUCCESS)
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The error as a short message for the terminal, naming the command to run next.
pub fn report(e: &CliError) -> String {
    match e {
        CliError::Engine(EngineError::Invalid(p)) => format!("invalid workflow:\n{p}"),
        CliError::Engine(EngineError::NotFound { thread_id }) => format!(
            "unknown thread_id {thread_id:?}: no workflow with this id exists in this store (list them with: baton list --all)"
        ),
        CliError::Engine(EngineError::UnknownStep { step, known }) => format!(
            "--from-step {step:?} is not a step of this workflow; its steps are: {}",
            known.join(", ")
        ),
        CliError::Engine(EngineError::Busy { thread_id, status }) => format!(
            "workflow {thread_id} is {status} right now; wait for it to stop or run: baton cancel {thread_id}"
        ),
        CliError::Engine(EngineError::AlreadyCompleted { thread_id }) => format!(
            "workflow {thread_id} already completed; pass --from-step to re-run a step and everything downstream of it"
        ),
        other => other.to_string(),
    }
}
