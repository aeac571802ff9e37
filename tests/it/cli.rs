//! The terminal front-end: `baton run`, `resume`, `status`, `list`, `validate`, `schema`, and
//! the database file it creates.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::util::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// The thread id `baton run` reports on stderr.
fn thread_id(o: &std::process::Output) -> String {
    stderr(o)
        .lines()
        .find_map(|l| l.strip_prefix("thread_id "))
        .unwrap_or_else(|| panic!("no thread_id in {}", stderr(o)))
        .to_owned()
}

/// Every event of a workflow, read through a server on the same database.
fn events_of(sb: &Sandbox, id: &str) -> Vec<Value> {
    let mut s = sb.server();
    s.stream_pages(id, 0, 0.0).0
}

#[test]
fn run_exits_zero_on_completion_and_prints_one_line_per_event() {
    let sb = Sandbox::new();
    sb.write(
        "wf.json",
        &json!({"inputs": {"who": {}}, "steps": [
            {"id": "a", "run": ["echo", "hi {inputs.who}"]},
            {"id": "b", "deps": ["a"], "shell": "echo x >> b.txt; echo {a.output}"}
        ]})
        .to_string(),
    );
    let o = sb.cli(&["run", "wf.json", "-i", "who=you"]);
    assert!(o.status.success(), "{o:?}");
    let id = thread_id(&o);
    let events = events_of(&sb, &id);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), events.len(), "one line per event:\n{out}");
    for (line, e) in lines.iter().zip(&events) {
        assert!(line.starts_with(e["at"].as_str().unwrap()), "{line} vs {e}");
    }
    assert!(
        lines.last().unwrap().ends_with("workflow completed"),
        "{out}"
    );
    assert!(out.contains("b: completed"), "{out}");
    assert_eq!(sb.lines("b.txt"), 1);
}

#[test]
fn run_exits_nonzero_when_the_workflow_does_not_complete() {
    let sb = Sandbox::new();
    sb.write(
        "fail.json",
        r#"{"steps": [{"id": "a", "shell": "exit 4", "retry": {"max_attempts": 1}},
                      {"id": "b", "deps": ["a"], "shell": "echo x >> b.txt"}]}"#,
    );
    let o = sb.cli(&["run", "fail.json"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let out = stdout(&o);
    assert!(
        out.lines().last().unwrap().contains("workflow failed"),
        "{out}"
    );
    assert!(out.contains("exit status 4"), "{out}");
    // Resuming with skip completes it, and `baton run` semantics hold for resume too.
    let id = thread_id(&o);
    let r = sb.cli(&["resume", &id, "--mode", "skip"]);
    assert!(r.status.success(), "{r:?}");
    assert!(stdout(&r).contains("workflow completed"), "{}", stdout(&r));
    assert_eq!(sb.lines("b.txt"), 1);
    let st: Value = serde_json::from_str(&stdout(&sb.cli(&["status", &id]))).unwrap();
    assert_eq!(st["status"], "completed");
    assert_eq!(step(&st, "a")["status"], "skipped");
    let list = sb.cli(&["list", "--all"]);
    assert!(stdout(&list).contains(&id), "{}", stdout(&list));
}

#[test]
fn run_refuses_an_invalid_file_and_stores_nothing() {
    let sb = Sandbox::new();
    sb.write(
        "bad.json",
        r#"{"steps": [{"id": "a", "deps": ["zz"], "run": ["true"]}]}"#,
    );
    let o = sb.cli(&["run", "bad.json", "--thread-id", "t1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("zz"), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    let st = sb.cli(&["status", "t1"]);
    assert!(!st.status.success());
    assert!(stderr(&st).contains("unknown thread_id"), "{}", stderr(&st));
}

#[test]
fn run_with_an_existing_thread_id_attaches_instead_of_rerunning() {
    let sb = Sandbox::new();
    sb.write(
        "wf.json",
        r#"{"steps": [{"id": "a", "shell": "echo x >> a.txt"}]}"#,
    );
    let first = sb.cli(&["run", "wf.json", "--thread-id", "same"]);
    assert!(first.status.success(), "{first:?}");
    let second = sb.cli(&["run", "wf.json", "--thread-id", "same"]);
    assert!(second.status.success(), "{second:?}");
    assert_eq!(
        stdout(&first),
        stdout(&second),
        "the second run replays the same events"
    );
    assert_eq!(sb.lines("a.txt"), 1);
}

#[test]
fn validate_accepts_good_files_and_lists_every_problem_of_bad_ones() {
    let sb = Sandbox::new();
    sb.write(
        "ok.json",
        r#"{"steps": [{"id": "a", "run": ["true"]}, {"id": "b", "deps": ["a"], "run": ["true"]}]}"#,
    );
    let o = sb.cli(&["validate", "ok.json"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("ok (2 steps)"), "{}", stdout(&o));
    sb.write(
        "bad.json",
        r#"{"steps": [{"id": "a", "deps": ["b"], "run": ["true"]},
                      {"id": "b", "deps": ["a"], "run": ["true"]},
                      {"id": "c", "shell": "echo {nope.output}", "run": ["x"]}]}"#,
    );
    let o = sb.cli(&["validate", "bad.json"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("cycle"), "{err}");
    assert!(err.contains("step \"c\""), "{err}");
    let o = sb.cli(&["validate", "missing.json"]);
    assert!(!o.status.success());
    assert!(!sb.db().exists(), "validate never touches the database");
}

#[test]
fn schema_prints_the_json_schema_of_workflows() {
    let sb = Sandbox::new();
    let o = sb.cli(&["schema"]);
    assert!(o.status.success());
    let schema: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(schema["title"], "baton workflow definition");
    assert!(schema.to_string().contains("max_attempts"));
}

#[test]
fn database_files_are_private_to_their_owner() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [{"id": "a", "run": ["true"]}]}));
    s.wait_done(&id);
    let mut checked = 0;
    for suffix in ["", "-wal", "-shm"] {
        let p = sb.path(&format!("baton.db{suffix}"));
        if let Ok(m) = std::fs::metadata(&p) {
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", p.display());
            checked += 1;
        }
    }
    assert!(checked >= 1);
}
