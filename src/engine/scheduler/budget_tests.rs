//! Unit tests of cost budgets: per-run limits, holding agent steps on an estimate, blocking
//! them on the exact total, and going on after a resume raised the budget.
use serde_json::json;

use super::tests::{fresh, idx, start, status, workflow};
use super::*;
use crate::engine::outcome::AttemptDetail;

fn costs(usd: f64) -> Outcome {
    Outcome::Succeeded {
        output: "ok".into(),
        detail: AttemptDetail {
            cost_usd: Some(usd),
            ..Default::default()
        },
    }
}

fn budgeted() -> Scheduler {
    fresh(workflow(
        json!({"defaults": {"max_cost_usd": 0.05}, "steps": [
            {"id": "a", "prompt": "one"},
            {"id": "b", "deps": ["a"], "prompt": "two", "max_cost_usd": 0.5},
            {"id": "c", "deps": ["a"], "run": ["true"]},
        ]}),
    ))
}

fn end_a(s: &mut Scheduler, cost: f64) -> (Changes, Vec<String>) {
    let i = idx(s, "a");
    let mut ch = Changes::default();
    s.apply(&mut ch, i, 1, costs(cost), false, 10, "me", 0.0);
    let started = s.start_ready(&mut ch, 10, "me", || Some(()));
    (ch, started.into_iter().map(|(a, ())| a.step_id).collect())
}

#[test]
fn each_agent_run_gets_what_is_left_of_the_budget_as_its_limit() {
    let mut s = budgeted();
    let mut ch = Changes::default();
    let started = s.start_ready(&mut ch, 0, "me", || Some(()));
    assert_eq!(started[0].0.max_budget_usd, Some(0.05));
    let (_, started) = end_a(&mut s, 0.01);
    assert_eq!(started, ["b", "c"]);
    let spec = s.prepare(idx(&s, "b"));
    let left = spec.max_budget_usd.unwrap();
    assert!((left - 0.04).abs() < 1e-9, "{left}");
    assert_eq!(
        s.prepare(idx(&s, "c")).max_budget_usd,
        None,
        "commands have none"
    );
}

#[test]
fn a_spent_budget_holds_agent_steps_and_blocks_them_only_on_the_exact_total() {
    let mut s = budgeted();
    start(&mut s, 0);
    let (_, started) = end_a(&mut s, 0.06);
    assert_eq!(started, ["c"], "commands still run; the agent step is held");
    assert_eq!(status(&s, "b"), StepStatus::Pending);
    assert_eq!(s.budget_blocks(), Some(false), "an estimate never blocks");
    // The store's total says the estimate counted too much: b may start after all.
    s.set_spent(0.01);
    let (_, started) = start(&mut s, 11);
    assert_eq!(started, ["b"]);
}

#[test]
fn an_exact_total_past_the_budget_blocks_the_workflow_with_reason_budget() {
    let mut s = budgeted();
    start(&mut s, 0);
    end_a(&mut s, 0.06);
    s.set_spent(0.06);
    let (_, started) = start(&mut s, 11);
    assert!(started.is_empty());
    assert_eq!(s.budget_blocks(), Some(true));
    let mut ch = Changes::default();
    s.block_for_budget(&mut ch, 12);
    assert_eq!(status(&s, "b"), StepStatus::Blocked);
    assert!(
        s.steps()[idx(&s, "b")]
            .error
            .as_deref()
            .unwrap()
            .starts_with("budget:")
    );
    let i = idx(&s, "c");
    s.apply(&mut ch, i, 1, costs(0.0), false, 12, "me", 0.0);
    s.finish_over_budget(&mut ch);
    assert_eq!(s.status(), WorkflowStatus::Blocked);
    let last = ch.events.last().unwrap();
    assert_eq!(last.kind, EventKind::WorkflowBlocked);
    assert_eq!(last.data.reason.as_deref(), Some("budget"));
    // A resume raised the budget: the reloaded scheduler starts b.
    let rows: Vec<StepRow> = s
        .steps()
        .iter()
        .cloned()
        .map(|mut r| {
            if r.step_id == "b" {
                r.status = StepStatus::Pending;
            }
            r
        })
        .collect();
    let mut again = Scheduler::new(
        ThreadId::from("t"),
        s.def.clone(),
        WorkflowStatus::Running,
        rows,
        20,
    );
    again.set_budget(0.06, Some(1.0));
    let (_, started) = start(&mut again, 20);
    assert_eq!(started, ["b"]);
}
