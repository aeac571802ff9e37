//! `baton list`: workflows of the database, one line each.

use std::process::ExitCode;

use super::CliError;
use crate::engine::{Engine, MonitorFilter};

pub(super) async fn list(engine: &Engine, all: bool, limit: i64) -> Result<ExitCode, CliError> {
    let view = engine
        .monitor(MonitorFilter {
            status: None,
            include_finished: all,
            limit,
        })
        .await?;
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
