//! Child processes of step attempts.
//!
//! Invariant: an attempt's processes never outlive it or the server. Each attempt runs in its
//! own process group with stdin closed (or fed a given payload, then closed) and
//! `PR_SET_PDEATHSIG`; stop and timeout send SIGTERM to
//! the whole group and SIGKILL after a grace period; when the main process exits, whatever it
//! left behind in its group is killed. Every child carries `BATON_OWNER` in its environment so
//! a process adopting a dead owner's work can find and kill leftovers (see [`kill_leftovers`]),
//! and so the reaper this process starts ([`spawn_reaper`]) kills them the moment it dies,
//! even by `kill -9`, which `PR_SET_PDEATHSIG` alone only does for an attempt's main process.
//! Output is capped while it is read, so a step printing gigabytes cannot grow memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Environment variable naming the owner (server process) that started a child.
pub const OWNER_ENV: &str = "BATON_OWNER";

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

/// Longest stdout line handed to a [`LineSink`]; longer lines are cut to this.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Runs a process to its end, honouring `stop` and the spec's timeout.
pub async fn run(
    spec: &ProcessSpec,
    stop: &CancellationToken,
    on_line: Option<LineSink>,
) -> std::io::Result<ProcessResult> {
    let mut cmd = Command::new(&spec.program);
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
    let parent = std::process::id() as i32;
    // SAFETY: runs in the forked child before exec; it only makes async-signal-safe system
    // calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The server may have died between fork and prctl; then nobody will reap us.
            if nix::unistd::getppid().as_raw() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // The command's arguments and environment are not needed while the process runs.
    drop(cmd);
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // Its own task: a child that never reads must not hold up reading its output.
    let writer = match (child.stdin.take(), &spec.stdin) {
        (Some(mut pipe), Some(payload)) => {
            let payload = payload.clone();
            Some(tokio::spawn(async move {
                // A child that exits without reading makes this fail with EPIPE; that is its
                // business, reported by its exit status.
                let _ = pipe.write_all(&payload).await;
            }))
        }
        _ => None,
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let cap = spec.output_cap;
    // Both pipes are read by this same task, beside the wait: no extra tasks per attempt.
    let mut readers = std::pin::pin!(async move {
        let out = async {
            match stdout {
                Some(s) => read_capped(s, cap, on_line).await,
                None => String::new(),
            }
        };
        let err = async {
            match stderr {
                Some(s) => read_capped(s, cap, None).await,
                None => String::new(),
            }
        };
        tokio::join!(out, err)
    });
    let mut timeout = std::pin::pin!(async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    });
    let mut output: Option<(String, String)> = None;
    let ending = loop {
        tokio::select! {
            o = &mut readers, if output.is_none() => output = Some(o),
            status = child.wait() => break exit_ending(status?),
            () = &mut timeout => {
                terminate(&mut child, pgid, spec.kill_grace).await;
                break Ending::TimedOut;
            }
            () = stop.cancelled() => {
                terminate(&mut child, pgid, spec.kill_grace).await;
                break Ending::Stopped;
            }
        }
    };
    if let Some(w) = writer {
        w.abort();
    }
    // Whatever the main process left running in its group goes with it.
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    let (stdout, stderr) = match output {
        Some(o) => o,
        // A process that escaped the group could hold a pipe open forever; don't wait for it.
        None => tokio::time::timeout(Duration::from_secs(2), readers)
            .await
            .unwrap_or_default(),
    };
    Ok(ProcessResult {
        ending,
        stdout,
        stderr,
    })
}

fn exit_ending(status: std::process::ExitStatus) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Ending::Exited(c),
        (None, Some(s)) => Ending::Signalled(s),
        (None, None) => Ending::Exited(-1),
    }
}

/// SIGTERM to the group, then SIGKILL after `grace`.
async fn terminate(child: &mut tokio::process::Child, pgid: Option<Pid>, grace: Duration) {
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        let _ = child.kill().await;
    }
}

/// Read size once a stream is producing output.
const READ_CHUNK: usize = 16 * 1024;

/// Reads a stream to its end, keeping at most `cap` bytes and handing complete lines to
/// `on_line`. Bytes past the cap are counted and reported in a trailing marker.
async fn read_capped(
    mut stream: impl AsyncRead + Unpin,
    cap: usize,
    mut on_line: Option<LineSink>,
) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut dropped: u64 = 0;
    let mut line: Vec<u8> = Vec::new();
    let mut line_cut = false;
    // Empty until the stream first has data, so a silent step holds (almost) no buffer.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        buf.clear();
        if buf.capacity() > 0 && buf.capacity() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let n = match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let room = cap.saturating_sub(kept.len());
        let take = room.min(n);
        kept.extend_from_slice(&chunk[..take]);
        dropped += (n - take) as u64;
        if let Some(sink) = on_line.as_mut() {
            for part in chunk.split_inclusive(|b| *b == b'\n') {
                let complete = part.last() == Some(&b'\n');
                let body = if complete {
                    &part[..part.len() - 1]
                } else {
                    part
                };
                let room = MAX_LINE.saturating_sub(line.len());
                if body.len() > room {
                    line_cut = true;
                }
                line.extend_from_slice(&body[..room.min(body.len())]);
                if complete {
                    if !line_cut {
                        sink(&String::from_utf8_lossy(&line));
                    }
                    line.clear();
                    line_cut = false;
                }
            }
        }
    }
    if let Some(sink) = on_line.as_mut()
        && !line.is_empty()
        && !line_cut
    {
        sink(&String::from_utf8_lossy(&line));
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        text.push_str(&format!(
            "\n[baton: output truncated, {dropped} more bytes dropped]"
        ));
    }
    text
}

/// Write end of the reaper's stdin, held open for the whole life of this process.
static REAPER: OnceLock<std::process::ChildStdin> = OnceLock::new();

/// Starts the reaper: `exe __reap OWNER`, a copy of this program whose stdin is a pipe only
/// this process holds. When this process exits — however it exits, `kill -9` included — the
/// pipe closes and the reaper kills whatever was started on behalf of `owner` (see
/// [`kill_leftovers`]). `PR_SET_PDEATHSIG` only reaches an attempt's main process; the reaper
/// also reaches the background children it left in its group. Call once per process.
pub fn spawn_reaper(exe: &Path, owner: &str) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(exe)
        .args(["__reap", owner])
        .env_remove(OWNER_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: a Ctrl-C or a signal to the server's group must not take it along.
        .process_group(0)
        .spawn()?;
    if let Some(stdin) = child.stdin.take() {
        let _ = REAPER.set(stdin);
    }
    Ok(())
}

/// The reaper's body: waits until its parent is gone (stdin reaches EOF), then kills the
/// parent's leftovers. Returns how many processes it killed.
pub fn reap_after_parent_exits(owner: &str) -> usize {
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    kill_leftovers(owner)
}

/// Kills every process on this machine that was started on behalf of `owner` (found by the
/// `BATON_OWNER` variable in its environment). Used when adopting a dead owner's workflows:
/// grandchildren of an attempt are not covered by `PR_SET_PDEATHSIG`.
pub fn kill_leftovers(owner: &str) -> usize {
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
mod tests {
    use super::*;

    fn spec(program: &str, args: &[&str]) -> ProcessSpec {
        ProcessSpec {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: std::env::temp_dir(),
            env: BTreeMap::new(),
            timeout: None,
            output_cap: 1024,
            kill_grace: Duration::from_millis(500),
            stdin: None,
        }
    }

    #[tokio::test]
    async fn stdin_payload_arrives_whole_and_then_ends() {
        // Bigger than a pipe buffer, with bytes a shell or an option parser would act on.
        let payload: Vec<u8> = b"--settings={}\n'$(x)'\0"
            .iter()
            .copied()
            .cycle()
            .take(300_000)
            .collect();
        let mut s = spec("sh", &["-c", "wc -c; echo end"]);
        s.stdin = Some(payload.clone());
        let r = run(&s, &CancellationToken::new(), None).await.unwrap();
        assert_eq!(
            r.stdout.split_whitespace().collect::<Vec<_>>(),
            ["300000", "end"]
        );
        s.args = vec!["-c".into(), "cat".into()];
        s.output_cap = 1 << 20;
        let r = run(&s, &CancellationToken::new(), None).await.unwrap();
        assert_eq!(r.stdout.as_bytes(), payload.as_slice());
    }

    #[tokio::test]
    async fn child_that_ignores_stdin_is_not_held_up() {
        let mut s = spec("sh", &["-c", "echo done"]);
        s.stdin = Some(vec![b'x'; 1 << 20]);
        let r = run(&s, &CancellationToken::new(), None).await.unwrap();
        assert_eq!((r.ending, r.stdout.as_str()), (Ending::Exited(0), "done\n"));
    }

    #[tokio::test]
    async fn no_payload_means_no_stdin() {
        let r = run(
            &spec("sh", &["-c", "cat; echo rc=$?"]),
            &CancellationToken::new(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.stdout, "rc=0\n");
    }

    #[tokio::test]
    async fn output_beyond_cap_is_dropped_with_marker() {
        let s = spec("sh", &["-c", "head -c 100000 /dev/zero | tr '\\0' a"]);
        let r = run(&s, &CancellationToken::new(), None).await.unwrap();
        assert_eq!(r.ending, Ending::Exited(0));
        assert!(r.stdout.starts_with(&"a".repeat(1024)));
        assert!(
            r.stdout.contains("98976 more bytes dropped"),
            "{}",
            r.stdout
        );
    }

    #[tokio::test]
    async fn lines_reach_the_sink_in_order() {
        let s = spec("sh", &["-c", "printf 'one\\ntwo\\nthree'"]);
        let (tx, rx) = std::sync::mpsc::channel();
        let sink: LineSink = Box::new(move |l| {
            let _ = tx.send(l.to_owned());
        });
        run(&s, &CancellationToken::new(), Some(sink))
            .await
            .unwrap();
        let lines: Vec<String> = rx.try_iter().collect();
        assert_eq!(lines, ["one", "two", "three"]);
    }

    #[tokio::test]
    async fn timeout_kills_the_group() {
        let mut s = spec("sh", &["-c", "sleep 30 & sleep 30; echo never"]);
        s.timeout = Some(Duration::from_millis(200));
        let r = run(&s, &CancellationToken::new(), None).await.unwrap();
        assert_eq!(r.ending, Ending::TimedOut);
        assert!(!r.stdout.contains("never"));
    }
}
