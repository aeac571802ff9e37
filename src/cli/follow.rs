//! `baton run`, `resume` and `watch`: start or resume a workflow and follow its events until
//! it stops: a live view on a terminal, plain lines on a pipe.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::io::IsTerminal;

use super::live::Live;
use super::{CliError, CliResumeMode, Stop};
use crate::api::{Event, ThreadId, WorkflowStatus};
use crate::engine::{Engine, ResumeMode, ResumeRequest, SubmitRequest};

pub(super) async fn run_file(
    engine: &Engine,
    stop: &Stop,
    file: PathBuf,
    inputs: Vec<(String, String)>,
    thread_id: Option<String>,
) -> Result<ExitCode, CliError> {
    let submitted = engine
        .submit(SubmitRequest {
            file: Some(file),
            inputs: inputs.into_iter().collect(),
            thread_id,
            ..Default::default()
        })
        .await?;
    eprintln!("thread_id {}", submitted.thread_id);
    follow(engine, stop, &submitted.thread_id, 0, true).await
}

pub(super) async fn resume(
    engine: &Engine,
    stop: &Stop,
    thread_id: ThreadId,
    from_step: Option<String>,
    (mode, prompt, max_cost_usd): (CliResumeMode, Option<String>, Option<f64>),
) -> Result<ExitCode, CliError> {
    // Follow from the current end of the log: only what the resume does is printed.
    let cursor = end_cursor(engine, &thread_id).await?;
    let req = ResumeRequest {
        thread_id: thread_id.clone(),
        from_step,
        mode: match mode {
            CliResumeMode::Retry => ResumeMode::Retry,
            CliResumeMode::Skip => ResumeMode::Skip,
        },
        prompt,
        agent: None,
        max_cost_usd,
    };
    engine.resume(req).await?;
    follow(engine, stop, &thread_id, cursor, true).await
}

/// Where events go: plain lines (a pipe, as scripts read them) or the live view (a terminal).
enum Output {
    Plain,
    Live(Box<Live>),
}

impl Output {
    fn show(&mut self, events: &[Event]) {
        match self {
            Output::Plain => print_events(events),
            Output::Live(live) => live.show(events),
        }
    }
}

/// Prints events from `cursor` until the workflow stops. With `cancel_on_ctrl_c`, Ctrl-C
/// cancels the workflow (it stays resumable) instead of just detaching. On a terminal the
/// events drive the live view and the final step's output is printed at the end.
pub(super) async fn follow(
    engine: &Engine,
    stop: &Stop,
    thread_id: &ThreadId,
    cursor: i64,
    cancel_on_ctrl_c: bool,
) -> Result<ExitCode, CliError> {
    let mut out = if std::io::stdout().is_terminal() {
        let view = engine.status(thread_id, 0).await?;
        Output::Live(Box::new(Live::new(&view, cursor == 0)))
    } else {
        Output::Plain
    };
    let mut follow = engine.follow(thread_id, cursor);
    loop {
        let until = tokio::time::Instant::now() + Duration::from_secs(3600);
        let page = tokio::select! {
            r = follow.next(1000, until) => r?,
            () = stop.token.cancelled() => {
                if cancel_on_ctrl_c && stop.by_user() {
                    eprintln!("cancelling {thread_id} (resume it with: baton resume {thread_id})");
                    engine.cancel(thread_id).await?;
                    let page = engine.events(thread_id, follow.cursor(), i64::MAX).await?;
                    out.show(&page.events);
                    if let Output::Live(live) = &mut out {
                        live.finish(WorkflowStatus::Cancelled, None);
                    }
                } else if let Output::Live(live) = &mut out {
                    let status = engine.status(thread_id, 0).await?.status;
                    live.finish(status, None);
                }
                return Ok(ExitCode::from(130));
            }
        };
        out.show(&page.events);
        if page.done() {
            if let Output::Live(live) = &mut out {
                let view = engine.status(thread_id, FINAL_OUTPUT_CHARS).await.ok();
                live.finish(page.status, view.as_ref());
            }
            return Ok(if page.status == WorkflowStatus::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
    }
}

/// Characters of the final step's output printed under the live view.
const FINAL_OUTPUT_CHARS: usize = 64 * 1024;

fn print_events(events: &[Event]) {
    for e in events {
        println!("{}  {}", e.at, e.describe());
    }
}

/// What `baton run` was given: an existing file, else the name of a saved workflow, else a
/// path (whose absence the engine reports).
pub(super) fn resolve_target(base: &std::path::Path, target: &str) -> Result<PathBuf, CliError> {
    let path = PathBuf::from(target);
    if base.join(&path).exists() || !crate::saved::valid_name(target) {
        return Ok(path);
    }
    crate::saved::Library::new(base)
        .find(target)
        .map(|w| w.path)
        .map_err(|e| CliError::Other(e.to_string()))
}

/// The seq of a workflow's last event (0 if none): following from it prints only what
/// happens next.
pub(super) async fn end_cursor(engine: &Engine, thread_id: &ThreadId) -> Result<i64, CliError> {
    let mut cursor = 0;
    loop {
        let page = engine.events(thread_id, cursor, 10_000).await?;
        if let Some(last) = page.events.last() {
            cursor = last.seq;
        }
        if page.caught_up {
            return Ok(cursor);
        }
    }
}
