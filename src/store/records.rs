//! The records the store keeps and the change sets the engine hands it.
//!
//! Invariant: these types carry no behaviour that depends on a backend; a [`Changes`] means
//! the same thing on every backend and is committed as one unit, fenced by its workflow's
//! epoch.

use crate::api::{AttemptOutcome, NewEvent, StepStatus, ThreadId, WorkflowStatus};

/// A row of `workflows`.
#[derive(Debug, Clone)]
pub struct WorkflowRow {
    pub id: ThreadId,
    pub name: Option<String>,
    pub status: WorkflowStatus,
    pub step_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    pub owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub epoch: i64,
    pub cancel_requested: bool,
    pub last_activity_at: Option<i64>,
    pub total_cost_usd: f64,
    /// The workflow's cost budget as raised by a resume (`None`: the definition's).
    pub max_cost_usd: Option<f64>,
}

/// The durable state of one step of one workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    pub step_id: String,
    pub idx: i64,
    pub status: StepStatus,
    /// Attempts started, all time.
    pub attempts: i64,
    /// Failed attempts since the step was last reset; the retry budget reads this.
    pub failures: i64,
    /// Attempts cut short by a dead owner since the step was last reset.
    pub crashes: i64,
    pub session_id: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub last_activity_at: Option<i64>,
    /// The exit code of the latest finished attempt (`steps.ID.exit_code` in conditions).
    pub exit_code: Option<i64>,
    /// What only some rows ever carry; `None` (one pointer) for the rest. Read through the
    /// accessors below and changed through [`StepRow::edit_extra`]; made with
    /// [`StepExtra::boxed`], which keeps it `None` when nothing is set.
    pub extra: Option<Box<StepExtra>>,
}

/// The fields of a [`StepRow`] that most rows never set: a resume's instructions for an
/// agent step, a `for_each` step's items and a human step's question and answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepExtra {
    /// Extra instructions for the next attempt of an agent step, from a resume.
    pub guidance: Option<String>,
    /// Agent-option overrides (JSON) for the next attempts, from a resume.
    pub agent_overrides: Option<String>,
    /// The next attempt starts a new agent session instead of resuming `session_id`.
    pub fresh_session: bool,
    /// A `for_each` step's items (a JSON array), stored once when the step expands into its
    /// instances.
    pub items: Option<String>,
    /// A human step's open question (JSON: kind, rendered prompt, since, deadline,
    /// on_timeout), written when it starts waiting.
    pub waiting: Option<String>,
    /// An answer to the open question (JSON), recorded by whoever answered and applied by
    /// the workflow's driver.
    pub answer: Option<String>,
}

impl StepExtra {
    /// Boxed only when something is set.
    pub fn boxed(self) -> Option<Box<StepExtra>> {
        (self != StepExtra::default()).then(|| Box::new(self))
    }
}

impl StepRow {
    pub fn new(step_id: &str, idx: usize) -> StepRow {
        StepRow {
            step_id: step_id.to_owned(),
            idx: idx as i64,
            status: StepStatus::Pending,
            attempts: 0,
            failures: 0,
            crashes: 0,
            session_id: None,
            started_at: None,
            finished_at: None,
            output: None,
            error: None,
            last_activity_at: None,
            exit_code: None,
            extra: None,
        }
    }

    /// Changes the rare fields; the box is made only when one is set, and given back when
    /// none is left.
    pub fn edit_extra(&mut self, f: impl FnOnce(&mut StepExtra)) {
        let mut extra = self.extra.take().map(|b| *b).unwrap_or_default();
        f(&mut extra);
        self.extra = extra.boxed();
    }

    pub fn extra(&self) -> Option<&StepExtra> {
        self.extra.as_deref()
    }

    pub fn guidance(&self) -> Option<&str> {
        self.extra.as_ref()?.guidance.as_deref()
    }

    pub fn agent_overrides(&self) -> Option<&str> {
        self.extra.as_ref()?.agent_overrides.as_deref()
    }

    pub fn fresh_session(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| x.fresh_session)
    }

    pub fn items(&self) -> Option<&str> {
        self.extra.as_ref()?.items.as_deref()
    }

    pub fn waiting(&self) -> Option<&str> {
        self.extra.as_ref()?.waiting.as_deref()
    }

    pub fn answer(&self) -> Option<&str> {
        self.extra.as_ref()?.answer.as_deref()
    }
}

/// One attempt of a step. Written when it starts (`running`) and again when it ends; the
/// second write keeps the recorded start time.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub step_id: String,
    pub number: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub stderr: Option<String>,
    pub session_id: Option<String>,
    /// As reported by the agent CLI (cumulative per session); the store charges the
    /// difference to what earlier attempts of the same session were charged.
    pub cost_usd: Option<f64>,
    pub num_turns: Option<i64>,
    pub owner: Option<String>,
}

impl AttemptRow {
    pub fn new(step_id: &str, number: i64, started_at: i64, outcome: AttemptOutcome) -> Self {
        AttemptRow {
            step_id: step_id.to_owned(),
            number,
            started_at,
            finished_at: None,
            outcome,
            exit_code: None,
            error: None,
            stderr: None,
            session_id: None,
            cost_usd: None,
            num_turns: None,
            owner: None,
        }
    }
}

/// A process that may hold leases.
#[derive(Debug, Clone)]
pub struct OwnerRow {
    pub id: String,
    pub pid: i64,
    pub host: String,
    pub heartbeat_at: i64,
    /// The owner's lease length: its heartbeat is stale once older than this.
    pub lease_ms: i64,
}

/// A new workflow: stored by its driver's first commit, or left unowned (`owner: None`) for
/// a worker process to adopt.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub id: ThreadId,
    pub name: Option<String>,
    /// The compiled definition (JSON).
    pub definition: String,
    pub step_ids: Vec<String>,
    pub owner: Option<String>,
    pub lease_expires_at: Option<i64>,
}

/// A workflow's new status; `release` also drops its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub status: WorkflowStatus,
    pub error: Option<String>,
    pub release: bool,
}

/// Changes to one workflow, committed together (one step boundary).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Steps whose every mutable field is written.
    pub steps: Vec<StepRow>,
    pub attempts: Vec<AttemptRow>,
    pub events: Vec<NewEvent>,
    pub status: Option<StatusChange>,
    /// Rows deleted, with their attempts, before `steps` is written: the instances of a
    /// `for_each` step that expands afresh, the iterations of a loop that starts over.
    pub dropped: Vec<String>,
    /// A new cost budget for the workflow (a resume that raises `max_cost_usd`).
    pub max_cost_usd: Option<f64>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
            && self.dropped.is_empty()
            && self.attempts.is_empty()
            && self.events.is_empty()
            && self.status.is_none()
            && self.max_cost_usd.is_none()
    }

    /// Records `row` as changed, replacing an earlier copy in this change set.
    pub fn step(&mut self, row: &StepRow) {
        match self.steps.iter_mut().find(|s| s.step_id == row.step_id) {
            Some(s) => *s = row.clone(),
            None => self.steps.push(row.clone()),
        }
    }

    pub fn event(&mut self, event: NewEvent) {
        self.events.push(event);
    }

    pub fn set_status(&mut self, status: WorkflowStatus, error: Option<String>, release: bool) {
        self.status = Some(StatusChange {
            status,
            error,
            release,
        });
    }
}

/// The right of an owner to write a workflow: it holds the lease at this epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub id: ThreadId,
    pub owner: String,
    pub epoch: i64,
}

/// Taking a workflow's lease: succeeds only if its epoch is still `expected_epoch`, so two
/// processes cannot both take it; the epoch is then bumped (the new fencing token).
#[derive(Debug, Clone)]
pub struct Claim {
    pub owner: String,
    pub expected_epoch: i64,
    pub lease_until: i64,
    /// The lease's end as stored when the claimer judged it over (an adoption's
    /// [`Adoptable::lease_stored`]): the claim then also fails if a renewal has changed it
    /// since, so an owner that woke and renewed in between keeps its workflow.
    pub expected_lease: Option<i64>,
}

/// A workflow as the engine starts from: its row, its steps in order, its definition.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub workflow: WorkflowRow,
    pub steps: Vec<StepRow>,
    /// The compiled definition (JSON).
    pub definition: String,
}

/// A workflow's events after a cursor, with its status read before them.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub status: WorkflowStatus,
    pub step_count: i64,
    pub events: Vec<crate::api::Event>,
}

/// A workflow that should be running and is not owned by the asking process.
#[derive(Debug, Clone)]
pub struct Adoptable {
    pub id: ThreadId,
    pub owner_id: Option<String>,
    /// The owner's record, if it still has one.
    pub owner: Option<OwnerRow>,
    pub epoch: i64,
    pub lease_expires_at: i64,
    /// `lease_expires_at` as stored (0 for none, not moved onto the reader's clock), for
    /// [`Claim::expected_lease`].
    pub lease_stored: i64,
}

/// What an owner learns when it renews its leases.
#[derive(Debug, Clone, Default)]
pub struct Renewal {
    /// Workflows it still holds; their leases now run a lease length from the renewal.
    pub held: Vec<ThreadId>,
    /// Workflows that still name it but whose lease ended before the renewal, which did not
    /// extend them (only on a store shared by machines): another process may be adopting
    /// them, so the owner must stop driving them and claim them again to go on.
    pub ended: Vec<ThreadId>,
    /// Held workflows another process asked to cancel.
    pub cancels: Vec<ThreadId>,
}

/// One workflow of a monitor listing.
#[derive(Debug, Clone)]
pub struct MonitorRow {
    pub workflow: WorkflowRow,
    pub steps: Vec<StepRow>,
    /// The definition, read only for running workflows (stall thresholds, estimates).
    pub definition: Option<String>,
}

/// A monitor listing: the rows, the counts per status and the owners of active rows.
#[derive(Debug, Clone, Default)]
pub struct MonitorRows {
    pub rows: Vec<MonitorRow>,
    /// Where the next page of a filtered listing starts, if there may be one.
    pub next_cursor: Option<i64>,
    pub counts: Vec<(WorkflowStatus, i64)>,
    pub owners: Vec<OwnerRow>,
}

/// A filtered listing of workflows (the HTTP API's list), newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Any of these statuses (`None`: every status).
    pub statuses: Option<Vec<WorkflowStatus>>,
    /// Exactly this workflow name.
    pub name: Option<String>,
    /// A substring of the thread id or the name.
    pub q: Option<String>,
    pub limit: i64,
    /// The `next_cursor` of the previous page.
    pub before: Option<i64>,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Yes,
    NotFound,
    /// Not deleted: the workflow is queued or running.
    Active(WorkflowStatus),
}

/// Upper bounds (seconds) of the step duration histogram of `/metrics`.
pub const STEP_DURATION_BUCKETS_S: &[f64] = &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// Finished attempts bucketed by duration (cumulative counts per bucket).
#[derive(Debug, Clone, Default)]
pub struct DurationBuckets {
    pub buckets: Vec<i64>,
    pub count: i64,
    pub sum_ms: i64,
}

/// Counts for `/metrics`, read from the store at scrape time.
#[derive(Debug, Clone, Default)]
pub struct MetricCounts {
    pub workflows: Vec<(WorkflowStatus, i64)>,
    pub attempts: Vec<(AttemptOutcome, i64)>,
    pub running_steps: i64,
    pub step_durations: DurationBuckets,
}

/// Commit latency as the writer measured it (since this process opened the store).
#[derive(Debug, Clone, Default)]
pub struct CommitStats {
    /// Cumulative counts per bucket of [`COMMIT_BUCKETS_S`].
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_us: u64,
    /// The latest commit's latency, microseconds (None before the first).
    pub last_us: Option<u64>,
}

/// Upper bounds (seconds) of the commit latency histogram.
pub const COMMIT_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_rows_extra_is_boxed_only_while_a_rare_field_is_set() {
        let mut row = StepRow::new("review", 0);
        row.edit_extra(|x| x.guidance = None);
        assert!(
            row.extra().is_none(),
            "clearing an unset field makes no box"
        );
        row.edit_extra(|x| x.answer = Some("\"yes\"".into()));
        assert_eq!(row.answer(), Some("\"yes\""));
        row.edit_extra(|x| x.fresh_session = true);
        assert!(row.fresh_session());
        row.edit_extra(|x| x.answer = None);
        assert!(row.extra().is_some(), "fresh_session is still set");
        row.edit_extra(|x| x.fresh_session = false);
        assert!(
            row.extra().is_none(),
            "the box is given back once nothing is set"
        );
        assert_eq!(row, StepRow::new("review", 0));
    }
}
