//! Shipping a task without redeploying: the cluster registry on a real nats-server and
//! `headstream serve --deployed` hosts that follow it.
//!
//! - Under continuous JetStream load, deploying v2 of a head swaps both hosts to it: every
//!   message gets exactly one result, each tagged with the version that produced it, no
//!   errors; the swap time per host is printed.
//! - A corrupt package, a package for another encoder and an invalid pipeline are rejected by
//!   every host (events on `headstream.events.rejected`) while traffic continues on the old
//!   version; `rollback` restores the previous pipeline revision on both hosts.
//! - Canary splits traffic at the configured share by message id; shadow publishes paired
//!   outputs to its subject and leaves results untouched.
//! - `serve --watch` applies edited pipeline files and new packages in a registry directory,
//!   and rejects a broken edit while the old version keeps serving.
//!
//! The heads are copies of the shipped `heads/sentiment` package under new versions (v2 of
//! the canary test predicts the opposite label, so its outputs are told apart), and, for the
//! hot swap of script heads, the Python and JavaScript example packages
//! (`crate::polyglot::script_packages`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use headstream_registry::ClusterRegistry;
use headstream_test_util::{NatsServer, workspace_root};
use serde_json::{Value, json};

use crate::nats_serve::{Host, metric, scrape};
use crate::runtime;

/// A copy of the shipped sentiment package as `version`; `edit` may change its manifest.
pub(crate) fn sentiment_package(
    dir: &Path,
    version: &str,
    edit: impl FnOnce(&mut Value),
) -> PathBuf {
    let source = workspace_root().join("heads/sentiment");
    let out = dir.join(format!("sentiment-{version}"));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    for file in ["head.wasm", "weights.safetensors"] {
        std::fs::copy(source.join(file), out.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", source.join(file).display()));
    }
    let text =
        std::fs::read_to_string(source.join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    let mut manifest: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    manifest["version"] = json!(version);
    edit(&mut manifest);
    std::fs::write(out.join("manifest.json"), manifest.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

/// The sentiment package predicting the opposite label (its label names swapped).
fn inverted(manifest: &mut Value) {
    manifest["config"]["labels"] = json!(["positive", "negative"]);
    manifest["labels"] = json!(["positive", "negative"]);
}

/// `headstream deploy plugin PACKAGE --nats URL`, asserting success.
pub(crate) fn deploy_plugin(package: &Path, url: &str) {
    crate::headstream_ok(
        &[
            "deploy",
            "plugin",
            &package.to_string_lossy(),
            "--nats",
            url,
        ],
        b"",
    );
}

/// `headstream deploy pipeline FILE --nats URL`, asserting success.
pub(crate) fn deploy_pipeline(file: &Path, url: &str) {
    crate::headstream_ok(
        &["deploy", "pipeline", &file.to_string_lossy(), "--nats", url],
        b"",
    );
}

/// A pipeline `mood` (input `mood.in`) with `delivery` settings and `heads`.
pub(crate) fn pipeline_text(delivery: &str, heads: &str) -> String {
    format!(
        r#"version = 1
name = "mood"
[input]
subject = "mood.in"
[output]
subject = "mood.out"
errors = "mood.errors"
[delivery]
{delivery}
[batching]
max_batch_size = 16
max_wait_ms = 5
{heads}"#
    )
}

const ONE_HEAD: &str = "[[heads]]\nname = \"sentiment\"\nplugin = \"sentiment@^1\"\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// A host following the cluster registry, with an empty local registry.
fn deployed_host(url: &str, empty: &Path, extra: &[&str]) -> Host {
    let mut args = vec!["--deployed", "--nats", url, "--registry"];
    let empty = empty.to_string_lossy();
    args.push(&empty);
    args.extend(extra);
    Host::serve(&args)
}

/// Deploy events as they arrive.
struct Events(async_nats::Subscriber);

impl Events {
    async fn subscribe(client: &async_nats::Client) -> Self {
        Self(subscribe(client, "headstream.events.>").await)
    }

    /// Waits for events matching `want` from `hosts` distinct hosts; returns them by host.
    async fn wait_hosts(
        &mut self,
        hosts: usize,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> HashMap<String, Value> {
        let mut seen = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while seen.len() < hosts {
            let event = tokio::time::timeout_at(deadline, self.0.next())
                .await
                .unwrap_or_else(|_| panic!("no {what} from {hosts} hosts within 90 s: {seen:?}"))
                .unwrap_or_else(|| panic!("event subscription ended"));
            let event: Value =
                serde_json::from_slice(&event.payload).unwrap_or_else(|e| panic!("{e}"));
            if want(&event) {
                let host = event["host"].as_str().unwrap_or_default().to_owned();
                seen.insert(host, event);
            }
        }
        seen
    }
}

/// Subscribes to `subject`, confirmed by the server before returning.
async fn subscribe(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let subscription = client
        .subscribe(subject.to_owned())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client.flush().await.unwrap_or_else(|e| panic!("{e}"));
    subscription
}

/// Sends `text` as a request to the pipeline and returns the reply.
async fn ask(client: &async_nats::Client, text: &str) -> Value {
    let body = json!({ "text": text }).to_string();
    let reply = client
        .request("mood.in", body.into())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&reply.payload).unwrap_or_else(|e| panic!("{e}"))
}

impl Events {
    /// Waits for `hosts` hosts to reject something matching `want`, each naming `reason`.
    async fn rejected_by(
        &mut self,
        hosts: usize,
        what: &str,
        want: impl Fn(&Value) -> bool,
        reason: &str,
    ) {
        let rejected = self
            .wait_hosts(hosts, what, |e| e["event"] == "rejected" && want(e))
            .await;
        for event in rejected.values() {
            let said = event["reason"].as_str().unwrap_or_default();
            assert!(said.contains(reason), "expected {reason:?}: {event}");
        }
    }
}

fn is(event: &Value, kind: &str, what: &str) -> bool {
    event["event"] == kind && event["kind"] == what
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const WORDS: [&str; 8] = [
    "wonderful",
    "terrible",
    "fine",
    "awful",
    "great",
    "slow",
    "friendly",
    "broken",
];

#[test]
fn a_new_head_version_takes_over_both_hosts_under_load_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let v1 = sentiment_package(dir.path(), "1.0.0", |_| {});
    let v2 = sentiment_package(dir.path(), "1.1.0", |_| {});
    swap_under_load(
        dir.path(),
        ONE_HEAD,
        &[v1],
        &[v2],
        &[("sentiment", "sentiment@1.0.0", "sentiment@1.1.0")],
    );
}

#[test]
fn python_and_javascript_heads_take_over_both_hosts_under_load_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (rules, pii) = crate::polyglot::script_packages(dir.path());
    let v2 = [
        package_version(&rules, dir.path(), "1.1.0"),
        package_version(&pii, dir.path(), "1.1.0"),
    ];
    let heads = "[[heads]]\nname = \"topic\"\nplugin = \"support-rules@^1\"\n\
                 [[heads]]\nname = \"pii\"\nplugin = \"pii-flags@^1\"\n";
    swap_under_load(
        dir.path(),
        heads,
        &[rules, pii],
        &v2,
        &[
            ("topic", "support-rules@1.0.0", "support-rules@1.1.0"),
            ("pii", "pii-flags@1.0.0", "pii-flags@1.1.0"),
        ],
    );
}

/// A copy of the package at `source` as `version` (the component and assets unchanged).
fn package_version(source: &Path, dir: &Path, version: &str) -> PathBuf {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = dir.join(format!("{name}-{version}"));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(source).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if let Some(file) = path.file_name() {
            std::fs::copy(&path, out.join(file)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let text = std::fs::read_to_string(out.join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    let mut manifest: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    manifest["version"] = json!(version);
    std::fs::write(out.join("manifest.json"), manifest.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

/// Two `serve --deployed` hosts serve a JetStream pipeline of `heads` (packages `v1`); under
/// steady load the `v2` packages are deployed. Every message gets exactly one result, with no
/// errors, and per host each head `(result key, v1 id, v2 id)` answers v1 until its swap and
/// v2 after it; the swap time per host is printed.
fn swap_under_load(
    dir: &Path,
    heads: &str,
    v1: &[PathBuf],
    v2: &[PathBuf],
    ids: &[(&str, &str, &str)],
) {
    let server = NatsServer::start();
    let url = server.url();
    let empty = dir.join("local");
    std::fs::create_dir_all(&empty).unwrap_or_else(|e| panic!("{e}"));
    let delivery = "mode = \"jetstream\"\nstream = \"MOOD\"\nconsumer = \"mood\"";
    let file = write(dir, "mood.toml", &pipeline_text(delivery, heads));
    for package in v1 {
        deploy_plugin(package, &url);
    }
    deploy_pipeline(&file, &url);
    let total = 2000;
    let swap_at = 700;
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut events = Events::subscribe(&client).await;
        let mut results = subscribe(&client, "mood.out").await;
        let mut errors = subscribe(&client, "mood.errors").await;
        let _hosts = [
            deployed_host(&url, &empty, &[]),
            deployed_host(&url, &empty, &[]),
        ];
        events
            .wait_hosts(2, "pipeline activation", |e| is(e, "activated", "pipeline"))
            .await;

        // Steady load: ~250 messages/s through JetStream, acked by the server.
        let js = async_nats::jetstream::new(client.clone());
        let publisher = tokio::spawn(async move {
            for i in 0..total {
                let body = json!({
                    "id": format!("m-{i}"),
                    "text": format!("message {i}: the service was {}", WORDS[i % WORDS.len()]),
                });
                js.publish("mood.in", body.to_string().into())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(16)).await;
                }
            }
        });

        let mut received: Vec<(Instant, Value)> = Vec::new();
        let mut deployed_at = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        while received.len() < total {
            let message = tokio::time::timeout_at(deadline, results.next())
                .await
                .unwrap_or_else(|_| panic!("only {} of {total} results within 240 s", received.len()))
                .unwrap_or_else(|| panic!("result subscription ended"));
            received.push((
                Instant::now(),
                serde_json::from_slice(&message.payload).unwrap_or_else(|e| panic!("{e}")),
            ));
            if received.len() == swap_at && deployed_at.is_none() {
                let started = now_ms();
                let v2 = v2.to_vec();
                let url = url.clone();
                tokio::task::spawn_blocking(move || {
                    for package in &v2 {
                        deploy_plugin(package, &url);
                    }
                });
                deployed_at = Some((started, Instant::now()));
            }
        }
        publisher.await.unwrap_or_else(|e| panic!("{e}"));
        let Some((deploy_ms, deploy_instant)) = deployed_at else {
            panic!("v2 was never deployed");
        };
        let swaps = events
            .wait_hosts(2, "v2 activation", |e| {
                is(e, "activated", "pipeline")
                    && ids.iter().all(|(key, _, v2)| e["heads"][*key] == *v2)
            })
            .await;

        // Nothing lost, nothing doubled, no errors.
        let mut seen = HashSet::new();
        for (_, r) in &received {
            assert!(seen.insert(r["id"].as_str().unwrap_or_default().to_owned()), "duplicate {r}");
            assert_eq!(r["errors"], json!({}), "{r}");
            for (key, _, _) in ids {
                assert!(r["results"][*key].is_object(), "{key}: {r}");
            }
        }
        assert_eq!(seen.len(), total);
        let stray = tokio::time::timeout(Duration::from_millis(500), errors.next()).await;
        assert!(stray.is_err(), "error record: {stray:?}");

        // Each result names its versions; per host and head, v1 until the swap and v2 after.
        for (key, old, new) in ids {
            let mut by_host: BTreeMap<String, Vec<(Instant, &str)>> = BTreeMap::new();
            for (at, r) in &received {
                let version = r["heads"][*key].as_str().unwrap_or_default();
                assert!(version == *old || version == *new, "{r}");
                by_host
                    .entry(r["host"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .push((*at, version));
            }
            assert_eq!(by_host.len(), 2, "both hosts served: {:?}", by_host.keys());
            for (host, served) in &by_host {
                let first_v2 = served
                    .iter()
                    .position(|(_, v)| v == new)
                    .unwrap_or_else(|| panic!("{host} never served {new}"));
                assert!(first_v2 > 0, "{host} served {new} before the deploy");
                assert!(
                    served[first_v2..].iter().all(|(_, v)| v == new),
                    "{host} went back to {old} after serving {new}"
                );
                let event_ms = swaps[host]["at_ms"].as_u64().unwrap_or_default();
                let first_result = served[first_v2].0.saturating_duration_since(deploy_instant);
                println!(
                    "{host} {key}: swapped {} ms after the deploy started; first {new} result {} ms after it; {} of {} results {old}",
                    event_ms.saturating_sub(deploy_ms),
                    first_result.as_millis(),
                    first_v2,
                    served.len()
                );
            }
        }
    });
}

#[test]
fn bad_deploys_are_rejected_while_traffic_continues_and_rollback_restores() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let empty = dir.path().join("local");
    std::fs::create_dir_all(&empty).unwrap_or_else(|e| panic!("{e}"));
    let v1 = sentiment_package(dir.path(), "1.0.0", |_| {});
    let foreign = sentiment_package(dir.path(), "1.6.0", |m| {
        m["encoder"] = json!(format!("other-encoder@sha256:{}", "0".repeat(64)));
    });
    let rev_a = pipeline_text("mode = \"core\"", ONE_HEAD);
    let rev_b = pipeline_text(
        "mode = \"core\"",
        &format!("{ONE_HEAD}[[heads]]\nname = \"second\"\nplugin = \"sentiment@1.0.0\"\n"),
    );
    let broken = rev_a.replace("max_batch_size = 16", "max_batch_size = 0");
    let file_a = write(dir.path(), "mood.toml", &rev_a);
    deploy_plugin(&v1, &url);
    deploy_pipeline(&file_a, &url);
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let registry = ClusterRegistry::open(&client)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut events = Events::subscribe(&client).await;
        let _hosts = [
            deployed_host(&url, &empty, &[]),
            deployed_host(&url, &empty, &[]),
        ];
        events
            .wait_hosts(2, "pipeline activation", |e| is(e, "activated", "pipeline"))
            .await;

        // Continuous requests through every change below; each must be answered in full.
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let load_client = client.clone();
        let load = tokio::spawn(async move {
            let mut replies = Vec::new();
            let mut i = 0;
            loop {
                if stopped.try_recv().is_ok() {
                    return replies;
                }
                let body = json!({ "id": format!("r-{i}"), "text": "the parcel came late" });
                let reply = load_client
                    .request("mood.in", body.to_string().into())
                    .await
                    .unwrap_or_else(|e| panic!("request r-{i}: {e}"));
                let reply: Value =
                    serde_json::from_slice(&reply.payload).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(reply["errors"], json!({}), "{reply}");
                assert_eq!(reply["heads"]["sentiment"], "sentiment@1.0.0", "{reply}");
                replies.push(reply);
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });

        // A corrupt package (its component altered after the manifest was written), stored
        // as a careless uploader would: every host refuses it.
        let mut wasm = std::fs::read(v1.join("head.wasm")).unwrap_or_else(|e| panic!("{e}"));
        let middle = wasm.len() / 2;
        wasm[middle] ^= 0xff;
        let weights =
            std::fs::read(v1.join("weights.safetensors")).unwrap_or_else(|e| panic!("{e}"));
        let mut manifest: Value = serde_json::from_slice(
            &std::fs::read(v1.join("manifest.json")).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        manifest["version"] = json!("1.5.0");
        registry
            .put_package_files(
                "sentiment",
                "1.5.0",
                &[
                    ("head.wasm".to_owned(), wasm),
                    ("weights.safetensors".to_owned(), weights),
                ],
                manifest.to_string().as_bytes(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        events
            .rejected_by(
                2,
                "corrupt package rejection",
                |e| e["kind"] == "package" && e["package"] == "sentiment@1.5.0",
                "sha256",
            )
            .await;

        // A package trained on another encoder: deployable, refused by every host.
        deploy_plugin(&foreign, &url);
        events
            .rejected_by(
                2,
                "foreign package rejection",
                |e| e["kind"] == "package" && e["package"] == "sentiment@1.6.0",
                "encoder",
            )
            .await;

        // An invalid pipeline: the CLI refuses it with file and line; stored anyway, every
        // host rejects it.
        let file_broken = write(dir.path(), "broken.toml", &broken);
        let out = crate::headstream(
            &[
                "deploy",
                "pipeline",
                &file_broken.to_string_lossy(),
                "--nats",
                &url,
            ],
            b"",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("broken.toml:11:") && stderr.contains("batching.max_batch_size"),
            "{stderr}"
        );
        registry
            .deploy_pipeline("mood", &broken)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        events
            .rejected_by(
                2,
                "invalid pipeline rejection",
                |e| e["kind"] == "pipeline",
                "max_batch_size",
            )
            .await;

        // Revision B adds a head on both hosts; rollback brings revision A back (skipping the
        // broken revision) on both.
        let file_b = write(dir.path(), "mood.toml", &rev_b);
        deploy_pipeline(&file_b, &url);
        events
            .wait_hosts(2, "revision B", |e| {
                is(e, "activated", "pipeline") && e["heads"]["second"].is_string()
            })
            .await;
        for _ in 0..10 {
            let reply = ask(&client, "a lovely surprise").await;
            assert!(
                reply["results"]["second"].is_object(),
                "revision B: {reply}"
            );
        }
        let rolled: Value = serde_json::from_str(
            crate::headstream_ok(&["rollback", "pipeline", "mood", "--nats", &url], b"").trim(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rolled["restored"], 1, "revision A was the first: {rolled}");
        events
            .wait_hosts(2, "rollback to revision A", |e| {
                is(e, "activated", "pipeline")
                    && e["heads"] == json!({ "sentiment": "sentiment@1.0.0" })
            })
            .await;
        for _ in 0..10 {
            let reply = ask(&client, "a lovely surprise").await;
            assert!(
                reply["results"].get("second").is_none(),
                "revision A: {reply}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop.send(());
        let replies = load.await.unwrap_or_else(|e| panic!("{e}"));
        println!(
            "{} requests answered through the deploys and the rollback",
            replies.len()
        );
        assert!(
            replies.iter().any(|r| r["results"]["second"].is_object()),
            "revision B served"
        );
        assert!(
            replies
                .last()
                .is_some_and(|r| r["results"].get("second").is_none()),
            "revision A served after the rollback"
        );
        let hosts: HashSet<&str> = replies.iter().filter_map(|r| r["host"].as_str()).collect();
        assert_eq!(hosts.len(), 2, "both hosts answered");

        let listed = crate::headstream_ok(&["pipelines", "ls", "--nats", &url], b"");
        let listed: Value =
            serde_json::from_str(listed.trim()).unwrap_or_else(|e| panic!("{listed}: {e}"));
        assert_eq!(listed["name"], "mood");
        assert_eq!(listed["revision"], rolled["revision"]);
        let history = crate::headstream_ok(&["pipelines", "history", "mood", "--nats", &url], b"");
        assert_eq!(history.lines().count(), 4, "{history}");

        // Removal stops the pipeline on both hosts; a rollback brings it back.
        crate::headstream_ok(&["pipelines", "rm", "mood", "--nats", &url], b"");
        events
            .wait_hosts(2, "removal", |e| is(e, "removed", "pipeline"))
            .await;
        let unanswered = client
            .request("mood.in", r#"{"text":"anyone?"}"#.into())
            .await;
        assert!(
            unanswered.is_err(),
            "no host serves a removed pipeline: {unanswered:?}"
        );
        assert_eq!(
            crate::headstream_ok(&["pipelines", "ls", "--nats", &url], b""),
            ""
        );
        crate::headstream_ok(&["rollback", "pipeline", "mood", "--nats", &url], b"");
        events
            .wait_hosts(2, "restoration", |e| is(e, "activated", "pipeline"))
            .await;
        assert_eq!(
            ask(&client, "back again").await["heads"]["sentiment"],
            "sentiment@1.0.0"
        );
    });
}

#[test]
fn canary_splits_by_share_and_shadow_leaves_results_untouched() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let empty = dir.path().join("local");
    std::fs::create_dir_all(&empty).unwrap_or_else(|e| panic!("{e}"));
    let v1 = sentiment_package(dir.path(), "1.0.0", |_| {});
    let v2 = sentiment_package(dir.path(), "2.0.0", inverted);
    let heads = r#"[[heads]]
name = "canaried"
plugin = "sentiment@1.0.0"
canary = { plugin = "sentiment@2.0.0", percent = 20 }
[[heads]]
name = "shadowed"
plugin = "sentiment@1.0.0"
shadow = { plugin = "sentiment@2.0.0", subject = "mood.shadow" }
"#;
    let file = write(
        dir.path(),
        "mood.toml",
        &pipeline_text("mode = \"core\"", heads),
    );
    for package in [&v1, &v2] {
        deploy_plugin(package, &url);
    }
    deploy_pipeline(&file, &url);
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let total = 1000;
    runtime().block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut events = Events::subscribe(&client).await;
        let mut results = subscribe(&client, "mood.out").await;
        let mut shadows = subscribe(&client, "mood.shadow").await;
        let _host = deployed_host(&url, &empty, &["--metrics", &metrics]);
        events
            .wait_hosts(1, "pipeline activation", |e| is(e, "activated", "pipeline"))
            .await;
        for i in 0..total {
            let body = json!({
                "id": format!("c-{i}"),
                "text": format!("review {i}: the food was {}", WORDS[i % WORDS.len()]),
            });
            client
                .publish("mood.in", body.to_string().into())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut by_id: HashMap<String, Value> = HashMap::new();
        let mut shadow_by_id: HashMap<String, Value> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while by_id.len() < total || shadow_by_id.len() < total {
            let (message, shadow) = tokio::select! {
                Some(m) = results.next() => (m, false),
                Some(m) = shadows.next() => (m, true),
                () = tokio::time::sleep_until(deadline) => panic!(
                    "{} results and {} shadow records of {total} within 180 s",
                    by_id.len(), shadow_by_id.len()
                ),
            };
            let value: Value =
                serde_json::from_slice(&message.payload).unwrap_or_else(|e| panic!("{e}"));
            let id = value["id"].as_str().unwrap_or_default().to_owned();
            let map = if shadow {
                &mut shadow_by_id
            } else {
                &mut by_id
            };
            assert!(map.insert(id, value).is_none(), "a record came twice");
        }

        let mut canaried = 0;
        for (id, r) in &by_id {
            // Shadowed head: results always from the live version.
            assert_eq!(r["heads"]["shadowed"], "sentiment@1.0.0", "{r}");
            let live_label = &r["results"]["shadowed"]["label"];
            let canary_label = &r["results"]["canaried"]["label"];
            match r["heads"]["canaried"].as_str() {
                Some("sentiment@2.0.0") => {
                    canaried += 1;
                    assert_ne!(canary_label, live_label, "v2 inverts the label: {r}");
                }
                Some("sentiment@1.0.0") => assert_eq!(canary_label, live_label, "{r}"),
                other => panic!("unexpected version {other:?}: {r}"),
            }
            let shadow = &shadow_by_id[id];
            assert_eq!(shadow["head"], "shadowed");
            assert_eq!(shadow["live"]["version"], "sentiment@1.0.0");
            assert_eq!(shadow["shadow"]["version"], "sentiment@2.0.0");
            assert_eq!(
                shadow["live"]["output"], r["results"]["shadowed"],
                "{shadow}"
            );
            assert_ne!(shadow["shadow"]["output"]["label"], *live_label, "{shadow}");
            assert_eq!(shadow["agree"], false, "{shadow}");
        }
        let share = f64::from(canaried) / total as f64 * 100.0;
        println!("canary share: {share:.1}% of {total} (configured 20%)");
        assert!((share - 20.0).abs() <= 4.0, "canary share {share}%");
        let text = scrape(&metrics);
        let disagreed = metric(
            &text,
            "headstream_shadow_total{head=\"shadowed\",outcome=\"disagree\",pipeline=\"mood\"}",
        );
        assert_eq!(disagreed, total as f64, "{text}");
    });
}

#[test]
fn serve_watch_applies_edited_files_and_new_packages() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let registry = dir.path().join("registry");
    std::fs::create_dir_all(&registry).unwrap_or_else(|e| panic!("{e}"));
    sentiment_package(&registry, "1.0.0", |_| {});
    let file = write(
        dir.path(),
        "mood.toml",
        &pipeline_text("mode = \"core\"", ONE_HEAD),
    );
    runtime().block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut events = Events::subscribe(&client).await;
        let file_arg = file.to_string_lossy();
        let registry_arg = registry.to_string_lossy();
        let _host = Host::serve(&[
            "--watch",
            "--nats",
            &url,
            "--pipeline",
            &file_arg,
            "--registry",
            &registry_arg,
        ]);
        events
            .wait_hosts(1, "pipeline activation", |e| is(e, "activated", "pipeline"))
            .await;
        assert_eq!(
            ask(&client, "a lovely surprise").await["heads"]["sentiment"],
            "sentiment@1.0.0"
        );

        // A newer package appears in the registry directory: `sentiment@^1` moves to it.
        sentiment_package(&registry, "1.1.0", |_| {});
        events
            .wait_hosts(1, "v1.1.0", |e| {
                e["heads"]["sentiment"] == "sentiment@1.1.0"
            })
            .await;
        assert_eq!(
            ask(&client, "a lovely surprise").await["heads"]["sentiment"],
            "sentiment@1.1.0"
        );
        // The micro-service status endpoint follows the change.
        let status = client
            .request("headstream.status.mood", "".into())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status: Value =
            serde_json::from_slice(&status.payload).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status["heads"]["sentiment"], "sentiment@1.1.0", "{status}");

        // The file gains a head.
        let two = format!("{ONE_HEAD}[[heads]]\nname = \"again\"\nplugin = \"sentiment@1.0.0\"\n");
        write(
            dir.path(),
            "mood.toml",
            &pipeline_text("mode = \"core\"", &two),
        );
        events
            .wait_hosts(1, "the edited file", |e| e["heads"]["again"].is_string())
            .await;
        assert!(ask(&client, "a lovely surprise").await["results"]["again"].is_object());

        // A broken edit is rejected and the last good version keeps serving.
        write(
            dir.path(),
            "mood.toml",
            "version = 1\nname = \"mood\"\n[input\n",
        );
        let rejected = events
            .wait_hosts(1, "the broken edit", |e| is(e, "rejected", "pipeline"))
            .await;
        let reason = rejected.values().next().map(|e| e["reason"].to_string());
        assert!(
            reason
                .as_deref()
                .unwrap_or_default()
                .contains("mood.toml:3"),
            "{reason:?}"
        );
        assert!(ask(&client, "a lovely surprise").await["results"]["again"].is_object());
    });
}
