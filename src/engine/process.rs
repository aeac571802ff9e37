//! Child processes of step attempts.
//!
//! Invariant: an attempt's processes never outlive it or the server. Each attempt runs in its
//! own process group with stdin closed (or fed a given payload, then closed) and, where the machine allows it, in its own cgroup
//! ([`contain`]), which holds every process it starts — in a new session (`setsid`) or with
//! `BATON_OWNER` removed from its environment included. Stop and timeout send SIGTERM to the
//! group and the cgroup and SIGKILL after a grace period; when the main process exits, whatever
//! it left behind is killed, which also closes the pipes, so its output is complete. When the
//! server dies, even by `kill -9`, its reaper ([`spawn_reaper`]) kills its cgroups and every
//! process carrying its `BATON_OWNER`; a server adopting a dead owner's work does the same
//! ([`kill_leftovers`]). Without usable cgroups, a process that both leaves the group and drops
//! `BATON_OWNER` is out of reach (docs/durability.md, "Step processes").
//! Output is capped while it is read ([`capture`]), so a step printing gigabytes cannot grow
//! memory; what was read is kept even when a leftover holds a pipe open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

mod capture;
mod child;
mod clone3;
mod contain;

use capture::{Capture, Pipes};
use child::Child;

/// Environment variable naming the owner (server process) that started a child.
pub const OWNER_ENV: &str = "BATON_OWNER";

/// Asked right before a process is spawned; false refuses the spawn with [`NotNow`].
#[derive(Clone)]
pub struct SpawnGate(pub std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl SpawnGate {
    pub fn allows(&self) -> bool {
        (self.0)()
    }

    /// This gate, closed as well once `stop` is cancelled. A lease renewal stops the drivers
    /// of workflows this process lost and extends only the leases it held, so an attempt that
    /// was past its own checks when the process froze cannot start once the process wakes.
    /// The gate is read before `stop` is checked, so a fresh renewal means the stop is seen.
    pub fn unless_stopped(self, stop: CancellationToken) -> SpawnGate {
        SpawnGate(std::sync::Arc::new(move || {
            self.allows() && !stop.is_cancelled()
        }))
    }
}

impl std::fmt::Debug for SpawnGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpawnGate")
    }
}

/// The spawn was refused by the gate (this process may no longer act as owner).
#[derive(Debug)]
pub struct NotNow;

impl std::fmt::Display for NotNow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not started: this process could not renew its lease in time")
    }
}

impl std::error::Error for NotNow {}

/// Whether `e` is a spawn refused by the gate.
pub fn is_not_now(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NotNow>())
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// Bytes of each stream kept; the rest is counted and dropped.
    pub output_cap: usize,
    pub kill_grace: Duration,
    /// Written to the child's stdin, which is then closed; `None` gives it no stdin at all.
    /// Data here stays out of argv, which every user can read in `/proc/PID/cmdline`.
    pub stdin: Option<Vec<u8>>,
    /// Checked as the very last thing before the spawn (after the cgroup and the command are
    /// prepared), so a process paused before it, and woken after another process took its
    /// work over, never starts the attempt.
    pub gate: Option<SpawnGate>,
    /// Receives every chunk of stdout and stderr as it is read (the live tail).
    pub live: Option<std::sync::Arc<super::live::LiveOutput>>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    Stopped,
}

/// A finished process.
#[derive(Debug, Clone)]
pub struct ProcessResult {
    pub ending: Ending,
    pub stdout: String,
    pub stderr: String,
}

impl ProcessResult {
    /// The exit code, when the process exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        match self.ending {
            Ending::Exited(c) => Some(c),
            _ => None,
        }
    }
}

/// Called with each complete stdout line (without the newline) as it arrives.
pub type LineSink = Box<dyn FnMut(&str) + Send>;

/// Runs a process to its end, honouring `stop` and the spec's timeout.
#[cfg(test)]
pub async fn run(
    spec: ProcessSpec,
    stop: &CancellationToken,
    on_line: Option<LineSink>,
) -> std::io::Result<ProcessResult> {
    let mut running = start(spec, on_line)?;
    let ending = running.wait(stop).await?;
    Ok(running.finish(ending))
}

/// A started process, its output being read: [`Running::wait`] awaits its end and
/// [`Running::finish`] gives its result. Dropping it kills whatever it started.
pub struct Running {
    child: Child,
    group: Group,
    out: Capture,
    err: Capture,
    timeout: Option<Duration>,
    kill_grace: Duration,
    /// Feeds the stdin payload, in its own task: a child that never reads must not hold up
    /// reading its output.
    writer: Writer,
}

/// The stdin writer's task, aborted when the attempt is done with, however it ends.
struct Writer(Option<tokio::task::JoinHandle<()>>);

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(w) = &self.0 {
            w.abort();
        }
    }
}

/// Starts the process. Synchronous, and it takes the spec: the program, arguments and
/// environment are freed once the process is started and the stdin payload is handed to the
/// writer, so a running attempt holds only what it needs to await its end.
pub fn start(spec: ProcessSpec, on_line: Option<LineSink>) -> std::io::Result<Running> {
    let (mut child, cgroup) = spawn(&spec)?;
    let ProcessSpec {
        timeout,
        output_cap,
        kill_grace,
        stdin,
        live,
        ..
    } = spec;
    let pid = child.id();
    let writer = Writer(match (child.take_stdin(), stdin) {
        (Some(mut pipe), Some(payload)) => Some(tokio::spawn(async move {
            // A child that exits without reading makes this fail with EPIPE; that is its
            // business, reported by its exit status.
            let _ = pipe.write_all(&payload).await;
        })),
        _ => None,
    });
    let group = Group {
        pgid: pid.map(|id| Pid::from_raw(id as i32)),
        cgroup,
        killed: false,
    };
    let mut out = Capture::new(output_cap, on_line);
    let mut err = Capture::new(output_cap, None);
    if let Some(live) = live {
        out.live = Some((live.clone(), super::live::Stream::Stdout));
        err.live = Some((live, super::live::Stream::Stderr));
    }
    Ok(Running {
        child,
        group,
        out,
        err,
        timeout,
        kill_grace,
        writer,
    })
}

impl Running {
    /// Awaits the end of the main process (or the timeout, or `stop`, which terminate it),
    /// kills whatever it left running and reads its output to the end.
    pub async fn wait(&mut self, stop: &CancellationToken) -> std::io::Result<Ending> {
        let Running {
            child,
            group,
            out,
            err,
            timeout,
            kill_grace,
            ..
        } = self;
        // Both pipes are read by this same task, beside the wait: no extra tasks per attempt.
        let mut readers = Pipes::new((child.take_stdout(), out), (child.take_stderr(), err));
        // Boxed, and only made for a step with a timeout: a waiting attempt without one
        // holds no timer.
        let mut timer = timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        let mut read_all = false;
        let ending = loop {
            tokio::select! {
                _ = &mut readers, if !read_all => read_all = true,
                status = child.wait() => break exit_ending(status?),
                () = async {
                    match timer.as_mut() {
                        Some(t) => t.await,
                        None => std::future::pending().await,
                    }
                } => {
                    terminate(child, group, *kill_grace).await;
                    break Ending::TimedOut;
                }
                () = stop.cancelled() => {
                    terminate(child, group, *kill_grace).await;
                    break Ending::Stopped;
                }
            }
        };
        // Whatever the main process left running goes with it; that also closes the pipes.
        group.kill();
        if !read_all {
            // Only a process that escaped both the group and the cgroup can still hold a
            // pipe; keep what was read and stop waiting for it.
            let _ = tokio::time::timeout(READ_AFTER_EXIT, &mut readers).await;
        }
        Ok(ending)
    }

    /// The result of a process that ended this way: its captured output.
    pub fn finish(self, ending: Ending) -> ProcessResult {
        let Running {
            group,
            out,
            err,
            writer,
            ..
        } = self;
        drop((writer, group));
        ProcessResult {
            ending,
            stdout: out.finish(),
            stderr: err.finish(),
        }
    }
}

/// Spawns the attempt's main process, in its own process group and (where available) its own
/// cgroup: started inside it where the machine allows ([`clone3`]), else spawned with
/// posix_spawn and moved in. Synchronous, so the command's arguments and environment are gone
/// before the caller first awaits: a running attempt's future does not hold them.
fn spawn(spec: &ProcessSpec) -> std::io::Result<(Child, Option<contain::Attempt>)> {
    let owner = match spec.env.get(OWNER_ENV) {
        Some(o) => o.clone(),
        None => format!("pid{}", std::process::id()),
    };
    // Made before the spawn, so the child is born in it or moved into it by one write.
    let mut cgroup = contain::Attempt::create(&owner);
    if let Some(cg) = cgroup.as_mut() {
        if let Some(dir) = cg.dir_fd() {
            if spec.gate.as_ref().is_some_and(|g| !g.allows()) {
                return Err(std::io::Error::other(NotNow));
            }
            if let Some(spawned) = clone3::spawn(spec, dir, spec.stdin.is_some())? {
                cg.started_inside();
                return Ok((Child::Cloned(child::Cloned::new(spawned)?), cgroup));
            }
        }
        cg.prepare_join();
    }
    let mut cmd = Command::new(&spec.program);
    // No `pre_exec`: std then spawns with posix_spawn (vfork-like) instead of forking the
    // whole server; containment comes from the cgroup and the reaper, not from the child.
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Asked inside the spawn, after the wait for the spawn lock: a process frozen while
    // another attempt held the lock must ask again when it wakes, not spawn on an old answer.
    let gated = || {
        if spec.gate.as_ref().is_some_and(|g| !g.allows()) {
            return Err(std::io::Error::other(NotNow));
        }
        cmd.spawn()
    };
    let child = contain::spawn(&mut cgroup, gated, tokio::process::Child::id)?;
    Ok((Child::Tokio(child), cgroup))
}

/// How long the pipes are read after the attempt's processes were killed.
const READ_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Everything one attempt started: its process group and, where available, its cgroup.
/// Dropping it kills both, so an attempt abandoned mid-way (its future dropped) leaves
/// nothing behind either.
struct Group {
    pgid: Option<Pid>,
    cgroup: Option<contain::Attempt>,
    killed: bool,
}

impl Group {
    fn signal(&self, sig: Signal) {
        if let Some(pg) = self.pgid {
            let _ = killpg(pg, sig);
        }
        if let Some(cg) = &self.cgroup {
            cg.signal(sig);
        }
    }

    fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            if let Some(pg) = self.pgid {
                let _ = killpg(pg, Signal::SIGKILL);
            }
            // Kills what is left in the cgroup, if anything; an empty one is kept for reuse.
            if let Some(cg) = &mut self.cgroup {
                cg.end();
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

fn exit_ending(status: std::process::ExitStatus) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Ending::Exited(c),
        (None, Some(s)) => Ending::Signalled(s),
        (None, None) => Ending::Exited(-1),
    }
}

/// SIGTERM to the group and the cgroup, then SIGKILL after `grace`.
async fn terminate(child: &mut Child, group: &Group, grace: Duration) {
    group.signal(Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        group.signal(Signal::SIGKILL);
        if let Some(cg) = &group.cgroup {
            cg.kill();
        }
        let _ = child.kill().await;
    }
}

/// Descriptors a running attempt holds in this process: its stdout and stderr pipes and the
/// pidfd its exit is awaited on.
pub const FDS_PER_ATTEMPT: u64 = 3;
/// Descriptors kept for everything else: the store's connections, the HTTP listener and its
/// clients, the reaper's pipe, logs.
const FDS_RESERVED: u64 = 256;

/// Raises this process's soft limit on open files to its hard limit (what the administrator
/// allows; the usual soft limit of 1,024 fits only ~250 running steps) and returns how many
/// attempts fit in it at once. Steps inherit the raised soft limit (posix_spawn passes
/// limits on and cannot set one for the child alone).
pub fn raise_fd_limit() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::debug!(error = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the open-file limit");
            return usize::MAX;
        }
    };
    usize::try_from(soft.saturating_sub(FDS_RESERVED) / FDS_PER_ATTEMPT)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Write end of the reaper's stdin, held open for the whole life of this process.
static REAPER: OnceLock<std::process::ChildStdin> = OnceLock::new();

/// Starts the reaper: `exe __reap OWNER`, a copy of this program whose stdin is a pipe only
/// this process holds. When this process exits — however it exits, `kill -9` included — the
/// pipe closes and the reaper kills whatever was started on behalf of `owner` (see
/// [`kill_leftovers`]): attempts' main processes and everything they started. It stays in this
/// process's cgroup, outside the attempts' ones. Call once per process.
///
/// With `fence`, the reaper also self-fences for a process sharing its store with other
/// machines: this process writes a byte to the pipe after each lease renewal
/// ([`reaper_heartbeat`]); when none came for `fence`, the reaper kills the attempts' processes
/// (sparing this process), even if this process is frozen and cannot do it itself.
pub fn spawn_reaper(exe: &Path, owner: &str, fence: Option<Duration>) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["__reap", owner]);
    if let Some(f) = fence {
        cmd.arg("--fence-ms").arg(f.as_millis().to_string());
    }
    let mut child = cmd
        .env_remove(OWNER_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: a Ctrl-C or a signal to the server's group must not take it along.
        .process_group(0)
        .spawn()?;
    contain::set_reaper(child.id());
    if let Some(stdin) = child.stdin.take() {
        let _ = REAPER.set(stdin);
    }
    Ok(())
}

/// Tells the reaper that this process renewed its leases (see [`spawn_reaper`]).
pub fn reaper_heartbeat() {
    use std::io::Write;
    if let Some(mut stdin) = REAPER.get() {
        let _ = stdin.write(b".");
    }
}

/// The reaper's body: waits until its parent is gone (stdin reaches EOF), then kills the
/// parent's leftovers. With `fence`, also kills the parent's attempts whenever no heartbeat
/// arrived for that long. Returns how many processes it killed.
pub fn reap_after_parent_exits(owner: &str, fence: Option<Duration>) -> usize {
    contain::leave_tree();
    let mut killed = 0;
    match fence {
        None => {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        }
        Some(limit) => {
            let parent = nix::unistd::getppid().as_raw();
            while let Some(heartbeat) = wait_heartbeat(limit) {
                if !heartbeat {
                    killed += contain::kill_owner_sparing(owner, false, Some(parent))
                        + kill_by_env(owner);
                }
            }
        }
    }
    killed + contain::kill_owner(owner, true) + kill_by_env(owner)
}

/// Waits up to `limit` for a heartbeat on stdin: `Some(true)` one came, `Some(false)` none
/// came in time, `None` the parent is gone (end of file or an error).
fn wait_heartbeat(limit: Duration) -> Option<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::io::Read;
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let timeout = PollTimeout::try_from(limit.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    let ready = {
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => return Some(false),
            Ok(_) => true,
            Err(nix::errno::Errno::EINTR) => return Some(true),
            Err(_) => return None,
        }
    };
    if ready {
        let mut buf = [0u8; 256];
        match stdin.lock().read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    Some(true)
}

/// Kills every process on this machine that was started on behalf of `owner`: everything in
/// its attempts' cgroups (when they are under this process's own cgroup, as for servers started
/// side by side), then every process with its `BATON_OWNER` in the environment. Used by the
/// reaper and when adopting a dead owner's workflows.
/// `server_pid` is the owner's own process (spared: a frozen owner is not killed, only what
/// it started).
pub fn kill_leftovers(owner: &str, server_pid: Option<i32>) -> usize {
    contain::kill_owner_sparing(owner, false, server_pid) + kill_by_env(owner)
}

/// Kills every process with `BATON_OWNER=owner` in its environment.
fn kill_by_env(owner: &str) -> usize {
    let needle = format!("{OWNER_ENV}={owner}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let me = std::process::id();
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests;
