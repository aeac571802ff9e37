//! `baton approve`: answer a waiting human step, then follow what the answer sets off.

use std::process::ExitCode;

use super::follow::{end_cursor, follow};
use super::{CliError, Stop};
use crate::api::ThreadId;
use crate::engine::{self, Engine};

pub(super) async fn approve(
    engine: &Engine,
    stop: &Stop,
    thread_id: ThreadId,
    step: String,
    deny: bool,
    input: Option<String>,
) -> Result<ExitCode, CliError> {
    // Follow from the current end of the log: only what the answer sets off is printed.
    let cursor = end_cursor(engine, &thread_id).await?;
    let req = engine::AnswerRequest {
        thread_id: thread_id.clone(),
        step: step.clone(),
        approve: Some(!deny),
        input,
    };
    engine.answer(req).await?;
    eprintln!(
        "{thread_id}: {step} {}",
        if deny { "denied" } else { "answered" }
    );
    follow(engine, stop, &thread_id, cursor, true).await
}
