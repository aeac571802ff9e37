//! Sub-workflow steps: an attempt starts the child workflow `PARENT/STEP` (or finds it, as
//! the thread id is an idempotency key) and waits for it to stop; the child is an ordinary
//! workflow — stored, leased, adopted and resumable on its own.
//!
//! Invariant: a child is started at most once per step row, whatever crashes happen — a
//! re-run of the attempt finds the existing child and waits again, so the child's completed
//! steps never re-run; a retried step (attempt 2 and later) resumes a child that stopped.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::control::{ResumeMode, ResumeRequest, SubmitRequest};
use super::driver::{StopCell, StopReason};
use super::executor::{AttemptSpec, Prepared, fatal as failed};
use super::outcome::{AttemptDetail, FailureClass, Outcome};
use super::{Engine, Shared};
use crate::api::{ThreadId, WorkflowStatus};

/// How long one wait for the child's events lasts before the loop looks again.
const WAIT: Duration = Duration::from_secs(60);

/// Runs the child of a sub-workflow attempt to its stop. A cancel of the parent cancels the
/// child; a shutdown leaves it to its own owner.
pub(super) async fn run(
    sh: Arc<Shared>,
    spec: AttemptSpec,
    stop: CancellationToken,
    reason: Arc<StopCell>,
) -> Outcome {
    let started = std::time::Instant::now();
    let Prepared::Workflow {
        thread_id,
        file,
        definition,
        inputs,
    } = spec.prepared
    else {
        return failed("not a sub-workflow attempt".into(), started);
    };
    let engine = Engine { sh };
    let submitted = engine
        .submit(SubmitRequest {
            definition,
            file,
            inputs,
            thread_id: Some(thread_id.clone()),
        })
        .await;
    let submitted = match submitted {
        Ok(s) => s,
        Err(e) => return failed(format!("sub-workflow {thread_id}: {e}"), started),
    };
    let child: ThreadId = submitted.thread_id;
    let stopped = matches!(
        submitted.status,
        WorkflowStatus::Failed | WorkflowStatus::Blocked | WorkflowStatus::Cancelled
    );
    if !submitted.created && stopped && spec.number > 1 {
        let resumed = engine
            .resume(ResumeRequest {
                thread_id: child.clone(),
                from_step: None,
                mode: ResumeMode::Retry,
                prompt: None,
                agent: None,
                max_cost_usd: None,
            })
            .await;
        if let Err(e) = resumed {
            tracing::warn!(child = %child, error = %e, "could not resume the sub-workflow");
        }
    }
    let mut follow = engine.follow(&child, 0);
    let status = loop {
        let page = tokio::select! {
            page = follow.next(500, Instant::now() + WAIT) => page,
            () = stop.cancelled() => {
                if reason.get() == StopReason::Cancel
                    && let Err(e) = engine.cancel(&child).await
                {
                    tracing::warn!(child = %child, error = %e, "could not cancel the sub-workflow");
                }
                return Outcome::Stopped { detail: AttemptDetail::default() };
            }
        };
        match page {
            Ok(page) if page.done() => break page.status,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(child = %child, error = %e, "reading the sub-workflow failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
    };
    let view = match engine.status(&child, usize::MAX).await {
        Ok(v) => v,
        Err(e) => return failed(format!("sub-workflow {child}: {e}"), started),
    };
    let detail = AttemptDetail {
        duration_ms: Some(started.elapsed().as_millis() as i64),
        cost_usd: (view.total_cost_usd > 0.0).then_some(view.total_cost_usd),
        ..Default::default()
    };
    let error = view.error.clone().unwrap_or_default();
    match status {
        WorkflowStatus::Completed => {
            // The output of the child's last step of its definition (not an instance or an
            // iteration row).
            let output = view
                .steps
                .iter()
                .rev()
                .find(|s| !s.id.contains(['[', '#']))
                .and_then(|s| s.output.clone())
                .unwrap_or_default();
            Outcome::Succeeded { output, detail }
        }
        WorkflowStatus::Blocked => Outcome::Blocked {
            reason: format!("sub-workflow {child} is blocked: {error}"),
            denials: serde_json::Value::Null,
            detail,
        },
        other => Outcome::Failed {
            class: FailureClass::Fatal,
            error: format!("sub-workflow {child} {other}: {error}"),
            detail,
        },
    }
}
