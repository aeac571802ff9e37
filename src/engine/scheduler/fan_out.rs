//! Fan-out: a `for_each` step expands, once, into instances `ID[0]`, `ID[1]`, … — one per
//! item — which run like steps of their own (attempts, retries, sessions, outputs), at most
//! `max_parallel` at a time; the step itself is their aggregate.
//!
//! Invariant: the item list is evaluated once, when the step is ready, and stored on the
//! step's row in the same change set that creates its instances, so a crash, an adoption or
//! a resume never expands differently; the step settles exactly when every instance has —
//! `completed` with the JSON array of their outputs in item order, or `failed` if one failed.

use std::collections::{BTreeMap, HashMap};

use super::Scheduler;
use super::condition::step_value;
use crate::api::{EventData, EventKind, NewEvent, StepStatus};
use crate::store::{Changes, StepRow};
use crate::workflow::{MAX_ITEMS, Scope, instance_id, parse_instance, parse_iteration};

/// Where a row comes from: its step in the definition, and for an instance its item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    /// Index of the step in the definition; `usize::MAX` for a row no step defines.
    pub def: usize,
    /// For an instance `ID[i]`, `i`.
    pub item: Option<usize>,
    /// For a step of a `repeat` group (`ID#k`), `k`.
    pub iteration: Option<u32>,
}

/// The instances of one expanded `for_each` step.
#[derive(Debug, Default)]
pub(super) struct Fan {
    pub items: Vec<serde_json::Value>,
    /// Row of each instance, by item index.
    pub rows: Vec<usize>,
    /// Instances not yet completed, skipped or failed.
    pub unsettled: usize,
    /// Instances with an attempt in flight.
    pub running: usize,
    pub max_parallel: Option<u32>,
}

impl Fan {
    pub(super) fn has_room(&self) -> bool {
        self.max_parallel.is_none_or(|m| self.running < m as usize)
    }
}

/// Whether an instance in this status no longer keeps its step from settling.
fn settled(status: StepStatus) -> bool {
    matches!(
        status,
        StepStatus::Completed | StepStatus::Skipped | StepStatus::Failed
    )
}

/// Each row's origin, and the fans of the expanded steps, from stored rows.
pub(super) fn origins(
    def: &crate::workflow::Workflow,
    steps: &[StepRow],
    index: &HashMap<String, usize>,
) -> (Vec<Origin>, BTreeMap<usize, Fan>) {
    let mut fans: BTreeMap<usize, Fan> = BTreeMap::new();
    for (r, row) in steps.iter().enumerate() {
        let (Some(items), Some(d)) = (row.items(), def.position(&row.step_id)) else {
            continue;
        };
        let items: Vec<serde_json::Value> = serde_json::from_str(items).unwrap_or_else(|e| {
            tracing::error!(step = %row.step_id, error = %e, "stored for_each items are unreadable");
            Vec::new()
        });
        fans.insert(
            r,
            Fan {
                rows: vec![usize::MAX; items.len()],
                items,
                max_parallel: def.steps[d].for_each.as_ref().and_then(|f| f.max_parallel),
                ..Fan::default()
            },
        );
    }
    let origin = steps
        .iter()
        .enumerate()
        .map(|(r, row)| {
            if let Some(d) = def.position(&row.step_id) {
                return Origin {
                    def: d,
                    item: None,
                    iteration: None,
                };
            }
            if let Some((step, k)) = parse_iteration(&row.step_id) {
                return Origin {
                    def: def.position(step).unwrap_or(usize::MAX),
                    item: None,
                    iteration: Some(k),
                };
            }
            let Some((parent, i)) = parse_instance(&row.step_id) else {
                return Origin {
                    def: usize::MAX,
                    item: None,
                    iteration: None,
                };
            };
            let d = def.position(parent).unwrap_or(usize::MAX);
            if let Some(fan) = index.get(parent).and_then(|p| fans.get_mut(p))
                && let Some(slot) = fan.rows.get_mut(i)
            {
                *slot = r;
                if !settled(row.status) {
                    fan.unsettled += 1;
                }
            }
            Origin {
                def: d,
                item: Some(i),
                iteration: None,
            }
        })
        .collect();
    (origin, fans)
}

impl Scheduler {
    /// Adds a row created while the workflow runs (an instance, an iteration's step);
    /// returns its index.
    pub(super) fn add_row(&mut self, row: StepRow, origin: Origin) -> usize {
        let r = self.steps.len();
        self.index.insert(row.step_id.clone(), r);
        self.steps.push(row);
        self.origin.push(origin);
        self.retry_at.push(None);
        self.stalled.push(false);
        r
    }

    /// The `for_each` step a row is an instance of (its row), if it is one.
    pub(super) fn parent_of(&self, idx: usize) -> Option<usize> {
        self.origin.get(idx)?.item?;
        let (parent, _) = parse_instance(&self.steps[idx].step_id)?;
        self.index.get(parent).copied()
    }

    /// Whether instance row `idx` may start now (its step has room under `max_parallel`).
    pub(super) fn instance_has_room(&self, idx: usize) -> bool {
        self.parent_of(idx)
            .and_then(|p| self.fans.get(&p))
            .is_none_or(Fan::has_room)
    }

    /// The item of instance row `idx`.
    pub(super) fn item_of(&self, idx: usize) -> Option<(&serde_json::Value, usize)> {
        let i = self.origin.get(idx)?.item?;
        let fan = self.fans.get(&self.parent_of(idx)?)?;
        Some((fan.items.get(i)?, i))
    }

    /// Expands ready `for_each` step `idx`: evaluates and stores its items and creates its
    /// instances, pending; an empty list completes it at once. `Err` is why it cannot.
    pub(super) fn expand(&mut self, ch: &mut Changes, idx: usize, now: i64) -> Result<(), String> {
        let Some(step) = self.step_def(idx) else {
            return Err("the step is not in the definition".to_owned());
        };
        let Some(fan) = &step.for_each else {
            return Err("the step has no for_each".to_owned());
        };
        let scope = Scope {
            inputs: &self.def.inputs,
            steps: fan
                .items
                .steps()
                .iter()
                .filter_map(|id| {
                    let row = &self.steps[*self.index.get(id)?];
                    Some((id.clone(), step_value(row, usize::MAX)))
                })
                .collect(),
            failed: false,
            iteration: None,
        };
        let max_parallel = fan.max_parallel;
        let items = fan
            .items
            .items(&scope)
            .map_err(|e| format!("for_each {:?}: {e}", fan.items.source()))?;
        if items.len() > MAX_ITEMS {
            return Err(format!(
                "for_each {:?} gave {} items; at most {MAX_ITEMS} are allowed",
                fan.items.source(),
                items.len()
            ));
        }
        let stored = serde_json::to_string(&items).map_err(|e| e.to_string())?;
        let step_id = self.steps[idx].step_id.clone();
        let row = &mut self.steps[idx];
        row.edit_extra(|x| x.items = Some(stored));
        row.status = StepStatus::Running;
        row.started_at.get_or_insert(now);
        row.finished_at = None;
        row.output = None;
        row.error = None;
        ch.step(row);
        ch.event(NewEvent::step(
            EventKind::StepStarted,
            &step_id,
            None,
            EventData {
                total: Some(items.len() as i64),
                ..Default::default()
            },
        ));
        let def = self.origin[idx].def;
        let first_idx = self.steps.iter().map(|s| s.idx).max().unwrap_or(0) + 1;
        let mut rows = Vec::with_capacity(items.len());
        for i in 0..items.len() {
            let id = instance_id(&step_id, i);
            let mut inst = StepRow::new(&id, 0);
            inst.idx = first_idx + i as i64;
            ch.steps.push(inst.clone());
            let origin = Origin {
                def,
                item: Some(i),
                iteration: None,
            };
            rows.push(self.add_row(inst, origin));
        }
        let empty = rows.is_empty();
        self.fans.insert(
            idx,
            Fan {
                unsettled: rows.len(),
                rows,
                items,
                running: 0,
                max_parallel,
            },
        );
        if empty {
            self.aggregate(ch, idx, now);
        }
        Ok(())
    }

    /// Counts the start of an attempt of instance row `idx`.
    pub(super) fn instance_started(&mut self, idx: usize) {
        if let Some(fan) = self.parent_of(idx).and_then(|p| self.fans.get_mut(&p)) {
            fan.running += 1;
        }
    }

    /// Counts the end of an attempt of instance row `idx` (`was_running`: its attempt was in
    /// flight) and settles its step once every instance has settled.
    pub(super) fn instance_ended(&mut self, ch: &mut Changes, idx: usize, now: i64) {
        let Some(p) = self.parent_of(idx) else {
            return;
        };
        let status = self.steps[idx].status;
        let Some(fan) = self.fans.get_mut(&p) else {
            return;
        };
        fan.running = fan.running.saturating_sub(1);
        if settled(status) {
            fan.unsettled = fan.unsettled.saturating_sub(1);
            if fan.unsettled == 0 {
                self.aggregate(ch, p, now);
            }
        }
    }

    /// Settles the expanded steps whose instances all settled while no driver ran (a resume
    /// that skipped the last failed instance).
    pub(super) fn aggregate_settled(&mut self, ch: &mut Changes, now: i64) {
        let due: Vec<usize> = self
            .fans
            .iter()
            .filter(|(p, f)| f.unsettled == 0 && self.steps[**p].status == StepStatus::Running)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.aggregate(ch, p, now);
        }
    }

    /// Settles expanded step `p` from its instances: completed with the JSON array of their
    /// outputs in item order, or failed naming the instances that failed.
    fn aggregate(&mut self, ch: &mut Changes, p: usize, now: i64) {
        let Some(fan) = self.fans.get(&p) else {
            return;
        };
        let mut outputs = Vec::with_capacity(fan.rows.len());
        let mut failed = Vec::new();
        for &r in &fan.rows {
            let Some(row) = self.steps.get(r) else {
                outputs.push(serde_json::Value::String(String::new()));
                continue;
            };
            let out = row.output.as_deref().unwrap_or_default().trim_end();
            outputs.push(serde_json::Value::String(out.to_owned()));
            if row.status == StepStatus::Failed {
                let error = row.error.as_deref().unwrap_or("unknown error");
                failed.push(format!("{}: {}", row.step_id, crate::api::tail(error, 200)));
            }
        }
        let total = fan.rows.len();
        let output = serde_json::Value::Array(outputs).to_string();
        if failed.is_empty() {
            let data = EventData {
                total: Some(total as i64),
                ..Default::default()
            };
            self.complete_without_attempt(ch, p, output, now, data);
        } else {
            let error = format!(
                "{} of {total} instances failed: {}",
                failed.len(),
                failed.join("; ")
            );
            self.steps[p].output = Some(output);
            let data = EventData {
                reason: Some("an instance failed".to_owned()),
                ..Default::default()
            };
            self.settle(ch, p, StepStatus::Failed, now, Some(error), data);
        }
    }
}
