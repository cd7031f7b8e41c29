//! The live dashboard in a real browser: `headstream dashboard` over a running host, opened in
//! Debian's Chromium driven by playwright-core (`tests/browser/dashboard.mjs`); a pipeline
//! deployed while the page is open appears with its deploy event and traffic, without a reload.
//! The screenshot is written to `target/screenshots/dashboard.png`.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use headstream_test_util::{NatsServer, browser_tools, free_port, workspace_root};

use crate::nats_serve::Host;

/// The pipeline deployed while the page is open (`mood`, core delivery).
const MOOD_HEADS: &str = "[[heads]]\nname = \"flags\"\nbuiltin = \"keyword-flags\"\n[heads.config.flags]\nangry = [\"terrible\"]\n";

#[test]
fn a_deploy_shows_up_live_in_the_browser() {
    let (chromium, browser_dir) = browser_tools();
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let triage = workspace_root().join("pipelines/support-triage.toml");
    let _host = Host::serve(&[
        "--pipeline",
        &triage.to_string_lossy(),
        "--deployed",
        "--nats",
        &url,
        "--registry",
        &dir.path().to_string_lossy(),
    ]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut dashboard =
        crate::headstream_command(&["dashboard", "--listen", &listen, "--nats", &url])
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
    let shots = workspace_root().join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap_or_else(|e| panic!("{e}"));
    let shot = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let mut browser = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("http://127.0.0.1:{port}/dashboard"))
        .arg(&shot)
        .arg("mood")
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("node: {e}"));
    let stdout = browser.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let ready = lines.next().unwrap_or_default();
    assert_eq!(ready, "READY", "the page shows the host and its pipeline");

    // While the page is open: deploy a pipeline, then send it traffic until the page has seen
    // it (the browser exits).
    let file = dir.path().join("mood.toml");
    std::fs::write(
        &file,
        crate::nats_deploy::pipeline_text("mode = \"core\"", MOOD_HEADS),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let deployed = crate::headstream(
        &[
            "deploy",
            "pipeline",
            &file.to_string_lossy(),
            "--nats",
            &url,
        ],
        b"",
    );
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    let stop = Arc::new(AtomicBool::new(false));
    // Traffic from one client, every 100 ms, until the page has seen it.
    let rt = crate::runtime();
    let traffic = {
        let stop = stop.clone();
        let client = rt
            .block_on(async_nats::connect(&url))
            .unwrap_or_else(|e| panic!("{e}"));
        rt.spawn(async move {
            for i in 0..600 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = format!(r#"{{"text":"message {i}: this is terrible"}}"#);
                let _ = client.publish("mood.in", body.into()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let rest: Vec<String> = lines.collect();
    let status = browser.wait().unwrap_or_else(|e| panic!("{e}"));
    stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(traffic);
    let _ = dashboard.kill();
    let _ = dashboard.wait();
    println!("browser: {rest:?}; screenshot {}", shot.display());
    assert!(status.success(), "the browser saw: {rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("DONE")), "{rest:?}");
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
