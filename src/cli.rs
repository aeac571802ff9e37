//! The terminal front-end: arguments of `baton serve`, `run`, `status`, `list`, `resume`,
//! `cancel`, `watch`, `validate`, `schema`, and one function per terminal command.
//!
//! Invariant: this module only translates between a terminal and the engine; every state
//! change goes through the same engine calls the MCP tools use. `main` owns the lifecycle:
//! it opens the engine once, runs the command, and shuts the engine down once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::api::{Event, ThreadId, WorkflowStatus};
use crate::engine::{
    self, Engine, EngineConfig, EngineError, MonitorFilter, ResumeMode, ResumeRequest,
    SubmitRequest,
};
use crate::store::{Durability, Store, StoreError};

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
    /// Log filter for stderr (e.g. info, baton=debug); RUST_LOG works too.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
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
    /// Run a workflow file in the foreground, one line per event; exit 0 only if it completes.
    Run {
        file: PathBuf,
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

/// Errors of the CLI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
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

/// The process's stop signal, owned by `main`: SIGTERM or SIGINT fire it; `by_user` says it
/// was Ctrl-C (SIGINT), which `baton run` takes as "cancel this workflow".
#[derive(Clone, Default)]
pub struct Stop {
    pub token: CancellationToken,
    ctrl_c: Arc<AtomicBool>,
}

impl Stop {
    /// Fires the stop; `ctrl_c` when it came from the terminal's Ctrl-C.
    pub fn fire(&self, ctrl_c: bool) {
        if ctrl_c {
            self.ctrl_c.store(true, Ordering::Relaxed);
        }
        self.token.cancel();
    }

    pub fn by_user(&self) -> bool {
        self.ctrl_c.load(Ordering::Relaxed)
    }
}

impl GlobalArgs {
    /// The PostgreSQL URL given as --db or BATON_DB, if it is one.
    pub fn db_url(&self) -> Option<String> {
        let db = self.db.as_ref()?.to_str()?;
        Store::is_url(db).then(|| db.to_owned())
    }

    /// The database path: --db, BATON_DB, or the platform data dir.
    pub fn db_path(&self) -> Result<PathBuf, CliError> {
        if let Some(p) = &self.db {
            return Ok(p.clone());
        }
        directories::ProjectDirs::from("", "", "baton")
            .map(|d| d.data_dir().join("baton.db"))
            .ok_or_else(|| {
                CliError::Other("cannot find a home directory; pass --db or set BATON_DB".into())
            })
    }

    pub fn engine_config(&self) -> Result<EngineConfig, CliError> {
        let agent_command = shell_words::split(&self.agent_command)
            .map_err(|e| CliError::Other(format!("--agent-command: {e}")))?;
        if agent_command.is_empty() {
            return Err(CliError::Other("--agent-command is empty".into()));
        }
        Ok(EngineConfig {
            max_concurrent_steps: self.max_concurrent_steps.max(1),
            agent_command,
            output_cap: self.output_cap,
            kill_grace: Duration::from_secs_f64(self.kill_grace_s.clamp(0.0, 600.0)),
            lease: Duration::from_millis(self.lease_ms.max(100)),
            ..EngineConfig::default()
        })
    }

    /// The global arguments a background worker for the same database runs with.
    fn worker_args(&self, db: &str) -> Vec<String> {
        let mut args = vec![
            "--db".to_owned(),
            db.to_owned(),
            "--agent-command".to_owned(),
            self.agent_command.clone(),
            "--max-concurrent-steps".to_owned(),
            self.max_concurrent_steps.to_string(),
            "--durability".to_owned(),
            match self.durability {
                Durability::Full => "full",
                Durability::Normal => "normal",
            }
            .to_owned(),
            "--output-cap".to_owned(),
            self.output_cap.to_string(),
            "--lease-ms".to_owned(),
            self.lease_ms.to_string(),
            "--kill-grace-s".to_owned(),
            self.kill_grace_s.to_string(),
        ];
        if let Some(level) = &self.log_level {
            args.extend(["--log-level".to_owned(), level.clone()]);
        }
        args
    }

    /// Opens the store and starts an engine for `usage`: servers in process and workers also
    /// take over orphaned workflows; a handing-over server starts the worker when work waits.
    pub async fn open_engine(&self, usage: EngineUse) -> Result<Engine, CliError> {
        let (store, db_arg) = match self.db_url() {
            Some(url) => (Store::connect(&url, self.durability).await?, url),
            None => {
                let db = std::path::absolute(self.db_path()?)
                    .map_err(|e| CliError::Other(format!("--db: {e}")))?;
                let store = Store::open(&db, self.durability)?;
                (store, db.display().to_string())
            }
        };
        let db = store.location().to_owned();
        let execute = !matches!(usage, EngineUse::Serve | EngineUse::Observe);
        let adopt = matches!(usage, EngineUse::ServeInProcess | EngineUse::Worker);
        let cfg = EngineConfig {
            adopt_orphans: adopt,
            execute,
            ..self.engine_config()?
        };
        let engine = Engine::start(store, cfg).await?;
        let exe = std::env::current_exe();
        match &exe {
            Ok(exe) if execute => {
                // On a store other machines share, the reaper also self-fences.
                let fence = engine
                    .store()
                    .is_shared()
                    .then(|| engine::self_fence_after(engine.config().lease));
                if let Err(e) = engine::spawn_reaper(exe, engine.owner_id(), fence) {
                    tracing::warn!(error = %e, "cannot start the reaper; background children of steps may outlive a killed baton");
                }
            }
            Ok(_) if usage == EngineUse::Observe => {}
            Ok(exe) => engine.set_launcher(std::sync::Arc::new(engine::WorkerLauncher::new(
                exe.clone(),
                self.worker_args(&db_arg),
                db.clone(),
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot find baton's own executable to start the reaper or the worker")
            }
        }
        if adopt || usage == EngineUse::Serve {
            // Serve at once; workflows left by stopped processes are taken over meanwhile.
            let recovering = engine.clone();
            tokio::spawn(async move {
                match recovering.recover().await {
                    Ok(adopted) if !adopted.is_empty() => tracing::info!(
                        count = adopted.len(),
                        "resumed workflows left by stopped processes"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "recovery at start-up failed; the periodic scan retries")
                    }
                }
            });
        }
        Ok(engine)
    }
}

/// The background worker: runs until stopped, or until it had nothing to run for `idle`.
pub async fn worker(engine: &Engine, stop: &Stop, idle: Duration) -> Result<ExitCode, CliError> {
    let mut idle_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = stop.token.cancelled() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if idle.is_zero() || engine.active() > 0 {
            idle_since = None;
            continue;
        }
        let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= idle {
            // A last look before leaving: a workflow stored meanwhile is run, not stranded.
            if engine.recover().await?.is_empty() && engine.active() == 0 {
                tracing::info!("idle; the background worker exits");
                return Ok(ExitCode::SUCCESS);
            }
            idle_since = None;
        }
    }
}

/// Runs a command that needs no engine.
pub async fn run_offline(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Reap { owner, fence_ms } => reap(owner, fence_ms.map(Duration::from_millis)).await,
        Command::Schema => {
            println!("{}", pretty(&crate::workflow::workflow_schema()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file, inputs } => validate(&file, inputs),
        other => Err(CliError::Other(format!("{other:?} needs the engine"))),
    }
}

/// Runs a terminal command over an open engine.
pub async fn run(command: Command, engine: &Engine, stop: &Stop) -> Result<ExitCode, CliError> {
    match command {
        Command::Run {
            file,
            inputs,
            thread_id,
        } => run_file(engine, stop, file, inputs, thread_id).await,
        Command::Resume {
            thread_id,
            from_step,
            mode,
            prompt,
            max_cost_usd,
        } => {
            let how = (mode, prompt, max_cost_usd);
            resume(engine, stop, thread_id.into(), from_step, how).await
        }
        Command::Approve {
            thread_id,
            step,
            deny,
            input,
        } => approve(engine, stop, thread_id.into(), step, deny, input).await,
        Command::Watch { thread_id, cursor } => {
            follow(engine, stop, &thread_id.into(), cursor, false).await
        }
        Command::Status { thread_id } => {
            let view = engine.status(&thread_id.into(), 4000).await?;
            println!("{}", pretty(&view));
            Ok(ExitCode::SUCCESS)
        }
        Command::List { all, limit } => list(engine, all, limit).await,
        Command::Cancel { thread_id } => {
            let status = engine.cancel(&ThreadId::from(thread_id.as_str())).await?;
            println!("{thread_id}: {status}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(CliError::Other(format!(
            "{other:?} is not a terminal command"
        ))),
    }
}

async fn reap(owner: String, fence: Option<Duration>) -> Result<ExitCode, CliError> {
    let killed =
        tokio::task::spawn_blocking(move || engine::reap_after_parent_exits(&owner, fence))
            .await
            .unwrap_or(0);
    if killed > 0 {
        tracing::info!(killed, "killed processes left by an exited baton");
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(file: &std::path::Path, inputs: Vec<(String, String)>) -> Result<ExitCode, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Other(format!("cannot read {}: {e}", file.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Other(format!("{} is not valid JSON: {e}", file.display())))?;
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let inputs: BTreeMap<String, String> = inputs.into_iter().collect();
    match crate::workflow::compile(&value, &inputs, &base) {
        Ok(wf) => {
            println!("{}: ok ({} steps)", file.display(), wf.steps.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            eprintln!("{}: {} problem(s)", file.display(), problems.0.len());
            for p in &problems.0 {
                eprintln!("  {p}");
            }
            Ok(ExitCode::from(2))
        }
    }
}

async fn run_file(
    engine: &Engine,
    stop: &Stop,
    file: PathBuf,
    inputs: Vec<(String, String)>,
    thread_id: Option<String>,
) -> Result<ExitCode, CliError> {
    let submitted = engine
        .submit(SubmitRequest {
            file: Some(file),
            inputs: inputs.into_iter().collect(),
            thread_id,
            ..Default::default()
        })
        .await?;
    eprintln!("thread_id {}", submitted.thread_id);
    follow(engine, stop, &submitted.thread_id, 0, true).await
}

async fn resume(
    engine: &Engine,
    stop: &Stop,
    thread_id: ThreadId,
    from_step: Option<String>,
    (mode, prompt, max_cost_usd): (CliResumeMode, Option<String>, Option<f64>),
) -> Result<ExitCode, CliError> {
    // Follow from the current end of the log: only what the resume does is printed.
    let mut cursor = 0;
    loop {
        let page = engine.events(&thread_id, cursor, 10_000).await?;
        if let Some(last) = page.events.last() {
            cursor = last.seq;
        }
        if page.caught_up {
            break;
        }
    }
    let req = ResumeRequest {
        thread_id: thread_id.clone(),
        from_step,
        mode: match mode {
            CliResumeMode::Retry => ResumeMode::Retry,
            CliResumeMode::Skip => ResumeMode::Skip,
        },
        prompt,
        agent: None,
        max_cost_usd,
    };
    engine.resume(req).await?;
    follow(engine, stop, &thread_id, cursor, true).await
}

/// `baton approve`: answers a waiting human step, then follows what the answer sets off.
async fn approve(
    engine: &Engine,
    stop: &Stop,
    thread_id: ThreadId,
    step: String,
    deny: bool,
    input: Option<String>,
) -> Result<ExitCode, CliError> {
    // Follow from the current end of the log: only what the answer sets off is printed.
    let mut cursor = 0;
    loop {
        let page = engine.events(&thread_id, cursor, 10_000).await?;
        if let Some(last) = page.events.last() {
            cursor = last.seq;
        }
        if page.caught_up {
            break;
        }
    }
    let req = engine::AnswerRequest {
        thread_id: thread_id.clone(),
        step: step.clone(),
        approve: Some(!deny),
        input,
    };
    engine.answer(req).await?;
    eprintln!(
        "{thread_id}: {step} {}",
        if deny { "denied" } else { "answered" }
    );
    follow(engine, stop, &thread_id, cursor, true).await
}

async fn list(engine: &Engine, all: bool, limit: i64) -> Result<ExitCode, CliError> {
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

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Prints events from `cursor` until the workflow stops. With `cancel_on_ctrl_c`, Ctrl-C
/// cancels the workflow (it stays resumable) instead of just detaching.
async fn follow(
    engine: &Engine,
    stop: &Stop,
    thread_id: &ThreadId,
    cursor: i64,
    cancel_on_ctrl_c: bool,
) -> Result<ExitCode, CliError> {
    let mut follow = engine.follow(thread_id, cursor);
    loop {
        let until = tokio::time::Instant::now() + Duration::from_secs(3600);
        let page = tokio::select! {
            r = follow.next(1000, until) => r?,
            () = stop.token.cancelled() => {
                if cancel_on_ctrl_c && stop.by_user() {
                    eprintln!("cancelling {thread_id} (resume it with: baton resume {thread_id})");
                    engine.cancel(thread_id).await?;
                    let page = engine.events(thread_id, follow.cursor(), i64::MAX).await?;
                    print_events(&page.events);
                }
                return Ok(ExitCode::from(130));
            }
        };
        print_events(&page.events);
        if page.done() {
            return Ok(if page.status == WorkflowStatus::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
    }
}

fn print_events(events: &[Event]) {
    for e in events {
        println!("{}  {}", e.at, e.describe());
    }
}

/// The error as a short message for the terminal, naming the command to run next.
pub fn report(e: &CliError) -> String {
    match e {
        CliError::Engine(EngineError::Invalid(p)) => format!("invalid workflow:\n{p}"),
        CliError::Engine(EngineError::NotFound { thread_id }) => format!(
            "unknown thread_id {thread_id:?}: no workflow with this id exists in this store (list them with: baton list --all)"
        ),
        CliError::Engine(EngineError::UnknownStep { step, known }) => format!(
            "--from-step {step:?} is not a step of this workflow; its steps are: {}",
            known.join(", ")
        ),
        CliError::Engine(EngineError::Busy { thread_id, status }) => format!(
            "workflow {thread_id} is {status} right now; wait for it to stop or run: baton cancel {thread_id}"
        ),
        CliError::Engine(EngineError::AlreadyCompleted { thread_id }) => format!(
            "workflow {thread_id} already completed; pass --from-step to re-run a step and everything downstream of it"
        ),
        other => other.to_string(),
    }
}
