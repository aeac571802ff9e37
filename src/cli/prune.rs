//! `baton prune`: delete finished workflows now, in the same small batches the background
//! retention uses.

use std::process::ExitCode;
use std::time::Duration;

use super::{CliError, FinishedStatus};
use crate::engine::{Engine, PruneRequest};

pub(super) async fn prune(
    engine: &Engine,
    older_than: Duration,
    status: Option<FinishedStatus>,
) -> Result<ExitCode, CliError> {
    let deleted = engine
        .prune(PruneRequest {
            older_than,
            statuses: status.map(|s| vec![s.status()]),
        })
        .await?;
    println!("deleted {deleted} finished workflow(s)");
    Ok(ExitCode::SUCCESS)
}
