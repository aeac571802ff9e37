//! Loops: a `repeat` group runs its steps as one iteration — rows `ID#1`, `ID#2`, … created
//! when the iteration starts — and after each iteration evaluates `until` over that
//! iteration's steps: true completes the group, false starts the next iteration, until
//! `max_iterations` ran.
//!
//! Invariant: an iteration's rows are created in the change set that starts it, and the
//! next iteration starts in the change set that settles the previous one, so a crash in
//! iteration k keeps iterations before k and resumes iteration k at its first unfinished
//! step; steps of one iteration read their siblings of the same iteration, and
//! `{previous.ID.output}` the one before.

use std::collections::{BTreeMap, HashMap};

use super::Scheduler;
use super::condition::step_value;
use crate::api::{EventData, EventKind, NewEvent, StepStatus};
use crate::store::{Changes, StepRow};
use crate::workflow::{Action, Scope, Workflow, iteration_id};

/// A started `repeat` group.
#[derive(Debug, Default)]
pub(super) struct Group {
    /// Definition index of each of the group's steps, in definition order.
    pub subs: Vec<usize>,
    /// The current iteration (1-based).
    pub iteration: u32,
    /// Rows of the current iteration, by position in `subs` (`usize::MAX`: missing).
    pub rows: Vec<usize>,
}

/// The started groups, from stored rows: the current iteration is the newest one with rows.
pub(super) fn groups(
    def: &Workflow,
    def_index: &BTreeMap<String, usize>,
    steps: &[StepRow],
    index: &HashMap<String, usize>,
    origin: &[super::fan_out::Origin],
) -> BTreeMap<usize, Group> {
    let mut out = BTreeMap::new();
    for (r, row) in steps.iter().enumerate() {
        let Some(&d) = def_index.get(&row.step_id) else {
            continue;
        };
        let Action::Repeat(repeat) = &def.steps[d].action else {
            continue;
        };
        let subs: Vec<usize> = repeat
            .steps
            .iter()
            .filter_map(|s| def_index.get(s).copied())
            .collect();
        let iteration = origin
            .iter()
            .filter(|o| subs.contains(&o.def))
            .filter_map(|o| o.iteration)
            .max()
            .unwrap_or(0);
        if iteration == 0 {
            continue;
        }
        let rows = subs
            .iter()
            .map(|&s| {
                index
                    .get(&iteration_id(&def.steps[s].id, iteration))
                    .copied()
                    .unwrap_or(usize::MAX)
            })
            .collect();
        out.insert(
            r,
            Group {
                subs,
                iteration,
                rows,
            },
        );
    }
    out
}

/// How an iteration ended.
enum Ended {
    /// Something still runs, waits or can start.
    No,
    Failed(String),
    Settled,
}

impl Scheduler {
    /// The row holding dep `dep` of row `idx`: a sibling in the same iteration for a step
    /// inside a group, else the dep's own row.
    pub(super) fn dep_row(&self, idx: usize, dep: &str) -> Option<usize> {
        if let Some(k) = self.origin.get(idx).and_then(|o| o.iteration) {
            let sibling = self
                .def_index
                .get(dep)
                .and_then(|&d| self.def.steps[d].group.as_ref())
                .is_some_and(|g| self.step_def(idx).and_then(|s| s.group.as_ref()) == Some(g));
            if sibling {
                return self.index.get(&iteration_id(dep, k)).copied();
            }
        }
        self.index.get(dep).copied()
    }

    /// The row of sibling `step` in the iteration before row `idx`'s.
    pub(super) fn previous_row(&self, idx: usize, step: &str) -> Option<usize> {
        let k = self.origin.get(idx)?.iteration?;
        self.index
            .get(&iteration_id(step, k.checked_sub(1)?))
            .copied()
    }

    /// For a row inside a group: its iteration and the previous iteration's `steps` values
    /// (the variables `iteration` and `previous` of its expressions).
    pub(super) fn iteration_scope(
        &self,
        idx: usize,
    ) -> Option<(u32, serde_json::Map<String, serde_json::Value>)> {
        let k = self.origin.get(idx)?.iteration?;
        let group = self.step_def(idx)?.group.as_ref()?;
        let Action::Repeat(repeat) = &self.def.steps[*self.def_index.get(group)?].action else {
            return None;
        };
        Some((k, self.previous_values(&repeat.steps, k)))
    }

    /// `steps` values of `subs` in iteration `k - 1` (empty for the first).
    fn previous_values(
        &self,
        subs: &[String],
        k: u32,
    ) -> serde_json::Map<String, serde_json::Value> {
        subs.iter()
            .filter_map(|s| {
                let r = self.index.get(&iteration_id(s, k.checked_sub(1)?))?;
                Some((s.clone(), step_value(&self.steps[*r], usize::MAX)))
            })
            .collect()
    }

    /// Starts iteration `k` of group row `g`: a pending row per step of the group. Agent
    /// steps carry their session over from the previous iteration.
    pub(super) fn start_iteration(&mut self, ch: &mut Changes, g: usize, k: u32, now: i64) {
        let Some(Action::Repeat(repeat)) = self.step_def(g).map(|s| &s.action) else {
            return;
        };
        let subs: Vec<usize> = repeat
            .steps
            .iter()
            .filter_map(|s| self.def_index.get(s).copied())
            .collect();
        let mut next_idx = self.steps.iter().map(|s| s.idx).max().unwrap_or(0);
        let mut rows = Vec::with_capacity(subs.len());
        for &d in &subs {
            let sub = &self.def.steps[d];
            let id = iteration_id(&sub.id, k);
            next_idx += 1;
            let mut row = StepRow::new(&id, 0);
            row.idx = next_idx;
            if matches!(sub.action, Action::Prompt(_))
                && let Some(prev) = self.previous_row_of(&sub.id, k)
            {
                row.session_id.clone_from(&self.steps[prev].session_id);
            }
            ch.step(&row);
            let origin = super::fan_out::Origin {
                def: d,
                item: None,
                iteration: Some(k),
            };
            rows.push(self.add_row(row, origin));
        }
        let row = &mut self.steps[g];
        row.status = StepStatus::Running;
        row.started_at.get_or_insert(now);
        row.finished_at = None;
        row.output = None;
        row.error = None;
        ch.step(row);
        ch.event(NewEvent::step(
            EventKind::StepStarted,
            &row.step_id,
            None,
            EventData {
                iteration: Some(i64::from(k)),
                ..Default::default()
            },
        ));
        self.groups.insert(
            g,
            Group {
                subs,
                iteration: k,
                rows,
            },
        );
    }

    fn previous_row_of(&self, step: &str, k: u32) -> Option<usize> {
        self.index
            .get(&iteration_id(step, k.checked_sub(1)?))
            .copied()
    }

    /// Ends the iterations that settled: the group completes, fails, or starts its next
    /// iteration. True if anything changed.
    pub(super) fn advance_groups(&mut self, ch: &mut Changes, now: i64) -> bool {
        if self.starved {
            return false;
        }
        let running: Vec<usize> = self
            .groups
            .keys()
            .copied()
            .filter(|g| self.steps[*g].status == StepStatus::Running)
            .collect();
        let mut changed = false;
        for g in running {
            match self.iteration_end(g) {
                Ended::No => {}
                Ended::Failed(error) => {
                    self.end_group(ch, g, StepStatus::Failed, Some(error), now);
                    changed = true;
                }
                Ended::Settled => {
                    self.after_iteration(ch, g, now);
                    changed = true;
                }
            }
        }
        changed
    }

    fn iteration_end(&self, g: usize) -> Ended {
        let Some(group) = self.groups.get(&g) else {
            return Ended::No;
        };
        let rows: Vec<&StepRow> = group
            .rows
            .iter()
            .filter_map(|&r| self.steps.get(r))
            .collect();
        if rows
            .iter()
            .any(|r| r.status.is_current() || r.status == StepStatus::Blocked)
        {
            return Ended::No;
        }
        let failed: Vec<String> = rows
            .iter()
            .filter(|r| r.status == StepStatus::Failed && !self.is_done(r))
            .map(|r| {
                let e = r.error.as_deref().unwrap_or("unknown error");
                format!("step {} failed: {}", r.step_id, crate::api::tail(e, 300))
            })
            .collect();
        let k = group.iteration;
        if !failed.is_empty() {
            return Ended::Failed(format!("iteration {k}: {}", failed.join("; ")));
        }
        if rows.iter().any(|r| r.status == StepStatus::Pending) {
            // Pending with nothing current: it waits for a step that can never run.
            return Ended::No;
        }
        Ended::Settled
    }

    /// Iteration `k` of group `g` settled without a failure: `until` decides.
    fn after_iteration(&mut self, ch: &mut Changes, g: usize, now: i64) {
        let Some(Action::Repeat(repeat)) = self.step_def(g).map(|s| &s.action) else {
            return;
        };
        let Some(group) = self.groups.get(&g) else {
            return;
        };
        let k = group.iteration;
        let max = repeat.max_iterations;
        let verdict = match &repeat.until {
            None => Ok(false),
            Some(until) => {
                let mut steps: serde_json::Map<String, serde_json::Value> = until
                    .steps()
                    .iter()
                    .filter_map(|id| {
                        let r = self.index.get(id)?;
                        Some((id.clone(), step_value(&self.steps[*r], usize::MAX)))
                    })
                    .collect();
                for (pos, &r) in group.rows.iter().enumerate() {
                    if let (Some(row), Some(&d)) = (self.steps.get(r), group.subs.get(pos)) {
                        steps.insert(self.def.steps[d].id.clone(), step_value(row, usize::MAX));
                    }
                }
                let scope = Scope {
                    inputs: &self.def.inputs,
                    steps,
                    failed: false,
                    iteration: Some((k, self.previous_values(&repeat.steps, k))),
                };
                until
                    .condition(&scope)
                    .map_err(|e| format!("until {:?}: {e}", until.source()))
            }
        };
        let has_until = repeat.until.is_some();
        match verdict {
            Ok(true) => self.end_group(ch, g, StepStatus::Completed, None, now),
            Ok(false) if k < max => self.start_iteration(ch, g, k + 1, now),
            Ok(false) if !has_until => self.end_group(ch, g, StepStatus::Completed, None, now),
            Ok(false) => {
                let until = repeat
                    .until
                    .as_ref()
                    .map(|u| u.source())
                    .unwrap_or_default();
                let error = format!("until {until:?} never held in {max} iterations");
                self.end_group(ch, g, StepStatus::Failed, Some(error), now);
            }
            Err(error) => self.end_group(ch, g, StepStatus::Failed, Some(error), now),
        }
    }

    /// Settles group `g`; its output is that of the last step of its last iteration that
    /// completed (in definition order).
    fn end_group(
        &mut self,
        ch: &mut Changes,
        g: usize,
        status: StepStatus,
        error: Option<String>,
        now: i64,
    ) {
        let (k, output) = match self.groups.get(&g) {
            Some(group) => (
                group.iteration,
                group
                    .rows
                    .iter()
                    .rev()
                    .filter_map(|&r| self.steps.get(r))
                    .find(|r| r.status == StepStatus::Completed)
                    .and_then(|r| r.output.clone()),
            ),
            None => (0, None),
        };
        let data = EventData {
            iteration: Some(i64::from(k)),
            ..Default::default()
        };
        let output = output.unwrap_or_default();
        if status == StepStatus::Completed {
            self.complete_without_attempt(ch, g, output, now, data);
        } else {
            self.steps[g].output = Some(output);
            self.settle(ch, g, StepStatus::Failed, now, error, data);
        }
    }
}
