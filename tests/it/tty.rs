//! The terminal view in a real terminal: `baton run` and `baton list` inside tmux, read back
//! with `capture-pane`. Skipped, saying so, where tmux is not installed (`.ci/run` installs
//! it, and under CI its absence is a failure).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{BIN, PATIENCE, Sandbox};

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_agent/claude.py");

/// A detached tmux session on its own server socket; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, command: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "tmux is not installed (.ci/run installs it)"
            );
            eprintln!("skipping {name}: tmux is not installed");
            return None;
        }
        let socket = format!("baton-test-{}-{name}", std::process::id());
        let status = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
            ])
            .args(["-x", "110", "-y", "30", "sh", "-c", command])
            .env_remove("TMUX")
            .status()
            .unwrap();
        assert!(status.success(), "tmux did not start");
        Some(Tmux { socket })
    }

    /// The visible screen, one string per line, trailing blanks trimmed.
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `pred`; returns that screen.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} on the screen:\n{screen}"))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn run_on_a_terminal_draws_a_live_line_per_step_then_the_final_output() {
    let sb = Sandbox::new();
    let gate = sb.path("gate");
    let home = sb.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let wf = serde_json::json!({"name": "tty-demo", "steps": [
        {"id": "prepare", "shell": "echo prepared"},
        {"id": "agent", "deps": ["prepare"], "prompt": format!(
            "[[tool:Bash:cargo test --all]] [[wait-file:{}]] [[say:all 42 tests pass]]",
            gate.display())}
    ]});
    sb.write("wf.json", &wf.to_string());
    // No RUST_LOG: a terminal user sees no routine INFO lines by default.
    let command = format!(
        "cd {dir} && env -u RUST_LOG BATON_DB={db} HOME={home} BATON_AGENT_COMMAND={agent} \
         {bin} run wf.json; echo EXIT=$?; env BATON_DB={db} {bin} list --all; sleep 600",
        dir = shell_quote(sb.dir.path().to_str().unwrap()),
        db = shell_quote(sb.db().to_str().unwrap()),
        home = shell_quote(home.to_str().unwrap()),
        agent = shell_quote(&format!("python3 {FAKE}")),
        bin = shell_quote(BIN),
    );
    let Some(tmux) = Tmux::start("run", &command) else {
        return;
    };

    // While the agent step runs: the first step's line is final, the agent's shows a
    // spinner, its elapsed time and its latest tool use.
    let screen = tmux.wait_for("the agent's tool use", |s| s.contains("cargo test --all"));
    let header = line_with(&screen, "tty-demo");
    assert!(header.contains("running"), "{header}");
    assert!(header.contains("1/2 steps"), "{header}");
    let prepare = line_with(&screen, "prepare");
    assert!(prepare.trim_start().starts_with('✓'), "{prepare}");
    assert!(prepare.contains("completed in"), "{prepare}");
    let agent = line_with(&screen, "cargo test --all");
    assert!(agent.contains("agent"), "{agent}");
    let spinner = agent.trim_start().chars().next().unwrap();
    assert!("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏".contains(spinner), "no spinner on {agent:?}");
    assert!(agent.contains('s'), "no elapsed time on {agent:?}");
    assert_eq!(
        screen.lines().filter(|l| l.contains("prepare")).count(),
        1,
        "lines are redrawn in place, not appended:\n{screen}"
    );

    std::fs::write(&gate, "").unwrap();
    let screen = tmux.wait_for("the end of the run", |s| s.contains("EXIT="));
    assert!(screen.contains("EXIT=0"), "{screen}");
    let header = line_with(&screen, "tty-demo");
    assert!(header.contains("completed"), "{header}");
    assert!(header.contains("2/2 steps"), "{header}");
    let agent = line_with(&screen, "agent ");
    assert!(agent.trim_start().starts_with('✓'), "{agent}");
    // The final step's output, below the view.
    line_with(&screen, "all 42 tests pass");
    assert!(
        !screen.contains("INFO"),
        "routine logs reached the terminal:\n{screen}"
    );

    // `baton list` on a terminal: a table with a header row.
    let screen = tmux.wait_for("the list table", |s| s.contains("THREAD ID"));
    let head = line_with(&screen, "THREAD ID");
    for col in ["STATUS", "STEPS", "STARTED", "NAME"] {
        assert!(head.contains(col), "{head}");
    }
    let row = line_with(&screen, "2/2");
    assert!(
        row.contains("completed") && row.contains("tty-demo"),
        "{row}"
    );
}
