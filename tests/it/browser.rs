//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against the real binary. Skipped, saying so, where chromedriver is not installed
//! (`.ci/run` installs Debian's `chromium` and `chromium-driver`).

use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

use crate::http::serve_http;
use crate::util::{PATIENCE, Sandbox, eventually};

fn chromedriver() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("chromedriver"))
        .find(|p| p.is_file())
}

struct Driver(std::process::Child);
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dashboard_shows_live_progress_resumes_a_failed_workflow_and_approves_a_human_step() {
    let Some(exe) = chromedriver() else {
        eprintln!(
            "SKIPPED dashboard browser test: chromedriver is not installed (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _driver = Driver(
        Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("chromedriver listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let sb = Sandbox::new();
    let (_server, h) = serve_http(&sb, &[]);
    let id = h.start(json!({"name": "browser-demo", "steps": [
        {"id": "build", "shell": "echo compiling; while [ ! -f go ]; do sleep 0.05; done; echo built"},
        {"id": "test", "deps": ["build"], "shell": "test -f ready || { echo 'not ready yet' >&2; exit 1; }; echo passed",
         "retry": {"max_attempts": 1}},
        {"id": "notes", "deps": ["test"], "shell": "echo {test.output}"}]}));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1100"]}),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        let wait = |css: String| {
            let c = c.clone();
            async move {
                c.wait()
                    .at_most(PATIENCE)
                    .every(Duration::from_millis(50))
                    .for_element(Locator::Css(&css))
                    .await
                    .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
            }
        };
        c.goto(&format!("{}/?token={}#/workflows/{id}", h.base, h.token))
            .await
            .unwrap();
        wait(r#"tr[data-step="build"][data-status="running"]"#.into()).await;
        // A marker that a reload would erase.
        c.execute("window.__noReload = true;", vec![])
            .await
            .unwrap();
        // The running step's output tails live in its detail pane.
        click_live(&c, r#"g.node[data-step="build"]"#).await;
        c.wait()
            .at_most(PATIENCE)
            .every(Duration::from_millis(50))
            .for_element(Locator::XPath(
                r#"//*[@id="sd-stdout"][contains(., "compiling")]"#,
            ))
            .await
            .expect("the running step's live output in its detail pane");
        std::fs::write(sb.path("go"), "").unwrap();
        wait(r#"tr[data-step="build"][data-status="completed"]"#.into()).await;
        wait(r#"#wf-status[data-status="failed"]"#.into()).await;
        wait(r#"g.node[data-step="test"][data-status="failed"]"#.into()).await;
        std::fs::write(sb.path("ready"), "").unwrap();
        click_live(&c, "#btn-resume").await;
        wait(r#"#wf-status[data-status="completed"]"#.into()).await;
        wait(r#"tr[data-step="notes"][data-status="completed"]"#.into()).await;
        let still = c
            .execute("return window.__noReload === true;", vec![])
            .await
            .unwrap();
        assert_eq!(still, json!(true), "the page updated without a reload");
        // The timeline draws the failed attempt and its retry as separate bars.
        let bars = c.find_all(Locator::Css("#gantt rect.bar")).await.unwrap();
        assert!(bars.len() >= 4, "one bar per attempt, got {}", bars.len());
        if let Some(path) = std::env::var_os("BATON_SCREENSHOT") {
            c.find(Locator::Css(r#"g.node[data-step="test"]"#))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            wait("#step-detail:not([hidden])".into()).await;
            let png = c.screenshot().await.unwrap();
            std::fs::write(path, png).unwrap();
        }
        // A human step: its question shows on its row; Approve answers it.
        let gated = h.start(json!({"name": "approval-demo", "steps": [
            {"id": "ship", "human": {"prompt": "Ship <b>it</b>?"}},
            {"id": "after", "deps": ["ship"], "run": ["echo", "{ship.output}"]}]}));
        c.goto(&format!("{}/#/workflows/{gated}", h.base))
            .await
            .unwrap();
        let question = wait(r#"tr[data-step="ship"] [data-question="ship"]"#.into()).await;
        assert!(
            question.text().await.unwrap().contains("Ship <b>it</b>?"),
            "the question is shown as text, never as HTML"
        );
        click_live(&c, r#"tr[data-step="ship"] button[data-action="approve"]"#).await;
        wait(r#"tr[data-step="after"][data-status="completed"]"#.into()).await;
        wait(r#"#wf-status[data-status="completed"]"#.into()).await;
        c.close().await.unwrap();
    });
}

/// Clicks the element `css` names. The dashboard re-renders its table and graph on every
/// event, so a found element may be replaced before the click lands: find it again until a
/// click reaches a live one.
async fn click_live(c: &fantoccini::Client, css: &str) {
    for _ in 0..20 {
        let element = c.find(Locator::Css(css)).await.unwrap();
        match element.click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
    panic!("{css} kept being replaced before a click reached it");
}
