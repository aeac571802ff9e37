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
        gate: None,
        live: None,
    }
}

#[tokio::test]
async fn a_closed_gate_refuses_the_spawn_and_nothing_runs() {
    let marker = tempfile::tempdir().unwrap().keep().join("ran");
    let mut s = spec("sh", &["-c", &format!("touch {}", marker.display())]);
    s.gate = Some(SpawnGate(std::sync::Arc::new(|| false)));
    let err = run(s.clone(), &CancellationToken::new(), None)
        .await
        .unwrap_err();
    assert!(is_not_now(&err), "{err}");
    assert!(!marker.exists(), "the process never started");
    s.gate = Some(SpawnGate(std::sync::Arc::new(|| true)));
    run(s.clone(), &CancellationToken::new(), None)
        .await
        .unwrap();
    assert!(marker.exists());
}

#[tokio::test]
async fn an_open_gate_refuses_the_spawn_of_an_attempt_already_stopped() {
    let marker = tempfile::tempdir().unwrap().keep().join("ran");
    let mut s = spec("sh", &["-c", &format!("touch {}", marker.display())]);
    let stop = CancellationToken::new();
    let open = SpawnGate(std::sync::Arc::new(|| true));
    s.gate = Some(open.clone().unless_stopped(stop.clone()));
    stop.cancel();
    let err = run(s.clone(), &CancellationToken::new(), None)
        .await
        .unwrap_err();
    assert!(is_not_now(&err), "{err}");
    assert!(!marker.exists(), "the process never started");
    s.gate = Some(open.unless_stopped(CancellationToken::new()));
    run(s, &CancellationToken::new(), None).await.unwrap();
    assert!(marker.exists());
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
    let r = run(s.clone(), &CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(
        r.stdout.split_whitespace().collect::<Vec<_>>(),
        ["300000", "end"]
    );
    s.args = vec!["-c".into(), "cat".into()];
    s.output_cap = 1 << 20;
    let r = run(s.clone(), &CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(r.stdout.as_bytes(), payload.as_slice());
}

#[tokio::test]
async fn child_that_ignores_stdin_is_not_held_up() {
    let mut s = spec("sh", &["-c", "echo done"]);
    s.stdin = Some(vec![b'x'; 1 << 20]);
    let r = run(s.clone(), &CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!((r.ending, r.stdout.as_str()), (Ending::Exited(0), "done\n"));
}

#[tokio::test]
async fn no_payload_means_no_stdin() {
    let r = run(
        spec("sh", &["-c", "cat; echo rc=$?"]),
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
    let r = run(s.clone(), &CancellationToken::new(), None)
        .await
        .unwrap();
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
    run(s.clone(), &CancellationToken::new(), Some(sink))
        .await
        .unwrap();
    let lines: Vec<String> = rx.try_iter().collect();
    assert_eq!(lines, ["one", "two", "three"]);
}

/// Waits until `pid` is gone (or a zombie), polling /proc with a deadline.
fn gone(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| r.trim_start().starts_with('Z'))
            });
        if state.is_none_or(|zombie| zombie) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn setsid_grandchild_dies_with_its_step_and_output_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let owner = format!("unit-{}-setsid", std::process::id());
    let mut s = spec(
        "sh",
        &[
            "-c",
            "echo before; env -u BATON_OWNER setsid sh -c 'echo $$ > gc.pid; exec sleep 300' & \
             while [ ! -s gc.pid ]; do sleep 0.01; done; echo after",
        ],
    );
    s.cwd = dir.path().to_path_buf();
    s.env.insert(OWNER_ENV.into(), owner.clone());
    let contained = contain::Attempt::create(&owner).is_some();
    let started = std::time::Instant::now();
    let r = run(s.clone(), &CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(r.ending, Ending::Exited(0));
    assert_eq!(r.stdout, "before\nafter\n");
    let gc: i32 = std::fs::read_to_string(dir.path().join("gc.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if contained {
        assert!(
            started.elapsed() < READ_AFTER_EXIT,
            "{:?}",
            started.elapsed()
        );
        assert!(gone(gc), "the setsid grandchild outlived its step");
    } else {
        let _ = nix::sys::signal::kill(Pid::from_raw(gc), Signal::SIGKILL);
    }
}

#[tokio::test]
async fn timeout_kills_the_group() {
    let mut s = spec("sh", &["-c", "sleep 30 & sleep 30; echo never"]);
    s.timeout = Some(Duration::from_millis(200));
    let r = run(s.clone(), &CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(r.ending, Ending::TimedOut);
    assert!(!r.stdout.contains("never"));
}

#[tokio::test]
async fn a_child_cloned_into_its_cgroup_runs_there_without_being_moved() {
    let owner = format!("unit-{}-born-inside", std::process::id());
    let Some(cg) = contain::Attempt::create(&owner) else {
        return; // No usable cgroup2 tree on this machine: nothing to check.
    };
    let Some(dir) = cg.dir_fd() else {
        return; // This machine spawns with posix_spawn and moves the child.
    };
    let s = spec("cat", &["/proc/self/cgroup"]);
    let Some(spawned) = clone3::spawn(&s, dir, false).unwrap() else {
        return; // The kernel refused the clone: the posix_spawn path is used instead.
    };
    let mut child = Child::Cloned(child::Cloned::new(spawned).unwrap());
    let mut out = Capture::new(4096, None);
    let mut err = Capture::new(4096, None);
    Pipes::new(
        (child.take_stdout(), &mut out),
        (child.take_stderr(), &mut err),
    )
    .await;
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{status:?}");
    let name = cg.dir().file_name().unwrap().to_str().unwrap().to_owned();
    let own = out.finish();
    assert!(
        own.trim_end().ends_with(&format!("/{name}")),
        "cat read its own cgroup as {own:?}, not {name}"
    );
}

/// A `Sig*` mask line of `/proc/<pid>/status`.
fn sig_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[tokio::test]
async fn a_step_gets_sigpipe_at_its_default_and_no_signal_blocked() {
    // The server ignores SIGPIPE (Rust's runtime does) and blocks every signal for the
    // instant of a clone; neither reaches the program.
    let r = run(
        spec("cat", &["/proc/self/status"]),
        &CancellationToken::new(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.ending, Ending::Exited(0));
    let pipe_bit = 1u64 << (nix::libc::SIGPIPE - 1);
    assert_eq!(sig_mask(&r.stdout, "SigIgn:") & pipe_bit, 0, "{}", r.stdout);
    assert_eq!(sig_mask(&r.stdout, "SigBlk:"), 0, "{}", r.stdout);
    assert_eq!(sig_mask(&r.stdout, "SigCgt:"), 0, "{}", r.stdout);
}

#[tokio::test(flavor = "current_thread")]
async fn a_signal_the_servers_thread_blocks_is_not_blocked_in_the_step() {
    // The spawn runs on this thread (a current-thread runtime), which blocks SIGUSR2 for it.
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut usr2 = SigSet::empty();
    usr2.add(Signal::SIGUSR2);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&usr2), None).unwrap();
    let r = run(
        spec("cat", &["/proc/self/status"]),
        &CancellationToken::new(),
        None,
    )
    .await;
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&usr2), None).unwrap();
    let r = r.unwrap();
    assert_eq!(r.ending, Ending::Exited(0));
    assert_eq!(sig_mask(&r.stdout, "SigBlk:"), 0, "{}", r.stdout);
}

#[tokio::test]
async fn a_program_that_cannot_run_is_an_error_naming_why() {
    let stop = CancellationToken::new();
    let missing = run(spec("baton-no-such-program", &[]), &stop, None)
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound, "{missing}");
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec("true", &[]);
    s.cwd = dir.path().join("gone");
    let cwd = run(s, &stop, None).await.unwrap_err();
    assert_eq!(cwd.kind(), std::io::ErrorKind::NotFound, "{cwd}");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "echo hi\n").unwrap();
    let denied = run(spec(plain.to_str().unwrap(), &[]), &stop, None)
        .await
        .unwrap_err();
    assert_eq!(
        denied.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{denied}"
    );
}

#[tokio::test]
async fn a_bare_program_name_is_looked_up_in_the_steps_own_path_and_env_is_passed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("baton-test-tool");
    std::fs::write(&tool, "#!/bin/sh\necho \"tool $1 $STEP_VAR\"\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = spec("baton-test-tool", &["arg"]);
    s.env.insert(
        "PATH".into(),
        format!("/nonexistent:{}:/usr/bin:/bin", dir.path().display()),
    );
    s.env.insert("STEP_VAR".into(), "v=1".into());
    let r = run(s, &CancellationToken::new(), None).await.unwrap();
    assert_eq!(r.ending, Ending::Exited(0), "{}", r.stderr);
    assert_eq!(r.stdout, "tool arg v=1\n");
}

#[tokio::test]
async fn the_servers_environment_reaches_the_step_with_the_steps_own_on_top() {
    let mut server = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, v)| {
            k != "PATH"
                && !v.contains('\n')
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    let Some((kept, kept_value)) = server.next() else {
        return; // Nothing in this process's environment to check with.
    };
    let overridden = server.next().map(|(k, _)| k);
    let mut s = spec("env", &[]);
    s.output_cap = 1 << 20;
    if let Some(k) = &overridden {
        s.env.insert(k.clone(), "from-the-step".into());
    }
    let r = run(s, &CancellationToken::new(), None).await.unwrap();
    assert_eq!(r.ending, Ending::Exited(0), "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines.contains(&format!("{kept}={kept_value}").as_str()),
        "{}",
        r.stdout
    );
    if let Some(k) = overridden {
        let prefix = format!("{k}=");
        let set: Vec<&&str> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(
            set,
            [&format!("{k}=from-the-step").as_str()],
            "{}",
            r.stdout
        );
    }
}
