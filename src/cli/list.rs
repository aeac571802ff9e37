//! `baton list`: workflows of the database — a coloured table on a terminal, one plain line
//! each on a pipe — and `baton list --saved`.

use std::io::IsTerminal;
use std::process::ExitCode;

use console::{Style, pad_str, style};

use super::CliError;
use crate::api::{MonitoredWorkflow, WorkflowStatus};
use crate::engine::{Engine, MonitorFilter};

fn status_style(s: WorkflowStatus) -> Style {
    match s {
        WorkflowStatus::Completed => Style::new().green(),
        WorkflowStatus::Failed => Style::new().red(),
        WorkflowStatus::Running => Style::new().cyan(),
        WorkflowStatus::Queued => Style::new().dim(),
        _ => Style::new().yellow(),
    }
}

/// Columns padded by their printed width (colours excluded), status coloured, flags in red.
fn table(workflows: &[MonitoredWorkflow]) {
    let header = ["THREAD ID", "STATUS", "STEPS", "STARTED", "NAME", "FLAGS"];
    let rows: Vec<[String; 6]> = workflows
        .iter()
        .map(|w| {
            [
                w.thread_id.to_string(),
                w.status.as_str().to_owned(),
                format!("{}/{}", w.progress.done, w.progress.total),
                w.started_at.replace('T', " ").chars().take(19).collect(),
                w.name.clone().unwrap_or_else(|| "-".to_owned()),
                w.flags.join(","),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(console::measure_text_width(cell));
        }
    }
    let line = |cells: [String; 6]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| pad_str(c, widths[i], console::Alignment::Left, None).into_owned())
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "{}",
        style(line(header.map(str::to_owned))).bold().underlined()
    );
    for (w, mut r) in workflows.iter().zip(rows) {
        let pad =
            |i: usize, s: &str| pad_str(s, widths[i], console::Alignment::Left, None).into_owned();
        r[0] = style(pad(0, &r[0])).dim().to_string();
        r[1] = status_style(w.status).apply_to(pad(1, &r[1])).to_string();
        r[5] = style(&r[5]).red().to_string();
        // Already padded cells keep their width: pad_str measures without colours.
        println!("{}", line(r));
    }
}

pub(super) async fn list(engine: &Engine, all: bool, limit: i64) -> Result<ExitCode, CliError> {
    let view = engine
        .monitor(MonitorFilter {
            status: None,
            include_finished: all,
            limit,
        })
        .await?;
    if std::io::stdout().is_terminal() {
        if !view.workflows.is_empty() {
            table(&view.workflows);
        }
    } else {
        for w in &view.workflows {
            println!(
                "{}  {:<11} {}/{}  {}  {}{}",
                w.thread_id,
                w.status.as_str(),
                w.progress.done,
                w.progress.total,
                w.started_at,
                w.name.as_deref().unwrap_or("-"),
                if w.flags.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", w.flags.join(", "))
                }
            );
        }
    }
    if view.workflows.is_empty() {
        eprintln!(
            "no workflows{}",
            if all { "" } else { " active (use --all)" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton list --saved`: the saved workflows, then every broken file with its problems.
pub(super) fn saved(base: &std::path::Path) -> Result<ExitCode, CliError> {
    let library = crate::saved::Library::new(base);
    let listing = library.scan();
    for w in &listing.workflows {
        let inputs: Vec<String> = w
            .signature
            .inputs
            .iter()
            .map(|i| {
                if i.required() {
                    i.name.clone()
                } else {
                    format!("[{}]", i.name)
                }
            })
            .collect();
        println!(
            "{}  {}  {} step(s)  inputs: {}  {}{}",
            w.name,
            w.origin.as_str(),
            w.step_count,
            if inputs.is_empty() {
                "-".to_owned()
            } else {
                inputs.join(" ")
            },
            w.path.display(),
            w.shadows
                .iter()
                .map(|p| format!("  (hides {})", p.display()))
                .collect::<String>()
        );
    }
    for b in &listing.bad {
        eprintln!("{}", b.report());
    }
    if listing.workflows.is_empty() && listing.bad.is_empty() {
        let dirs: Vec<String> = library
            .dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        eprintln!(
            "no saved workflows (save definitions in {})",
            dirs.join(" or ")
        );
    }
    Ok(if listing.bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
