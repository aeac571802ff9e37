//! The live terminal view of `baton run`, `resume` and `watch`: a header line, then one line
//! per step — a spinner while it runs, its elapsed time, its attempt and the latest tool use,
//! and a mark with its duration once it stopped — redrawn in place; at the end the final
//! step's output. On a pipe the same events are plain lines instead (see `follow`).
//!
//! Invariant: the view only draws what the events say; it never reads or decides state
//! beyond the status read once at the start (the step list) and once at the end (the output).

use std::collections::BTreeMap;
use std::time::Duration;

use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::api::{Event, EventKind, WorkflowStatus, WorkflowView};

/// Redraws per second; a spinner ticks at this rate too.
const TICK: Duration = Duration::from_millis(120);
/// Characters of a tool use shown on a step's line.
const ACTIVITY_CHARS: usize = 60;

/// What one step line shows.
#[derive(Debug, Clone, Default)]
struct StepLine {
    attempt: i64,
    activity: Option<String>,
}

pub(super) struct Live {
    multi: MultiProgress,
    header: ProgressBar,
    bars: BTreeMap<String, ProgressBar>,
    lines: BTreeMap<String, StepLine>,
    width: usize,
    title: String,
    total: usize,
    done: usize,
}

fn running_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

fn still_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn cut(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

impl Live {
    /// A view of `view`'s steps, drawn on stdout; `replay` when the events to come start
    /// from the beginning of the log (so none is counted twice).
    pub fn new(view: &WorkflowView, replay: bool) -> Live {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(8));
        let width = view
            .steps
            .iter()
            .map(|s| s.id.chars().count())
            .max()
            .unwrap_or(4)
            .clamp(4, 40);
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let title = match &view.name {
            Some(n) => format!("{} {}", style(n).bold(), style(&view.thread_id).dim()),
            None => style(&view.thread_id).bold().to_string(),
        };
        let mut live = Live {
            multi,
            header,
            bars: BTreeMap::new(),
            lines: BTreeMap::new(),
            width,
            title,
            total: view.steps.len(),
            done: if replay {
                0
            } else {
                view.progress.done.max(0) as usize
            },
        };
        for s in &view.steps {
            let bar = live.multi.add(ProgressBar::new_spinner());
            bar.set_style(still_style());
            bar.set_prefix(format!("  {:<w$}", s.id, w = width));
            bar.set_message(style("pending").dim().to_string());
            live.bars.insert(s.id.clone(), bar);
            live.lines.insert(s.id.clone(), StepLine::default());
        }
        live.draw_header(None);
        live
    }

    fn draw_header(&self, status: Option<WorkflowStatus>) {
        let state = match status {
            Some(WorkflowStatus::Completed) => style("completed").green().to_string(),
            Some(WorkflowStatus::Failed) => style("failed").red().to_string(),
            Some(s) if s.is_terminal() => style(s.as_str()).yellow().to_string(),
            _ => style("running").cyan().to_string(),
        };
        self.header.set_message(format!(
            "{}  {}  {}/{} steps",
            self.title, state, self.done, self.total
        ));
    }

    fn stopped(&self, step: &str, mark: String, text: String) {
        if let Some(bar) = self.bars.get(step) {
            bar.disable_steady_tick();
            bar.set_style(still_style());
            bar.set_prefix(format!("{mark} {:<w$}", step, w = self.width));
            bar.set_message(text);
            bar.tick();
        }
    }

    fn running_message(&self, step: &str) -> String {
        let line = self.lines.get(step).cloned().unwrap_or_default();
        let mut msg = String::new();
        if line.attempt > 1 {
            msg.push_str(
                &style(format!("attempt {}", line.attempt))
                    .yellow()
                    .to_string(),
            );
            msg.push_str("  ");
        }
        if let Some(a) = &line.activity {
            msg.push_str(&style(cut(a, ACTIVITY_CHARS)).dim().to_string());
        }
        msg
    }

    /// Draws what `events` change.
    pub fn show(&mut self, events: &[Event]) {
        for e in events {
            self.apply(e);
        }
    }

    fn apply(&mut self, e: &Event) {
        use EventKind as K;
        let Some(step) = e.step_id.clone() else {
            if let K::WorkflowResumed = e.kind {
                self.done = 0;
            }
            return;
        };
        let data = e.data.clone().unwrap_or_default();
        match e.kind {
            K::StepStarted => {
                if let Some(line) = self.lines.get_mut(&step) {
                    line.attempt = e.attempt.unwrap_or(1);
                    line.activity = None;
                }
                let msg = self.running_message(&step);
                if let Some(bar) = self.bars.get(&step) {
                    bar.set_style(running_style());
                    bar.set_prefix(format!("{:<w$}", step, w = self.width));
                    bar.reset_elapsed();
                    bar.set_message(msg);
                    bar.enable_steady_tick(TICK);
                }
            }
            K::StepProgress => {
                if let Some(line) = self.lines.get_mut(&step) {
                    line.activity = data.message.clone();
                }
                let msg = self.running_message(&step);
                if let Some(bar) = self.bars.get(&step) {
                    bar.set_message(msg);
                }
            }
            K::StepRetrying => {
                let text = format!(
                    "attempt {} failed; retrying in {:.1}s",
                    e.attempt.unwrap_or(1),
                    data.delay_ms.unwrap_or(0) as f64 / 1000.0
                );
                if let Some(bar) = self.bars.get(&step) {
                    bar.set_message(style(text).yellow().to_string());
                }
            }
            K::StepCompleted => {
                self.done += 1;
                let secs = data.duration_ms.unwrap_or(0) as f64 / 1000.0;
                let attempts = match e.attempt {
                    Some(n) if n > 1 => format!(" (attempt {n})"),
                    _ => String::new(),
                };
                self.stopped(
                    &step,
                    style("✓").green().to_string(),
                    format!("completed in {secs:.1}s{attempts}"),
                );
            }
            K::StepSkipped => {
                self.done += 1;
                self.stopped(
                    &step,
                    style("-").dim().to_string(),
                    style("skipped").dim().to_string(),
                );
            }
            K::StepFailed => self.stopped(
                &step,
                style("✗").red().to_string(),
                style(format!(
                    "failed: {}",
                    cut(data.error.as_deref().unwrap_or(""), 120)
                ))
                .red()
                .to_string(),
            ),
            K::StepBlocked => self.stopped(
                &step,
                style("!").yellow().to_string(),
                style(format!(
                    "blocked: {}",
                    cut(data.reason.as_deref().unwrap_or(""), 120)
                ))
                .yellow()
                .to_string(),
            ),
            K::StepCancelled => self.stopped(
                &step,
                style("-").yellow().to_string(),
                style("cancelled").yellow().to_string(),
            ),
            _ => {}
        }
        self.draw_header(None);
    }

    /// Leaves the lines on screen with the final status, then prints the last step's
    /// output (the workflow's result) below them.
    pub fn finish(&mut self, status: WorkflowStatus, view: Option<&WorkflowView>) {
        for bar in self.bars.values() {
            bar.disable_steady_tick();
        }
        self.draw_header(Some(status));
        for bar in self.bars.values() {
            bar.abandon();
        }
        self.header.abandon();
        let last = view.and_then(|v| {
            v.steps
                .iter()
                .rev()
                .find_map(|s| s.output.as_deref().filter(|o| !o.trim().is_empty()))
        });
        if let Some(out) = last {
            println!();
            println!("{}", out.trim_end());
        }
    }
}
