//! The six tools, driven the way a host drives them.

use serde_json::json;

use crate::util::*;

#[test]
fn diamond_workflow_completes_with_templates_and_progress() {
    let sb = Sandbox::new();
    let mut s = sb.server();
    let id = s.start(json!({
        "name": "diamond",
        "steps": [
            {"id": "a", "run": ["echo", "hello"]},
            {"id": "b", "deps": ["a"], "shell": "echo b:{a.output}"},
            {"id": "c", "deps": ["a"], "run": ["printf", "c:%s", "{a.output}"]},
            {"id": "d", "deps": ["b", "c"], "shell": "printf '%s+%s' {b.output} {c.output}"}
        ]
    }));
    let r = s.call_raw("invoke_stream", json!({"thread_id": id, "wait_s": 30}), Some("tok"));
    let r = &r["result"]["structuredContent"];
    assert_eq!(r["done"], json!(true), "{r}");
    assert_eq!(r["status"], "completed");
    let status = s.status(&id);
    assert_eq!(step(&status, "d")["output"], "b:hello+c:hello");
    assert_eq!(status["progress"], json!({"done": 4, "total": 4}));
    // Every event became a progress notification with total = step count and a message;
    // progress strictly increases.
    let progress: Vec<_> = s
        .notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), r["events"].as_array().unwrap().len());
    let mut last = -1.0;
    for n in &progress {
        let p = &n["params"];
        assert_eq!(p["progressToken"], "tok");
        assert_eq!(p["total"], json!(4.0));
        assert!(!p["message"].as_str().unwrap().is_empty());
        let v = p["progress"].as_f64().unwrap();
        assert!(v > last);
        last = v;
    }
}
