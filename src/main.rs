//! `baton`: argument parsing, tracing setup, the process lifecycle (signals, one engine,
//! one shutdown), then the MCP server or a terminal command.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use baton::cli::{self, Cli, Command, EngineUse, Stop};
use baton::engine::Engine;
use baton::http::HttpConfig;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // stdout belongs to JSON-RPC in `serve`: logs go to stderr only.
    let filter = match &cli.global.log_level {
        Some(level) => EnvFilter::new(level),
        // Routine INFO lines (migrations, recovery) are for logs, not for a person at a
        // terminal: they see warnings and errors unless they ask for more.
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            use std::io::IsTerminal;
            EnvFilter::new(if std::io::stderr().is_terminal() {
                "warn"
            } else {
                "info"
            })
        }),
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
    let result = runtime.block_on(run(cli));
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let usage = cli.command.engine_use();
    if usage == EngineUse::None {
        return cli::run_offline(cli.command).await.map_err(report);
    }
    let stop = Stop::default();
    watch_signals(stop.clone())?;
    // One background worker per SQLite database: a second one leaves at once. A PostgreSQL
    // store takes any number of workers; the lock (per machine) then only tells `baton serve`
    // that one runs here.
    let _worker_lock = match usage {
        EngineUse::Worker => {
            let shared = cli.global.db_url().is_some();
            let db = match cli.global.db_url() {
                Some(url) => baton::store::Store::url_location(&url)?,
                None => std::path::absolute(cli.global.db_path().map_err(report)?)?,
            };
            match baton::engine::WorkerLock::take(&db)? {
                Some(lock) => Some(lock),
                None if shared => None,
                None => {
                    tracing::info!("another worker runs for this database");
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        _ => None,
    };
    let engine = cli.global.open_engine(usage).await.map_err(report)?;
    let result = match &cli.command {
        Command::Serve(args) => {
            let max = args.mcp_protocol.as_ref().and_then(|v| {
                serde_json::from_value::<rmcp::model::ProtocolVersion>(v.as_str().into()).ok()
            });
            serve(&engine, args.http.config(None), max, &stop).await
        }
        Command::Ui(args) => {
            let default = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            ui(&engine, args.http.config(Some(default)), args.open, &stop).await
        }
        Command::Worker { idle_exit_s } => {
            cli::worker(&engine, &stop, std::time::Duration::from_secs(*idle_exit_s))
                .await
                .map_err(report)
        }
        _ => cli::run(cli.command, &engine, &stop).await.map_err(report),
    };
    engine.shutdown().await;
    engine.store().close();
    result
}

/// MCP on stdio, and HTTP beside it when asked; both stop with `stop`, and the HTTP server
/// also stops when the MCP session ends (the host is gone).
async fn serve(
    engine: &Engine,
    http: Option<HttpConfig>,
    max_protocol: Option<rmcp::model::ProtocolVersion>,
    stop: &Stop,
) -> anyhow::Result<ExitCode> {
    let mut links = None;
    let mut server = None;
    if let Some(cfg) = http {
        let bound = baton::http::bind(engine.clone(), cfg, stop.token.clone()).await?;
        eprintln!(
            "baton: HTTP API and dashboard on {}/ (token in {})",
            bound.links().base,
            bound.token_file().display()
        );
        links = Some(bound.links());
        server = Some(tokio::spawn(bound.serve()));
    }
    let result =
        baton::mcp::serve_stdio(engine.clone(), stop.token.clone(), links, max_protocol).await;
    stop.fire(false);
    if let Some(server) = server {
        let _ = server.await;
    }
    result
        .map(|()| ExitCode::SUCCESS)
        .map_err(anyhow::Error::from)
}

/// HTTP only, until SIGTERM or Ctrl-C.
async fn ui(
    engine: &Engine,
    http: Option<HttpConfig>,
    open: bool,
    stop: &Stop,
) -> anyhow::Result<ExitCode> {
    let Some(cfg) = http else {
        anyhow::bail!("baton ui needs an address");
    };
    let bound = baton::http::bind(engine.clone(), cfg, stop.token.clone()).await?;
    let links = bound.links();
    let url = format!("{}/?token={}", links.base, links.token);
    eprintln!("baton: dashboard on {url}");
    if open {
        let spawned = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("baton: cannot open a browser ({e}); open the link above");
        }
    }
    bound.serve().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT fire `stop`; the front-end running decides what each means.
fn watch_signals(stop: Stop) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                stop.fire(false);
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: shutting down");
                stop.fire(true);
            }
        }
    });
    Ok(())
}

fn report(e: cli::CliError) -> anyhow::Error {
    anyhow::anyhow!(cli::report(&e))
}

/// glibc gives each thread that allocates its own arena, up to eight per core, and what one
/// arena frees only that arena reuses: a server whose allocations move between tokio's
/// workers and its blocking threads keeps a partly empty arena for each of them. One arena
/// per core (two at least) keeps a running workflow about 1 KB smaller (BENCHMARKS.md,
/// issue 14); `MALLOC_ARENA_MAX` in the environment still decides.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Some(n) = arena_limit(
        std::env::var_os("MALLOC_ARENA_MAX").as_deref(),
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ) {
        // SAFETY: mallopt only sets one of malloc's parameters, and this runs first in
        // main, before any other thread exists.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, n);
        }
    }
}

/// The arena limit to set: none when the environment sets one, else one per core, two at
/// least.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn arena_limit(env: Option<&std::ffi::OsStr>, cores: usize) -> Option<i32> {
    match env {
        Some(_) => None,
        None => Some(i32::try_from(cores.max(2)).unwrap_or(i32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::arena_limit;

    #[test]
    fn malloc_gets_one_arena_per_core_unless_the_environment_chose() {
        assert_eq!(arena_limit(None, 1), Some(2));
        assert_eq!(arena_limit(None, 2), Some(2));
        assert_eq!(arena_limit(None, 16), Some(16));
        assert_eq!(arena_limit(Some("4".as_ref()), 16), None);
    }
}
