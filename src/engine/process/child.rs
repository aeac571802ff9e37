//! An attempt's main process, however it was spawned: by tokio (`posix_spawn`, then moved
//! into its cgroup) or straight into its cgroup ([`super::clone3`]), then awaited on a pidfd.
//!
//! Invariant: a child is reaped exactly once, and one dropped before its exit is killed
//! (SIGKILL through its pidfd, so never a process that reused its pid) and reaped, as tokio's
//! `kill_on_drop` does.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::libc;
use tokio::io::unix::AsyncFd;
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

use super::clone3;

pub(super) enum Child {
    Tokio(tokio::process::Child),
    Cloned(Cloned),
}

impl Child {
    pub(super) fn id(&self) -> Option<u32> {
        match self {
            Child::Tokio(c) => c.id(),
            Child::Cloned(c) => c.status.is_none().then_some(c.pid),
        }
    }

    pub(super) fn take_stdin(&mut self) -> Option<ChildStdin> {
        match self {
            Child::Tokio(c) => c.stdin.take(),
            Child::Cloned(c) => c.stdin.take(),
        }
    }

    pub(super) fn take_stdout(&mut self) -> Option<ChildStdout> {
        match self {
            Child::Tokio(c) => c.stdout.take(),
            Child::Cloned(c) => c.stdout.take(),
        }
    }

    pub(super) fn take_stderr(&mut self) -> Option<ChildStderr> {
        match self {
            Child::Tokio(c) => c.stderr.take(),
            Child::Cloned(c) => c.stderr.take(),
        }
    }

    /// Awaits the exit; cancel-safe, and ready at once after it was seen.
    pub(super) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Child::Tokio(c) => c.wait().await,
            Child::Cloned(c) => c.wait().await,
        }
    }

    /// SIGKILL, then awaits the exit.
    pub(super) async fn kill(&mut self) -> std::io::Result<()> {
        match self {
            Child::Tokio(c) => c.kill().await,
            Child::Cloned(c) => {
                if let (None, Some(fd)) = (c.status, &c.pidfd) {
                    clone3::signal(fd.as_raw_fd(), libc::SIGKILL);
                }
                c.wait().await.map(drop)
            }
        }
    }
}

/// A child spawned by [`clone3::spawn`]: this process is its parent and holds its pidfd.
pub(super) struct Cloned {
    pid: u32,
    /// Readable once the process has exited.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl Cloned {
    /// Takes over a spawned child; on an error (the pidfd or a pipe cannot be registered
    /// with the runtime) the child is killed and reaped.
    pub(super) fn new(s: clone3::Spawned) -> std::io::Result<Cloned> {
        let mut c = Cloned {
            pid: s.pid,
            pidfd: None,
            status: None,
            stdin: None,
            stdout: None,
            stderr: None,
        };
        let registered = match tokio::runtime::Handle::try_current() {
            // SAFETY: the pidfd is owned by the AsyncFd, open for as long as it lives.
            Ok(_) => unsafe {
                AsyncFd::register_with_interest(s.pidfd, tokio::io::Interest::READABLE)
                    .map_err(|e| e.into_parts())
            },
            Err(_) => Err((
                s.pidfd,
                std::io::Error::other("no tokio runtime to await the child on"),
            )),
        };
        match registered {
            Ok(fd) => c.pidfd = Some(fd),
            Err((fd, e)) => {
                clone3::signal(fd.as_raw_fd(), libc::SIGKILL);
                let _ = clone3::reap(fd.as_raw_fd(), false);
                return Err(e);
            }
        }
        // From here a failure drops `c`, which kills and reaps the child.
        c.stdout = Some(ChildStdout::from_std(std::process::ChildStdout::from(
            s.stdout,
        ))?);
        c.stderr = Some(ChildStderr::from_std(std::process::ChildStderr::from(
            s.stderr,
        ))?);
        if let Some(w) = s.stdin {
            c.stdin = Some(ChildStdin::from_std(std::process::ChildStdin::from(w))?);
        }
        Ok(c)
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let Some(fd) = &self.pidfd else {
            return Err(std::io::Error::other("child has no pidfd"));
        };
        loop {
            let mut ready = fd.readable().await?;
            // An error here (the child is gone without this process reaping it) would leave
            // the pidfd readable forever: it ends the wait instead of spinning on it.
            if let Some(raw) = clone3::reap(fd.as_raw_fd(), true)? {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

impl Drop for Cloned {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let Some(fd) = self.pidfd.take() else {
            return;
        };
        clone3::signal(fd.as_raw_fd(), libc::SIGKILL);
        if !matches!(clone3::reap(fd.as_raw_fd(), true), Ok(None)) {
            return;
        }
        // Killed, but not gone yet: reaped as soon as it is, without blocking this thread.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = fd.readable().await;
                    let _ = clone3::reap(fd.as_raw_fd(), false);
                });
            }
            Err(_) => {
                let _ = clone3::reap(fd.as_raw_fd(), false);
            }
        }
    }
}
