//! Opening the store and the engine a command needs, and the background worker's loop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{CliError, EngineUse, GlobalArgs, Stop};
use crate::engine::{self, Engine, EngineConfig};
use crate::store::{Durability, Store};

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
        // Steps beyond what the open-file limit holds would fail to start: cap them instead.
        let fit = engine::raise_fd_limit();
        let mut max_steps = self.max_concurrent_steps.max(1);
        if max_steps > fit {
            tracing::warn!(
                requested = max_steps,
                allowed = fit,
                "--max-concurrent-steps is above what the open-file limit (ulimit -n) allows; \
                 running at most {fit} steps at once"
            );
            max_steps = fit;
        }
        Ok(EngineConfig {
            max_concurrent_steps: max_steps,
            agent_command,
            output_cap: self.output_cap,
            kill_grace: Duration::from_secs_f64(self.kill_grace_s.clamp(0.0, 600.0)),
            lease: Duration::from_millis(self.lease_ms.max(100)),
            ..EngineConfig::default()
        })
    }

    /// The background retention of long-running processes.
    pub fn retention(&self) -> Result<engine::Retention, CliError> {
        let days = self.retention_days;
        if !days.is_finite() || days < 0.0 {
            return Err(CliError::Other(format!(
                "--retention-days must be 0 or more, got {days}"
            )));
        }
        Ok(engine::Retention {
            max_age: Duration::from_secs_f64((days * 86_400.0).min(1e12)),
            every: Duration::from_secs_f64(self.retention_interval_s.clamp(0.05, 86_400.0)),
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
        args.extend([
            "--retention-days".to_owned(),
            self.retention_days.to_string(),
            "--retention-interval-s".to_owned(),
            self.retention_interval_s.to_string(),
        ]);
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
        if matches!(
            usage,
            EngineUse::Serve | EngineUse::ServeInProcess | EngineUse::Worker | EngineUse::Ui
        ) {
            engine.start_retention(self.retention()?);
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
