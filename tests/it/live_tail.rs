//! The live tail of a running command step over real HTTP: its output while it runs, and a
//! tail stream that ends with the attempt.

use std::io::{BufRead, BufReader};
use std::sync::mpsc::channel;

use serde_json::{Value, json};

use crate::http::{agent, serve_http};
use crate::util::*;

#[test]
fn a_running_command_step_shows_its_output_live_and_its_tail_stream_ends_with_it() {
    let sb = Sandbox::new();
    let (mut s, h) = serve_http(&sb, &[]);
    let id = h.start(json!({"steps": [{"id": "build",
        "shell": "echo compiling; echo careful >&2; while [ ! -f go ]; do sleep 0.05; done; echo linked"}]}));
    let out = format!("/api/workflows/{id}/steps/build/output?stream=");
    eventually("the running step's output", || {
        h.get(&format!("{out}stdout")).1.contains("compiling")
    });
    assert_eq!(h.get(&format!("{out}stderr")).1, "careful\n");
    let resp = agent()
        .get(format!("{}/api/workflows/{id}/steps/build/tail", h.base))
        .header("Authorization", format!("Bearer {}", h.token))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in BufReader::new(resp.into_body().into_reader()).lines() {
            let Ok(line) = line else { return };
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(d).unwrap();
                if tx.send((event.clone(), v)).is_err() {
                    return;
                }
            }
        }
    });
    let (kind, first) = rx.recv_timeout(PATIENCE).unwrap();
    assert_eq!(kind, "output");
    assert_eq!(first["stdout"], "compiling\n");
    assert_eq!(first["stderr"], "careful\n");
    sb.write("go", "");
    let mut last = first;
    loop {
        let (kind, v) = rx.recv_timeout(PATIENCE).expect("the tail stream ends");
        if kind == "end" {
            break;
        }
        last = v;
    }
    assert!(
        ["compiling\n", "compiling\nlinked\n"].contains(&last["stdout"].as_str().unwrap()),
        "{last}"
    );
    assert_eq!(s.wait_done(&id)["status"], "completed");
    assert_eq!(
        h.get(&format!("{out}stdout")).1,
        "compiling\nlinked\n",
        "the kept output once it ended"
    );
    let (code, _) = h.get(&format!("/api/workflows/{id}/steps/build/tail"));
    assert_eq!(code, 200, "a step not running here ends its tail at once");
}
