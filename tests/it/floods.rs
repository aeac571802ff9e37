//! Nothing floods the server: a step printing as fast as it can costs bounded memory, and a
//! stored workflow with extreme values runs (or fails visibly) instead of wedging.

use serde_json::json;

use crate::util::Sandbox;

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_step_printing_without_pause_keeps_server_memory_bounded() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({"steps": [
        {"id": "yes", "run": ["yes"], "timeout_s": 3, "retry": {"max_attempts": 1}},
        {"id": "seq", "run": ["seq", "1", "3000000"]}
    ]}));
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "failed", "{done}");
    let st = s.status(&id);
    assert!(
        st["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{st}"
    );
    let seq = st["steps"][1]["output"].as_str().unwrap();
    assert!(seq.starts_with("1\n2\n3\n"), "{}", &seq[..20]);
    let peak = peak_rss_kib(s.pid());
    // Before the signals were coalesced, `yes` alone grew the server by gigabytes.
    eprintln!("server peak RSS with a flooding step: {peak} KiB");
    assert!(peak < 200 * 1024, "server peak RSS {peak} KiB");
}

#[test]
fn a_stored_workflow_with_an_extreme_stall_timeout_runs_instead_of_wedging() {
    let sb = Sandbox::new();
    let gate = sb.path("gate");
    let mut s = sb.server();
    let id = s.start(
        json!({"steps": [{"id": "wait", "on_stall": "restart", "shell":
        format!("while [ ! -e {} ]; do sleep 0.05; done; echo ok", gate.display())}]}),
    );
    s.kill9();
    // A definition stored before submission bounds existed: the largest stall timeout.
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    let body: String = conn
        .query_row("SELECT body FROM definitions", [], |r| r.get(0))
        .unwrap();
    let mut def: serde_json::Value = serde_json::from_str(&body).unwrap();
    def["steps"][0]["stall_timeout_s"] = json!(u64::MAX);
    conn.execute("UPDATE definitions SET body = ?1", [def.to_string()])
        .unwrap();
    drop(conn);
    std::fs::write(&gate, "").unwrap();
    let mut s = sb.server_with(&[("BATON_LEASE_MS", "500")], crate::util::Protocol::V2025);
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
}

#[test]
fn workflow_files_are_read_only_when_regular_and_the_server_keeps_its_stdin() {
    let sb = Sandbox::new();
    let fifo = sb.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut s = sb.server();
    for file in ["/dev/zero", "/dev/stdin", fifo.to_str().unwrap()] {
        let msg = s.call_err("invoke_async", json!({ "file": file }));
        assert!(msg.contains("not a regular file"), "{file}: {msg}");
    }
    // The server still reads its own requests.
    let id = s.start(json!({"steps": [{"id": "a", "run": ["true"]}]}));
    assert_eq!(s.wait_done(&id)["status"], "completed");
}
