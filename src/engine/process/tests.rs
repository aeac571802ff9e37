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
