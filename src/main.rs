//! `baton`: argument parsing, tracing setup, then the MCP server or a terminal command.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use baton::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // stdout belongs to JSON-RPC in `serve`: logs go to stderr only.
    let filter = match &cli.global.log_level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async move {
        match cli.command {
            Command::Serve => {
                let engine = cli.global.open_engine(true).await.map_err(anyhow_cli)?;
                baton::mcp::serve_stdio(engine).await?;
                Ok(ExitCode::SUCCESS)
            }
            _ => cli::run(cli).await.map_err(anyhow_cli),
        }
    });
    // Dropping the runtime would wait for the blocking read on stdin, which cannot be
    // cancelled: after SIGTERM the server would hang until its client closed the pipe.
    runtime.shutdown_timeout(std::time::Duration::from_millis(250));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn anyhow_cli(e: cli::CliError) -> anyhow::Error {
    anyhow::anyhow!(cli::report(&e))
}
