//! Heads' own log lines on the bus: a host publishes what a head writes through `log`, within
//! the head's budget, on `headstream.logs.<pipeline>.<head>`; `headstream logs --follow` shows
//! them within a second, never more than the budget, and `headstream logs` reads them back from
//! the hosts' stream.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use headstream_test_util::{NatsServer, plugin_path, script_head};
use serde_json::Value;

use crate::nats_serve::Host;
use crate::runtime;

const PIPELINE: &str = r#"version = 1
name = "flood"
[input]
subject = "flood.in"
[output]
subject = "flood.out"
errors = "flood.errors"
[batching]
max_batch_size = 1
[[heads]]
name = "noisy"
component = "HOSTILE"
[heads.config]
mode = "log-flood"
lines = 50
line_bytes = 200
[heads.limits]
log_burst = 5
log_lines_per_s = 1
[[heads]]
name = "quiet"
builtin = "keyword-flags"
[heads.config.flags]
refund = ["refund"]
[[heads]]
name = "py"
component = "PYTHON"
[heads.config]
mode = "none"
say = "configured: ready for floods"
"#;

fn logs(url: &str, args: &[&str]) -> Command {
    let mut command = crate::headstream_command(&["logs"]);
    command.args(args).args(["--nats", url]);
    command
}

#[test]
fn head_logs_follow_within_a_second_and_never_past_the_budget() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let text = PIPELINE
        .replace("HOSTILE", &plugin_path("hostile").to_string_lossy())
        .replace("PYTHON", &script_head("hostile-python").to_string_lossy());
    let _host = Host::serve_pipeline(dir.path(), &text, &url, &[]);
    let rt = runtime();
    let client = rt.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Ready: the host answers (the text carries no `boom`: nothing is logged).
        crate::nats_serve::wait_answering(&client, "flood.in").await;
        client
    });

    // Follow first, then make the head flood its log.
    let mut follower = logs(&url, &["flood", "noisy", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = follower
        .stdout
        .take()
        .unwrap_or_else(|| panic!("no stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    rt.block_on(async {
        let reply = client
            .request(
                "flood.in",
                r#"{"id":"b-1","text":"boom, refund please"}"#.into(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let result: Value =
            serde_json::from_slice(&reply.payload).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result["results"]["noisy"]["len"], 19, "{result}");
        assert_eq!(result["results"]["quiet"]["flags"][0], "refund", "{result}");
    });
    let mut lines = Vec::new();
    while let Ok((at, line)) = rx.recv_timeout(Duration::from_secs(3)) {
        lines.push((at, line));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    // 50 lines written at once: the burst of 5 reaches the bus, the rest is dropped.
    assert!(
        (5..=6).contains(&lines.len()),
        "{} lines followed: {lines:?}",
        lines.len()
    );
    let first = lines[0].0.saturating_duration_since(sent);
    println!(
        "first head log line followed {} ms after the request",
        first.as_millis()
    );
    assert!(first < Duration::from_secs(1), "first line after {first:?}");
    for (_, line) in &lines {
        assert!(
            line.contains(" flood/noisy hostile@0.1.0  WARN flood\\nFORGED host line"),
            "{line}"
        );
        assert!(!line.contains('\u{1b}'), "escapes are escaped: {line:?}");
    }

    // Read back from the stream, as JSON records; nothing for the quiet head.
    let out = logs(&url, &["flood", "noisy", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(records.len(), lines.len(), "{records:?}");
    for r in &records {
        assert_eq!(r["pipeline"], "flood");
        assert_eq!(r["head"], "noisy");
        assert_eq!(r["version"], "hostile@0.1.0");
        assert_eq!(r["level"], "warn");
        assert!(r["host"].as_str().is_some_and(|h| !h.is_empty()), "{r}");
        assert!(
            r["message"].as_str().is_some_and(|m| m.len() <= 1024),
            "{r}"
        );
    }
    let quiet = logs(&url, &["flood", "quiet"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(quiet.status.success());
    assert!(
        quiet.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stdout)
    );
    // What a head logs while it first configures reaches the bus too, under the version it
    // describes itself by (a component, not a package).
    let said = logs(&url, &["flood", "py", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let said: Vec<Value> = String::from_utf8_lossy(&said.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!said.is_empty(), "the configure line is on the bus");
    assert_eq!(
        said[0]["message"], "configured: ready for floods",
        "{said:?}"
    );
    assert_eq!(said[0]["version"], "hostile-python@0.1.0", "{said:?}");
    assert_eq!(said[0]["level"], "info");
    let later = logs(&url, &["flood", "--since", "1s"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(later.stdout.is_empty(), "--since excludes older lines");
}
