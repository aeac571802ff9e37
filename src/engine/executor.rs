//! Executors: turn a prepared attempt into a process and its result into an [`Outcome`].
//!
//! Invariant: rendered values reach processes only as argv elements, as environment
//! variables a shell script expands, or on stdin; nothing here builds a shell string from
//! step outputs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::outcome::{AttemptDetail, FailureClass, Outcome, STDERR_TAIL, SignalKind};
use super::process::{self, Ending, OWNER_ENV, ProcessSpec};
use super::signals::Signals;
use super::{agent, structured};
use crate::api::{ThreadId, tail};
use crate::workflow::{AgentOptions, SuccessCheck};

/// Settings every attempt shares.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Program and leading arguments of the agent CLI (default `claude`).
    pub agent_command: Vec<String>,
    pub output_cap: usize,
    pub kill_grace: Duration,
    pub owner_id: String,
    /// Complete every attempt at once without a process (engine benchmarks).
    pub noop: bool,
    /// The live tails of the command attempts running here.
    pub tails: Arc<super::live::LiveTails>,
}

/// What an attempt runs, after templating.
#[derive(Debug, Clone)]
pub enum Prepared {
    Run(Vec<String>),
    /// A script and the variables its references expand (`BATON_REF_1=value`, …).
    Shell {
        script: String,
        env: Vec<(String, String)>,
    },
    Agent {
        prompt: String,
        options: AgentOptions,
        /// Session to continue with `--resume`.
        resume: Option<String>,
    },
    /// A child workflow to start (or find) and await; run by the engine, not a process.
    Workflow {
        thread_id: String,
        file: Option<PathBuf>,
        definition: Option<serde_json::Value>,
        inputs: BTreeMap<String, String>,
    },
}

/// One attempt of one step, ready to run.
#[derive(Debug, Clone)]
pub struct AttemptSpec {
    pub workflow_id: ThreadId,
    pub step_idx: usize,
    pub step_id: String,
    pub number: i64,
    pub prepared: Prepared,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub success: SuccessCheck,
    /// The output must be JSON (matching `output_schema`, if any).
    pub output_json: bool,
    /// For an agent step, also passed to the CLI as its structured-output schema.
    pub output_schema: Option<serde_json::Value>,
    /// For an agent step, the most this run may cost (`--max-budget-usd`): the step's
    /// `max_cost_usd` or what is left of the workflow's, whichever is less.
    pub max_budget_usd: Option<f64>,
}

impl AttemptSpec {
    /// The agent session this attempt continues, if any.
    pub fn resume_session(&self) -> Option<&str> {
        match &self.prepared {
            Prepared::Agent { resume, .. } => resume.as_deref(),
            _ => None,
        }
    }
}

/// Runs one attempt to its end. The spec is freed once the process is started: a running
/// attempt holds its process, its output so far and what judges its end, nothing more.
/// `gate` refuses the spawn once this process may no longer hold the workflow's lease (see
/// [`process::ProcessSpec::gate`]); a stopped attempt is refused as well.
pub async fn execute(
    cfg: &ExecConfig,
    spec: Box<AttemptSpec>,
    stop: &CancellationToken,
    gate: Option<process::SpawnGate>,
    signals: Arc<Signals>,
) -> Outcome {
    let started = Instant::now();
    if cfg.noop {
        return Outcome::Succeeded {
            output: String::new(),
            detail: AttemptDetail::default(),
        };
    }
    let (mut running, judge) = match launch(cfg, spec, stop, gate, signals, started) {
        Ok(launched) => launched,
        Err(outcome) => return *outcome,
    };
    let ending = running.wait(stop).await;
    judge.outcome(running, ending)
}

/// What decides an attempt's outcome once its process has ended.
struct Judge {
    started: Instant,
    /// `None`: the default check (a zero exit code), which most steps have. Boxed, like the
    /// schema: a waiting attempt keeps a pointer for what few steps set.
    success: Option<Box<SuccessCheck>>,
    timeout: Option<Duration>,
    output_json: bool,
    output_schema: Option<Box<serde_json::Value>>,
    kind: Kind,
}

/// The check of a step that sets none.
static DEFAULT_CHECK: SuccessCheck = SuccessCheck {
    contains: Vec::new(),
    not_contains: Vec::new(),
    regex: None,
    exit_codes: Vec::new(),
};

enum Kind {
    /// The agent's stream-json, parsed as it arrives.
    Agent(Arc<std::sync::Mutex<agent::StreamState>>),
    /// The command's live tail, closed when the attempt ends.
    Command(super::live::TailGuard),
}

impl Judge {
    fn outcome(self, running: process::Running, ending: std::io::Result<Ending>) -> Outcome {
        let ending = match ending {
            Ok(e) => e,
            Err(e) => {
                return Outcome::Failed {
                    class: FailureClass::Retryable,
                    error: format!("lost track of the step's process: {e}"),
                    detail: AttemptDetail {
                        duration_ms: Some(self.started.elapsed().as_millis() as i64),
                        ..Default::default()
                    },
                };
            }
        };
        let r = running.finish(ending);
        let success = self.success.as_deref().unwrap_or(&DEFAULT_CHECK);
        let out = match self.kind {
            Kind::Agent(stream) => agent::outcome(&r, &stream, success, self.started.elapsed()),
            Kind::Command(tail) => {
                drop(tail);
                command_outcome(r, success, self.timeout, self.started)
            }
        };
        structured::check(out, self.output_json, self.output_schema.as_deref())
    }
}

/// Builds the attempt's command and starts it (synchronously: nothing of the spec outlives
/// this call but what [`Judge`] keeps).
fn launch(
    cfg: &ExecConfig,
    spec: Box<AttemptSpec>,
    stop: &CancellationToken,
    gate: Option<process::SpawnGate>,
    signals: Arc<Signals>,
    started: Instant,
) -> Result<(process::Running, Judge), Box<Outcome>> {
    let AttemptSpec {
        workflow_id,
        step_idx,
        step_id,
        number,
        prepared,
        cwd,
        mut env,
        timeout,
        success,
        output_json,
        output_schema,
        max_budget_usd,
    } = *spec;
    env.insert(OWNER_ENV.into(), cfg.owner_id.clone());
    env.insert("BATON_THREAD_ID".into(), workflow_id.to_string());
    env.insert("BATON_STEP_ID".into(), step_id.clone());
    env.insert("BATON_ATTEMPT".into(), number.to_string());
    let mut stdin = None;
    let (program, args, is_agent) = match prepared {
        Prepared::Run(mut argv) => {
            if argv.is_empty() {
                return Err(Box::new(fatal(
                    "`run` has no program to execute".into(),
                    started,
                )));
            }
            let program = argv.remove(0);
            (program, argv, false)
        }
        Prepared::Shell { script, env: refs } => {
            // After the step's own env, so a step cannot shadow the values it reads.
            env.extend(refs);
            ("sh".to_owned(), vec!["-c".to_owned(), script], false)
        }
        Prepared::Agent {
            prompt,
            options,
            resume,
        } => {
            let Some((p, lead)) = cfg.agent_command.split_first() else {
                return Err(Box::new(fatal(
                    "the agent command is empty".into(),
                    started,
                )));
            };
            let mut args = lead.to_vec();
            args.extend(agent::cli_args(&options, resume.as_deref()));
            if let Some(schema) = &output_schema {
                args.extend(["--json-schema".to_owned(), schema.to_string()]);
            }
            if let Some(usd) = max_budget_usd {
                args.extend(["--max-budget-usd".to_owned(), format!("{usd:.4}")]);
            }
            // On stdin, never in argv: not parseable as an option, not in /proc/PID/cmdline.
            stdin = Some(prompt.into_bytes());
            (p.clone(), args, true)
        }
        Prepared::Workflow { .. } => {
            return Err(Box::new(fatal(
                "a sub-workflow is run by the engine, not as a process".into(),
                started,
            )));
        }
    };
    let send = move |kind| signals.send(step_idx, number, kind);
    let (sink, live, kind): (process::LineSink, _, _) = if is_agent {
        let stream = agent::StreamState::shared();
        (
            agent::line_sink(stream.clone(), send),
            None,
            Kind::Agent(stream),
        )
    } else {
        let tail = cfg.tails.open(&workflow_id, &step_id);
        (
            Box::new(move |_: &str| send(SignalKind::Activity)),
            Some(tail.live()),
            Kind::Command(tail),
        )
    };
    let pspec = ProcessSpec {
        program,
        args,
        cwd,
        env,
        timeout,
        output_cap: cfg.output_cap,
        kill_grace: cfg.kill_grace,
        stdin,
        gate: gate.map(|g| g.unless_stopped(stop.clone())),
        live,
    };
    let program = pspec.program.clone();
    let running = process::start(pspec, Some(sink))
        .map_err(|e| Box::new(spawn_failure(&program, e, started)))?;
    Ok((
        running,
        Judge {
            started,
            success: (success != DEFAULT_CHECK).then(|| Box::new(success)),
            timeout,
            output_json,
            output_schema: output_schema.map(Box::new),
            kind,
        },
    ))
}

pub(super) fn fatal(error: String, started: Instant) -> Outcome {
    Outcome::Failed {
        class: FailureClass::Fatal,
        error,
        detail: AttemptDetail {
            duration_ms: Some(started.elapsed().as_millis() as i64),
            ..Default::default()
        },
    }
}

fn spawn_failure(program: &str, e: std::io::Error, started: Instant) -> Outcome {
    if process::is_not_now(&e) {
        // Never started: the next owner runs it.
        return Outcome::Stopped {
            detail: AttemptDetail {
                duration_ms: Some(started.elapsed().as_millis() as i64),
                ..Default::default()
            },
        };
    }
    let (class, hint) = match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => (
            FailureClass::Fatal,
            "invalid configuration: check the program name, PATH and cwd",
        ),
        _ => (
            FailureClass::Retryable,
            "the machine refused a new process now: raise ulimit -n or lower --max-concurrent-steps, then retry the step",
        ),
    };
    Outcome::Failed {
        class,
        error: format!("cannot start {program:?}: {e} ({hint})"),
        detail: AttemptDetail {
            duration_ms: Some(started.elapsed().as_millis() as i64),
            ..Default::default()
        },
    }
}

fn command_outcome(
    r: process::ProcessResult,
    success: &SuccessCheck,
    timeout: Option<Duration>,
    started: Instant,
) -> Outcome {
    let stderr_tail = tail(r.stderr.trim_end(), STDERR_TAIL).to_owned();
    let detail = AttemptDetail {
        exit_code: r.exit_code(),
        stderr: (!r.stderr.is_empty()).then(|| r.stderr.clone()),
        duration_ms: Some(started.elapsed().as_millis() as i64),
        ..Default::default()
    };
    let with_stderr = |msg: String| {
        if stderr_tail.is_empty() {
            msg
        } else {
            format!("{msg}: {stderr_tail}")
        }
    };
    match r.ending {
        Ending::Stopped => Outcome::Stopped { detail },
        Ending::TimedOut => Outcome::Failed {
            class: FailureClass::TimedOut,
            error: format!(
                "timed out after {}s",
                timeout.map(|t| t.as_secs_f64()).unwrap_or_default()
            ),
            detail,
        },
        Ending::Signalled(sig) => Outcome::Failed {
            class: FailureClass::Retryable,
            error: with_stderr(format!("killed by signal {sig}")),
            detail,
        },
        Ending::Exited(code) if !success.exit_ok(code) => Outcome::Failed {
            class: FailureClass::Retryable,
            error: with_stderr(format!("exit status {code}")),
            detail,
        },
        Ending::Exited(_) => match success.check_output(&r.stdout) {
            Some(reason) => Outcome::Failed {
                class: FailureClass::Retryable,
                error: format!("success check failed: {reason}"),
                detail,
            },
            None => Outcome::Succeeded {
                output: r.stdout,
                detail,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_an_attempt_keeps_no_box_for_is_the_default_check() {
        assert_eq!(DEFAULT_CHECK, SuccessCheck::default());
    }
}
