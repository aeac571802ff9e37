//! Wake-ups for the write lock, across the processes that share a database. SQLite has no
//! way to wait for another process's lock: a connection that finds it taken sleeps and tries
//! again, so it takes a lock released mid-sleep late, and a process whose polls keep missing
//! the short gaps between other processes' transactions can wait for many of them. Every
//! baton process that writes to a database maps one small file beside it (`<db>-wake`),
//! bumps the counter in it each time one of its write transactions ends, and wakes the
//! processes waiting on that counter (a futex on the shared page), which retry at once.
//!
//! Invariant: a waiter reads the counter before the attempt that failed and sleeps only
//! while it is unchanged, so a release between the two is never slept through; every sleep
//! keeps its timeout, so a holder that wakes no one (another program, a process killed while
//! it held the lock) is still found by the next poll.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The mapped page of `<db>-wake`: its first word counts write transactions ended, its second
/// the threads sleeping on the first (a waiter killed in its sleep leaves it one too high,
/// which costs its releasers a needless wake call, nothing more).
pub(super) struct Wake {
    #[cfg(target_os = "linux")]
    page: std::ptr::NonNull<[AtomicU32; 2]>,
    #[cfg(not(target_os = "linux"))]
    page: Box<[AtomicU32; 2]>,
}

// SAFETY: the page is only ever accessed through atomics, and it stays mapped until drop.
unsafe impl Send for Wake {}
// SAFETY: as above; every access is an atomic operation on shared memory.
unsafe impl Sync for Wake {}

/// Bytes mapped: one page.
const LEN: usize = 4096;

impl Wake {
    /// Maps `<db>-wake`, creating it (mode 0600, one page of zeros) if needed.
    #[cfg(target_os = "linux")]
    pub(super) fn open(db: &Path) -> std::io::Result<Wake> {
        use std::os::unix::fs::FileExt;
        let mut path = db.as_os_str().to_owned();
        path.push("-wake");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        let len = file.metadata()?.len();
        if len < LEN as u64 {
            // Written, not a hole from `set_len`: a write through the mapping into a page with
            // no block behind it raises SIGBUS when the disk is full. A counter another process
            // already bumps is in the first bytes, which a file this short does not hold yet.
            let missing = vec![0u8; LEN - len as usize];
            file.write_all_at(&missing, len)?;
        }
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        // SAFETY: a fresh shared mapping of a file at least LEN bytes long; nothing else in
        // this process maps it, and it is only read and written through atomics.
        let ptr = unsafe {
            mmap(
                None,
                std::num::NonZeroUsize::new(LEN).ok_or(std::io::ErrorKind::InvalidInput)?,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }?;
        // The descriptor is closed when `file` drops; the mapping stays. No lock is ever
        // taken on this file, so closing it drops none.
        Ok(Wake { page: ptr.cast() })
    }

    /// Without futexes there is nothing to share: waits only poll.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn open(_: &Path) -> std::io::Result<Wake> {
        Ok(Wake {
            page: Box::new([AtomicU32::new(0), AtomicU32::new(0)]),
        })
    }

    fn words(&self) -> &[AtomicU32; 2] {
        #[cfg(target_os = "linux")]
        // SAFETY: mapped, aligned (page start) and alive for as long as `self`.
        return unsafe { self.page.as_ref() };
        #[cfg(not(target_os = "linux"))]
        return &self.page;
    }

    /// The release counter.
    fn word(&self) -> &AtomicU32 {
        &self.words()[0]
    }

    /// Threads sleeping on the counter.
    fn waiters(&self) -> &AtomicU32 {
        &self.words()[1]
    }

    /// The counter, read before an attempt to take the lock.
    pub(super) fn seen(&self) -> u32 {
        self.word().load(Ordering::Acquire)
    }

    /// Called after a write transaction ended (committed or rolled back): bumps the counter
    /// and wakes every waiter, with no system call when there is none. Both this and `wait`
    /// are sequentially consistent: a releaser that reads no waiter bumped the counter before
    /// that waiter's sleep could begin, so the sleep returns at once.
    pub(super) fn released(&self) {
        self.word().fetch_add(1, Ordering::SeqCst);
        if self.waiters().load(Ordering::SeqCst) == 0 {
            return;
        }
        // Nothing to do if the kernel refuses: waiters find the release at their next poll.
        #[cfg(target_os = "linux")]
        let _ = futex(self.word(), libc::FUTEX_WAKE, i32::MAX as u32, None);
    }

    /// Sleeps until the counter differs from `seen` (a release since it was read) or for
    /// `timeout`, whichever is first.
    pub(super) fn wait(&self, seen: u32, timeout: Duration) {
        #[cfg(target_os = "linux")]
        {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // Returns at once if the counter moved already (EAGAIN); woken, timed out or
            // interrupted, the caller tries the lock again either way. A futex the kernel
            // refuses (a seccomp filter, an emulator) must not turn the wait into a spin.
            self.waiters().fetch_add(1, Ordering::SeqCst);
            let slept = futex(self.word(), libc::FUTEX_WAIT, seen, Some(&ts));
            self.waiters().fetch_sub(1, Ordering::SeqCst);
            let refused =
                slept.is_err_and(|e| !matches!(e, Errno::EAGAIN | Errno::ETIMEDOUT | Errno::EINTR));
            if refused {
                std::thread::sleep(timeout);
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = seen;
            std::thread::sleep(timeout);
        }
    }
}

#[cfg(target_os = "linux")]
use nix::{errno::Errno, libc};

/// A futex operation on a word shared between processes (no `FUTEX_PRIVATE_FLAG`).
#[cfg(target_os = "linux")]
fn futex(
    word: &AtomicU32,
    op: libc::c_int,
    val: u32,
    timeout: Option<&libc::timespec>,
) -> Result<(), Errno> {
    let ts = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 in a shared mapping; the timeout, if any, lives
    // for the call.
    let r = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), op, val, ts, 0usize, 0u32) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

impl Drop for Wake {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: the mapping made in `map`, unmapped once; no reference outlives `self`.
        unsafe {
            let _ = nix::sys::mman::munmap(self.page.cast(), LEN);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Whether thread `tid` of this process is blocked in a futex call on `word`.
    fn in_futex_on(tid: i32, word: &AtomicU32) -> bool {
        let Ok(call) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
            return false;
        };
        let mut f = call.split(' ');
        f.next() == Some(&libc::SYS_futex.to_string())
            && f.next() == Some(&format!("{:#x}", word.as_ptr() as usize))
    }

    #[test]
    fn a_release_in_another_mapping_wakes_a_sleeping_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("baton.db");
        // Two mappings of the file, as two processes have.
        let (a, b) = (Wake::open(&db).unwrap(), Wake::open(&db).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let seen = a.seen();
                tx.send(nix::unistd::gettid().as_raw()).unwrap();
                let t = Instant::now();
                a.wait(seen, Duration::from_secs(60));
                t.elapsed()
            });
            let tid = rx.recv().unwrap();
            // Asleep in the kernel on the counter before the release.
            while !in_futex_on(tid, a.word()) {
                assert!(!waiter.is_finished(), "the wait returned without a release");
                std::thread::yield_now();
            }
            b.released();
            let slept = waiter.join().unwrap();
            assert!(
                slept < Duration::from_secs(30),
                "slept {slept:?}: not woken"
            );
        });
    }

    #[test]
    fn a_release_before_the_wait_is_not_slept_through() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("baton.db");
        let (a, b) = (Wake::open(&db).unwrap(), Wake::open(&db).unwrap());
        let seen = a.seen();
        b.released();
        let t = Instant::now();
        a.wait(seen, Duration::from_secs(30));
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn the_wake_file_is_private_and_one_page() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let _wake = Wake::open(&dir.path().join("baton.db")).unwrap();
        let meta = std::fs::metadata(dir.path().join("baton.db-wake")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), LEN as u64);
    }
}
