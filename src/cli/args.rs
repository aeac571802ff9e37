//! The command line: global flags, subcommands and their arguments, and how each command
//! uses the engine. Adding a subcommand is a variant here, an arm in `cli::run`, and a file.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::store::Durability;

/// Durable, resumable multi-step workflows for AI coding agents, over MCP stdio.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Database: an SQLite file (default: the platform data dir, e.g.
    /// ~/.local/share/baton/baton.db) or a PostgreSQL URL (postgres://USER@HOST/DB).
    #[arg(long, env = "BATON_DB", global = true)]
    pub db: Option<PathBuf>,
    /// Agent CLI command for prompt steps (split like a shell would: "claude" or "node cli.js").
    #[arg(
        long,
        env = "BATON_AGENT_COMMAND",
        global = true,
        default_value = "claude"
    )]
    pub agent_command: String,
    /// Steps that may run at once in this process, over all workflows.
    #[arg(
        long,
        env = "BATON_MAX_CONCURRENT_STEPS",
        global = true,
        default_value_t = 32
    )]
    pub max_concurrent_steps: usize,
    /// `full` survives power loss (one fsync per commit); `normal` survives process crashes.
    #[arg(long, env = "BATON_DURABILITY", global = true, value_enum, default_value_t = Durability::Full)]
    pub durability: Durability,
    /// Bytes of each output stream kept per attempt.
    #[arg(long, env = "BATON_OUTPUT_CAP", global = true, default_value_t = 1024 * 1024)]
    pub output_cap: usize,
    /// Lease duration in milliseconds; a dead process's workflows are adopted after it.
    #[arg(long, env = "BATON_LEASE_MS", global = true, default_value_t = 15_000)]
    pub lease_ms: u64,
    /// Seconds between SIGTERM and SIGKILL when stopping a step.
    #[arg(long, env = "BATON_KILL_GRACE_S", global = true, default_value_t = 5.0)]
    pub kill_grace_s: f64,
    /// Log filter for stderr (e.g. info, baton=debug); RUST_LOG works too. Default: info,
    /// or warn when stderr is a terminal.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// `serve`, `worker` and `ui` delete finished workflows older than this many days, in
    /// the background (0: as soon as they finish).
    #[arg(
        long,
        env = "BATON_RETENTION_DAYS",
        global = true,
        default_value_t = 30.0
    )]
    pub retention_days: f64,
    /// Seconds between two background retention passes.
    #[arg(
        long,
        env = "BATON_RETENTION_INTERVAL_S",
        global = true,
        default_value_t = 600.0,
        hide = true
    )]
    pub retention_interval_s: f64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP over stdio (add with: claude mcp add baton -- baton serve); with --http,
    /// the HTTP API and dashboard too. Workflows run in a background worker for the
    /// database, so they outlive the host session.
    Serve(ServeArgs),
    /// Serve only the HTTP API and dashboard over the database (no MCP).
    Ui(UiArgs),
    /// Run workflows of the database in the background (what `baton serve` starts on
    /// demand): adopts queued and orphaned workflows, exits after an idle period.
    Worker {
        /// Seconds without any workflow to run after which the worker exits (0: never).
        #[arg(long, env = "BATON_WORKER_IDLE_S", default_value_t = 600)]
        idle_exit_s: u64,
    },
    /// Run a workflow in the foreground — a file (JSON or YAML) or the name of a saved
    /// workflow — with a live view on a terminal (one line per event on a pipe); exit 0 only
    /// if it completes.
    Run {
        /// A workflow file, or the name of a saved workflow (see `baton list --saved`).
        #[arg(value_name = "FILE|NAME")]
        workflow: String,
        /// An input value, NAME=VALUE (repeatable).
        #[arg(long = "input", short = 'i', value_parser = parse_kv)]
        inputs: Vec<(String, String)>,
        /// Idempotency key; reusing it attaches to the existing workflow.
        #[arg(long)]
        thread_id: Option<String>,
    },
    /// Show a workflow's status as JSON.
    Status { thread_id: String },
    /// List workflows (active ones unless --all).
    List {
        #[arg(long)]
        all: bool,
        /// List the saved workflows (and broken saved files) instead.
        #[arg(long)]
        saved: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Resume a stopped workflow and follow it.
    Resume {
        thread_id: String,
        /// Re-run this step and everything downstream of it.
        #[arg(long)]
        from_step: Option<String>,
        /// `retry` runs failed/blocked steps again; `skip` marks them skipped and continues.
        #[arg(long, value_enum, default_value_t = CliResumeMode::Retry)]
        mode: CliResumeMode,
        /// Guidance for a retried agent step, sent into its resumed session.
        #[arg(long)]
        prompt: Option<String>,
        /// A higher cost budget (USD), for a workflow blocked by its max_cost_usd.
        #[arg(long)]
        max_cost_usd: Option<f64>,
    },
    /// Answer a human step that waits (approve it, deny it, or give the text it asks for),
    /// then follow the workflow.
    Approve {
        thread_id: String,
        step: String,
        /// Deny instead of approving: the step fails.
        #[arg(long)]
        deny: bool,
        /// The text an input step asks for (or a comment on the approval or denial).
        #[arg(long)]
        input: Option<String>,
    },
    /// Cancel a workflow (it stays resumable).
    Cancel { thread_id: String },
    /// Print a workflow's events as they happen, from the start (or after --cursor).
    Watch {
        thread_id: String,
        #[arg(long, default_value_t = 0)]
        cursor: i64,
    },
    /// Check a workflow file and print the problems, if any.
    Validate {
        file: PathBuf,
        #[arg(long = "input", short = 'i', value_parser = parse_kv)]
        inputs: Vec<(String, String)>,
    },
    /// Delete finished workflows (completed, failed, cancelled) with their events, attempts
    /// and output. Queued, running, blocked and interrupted workflows are never deleted.
    Prune {
        /// Only those that finished at least this long ago: 30d, 12h, 45m, 90s, or 0 for all.
        #[arg(long, value_parser = parse_age, default_value = "30d")]
        older_than: Duration,
        /// Only workflows in this status.
        #[arg(long, value_enum)]
        status: Option<FinishedStatus>,
    },
    /// Print the JSON Schema of workflow definitions.
    Schema,
    /// Internal: started by every baton process that runs steps; kills the processes it
    /// started once it exits, even by `kill -9`.
    #[command(name = "__reap", hide = true)]
    Reap {
        owner: String,
        /// Also kill the owner's attempts whenever it sent no heartbeat for this long.
        #[arg(long)]
        fence_ms: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Run workflows in this process instead of the background worker (they are
    /// interrupted when it stops and resumed by the next baton process).
    #[arg(long, env = "BATON_IN_PROCESS", value_parser = clap::builder::FalseyValueParser::new())]
    pub in_process: bool,
    /// Submit and observe only: run no steps here and start no worker (workers elsewhere,
    /// e.g. `baton worker` on other machines sharing a PostgreSQL store, run them). Wins
    /// over --in-process.
    #[arg(long, env = "BATON_NO_EXECUTE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_execute: bool,
    /// Newest MCP protocol version to offer, e.g. 2025-11-25: Claude Code delivers channel
    /// messages (completion pushed to the model) only on 2025-11-25 connections.
    #[arg(long, env = "BATON_MCP_PROTOCOL", value_parser = ["2025-06-18", "2025-11-25", "2026-07-28"])]
    pub mcp_protocol: Option<String>,
}

#[derive(Debug, Args)]
pub struct UiArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Open the dashboard in the default browser (xdg-open).
    #[arg(long)]
    pub open: bool,
}

/// The HTTP server's flags (DESIGN.md §12).
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Serve the HTTP API and dashboard on this address (port 0 picks a free port).
    #[arg(long, env = "BATON_HTTP", value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Allow --http on an address that is not loopback.
    #[arg(long)]
    pub http_allow_remote: bool,
    /// Serve /metrics without the token.
    #[arg(long)]
    pub metrics_public: bool,
    /// Milliseconds of silence on an event stream before a keepalive comment.
    #[arg(
        long,
        env = "BATON_HTTP_KEEPALIVE_MS",
        default_value_t = 15_000,
        hide = true
    )]
    pub http_keepalive_ms: u64,
    /// Milliseconds an event stream client may leave its queue full before it is dropped.
    #[arg(
        long,
        env = "BATON_HTTP_SEND_TIMEOUT_MS",
        default_value_t = 10_000,
        hide = true
    )]
    pub http_send_timeout_ms: u64,
    /// Frames queued per event stream client.
    #[arg(long, env = "BATON_HTTP_QUEUE", default_value_t = 256, hide = true)]
    pub http_queue: usize,
}

impl HttpArgs {
    /// The server's settings on `addr`, or on --http.
    pub fn config(&self, default: Option<std::net::SocketAddr>) -> Option<crate::http::HttpConfig> {
        let addr = self.http.or(default)?;
        Some(crate::http::HttpConfig {
            allow_remote: self.http_allow_remote,
            metrics_public: self.metrics_public,
            keepalive: Duration::from_millis(self.http_keepalive_ms.max(10)),
            send_timeout: Duration::from_millis(self.http_send_timeout_ms.max(10)),
            queue: self.http_queue.max(1),
            ..crate::http::HttpConfig::new(addr)
        })
    }
}

/// The statuses `baton prune --status` takes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FinishedStatus {
    Completed,
    Failed,
    Cancelled,
}

impl FinishedStatus {
    pub fn status(self) -> crate::api::WorkflowStatus {
        use crate::api::WorkflowStatus as S;
        match self {
            FinishedStatus::Completed => S::Completed,
            FinishedStatus::Failed => S::Failed,
            FinishedStatus::Cancelled => S::Cancelled,
        }
    }
}

/// `30d`, `12h`, `45m`, `90s`, or a bare number of days (`0`, `1.5`).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        _ => (s, 'd'),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("expected an age such as 30d, 12h, 45m or 90s, got {s:?}"))?;
    let secs = match unit {
        'd' => n * 86_400.0,
        'h' => n * 3_600.0,
        'm' => n * 60.0,
        's' => n,
        'w' => n * 7.0 * 86_400.0,
        other => return Err(format!("unknown unit {other:?} in {s:?}: use d, h, m or s")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("the age must be 0 or more, got {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs.min(1e12)))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CliResumeMode {
    Retry,
    Skip,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// How a command uses the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineUse {
    /// Not at all (`validate`, `schema`, the reaper).
    None,
    /// The MCP server handing execution to the background worker.
    Serve,
    /// The MCP server that only submits and observes (`--no-execute`).
    Observe,
    /// The MCP server running and adopting workflows itself (`--in-process`).
    ServeInProcess,
    /// The background worker: runs and adopts workflows.
    Worker,
    /// The HTTP-only server (`baton ui`): runs what it starts or resumes, adopts nothing, so
    /// an observer never takes over another session's work.
    Ui,
    /// A terminal command: runs only what it starts.
    Client,
}

impl Command {
    pub fn engine_use(&self) -> EngineUse {
        match self {
            Command::Reap { .. } | Command::Schema | Command::Validate { .. } => EngineUse::None,
            Command::Serve(args) if args.no_execute => EngineUse::Observe,
            Command::Serve(args) if args.in_process => EngineUse::ServeInProcess,
            Command::Serve(_) => EngineUse::Serve,
            Command::Ui(_) => EngineUse::Ui,
            Command::Worker { .. } => EngineUse::Worker,
            _ => EngineUse::Client,
        }
    }
}
