//! Containment of attempts in cgroups (v2), where the machine allows it.
//!
//! Invariant: every process an attempt starts — in its group or not, in a new session or not,
//! with `BATON_OWNER` in its environment or not — is in that attempt's cgroup, and the cgroup is
//! killed when the attempt ends, when the server dies (by its reaper) and when another server
//! adopts the dead server's work. A process cannot leave a cgroup it was born in without write
//! access to the cgroup tree, which a step does not get from baton.
//!
//! Layout, under the cgroup this process was started in (found in `/proc/self/cgroup` and the
//! cgroup2 mount in `/proc/self/mountinfo`):
//!
//! ```text
//! <own cgroup>/baton-<owner>/     one per server, no process itself
//!     server/                     the server, once it first runs an attempt
//!     a<n>/                       one per running attempt; kept for reuse if empty at its end
//! ```
//!
//! A child is started inside its attempt's cgroup where the kernel allows it
//! ([`super::clone3`]); the rest of this paragraph is about where it does not.
//! Why the server moves: std spawns with posix_spawn (no fork of the server), so a child is
//! born in the server's cgroup and moved into its attempt's right after; a program that forks
//! at once (a shell's first `cmd &`) can do so before that move. Born in `server/`, such a
//! child is found there and moved too ([`spawn`] holds a lock so only one spawn is in that
//! window), and if the server dies meanwhile its reaper kills `server/`'s leftovers with the
//! rest. The server stays below its original cgroup, so the host's limits still apply.
//! Where no cgroup2 tree is mounted, or it is not writable, [`Attempt::create`] returns `None`
//! and the caller falls back to process groups and the `BATON_OWNER` scan.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The cgroup2 directory this process was started in, if there is one.
static BASE: OnceLock<Option<PathBuf>> = OnceLock::new();
/// This server's `baton-<owner>` directory, once the server has moved into its `server/`.
static TREE: OnceLock<Option<PathBuf>> = OnceLock::new();
/// Cleared when creating or joining a cgroup failed once: the tree is not ours to write.
static USABLE: AtomicBool = AtomicBool::new(true);
/// Held from a spawn until its child and anything it forked are in the attempt's cgroup.
static SPAWNING: Mutex<()> = Mutex::new(());
/// The reaper's pid: a child of the server that is not an attempt's.
static REAPER: AtomicU32 = AtomicU32::new(0);
static NEXT: AtomicU64 = AtomicU64::new(0);
/// Cgroups of ended attempts whose killed processes had not all exited yet; removed later.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Cgroups of ended attempts that were empty when they ended, kept for the next attempts:
/// making and removing a cgroup is most of what containment costs a short step.
static IDLE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Idle cgroups kept at most; beyond it an emptied one is removed.
const IDLE_MAX: usize = 16;

fn base() -> Option<&'static Path> {
    BASE.get_or_init(find_base).as_deref()
}

/// `<cgroup2 mount><path from /proc/self/cgroup>`.
fn find_base() -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mount-point options... - fstype source super-options
    let mount = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut f = pre.split(' ');
        let root = f.nth(3)?;
        let point = f.next()?;
        Some((root.to_owned(), point.to_owned()))
    });
    let (root, point) = mount?;
    // In a cgroup namespace the mount's root is "/"; otherwise strip it from our path.
    let rel = own.strip_prefix(root.trim_end_matches('/')).unwrap_or(own);
    let dir = Path::new(&point).join(rel.trim_start_matches('/'));
    dir.join("cgroup.procs").exists().then_some(dir)
}

/// A file or directory name made of the owner id's safe characters.
fn owner_dir(base: &Path, owner: &str) -> PathBuf {
    let safe: String = owner
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    base.join(format!("baton-{safe}"))
}

/// This server's tree, made (and the server moved into `server/`) on first use.
fn tree(owner: &str) -> Option<&'static Path> {
    TREE.get_or_init(|| {
        let base = base()?;
        remove_stale(base);
        let dir = owner_dir(base, owner);
        let server = dir.join("server");
        let moved = std::fs::create_dir_all(&server).and_then(|()| {
            std::fs::write(server.join("cgroup.procs"), std::process::id().to_string())
        });
        match moved {
            Ok(()) => Some(dir),
            Err(e) => {
                disable(&server, &e);
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    })
    .as_deref()
}

/// Removes `baton-*` trees left by servers that exited with nothing left running in them.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let ours = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("baton-"));
        if ours && populated(&p) == Some(false) {
            for d in subtree(&p) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// Moves this process (the reaper) out of a baton tree it was born in, next to it, so that
/// killing the tree does not kill the reaper doing it.
pub fn leave_tree() {
    let Some(base) = base() else {
        return;
    };
    let in_tree = base.file_name().and_then(|n| n.to_str()) == Some("server")
        && base
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("baton-"));
    if let Some(outside) = base.parent().and_then(Path::parent)
        && in_tree
    {
        let _ = std::fs::write(outside.join("cgroup.procs"), std::process::id().to_string());
    }
}

/// Records the reaper's pid, so it is never taken for an attempt's process.
pub fn set_reaper(pid: u32) {
    REAPER.store(pid, Ordering::Relaxed);
}

/// Spawns with `spawn` and puts the child — and anything it forked before it was moved —
/// into `cgroup`. Without a cgroup, just spawns.
pub fn spawn<C>(
    cgroup: &mut Option<Attempt>,
    spawn: impl FnOnce() -> std::io::Result<C>,
    pid_of: impl Fn(&C) -> Option<u32>,
) -> std::io::Result<C> {
    let Some(cg) = cgroup.as_mut() else {
        return spawn();
    };
    let _window = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
    let child = spawn()?;
    if pid_of(&child).is_some_and(|pid| cg.join(pid)) {
        // Strays that cannot be moved stay in the server's cgroup, where the reaper finds them.
        cg.gather();
        cg.procs = None;
    } else {
        // Nothing is in it yet, so dropping it kills nothing.
        *cgroup = None;
    }
    Ok(child)
}

/// One attempt's cgroup. Dropping it kills whatever is still inside and removes it.
#[derive(Debug)]
pub struct Attempt {
    dir: PathBuf,
    /// The cgroup's directory, opened before the spawn so the child can be started inside it
    /// ([`super::clone3`]); closed once it is, so a running attempt holds no descriptor for
    /// its cgroup.
    dir_fd: Option<File>,
    /// `cgroup.procs`, opened before a `posix_spawn` so joining is one `write`; closed once the
    /// child and its strays are in.
    procs: Option<File>,
    /// Found empty when the attempt ended: nothing to kill, and reusable.
    emptied: bool,
}

impl Attempt {
    /// Creates a fresh cgroup for one attempt of `owner`'s, or `None` where cgroups are not
    /// usable (then the caller relies on process groups alone).
    pub fn create(owner: &str) -> Option<Attempt> {
        if !USABLE.load(Ordering::Relaxed) {
            return None;
        }
        let parent = tree(owner)?;
        sweep();
        let idle = IDLE.lock().ok().and_then(|mut idle| idle.pop());
        // An idle cgroup an adopter removed (it took this process for dead) is not reused.
        if let Some(dir) = idle
            && let Ok(a) = Attempt::open(dir)
        {
            return Some(a);
        }
        let dir = parent.join(format!("a{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let made = std::fs::create_dir(&dir).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => std::fs::create_dir_all(&dir),
            // A number reused after a restart of a server with the same owner id.
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        });
        match made.and_then(|()| Attempt::open(dir.clone())) {
            Ok(a) => Some(a),
            Err(e) => {
                disable(&dir, &e);
                None
            }
        }
    }

    /// An attempt in the existing cgroup `dir`, with what its spawn needs opened: the
    /// directory where children can be started inside it, else `cgroup.procs`.
    fn open(dir: PathBuf) -> std::io::Result<Attempt> {
        let mut a = Attempt {
            dir,
            dir_fd: None,
            procs: None,
            emptied: false,
        };
        if super::clone3::available() {
            a.dir_fd = Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC)
                    .open(&a.dir)?,
            );
        } else {
            a.procs = Some(open_procs(&a.dir)?);
        }
        Ok(a)
    }

    /// The cgroup's directory, for a child to be started inside it.
    pub fn dir_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.dir_fd.as_ref().map(|f| f.as_fd())
    }

    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The attempt's child was started inside the cgroup: nothing is left to move.
    pub fn started_inside(&mut self) {
        self.dir_fd = None;
    }

    /// Opens `cgroup.procs` for a child spawned outside the cgroup and moved in by [`spawn`].
    pub fn prepare_join(&mut self) {
        self.dir_fd = None;
        if self.procs.is_none() {
            match open_procs(&self.dir) {
                Ok(p) => self.procs = Some(p),
                Err(e) => disable(&self.dir, &e),
            }
        }
    }

    /// Moves `pid` (the attempt's main process, just spawned) into the cgroup; its children
    /// are born there. On failure the cgroup is given up for good and `false` returned.
    pub fn join(&mut self, pid: u32) -> bool {
        let Some(procs) = self.procs.as_mut() else {
            return false;
        };
        match procs.write_all(pid.to_string().as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                disable(&self.dir, &e);
                false
            }
        }
    }

    /// Moves whatever the child forked before it was moved (born in the server's cgroup) into
    /// this one; repeated until only the server (and its reaper) are left there.
    fn gather(&mut self) {
        let Some(server) = self.dir.parent().map(|p| p.join("server")) else {
            return;
        };
        let Some(procs) = self.procs.as_mut() else {
            return;
        };
        let me = Pid::from_raw(std::process::id() as i32);
        let reaper = Pid::from_raw(REAPER.load(Ordering::Relaxed) as i32);
        loop {
            let strays: Vec<Pid> = pids(&server)
                .into_iter()
                .filter(|p| *p != me && *p != reaper)
                .collect();
            if strays.is_empty() {
                return;
            }
            for p in strays {
                // A stray that exited meanwhile cannot be moved; that is fine.
                if let Err(e) = procs.write_all(p.to_string().as_bytes())
                    && e.raw_os_error() != Some(nix::libc::ESRCH)
                {
                    tracing::warn!(pid = %p, error = %e, "cannot move a step's process into its cgroup");
                    return;
                }
            }
        }
    }

    /// Sends `sig` to every process in the cgroup (a polite request before [`Attempt::kill`]).
    pub fn signal(&self, sig: Signal) {
        for pid in pids(&self.dir) {
            let _ = kill(pid, sig);
        }
    }

    /// SIGKILLs everything in the cgroup, whatever session or group it is in.
    pub fn kill(&self) {
        kill_tree(&self.dir);
    }

    /// Ends the attempt's containment once its main process was reaped: a cgroup with
    /// nothing left in it (the usual case) is kept for reuse, one with leftovers is killed.
    pub fn end(&mut self) {
        if self.emptied {
            return;
        }
        // `populated` covers the cgroups below it too. A cgroup gains processes only from
        // one inside it or from a write to its `cgroup.procs`: empty now is empty for good.
        if populated(&self.dir) == Some(false) {
            self.emptied = true;
        } else {
            kill_tree(&self.dir);
        }
    }
}

/// Whether any process is in `dir` or below it (`cgroup.events`), if it can be read. One
/// `read` takes the whole file (a few dozen bytes), on the path of every step's end.
fn populated(dir: &Path) -> Option<bool> {
    use std::io::Read;
    let mut buf = [0u8; 128];
    let n = File::open(dir.join("cgroup.events"))
        .ok()?
        .read(&mut buf)
        .ok()?;
    let events = std::str::from_utf8(&buf[..n]).ok()?;
    events.lines().find_map(|l| match l {
        "populated 0" => Some(false),
        "populated 1" => Some(true),
        _ => None,
    })
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.emptied {
            if let Ok(mut idle) = IDLE.lock()
                && idle.len() < IDLE_MAX
            {
                idle.push(std::mem::take(&mut self.dir));
                return;
            }
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
        }
        kill_tree(&self.dir);
        // Usually empty at once: the main process is reaped and the pipes' holders are gone.
        // Otherwise the killed processes take a moment; the next attempt removes it.
        if std::fs::remove_dir(&self.dir).is_err()
            && let Ok(mut pending) = PENDING.lock()
        {
            pending.push(std::mem::take(&mut self.dir));
        }
    }
}

/// `dir/cgroup.procs`, for writing pids into it.
fn open_procs(dir: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(dir.join("cgroup.procs"))
}

/// Removes the cgroups of ended attempts that have emptied since.
fn sweep() {
    if let Ok(mut pending) = PENDING.lock()
        && !pending.is_empty()
    {
        pending.retain(|d| std::fs::remove_dir(d).is_err() && d.exists());
    }
}

fn disable(dir: &Path, e: &std::io::Error) {
    if USABLE.swap(false, Ordering::Relaxed) {
        tracing::warn!(dir = %dir.display(), error = %e,
            "cgroups not usable here; steps are contained by process groups only");
    }
    let _ = std::fs::remove_dir(dir);
}

fn pids(dir: &Path) -> Vec<Pid> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// Kills every process in `dir` and below: `cgroup.kill` (Linux 5.14+), else signals to the
/// pids listed, repeated while new ones appear.
fn kill_tree(dir: &Path) {
    match std::fs::write(dir.join("cgroup.kill"), b"1") {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.exists() => {
            for _ in 0..16 {
                let mut any = false;
                for d in subtree(dir) {
                    for pid in pids(&d) {
                        any = true;
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                }
                if !any {
                    break;
                }
            }
        }
        Err(_) => {}
    }
}

/// `dir` and every cgroup below it, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            todo.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        out.push(d);
    }
    out.reverse();
    out
}

/// Kills everything `owner`'s attempts left (the reaper after the server exited, or a server
/// adopting a dead owner's work) and removes its cgroups. The server's own cgroup is killed
/// too only when `server_gone` (a stale owner that is merely slow must survive its adopter).
/// Returns how many processes were still in them. Blocks for at most about a second while
/// the killed processes exit.
pub fn kill_owner(owner: &str, server_gone: bool) -> usize {
    kill_owner_sparing(owner, server_gone, None)
}

/// [`kill_owner`] for an adopter, which also kills whatever is in the owner's server cgroup
/// except the server itself (`server_pid`): a child the owner had just spawned and not yet
/// moved into its attempt's cgroup sits there, and has not exec'd its `BATON_OWNER` yet.
pub fn kill_owner_sparing(owner: &str, server_gone: bool, server_pid: Option<i32>) -> usize {
    let Some(base) = base() else {
        return 0;
    };
    let dir = owner_dir(base, owner);
    if !dir.exists() {
        return 0;
    }
    let mut strays = 0;
    if !server_gone {
        for pid in pids(&dir.join("server")) {
            if Some(pid.as_raw()) != server_pid {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                strays += 1;
            }
        }
    }
    let targets: Vec<PathBuf> = if server_gone {
        vec![dir.clone()]
    } else {
        std::fs::read_dir(&dir)
            .map(|es| {
                es.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir() && !p.ends_with("server"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let found: usize = targets
        .iter()
        .flat_map(|t| subtree(t))
        .map(|d| pids(&d).len())
        .sum();
    for t in &targets {
        kill_tree(t);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let left: Vec<PathBuf> = targets
            .iter()
            .flat_map(|t| subtree(t))
            .filter(|d| d.exists() && std::fs::remove_dir(d).is_err())
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        // Killed processes are gone within a scheduler tick or two.
        std::thread::sleep(Duration::from_millis(5));
    }
    // An owner whose own cgroup is empty is gone: nothing of its tree is needed any more.
    let _ = std::fs::remove_dir(dir.join("server"));
    let _ = std::fs::remove_dir(&dir);
    found + strays
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_dir_keeps_only_safe_characters() {
        let d = owner_dir(Path::new("/cg"), "0194-ab/../x y");
        assert_eq!(d, Path::new("/cg/baton-0194-ab..xy"));
    }

    #[test]
    fn attempt_cgroup_is_removed_when_dropped() {
        let owner = format!("test-{}", std::process::id());
        let Some(a) = Attempt::create(&owner) else {
            return; // No usable cgroup2 tree on this machine: nothing to check.
        };
        let dir = a.dir.clone();
        assert!(dir.join("cgroup.procs").exists());
        drop(a);
        assert!(!dir.exists());
    }

    #[test]
    fn the_spawn_and_the_gate_asked_in_it_run_under_the_spawn_lock() {
        let owner = format!("test-{}", std::process::id());
        let mut cg = Attempt::create(&owner);
        if cg.is_none() {
            return; // No usable cgroup2 tree on this machine: no lock is taken.
        }
        let held = spawn(
            &mut cg,
            || Ok(SPAWNING.try_lock().is_err()),
            |_: &bool| None,
        )
        .unwrap();
        assert!(
            held,
            "a process frozen before the lock must ask the gate after it"
        );
    }

    #[test]
    fn an_attempt_cgroup_found_empty_is_reused_and_one_with_leftovers_is_killed_not_reused() {
        let owner = format!("test-{}", std::process::id());
        let Some(mut a) = Attempt::create(&owner) else {
            return; // No usable cgroup2 tree on this machine: nothing to check.
        };
        let first = a.dir.clone();
        a.end();
        drop(a);
        assert!(first.exists(), "kept for the next attempt");
        let mut b = Attempt::create(&owner).unwrap();
        assert_eq!(b.dir, first, "the emptied cgroup is reused");

        let mut left = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        b.prepare_join();
        assert!(b.join(left.id()));
        b.procs = None;
        b.end();
        let status = left.wait().unwrap();
        assert!(!status.success(), "the leftover was killed: {status:?}");
        drop(b);
        let c = Attempt::create(&owner).unwrap();
        assert_ne!(c.dir, first, "a cgroup that had leftovers is not reused");
    }
}
