//! Cost budgets: a workflow's `max_cost_usd` gates every new agent attempt on what its agent
//! runs have cost so far; an agent step that would start past it is held, and once nothing
//! else can happen the held steps are blocked (reason `budget`) until a resume raises the
//! budget.
//!
//! Invariant: a step is blocked for budget only on an exact total (the store's, read after
//! the commit that charged the last attempt), never on the in-memory estimate, which may
//! count a resumed session's earlier cost twice; the estimate only ever holds steps back.

use super::Scheduler;
use crate::api::{EventData, EventKind, NewEvent, StepStatus};
use crate::store::Changes;
use crate::workflow::Action;

/// What the scheduler knows of the workflow's spending.
#[derive(Debug, Clone, Default)]
pub(super) struct Budget {
    /// The budget in force (a resume's raised one, else the definition's).
    limit: Option<f64>,
    /// Cost so far: the store's total, plus the reported cost of attempts applied since.
    spent: f64,
    /// `spent` is the store's total (no attempt cost was applied since it was read).
    exact: bool,
    /// Agent steps that were ready but held back by the budget at the last start.
    held: Vec<usize>,
}

impl Budget {
    pub(super) fn new(limit: Option<f64>) -> Budget {
        Budget {
            limit,
            spent: 0.0,
            exact: true,
            held: Vec::new(),
        }
    }
}

impl Scheduler {
    /// The workflow's recorded cost and the budget a resume raised (if any).
    pub(in crate::engine) fn set_budget(&mut self, spent: f64, raised: Option<f64>) {
        if raised.is_some() {
            self.budget.limit = raised;
        }
        self.set_spent(spent);
    }

    /// The store's total cost, read after a commit.
    pub(in crate::engine) fn set_spent(&mut self, spent: f64) {
        self.budget.spent = spent;
        self.budget.exact = true;
    }

    /// Counts an applied attempt's reported cost until the store's total is read again.
    pub(super) fn charge(&mut self, cost: Option<f64>) {
        if let Some(c) = cost.filter(|c| *c > 0.0) {
            self.budget.spent += c;
            self.budget.exact = false;
        }
    }

    /// What is left of the budget (USD), if there is one.
    pub(super) fn budget_left(&self) -> Option<f64> {
        self.budget.limit.map(|l| (l - self.budget.spent).max(0.0))
    }

    /// Whether row `idx` is an agent step that the budget holds back now (recorded).
    pub(super) fn hold_for_budget(&mut self, idx: usize) -> bool {
        let agent = self
            .step_def(idx)
            .is_some_and(|s| matches!(s.action, Action::Prompt(_)));
        let over = self.budget.limit.is_some_and(|l| self.budget.spent >= l);
        if agent && over {
            self.budget.held.push(idx);
        }
        agent && over
    }

    pub(super) fn clear_held(&mut self) {
        self.budget.held.clear();
    }

    /// Steps are held back by the budget and nothing else can happen: true when the total is
    /// exact and they must be blocked now; false when the caller must read the exact total
    /// and try again first.
    pub(in crate::engine) fn budget_blocks(&self) -> Option<bool> {
        (!self.budget.held.is_empty()).then_some(self.budget.exact)
    }

    /// Blocks the held steps (reason `budget`).
    pub(in crate::engine) fn block_for_budget(&mut self, ch: &mut Changes, now: i64) {
        let limit = self.budget.limit.unwrap_or_default();
        let error = format!(
            "budget: the workflow's agent runs cost ${:.4}, reaching its max_cost_usd of ${limit}; resume with a higher max_cost_usd to go on",
            self.budget.spent
        );
        for idx in std::mem::take(&mut self.budget.held) {
            let row = &mut self.steps[idx];
            if !matches!(row.status, StepStatus::Pending | StepStatus::Retrying) {
                continue;
            }
            self.retry_at[idx] = None;
            row.status = StepStatus::Blocked;
            row.error = Some(error.clone());
            row.finished_at = Some(now);
            ch.step(row);
            ch.event(NewEvent::step(
                EventKind::StepBlocked,
                &row.step_id,
                None,
                EventData {
                    reason: Some("budget".to_owned()),
                    error: Some(error.clone()),
                    ..Default::default()
                },
            ));
        }
    }

    /// [`Scheduler::finish`] after a budget block: the `workflow_blocked` event says why.
    pub(in crate::engine) fn finish_over_budget(&mut self, ch: &mut Changes) {
        self.finish(ch);
        if let Some(e) = ch.events.last_mut()
            && e.kind == EventKind::WorkflowBlocked
        {
            e.data.reason = Some("budget".to_owned());
        }
    }
}
