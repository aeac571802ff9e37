//! `repeat` groups end to end: iterations through the real server and real processes, the
//! shipped example, and a real `kill -9` in the middle of an iteration.

use serde_json::{Value, json};

use crate::util::*;

/// test -> fix in a loop until test prints PASS; test passes once fix ran `fixes` times.
/// fix waits for a file `go` in iteration `wait_in`.
fn fix_until_green(fixes: u32, wait_in: u32) -> Value {
    json!({"steps": [
        {"id": "impl", "shell": "echo 0 > count; echo v1"},
        {"id": "loop", "deps": ["impl"], "repeat": {
            "steps": [
                {"id": "test", "shell": format!("echo t >> tests.txt; if [ $(cat count) -ge {fixes} ]; then echo PASS; else echo FAIL; fi")},
                {"id": "fix", "deps": ["test"], "when": "steps.test.output != 'PASS'",
                 "shell": format!("echo f >> fixes.txt; if [ $(cat count) -eq {} ] && [ ! -f go ]; then echo $$ > fix.pid; while [ ! -f go ]; do sleep 0.05; done; fi; echo $(( $(cat count) + 1 )) > count; printf 'fix%s<%s>' $(cat count) {{previous.fix.output}}", wait_in - 1)}
            ],
            "until": "steps.test.output == 'PASS'", "max_iterations": 5}},
        {"id": "after", "deps": ["loop"], "shell": "printf 'loop said %s' {loop.output}"}
    ]})
}

#[test]
fn a_loop_runs_iterations_until_its_condition_holds_and_shows_each_in_status() {
    let sb = Sandbox::new();
    sb.write("go", "");
    let mut s = sb.server();
    let id = s.start(fix_until_green(2, 1));
    assert_eq!(s.wait_done(&id)["status"], "completed");
    let st = s.status(&id);
    assert_eq!(step(&st, "fix#1")["output"], "fix1<>");
    assert_eq!(
        step(&st, "fix#2")["output"],
        "fix2<fix1<>>",
        "reads the previous iteration"
    );
    assert_eq!(step(&st, "test#3")["output"], "PASS");
    assert_eq!(step(&st, "fix#3")["status"], "skipped");
    assert_eq!(step(&st, "loop")["output"], "PASS");
    assert_eq!(
        step(&st, "fix#2")["deps"],
        json!(["test#2", "impl"]),
        "an iteration's own deps"
    );
    assert_eq!(step(&st, "after")["output"], "loop said PASS");
    assert_eq!((sb.lines("tests.txt"), sb.lines("fixes.txt")), (3, 2));
}

#[test]
fn a_loop_that_never_converges_fails_naming_its_condition() {
    let sb = Sandbox::new();
    sb.write("go", "");
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "loop", "repeat": {"steps": [{"id": "try", "run": ["echo", "no"]}],
         "until": "steps.try.output == 'yes'", "max_iterations": 3}}
    ]}));
    assert_eq!(s.wait_done(&id)["status"], "failed");
    let st = s.status(&id);
    let err = step(&st, "loop")["error"].as_str().unwrap().to_owned();
    assert!(err.contains("never held in 3 iterations"), "{err}");
    assert_eq!(step(&st, "try#3")["status"], "completed");
}

on_both_backends! {
    fn kill_mid_loop_keeps_earlier_iterations_and_resumes_the_unfinished_step(sb: Sandbox) {
        let env = [("BATON_LEASE_MS", "1500")];
        let mut s = sb.server_with(&env, Protocol::V2025);
        let id = s.start(fix_until_green(3, 2));
        let fix = sb.pid_in("fix.pid");
        s.kill9();
        eventually("fix#2 to die with its server", || !alive(fix));
        sb.write("go", "");
        let mut s2 = sb.server_with(&env, Protocol::V2025);
        assert_eq!(s2.wait_done(&id)["status"], "completed");
        let st = s2.status(&id);
        assert_eq!(outcomes(&st, "test#1"), ["succeeded"]);
        assert_eq!(outcomes(&st, "fix#1"), ["succeeded"]);
        assert_eq!(outcomes(&st, "test#2"), ["succeeded"]);
        assert_eq!(outcomes(&st, "fix#2"), ["crashed", "succeeded"]);
        assert_eq!(step(&st, "fix#3")["output"], "fix3<fix2<fix1<>>>");
        assert_eq!(outcomes(&st, "impl"), ["succeeded"]);
        // tests: 4 iterations; fixes: 3 plus the re-run of the killed one.
        assert_eq!((sb.lines("tests.txt"), sb.lines("fixes.txt")), (4, 4));
    }
}

on_both_backends! {
    fn resuming_from_an_iteration_reruns_from_there_and_drops_the_later_ones(sb: Sandbox) {
        sb.write("go", "");
        let mut s = sb.server();
        let id = s.start(fix_until_green(2, 1));
        assert_eq!(s.wait_done(&id)["status"], "completed");
        sb.write("count", "1");
        s.call(
            "invoke_resume",
            json!({"thread_id": id, "from_step": "test#2"}),
        );
        assert_eq!(s.wait_done(&id)["status"], "completed");
        let st = s.status(&id);
        assert_eq!(outcomes(&st, "test#1"), ["succeeded"], "iteration 1 kept");
        assert_eq!(outcomes(&st, "test#2").len(), 2, "test#2 re-ran");
        assert_eq!(step(&st, "fix#2")["output"], "fix2<fix1<>>");
        assert_eq!(step(&st, "test#3")["output"], "PASS");
        let err = s.call_err(
            "invoke_resume",
            json!({"thread_id": id, "from_step": "test"}),
        );
        assert!(err.contains("test"), "{err}");
    }
}

#[test]
fn the_fix_until_green_example_runs_to_green() {
    let sb = Sandbox::new();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fix-until-green.json");
    std::fs::copy(&example, sb.path("fix-until-green.json")).unwrap();
    let out = sb.cli(&["run", "fix-until-green.json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fix#2: completed"), "{stdout}");
    assert!(
        stdout.contains("green: completed after 3 iterations"),
        "{stdout}"
    );
    assert!(stdout.contains("workflow completed"), "{stdout}");
}
