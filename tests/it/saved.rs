//! Saved workflows: files in the project's and the user's workflows folders, listed as MCP
//! prompts and started by name from MCP and the terminal.

use serde_json::{Value, json};

use crate::util::{Protocol, Sandbox};

const GREET_YAML: &str = "\
name: greet
description: Greets someone
inputs:
  who:
    description: whom to greet
  punct: \"!\"
steps:
  - id: hello
    run: [echo, \"hello {inputs.who}{inputs.punct}\"]
";

/// A sandbox whose server reads `.baton/workflows/` under the sandbox and `user/baton/workflows`
/// as the user's folder.
fn saved_sandbox() -> (Sandbox, std::path::PathBuf, std::path::PathBuf) {
    let sb = Sandbox::new();
    let project = sb.path(".baton/workflows");
    let user = sb.path("user/baton/workflows");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::create_dir_all(&user).unwrap();
    (sb, project, user)
}

fn server(sb: &Sandbox) -> crate::util::Server {
    let xdg = sb.path("user");
    sb.server_with(
        &[("XDG_CONFIG_HOME", xdg.to_str().unwrap())],
        Protocol::V2025,
    )
}

fn prompt_names(r: &Value) -> Vec<String> {
    r["result"]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn saved_workflows_are_prompts_with_their_inputs_as_arguments() {
    let (sb, project, user) = saved_sandbox();
    std::fs::write(project.join("greet.yaml"), GREET_YAML).unwrap();
    std::fs::write(
        user.join("tidy.json"),
        r#"{"steps": [{"id": "t", "run": ["true"]}]}"#,
    )
    .unwrap();
    std::fs::write(project.join("broken.json"), r#"{"steps": [{"id": "x"}]}"#).unwrap();
    let mut s = server(&sb);
    let r = s.request("prompts/list", json!({}));
    assert_eq!(prompt_names(&r), ["broken", "greet", "tidy"], "{r}");
    let prompts = r["result"]["prompts"].as_array().unwrap();
    let greet = prompts.iter().find(|p| p["name"] == "greet").unwrap();
    assert!(
        greet["description"]
            .as_str()
            .unwrap()
            .contains("Greets someone"),
        "{greet}"
    );
    let args = greet["arguments"].as_array().unwrap();
    let who = args.iter().find(|a| a["name"] == "who").unwrap();
    assert_eq!(who["required"], true);
    assert_eq!(who["description"], "whom to greet");
    let punct = args.iter().find(|a| a["name"] == "punct").unwrap();
    assert_eq!(punct["required"], false);
    let broken = prompts.iter().find(|p| p["name"] == "broken").unwrap();
    assert!(
        broken["description"].as_str().unwrap().contains("BROKEN"),
        "{broken}"
    );

    let got = s.request(
        "prompts/get",
        json!({"name": "greet", "arguments": {"who": "Ada"}}),
    );
    let text = got["result"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap();
    assert!(text.contains("invoke_async"), "{text}");
    assert!(
        text.contains(r#"{"inputs":{"who":"Ada"},"name":"greet"}"#),
        "{text}"
    );
    let bad = s.request("prompts/get", json!({"name": "broken"}));
    let text = bad["result"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap();
    assert!(text.contains("broken.json"), "{text}");
    assert!(text.contains("problem"), "{text}");
    let unknown = s.request("prompts/get", json!({"name": "nope"}));
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("greet"),
        "{unknown}"
    );
}

#[test]
fn invoke_async_starts_a_saved_workflow_by_name() {
    let (sb, project, _) = saved_sandbox();
    std::fs::write(project.join("greet.yaml"), GREET_YAML).unwrap();
    std::fs::write(project.join("broken.yml"), "steps: [\n").unwrap();
    let mut s = server(&sb);
    let r = s.call(
        "invoke_async",
        json!({"name": "greet", "inputs": {"who": "Ada"}}),
    );
    let id = r["thread_id"].as_str().unwrap().to_owned();
    let done = s.wait_done(&id);
    assert_eq!(done["status"], "completed", "{done}");
    let st = s.status(&id);
    assert_eq!(st["name"], "greet");
    assert_eq!(
        crate::util::step(&st, "hello")["output"]
            .as_str()
            .unwrap()
            .trim(),
        "hello Ada!"
    );
    let missing = s.call_err("invoke_async", json!({"name": "greet"}));
    assert!(missing.contains("who"), "{missing}");
    let broken = s.call_err("invoke_async", json!({"name": "broken"}));
    assert!(broken.contains("broken.yml"), "{broken}");
    assert!(broken.contains("not valid YAML"), "{broken}");
    let unknown = s.call_err("invoke_async", json!({"name": "nope"}));
    assert!(unknown.contains("greet"), "{unknown}");
    let both = s.call_err("invoke_async", json!({"name": "greet", "file": "x.json"}));
    assert!(both.contains("not several"), "{both}");
}

#[test]
fn prompt_list_changes_are_notified_when_a_folder_changes() {
    let (sb, project, _) = saved_sandbox();
    let mut s = server(&sb);
    let caps = s.request("prompts/list", json!({}));
    assert_eq!(prompt_names(&caps), Vec::<String>::new());
    std::fs::write(project.join("greet.yaml"), GREET_YAML).unwrap();
    s.wait_notification("notifications/prompts/list_changed");
    let r = s.request("prompts/list", json!({}));
    assert_eq!(prompt_names(&r), ["greet"]);
}

#[test]
fn the_server_declares_prompts_with_list_changed_and_short_instructions() {
    let sb = Sandbox::new();
    let mut s = sb.server_with(&[], Protocol::V2026);
    let r = s.request("server/discover", json!({}));
    let caps = &r["result"]["capabilities"];
    assert_eq!(caps["prompts"]["listChanged"], true, "{r}");
    let instructions = r["result"]["instructions"].as_str().unwrap();
    assert!(instructions.len() <= 2048, "{} bytes", instructions.len());
    assert!(instructions.contains("invoke_async"), "{instructions}");
}

#[test]
fn baton_run_takes_a_saved_workflow_name_and_list_saved_shows_it() {
    let (sb, project, user) = saved_sandbox();
    std::fs::write(project.join("greet.yaml"), GREET_YAML).unwrap();
    std::fs::write(
        user.join("greet.json"),
        r#"{"steps": [{"run": ["false"]}]}"#,
    )
    .unwrap();
    std::fs::write(project.join("broken.json"), "{").unwrap();
    let xdg = sb.path("user");
    let run = std::process::Command::new(crate::util::BIN)
        .args(["run", "greet", "-i", "who=Ada"])
        .env("BATON_DB", sb.db())
        .env("RUST_LOG", "warn")
        .env("XDG_CONFIG_HOME", &xdg)
        .current_dir(sb.dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        out.contains("workflow_completed") || out.contains("completed"),
        "{out}"
    );

    let list = std::process::Command::new(crate::util::BIN)
        .args(["list", "--saved"])
        .env("BATON_DB", sb.db())
        .env("XDG_CONFIG_HOME", &xdg)
        .current_dir(sb.dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&list.stdout);
    let err = String::from_utf8_lossy(&list.stderr);
    assert_eq!(
        list.status.code(),
        Some(2),
        "a broken file makes the exit code 2"
    );
    let line = out.lines().find(|l| l.starts_with("greet")).unwrap();
    assert!(line.contains("project"), "{line}");
    assert!(line.contains("[punct] who"), "{line}");
    assert!(
        line.contains("hides"),
        "the user's greet.json is shadowed: {line}"
    );
    assert!(err.contains("broken.json: 1 problem(s)"), "{err}");
}

#[test]
fn yaml_files_are_accepted_wherever_json_is() {
    let sb = Sandbox::new();
    let file = sb.path("wf.yml");
    std::fs::write(&file, "steps:\n  - id: a\n    run: [echo, hi]\n").unwrap();
    let v = sb.cli(&["validate", "wf.yml"]);
    assert!(v.status.success(), "{v:?}");
    assert!(String::from_utf8_lossy(&v.stdout).contains("ok (1 steps)"));
    let bad = sb.path("bad.yaml");
    std::fs::write(&bad, "steps: [\n").unwrap();
    let v = sb.cli(&["validate", "bad.yaml"]);
    assert!(!v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("not valid YAML"),
        "{v:?}"
    );
    let run = sb.cli(&["run", "wf.yml"]);
    assert!(run.status.success(), "{run:?}");
    let mut s = sb.server();
    let r = s.call("invoke_async", json!({"file": "wf.yml"}));
    let done = s.wait_done(r["thread_id"].as_str().unwrap());
    assert_eq!(done["status"], "completed");
}

#[test]
fn prompt_list_changes_reach_a_2026_listen_stream() {
    let (sb, project, _) = saved_sandbox();
    let xdg = sb.path("user");
    let mut s = sb.server_with(
        &[("XDG_CONFIG_HOME", xdg.to_str().unwrap())],
        Protocol::V2026,
    );
    s.send(
        "subscriptions/listen",
        json!({"notifications": {"promptsListChanged": true}}),
        None,
    );
    let ack = s.wait_notification("notifications/subscriptions/acknowledged");
    assert_eq!(
        ack["params"]["notifications"]["promptsListChanged"], true,
        "{ack}"
    );
    std::fs::write(project.join("greet.yaml"), GREET_YAML).unwrap();
    let n = s.wait_notification("notifications/prompts/list_changed");
    assert!(
        n["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"].is_number()
            || n["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"].is_string(),
        "{n}"
    );
}
