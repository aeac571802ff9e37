//! Spawning an attempt's main process straight into its cgroup: `clone3` with `CLONE_VM |
//! CLONE_VFORK | CLONE_INTO_CGROUP | CLONE_PIDFD`, as glibc 2.41's
//! `posix_spawnattr_setcgroup_np` does (older glibcs have no way to ask for it), plus
//! `CLONE_CLEAR_SIGHAND`.
//!
//! Invariants:
//! - The child is in its cgroup from its first instruction, so nothing it forks can be born
//!   outside it, and no `cgroup.procs` write (with the kernel's wait for an RCU grace period
//!   that a migration can take) is on the step's path.
//! - The server is never forked: like `posix_spawn`, the child borrows the server's memory on
//!   a stack of its own and the calling thread waits until the child has called `execve` (or
//!   exited).
//! - Before `execve` the child only makes system calls: no allocation, no lock, and none of
//!   the server's signal handlers can run in it (the kernel clears them in the child, and
//!   every signal is blocked across the clone); the program starts with no signal blocked
//!   and SIGPIPE at its default.
//! - Where the kernel, a seccomp filter or the architecture does not allow it, [`spawn`]
//!   returns `Ok(None)` and the caller spawns with `posix_spawn` and moves the child.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc;

use super::ProcessSpec;

/// Set once `clone3` into a cgroup failed: this machine spawns with `posix_spawn` from then.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Whether spawns go straight into their cgroups here (until one is refused).
pub(super) fn available() -> bool {
    cfg!(all(target_os = "linux", target_arch = "x86_64")) && !UNSUPPORTED.load(Ordering::Relaxed)
}

/// A child spawned into its cgroup: its pid, a pidfd to await it on, and the server's ends of
/// its pipes.
pub(super) struct Spawned {
    pub pid: u32,
    pub pidfd: OwnedFd,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Everything the child reads between the clone and `execve`, prepared by the server: the
/// child itself only makes system calls.
#[repr(C)]
struct Child {
    /// Paths to try in turn, as `execvp` does (one when the program names a path).
    candidates: *const *const libc::c_char,
    candidate_count: usize,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    /// What becomes the child's fds 0, 1 and 2; all above 2, so no `dup2` undoes another.
    stdio: [RawFd; 3],
    /// Set by the child when it could not `execve`: the errno.
    err: libc::c_int,
}

/// The kernel's `struct clone_args` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// The child starts with every caught signal at its default (Linux 5.5; INTO_CGROUP is 5.7).
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

/// Spawns `spec`'s program into the cgroup `cgroup` (a directory fd), with its own process
/// group, stdin a pipe (`stdin_piped`) or `/dev/null`, and stdout and stderr pipes.
/// `Ok(None)`: not possible here, spawn another way. An error: the program could not be run
/// (not found, not executable, a bad working directory), as `posix_spawn` would report it.
pub(super) fn spawn(
    spec: &ProcessSpec,
    cgroup: BorrowedFd<'_>,
    stdin_piped: bool,
) -> std::io::Result<Option<Spawned>> {
    if !available() {
        return Ok(None);
    }
    let prepared = Prepared::new(spec)?;
    let (stdin_ours, stdin_theirs) = if stdin_piped {
        let (r, w) = pipe()?;
        (Some(w), Some(r))
    } else {
        (None, None)
    };
    let (stdout, stdout_theirs) = pipe()?;
    let (stderr, stderr_theirs) = pipe()?;
    let null = match (&stdin_theirs, dev_null()) {
        (Some(r), _) => r.as_raw_fd(),
        (None, Some(n)) => n.as_raw_fd(),
        (None, None) => return Ok(None),
    };
    let stdio = [null, stdout_theirs.as_raw_fd(), stderr_theirs.as_raw_fd()];
    if stdio.iter().any(|fd| *fd <= 2) {
        // This process runs with one of its standard fds closed: leave it to posix_spawn.
        return Ok(None);
    }
    match clone_into(&prepared, stdio, cgroup)? {
        Some((pid, pidfd)) => Ok(Some(Spawned {
            pid,
            pidfd,
            stdin: stdin_ours,
            stdout,
            stderr,
        })),
        None => Ok(None),
    }
}

/// The child's program, arguments, environment and directory as C strings.
struct Prepared {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    /// `envp`: the server's variables the step does not set (from [`server_env`]), then the
    /// step's own, then a null.
    env: Vec<*const libc::c_char>,
    /// The step's own variables, which the last pointers of `env` point into.
    _own_env: Vec<CString>,
    cwd: CString,
}

/// The server's environment as `KEY=VALUE` C strings with their keys, read once: the server
/// never changes its own environment, and every step's starts from it.
fn server_env() -> &'static [(String, CString)] {
    static ENV: OnceLock<Vec<(String, CString)>> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                let kv = c_string([k.as_bytes(), b"=", v.as_bytes()].concat()).ok()?;
                Some((k, kv))
            })
            .collect()
    })
}

impl Prepared {
    /// The environment is the server's with `spec.env` on top, as `Command::envs` gives it;
    /// a program without a `/` is looked up in that environment's `PATH`.
    fn new(spec: &ProcessSpec) -> std::io::Result<Prepared> {
        let mut env: Vec<*const libc::c_char> = Vec::new();
        let mut path = None;
        for (k, kv) in server_env() {
            if spec.env.contains_key(k) {
                continue;
            }
            if k == "PATH" {
                path = Some(&kv.as_bytes()[k.len() + 1..]);
            }
            env.push(kv.as_ptr());
        }
        let mut own_env = Vec::with_capacity(spec.env.len());
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("environment variable name {k:?} is empty or contains '='"),
                ));
            }
            if k == "PATH" {
                path = Some(v.as_bytes());
            }
            own_env.push(c_string([k.as_bytes(), b"=", v.as_bytes()].concat())?);
        }
        // A CString's buffer stays where it is when the CString itself moves.
        env.extend(own_env.iter().map(|c| c.as_ptr()));
        env.push(std::ptr::null());
        let program = spec.program.as_bytes();
        let candidates = if program.contains(&b'/') || program.is_empty() {
            vec![c_string(program.to_vec())?]
        } else {
            // glibc's default search path when PATH is unset.
            let path: &[u8] = path.unwrap_or(b"/bin:/usr/bin");
            path.split(|b| *b == b':')
                .map(|dir| {
                    let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
                    c_string([dir, b"/", program].concat())
                })
                .collect::<std::io::Result<_>>()?
        };
        let mut argv = vec![c_string(program.to_vec())?];
        for a in &spec.args {
            argv.push(c_string(a.as_bytes().to_vec())?);
        }
        Ok(Prepared {
            candidates,
            argv,
            env,
            _own_env: own_env,
            cwd: c_string(spec.cwd.as_os_str().as_bytes().to_vec())?,
        })
    }
}

fn c_string(bytes: Vec<u8>) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `/dev/null`, opened once for every child without stdin.
fn dev_null() -> Option<&'static OwnedFd> {
    static NULL: OnceLock<Option<OwnedFd>> = OnceLock::new();
    NULL.get_or_init(|| {
        std::fs::File::open("/dev/null")
            .ok()
            .map(OwnedFd::from)
            .filter(|fd| fd.as_raw_fd() > 2)
    })
    .as_ref()
}

/// The clone itself: `Ok(Some((pid, pidfd)))` once the child has called `execve`, `Ok(None)`
/// when the kernel refused the clone (then no later spawn tries again), an error when the
/// child could not `execve` (it has exited and is reaped).
fn clone_into(
    prepared: &Prepared,
    stdio: [RawFd; 3],
    cgroup: BorrowedFd<'_>,
) -> std::io::Result<Option<(u32, OwnedFd)>> {
    let candidates: Vec<*const libc::c_char> =
        prepared.candidates.iter().map(|c| c.as_ptr()).collect();
    let argv = nul_terminated(&prepared.argv);
    let envp = &prepared.env;
    let Some(result) = STACK.with(|stack| {
        let stack = stack.as_ref()?;
        let mut child = Child {
            candidates: candidates.as_ptr(),
            candidate_count: candidates.len(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: prepared.cwd.as_ptr(),
            stdio,
            err: 0,
        };
        let mut pidfd: libc::c_int = -1;
        let args = CloneArgs {
            flags: libc::CLONE_VM as u64
                | libc::CLONE_VFORK as u64
                | libc::CLONE_PIDFD as u64
                | CLONE_CLEAR_SIGHAND
                | CLONE_INTO_CGROUP,
            pidfd: (&raw mut pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.base as u64,
            stack_size: stack.len as u64,
            cgroup: cgroup.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: the child starts with the server's handlers cleared, and every signal is
        // blocked for the clone (restored right after in this thread; the child unblocks them
        // all before execve), so no handler of the server runs in the child. `child`, the
        // strings it points to and the stack outlive the child's use of them: with
        // CLONE_VFORK this thread waits here until the child has exec'd or exited.
        let ret = unsafe {
            let saved = set_mask(!0);
            let ret = raw_clone3(&args, &mut child);
            let errno = std::io::Error::last_os_error();
            set_mask(saved);
            (ret, errno)
        };
        Some((ret, pidfd, child.err))
    }) else {
        return Ok(None);
    };
    let ((ret, clone_err), pidfd, exec_err) = result;
    if ret < 0 {
        return match refusal(&clone_err) {
            Refusal::Never => {
                if !UNSUPPORTED.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %clone_err,
                        "clone3 into a cgroup not possible here; steps are spawned with posix_spawn");
                }
                Ok(None)
            }
            Refusal::ThisOne => {
                tracing::debug!(error = %clone_err,
                    "clone3 into this cgroup refused; this step is spawned with posix_spawn");
                Ok(None)
            }
            Refusal::Exhausted => Err(clone_err),
        };
    }
    // SAFETY: clone3 succeeded with CLONE_PIDFD, so the kernel stored a new descriptor here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if exec_err != 0 {
        // The child has exited (`_exit(127)`); reap it before reporting why.
        let _ = reap(pidfd.as_raw_fd(), false);
        return Err(std::io::Error::from_raw_os_error(exec_err));
    }
    Ok(Some((ret as u32, pidfd)))
}

fn nul_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// What a failed `clone3` says about the next one.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// The kernel, a seccomp filter or the architecture does not allow it: never again.
    Never,
    /// Out of processes, memory or descriptors: the spawn fails, as `posix_spawn`'s would.
    Exhausted,
    /// Something about this cgroup (removed, not a leaf): this spawn goes the other way.
    ThisOne,
}

fn refusal(e: &std::io::Error) -> Refusal {
    match e.raw_os_error() {
        Some(libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::E2BIG) => Refusal::Never,
        Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE) => Refusal::Exhausted,
        _ => Refusal::ThisOne,
    }
}

/// Sets this thread's signal mask to `mask` (bit `n - 1` for signal `n`) and returns the one
/// it replaces. The raw system call, not `pthread_sigmask`: glibc keeps its own two signals
/// (32 and 33) out of a mask it is given, and the clone must block those too.
unsafe fn set_mask(mask: u64) -> u64 {
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask with the kernel's 8-byte sigset reads `mask` and writes `old`.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const mask,
            &raw mut old,
            std::mem::size_of::<u64>(),
        );
    }
    old
}

/// Reaps the child behind `pidfd` (this process is its parent): `Some(raw wait status)` once
/// it has exited, `None` while it runs (only with `nohang`), an error when it cannot be
/// waited for (it is not this process's child, or was reaped already).
pub(super) fn reap(pidfd: RawFd, nohang: bool) -> std::io::Result<Option<i32>> {
    // SAFETY: siginfo_t is plain data, written by waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: `info` is a valid siginfo_t to write into.
        let r = unsafe { libc::waitid(libc::P_PIDFD, pidfd as libc::id_t, &mut info, flags) };
        if r == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    // SAFETY: waitid filled `info` in for a child state change (or left si_pid 0).
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        _ => status & 0x7f,
    }))
}

/// Sends `sig` to the process behind `pidfd`; a process already reaped is not confused with
/// a new one reusing its pid.
pub(super) fn signal(pidfd: RawFd, sig: libc::c_int) {
    // SAFETY: pidfd_send_signal with no siginfo and no flags only reads its arguments.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// The stack a child runs on until `execve`, one per thread and reused: mapped once, with an
/// unmapped guard page below it.
struct Stack {
    map: *mut libc::c_void,
    base: *mut libc::c_void,
    len: usize,
}

const STACK_LEN: usize = 64 * 1024;
const GUARD_LEN: usize = 4096;

thread_local! {
    static STACK: Option<Stack> = Stack::map();
}

impl Stack {
    fn map() -> Option<Stack> {
        // SAFETY: a fresh anonymous private mapping, owned by the Stack from here on.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                STACK_LEN + GUARD_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if map == libc::MAP_FAILED {
                return None;
            }
            if libc::mprotect(map, GUARD_LEN, libc::PROT_NONE) != 0 {
                libc::munmap(map, STACK_LEN + GUARD_LEN);
                return None;
            }
            Some(Stack {
                map,
                base: map.cast::<u8>().add(GUARD_LEN).cast(),
                len: STACK_LEN,
            })
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, no longer used by any child (each child is done
        // with it before the clone returns).
        unsafe {
            libc::munmap(self.map, STACK_LEN + GUARD_LEN);
        }
    }
}

/// The child's side, on its own stack, sharing the server's memory until `execve`. Only
/// system calls through libc, no allocation.
extern "C" fn child_main(child: *mut Child) -> ! {
    // SAFETY: `child` points at the parent's `Child`, alive while the parent waits (vfork).
    unsafe {
        let c = &mut *child;
        // The kernel reset every caught signal to its default (CLONE_CLEAR_SIGHAND); SIGPIPE,
        // which the server ignores, goes back to the default a program expects.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
        if libc::setpgid(0, 0) != 0 || libc::chdir(c.cwd) != 0 {
            fail(c);
        }
        for (target, fd) in c.stdio.iter().enumerate() {
            if libc::dup2(*fd, target as libc::c_int) < 0 {
                fail(c);
            }
        }
        // The program starts with no signal blocked, whatever the server's thread had, as
        // std's spawn gives it.
        set_mask(0);
        // As execvp: a candidate that is missing or not a directory is skipped; one found but
        // not executable is what is reported if no later one runs.
        let mut denied = false;
        for i in 0..c.candidate_count {
            libc::execve(*c.candidates.add(i), c.argv, c.envp);
            match *libc::__errno_location() {
                libc::EACCES => denied = true,
                libc::ENOENT
                | libc::ENOTDIR
                | libc::ELOOP
                | libc::ESTALE
                | libc::ENODEV
                | libc::ETIMEDOUT => {}
                _ => fail(c),
            }
        }
        if denied {
            *libc::__errno_location() = libc::EACCES;
        }
        fail(c)
    }
}

/// Records errno for the parent and exits without running anything of the server's.
unsafe fn fail(c: &mut Child) -> ! {
    // SAFETY: errno is this (vfork) child's to read; _exit runs no handlers or destructors.
    unsafe {
        c.err = (*libc::__errno_location()).max(1);
        libc::_exit(127)
    }
}

/// `clone3(args)`; in the child, calls [`child_main`] on the stack given in `args` and never
/// comes back. Returns the child's pid, or -1 with errno set.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe fn raw_clone3(args: &CloneArgs, child: *mut Child) -> isize {
    let ret: isize;
    // SAFETY: the caller passes valid clone_args; the child path runs on its own stack, which
    // the kernel switched to, and never returns into this frame.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") child,
            in("r13") child_main as extern "C" fn(*mut Child) -> !,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        // SAFETY: errno of this thread.
        unsafe { *libc::__errno_location() = (-ret) as libc::c_int };
        return -1;
    }
    ret
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
unsafe fn raw_clone3(_args: &CloneArgs, _child: *mut Child) -> isize {
    // SAFETY: errno of this thread.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(e: libc::c_int) -> std::io::Error {
        std::io::Error::from_raw_os_error(e)
    }

    #[test]
    fn only_a_refusal_by_the_kernel_turns_the_clone_off_for_good() {
        for e in [libc::ENOSYS, libc::EPERM, libc::EINVAL, libc::E2BIG] {
            assert_eq!(refusal(&errno(e)), Refusal::Never, "errno {e}");
        }
        for e in [libc::EAGAIN, libc::ENOMEM, libc::EMFILE, libc::ENFILE] {
            assert_eq!(refusal(&errno(e)), Refusal::Exhausted, "errno {e}");
        }
        for e in [libc::ENODEV, libc::EBUSY, libc::EOPNOTSUPP, libc::ENOENT] {
            assert_eq!(refusal(&errno(e)), Refusal::ThisOne, "errno {e}");
        }
    }

    #[test]
    fn a_child_reaped_already_is_an_error_not_a_wait_forever() {
        let child = std::process::Command::new("true").spawn().unwrap();
        // SAFETY: pidfd_open of our own child's pid, before it is reaped.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) } as RawFd;
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a descriptor pidfd_open just returned, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let status = reap(fd.as_raw_fd(), false).unwrap();
        assert_eq!(status, Some(0));
        let again = reap(fd.as_raw_fd(), true).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::ECHILD), "{again}");
        drop(child);
    }

    #[test]
    fn the_clone_masks_every_signal_and_gives_back_the_threads_mask() {
        // SAFETY: this test thread's own mask, restored before the test ends.
        unsafe {
            let before = set_mask(!0);
            let all = set_mask(before);
            // SIGKILL and SIGSTOP cannot be blocked; glibc's own 32 and 33 are.
            let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
            assert_eq!(all, !unblockable);
            assert_eq!(set_mask(before), before);
        }
    }
}
