//! `/healthz` (is the store reachable, how long did the last commit take) and `/metrics`
//! (Prometheus text format, written by hand: a few counters, gauges and histograms do not
//! need a metrics library).
//!
//! Invariant: counts of workflows and attempts are read from the store at scrape time, so
//! every process sharing a database reports the same totals; latency histograms, owned
//! workflows and adoptions are this process's own.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, auth};
use crate::api::{AttemptOutcome, WorkflowStatus};
use crate::engine::Metrics;
use crate::store::{COMMIT_BUCKETS_S, STEP_DURATION_BUCKETS_S};

pub(crate) async fn healthz(State(st): State<AppState>) -> Response {
    let started = std::time::Instant::now();
    let reachable = st.engine.store().last_global_cursor().await;
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    let last_commit_ms = st
        .engine
        .store()
        .commit_stats()
        .last_us
        .map(|us| us as f64 / 1000.0);
    match reachable {
        Ok(_) => Json(json!({
            "ok": true,
            "store": "reachable",
            "read_ms": read_ms,
            "last_commit_ms": last_commit_ms,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ok": false, "store": e.to_string(), "last_commit_ms": last_commit_ms})),
        )
            .into_response(),
    }
}

pub(crate) async fn metrics(State(st): State<AppState>, req: Request) -> Response {
    if !st.cfg.metrics_public && !auth::authorised(&st.token, &req) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match st.engine.metrics().await {
        Ok(m) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            render(&m, &st),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A histogram from cumulative bucket counts.
fn histogram(out: &mut String, name: &str, bounds: &[f64], counts: &[u64], n: u64, sum: f64) {
    for (b, c) in bounds.iter().zip(counts) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {n}");
}

fn render(m: &Metrics, st: &AppState) -> String {
    let mut out = String::with_capacity(4096);
    head(
        &mut out,
        "baton_workflows_total",
        "gauge",
        "Workflows in the store by status.",
    );
    for s in WorkflowStatus::ALL {
        let n = m
            .counts
            .workflows
            .iter()
            .find(|(k, _)| k == s)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "baton_workflows_total{{status=\"{}\"}} {n}",
            s.as_str()
        );
    }
    head(
        &mut out,
        "baton_step_attempts_total",
        "counter",
        "Step attempts in the store by outcome.",
    );
    for o in AttemptOutcome::ALL {
        let n = m
            .counts
            .attempts
            .iter()
            .find(|(k, _)| k == o)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "baton_step_attempts_total{{outcome=\"{}\"}} {n}",
            o.as_str()
        );
    }
    head(
        &mut out,
        "baton_commit_seconds",
        "histogram",
        "Store transactions of this process, from begin to durable commit.",
    );
    let c = &m.commits;
    histogram(
        &mut out,
        "baton_commit_seconds",
        COMMIT_BUCKETS_S,
        &c.buckets,
        c.count,
        c.sum_us as f64 / 1e6,
    );
    head(
        &mut out,
        "baton_step_duration_seconds",
        "histogram",
        "Durations of finished step attempts in the store.",
    );
    let d = &m.counts.step_durations;
    let buckets: Vec<u64> = d.buckets.iter().map(|n| (*n).max(0) as u64).collect();
    histogram(
        &mut out,
        "baton_step_duration_seconds",
        STEP_DURATION_BUCKETS_S,
        &buckets,
        d.count.max(0) as u64,
        d.sum_ms as f64 / 1000.0,
    );
    head(
        &mut out,
        "baton_running_steps",
        "gauge",
        "Steps running now, in every process.",
    );
    let _ = writeln!(out, "baton_running_steps {}", m.counts.running_steps);
    head(
        &mut out,
        "baton_owned_workflows",
        "gauge",
        "Workflows this process drives now.",
    );
    let _ = writeln!(out, "baton_owned_workflows {}", m.owned_workflows);
    head(
        &mut out,
        "baton_adoptions_total",
        "counter",
        "Workflows this process took over from dead owners.",
    );
    let _ = writeln!(out, "baton_adoptions_total {}", m.adoptions);
    head(
        &mut out,
        "baton_sse_clients",
        "gauge",
        "Event stream clients connected now.",
    );
    let _ = writeln!(
        out,
        "baton_sse_clients {}",
        st.streams.clients.load(Ordering::Relaxed)
    );
    head(
        &mut out,
        "baton_sse_dropped_total",
        "counter",
        "Event stream clients disconnected for not reading.",
    );
    let _ = writeln!(
        out,
        "baton_sse_dropped_total {}",
        st.streams.dropped.load(Ordering::Relaxed)
    );
    out
}
