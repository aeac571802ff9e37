//! Cost budgets end to end with the fake agent: `max_cost_usd` passed as Claude Code's
//! `--max-budget-usd`, a workflow blocked with reason `budget`, and a resume with a higher
//! budget that continues it.

use serde_json::{Value, json};

use crate::util::*;

fn budget_flag(sb: &Sandbox, step: &str) -> Vec<String> {
    std::fs::read_to_string(sb.path("invocations.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|i| {
            i["env"]["BATON_STEP_ID"] == step
                || i["prompt"].as_str().is_some_and(|p| p.contains(step))
        })
        .filter_map(|i| {
            let argv: Vec<String> = serde_json::from_value(i["argv"].clone()).unwrap();
            let at = argv.iter().position(|a| a == "--max-budget-usd")?;
            Some(argv[at + 1].clone())
        })
        .collect()
}

#[test]
fn a_spent_budget_blocks_the_workflow_and_a_higher_budget_continues_it() {
    let sb = Sandbox::new();
    let mut s = fake_agent_server(&sb);
    let id = s.start(json!({"defaults": {"max_cost_usd": 0.05}, "steps": [
        {"id": "plan", "prompt": "plan it [[cost:0.05]]"},
        {"id": "notes", "deps": ["plan"], "run": ["echo", "noted"]},
        {"id": "build", "deps": ["plan"], "prompt": "build it"},
    ]}));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "blocked");
    let st = s.status(&id);
    assert_eq!(step(&st, "plan")["status"], "completed");
    assert_eq!(
        step(&st, "notes")["output"],
        "noted",
        "commands cost nothing and run"
    );
    assert_eq!(step(&st, "build")["status"], "blocked");
    assert_eq!(
        step(&st, "build")["attempts"],
        0,
        "no agent attempt started"
    );
    assert!(st["error"].as_str().unwrap().contains("budget"), "{st}");
    assert_eq!(st["max_cost_usd"], 0.05);
    let blocked = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "workflow_blocked")
        .unwrap();
    assert_eq!(blocked["data"]["reason"], "budget");
    assert_eq!(
        budget_flag(&sb, "plan"),
        ["0.0500"],
        "the run got the budget as its limit"
    );

    let err = s.call_err(
        "invoke_resume",
        json!({"thread_id": id, "max_cost_usd": 0.01}),
    );
    assert!(err.contains("above what the workflow has cost"), "{err}");
    s.call(
        "invoke_resume",
        json!({"thread_id": id, "max_cost_usd": 1.0}),
    );
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    assert_eq!(step(&st, "build")["status"], "completed");
    assert_eq!(st["max_cost_usd"], 1.0);
}

#[test]
fn a_run_that_reaches_its_own_limit_blocks_the_step_instead_of_retrying() {
    let sb = Sandbox::new();
    let mut s = fake_agent_server(&sb);
    let id = s.start(json!({"steps": [
        {"id": "big", "prompt": "a lot [[cost:0.5]]", "max_cost_usd": 0.1},
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    let st = s.status(&id);
    let big = step(&st, "big");
    assert_eq!(big["status"], "blocked");
    assert_eq!(big["attempts"], 1, "not retried");
    assert!(
        big["error"].as_str().unwrap().starts_with("budget:"),
        "{big}"
    );
}

#[test]
fn a_retry_due_after_the_budget_was_spent_is_blocked_not_started() {
    let sb = Sandbox::new();
    let mut s = fake_agent_server(&sb);
    let id = s.start(json!({"defaults": {"max_cost_usd": 0.05}, "steps": [
        {"id": "flaky", "prompt": "try [[fail-once]] [[cost:0.05]]",
         "retry": {"max_attempts": 3, "initial_interval_ms": 50, "jitter": false}},
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "blocked");
    let st = s.status(&id);
    let flaky = step(&st, "flaky");
    assert_eq!(flaky["attempts"], 1, "the retry never started");
    assert!(
        flaky["error"].as_str().unwrap().starts_with("budget:"),
        "{flaky}"
    );
    s.call(
        "invoke_resume",
        json!({"thread_id": id, "max_cost_usd": 0.5}),
    );
    assert_eq!(s.wait_done(&id)["status"], "completed");
}
