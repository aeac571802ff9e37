//! Work outlives the host session: `baton serve` hands execution to a per-database
//! background worker, which keeps running when the serving process ends the way Claude Code
//! ends it, and whose death is survived like any owner's.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{PATIENCE, Protocol, Sandbox, alive};

/// `baton worker` processes running on `db` (a path or a URL, as `--db` names it).
pub(crate) fn workers(db: &OsStr) -> Vec<i32> {
    let needle = db.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter().any(|a| a == "worker") && args.contains(&needle)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Kills whatever worker is left when a test ends.
pub(crate) struct Reap(pub(crate) OsString);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in workers(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn status_of(sb: &Sandbox, id: &str) -> Value {
    let out = sb.cli(&["status", id]);
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls the store (through `baton status`, which runs nothing) until the workflow is
/// `want`.
fn wait_status(sb: &Sandbox, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let st = status_of(sb, id);
        if st["status"] == want {
            return st;
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(worker_log(sb));
            panic!("never {want}: {st}\nworker log: {log:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The background worker's log, beside the database.
fn worker_log(sb: &Sandbox) -> PathBuf {
    if sb.is_postgres() {
        sb.beside("baton.worker.log")
    } else {
        sb.db().with_extension("worker.log")
    }
}

pub(crate) const HANDOVER: [(&str, &str); 3] = [
    ("BATON_IN_PROCESS", "0"),
    ("BATON_WORKER_IDLE_S", "2"),
    ("BATON_LEASE_MS", "900"),
];

on_both_backends! {
    fn workflow_completes_after_the_serving_process_ends_as_claude_code_ends_it(sb: Sandbox) {
        let _reap = Reap(sb.db_arg());
        let gate = sb.path("gate");
        let mut s = sb.server_with(&HANDOVER, Protocol::V2025);
        let id = s.start(json!({"steps": [
            {"id": "wait", "shell": format!("while [ ! -e {} ]; do sleep 0.05; done; echo waited", gate.display())},
            {"id": "after", "deps": ["wait"], "shell": "echo after {wait.output}"}
        ]}));
        let st = wait_status(&sb, &id, "running");
        assert_ne!(st["owner"], json!(null), "{st}");
        // Claude Code ends its server with SIGINT, then SIGTERM; stdin stays open.
        let pid = nix::unistd::Pid::from_raw(s.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let code = crate::util::wait_exit(&mut s.child);
        assert!(code.success(), "{code:?}");
        assert_eq!(status_of(&sb, &id)["status"], "running", "not interrupted");
        std::fs::write(&gate, "").unwrap();
        let st = wait_status(&sb, &id, "completed");
        assert_eq!(st["steps"][1]["output"], "after waited", "{st}");
        // Idle, the worker leaves by itself.
        let deadline = Instant::now() + PATIENCE;
        while !workers(&sb.db_arg()).is_empty() {
            assert!(Instant::now() < deadline, "the idle worker did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::metadata(worker_log(&sb)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(log.permissions().mode() & 0o777, 0o600);
    }
}

on_both_backends! {
    fn a_killed_worker_is_replaced_and_its_workflow_completes(sb: Sandbox) {
        let _reap = Reap(sb.db_arg());
        let gate = sb.path("gate");
        let runs = sb.path("runs");
        let mut s = sb.server_with(&HANDOVER, Protocol::V2025);
        let id = s.start(json!({"steps": [
            {"id": "wait", "shell": format!(
                "echo run >> {}; while [ ! -e {} ]; do sleep 0.05; done; echo waited",
                runs.display(), gate.display())}
        ]}));
        wait_status(&sb, &id, "running");
        crate::util::Server::wait_for_file(&runs);
        let first = workers(&sb.db_arg());
        assert_eq!(first.len(), 1, "one worker per database: {first:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // The serving process notices the orphan and starts another worker, which re-runs the
        // interrupted step.
        let deadline = Instant::now() + PATIENCE;
        while std::fs::read_to_string(&runs).unwrap().lines().count() < 2 {
            assert!(Instant::now() < deadline, "the step was not re-run");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::write(&gate, "").unwrap();
        let st = wait_status(&sb, &id, "completed");
        assert_eq!(st["steps"][0]["output"], "waited");
        let replaced = workers(&sb.db_arg());
        assert!(
            replaced.iter().all(|p| !first.contains(p)),
            "{first:?} {replaced:?}"
        );
        drop(s);
    }
}
